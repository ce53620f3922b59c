"""DeepSpeed integration: the tags of a DeepSpeed checkpoint folder are the
checkpoints of one tpde store, each tag stored as reverse deltas against
the next, and every file reads back bit-exactly.

    import tpde.integrations.deepspeed as tds

    config = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1},
              "checkpoint": {"compression": {"enabled": True, "method": "tpde"}}}
    engine, optimizer, _, _ = tds.initialize(model=model, optimizer=opt, config=config)
    engine.save_checkpoint("ckpt")      # ckpt/.tpde-store gains a checkpoint; ckpt/global_stepN/ holds stubs
    engine.load_checkpoint("ckpt")      # the state exactly as saved
    tds.materialize("ckpt")             # ckpt/<latest>/ holds the plain torch files again (zero_to_fp32.py)

DeepSpeed has no registry of checkpoint engines: the way in is the
engine's ``checkpoint_engine`` attribute, which install() sets
to a TPDECheckpointEngine after deepspeed.initialize (initialize() does that
when the config's "checkpoint": {"compression": ...} block enables it;
DeepSpeed itself ignores that block).

Layout (docs/FORMAT.md §19.3). save_checkpoint(save_dir, tag) makes:

- ``save_dir/.tpde-store/``: a checkpoint store (§18) holding every tag as
  one checkpoint (the store numbers them: newest + 1), with the tag as its
  tag. The newest is whole; each older one is coded as deltas against the
  next, file by file (DeepSpeed's file names are the same in every tag).
- ``save_dir/<tag>/.tpde-checkpoint.json``: the store's pointer (written by
  the store before it publishes the checkpoint): which store and step the
  folder holds. The folder "holds" that checkpoint.
- ``save_dir/<tag>/<file>``: for every file DeepSpeed saved there, a stub:
  a small JSON object naming the step, the file, its size and sha256.
  DeepSpeed globs the model-state file names and asserts they exist before
  it loads them, so the names must stay; the stub also lets a load refuse a
  file whose tag was saved again without it.
- ``save_dir/latest`` and the recovery scripts stay plain: DeepSpeed writes
  them with open() and copyfile().

Removing a tag folder (rmtree) never breaks another tag: the store keeps
its data until the next save (or ``tpde verify --repair``) reclaims the
checkpoints no folder holds any more, re-coding the neighbours of each.

How a save runs (DeepSpeed calls create, save, ..., commit on every rank,
then writes ``latest`` on rank 0 and barriers):

- save(state_dict, path), per file, on the rank that owns it: torch.save
  (under the final name, so the zip is the one TorchCheckpointEngine
  writes), fsynced, renamed to path, then staged into this rank's part of
  the store (``Store.stage()``, opened at the tag's first file): each rank
  codes its own files, with deltas, in parallel.
- commit(info), on every rank: each rank finishes its part; the parts'
  descriptors are gathered to global rank 0 (torch.distributed, when
  initialized), which commits them as one checkpoint held by the tag
  folder and reclaims what no folder holds; its outcome is broadcast (the
  barrier), and then each rank replaces its plain files with stubs. If the
  commit fails, every rank raises and the plain files stay: the tag still
  loads.

A file saved outside ``save_dir/<tag>/`` (save_16bit_model's
``save_dir/pytorch_model.bin``, an export for other tools) is written as
the plain torch file.

load(path) reads a plain torch file as TorchCheckpointEngine does, a tpde
file written by the earlier per-file engine (each file a tpde file, §7) by
decoding it, and a stub (or a file the folder's checkpoint holds but the
folder lacks) from the store, through a temporary file in $TMPDIR.

What still bypasses the engine (DeepSpeed code that calls open() or
torch.load itself):
- zero_to_fp32.py / zero_to_torch.py, and deepspeed.utils.zero_to_fp32
  (also used by load_checkpoint under ZeRO-3 with load_optimizer_states=False)
  torch.load the files directly and cannot read stubs: materialize() the
  tag first (in place, or into another folder).
- the MoE expert-loading path that builds TorchCheckpointEngine() itself
  (DeepSpeedEngine.load_moe_state_dict's default) reads plain files only.
- "use_node_local_storage": true (each node saving to its own disk) is
  refused: one store needs one file system that every rank writes to.
The config's "checkpoint_serialization": false (the legacy torch format) is
not honoured: files are always torch zips, the layout tpde codes by dtype.

The store may be in a bucket instead of ``save_dir/.tpde-store``: the
block's ``"store": "s3://bucket/prefix"`` (or install(engine,
store=...)). The tag folders stay in save_dir, holding their stubs and a
pointer that names the store's URL; each rank stages its files through a
local cache of its own (``TPDE_S3_CACHE``) and uploads its part before
rank 0 commits it (docs/FORMAT.md §11.12); the endpoint and credentials
come from every rank's environment (``AWS_ENDPOINT_URL``, ...). Such a
store is never reclaimed by its tag folders, which lie on the machines
that saved: removing a tag folder leaves its checkpoint in the bucket
until it is removed by step (``tpde.Store(url).remove(step)``).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from .. import store as _store
from .._atomic import fsync_dir, write_atomically
from .._native import call
from .._options import threads_arg
from ..codec import _FILE_MAGIC, decompress_file
from ..errors import CorruptDataError, InvalidArgumentError, TPDEError, TPDEIOError, UnsupportedFormatError
from ..store import Store
from ..store.handle import is_s3

__all__ = ["TPDECheckpointEngine", "install", "initialize", "compression_enabled", "is_tpde_file", "materialize",
           "STORE_NAME"]

PathLike = Union[str, "os.PathLike[str]"]

ENGINE_NAME = "TPDECheckpointEngine"
#: DeepSpeed copies these next to the tag folders of ZeRO checkpoints.
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
#: The store, in save_dir beside the tag folders (a dot name: none of
#: DeepSpeed's globs or tag names matches it).
STORE_NAME = ".tpde-store"
#: The store's pointer in a folder that holds a checkpoint (written by the store).
POINTER_NAME = ".tpde-checkpoint.json"
STUB_FORMAT = "tpde-deepspeed-file"
_STUB_MAX_BYTES = 1 << 16
_STAGING_PREFIX = ".tpde-staging-"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class _Stub:
    step: int
    file: str
    size: int
    sha256: str

    def encode(self) -> bytes:
        return json.dumps({"format": STUB_FORMAT, "version": 1, "step": self.step, "file": self.file,
                           "size": self.size, "sha256": self.sha256}).encode("utf-8") + b"\n"


class TPDECheckpointEngine(CheckpointEngine):
    """A DeepSpeed CheckpointEngine that keeps the tags of a checkpoint
    folder in one tpde store (``<save_dir>/.tpde-store``), with deltas
    across tags.

        engine.checkpoint_engine = TPDECheckpointEngine(engine._config)

    save() and commit() must be called as DeepSpeed's save_checkpoint calls
    them: create(info) on every rank, save() for each of the rank's files,
    commit(info) on every rank (it is collective when torch.distributed is
    initialized). load(path) reads what any of the layouts above left at
    path; a file from the store is written to a temporary file in
    tempfile's folder ($TMPDIR) first, which needs room for its size.

    threads: tpde worker threads per rank (0: tpde's default). store: None
    for ``<save_dir>/.tpde-store``, or an "s3://bucket/prefix" store (see
    the module docstring).
    """

    def __init__(self, config_params: Any = None, *, threads: int = 0, store: Optional[str] = None) -> None:
        super().__init__(config_params)
        self.name = ENGINE_NAME
        self.threads = threads_arg(threads)
        if store is not None and not (isinstance(store, str) and is_s3(store)):
            raise InvalidArgumentError(f"store must be an s3://bucket/prefix URL (a local store is "
                                       f"save_dir/{STORE_NAME}), not {store!r}")
        self.store = store
        if getattr(config_params, "use_node_local_storage", False) is True:
            raise InvalidArgumentError(
                'the DeepSpeed config\'s "checkpoint": {"use_node_local_storage": true} saves each node\'s files '
                "to its own disk; TPDECheckpointEngine keeps a checkpoint folder's tags in one store, which every "
                "rank must reach: use shared storage, or DeepSpeed's own engine")
        self._tag_dir: Optional[str] = None
        self._store: Optional[Store] = None
        self._part: Any = None
        self._staged: List[Tuple[str, str]] = []  # (path, name in the checkpoint), this rank's

    # -- saving --------------------------------------------------------

    def create(self, info: CheckpointCommitInfo) -> None:
        self._discard()  # a save that never reached commit (it failed on some rank)
        save_dir = os.path.abspath(info.save_dir)
        tag_dir = os.path.abspath(os.path.join(save_dir, str(info.tag)))
        self._tag_dir = tag_dir
        if os.path.dirname(tag_dir) != save_dir:
            # A tag like "run1/step5" (or ".."): the store holds a checkpoint
            # for a folder beside it only. Such a tag is saved as DeepSpeed's
            # own engine saves it.
            warnings.warn(f"DeepSpeed tag {info.tag!r} is not one folder name in {save_dir}: its files are saved "
                          "as plain torch files, not in the tpde store", stacklevel=2)
            self._tag_dir = None

    def save(self, state_dict: Any, path: str) -> None:
        target = os.path.abspath(path)
        folder = os.path.dirname(target)
        # Saved under the final name, so the zip's root folder (torch uses
        # the file's stem) is what TorchCheckpointEngine writes; the dot
        # folder matches none of DeepSpeed's file globs.
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder)
        try:
            plain = os.path.join(staging, os.path.basename(target))
            torch.save(state_dict, plain)
            _fsync_file(plain)
            # DeepSpeed names the file; saving a tag again replaces it, as
            # TorchCheckpointEngine's torch.save does.
            os.replace(plain, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if self._tag_dir is None or folder != self._tag_dir:
            fsync_dir(folder)  # not a tag's file: it stays the plain torch file
            return
        name = os.path.basename(target)
        with _naming(target):
            if any(n == name for _, n in self._staged):
                # The same file twice in one tag (DeepSpeed does not): stage
                # the tag's files anew, the file as it is now.
                again = [(p, n) for p, n in self._staged if n != name]
                self._discard()
                for p, n in again:
                    self._stage(p, n)
            self._stage(target, name)

    def _stage(self, path: str, name: str) -> None:
        if self._part is None:
            self._store = Store(self._store_path(), threads=self.threads)
            self._part = self._store.stage()
        self._part.add(path, name=name)
        self._staged.append((path, name))

    def _store_path(self) -> str:
        assert self._tag_dir is not None
        return self.store or os.path.join(os.path.dirname(self._tag_dir), STORE_NAME)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        tag_dir = self._tag_dir or os.path.abspath(os.path.join(info.save_dir, str(info.tag)))
        store_path = self.store or os.path.join(os.path.dirname(tag_dir), STORE_NAME)
        dist = _distributed()
        rank = dist.get_rank() if dist else 0
        try:
            desc, failed = None, None
            try:
                if self._part is not None:
                    desc = self._part.finish()
            except Exception as e:  # noqa: BLE001 - reported to rank 0, which tells every rank
                failed = e
            gathered = _all_gather(dist, (desc, _describe(failed, rank)))
            outcome: Any = None
            error: Optional[BaseException] = failed
            if rank == 0:
                outcome, error = _commit_parts(store_path, tag_dir, str(info.tag), gathered, error, self.threads)
            outcome = _broadcast(dist, outcome)
            if "error" in outcome:
                if error is None:
                    error = TPDEError(f"{tag_dir}: the tag was not committed to the store {store_path}: "
                                      f"{outcome['error']}; its files stay plain torch files")
                raise error
            step, files = outcome.get("step"), outcome.get("files", {})
            # Every rank's part is in the store now: the plain files give way
            # to stubs (a rank's file the checkpoint lacks stays plain).
            for path, name in self._staged:
                if name in files:
                    size, sha = files[name]
                    stub = _Stub(step=step, file=name, size=size, sha256=sha)
                    write_atomically(path, lambda fh, b=stub.encode(): fh.write(b))
            if self._staged:
                fsync_dir(tag_dir)
            return True
        finally:
            self._discard()
            self._tag_dir = None  # a save() after this, without a create(), is not part of this tag

    def _discard(self) -> None:
        part, st = self._part, self._store
        self._part, self._store, self._staged = None, None, []
        try:
            if part is not None:
                part.close()
        finally:
            if st is not None:
                st.close()

    # -- loading -------------------------------------------------------

    def load(self, path: str, map_location: Any = None) -> Any:
        # weights_only=False, as TorchCheckpointEngine: DeepSpeed's own
        # states pickle its config, argparse namespaces and other objects.
        path = os.fspath(path)
        kind, stub = _classify(path)
        if kind == "plain":
            return torch.load(path, map_location=map_location, weights_only=False)
        with tempfile.TemporaryDirectory(prefix="tpde-deepspeed-") as tmp:
            plain = os.path.join(tmp, os.path.basename(path))
            if kind == "tpde":
                with _naming(path):
                    decompress_file(path, plain, threads=self.threads)
            else:
                _from_store(path, kind, stub, plain, self.threads)
            return torch.load(plain, map_location=map_location, weights_only=False)


def _commit_parts(store_path: str, tag_dir: str, tag: str, gathered: List[Any], error: Optional[BaseException],
                  threads: int) -> Tuple[Any, Optional[BaseException]]:
    """Rank 0: commit every rank's part as one checkpoint held by tag_dir.
    Returns (the outcome every rank gets, the exception rank 0 raises)."""
    failures = [why for _, why in gathered if why]
    if failures:
        return {"error": "; ".join(failures)}, error
    descs = [d for d, _ in gathered if d is not None]
    if not descs:
        return {}, None  # no file of this save lies in the tag folder
    try:
        with Store(store_path, threads=threads) as st:
            if is_s3(store_path):
                # Held by the folder's pointer, never reclaimed by it.
                info = st.commit(descs, holder=tag_dir, tags=[tag])
                return {"step": info.step, "files": {f.path: [f.size, f.sha256] for f in info.files}}, None
            holder = os.path.relpath(tag_dir, os.path.dirname(os.path.abspath(store_path)))
            info = st.commit(descs, holder=holder, tags=[tag])
            try:
                st.reclaim()
            except TPDEError as e:
                # The tag is saved; what no folder holds stays until the
                # next save or `tpde verify --repair` reclaims it.
                warnings.warn(f"{store_path}: reclaiming checkpoints no tag folder holds failed: {e}", stacklevel=3)
    except Exception as e:  # noqa: BLE001 - every rank must hear of it
        return {"error": _describe(e, 0)}, e
    return {"step": info.step, "files": {f.path: [f.size, f.sha256] for f in info.files}}, None


def _describe(e: Optional[BaseException], rank: int) -> Optional[str]:
    return None if e is None else f"rank {rank}: {type(e).__name__}: {e}"


def _distributed() -> Any:
    """torch.distributed when a process group is up with more than one
    rank (DeepSpeed's comm layer runs on it), else None."""
    import torch.distributed as td

    if td.is_available() and td.is_initialized() and td.get_world_size() > 1:
        return td
    return None


def _all_gather(dist: Any, obj: Any) -> List[Any]:
    if dist is None:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _broadcast(dist: Any, obj: Any) -> Any:
    if dist is None:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- reading the files of a tag folder ----------------------------------------

def _classify(path: str) -> Tuple[str, Optional[_Stub]]:
    """("plain" | "tpde" | "stub" | "missing", the stub). A file that
    starts like JSON must be a valid stub (CorruptDataError otherwise):
    neither a torch zip nor a pickle starts with "{"."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return "missing", None
    with fh:
        head = fh.read(len(_FILE_MAGIC))
        if head == _FILE_MAGIC:
            return "tpde", None
        if not head.lstrip().startswith(b"{"):
            return "plain", None
        fh.seek(0)
        return "stub", _parse_stub(fh.read(_STUB_MAX_BYTES + 1), path)


def _parse_stub(data: bytes, path: str) -> _Stub:
    def unique(pairs: List[Tuple[str, Any]]) -> Any:
        d = dict(pairs)
        if len(d) != len(pairs):
            raise ValueError("a key is repeated")
        return d

    try:
        if len(data) > _STUB_MAX_BYTES:
            raise ValueError(f"over {_STUB_MAX_BYTES} bytes")
        d = json.loads(data.decode("utf-8"), object_pairs_hook=unique)
        if not isinstance(d, dict) or d.get("format") != STUB_FORMAT:
            raise ValueError(f"format {d.get('format') if isinstance(d, dict) else type(d).__name__!r}")
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptDataError(f"{path}: neither a torch file nor a valid tpde stub ({e})") from None
    version = d.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > 1:
        raise UnsupportedFormatError(f"{path}: a tpde stub of version {version}; this tpde reads version 1")
    want = {"format", "version", "step", "file", "size", "sha256"}
    step, name, size, sha = d.get("step"), d.get("file"), d.get("size"), d.get("sha256")
    if (set(d) != want or version != 1 or type(step) is not int or not 0 <= step <= _store.MAX_STEP
            or type(size) is not int or size < 0 or not isinstance(sha, str) or not _SHA256.match(sha)
            or not isinstance(name, str)):
        raise CorruptDataError(f"{path}: a damaged tpde stub (fields {sorted(d)}, or one of the wrong type)")
    if name != os.path.basename(path):
        raise CorruptDataError(f"{path}: the tpde stub of another file ({name!r}): it was renamed or copied here")
    return _Stub(step=step, file=name, size=size, sha256=sha)


def _pointer(folder: str) -> Optional[Mapping[str, Any]]:
    """The folder's store pointer, or None when it has none."""
    try:
        return _store.read_pointer(folder)
    except TPDEIOError as e:
        if e.errno == errno.ENOENT:
            return None
        raise


def _from_store(path: str, kind: str, stub: Optional[_Stub], dest: str, threads: int) -> None:
    """Write the file at path (a stub, or missing) as the store holds it for
    its folder's checkpoint to dest, byte for byte."""
    folder, name = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    ptr = _pointer(folder)
    if ptr is None:
        if kind == "missing":
            raise TPDEIOError(errno.ENOENT, f"{path}: no such file (and {folder} holds no tpde checkpoint)")
        raise CorruptDataError(f"{path}: a tpde stub, but {folder} has no {POINTER_NAME} naming the store that "
                               "holds the file")
    with _opened(ptr, path) as (st, step, files):
        if name not in files:
            if kind == "missing":
                raise TPDEIOError(errno.ENOENT, f"{path}: no such file (nor in checkpoint {step} of {st.path}, "
                                                "which the folder holds)")
            raise CorruptDataError(f"{path}: a tpde stub, but checkpoint {step} of {st.path} has no file {name!r}")
        _check_stub(stub, path, step, files[name])
        _restore_file(st, step, name, dest, force=False, where=path)


@contextlib.contextmanager
def _opened(ptr: Mapping[str, Any], where: str) -> Iterator[Tuple[Store, int, Mapping[str, Any]]]:
    """The pointer's store, step and {file: FileInfo}; a store or step that
    is gone is a dangling pointer (CorruptDataError naming where)."""
    step, store_path = ptr["step"], ptr["store"]
    with Store(store_path) as st:
        try:
            info = st.info(step)
        except (InvalidArgumentError, TPDEIOError) as e:  # no such store or step
            if isinstance(e, TPDEIOError) and e.errno != errno.ENOENT:
                raise
            raise CorruptDataError(f"{where}: its folder holds checkpoint {step} of the tpde store {store_path}, "
                                   f"which cannot be read: {e}") from e
        yield st, info.step, {f.path: f for f in info.files}


def _check_stub(stub: Optional[_Stub], path: str, step: int, f: Any) -> None:
    if stub is None:
        return
    if stub.step != step:
        raise CorruptDataError(f"{path}: the stub of checkpoint {stub.step}, but its folder holds checkpoint {step} "
                               "(the tag was saved again without this file)")
    if (stub.size, stub.sha256) != (f.size, f.sha256):
        raise CorruptDataError(f"{path}: checkpoint {step} of the store holds another {stub.file} than the stub "
                               "records (size or sha256 differ)")


def _restore_file(st: Store, step: int, name: str, dest: str, *, force: bool, where: str) -> None:
    """Store.restore of one file of checkpoint step to the path dest (all
    or nothing, checked against its sha256). Store.restore takes a whole
    checkpoint only; the C API restores one file, so that a rank reads its
    own file and not every rank's."""
    try:
        with _store._naming(st.path), st._reader() as rd:
            call("tpde_store_restore", rd.handle, step, name.encode("utf-8"), os.fsencode(dest), 1 if force else 0,
                 None)
    except TPDEError as e:
        raise _store._renamed(e, f"{where}: checkpoint {step}") from e


# --- configuration --------------------------------------------------------

def compression_enabled(config: Mapping[str, Any]) -> bool:
    """Whether a DeepSpeed config dict's "checkpoint": {"compression": {...}}
    block turns tpde on; raises InvalidArgumentError for a block tpde cannot
    honour.

        compression_enabled({"checkpoint": {"compression": {"enabled": True, "method": "tpde"}}})  # True

    Keys: enabled (bool, default False, as DeepSpeed's own "enabled" flags),
    method ("tpde", the default), threshold (0 only), store (an
    "s3://bucket/prefix" store instead of save_dir/.tpde-store). A threshold > 0 would
    be lossy coding; it is refused rather than supported because a
    DeepSpeed checkpoint is what a run resumes from: master weights and
    optimizer moments off by even one ulp change every step after the
    resume. Lossy archives belong in tpde.Store(lossy=...), which records
    each bound.
    """
    block = (config.get("checkpoint") or {}).get("compression")
    if block is None:
        return False
    where = 'the DeepSpeed config\'s "checkpoint": {"compression": ...}'
    if not isinstance(block, Mapping):
        raise InvalidArgumentError(f"{where} must be a dict, not {block!r}")
    unknown = sorted(set(block) - {"enabled", "method", "threshold", "store"})
    if unknown:
        raise InvalidArgumentError(f"{where} has unknown keys {unknown} (known: enabled, method, threshold, store)")
    store = block.get("store")
    if store is not None and not (isinstance(store, str) and is_s3(store)):
        raise InvalidArgumentError(f"{where}: store must be an s3://bucket/prefix URL (a local store is "
                                   f"save_dir/{STORE_NAME}), not {store!r}")
    enabled = block.get("enabled", False)
    if not isinstance(enabled, bool):
        raise InvalidArgumentError(f"{where}: enabled must be true or false, not {enabled!r}")
    method = block.get("method", "tpde")
    if method != "tpde":
        raise InvalidArgumentError(f"{where}: method {method!r} is not supported (only \"tpde\")")
    threshold = block.get("threshold", 0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
        raise InvalidArgumentError(f"{where}: threshold must be a number >= 0, not {threshold!r}")
    if threshold > 0:
        raise InvalidArgumentError(
            f"{where}: threshold {threshold!r} asks for lossy checkpoints, which the DeepSpeed engine refuses: "
            "a resume must continue the run bit for bit. Remove threshold (tpde is lossless), or store an "
            "archive copy with tpde.Store(lossy=...)")
    return enabled


def install(engine: Any, *, threads: int = 0, store: Optional[str] = None) -> Any:
    """Make a DeepSpeed engine checkpoint through tpde, and return it.

        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        install(engine)

    It installs unconditionally (call it only when wanted); a
    "checkpoint": {"compression": ...} block in the engine's config is
    still checked, so a lossy threshold or another method is an error
    rather than silently ignored. store: an "s3://bucket/prefix" store
    (default: the block's "store", else save_dir/.tpde-store).
    """
    compression_enabled(engine._config._param_dict)
    if store is None:
        store = ((engine._config._param_dict.get("checkpoint") or {}).get("compression") or {}).get("store")
    engine.checkpoint_engine = TPDECheckpointEngine(engine._config, threads=threads, store=store)
    return engine


def initialize(**kwargs: Any) -> Tuple[Any, ...]:
    """deepspeed.initialize(**kwargs), then install() when the config's
    "checkpoint": {"compression": {"enabled": true, "method": "tpde"}}
    block says so. Returns deepspeed.initialize's tuple.

        engine, optimizer, _, _ = initialize(model=model, optimizer=opt, config=config)

    DeepSpeed ignores unknown keys of its "checkpoint" section, so the
    block is left in the config (DeepSpeed saves the config in its ZeRO
    files) and read back from the parsed config, whatever form the config
    was given in (dict, JSON path, args.deepspeed_config).
    """
    result = deepspeed.initialize(**kwargs)
    engine = result[0]
    if compression_enabled(engine._config._param_dict):
        install(engine)
    return result


def is_tpde_file(path: PathLike) -> bool:
    """Whether path is a tpde file (by its magic bytes): what the earlier
    per-file engine wrote for every file."""
    with open(path, "rb") as fh:
        return fh.read(len(_FILE_MAGIC)) == _FILE_MAGIC


# --- materialize ----------------------------------------------------------

def materialize(path: PathLike, dest: Optional[PathLike] = None, tag: Optional[str] = None) -> Path:
    """Make a DeepSpeed checkpoint's files plain torch files again, for
    tools that torch.load them directly (zero_to_fp32.py, zero_to_torch.py).

    path is the checkpoint folder (save_dir: the tag is tag=, else the one
    in path/latest) or a tag folder itself (when it has no ``latest``).

    dest None: in place. Each stub in the tag folder (and each file of its
    store checkpoint the folder lacks) is replaced by the file the store
    holds, each file written atomically and checked against its sha256
    (as Store.restore(step, folder, force=True) writes them); a tpde file of
    the earlier per-file engine is decoded over itself. The folder keeps
    its pointer, so the store keeps its checkpoint. Returns the tag folder.

        materialize("ckpt")
        # python ckpt/zero_to_fp32.py ckpt out/   (or get_fp32_state_dict_from_zero_checkpoint("ckpt"))

    dest given: a plain copy, dest/<tag>/ with every file of the tag, the
    recovery scripts, and dest/latest naming the tag (written last, so a
    dest with a latest file holds the whole tag). Returns dest.
    """
    src = Path(path)
    tag_dir, tag = _tag_folder(src, tag)
    files = _tag_files(tag_dir)
    if dest is None:
        ptr = _pointer(str(tag_dir))
        todo = [(rel, kind, stub) for rel, kind, stub in files if kind != "plain"]
        _write_plain(tag_dir, ptr, todo, lambda rel: tag_dir / rel, in_place=True)
        return tag_dir
    out = Path(dest)
    if out.resolve() == src.resolve() or out.resolve() == tag_dir.resolve():
        raise InvalidArgumentError(f"{dest}: a copy needs a destination other than the checkpoint folder "
                                   "(dest=None materializes in place)")
    ptr = _pointer(str(tag_dir))
    for rel, kind, _ in files:
        if kind == "plain":
            target = out / tag / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _copy_atomically(tag_dir / rel, target)
    _write_plain(tag_dir, ptr, [f for f in files if f[1] != "plain"], lambda rel: out / tag / rel, in_place=False)
    save_dir = tag_dir.parent
    for script in RECOVERY_SCRIPTS:
        if (save_dir / script).is_file():
            _copy_atomically(save_dir / script, out / script)
    write_atomically(out / "latest", lambda fh: fh.write(tag.encode("utf-8")))
    return out


def _tag_folder(src: Path, tag: Optional[str]) -> Tuple[Path, str]:
    if tag is None and (src / "latest").is_file():
        tag = (src / "latest").read_text().strip()
    if tag is None:
        if (src / STORE_NAME).is_dir():
            raise InvalidArgumentError(f"{src}: a checkpoint folder without a latest file; pass tag= to name the "
                                       "tag to materialize")
        tag_dir = src  # a tag folder itself
        tag = src.resolve().name
    else:
        tag_dir = src / tag
    if not tag_dir.is_dir():
        raise TPDEIOError(errno.ENOENT, f"{tag_dir}: no such checkpoint folder")
    return tag_dir, tag


def _tag_files(tag_dir: Path) -> List[Tuple[str, str, Optional[_Stub]]]:
    """(relative path, kind, stub) of every file of a tag folder but the
    pointer and what a save killed midway left behind."""
    out = []
    for p in sorted(tag_dir.rglob("*")):
        rel = p.relative_to(tag_dir)
        if p.is_dir() or any(part.startswith(_STAGING_PREFIX) or ".tpde-restore-" in part for part in rel.parts):
            continue
        if rel.as_posix() == POINTER_NAME or ".tpde-tmp-" in p.name:
            continue
        kind, stub = _classify(str(p)) if p.parent == tag_dir else ("plain", None)
        out.append((rel.as_posix(), kind, stub))
    return out


def _write_plain(tag_dir: Path, ptr: Optional[Mapping[str, Any]], todo: List[Tuple[str, str, Optional[_Stub]]],
                 target: Any, *, in_place: bool) -> None:
    """Write each stub or tpde file of todo, and each file of the folder's
    checkpoint the folder lacks, as its plain torch file at target(rel)."""
    stubs = [(rel, stub) for rel, kind, stub in todo if kind == "stub"]
    for rel, kind, _ in todo:
        if kind == "tpde":
            dst = Path(target(rel))
            dst.parent.mkdir(parents=True, exist_ok=True)
            with _naming(tag_dir / rel):
                if in_place:
                    # Decoded beside it, then renamed over it: the folder
                    # always holds one complete form of the file.
                    tmp = dst.with_name(f".{dst.name}.tpde-tmp-{os.getpid()}")
                    try:
                        decompress_file(tag_dir / rel, tmp, overwrite=True)
                        os.replace(tmp, dst)
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                else:
                    decompress_file(tag_dir / rel, dst, overwrite=True)
    if ptr is None:
        if stubs:
            raise CorruptDataError(f"{tag_dir / stubs[0][0]}: a tpde stub, but {tag_dir} has no {POINTER_NAME} "
                                   "naming the store that holds the file")
        return
    present = {rel for rel, _, _ in _tag_files(tag_dir)}
    with _opened(ptr, str(tag_dir)) as (st, step, files):
        for rel, stub in stubs:
            if rel not in files:
                raise CorruptDataError(f"{tag_dir / rel}: a tpde stub, but checkpoint {step} of {st.path} has no "
                                       f"file {rel!r}")
            _check_stub(stub, str(tag_dir / rel), step, files[rel])
        for rel in sorted(files):
            if rel in present and rel not in dict(stubs):
                continue  # a plain file (already materialized, or saved again since)
            dst = Path(target(rel))
            dst.parent.mkdir(parents=True, exist_ok=True)
            _restore_file(st, step, rel, str(dst), force=True, where=str(tag_dir / rel))
    if in_place:
        fsync_dir(tag_dir)


@contextlib.contextmanager
def _naming(path: PathLike) -> Iterator[None]:
    """Re-raise a tpde error with the checkpoint file's path in its message,
    keeping its class: a save's errors name the staging copy the library
    read, not the path DeepSpeed asked for."""
    try:
        yield
    except TPDEError as e:
        name = os.fspath(path)
        if name in str(e):
            raise
        if isinstance(e, OSError) and e.errno is not None:
            raise type(e)(e.errno, f"{name}: {e}") from e
        raise type(e)(f"{name}: {e}") from e


def _copy_atomically(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh:
        write_atomically(dst, lambda out: shutil.copyfileobj(fh, out))
    os.chmod(dst, os.stat(src).st_mode & 0o7777)
