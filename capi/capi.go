// Command capi is the C ABI of tpde, built with
//
//	go build -buildmode=c-shared -o libtpde.so ./capi
//
// It is glue only: it turns C arguments into Go values without copying
// tensor bytes, calls core/, and turns Go errors into status codes and
// messages. include/tpde.h documents every function; keep them in step.
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../include
#define TPDE_NO_PROTOTYPES
#include <stdlib.h>
#include <string.h>
#include "tpde.h"

static void tpde_write_err(char *err, size_t err_len, const char *msg, size_t msg_len) {
	if (err == NULL || err_len == 0) return;
	if (msg_len > err_len - 1) msg_len = err_len - 1;
	memcpy(err, msg, msg_len);
	err[msg_len] = 0;
}
*/
import "C"

import (
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"github.com/tpde/tpde/core/container"
	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/transform"
)

// Version is the library version; python/tpde reads it through tpde_version.
const Version = "0.1.0"

var cVersion = C.CString(Version) // static for the life of the process

func main() {}

// status maps an error to a status code and writes its message. An I/O
// error that carries an OS error number ends with " [errno N]"
// (include/tpde.h), so that bindings can raise their OSError equivalents.
func status(err error, cerr *C.char, cerrLen C.size_t) C.int {
	if err == nil {
		return C.TPDE_OK
	}
	code := statusCode(err)
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	if code == C.TPDE_E_IO {
		var en syscall.Errno
		if errors.As(err, &en) && en != 0 {
			msg += fmt.Sprintf(" [errno %d]", int(en))
		}
	}
	if len(msg) > 0 {
		cmsg := unsafe.Pointer(unsafe.StringData(msg))
		C.tpde_write_err(cerr, cerrLen, (*C.char)(cmsg), C.size_t(len(msg)))
	} else {
		C.tpde_write_err(cerr, cerrLen, nil, 0)
	}
	return code
}

func statusCode(err error) C.int {
	switch {
	case errors.Is(err, errs.ReferenceMismatch):
		return C.TPDE_E_REFERENCE
	case errors.Is(err, errs.Invalid):
		return C.TPDE_E_INVALID
	case errors.Is(err, errs.Corrupt):
		return C.TPDE_E_CORRUPT
	case errors.Is(err, errs.Unsupported):
		return C.TPDE_E_UNSUPPORTED
	case errors.Is(err, errs.BufferTooSmall):
		return C.TPDE_E_BUFFER_TOO_SMALL
	case errors.Is(err, errs.IO):
		return C.TPDE_E_IO
	case errors.Is(err, errs.Limit):
		return C.TPDE_E_LIMIT
	case errors.Is(err, errs.Cancelled):
		return C.TPDE_E_CANCELLED
	}
	return C.TPDE_E_INTERNAL
}

// guard turns a panic into TPDE_E_INTERNAL so that none crosses the ABI, and
// a memory fault (debug.SetPanicOnFault, switched on at entry) into
// TPDE_E_IO. Use as:
//
//	defer guard(&rc, err, errLen, debug.SetPanicOnFault(true))
//
// which switches faults to panics for this goroutine at entry and restores
// the caller's setting on return. Goroutines the core starts are covered
// by core/par, which recovers in each of them.
func guard(rc *C.int, cerr *C.char, cerrLen C.size_t, prevPanicOnFault bool) {
	debug.SetPanicOnFault(prevPanicOnFault)
	if r := recover(); r != nil {
		*rc = status(&par.PanicError{Value: r, Stack: debug.Stack()}, cerr, cerrLen)
	}
}

// bytesAt views C memory as a Go slice without copying. Go keeps it only for
// the duration of the call.
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

func dtypeArg(d C.int32_t) (dtype.DType, error) {
	if d < 0 || d >= dtype.Count {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, int32(d))
	}
	return dtype.DType(d), nil
}

//export tpde_version
func tpde_version() *C.char { return cVersion }

// abiVersion is the TPDE_ABI_VERSION this glue implements: bump both when
// a function's signature or meaning changes. The array index below fails
// to compile while include/tpde.h says otherwise.
const abiVersion = 7

var _ = [1]struct{}{}[abiVersion-C.TPDE_ABI_VERSION]

