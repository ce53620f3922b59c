package main

// The library: version, threads, and result documents (include/tpde.h,
// "Library").

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

var cVersion = C.CString(api.Version) // static for the life of the process

// The ABI version, and the constants core/api shares with the header.
var _ = [1]struct{}{}[api.ABIVersion-C.TPDE_ABI_VERSION]
var _ = [1]struct{}{}[api.MaxNDim-C.TPDE_MAX_NDIM]

//export tpde_version
func tpde_version() *C.char { return cVersion }

//export tpde_abi_version
func tpde_abi_version() C.int { return api.ABIVersion }

//export tpde_set_num_threads
func tpde_set_num_threads(n C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	api.SetThreads(int32(n))
	return C.TPDE_OK
}

//export tpde_get_num_threads
func tpde_get_num_threads(n *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if n == nil {
		return status(null("n"), cerr, cerrLen)
	}
	return put(n, api.Threads(), nil, cerr, cerrLen)
}

//export tpde_result
func tpde_result(handle C.uint64_t, out *C.char, capacity C.uint64_t, needed *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	a.need(needed != nil, "needed")
	buf := a.bytes(unsafe.Pointer(out), capacity, "out")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	n, err := api.CopyResult(uint64(handle), caller(), buf)
	return put(needed, n, err, cerr, cerrLen)
}
