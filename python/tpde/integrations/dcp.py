"""torch.distributed.checkpoint (DCP) storage with tpde's float-aware codec.

    import torch.distributed.checkpoint as dcp
    import tpde.dcp

    writer = tpde.dcp.Writer("ckpt/step-100")             # one Writer, reused across saves
    dcp.save(state_dict, storage_writer=writer)            # keyframes
    ...train...
    dcp.save(state_dict, checkpoint_id="ckpt/step-200", storage_writer=writer)  # deltas vs step-100
    dcp.load(state_dict, storage_reader=tpde.dcp.Reader("ckpt/step-200"))

Writer and Reader subclass torch's FileSystemWriter and FileSystemReader and
override write_data/read_data: DCP's own stream hook (``_extensions``) sees
opaque bytes, while a float-aware codec needs each item's dtype, which
write_data has (``WriteItem.tensor_data.properties.dtype``). Every rank codes
the items of its own local plan, so ranks code in parallel; sharded DTensors
are coded shard by shard, replicated tensors by the one rank DCP's
de-duplication picks.

Deltas. An item is coded as a delta frame against the item with the same
storage index (FQN and chunk offsets) in the reference checkpoint when that
item also has the same chunk lengths and dtype; otherwise, and every
keyframe_interval saves, as a keyframe. The reference is ``previous=`` for a
Writer's first save, then the checkpoint this Writer saved last. Each rank
keeps a copy of the items it saved last (one copy of its shard of the state)
so the next save codes against memory; an item it did not write itself (DCP
assigned a replicated tensor to another rank) or a reference given by path is
decoded from disk. A reference folder without ``.metadata`` (deleted, or a
save that never finished) gives keyframes, except ``previous=`` given
explicitly, which must exist. A save into the reference's own folder is all
keyframes. Lossless always: every bit (NaN payloads, -0.0) comes back.

Checkpoint format (a DCP checkpoint folder; docs/FORMAT.md for the frames):

- ``.metadata``: torch's pickled ``Metadata``, written by the coordinator
  (FileSystemWriter.finish: ``.metadata.tmp``, fsync, rename; then the folder
  is fsynced). ``storage_data`` maps each item's MetadataIndex to a
  ``_StorageInfo(relative_path, offset, length, transform_descriptors)``.
- ``__{rank}_{n}.distcp``: the items of rank ``rank``, split into
  ``thread_count`` files ``n = 0, 1, ...``; each file is the concatenation of
  its items' tpde frames (no header, no padding), written to
  ``.__{rank}_{n}.distcp.tmp``, fsynced and renamed.
- Per item, ``transform_descriptors`` says how its ``length`` bytes at
  ``offset`` are coded:

  - ``["tpde.frame/1"]``: one tpde keyframe (tpde.compress_tensor). Tensor
    items: the chunk as stored, of its dtype and shape; a dtype tpde has no
    code for (complex, other float8 variants) is framed as its raw bytes, a
    U8 frame of shape ``chunk_shape + [itemsize]``, viewed back as the
    metadata's dtype on load. BYTE_IO items (DCP's pickled non-tensor
    values): the bytes as a 1-D U8 frame; its streams are coded raw, rle,
    huff0 or zstd, whichever is smallest (never delta-coded).
  - ``["tpde.delta/1", "depth=D", "ref=R"]``: one tpde delta frame
    (tpde.compress_delta) against the frame-level tensor of the item with
    the same MetadataIndex in checkpoint folder R, which is relative to this
    checkpoint's folder (absolute only where no relative path exists). D is
    the chain length: 1 + the reference item's D (a keyframe has D = 0);
    when it would reach keyframe_interval the item is a keyframe instead.
    The frame records a checksum of its reference, so a wrong reference
    raises ReferenceMismatchError, never wrong data.

  A plain FileSystemReader refuses these items (ValueError: unknown
  extension 'tpde.frame'); tpde's Reader also reads items without
  descriptors (plain FileSystemWriter checkpoints) through torch's code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import io
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner, SavePlan, SavePlanner,
                                                  WriteItem, WriteItemType)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .. import _tensors
from .._atomic import fsync_dir
from ..checkpoint import CompressedCheckpoint, TPDECheckpointCompressor
from ..codec import compress_tensor, decompress_tensor
from ..delta import compress_delta, decompress_delta
from .._options import POSITION_CODINGS, code, int_arg, threads_arg
from ..errors import (CorruptDataError, InvalidArgumentError, TPDEError, TPDEIOError, UnsupportedFormatError)

__all__ = ["Writer", "Reader", "DistributedTPDECompressor"]

PathLike = Union[str, "os.PathLike[str]"]

FRAME = "tpde.frame/1"
DELTA = "tpde.delta/1"
_METADATA = ".metadata"
_SUFFIX = ".distcp"


# --- items on disk --------------------------------------------------------------

def _parse(descriptors: Optional[Sequence[str]]) -> Optional[Tuple[int, Optional[str]]]:
    """(depth, reference folder or None) of a tpde item; None for an item
    tpde did not write (a plain FileSystemWriter item)."""
    d = list(descriptors or ())
    if d == [FRAME]:
        return 0, None
    if len(d) == 3 and d[0] == DELTA and d[1].startswith("depth=") and d[2].startswith("ref=") and d[1][6:].isdigit():
        return int(d[1][6:]), d[2][4:]
    if d and d[0].startswith("tpde."):
        raise UnsupportedFormatError(f"unknown tpde item descriptors {d}: written by a newer tpde?")
    return None


def _name(key: MetadataIndex) -> str:
    return key.fqn if not key.offset else f"{key.fqn} at {list(key.offset)}"


def _named(e: TPDEError, what: str) -> TPDEError:
    """e with what failed in front of its message, same class (and errno)."""
    msg = f"{what}: {e}"
    return type(e)(e.errno, msg) if isinstance(e, OSError) and e.errno else type(e)(msg)


def _codable(t: torch.Tensor) -> torch.Tensor:
    """t as the tensor its frame holds: itself, or for a dtype tpde has no
    code for, its raw bytes (shape + [itemsize], uint8)."""
    try:
        _tensors.torch_code(torch, t.dtype)
        return t
    except InvalidArgumentError:
        return t.contiguous().unsqueeze(-1).view(torch.uint8)


def _as_saved(frame: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of _codable, given the item's dtype from the metadata."""
    if frame.dtype == dtype:
        return frame
    if frame.dtype != torch.uint8 or frame.dim() == 0 or frame.shape[-1] != dtype.itemsize:
        raise CorruptDataError(f"a {frame.dtype}{list(frame.shape)} frame cannot hold a {dtype} item")
    return frame.view(dtype).squeeze(-1)


