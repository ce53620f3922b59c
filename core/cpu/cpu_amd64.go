//go:build amd64 && !purego

package cpu

func cpuid(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
func xgetbv0() (eax, edx uint32)

func detect() {
	max, _, _, _ := cpuid(0, 0)
	if max < 7 {
		return
	}
	_, _, c1, _ := cpuid(1, 0)
	_, b7, c7, _ := cpuid(7, 0)
	const bmi1, bmi2 = 1 << 3, 1 << 8
	X86.HasBMI2 = b7&bmi1 != 0 && b7&bmi2 != 0
	const sse42, osxsave = 1 << 20, 1 << 27
	if c1&sse42 == 0 || c1&osxsave == 0 {
		return
	}
	// XMM, YMM, opmask and both halves of the ZMM state enabled by the OS.
	if xcr0, _ := xgetbv0(); xcr0&0xe6 != 0xe6 {
		return
	}
	const avx512f, avx512bw, avx512vl, vpclmulqdq, vbmi = 1 << 16, 1 << 30, 1 << 31, 1 << 10, 1 << 1
	X86.HasAVX512Fold = b7&avx512f != 0 && b7&avx512vl != 0 && c7&vpclmulqdq != 0
	X86.HasAVX512VBMI = b7&avx512f != 0 && b7&avx512bw != 0 && c7&vbmi != 0
}
