"""Reading compressed checkpoints: a bundle opened and its metadata checked
as a tpde checkpoint (docs/FORMAT.md §9.6), described (checkpoint_info)
or decoded back into a state dict (load_checkpoint), with each delta's
reference looked up by name in the checkpoint the caller passes.

The encoders (checkpoint.py) write what this module reads; the library
calls go through _bundle.
"""

from __future__ import annotations

import collections
import mmap
import os
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _bundle, _memory, _structure, _tensors
from ._buffers import readable
from ._bundle import Entry
from ._options import threads_arg
from ._tensors import DTYPES
from .codec import _FILE_MAGIC
from .errors import (
    CorruptDataError,
    InvalidArgumentError,
    ReferenceMismatchError,
    TPDEIOError,
    UnsupportedFormatError,
)

__all__ = ["FORMAT_VERSION", "Source", "Checkpoint", "Meta", "Opened", "open_checkpoint", "checkpoint_info",
           "decode", "decode_opened", "load_checkpoint"]

#: Version of the checkpoint bundle format written (docs/FORMAT.md §9).
FORMAT_VERSION = "1.0"

Checkpoint = Any  # a state dict (see checkpoint.py)
Source = Union[bytes, bytearray, memoryview, str, "os.PathLike[str]"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The JSON types of the "checkpoint" member's fields (docs/FORMAT.md §9.6),
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
    # How the tensors were coded, known only once they were (the writer
    # takes the metadata last).
    "sparsity": ("a number",),
    "max_error": ("a number",),
}
_REFERENCES = {"full": (None,), "delta": ("previous", "base")}


def _corrupt_meta(problem: str) -> CorruptDataError:
    return CorruptDataError(f"checkpoint metadata: {problem}")