class _Folder:
    """One tpde DCP checkpoint folder, decoded item by item. Folders reached
    through references are opened once per operation (shared `opened`)."""

    def __init__(self, root: str, storage: Optional[Dict[MetadataIndex, Any]] = None,
                 opened: Optional[Dict[str, "_Folder"]] = None, referrer: str = "") -> None:
        self.root = root
        self.opened = {} if opened is None else opened
        self.opened[root] = self
        if storage is None:
            if not os.path.isfile(os.path.join(root, _METADATA)):
                raise TPDEIOError(errno.ENOENT, f"{referrer}the DCP checkpoint {root} is missing (no {_METADATA} "
                                                "there): it was deleted or moved, or its save did not finish")
            storage = FileSystemReader(root).read_metadata().storage_data
        self.storage: Dict[MetadataIndex, Any] = storage

    def kind(self, key: MetadataIndex) -> Optional[Tuple[int, Optional[str]]]:
        info = self.storage.get(key)
        return None if info is None else _parse(getattr(info, "transform_descriptors", None))

    def frame(self, key: MetadataIndex) -> Tuple[int, torch.Tensor]:
        """(depth, frame-level tensor) of a tpde item, its references resolved."""
        kind = self.kind(key)
        if kind is None:
            raise CorruptDataError(f"{self.root}: no tpde item {_name(key)}")
        depth, ref = kind
        info = self.storage[key]
        path = os.path.join(self.root, info.relative_path)
        blob = self._read(path, info, key)
        base = None
        if ref is not None:
            folder = self._open(ref, key)
            # Depths fall by one along a chain, so a chain ends (a cycle is refused).
            if (folder.kind(key) or (-1,))[0] != depth - 1:
                raise CorruptDataError(f"{path}: item {_name(key)} (depth {depth}) refers to {folder.root}, which "
                                       f"holds no tpde item {_name(key)} of depth {depth - 1}")
            base = folder.frame(key)[1]
        try:
            return depth, decompress_tensor(blob) if base is None else decompress_delta(blob, base)
        except TPDEError as e:
            raise _named(e, f"{path}: item {_name(key)}") from None

    def _open(self, ref: str, key: MetadataIndex) -> "_Folder":
        root = os.path.normpath(os.path.join(self.root, ref))
        if root in self.opened:
            return self.opened[root]
        return _Folder(root, opened=self.opened,
                       referrer=f"{self.root}: item {_name(key)} is a delta against another checkpoint, and ")

    @staticmethod
    def _read(path: str, info: Any, key: MetadataIndex) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(info.offset)
                blob = f.read(info.length)
                size = os.fstat(f.fileno()).st_size
        except OSError as e:
            raise TPDEIOError(e.errno, f"{path}: {e.strerror}") from None
        if len(blob) != info.length:
            raise CorruptDataError(f"{path}: item {_name(key)} ends at byte {info.offset + info.length}, the file "
                                   f"has {size} bytes: truncated")
        return blob


