package bundle

import (
	"fmt"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/par"
)

// Out asks Decode for one tensor: entry Index of the bundle, decoded into
// Dst (at least its raw size), against Ref (and Ref2) when it is a delta
// frame. References are ignored for keyframes.
type Out struct {
	Index     int
	Dst       []byte
	Ref, Ref2 []byte
}

// Decode decodes the requested tensors. Small tensors are decoded many at a
// time, large ones one at a time with their chunks in parallel. Errors name
// the tensor and keep their category (errs.ReferenceMismatch for a wrong
// reference, errs.Corrupt for damaged bytes). Every frame header is
// validated before anything is decoded. On error the destinations hold
// unspecified bytes.
func (b *Bundle) Decode(outs []Out, threads int) error {
	headers := make([]*frame.Header, len(outs))
	seen := make(map[int]struct{}, len(outs))
	for k, o := range outs {
		if o.Index < 0 || o.Index >= len(b.Entries) {
			return fmt.Errorf("%w: bundle entry %d of %d", errs.Invalid, o.Index, len(b.Entries))
		}
		if _, dup := seen[o.Index]; dup {
			return fmt.Errorf("%w: tensor %q requested twice", errs.Invalid, b.Entries[o.Index].Name)
		}
		seen[o.Index] = struct{}{}
		h, err := b.Header(o.Index)
		if err != nil {
			return err
		}
		if uint64(len(o.Dst)) < h.RawSize {
			return fmt.Errorf("%w: tensor %q needs %d bytes, %d given", errs.BufferTooSmall, b.Entries[o.Index].Name, h.RawSize, len(o.Dst))
		}
		headers[k] = h
	}
	threads = par.Threads(threads)
	one := func(k, th int) error {
		o := outs[k]
		if _, err := frame.DecodeDelta(b.Frame(o.Index), o.Ref, o.Ref2, o.Dst, th); err != nil {
			return fmt.Errorf("tensor %q: %w", b.Entries[o.Index].Name, err)
		}
		return nil
	}
	var small []int
	for k, h := range headers {
		if h.RawSize >= smallItem || threads == 1 {
			if err := one(k, threads); err != nil {
				return err
			}
			continue
		}
		small = append(small, k)
	}
	return par.For(len(small), threads, func(_, i int) error { return one(small[i], 1) })
}
