"""Whole checkpoints: the design document's encoder API over checkpoint bundles.

    enc = tpde.TemporalPositionDeltaEncoder()             # lossless
    full, meta = enc.compress_checkpoint(model.state_dict())
    ...train...
    delta, meta = enc.compress_checkpoint_delta(model.state_dict(), previous)
    sd = enc.decompress_checkpoint(delta, previous=decoded_previous)

A checkpoint is a state dict: a mapping of names to tensors (torch or
numpy), or any nesting of dicts, lists and tuples of tensors and JSON-like
values (str, int, float, bool, None), such as an optimizer's state_dict().
It is stored as one bundle (docs/FORMAT.md section 17): a keyframe per
tensor for a full checkpoint, or per tensor a delta frame against the tensor
of the same name in a reference checkpoint.

Lossless is the default everywhere. The design document's examples pass
threshold=1e-3; here that turns on the opt-in lossy mode (delta frames of
float tensors only; every element within the threshold, the bound and the
measured max error recorded per tensor and reported in the metadata).

References and closed loop. A delta is coded against the checkpoint the
*decoder* will hold. The encoder therefore keeps a private copy of what
decoding its last output gives (the reconstruction: the checkpoint itself
when lossless) and codes the next delta against that copy whenever
``previous`` is the checkpoint it compressed last or is omitted. This also
makes the design document's loop correct: ``model.state_dict()`` returns
the live parameters, which training overwrites in place, so by the next
epoch the "previous" dict already holds the new values. Lossy errors never
accumulate along a chain, since each delta is coded against the decoded
previous state. keep_reference=False drops the copy (one checkpoint of
memory); ``previous`` must then be passed and must be what the decoder will
have.
"""

from __future__ import annotations

import collections
import datetime
import math
import mmap
import os
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from . import _bundle, _memory, _structure, _tensors
from ._structure import state_dict_nbytes
from ._tensors import DTYPES, WIDTHS
from .codec import _FILE_MAGIC, _readable, _threads
from .errors import (
    CorruptDataError,
    InvalidArgumentError,
    ReferenceMismatchError,
    TPDEIOError,
    UnsupportedFormatError,
)

__all__ = [
    "TemporalPositionDeltaEncoder",
    "TPDECheckpointCompressor",
    "CompressedCheckpoint",
    "checkpoint_info",
    "load_checkpoint",
    "state_dict_nbytes",
    "FORMAT_VERSION",
    "COMPRESSION_METHODS",
]

#: Version of the checkpoint bundle format written (docs/FORMAT.md §17).
FORMAT_VERSION = "1.0"
#: compression_method names -> TPDE_DELTA_* position-coding flags. "auto"
#: lets the encoder pick per chunk (dense or sparse, whichever is smaller);
#: "elias_delta_zstd" forces the design document's sparse coding (positions
#: as Elias-delta gaps, then zstd); "dense" never codes positions.
COMPRESSION_METHODS = {"auto": 0, "dense": 1, "elias_delta_zstd": 2}
_RESIDUALS = {"auto": -1, "xor": 0, "diff": 1, "pred": 2}
_FLOAT_CODES = frozenset(i for i, n in enumerate(DTYPES) if n.startswith("F"))
# Lossy coding needs at least 2-byte floats (F8 stays lossless).
_LOSSY_CODES = frozenset(i for i in _FLOAT_CODES if WIDTHS[i] >= 2)

Checkpoint = Any  # a state dict (see the module docstring)
Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


def _version() -> str:
    from . import __version__

    return __version__


# --- the compressed object ----------------------------------------------------

class CompressedCheckpoint(bytes):
    """The bytes of a compressed checkpoint, with its metadata attached.

    The design document uses compress_checkpoint's result two ways: as a
    pair (``data, metadata = ...``, §3.4) and as the bytes themselves
    (``len(data)``, ``decompress_checkpoint(data)``, §5.1). This object is
    both: it is bytes (write it to a file as is), and unpacking it gives
    ``(bytes, metadata)``. Pickling it, or torch.save, stores the bytes
    alone, which load back as a bytearray. Iterating it therefore yields
    those two items, not the bytes' integers; use ``bytes(c)`` or a
    memoryview for the raw bytes.
    """

    metadata: Dict[str, Any]

    def __new__(cls, data: bytes, metadata: Dict[str, Any]) -> "CompressedCheckpoint":
        obj = super().__new__(cls, data)
        obj.metadata = metadata
        return obj

    def __iter__(self):  # type: ignore[override]
        return iter((bytes(self), self.metadata))

    def __reduce__(self):
        # Pickled (and torch.save'd) as a bytearray of the same bytes: any
        # subclass of bytes pickles through a global, and bytearray is one
        # that torch.load's default weights_only unpickler allows (bytes
        # is not). Everything in tpde that reads bytes reads a bytearray.
        return (bytearray, (bytes(self),))

    def __repr__(self) -> str:
        return f"<CompressedCheckpoint {len(self)} bytes, {self.metadata.get('checkpoint_type')}>"