# --- writing -------------------------------------------------------------------

@dataclasses.dataclass
class _Saved:
    """What one rank saved last: the folder, and per item (depth, frame-level tensor)."""

    path: str
    items: Dict[MetadataIndex, Tuple[int, torch.Tensor]]


class _Reference:
    """The checkpoint one save codes its deltas against: this rank's copy of
    what it saved there, else the folder on disk (opened on first need)."""

    def __init__(self, root: str, relpath: str, kept: Dict[MetadataIndex, Tuple[int, torch.Tensor]]) -> None:
        self.root, self.relpath, self.kept = root, relpath, kept
        self._folder: Optional[_Folder] = None

    def lookup(self, key: MetadataIndex, x: torch.Tensor) -> Optional[Tuple[int, torch.Tensor]]:
        got = self.kept.get(key)
        if got is None:
            if self._folder is None:
                self._folder = _Folder(self.root)
            if self._folder.kind(key) is None:
                return None
            got = self._folder.frame(key)
        same = got[1].dtype == x.dtype and got[1].shape == x.shape
        return got if same else None


def _relpath(target: str, start: str) -> str:
    try:
        return os.path.relpath(target, start)
    except ValueError:  # no relative path (another Windows drive)
        return target


def _buckets(items: Sequence[WriteItem], n: int) -> List[List[WriteItem]]:
    """items in n files of about equal size (largest first into the
    smallest bucket); BYTE_IO items spread round-robin."""
    out: List[List[WriteItem]] = [[] for _ in range(n)]
    sizes = [0] * n
    for i, it in enumerate(w for w in items if w.type == WriteItemType.BYTE_IO):
        out[i % n].append(it)
    for it in sorted((w for w in items if w.type != WriteItemType.BYTE_IO),
                     key=lambda w: w.tensor_storage_size() or 0, reverse=True):
        k = sizes.index(min(sizes))
        out[k].append(it)
        sizes[k] += it.tensor_storage_size() or 0
    return [b for b in out if b] or [[]]


