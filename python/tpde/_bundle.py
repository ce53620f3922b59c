"""Checkpoint bundles over the tpde_bundle_* ABI (docs/FORMAT.md section 17).

One call codes a whole list of named tensors (keyframes, or delta frames
against references) and returns the bundle bytes; another validates a bundle
and returns its index; a third decodes the requested tensors into memory the
caller allocated. The library does the per-tensor work, in parallel; Python
crosses the ABI once per call, not per tensor.
"""

from __future__ import annotations

import ctypes
import json
import mmap
from ctypes import byref, c_uint64
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import _native, _tensors
from ._native import call
from .codec import _EFFORTS, _into_new_bytes
from .errors import CorruptDataError, InternalError, InvalidArgumentError

#: Index buffer first tried, plus a guess from the index length (at most
#: _INDEX_GUESS_MAX); grown to the size the library reports.
_INDEX_CAP = 1 << 16
_INDEX_GUESS_MAX = 1 << 30
BUNDLE_MAGIC = b"\x89TPB"


@dataclass
class ItemSpec:
    """One tensor to code: a keyframe when ref is None."""

    name: str
    tensor: Any
    ref: Any = None
    ref2: Any = None
    residual: int = -1
    flags: int = 0
    threshold: float = 0.0
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


class _Items:
    """A ctypes array of tpde_bundle_item that keeps every buffer it points to alive."""

    def __init__(self, specs: Sequence[ItemSpec]) -> None:
        n = len(specs)
        self.array = (_native.BundleItem * max(n, 1))()
        self.keep: List[Any] = []
        self.nelem: List[int] = []
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
                it.threshold, it.quant_bits = float(s.threshold), int(s.quant_bits)
            if s.recon is not None:
                rc = _tensors.source(s.recon)
                if rc.owner is not s.recon:
                    raise InternalError("recon buffer must be contiguous CPU memory")
                self.keep.append(rc)
                it.recon, it.recon_cap = rc.ptr, rc.nbytes
        self.n = n

    def results(self) -> List[ItemResult]:
        out = []
        for i in range(self.n):
            it = self.array[i]
            out.append(ItemResult(int(it.frame_size), float(it.max_error), int(it.changed_elems),
                                  int(it.residual_used), bool(it.identical), self.nelem[i], int(it.nbytes)))
        return out


def _meta_bytes(meta: Dict[str, Any]) -> bytes:
    # ValueError covers NaN, circular references and lone surrogates
    # (UnicodeEncodeError); nesting deep enough to exhaust Python's stack
    # would be refused by the library anyway (docs/FORMAT.md section 17.5).
    try:
        return json.dumps(meta, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"checkpoint metadata is not JSON-serializable: {e}") from None
    except RecursionError:
        raise InvalidArgumentError("checkpoint metadata is nested too deeply to store") from None


def _effort(effort: str) -> int:
    if effort not in _EFFORTS:
        raise InvalidArgumentError(f"effort must be one of {', '.join(_EFFORTS)}, got {effort!r}")
    return _EFFORTS[effort]


def encode(specs: Sequence[ItemSpec], meta: Dict[str, Any], *, effort: str = "balanced",
           threads: int = 0) -> Tuple[bytes, List[ItemResult]]:
    """Code specs and meta into one bundle; return its bytes and per-item results."""
    items = _Items(specs)
    m = _meta_bytes(meta)
    eff = _effort(effort)
    bound = c_uint64()
    call("tpde_bundle_bound", items.array, items.n, len(m), byref(bound))

    def fill(dst: int, cap: int) -> int:
        n = c_uint64()
        call("tpde_bundle_encode", items.array, items.n, m, len(m), eff, threads, dst, cap, byref(n))
        return n.value

    blob = _into_new_bytes(bound.value, fill)
    return blob, items.results()


