"""DeepSpeed integration: every file DeepSpeed checkpoints through its
CheckpointEngine is written as a tpde file, and read back bit-exactly.

    import tpde.integrations.deepspeed as tds

    config = {"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 1},
              "checkpoint": {"compression": {"enabled": True, "method": "tpde"}}}
    engine, optimizer, _, _ = tds.initialize(model=model, optimizer=opt, config=config)
    engine.save_checkpoint("ckpt")      # ckpt/global_stepN/*.pt are tpde files
    engine.load_checkpoint("ckpt")      # the state exactly as saved
    tds.materialize("ckpt", "plain")    # plain torch files, for zero_to_fp32.py

DeepSpeed has no registry of checkpoint engines: the way in is the
engine's ``checkpoint_engine`` attribute, which install() sets
to a TPDECheckpointEngine after deepspeed.initialize (initialize() does that
when the config's "checkpoint": {"compression": ...} block enables it;
DeepSpeed itself ignores that block).

Design: each file is a self-contained tpde file (tpde.compress_file of the
torch.save zip: every storage a typed, compressed region, every other byte
verbatim), not a delta against the previous tag in a store. DeepSpeed's
unit is the tag folder: users delete old global_stepN folders, copy or
upload one, and point ``latest`` at it; under ZeRO every data-parallel rank
writes its own file at the same time. Self-contained files keep all of that
working (a store takes one writer at a time, and a delta or a pointer into
it ties a folder to files outside it).

What still bypasses the engine (DeepSpeed code that calls open() or
torch.load itself):
- the ``latest`` file: written with plain open(), after commit(), and not
  fsynced by DeepSpeed. It stays a plain text file.
- zero_to_fp32.py / zero_to_torch.py, copied into ZeRO checkpoints, and
  deepspeed.utils.zero_to_fp32 (also used by load_checkpoint under ZeRO-3
  with load_optimizer_states=False) call torch.load on the files directly
  and cannot read tpde files: materialize() the tag first and run them on
  the plain copy.
- the MoE expert-loading path that builds TorchCheckpointEngine() itself
  (DeepSpeedEngine.load_moe_state_dict's default) reads plain files only.
- save_16bit_model() writes its pytorch_model.bin through the engine, so it
  too becomes a tpde file: tpde.decompress_file(path, plain_path) restores
  the torch file (byte for byte) for tools that load it directly.
The config's "checkpoint_serialization": false (the legacy torch format) is
not honoured: files are always torch zips, the layout tpde codes by dtype.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, List, Mapping, Optional, Tuple, Union

import deepspeed
import torch
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo, CheckpointEngine

from .._atomic import fsync_dir, write_atomically
from .._options import threads_arg
from ..codec import _FILE_MAGIC, compress_file, decompress_file
from ..errors import InvalidArgumentError, TPDEError, TPDEIOError

__all__ = ["TPDECheckpointEngine", "install", "initialize", "compression_enabled", "is_tpde_file", "materialize"]

PathLike = Union[str, "os.PathLike[str]"]

ENGINE_NAME = "TPDECheckpointEngine"
#: DeepSpeed copies these next to the tag folders of ZeRO checkpoints.
RECOVERY_SCRIPTS = ("zero_to_fp32.py", "zero_to_torch.py")
_STAGING_PREFIX = ".tpde-staging-"


class TPDECheckpointEngine(CheckpointEngine):
    """A DeepSpeed CheckpointEngine writing tpde files.

    save(state_dict, path) torch.saves the state dict to a staging folder
    beside path, codes it with tpde into path (written atomically: a
    temporary file, fsynced, renamed) and removes the staging copy.
    load(path) returns what torch.load of the original file returns, with
    bit-identical tensors; a plain torch file (a checkpoint saved without
    tpde) loads too; a tpde file is decoded to a temporary file in
    tempfile's folder ($TMPDIR), which needs room for its original size.
    commit(info) fsyncs the folders written since create(info), making the
    tag durable.

        engine.checkpoint_engine = TPDECheckpointEngine(engine._config)

    threads: tpde worker threads per file (0: tpde's default).
    """

    def __init__(self, config_params: Any = None, *, threads: int = 0) -> None:
        super().__init__(config_params)
        self.name = ENGINE_NAME
        self.threads = threads_arg(threads)
        self._written: List[str] = []

    def create(self, info: CheckpointCommitInfo) -> None:
        self._written = []

    def save(self, state_dict: Any, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        # Staged under the final name, so the zip's root folder (torch uses
        # the file's stem) is what TorchCheckpointEngine would write; the
        # dot folder matches none of DeepSpeed's file globs.
        staging = tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=folder)
        try:
            plain = os.path.join(staging, os.path.basename(path))
            torch.save(state_dict, plain)
            with _naming(path):
                # DeepSpeed names the file; saving a tag again replaces it,
                # as TorchCheckpointEngine's torch.save does.
                compress_file(plain, path, overwrite=True, threads=self.threads)
        finally:
            shutil.rmtree(staging)
        self._written.append(path)

    def load(self, path: str, map_location: Any = None) -> Any:
        # weights_only=False, as TorchCheckpointEngine: DeepSpeed's own
        # states pickle its config, argparse namespaces and other objects.
        if not is_tpde_file(path):
            return torch.load(path, map_location=map_location, weights_only=False)
        with tempfile.TemporaryDirectory(prefix="tpde-deepspeed-") as tmp:
            with _naming(path):
                plain = decompress_file(path, os.path.join(tmp, os.path.basename(path)), threads=self.threads)
            return torch.load(plain, map_location=map_location, weights_only=False)

    def commit(self, info: CheckpointCommitInfo) -> bool:
        # Each file was fsynced before its rename; the renames are durable
        # once their folders are (and the tag folder's entry in save_dir).
        folders = {os.path.dirname(os.path.abspath(p)) for p in self._written}
        if self._written:
            folders.add(os.path.abspath(info.save_dir))
        for folder in sorted(folders):
            fsync_dir(folder)
        self._written = []
        return True


def compression_enabled(config: Mapping[str, Any]) -> bool:
    """Whether a DeepSpeed config dict's "checkpoint": {"compression": {...}}
    block turns tpde on; raises InvalidArgumentError for a block tpde cannot
    honour.

        compression_enabled({"checkpoint": {"compression": {"enabled": True, "method": "tpde"}}})  # True

    Keys: enabled (bool, default False, as DeepSpeed's own "enabled" flags),
    method ("tpde", the default), threshold (0 only). A threshold > 0 would
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
    unknown = sorted(set(block) - {"enabled", "method", "threshold"})
    if unknown:
        raise InvalidArgumentError(f"{where} has unknown keys {unknown} (known: enabled, method, threshold)")
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


def install(engine: Any, *, threads: int = 0) -> Any:
    """Make a DeepSpeed engine checkpoint through tpde, and return it.

        engine, *_ = deepspeed.initialize(model=model, optimizer=opt, config=config)
        install(engine)

    It installs unconditionally (call it only when wanted); a
    "checkpoint": {"compression": ...} block in the engine's config is
    still checked, so a lossy threshold or another method is an error
    rather than silently ignored.
    """
    compression_enabled(engine._config._param_dict)
    engine.checkpoint_engine = TPDECheckpointEngine(engine._config, threads=threads)
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
    """Whether path is a tpde file (by its magic bytes)."""
    with open(path, "rb") as fh:
        return fh.read(len(_FILE_MAGIC)) == _FILE_MAGIC


def materialize(save_dir: PathLike, dest: PathLike, tag: Optional[str] = None) -> Path:
    """Write a plain copy of a DeepSpeed checkpoint for tools that torch.load
    its files directly (zero_to_fp32.py, zero_to_torch.py): dest/<tag>/ with
    every file of save_dir/<tag>/, tpde files restored byte for byte, the
    others copied; the recovery scripts; and dest/latest naming tag (the
    tag in save_dir/latest when None). Returns dest.

        materialize("ckpt", "plain")
        # python plain/zero_to_fp32.py plain out/   (or get_fp32_state_dict_from_zero_checkpoint("plain"))

    Every file is written atomically; latest last, so a dest with a latest
    file holds the whole tag.
    """
    src, out = Path(save_dir), Path(dest)
    if tag is None:
        latest = src / "latest"
        if not latest.is_file():
            raise TPDEIOError(2, f"{latest}: no such file; pass tag= to name the checkpoint to materialize")
        tag = latest.read_text().strip()
    tag_dir = src / tag
    if not tag_dir.is_dir():
        raise TPDEIOError(2, f"{tag_dir}: no such checkpoint folder")
    if out.resolve() == src.resolve():
        raise InvalidArgumentError(f"{dest}: materialize needs a destination other than the checkpoint folder")
    for path in sorted(tag_dir.rglob("*")):
        rel = path.relative_to(tag_dir)
        if path.is_dir() or any(part.startswith(_STAGING_PREFIX) for part in rel.parts):
            continue  # a folder, or what a save killed midway left behind
        target = out / tag / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if is_tpde_file(path):
            with _naming(path):
                # Materializing into the same dest again refreshes it, as
                # _copy_atomically does for the other files.
                decompress_file(path, target, overwrite=True)
        else:
            _copy_atomically(path, target)
    for script in RECOVERY_SCRIPTS:
        if (src / script).is_file():
            _copy_atomically(src / script, out / script)
    write_atomically(out / "latest", lambda fh: fh.write(tag.encode("utf-8")))
    return out


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
