"""Lightning: checkpoints kept in a tpde store.

    import lightning.pytorch as pl          # or: import pytorch_lightning as pl
    from tpde.integrations.lightning import TPDECheckpointIO, TPDECallback, load_from_store, materialize

    # Every ModelCheckpoint save goes into the store; resume as usual.
    trainer = pl.Trainer(plugins=[TPDECheckpointIO("run.tpde")],
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath="ckpt", save_last=True)])
    trainer.fit(model)
    trainer.fit(model, ckpt_path="ckpt/last.ckpt")            # read back from the store
    model = load_from_store(MyModule, "ckpt/last.ckpt")       # what load_from_checkpoint gives

    # The design document's callback: the full training state every n epochs.
    trainer = pl.Trainer(callbacks=[TPDECallback(save_every_n_epochs=1, output_dir="ckpt.tpde")])
    trainer.fit(model, ckpt_path=materialize("ckpt.tpde", path="resume.ckpt"))   # newest by default

    # Either store may be in a bucket (docs/FORMAT.md §11.12; the AWS_* variables configure the client).
    trainer = pl.Trainer(plugins=[TPDECheckpointIO("s3://bucket/run")],
                         callbacks=[pl.callbacks.ModelCheckpoint(dirpath="ckpt", monitor="loss", save_top_k=2,
                                                                 save_last=True)])
    trainer.fit(model, ckpt_path="last")                      # ckpt/last.ckpt names the bucket's step

A store may be "s3://bucket/prefix": its checkpoints go to the bucket
(through the local cache $TPDE_S3_CACHE), while the files that name them
stay local: the pointers at ModelCheckpoint's dirpath and the .ckpt that
materialize writes. A URL where a local file is meant is refused.

Each store step holds the checkpoint as the torch.save file Lightning's
default plugin writes (checkpoint.ckpt): its tensors are delta-coded against
the previous save and every other byte is kept, so it comes back byte for
byte. With a lossy bound the model weights (checkpoint["state_dict"]) go to a
second file, state_dict.ckpt, the only one the bound applies to: optimizer
moments must stay exact (an absolute bound of 1e-3 would zero Adam's second
moments), so everything else stays lossless.

The classes derive from the Lightning classes of every installed flavour
(``lightning`` and the standalone ``pytorch_lightning``/``lightning_fabric``):
each Trainer checks plugins with isinstance against its own package, so one
class serves both.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import importlib.util
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, Union

import torch

from .._atomic import fsync_dir, write_atomically
from .._options import POSITION_CODINGS, code
from ..errors import CorruptDataError, InvalidArgumentError, TPDEIOError
from ..store import Store
from ..store.handle import _store_path, is_s3

__all__ = ["TPDECheckpointIO", "TPDECallback", "load_from_store", "materialize", "POINTER_FORMAT"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: The "format" of the small JSON file TPDECheckpointIO writes where Lightning
#: expects a .ckpt.
POINTER_FORMAT = "tpde-lightning-checkpoint"
#: The torch.save file every store step holds.
CHECKPOINT_FILE = "checkpoint.ckpt"
#: The model weights of a lossy step (the file the bound applies to).
WEIGHTS_FILE = "state_dict.ckpt"
_POINTER_MAX_BYTES = 1 << 16


def _flavours() -> Tuple[Tuple[Any, Any], ...]:
    """(fabric plugins.io module, pytorch callbacks module) of each installed
    Lightning flavour: the unified package, then the standalone ones."""
    found = []
    for fabric, pytorch in (("lightning.fabric", "lightning.pytorch"), ("lightning_fabric", "pytorch_lightning")):
        if all(importlib.util.find_spec(m.split(".")[0]) is not None for m in (fabric, pytorch)):
            found.append((importlib.import_module(f"{fabric}.plugins.io"),
                          importlib.import_module(f"{pytorch}.callbacks")))
    if not found:
        raise ImportError("tpde.integrations.lightning needs lightning or pytorch_lightning installed")
    return tuple(found)


_FLAVOURS = _flavours()
_CHECKPOINT_IO_BASES = tuple(io.CheckpointIO for io, _ in _FLAVOURS)
_CHECKPOINT_CALLBACK_BASES = tuple(cb.Checkpoint for _, cb in _FLAVOURS)
_TORCH_IO_CLASSES = tuple(io.TorchCheckpointIO for io, _ in _FLAVOURS)


# --- store steps ---------------------------------------------------------

def _lossy_bound(bound: Optional[float], what: str) -> Optional[float]:
    """None for lossless, else a positive finite absolute error bound."""
    if bound is None or bound == 0:
        return None
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not math.isfinite(bound) or bound < 0:
        raise InvalidArgumentError(f"{what} must be 0 (lossless) or a positive finite error bound, not {bound!r}")
    return float(bound)


def _store(path: str, bound: Optional[float], compression_method: str = "auto") -> Store:
    """A handle on the store at path; a lossy bound applies to WEIGHTS_FILE
    only. None means "as stored", so a lossless writer can add to a store
    created lossy (its files never match the rule)."""
    return Store(path, lossy={f"{WEIGHTS_FILE}:*": bound} if bound else None, compression_method=compression_method)


def _store_location(path: PathLike) -> str:
    """Where a store is: "s3://bucket/prefix" as given (served through a
    local cache, docs/FORMAT.md §11.12), else an absolute local path. Any
    other URL is refused, never taken for a folder named after its scheme."""
    s = _store_path(path)
    return s if is_s3(s) else os.path.abspath(s)


def _scratch_dir(beside: str) -> str:
    """A fresh hidden folder next to beside (same file system, so files
    written there are renamed into place, never copied)."""
    parent = os.path.dirname(os.path.abspath(beside))
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=f".{os.path.basename(os.path.abspath(beside))}.tpde-scratch-", dir=parent)


def _scratch_in(parent: str) -> str:
    """A fresh hidden folder in the local folder parent, for a checkpoint on
    its way to a store in a bucket. Its name holds no "last": in a
    ModelCheckpoint dirpath, Lightning takes any name with "last" in it for
    a last checkpoint (ckpt_path="last"), and one left by a crash must never
    be resumed from."""
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix=".tpde-scratch-", dir=parent)


def _split_weights(checkpoint: Dict[str, Any], folder: str) -> None:
    """Write checkpoint as CHECKPOINT_FILE (with "state_dict" set to None,
    keeping the key's place) plus WEIGHTS_FILE (the state dict)."""
    if "state_dict" not in checkpoint:
        raise InvalidArgumentError("a lossy bound applies to checkpoint['state_dict'], and this checkpoint has none")
    torch.save(checkpoint["state_dict"], os.path.join(folder, WEIGHTS_FILE))
    torch.save({k: (None if k == "state_dict" else v) for k, v in checkpoint.items()},
               os.path.join(folder, CHECKPOINT_FILE))


def _add_step(store_path: str, bound: Optional[float], folder: str, step: int, tags: List[str],
              compression_method: str = "auto") -> str:
    """Add folder (CHECKPOINT_FILE [+ WEIGHTS_FILE]) as store step; returns
    the sha256 of CHECKPOINT_FILE as stored."""
    with _store(store_path, bound, compression_method) as st:
        info = st.add(folder, step=step, tags=tags)
    return next(f.sha256 for f in info.files if f.path == CHECKPOINT_FILE)


def _held_steps(store_path: str) -> List[int]:
    """The steps the store holds; none when it does not exist yet (its
    first add creates it, in a folder or in a bucket alike)."""
    if not is_s3(store_path) and not os.path.exists(os.path.join(store_path, "tpde-store.json")):
        return []
    try:
        with Store(store_path) as st:
            return st.steps()
    except TPDEIOError as e:
        if not is_s3(store_path) or e.errno != errno.ENOENT:
            raise
        return []  # no manifest under the prefix: the bucket holds no store there yet


def _next_step(store_path: str, after: int) -> int:
    """A step above every step the store holds and above after: steps only
    grow, also for a resumed run adding to the store of an earlier one."""
    return max([after, *_held_steps(store_path)]) + 1


@contextlib.contextmanager
def _restored(store_path: str, step: Optional[int], where: str, sha256: Optional[str] = None,
              scratch_beside: Optional[str] = None) -> Iterator[str]:
    """The path of a real .ckpt holding store step (the newest when None),
    removed on exit. A lossless step is its CHECKPOINT_FILE as added
    (checked against sha256 when given); a lossy one is re-assembled with
    its decoded weights. where names what is being read, for errors."""
    folder = _scratch_dir(scratch_beside) if scratch_beside else tempfile.mkdtemp(prefix="tpde-lightning-")
    try:
        st = Store(store_path)
        try:
            info = st.info(step)
            st.restore(info.step, folder)
        except (InvalidArgumentError, TPDEIOError) as e:  # no such store or step: a dangling reference
            if isinstance(e, TPDEIOError) and e.errno != errno.ENOENT:
                raise
            raise CorruptDataError(f"{where}: checkpoint {'(newest)' if step is None else step} of the tpde store "
                                   f"{store_path} cannot be read: {e}") from e
        finally:
            st.close()
        names = sorted(f.path for f in info.files)
        if names not in ([CHECKPOINT_FILE], sorted([CHECKPOINT_FILE, WEIGHTS_FILE])):
            raise CorruptDataError(f"{where}: checkpoint {info.step} of {store_path} holds {names}, not a Lightning "
                                   f"checkpoint ({CHECKPOINT_FILE})")
        ckpt = os.path.join(folder, CHECKPOINT_FILE)
        # restore() has checked the file against the sha256 the store
        # recorded when it was added, so comparing records is enough.
        recorded = next(f.sha256 for f in info.files if f.path == CHECKPOINT_FILE)
        if sha256 is not None and recorded != sha256:
            raise CorruptDataError(f"{where}: checkpoint {info.step} of {store_path} does not have the sha256 the "
                                   "pointer records (the step was replaced, or the pointer edited)")
        if WEIGHTS_FILE in names:
            # Our own two files of one checkpoint, unpickled in full (as
            # weights_only=False would the .ckpt they came from), so that
            # whatever Lightning saved comes back.
            rest = torch.load(ckpt, map_location="cpu", weights_only=False)
            rest["state_dict"] = torch.load(os.path.join(folder, WEIGHTS_FILE), map_location="cpu", weights_only=True)
            torch.save(rest, ckpt)
        yield ckpt
    finally:
        shutil.rmtree(folder)


# --- pointers ------------------------------------------------------------

@dataclass(frozen=True)
class _Pointer:
    store: str
    step: int
    sha256: str

    def encode(self) -> bytes:
        return json.dumps({"format": POINTER_FORMAT, "version": 1, "store": self.store, "step": self.step,
                           "sha256": self.sha256}, indent=1).encode("utf-8") + b"\n"


def _read_pointer(path: str) -> Optional[_Pointer]:
    """The pointer at path, or None for another file (a plain torch
    checkpoint: a zip or a legacy pickle). Raises CorruptDataError for an
    empty file or a damaged pointer."""
    with open(path, "rb") as fh:
        head = fh.read(_POINTER_MAX_BYTES + 1)
    if not head:
        raise CorruptDataError(f"{path}: empty file, neither a tpde pointer nor a torch checkpoint")
    if not head.lstrip().startswith(b"{"):
        return None
    try:
        if len(head) > _POINTER_MAX_BYTES:
            raise ValueError(f"over {_POINTER_MAX_BYTES} bytes")
        d = json.loads(head.decode("utf-8"))
        if not isinstance(d, dict) or d.get("format") != POINTER_FORMAT or d.get("version") != 1:
            raise ValueError(f"format {d.get('format') if isinstance(d, dict) else d!r}")
        p = _Pointer(store=d["store"], step=d["step"], sha256=d["sha256"])
        if not (isinstance(p.store, str) and isinstance(p.step, int) and isinstance(p.sha256, str)
                and len(p.sha256) == 64):
            raise ValueError("a field of the wrong type")
        return p
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise CorruptDataError(f"{path}: a truncated or damaged tpde checkpoint pointer ({e})") from None


def _local_path(path: PathLike, what: str) -> str:
    """path as an absolute local path, for what must be a local file: a URL
    is refused (naming what), never made a folder named after its scheme.
    The store itself may be in a bucket; the files Lightning and the user
    name here are local."""
    s = os.fspath(path)
    if isinstance(s, bytes):
        s = os.fsdecode(s)
    if s.startswith("file://"):
        s = s[len("file://"):]
    elif "://" in s:
        raise InvalidArgumentError(
            f"{s}: {what} must be a local path, not a URL; a store may be s3://bucket/prefix, the files that "
            "name its checkpoints are local")
    return os.path.abspath(s)


_POINTER_PATH = "the checkpoint path of TPDECheckpointIO (where its pointer file goes: ModelCheckpoint's dirpath)"


def _keep_storage(storage: Any, location: str) -> Any:
    """TorchCheckpointIO's default map_location: tensors load on the CPU."""
    return storage


# --- the plugin ----------------------------------------------------------

class TPDECheckpointIO(*_CHECKPOINT_IO_BASES):  # type: ignore[misc]
    """A Lightning CheckpointIO plugin that keeps every checkpoint in the
    tpde store at store_dir.

        trainer = pl.Trainer(plugins=[TPDECheckpointIO("run.tpde")],
                             callbacks=[ModelCheckpoint(dirpath="ckpt", save_top_k=2, save_last=True)])
        trainer.fit(model)                                   # ckpt/*.ckpt are pointers
        trainer.fit(model, ckpt_path="ckpt/last.ckpt")       # or ckpt_path="last"

    At the path Lightning gives, a save writes a small JSON pointer (the
    store, the step, the sha256 of the checkpoint bytes) atomically, so
    Lightning's existence checks, ``ckpt_path="last"`` (newest last*.ckpt by
    mtime), save_top_k and remove_checkpoint behave as with the default
    plugin. Each save is a new store step (the same checkpoint saved as
    epoch=..ckpt and last.ckpt shares its tensors in the store); removing
    or overwriting a pointer removes its step. A plain .ckpt loads as the
    default plugin would.

    lossy: None (lossless, the default) or an absolute per-element error
    bound for the model weights, checkpoint["state_dict"], recorded in the
    store; the rest of the checkpoint stays exact. compression_method:
    how delta frames code the positions of changed elements ("auto",
    "dense" or "elias_delta_zstd"; see tpde.Store).

    store_dir may be "s3://bucket/prefix" (docs/FORMAT.md §11.12): the
    pointers stay at Lightning's local paths and name the bucket's store; a
    save passes through a scratch folder beside its pointer, and removing a
    pointer removes its step from the bucket's store. The paths Lightning
    hands the plugin must be local (a URL there is refused).

    Save and remove run on global rank 0 (Lightning calls them there only),
    each holding the store's writer lock for its duration (in a bucket,
    which has no lock, each commits with a conditional PUT); load runs on
    every rank and needs no lock. Under AsyncCheckpointIO a remove may
    arrive before its save has run: it is then applied when that save
    comes (a remove of a path that is never saved is remembered as well,
    so the next save of that path is dropped).
    """

    def __init__(self, store_dir: PathLike, compression_method: str = "auto", lossy: Optional[float] = None) -> None:
        super().__init__()
        code(POSITION_CODINGS, compression_method, "compression_method")
        self.compression_method = compression_method
        self.store_dir = _store_location(store_dir)
        self.lossy = _lossy_bound(lossy, "lossy")
        self._init_state()

    def _init_state(self) -> None:
        self._state = threading.Condition()  # guards the fields below; notified when a save ends
        self._store_lock = threading.Lock()  # one store writer at a time in this process
        self._last_step = -1
        self._saving: Dict[str, bool] = {}  # path -> a remove arrived while its save ran
        self._removed_early: Dict[str, int] = {}  # path -> thread that removed it before its save began
        self._drops: List[Tuple[str, int]] = []  # (store, step) no pointer references any more

    def __getstate__(self) -> Dict[str, Any]:  # ddp_spawn pickles the Trainer: locks stay behind
        return {"store_dir": self.store_dir, "lossy": self.lossy, "compression_method": self.compression_method}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: PathLike,
                        storage_options: Optional[Any] = None) -> None:
        """Add checkpoint to the store and write its pointer at path."""
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        dst = _local_path(path, _POINTER_PATH)
        with self._state:
            remover = self._removed_early.pop(dst, None)
            # A remove from another thread before this save began: AsyncCheckpointIO
            # ran the remove first. On the same thread it was a remove of a
            # path that did not exist then, and this is a new save.
            if remover is not None and remover != threading.get_ident():
                log.info("%s was removed before its save ran (AsyncCheckpointIO): not saved", dst)
                return
            self._saving[dst] = False
        try:
            # A bucket has no "beside": the scratch goes beside the pointer.
            folder = _scratch_in(os.path.dirname(dst)) if is_s3(self.store_dir) else _scratch_dir(self.store_dir)
            try:
                if self.lossy:
                    _split_weights(checkpoint, folder)
                else:
                    torch.save(checkpoint, os.path.join(folder, CHECKPOINT_FILE))
                with self._store_lock:
                    step = _next_step(self.store_dir, self._last_step)
                    tags = ["lightning", f"path={dst}", f"global_step={checkpoint.get('global_step')}"]
                    sha = _add_step(self.store_dir, self.lossy, folder, step, tags, self.compression_method)
                    self._last_step = step
            finally:
                shutil.rmtree(folder)
            with self._state:
                if self._saving[dst]:  # removed while being saved: it goes, as if removed right after
                    self._drops.append((self.store_dir, step))
                else:
                    old = self._old_pointer(dst)
                    os.makedirs(os.path.dirname(dst), exist_ok=True)
                    write_atomically(dst, lambda fh: fh.write(_Pointer(self.store_dir, step, sha).encode()))
                    if old is not None:
                        self._drops.append((old.store, old.step))
        finally:
            with self._state:
                del self._saving[dst]
                self._state.notify_all()
            self._drain()

    def load_checkpoint(self, path: PathLike, map_location: Optional[Any] = _keep_storage,
                        weights_only: Optional[bool] = None) -> Dict[str, Any]:
        """The checkpoint at path: through its pointer from the store (its
        sha256 checked), or a plain .ckpt as TorchCheckpointIO loads it.
        map_location and weights_only are torch.load's; by default tensors
        load on the CPU, as with the default plugin."""
        s = os.fspath(path)
        where = None if "://" in s and not s.startswith("file://") else _local_path(s, _POINTER_PATH)
        # A missing path, a folder or a remote URL: the default plugin's answer.
        pointer = _read_pointer(where) if where is not None and os.path.isfile(where) else None
        if pointer is None:
            return _TORCH_IO_CLASSES[0]().load_checkpoint(path, map_location=map_location, weights_only=weights_only)
        with _restored(pointer.store, pointer.step, where, sha256=pointer.sha256) as ckpt, open(ckpt, "rb") as fh:
            return torch.load(fh, map_location=map_location, weights_only=weights_only)

    def remove_checkpoint(self, path: PathLike) -> None:
        """Delete the pointer at path and the store step it names. A plain
        file or folder is removed as the default plugin does."""
        dst = _local_path(path, _POINTER_PATH)
        with self._state:
            if dst in self._saving:
                self._saving[dst] = True
            if os.path.islink(dst):  # save_last="link": the step belongs to the link's target
                os.unlink(dst)
                return
            if not os.path.exists(dst):
                if dst not in self._saving:
                    self._removed_early[dst] = threading.get_ident()
                return
            if os.path.isdir(dst):  # not a pointer (a sharded checkpoint): as the default plugin does
                shutil.rmtree(dst)
                return
            old = self._old_pointer(dst)  # None for a plain .ckpt
            os.unlink(dst)
            if old is not None:
                self._drops.append((old.store, old.step))
            busy = bool(self._saving)
        if not busy:  # else the save under way drops it when it ends
            self._drain()

    def teardown(self) -> None:
        """Wait for saves under way, then remove the steps nothing points to."""
        with self._state:
            self._state.wait_for(lambda: not self._saving)
            self._removed_early.clear()
        self._drain()

    def _old_pointer(self, dst: str) -> Optional[_Pointer]:
        """The pointer at dst that is about to be overwritten or removed;
        None if there is none (or a plain file). A damaged one is replaced
        all the same, with a warning: the step it named cannot be known."""
        if not os.path.isfile(dst):
            return None
        try:
            return _read_pointer(dst)
        except CorruptDataError as e:
            log.warning("%s; replacing it (the store step it named, if any, stays in the store)", e)
            return None

    def _drain(self) -> None:
        """Remove the store steps whose pointers are gone."""
        with self._store_lock:
            with self._state:
                drops, self._drops = self._drops, []
            for store_path, step in drops:
                with Store(store_path) as st:
                    if step in st.steps():
                        st.remove(step)
                    else:
                        log.warning("checkpoint %d of the tpde store %s was already gone", step, store_path)


