package api

// Bundles (docs/FORMAT.md, bundles): the named tensors of one checkpoint,
// each a keyframe or a delta frame against the tensor of the same name in
// a reference checkpoint, plus a metadata object; written by a writer
// session across calls, read through an opened-bundle session.

import (
	"errors"
	"fmt"

	"github.com/tpde/tpde/core/bundle"
	"github.com/tpde/tpde/core/errs"
)

// MaxBundleItems caps the items (or decode requests) of one call, before
// anything sized by them is allocated.
const MaxBundleItems = bundle.MaxEntries

// BundleItem is one tensor to code into a bundle.
type BundleItem struct {
	Name string
	Tensor
	// Ref is the reference for a delta frame (same dtype and shape); nil
	// makes a keyframe. Ref2 is the older reference, or nil.
	Ref, Ref2 []byte
	// Delta: how a delta item is coded (Residual, Flags, Threshold,
	// QuantBits); its ChunkElems, Effort and Threads are the bundle's and
	// must be 0. A keyframe is lossless: no threshold, quantizer or Ref2.
	Delta DeltaArgs
	// Recon, if not nil, has room for the tensor and receives what a
	// decoder will get back.
	Recon []byte
}

// items checks the caller's items and views them as bundle.Items (no
// tensor bytes copied). Errors name the tensor.
func items(its []BundleItem) ([]bundle.Item, error) {
	if len(its) > MaxBundleItems {
		return nil, fmt.Errorf("%w: %d items (max %d)", errs.Invalid, len(its), MaxBundleItems)
	}
	out := make([]bundle.Item, len(its))
	for i := range its {
		c, it := &its[i], &out[i]
		it.Name, it.Shape, it.Data = c.Name, c.Shape, c.Data
		var err error
		if it.DType, err = dtypeOf(c.DType); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", c.Name, err)
		}
		d := c.Delta
		if d.ChunkElems != 0 || d.Effort != 0 || d.Threads != 0 {
			return nil, fmt.Errorf("%w: tensor %q: chunk_elems, effort and threads are the bundle's", errs.Invalid, c.Name)
		}
		if c.Ref != nil {
			it.Ref, it.Ref2 = c.Ref, c.Ref2
			if it.Delta, err = d.options(); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", c.Name, err)
			}
		} else if d.Threshold != 0 || d.QuantBits != 0 || c.Ref2 != nil {
			return nil, fmt.Errorf("%w: tensor %q: threshold, quant_bits and ref2 need a reference (keyframes are lossless)", errs.Invalid, c.Name)
		}
		if it.Recon, err = reconFor(c.Recon, len(c.Data)); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", c.Name, err)
		}
	}
	return out, nil
}

func bundleOptions(effort, threads int32) (bundle.Options, error) {
	eff, err := effortOf(effort)
	return bundle.Options{Threads: int(threads), Effort: eff}, err
}

func checkMetaLen(n uint64) error {
	if n > bundle.MaxMetaLen {
		return fmt.Errorf("%w: metadata of %d bytes (max %d)", errs.Invalid, n, bundle.MaxMetaLen)
	}
	return nil
}

// BundleBound is the largest bundle these items make with metaLen bytes
// of metadata; with metaLen 0, room that always suffices for their
// BundleWriterAdd.
func BundleBound(its []BundleItem, metaLen uint64) (uint64, error) {
	if err := checkMetaLen(metaLen); err != nil {
		return 0, err
	}
	bs, err := items(its)
	if err != nil {
		return 0, err
	}
	return bundle.Bound(bs, int(metaLen))
}

// BundleThresholds fills out (one per item) with the adaptive lossy
// threshold of each delta item: the percentile of |data - ref|.
func BundleThresholds(its []BundleItem, percentile float64, threads int32, out []float64) error {
	bs, err := items(its)
	if err != nil {
		return err
	}
	if len(out) < len(bs) {
		return fmt.Errorf("%w: %d thresholds for %d items", errs.BufferTooSmall, len(out), len(bs))
	}
	ts, err := bundle.Thresholds(bs, percentile, int(threads))
	copy(out, ts)
	return err
}

