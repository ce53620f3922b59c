"""Hugging Face Trainer integration: every checkpoint the Trainer saves goes into a tpde store.

    from transformers import Trainer
    from tpde.integrations.hf import TPDETrainerCallback, materialize

    trainer = Trainer(model=model, args=training_args, train_dataset=ds,
        callbacks=[TPDETrainerCallback(compression_output_dir="./checkpoints_compressed",
                                       enable_profiling=True)])
    trainer.train()
    # resume from any stored step: the files come back byte for byte
    path = materialize("./checkpoints_compressed", 20, output_dir=training_args.output_dir)
    trainer.train(resume_from_checkpoint=str(path))

The callback uses the Trainer's official hooks only (TrainerCallback events);
it never patches the Trainer. Each checkpoint-N folder is added to the store
on a background thread, while training goes on; older folders are deleted
once they are safely in the store (keep_last_uncompressed).
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..checkpoint import COMPRESSION_METHODS
from ..errors import InvalidArgumentError, TPDEError, TPDEIOError
from ..store import Store
from ..store.handle import PRIORITIES, is_s3

__all__ = ["TPDETrainerCallback", "materialize"]

PathLike = Union[str, "os.PathLike[str]"]

#: What the Trainer's rotation (sort_checkpoints globs "checkpoint-*") and
#: resume treat as a checkpoint folder: nothing of tpde may be named so.
_CHECKPOINT_GLOB = "checkpoint-*"


class TPDETrainerCallback(TrainerCallback):
    """Adds each checkpoint the Trainer saves to the tpde store at
    compression_output_dir (None: <output_dir>/tpde-store). In a
    hyperparameter search (run with hp_name=) each trial has its own store:
    <output_dir>/<trial name>/tpde-store, or <compression_output_dir>/<trial name>.
    compression_output_dir may be "s3://bucket/prefix": the Trainer writes
    its folders locally, and the run lands compressed in the bucket
    (docs/FORMAT.md §11.12; configured by the AWS_* variables).

    keep_last_uncompressed: how many of the newest checkpoint-N folders to
    leave on disk; older ones are deleted once their add has committed (0
    deletes every one, the newest too, once stored). The best checkpoint
    (state.best_model_checkpoint) is kept while training runs, since the
    Trainer loads it from its folder at the end.
    compression_method ("auto", "dense", "elias_delta_zstd") and lossy
    ({tensor-name pattern: absolute error bound}) are passed to tpde.Store.
    enable_profiling: after each checkpoint is stored, its figures
    (tpde/step, tpde/ratio, tpde/original_bytes, tpde/stored_bytes: how much
    the store grew on disk, tpde/seconds) go into the next log call: its
    logs dict and its state.log_history entry. The Trainer calls the
    report_to integrations before user callbacks, so they miss them; to send
    them to one, list it after this callback: report_to=[],
    callbacks=[TPDETrainerCallback(...), TensorBoardCallback()].
    callback.profile holds the figures in any case.

        cb = TPDETrainerCallback(keep_last_uncompressed=1, enable_profiling=True)
        Trainer(model=model, args=args, train_dataset=ds, callbacks=[cb]).train()
        print(cb.profile[-1])  # {'step': 30, 'ratio': ..., 'original_bytes': ..., 'stored_bytes': ..., 'seconds': ...}

    priority ("idle", the default: SCHED_IDLE, so that coding takes only
    cores training leaves idle; "low": nice 19; "normal") and threads (how
    many threads the coding may use; 0, the default: every core) keep the
    background add out of training's way (Linux). While the Trainer waits
    for an add, its cores are idle and the add gets them all.

    The add of checkpoint N runs on one background thread; the Trainer waits
    for it just before it writes the next checkpoint (before its rotation can
    delete folder N) and before training ends. An add that failed is raised
    there as a TPDEError naming the checkpoint, chained to the original.
    In multi-process runs every rank waits at a barrier in on_save (the
    Trainer has none), then only the world's main process writes.
    """

    def __init__(self, compression_output_dir: Optional[PathLike] = None, keep_last_uncompressed: int = 1,
                 enable_profiling: bool = False, compression_method: str = "auto",
                 lossy: Optional[Mapping[str, float]] = None, *, priority: str = "idle", threads: int = 0) -> None:
        if compression_output_dir is not None:
            _refuse_checkpoint_name(os.fspath(compression_output_dir))
        if isinstance(keep_last_uncompressed, bool) or not isinstance(keep_last_uncompressed, int) \
                or keep_last_uncompressed < 0:
            raise InvalidArgumentError(f"keep_last_uncompressed must be an int >= 0, not {keep_last_uncompressed!r}")
        if compression_method not in COMPRESSION_METHODS:
            raise InvalidArgumentError(f"compression_method must be one of {sorted(COMPRESSION_METHODS)}, "
                                       f"not {compression_method!r}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise InvalidArgumentError(f"threads must be an int >= 0, not {threads!r}")
        if priority not in PRIORITIES:
            raise InvalidArgumentError(f"priority must be one of {', '.join(map(repr, PRIORITIES))}, "
                                       f"not {priority!r}")
        self.priority = priority
        self.threads = threads
        self.compression_output_dir = compression_output_dir
        self.keep_last_uncompressed = keep_last_uncompressed
        self.enable_profiling = enable_profiling
        self.compression_method = compression_method
        self.lossy = lossy
        #: One dict per stored checkpoint: step, ratio, original_bytes, stored_bytes, seconds.
        self.profile: List[Dict[str, float]] = []
        self._store: Optional[Store] = None
        self._worker: Optional[threading.Thread] = None
        self._job: Optional[Tuple[int, str]] = None  # (step, folder) of the add in flight
        self._failure: Optional[BaseException] = None
        self._folders: List[str] = []  # checkpoint folders this run saved and not yet deleted, oldest first
        self._committed: set = set()  # those of them whose add has committed
        self._unlogged: List[Dict[str, float]] = []  # profiling figures not yet in a log call

    # -- Trainer events ------------------------------------------------

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        run_dir = _run_dir(args, state)
        path = self._store_path(args, state, run_dir)
        self._store = Store(path, compression_method=self.compression_method, lossy=self.lossy,
                            threads=self.threads, priority=self.priority)
        held = _held_steps(self._store) if is_s3(path) or os.path.exists(os.path.join(path, "tpde-store.json")) else []
        if held and held[-1] > state.global_step:
            self._close_store()
            raise InvalidArgumentError(
                f"the tpde store {path} holds steps up to {held[-1]}, past this run's start at step "
                f"{state.global_step}: steps only grow in a store. Pass another compression_output_dir, or drop "
                f"the later steps with tpde.Store({path!r}).remove(step)")

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        # The Trainer runs its rotation inside the save that follows this
        # event, before on_save: the add in flight must be done by then, or
        # rotation could delete the folder it reads.
        if _save_may_follow(args, control):
            self._settle(args, state, keep_best=True)

    def on_epoch_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        # Also before the end of training: with save_total_limit=1 the
        # Trainer deletes every folder but the best before on_train_end.
        if _save_may_follow(args, control) or control.should_training_stop:
            self._settle(args, state, keep_best=True)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        _wait_for_every_rank()  # the Trainer has no barrier before on_save
        if not state.is_world_process_zero:
            return
        self._settle(args, state, keep_best=True)
        folder = os.path.join(_run_dir(args, state), f"checkpoint-{state.global_step}")
        if not os.path.isdir(folder):
            raise TPDEIOError(errno.ENOENT, f"the Trainer's checkpoint folder {folder} is missing at its on_save")
        if self._store is None:  # the callback was added after training began
            self.on_train_begin(args, state, control)
        self._folders.append(folder)
        self._prune(args, state, keep_best=True)
        self._job = (state.global_step, folder)
        self._worker = threading.Thread(target=self._add, args=(state.global_step, folder),
                                        name=f"tpde-add-{state.global_step}")
        self._worker.start()

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Optional[Dict[str, float]] = None, **kwargs: Any) -> None:
        # on_log's logs dict is the one the Trainer hands to the callbacks
        # after this one (the printer among them); the Trainer appended its
        # copy to log_history just before this event, so the figures go there too.
        if not (self.enable_profiling and self._unlogged and logs is not None and state.is_world_process_zero):
            return
        *older, newest = self._unlogged  # more than one only when saves outpace logs
        self._unlogged = []
        history = state.log_history
        this = history.pop() if history and history[-1].get("step") == state.global_step else None
        history.extend({**fig, "step": fig["tpde/step"]} for fig in older)
        logs.update(newest)
        if this is not None:
            history.append({**this, **newest})

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        try:
            # The Trainer has loaded the best model by now: its folder is no longer needed.
            self._settle(args, state, keep_best=False)
        finally:
            self._close_store()
        if self.enable_profiling:  # no log call follows on_train_end
            state.log_history.extend({**fig, "step": fig["tpde/step"]} for fig in self._unlogged)
            self._unlogged = []

    # -- background add ------------------------------------------------

    def _add(self, step: int, folder: str) -> None:
        """The worker thread: add folder to the store, then record its figures."""
        try:
            assert self._store is not None
            before = self._store.object_bytes()
            t0 = time.perf_counter()
            info = self._store.add(folder, step=step)
            seconds = time.perf_counter() - t0
            # The checkpoint before this one is re-coded after add returns;
            # this thread is already off training's path, so it waits, and
            # the growth it reports is the store's once that is done.
            self._store.wait()
            grown = self._store.object_bytes() - before
            self.profile.append({"step": step, "ratio": info.raw_bytes / grown if grown > 0 else float("inf"),
                                 "original_bytes": info.raw_bytes, "stored_bytes": grown, "seconds": seconds})
        except BaseException as e:  # noqa: BLE001 - handed to the main thread by _settle, which raises it
            self._failure = e

    def _settle(self, args: TrainingArguments, state: TrainerState, keep_best: bool) -> None:
        """Wait for the add in flight, raise its failure, delete the folders
        that are stored and beyond keep_last_uncompressed."""
        if self._worker is not None:
            self._worker.join()
            (step, folder), failure = self._job, self._failure  # type: ignore[misc]
            self._worker, self._job, self._failure = None, None, None
            if failure is not None:
                self._close_store()  # training stops here: release the store's writer lock
                raise TPDEError(f"tpde could not store checkpoint {folder} (step {step}) in "
                                f"{self._store_path(args, state, _run_dir(args, state))}: {failure}") from failure
            self._committed.add(folder)
            self._unlogged.append({f"tpde/{k}": v for k, v in self.profile[-1].items()})
        self._prune(args, state, keep_best)

    def _prune(self, args: TrainingArguments, state: TrainerState, keep_best: bool) -> None:
        """Delete this run's stored folders beyond the newest keep_last_uncompressed, oldest first."""
        self._folders = [f for f in self._folders if os.path.isdir(f)]  # the Trainer's rotation may have gone first
        best = state.best_model_checkpoint if keep_best else None
        doomed = [f for f in self._folders[:max(len(self._folders) - self.keep_last_uncompressed, 0)]
                  if f in self._committed and not (best and os.path.abspath(f) == os.path.abspath(best))]
        if not doomed:
            return
        run_dir = _run_dir(args, state)
        st = os.stat(run_dir)
        for folder in doomed:
            # Renamed out of the checkpoint-* namespace first: a delete cut
            # short must not leave a torn checkpoint-N that resume would pick.
            gone = os.path.join(run_dir, f".tpde-deleting-{os.path.basename(folder)}-{os.urandom(4).hex()}")
            os.rename(folder, gone)
            shutil.rmtree(gone)
            self._folders.remove(folder)
            self._committed.discard(folder)
        # Rotation sorts folders by mtime; leave the output folder's as it was.
        os.utime(run_dir, ns=(st.st_atime_ns, st.st_mtime_ns))

    # -- helpers -------------------------------------------------------

    def _store_path(self, args: TrainingArguments, state: TrainerState, run_dir: str) -> str:
        if self.compression_output_dir is None:
            path = os.path.join(run_dir, "tpde-store")
        elif state.is_hyper_param_search:
            path = os.path.join(os.fspath(self.compression_output_dir), str(state.trial_name))
        else:
            path = os.fspath(self.compression_output_dir)
        if is_s3(path):
            return path  # in a bucket: no Trainer rotation reaches it
        rel = os.path.relpath(os.path.abspath(path), os.path.abspath(run_dir))
        if not rel.startswith(os.pardir) and fnmatch.fnmatch(rel.split(os.sep)[0], _CHECKPOINT_GLOB):
            raise InvalidArgumentError(f"the tpde store {path} lies inside a Trainer checkpoint folder: the "
                                       "Trainer's rotation would delete it")
        return path

    def _close_store(self) -> None:
        if self._store is not None:
            store, self._store = self._store, None
            store.close()


