"""The checkpoint store: a whole training run in one directory.

A store (docs/FORMAT.md §18) keeps every checkpoint of a run as
content-addressed objects: identical tensors and files are stored once, each
tensor of an older checkpoint is a delta against its neighbour (or a base),
and the newest checkpoint, the one a resume loads, is kept whole. Go owns
every byte of it; this module walks folders, reads torch files' pickles for
their dtypes (never unpickling), lays out state dicts, and turns records into
Python values.

    with tpde.Store("run.tpde") as store:
        store.add("out/checkpoint-500", step=500)
        state = store.load()                 # the newest, as torch tensors
        store.restore(500, "restored/")      # the original files, byte for byte
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import struct
import threading
from ctypes import byref, c_uint64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _native, _options, _structure, _tensors, _torchfile
from ._atomic import write_atomically
from ._native import call
from .errors import CorruptDataError, InvalidArgumentError, TPDEError, TPDEIOError

__all__ = ["Store", "open", "CheckpointInfo", "FileInfo", "VerifyReport", "Problem", "StoreLockedError"]

PathLike = Union[str, "os.PathLike[str]"]

#: The file name a state dict added from Python is stored under.
STATE_DICT_FILE = "state_dict.tpde"
_SD_FORMAT = "tpde-state-dict"
_ALIGN = 64


class StoreLockedError(TPDEIOError):
    """Another process is writing the store: one writer at a time."""


@dataclass(frozen=True)
class FileInfo:
    path: str
    size: int
    mode: int
    layout: str
    sha256: str
    tensors: int
    note: str = ""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the store holds of one checkpoint."""

    step: int
    tags: Tuple[str, ...]
    created: str
    files: Tuple[FileInfo, ...]
    raw_bytes: int
    #: Bytes of the objects this checkpoint's files are stored in (shared
    #: objects counted in full for every checkpoint that uses them).
    stored_bytes: int
    #: The largest |original - stored| of any element; 0.0 when every
    #: tensor decodes bit-exactly.
    max_error: float
    #: The most frames one of its tensors' decode walks.
    max_chain: int

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    @property
    def lossless(self) -> bool:
        return self.max_error == 0.0


@dataclass(frozen=True)
class Problem:
    step: int
    file: str
    region: str
    object: str
    message: str
    base: bool = False


