package api

// Frames (docs/FORMAT.md, keyframes): one tensor coded alone.

import (
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/transform"
)

// MaxNDim is the most dimensions a tensor has (TPDE_MAX_NDIM).
const MaxNDim = frame.MaxNDim

// EncodeBound is the largest keyframe Encode writes for rawSize bytes of
// dtype with ndim dimensions (chunkElems 0: the default).
func EncodeBound(rawSize uint64, dtype, ndim int32, chunkElems uint32) (uint64, error) {
	d, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	return frame.Bound(rawSize, d, int(ndim), chunkElems)
}

// Encode codes t as a keyframe into dst (EncodeBound bytes of room) and
// returns the frame's length.
func Encode(t Tensor, chunkElems uint32, effort, threads int32, dst []byte) (uint64, error) {
	d, err := dtypeOf(t.DType)
	if err != nil {
		return 0, err
	}
	eff, err := effortOf(effort)
	if err != nil {
		return 0, err
	}
	n, err := frame.Encode(dst, t.Data, d, t.Shape, frame.Options{ChunkElems: chunkElems, Threads: int(threads), Effort: eff})
	return uint64(n), err
}

// Decode decodes the keyframe src into dst and returns the bytes written.
func Decode(src, dst []byte, threads int32) (uint64, error) {
	hugePageOut(dst)
	h, err := frame.Decode(src, dst, int(threads))
	if err != nil {
		return 0, err
	}
	return h.RawSize, nil
}

// Inspect validates a keyframe's header and chunk table without decoding
// it, and leaves its FrameInfo for caller c.
func Inspect(c Caller, src []byte) error {
	h, err := frame.Parse(src)
	if err != nil {
		return err
	}
	return keepFor(c, frameInfo(h))
}

// FrameShape is what a decoder needs to allocate a keyframe's tensor.
type FrameShape struct {
	DType   int32
	Shape   []uint64
	RawSize uint64
}

// Shape parses and validates a keyframe's header and chunk table, as
// Inspect does, and returns its dtype, shape and decoded size directly:
// the per-tensor decode path of the bindings, where building and parsing
// Inspect's document cost more than decoding a small tensor.
func Shape(src []byte) (FrameShape, error) {
	h, err := frame.Parse(src)
	if err != nil {
		return FrameShape{}, err
	}
	return FrameShape{DType: int32(h.DType), Shape: h.Shape, RawSize: h.RawSize}, nil
}

// EntropyBound is the sum of the order-0 entropies, in bits, of the byte
// streams a keyframe splits t into.
func EntropyBound(t Tensor) (float64, error) {
	d, err := dtypeOf(t.DType)
	if err != nil {
		return 0, err
	}
	return transform.EntropyBits(d, t.Data)
}