class Writer(FileSystemWriter):
    """A DCP StorageWriter that codes each rank's items with tpde: keyframes,
    or deltas against the previous save (see the module docstring).

        writer = tpde.dcp.Writer("ckpt/step-1")
        dcp.save(state_dict, storage_writer=writer)
        dcp.save(state_dict, checkpoint_id="ckpt/step-2", storage_writer=writer)  # deltas vs step-1

    previous: a tpde DCP checkpoint folder the first save is coded against
    (later saves: the one this Writer saved last). keyframe_interval: the
    longest chain of deltas is keyframe_interval - 1 (1: keyframes only).
    compression_method: how the positions of changed elements are coded
    ("auto", "dense", "elias_delta_zstd"). thread_count: files (and coding
    threads) per rank. codec_threads: threads inside each tpde call (0:
    tpde.get_num_threads(); with several ranks on one machine, 1 avoids
    oversubscribing it). sync_files: fsync every file and the folder.

    Picklable (dcp.async_save with AsyncCheckpointerType.PROCESS): the copy
    of the last save is not pickled, and the copy the checkpoint process
    saves with never comes back, so there every save is coded against
    ``previous`` (decoded from disk) or is all keyframes: give each save a
    Writer(path, previous=<the last path>) to chain them.
    """

    def __init__(self, path: PathLike, *, previous: Optional[PathLike] = None, keyframe_interval: int = 10,
                 compression_method: str = "auto", thread_count: int = 1, sync_files: bool = True,
                 codec_threads: int = 0, overwrite: bool = True, cache_staged_state_dict: bool = False) -> None:
        code(POSITION_CODINGS, compression_method, "compression_method")
        int_arg(keyframe_interval, "keyframe_interval", 1, 2**31 - 1)
        int_arg(thread_count, "thread_count", 1, 1024)
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files, thread_count=thread_count,
                         overwrite=overwrite, cache_staged_state_dict=cache_staged_state_dict)
        self.keyframe_interval = keyframe_interval
        self.compression_method = compression_method
        self.codec_threads = threads_arg(codec_threads)
        self.previous: Optional[str] = None if previous is None else os.path.abspath(os.fspath(previous))
        # A missing previous= is the caller's error; a missing last save of
        # this Writer (deleted since, or unfinished) only means keyframes.
        self._previous_required = previous is not None
        self._saved: Optional[_Saved] = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_saved"] = None  # a copy of the state: not sent to a checkpoint process
        return state

    def _reference(self) -> Optional[_Reference]:
        prev, here = self.previous, os.path.abspath(os.fspath(self.path))
        if prev is None or prev == here:
            return None
        if not os.path.isfile(os.path.join(prev, _METADATA)):
            if self._previous_required:
                raise TPDEIOError(errno.ENOENT, f"previous={prev}: no DCP checkpoint there (no {_METADATA})")
            return None
        kept = self._saved.items if self._saved is not None and self._saved.path == prev else {}
        return _Reference(prev, _relpath(prev, here), kept)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        prefix = plan.storage_data.prefix
        ref = self._reference()
        buckets = _buckets(plan.items, self.thread_count)
        with concurrent.futures.ThreadPoolExecutor(len(buckets)) as ex:
            jobs = [ex.submit(self._write_file, f"{prefix}{n}{_SUFFIX}", b, planner, ref)
                    for n, b in enumerate(buckets)]
            outs = [j.result() for j in jobs]
        if self.sync_files:
            fsync_dir(os.fspath(self.path))
        here = os.path.abspath(os.fspath(self.path))
        self._saved = _Saved(here, {k: v for _, kept in outs for k, v in kept.items()})
        self.previous, self._previous_required = here, False
        fut: Future = Future()
        fut.set_result([r for results, _ in outs for r in results])
        return fut

    def _write_file(self, name: str, items: List[WriteItem], planner: SavePlanner, ref: Optional[_Reference]
                    ) -> Tuple[List[WriteResult], Dict[MetadataIndex, Tuple[int, torch.Tensor]]]:
        final = os.path.join(os.fspath(self.path), name)
        tmp = os.path.join(os.fspath(self.path), f".{name}.tmp")
        results: List[WriteResult] = []
        kept: Dict[MetadataIndex, Tuple[int, torch.Tensor]] = {}
        try:
            with open(tmp, "wb") as f:
                for item in items:
                    blob, descriptors, entry = self._code(item, planner, ref)
                    results.append(WriteResult(index=item.index, size_in_bytes=len(blob),
                                               storage_data=_StorageInfo(name, f.tell(), len(blob), descriptors)))
                    f.write(blob)
                    if entry is not None:
                        kept[item.index] = entry
                if self.sync_files:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return results, kept

    def _code(self, item: WriteItem, planner: SavePlanner, ref: Optional[_Reference]
              ) -> Tuple[bytes, List[str], Optional[Tuple[int, torch.Tensor]]]:
        """One item's frame, its descriptors, and what to keep as the next reference."""
        th = self.codec_threads
        data = planner.resolve_data(item)
        try:
            if item.type == WriteItemType.BYTE_IO:
                buf = data.getvalue()
                t = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
                return compress_tensor(t, threads=th), [FRAME], None
            x = _codable(data.detach().cpu())
            base = None if ref is None else ref.lookup(item.index, x)
            # A chain longer than keyframe_interval - 1 deltas starts over with a keyframe.
            if ref is not None and base is not None and base[0] + 1 < self.keyframe_interval:
                blob = compress_delta(x, base[1], positions=self.compression_method, threads=th)
                depth, desc = base[0] + 1, [DELTA, f"depth={base[0] + 1}", f"ref={ref.relpath}"]
            else:
                blob, depth, desc = compress_tensor(x, threads=th), 0, [FRAME]
        except TPDEError as e:
            raise _named(e, f"{self.path}: item {_name(item.index)}") from None
        if self.keyframe_interval == 1:
            return blob, desc, None  # never a reference: keep no copy
        return blob, desc, (depth, x.clone(memory_format=torch.contiguous_format))

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        super().finish(metadata, results)  # .metadata.tmp, fsync, rename
        if self.sync_files:
            fsync_dir(os.fspath(self.path))


