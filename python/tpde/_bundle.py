"""Checkpoint bundles over the tpde_bundle_* ABI (docs/FORMAT.md section 9).

The one module that calls tpde_bundle_*. Writing: encode() codes a whole
list of named tensors (keyframes, or delta frames against references) into
bundle bytes, FileWriter streams them to a file; both ask for the metadata
only after the tensors are coded, so that it can say how they were.
Reading: a Reader opens a bundle once (the library validates it then, and
keeps it until close) and describes it; decode() decodes the requested
tensors into memory the caller allocated. The library does the per-tensor
work, in parallel; Python crosses the ABI a fixed number of times per
checkpoint, not per tensor.
"""

from __future__ import annotations

import collections
import ctypes
import json
from ctypes import byref, c_double, c_uint64
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _native, _tensors
from ._buffers import OutBuffer
from ._native import call, call_json
from ._options import effort_code
from .errors import InternalError, InvalidArgumentError

__all__ = ["BUNDLE_MAGIC", "ItemSpec", "ItemResult", "encode", "FileWriter", "Entry", "Reader", "decode"]

BUNDLE_MAGIC = b"\x89TPB"


# --- writing ------------------------------------------------------------------

@dataclass
class ItemSpec:
    """One tensor to code: a keyframe when ref is None.

    A delta item is lossy when threshold > 0, or when percentile > 0: its
    threshold is then the percentile of |tensor - ref| (capped by threshold
    when that is > 0). quant_bits applies to a lossy item only."""

    name: str
    tensor: Any
    ref: Any = None
    ref2: Any = None
    residual: int = -1
    flags: int = 0
    threshold: float = 0.0
    percentile: float = 0.0
    quant_bits: int = 0
    recon: Any = None  # a tensor/array of tensor's dtype and shape, or None


@dataclass
class ItemResult:
    frame_size: int
    max_error: float
    changed_elems: int
    residual: int
    identical: bool
    nelem: int
    nbytes: int
    threshold: float  # the lossy threshold used; 0 when lossless


class _Items:
    """A ctypes array of tpde_bundle_item that keeps every buffer it points
    to alive, with the adaptive thresholds resolved (one library call)."""

    def __init__(self, specs: Sequence[ItemSpec], threads: int) -> None:
        n = len(specs)
        self.array = (_native.BundleItem * max(n, 1))()
        self.keep: List[Any] = []
        self.nelem: List[int] = []
        self.thresholds: List[float] = [0.0] * n
        adaptive: Dict[float, List[int]] = {}
        for i, s in enumerate(specs):
            src = _tensors.source(s.tensor)
            it = self.array[i]
            try:
                name = s.name.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidArgumentError(f"tensor name {s.name!r} is not valid Unicode (a lone surrogate)") from None
            shape = (c_uint64 * max(len(src.shape), 1))(*src.shape)
            self.keep += [src, name, shape]
            it.name, it.name_len = ctypes.cast(ctypes.c_char_p(name), ctypes.c_void_p).value, len(name)
            it.dtype, it.ndim = src.code, len(src.shape)
            it.shape = ctypes.addressof(shape)
            it.data, it.nbytes = src.ptr, src.nbytes
            n_el = 1
            for d in src.shape:
                n_el *= d
            self.nelem.append(n_el)
            if s.ref is not None:
                r = _tensors.source(s.ref)
                self.keep.append(r)
                it.ref, it.ref_nbytes = r.ptr, r.nbytes
                if s.ref2 is not None:
                    r2 = _tensors.source(s.ref2)
                    self.keep.append(r2)
                    it.ref2, it.ref2_nbytes = r2.ptr, r2.nbytes
                it.residual_kind, it.flags = s.residual, s.flags
                if s.percentile > 0:
                    adaptive.setdefault(s.percentile, []).append(i)
                else:
                    self.thresholds[i] = float(s.threshold)
            if s.recon is not None:
                rc = _tensors.source(s.recon)
                if rc.owner is not s.recon:
                    raise InternalError("recon buffer must be contiguous CPU memory")
                self.keep.append(rc)
                it.recon, it.recon_cap = rc.ptr, rc.nbytes
        self.n = n
        for pct, which in adaptive.items():
            for i, a in zip(which, self._percentiles(which, pct, threads)):
                cap = float(specs[i].threshold)
                self.thresholds[i] = min(a, cap) if cap > 0 else a
        for i, (s, th) in enumerate(zip(specs, self.thresholds)):
            if th > 0:
                self.array[i].threshold, self.array[i].quant_bits = th, int(s.quant_bits)

    def _percentiles(self, which: List[int], pct: float, threads: int) -> List[float]:
        """tpde_bundle_thresholds over the items `which` (copies of their
        descriptors), in one call."""
        sub = (_native.BundleItem * len(which))()
        for j, i in enumerate(which):
            sub[j] = self.array[i]
        out = (c_double * len(which))()
        call("tpde_bundle_thresholds", sub, len(which), float(pct), threads, out)
        return list(out)

    def results(self, coded: Dict[str, List[Any]]) -> List[ItemResult]:
        """ItemResults of these items from how tpde_bundle_writer_add says
        it coded them (its document's "items": a column per field)."""
        if len(coded["frame_size"]) != self.n:
            raise InternalError(f"tpde_bundle_writer_add reported {len(coded['frame_size'])} items of {self.n}")
        return list(map(ItemResult, coded["frame_size"], map(float, coded["max_error"]), coded["changed_elems"],
                        coded["residual"], coded["identical"], self.nelem, (int(it.nbytes) for it in self.array),
                        self.thresholds))


