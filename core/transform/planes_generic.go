//go:build !amd64 || purego

package transform

// Without the amd64 kernels everything runs in the scalar loops.

func vectorSplit2(rot bool, src, p0, p1 []byte) int         { return 0 }
func vectorMerge2(rot bool, p0, p1, dst []byte) int         { return 0 }
func vectorSplit4(rot bool, src, p0, p1, p2, p3 []byte) int { return 0 }
func vectorMerge4(rot bool, p0, p1, p2, p3, dst []byte) int { return 0 }
