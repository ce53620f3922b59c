package main

// Checkpoint bundles (docs/FORMAT.md section 17): glue between
// tpde_bundle_* and core/bundle.

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime/debug"
	"sync"
	"unsafe"

	"github.com/tpde/tpde/core/atomicfile"
	"github.com/tpde/tpde/core/bundle"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

// maxBundleItems caps n in one call, before any allocation sized by it.
const maxBundleItems = bundle.MaxEntries

func itemsAt(p *C.tpde_bundle_item, n C.uint64_t) ([]C.tpde_bundle_item, error) {
	if n == 0 {
		return nil, nil
	}
	if p == nil || uint64(n) > maxBundleItems {
		return nil, fmt.Errorf("%w: %d items at %p", errs.Invalid, uint64(n), p)
	}
	return unsafe.Slice(p, int(n)), nil
}

// bundleItems views the C items as bundle.Items (tensor bytes are not
// copied).
func bundleItems(cs []C.tpde_bundle_item) ([]bundle.Item, error) {
	items := make([]bundle.Item, len(cs))
	for i := range cs {
		c := &cs[i]
		name, err := bytesAt(unsafe.Pointer(c.name), c.name_len, "name")
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		it := &items[i]
		it.Name = string(name)
		if it.DType, err = dtypeArg(c.dtype); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		if c.ndim < 0 || c.ndim > frame.MaxNDim || (c.ndim > 0 && c.shape == nil) || c.reserved != 0 {
			return nil, fmt.Errorf("%w: tensor %q: ndim %d, shape %p, reserved %d", errs.Invalid, it.Name, int32(c.ndim), c.shape, int32(c.reserved))
		}
		it.Shape = make([]uint64, int(c.ndim))
		if c.ndim > 0 {
			copy(it.Shape, unsafe.Slice((*uint64)(unsafe.Pointer(c.shape)), int(c.ndim)))
		}
		if it.Data, err = bytesAt(c.data, c.nbytes, "data"); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		if c.ref != nil {
			if it.Ref, err = bytesAt(c.ref, c.ref_nbytes, "ref"); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
			}
			if it.Ref2, err = optionalBytes(c.ref2, c.ref2_nbytes, "ref2"); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
			}
			// Delta options as for tpde_encode_delta; ChunkElems, Effort
			// and Threads are the bundle's.
			if it.Delta, err = deltaOptions(c.residual_kind, c.threshold, c.quant_bits, c.flags, 0, 0, 0); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
			}
		} else if c.threshold != 0 || c.quant_bits != 0 || c.ref2 != nil {
			return nil, fmt.Errorf("%w: tensor %q: threshold, quant_bits and ref2 need a reference (keyframes are lossless)", errs.Invalid, it.Name)
		}
		if c.recon != nil {
			if c.recon_cap < c.nbytes {
				return nil, fmt.Errorf("%w: tensor %q: recon holds %d bytes, %d needed", errs.BufferTooSmall, it.Name, uint64(c.recon_cap), uint64(c.nbytes))
			}
			if it.Recon, err = bytesAt(c.recon, c.nbytes, "recon"); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
			}
		}
	}
	return items, nil
}

func fillItemResults(cs []C.tpde_bundle_item, res []bundle.ItemResult) {
	for i := range cs {
		c, r := &cs[i], &res[i]
		c.frame_size = C.uint64_t(r.FrameLen)
		c.max_error, c.changed_elems, c.identical = 0, 0, 0
		c.residual_used = -1
		if !r.Keyframe {
			c.max_error = C.double(r.Delta.MaxErr)
			c.changed_elems = C.uint64_t(r.Delta.Changed)
			c.residual_used = C.int32_t(r.Delta.Residual)
			if r.Delta.Identical {
				c.identical = 1
			}
		}
	}
}

// itemArgs decodes the items and coding options of tpde_bundle_encode and
// tpde_bundle_writer_add.
func itemArgs(items *C.tpde_bundle_item, n C.uint64_t, effort, nthreads C.int32_t) ([]C.tpde_bundle_item, []bundle.Item, bundle.Options, error) {
	opt, err := bundleOptions(effort, nthreads)
	if err != nil {
		return nil, nil, opt, err
	}
	cs, err := itemsAt(items, n)
	if err != nil {
		return nil, nil, opt, err
	}
	its, err := bundleItems(cs)
	return cs, its, opt, err
}

