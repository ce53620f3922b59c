package main

// Bundles (include/tpde.h, "Bundles"): a checkpoint's named tensors,
// written by a writer session across calls and read through an
// opened-bundle session.

/*
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/tpde/tpde/core/api"
	"github.com/tpde/tpde/core/errs"
)

// items views the caller's n tpde_bundle_items as api.BundleItems
// (tensor bytes in place). Errors name the item or tensor.
func (a *args) items(p *C.tpde_bundle_item, n C.uint64_t) []api.BundleItem {
	cs, err := cArray(p, n, api.MaxBundleItems, "items")
	a.fail(err)
	items := make([]api.BundleItem, len(cs))
	for i := range cs {
		c, it := &cs[i], &items[i]
		var one args
		it.Name = string(one.bytes(unsafe.Pointer(c.name), c.name_len, "name"))
		if c.reserved != 0 {
			one.fail(fmt.Errorf("%w: reserved is %d, not 0", errs.Invalid, int32(c.reserved)))
		}
		it.Tensor = one.tensor(c.data, c.nbytes, c.dtype, (*C.uint64_t)(unsafe.Pointer(c.shape)), c.ndim, "data")
		if c.ref != nil {
			it.Ref = one.bytes(c.ref, c.ref_nbytes, "ref")
		}
		it.Ref2, it.Recon = one.optional(c.ref2, c.ref2_nbytes, "ref2"), one.optional(c.recon, c.recon_cap, "recon")
		it.Delta = api.DeltaArgs{Residual: int32(c.residual_kind), Flags: uint32(c.flags),
			Threshold: float64(c.threshold), QuantBits: int32(c.quant_bits)}
		if one.err != nil {
			a.fail(fmt.Errorf("item %d (%q): %w", i, it.Name, one.err))
			return nil
		}
	}
	return items
}

//export tpde_bundle_bound
func tpde_bundle_bound(items *C.tpde_bundle_item, n C.uint64_t, metaLen C.uint64_t, bound *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(bound != nil, "bound")
	its := a.items(items, n)
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	b, err := api.BundleBound(its, uint64(metaLen))
	return put(bound, b, err, cerr, cerrLen)
}

//export tpde_bundle_thresholds
func tpde_bundle_thresholds(items *C.tpde_bundle_item, n C.uint64_t, percentile C.double, nthreads C.int32_t,
	thresholds *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	its := a.items(items, n)
	out, err := cArray((*float64)(unsafe.Pointer(thresholds)), n, api.MaxBundleItems, "thresholds")
	a.fail(err)
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.BundleThresholds(its, float64(percentile), int32(nthreads), out), cerr, cerrLen)
}

//export tpde_bundle_writer_open
func tpde_bundle_writer_open(path *C.char, handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if handle == nil {
		return status(null("handle"), cerr, cerrLen)
	}
	if path == nil {
		return put(handle, api.OpenBundlePieces(), nil, cerr, cerrLen)
	}
	h, err := api.OpenBundleFile(C.GoString(path))
	return put(handle, h, err, cerr, cerrLen)
}

//export tpde_bundle_writer_add
func tpde_bundle_writer_add(handle C.uint64_t, items *C.tpde_bundle_item, n C.uint64_t, effort C.int32_t,
	nthreads C.int32_t, dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	its, out := a.items(items, n), a.optional(dst, dstCap, "dst")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	wrote, err := api.BundleWriterAdd(uint64(handle), its, int32(effort), int32(nthreads), out)
	return put(outLen, wrote, err, cerr, cerrLen)
}

//export tpde_bundle_writer_close
func tpde_bundle_writer_close(handle C.uint64_t, meta *C.char, metaLen C.uint64_t, commit C.int32_t,
	dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	m, out := a.document(meta, metaLen, "meta"), a.optional(dst, dstCap, "dst")
	if a.err != nil {
		// close always releases the handle but for a too-small buffer:
		// bad arguments end the writer too.
		_, _ = api.BundleWriterClose(uint64(handle), nil, false, nil)
		return status(a.err, cerr, cerrLen)
	}
	total, err := api.BundleWriterClose(uint64(handle), m, commit != 0, out)
	return put(outLen, total, err, cerr, cerrLen)
}

//export tpde_bundle_open
func tpde_bundle_open(src unsafe.Pointer, srcLen C.uint64_t, handle *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(handle != nil, "handle")
	in := a.bytes(src, srcLen, "src")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	h, err := api.OpenBundle(in)
	return put(handle, h, err, cerr, cerrLen)
}

//export tpde_bundle_decode
func tpde_bundle_decode(handle C.uint64_t, outs *C.tpde_bundle_out, n C.uint64_t, nthreads C.int32_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	cs, err := cArray(outs, n, api.MaxBundleItems, "outs")
	a.fail(err)
	req := make([]api.BundleOut, len(cs))
	for i := range cs {
		c, o := &cs[i], &req[i]
		var one args
		o.Index, o.Dst = uint64(c.index), one.bytes(c.dst, c.dst_cap, "dst")
		o.Ref, o.Ref2 = one.optional(c.ref, c.ref_nbytes, "ref"), one.optional(c.ref2, c.ref2_nbytes, "ref2")
		if one.err != nil {
			a.fail(fmt.Errorf("entry %d: %w", o.Index, one.err))
		}
	}
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.BundleDecode(uint64(handle), req, int32(nthreads)), cerr, cerrLen)
}

//export tpde_bundle_close
func tpde_bundle_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.BundleClose(uint64(handle)), cerr, cerrLen)
}