# --- reading -------------------------------------------------------------------

class Reader(FileSystemReader):
    """A DCP StorageReader for checkpoints written by tpde.dcp.Writer (and
    plain FileSystemWriter ones): resolves delta references itself.

        dcp.load(state_dict, storage_reader=tpde.dcp.Reader("ckpt/step-2"))

    A reference folder that is gone raises TPDEIOError naming it; a damaged
    or truncated item raises CorruptDataError naming its file and item.
    """

    def __init__(self, path: PathLike) -> None:
        super().__init__(path)
        self._dtypes: Dict[str, torch.dtype] = {}

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._dtypes = {fqn: md.properties.dtype for fqn, md in metadata.state_dict_metadata.items()
                        if isinstance(md, TensorStorageMetadata)}

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        folder = _Folder(os.path.abspath(os.fspath(self.path)), self.storage_data)
        ours: Dict[MetadataIndex, List[Any]] = {}
        others = []
        for req in plan.items:
            (others if folder.kind(req.storage_index) is None else ours.setdefault(req.storage_index, [])).append(req)
        if others:
            super().read_data(dataclasses.replace(plan, items=others), planner).wait()
        for key, reqs in ours.items():
            frame = folder.frame(key)[1]  # once per stored item, however many requests read from it
            for req in reqs:
                if req.type == LoadItemType.BYTE_IO:
                    planner.load_bytes(req, io.BytesIO(frame.numpy().tobytes()))
                    continue
                t = _as_saved(frame, self._dtypes[key.fqn])
                for d, (o, n) in enumerate(zip(req.storage_offsets, req.lengths)):
                    t = t.narrow(d, o, n)
                target = planner.resolve_tensor(req).detach()
                if target.size() != t.size():
                    raise CorruptDataError(f"{self.path}: item {_name(key)} gives {list(t.size())} for a "
                                           f"{list(target.size())} destination")
                target.copy_(t)
                planner.commit_tensor(req, target)
        fut: Future = Future()
        fut.set_result(None)
        return fut


