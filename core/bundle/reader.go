package bundle

import (
	"github.com/tpde/tpde/core/dtype"
)

// EntryInfo is what a frame's header says about its tensor, as a reader of
// the bundle needs it.
type EntryInfo struct {
	DType   dtype.DType
	Shape   []uint64
	RawSize uint64
	// Delta: a delta frame; the fields below describe it (zero, and
	// Residual -1, for a keyframe).
	Delta     bool
	Residual  int
	Identical bool
	NeedsRef2 bool
	Changed   uint64 // elements whose residual is not zero
	// Lossy: elements are within Bound of the input; MaxErr is the largest
	// error the encoder measured.
	Lossy  bool
	Bound  float64
	MaxErr float64
}

// Reader is a bundle opened once for many reads: Open's checks, and every
// frame's header and chunk table validated (Header), with what they say
// kept, so that describing and decoding it parses neither again. Like
// Bundle it reads blob in place, which must stay unchanged while the
// Reader is used.
type Reader struct {
	*Bundle
	Infos []EntryInfo
}

// OpenReader validates blob as a bundle and every frame header in it.
func OpenReader(blob []byte) (*Reader, error) {
	b, err := Open(blob)
	if err != nil {
		return nil, err
	}
	r := &Reader{Bundle: b, Infos: make([]EntryInfo, len(b.Entries))}
	for i := range b.Entries {
		h, err := b.Header(i)
		if err != nil {
			return nil, err
		}
		in := EntryInfo{DType: h.DType, Shape: h.Shape, RawSize: h.RawSize, Residual: -1}
		if di := h.Delta; di != nil {
			in.Delta, in.Residual, in.Identical = true, int(di.Residual), di.Identical
			in.NeedsRef2, in.Changed = di.NeedsRef2(), di.Changed
			if di.Lossy {
				in.Lossy, in.Bound, in.MaxErr = true, di.Bound, di.MaxErr
			}
		}
		r.Infos[i] = in
	}
	return r, nil
}

// Decode is Bundle.Decode with the headers OpenReader validated.
func (r *Reader) Decode(outs []Out, threads int) error {
	return r.decode(outs, threads, func(i int) (uint64, error) { return r.Infos[i].RawSize, nil })
}
