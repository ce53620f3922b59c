"""Store and Part: the store's methods, each checking its arguments and
calling into the module that does the work (handle.py: native handles and
argument checks; state_dict.py: state dicts in and out; folders.py: files
and folders; stats.py: records turned into CheckpointInfo, VerifyReport
and stats)."""

from __future__ import annotations

import errno
import json
import os
import threading
from ctypes import c_uint64
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from .. import _memory
from .._interrupt import run_cancellable
from .._steps import step_from_name
from ..errors import InvalidArgumentError, TPDEError, TPDEIOError, require
from .folders import _add_files, _restore_state_dict
from .handle import (_STAGE, MAIN_RUN, PathLike, _config, _in_run, _json_arg, _naming, _open, _open_locking,
                     _parent_arg, _path_arg, _Reader, _renamed, _run_arg, _store_path, _tags_arg, _transfer, _object_bytes, _utf8,
                     call, call_json, check_step, is_s3)
from .state_dict import STATE_DICT_FILE, _add_state_dict, _load_checkpoint, _load_guarded
from .stats import _counted, _infos, _records, _report, _runs, _stats
from .types import CheckpointInfo, VerifyReport


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
    threads: how many threads the coding may use (0: every core).
    priority: "normal", or "low" (nice 19) or "idle" (SCHED_IDLE: only
    cores nothing else wants) for adds, removes and repairs, which then run
    on lowered threads (Linux): for coding in the background while
    training runs, as TPDETrainerCallback does.
    recode: "background" (default) or "inline". Each add stores its
    checkpoint whole and then re-codes the one before it as reverse deltas
    (what keeps the store small). "background" commits the add at once and
    re-codes on a thread of its own, at this store's priority; the next
    add, remove or repair, and close(), wait for it, and reads never do.
    Until it ends the store is larger, never less safe: killed at any
    moment, every checkpoint still restores, and a later add catches up.
    "inline" re-codes inside add(), so the store is minimal when add
    returns. A failed background re-code (its checkpoint simply stays
    whole) is raised by the next write or by close().
    max_output_bytes: the decode limit of reads (a load's tensors, a
    restore's files, any one tensor's decode), as elsewhere in tpde: else
    $TPDE_MAX_OUTPUT, else (for memory) what this process may use.

    path is a local folder, or s3://bucket/prefix (a store in a bucket,
    served through a local cache; requests() and uploads() count its
    traffic); any other URL is refused, never taken for a folder. Nothing inside a store is followed through a symlink: a store is
    untrusted input.

    Reading needs no lock. The first add/remove takes the store's writer
    lock, held until close(): one writer at a time, and a killed writer
    never blocks the next.
    """

    def __init__(self, path: PathLike, keyframe_interval: Optional[int] = None, reference: Optional[str] = None,
                 base: Any = None, lossy: Optional[Mapping[str, float]] = None, *, threads: int = 0,
                 compression_method: str = "auto", max_output_bytes: Optional[int] = None,
                 priority: str = "normal", recode: str = "background") -> None:
        self.path = _store_path(path)
        self._config = _config(compression_method, keyframe_interval, reference, lossy, base, max_output_bytes,
                               priority, recode)
        self._max_output = max_output_bytes
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
        return _open_locking(self.path, write, self._config, self._threads)

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
                rd.use(run)
            except BaseException:
                rd.close()
                raise
        return rd

    def close(self) -> None:
        """Wait for a background re-code, then release the store (and its
        writer lock). The store is closed either way; a re-code that failed
        is raised here (its checkpoint stays whole, which loses nothing)."""
        with self._lock:
            self._closed = True
            failed: Optional[BaseException] = None
            for attr in ("_write", "_read"):
                h = getattr(self, attr)
                if h:
                    setattr(self, attr, None)
                    try:
                        call("tpde_store_close", h)
                    except TPDEError as e:
                        failed = failed or e
            if failed is not None:
                raise failed

    def wait(self) -> None:
        """Wait for the background re-code of the checkpoint before the
        newest (recode="background"), so that the store is as small as it
        gets; raise its error if it failed (its checkpoint stays whole,
        which loses nothing). Reads never need this."""
        with self._lock:
            if self._write:
                call("tpde_store_wait", self._write)

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

    def object_bytes(self) -> int:
        """The bytes of the objects this Store has added to the store since
        it was opened, less those its cleanups removed: the store's growth
        from its adds (their re-codes included) and removes, read from a
        counter, not by walking the store (manifests, a few kilobytes, are
        not counted). On a store in a bucket, what its cache took. It takes
        no lock, so another thread may read it while an add runs."""
        return _object_bytes(self._write) if self._write else 0

    # -- traffic with the bucket ---------------------------------------

    def _transfer(self) -> Optional[Dict[str, int]]:
        """The counts of tpde_store_transfer, summed over this Store's
        handles (its reader's and its writer's, each with a client of its
        own); None for a local store. It takes no lock (neither this
        Store's nor the handles'), so a progress display may call it from
        another thread while an add runs."""
        total: Optional[Dict[str, int]] = None
        for h in (self._read, self._write):
            t = _transfer(h) if h else None
            if t is not None:
                total = t if total is None else {k: total[k] + t[k] for k in t}
        return total

    def requests(self) -> Optional[Dict[str, int]]:
        """The S3 requests this Store has sent since it was opened, by
        kind: "get", "put", "head", "list", "delete", "parts" (multipart
        UploadPart), "multipart" (a multipart upload's create, complete and
        abort), "other"; and "bytes_sent", "bytes_received" (bodies only).
        Every attempt counts, a retried request twice, as every attempt is
        billed. None for a local store. The cost of one operation is the
        difference of two readings around it (tpde add --json and tpde
        stats --json report theirs so)."""
        t = self._transfer()
        return None if t is None else {k: t[k] for k in _REQUEST_KEYS}

    def uploads(self) -> Optional[Dict[str, int]]:
        """The objects this Store's adds have handed to its uploaders since
        it was opened ("queued_objects", "queued_bytes") and those the
        bucket has taken ("uploaded_objects", "uploaded_bytes"): uploads
        start as soon as an object is coded, and a commit waits for the
        rest. None for a local store."""
        t = self._transfer()
        return None if t is None else {k: t[k] for k in _UPLOAD_KEYS}

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
        relative path and mode) or a state dict. step: as ``tpde add`` reads
        it, N of a folder named checkpoint-N, step-N or N (checkpoint-500/
        -> 500), else the newest step + 1; steps only grow (0 to
        2**63 - 1). progress(done_bytes,
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
        step = step_from_name(path_or_state_dict) if step is None else check_step(step, latest=False)
        tj, tn = _tags_arg(tags)
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
              cancel: Optional[Any], name: Optional[str] = None) -> Optional[Dict[str, int]]:
        """Add what (a path or a state dict) to the checkpoint or part begun
        on handle h; name: the state dict's file, or a single file's. For a
        state dict: where its file's layout put each tensor (byte offsets)."""
        if isinstance(what, Mapping):
            return _add_state_dict(h, what, name or STATE_DICT_FILE)
        elif isinstance(what, (str, bytes, os.PathLike)):
            _add_files(h, what, self.path, follow_links, name, progress, cancel)
            return None
        else:
            raise InvalidArgumentError(
                f"add() takes a path or a state dict, not {type(what).__module__}.{type(what).__qualname__}")

    def _fill_and_commit(self, h: int, what: Any, progress: Optional[Callable[[int, int], None]],
                         follow_links: bool, cancel: Optional[Any], run: Optional[str] = None) -> CheckpointInfo:
        try:
            self._fill(h, what, progress, follow_links, cancel)
            rec = call_json("tpde_store_commit", h)
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
        with self._reader(run) as rd:
            if rec.get("source"):  # the base
                return _counted(rd, rd.entry(None, base=True), base=True)
            return _counted(rd, rd.entry(rec["step"]))

    # -- many writers, one commit ---------------------------------------

    def stage(self) -> "Part":
        """A participant of a multi-writer commit (docs/FORMAT.md, "Parts"):
        the ranks of a job, or nodes sharing a file system, each stage their
        files with Part.add and Part.finish, beside each other and without
        the writer lock; one process then commits every part's descriptor
        as one checkpoint (commit). The store is created if missing. On an
        s3:// store each participant may stage through a cache of its own
        (TPDE_S3_CACHE), on its own machine: finish() uploads the part's
        objects before it returns, and the commit must come within the
        store's grace period (TPDE_S3_GRACE) of it."""
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
        the checkpoint once no folder holds it. On an s3:// store, holder
        is the absolute path of a local folder: its pointer names the
        store's URL, and the checkpoint lives until it is removed (reclaim
        refuses: a folder this machine cannot see may be held on another)."""
        step = None if step is None else check_step(step, latest=False)
        if isinstance(parts, (str, bytes)) or not parts or not all(isinstance(p, str) for p in parts):
            raise InvalidArgumentError("parts must be a non-empty list of descriptors (str) from Part.finish()")
        if holder is not None and is_s3(self.path):
            if not isinstance(holder, str) or not os.path.isabs(holder) or os.path.normpath(holder) != holder:
                raise InvalidArgumentError(f"holder must be the absolute path of a local folder for an s3:// store, "
                                           f"not {holder!r}")
        elif holder is not None:
            if not isinstance(holder, str) or not holder or "/" in holder or os.sep in holder or holder in (".", ".."):
                raise InvalidArgumentError(f"holder must be one folder name beside the store, not {holder!r}")
        tj, tn = _tags_arg(tags)
        body = ("[" + ",".join(parts) + "]").encode("utf-8")
        with self._lock, _naming(self.path):
            h = self._writer()
            rec = call_json("tpde_store_commit_parts", h, 0 if step is None else step, int(step is not None), tj, tn,
                            None if holder is None else _utf8(holder, "holder"), body, len(body))
            with self._reader() as rd:
                return _counted(rd, rd.entry(rec["step"]))

    def reclaim(self) -> List[int]:
        """Remove every checkpoint whose holder folder no longer holds it
        (removed, or its pointer names another checkpoint); returns their
        steps. Checkpoints added without a holder are never reclaimed, and
        none is while a holder cannot be checked. An s3:// store refuses
        (UnsupportedFormatError): its folders lie on the machines that
        saved, so no process can tell that one is gone; remove by step."""
        with self._lock, _naming(self.path):
            h = self._writer()
            return [int(s) for s in call_json("tpde_store_reclaim", h)["removed"]]

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
            out = rd.runs()
        return _runs(out)

    def info(self, step: Any = None, *, run: Optional[str] = None) -> CheckpointInfo:
        """What the store holds of checkpoint step (the newest when None or
        "latest") of run (default "main"). A checkpoint whose record cannot
        be read raises CorruptDataError naming it."""
        step = check_step(step)
        with _naming(self.path), self._reader(run) as rd:
            return _counted(rd, rd.entry(step))

    def list(self, run: Optional[str] = None) -> List[CheckpointInfo]:
        """Every checkpoint's info (of run, default "main"), oldest first,
        from one snapshot. A checkpoint that cannot be read (or read whole)
        is listed with its problem rather than stopping the listing."""
        with _naming(self.path), self._reader(run) as rd:
            return _infos(rd)

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
        require("torch", "Store.load()")  # the tensors returned are torch tensors

        step = check_step(step)
        limit = _memory.output_limit(max_output_bytes if max_output_bytes is not None else self._max_output)
        with _naming(self.path), self._reader(run) as rd:
            rec = rd.record(step)
            out, alone = _load_checkpoint(rd, rec, file, unpickle, limit, map_location)
        if alone:
            return next(iter(out.values()))
        if not out:
            raise InvalidArgumentError(f"checkpoint {rec['step']} holds no tensor file")
        return out

    def restore(self, step: Any, dest: PathLike, *, force: bool = False, run: Optional[str] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> Path:
        """Write checkpoint step's files (the newest when None or "latest")
        into the folder dest, each byte-identical to what was added, with
        its mode (less the umask). All or nothing: the files are written
        beside dest and moved into place once all are written and checked.
        A dest that exists and is not empty is refused unless force; then
        the checkpoint's files replace those of the same names and the rest
        of dest stays. A state dict added from Python is written as
        dest/state_dict.pt (torch.save). progress(done_bytes, total_bytes)
        is called now and then while the files are written."""
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
                _with_progress(lambda counters: call("tpde_store_restore", rd.handle, rec["step"], None,
                                                     os.fsencode(d), 1 if force else 0, counters), progress)
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
        with _naming(self.path), self._reader() as rd:
            records, chains, damaged = _records(rd)
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
            call("tpde_store_remove", h, _utf8(run_name, "run"), step)

    def remove_run(self, name: str) -> None:
        """Drop run name and every checkpoint of it. Other runs' checkpoints
        coded against it are re-coded first: removing a run never breaks
        another."""
        run_name = _run_arg(name)
        with self._lock, _naming(self.path):
            call("tpde_store_remove_run", self._writer(), _utf8(run_name, "run"))

    def verify(self, deep: bool = True, *, repair: bool = False,
               progress: Optional[Callable[[int, int], None]] = None) -> VerifyReport:
        """Check every object and every chain (deep: decode everything and
        compare with the hashes recorded at add). A damaged checkpoint is
        named, and the others are still checked. repair first removes what
        dead writers left behind and writes anew any damaged copy of a
        record or of the manifest whose twin is intact. progress(checked,
        total) counts checkpoints while it works."""
        with self._lock, _naming(self.path):
            h = self._writer() if repair else (self._write or self._read)
            if h is None:
                self._reader().close()
                h = self._read
            res = _with_progress(lambda counters: call_json("tpde_store_verify", h, int(deep), int(repair), counters),
                                 progress)
        return _report(res)


_REQUEST_KEYS = ("get", "put", "head", "list", "delete", "parts", "multipart", "other", "bytes_sent",
                 "bytes_received")
_UPLOAD_KEYS = ("queued_objects", "queued_bytes", "uploaded_objects", "uploaded_bytes")


def _with_progress(fn: Callable[[Any], Any], progress: Optional[Callable[[int, int], None]]) -> Any:
    """fn(counters): a call whose library stores [done, total] into
    counters while it works, reported to progress from this thread."""
    if progress is None:
        return fn(None)
    counters = (c_uint64 * 2)()
    out = run_cancellable(lambda _flag: fn(counters), None, lambda: progress(counters[0], counters[1]))
    progress(counters[0], counters[1])
    return out


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
        with _naming(store.path):
            self._handle = _open(store.path, _STAGE, store._config, store._threads)

    def add(self, path_or_state_dict: Any, name: Optional[str] = None, *, follow_links: bool = False,
            cancel: Optional[Any] = None) -> Optional[Dict[str, int]]:
        """Stage a file, a folder (its files with their relative paths) or
        a state dict (the state-dict file name, default "state_dict.tpde").
        name renames a single file, or names a state dict's file. For a
        state dict, returns {tensor name: byte offset in its file} as the
        layout (docs/FORMAT.md §10) put them, aliases included."""
        if name is not None:
            _utf8(name, "file name")
        with self._lock, _naming(self._store.path):
            h = self._live()
            if not self._begun:
                call("tpde_store_begin", h, 0, 0, None, 0, 0)
                self._begun = True
            try:
                return self._store._fill(h, path_or_state_dict, None, follow_links, cancel, name)
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
            self.descriptor = json.dumps(call_json("tpde_store_finish_part", h), separators=(",", ":"))
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


def open(path: PathLike, **kwargs: Any) -> Store:  # noqa: A001 - the documented shortcut, tpde.open
    """Open (or create, on first add) the store at path: tpde.Store(path, ...)."""
    return Store(path, **kwargs)

