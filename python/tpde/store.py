"""The checkpoint store: a whole training run in one directory.

A store (docs/FORMAT.md §11) keeps every checkpoint of a run as
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

import builtins
import contextlib
import ctypes
import errno
import json
import math
import numbers
import os
import pickle
import re
import shutil
import stat
import struct
import tempfile
import threading
from ctypes import byref, c_uint64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import _memory, _native, _options, _structure, _tensors, _torchfile
from ._atomic import fsync_dir
from ._interrupt import run_cancellable
from ._native import call
from ._text import has_control, printable
from .errors import (CancelledError, CorruptDataError, InvalidArgumentError, TPDEError, TPDEIOError,
                     UnsupportedFormatError)

__all__ = ["Store", "open", "CheckpointInfo", "FileInfo", "VerifyReport", "Problem", "StoreLockedError"]

PathLike = Union[str, "os.PathLike[str]"]

#: The file name a state dict added from Python is stored under.
STATE_DICT_FILE = "state_dict.tpde"
_SD_FORMAT = "tpde-state-dict"
_ALIGN = 64
# tpde_store_open's write argument for a participant (TPDE_STORE_STAGE).
_STAGE = 2


class StoreLockedError(TPDEIOError):
    """Another process is writing the store: one writer at a time."""


#: errnos of the OS refusing this user access: not damage of the store.
_DENIED = (errno.EACCES, errno.EPERM)

#: The largest step a store holds: steps are signed 64-bit in the format.
MAX_STEP = (1 << 63) - 1
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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
    #: Why (part of) this checkpoint cannot be read; "" when it can. Only
    #: Store.list() returns damaged checkpoints; info() raises for them.
    problem: str = ""

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    @property
    def lossless(self) -> bool:
        return self.max_error == 0.0

    @property
    def damaged(self) -> bool:
        return bool(self.problem)


@dataclass(frozen=True)
class Problem:
    step: int
    file: str
    region: str
    object: str
    message: str
    base: bool = False
    #: Nothing is lost: one copy of a record or of the manifest is damaged
    #: and the other serves. verify(repair=True) writes it anew.
    degraded: bool = False
    #: Not damage, and not checked: decoding it would exceed the decode
    #: limit (max_output_bytes / TPDE_MAX_OUTPUT); a higher limit checks it.
    unchecked: bool = False


@dataclass(frozen=True)
class VerifyReport:
    problems: Tuple[Problem, ...]
    cleaned: Optional[Dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def affected_steps(self) -> List[int]:
        """The checkpoints that cannot be read whole."""
        return sorted({p.step for p in self.problems if not p.base and not p.degraded and not p.unchecked})

    @property
    def unchecked_steps(self) -> List[int]:
        """The checkpoints not checked whole: over the decode limit."""
        return sorted({p.step for p in self.problems if not p.base and p.unchecked})

    @property
    def degraded(self) -> List[Problem]:
        """Damaged copies whose twin still serves (nothing lost)."""
        return [p for p in self.problems if p.degraded]


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
    b = json.dumps(v, allow_nan=False).encode("utf-8")
    return b, len(b)


def _path_arg(p: Any, what: str) -> str:
    """A path argument, checked before it reaches C: a str or os.PathLike,
    not empty, without NUL (a C string would end there, and "a<NUL>/b" be "a").
    Bytes and names that are not UTF-8 travel as the OS's bytes
    (os.fsencode)."""
    try:
        s = os.fspath(p)
    except TypeError:
        raise InvalidArgumentError(f"{what} must be a path, not {type(p).__name__}") from None
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if not s:
        raise InvalidArgumentError(f"{what} is empty")
    if "\0" in s:
        raise InvalidArgumentError(f"{what} {printable(s)!r} holds a NUL character")
    return s


def _utf8(name: str, what: str) -> bytes:
    """name as UTF-8: the store names files and tensors in UTF-8 only
    (docs/FORMAT.md §11.4), so a name that has none (bytes the OS gave that
    are not UTF-8, a lone surrogate) is refused, naming it."""
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} {printable(repr(name))} is not UTF-8; a store holds UTF-8 names") from None


MAIN_RUN = "main"
_RUN_NAME = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def _run_arg(run: Any) -> str:
    """A run name: 1 to 128 letters, digits, '-', '_' or '.'."""
    if not isinstance(run, str) or not _RUN_NAME.match(run) or run in (".", ".."):
        raise InvalidArgumentError(f"run must be a name of 1 to 128 letters, digits, '-', '_' or '.', not {run!r}")
    return run


def _in_run(run: str) -> str:
    return "" if run == MAIN_RUN else f" in run {run!r}"


def _parent_arg(parent: Any) -> Optional[Dict[str, Any]]:
    """parent= of add: "base", (run, step) or {"run", "step"}."""
    if parent is None:
        return None
    if parent == "base":
        return {"base": True}
    if isinstance(parent, Mapping) and set(parent) == {"run", "step"}:
        run, step = parent["run"], parent["step"]
    elif isinstance(parent, tuple) and len(parent) == 2:
        run, step = parent
    else:
        raise InvalidArgumentError(f"parent must be 'base', (run, step) or {{'run': ..., 'step': ...}}, not {parent!r}")
    return {"run": _run_arg(run), "step": check_step(step, "parent step", latest=False)}


def check_step(step: Any, what: str = "step", *, latest: bool = True) -> Optional[int]:
    """A step as the store takes it: an int in [0, 2**63), or "latest" (and
    None) for the newest where latest is allowed. Checked here, before any
    C call: a C int64 would silently wrap 2**64 + 10 to 10."""
    if latest and (step is None or step == "latest"):
        return None
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise InvalidArgumentError(f"{what} must be an int" + (" or 'latest'" if latest else "") + f", not {step!r}")
    step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise InvalidArgumentError(f"{what} {step} is out of range: steps are 0 to 2**63 - 1")
    return step


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
        except (TypeError, ValueError, OverflowError):
            raise InvalidArgumentError(f"lossy bound for {pattern!r} must be a number, not {bound!r}") from None
        if not (math.isfinite(b) and b > 0):
            raise InvalidArgumentError(f"lossy bound for {pattern!r} must be a finite number > 0, not {bound!r}")
        rules.append({"pattern": pattern, "threshold": b})
    return rules


def _renamed(e: TPDEError, prefix: str) -> TPDEError:
    """e with prefix (the store's path) in front of its message, same class
    and errno."""
    if isinstance(e, OSError) and e.errno is not None:
        new: TPDEError = type(e)(e.errno, f"{prefix}: {e.strerror}")
    else:
        new = type(e)(f"{prefix}: {e}")
    new.__cause__ = e.__cause__
    return new


@contextlib.contextmanager
def _naming(path: str) -> Iterator[None]:
    """Errors raised inside name the store they are about."""
    try:
        yield
    except TPDEError as e:
        if path in str(e):
            raise
        raise _renamed(e, f"store {path}") from e


class _Reader:
    """One committed snapshot (a Go reader handle). Records are fetched one
    at a time, when first asked for: opening a reader costs the same
    whatever the store's history."""

    def __init__(self, store_handle: int) -> None:
        h = c_uint64(0)
        call("tpde_store_reader_open", store_handle, byref(h))
        self.handle = h.value
        #: {"generation", "config", "base": bool, "count"}: what the
        #: manifest says, none of it growing with the history.
        self.head = _result(self.handle)
        self._steps: Optional[List[int]] = None
        self._held: Optional[set] = None  # the steps as a set, made when first asked about one
        self._entries: Dict[Any, Dict[str, Any]] = {}

    @property
    def steps(self) -> List[int]:
        """The steps held, oldest first (fetched when first asked for: the
        newest checkpoint is read without them)."""
        if self._steps is None:
            call("tpde_store_reader_steps", self.handle)
            self._steps = _result(self.handle)["steps"]
        return self._steps

    def close(self) -> None:
        if self.handle:
            h, self.handle = self.handle, 0
            call("tpde_store_reader_close", h)

    def __enter__(self) -> "_Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def entry(self, step: Optional[int], base: bool = False, *, keep: bool = True) -> Dict[str, Any]:
        """{"record", "object", "chains", "problem"} of checkpoint step (the
        newest when None; the base when base). keep=False does not cache it:
        a listing of the whole history must not keep every record alive
        (Python's cyclic GC walks what is kept, at a cost that grows with
        it)."""
        key: Any = "base" if base else step
        if key in self._entries:
            return self._entries[key]
        if base:
            call("tpde_store_reader_record", self.handle, 0, 2)
        elif step is None:
            if not self.head["count"]:
                raise InvalidArgumentError("the store holds no checkpoint")
            call("tpde_store_reader_record", self.handle, 0, 1)
        else:
            if self._held is None:
                self._held = set(self.steps)  # membership per call must not cost the history
            if step not in self._held:
                held = self.steps if len(self.steps) <= 20 else [*self.steps[:10], "...", *self.steps[-10:]]
                raise InvalidArgumentError(f"the store holds no checkpoint {step} (it holds {held})")
            call("tpde_store_reader_record", self.handle, step, 0)
        e = _result(self.handle)
        if keep:
            self._entries[key] = e
            self._entries[e["record"]["step"] if not base else "base"] = e
        return e

    def record(self, step: Optional[int]) -> Dict[str, Any]:
        return self.entry(step)["record"]

    def read_into(self, step: int, rel: str, offset: int, ptr: int, n: int) -> None:
        call("tpde_store_read_range", self.handle, step, rel.encode("utf-8"), offset, ptr, n)

    def read(self, step: int, rel: str, offset: int, n: int) -> bytes:
        buf = ctypes.create_string_buffer(max(n, 1))
        self.read_into(step, rel, offset, ctypes.addressof(buf), n)
        return buf.raw[:n]

    @property
    def manifest(self) -> Dict[str, Any]:
        """The manifest generation as docs/FORMAT.md §11.3 lays it out,
        rebuilt from every record's entry (linear in the history: for stats
        and inspection, not for loading)."""
        h = self.head
        return {"format": "tpde-store-manifest", "version": 1, "generation": h["generation"], "config": h["config"],
                "base": {"step": 0, "object": self.entry(None, base=True)["object"]} if h["base"] else None,
                "checkpoints": [{"step": s, "object": self.entry(s)["object"]} for s in self.steps]}

    @property
    def snapshot(self) -> Dict[str, Any]:
        """{"manifest", "base", "checkpoints": [every record]}: the whole
        history, for stats (linear in it)."""
        return {"manifest": self.manifest,
                "base": self.entry(None, base=True)["record"] if self.head["base"] else None,
                "checkpoints": [self.record(s) for s in self.steps]}

    def chain_lengths(self) -> Dict[Tuple[int, str, str], int]:
        """Frames each region's decode walks, by (step, file, region)."""
        out: Dict[Tuple[int, str, str], int] = {}
        for s in self.steps:
            e = self.entry(s)
            for f, chains in zip(e["record"]["files"], e["chains"]):
                for r, n in zip(f["regions"], chains):
                    out[(s, f["path"], r["name"])] = n
        return out


class Store:
    """A store of one training run's checkpoints, in the directory path.

    keyframe_interval (K, default 10, 1 to 1000): a random-access load
    decodes at most K frames per tensor; the newest checkpoint always
    decodes in one.
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
    max_output_bytes: the decode limit of reads (a load's tensors, a
    restore's files, any one tensor's decode), as elsewhere in tpde: else
    $TPDE_MAX_OUTPUT, else (for memory) what this process may use.

    path is a local folder; a URL ("s3://...") is refused, never taken for a
    folder. Nothing inside a store is followed through a symlink: a store is
    untrusted input.

    Reading needs no lock. The first add/remove takes the store's writer
    lock, held until close(): one writer at a time, and a killed writer
    never blocks the next.
    """

    def __init__(self, path: PathLike, keyframe_interval: Optional[int] = None, reference: Optional[str] = None,
                 base: Any = None, lossy: Optional[Mapping[str, float]] = None, *, threads: int = 0,
                 compression_method: str = "auto", max_output_bytes: Optional[int] = None) -> None:
        self.path = _path_arg(path, "the store path")
        if _SCHEME.match(self.path):
            raise UnsupportedFormatError(
                f"{self.path}: tpde cannot serve {self.path.split('://')[0]}:// stores; a store is a local folder")
        cfg: Dict[str, Any] = {}
        positions = _options.code(_options.POSITION_CODINGS, compression_method, "compression_method")
        if positions:
            cfg["positions"] = positions
        if keyframe_interval is not None:
            if isinstance(keyframe_interval, bool) or not isinstance(keyframe_interval, numbers.Integral):
                raise InvalidArgumentError(f"keyframe_interval must be an int, not {keyframe_interval!r}")
            if not 1 <= keyframe_interval <= 1000:
                raise InvalidArgumentError(f"keyframe_interval must be 1 to 1000, not {keyframe_interval}")
            cfg["keyframe_interval"] = int(keyframe_interval)
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
        self._max_output = max_output_bytes
        limit = _memory.output_limit(max_output_bytes, to_memory=False)
        if limit < _memory.UNLIMITED:
            cfg["max_output"] = limit
        self._config = cfg
        self._threads = int(threads)
        self._write: Optional[int] = None
        self._read: Optional[int] = None
        self._lock = threading.RLock()
        self._closed = False
        try:
            # An existing store is opened (and its config checked) now; a
            # missing one is created by the first add.
            self._read = self._open(write=False)
        except TPDEIOError as e:
            if e.errno != errno.ENOENT:
                raise
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
            call("tpde_store_open", os.fsencode(self.path), int(write), js, n, self._threads, byref(h))
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

    def _reader(self, run: Optional[str] = None) -> _Reader:
        if self._closed:
            raise InvalidArgumentError("the store is closed")
        h = self._write or self._read
        if h is None:
            self._read = h = self._open(write=False)
        rd = _Reader(h)
        if run is not None and run != MAIN_RUN:
            try:
                call("tpde_store_reader_use", rd.handle, _utf8(_run_arg(run), "run"))
            except BaseException:
                rd.close()
                raise
            rd.head = {**rd.head, "count": _result(rd.handle)["count"]}
        return rd

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
            return dict(rd.head["config"])

    # -- adding --------------------------------------------------------

    def add(self, path_or_state_dict: Any, step: Optional[int] = None, tags: Optional[Sequence[str]] = None,
            *, progress: Optional[Callable[[int, int], None]] = None, follow_links: bool = False,
            cancel: Optional[Any] = None, run: Optional[str] = None, parent: Any = None) -> CheckpointInfo:
        """Add a checkpoint: a file, a folder (every file in it, with its
        relative path and mode) or a state dict. step defaults to the newest
        step + 1; steps only grow (0 to 2**63 - 1). progress(done_bytes,
        total_bytes) is called as files are coded.

        A symlink in a folder is stored as the file it points to when that
        lies inside the folder; one that points outside is refused unless
        follow_links (a tokenizer.json -> ~/.ssh/id_rsa must not end up in a
        shared store). A folder that holds the store, or lies inside it, is
        refused. cancel: a threading.Event that stops the add (nothing is
        committed; CancelledError).

        run: the named run to add to (default "main"); a new run is made by
        its first add, with parent: "base" (the store's base), or (run,
        step) / {"run": ..., "step": ...}, a checkpoint of another run (a
        fine-tune of a fine-tune). A run's first checkpoint is coded against
        its parent, so runs that share a start share its bytes."""
        step = None if step is None else check_step(step, latest=False)
        tj, tn = self._tags_arg(tags)
        run_name = None if run is None else _run_arg(run)
        pj, pn = _json_arg(_parent_arg(parent))
        if parent is not None and run_name in (None, MAIN_RUN):
            raise InvalidArgumentError("parent= is for a named run (run=...); the main run has none")
        with self._lock, _naming(self.path):
            h = self._writer()
            if run_name is None:
                call("tpde_store_begin", h, 0 if step is None else step, int(step is not None), tj, tn, 0)
            else:
                call("tpde_store_begin_run", h, _utf8(run_name, "run"), pj, pn, 0 if step is None else step,
                     int(step is not None), tj, tn)
            return self._fill_and_commit(h, path_or_state_dict, progress, follow_links, cancel, run_name)

    def _add_base(self, base: Any) -> None:
        with self._lock, _naming(self.path):
            h = self._writer()
            call("tpde_store_begin", h, 0, 1, None, 0, 1)
            self._fill_and_commit(h, base, None, False, None)

    def _fill(self, h: int, what: Any, progress: Optional[Callable[[int, int], None]], follow_links: bool,
              cancel: Optional[Any], name: Optional[str] = None) -> None:
        """Add what (a path or a state dict) to the checkpoint or part begun
        on handle h; name: the state dict's file, or a single file's."""
        if isinstance(what, Mapping):
            self._add_state_dict(h, what, name or STATE_DICT_FILE)
        elif isinstance(what, (str, bytes, os.PathLike)):
            files = list(_walk(_path_arg(what, "the path to add"), self.path, follow_links))
            if name is not None:
                if len(files) != 1 or not os.path.isfile(os.fspath(what)):
                    raise InvalidArgumentError("name= names a single file; a folder's files keep their paths")
                files = [(name, files[0][1])]
            total = sum(os.stat(p).st_size for _, p in files)
            done = 0
            for rel, p in files:
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"adding {os.fspath(what)} was cancelled; nothing was committed")
                self._add_file(h, rel, p, cancel)
                done += os.stat(p).st_size
                if progress is not None:
                    progress(done, total)
        else:
            raise InvalidArgumentError(
                f"add() takes a path or a state dict, not {type(what).__module__}.{type(what).__qualname__}")

    def _fill_and_commit(self, h: int, what: Any, progress: Optional[Callable[[int, int], None]],
                         follow_links: bool, cancel: Optional[Any], run: Optional[str] = None) -> CheckpointInfo:
        try:
            self._fill(h, what, progress, follow_links, cancel)
            call("tpde_store_commit", h)
        except OSError as e:
            call("tpde_store_abort", h)
            if isinstance(e, TPDEError):
                raise
            # A file that vanished or became unreadable while being added
            # (a framework's rotation deleting a folder under us, say).
            where = os.fsdecode(os.fspath(what)) if isinstance(what, (str, bytes, os.PathLike)) else "a state dict"
            raise TPDEIOError(e.errno, f"{e.filename}: {e.strerror} (while adding {where})") from e
        except BaseException:
            call("tpde_store_abort", h)
            raise
        rec = _result(h)
        with self._reader(run) as rd:
            if rec.get("source"):  # the base
                return _info(rd.entry(None, base=True))
            return _info(rd.entry(rec["step"]))

    def _add_file(self, h: int, rel: str, p: str, cancel: Optional[Any]) -> None:
        hints, note = _torchfile.hints(p)
        hj, hn = _json_arg(hints)
        args = (h, _utf8(rel, "file name"), os.fsencode(p), hj, hn, note.encode("utf-8") if note else None, None)
        run_cancellable(lambda flag: call("tpde_store_add_file", *args, byref(flag)), cancel)

    def _add_state_dict(self, h: int, sd: Mapping[str, Any], rel: str = STATE_DICT_FILE) -> None:
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
            arr[i] = _native.StoreTensor(_utf8(e["name"], "tensor name"), src.code, len(src.shape),
                                         ctypes.addressof(shape), base + e["offset"], src.ptr, src.nbytes)
        call("tpde_store_add_state_dict", h, _utf8(rel, "file name"), head, len(head), arr, len(srcs))
        del keep, srcs

    # -- many writers, one commit ---------------------------------------

    def stage(self) -> "Part":
        """A participant of a multi-writer commit (docs/FORMAT.md, "Parts"):
        the ranks of a job, or nodes sharing a file system, each stage their
        files with Part.add and Part.finish, beside each other and without
        the writer lock; one process then commits every part's descriptor
        as one checkpoint (commit). The store is created if missing."""
        if self._closed:
            raise InvalidArgumentError("the store is closed")
        return Part(self)

    def commit(self, parts: Sequence[str], step: Optional[int] = None, tags: Optional[Sequence[str]] = None, *,
               holder: Optional[str] = None) -> CheckpointInfo:
        """Publish one checkpoint made of the parts' files (descriptors from
        Part.finish; file names must not repeat across parts). step
        defaults to the newest + 1. holder: a folder beside the store (one
        name, e.g. "step-200"); its pointer file (.tpde-checkpoint.json) is
        written before the checkpoint is published, and reclaim() removes
        the checkpoint once no folder holds it."""
        step = None if step is None else check_step(step, latest=False)
        if isinstance(parts, (str, bytes)) or not parts or not all(isinstance(p, str) for p in parts):
            raise InvalidArgumentError("parts must be a non-empty list of descriptors (str) from Part.finish()")
        if holder is not None:
            if not isinstance(holder, str) or not holder or "/" in holder or os.sep in holder or holder in (".", ".."):
                raise InvalidArgumentError(f"holder must be one folder name beside the store, not {holder!r}")
        tj, tn = self._tags_arg(tags)
        body = ("[" + ",".join(parts) + "]").encode("utf-8")
        with self._lock, _naming(self.path):
            h = self._writer()
            call("tpde_store_commit_parts", h, 0 if step is None else step, int(step is not None), tj, tn,
                 None if holder is None else _utf8(holder, "holder"), body, len(body))
            rec = _result(h)
            with self._reader() as rd:
                return _info(rd.entry(rec["step"]))

    def reclaim(self) -> List[int]:
        """Remove every checkpoint whose holder folder no longer holds it
        (removed, or its pointer names another checkpoint); returns their
        steps. Checkpoints added without a holder are never reclaimed, and
        none is while a holder cannot be checked."""
        with self._lock, _naming(self.path):
            h = self._writer()
            call("tpde_store_reclaim", h)
            return [int(s) for s in _result(h)["removed"]]

    @staticmethod
    def _tags_arg(tags: Optional[Sequence[str]]) -> Tuple[Optional[bytes], int]:
        if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
            raise InvalidArgumentError("tags must be a list of strings")
        for t in tags or ():
            _utf8(t, "tag")
            if has_control(t):
                raise InvalidArgumentError(f"tag {printable(t)!r} has a control character")
        return _json_arg(list(tags) if tags is not None else None)

    # -- reading -------------------------------------------------------

    def steps(self, run: Optional[str] = None) -> List[int]:
        """The steps held (of run, default "main"), oldest first (from the
        manifest alone)."""
        with _naming(self.path), self._reader(run) as rd:
            return list(rd.steps)

    def runs(self) -> List[Dict[str, Any]]:
        """The store's runs, main first: {"name", "parent", "count",
        "newest"} (parent None, {"base": True} or {"run", "step"}; newest
        None for a run holding no checkpoint)."""
        with _naming(self.path), self._reader() as rd:
            call("tpde_store_reader_runs", rd.handle)
            out = _result(rd.handle)["runs"]
        for r in out:
            r["newest"] = None if r["newest"] < 0 else r["newest"]
            p = r["parent"]
            r["parent"] = None if p is None else ({"base": True} if p.get("base") else
                                                  {"run": p.get("run", ""), "step": p.get("step", 0)})
        return out

    def info(self, step: Any = None, *, run: Optional[str] = None) -> CheckpointInfo:
        """What the store holds of checkpoint step (the newest when None or
        "latest") of run (default "main"). A checkpoint whose record cannot
        be read raises CorruptDataError naming it."""
        step = check_step(step)
        with _naming(self.path), self._reader(run) as rd:
            return _info(rd.entry(step))

    def list(self, run: Optional[str] = None) -> List[CheckpointInfo]:
        """Every checkpoint's info (of run, default "main"), oldest first,
        from one snapshot. A checkpoint that cannot be read (or read whole)
        is listed with its problem rather than stopping the listing."""
        out = []
        with _naming(self.path), self._reader(run) as rd:
            for s in rd.steps:
                try:
                    out.append(_info(rd.entry(s, keep=False)))
                except (CorruptDataError, UnsupportedFormatError, TPDEIOError) as e:
                    if isinstance(e, TPDEIOError) and e.errno in _DENIED:
                        raise  # this user may not read it: nothing says it is damaged
                    out.append(CheckpointInfo(step=s, tags=(), created="", files=(), raw_bytes=0, stored_bytes=0,
                                              max_error=0.0, max_chain=0, problem=str(e)))
        return out

    def load(self, step: Any = None, map_location: Any = None, *, file: Optional[str] = None,
             unpickle: bool = False, max_output_bytes: Optional[int] = None,
             run: Optional[str] = None) -> Dict[str, Any]:
        """A checkpoint as a state dict of torch tensors (the newest when
        step is None or "latest"): a state dict added from Python as it
        was; a .safetensors file's tensors; a folder as {relative path:
        state dict} of its tensor files (file= picks one). torch files (.pt,
        .bin, .ckpt) are pickles: they are loaded, with
        torch.load(weights_only=True), only when unpickle=True. Every
        failure is a TPDEError naming the store, the checkpoint and the
        file; nothing larger than the decode limit is allocated."""
        import torch  # noqa: F401 - the tensors returned are torch tensors

        step = check_step(step)
        limit = _memory.output_limit(max_output_bytes if max_output_bytes is not None else self._max_output)
        with _naming(self.path), self._reader(run) as rd:
            rec = rd.record(step)
            where = f"checkpoint {rec['step']}"
            files = list(rec["files"])
            if file is not None:
                files = [f for f in files if f["path"] == file]
                if not files:
                    raise InvalidArgumentError(f"{where} has no file {file!r}")
            tensor_files = [f for f in files if _loadable(f)]
            pickles = [f["path"] for f in tensor_files if _is_pickle(f)]
            if pickles and not unpickle:
                raise InvalidArgumentError(
                    f"{where}'s {', '.join(pickles)} {'is a' if len(pickles) == 1 else 'are'} torch "
                    "pickle(s); pass unpickle=True to load with torch.load(weights_only=True), or file= to pick "
                    "another file")
            _memory.check_output(sum(f["size"] for f in tensor_files), limit, where)
            out = {f["path"]: _load_guarded(rd, rec["step"], f, map_location) for f in tensor_files}
        if len(out) == 1 and (file is not None or len(rec["files"]) == 1
                              or any(f["layout"] == "state-dict" for f in tensor_files)):
            return next(iter(out.values()))
        if not out:
            raise InvalidArgumentError(f"{where} holds no tensor file")
        return out

    def restore(self, step: Any, dest: PathLike, *, force: bool = False, run: Optional[str] = None) -> Path:
        """Write checkpoint step's files (the newest when None or "latest")
        into the folder dest, each byte-identical to what was added, with
        its mode (less the umask). All or nothing: the files are written
        beside dest and moved into place once all are written and checked.
        A dest that exists and is not empty is refused unless force; then
        the checkpoint's files replace those of the same names and the rest
        of dest stays. A state dict added from Python is written as
        dest/state_dict.pt (torch.save)."""
        step = check_step(step)
        d = _path_arg(dest, "the destination")
        with _naming(self.path), self._reader(run) as rd:
            rec = rd.record(step)
            if [f["layout"] for f in rec["files"]] == ["state-dict"]:
                _memory.check_output(rec["files"][0]["size"], _memory.output_limit(self._max_output),
                                     f"checkpoint {rec['step']}")
                sd = _load_guarded(rd, rec["step"], rec["files"][0], None)
                _restore_state_dict(sd, d, force)
                return Path(d)
            try:
                call("tpde_store_restore", rd.handle, rec["step"], None, os.fsencode(d), 1 if force else 0)
            except TPDEError as e:
                # Go names the file; the checkpoint is named here, as load
                # names it.
                raise _renamed(e, f"checkpoint {rec['step']}") from e
        return Path(d)

    def stats(self) -> Dict[str, Any]:
        """Sizes per checkpoint, ratio per tensor group, and the fraction of
        elements that changed per layer between checkpoints. A checkpoint
        whose record cannot be read is left out, and listed under
        "damaged" with why."""
        records, chains, damaged = [], {}, {}
        with _naming(self.path), self._reader() as rd:
            for step in rd.steps:
                try:
                    e = rd.entry(step, keep=False)
                except (CorruptDataError, UnsupportedFormatError) as err:
                    damaged[str(step)] = str(err)
                    continue
                records.append(e["record"])
                for f, ns in zip(e["record"]["files"], e["chains"]):
                    for r, n in zip(f["regions"], ns):
                        chains[(step, f["path"], r["name"])] = n
        return {**_stats({"checkpoints": records}, chains, self.path), "damaged": damaged}

    # -- maintenance ---------------------------------------------------

    def remove(self, step: Any, *, run: Optional[str] = None) -> None:
        """Drop checkpoint step (or "latest") of run (default "main"); what
        was coded against it, in any run, is re-coded, so every other
        checkpoint still loads exactly as before. A damaged checkpoint can
        be removed."""
        step = check_step(step)
        run_name = MAIN_RUN if run is None else _run_arg(run)
        with self._lock, _naming(self.path):
            h = self._writer()
            if step is None:
                with self._reader(run_name) as rd:
                    if not rd.steps:
                        raise InvalidArgumentError(f"the store holds no checkpoint{_in_run(run_name)}")
                    step = rd.steps[-1]
            call("tpde_store_remove_from", h, _utf8(run_name, "run"), step)

    def remove_run(self, name: str) -> None:
        """Drop run name and every checkpoint of it. Other runs' checkpoints
        coded against it are re-coded first: removing a run never breaks
        another."""
        run_name = _run_arg(name)
        with self._lock, _naming(self.path):
            call("tpde_store_remove_run", self._writer(), _utf8(run_name, "run"))

    def verify(self, deep: bool = True, *, repair: bool = False) -> VerifyReport:
        """Check every object and every chain (deep: decode everything and
        compare with the hashes recorded at add). A damaged checkpoint is
        named, and the others are still checked. repair first removes what
        dead writers left behind and writes anew any damaged copy of a
        record or of the manifest whose twin is intact."""
        with self._lock, _naming(self.path):
            h = self._writer() if repair else (self._write or self._read)
            if h is None:
                self._reader().close()
                h = self._read
            call("tpde_store_verify", h, int(deep), int(repair))
            res = _result(h)
        probs = tuple(Problem(step=p.get("step", 0), file=p.get("file", ""), region=p.get("region", ""),
                              object=p.get("object", ""), message=p["message"], base=p.get("base", False),
                              degraded=p.get("degraded", False), unchecked=p.get("unchecked", False))
                      for p in res["problems"])
        return VerifyReport(probs, res.get("cleaned"))


