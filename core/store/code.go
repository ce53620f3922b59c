package store

import (
	"fmt"

	"github.com/tpde/tpde/core/crc32c"
	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

// encodeKeyframe codes raw as a keyframe into buf, which the caller drops
// once the frame is stored, its chunks on threads threads.
func (s *Store) encodeKeyframe(buf *buffer, raw []byte, d dtype.DType, shape []uint64, threads int, stop func() error) ([]byte, error) {
	bound, err := frame.Bound(uint64(len(raw)), d, len(shape), 0)
	if err != nil {
		return nil, err
	}
	b, err := buf.get(bound)
	if err != nil {
		return nil, err
	}
	n, err := frame.Encode(b, raw, d, shape, frame.Options{Threads: threads, Stop: stop})
	if err != nil {
		return nil, err
	}
	return b[:n], nil
}

// encodeDelta codes raw against ref as a delta frame (lossy within
// threshold when it is > 0) into buf, which the caller drops once the frame
// is stored.
func (s *Store) encodeDelta(buf *buffer, raw, ref []byte, d dtype.DType, shape []uint64, threshold float64) ([]byte, frame.DeltaResult, error) {
	bound, err := frame.DeltaBound(uint64(len(raw)), d, len(shape), 0)
	if err != nil {
		return nil, frame.DeltaResult{}, err
	}
	b, err := buf.get(bound)
	if err != nil {
		return nil, frame.DeltaResult{}, err
	}
	res, err := frame.EncodeDelta(b, raw, ref, nil, d, shape, frame.DeltaOptions{Threads: s.threads, Residual: delta.Auto, Threshold: threshold, Sparse: s.positions})
	if err != nil {
		return nil, res, err
	}
	return b[:res.Len], res, nil
}

// crcOf is the CRC32C a region records for bytes b (Region.CRC32C).
func crcOf(b []byte) *uint32 {
	c := crc32c.Checksum(b)
	return &c
}

// frameCRC is the CRC32C of what a frame just coded decodes to, from its
// chunk table (frame.Header.RawCRC).
func frameCRC(coded []byte) (*uint32, error) {
	h, err := frame.ParseAny(coded)
	if err != nil {
		return nil, fmt.Errorf("%w: a frame just coded does not parse: %v", errs.Internal, err)
	}
	c := h.RawCRC()
	return &c, nil
}