// OpenBundleFile starts a bundle written to a temporary file beside path,
// renamed over it by a committing BundleWriterClose.
func OpenBundleFile(path string) (uint64, error) {
	s, err := bundle.CreateFile(path)
	if err != nil {
		return 0, err
	}
	return bundleWriters.Put(&bundleWriter{s: s}), nil
}

// OpenBundlePieces starts a bundle written into the caller's memory, a
// piece per call.
func OpenBundlePieces() uint64 {
	return bundleWriters.Put(&bundleWriter{s: bundle.NewPieces()})
}

// BundleWriterAdd codes items and returns the bytes it wrote (into dst,
// for a memory writer). Its document: BundleAdded.
func BundleWriterAdd(h uint64, its []BundleItem, effort, threads int32, dst []byte) (uint64, error) {
	var wrote uint64
	return wrote, with(bundleWriters, h, func(w *bundleWriter) error {
		opt, err := bundleOptions(effort, threads)
		if err != nil {
			return err
		}
		bs, err := items(its)
		if err != nil {
			return err
		}
		res := make([]bundle.ItemResult, len(bs))
		if wrote, err = w.s.Add(dst, bs, opt, res); err != nil {
			return err
		}
		return w.keep(bundleAdded(res))
	})
}

// BundleWriterClose ends the writer and returns the bundle's total
// length. With commit it writes meta (empty: {}), the index and the
// trailer (into dst, for a memory writer) and puts a file in place;
// without, it drops the bundle. It releases the handle, except when a
// memory writer's dst is too small (errs.BufferTooSmall, with the length
// needed): the caller may then close again with more room.
func BundleWriterClose(h uint64, meta []byte, commit bool, dst []byte) (uint64, error) {
	w, err := bundleWriters.Get(h)
	if err != nil {
		return 0, err
	}
	w.Lock()
	defer w.Unlock()
	if err := checkMetaLen(uint64(len(meta))); err != nil {
		// Bad arguments end the writer too: close always releases the
		// handle, but for a memory writer's too-small buffer.
		w.s.Close(nil, nil, false)
		_, _ = bundleWriters.Take(h)
		return 0, err
	}
	total, err := w.s.Close(dst, meta, commit)
	if w.s.Ended() {
		_, _ = bundleWriters.Take(h)
	}
	if err != nil && !errors.Is(err, errs.BufferTooSmall) {
		total = 0
	}
	return total, err
}

// OpenBundle validates a bundle (its preamble, trailer, index, metadata
// and every frame's header and chunk table, once) and returns a session
// reading src in place: src must stay unchanged until BundleClose. Its
// document: BundleIndex.
func OpenBundle(src []byte) (uint64, error) {
	r, err := bundle.OpenReader(src)
	if err != nil {
		return 0, err
	}
	br := &bundleReader{r: r}
	if err := br.keep(bundleIndex(r)); err != nil {
		return 0, err
	}
	return bundleReaders.Put(br), nil
}

// BundleOut asks for entry Index of an opened bundle, decoded into Dst
// against Ref (and Ref2) when it is a delta frame.
type BundleOut struct {
	Index          uint64
	Dst, Ref, Ref2 []byte
}

// BundleDecode decodes the requested entries, small ones several at a
// time. Many threads may decode from one opened bundle at once.
func BundleDecode(h uint64, outs []BundleOut, threads int32) error {
	br, err := bundleReaders.Get(h)
	if err != nil {
		return err
	}
	if len(outs) > MaxBundleItems {
		return fmt.Errorf("%w: %d requests (max %d)", errs.Invalid, len(outs), MaxBundleItems)
	}
	r := br.r
	req := make([]bundle.Out, len(outs))
	for i, o := range outs {
		if o.Index >= uint64(len(r.Entries)) {
			return fmt.Errorf("%w: entry %d of a %d-tensor bundle", errs.Invalid, o.Index, len(r.Entries))
		}
		req[i] = bundle.Out{Index: int(o.Index), Dst: o.Dst, Ref: o.Ref, Ref2: o.Ref2}
	}
	return r.Decode(req, int(threads))
}

// BundleClose releases an opened bundle's session (its src may then go).
func BundleClose(h uint64) error {
	_, err := bundleReaders.Take(h)
	return err
}
