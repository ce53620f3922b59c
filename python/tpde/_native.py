"""ctypes binding of libtpde (include/tpde.h), loaded on first use.

The library is looked up in $TPDE_LIBRARY, else as libtpde.so beside this
file. Functions are called through :func:`call`, which passes the calling
thread's error buffer (the ABI writes messages there, so concurrent calls on
other threads never share one) and turns a non-zero status into the matching
exception. A call's structured result is a JSON document the library keeps
(in the handle the call acted on or opened, or for the calling thread);
:func:`call_json` makes the call and returns that document, parsed.
ctypes.CDLL releases the GIL for the duration of each foreign call.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import threading
from ctypes import POINTER, byref, c_char, c_char_p, c_double, c_int, c_int32, c_size_t, c_uint32, c_uint64, c_void_p
from pathlib import Path
from typing import Any, Optional

from . import errors
from .errors import ForkedProcessError, InternalError, TPDEError, TPDEIOError

#: The TPDE_ABI_VERSION this binding was written against.
ABI_VERSION = 13
MAX_NDIM = 32
ERR_LEN = 1024

#: How many counts tpde_store_transfer knows (TPDE_TRANSFER_*), and their
#: names, in index order: the S3 requests by kind and their body bytes,
#: then the objects an add queued for upload and those the bucket took.
TRANSFER_COUNT = 14
TRANSFER_NAMES = ("get", "put", "head", "list", "delete", "parts", "multipart", "other", "bytes_sent",
                  "bytes_received", "queued_objects", "queued_bytes", "uploaded_objects", "uploaded_bytes")

# Status codes (TPDE_E_*).
OK = 0
E_BUFFER_TOO_SMALL = 4
E_IO = 5

# Flags of tpde_compress_file / tpde_decompress_file (TPDE_FILE_*).
FILE_NO_REPLACE = 1
FILE_NO_FOLLOW = 2

# Each class in errors that stands for a TPDE_E_* code, by that code (the
# classes say which: TPDEError.status).
_ERRORS: dict[int, type[TPDEError]] = {
    cls.status: cls for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, TPDEError) and cls.status
}
# An I/O error's message ends with its errno (include/tpde.h).
_ERRNO_SUFFIX = re.compile(r" \[errno (\d+)\]$")


class BundleItem(ctypes.Structure):
    """struct tpde_bundle_item."""

    _fields_ = [
        ("name", c_void_p),
        ("name_len", c_uint64),
        ("dtype", c_int32),
        ("ndim", c_int32),
        ("shape", c_void_p),
        ("data", c_void_p),
        ("nbytes", c_uint64),
        ("ref", c_void_p),
        ("ref_nbytes", c_uint64),
        ("ref2", c_void_p),
        ("ref2_nbytes", c_uint64),
        ("residual_kind", c_int32),
        ("flags", c_uint32),
        ("threshold", c_double),
        ("quant_bits", c_int32),
        ("reserved", c_int32),
        ("recon", c_void_p),
        ("recon_cap", c_uint64),
    ]


class BundleOut(ctypes.Structure):
    """struct tpde_bundle_out."""

    _fields_ = [
        ("index", c_uint64),
        ("dst", c_void_p),
        ("dst_cap", c_uint64),
        ("ref", c_void_p),
        ("ref_nbytes", c_uint64),
        ("ref2", c_void_p),
        ("ref2_nbytes", c_uint64),
    ]


class StoreTensor(ctypes.Structure):
    """struct tpde_store_tensor."""

    _fields_ = [
        ("name", c_char_p),
        ("dtype", c_int32),
        ("ndim", c_int32),
        ("shape", c_void_p),
        ("data", c_void_p),
        ("nbytes", c_uint64),
    ]


class StoreSpan(ctypes.Structure):
    """struct tpde_store_span: where tpde_store_read_tensors puts one tensor."""

    _fields_ = [("offset", c_uint64), ("dst", c_void_p), ("nbytes", c_uint64)]


_ERRBUF = POINTER(c_char)
_U64P = POINTER(c_uint64)
_I32P = POINTER(c_int32)
_I64 = ctypes.c_int64

# name: (restype, argtypes), in include/tpde.h's sections and order. Every
# status-returning function ends in (char *err, size_t err_len).
_SIGNATURES: dict[str, tuple[Optional[type], list[type]]] = {
    # The library.
    "tpde_version": (c_char_p, []),
    "tpde_abi_version": (c_int, []),
    "tpde_set_num_threads": (c_int, [c_int32, _ERRBUF, c_size_t]),
    "tpde_get_num_threads": (c_int, [_I32P, _ERRBUF, c_size_t]),
    "tpde_result": (c_int, [c_uint64, c_char_p, c_uint64, _U64P, _ERRBUF, c_size_t]),
    # Frames: python/tpde/codec.py.
    "tpde_encode_bound": (c_int, [c_uint64, c_int32, c_int32, c_uint32, _U64P, _ERRBUF, c_size_t]),
    "tpde_encode": (
        c_int,
        [c_void_p, c_uint64, c_int32, _U64P, c_int32, c_uint32, c_int32, c_int32, c_void_p, c_uint64, _U64P,
         _ERRBUF, c_size_t],
    ),
    "tpde_decode": (c_int, [c_void_p, c_uint64, c_void_p, c_uint64, c_int32, _U64P, _ERRBUF, c_size_t]),
    "tpde_inspect": (c_int, [c_void_p, c_uint64, _ERRBUF, c_size_t]),
    "tpde_frame_shape": (c_int, [c_void_p, c_uint64, _I32P, _I32P, _U64P, _U64P, _ERRBUF, c_size_t]),
    "tpde_entropy_bound": (c_int, [c_void_p, c_uint64, c_int32, POINTER(c_double), _ERRBUF, c_size_t]),
    # Delta frames (kind 1): python/tpde/delta.py.
    "tpde_encode_delta_bound": (c_int, [c_uint64, c_int32, c_int32, c_uint32, _U64P, _ERRBUF, c_size_t]),
    "tpde_encode_delta": (
        c_int,
        [c_void_p, c_uint64, c_void_p, c_uint64, c_void_p, c_uint64, c_int32, _U64P, c_int32, c_int32, c_double,
         c_int32, c_uint32, c_uint32, c_int32, c_int32, c_void_p, c_uint64, _U64P, c_void_p, c_uint64,
         _ERRBUF, c_size_t],
    ),
    "tpde_decode_delta": (
        c_int,
        [c_void_p, c_uint64, c_void_p, c_uint64, c_void_p, c_uint64, c_void_p, c_uint64, c_int32, _U64P,
         _ERRBUF, c_size_t],
    ),
    "tpde_inspect_delta": (c_int, [c_void_p, c_uint64, _ERRBUF, c_size_t]),
    "tpde_delta_threshold": (
        c_int, [c_void_p, c_void_p, c_uint64, c_int32, c_double, POINTER(c_double), _ERRBUF, c_size_t]),
    # Files: python/tpde/codec.py.
    "tpde_compress_file": (
        c_int, [c_char_p, c_char_p, c_int32, c_char_p, c_uint64, c_uint32, _U64P, _I32P, _ERRBUF, c_size_t]),
    "tpde_decompress_file": (
        c_int, [c_char_p, c_char_p, c_int32, c_uint64, c_uint32, _U64P, _I32P, _ERRBUF, c_size_t]),
    "tpde_file_info": (c_int, [c_char_p, c_uint32, _ERRBUF, c_size_t]),
    # Checkpoint bundles: python/tpde/_bundle.py.
    "tpde_bundle_bound": (c_int, [POINTER(BundleItem), c_uint64, c_uint64, _U64P, _ERRBUF, c_size_t]),
    "tpde_bundle_thresholds": (
        c_int, [POINTER(BundleItem), c_uint64, c_double, c_int32, POINTER(c_double), _ERRBUF, c_size_t]),
    "tpde_bundle_writer_open": (c_int, [c_char_p, _U64P, _ERRBUF, c_size_t]),
    "tpde_bundle_writer_add": (
        c_int, [c_uint64, POINTER(BundleItem), c_uint64, c_int32, c_int32, c_void_p, c_uint64, _U64P, _ERRBUF,
                c_size_t]),
    "tpde_bundle_writer_close": (
        c_int, [c_uint64, c_char_p, c_uint64, c_int32, c_void_p, c_uint64, _U64P, _ERRBUF, c_size_t]),
    "tpde_bundle_open": (c_int, [c_void_p, c_uint64, _U64P, _ERRBUF, c_size_t]),
    "tpde_bundle_decode": (c_int, [c_uint64, POINTER(BundleOut), c_uint64, c_int32, _ERRBUF, c_size_t]),
    "tpde_bundle_close": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    # The chain and keyframe policy: python/tpde/_chain.py.
    "tpde_chain_forward": (c_int, [c_char_p, c_uint64, _I64, _I32P, _I32P, _ERRBUF, c_size_t]),
    # The store: python/tpde/store/ (handle.py holds its handles).
    "tpde_store_open": (c_int, [c_char_p, c_int32, c_char_p, c_uint64, c_int32, _U64P, _ERRBUF, c_size_t]),
    "tpde_store_close": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_wait": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_transfer": (c_int, [c_uint64, _U64P, c_uint64, _U64P, _ERRBUF, c_size_t]),
    "tpde_store_object_bytes": (c_int, [c_uint64, POINTER(_I64), _ERRBUF, c_size_t]),
    "tpde_store_begin": (c_int, [c_uint64, _I64, c_int32, c_char_p, c_uint64, c_int32, _ERRBUF, c_size_t]),
    "tpde_store_begin_run": (c_int, [c_uint64, c_char_p, c_char_p, c_uint64, _I64, c_int32, c_char_p, c_uint64,
                                     _ERRBUF, c_size_t]),
    "tpde_store_add_file": (
        c_int, [c_uint64, c_char_p, c_char_p, c_char_p, c_uint64, c_char_p, _U64P, _I32P, _ERRBUF, c_size_t]),
    "tpde_store_add_state_dict": (
        c_int, [c_uint64, c_char_p, c_char_p, c_uint64, POINTER(StoreTensor), c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_commit": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_abort": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_finish_part": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_commit_parts": (c_int, [c_uint64, _I64, c_int32, c_char_p, c_uint64, c_char_p, c_char_p,
                                        c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_reclaim": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_read_pointer": (c_int, [c_char_p, _ERRBUF, c_size_t]),
    "tpde_store_remove": (c_int, [c_uint64, c_char_p, _I64, _ERRBUF, c_size_t]),
    "tpde_store_remove_run": (c_int, [c_uint64, c_char_p, _ERRBUF, c_size_t]),
    "tpde_store_verify": (c_int, [c_uint64, c_int32, c_int32, _U64P, _ERRBUF, c_size_t]),
    # Store readers.
    "tpde_store_reader_open": (c_int, [c_uint64, _U64P, _ERRBUF, c_size_t]),
    "tpde_store_reader_close": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_reader_steps": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_reader_use": (c_int, [c_uint64, c_char_p, _ERRBUF, c_size_t]),
    "tpde_store_reader_runs": (c_int, [c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_reader_record": (c_int, [c_uint64, _I64, c_int32, _ERRBUF, c_size_t]),
    "tpde_store_reader_tensors": (c_int, [c_uint64, _I64, c_int32, c_char_p, _ERRBUF, c_size_t]),
    "tpde_store_read_tensors": (c_int, [c_uint64, _I64, c_char_p, POINTER(StoreSpan), c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_read_range": (c_int, [c_uint64, _I64, c_char_p, c_uint64, c_void_p, c_uint64, _ERRBUF, c_size_t]),
    "tpde_store_restore": (c_int, [c_uint64, _I64, c_char_p, c_char_p, c_int32, _U64P, _ERRBUF, c_size_t]),
}

#: The calls that act on no handle: each keeps its result document for the
#: calling thread, read with tpde_result(0, ...) (include/tpde.h: "Result,
#: for this thread").
THREAD_RESULTS = frozenset({"tpde_inspect", "tpde_inspect_delta", "tpde_file_info", "tpde_store_read_pointer"})

_lib: Optional[ctypes.CDLL] = None
_lock = threading.Lock()
# Set in a child forked after the library was loaded: the pid of the parent
# that had loaded it. The Go runtime's threads do not survive fork(), so any
# call in such a child could hang forever; every entry point refuses
# instead (ForkedProcessError).
_forked_from: Optional[int] = None
_loaded_in: Optional[int] = None


def _after_fork_in_child() -> None:
    global _forked_from
    if _lib is not None and _forked_from is None:
        _forked_from = _loaded_in


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _refuse_forked() -> None:
    raise ForkedProcessError(
        f"tpde cannot run in this process ({os.getpid()}): it was forked from process {_forked_from}, which had "
        "already loaded libtpde, and the Go runtime inside libtpde does not survive fork() (its threads stay in "
        "the parent, so calls here could hang). Start worker processes with the 'spawn' or 'forkserver' method "
        "instead, e.g. multiprocessing.get_context('spawn') or DataLoader(..., multiprocessing_context='spawn'); "
        "a child forked before the parent first used tpde may use it")


def library_path() -> Path:
    """Where libtpde is looked for: $TPDE_LIBRARY, else libtpde.so beside this module."""
    env = os.environ.get("TPDE_LIBRARY")
    return Path(env) if env else Path(__file__).with_name("libtpde.so")


def _load() -> ctypes.CDLL:
    path = library_path()
    if not path.is_file():
        raise TPDEError(
            f"libtpde not found at {path}: build it with `./build.sh lib` in the tpde source tree"
            " (or set TPDE_LIBRARY to its path)"
        )
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as e:
        raise TPDEError(f"cannot load libtpde from {path}: {e}; rebuild it with `./build.sh lib`") from e
    for name, (restype, argtypes) in _SIGNATURES.items():
        try:
            fn = getattr(lib, name)
        except AttributeError as e:
            raise TPDEError(f"{path} has no {name}: it is not a libtpde of this version; rebuild it") from e
        fn.restype = restype
        fn.argtypes = argtypes
    abi = lib.tpde_abi_version()
    if abi != ABI_VERSION:
        raise TPDEError(f"{path} has ABI version {abi}, this tpde package needs {ABI_VERSION}; rebuild it")
    return lib


def lib() -> ctypes.CDLL:
    """The loaded library, loading it on the first call."""
    global _lib, _loaded_in
    if _forked_from is not None:
        _refuse_forked()
    if _lib is None:
        with _lock:
            if _lib is None:
                _loaded_in = os.getpid()
                _lib = _load()
    return _lib


def error_for(status: int, message: bytes, what: str) -> TPDEError:
    """The exception for a non-zero status and the message the library wrote."""
    text = message.decode("utf-8", "replace").strip() or f"{what} failed with status {status}"
    cls = _ERRORS.get(status)
    if cls is None:
        return InternalError(f"{what} returned unknown status {status}: {text}")
    if status == E_IO:
        m = _ERRNO_SUFFIX.search(text)
        if m is not None:
            return TPDEIOError(int(m.group(1)), text[: m.start()])
    return cls(text)


_local = threading.local()


def _errbuf() -> ctypes.Array:
    # One buffer per thread: a thread makes one call at a time, so the
    # message read after a call is that call's, and hot paths do not
    # allocate a buffer per call.
    buf = getattr(_local, "err", None)
    if buf is None:
        buf = _local.err = ctypes.create_string_buffer(ERR_LEN)
    return buf


def call(name: str, *args: object, allow: tuple[int, ...] = ()) -> int:
    """Call a status-returning function, appending this thread's error buffer.

    Raises the mapped exception unless the status is OK or listed in allow;
    returns the status.
    """
    err = _errbuf()
    if _forked_from is not None:
        _refuse_forked()
    rc = getattr(_lib or lib(), name)(*args, err, ERR_LEN)
    if rc != OK and rc not in allow:
        raise error_for(rc, err.value, name)
    return rc


# The per-thread buffer tpde_result copies documents into starts at this
# size; it grows to a document that does not fit, and keeps that size up to
# _RESULT_KEEP (a larger one gets a buffer of its own, freed after).
_RESULT_CAP = 1 << 16
_RESULT_KEEP = 1 << 22


def result(handle: int = 0) -> Any:
    """The JSON document the last call on handle left, parsed (handle 0:
    this thread's last call that acted on no handle)."""
    buf = getattr(_local, "result", None)
    if buf is None:
        buf = _local.result = ctypes.create_string_buffer(_RESULT_CAP)
    needed = c_uint64(0)
    for _ in range(3):
        rc = call("tpde_result", handle, buf, len(buf), byref(needed), allow=(E_BUFFER_TOO_SMALL,))
        if rc == OK:
            return json.loads(ctypes.string_at(buf, needed.value))
        buf = ctypes.create_string_buffer(needed.value)
        if needed.value <= _RESULT_KEEP:
            _local.result = buf
    raise InternalError(f"tpde_result kept asking for a larger buffer ({needed.value} bytes)")


def call_json(name: str, *args: object, into: Optional[c_uint64] = None) -> Any:
    """call(name, *args), then the document it left (parsed): in the handle
    it opened (into: the c_uint64 it filled), else in the handle it acted
    on (args[0]), or, for a call on no handle, this thread's."""
    call(name, *args)
    if into is not None:
        return result(into.value)
    return result(0 if name in THREAD_RESULTS else int(args[0]))  # type: ignore[call-overload]


def library_version() -> str:
    """tpde_version() of the loaded library."""
    v = lib().tpde_version()
    return v.decode("ascii") if v else ""
