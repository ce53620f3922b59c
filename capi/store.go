package main

// The checkpoint store (include/tpde.h, "The store"): a store session
// holds an open store and at most one checkpoint being added.

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
)

var _ = [1]struct{}{}[api.StoreWrite-C.TPDE_STORE_WRITE]
var _ = [1]struct{}{}[api.StoreStage-C.TPDE_STORE_STAGE]

//export tpde_store_open
func tpde_store_open(path *C.char, write C.int32_t, config *C.char, configLen C.uint64_t, nthreads C.int32_t,
	handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if path == nil || handle == nil {
		return status(null("path or handle"), cerr, cerrLen)
	}
	cfg, err := document(config, configLen, "config")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := api.OpenStore(C.GoString(path), int32(write), cfg, int32(nthreads))
	return put(handle, h, err, cerr, cerrLen)
}

//export tpde_store_close
func tpde_store_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.CloseStore(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_begin
func tpde_store_begin(handle C.uint64_t, step C.int64_t, hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t,
	base C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	t, err := document(tags, tagsLen, "tags")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.Begin(uint64(handle), int64(step), hasStep != 0, t, base != 0), cerr, cerrLen)
}

//export tpde_store_begin_run
func tpde_store_begin_run(handle C.uint64_t, run *C.char, parent *C.char, parentLen C.uint64_t, step C.int64_t,
	hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	p, err := document(parent, parentLen, "parent")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	t, err := document(tags, tagsLen, "tags")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.BeginRun(uint64(handle), optString(run), p, int64(step), hasStep != 0, t), cerr, cerrLen)
}

//export tpde_store_add_file
func tpde_store_add_file(handle C.uint64_t, rel, src *C.char, hints *C.char, hintsLen C.uint64_t, note *C.char,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if rel == nil || src == nil {
		return status(null("rel or src"), cerr, cerrLen)
	}
	h, err := document(hints, hintsLen, "hints")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.AddFile(uint64(handle), C.GoString(rel), C.GoString(src), h, optString(note),
		progressTo(progress), cancelFrom(cancel)), cerr, cerrLen)
}

//export tpde_store_add_state_dict
func tpde_store_add_state_dict(handle C.uint64_t, rel *C.char, meta *C.char, metaLen C.uint64_t,
	tensors *C.tpde_store_tensor, n C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	r, err := goString(rel, "rel")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	m, err := document(meta, metaLen, "meta")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	cs, err := cArray(tensors, n, api.MaxStateDictTensors, "tensors")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	ts := make([]api.NamedTensor, len(cs))
	for i := range cs {
		c := &cs[i]
		if c.name == nil {
			return status(fmt.Errorf("tensor %d: %w", i, null("name")), cerr, cerrLen)
		}
		ts[i].Name = C.GoString(c.name)
		if ts[i].Tensor, err = tensorAt(c.data, c.nbytes, c.dtype, (*C.uint64_t)(unsafe.Pointer(c.shape)), c.ndim, "data"); err != nil {
			return status(fmt.Errorf("tensor %q: %w", ts[i].Name, err), cerr, cerrLen)
		}
	}
	return status(api.AddStateDict(uint64(handle), r, m, ts), cerr, cerrLen)
}

//export tpde_store_commit
func tpde_store_commit(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Commit(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_abort
func tpde_store_abort(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Abort(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_finish_part
func tpde_store_finish_part(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.FinishPart(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_commit_parts
func tpde_store_commit_parts(handle C.uint64_t, step C.int64_t, hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t,
	holder *C.char, parts *C.char, partsLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	t, err := document(tags, tagsLen, "tags")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	p, err := document(parts, partsLen, "parts")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.CommitParts(uint64(handle), int64(step), hasStep != 0, t, optString(holder), p), cerr, cerrLen)
}

//export tpde_store_reclaim
func tpde_store_reclaim(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Reclaim(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_read_pointer
func tpde_store_read_pointer(folder *C.char, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	dir, err := goString(folder, "folder")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.ReadPointer(caller(), dir), cerr, cerrLen)
}

//export tpde_store_remove
func tpde_store_remove(handle C.uint64_t, run *C.char, step C.int64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Remove(uint64(handle), optString(run), int64(step)), cerr, cerrLen)
}

//export tpde_store_remove_run
func tpde_store_remove_run(handle C.uint64_t, run *C.char, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	r, err := goString(run, "run")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(api.RemoveRun(uint64(handle), r), cerr, cerrLen)
}

//export tpde_store_verify
func tpde_store_verify(handle C.uint64_t, deep C.int32_t, repair C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Verify(uint64(handle), deep != 0, repair != 0), cerr, cerrLen)
}