def _meta_bytes(meta: Dict[str, Any]) -> bytes:
    # ValueError covers NaN, circular references and lone surrogates
    # (UnicodeEncodeError); nesting deep enough to exhaust Python's stack
    # would be refused by the library anyway (docs/FORMAT.md section 9.5).
    try:
        return json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"checkpoint metadata is not JSON-serializable: {e}") from None
    except RecursionError:
        raise InvalidArgumentError("checkpoint metadata is nested too deeply to store") from None


#: Builds a bundle's metadata once its tensors are coded.
Finish = Callable[[List[ItemResult]], Dict[str, Any]]


class _Handle:
    """A library handle, released once: by close(), else when collected
    (so that an abandoned writer's temporary file goes too)."""

    _what = "handle"
    _handle: Optional[int] = None

    def _release(self, handle: int) -> None:
        raise NotImplementedError

    @property
    def handle(self) -> int:
        if self._handle is None:
            raise InvalidArgumentError(f"the {self._what} is closed")
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            h, self._handle = self._handle, None
            self._release(h)

    def __del__(self) -> None:
        if self._handle is not None:
            try:
                self.close()
            except Exception:  # noqa: BLE001 (interpreter shutdown: nothing to report to)
                pass


class _Writer(_Handle):
    """A tpde_bundle_writer handle: to a file (path), or into memory.
    close() without a commit drops the bundle (a file writer removes its
    temporary file)."""

    _what = "bundle writer"

    def __init__(self, path: Optional[str], effort: str, threads: int) -> None:
        self._effort = effort_code(effort)
        self._threads = threads
        h = c_uint64()
        call("tpde_bundle_writer_open", None if path is None else path.encode(), byref(h))
        self._handle = h.value

    def _release(self, handle: int) -> None:
        call("tpde_bundle_writer_close", handle, None, 0, 0, None, 0, None)

    def _add(self, items: _Items, dst: Optional[int] = None, cap: int = 0) -> Tuple[int, List[ItemResult]]:
        """Code items: (bytes written, how each was coded)."""
        n = c_uint64()
        doc = call_json("tpde_bundle_writer_add", self.handle, items.array, items.n, self._effort, self._threads,
                        dst, cap, byref(n))
        return n.value, items.results(doc["items"])

    def _close(self, meta: bytes, dst: Optional[int] = None, cap: int = 0) -> Tuple[int, int]:
        """Commit: (status, total length); the handle is gone unless the
        status is E_BUFFER_TOO_SMALL (a memory writer's dst)."""
        total = c_uint64()
        try:
            rc = call("tpde_bundle_writer_close", self.handle, meta, len(meta), 1, dst, cap, byref(total),
                      allow=(_native.E_BUFFER_TOO_SMALL,))
        except BaseException:
            self._handle = None  # a failed close released the handle
            raise
        if rc == _native.OK:
            self._handle = None
        return rc, total.value