class Part:
    """One participant's share of a checkpoint (Store.stage). add() codes
    files or state dicts into the store's objects now, in this process;
    finish() returns the descriptor the committing process passes to
    Store.commit. Keep the Part open until that commit is done: its objects
    are protected from the store's cleanup until close() (or until this
    process exits: the protection is a lock the kernel drops)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._handle: Optional[int] = None
        self._begun = False
        self.descriptor: Optional[str] = None
        h = c_uint64(0)
        js, n = _json_arg(store._config or None)
        with _naming(store.path):
            call("tpde_store_open", os.fsencode(store.path), _STAGE, js, n, store._threads, byref(h))
        self._handle = h.value

    def add(self, path_or_state_dict: Any, name: Optional[str] = None, *, follow_links: bool = False,
            cancel: Optional[Any] = None) -> None:
        """Stage a file, a folder (its files with their relative paths) or
        a state dict (the state-dict file name, default "state_dict.tpde").
        name renames a single file, or names a state dict's file."""
        if name is not None:
            _utf8(name, "file name")
        with self._lock, _naming(self._store.path):
            h = self._live()
            if not self._begun:
                call("tpde_store_begin", h, 0, 0, None, 0, 0)
                self._begun = True
            try:
                self._store._fill(h, path_or_state_dict, None, follow_links, cancel, name)
            except OSError as e:
                if isinstance(e, TPDEError):
                    raise
                raise TPDEIOError(e.errno, f"{e.filename}: {e.strerror} (while staging a part)") from e

    def finish(self) -> str:
        """End staging; the descriptor (JSON text) for Store.commit."""
        with self._lock, _naming(self._store.path):
            h = self._live()
            if not self._begun:
                call("tpde_store_begin", h, 0, 0, None, 0, 0)
                self._begun = True
            call("tpde_store_finish_part", h)
            self.descriptor = json.dumps(_result(h), separators=(",", ":"))
            return self.descriptor

    def _live(self) -> int:
        if self._handle is None:
            raise InvalidArgumentError("the part is closed")
        return self._handle

    def close(self) -> None:
        """Release the part: after the commit that names it, or to drop it
        (its objects then go at the store's next cleanup)."""
        with self._lock:
            h, self._handle = self._handle, None
            if h:
                call("tpde_store_close", h)

    def __enter__(self) -> "Part":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown; the kernel drops the lock anyway
            pass


