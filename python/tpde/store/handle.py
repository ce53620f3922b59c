"""The store's native handles and the checks every argument passes first.

Go owns the store (core/store, through capi/store.go); what Python holds of
it are handles: a store opened to read, to write (the writer lock) or to
stage a part, and a reader of one committed snapshot (_Reader). Every
argument that reaches C is checked here first: a path without NUL, a name
in UTF-8, a step that a C int64 cannot wrap, lossy rules, tags. Errors are
renamed here to name the store (or checkpoint) they are about.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import numbers
import os
import re
from ctypes import byref, c_uint64
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from .. import _chain, _memory, _native, _options
from .._native import call, call_json
# The step grammar is the command line's too (_steps.py); the store reads
# steps only through check_step.
from .._steps import MAX_STEP, check_step  # noqa: F401
from .._text import has_control, printable
from ..errors import InvalidArgumentError, TPDEError, TPDEIOError, UnsupportedFormatError

PathLike = Union[str, "os.PathLike[str]"]

# tpde_store_open's write argument for a participant (TPDE_STORE_STAGE).
_STAGE = 2
# Which record a reader call reads (TPDE_STORE_STEP, _LATEST, _BASE).
_STEP, _LATEST, _BASE = 0, 1, 2


class StoreLockedError(TPDEIOError):
    """Another process is writing the store: one writer at a time."""


#: errnos of the OS refusing this user access: not damage of the store.
_DENIED = (errno.EACCES, errno.EPERM)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


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
        #: {"generation", "config", "base": bool, "count"}: what the
        #: manifest says, none of it growing with the history.
        self.head = call_json("tpde_store_reader_open", store_handle, byref(h), into=h)
        self.handle = h.value
        self._steps: Optional[List[int]] = None
        self._held: Optional[set] = None  # the steps as a set, made when first asked about one
        self._entries: Dict[Any, Dict[str, Any]] = {}

    @property
    def steps(self) -> List[int]:
        """The steps held, oldest first (fetched when first asked for: the
        newest checkpoint is read without them)."""
        if self._steps is None:
            self._steps = call_json("tpde_store_reader_steps", self.handle)["steps"]
        return self._steps

    def use(self, run: str) -> None:
        """Read run (a named run) from now on: its steps and records."""
        count = call_json("tpde_store_reader_use", self.handle, _utf8(_run_arg(run), "run"))["count"]
        self.head = {**self.head, "count": count}

    def runs(self) -> List[Dict[str, Any]]:
        """The store's runs as Go lists them, main first."""
        return call_json("tpde_store_reader_runs", self.handle)["runs"]

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
            e = call_json("tpde_store_reader_record", self.handle, 0, _BASE)
        elif step is None:
            if not self.head["count"]:
                raise InvalidArgumentError("the store holds no checkpoint")
            e = call_json("tpde_store_reader_record", self.handle, 0, _LATEST)
        else:
            if self._held is None:
                self._held = set(self.steps)  # membership per call must not cost the history
            if step not in self._held:
                held = self.steps if len(self.steps) <= 20 else [*self.steps[:10], "...", *self.steps[-10:]]
                raise InvalidArgumentError(f"the store holds no checkpoint {step} (it holds {held})")
            e = call_json("tpde_store_reader_record", self.handle, step, _STEP)
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


# --- arguments of Store --------------------------------------------------

def _store_path(path: Any) -> str:
    """The store's path: a local folder or "s3://bucket/prefix" (checked in
    Go); any other URL is refused, never taken for a folder."""
    p = _path_arg(path, "the store path")
    if _SCHEME.match(p) and not is_s3(p):
        raise UnsupportedFormatError(
            f"{p}: tpde cannot serve {p.split('://')[0]}:// stores; a store is a local folder or s3://bucket/prefix")
    return p


def is_s3(path: str) -> bool:
    """Whether path names a store on S3 (served through a local cache)."""
    return path.startswith("s3://")


def local_path(path: Any, what: str) -> str:
    """path as an absolute local path, for what needs a local folder; a URL
    is refused, never made a folder named after its scheme."""
    p = _path_arg(path, what)
    if _SCHEME.match(p):
        raise UnsupportedFormatError(
            f"{p}: {what} must be a local folder here; s3:// stores are taken by tpde.Store, the tpde command, "
            "TPDETrainerCallback, the Lightning plugin and callback, tpde.dcp and the DeepSpeed engine so far")
    return os.path.abspath(p)


#: Store(priority=...): how much CPU the store's writes may take.
PRIORITIES = ("normal", "low", "idle")

