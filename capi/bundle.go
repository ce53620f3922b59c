package main

// Checkpoint bundles (docs/FORMAT.md section 9): glue between
// tpde_bundle_* and core/bundle. Writers and opened bundles live in
// core/bundle (Stream, Reader); the tables below only turn the integers C
// holds into them.

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/tpde/tpde/core/bundle"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/handles"
)

var (
	bundleWriters = handles.New[*bundle.Stream]("bundle writer")
	bundleReaders = handles.New[*bundle.Reader]("bundle")
)

// maxBundleItems caps n in one call, before any allocation sized by it.
const maxBundleItems = bundle.MaxEntries

// cArray views n C structs at p (nil for n == 0).
func cArray[T any](p *T, n C.uint64_t, what string) ([]T, error) {
	if n == 0 {
		return nil, nil
	}
	if p == nil || uint64(n) > maxBundleItems {
		return nil, fmt.Errorf("%w: %d %s at %p", errs.Invalid, uint64(n), what, p)
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

func itemsArg(items *C.tpde_bundle_item, n C.uint64_t) ([]C.tpde_bundle_item, []bundle.Item, error) {
	cs, err := cArray(items, n, "items")
	if err != nil {
		return nil, nil, err
	}
	its, err := bundleItems(cs)
	return cs, its, err
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

func bundleOptions(effort, nthreads C.int32_t) (bundle.Options, error) {
	if effort < 0 || effort > C.int32_t(entropy.Max) {
		return bundle.Options{}, fmt.Errorf("%w: effort %d", errs.Invalid, int32(effort))
	}
	return bundle.Options{Threads: int(nthreads), Effort: entropy.Effort(effort)}, nil
}

func metaArg(meta *C.char, metaLen C.uint64_t) ([]byte, error) {
	if uint64(metaLen) > bundle.MaxMetaLen {
		return nil, fmt.Errorf("%w: metadata of %d bytes (max %d)", errs.Invalid, uint64(metaLen), bundle.MaxMetaLen)
	}
	return optionalBytes(unsafe.Pointer(meta), metaLen, "meta")
}

//export tpde_bundle_bound
func tpde_bundle_bound(items *C.tpde_bundle_item, n C.uint64_t, metaLen C.uint64_t, bound *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if bound == nil || uint64(metaLen) > bundle.MaxMetaLen {
		return status(fmt.Errorf("%w: bound %p, meta_len %d", errs.Invalid, bound, uint64(metaLen)), cerr, cerrLen)
	}
	_, its, err := itemsArg(items, n)
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

//export tpde_bundle_thresholds
func tpde_bundle_thresholds(items *C.tpde_bundle_item, n C.uint64_t, percentile C.double, nthreads C.int32_t,
	thresholds *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	_, its, err := itemsArg(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := cArray(thresholds, n, "thresholds")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	ts, err := bundle.Thresholds(its, float64(percentile), int(nthreads))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	for i, t := range ts {
		out[i] = C.double(t)
	}
	return C.TPDE_OK
}

//export tpde_bundle_writer_open
func tpde_bundle_writer_open(path *C.char, handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if handle == nil {
		return status(fmt.Errorf("%w: handle is NULL", errs.Invalid), cerr, cerrLen)
	}
	s := bundle.NewPieces()
	if path != nil {
		var err error
		if s, err = bundle.CreateFile(C.GoString(path)); err != nil {
			return status(err, cerr, cerrLen)
		}
	}
	*handle = C.uint64_t(bundleWriters.Put(s))
	return C.TPDE_OK
}

//export tpde_bundle_writer_add
func tpde_bundle_writer_add(handle C.uint64_t, items *C.tpde_bundle_item, n C.uint64_t, effort C.int32_t,
	nthreads C.int32_t, dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	s, err := bundleWriters.Get(uint64(handle))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	opt, err := bundleOptions(effort, nthreads)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	cs, its, err := itemsArg(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := optionalBytes(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	res := make([]bundle.ItemResult, len(its))
	wrote, err := s.Add(out, its, opt, res)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	fillItemResults(cs, res)
	if outLen != nil {
		*outLen = C.uint64_t(wrote)
	}
	return C.TPDE_OK
}

//export tpde_bundle_writer_close
func tpde_bundle_writer_close(handle C.uint64_t, meta *C.char, metaLen C.uint64_t, commit C.int32_t,
	dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	s, err := bundleWriters.Get(uint64(handle))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	m, err := metaArg(meta, metaLen)
	var out []byte
	if err == nil {
		out, err = optionalBytes(dst, dstCap, "dst")
	}
	if err != nil {
		// Bad arguments end the writer too: close always releases the
		// handle, but for a memory writer's too-small buffer.
		s.Close(nil, nil, false)
		_, _ = bundleWriters.Take(uint64(handle))
		return status(err, cerr, cerrLen)
	}
	total, err := s.Close(out, m, commit != 0)
	if s.Ended() {
		_, _ = bundleWriters.Take(uint64(handle))
	}
	if outLen != nil && (err == nil || errors.Is(err, errs.BufferTooSmall)) {
		*outLen = C.uint64_t(total)
	}
	return status(err, cerr, cerrLen)
}

//export tpde_bundle_open
func tpde_bundle_open(src unsafe.Pointer, srcLen C.uint64_t, handle *C.uint64_t, info *C.tpde_bundle_info,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if handle == nil || info == nil {
		return status(fmt.Errorf("%w: handle or info is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r, err := bundle.OpenReader(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*info = C.tpde_bundle_info{size: C.uint64_t(r.Size), count: C.uint64_t(len(r.Entries)),
		meta_len: C.uint64_t(len(r.Meta)), version_minor: C.uint32_t(r.VersionMinor)}
	for i := range r.Entries {
		info.names_len += C.uint64_t(len(r.Entries[i].Name))
		info.dims += C.uint64_t(len(r.Infos[i].Shape))
	}
	*handle = C.uint64_t(bundleReaders.Put(r))
	return C.TPDE_OK
}

// outputArg views an optional output of tpde_bundle_index: NULL skips it,
// else it must hold need elements.
func outputArg[T any](p *T, capacity C.uint64_t, need int, what string) ([]T, error) {
	if p == nil {
		return nil, nil
	}
	if uint64(capacity) < uint64(need) {
		return nil, fmt.Errorf("%w: %s holds %d, the bundle has %d", errs.BufferTooSmall, what, uint64(capacity), need)
	}
	return unsafe.Slice(p, need), nil
}

//export tpde_bundle_index
func tpde_bundle_index(handle C.uint64_t, entries *C.tpde_bundle_entry, n C.uint64_t, names *C.char,
	namesCap C.uint64_t, dims *C.uint64_t, dimsCap C.uint64_t, meta *C.char, metaCap C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	r, err := bundleReaders.Get(uint64(handle))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	namesLen, ndims := 0, 0
	for i := range r.Entries {
		namesLen += len(r.Entries[i].Name)
		ndims += len(r.Infos[i].Shape)
	}
	es, err := outputArg(entries, n, len(r.Entries), "entries")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	ns, err := outputArg((*byte)(unsafe.Pointer(names)), namesCap, namesLen, "names")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	ds, err := outputArg((*uint64)(unsafe.Pointer(dims)), dimsCap, ndims, "dims")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	ms, err := outputArg((*byte)(unsafe.Pointer(meta)), metaCap, len(r.Meta), "meta")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	copy(ms, r.Meta)
	nameAt, dimAt := 0, 0
	for i, e := range r.Entries {
		in := &r.Infos[i]
		if ns != nil {
			copy(ns[nameAt:], e.Name)
		}
		if ds != nil {
			copy(ds[dimAt:], in.Shape)
		}
		if es != nil {
			c := &es[i]
			*c = C.tpde_bundle_entry{offset: C.uint64_t(e.Offset), frame_size: C.uint64_t(e.Length),
				raw_size: C.uint64_t(in.RawSize), name_offset: C.uint64_t(nameAt), dims_offset: C.uint64_t(dimAt),
				changed_elems: C.uint64_t(in.Changed), bound: C.double(in.Bound), max_error: C.double(in.MaxErr),
				name_len: C.uint32_t(len(e.Name)), dtype: C.int32_t(in.DType), ndim: C.uint32_t(len(in.Shape)),
				residual: C.int32_t(in.Residual)}
			c.kind, c.identical, c.lossy, c.needs_ref2 = cBool(in.Delta), cBool(in.Identical), cBool(in.Lossy), cBool(in.NeedsRef2)
		}
		nameAt += len(e.Name)
		dimAt += len(in.Shape)
	}
	return C.TPDE_OK
}

func cBool(b bool) C.uint8_t {
	if b {
		return 1
	}
	return 0
}

//export tpde_bundle_decode
func tpde_bundle_decode(handle C.uint64_t, outs *C.tpde_bundle_out, n C.uint64_t, nthreads C.int32_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	r, err := bundleReaders.Get(uint64(handle))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	cs, err := cArray(outs, n, "outs")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	req := make([]bundle.Out, len(cs))
	for i := range cs {
		c := &cs[i]
		if uint64(c.index) >= uint64(len(r.Entries)) {
			return status(fmt.Errorf("%w: entry %d of a %d-tensor bundle", errs.Invalid, uint64(c.index), len(r.Entries)), cerr, cerrLen)
		}
		o := bundle.Out{Index: int(c.index)}
		name := r.Entries[o.Index].Name
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
	return status(r.Decode(req, int(nthreads)), cerr, cerrLen)
}

//export tpde_bundle_close
func tpde_bundle_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	_, err := bundleReaders.Take(uint64(handle))
	return status(err, cerr, cerrLen)
}