def read_pointer(folder: PathLike) -> Dict[str, Any]:
    """The pointer a holder folder keeps (.tpde-checkpoint.json):
    {"store": the store's path, "step": int}. TPDEIOError (ENOENT) when
    the folder has none."""
    p = _path_arg(folder, "the folder")
    needed = c_uint64(0)
    cap = 4096
    while True:
        buf = ctypes.create_string_buffer(cap)
        rc = call("tpde_store_read_pointer", os.fsencode(p), buf, cap, byref(needed),
                  allow=(_native.E_BUFFER_TOO_SMALL,))
        if rc == _native.OK:
            return json.loads(buf.raw[: needed.value].decode("utf-8"))
        cap = int(needed.value)


def open(path: PathLike, **kwargs: Any) -> Store:  # noqa: A001 - the documented shortcut, tpde.open
    """Open (or create, on first add) the store at path: tpde.Store(path, ...)."""
    return Store(path, **kwargs)


# --- helpers ------------------------------------------------------------

def _inside(path: str, folder: str) -> bool:
    """Whether the real path path is folder or lies below it."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _walk(path: str, store_path: str, follow_links: bool) -> Iterator[Tuple[str, str]]:
    """(relative path, path to read) of each file to add: the file itself,
    or every file under a folder, sorted. A symlink to a file inside the
    folder is stored as that file; one to a folder inside is not entered
    (its files are added under their own names); one pointing outside is
    refused unless follow_links. Anything that is not a regular file (a
    FIFO, a socket, a device, a dangling link) is refused: nothing is
    skipped silently."""
    real = os.path.realpath(path)
    real_store = os.path.realpath(store_path)
    if _inside(real_store, real):
        raise InvalidArgumentError(f"{path} holds the store {store_path}: tpde will not add a store's own files "
                                   "to it (keep the store outside the folders you add)")
    if _inside(real, real_store):
        raise InvalidArgumentError(f"{path} is inside the store {store_path}")
    try:
        st = os.stat(path)
    except OSError as e:
        raise TPDEIOError(e.errno, f"{path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        yield os.path.basename(path), path  # a file (or a stream) the user named
        return
    found: List[Tuple[str, str]] = []
    entered = {(st.st_dev, st.st_ino)}
    todo = [(path, "")]
    while todo:
        folder, prefix = todo.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise TPDEIOError(e.errno, f"{folder}: {e.strerror} (while adding {path})") from None
        for e in entries:
            rel = prefix + e.name
            try:
                if e.is_symlink():
                    target = os.path.realpath(e.path)
                    inside = _inside(target, real)
                    if not inside and not follow_links:
                        raise InvalidArgumentError(
                            f"{printable(e.path)} is a symlink to {printable(target)}, outside {path}: tpde stores "
                            "what a link outside the folder points to only when asked (follow_links=True, "
                            "tpde add --follow-links)")
                    try:
                        tst = os.stat(e.path)
                    except FileNotFoundError:
                        raise TPDEIOError(errno.ENOENT, f"{e.path}: a symlink to {target}, which does not exist") \
                            from None
                    if _inside(target, real_store) or _inside(real_store, target):
                        raise InvalidArgumentError(f"{printable(e.path)} is a symlink to {printable(target)}, which "
                                                   f"is (or holds) the store {store_path}: tpde will not add a "
                                                   "store's own files to it")
                    if stat.S_ISDIR(tst.st_mode):
                        if not inside and (tst.st_dev, tst.st_ino) not in entered:
                            entered.add((tst.st_dev, tst.st_ino))
                            todo.append((e.path, rel + "/"))
                        continue
                    mode = tst.st_mode
                else:
                    mode = e.stat(follow_symlinks=False).st_mode
                    if stat.S_ISDIR(mode):
                        todo.append((e.path, rel + "/"))
                        continue
            except OSError as err:
                if isinstance(err, TPDEError):
                    raise
                raise TPDEIOError(err.errno, f"{e.path}: {err.strerror} (while adding {path})") from None
            if not stat.S_ISREG(mode):
                raise InvalidArgumentError(f"{printable(e.path)} is not a regular file (a FIFO, socket or device); "
                                           "tpde adds regular files")
            found.append((rel, e.path))
    if not found:
        raise InvalidArgumentError(f"{path} holds no file")
    found.sort()
    yield from found


def _restore_state_dict(sd: Any, dest: str, force: bool) -> None:
    """_write_state_dict, with the OS's refusals as TPDEIOError, the type
    (and errno) a restore by Go raises, naming the path refused."""
    try:
        _write_state_dict(sd, dest, force)
    except OSError as e:
        if isinstance(e, TPDEError):
            raise
        raise TPDEIOError(e.errno, f"{e.filename or dest}: {e.strerror or e}") from e


def _write_state_dict(sd: Any, dest: str, force: bool) -> None:
    """torch.save(sd) as dest/state_dict.pt, with Restore's promises (Go,
    core/store/read.go): all or nothing (written into a new hidden folder,
    beside dest when dest is missing and then renamed to it, inside dest
    when it exists and then moved out of it), a non-empty dest refused
    unless force, nothing written through a link inside dest."""
    import torch

    dest = os.path.abspath(dest)
    if os.path.islink(dest):
        target = os.path.realpath(dest)
        if not os.path.exists(target):
            raise TPDEIOError(errno.ENOENT, f"{dest}: a symlink to {target}, which does not exist")
        dest = target
    parent = os.path.dirname(dest) or "."
    exists = os.path.lexists(dest)
    if exists:
        if not os.path.isdir(dest):
            raise TPDEIOError(errno.ENOTDIR, f"{dest}: exists and is not a folder")
        if os.listdir(dest) and not force:
            raise TPDEIOError(errno.EEXIST, f"{dest}: is not empty; restore into a new or empty folder, or pass "
                                            "force=True (--force) to replace the files of the same names")
    try:
        if exists:
            stage = tempfile.mkdtemp(prefix=".tpde-restore-", dir=dest)
        else:
            stage = tempfile.mkdtemp(prefix=f".{os.path.basename(dest)[:200]}.tpde-restore-", dir=parent)
    except OSError as e:
        # Named as the restore from Go names it: dest, which the caller
        # asked for, not the temporary name beside it.
        where = "in it" if exists else f"beside itself first, in {parent}"
        raise TPDEIOError(e.errno, f"{dest}: {e.strerror} (a restore writes {where})") from None
    try:
        os.chmod(stage, 0o777 & ~_umask())
        with builtins.open(os.path.join(stage, "state_dict.pt"), "xb") as fh:
            torch.save(sd, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if exists:
            target = os.path.join(dest, "state_dict.pt")
            if os.path.isdir(target) and not os.path.islink(target):
                raise TPDEIOError(errno.EISDIR, f"{target}: is a folder")
            os.replace(os.path.join(stage, "state_dict.pt"), target)  # replaces a link itself, never through it
            os.rmdir(stage)
            fsync_dir(dest)
        else:
            os.rename(stage, dest)  # fails if dest appeared meanwhile
            fsync_dir(parent)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _umask() -> int:
    try:
        with builtins.open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _loadable(f: Dict[str, Any]) -> bool:
    return f["layout"] in ("safetensors", "state-dict", "torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and _is_pickle(f) and bool(f.get("note")))


def _is_pickle(f: Dict[str, Any]) -> bool:
    note = f.get("note", "")
    return f["layout"] in ("torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and (note.startswith("torch file") or note.startswith("legacy torch file")))


def _load_guarded(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any) -> Any:
    """_load_file, with every failure a TPDEError naming the checkpoint and
    the file: a record is untrusted, and what it describes may be checksum-
    consistent and still hostile (a header of the wrong shape, a pickle
    torch refuses)."""
    where = f"checkpoint {step}: file {printable(f['path'])}"
    try:
        return _load_file(rd, step, f, map_location)
    except TPDEError as e:
        raise _renamed(e, where) from e
    except MemoryError as e:
        from .errors import TPDEMemoryError

        raise TPDEMemoryError(f"{where}: {e}") from e
    except Exception as e:  # noqa: BLE001 - torch.load, struct and json raise many types for bad input
        detail = _torch_refusal(str(e)) if isinstance(e, pickle.UnpicklingError) else _clean(str(e))
        raise CorruptDataError(f"{where}: cannot be loaded: {type(e).__name__}" + (f": {detail}" if detail else "")) \
            from e


def _torch_refusal(text: str) -> str:
    """What torch.load(weights_only=True) refused, without its advice: it
    suggests loading again with weights_only=False, which for a pickle
    read from an untrusted store is the one thing not to do."""
    if "Weights only load failed" not in text:
        return _clean(text)
    text = text.split("\n\nCheck the documentation of torch.load", 1)[0]
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    else:
        text = text.rsplit("\n\n", 1)[-1]
    text = text.split(" Please use `torch.serialization", 1)[0]
    return "torch.load(weights_only=True) refuses it: " + _clean(text)


def _clean(text: str, limit: int = 300) -> str:
    """An exception's message fit for one line: escape sequences (torch's
    colours) dropped, control characters escaped, cut to limit."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit] + "..."


