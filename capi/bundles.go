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

// itemsAt views the caller's n tpde_bundle_items as api.BundleItems
// (tensor bytes in place). Errors name the item or tensor.
func itemsAt(p *C.tpde_bundle_item, n C.uint64_t) ([]api.BundleItem, error) {
	cs, err := cArray(p, n, api.MaxBundleItems, "items")
	if err != nil {
		return nil, err
	}
	items := make([]api.BundleItem, len(cs))
	for i := range cs {
		c, it := &cs[i], &items[i]
		name, err := bytesAt(unsafe.Pointer(c.name), c.name_len, "name")
		if err != nil {
			return nil, fmt.Errorf("item %d: %w", i, err)
		}
		it.Name = string(name)
		if c.reserved != 0 {
			return nil, fmt.Errorf("%w: tensor %q: reserved is %d, not 0", errs.Invalid, it.Name, int32(c.reserved))
		}
		if it.Tensor, err = tensorAt(c.data, c.nbytes, c.dtype, (*C.uint64_t)(unsafe.Pointer(c.shape)), c.ndim, "data"); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		if c.ref != nil {
			if it.Ref, err = bytesAt(c.ref, c.ref_nbytes, "ref"); err != nil {
				return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
			}
		}
		if it.Ref2, err = optionalBytes(c.ref2, c.ref2_nbytes, "ref2"); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		if it.Recon, err = optionalBytes(c.recon, c.recon_cap, "recon"); err != nil {
			return nil, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		it.Delta = api.DeltaArgs{Residual: int32(c.residual_kind), Flags: uint32(c.flags),
			Threshold: float64(c.threshold), QuantBits: int32(c.quant_bits)}
	}
	return items, nil
}

//export tpde_bundle_bound
func tpde_bundle_bound(items *C.tpde_bundle_item, n C.uint64_t, metaLen C.uint64_t, bound *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if bound == nil {
		return status(null("bound"), cerr, cerrLen)
	}
	its, err := itemsAt(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := api.BundleBound(its, uint64(metaLen))
	return put(bound, b, err, cerr, cerrLen)
}

//export tpde_bundle_thresholds
func tpde_bundle_thresholds(items *C.tpde_bundle_item, n C.uint64_t, percentile C.double, nthreads C.int32_t,
	thresholds *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	its, err := itemsAt(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := cArray((*float64)(unsafe.Pointer(thresholds)), n, api.MaxBundleItems, "thresholds")
	if err != nil {
		return status(err, cerr, cerrLen)
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
	its, err := itemsAt(items, n)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := optionalBytes(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	wrote, err := api.BundleWriterAdd(uint64(handle), its, int32(effort), int32(nthreads), out)
	return put(outLen, wrote, err, cerr, cerrLen)
}

//export tpde_bundle_writer_close
func tpde_bundle_writer_close(handle C.uint64_t, meta *C.char, metaLen C.uint64_t, commit C.int32_t,
	dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	m, err := document(meta, metaLen, "meta")
	var out []byte
	if err == nil {
		out, err = optionalBytes(dst, dstCap, "dst")
	}
	if err != nil {
		// close always releases the handle but for a too-small buffer:
		// bad arguments end the writer too.
		_, _ = api.BundleWriterClose(uint64(handle), nil, false, nil)
		return status(err, cerr, cerrLen)
	}
	total, err := api.BundleWriterClose(uint64(handle), m, commit != 0, out)
	return put(outLen, total, err, cerr, cerrLen)
}

//export tpde_bundle_open
func tpde_bundle_open(src unsafe.Pointer, srcLen C.uint64_t, handle *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if handle == nil {
		return status(null("handle"), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := api.OpenBundle(in)
	return put(handle, h, err, cerr, cerrLen)
}

//export tpde_bundle_decode
func tpde_bundle_decode(handle C.uint64_t, outs *C.tpde_bundle_out, n C.uint64_t, nthreads C.int32_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	cs, err := cArray(outs, n, api.MaxBundleItems, "outs")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	req := make([]api.BundleOut, len(cs))
	for i := range cs {
		c, o := &cs[i], &req[i]
		o.Index = uint64(c.index)
		if o.Dst, err = bytesAt(c.dst, c.dst_cap, "dst"); err == nil {
			if o.Ref, err = optionalBytes(c.ref, c.ref_nbytes, "ref"); err == nil {
				o.Ref2, err = optionalBytes(c.ref2, c.ref2_nbytes, "ref2")
			}
		}
		if err != nil {
			return status(fmt.Errorf("entry %d: %w", o.Index, err), cerr, cerrLen)
		}
	}
	return status(api.BundleDecode(uint64(handle), req, int32(nthreads)), cerr, cerrLen)
}

//export tpde_bundle_close
func tpde_bundle_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.BundleClose(uint64(handle)), cerr, cerrLen)
}