def _member(obj: Dict[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise _corrupt_meta(f"{where} has no {key!r} member")
    return obj[key]


class Meta:
    """A bundle's metadata as a tpde checkpoint (docs/FORMAT.md §9.6),
    checked once, when the bundle is opened, before anything uses it: every
    reader then sees the same verdict, and no later step meets a wrong type.

    A bundle that is not a tpde checkpoint ("tpde" absent, or another
    "format") is unsupported; one that says it is but breaks the schema is
    corrupt, with the field (and tensor) named."""

    def __init__(self, meta: Any, tensors: List[Entry]) -> None:
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
                if t.kind != "keyframe":
                    raise _corrupt_meta(f"a full checkpoint (decodable alone) whose tensor {t.name!r} is a "
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
        stored = {t.name: None for t in tensors} if aliases or self.skeleton is not None else {}
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


class Opened:
    """A bundle in memory, validated, with its index and checked metadata.
    Use as a context manager: the library reads the bytes in place until
    close()."""

    def __init__(self, data: Any, head: Optional[bytes] = None) -> None:
        """head: the first 4 bytes, when the caller read them already (from
        a file, rather than from its mapping, which another process could
        truncate under Python: a SIGBUS there could not be caught)."""
        self._ctx: Any = None
        self.reader: Optional[_bundle.Reader] = None
        if head is None:
            try:
                head = bytes(memoryview(data)[:4])
            except TypeError:
                raise TypeError(f"expected bytes, bytearray, memoryview or a path, not {type(data).__name__}") \
                    from None
        if head == _FILE_MAGIC:
            raise InvalidArgumentError("this is a compressed file (tpde.compress_file), not a checkpoint: restore it "
                                       "with tpde.decompress_file")
        self._ctx = readable(data)
        src, n = self._ctx.__enter__()
        try:
            self.reader = _bundle.Reader(src, n)
            self.tensors: List[Entry] = self.reader.entries
            self.meta = Meta(self.reader.metadata, self.tensors)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        # The library's view of the bytes goes first, then the bytes.
        if self.reader is not None:
            r, self.reader = self.reader, None
            r.close()
        if self._ctx is not None:
            ctx, self._ctx = self._ctx, None
            ctx.__exit__(None, None, None)

    def __enter__(self) -> "Opened":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(data: Source) -> Opened:
    """Open a compressed checkpoint: bytes-like, or a path (memory-mapped)."""
    if isinstance(data, (str, os.PathLike)):
        return _OpenedFile(data)
    return Opened(data)


class _OpenedFile(Opened):
    """A file, memory-mapped and read in place. The map is private and
    writable (copy-on-write, never written) because ctypes takes the
    address only of writable buffers."""

    def __init__(self, path: Any) -> None:
        p = os.fspath(path)
        try:
            with open(p, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = os.pread(f.fileno(), 4, 0)
                m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE) \
                    if size else None
        except OSError as e:
            raise TPDEIOError(e.errno, f"{p}: {e.strerror or e}") from e
        self._keepmap = m
        super().__init__(memoryview(m) if m is not None else b"", head)

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
    kind (keyframe or delta), sizes and lossy bound/max error. ratio is
    original_size over the bundle's size, as compression reported it."""
    with open_checkpoint(data) as b:
        assert b.reader is not None
        info = dict(b.meta.checkpoint)
        info["user"] = b.meta.user
        info["compressed_size"] = size = b.reader.size
        # Computed here rather than stored: the size depends on the
        # metadata that would hold it.
        original = info.get("original_size")
        if original is not None:
            info["ratio"] = original / size
        else:
            info.pop("ratio", None)
        info["format_version"] = f"1.{b.reader.version_minor}"
        # Built one entry at a time, each entry dropped as its dict is made:
        # a bundle may hold a million of them.
        entries, b.tensors = b.tensors, []
        entries.reverse()
        tensors = []
        while entries:
            t = entries.pop()
            tensors.append({"name": t.name, "kind": t.kind, "dtype": DTYPES[t.dtype], "shape": t.shape,
                            "raw_size": t.raw_size, "identical": t.identical, "lossy": t.lossy, "bound": t.bound,
                            "max_error": t.max_error, "changed_elems": t.changed_elems,
                            "frame_size": t.frame_size})
        info["tensors"] = tensors
        return info


def decode(data: Source, previous: Optional[Checkpoint], previous2: Optional[Checkpoint], like: str,
           threads: int, max_output_bytes: Optional[int]) -> Checkpoint:
    """Open data and decode it (see load_checkpoint)."""
    limit = _memory.output_limit(max_output_bytes)
    with open_checkpoint(data) as b:
        return decode_opened(b, previous, previous2, like, threads, limit)


def decode_opened(b: Opened, previous: Optional[Checkpoint], previous2: Optional[Checkpoint], like: str,
                  threads: int, limit: int) -> Checkpoint:
    """Decode an opened checkpoint against previous (and previous2, for the
    tensors that need it), allocating at most limit bytes."""
    if like not in ("torch", "numpy"):
        raise InvalidArgumentError(f"like must be 'torch' or 'numpy', got {like!r}")
    th = threads_arg(threads)
    # Each raw size is the library's reading of a checksummed frame header,
    # but a forged bundle can claim any size: the total is checked before
    # the first tensor is allocated.
    _memory.check_output(sum(t.raw_size for t in b.tensors), limit,
                         f"this checkpoint ({len(b.tensors):,} tensors)")
    meta = b.meta
    prev = _structure.Flat(previous, "previous") if previous is not None else None
    prev2 = _structure.Flat(previous2, "previous2") if previous2 is not None else None
    refs = []
    for t in b.tensors:
        ref = ref2 = None
        if t.kind == "delta":
            ref = _reference(prev, t, "previous", meta)
            if t.needs_ref2:
                ref2 = _reference(prev2, t, "previous2", meta)
        refs.append((ref, ref2))
    # An OrderedDict, as nn.Module.state_dict() returns, so that
    # _metadata can be set on it.
    out: "collections.OrderedDict[str, Any]" = collections.OrderedDict()
    reqs = []
    for k, (t, (ref, ref2)) in enumerate(zip(b.tensors, refs)):
        dst = _tensors.empty(t.dtype, t.shape, like)
        out[t.name] = dst
        reqs.append((k, dst, ref, ref2))
    try:
        assert b.reader is not None
        _bundle.decode(b.reader, reqs, threads=th)
    except ReferenceMismatchError as e:
        raise ReferenceMismatchError(f"{e} ({_reference_hint(meta)})") from None
    for alias, name in meta.aliases.items():
        out[alias] = out[name]
    if meta.skeleton is None:
        return _structure.with_state_dict_metadata(out, meta.state_dict_metadata)
    return _structure.rebuild(meta.skeleton, out)


def _reference_hint(meta: Meta) -> str:
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


def _reference(prev: Optional[_structure.Flat], t: Entry, what: str, meta: Meta) -> Any:
    name = t.name
    if prev is None:
        raise ReferenceMismatchError(f"tensor {name!r} is a delta frame and no {what} checkpoint was given "
                                     f"({_reference_hint(meta)})")
    r = prev.get(name)
    if r is None:
        raise ReferenceMismatchError(f"tensor {name!r} is a delta against the {what} checkpoint's {name!r}, "
                                     f"which the {what} checkpoint given lacks ({_reference_hint(meta)})")
    code, shape = _tensors.layout(r)
    if code != t.dtype or tuple(shape) != t.shape:
        raise ReferenceMismatchError(
            f"tensor {name!r}: the {what} checkpoint's tensor is {DTYPES[code]}{list(shape)}, the delta was made "
            f"against {DTYPES[t.dtype]}{list(t.shape)} ({_reference_hint(meta)})")
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
    return decode(path, previous, previous2, like, threads, max_output_bytes)
