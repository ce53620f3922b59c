//go:build amd64 && !purego

package crc32c

// fold512 (fold_amd64.s) returns the non-inverted CRC-32C of b continuing
// the non-inverted state crc. len(b) must be a multiple of 64 and at least
// 256. It needs AVX512F, AVX512VL, VPCLMULQDQ and SSE4.2, and an OS that
// saves the ZMM state.
//
//go:noescape
func fold512(crc uint32, b *byte, n int) uint32

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
func xgetbv0() (eax, edx uint32)

var haveFold = detectFold()

func detectFold() bool {
	max, _, _, _ := cpuid(0, 0)
	if max < 7 {
		return false
	}
	_, _, c1, _ := cpuid(1, 0)
	const sse42, osxsave = 1 << 20, 1 << 27
	if c1&sse42 == 0 || c1&osxsave == 0 {
		return false
	}
	// XMM, YMM, opmask and both halves of the ZMM state enabled by the OS.
	if xcr0, _ := xgetbv0(); xcr0&0xe6 != 0xe6 {
		return false
	}
	_, b7, c7, _ := cpuid(7, 0)
	const avx512f, avx512vl, vpclmulqdq = 1 << 16, 1 << 31, 1 << 10
	return b7&avx512f != 0 && b7&avx512vl != 0 && c7&vpclmulqdq != 0
}

func fold(crc uint32, b []byte) uint32 { return fold512(crc, &b[0], len(b)) }
