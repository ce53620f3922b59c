// Command capi is the C ABI of tpde, built with
//
//	go build -buildmode=c-shared -o libtpde.so ./capi
//
// It is //export glue over core/api only, one file per section of
// include/tpde.h and in its order: each export turns C arguments into Go
// values (slices over the caller's memory, never copies of tensor bytes;
// NULL and length checks), calls one core/api function, writes its
// scalars through the caller's out-pointers and returns its status. What
// is not C conversion (sessions, options, result documents, the status of
// an error) lives in core/api, where Go tests reach it. include/tpde.h
// documents every function; keep them in step.
//
// This file: statuses and messages, the guard every export defers (no Go
// panic crosses the ABI), and the conversions the exports share.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#define TPDE_NO_PROTOTYPES
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include "tpde.h"

static void tpde_write_err(char *err, size_t err_len, const char *msg, size_t msg_len) {
	if (err == NULL || err_len == 0) return;
	if (msg_len > err_len - 1) msg_len = err_len - 1;
	memcpy(err, msg, msg_len);
	err[msg_len] = 0;
}

// The calling thread: a call on no handle keeps its result document for
// it (api.Caller). Go code of an export runs on the thread that called it.
static uint64_t tpde_caller(void) { return (uint64_t)(uintptr_t)pthread_self(); }
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"sync/atomic"
	"unsafe"

	"github.com/tpde/tpde/core/api"
	"github.com/tpde/tpde/core/errs"
)

func main() {}

// The codes core/api uses are include/tpde.h's: each index below is 0
// exactly when the two agree, and anything else does not compile.
var _ = [1]struct{}{}[api.Invalid-C.TPDE_E_INVALID]
var _ = [1]struct{}{}[api.Corrupt-C.TPDE_E_CORRUPT]
var _ = [1]struct{}{}[api.Unsupported-C.TPDE_E_UNSUPPORTED]
var _ = [1]struct{}{}[api.BufferTooSmall-C.TPDE_E_BUFFER_TOO_SMALL]
var _ = [1]struct{}{}[api.IO-C.TPDE_E_IO]
var _ = [1]struct{}{}[api.Internal-C.TPDE_E_INTERNAL]
var _ = [1]struct{}{}[api.Reference-C.TPDE_E_REFERENCE]
var _ = [1]struct{}{}[api.Limit-C.TPDE_E_LIMIT]
var _ = [1]struct{}{}[api.Cancelled-C.TPDE_E_CANCELLED]
var _ = [1]struct{}{}[api.OK-C.TPDE_OK]

// status writes err's message (include/tpde.h: one line, " [errno N]" for
// an I/O error with an OS error number) and returns its status code.
func status(err error, cerr *C.char, cerrLen C.size_t) C.int {
	if err == nil {
		return C.TPDE_OK
	}
	msg := api.Message(err)
	C.tpde_write_err(cerr, cerrLen, (*C.char)(unsafe.Pointer(unsafe.StringData(msg))), C.size_t(len(msg)))
	return C.int(api.StatusOf(err))
}

// put writes a call's scalar result through the caller's out-pointer (when
// not NULL) on success, and on TPDE_E_BUFFER_TOO_SMALL, where it is the
// size needed; then returns the status.
func put[P ~uint64 | ~float64 | ~int32, V ~uint64 | ~float64 | ~int32](p *P, v V, err error, cerr *C.char, cerrLen C.size_t) C.int {
	if p != nil && (err == nil || api.StatusOf(err) == api.BufferTooSmall) {
		*p = P(v)
	}
	return status(err, cerr, cerrLen)
}

// guard turns a panic into TPDE_E_INTERNAL so that none crosses the ABI, and
// a memory fault (debug.SetPanicOnFault, switched on at entry) into
// TPDE_E_IO. Every export starts with
//
//	defer guard(&rc, err, errLen, debug.SetPanicOnFault(true))
//
// which switches faults to panics for this goroutine at entry and restores
// the caller's setting on return. Goroutines the core starts are covered
// by core/par, which recovers in each of them.
func guard(rc *C.int, cerr *C.char, cerrLen C.size_t, prevPanicOnFault bool) {
	debug.SetPanicOnFault(prevPanicOnFault)
	if r := recover(); r != nil {
		*rc = status(api.Panicked(r, debug.Stack()), cerr, cerrLen)
	}
}

// caller is the calling thread, as core/api names it.
func caller() api.Caller { return api.Caller(C.tpde_caller()) }

// null is the error of a required pointer argument that is NULL.
func null(what string) error { return fmt.Errorf("%w: %s is NULL", errs.Invalid, what) }

// args converts one call's C arguments and keeps the first error: an
// export converts them all, checks a.err once, then calls core/api.
type args struct{ err error }