//export tpde_abi_version
func tpde_abi_version() C.int { return abiVersion }

//export tpde_set_num_threads
func tpde_set_num_threads(n C.int32_t) { par.SetDefaultThreads(int(n)) }

//export tpde_get_num_threads
func tpde_get_num_threads() C.int32_t { return C.int32_t(par.Threads(0)) }

//export tpde_encode_bound
func tpde_encode_bound(rawSize C.uint64_t, dt C.int32_t, ndim C.int32_t, chunkElems C.uint32_t,
	bound *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if bound == nil {
		return status(fmt.Errorf("%w: bound is NULL", errs.Invalid), cerr, cerrLen)
	}
	b, err := frame.Bound(uint64(rawSize), d, int(ndim), uint32(chunkElems))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*bound = C.uint64_t(b)
	return C.TPDE_OK
}

//export tpde_encode
func tpde_encode(src unsafe.Pointer, srcLen C.uint64_t, dt C.int32_t, shape *C.uint64_t, ndim C.int32_t,
	chunkElems C.uint32_t, effort C.int32_t, nthreads C.int32_t, dst unsafe.Pointer, dstCap C.uint64_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if ndim < 0 || ndim > frame.MaxNDim || (ndim > 0 && shape == nil) || outLen == nil {
		return status(fmt.Errorf("%w: ndim %d with shape %p, out_len %p", errs.Invalid, int32(ndim), shape, outLen), cerr, cerrLen)
	}
	if effort < 0 || effort > C.int32_t(entropy.Max) {
		return status(fmt.Errorf("%w: effort %d", errs.Invalid, int32(effort)), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := bytesAt(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	dims := make([]uint64, int(ndim))
	if ndim > 0 {
		copy(dims, unsafe.Slice((*uint64)(unsafe.Pointer(shape)), int(ndim)))
	}
	n, err := frame.Encode(out, in, d, dims, frame.Options{
		ChunkElems: uint32(chunkElems), Threads: int(nthreads), Effort: entropy.Effort(effort)})
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*outLen = C.uint64_t(n)
	return C.TPDE_OK
}

//export tpde_decode
func tpde_decode(src unsafe.Pointer, srcLen C.uint64_t, dst unsafe.Pointer, dstCap C.uint64_t, nthreads C.int32_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if outLen == nil {
		return status(fmt.Errorf("%w: out_len is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := bytesAt(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := frame.Decode(in, out, int(nthreads))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*outLen = C.uint64_t(h.RawSize)
	return C.TPDE_OK
}

//export tpde_inspect
func tpde_inspect(src unsafe.Pointer, srcLen C.uint64_t, info *C.tpde_frame_info, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if info == nil {
		return status(fmt.Errorf("%w: info is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := frame.Parse(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	fillFrameInfo(info, h)
	return C.TPDE_OK
}

// fillFrameInfo writes what tpde_inspect reports about any frame.
func fillFrameInfo(info *C.tpde_frame_info, h *frame.Header) {
	*info = C.tpde_frame_info{}
	info.version_major = C.uint8_t(h.VersionMajor)
	info.version_minor = C.uint8_t(h.VersionMinor)
	info.kind = C.uint8_t(h.Kind)
	info.dtype = C.uint8_t(h.DType)
	info.ndim = C.uint32_t(len(h.Shape))
	for i, d := range h.Shape {
		info.shape[i] = C.uint64_t(d)
	}
	info.raw_size = C.uint64_t(h.RawSize)
	info.frame_size = C.uint64_t(h.FrameLen)
	info.chunk_elems = C.uint32_t(h.ChunkElems)
	info.nchunks = C.uint32_t(h.NChunks)
}

//export tpde_entropy_bound
func tpde_entropy_bound(src unsafe.Pointer, srcLen C.uint64_t, dt C.int32_t, bitsOut *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if bitsOut == nil {
		return status(fmt.Errorf("%w: bits is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := transform.EntropyBits(d, in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*bitsOut = C.double(b)
	return C.TPDE_OK
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

// cancelFrom returns a poll of a caller's cancel flag, or nil.
func cancelFrom(p *C.int32_t) func() bool {
	if p == nil {
		return nil
	}
	flag := (*int32)(unsafe.Pointer(p))
	return func() bool { return atomic.LoadInt32(flag) != 0 }
}

//export tpde_compress_file
func tpde_compress_file(srcPath, dstPath *C.char, nthreads C.int32_t, torchHints *C.char, torchHintsLen C.uint64_t,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	return tpde_compress_file2(srcPath, dstPath, nthreads, torchHints, torchHintsLen, 0, progress, cancel, cerr, cerrLen)
}

//export tpde_compress_file2
func tpde_compress_file2(srcPath, dstPath *C.char, nthreads C.int32_t, torchHints *C.char, torchHintsLen C.uint64_t,
	flags C.uint32_t, progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if srcPath == nil || dstPath == nil {
		return status(fmt.Errorf("%w: path is NULL", errs.Invalid), cerr, cerrLen)
	}
	var hints *layout.Hints
	if err := jsonArg(torchHints, torchHintsLen, "torch_hints", &hints); err != nil {
		return status(err, cerr, cerrLen)
	}
	opt, err := fileOptions(flags)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	opt.Frame, opt.Progress, opt.Cancelled, opt.Torch = frame.Options{Threads: int(nthreads)}, progressTo(progress), cancelFrom(cancel), hints
	return status(container.CompressFile(C.GoString(srcPath), C.GoString(dstPath), opt), cerr, cerrLen)
}

//export tpde_decompress_file
func tpde_decompress_file(srcPath, dstPath *C.char, nthreads C.int32_t, maxOutput C.uint64_t, progress *C.uint64_t,
	cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	return tpde_decompress_file2(srcPath, dstPath, nthreads, maxOutput, 0, progress, cancel, cerr, cerrLen)
}

//export tpde_decompress_file2
func tpde_decompress_file2(srcPath, dstPath *C.char, nthreads C.int32_t, maxOutput C.uint64_t, flags C.uint32_t,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if srcPath == nil || dstPath == nil {
		return status(fmt.Errorf("%w: path is NULL", errs.Invalid), cerr, cerrLen)
	}
	opt, err := fileOptions(flags)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	opt.Frame, opt.Progress, opt.MaxOutput, opt.Cancelled = frame.Options{Threads: int(nthreads)}, progressTo(progress), uint64(maxOutput), cancelFrom(cancel)
	return status(container.DecompressFile(C.GoString(srcPath), C.GoString(dstPath), opt), cerr, cerrLen)
}

// fileOptions reads the TPDE_FILE_* flags of the file functions; a bit this
// library does not know is refused rather than ignored, so that a caller
// asking for a guarantee never silently goes without it.
func fileOptions(flags C.uint32_t) (container.Options, error) {
	const known = C.TPDE_FILE_NO_REPLACE | C.TPDE_FILE_NO_FOLLOW
	if flags&^known != 0 {
		return container.Options{}, fmt.Errorf("%w: unknown file flags %#x", errs.Invalid, uint32(flags&^known))
	}
	return container.Options{NoReplace: flags&C.TPDE_FILE_NO_REPLACE != 0, NoFollow: flags&C.TPDE_FILE_NO_FOLLOW != 0}, nil
}

//export tpde_file_info
func tpde_file_info(path *C.char, maxSegments C.uint32_t, out *C.char, capacity C.uint64_t, needed *C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if path == nil || needed == nil {
		return status(fmt.Errorf("%w: path or needed is NULL", errs.Invalid), cerr, cerrLen)
	}
	fi, err := container.Info(C.GoString(path), int(min(uint32(maxSegments), 1<<30)))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	return status(writeJSON(fi, out, capacity, needed), cerr, cerrLen)
}

// writeJSON marshals v into the caller's buffer (at most capacity bytes,
// not NUL-terminated) and sets *needed to its full length: the
// grow-and-call-again protocol of tpde_file_info.
func writeJSON(v any, out *C.char, capacity C.uint64_t, needed *C.uint64_t) error {
	js, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return writeRaw(js, out, capacity, needed)
}

// writeRaw copies JSON already made into the caller's buffer, with the
// protocol of writeJSON.
func writeRaw(js []byte, out *C.char, capacity C.uint64_t, needed *C.uint64_t) error {
	*needed = C.uint64_t(len(js))
	buf, err := bytesAt(unsafe.Pointer(out), capacity, "json")
	if err != nil {
		return err
	}
	copy(buf, js)
	if uint64(len(js)) > uint64(capacity) {
		return fmt.Errorf("%w: JSON is %d bytes, %d given", errs.BufferTooSmall, len(js), uint64(capacity))
	}
	return nil
}

// Delta frames (docs/FORMAT.md section 6).

//export tpde_encode_delta_bound
func tpde_encode_delta_bound(rawSize C.uint64_t, dt C.int32_t, ndim C.int32_t, chunkElems C.uint32_t,
	bound *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if bound == nil {
		return status(fmt.Errorf("%w: bound is NULL", errs.Invalid), cerr, cerrLen)
	}
	b, err := frame.DeltaBound(uint64(rawSize), d, int(ndim), uint32(chunkElems))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*bound = C.uint64_t(b)
	return C.TPDE_OK
}

// optionalBytes is bytesAt for an argument that may be NULL (nil result).
func optionalBytes(p unsafe.Pointer, n C.uint64_t, what string) ([]byte, error) {
	if p == nil && n == 0 {
		return nil, nil
	}
	return bytesAt(p, n, what)
}

const (
	deltaDenseOnly   = 1
	deltaSparseOnly  = 2
	deltaNoContext   = 4
	deltaFullContext = 8
	deltaFlagsKnown  = deltaDenseOnly | deltaSparseOnly | deltaNoContext | deltaFullContext
)

// deltaOptions turns tpde_encode_delta's arguments into options.
func deltaOptions(kind C.int32_t, threshold C.double, quantBits C.int32_t, flags C.uint32_t,
	chunkElems C.uint32_t, effort C.int32_t, nthreads C.int32_t) (frame.DeltaOptions, error) {
	opt := frame.DeltaOptions{ChunkElems: uint32(chunkElems), Threads: int(nthreads),
		Threshold: float64(threshold), QuantBits: int(quantBits)}
	switch {
	case kind == C.TPDE_RESIDUAL_AUTO:
		opt.Residual = delta.Auto
	case kind >= 0 && kind <= C.int32_t(delta.MaxKind):
		opt.Residual = delta.Kind(kind)
	default:
		return opt, fmt.Errorf("%w: residual kind %d", errs.Invalid, int32(kind))
	}
	if effort < 0 || effort > C.int32_t(entropy.Max) {
		return opt, fmt.Errorf("%w: effort %d", errs.Invalid, int32(effort))
	}
	opt.Effort = entropy.Effort(effort)
	f := uint32(flags)
	if f&^deltaFlagsKnown != 0 || f&(deltaDenseOnly|deltaSparseOnly) == deltaDenseOnly|deltaSparseOnly ||
		f&(deltaNoContext|deltaFullContext) == deltaNoContext|deltaFullContext {
		return opt, fmt.Errorf("%w: delta flags %#x", errs.Invalid, f)
	}
	switch {
	case f&deltaDenseOnly != 0:
		opt.Sparse = delta.SparseNever
	case f&deltaSparseOnly != 0:
		opt.Sparse = delta.SparseAlways
	}
	switch {
	case f&deltaNoContext != 0:
		opt.Context = delta.ContextOff
	case f&deltaFullContext != 0:
		opt.Context = delta.ContextOn
	}
	return opt, nil
}

//export tpde_encode_delta
func tpde_encode_delta(src unsafe.Pointer, srcLen C.uint64_t, ref unsafe.Pointer, refLen C.uint64_t,
	ref2 unsafe.Pointer, ref2Len C.uint64_t, dt C.int32_t, shape *C.uint64_t, ndim C.int32_t,
	residualKind C.int32_t, threshold C.double, quantBits C.int32_t, flags C.uint32_t,
	chunkElems C.uint32_t, effort C.int32_t, nthreads C.int32_t,
	dst unsafe.Pointer, dstCap C.uint64_t, outLen *C.uint64_t, recon unsafe.Pointer, reconCap C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if ndim < 0 || ndim > frame.MaxNDim || (ndim > 0 && shape == nil) || outLen == nil {
		return status(fmt.Errorf("%w: ndim %d with shape %p, out_len %p", errs.Invalid, int32(ndim), shape, outLen), cerr, cerrLen)
	}
	opt, err := deltaOptions(residualKind, threshold, quantBits, flags, chunkElems, effort, nthreads)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r, err := bytesAt(ref, refLen, "ref")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r2, err := optionalBytes(ref2, ref2Len, "ref2")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := bytesAt(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if recon != nil {
		if reconCap < srcLen {
			return status(fmt.Errorf("%w: recon holds %d bytes, %d needed", errs.BufferTooSmall, uint64(reconCap), uint64(srcLen)), cerr, cerrLen)
		}
		if opt.Recon, err = bytesAt(recon, srcLen, "recon"); err != nil {
			return status(err, cerr, cerrLen)
		}
	}
	dims := make([]uint64, int(ndim))
	if ndim > 0 {
		copy(dims, unsafe.Slice((*uint64)(unsafe.Pointer(shape)), int(ndim)))
	}
	res, err := frame.EncodeDelta(out, in, r, r2, d, dims, opt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*outLen = C.uint64_t(res.Len)
	return C.TPDE_OK
}

//export tpde_decode_delta
func tpde_decode_delta(src unsafe.Pointer, srcLen C.uint64_t, ref unsafe.Pointer, refLen C.uint64_t,
	ref2 unsafe.Pointer, ref2Len C.uint64_t, dst unsafe.Pointer, dstCap C.uint64_t, nthreads C.int32_t,
	outLen *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if outLen == nil {
		return status(fmt.Errorf("%w: out_len is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r, err := optionalBytes(ref, refLen, "ref")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r2, err := optionalBytes(ref2, ref2Len, "ref2")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	out, err := bytesAt(dst, dstCap, "dst")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := frame.DecodeDelta(in, r, r2, out, int(nthreads))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*outLen = C.uint64_t(h.RawSize)
	return C.TPDE_OK
}

//export tpde_inspect_delta
func tpde_inspect_delta(src unsafe.Pointer, srcLen C.uint64_t, info *C.tpde_delta_info, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if info == nil {
		return status(fmt.Errorf("%w: info is NULL", errs.Invalid), cerr, cerrLen)
	}
	in, err := bytesAt(src, srcLen, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	h, err := frame.ParseAny(in)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*info = C.tpde_delta_info{}
	fillFrameInfo(&info.frame, h)
	info.residual_kind = -1
	di := h.Delta
	if di == nil {
		return C.TPDE_OK
	}
	info.residual_kind = C.int32_t(di.Residual)
	if di.Identical {
		info.identical = 1
	}
	if di.Lossy {
		info.lossy = 1
		info.bound = C.double(di.Bound)
		info.max_error = C.double(di.MaxErr)
	}
	info.quant_bits = C.int32_t(di.QuantBits)
	info.ref_crc = C.uint32_t(di.RefCRC)
	info.ref2_crc = C.uint32_t(di.Ref2CRC)
	if di.NeedsRef2() {
		info.needs_ref2 = 1
	}
	info.changed_elems = C.uint64_t(di.Changed)
	info.sparsity = C.double(h.Sparsity())
	info.chunks_copy = C.uint32_t(di.Modes[delta.Copy])
	info.chunks_dense = C.uint32_t(di.Modes[delta.Dense] + di.Modes[delta.DenseQ])
	info.chunks_sparse = C.uint32_t(di.Modes[delta.Sparse] + di.Modes[delta.SparseQ])
	info.chunks_quantized = C.uint32_t(di.Modes[delta.DenseQ] + di.Modes[delta.SparseQ])
	return C.TPDE_OK
}

//export tpde_delta_threshold
func tpde_delta_threshold(src, ref unsafe.Pointer, n C.uint64_t, dt C.int32_t, percentile C.double,
	threshold *C.double, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	d, err := dtypeArg(dt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	if threshold == nil {
		return status(fmt.Errorf("%w: threshold is NULL", errs.Invalid), cerr, cerrLen)
	}
	a, err := bytesAt(src, n, "src")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := bytesAt(ref, n, "ref")
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	t, err := delta.PercentileThreshold(d, a, b, float64(percentile))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	*threshold = C.double(t)
	return C.TPDE_OK
}
