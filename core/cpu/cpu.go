// Package cpu reports the x86 features that tpde's assembly kernels need,
// read once with CPUID (the module has no golang.org/x/sys dependency).
// On other architectures, and in purego builds, every feature is false.
package cpu

// X86 holds the features; read-only after package initialisation.
var X86 struct {
	HasBMI2 bool // BMI1 and BMI2: TZCNT, SHLX
	// HasAVX512Fold: AVX512F, AVX512VL and VPCLMULQDQ, with the OS saving
	// the ZMM state, and SSE4.2 (the CRC32 instruction).
	HasAVX512Fold bool
	// HasAVX512VBMI: AVX512F, AVX512BW and AVX512VBMI (VPERMB), with the
	// OS saving the ZMM state.
	HasAVX512VBMI bool
}

func init() { detect() }