def _held_steps(store: Store) -> List[int]:
    """The steps store holds; none when it does not exist yet (a store in a
    bucket is created by its first add, as a local one is)."""
    try:
        return store.steps()
    except TPDEIOError as e:
        if e.errno != errno.ENOENT:
            raise
        return []


def materialize(store: Union[PathLike, Store], step: Optional[int] = None, *, output_dir: PathLike) -> Path:
    """Write checkpoint step (the newest when None) of store (a path or a
    tpde.Store) as output_dir/checkpoint-<step>/, every file byte-identical to
    what the Trainer wrote, and return its path: a folder that
    trainer.train(resume_from_checkpoint=...) accepts.

        path = materialize("out/tpde-store", 20, output_dir="out")
        trainer.train(resume_from_checkpoint=str(path))

    Store.restore writes the files into a hidden folder beside it (not
    named checkpoint-*, so no Trainer takes it for a checkpoint) and renames
    it into place once complete. An existing checkpoint-<step> is refused."""
    st = store if isinstance(store, Store) else Store(store)
    try:
        step = st.info(step).step
        out = os.fspath(output_dir)
        final = os.path.join(out, f"checkpoint-{step}")
        if os.path.lexists(final):
            raise InvalidArgumentError(f"{final} exists already; materialize writes a new folder only")
        os.makedirs(out, exist_ok=True)
        st.restore(step, final)
        return Path(final)
    finally:
        if st is not store:
            st.close()


