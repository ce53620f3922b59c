//go:build amd64 && !purego

package transform

import "github.com/tpde/tpde/core/cpu"

// SSE2 kernels in planes_amd64.s: part of the amd64 baseline, so no CPU
// feature check. Each takes whole blocks of 16 elements. Merge, the decode
// side, also has AVX-512 VBMI kernels (merge_avx512_amd64.s, blocks of 32
// elements for 2-byte elements and 16 for 4-byte ones), which run instead
// where the CPU has them: a VPERMB does what a ladder of unpacks does.

//go:noescape
func merge2avx512(p0, p1, dst *byte, n int, rot bool)

//go:noescape
func merge4avx512(p0, p1, p2, p3, dst *byte, n int, rot bool)

//go:noescape
func split2asm(src, p0, p1 *byte, n int, rot bool)

//go:noescape
func merge2asm(p0, p1, dst *byte, n int, rot bool)

//go:noescape
func split4asm(src, p0, p1, p2, p3 *byte, n int, rot bool)

//go:noescape
func merge4asm(p0, p1, p2, p3, dst *byte, n int, rot bool)

// The vector* functions run the kernels over the largest multiple of 16
// elements and return how many elements they handled; the scalar code does
// the rest.

func vectorSplit2(rot bool, src, p0, p1 []byte) int {
	n := len(p0) &^ 15
	if n == 0 {
		return 0
	}
	_, _, _ = src[2*n-1], p0[n-1], p1[n-1]
	split2asm(&src[0], &p0[0], &p1[0], n, rot)
	return n
}

func vectorMerge2(rot bool, p0, p1, dst []byte) int {
	n := len(p0) &^ 15
	if n == 0 {
		return 0
	}
	_, _, _ = dst[2*n-1], p0[n-1], p1[n-1]
	i := 0
	if cpu.X86.HasAVX512VBMI {
		if i = n &^ 31; i > 0 {
			merge2avx512(&p0[0], &p1[0], &dst[0], i, rot)
		}
	}
	if i < n {
		merge2asm(&p0[i], &p1[i], &dst[2*i], n-i, rot)
	}
	return n
}

func vectorSplit4(rot bool, src, p0, p1, p2, p3 []byte) int {
	n := len(p0) &^ 15
	if n == 0 {
		return 0
	}
	_, _, _, _, _ = src[4*n-1], p0[n-1], p1[n-1], p2[n-1], p3[n-1]
	split4asm(&src[0], &p0[0], &p1[0], &p2[0], &p3[0], n, rot)
	return n
}

func vectorMerge4(rot bool, p0, p1, p2, p3, dst []byte) int {
	n := len(p0) &^ 15
	if n == 0 {
		return 0
	}
	_, _, _, _, _ = dst[4*n-1], p0[n-1], p1[n-1], p2[n-1], p3[n-1]
	if cpu.X86.HasAVX512VBMI {
		merge4avx512(&p0[0], &p1[0], &p2[0], &p3[0], &dst[0], n, rot)
	} else {
		merge4asm(&p0[0], &p1[0], &p2[0], &p3[0], &dst[0], n, rot)
	}
	return n
}
