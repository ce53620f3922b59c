//go:build !amd64 || purego

package transform

// vectorKernels: this build runs every element in the scalar loops.
const vectorKernels = false
