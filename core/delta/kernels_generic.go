//go:build !amd64 || purego

package delta

// Without the amd64 kernels everything runs in the SWAR loops of fast.go.

func vectorSplit2(diff bool, x, ref, p0, p1 []byte) (int, int, uint64) { return 0, 0, 0 }
func vectorMerge2(diff bool, p0, p1, ref, dst []byte) (int, int)       { return 0, 0 }
func vectorSplit4(diff bool, x, ref, p0, p1, p2, p3 []byte) (int, int, uint64) {
	return 0, 0, 0
}
func vectorMerge4(diff bool, p0, p1, p2, p3, ref, dst []byte) (int, int) {
	return 0, 0
}