func bundleOptions(effort, nthreads C.int32_t) (bundle.Options, error) {
	if effort < 0 || effort > C.int32_t(entropy.Max) {
		return bundle.Options{}, fmt.Errorf("%w: effort %d", errs.Invalid, int32(effort))
	}
	return bundle.Options{Threads: int(nthreads), Effort: entropy.Effort(effort)}, nil
}

//export tpde_bundle_bound
func tpde_bundle_bound(items *C.tpde_bundle_item, n C.uint64_t, metaLen C.uint64_t, bound *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if bound == nil || uint64(metaLen) > bundle.MaxMetaLen {
		return status(fmt.Errorf("%w: bound %p, meta_len %d", errs.Invalid, bound, uint64(metaLen)), cerr, cerrLen)
	}
	cs, err := itemsAt(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	its, err := bundleItems(cs)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := bundle.Bound(its, int(metaLen))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*bound = C.uint64_t(b)
	return C.TPDE_OK
}

func metaArg(meta *C.char, metaLen C.uint64_t) ([]byte, error) {
	if uint64(metaLen) > bundle.MaxMetaLen {
		return nil, fmt.Errorf("%w: metadata of %d bytes (max %d)", errs.Invalid, uint64(metaLen), bundle.MaxMetaLen)
	}
	return optionalBytes(unsafe.Pointer(meta), metaLen, "meta")
}

//export tpde_bundle_encode
func tpde_bundle_encode(items *C.tpde_bundle_item, n C.uint64_t, meta *C.char, metaLen C.uint64_t,
	effort C.int32_t, nthreads C.int32_t, dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if outLen == nil {
		return status(fmt.Errorf("%w: out_len is NULL", errs.Invalid), cerr, cerrLen)
	}
	m, err := metaArg(meta, metaLen)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	cs, its, opt, err := itemArgs(items, n, effort, nthreads)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := bytesAt(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	w, err := bundle.NewBufferWriter(out)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	res := make([]bundle.ItemResult, len(its))
	if err := w.Add(its, opt, res); err != nil {
		return status(err, cerr, cerrLen)
	}
	total, err := w.Close(m)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	fillItemResults(cs, res)
	*outLen = C.uint64_t(total)
	return C.TPDE_OK
}

// openWriter is a streaming bundle writer behind a handle.
type openWriter struct {
	file *atomicfile.File
	w    *bundle.Writer
}

var (
	writersMu  sync.Mutex
	writers    = map[uint64]*openWriter{}
	nextWriter uint64
)

func writerAt(h C.uint64_t) (*openWriter, error) {
	writersMu.Lock()
	defer writersMu.Unlock()
	ow, ok := writers[uint64(h)]
	if !ok {
		return nil, fmt.Errorf("%w: bundle writer handle %d is not open", errs.Invalid, uint64(h))
	}
	return ow, nil
}

//export tpde_bundle_writer_open
func tpde_bundle_writer_open(path *C.char, handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if path == nil || handle == nil {
		return status(fmt.Errorf("%w: path or handle is NULL", errs.Invalid), cerr, cerrLen)
	}
	f, err := atomicfile.Create(C.GoString(path), atomicfile.Options{})
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	w, err := bundle.NewWriter(f)
	if err != nil {
		f.Abort()
		return status(err, cerr, cerrLen)
	}
	writersMu.Lock()
	nextWriter++
	writers[nextWriter] = &openWriter{file: f, w: w}
	*handle = C.uint64_t(nextWriter)
	writersMu.Unlock()
	return C.TPDE_OK
}

//export tpde_bundle_writer_add
func tpde_bundle_writer_add(handle C.uint64_t, items *C.tpde_bundle_item, n C.uint64_t, effort C.int32_t,
	nthreads C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	ow, err := writerAt(handle)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	cs, its, opt, err := itemArgs(items, n, effort, nthreads)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	res := make([]bundle.ItemResult, len(its))
	if err := ow.w.Add(its, opt, res); err != nil {
		return status(err, cerr, cerrLen)
	}
	fillItemResults(cs, res)
	return C.TPDE_OK
}

//export tpde_bundle_writer_close
func tpde_bundle_writer_close(handle C.uint64_t, meta *C.char, metaLen C.uint64_t, commit C.int32_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	writersMu.Lock()
	ow, ok := writers[uint64(handle)]
	delete(writers, uint64(handle))
	writersMu.Unlock()
	if !ok {
		return status(fmt.Errorf("%w: bundle writer handle %d is not open", errs.Invalid, uint64(handle)), cerr, cerrLen)
	}
	defer ow.file.Abort() // a no-op once committed
	if commit == 0 {
		return C.TPDE_OK
	}
	m, err := metaArg(meta, metaLen)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	total, err := ow.w.Close(m)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if err := ow.file.Commit(); err != nil {
		return status(err, cerr, cerrLen)
	}
	if outLen != nil {
		*outLen = C.uint64_t(total)
	}
	return C.TPDE_OK
}

// bundleEntryInfo is one tensor of tpde_bundle_index's JSON.
type bundleEntryInfo struct {
	Name      string   `json:"name"`
	Offset    uint64   `json:"offset"`
	Length    uint64   `json:"length"`
	Kind      string   `json:"kind"`
	DType     int      `json:"dtype"`
	Shape     []uint64 `json:"shape"`
	RawSize   uint64   `json:"raw_size"`
	NeedsRef2 bool     `json:"needs_ref2"`
	Residual  int      `json:"residual"`
	Identical bool     `json:"identical"`
	Lossy     bool     `json:"lossy"`
	Bound     float64  `json:"bound"`
	MaxError  float64  `json:"max_error"`
	Changed   uint64   `json:"changed_elems"`
}

type bundleInfo struct {
	VersionMinor uint8             `json:"version_minor"`
	Size         uint64            `json:"size"`
	Metadata     json.RawMessage   `json:"metadata"`
	Tensors      []bundleEntryInfo `json:"tensors"`
}

//export tpde_bundle_index
func tpde_bundle_index(src unsafe.Pointer, srcLen C.uint64_t, out *C.char, capacity C.uint64_t, needed *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if needed == nil {
		return status(fmt.Errorf("%w: needed is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := bundle.Open(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	info := bundleInfo{VersionMinor: b.VersionMinor, Size: b.Size, Metadata: b.Meta,
		Tensors: make([]bundleEntryInfo, len(b.Entries))}
	for i, e := range b.Entries {
		h, err := b.Header(i)
		if err != nil {
			return status(err, cerr, cerrLen)
		}
		t := bundleEntryInfo{Name: e.Name, Offset: e.Offset, Length: e.Length, Kind: "keyframe",
			DType: int(h.DType), Shape: h.Shape, RawSize: h.RawSize, Residual: -1}
		if t.Shape == nil {
			t.Shape = []uint64{}
		}
		if di := h.Delta; di != nil {
			t.Kind, t.Residual, t.Identical = "delta", int(di.Residual), di.Identical
			t.NeedsRef2, t.Changed = di.NeedsRef2(), di.Changed
			if di.Lossy {
				t.Lossy, t.Bound, t.MaxError = true, di.Bound, di.MaxErr
			}
		}
		info.Tensors[i] = t
	}
	return status(writeJSON(info, out, capacity, needed), cerr, cerrLen)
}

//export tpde_bundle_decode
func tpde_bundle_decode(src unsafe.Pointer, srcLen C.uint64_t, outs *C.tpde_bundle_out, n C.uint64_t, nthreads C.int32_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if n > 0 && (outs == nil || uint64(n) > maxBundleItems) {
		return status(fmt.Errorf("%w: %d outs at %p", errs.Invalid, uint64(n), outs), cerr, cerrLen)
	}
	b, err := bundle.Open(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	var cs []C.tpde_bundle_out
	if n > 0 {
		cs = unsafe.Slice(outs, int(n))
	}
	req := make([]bundle.Out, len(cs))
	for i := range cs {
		c := &cs[i]
		if uint64(c.index) >= uint64(len(b.Entries)) {
			return status(fmt.Errorf("%w: entry %d of a %d-tensor bundle", errs.Invalid, uint64(c.index), len(b.Entries)), cerr, cerrLen)
		}
		o := bundle.Out{Index: int(c.index)}
		name := b.Entries[o.Index].Name
		if o.Dst, err = bytesAt(c.dst, c.dst_cap, "dst"); err != nil {
			return status(fmt.Errorf("tensor %q: %w", name, err), cerr, cerrLen)
		}
		if o.Ref, err = optionalBytes(c.ref, c.ref_nbytes, "ref"); err != nil {
			return status(fmt.Errorf("tensor %q: %w", name, err), cerr, cerrLen)
		}
		if o.Ref2, err = optionalBytes(c.ref2, c.ref2_nbytes, "ref2"); err != nil {
			return status(fmt.Errorf("tensor %q: %w", name, err), cerr, cerrLen)
		}
		req[i] = o
	}
	if err := b.Decode(req, int(nthreads)); err != nil {
		return status(err, cerr, cerrLen)
	}
	return C.TPDE_OK
}
