"""torch.distributed.checkpoint (DCP) storage on a tpde checkpoint store.

    import torch.distributed.checkpoint as dcp
    import tpde.dcp

    dcp.save(state_dict, storage_writer=tpde.dcp.Writer("ckpt/step-100"))  # a new Writer per save is fine
    ...train...
    dcp.save(state_dict, storage_writer=tpde.dcp.Writer("ckpt/step-200"))  # deltas, kept in ckpt/.tpde-store
    shutil.rmtree("ckpt/step-100")                                          # any folder: the others still load
    dcp.load(state_dict, storage_reader=tpde.dcp.Reader("ckpt/step-200"))

Each save is a DCP checkpoint folder (its ``.metadata``, loadable with
resharding, like FileSystemWriter's), whose tensor bytes live in a tpde
store (docs/FORMAT.md §18) shared by the sibling folders: by default
``<parent>/.tpde-store``, created by the first save. The store keeps the
newest checkpoint whole and older ones as reverse deltas against it, so a
Writer needs no memory of earlier saves (torchtitan and accelerate make a
new writer for every save, and async_save in process mode sends a pickled
copy), and a folder removed by rmtree, the oldest or any other, never
breaks another: each folder names its own checkpoint of the store, and the
next save reclaims the checkpoints no folder names any more.

How a save runs (docs/FORMAT.md §19.1):

- every rank, in write_data, stages its items as one state-dict file of the
  store, ``__{rank}.tpde`` (tpde.Store.stage: no lock, ranks code in
  parallel; the file and tensor names are the same at every save, which is
  what lets the store code each tensor as a delta of the same tensor in the
  previous save), and hands the coordinator a small descriptor of it;
- the coordinator, in finish, commits every rank's file as ONE checkpoint
  of the store held by the folder (which writes the folder's
  ``.tpde-checkpoint.json`` pointer before the commit is published), then
  writes ``.metadata`` (tmp, fsync, rename, folder fsync), then reclaims
  the checkpoints whose folders are gone.

tpde.dcp.Reader reads these folders, plain FileSystemWriter folders, and
the folders of tpde's first DCP writer (forward delta chains across
folders, "tpde.frame/1" and "tpde.delta/1" items).

The store may be in a bucket: ``Writer("ckpt/step-200",
store="s3://bucket/run")``. The checkpoint folders stay local (each holds
its ``.metadata`` and a pointer naming the store's URL, which the Reader
follows), and every rank stages through a local cache of its own
(``TPDE_S3_CACHE``), so ranks on separate machines share nothing but the
bucket: each rank's part is uploaded before the coordinator commits it
(docs/FORMAT.md §11.12). Such a store is never reclaimed by its folders,
which lie on the machines that saved and which no one process can see:
removing a folder does not remove its checkpoint from the bucket (remove
it by step, ``tpde.Store(url).remove(step)``, or ``tpde rm``). The
endpoint and credentials come from the environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ...) of every rank and every reader.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import pickle
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.filesystem import _StorageInfo
from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex, TensorStorageMetadata
from torch.distributed.checkpoint.planner import (LoadItemType, LoadPlan, LoadPlanner, ReadItem, SavePlan,
                                                  SavePlanner, WriteItemType)
from torch.distributed.checkpoint.storage import WriteResult
from torch.futures import Future

from .. import _tensors
from .._atomic import fsync_dir
from .._options import POSITION_CODINGS, code, int_arg, threads_arg
from ..checkpoint import CompressedCheckpoint, TPDECheckpointCompressor
from ..codec import decompress_tensor
from ..delta import decompress_delta
from ..errors import CorruptDataError, InvalidArgumentError, TPDEError, TPDEIOError, UnsupportedFormatError
from ..store.handle import is_s3, local_path

__all__ = ["Writer", "Reader", "DistributedTPDECompressor", "DEFAULT_STORE"]

PathLike = Union[str, "os.PathLike[str]"]

#: The store a Writer uses unless told otherwise: this folder in the
#: checkpoint folder's parent.
DEFAULT_STORE = ".tpde-store"
STORE = "tpde.store/1"
FRAME = "tpde.frame/1"  # items of tpde's first DCP writer (read only)
DELTA = "tpde.delta/1"
_METADATA = ".metadata"
_POINTER = ".tpde-checkpoint.json"
_FILE_SUFFIX = ".tpde"
#: How long the coordinator waits for another process's commit to the same
#: store (a previous async_save still committing, `tpde verify --repair`).
_LOCK_WAIT_S = 120.0

try:
    from torch.distributed.checkpoint.filesystem import CURRENT_DCP_VERSION as _DCP_VERSION
except ImportError:  # an older torch: .metadata then carries no version
    _DCP_VERSION = None


# --- names -----------------------------------------------------------------------

def _tensor_name(key: MetadataIndex, byte_io: bool) -> str:
    """The store's name of an item: its FQN, '@', and its chunk offsets
    ('w@0,128'; a 0-d tensor 'w@') or 'bytes' for a BYTE_IO item. The
    suffix after the last '@' never holds one, so names of different items
    differ, and the same item has the same name at every save."""
    if byte_io:
        return f"{key.fqn}@bytes"
    return f"{key.fqn}@{','.join(str(int(o)) for o in (key.offset or ()))}"


def _rank_file(prefix: str) -> str:
    """The store file of a rank, from the prefix FileSystemWriter's
    prepare_global_plan gives it ("__3_" -> "__3.tpde")."""
    stem = prefix[:-1] if prefix.endswith("_") else prefix
    if not stem or "/" in stem or stem.startswith("."):
        raise InvalidArgumentError(f"the storage prefix {prefix!r} cannot name a store file")
    return stem + _FILE_SUFFIX


def _name(key: MetadataIndex) -> str:
    return key.fqn if not key.offset else f"{key.fqn} at {list(key.offset)}"


def _named(e: TPDEError, what: str) -> TPDEError:
    """e with what failed in front of its message, same class (and errno)."""
    msg = f"{what}: {e}"
    new = type(e)(e.errno, msg) if isinstance(e, OSError) and e.errno else type(e)(msg)
    new.__cause__ = e.__cause__
    return new


def _codable(t: torch.Tensor) -> torch.Tensor:
    """t as the store holds it: itself, or for a dtype tpde has no code for
    (complex, other float8 variants), its raw bytes (shape + [itemsize],
    uint8), which the Reader views back as the metadata's dtype."""
    try:
        _tensors.torch_code(torch, t.dtype)
        return t
    except InvalidArgumentError:
        return t.contiguous().unsqueeze(-1).view(torch.uint8)


