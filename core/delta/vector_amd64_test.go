//go:build amd64 && !purego

package delta

// vectorKernels says whether this build has the SSE2 kernels, so that the
// differential tests can require that the vector path really ran (and was
// not the SWAR code compared with itself).
const vectorKernels = true
