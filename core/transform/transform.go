// Package transform holds tpde's reversible byte regroupings.
//
// A tensor of n elements, w bytes each, is split into w streams ("planes") of
// n bytes: plane 0 holds every element's most significant byte, plane w-1 its
// least significant one. Bytes of one significance are alike across a tensor,
// so each plane has a much lower order-0 entropy than the interleaved buffer.
//
// Floats wider than one byte are first rotated left by one bit, moving the
// sign from the top bit to the bottom one. For BF16 and F32 that puts the
// whole 8-bit exponent in plane 0 (the skewed, highly compressible byte) and
// the sign beside the near-random low mantissa bits, as ZipNN and DFloat11
// do. For F16 and F64 the exponent does not fit one byte; the same rule still
// puts its top bits first. One-byte types use a single identity plane.
//
// Every mapping here is a bijection on bit patterns: NaN payloads, -0.0,
// subnormals and infinities survive unchanged.
package transform

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// Kind identifies a transform in the frame header (docs/FORMAT.md).
type Kind uint8

const (
	// Planes splits elements into byte planes, most significant first.
	Planes Kind = 0
	// RotatedPlanes rotates each element left by one bit, then splits planes.
	RotatedPlanes Kind = 1
)

// For returns the transform tpde uses for d and the number of streams.
func For(d dtype.DType) (Kind, int) {
	l := d.Layout()
	if l.Float && l.Width > 1 {
		return RotatedPlanes, l.Width
	}
	return Planes, l.Width
}

// Split writes the planes of src (whole elements of width w) into planes,
// each of which must have len(src)/w bytes.
func Split(k Kind, w int, src []byte, planes [][]byte) { split(true, k, w, src, planes) }

// split is Split with the vector kernels on or off. Off, only the scalar
// loops run (what every element gets without the kernels), so the tests
// can compare both paths on the same input on amd64; the choice costs one
// branch per call, not per element.
func split(vector bool, k Kind, w int, src []byte, planes [][]byte) {
	n := len(src) / w
	rot := k == RotatedPlanes
	switch w {
	case 1:
		copy(planes[0][:n], src)
	case 2:
		split2(vector, rot, src[:2*n], planes[0][:n], planes[1][:n])
	case 4:
		p0, p1, p2, p3 := planes[0][:n], planes[1][:n], planes[2][:n], planes[3][:n]
		i := 0
		if vector {
			i = vectorSplit4(rot, src[:4*n], p0, p1, p2, p3)
		}
		for ; i < n; i++ {
			v := binary.LittleEndian.Uint32(src[4*i:])
			if rot {
				v = bits.RotateLeft32(v, 1)
			}
			p0[i] = byte(v >> 24)
			p1[i] = byte(v >> 16)
			p2[i] = byte(v >> 8)
			p3[i] = byte(v)
		}
	case 8:
		for i := 0; i < n; i++ {
			v := binary.LittleEndian.Uint64(src[8*i:])
			if rot {
				v = bits.RotateLeft64(v, 1)
			}
			for p := 0; p < 8; p++ {
				planes[p][i] = byte(v >> (56 - 8*p))
			}
		}
	default:
		panic("transform: unsupported width")
	}
}

// Merge is the inverse of Split: it rebuilds len(dst)/w elements in dst.
func Merge(k Kind, w int, planes [][]byte, dst []byte) { merge(true, k, w, planes, dst) }

// merge is Merge with the vector kernels on or off (see split).
func merge(vector bool, k Kind, w int, planes [][]byte, dst []byte) {
	n := len(dst) / w
	rot := k == RotatedPlanes
	switch w {
	case 1:
		copy(dst, planes[0][:n])
	case 2:
		merge2(vector, rot, planes[0][:n], planes[1][:n], dst[:2*n])
	case 4:
		p0, p1, p2, p3 := planes[0][:n], planes[1][:n], planes[2][:n], planes[3][:n]
		dst = dst[:4*len(p0)]
		i := 0
		if vector {
			i = vectorMerge4(rot, p0, p1, p2, p3, dst)
		}
		for ; i < n; i++ {
			v := uint32(p0[i])<<24 | uint32(p1[i])<<16 | uint32(p2[i])<<8 | uint32(p3[i])
			if rot {
				v = bits.RotateLeft32(v, -1)
			}
			binary.LittleEndian.PutUint32(dst[4*i:], v)
		}
	case 8:
		for i := 0; i < n; i++ {
			var v uint64
			for p := 0; p < 8; p++ {
				v |= uint64(planes[p][i]) << (56 - 8*p)
			}
			if rot {
				v = bits.RotateLeft64(v, -1)
			}
			binary.LittleEndian.PutUint64(dst[8*i:], v)
		}
	default:
		panic("transform: unsupported width")
	}
}

// EntropyBits returns the sum over d's planes of each plane's order-0
// entropy, in bits for the whole buffer: the floor for coding the planes
// independently with one byte model each.
func EntropyBits(d dtype.DType, src []byte) (float64, error) {
	if !d.Valid() {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, uint8(d))
	}
	k, w := For(d)
	if len(src)%w != 0 {
		return 0, fmt.Errorf("%w: %d bytes is not a whole number of %s elements", errs.Invalid, len(src), d)
	}
	n := len(src) / w
	var hist [maxWidth][256]uint64
	const block = 1 << 16
	planes := make([][]byte, w)
	for p := range planes {
		planes[p] = make([]byte, min(n, block))
	}
	for lo := 0; lo < n; lo += block {
		hi := min(lo+block, n)
		for p := range planes {
			planes[p] = planes[p][:hi-lo]
		}
		Split(k, w, src[lo*w:hi*w], planes)
		for p := range planes {
			for _, b := range planes[p] {
				hist[p][b]++
			}
		}
	}
	var bits float64
	for p := 0; p < w; p++ {
		for _, c := range hist[p] {
			if c > 0 {
				bits -= float64(c) * math.Log2(float64(c)/float64(n))
			}
		}
	}
	return bits, nil
}

const maxWidth = 8
