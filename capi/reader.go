package main

// Store readers (include/tpde.h, "Store readers"): one committed snapshot
// of a store.

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

var _ = [1]struct{}{}[api.RecordStep-C.TPDE_STORE_STEP]
var _ = [1]struct{}{}[api.RecordLatest-C.TPDE_STORE_LATEST]
var _ = [1]struct{}{}[api.RecordBase-C.TPDE_STORE_BASE]
var _ = [1]struct{}{}[api.RestoreForce-C.TPDE_RESTORE_FORCE]

//export tpde_store_reader_open
func tpde_store_reader_open(handle C.uint64_t, reader *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if reader == nil {
		return status(null("reader"), cerr, cerrLen)
	}
	r, err := api.OpenReader(uint64(handle))
	return put(reader, r, err, cerr, cerrLen)
}

//export tpde_store_reader_close
func tpde_store_reader_close(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.CloseReader(uint64(reader)), cerr, cerrLen)
}

//export tpde_store_reader_steps
func tpde_store_reader_steps(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.ReaderSteps(uint64(reader)), cerr, cerrLen)
}

//export tpde_store_reader_use
func tpde_store_reader_use(reader C.uint64_t, run *C.char, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.ReaderUse(uint64(reader), optString(run)), cerr, cerrLen)
}

//export tpde_store_reader_runs
func tpde_store_reader_runs(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.ReaderRuns(uint64(reader)), cerr, cerrLen)
}

//export tpde_store_reader_record
func tpde_store_reader_record(reader C.uint64_t, step C.int64_t, which C.int32_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.ReaderRecord(uint64(reader), int64(step), int32(which)), cerr, cerrLen)
}

//export tpde_store_reader_tensors
func tpde_store_reader_tensors(reader C.uint64_t, step C.int64_t, which C.int32_t, rel *C.char, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.ReaderTensors(uint64(reader), int64(step), int32(which), optString(rel)), cerr, cerrLen)
}

//export tpde_store_read_tensors
func tpde_store_read_tensors(reader C.uint64_t, step C.int64_t, rel *C.char, spans *C.tpde_store_span, n C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	path := a.str(rel, "rel")
	cs, err := cArray(spans, n, api.MaxSpans, "spans")
	a.fail(err)
	out := make([]api.Span, len(cs))
	for i := range cs {
		out[i] = api.Span{Offset: uint64(cs[i].offset), Dst: a.bytes(cs[i].dst, cs[i].nbytes, "span dst")}
	}
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.ReadTensors(uint64(reader), int64(step), path, out), cerr, cerrLen)
}

//export tpde_store_read_range
func tpde_store_read_range(reader C.uint64_t, step C.int64_t, rel *C.char, offset C.uint64_t, dst unsafe.Pointer,
	n C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	path, buf := a.str(rel, "rel"), a.bytes(dst, n, "dst")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.ReadRange(uint64(reader), int64(step), path, uint64(offset), buf), cerr, cerrLen)
}

//export tpde_store_restore
func tpde_store_restore(reader C.uint64_t, step C.int64_t, rel *C.char, dest *C.char, flags C.int32_t,
	progress *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	d := a.str(dest, "dest")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.Restore(uint64(reader), int64(step), optString(rel), d, int32(flags), progressPairTo(progress)),
		cerr, cerrLen)
}
