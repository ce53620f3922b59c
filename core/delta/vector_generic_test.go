//go:build !amd64 || purego

package delta

// vectorKernels: this build runs every element in the SWAR and scalar loops.
const vectorKernels = false
