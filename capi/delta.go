package main

// Delta frames (include/tpde.h, "Delta frames"): one tensor coded against
// a reference.

/*
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"runtime/debug"
	"unsafe"

	"github.com/tpde/tpde/core/api"
)

var _ = [1]struct{}{}[api.ResidualAuto-C.TPDE_RESIDUAL_AUTO]
var _ = [1]struct{}{}[api.ResidualXOR-C.TPDE_RESIDUAL_XOR]
var _ = [1]struct{}{}[api.ResidualDiff-C.TPDE_RESIDUAL_DIFF]
var _ = [1]struct{}{}[api.ResidualPred-C.TPDE_RESIDUAL_PRED]
var _ = [1]struct{}{}[api.DeltaDenseOnly-C.TPDE_DELTA_DENSE_ONLY]
var _ = [1]struct{}{}[api.DeltaSparseOnly-C.TPDE_DELTA_SPARSE_ONLY]
var _ = [1]struct{}{}[api.DeltaNoContext-C.TPDE_DELTA_NO_CONTEXT]
var _ = [1]struct{}{}[api.DeltaFullContext-C.TPDE_DELTA_FULL_CONTEXT]

//export tpde_encode_delta_bound
func tpde_encode_delta_bound(rawSize C.uint64_t, dt C.int32_t, ndim C.int32_t, chunkElems C.uint32_t,
	bound *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if bound == nil {
		return status(null("bound"), cerr, cerrLen)
	}
	b, err := api.EncodeDeltaBound(uint64(rawSize), int32(dt), int32(ndim), uint32(chunkElems))
	return put(bound, b, err, cerr, cerrLen)
}

//export tpde_encode_delta
func tpde_encode_delta(src unsafe.Pointer, srcLen C.uint64_t, ref unsafe.Pointer, refLen C.uint64_t,
	ref2 unsafe.Pointer, ref2Len C.uint64_t, dt C.int32_t, shape *C.uint64_t, ndim C.int32_t,
	residualKind C.int32_t, threshold C.double, quantBits C.int32_t, flags C.uint32_t,
	chunkElems C.uint32_t, effort C.int32_t, nthreads C.int32_t,
	dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, recon unsafe.Pointer, reconCap C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(outLen != nil, "out_len")
	t := a.tensor(src, srcLen, dt, shape, ndim, "src")
	r, r2 := a.bytes(ref, refLen, "ref"), a.optional(ref2, ref2Len, "ref2")
	out, rec := a.bytes(dst, dstCap, "dst"), a.optional(recon, reconCap, "recon")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.EncodeDelta(t, r, r2, api.DeltaArgs{Residual: int32(residualKind), Threshold: float64(threshold),
		QuantBits: int32(quantBits), Flags: uint32(flags), ChunkElems: uint32(chunkElems), Effort: int32(effort),
		Threads: int32(nthreads)}, out, rec)
	return put(outLen, n, err, cerr, cerrLen)
}

//export tpde_decode_delta
func tpde_decode_delta(src unsafe.Pointer, srcLen C.uint64_t, ref unsafe.Pointer, refLen C.uint64_t,
	ref2 unsafe.Pointer, ref2Len C.uint64_t, dst unsafe.Pointer, dstCap C.uint64_t, nthreads C.int32_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(outLen != nil, "out_len")
	in, out := a.bytes(src, srcLen, "src"), a.bytes(dst, dstCap, "dst")
	r, r2 := a.optional(ref, refLen, "ref"), a.optional(ref2, ref2Len, "ref2")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.DecodeDelta(in, r, r2, out, int32(nthreads))
	return put(outLen, n, err, cerr, cerrLen)
}

//export tpde_inspect_delta
func tpde_inspect_delta(src unsafe.Pointer, srcLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	in := a.bytes(src, srcLen, "src")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.InspectDelta(caller(), in), cerr, cerrLen)
}

//export tpde_delta_threshold
func tpde_delta_threshold(src, ref unsafe.Pointer, n C.uint64_t, dt C.int32_t, percentile C.double,
	threshold *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(threshold != nil, "threshold")
	x, r := a.bytes(src, n, "src"), a.bytes(ref, n, "ref")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	t, err := api.DeltaThreshold(x, r, int32(dt), float64(percentile))
	return put(threshold, t, err, cerr, cerrLen)
}
