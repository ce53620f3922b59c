//go:build amd64 && !purego

package transform

// vectorKernels says whether this build has the SSE2 kernels, so that the
// differential tests can require that the vector path really ran (and was
// not the scalar code compared with itself).
const vectorKernels = true
