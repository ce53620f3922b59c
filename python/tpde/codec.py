"""Tensor and file compression on top of libtpde.

torch and numpy are optional, and only _tensors knows them: a numpy user
never imports torch, and neither is imported by ``import tpde``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import threading
from ctypes import byref, c_double, c_int32, c_uint64
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from . import _memory, _native, _tensors
from ._buffers import Buffer, into_new_bytes, readable
from ._native import call, call_json
from ._options import effort_code, int_arg, threads_arg
from .errors import InternalError, InvalidArgumentError, TPDEError, TPDEIOError

__all__ = [
    "compress_tensor",
    "decompress_tensor",
    "inspect",
    "compress_file",
    "decompress_file",
    "file_info",
    "entropy_bound_bits",
    "set_num_threads",
    "get_num_threads",
    "DTYPES",
]

DTYPES = _tensors.DTYPES

PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
Progress = Callable[[int, int], Any]

_MAX_NDIM = _native.MAX_NDIM
_POLL_S = 0.1
_FILE_MAGIC = b"\x89TPC"


def compress_tensor(
    x: Any,
    *,
    chunk_elems: int = 0,
    effort: str = "balanced",
    threads: int = 0,
    dtype: Optional[str] = None,
) -> bytes:
    """Compress one tensor into a self-contained tpde frame.

    x is a torch.Tensor or numpy.ndarray of bool, (u)int8/16/32/64, float16,
    bfloat16, float32, float64, float8_e4m3fn or float8_e5m2. A contiguous
    CPU tensor is read in place (no copy); a non-contiguous one is first
    copied with .contiguous() (numpy: ascontiguousarray), a CUDA tensor with
    .cpu(), and a big-endian numpy array is byte-swapped to a copy.

    chunk_elems: elements per independently coded chunk (0: automatic).
    effort: "fast", "balanced" or "max". threads: 0 uses get_num_threads().
    dtype: a tpde dtype name (e.g. "BF16") to record instead of x's own, of
    the same width: lets numpy hold bfloat16/float8 as uint16/uint8 bits.
    """
    src = _tensors.source(x)
    code = src.code
    if dtype is not None:
        code = _tensors.dtype_code(dtype)
        if _tensors.WIDTHS[code] != _tensors.WIDTHS[src.code]:
            raise InvalidArgumentError(
                f"dtype {DTYPES[code]} is {_tensors.WIDTHS[code]} bytes wide, the input's elements are {_tensors.WIDTHS[src.code]}")
    ce = int_arg(chunk_elems, "chunk_elems", 0, 2**32 - 1)
    eff = effort_code(effort)
    th = threads_arg(threads)
    ndim = len(src.shape)
    if ndim > _MAX_NDIM:
        raise InvalidArgumentError(f"{ndim} dimensions exceed the limit of {_MAX_NDIM}")
    shape = (c_uint64 * max(ndim, 1))(*src.shape)
    bound = _encode_bound(src.nbytes, code, ndim, ce)

    def encode(dst: int, cap: int) -> int:
        n = c_uint64()
        call("tpde_encode", src.ptr, src.nbytes, code, shape, ndim, ce, eff, th, dst, cap, byref(n))
        return n.value

    return into_new_bytes(bound, encode)


def _encode_bound(nbytes: int, code: int, ndim: int, chunk_elems: int) -> int:
    return _encode_bound_of("tpde_encode_bound", nbytes, code, ndim, chunk_elems)


@functools.lru_cache(maxsize=1024)
def _encode_bound_of(fn: str, nbytes: int, code: int, ndim: int, chunk_elems: int) -> int:
    # Cached: checkpoints repeat shapes, and the bound depends on nothing else.
    bound = c_uint64()
    call(fn, nbytes, code, ndim, chunk_elems, byref(bound))
    return bound.value


# --- frames ---------------------------------------------------------------

def _frame_info(src: object, n: int) -> Dict[str, Any]:
    return call_json("tpde_inspect", src, n)


_shape_out = threading.local()


def _frame_shape(src: object, n: int) -> Tuple[int, Tuple[int, ...], int]:
    """(dtype code, shape, raw_size) of a keyframe, through out-variables
    rather than tpde_inspect's document: on a small tensor the document's
    second call and parse cost more than the decode itself."""
    out = getattr(_shape_out, "vars", None)
    if out is None:
        out = _shape_out.vars = (c_int32(), c_int32(), (c_uint64 * _MAX_NDIM)(), c_uint64())
    code, ndim, dims, raw = out
    call("tpde_frame_shape", src, n, byref(code), byref(ndim), dims, byref(raw))
    return code.value, tuple(dims[:ndim.value]), raw.value


def decompress_tensor(blob: Buffer, *, out: Any = None, like: str = "torch", threads: int = 0,
                      max_output_bytes: Optional[int] = None) -> Any:
    """Decompress a frame from compress_tensor.

    Returns a new torch.Tensor (like="torch") or numpy.ndarray (like="numpy")
    of the frame's dtype and shape, decoded straight into its memory. numpy
    has no bfloat16 or float8: such frames come back as their raw bit
    patterns in a uint16 / uint8 array (view them with ml_dtypes if needed).

    out: a contiguous CPU tensor or writable C-contiguous array of exactly
    the frame's dtype and shape to decode into; it is returned. On error its
    contents are unspecified.
    blob: bytes, bytearray or memoryview; only a read-only buffer that is not
    bytes is copied.
    max_output_bytes: the most bytes the decoded tensor may have (default
    $TPDE_MAX_OUTPUT, else the machine's physical memory); a frame that
    claims more raises DecodeLimitError before anything is allocated.
    """
    th = threads_arg(threads)
    if out is None and like not in ("torch", "numpy"):
        raise InvalidArgumentError(f"like must be 'torch' or 'numpy', got {like!r}")
    limit = _memory.output_limit(max_output_bytes)
    if isinstance(blob, bytes):
        # The common case, without the context manager's cost.
        return _decode_into(blob, len(blob), out, like, th, limit)
    with readable(blob) as (src, n):
        return _decode_into(src, n, out, like, th, limit)


def _decode_into(src: object, n: int, out: Any, like: str, th: int, limit: int, fn: str = "tpde_decode",
                 refs: Tuple[object, ...] = ()) -> Any:
    """Allocate (or check) the destination from the frame's header, then run
    fn(src, n, *refs, dst, raw, threads, &got): tpde_decode, or
    tpde_decode_delta with its references. A frame decoding to more than
    limit bytes is refused before anything is allocated."""
    if refs:
        info = call_json("tpde_inspect_delta", src, n)
        code, shape, raw = info["dtype"], tuple(info["shape"]), info["raw_size"]
    else:
        code, shape, raw = _frame_shape(src, n)
    if out is not None:
        dst = _tensors.check_out(out, code, shape, raw)
        result = out
    else:
        _memory.check_output(raw, limit, "the frame")
        result = _tensors.empty(code, shape, like)
        dst = result.data_ptr() if like == "torch" else result.ctypes.data
    got = c_uint64()
    call(fn, src, n, *refs, dst, raw, th, byref(got))
    if got.value != raw:
        raise InternalError(f"decoded {got.value} bytes, the frame header says {raw}")
    return result


def inspect(blob: Buffer) -> Dict[str, Any]:
    """Describe a frame without decoding it.

    Returns dtype (tpde name, e.g. "BF16"), shape, raw_size (decoded bytes),
    frame_size (bytes of the frame; blob may extend past it), chunk_elems,
    nchunks, version ("major.minor") and kind (0: keyframe).
    """
    with readable(blob) as (src, n):
        info = _frame_info(src, n)
    return {
        "dtype": DTYPES[info["dtype"]],
        "shape": tuple(info["shape"]),
        "raw_size": info["raw_size"],
        "frame_size": info["frame_size"],
        "chunk_elems": info["chunk_elems"],
        "nchunks": info["nchunks"],
        "version": f"{info['version_major']}.{info['version_minor']}",
        "kind": info["kind"],
    }


def entropy_bound_bits(x: Any) -> float:
    """Sum of the order-0 entropies, in bits, of the byte streams tpde splits x into.

    A floor for coders that code each stream independently byte by byte;
    accepts the same inputs as compress_tensor.
    """
    src = _tensors.source(x)
    bits = c_double()
    call("tpde_entropy_bound", src.ptr, src.nbytes, src.code, byref(bits))
    return float(bits.value)


# --- threads --------------------------------------------------------------

def set_num_threads(n: int) -> None:
    """Set the worker count used when a call passes threads=0; n <= 0 restores the CPU count."""
    call("tpde_set_num_threads", int_arg(n, "n", -(2**31), 2**31 - 1))


def get_num_threads() -> int:
    """The worker count used when a call passes threads=0."""
    n = c_int32()
    call("tpde_get_num_threads", byref(n))
    return n.value


# --- files ----------------------------------------------------------------

def _path_bytes(p: Union[str, bytes]) -> bytes:
    b = os.fsencode(p)
    if b"\0" in b:
        raise InvalidArgumentError(f"path contains a NUL byte: {p!r}")
    return b


def _refuse_same(src: Union[str, bytes], dst: Union[str, bytes]) -> None:
    # The library writes dst atomically, so dst == src would replace the
    # input with its own (de)compressed form.
    _path_bytes(src), _path_bytes(dst)  # NUL bytes: a clear error before any OS call
    try:
        same = os.path.samefile(src, dst)
    except OSError:
        return
    if same:
        raise InvalidArgumentError(f"{os.fsdecode(dst)}: output is the input file")


def _file_op(fn: str, src: Union[str, bytes], dst: Union[str, bytes], threads: int,
             progress: Optional[Progress], total: int, extra: Tuple[object, ...] = (),
             cancel: Optional[Any] = None) -> None:
    """Run tpde_compress_file / tpde_decompress_file on a helper thread.

    The calling thread waits in short, interruptible steps, so a signal
    handler (Ctrl-C) runs promptly; the exception it raises (or one from
    progress) sets the library's cancel flag, and the call stops between
    chunks and removes its temporary file before the exception propagates.
    cancel: an object with is_set() (a threading.Event) that another thread
    may set to stop the operation with CancelledError.
    """
    th = threads_arg(threads)
    s, d = _path_bytes(src), _path_bytes(dst)
    _native.lib()  # load (and report a missing library) on this thread
    counter = c_uint64(0)
    stop = c_int32(1 if cancel is not None and cancel.is_set() else 0)
    failure: List[BaseException] = []

    def work() -> None:
        try:
            call(fn, s, d, th, *extra, byref(counter), byref(stop))
        except BaseException as e:  # re-raised on the calling thread
            failure.append(e)

    worker = threading.Thread(target=work, name=f"tpde-{fn}", daemon=True)
    worker.start()
    try:
        if progress is not None:
            progress(0, total)
        last = 0
        while worker.is_alive():
            worker.join(_POLL_S)
            if cancel is not None and cancel.is_set():
                stop.value = 1
            done = counter.value  # stored atomically by the library
            if progress is not None and done != last and worker.is_alive():
                progress(done, max(total, done))
                last = done
    except BaseException:
        # Ctrl-C, SystemExit from a signal handler, or an error in progress:
        # stop the library and wait for it, so that on return nothing still
        # touches the files and no temporary file is left.
        stop.value = 1
        worker.join()
        raise
    if failure:
        raise failure[0]
    if progress is not None:
        done = counter.value
        progress(done, max(total, done))


def _with_suffix(p: Union[str, bytes], suffix: str) -> Union[str, bytes]:
    return p + os.fsencode(suffix) if isinstance(p, bytes) else p + suffix


def _output_path(src: Union[str, bytes], dst: Optional[PathLike], compress: bool) -> Union[str, bytes]:
    """dst, else the default output of compress_file (src + ".tpde") or
    decompress_file (src without ".tpde", else src + ".restored")."""
    if dst is not None:
        return os.fspath(dst)
    if compress:
        return _with_suffix(src, ".tpde")
    suffix = b".tpde" if isinstance(src, bytes) else ".tpde"
    if src.endswith(suffix) and len(src) > len(suffix):  # type: ignore[arg-type]
        return src[: -len(suffix)]
    return _with_suffix(src, ".restored")


def _output_flags(overwrite: bool, follow_symlinks: bool) -> int:
    """The TPDE_FILE_* flags for an output: without overwrite, refused if it
    exists (by the library's publishing step itself, so a file created
    meanwhile is refused too); with it, a symlink is written through
    unless follow_symlinks is False (the CLI's --force)."""
    if not overwrite:
        return _native.FILE_NO_REPLACE
    return 0 if follow_symlinks else _native.FILE_NO_FOLLOW


@contextlib.contextmanager
def _overwrite_hint(overwrite: bool) -> Iterator[None]:
    # The library's refusal names the path; a Python caller also needs to
    # know how to ask for the replacement.
    try:
        yield
    except TPDEIOError as e:
        if overwrite or e.errno != errno.EEXIST:
            raise
        raise TPDEIOError(errno.EEXIST, f"{e} (overwrite=True replaces it)") from None


def compress_file(src: PathLike, dst: Optional[PathLike] = None, *, overwrite: bool = False, threads: int = 0,
                  progress: Optional[Progress] = None, cancel: Optional[Any] = None) -> str:
    """Compress a file (a .safetensors checkpoint, or any file) into a tpde file.

    src may also be a pipe, FIFO or /dev/stdin: it is read to its end
    (through an unnamed temporary file beside dst) and compressed like a
    file of that content. dst defaults to src + ".tpde" and is written
    atomically: a temporary file in its directory, fsynced and published
    under dst; it gets 0666 less the umask, never a permission bit src
    lacks.

    An existing dst is never replaced unless overwrite=True: anything at
    dst (a file, a symlink even dangling, a directory) raises TPDEIOError
    with errno EEXIST naming it, before src is read. The refusal is made
    by the step that publishes the output (link(2), which cannot replace a
    name), so a file another process creates at dst while this one is
    written is refused the same way, not lost. With overwrite=True a
    regular file is replaced (keeping its mode, less the bits src lacks)
    and a symlink is written through (the file it points to is replaced).
    dst the same file as src is refused (InvalidArgumentError) either way.

    progress, if given, is called as progress(done_bytes, total_bytes) at
    the start, about every 0.1 s while the work runs on a helper thread,
    and at the end. If it raises, or Ctrl-C interrupts the wait, the work
    stops and leaves nothing, and the exception propagates. cancel: a
    threading.Event (anything with is_set()) that stops the work with
    CancelledError. Returns the output path.
    """
    with _overwrite_hint(overwrite):
        return _compress_file(src, dst, threads=threads, progress=progress, cancel=cancel,
                              flags=_output_flags(overwrite, True))[0]


def _compress_file(src: PathLike, dst: Optional[PathLike], *, threads: int, progress: Optional[Progress],
                   cancel: Optional[Any], flags: int) -> Tuple[str, Optional[str]]:
    """compress_file with its TPDE_FILE_* flags, also returning why a torch
    file was coded as bytes (None when it was not, or is no torch file),
    for the CLI to say."""
    s = os.fspath(src)
    d = _output_path(s, dst, compress=True)
    _refuse_same(s, d)
    total = 0
    if progress is not None:
        with contextlib.suppress(OSError):  # the library reports a missing input
            total = os.path.getsize(s)
    hints, note = torch_hints(s)
    js = None if hints is None else json.dumps(hints).encode("utf-8")
    _file_op("tpde_compress_file", s, d, threads, progress, total, (js, len(js or b""), flags), cancel=cancel)
    return os.fsdecode(d), note


def torch_hints(path: Union[str, bytes]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """What a torch.save file's pickles say of its storages (a zip's dtypes,
    or a legacy file's layout; nothing unpickled), and (None, note) for a
    torch file that is coded as bytes, with why. (None, None) for any other
    file or a stream."""
    from . import _torchfile

    try:
        return _torchfile.hints(path)
    except OSError:
        return None, None  # unreadable: the library reports it
    except TPDEError as e:
        # A broken zip pickle: the file is still compressed, losslessly,
        # as bytes, and the CLI says why.
        return None, f"torch file stored whole: {e}"


def _original_size(path: Union[str, bytes]) -> int:
    # Only for the progress total: the file header's original size (docs/
    # FORMAT.md, "Files"). 0 when unreadable; the library reports why. A
    # stream (a pipe) is not peeked at: that would take its first bytes.
    if not os.path.isfile(path):
        return 0
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return 0
    return int.from_bytes(head[8:16], "little") if len(head) == 16 and head[:4] == _FILE_MAGIC else 0


def decompress_file(src: PathLike, dst: Optional[PathLike] = None, *, overwrite: bool = False, threads: int = 0,
                    progress: Optional[Progress] = None, cancel: Optional[Any] = None,
                    max_output_bytes: Optional[int] = None) -> str:
    """Restore the original file, byte for byte, from a tpde file.

    dst defaults to src without its ".tpde" suffix, else src + ".restored".
    It is written atomically, as for compress_file: on any error
    (CorruptDataError for damaged input) it is neither created nor changed.
    overwrite as for compress_file: without it an existing dst, or one
    created while the file is restored, raises TPDEIOError (EEXIST).
    progress and cancel as for compress_file, counting output bytes.
    max_output_bytes: the most bytes the restored file may have (default
    $TPDE_MAX_OUTPUT, else no limit: the output streams to disk); a file
    that promises more raises DecodeLimitError before anything is written.
    Returns the output path.
    """
    with _overwrite_hint(overwrite):
        return _decompress_file(src, dst, threads=threads, progress=progress, cancel=cancel,
                                max_output_bytes=max_output_bytes, flags=_output_flags(overwrite, True))


def _decompress_file(src: PathLike, dst: Optional[PathLike], *, threads: int, progress: Optional[Progress],
                     cancel: Optional[Any], max_output_bytes: Optional[int], flags: int) -> str:
    """decompress_file with its TPDE_FILE_* flags."""
    s = os.fspath(src)
    d = _output_path(s, dst, compress=False)
    _refuse_same(s, d)
    limit = _memory.output_limit(max_output_bytes, to_memory=False)
    total = _original_size(s) if progress is not None else 0
    _file_op("tpde_decompress_file", s, d, threads, progress, total,
             extra=(0 if limit >= _memory.UNLIMITED else limit, flags), cancel=cancel)
    return os.fsdecode(d)


def file_info(path: PathLike, *, max_segments: int = 10000) -> Dict[str, Any]:
    """Describe a tpde file (or a file holding one frame) without decoding tensor data.

    Returns the library's JSON as a dict: format ("file" or "frame"),
    version, source, original_size, compressed_size, segment_count, and
    segments (the first max_segments of them: a file can have millions),
    each with kind, original_size, stored_size and, for tensors, name,
    dtype, shape, chunks and methods (streams per coding method). A scalar
    tensor has shape []. Every segment's checksum is verified, listed or not.
    """
    p = _path_bytes(os.fspath(path))
    ms = int_arg(max_segments, "max_segments", 1, 2**30)

    info: Dict[str, Any] = call_json("tpde_file_info", p, ms)
    for seg in info.get("segments") or ():
        # The library's JSON omits empty shapes; a frame without one is a scalar.
        if seg.get("kind") == "frame":
            seg.setdefault("shape", [])
    return info