@dataclass(frozen=True)
class VerifyReport:
    problems: Tuple[Problem, ...]
    cleaned: Optional[Dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def affected_steps(self) -> List[int]:
        return sorted({p.step for p in self.problems if not p.base})


def _result(handle: int) -> Any:
    needed = c_uint64(0)
    cap = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(cap)
        rc = call("tpde_store_result", handle, buf, cap, byref(needed), allow=(_native.E_BUFFER_TOO_SMALL,))
        if rc == _native.OK:
            return json.loads(buf.raw[: needed.value].decode("utf-8"))
        cap = int(needed.value)


def _json_arg(v: Any) -> Tuple[Optional[bytes], int]:
    if v is None:
        return None, 0
    b = json.dumps(v).encode("utf-8")
    return b, len(b)


def _lossy_rules(lossy: Any) -> Optional[List[Dict[str, Any]]]:
    """lossy: None (as stored; lossless for a new store), {} for lossless,
    or {pattern: absolute error bound}, e.g. {"*exp_avg*": 1e-6}."""
    if lossy is None:
        return None
    if not isinstance(lossy, Mapping):
        raise InvalidArgumentError("lossy must be a mapping of tensor-name pattern -> absolute error bound")
    rules = []
    for pattern, bound in lossy.items():
        if not isinstance(pattern, str) or not pattern:
            raise InvalidArgumentError(f"lossy pattern {pattern!r} must be a non-empty string")
        try:
            b = float(bound)
        except (TypeError, ValueError):
            raise InvalidArgumentError(f"lossy bound for {pattern!r} must be a number, not {bound!r}") from None
        rules.append({"pattern": pattern, "threshold": b})
    return rules


class _Reader:
    """One committed snapshot (a Go reader handle)."""

    def __init__(self, store_handle: int) -> None:
        h = c_uint64(0)
        call("tpde_store_reader_open", store_handle, byref(h))
        self.handle = h.value
        self.snapshot = _result(self.handle)
        self.records = {c["step"]: c for c in self.snapshot["checkpoints"]}

    def close(self) -> None:
        if self.handle:
            h, self.handle = self.handle, 0
            call("tpde_store_reader_close", h)

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def record(self, step: Optional[int]) -> Dict[str, Any]:
        if step is None:
            if not self.snapshot["checkpoints"]:
                raise InvalidArgumentError("the store holds no checkpoint")
            return self.snapshot["checkpoints"][-1]
        if step not in self.records:
            raise InvalidArgumentError(f"the store holds no checkpoint {step} (it holds {sorted(self.records)})")
        return self.records[step]

    def read_into(self, step: int, rel: str, offset: int, ptr: int, n: int) -> None:
        call("tpde_store_read_range", self.handle, step, rel.encode("utf-8"), offset, ptr, n)

    def read(self, step: int, rel: str, offset: int, n: int) -> bytes:
        buf = ctypes.create_string_buffer(max(n, 1))
        self.read_into(step, rel, offset, ctypes.addressof(buf), n)
        return buf.raw[:n]

    def chain_lengths(self) -> Dict[Tuple[int, str, str], int]:
        """Frames each region's decode walks, by (step, file, region)."""
        index: Dict[Tuple[Any, str, str], Dict[str, Any]] = {}
        for c in self.snapshot["checkpoints"]:
            for f in c["files"]:
                for r in f["regions"]:
                    index[(c["step"], f["path"], r["name"])] = r
        if self.snapshot.get("base"):
            for f in self.snapshot["base"]["files"]:
                for r in f["regions"]:
                    index[("base", f["path"], r["name"])] = r
        out = {}
        for key, r in index.items():
            if key[0] == "base":
                continue
            n, cur = 1, r
            while cur.get("ref"):
                ref = cur["ref"]
                cur = index[("base" if ref.get("base") else ref["step"], ref["file"], ref["region"])]
                n += 1
            out[key] = n  # type: ignore[index]
        return out


class Store:
    """A store of one training run's checkpoints, in the directory path.

    keyframe_interval (K, default 10): a random-access load decodes at most
    K frames per tensor; the newest checkpoint always decodes in one.
    reference: "previous" (default; each checkpoint against its neighbour)
    or "base" (each against base, e.g. the pretrained weights a run started
    from: a file, folder or state dict, stored once).
    lossy: {tensor-name pattern: absolute error bound} for tensors that may
    be stored lossy (float dtypes only), e.g. {"optimizer.pt:*": 1e-7}.
    Lossless is the default, and each checkpoint records its bound.
    These are fixed when the store is created; None means "as stored".
    compression_method: how delta frames code the positions of changed
    elements ("auto", "dense" or "elias_delta_zstd", as in
    TemporalPositionDeltaEncoder); a choice of this writer, not of the
    store: any reader decodes every kind.

    Reading needs no lock. The first add/remove takes the store's writer
    lock, held until close(): one writer at a time, and a killed writer
    never blocks the next.
    """

    def __init__(self, path: PathLike, keyframe_interval: Optional[int] = None, reference: Optional[str] = None,
                 base: Any = None, lossy: Optional[Mapping[str, float]] = None, *, threads: int = 0,
                 compression_method: str = "auto") -> None:
        self.path = os.fspath(path)
        cfg: Dict[str, Any] = {}
        positions = _options.code(_options.POSITION_CODINGS, compression_method, "compression_method")
        if positions:
            cfg["positions"] = positions
        if keyframe_interval is not None:
            if isinstance(keyframe_interval, bool) or not isinstance(keyframe_interval, int):
                raise InvalidArgumentError(f"keyframe_interval must be an int, not {keyframe_interval!r}")
            cfg["keyframe_interval"] = keyframe_interval
        if reference is not None:
            if reference not in ("previous", "base"):
                raise InvalidArgumentError(f"reference must be 'previous' or 'base', not {reference!r}")
            cfg["reference"] = reference
        rules = _lossy_rules(lossy)
        if rules is not None:
            cfg["lossy"] = rules
        if base is not None and cfg.get("reference", "base") != "base":
            raise InvalidArgumentError("base= is used with reference='base'")
        if base is not None:
            cfg["reference"] = "base"
        self._config = cfg
        self._threads = int(threads)
        self._write: Optional[int] = None
        self._read: Optional[int] = None
        self._lock = threading.RLock()
        self._closed = False
        if os.path.exists(os.path.join(self.path, "tpde-store.json")):
            self._read = self._open(write=False)
        if base is not None:
            try:
                self._add_base(base)
            except BaseException:
                self.close()  # the caller gets no Store to close: release the lock now
                raise

    # -- handles -------------------------------------------------------

    def _open(self, write: bool) -> int:
        h = c_uint64(0)
        js, n = _json_arg(self._config or None)
        try:
            call("tpde_store_open", self.path.encode("utf-8"), int(write), js, n, self._threads, byref(h))
        except TPDEIOError as e:
            if e.errno == errno.EWOULDBLOCK:  # the writer lock (flock), nothing else returns it
                raise StoreLockedError(e.errno, str(e)) from None
            raise
        return h.value

    def _writer(self) -> int:
        if self._closed:
            raise InvalidArgumentError("the store is closed")
        if self._write is None:
            self._write = self._open(write=True)
        return self._write

    def _reader(self) -> _Reader:
        if self._closed:
            raise InvalidArgumentError("the store is closed")
        h = self._write or self._read
        if h is None:
            if not os.path.exists(os.path.join(self.path, "tpde-store.json")):
                raise InvalidArgumentError(f"{self.path} is not a tpde store (nothing has been added yet)")
            self._read = h = self._open(write=False)
        return _Reader(h)

    def close(self) -> None:
        """Release the store (and its writer lock)."""
        with self._lock:
            self._closed = True
            for attr in ("_write", "_read"):
                h = getattr(self, attr)
                if h:
                    setattr(self, attr, None)
                    call("tpde_store_close", h)

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not getattr(self, "_closed", True):
                self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; the kernel drops the lock anyway
            pass

    @property
    def config(self) -> Dict[str, Any]:
        """keyframe_interval, reference and lossy rules of the store."""
        with self._reader() as rd:
            return dict(rd.snapshot["manifest"]["config"]) if rd.snapshot["manifest"] else {}

    # -- adding --------------------------------------------------------

    def add(self, path_or_state_dict: Any, step: Optional[int] = None, tags: Optional[Sequence[str]] = None,
            *, progress: Optional[Callable[[int, int], None]] = None) -> CheckpointInfo:
        """Add a checkpoint: a file, a folder (every file in it, with its
        relative path and mode) or a state dict. step defaults to the newest
        step + 1; steps only grow. progress(done_bytes, total_bytes) is
        called as files are coded."""
        if step is not None and (isinstance(step, bool) or not isinstance(step, int)):
            raise InvalidArgumentError(f"step must be an int, not {step!r}")
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
            raise InvalidArgumentError("tags must be a list of strings")
        with self._lock:
            h = self._writer()
            tj, tn = _json_arg(list(tags) if tags is not None else None)
            call("tpde_store_begin", h, 0 if step is None else step, int(step is not None), tj, tn, 0)
            return self._fill_and_commit(h, path_or_state_dict, progress)

    def _add_base(self, base: Any) -> None:
        with self._lock:
            h = self._writer()
            call("tpde_store_begin", h, 0, 1, None, 0, 1)
            self._fill_and_commit(h, base, None)

    def _fill_and_commit(self, h: int, what: Any, progress: Optional[Callable[[int, int], None]]) -> CheckpointInfo:
        try:
            if isinstance(what, Mapping):
                self._add_state_dict(h, what)
            elif isinstance(what, (str, os.PathLike)):
                files = list(_walk(os.fspath(what)))
                total = sum(os.stat(p).st_size for _, p in files)
                done = 0
                for rel, p in files:
                    self._add_file(h, rel, p)
                    done += os.stat(p).st_size
                    if progress is not None:
                        progress(done, total)
            else:
                raise InvalidArgumentError(
                    f"add() takes a path or a state dict, not {type(what).__module__}.{type(what).__qualname__}")
            call("tpde_store_commit", h)
        except OSError as e:
            call("tpde_store_abort", h)
            if isinstance(e, TPDEError):
                raise
            # A file that vanished or became unreadable while being added
            # (a framework's rotation deleting a folder under us, say).
            where = os.fspath(what) if isinstance(what, (str, os.PathLike)) else "a state dict"
            raise TPDEIOError(e.errno, f"{e.filename}: {e.strerror} (while adding {where})") from e
        except BaseException:
            call("tpde_store_abort", h)
            raise
        rec = _result(h)
        with self._reader() as rd:
            if rec.get("source"):  # the base
                return _info(rec, rd.chain_lengths())
            return _info(rd.record(rec["step"]), rd.chain_lengths())

    def _add_file(self, h: int, rel: str, p: str) -> None:
        hints, note = _torchfile.hints(p)
        hj, hn = _json_arg(hints)
        call("tpde_store_add_file", h, rel.encode("utf-8"), os.fsencode(p), hj, hn,
             note.encode("utf-8") if note else None, None, None)

    def _add_state_dict(self, h: int, sd: Mapping[str, Any]) -> None:
        flat = _structure.Flat(sd, "state dict")
        entries, srcs = [], []
        offset = 0
        for name, t in flat.tensors.items():
            src = _tensors.source(t)
            offset = -(-offset // _ALIGN) * _ALIGN
            entries.append({"name": name, "dtype": _tensors.DTYPES[src.code], "shape": list(src.shape),
                            "offset": offset, "nbytes": src.nbytes})
            srcs.append(src)
            offset += src.nbytes
        header = {"format": _SD_FORMAT, "version": 1, "skeleton": flat.skeleton, "aliases": flat.aliases,
                  "state_dict_metadata": flat.state_dict_metadata, "tensors": entries}
        hjs = json.dumps(header, separators=(",", ":")).encode("utf-8")
        pad = (-(8 + len(hjs))) % _ALIGN
        head = struct.pack("<Q", len(hjs) + pad) + hjs + b" " * pad
        base = len(head)
        arr = (_native.StoreTensor * max(len(srcs), 1))()
        keep = []
        for i, (e, src) in enumerate(zip(entries, srcs)):
            shape = (c_uint64 * max(len(src.shape), 1))(*src.shape)
            keep.append(shape)
            # The header's offsets count from the end of the header.
            arr[i] = _native.StoreTensor(e["name"].encode("utf-8"), src.code, len(src.shape),
                                         ctypes.addressof(shape), base + e["offset"], src.ptr, src.nbytes)
        call("tpde_store_add_state_dict", h, STATE_DICT_FILE.encode("utf-8"), head, len(head), arr, len(srcs))
        del keep, srcs

    # -- reading -------------------------------------------------------

    def steps(self) -> List[int]:
        """The steps held, oldest first."""
        with self._reader() as rd:
            return [c["step"] for c in rd.snapshot["checkpoints"]]

    def info(self, step: Optional[int] = None) -> CheckpointInfo:
        """What the store holds of checkpoint step (the newest when None)."""
        with self._reader() as rd:
            return _info(rd.record(step), rd.chain_lengths())

    def load(self, step: Optional[int] = None, map_location: Any = None, *, file: Optional[str] = None,
             unpickle: bool = False) -> Dict[str, Any]:
        """A checkpoint as a state dict of torch tensors (the newest when
        step is None): a state dict added from Python as it was; a
        .safetensors file's tensors; a folder as {relative path: state
        dict} of its tensor files (file= picks one). torch files (.pt,
        .bin, .ckpt) are pickles: they are loaded, with
        torch.load(weights_only=True), only when unpickle=True."""
        import torch  # noqa: F401 - the tensors returned are torch tensors

        with self._reader() as rd:
            rec = rd.record(step)
            files = list(rec["files"])
            if file is not None:
                files = [f for f in files if f["path"] == file]
                if not files:
                    raise InvalidArgumentError(f"checkpoint {rec['step']} has no file {file!r}")
            tensor_files = [f for f in files if _loadable(f)]
            pickles = [f["path"] for f in tensor_files if _is_pickle(f)]
            if pickles and not unpickle:
                raise InvalidArgumentError(
                    f"checkpoint {rec['step']}'s {', '.join(pickles)} {'is a' if len(pickles) == 1 else 'are'} torch "
                    "pickle(s); pass unpickle=True to load with torch.load(weights_only=True), or file= to pick "
                    "another file")
            out = {f["path"]: _load_file(rd, rec["step"], f, map_location) for f in tensor_files}
        if len(out) == 1 and (file is not None or len(rec["files"]) == 1
                              or any(f["layout"] == "state-dict" for f in tensor_files)):
            return next(iter(out.values()))
        if not out:
            raise InvalidArgumentError(f"checkpoint {rec['step']} holds no tensor file")
        return out

    def restore(self, step: Optional[int], dest: PathLike) -> Path:
        """Write checkpoint step's files (the newest when None) under dest,
        each byte-identical to what was added, with its mode. A state dict
        added from Python is written as dest/state_dict.pt (torch.save)."""
        with self._reader() as rd:
            rec = rd.record(step)
            d = os.fspath(dest)
            if [f["layout"] for f in rec["files"]] == ["state-dict"]:
                import torch

                sd = _load_file(rd, rec["step"], rec["files"][0], None)
                os.makedirs(d, exist_ok=True)
                _save_atomically(torch, sd, os.path.join(d, "state_dict.pt"))
                return Path(d)
            call("tpde_store_restore", rd.handle, rec["step"], None, os.fsencode(d))
        return Path(d)

    def stats(self) -> Dict[str, Any]:
        """Sizes per checkpoint, ratio per tensor group, and the fraction of
        elements that changed per layer between checkpoints."""
        with self._reader() as rd:
            return _stats(rd.snapshot, rd.chain_lengths(), self.path)

    # -- maintenance ---------------------------------------------------

    def remove(self, step: int) -> None:
        """Drop checkpoint step; what was coded against it is re-coded, so
        every other checkpoint still loads exactly as before."""
        with self._lock:
            call("tpde_store_remove", self._writer(), step)

    def verify(self, deep: bool = True, *, repair: bool = False) -> VerifyReport:
        """Check every object and every chain (deep: decode everything and
        compare with the hashes recorded at add). repair first removes what
        dead writers left behind."""
        with self._lock:
            h = self._writer() if repair else (self._write or self._read)
            if h is None:
                self._reader().close()
                h = self._read
            call("tpde_store_verify", h, int(deep), int(repair))
            res = _result(h)
        probs = tuple(Problem(step=p.get("step", 0), file=p.get("file", ""), region=p.get("region", ""),
                              object=p.get("object", ""), message=p["message"], base=p.get("base", False))
                      for p in res["problems"])
        return VerifyReport(probs, res.get("cleaned"))


def open(path: PathLike, **kwargs: Any) -> Store:  # noqa: A001 - the documented shortcut, tpde.open
    """Open (or create, on first add) the store at path: tpde.Store(path, ...)."""
    return Store(path, **kwargs)


# --- helpers ------------------------------------------------------------

def _walk(path: str) -> Iterator[Tuple[str, str]]:
    """(relative path, real path) of each file to add: the file itself, or
    every regular file under a folder, sorted, symlinks to files followed
    (their content is stored), symlinked folders not entered."""
    if os.path.isdir(path):
        found = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            for name in files:
                p = os.path.join(root, name)
                if not os.path.isfile(p):
                    continue
                rel = os.path.relpath(p, path).replace(os.sep, "/")
                found.append((rel, p))
        found.sort()
        if not found:
            raise InvalidArgumentError(f"{path} holds no file")
        yield from found
    elif os.path.exists(path):
        yield os.path.basename(path), path
    else:
        raise TPDEIOError(2, f"{path}: no such file or folder")


def _save_atomically(torch: Any, sd: Any, dst: str) -> None:
    """torch.save to a temporary file beside dst, fsync, then rename over
    dst: never through a symlink planted at dst, never a torn file."""
    if os.path.islink(dst):
        raise TPDEIOError(errno.ELOOP, f"{dst}: is a symlink; tpde restores only into real folders")
    if os.path.exists(dst) and not os.path.isfile(dst):
        raise TPDEIOError(errno.EEXIST, f"{dst}: exists and is not a regular file")
    write_atomically(dst, lambda fh: torch.save(sd, fh))


def _loadable(f: Dict[str, Any]) -> bool:
    return f["layout"] in ("safetensors", "state-dict", "torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and _is_pickle(f) and bool(f.get("note")))


def _is_pickle(f: Dict[str, Any]) -> bool:
    note = f.get("note", "")
    return f["layout"] in ("torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and (note.startswith("torch file") or note.startswith("legacy torch file")))


def _header(rd: _Reader, step: int, rel: str, size: int, what: str, limit: int = 100_000_000) -> Tuple[Any, int]:
    if size < 8:
        raise CorruptDataError(f"{rel}: {size} bytes, too short for a {what} header")
    (n,) = struct.unpack("<Q", rd.read(step, rel, 0, 8))
    if n > min(limit, size - 8):
        raise CorruptDataError(f"{rel}: {what} header of {n} bytes")
    try:
        return json.loads(rd.read(step, rel, 8, n).decode("utf-8")), 8 + n
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptDataError(f"{rel}: {what} header is not JSON: {e}") from None


def _load_file(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any) -> Any:
    import torch

    rel, size = f["path"], f["size"]
    if _is_pickle(f):
        import io

        data = bytearray(size)  # decoded straight into it: no copy before torch.load's own
        if size:
            rd.read_into(step, rel, 0, ctypes.addressof((ctypes.c_char * size).from_buffer(data)), size)
        with _numpy_globals(torch):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if f["layout"] == "safetensors":
        hdr, start = _header(rd, step, rel, size, "safetensors")
        out = {}
        for name, e in hdr.items():
            if name == "__metadata__":
                continue
            b, end = e["data_offsets"]
            out[name] = _read_tensor(rd, step, rel, start + b, end - b, e["dtype"], e["shape"], map_location)
        return out
    hdr, start = _header(rd, step, rel, size, "state dict")
    if not isinstance(hdr, dict) or hdr.get("format") != _SD_FORMAT or hdr.get("version") != 1:
        raise CorruptDataError(f"{rel}: not a tpde state dict (format {hdr.get('format')!r})")
    tensors: Dict[str, Any] = {}
    for e in hdr["tensors"]:
        tensors[e["name"]] = _read_tensor(rd, step, rel, start + e["offset"], e["nbytes"], e["dtype"], e["shape"],
                                          map_location)
    for alias, name in (hdr.get("aliases") or {}).items():
        tensors[alias] = tensors[name]
    if hdr["skeleton"] is None:
        import collections

        od = collections.OrderedDict((e["name"], tensors[e["name"]]) for e in hdr["tensors"])
        for alias in hdr.get("aliases") or {}:
            od[alias] = tensors[alias]
        return _structure.with_state_dict_metadata(od, hdr.get("state_dict_metadata"))
    return _structure.rebuild(hdr["skeleton"], tensors)


def _numpy_globals(torch: Any) -> Any:
    """What torch.load(weights_only=True) may build besides tensors: numpy
    arrays and dtypes, as the Hugging Face Trainer allows for its
    rng_state.pth (numpy's RNG state). No other global is allowed."""
    try:
        import numpy as np
    except ImportError:
        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "bool", "uint8")]
    return torch.serialization.safe_globals(allowed)


def _read_tensor(rd: _Reader, step: int, rel: str, offset: int, nbytes: int, dtype: str, shape: List[int],
                 map_location: Any) -> Any:
    code = _tensors.dtype_code(dtype)
    n = 1
    for d in shape:
        n *= d
    if n * _tensors.WIDTHS[code] != nbytes:
        raise CorruptDataError(f"{rel}: a {dtype} tensor of shape {shape} in {nbytes} bytes")
    t = _tensors.empty(code, tuple(shape), "torch")
    if nbytes:
        ptr, cap = _tensors.address(t)
        rd.read_into(step, rel, offset, ptr, nbytes)
    if map_location is not None:
        t = t.to(map_location)
    return t


def _info(rec: Dict[str, Any], chains: Dict[Tuple[int, str, str], int]) -> CheckpointInfo:
    files, stored, max_err, max_chain = [], 0, 0.0, 1
    for f in rec["files"]:
        files.append(FileInfo(path=f["path"], size=f["size"], mode=f["mode"], layout=f["layout"],
                              sha256=f["sha256"], tensors=len(f["regions"]), note=f.get("note", "")))
        stored += f["skeleton"]["stored"]
        for r in f["regions"]:
            stored += r["stored"]
            max_err = max(max_err, r["max_error"])
            max_chain = max(max_chain, chains.get((rec["step"], f["path"], r["name"]), 1))
    return CheckpointInfo(step=rec["step"], tags=tuple(rec["tags"]), created=rec["created"], files=tuple(files),
                          raw_bytes=sum(f.size for f in files), stored_bytes=stored, max_error=max_err,
                          max_chain=max_chain)


_LAYER = re.compile(r"(?<=[._])\d+(?=[._]|$)")


def _group(file: str, region: str) -> str:
    """A tensor's group for stats: its name with layer numbers as N."""
    return f"{file}:{_LAYER.sub('N', region)}"


def _layer(region: str) -> str:
    m = re.search(r"^(.*?[._]\d+)(?=[._]|$)", region)
    return m.group(1) if m else region.split(".")[0]


def _disk_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _stats(snap: Dict[str, Any], chains: Dict[Tuple[int, str, str], int], path: str) -> Dict[str, Any]:
    seen: set = set()
    rows = []
    groups: Dict[str, Dict[str, float]] = {}
    changes: Dict[int, Dict[str, List[float]]] = {}
    for c in snap["checkpoints"]:
        new, raw = 0, 0
        for f in c["files"]:
            raw += f["size"]
            objs = [(f["skeleton"]["object"], f["skeleton"]["stored"])]
            for r in f["regions"]:
                objs.append((r["object"], r["stored"]))
                g = groups.setdefault(_group(f["path"], r["name"]), {"raw_bytes": 0, "stored_bytes": 0})
                g["raw_bytes"] += r["size"]
                g["stored_bytes"] += r["stored"]
                if r.get("ref"):
                    changes.setdefault(c["step"], {}).setdefault(_layer(r["name"]), []).append(r["changed"])
            for o, n in objs:
                if o not in seen:
                    seen.add(o)
                    new += n
        rows.append({"step": c["step"], "raw_bytes": raw, "new_bytes": new, "files": len(c["files"]),
                     "max_chain": max([chains.get((c["step"], f["path"], r["name"]), 1)
                                       for f in c["files"] for r in f["regions"]] or [1])})
    raw_total = sum(r["raw_bytes"] for r in rows)
    stored = sum(r["new_bytes"] for r in rows)
    disk = _disk_bytes(path)
    return {
        "checkpoints": rows,
        "raw_bytes": raw_total,
        "stored_bytes": stored,
        "disk_bytes": disk,
        "ratio": raw_total / disk if disk else None,
        "groups": {k: {**v, "ratio": (v["raw_bytes"] / v["stored_bytes"]) if v["stored_bytes"] else None}
                   for k, v in sorted(groups.items())},
        "changed": {str(step): {layer: sum(v) / len(v) for layer, v in sorted(layers.items())}
                    for step, layers in sorted(changes.items())},
    }