# --- reading ------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The JSON types of the "checkpoint" member's fields (docs/FORMAT.md §17.6),
# checked where present: they are informative, but checkpoint_info returns
# them and the CLI formats them.
_JSON_KINDS = {
    "null": lambda v: v is None,
    "a boolean": lambda v: isinstance(v, bool),
    "an integer": _is_int,
    "a number": _is_number,
    "a string": lambda v: isinstance(v, str),
}
_CHECKPOINT_FIELDS: Dict[str, Tuple[str, ...]] = {
    "checkpoint_type": ("a string",),
    "reference": ("a string", "null"),
    # An integer as a rule, but the encoder stores what it is given.
    "epoch": ("a number", "a string", "null"),
    "reference_epoch": ("a number", "a string", "null"),
    "tpde_version": ("a string",),
    "format_version": ("a string",),
    "compression_method": ("a string",),
    "threshold": ("a number",),
    "adaptive": ("a boolean",),
    "percentile": ("a number", "null"),
    "quant_bits": ("an integer",),
    "lossless": ("a boolean",),
    "error_bound": ("a number",),
    "timestamp": ("a string",),
    "num_tensors": ("an integer",),
    "original_size": ("an integer",),
    "original_size_mb": ("a number",),
}
_REFERENCES = {"full": (None,), "delta": ("previous", "base")}


def _corrupt_meta(problem: str) -> CorruptDataError:
    return CorruptDataError(f"checkpoint metadata: {problem}")


