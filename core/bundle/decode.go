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
	return b.decode(outs, threads, func(i int) (uint64, error) {
		h, err := b.Header(i)
		if err != nil {
			return 0, err
		}
		return h.RawSize, nil
	})
}

// decode checks every request (rawSize gives an entry's validated raw size)
// and then decodes them all.
func (b *Bundle) decode(outs []Out, threads int, rawSize func(i int) (uint64, error)) error {
	sizes := make([]uint64, len(outs))
	seen := make(map[int]struct{}, len(outs))
	for k, o := range outs {
		if o.Index < 0 || o.Index >= len(b.Entries) {
			return fmt.Errorf("%w: bundle entry %d of %d", errs.Invalid, o.Index, len(b.Entries))
		}
		if _, dup := seen[o.Index]; dup {
			return fmt.Errorf("%w: tensor %q requested twice", errs.Invalid, b.Entries[o.Index].Name)
		}
		seen[o.Index] = struct{}{}
		raw, err := rawSize(o.Index)
		if err != nil {
			return err
		}
		if uint64(len(o.Dst)) < raw {
			return fmt.Errorf("%w: tensor %q needs %d bytes, %d given", errs.BufferTooSmall, b.Entries[o.Index].Name, raw, len(o.Dst))
		}
		sizes[k] = raw
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
	for k, raw := range sizes {
		if raw >= smallItem || threads == 1 {
			if err := one(k, threads); err != nil {
				return err
			}
			continue
		}
		small = append(small, k)
	}
	return par.For(len(small), threads, func(_, i int) error { return one(small[i], 1) })
}