def _as_saved(stored: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The inverse of _codable, given the item's dtype from the metadata."""
    if stored.dtype == dtype:
        return stored
    if stored.dtype != torch.uint8 or stored.dim() == 0 or stored.shape[-1] != dtype.itemsize:
        raise CorruptDataError(f"a stored {stored.dtype}{list(stored.shape)} tensor cannot hold a {dtype} item")
    return stored.view(dtype).squeeze(-1)


# --- writing -----------------------------------------------------------------------

@dataclasses.dataclass
class _Staged:
    """A WriteResult's storage_data from write_data to finish: where the
    item went, and (on the first item of each rank) the rank's part
    descriptor for the commit. finish replaces it with a _StorageInfo."""

    relative_path: str
    name: str
    offset: int
    length: int
    descriptor: Optional[str] = None


class Writer(FileSystemWriter):
    """A DCP StorageWriter that keeps the tensors of each checkpoint folder
    in a tpde store shared by its sibling folders (see the module docstring).

        dcp.save(state_dict, storage_writer=tpde.dcp.Writer("ckpt/step-200"))

    store: the store's folder, in the same parent folder as the checkpoint
    folders (the store names each checkpoint's folder relative to that
    parent); default <parent>/.tpde-store. Or an "s3://bucket/prefix"
    store, anywhere: the folders stay local, and the store keeps every
    checkpoint until it is removed by step (see the module docstring).
    keyframe_interval: the store's K
    (a load decodes at most K frames per tensor; the newest always one),
    fixed when the store is created: None takes the store's (10 for a new
    one). compression_method: how delta frames code the positions of changed
    elements ("auto", "dense", "elias_delta_zstd"). codec_threads: threads
    of each rank's coding (0: tpde.get_num_threads(); with several ranks on
    one machine, 1 avoids oversubscribing it). sync_files: fsync .metadata
    and the folder (the store makes its own writes durable whatever this
    says).

    A new Writer per save, given only its folder, codes against the newest
    checkpoint of the store. Picklable (async_save with
    AsyncCheckpointerType.PROCESS): a Writer holds nothing of a save after
    it.
    """

    def __init__(self, path: PathLike, store: Optional[PathLike] = None, *, keyframe_interval: Optional[int] = None,
                 compression_method: str = "auto", codec_threads: int = 0, sync_files: bool = True,
                 overwrite: bool = True, cache_staged_state_dict: bool = False) -> None:
        code(POSITION_CODINGS, compression_method, "compression_method")
        if keyframe_interval is not None:
            int_arg(keyframe_interval, "keyframe_interval", 1, 1000)
        super().__init__(path, single_file_per_rank=True, sync_files=sync_files, thread_count=1,
                         overwrite=overwrite, cache_staged_state_dict=cache_staged_state_dict)
        remote = isinstance(store, str) and is_s3(store)
        self.store: Optional[str] = None if store is None else store if remote else local_path(store, "the store")
        self.keyframe_interval = keyframe_interval
        self.compression_method = compression_method
        self.codec_threads = threads_arg(codec_threads)
        self._part: Any = None  # this rank's staged part, until the commit that uses it
        self._store: Any = None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_part"] = state["_store"] = None  # a process's own handles: never sent to another
        return state

    def __del__(self) -> None:
        try:
            self._release()
        except Exception:  # noqa: BLE001 - interpreter shutdown; the kernel drops the part's lock anyway
            pass

    def _release(self) -> None:
        part, st = getattr(self, "_part", None), getattr(self, "_store", None)
        self._part = self._store = None
        try:
            if part is not None:
                part.close()
        finally:
            if st is not None:
                st.close()

    def _open_store(self, path: str) -> Any:
        from ..store import Store

        return Store(path, keyframe_interval=self.keyframe_interval, compression_method=self.compression_method,
                     threads=self.codec_threads)

    def _where(self) -> Tuple[str, str, str]:
        """(checkpoint folder, the holder: its name beside a local store or
        the folder itself for an s3:// one, store path), checked."""
        folder = os.path.abspath(os.fspath(self.path))
        parent, holder = os.path.split(folder)
        if not holder or holder in (".", ".."):
            raise InvalidArgumentError(f"{folder}: a checkpoint folder must have a name inside a parent folder")
        if self.store is not None and is_s3(self.store):
            return folder, folder, self.store
        store = self.store if self.store is not None else os.path.join(parent, DEFAULT_STORE)
        sparent, sname = os.path.split(store)
        same = sparent == parent
        if not same:
            try:
                same = os.path.samefile(sparent, parent)
            except OSError:
                same = False
        if not same:
            raise InvalidArgumentError(f"store={store}: the store must lie in the checkpoint folder's parent "
                                       f"{parent} (it names each checkpoint by its folder's name there)")
        if sname == holder:
            raise InvalidArgumentError(f"{folder} is the store itself: save checkpoints in sibling folders of it")
        return folder, holder, store

    # -- the DCP StorageWriter protocol -------------------------------------

    def reset(self, checkpoint_id: Optional[PathLike] = None) -> None:
        self._release()  # the previous save's part: committed (or failed) by now
        super().reset(checkpoint_id)

    def set_up_storage_writer(self, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_writer(is_coordinator, *args, **kwargs)
        if not kwargs.get("use_collectives", True):
            raise InvalidArgumentError("tpde.dcp.Writer commits every rank's items as one checkpoint of the store: "
                                       "use_collectives=False (a rank-local .metadata per rank) is not supported")

    def prepare_local_plan(self, plan: SavePlan) -> SavePlan:
        self._where()  # a misplaced store= is refused before anything is written
        return super().prepare_local_plan(plan)

    def write_data(self, plan: SavePlan, planner: SavePlanner) -> Future:
        self._release()
        folder, _, store = self._where()
        file = _rank_file(plan.storage_data.prefix)
        tensors: Dict[str, torch.Tensor] = {}
        staged: List[Tuple[Any, str, int]] = []
        for item in plan.items:
            data = planner.resolve_data(item)
            if item.type == WriteItemType.BYTE_IO:
                buf = data.getvalue()
                t = torch.frombuffer(bytearray(buf), dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
            else:
                t = _codable(data.detach())
            name = _tensor_name(item.index, item.type == WriteItemType.BYTE_IO)
            if name in tensors:
                raise InvalidArgumentError(f"{folder}: two items of this rank are both named {name!r}")
            tensors[name] = t
            staged.append((item, name, t.nbytes))
        fut: Future = Future()
        if not staged:  # nothing to store on this rank (DCP gave its items to others)
            fut.set_result([])
            return fut
        st = self._open_store(store)
        try:
            part = st.stage()
            try:
                offsets = part.add(tensors, name=file) or {}  # where the store's layout put each item
                desc = part.finish()
            except BaseException:
                part.close()
                raise
        except TPDEError as e:
            st.close()
            raise _named(e, f"{folder}: staging {file} in the store {store}") from None
        except BaseException:
            st.close()
            raise
        self._part, self._store = part, st  # its objects stay protected until the commit; closed at reset()
        del tensors
        results = [WriteResult(index=item.index, size_in_bytes=n,
                               storage_data=_Staged(file, name, offsets.get(name, 0), n, desc if i == 0 else None))
                   for i, (item, name, n) in enumerate(staged)]
        fut.set_result(results)
        return fut

    def finish(self, metadata: Metadata, results: List[List[WriteResult]]) -> None:
        folder, holder, store = self._where()
        staged: Dict[MetadataIndex, _Staged] = {}
        descs: Dict[str, str] = {}
        for rank_results in results:
            for r in rank_results:
                s = r.storage_data
                if not isinstance(s, _Staged):
                    raise InvalidArgumentError(f"{folder}: a write result of another writer ({type(s).__name__})")
                staged[r.index] = s
                if s.descriptor is not None:
                    if s.relative_path in descs:
                        raise InvalidArgumentError(f"{folder}: two ranks staged the store file {s.relative_path}")
                    descs[s.relative_path] = s.descriptor
        md_path = os.path.join(folder, _METADATA)
        # An older save's .metadata goes before the store's pointer changes:
        # a folder is never left with a .metadata of one save and the
        # pointer of another (an unfinished save has no .metadata).
        if os.path.lexists(md_path):
            os.unlink(md_path)
        with self._open_store(store) as st:
            step = None
            if descs:
                step = self._commit(st, list(descs.values()), holder, folder)
            else:
                self._drop_pointer(folder)
            metadata.storage_data = {
                k: _StorageInfo(s.relative_path, s.offset, s.length, [STORE, f"step={step}", f"name={s.name}"])
                for k, s in staged.items()}
            if _DCP_VERSION is not None:
                metadata.version = _DCP_VERSION
            metadata.storage_meta = self.storage_meta()
            self._write_metadata(folder, metadata)
            self._release()  # this rank's part is in the commit
            if is_s3(store):
                return  # never reclaimed by its folders (see the module docstring)
            try:
                st.reclaim()
            except TPDEError as e:
                # The save is complete; what no folder names stays for the
                # next save (or tpde verify --repair) to reclaim.
                warnings.warn(f"{folder}: saved, but reclaiming the store's unheld checkpoints failed: {e}",
                              RuntimeWarning, stacklevel=2)

    def _commit(self, st: Any, descs: List[str], holder: str, folder: str) -> int:
        from ..store import StoreLockedError

        deadline = time.monotonic() + _LOCK_WAIT_S
        pause = 0.05
        while True:
            try:
                return int(st.commit(descs, holder=holder).step)
            except StoreLockedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            except TPDEError as e:
                raise _named(e, f"{folder}: committing the checkpoint to the store {st.path}") from None

    @staticmethod
    def _drop_pointer(folder: str) -> None:
        """A save with no tensor item at all: the folder holds no checkpoint
        of the store (an older save's pointer would keep that one alive)."""
        try:
            os.unlink(os.path.join(folder, _POINTER))
        except FileNotFoundError:
            pass

    def _write_metadata(self, folder: str, metadata: Metadata) -> None:
        final, tmp = os.path.join(folder, _METADATA), os.path.join(folder, _METADATA + ".tmp")
        try:
            with open(tmp, "wb") as f:
                pickle.dump(metadata, f)
                if self.sync_files:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, final)
        except OSError as e:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            raise TPDEIOError(e.errno, f"{final}: {e.strerror}") from None
        if self.sync_files:
            fsync_dir(folder)


# --- reading: folders of tpde's first writer (forward chains across folders) -----------

def _parse_legacy(descriptors: Sequence[str]) -> Tuple[int, Optional[str]]:
    """(depth, reference folder or None) of a tpde.frame/tpde.delta item."""
    d = list(descriptors)
    if d == [FRAME]:
        return 0, None
    if len(d) == 3 and d[0] == DELTA and d[1].startswith("depth=") and d[2].startswith("ref=") and d[1][6:].isdigit():
        return int(d[1][6:]), d[2][4:]
    raise CorruptDataError(f"malformed tpde item descriptors {d}")


def _kind(info: Any) -> Optional[str]:
    """"store", "legacy", or None for an item tpde did not write."""
    d = list(getattr(info, "transform_descriptors", None) or ())
    if not d:
        return None
    if d[0] == STORE:
        return "store"
    if d[0] in (FRAME, DELTA):
        return "legacy"
    if d[0].startswith("tpde."):
        raise UnsupportedFormatError(f"unknown tpde item descriptors {d}: written by a newer tpde?")
    return None


class _Folder:
    """One folder of tpde's first DCP writer, decoded item by item. Folders
    reached through references are opened once per operation (shared
    `opened`)."""

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
        if info is None or _kind(info) != "legacy":
            return None
        return _parse_legacy(info.transform_descriptors)

    def frame(self, key: MetadataIndex) -> Tuple[int, torch.Tensor]:
        """(depth, frame-level tensor) of an item, its references resolved."""
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


# --- reading ---------------------------------------------------------------------------

def _store_item(info: Any) -> Tuple[int, str]:
    """(step, tensor name) of a tpde.store/1 item."""
    d = list(info.transform_descriptors)
    if len(d) == 3 and d[1].startswith("step=") and d[1][5:].isdigit() and d[2].startswith("name="):
        return int(d[1][5:]), d[2][5:]
    raise CorruptDataError(f"malformed tpde item descriptors {d}")


class Reader(FileSystemReader):
    """A DCP StorageReader for folders written by tpde.dcp.Writer (their
    tensors in the store the folder's .tpde-checkpoint.json names), plain
    FileSystemWriter folders, and folders of tpde's first DCP writer.

        dcp.load(state_dict, storage_reader=tpde.dcp.Reader("ckpt/step-200"))

    Each rank decodes each store file it needs once, however many of its
    items it reads (with resharding, parts of them). A folder without its
    pointer, or whose checkpoint is gone from the store, raises TPDEIOError
    naming it; damage raises CorruptDataError naming the file and tensor.
    max_output_bytes: the decode limit (tpde.Store's).
    """

    def __init__(self, path: PathLike, *, max_output_bytes: Optional[int] = None) -> None:
        super().__init__(path)
        self.max_output_bytes = max_output_bytes
        self._dtypes: Dict[str, torch.dtype] = {}

    def set_up_storage_reader(self, metadata: Metadata, is_coordinator: bool, *args: Any, **kwargs: Any) -> None:
        super().set_up_storage_reader(metadata, is_coordinator, *args, **kwargs)
        self._dtypes = {fqn: md.properties.dtype for fqn, md in metadata.state_dict_metadata.items()
                        if isinstance(md, TensorStorageMetadata)}

    def read_data(self, plan: LoadPlan, planner: LoadPlanner) -> Future:
        root = os.path.abspath(os.fspath(self.path))
        stored: Dict[str, List[ReadItem]] = {}
        legacy: Dict[MetadataIndex, List[ReadItem]] = {}
        others = []
        for req in plan.items:
            info = self.storage_data[req.storage_index]
            kind = _kind(info)
            if kind == "store":
                stored.setdefault(info.relative_path, []).append(req)
            elif kind == "legacy":
                legacy.setdefault(req.storage_index, []).append(req)
            else:
                others.append(req)
        if others:
            super().read_data(dataclasses.replace(plan, items=others), planner).wait()
        if stored:
            self._read_store(root, stored, planner)
        if legacy:
            folder = _Folder(root, self.storage_data)
            for key, reqs in legacy.items():
                frame = folder.frame(key)[1]  # once per stored item, however many requests read from it
                for req in reqs:
                    self._deliver(req, frame, planner, root)
        fut: Future = Future()
        fut.set_result(None)
        return fut

    def _read_store(self, root: str, by_file: Dict[str, List[ReadItem]], planner: LoadPlanner) -> None:
        from ..store import Store, read_pointer

        try:
            ptr = read_pointer(root)
        except TPDEIOError as e:
            if e.errno == errno.ENOENT:
                raise TPDEIOError(errno.ENOENT, f"{root}: its tensors are in a tpde store, and the folder has no "
                                                f"{_POINTER} naming it (removed, or the folder was copied without "
                                                "it)") from None
            raise
        step, store_path = int(ptr["step"]), ptr["store"]
        with Store(store_path, max_output_bytes=self.max_output_bytes) as st:
            if step not in st.steps():
                raise TPDEIOError(errno.ENOENT, f"{root}: its checkpoint {step} is no longer in the store "
                                                f"{store_path} (removed from it)")
            for rel, reqs in by_file.items():
                names = {}
                for req in reqs:
                    got_step, names[req.storage_index] = _store_item(self.storage_data[req.storage_index])
                    if got_step != step:
                        raise CorruptDataError(f"{root}: {_METADATA} is of checkpoint {got_step} of the store, its "
                                               f"{_POINTER} names checkpoint {step}: a save into this folder did "
                                               "not finish")
                try:
                    tensors = st.load(step, file=rel)  # the whole rank file, one decode
                except TPDEError as e:
                    raise _named(e, f"{root}: {rel}") from None
                for req in reqs:
                    name = names[req.storage_index]
                    t = tensors.get(name)
                    if not isinstance(t, torch.Tensor):
                        raise CorruptDataError(f"{root}: checkpoint {step} of the store {store_path} holds no "
                                               f"tensor {name!r} in {rel}")
                    self._deliver(req, t, planner, root)
                del tensors

    def _deliver(self, req: ReadItem, t: torch.Tensor, planner: LoadPlanner, root: str) -> None:
        key = req.storage_index
        if req.type == LoadItemType.BYTE_IO:
            planner.load_bytes(req, io.BytesIO(t.numpy().tobytes()))
            return
        t = _as_saved(t, self._dtypes[key.fqn])
        for d, (o, n) in enumerate(zip(req.storage_offsets, req.lengths)):
            if o + n > t.shape[d]:
                raise CorruptDataError(f"{root}: item {_name(key)} is {list(t.shape)}, a read wants [{o}, {o + n}) "
                                       f"of dimension {d}")
            t = t.narrow(d, o, n)
        target = planner.resolve_tensor(req).detach()
        if target.size() != t.size():
            raise CorruptDataError(f"{root}: item {_name(key)} gives {list(t.size())} for a "
                                   f"{list(target.size())} destination")
        target.copy_(t)
        planner.commit_tensor(req, target)


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
    against). keyframe_interval bounds both chains (and is the store's K
    when save creates the store).
    """

    def __init__(self, rank: int, world_size: int, compression_method: str = "auto", *,
                 keyframe_interval: int = 10, threads: int = 0) -> None:
        int_arg(world_size, "world_size", 1, 2**31 - 1)
        int_arg(rank, "rank", 0, world_size - 1)
        code(POSITION_CODINGS, compression_method, "compression_method")
        int_arg(keyframe_interval, "keyframe_interval", 1, 1000)
        self.rank, self.world_size = rank, world_size
        self.compression_method, self.keyframe_interval, self.threads = compression_method, keyframe_interval, threads
        self._chain = TPDECheckpointCompressor(compression_method=compression_method,
                                               keyframe_interval=keyframe_interval, threads=threads)

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
        """dcp.save on every rank (collective) with tpde.dcp.Writer: deltas
        against the newest checkpoint of the folder's sibling store."""
        self._check_group()
        writer = Writer(checkpoint_id, keyframe_interval=self.keyframe_interval,
                        compression_method=self.compression_method, codec_threads=self.threads)
        return dcp.save(state_dict, checkpoint_id=checkpoint_id, storage_writer=writer)

    def load(self, state_dict: Any, checkpoint_id: PathLike) -> None:
        """dcp.load on every rank (collective) into state_dict, in place."""
        self._check_group()
        dcp.load(state_dict, checkpoint_id=checkpoint_id, storage_reader=Reader(checkpoint_id))