def encode(specs: Sequence[ItemSpec], finish: Finish, *, effort: str = "balanced",
           threads: int = 0) -> Tuple[bytes, List[ItemResult]]:
    """Code specs into one bundle in memory, with the metadata finish()
    makes of their results; return its bytes and the results.

    The frames are coded straight into one buffer of the items' bound; the
    rest (metadata, index, trailer) follows them there when it fits in the
    room the frames left, else in a buffer of its own, and take() copies
    both out once."""
    items = _Items(specs, threads)
    bound = c_uint64()
    call("tpde_bundle_bound", items.array, items.n, 0, byref(bound))
    w = _Writer(None, effort, threads)
    try:
        with OutBuffer(bound.value) as out:
            n, results = w._add(items, out.address, out.cap)
            meta = _meta_bytes(finish(results))
            rc, total = w._close(meta, out.address + n, out.cap - n)
            if rc == _native.OK:
                return out.take(total), results
            with OutBuffer(total - n) as tail:
                rc, total2 = w._close(meta, tail.address, tail.cap)
                if rc != _native.OK or total2 != total:
                    raise InternalError(f"tpde_bundle_writer_close wanted {total - n} bytes, then refused them")
                return out.take(n, tail.take(total - n)), results
    finally:
        w.close()  # a no-op once committed


class FileWriter:
    """A bundle written to a file as tensors are added (atomic: the file
    appears complete at commit() or not at all)."""

    def __init__(self, path: str, *, effort: str = "balanced", threads: int = 0) -> None:
        self._w = _Writer(path, effort, threads)
        self._threads = threads

    def add(self, specs: Sequence[ItemSpec]) -> List[ItemResult]:
        return self._w._add(_Items(specs, self._threads))[1]

    def commit(self, meta: Dict[str, Any]) -> int:
        """Write meta and the index and put the file in place; return its size."""
        rc, total = self._w._close(_meta_bytes(meta))
        if rc != _native.OK:
            raise InternalError(f"tpde_bundle_writer_close returned {rc} for a file")
        return total

    def abandon(self) -> None:
        self._w.close()

    def __enter__(self) -> "FileWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.abandon()  # a no-op once committed


# --- reading ------------------------------------------------------------------

#: One tensor of an opened bundle (a row of tpde_bundle_open's "entries"):
#: kind is "keyframe" or "delta", dtype a TPDE_* code.
Entry = collections.namedtuple("Entry", "name kind dtype shape raw_size frame_size offset residual identical lossy "
                                        "bound max_error changed_elems needs_ref2")
_KINDS = ("keyframe", "delta")


class Reader(_Handle):
    """A bundle opened with tpde_bundle_open: validated once, described by
    entries and metadata (its JSON, parsed), then decoded with decode().
    The library reads src in place until close(), so the caller keeps it
    alive and unchanged until then."""

    _what = "bundle"

    def __init__(self, src: object, n: int) -> None:
        h = c_uint64()
        index = call_json("tpde_bundle_open", src, n, byref(h), into=h)
        self._handle = h.value
        try:
            self.size = index["size"]
            self.version_minor = index["version_minor"]
            e = index["entries"]  # a column per field
            self.entries = list(map(Entry, e["name"], [_KINDS[k] for k in e["kind"]], e["dtype"], map(tuple, e["shape"]),
                                    e["raw_size"], e["frame_size"], e["offset"], e["residual"], e["identical"],
                                    e["lossy"], map(float, e["bound"]), map(float, e["max_error"]),
                                    e["changed_elems"], e["needs_ref2"]))
            self.metadata = index["meta"]
        except BaseException:
            self.close()
            raise

    def _release(self, handle: int) -> None:
        call("tpde_bundle_close", handle)


def decode(reader: Reader, requests: Sequence[Tuple[int, Any, Any, Any]], *, threads: int = 0) -> None:
    """Decode entries of an opened bundle: requests are (index, dst, ref,
    ref2) with dst allocated by the caller (contiguous CPU, the entry's
    dtype and shape)."""
    outs = (_native.BundleOut * max(len(requests), 1))()
    keep = []  # the references' sources (copies, for CUDA or strided ones)
    for i, (k, dst, ref, ref2) in enumerate(requests):
        o = outs[i]
        o.index = k
        o.dst, o.dst_cap = _tensors.address(dst)
        if ref is not None:
            r = _tensors.source(ref)
            keep.append(r)
            o.ref, o.ref_nbytes = r.ptr, r.nbytes
        if ref2 is not None:
            r2 = _tensors.source(ref2)
            keep.append(r2)
            o.ref2, o.ref2_nbytes = r2.ptr, r2.nbytes
    call("tpde_bundle_decode", reader.handle, outs, len(requests), threads)
