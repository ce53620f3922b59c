package main

// Files (include/tpde.h, "Files"): a whole file into a tpde file and back.

/*
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"runtime/debug"

	"github.com/tpde/tpde/core/api"
)

var _ = [1]struct{}{}[api.FileNoReplace-C.TPDE_FILE_NO_REPLACE]
var _ = [1]struct{}{}[api.FileNoFollow-C.TPDE_FILE_NO_FOLLOW]

// fileArgs are what the file calls share besides their paths.
func fileArgs(nthreads C.int32_t, flags C.uint32_t, progress *C.uint64_t, cancel *C.int32_t) api.FileArgs {
	return api.FileArgs{Threads: int32(nthreads), Flags: uint32(flags), Progress: progressTo(progress),
		Cancelled: cancelFrom(cancel)}
}

//export tpde_compress_file
func tpde_compress_file(srcPath, dstPath *C.char, nthreads C.int32_t, torchHints *C.char, torchHintsLen C.uint64_t,
	flags C.uint32_t, progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	src, dst := a.str(srcPath, "src_path"), a.str(dstPath, "dst_path")
	hints := a.document(torchHints, torchHintsLen, "torch_hints")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.CompressFile(src, dst, hints, fileArgs(nthreads, flags, progress, cancel)), cerr, cerrLen)
}

//export tpde_decompress_file
func tpde_decompress_file(srcPath, dstPath *C.char, nthreads C.int32_t, maxOutput C.uint64_t, flags C.uint32_t,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	src, dst := a.str(srcPath, "src_path"), a.str(dstPath, "dst_path")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.DecompressFile(src, dst, uint64(maxOutput), fileArgs(nthreads, flags, progress, cancel)),
		cerr, cerrLen)
}

//export tpde_file_info
func tpde_file_info(path *C.char, maxSegments C.uint32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	p := a.str(path, "path")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	return status(api.FileInfo(caller(), p, uint32(maxSegments)), cerr, cerrLen)
}