# --- the design document's compressor ----------------------------------------------

class DistributedTPDECompressor:
    """Checkpoints of a distributed run (design document): a chain of
    compressed state dicts on one rank, or collective sharded saves.

        compressor = DistributedTPDECompressor(rank=rank, world_size=dist.get_world_size(),
                                               compression_method="elias_delta_zstd")
        if rank == 0:
            compressed = compressor.compress_distributed(model.state_dict())  # full, then deltas
            torch.save(compressed, f"epoch_{epoch}.tpde")
        ...
        compressor.save(state_dict, "ckpt/step-2")   # collective: dcp.save with tpde.dcp.Writer
        compressor.load(state_dict, "ckpt/step-2")   # collective: dcp.load with tpde.dcp.Reader

    compress_distributed is not collective: it codes a full (not sharded)
    state dict of plain tensors, as the first call of a chain or as a delta
    against the previous call, and returns a CompressedCheckpoint (bytes;
    torch.save stores it as a bytearray). decompress takes them back in the
    same order (or with previous=, the decoded checkpoint it was coded
    against). keyframe_interval bounds both chains.
    """

    def __init__(self, rank: int, world_size: int, compression_method: str = "auto", *,
                 keyframe_interval: int = 10, threads: int = 0) -> None:
        int_arg(world_size, "world_size", 1, 2**31 - 1)
        int_arg(rank, "rank", 0, world_size - 1)
        code(POSITION_CODINGS, compression_method, "compression_method")
        int_arg(keyframe_interval, "keyframe_interval", 1, 2**31 - 1)
        self.rank, self.world_size = rank, world_size
        self.compression_method, self.keyframe_interval, self.threads = compression_method, keyframe_interval, threads
        self._chain = TPDECheckpointCompressor(compression_method=compression_method,
                                               keyframe_interval=keyframe_interval, threads=threads)
        self._writer: Optional[Writer] = None

    def compress_distributed(self, state_dict: Any) -> CompressedCheckpoint:
        return self._chain.compress(state_dict, metadata={"rank": self.rank, "world_size": self.world_size})

    def decompress(self, compressed: Any, previous: Any = None) -> Any:
        if previous is None:
            return self._chain.decompress(compressed)
        return self._chain.decompress_checkpoint(compressed, previous=previous)

    def _check_group(self) -> None:
        if dist.is_available() and dist.is_initialized():
            got = (dist.get_rank(), dist.get_world_size())
        else:
            got = (0, 1)
        if got != (self.rank, self.world_size):
            raise InvalidArgumentError(f"this compressor is rank {self.rank} of {self.world_size}, the process group "
                                       f"says rank {got[0]} of {got[1]}")

    def save(self, state_dict: Any, checkpoint_id: PathLike) -> Metadata:
        """dcp.save on every rank (collective), deltas against this object's previous save."""
        self._check_group()
        if self._writer is None:
            self._writer = Writer(checkpoint_id, keyframe_interval=self.keyframe_interval,
                                  compression_method=self.compression_method, codec_threads=self.threads)
        return dcp.save(state_dict, checkpoint_id=checkpoint_id, storage_writer=self._writer)

    def load(self, state_dict: Any, checkpoint_id: PathLike) -> None:
        """dcp.load on every rank (collective) into state_dict, in place."""
        self._check_group()
        dcp.load(state_dict, checkpoint_id=checkpoint_id, storage_reader=Reader(checkpoint_id))