def _refuse_checkpoint_name(path: str) -> None:
    if fnmatch.fnmatch(os.path.basename(os.path.normpath(path)), _CHECKPOINT_GLOB):
        raise InvalidArgumentError(f"the tpde store {path} is named like a Trainer checkpoint folder "
                                   f"({_CHECKPOINT_GLOB}): the Trainer's rotation and resume would take it for one")


def _run_dir(args: TrainingArguments, state: TrainerState) -> str:
    """The folder the Trainer writes checkpoint-N into: output_dir, or in a
    hyperparameter search output_dir/<trial name>."""
    if not state.is_hyper_param_search:
        return args.output_dir
    if state.trial_name is None:
        # Without hp_name the Trainer names the folder run-<trial id>, which a callback cannot see.
        raise InvalidArgumentError("TPDETrainerCallback in a hyperparameter search needs "
                                   "trainer.hyperparameter_search(hp_name=...) to know each trial's folder")
    return os.path.join(args.output_dir, state.trial_name)


def _save_may_follow(args: TrainingArguments, control: TrainerControl) -> bool:
    """Whether the Trainer may save a checkpoint right after this event
    (with save_strategy="best", an evaluation decides)."""
    return control.should_save or (args.save_strategy == "best" and control.should_evaluate)


def _wait_for_every_rank() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()

