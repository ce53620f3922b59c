//go:build amd64 && !purego

package crc32c

import "github.com/tpde/tpde/core/cpu"

// fold512 (fold_amd64.s) returns the non-inverted CRC-32C of b continuing
// the non-inverted state crc. len(b) must be a multiple of 64 and at least
// 256. It needs AVX512F, AVX512VL, VPCLMULQDQ and SSE4.2, and an OS that
// saves the ZMM state.
//
//go:noescape
func fold512(crc uint32, b *byte, n int) uint32

var haveFold = cpu.X86.HasAVX512Fold

func fold(crc uint32, b []byte) uint32 { return fold512(crc, &b[0], len(b)) }