class StreamWriter:
    """A bundle written to a file as tensors are added (atomic: the file
    appears complete at close(commit=True) or not at all)."""

    def __init__(self, path: str, *, effort: str = "balanced", threads: int = 0) -> None:
        self._effort = _effort(effort)
        self._threads = threads
        h = c_uint64()
        call("tpde_bundle_writer_open", path.encode(), byref(h))
        self._handle: Optional[int] = h.value
        self.results: List[ItemResult] = []

    def add(self, specs: Sequence[ItemSpec]) -> List[ItemResult]:
        if self._handle is None:
            raise InvalidArgumentError("the bundle writer is closed")
        items = _Items(specs)
        call("tpde_bundle_writer_add", self._handle, items.array, items.n, self._effort, self._threads)
        res = items.results()
        self.results += res
        return res

    def close(self, meta: Optional[Dict[str, Any]], commit: bool) -> int:
        if self._handle is None:
            return 0
        h, self._handle = self._handle, None
        m = _meta_bytes(meta or {}) if commit else b""
        n = c_uint64()
        call("tpde_bundle_writer_close", h, m, len(m), 1 if commit else 0, byref(n))
        return n.value

    def __del__(self) -> None:
        # An abandoned writer removes its temporary file.
        if getattr(self, "_handle", None) is not None:
            try:
                self.close(None, False)
            except Exception:  # noqa: BLE001 (interpreter shutdown: nothing to report to)
                pass


def _index_cap(n: int, trailer: Optional[bytes]) -> int:
    """A first buffer size for tpde_bundle_index's JSON, from the index
    length in the bundle's 16-byte trailer (not trusted: the library
    validates it; a wrong guess only costs a second call). Each index
    entry, at least 19 bytes, becomes a JSON object of about 250 bytes plus
    its name."""
    if trailer is None or len(trailer) < 8:
        return _INDEX_CAP
    index_len = min(int.from_bytes(trailer[:8], "little"), n)
    return _INDEX_CAP + min(index_len * 14, _INDEX_GUESS_MAX)


def index(src: object, n: int, *, trailer: Optional[bytes] = None) -> Dict[str, Any]:
    """Validate a bundle and return its index (tpde_bundle_index's JSON).
    trailer: the bundle's last 16 bytes, if the caller has them (for a
    mapped file: read from the file, not the map).

    The JSON is written into an anonymous map, so pages past its end cost
    nothing, decoded from it, and the map closed before the text is parsed:
    at most two copies of the text at a time, not three."""
    if trailer is None and isinstance(src, bytes):
        trailer = src[-16:]
    cap = _index_cap(n, trailer)
    while True:
        needed = c_uint64()
        text = None
        buf = mmap.mmap(-1, cap)
        try:
            out = (ctypes.c_char * cap).from_buffer(buf)
            try:
                # The address, not the array: a traceback through call()
                # would keep the array, and with it an export of the map.
                rc = call("tpde_bundle_index", src, n, ctypes.c_char_p(ctypes.addressof(out)), cap, byref(needed),
                          allow=(_native.E_BUFFER_TOO_SMALL,))
            finally:
                del out  # release the export so the map can close
            if rc == _native.OK:
                if needed.value > cap:
                    raise InternalError(f"tpde_bundle_index wrote {needed.value} bytes into a {cap}-byte buffer")
                with memoryview(buf) as whole, whole[: needed.value] as js:
                    text = _utf8(js)
        finally:
            buf.close()
        if text is not None:
            return _parse_index(text)
        if needed.value <= cap:
            raise InternalError(f"tpde_bundle_index wants {needed.value} bytes of a {cap}-byte buffer")
        cap = needed.value


# The library checks that the metadata is a UTF-8 JSON object nested at
# most 100 deep (docs/FORMAT.md section 17.5); an older library did not,
# and Python's parser recurses, so these failures are still the input's.

def _utf8(js: memoryview) -> str:
    try:
        return str(js, "utf-8")
    except UnicodeDecodeError as e:
        raise CorruptDataError(f"bundle metadata is not valid UTF-8 ({e.reason} at byte {e.start} of the index JSON)") \
            from None


def _parse_index(text: str) -> Dict[str, Any]:
    try:
        return json.loads(text)
    except RecursionError:
        raise CorruptDataError("bundle metadata nests too deeply to parse") from None
    except ValueError as e:
        raise CorruptDataError(f"bundle metadata is not valid JSON ({e})") from None


def decode(src: object, n: int, requests: Sequence[Tuple[int, Any, Any, Any]], *, threads: int = 0) -> None:
    """Decode bundle entries: requests are (index, dst, ref, ref2) with dst
    allocated by the caller (contiguous CPU, the entry's dtype and shape)."""
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
    call("tpde_bundle_decode", src, n, outs, len(requests), threads)