# --- the callback --------------------------------------------------------

class TPDECallback(*_CHECKPOINT_CALLBACK_BASES):  # type: ignore[misc]
    """The design document's callback: every save_every_n_epochs epochs the
    full training checkpoint (what trainer.save_checkpoint writes) goes
    into the tpde store at output_dir.

        trainer = pl.Trainer(max_epochs=50, strategy="ddp", callbacks=[
            TPDECallback(save_every_n_epochs=1, compression_threshold=0.0, output_dir="checkpoints_compressed")])
        trainer.fit(model, train_loader)
        trainer.fit(model, train_loader, ckpt_path=materialize("checkpoints_compressed", path="resume.ckpt"))

    It saves at the end of the training epoch, as ModelCheckpoint does by
    default (ModelCheckpoint waits for validation only to read monitored
    metrics, which this callback has none of). Each save is the next store
    step, tagged epoch=E and global_step=N. Every rank takes part in
    trainer.save_checkpoint (a strategy may gather there); global rank 0
    alone adds to the store. Being a Checkpoint callback, it replaces the
    Trainer's default ModelCheckpoint.

    output_dir may be "s3://bucket/prefix": the checkpoint passes through a
    scratch folder in the Trainer's default_root_dir on its way there.

    compression_threshold: 0.0, the default, is bit-exact. A value > 0 is
    the absolute per-element error bound of the model weights
    (checkpoint["state_dict"]) in older checkpoints, recorded in the store
    (tpde.Store(output_dir).info(step).max_error); the newest checkpoint
    and all optimizer and loop state stay exact.
    """

    def __init__(self, save_every_n_epochs: int = 1, compression_threshold: float = 0.0,
                 output_dir: PathLike = "checkpoints_compressed") -> None:
        super().__init__()
        if isinstance(save_every_n_epochs, bool) or not isinstance(save_every_n_epochs, int) or save_every_n_epochs < 1:
            raise InvalidArgumentError(f"save_every_n_epochs must be an int >= 1, not {save_every_n_epochs!r}")
        self.save_every_n_epochs = save_every_n_epochs
        self.compression_threshold = _lossy_bound(compression_threshold, "compression_threshold")
        self.output_dir = _store_location(output_dir)
        if self.compression_threshold:
            warnings.warn(f"TPDECallback(compression_threshold={compression_threshold}) stores model weights LOSSY "
                          f"(each element within {compression_threshold} of the original in older checkpoints); "
                          "pass 0.0 for bit-exact checkpoints", UserWarning, stacklevel=2)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        # trainer.save_checkpoint must leave a finished torch file when it
        # returns: not a pointer, not a save still running on a thread.
        if not isinstance(io, _TORCH_IO_CLASSES):
            raise InvalidArgumentError(f"TPDECallback saves through trainer.save_checkpoint and needs the default "
                                       f"TorchCheckpointIO, not {type(io).__name__}; with a TPDECheckpointIO plugin "
                                       "use ModelCheckpoint instead")

    def _scratch(self, trainer: Any) -> str:
        """Rank 0's folder for the checkpoint on its way into the store:
        beside a local store, else in the Trainer's default_root_dir (the
        system's temporary folder if that is a URL too)."""
        if not is_s3(self.output_dir):
            return _scratch_dir(self.output_dir)
        root = os.fspath(trainer.default_root_dir)
        return _scratch_in(tempfile.gettempdir() if "://" in root else os.path.abspath(root))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run or (trainer.current_epoch + 1) % self.save_every_n_epochs:
            return
        # Every rank saves to the same path (rank 0's scratch folder): a
        # strategy may gather there; only global rank 0 writes the file.
        folder = self._scratch(trainer) if trainer.is_global_zero else None
        folder = trainer.strategy.broadcast(folder, src=0)
        ckpt = os.path.join(folder, CHECKPOINT_FILE)
        try:
            trainer.save_checkpoint(ckpt)
            if not trainer.is_global_zero:
                return
            if not os.path.isfile(ckpt):
                raise InvalidArgumentError(f"trainer.save_checkpoint wrote no single file at {ckpt} (a sharded "
                                           "strategy writes folders): TPDECallback stores single-file checkpoints")
            if self.compression_threshold:
                _split_weights(torch.load(ckpt, map_location="cpu", weights_only=False), folder)
            _add_step(self.output_dir, self.compression_threshold, folder, _next_step(self.output_dir, -1),
                      [f"epoch={trainer.current_epoch}", f"global_step={trainer.global_step}"])
        finally:
            if trainer.is_global_zero:
                shutil.rmtree(folder)