def _header(rd: _Reader, step: int, rel: str, size: int, what: str, limit: int = 100_000_000) -> Tuple[Any, int]:
    if size < 8:
        raise CorruptDataError(f"{size} bytes, too short for a {what} header")
    (n,) = struct.unpack("<Q", rd.read(step, rel, 0, 8))
    if n > min(limit, size - 8):
        raise CorruptDataError(f"{what} header of {n} bytes")
    try:
        hdr = json.loads(rd.read(step, rel, 8, n).decode("utf-8"), object_pairs_hook=_unique_keys,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptDataError(f"{what} header is not JSON: {_clean(str(e))}") from None
    if not isinstance(hdr, dict):
        raise CorruptDataError(f"{what} header is not a JSON object")
    return hdr, 8 + n


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object whose keys are all different: json keeps the last of
    a repeated key, another reader (or the writer that found the file's
    regions) may keep the first, so a header that repeats one is corrupt
    rather than read one way here and another way elsewhere."""
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CorruptDataError(f"header repeats the key {printable(k)!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; json.loads takes them unless told.
    raise CorruptDataError(f"header holds {name}, which is not JSON")


def _tensor_entry(e: Any, name: str, data_size: int, what: str) -> Tuple[int, int, str, List[int]]:
    """(offset, nbytes, dtype, shape) of one header entry, every field
    checked: offsets inside the data, shape a list of ints >= 0, a dtype
    tpde knows, and nbytes = prod(shape) x width."""
    if not isinstance(e, dict):
        raise CorruptDataError(f"{what} entry {printable(name)!r} is not an object")
    dtype, shape = e.get("dtype"), e.get("shape")
    if what == "safetensors":
        offs = e.get("data_offsets")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(x) is int for x in offs)):
            raise CorruptDataError(f"safetensors entry {printable(name)!r}: data_offsets {offs!r}")
        offset, nbytes = offs[0], offs[1] - offs[0]
    else:
        offset, nbytes = e.get("offset"), e.get("nbytes")
        if type(offset) is not int or type(nbytes) is not int:
            raise CorruptDataError(f"state dict entry {printable(name)!r}: offset {offset!r}, nbytes {nbytes!r}")
    if not (isinstance(shape, list) and all(type(x) is int and x >= 0 for x in shape)):
        raise CorruptDataError(f"{what} entry {printable(name)!r}: shape {shape!r}")
    if not isinstance(dtype, str):
        raise CorruptDataError(f"{what} entry {printable(name)!r}: dtype {dtype!r}")
    if offset < 0 or nbytes < 0 or offset + nbytes > data_size:
        raise CorruptDataError(f"{what} entry {printable(name)!r}: bytes [{offset}, {offset + nbytes}) outside "
                               f"the {data_size} bytes of data")
    return offset, nbytes, dtype, shape


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
                # As safetensors (and core/safetensors) read it: a map of
                # strings to strings, nothing else.
                if not (isinstance(e, dict) and all(isinstance(v, str) for v in e.values())):
                    raise CorruptDataError("safetensors __metadata__ is not a map of strings to strings")
                continue
            off, n, dtype, shape = _tensor_entry(e, name, size - start, "safetensors")
            out[name] = _read_tensor(rd, step, rel, start + off, n, dtype, shape, map_location)
        return out
    hdr, start = _header(rd, step, rel, size, "state dict")
    if hdr.get("format") != _SD_FORMAT or hdr.get("version") != 1:
        raise CorruptDataError(f"not a tpde state dict (format {hdr.get('format')!r})")
    entries = hdr.get("tensors")
    if not isinstance(entries, list):
        raise CorruptDataError("state dict header: tensors is not a list")
    tensors: Dict[str, Any] = {}
    for e in entries:
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(name, str) or name in tensors:
            raise CorruptDataError(f"state dict header: tensor name {name!r}")
        off, n, dtype, shape = _tensor_entry(e, name, size - start, "state dict")
        tensors[name] = _read_tensor(rd, step, rel, start + off, n, dtype, shape, map_location)
    aliases = hdr.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, str) and v in tensors for v in aliases.values()):
        raise CorruptDataError("state dict header: aliases name tensors it does not hold")
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    if hdr.get("skeleton") is None:
        import collections

        od = collections.OrderedDict((e["name"], tensors[e["name"]]) for e in entries)
        for alias in aliases:
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
    try:
        code = _tensors.dtype_code(dtype)
    except (KeyError, ValueError, TPDEError):
        raise CorruptDataError(f"tensor dtype {printable(dtype)!r} is not one tpde knows") from None
    n = 1
    for d in shape:
        n *= d
    if n * _tensors.WIDTHS[code] != nbytes:
        raise CorruptDataError(f"a {dtype} tensor of shape {shape} in {nbytes} bytes")
    t = _tensors.empty(code, tuple(shape), "torch")
    if nbytes:
        ptr, cap = _tensors.address(t)
        rd.read_into(step, rel, offset, ptr, nbytes)
    if map_location is not None:
        t = t.to(map_location)
    return t


def _info(entry: Dict[str, Any]) -> CheckpointInfo:
    rec = entry["record"]
    files, stored, max_err, max_chain = [], 0, 0.0, 1
    for f, chains in zip(rec["files"], entry["chains"]):
        files.append(FileInfo(path=f["path"], size=f["size"], mode=f["mode"], layout=f["layout"],
                              sha256=f["sha256"], tensors=len(f["regions"]), note=f.get("note", "")))
        stored += f["skeleton"]["stored"]
        for r, n in zip(f["regions"], chains):
            stored += r["stored"]
            max_err = max(max_err, r["max_error"])
            max_chain = max(max_chain, n)
    return CheckpointInfo(step=rec["step"], tags=tuple(rec["tags"]), created=rec["created"], files=tuple(files),
                          raw_bytes=sum(f.size for f in files), stored_bytes=stored, max_error=max_err,
                          max_chain=max_chain, problem=entry.get("problem", ""))


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
