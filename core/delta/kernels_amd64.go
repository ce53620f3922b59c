//go:build amd64 && !purego

package delta

// SSE2 kernels in kernels_amd64.s (baseline amd64: no CPU feature check)
// for the fast paths of fast.go. Each handles whole blocks of 16 elements
// and returns how many of the residuals it saw were zero; the split kernels
// also return the bitwise OR of the residuals (as 64-bit words), which tells
// the encoder which planes are all zero.

//go:noescape
func split2asm(x, ref, p0, p1 *byte, n int, diff bool) (zeros int, or uint64)

//go:noescape
func merge2asm(p0, p1, ref, dst *byte, n int, diff bool) int

//go:noescape
func split4asm(x, ref, p0, p1, p2, p3 *byte, n int, diff bool) (zeros int, or uint64)

//go:noescape
func merge4asm(p0, p1, p2, p3, ref, dst *byte, n int, diff bool) int

// The vector* wrappers run a kernel over the largest multiple of 16
// elements and return how many elements it handled and how many of their
// residuals were zero; the scalar code does the rest.

func vectorSplit2(diff bool, x, ref, p0, p1 []byte) (int, int, uint64) {
	n := len(p0) &^ 15
	if n == 0 {
		return 0, 0, 0
	}
	_, _, _, _ = x[2*n-1], ref[2*n-1], p0[n-1], p1[n-1]
	zeros, or := split2asm(&x[0], &ref[0], &p0[0], &p1[0], n, diff)
	return n, zeros, or
}

func vectorMerge2(diff bool, p0, p1, ref, dst []byte) (int, int) {
	n := len(p0) &^ 15
	if n == 0 {
		return 0, 0
	}
	_, _, _, _ = dst[2*n-1], ref[2*n-1], p0[n-1], p1[n-1]
	return n, merge2asm(&p0[0], &p1[0], &ref[0], &dst[0], n, diff)
}

func vectorSplit4(diff bool, x, ref, p0, p1, p2, p3 []byte) (int, int, uint64) {
	n := len(p0) &^ 15
	if n == 0 {
		return 0, 0, 0
	}
	_, _, _, _, _, _ = x[4*n-1], ref[4*n-1], p0[n-1], p1[n-1], p2[n-1], p3[n-1]
	zeros, or := split4asm(&x[0], &ref[0], &p0[0], &p1[0], &p2[0], &p3[0], n, diff)
	return n, zeros, or
}

func vectorMerge4(diff bool, p0, p1, p2, p3, ref, dst []byte) (int, int) {
	n := len(p0) &^ 15
	if n == 0 {
		return 0, 0
	}
	_, _, _, _, _, _ = dst[4*n-1], ref[4*n-1], p0[n-1], p1[n-1], p2[n-1], p3[n-1]
	return n, merge4asm(&p0[0], &p1[0], &p2[0], &p3[0], &ref[0], &dst[0], n, diff)
}
