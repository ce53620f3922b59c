package main

// Frames (include/tpde.h, "Frames"): one tensor coded alone.

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

//export tpde_encode_bound
func tpde_encode_bound(rawSize C.uint64_t, dt C.int32_t, ndim C.int32_t, chunkElems C.uint32_t,
	bound *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if bound == nil {
		return status(null("bound"), cerr, cerrLen)
	}
	b, err := api.EncodeBound(uint64(rawSize), int32(dt), int32(ndim), uint32(chunkElems))
	return put(bound, b, err, cerr, cerrLen)
}

//export tpde_encode
func tpde_encode(src unsafe.Pointer, srcLen C.uint64_t, dt C.int32_t, shape *C.uint64_t, ndim C.int32_t,
	chunkElems C.uint32_t, effort C.int32_t, nthreads C.int32_t, dst unsafe.Pointer, dstCap C.uint64_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(outLen != nil, "out_len")
	t, out := a.tensor(src, srcLen, dt, shape, ndim, "src"), a.bytes(dst, dstCap, "dst")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.Encode(t, uint32(chunkElems), int32(effort), int32(nthreads), out)
	return put(outLen, n, err, cerr, cerrLen)
}

//export tpde_decode
func tpde_decode(src unsafe.Pointer, srcLen C.uint64_t, dst unsafe.Pointer, dstCap C.uint64_t, nthreads C.int32_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(outLen != nil, "out_len")
	in, out := a.bytes(src, srcLen, "src"), a.bytes(dst, dstCap, "dst")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.Decode(in, out, int32(nthreads))
	return put(outLen, n, err, cerr, cerrLen)
}

//export tpde_inspect
func tpde_inspect(src unsafe.Pointer, srcLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	in := a.bytes(src, srcLen, "src")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.Inspect(caller(), in), cerr, cerrLen)
}

//export tpde_frame_shape
func tpde_frame_shape(src unsafe.Pointer, srcLen C.uint64_t, dt *C.int32_t, ndim *C.int32_t, shape *C.uint64_t,
	rawSize *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(dt != nil, "dtype")
	a.need(ndim != nil, "ndim")
	a.need(shape != nil, "shape")
	a.need(rawSize != nil, "raw_size")
	in := a.bytes(src, srcLen, "src")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	fs, err := api.Shape(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	// The caller's array holds TPDE_MAX_NDIM entries; Parse refuses more.
	dims := unsafe.Slice((*uint64)(unsafe.Pointer(shape)), len(fs.Shape))
	copy(dims, fs.Shape)
	*dt, *ndim, *rawSize = C.int32_t(fs.DType), C.int32_t(len(fs.Shape)), C.uint64_t(fs.RawSize)
	return status(nil, cerr, cerrLen)
}

//export tpde_entropy_bound
func tpde_entropy_bound(src unsafe.Pointer, srcLen C.uint64_t, dt C.int32_t, bits *C.double, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(bits != nil, "bits")
	in := a.bytes(src, srcLen, "src")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	b, err := api.EntropyBound(api.Tensor{DType: int32(dt), Data: in})
	return put(bits, b, err, cerr, cerrLen)
}