def _member(obj: Dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _corrupt_meta(f"{where} has no {key!r} member")
    return obj[key]


class _Meta:
    """A bundle's metadata as a tpde checkpoint (docs/FORMAT.md §17.6),
    checked once, when the bundle is opened, before anything uses it: every
    reader then sees the same verdict, and no later step meets a wrong type.

    A bundle that is not a tpde checkpoint ("tpde" absent, or another
    "format") is unsupported; one that says it is but breaks the schema is
    corrupt, with the field (and tensor) named."""

    def __init__(self, meta: Any, tensors: List[Dict[str, Any]]) -> None:
        if not isinstance(meta, dict):
            raise _corrupt_meta(f"the metadata is {_structure.json_type(meta)}, not an object")
        tp = meta.get("tpde", _structure.ABSENT)
        if tp is _structure.ABSENT:
            raise UnsupportedFormatError("this bundle holds no tpde checkpoint metadata (no 'tpde' member): it was "
                                         "not written by TemporalPositionDeltaEncoder")
        if not isinstance(tp, dict):
            raise _corrupt_meta(f"'tpde' is {_structure.json_type(tp)}, not an object")
        fmt = _member(tp, "format", "'tpde'")
        if not isinstance(fmt, str):
            raise _corrupt_meta(f"'tpde.format' is {_structure.json_type(fmt)}, not a string")
        if fmt != "tpde-checkpoint":
            raise UnsupportedFormatError(f"this bundle holds a {fmt[:60]!r}, not a 'tpde-checkpoint'")

        c = _member(meta, "checkpoint", "the metadata")
        if not isinstance(c, dict):
            raise _corrupt_meta(f"'checkpoint' is {_structure.json_type(c)}, not an object")
        for key, kinds in _CHECKPOINT_FIELDS.items():
            v = c.get(key, _structure.ABSENT)
            if v is not _structure.ABSENT and not any(_JSON_KINDS[k](v) for k in kinds):
                raise _corrupt_meta(f"'checkpoint.{key}' is {_structure.json_type(v)}, not {' or '.join(kinds)}")
        version = c.get("format_version")
        if version is not None:
            major, dot, minor = version.partition(".")
            if not (major.isdigit() and dot and minor.isdigit()):
                raise _corrupt_meta(f"'checkpoint.format_version' is {version[:40]!r}, not MAJOR.MINOR")
            if int(major) != int(FORMAT_VERSION.partition(".")[0]):
                raise UnsupportedFormatError(f"checkpoint format version {version}: this tpde reads "
                                             f"{FORMAT_VERSION.partition('.')[0]}.x")
        self.checkpoint_type: str = _member(c, "checkpoint_type", "'checkpoint'")
        if self.checkpoint_type not in _REFERENCES:
            raise _corrupt_meta(f"'checkpoint.checkpoint_type' is {self.checkpoint_type[:40]!r}, not 'full' or "
                                "'delta'")
        self.reference: Optional[str] = _member(c, "reference", "'checkpoint'")
        if self.reference not in _REFERENCES[self.checkpoint_type]:
            raise _corrupt_meta(f"a {self.checkpoint_type} checkpoint whose 'checkpoint.reference' is "
                                f"{_structure.json_type(self.reference)}, not "
                                f"{' or '.join(repr(r) if r else 'null' for r in _REFERENCES[self.checkpoint_type])}")
        if self.checkpoint_type == "full":
            for t in tensors:
                if t["kind"] != "keyframe":
                    raise _corrupt_meta(f"a full checkpoint (decodable alone) whose tensor {t['name']!r} is a "
                                        "delta frame")
        self.checkpoint: Dict[str, Any] = c
        self.user = meta.get("user", {})
        if not isinstance(self.user, dict):
            raise _corrupt_meta(f"'user' is {_structure.json_type(self.user)}, not an object")

        aliases = _member(tp, "aliases", "'tpde'")
        if not isinstance(aliases, dict):
            raise _corrupt_meta(f"'tpde.aliases' is {_structure.json_type(aliases)}, not an object")
        self.skeleton = _member(tp, "skeleton", "'tpde'")
        # Names -> placeholders, for the checks below; a flat checkpoint
        # without aliases (the common state_dict()) needs none.
        stored = {t["name"]: None for t in tensors} if aliases or self.skeleton is not None else {}
        for alias, target in aliases.items():
            if not isinstance(target, str):
                raise _corrupt_meta(f"alias {alias!r} is {_structure.json_type(target)}, not a tensor name")
            if target not in stored:
                raise _corrupt_meta(f"alias {alias!r} refers to tensor {target!r}, which the bundle does not hold")
            if alias in stored:
                raise _corrupt_meta(f"alias {alias!r} is also the name of a stored tensor")
        self.aliases: Dict[str, str] = aliases
        # Walked now with placeholders, so that a bad node is found before
        # anything is decoded (and by checkpoint_info too); decoding walks
        # it again with the tensors.
        if self.skeleton is not None:
            stored.update(dict.fromkeys(aliases))
            top = _structure.rebuild(self.skeleton, stored)
            if not isinstance(top, dict):
                raise _corrupt_meta(f"'tpde.skeleton' stands for {_structure.json_type(top)}, not a mapping")
        self.state_dict_metadata = _member(tp, "state_dict_metadata", "'tpde'")
        if self.state_dict_metadata is not None:
            md = _structure.rebuild(self.state_dict_metadata, {}, (None, "tpde.state_dict_metadata"))
            if not isinstance(md, dict):
                raise _corrupt_meta(f"'tpde.state_dict_metadata' stands for {_structure.json_type(md)}, not a mapping")


class _Opened:
    """A bundle in memory, validated, with its index and checked metadata."""

    def __init__(self, data: Any, head: Optional[bytes] = None, trailer: Optional[bytes] = None) -> None:
        """head and trailer: the first 4 and last 16 bytes, when the caller
        read them already (from a file, rather than from its mapping, which
        another process could truncate under Python: a SIGBUS there could
        not be caught)."""
        self._ctx: Any = None
        if head is None:
            try:
                head = bytes(memoryview(data)[:4])
            except TypeError:
                raise TypeError(f"expected bytes, bytearray, memoryview or a path, not {type(data).__name__}") \
                    from None
        if head == _FILE_MAGIC:
            raise InvalidArgumentError("this is a compressed file (tpde.compress_file), not a checkpoint: restore it "
                                       "with tpde.decompress_file")
        self._ctx = _readable(data)
        self.src, self.n = self._ctx.__enter__()
        try:
            self.index = _bundle.index(self.src, self.n, trailer=trailer)
            self.tensors: List[Dict[str, Any]] = self.index["tensors"]
            self.meta = _Meta(self.index["metadata"], self.tensors)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def __enter__(self) -> "_Opened":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _open(data: Source) -> _Opened:
    if isinstance(data, (str, os.PathLike)):
        return _OpenedFile(data)
    return _Opened(data)


class _OpenedFile(_Opened):
    """A file, memory-mapped and read in place. The map is private and
    writable (copy-on-write, never written) because ctypes takes the
    address only of writable buffers."""

    def __init__(self, path: Any) -> None:
        p = os.fspath(path)
        try:
            with open(p, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = os.pread(f.fileno(), 4, 0)
                trailer = os.pread(f.fileno(), 16, max(size - 16, 0))
                m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) \
                    if size else None
        except OSError as e:
            raise TPDEIOError(e.errno, f"{p}: {e.strerror or e}") from e
        self._keepmap = m
        super().__init__(memoryview(m) if m is not None else b"", head, trailer)

    def close(self) -> None:
        super().close()
        m = getattr(self, "_keepmap", None)
        if m is not None:
            self._keepmap = None
            try:
                m.close()
            except BufferError:
                pass  # a view is still exported; the map closes with it


def checkpoint_info(data: Source) -> Dict[str, Any]:
    """Describe a compressed checkpoint (bytes or a path) without decoding
    it: its stored metadata, compressed size and, per tensor, dtype, shape,
    kind (keyframe or delta), sizes and lossy bound/max error."""
    with _open(data) as b:
        # The index's own dicts, trimmed and renamed in place: a bundle may
        # hold a million entries, and a second set of dicts would double
        # the memory this takes.
        for t in b.tensors:
            t["dtype"] = DTYPES[t["dtype"]]
            t["shape"] = tuple(t["shape"])
            t["frame_size"] = t.pop("length")
            del t["offset"], t["needs_ref2"], t["residual"]
        info = dict(b.meta.checkpoint)
        info["user"] = b.meta.user
        info["compressed_size"] = b.index["size"]
        info["format_version"] = f"1.{b.index['version_minor']}"
        info["tensors"] = b.tensors
        return info


def _decode(data: Source, previous: Optional[Checkpoint], previous2: Optional[Checkpoint], like: str,
            threads: int, max_output_bytes: Optional[int]) -> Checkpoint:
    limit = _memory.output_limit(max_output_bytes)
    with _open(data) as b:
        return _decode_opened(b, previous, previous2, like, threads, limit)


def _decode_opened(b: _Opened, previous: Optional[Checkpoint], previous2: Optional[Checkpoint], like: str,
                   threads: int, limit: int) -> Checkpoint:
    if like not in ("torch", "numpy"):
        raise InvalidArgumentError(f"like must be 'torch' or 'numpy', got {like!r}")
    th = _threads(threads)
    # Each raw size is the library's reading of a checksummed frame header,
    # but a forged bundle can claim any size: the total is checked before
    # the first tensor is allocated.
    _memory.check_output(sum(t["raw_size"] for t in b.tensors), limit,
                         f"this checkpoint ({len(b.tensors):,} tensors)")
    meta = b.meta
    prev = _structure.Flat(previous, "previous") if previous is not None else None
    prev2 = _structure.Flat(previous2, "previous2") if previous2 is not None else None
    refs = []
    for t in b.tensors:
        ref = ref2 = None
        if t["kind"] == "delta":
            ref = _reference(prev, t, "previous", meta)
            if t["needs_ref2"]:
                ref2 = _reference(prev2, t, "previous2", meta)
        refs.append((ref, ref2))
    # An OrderedDict, as nn.Module.state_dict() returns, so that
    # _metadata can be set on it.
    out: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
    reqs = []
    for k, (t, (ref, ref2)) in enumerate(zip(b.tensors, refs)):
        dst = _tensors.empty(t["dtype"], tuple(t["shape"]), like)
        out[t["name"]] = dst
        reqs.append((k, dst, ref, ref2))
    try:
        _bundle.decode(b.src, b.n, reqs, threads=th)
    except ReferenceMismatchError as e:
        raise ReferenceMismatchError(f"{e} ({_reference_hint(meta)})") from None
    for alias, name in meta.aliases.items():
        out[alias] = out[name]
    if meta.skeleton is None:
        return _structure.with_state_dict_metadata(out, meta.state_dict_metadata)
    return _structure.rebuild(meta.skeleton, out)


def _reference_hint(meta: _Meta) -> str:
    c = meta.checkpoint
    ref = c.get("reference_epoch")
    here = c.get("epoch")
    s = "this checkpoint is a delta"
    if here is not None:
        s += f" (epoch {here})"
    s += f" against the {meta.reference or 'previous'} checkpoint"
    if ref is not None:
        s += f" of epoch {ref}"
    return s + "; pass exactly that decoded checkpoint as previous"


def _reference(prev: Optional[_structure.Flat], t: Dict[str, Any], what: str, meta: _Meta) -> Any:
    name = t["name"]
    if prev is None:
        raise ReferenceMismatchError(f"tensor {name!r} is a delta frame and no {what} checkpoint was given "
                                     f"({_reference_hint(meta)})")
    r = prev.get(name)
    if r is None:
        raise ReferenceMismatchError(f"tensor {name!r} is a delta against the {what} checkpoint's {name!r}, "
                                     f"which the {what} checkpoint given lacks ({_reference_hint(meta)})")
    code, shape = _tensors.layout(r)
    if code != t["dtype"] or tuple(shape) != tuple(t["shape"]):
        raise ReferenceMismatchError(
            f"tensor {name!r}: the {what} checkpoint's tensor is {DTYPES[code]}{list(shape)}, the delta was made "
            f"against {DTYPES[t['dtype']]}{list(t['shape'])} ({_reference_hint(meta)})")
    return r


def load_checkpoint(path: Source, previous: Optional[Checkpoint] = None, *, previous2: Optional[Checkpoint] = None,
                    like: str = "torch", threads: int = 0, max_output_bytes: Optional[int] = None) -> Checkpoint:
    """Decode a compressed checkpoint from a file (memory-mapped, read in
    place) or bytes. A delta checkpoint needs the decoded checkpoint it was
    made against as previous (a wrong one raises ReferenceMismatchError).
    max_output_bytes: the most bytes of tensor data it may decode to
    (default $TPDE_MAX_OUTPUT, else the machine's physical memory); a
    checkpoint claiming more raises DecodeLimitError before anything is
    allocated."""
    return _decode(path, previous, previous2, like, threads, max_output_bytes)


# --- the encoder ----------------------------------------------------------------

class TemporalPositionDeltaEncoder:
    """Compress checkpoints of one training run: full (keyframes) or as
    deltas against an earlier checkpoint (Temporal Position Delta Encoding).

    threshold: 0.0 (the default) is lossless: every bit of every tensor is
    restored, NaN payloads and -0.0 included. The design document's default
    of 1e-3 is *lossy*: threshold > 0 lets delta frames of float tensors
    replace any element within threshold of its reference element by it,
    so each restored element is within threshold of the original; the
    bound and the measured max error are recorded per tensor and reported
    as metadata['max_error']. Integer and bool tensors, and full
    (keyframe) checkpoints, are always lossless.
    adaptive: per-tensor thresholds from the given percentile of |delta|
    (design document §7.1: percentile=99 drops the 99% smallest changes);
    capped by threshold when that is > 0. Lossy, opt-in. Each checkpoint
    is within its own recorded bound, but with high percentiles the dropped
    changes pile up and the bound grows from checkpoint to checkpoint; a
    fixed threshold (or the cap) gives one bound for the whole chain.
    quant_bits: 8 or 4 additionally quantizes the kept residuals (lossy
    only), within the same bound.
    compression_method: how the positions of changed elements are coded:
    "auto" (per chunk, whichever is smaller), "elias_delta_zstd" (always the
    design document's sparse coding) or "dense".
    residual: "auto", "xor", "diff" (integer difference of bit patterns).
    keep_reference: keep a copy of the last checkpoint as the decoder will
    see it, the reference of the next delta (see the module docstring).
    output_dir: where save_checkpoint and save_compressed_delta write.
    """

    def __init__(self, threshold: float = 0.0, adaptive: bool = False, compression_method: str = "auto", *,
                 percentile: float = 99.0, quant_bits: int = 0, residual: str = "auto",
                 keep_reference: bool = True, output_dir: Union[str, "os.PathLike[str]"] = "tpde_checkpoints",
                 effort: str = "balanced", threads: int = 0) -> None:
        if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
            raise InvalidArgumentError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if compression_method not in COMPRESSION_METHODS:
            raise InvalidArgumentError(
                f"compression_method must be one of {', '.join(COMPRESSION_METHODS)}, got {compression_method!r}")
        if residual not in _RESIDUALS or residual == "pred":
            raise InvalidArgumentError(f"residual must be 'auto', 'xor' or 'diff', got {residual!r}")
        if not (isinstance(percentile, (int, float)) and 0 < percentile < 100):
            raise InvalidArgumentError(f"percentile must be in (0, 100), got {percentile!r}")
        if quant_bits not in (0, 4, 8):
            raise InvalidArgumentError(f"quant_bits must be 0, 4 or 8, got {quant_bits!r}")
        if quant_bits and not (threshold > 0 or adaptive):
            raise InvalidArgumentError("quant_bits needs a lossy mode (threshold > 0 or adaptive=True)")
        self.threshold = float(threshold)
        self.adaptive = bool(adaptive)
        self.compression_method = compression_method
        self.percentile = float(percentile)
        self.quant_bits = int(quant_bits)  # stored as a JSON integer even if given False
        self.residual = residual
        self.keep_reference = keep_reference
        self.output_dir = Path(output_dir)
        self.effort = effort
        self.threads = _threads(threads)
        self.last_metadata: Optional[Dict[str, Any]] = None
        # The reconstruction of the last checkpoint compressed, by name,
        # and the object it was made from.
        self._reference: Optional[Dict[str, Any]] = None
        self._reference2: Optional[Dict[str, Any]] = None
        self._reference_source: Any = None
        self._reference_epoch: Optional[int] = None
        self._thresholds: Mapping[str, float] = {}

    @property
    def lossy(self) -> bool:
        return self.threshold > 0 or self.adaptive or bool(self._thresholds)

    # -- compression --

    def compress_checkpoint(self, state_dict: Checkpoint, checkpoint_type: str = "full", *,
                            epoch: Optional[int] = None, previous: Optional[Checkpoint] = None,
                            metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress a checkpoint. checkpoint_type "full" stores every tensor
        alone (a keyframe: decodable without any other checkpoint, always
        lossless); "delta" is compress_checkpoint_delta(state_dict,
        previous). Returns a CompressedCheckpoint: bytes that unpack as
        (bytes, metadata). metadata: extra JSON-serializable fields stored
        with the checkpoint (e.g. model_name)."""
        if checkpoint_type == "delta":
            return self.compress_checkpoint_delta(state_dict, previous, epoch=epoch, metadata=metadata)
        if checkpoint_type != "full":
            raise InvalidArgumentError(f"checkpoint_type must be 'full' or 'delta', got {checkpoint_type!r}")
        return self._compress(state_dict, None, None, epoch, metadata, "full")

    def compress_checkpoint_delta(self, current: Checkpoint, previous: Optional[Checkpoint] = None, *,
                                  epoch: Optional[int] = None, method: Optional[str] = None,
                                  metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress current as deltas against previous: each tensor against
        the tensor of the same name (tensors new or reshaped since are
        stored as keyframes). previous omitted, or the checkpoint this
        encoder compressed last, means this encoder's copy of it as the
        decoder will see it. Returns a CompressedCheckpoint (bytes that
        unpack as (bytes, metadata)); decode it with
        decompress_checkpoint(data, previous=<that checkpoint, decoded>).
        method: a compression_method for this call only."""
        ref, ref_epoch = self._resolve_previous(previous)
        return self._compress(current, ref, None, epoch, metadata, "previous", ref_epoch, method=method)

    def _resolve_previous(self, previous: Optional[Checkpoint]) -> Tuple[Dict[str, Any], Optional[int]]:
        """The reference tensors for a delta, and their epoch when known."""
        if previous is None or (previous is self._reference_source and self._reference is not None):
            if self._reference is None:
                raise InvalidArgumentError(
                    "no previous checkpoint: pass previous=, or compress a full checkpoint with this encoder first"
                    + ("" if self.keep_reference else " (keep_reference=False keeps none)"))
            return self._reference, self._reference_epoch
        return _structure.Flat(previous, "previous").tensors_with_aliases(), None

    def _compress(self, ckpt: Checkpoint, ref: Optional[Dict[str, Any]], ref2: Optional[Dict[str, Any]],
                  epoch: Optional[int], user: Optional[Mapping[str, Any]], reference: str,
                  reference_epoch: Optional[int] = None, method: Optional[str] = None, path: Optional[str] = None,
                  chunk_size: Optional[int] = None, update_reference: bool = True) -> CompressedCheckpoint:
        t0 = time.perf_counter()
        flat = _structure.Flat(ckpt)
        method = method or self.compression_method
        if method not in COMPRESSION_METHODS:
            raise InvalidArgumentError(f"method must be one of {', '.join(COMPRESSION_METHODS)}, got {method!r}")
        keep = self.keep_reference and update_reference
        specs: List[_bundle.ItemSpec] = []
        bound = 0.0
        for name, t in flat.tensors.items():
            spec = _bundle.ItemSpec(name, t)
            r = ref.get(name) if ref is not None else None
            # An empty tensor has nothing to delta against (and may have no
            # data pointer at all): it is stored as a keyframe.
            if r is not None and _tensors.nbytes(t) > 0 and _tensors.layout(r) == _tensors.layout(t):
                spec.ref = r
                r2 = ref2.get(name) if ref2 is not None else None
                if r2 is not None and _tensors.layout(r2) == _tensors.layout(t):
                    spec.ref2 = r2
                spec.residual = _RESIDUALS[self.residual]
                spec.flags = COMPRESSION_METHODS[method]
                th = self._threshold_for(name, t, r)
                if th > 0:
                    spec.threshold, spec.quant_bits = th, self.quant_bits
                    bound = max(bound, th)
            if keep:
                spec.recon = _tensors.empty_like(t)
            specs.append(spec)
        ckpt_meta = {
            "checkpoint_type": "full" if ref is None else "delta",
            "reference": None if ref is None else reference,
            "epoch": epoch,
            "reference_epoch": None if ref is None else reference_epoch,
            "tpde_version": _version(),
            "format_version": FORMAT_VERSION,
            "compression_method": method,
            "threshold": self.threshold,
            "adaptive": self.adaptive,
            "percentile": self.percentile if self.adaptive else None,
            "quant_bits": self.quant_bits,
            "lossless": bound == 0,
            "error_bound": bound,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "num_tensors": len(flat.tensors),
            "original_size": sum(_tensors.nbytes(t) for t in flat.tensors.values()),
        }
        ckpt_meta["original_size_mb"] = ckpt_meta["original_size"] / 1e6
        tp = {"format": "tpde-checkpoint", "skeleton": flat.skeleton, "aliases": flat.aliases,
              "state_dict_metadata": flat.state_dict_metadata}
        stored = {"tpde": tp, "checkpoint": ckpt_meta, "user": dict(user or {})}
        if path is None:
            blob, results = _bundle.encode(specs, stored, effort=self.effort, threads=self.threads)
            size = len(blob)
        else:
            blob, results, size = b"", [], 0
            w = _bundle.StreamWriter(path, effort=self.effort, threads=self.threads)
            try:
                group: List[_bundle.ItemSpec] = []
                group_bytes = 0
                for s in specs:
                    nb = _tensors.nbytes(s.tensor)
                    if group and group_bytes + nb > (chunk_size or 0):
                        results += w.add(group)
                        group, group_bytes = [], 0
                    group.append(s)
                    group_bytes += nb
                if group:
                    results += w.add(group)
                size = w.close(stored, True)
            finally:
                w.close(None, False)
        meta = dict(ckpt_meta)
        meta.update(stored["user"])
        changed = sum(r.changed_elems if s.ref is not None else r.nelem for s, r in zip(specs, results))
        total = sum(r.nelem for r in results)
        meta["sparsity"] = 0.0 if ref is None or total == 0 else 100.0 * (1 - changed / total)
        meta["max_error"] = max((r.max_error for r in results), default=0.0)
        meta["compressed_size"] = size
        meta["compressed_size_mb"] = size / 1e6
        meta["ratio"] = meta["original_size"] / size if size else float("inf")
        meta["method"] = "tpde-keyframe" if ref is None else f"tpde-delta-{reference}"
        meta["time"] = time.perf_counter() - t0
        if keep:
            recon = {s.name: s.recon for s in specs}
            for alias, name in flat.aliases.items():
                recon[alias] = recon[name]
            self._reference2 = self._reference if ref is not None else None
            self._reference, self._reference_source, self._reference_epoch = recon, ckpt, epoch
        self.last_metadata = meta
        return CompressedCheckpoint(blob, meta)

    def _threshold_for(self, name: str, t: Any, ref: Any) -> float:
        code, _ = _tensors.layout(t)
        if code not in _LOSSY_CODES:
            return 0.0
        if name in self._thresholds:
            return float(self._thresholds[name])
        th = self.threshold
        if self.adaptive:
            from .delta import delta_threshold

            a = delta_threshold(t, ref, self.percentile)
            th = min(a, th) if th > 0 else a
        return th

    # -- decompression --

    def decompress_checkpoint(self, data: Source, previous: Optional[Checkpoint] = None, *,
                              previous2: Optional[Checkpoint] = None, like: str = "torch",
                              threads: int = 0, max_output_bytes: Optional[int] = None) -> Checkpoint:
        """Decode a compressed checkpoint (bytes, or a path to one). A delta
        needs previous: the decoded checkpoint it was made against (a
        different one raises ReferenceMismatchError, never wrong data).
        Returns the state dict, with tensors on the CPU. max_output_bytes:
        as for tpde.load_checkpoint."""
        return _decode(data, previous, previous2, like, threads or self.threads, max_output_bytes)

    def decompress_parallel(self, data: Source, num_threads: int = 0, previous: Optional[Checkpoint] = None, *,
                            max_output_bytes: Optional[int] = None) -> Checkpoint:
        """decompress_checkpoint on num_threads threads (design document
        §8.2). Decoding is always parallel; 0 uses tpde.get_num_threads()."""
        return self.decompress_checkpoint(data, previous, threads=num_threads, max_output_bytes=max_output_bytes)

    # -- files --

    def _path(self, epoch: Any) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir / f"checkpoint_epoch_{epoch}.tpde"

    def save_checkpoint(self, state_dict: Checkpoint, epoch: int) -> int:
        """Write a full checkpoint to output_dir/checkpoint_epoch_{epoch}.tpde
        (atomically) and return its size in bytes. The metadata is in
        last_metadata."""
        path = self._path(epoch)
        c = self._compress(state_dict, None, None, epoch, None, "full", path=str(path), chunk_size=1 << 28)
        return int(c.metadata["compressed_size"])

    def save_compressed_delta(self, state_dict: Checkpoint, previous_checkpoint: Optional[Checkpoint] = None,
                              epoch: Optional[int] = None) -> int:
        """Write state_dict as a delta against previous_checkpoint (see
        compress_checkpoint_delta) to output_dir/checkpoint_epoch_{epoch}.tpde
        and return its size in bytes."""
        ref, ref_epoch = self._resolve_previous(previous_checkpoint)
        path = self._path(epoch)
        c = self._compress(state_dict, ref, None, epoch, None, "previous", ref_epoch, path=str(path),
                           chunk_size=1 << 28)
        return int(c.metadata["compressed_size"])

    def load_checkpoint(self, epoch_or_path: Any, previous: Optional[Checkpoint] = None, *,
                        max_output_bytes: Optional[int] = None, **kw: Any) -> Checkpoint:
        """Decode a checkpoint written by save_checkpoint/save_compressed_delta
        (an epoch number) or any compressed checkpoint file (a path); keywords
        as for decompress_checkpoint."""
        p = epoch_or_path if isinstance(epoch_or_path, (str, os.PathLike)) else self.output_dir / \
            f"checkpoint_epoch_{epoch_or_path}.tpde"
        return self.decompress_checkpoint(p, previous, max_output_bytes=max_output_bytes, **kw)

    def stream_compress_to_file(self, checkpoint: Checkpoint, path: Union[str, "os.PathLike[str]"],
                                chunk_size: Union[int, float] = 1 << 28, *,
                                previous: Optional[Checkpoint] = None, epoch: Optional[int] = None) -> int:
        """Compress a checkpoint straight to a file (design document §8.2):
        tensors are coded and written about chunk_size bytes of input at a
        time, so the extra memory is about the compressed size of chunk_size
        bytes (at least one tensor's worth) rather than of the checkpoint.
        Full unless previous is given. It does not keep a reference copy
        (that would cost a checkpoint of memory), so it leaves this
        encoder's chain as it was. Returns the file's size in bytes."""
        cs = int(chunk_size)
        if cs <= 0:
            raise InvalidArgumentError(f"chunk_size must be > 0, got {chunk_size!r}")
        ref = None if previous is None else _structure.Flat(previous, "previous").tensors_with_aliases()
        c = self._compress(checkpoint, ref, None, epoch, None, "previous" if ref is not None else "full",
                           path=os.fspath(path), chunk_size=cs, update_reference=False)
        return int(c.metadata["compressed_size"])



class TPDECheckpointCompressor(TemporalPositionDeltaEncoder):
    """A stateful chain of checkpoints (design document §4.2, §10): the
    first compress() is a full checkpoint, every later one a delta against
    the previous checkpoint (reference="previous", approach A) or against
    the first one (reference="base", approach B: each checkpoint decodes
    with the base alone). keyframe_interval N > 0 makes every N-th
    checkpoint full, which bounds the replay needed to reach any one.
    predict=True (approach A) also keeps the checkpoint before the previous
    and lets the encoder predict each element from the last two (one more
    checkpoint of memory on both sides; often smaller deltas).

    decompress() is the mirror image: feed it the checkpoints in the order
    they were compressed (a full one starts a chain) and it returns each
    decoded state dict.

    adaptive_threshold=True is the design document's per-layer adaptive
    threshold (lossy); adaptive_thresholds={name: threshold} gives explicit
    per-tensor thresholds (§7.1). Both are opt-in; the default is lossless.
    """

    def __init__(self, adaptive_threshold: bool = False, compression_method: str = "auto", *,
                 threshold: float = 0.0, adaptive_thresholds: Optional[Mapping[str, float]] = None,
                 reference: str = "previous", keyframe_interval: int = 0, predict: bool = False,
                 version: Optional[str] = None, **kw: Any) -> None:
        if version is not None and str(version).split(".")[:1] != _version().split(".")[:1]:
            raise UnsupportedFormatError(f"tpde {_version()} cannot act as version {version}")
        if reference not in ("previous", "base"):
            raise InvalidArgumentError(f"reference must be 'previous' or 'base', got {reference!r}")
        if not isinstance(keyframe_interval, int) or keyframe_interval < 0:
            raise InvalidArgumentError(f"keyframe_interval must be an int >= 0, got {keyframe_interval!r}")
        super().__init__(threshold=threshold, adaptive=adaptive_threshold, compression_method=compression_method,
                         **kw)
        if adaptive_thresholds is not None:
            for k, v in adaptive_thresholds.items():
                if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                    raise InvalidArgumentError(f"adaptive_thresholds[{k!r}] must be a finite number >= 0, got {v!r}")
            self._thresholds = dict(adaptive_thresholds)
        if not self.keep_reference:
            raise InvalidArgumentError("TPDECheckpointCompressor needs keep_reference=True: it is a chain")
        self.reference = reference
        self.keyframe_interval = keyframe_interval
        self.predict = predict and reference == "previous"
        self._count = 0
        self._base: Optional[Dict[str, Any]] = None
        self._base_epoch: Optional[int] = None
        # Decoder side.
        self._dec_prev: Optional[Checkpoint] = None
        self._dec_prev2: Optional[Checkpoint] = None
        self._dec_base: Optional[Checkpoint] = None

    def compress(self, checkpoint: Checkpoint, epoch: Optional[int] = None, *,
                 metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress the next checkpoint of the chain; returns bytes (a
        CompressedCheckpoint, whose .metadata has the statistics)."""
        full = self._reference is None or (self.keyframe_interval and self._count % self.keyframe_interval == 0)
        self._count += 1
        if full:
            c = self._compress(checkpoint, None, None, epoch, metadata, "full")
            self._base, self._base_epoch = self._reference, epoch
            self._reference2 = None
            return c
        if self.reference == "base":
            assert self._base is not None
            return self._compress(checkpoint, self._base, None, epoch, metadata, "base", self._base_epoch)
        ref2 = self._reference2 if self.predict else None
        return self._compress(checkpoint, self._reference, ref2, epoch, metadata, "previous", self._reference_epoch)

    def decompress(self, data: Source, *, like: str = "torch", threads: int = 0,
                   max_output_bytes: Optional[int] = None) -> Checkpoint:
        """Decode the next checkpoint of a chain made by compress().
        max_output_bytes: as for tpde.load_checkpoint."""
        th = threads or self.threads
        limit = _memory.output_limit(max_output_bytes)
        with _open(data) as b:
            if b.meta.checkpoint_type == "full":
                sd = _decode_opened(b, None, None, like, th, limit)
                self._dec_base, self._dec_prev, self._dec_prev2 = sd, sd, None
                return sd
            if self._dec_prev is None:
                raise ReferenceMismatchError("this checkpoint is a delta and this decoder has not decoded the full "
                                             "checkpoint its chain starts with")
            if b.meta.reference == "base":
                sd = _decode_opened(b, self._dec_base, None, like, th, limit)
            else:
                sd = _decode_opened(b, self._dec_prev, self._dec_prev2, like, th, limit)
        self._dec_prev2, self._dec_prev = self._dec_prev, sd
        return sd