# --- reading back --------------------------------------------------------

def _source(path_or_store: PathLike, step: Optional[int]) -> Optional[Tuple[str, Optional[int], Optional[str], str]]:
    """(store, step, sha256 to check, what to name in errors) of a store
    (a folder or s3://bucket/prefix) or a pointer file; None for a plain
    checkpoint file."""
    s = _store_path(path_or_store)  # a URL other than s3:// is refused
    if is_s3(s):
        return s, step, None, s
    p = os.path.abspath(s)
    if os.path.isdir(p):
        return p, step, None, p
    if not os.path.exists(p):
        raise InvalidArgumentError(f"{p}: no such store or checkpoint")
    pointer = _read_pointer(p)
    if pointer is None:
        return None
    if step is not None:
        raise InvalidArgumentError(f"{p} is a pointer to one checkpoint; step= is for a store folder")
    return pointer.store, pointer.step, pointer.sha256, p


def materialize(store_dir: PathLike, step: Optional[int] = None, *, path: PathLike) -> Path:
    """Write checkpoint step of a store (the newest when None) as a real
    .ckpt at path, atomically, and return path: for trainer.fit(ckpt_path=)
    without the plugin, or to hand a checkpoint on. store_dir may be a
    folder, "s3://bucket/prefix" or a TPDECheckpointIO pointer (step then
    None); path is a local file.

        trainer.fit(model, ckpt_path=materialize("checkpoints_compressed", step=3, path="resume.ckpt"))
    """
    src = _source(store_dir, step)
    if src is None:
        raise InvalidArgumentError(f"{os.fspath(store_dir)} is a plain checkpoint already, not a tpde store or pointer")
    store, st_step, sha, where = src
    dst = _local_path(path, "materialize's path (the .ckpt it writes)")
    with _restored(store, st_step, where, sha256=sha, scratch_beside=dst) as ckpt:
        os.replace(ckpt, dst)
    fsync_dir(os.path.dirname(dst))
    return Path(dst)


def load_from_store(cls: Any, path_or_store: PathLike, step: Optional[int] = None, **kwargs: Any) -> Any:
    """cls.load_from_checkpoint on a checkpoint kept by tpde: a
    TPDECheckpointIO pointer (load_from_checkpoint itself calls torch.load
    on the path, which cannot read a pointer), or step of a store (a folder
    or "s3://bucket/prefix"; the newest when None); a plain .ckpt is passed through. kwargs go to
    load_from_checkpoint (map_location, strict, hparams overrides, ...).

        model = load_from_store(MyModule, "ckpt/last.ckpt")
        model = load_from_store(MyModule, "checkpoints_compressed", step=3, map_location="cpu")
    """
    src = _source(path_or_store, step)
    if src is None:
        return cls.load_from_checkpoint(os.fspath(path_or_store), **kwargs)
    store, st_step, sha, where = src
    with _restored(store, st_step, where, sha256=sha) as ckpt:
        return cls.load_from_checkpoint(ckpt, **kwargs)