func (a *args) fail(err error) {
	if a.err == nil && err != nil {
		a.err = err
	}
}

// need refuses a required pointer that is NULL (ok false).
func (a *args) need(ok bool, what string) {
	if !ok {
		a.fail(null(what))
	}
}

// bytes views C memory as a Go slice without copying. Go keeps it only
// for the duration of the call.
func (a *args) bytes(p unsafe.Pointer, n C.uint64_t, what string) []byte {
	b, err := bytesAt(p, n, what)
	a.fail(err)
	return b
}

// optional is bytes for an argument that may be NULL (nil result).
func (a *args) optional(p unsafe.Pointer, n C.uint64_t, what string) []byte {
	if p == nil && n == 0 {
		return nil
	}
	return a.bytes(p, n, what)
}

// document is a JSON argument (config, tags, hints, ...): NULL is none.
func (a *args) document(p *C.char, n C.uint64_t, what string) []byte {
	return a.optional(unsafe.Pointer(p), n, what)
}

// str is a required NUL-terminated string argument.
func (a *args) str(p *C.char, what string) string {
	a.need(p != nil, what)
	return optString(p)
}

// tensor views a caller's tensor: its bytes in place, its shape copied.
func (a *args) tensor(data unsafe.Pointer, n C.uint64_t, dt C.int32_t, shape *C.uint64_t, ndim C.int32_t, what string) api.Tensor {
	dims, err := shapeAt(shape, ndim)
	a.fail(err)
	return api.Tensor{DType: int32(dt), Shape: dims, Data: a.bytes(data, n, what)}
}

func bytesAt(p unsafe.Pointer, n C.uint64_t, what string) ([]byte, error) {
	if n == 0 {
		return []byte{}, nil
	}
	if p == nil {
		return nil, fmt.Errorf("%w: %s is NULL with length %d", errs.Invalid, what, uint64(n))
	}
	if uint64(n) > 1<<62 {
		return nil, fmt.Errorf("%w: %s length %d", errs.Invalid, what, uint64(n))
	}
	return unsafe.Slice((*byte)(p), int(n)), nil
}

// optString is an optional string argument: NULL is "".
func optString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// shapeAt copies a shape of ndim dimensions (at most TPDE_MAX_NDIM).
func shapeAt(p *C.uint64_t, ndim C.int32_t) ([]uint64, error) {
	if ndim < 0 || ndim > api.MaxNDim || (ndim > 0 && p == nil) {
		return nil, fmt.Errorf("%w: ndim %d with shape %p", errs.Invalid, int32(ndim), p)
	}
	shape := make([]uint64, int(ndim))
	if ndim > 0 {
		copy(shape, unsafe.Slice((*uint64)(unsafe.Pointer(p)), int(ndim)))
	}
	return shape, nil
}

// cArray views n C structs at p (nil for n == 0), n at most max.
func cArray[T any](p *T, n C.uint64_t, max uint64, what string) ([]T, error) {
	if n == 0 {
		return nil, nil
	}
	if p == nil || uint64(n) > max {
		return nil, fmt.Errorf("%w: %d %s at %p (at most %d)", errs.Invalid, uint64(n), what, p, max)
	}
	return unsafe.Slice(p, int(n)), nil
}

// progressTo returns a callback storing into a caller's counter, or nil.
func progressTo(p *C.uint64_t) func(uint64) {
	if p == nil {
		return nil
	}
	// Chunks finish out of order on several goroutines, so keep the maximum
	// rather than the last value stored: the counter must never go back.
	ctr := (*uint64)(unsafe.Pointer(p))
	atomic.StoreUint64(ctr, 0)
	return func(done uint64) {
		for {
			old := atomic.LoadUint64(ctr)
			if done <= old || atomic.CompareAndSwapUint64(ctr, old, done) {
				return
			}
		}
	}
}

// progressPairTo returns a report into the caller's two counters [done,
// total], or nil: total first, so that a reader never sees done > total.
func progressPairTo(p *C.uint64_t) func(done, total uint64) {
	if p == nil {
		return nil
	}
	pair := unsafe.Slice((*uint64)(unsafe.Pointer(p)), 2)
	atomic.StoreUint64(&pair[0], 0)
	atomic.StoreUint64(&pair[1], 0)
	return func(done, total uint64) {
		atomic.StoreUint64(&pair[1], total)
		atomic.StoreUint64(&pair[0], min(done, total))
	}
}

// cancelFrom returns a poll of a caller's cancel flag, or nil.
func cancelFrom(p *C.int32_t) func() bool {
	if p == nil {
		return nil
	}
	flag := (*int32)(unsafe.Pointer(p))
	return func() bool { return atomic.LoadInt32(flag) != 0 }
}