#: Store(recode=...): when an add re-codes the checkpoint before it.
RECODES = ("background", "inline")


def _config(compression_method: str, keyframe_interval: Optional[int], reference: Optional[str], lossy: Any,
            base: Any, max_output_bytes: Optional[int], priority: str = "normal",
            recode: str = "background") -> Dict[str, Any]:
    """The config a Store passes to tpde_store_open: only what was given
    (None means "as stored")."""
    cfg: Dict[str, Any] = {}
    if priority not in PRIORITIES:
        raise InvalidArgumentError(f"priority must be one of {', '.join(map(repr, PRIORITIES))}, not {priority!r}")
    if priority != "normal":
        cfg["priority"] = priority
    if recode not in RECODES:
        raise InvalidArgumentError(f"recode must be one of {', '.join(map(repr, RECODES))}, not {recode!r}")
    if recode != "background":
        cfg["recode"] = recode
    positions = _options.code(_options.POSITION_CODINGS, compression_method, "compression_method")
    if positions:
        cfg["positions"] = positions
    if keyframe_interval is not None or reference is not None:
        # Checked by the one chain policy (core/chain) before the store opens.
        policy = _chain.policy(keyframe_interval, reference)
        if keyframe_interval is not None:
            cfg["keyframe_interval"] = policy["keyframe_interval"]
        if reference is not None:
            cfg["reference"] = policy["reference"]
    rules = _lossy_rules(lossy)
    if rules is not None:
        cfg["lossy"] = rules
    if base is not None and cfg.get("reference", "base") != "base":
        raise InvalidArgumentError("base= is used with reference='base'")
    if base is not None:
        cfg["reference"] = "base"
    limit = _memory.output_limit(max_output_bytes, to_memory=False)
    if limit < _memory.UNLIMITED:
        cfg["max_output"] = limit
    return cfg


def _tags_arg(tags: Optional[Sequence[str]]) -> Tuple[Optional[bytes], int]:
    if tags is not None and (isinstance(tags, str) or not all(isinstance(t, str) for t in tags)):
        raise InvalidArgumentError("tags must be a list of strings")
    for t in tags or ():
        _utf8(t, "tag")
        if has_control(t):
            raise InvalidArgumentError(f"tag {printable(t)!r} has a control character")
    return _json_arg(list(tags) if tags is not None else None)


# --- opening ---------------------------------------------------------------

def _open(path: str, mode: int, config: Dict[str, Any], threads: int) -> int:
    """A store handle: mode 0 reads, 1 writes (the writer lock), _STAGE
    stages a part."""
    h = c_uint64(0)
    js, n = _json_arg(config or None)
    call("tpde_store_open", os.fsencode(path), mode, js, n, threads, byref(h))
    return h.value


def _open_locking(path: str, write: bool, config: Dict[str, Any], threads: int) -> int:
    """_open to read or write; another process holding the writer lock is
    StoreLockedError."""
    try:
        return _open(path, int(write), config, threads)
    except TPDEIOError as e:
        if e.errno == errno.EWOULDBLOCK:  # the writer lock (flock), nothing else returns it
            raise StoreLockedError(e.errno, str(e)) from None
        raise


def _transfer(h: int) -> Optional[Dict[str, int]]:
    """Store handle h's traffic with its bucket since it was opened
    (tpde_store_transfer, which never waits for the handle: it may be
    called while another thread adds on it), by the names of
    _native.TRANSFER_NAMES; None for a local store."""
    counts = (c_uint64 * _native.TRANSFER_COUNT)()
    written = c_uint64(0)
    call("tpde_store_transfer", h, counts, _native.TRANSFER_COUNT, byref(written))
    if written.value == 0:
        return None
    return {name: int(counts[i]) for i, name in enumerate(_native.TRANSFER_NAMES[:written.value])}


def _object_bytes(h: int) -> int:
    """The bytes of the objects store handle h added, less those its
    cleanups removed (tpde_store_object_bytes; never waits for the
    handle)."""
    n = ctypes.c_int64(0)
    call("tpde_store_object_bytes", h, byref(n))
    return int(n.value)


def read_pointer(folder: PathLike) -> Dict[str, Any]:
    """The pointer a holder folder keeps (.tpde-checkpoint.json):
    {"store": the store's path, "step": int}. TPDEIOError (ENOENT) when
    the folder has none."""
    p = _path_arg(folder, "the folder")
    return _native.call_json("tpde_store_read_pointer", os.fsencode(p))
