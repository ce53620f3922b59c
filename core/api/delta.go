package api

// Delta frames (docs/FORMAT.md, delta frames): one tensor coded against a
// reference tensor of the same dtype and shape.

import (
	"fmt"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

// EncodeDeltaBound is the largest delta frame EncodeDelta writes for
// rawSize bytes of dtype with ndim dimensions.
func EncodeDeltaBound(rawSize uint64, dtype, ndim int32, chunkElems uint32) (uint64, error) {
	d, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	return frame.DeltaBound(rawSize, d, int(ndim), chunkElems)
}

// EncodeDelta codes t against ref (and ref2, nil unless needed) into dst
// and returns the frame's length. recon, when not nil, must hold t's
// bytes and receives what a decoder will get back.
func EncodeDelta(t Tensor, ref, ref2 []byte, a DeltaArgs, dst, recon []byte) (uint64, error) {
	d, err := dtypeOf(t.DType)
	if err != nil {
		return 0, err
	}
	opt, err := a.options()
	if err != nil {
		return 0, err
	}
	if opt.Recon, err = reconFor(recon, len(t.Data)); err != nil {
		return 0, err
	}
	res, err := frame.EncodeDelta(dst, t.Data, ref, ref2, d, t.Shape, opt)
	return uint64(res.Len), err
}

// reconFor is the first n bytes of a caller's recon buffer (nil: none).
func reconFor(recon []byte, n int) ([]byte, error) {
	if recon == nil {
		return nil, nil
	}
	if len(recon) < n {
		return nil, fmt.Errorf("%w: recon holds %d bytes, %d needed", errs.BufferTooSmall, len(recon), n)
	}
	return recon[:n], nil
}

// DecodeDelta decodes a frame of either kind into dst, against ref (and
// ref2) for a delta frame, and returns the bytes written.
func DecodeDelta(src, ref, ref2, dst []byte, threads int32) (uint64, error) {
	h, err := frame.DecodeDelta(src, ref, ref2, dst, int(threads))
	if err != nil {
		return 0, err
	}
	return h.RawSize, nil
}

// InspectDelta validates a frame of either kind without decoding it, and
// leaves its DeltaInfo for caller c.
func InspectDelta(c Caller, src []byte) error {
	h, err := frame.ParseAny(src)
	if err != nil {
		return err
	}
	return keepFor(c, deltaInfo(h))
}

// DeltaThreshold is the percentile of |src - ref| over the elements of a
// float tensor: an adaptive lossy threshold.
func DeltaThreshold(src, ref []byte, dtype int32, percentile float64) (float64, error) {
	d, err := dtypeOf(dtype)
	if err != nil {
		return 0, err
	}
	return delta.PercentileThreshold(d, src, ref, percentile)
}
