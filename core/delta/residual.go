// Package delta codes one chunk of a tensor against the same chunk of a
// reference tensor (and, for linear prediction, of a second reference): the
// payload of a delta frame's chunk (docs/FORMAT.md §6). The frame around it
// (header, checksums, chunk table, parallelism) is core/frame.
//
// A chunk is coded in three steps:
//
//  1. a residual per element, computed on bit patterns with wrapping w-bit
//     arithmetic so that it is exactly invertible (Kind);
//  2. the residuals' byte planes, most significant first, split into
//     sub-streams by a context taken from the reference element (its
//     exponent, for float dtypes), so that elements that change alike are
//     entropy coded together;
//  3. a choice, per chunk, of the smallest of: nothing (the chunk equals the
//     reference), every element (dense), or only the changed elements, their
//     positions coded as Elias-delta gaps and zstd (sparse, the
//     "elias_delta_zstd" method).
//
// Optionally (lossy, float dtypes only) residuals whose magnitude is at most
// a threshold are dropped and the others may be quantized; see lossy.go.
//
// A Scratch holds every buffer a chunk needs and is reused across chunks, so
// the per-element loops do not allocate; keep one per goroutine.
package delta

import (
	"encoding/binary"
	"fmt"
	"unsafe"
)

// Kind is how the residual of an element is computed from its bit pattern c
// and the reference's r (and r2, the second reference). The values are part
// of the frame format.
type Kind uint8

const (
	// XOR: res = c ^ r.
	XOR Kind = 0
	// Diff: res = zigzag(c - r), the difference of the bit patterns as
	// w-bit integers (wrapping), zigzag coded so small changes of either
	// sign give small codes.
	Diff Kind = 1
	// Pred: res = zigzag(c - (r + asr(r - r2, 1))): the difference from a
	// linear extrapolation half a step beyond r along the step r2 -> r.
	Pred Kind = 2
	// MaxKind is the largest defined kind.
	MaxKind = Pred
	// Auto asks the encoder to pick XOR, Diff or (with a second reference)
	// Pred from a sample of the tensor. It is never stored.
	Auto Kind = 255
)

func (k Kind) String() string {
	switch k {
	case XOR:
		return "xor"
	case Diff:
		return "diff"
	case Pred:
		return "pred"
	case Auto:
		return "auto"
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// KindFromName maps "xor", "diff", "pred" and "auto" to a Kind.
func KindFromName(s string) (Kind, bool) {
	for _, k := range []Kind{XOR, Diff, Pred, Auto} {
		if k.String() == s {
			return k, true
		}
	}
	return 0, false
}

// word is an element's bit pattern.
type word interface {
	~uint8 | ~uint16 | ~uint32 | ~uint64
}

// The width switches below are on a constant of each instantiation and are
// folded away by the compiler.

func size[T word]() int { return int(unsafe.Sizeof(T(0))) }

func load[T word](b []byte, i int) T {
	switch unsafe.Sizeof(T(0)) {
	case 1:
		return T(b[i])
	case 2:
		return T(binary.LittleEndian.Uint16(b[2*i:]))
	case 4:
		return T(binary.LittleEndian.Uint32(b[4*i:]))
	default:
		return T(binary.LittleEndian.Uint64(b[8*i:]))
	}
}

func store[T word](b []byte, i int, v T) {
	switch unsafe.Sizeof(T(0)) {
	case 1:
		b[i] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b[2*i:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b[4*i:], uint32(v))
	default:
		binary.LittleEndian.PutUint64(b[8*i:], uint64(v))
	}
}

func topBit[T word]() T { return T(1) << (8*unsafe.Sizeof(T(0)) - 1) }

// zigzag maps the w-bit two's complement value d to 2|d| or 2|d|-1.
func zigzag[T word](d T) T {
	return (d << 1) ^ -(d >> (8*unsafe.Sizeof(T(0)) - 1))
}

func unzigzag[T word](z T) T { return (z >> 1) ^ -(z & 1) }

// asr1 is an arithmetic shift right by one of a w-bit two's complement value
// (a division by two rounding towards minus infinity).
func asr1[T word](x T) T { return x>>1 | x&topBit[T]() }

func predict[T word](r, r2 T) T { return r + asr1(r-r2) }

// residual computes one element's residual.
func residual[T word](k Kind, c, r, r2 T) T {
	switch k {
	case XOR:
		return c ^ r
	case Diff:
		return zigzag(c - r)
	default:
		return zigzag(c - predict(r, r2))
	}
}

// apply inverts residual.
func apply[T word](k Kind, res, r, r2 T) T {
	switch k {
	case XOR:
		return res ^ r
	case Diff:
		return r + unzigzag(res)
	default:
		return predict(r, r2) + unzigzag(res)
	}
}

// Residual computes the residual of one element for a w-byte dtype, all
// values as unsigned bit patterns; exposed for tests and tools.
func Residual(k Kind, w int, c, r, r2 uint64) uint64 {
	switch w {
	case 1:
		return uint64(residual(k, uint8(c), uint8(r), uint8(r2)))
	case 2:
		return uint64(residual(k, uint16(c), uint16(r), uint16(r2)))
	case 4:
		return uint64(residual(k, uint32(c), uint32(r), uint32(r2)))
	}
	return residual(k, c, r, r2)
}

// Apply inverts Residual.
func Apply(k Kind, w int, res, r, r2 uint64) uint64 {
	switch w {
	case 1:
		return uint64(apply(k, uint8(res), uint8(r), uint8(r2)))
	case 2:
		return uint64(apply(k, uint16(res), uint16(r), uint16(r2)))
	case 4:
		return uint64(apply(k, uint32(res), uint32(r), uint32(r2)))
	}
	return apply(k, res, r, r2)
}
