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
var _ = [1]struct{}{}[api.TransferCount-C.TPDE_TRANSFER_COUNT]
var _ = [1]struct{}{}[api.TransferUploadedBytes-C.TPDE_TRANSFER_UPLOADED_BYTES]
var _ = [1]struct{}{}[api.TransferBytesSent-C.TPDE_TRANSFER_BYTES_SENT]
var _ = [1]struct{}{}[api.TransferGet-C.TPDE_TRANSFER_GET]

//export tpde_store_open
func tpde_store_open(path *C.char, write C.int32_t, config *C.char, configLen C.uint64_t, nthreads C.int32_t,
	handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(handle != nil, "handle")
	dir, cfg := a.str(path, "path"), a.document(config, configLen, "config")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	refreshRemoteEnv(dir)
	h, err := api.OpenStore(dir, int32(write), cfg, int32(nthreads))
	return put(handle, h, err, cerr, cerrLen)
}

//export tpde_store_close
func tpde_store_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.CloseStore(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_wait
func tpde_store_wait(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.WaitStore(uint64(handle)), cerr, cerrLen)
}

//export tpde_store_object_bytes
func tpde_store_object_bytes(handle C.uint64_t, out *C.int64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(out != nil, "out")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.StoreObjectBytes(uint64(handle))
	if err == nil {
		*out = C.int64_t(n)
	}
	return status(err, cerr, cerrLen)
}

//export tpde_store_transfer
func tpde_store_transfer(handle C.uint64_t, counts *C.uint64_t, n C.uint64_t, written *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(written != nil, "written")
	a.need(counts != nil || n == 0, "counts")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	t, remote, err := api.StoreTransfer(uint64(handle))
	k := 0
	if err == nil && remote {
		v := t.Values()
		k = int(min(uint64(n), uint64(len(v))))
		if k > 0 {
			copy(unsafe.Slice((*uint64)(unsafe.Pointer(counts)), k), v[:k])
		}
	}
	return put(written, uint64(k), err, cerr, cerrLen)
}

//export tpde_store_begin
func tpde_store_begin(handle C.uint64_t, step C.int64_t, hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t,
	base C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	t := a.document(tags, tagsLen, "tags")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.Begin(uint64(handle), int64(step), hasStep != 0, t, base != 0), cerr, cerrLen)
}

//export tpde_store_begin_run
func tpde_store_begin_run(handle C.uint64_t, run *C.char, parent *C.char, parentLen C.uint64_t, step C.int64_t,
	hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	p, t := a.document(parent, parentLen, "parent"), a.document(tags, tagsLen, "tags")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.BeginRun(uint64(handle), optString(run), p, int64(step), hasStep != 0, t), cerr, cerrLen)
}

//export tpde_store_add_file
func tpde_store_add_file(handle C.uint64_t, rel, src *C.char, hints *C.char, hintsLen C.uint64_t, note *C.char,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	r, s, h := a.str(rel, "rel"), a.str(src, "src"), a.document(hints, hintsLen, "hints")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.AddFile(uint64(handle), r, s, h, optString(note), progressTo(progress), cancelFrom(cancel)),
		cerr, cerrLen)
}

// tensors views the caller's n tpde_store_tensors (bytes in place).
func (a *args) tensors(p *C.tpde_store_tensor, n C.uint64_t) []api.NamedTensor {
	cs, err := cArray(p, n, api.MaxStateDictTensors, "tensors")
	a.fail(err)
	ts := make([]api.NamedTensor, len(cs))
	for i := range cs {
		c := &cs[i]
		var one args
		ts[i].Name = one.str(c.name, "name")
		ts[i].Tensor = one.tensor(c.data, c.nbytes, c.dtype, (*C.uint64_t)(unsafe.Pointer(c.shape)), c.ndim, "data")
		if one.err != nil {
			a.fail(fmt.Errorf("tensor %d (%q): %w", i, ts[i].Name, one.err))
			return nil
		}
	}
	return ts
}

//export tpde_store_add_state_dict
func tpde_store_add_state_dict(handle C.uint64_t, rel *C.char, meta *C.char, metaLen C.uint64_t,
	tensors *C.tpde_store_tensor, n C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	r, m, ts := a.str(rel, "rel"), a.document(meta, metaLen, "meta"), a.tensors(tensors, n)
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
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
	var a args
	t, p := a.document(tags, tagsLen, "tags"), a.document(parts, partsLen, "parts")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
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
	var a args
	dir := a.str(folder, "folder")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
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
	var a args
	r := a.str(run, "run")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.RemoveRun(uint64(handle), r), cerr, cerrLen)
}

//export tpde_store_verify
func tpde_store_verify(handle C.uint64_t, deep C.int32_t, repair C.int32_t, progress *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return status(api.Verify(uint64(handle), deep != 0, repair != 0, progressPairTo(progress)), cerr, cerrLen)
}
