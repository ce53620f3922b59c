//go:build !amd64 || purego

package entropy

// Without the assembly loop klauspost's decoder is faster than a Go one.
const haveMulti = false

func huff4x(ctx *huffCtx) { panic("entropy: no multi-symbol kernel") }
