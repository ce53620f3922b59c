"""Find the dtype of every tensor storage in a torch.save file, unpickling nothing.

A torch.save file is a zip whose <root>/data.pkl pickle names each storage
by a persistent id ``("storage", <class>, key, location, numel)``; the
storage's bytes are the record <root>/data/<key>. Its dtype is in that id
only: a typed class such as ``torch.BFloat16Storage`` (numel then counts
elements), or ``torch.storage.UntypedStorage`` (numel counts bytes) with the
dtype as the last argument of the ``torch._utils._rebuild_tensor_v3`` call
that rebuilds a tensor from it, which is how torch writes the dtypes that
have no storage class (uint16/32/64, float8).

The pickle is only walked with :func:`pickletools.genops` over a small model
of the pickle machine (tpde._torchpickle) in which every object other than
plain values, global names and storage ids is an opaque placeholder.
Nothing is imported, called or constructed, so a pickle that names
``os.system`` is as harmless here as any other.

:func:`hints` is what the callers use: it also reads legacy (pre-zip)
torch.save files, through tpde._torchlegacy. It names each storage by the
state-dict path of its first tensor ("state/0/exp_avg"), as a legacy file's
are, rather than by its record's name (data/<key>): that is the name
``tpde stats``, ``tpde info`` and lossy rules show and match.

Only the standard library is imported; this module must not load torch.
"""

from __future__ import annotations

import os
import struct
import threading
import zipfile
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple, Union

from . import _torchpickle
from ._torchpickle import DTYPE_WIDTH
from .errors import CorruptDataError, UnsupportedFormatError

__all__ = ["storage_dtypes", "storage_names", "scan", "hints", "count_tensors", "DTYPE_WIDTH"]

#: data.pkl records larger than this are not scanned (a real one holds a
#: few hundred bytes per tensor).
MAX_PICKLE_BYTES = 1 << 30

#: Records a zip may hold before scan gives up on it (as core/torchzip).
MAX_RECORDS = 1 << 20


class _Claims:
    """What the pickle says about each storage key: every dtype and byte
    size it was named with. Only a key with exactly one of each is
    reported; torch refuses to save two dtypes for one storage, so two
    means a pickle tpde should not trust, and the storage stays verbatim."""

    def __init__(self, walk: _torchpickle.Walk) -> None:
        self.dtypes: Dict[str, set] = {}
        self.nbytes: Dict[str, set] = {}
        for sid in walk.storage_ids:
            self.storage(sid.key, sid.cls, sid.numel)
        for key, dtype_name in walk.views:
            self.view(key, dtype_name)

    def storage(self, key: str, cls: Tuple[str, str], numel: int) -> None:
        if cls in _torchpickle.UNTYPED_STORAGE:
            self.nbytes.setdefault(key, set()).add(numel)
            self.dtypes.setdefault(key, set())
            return
        dtype = _torchpickle.STORAGE_CLASS_DTYPE.get(cls[1]) if cls[0] == "torch" else None
        # None marks a class tpde has no dtype for (complex, quantized,
        # anything unknown): the key is then never reported.
        self.dtypes.setdefault(key, set()).add(dtype)
        if dtype is not None:
            self.nbytes.setdefault(key, set()).add(numel * DTYPE_WIDTH[dtype])

    def view(self, key: str, dtype_name: Optional[Tuple[str, str]]) -> None:
        dtype = _torchpickle.TORCH_DTYPE.get(dtype_name[1]) if dtype_name and dtype_name[0] == "torch" else None
        self.dtypes.setdefault(key, set()).add(dtype)

    def result(self) -> Dict[str, Tuple[str, int]]:
        out = {}
        for key, dtypes in self.dtypes.items():
            sizes = self.nbytes.get(key, set())
            if len(dtypes) != 1 or len(sizes) != 1:
                continue
            (dtype,), (nbytes,) = dtypes, sizes
            if dtype is None or nbytes % DTYPE_WIDTH[dtype]:
                continue
            out[key] = (dtype, nbytes // DTYPE_WIDTH[dtype])
        return out


#: The last few walks, by the exact pickle bytes walked. A store's add walks
#: a torch file's data.pkl for its hints, then walks the same pickle again,
#: read back from the store, to count the tensors of the checkpoint it
#: returns: that second walk, in Python under the GIL, was most of what an
#: add spent outside the library (cProfile of a Trainer checkpoint). The
#: key is the bytes themselves, so a hit is the same pickle, never a guess.
_WALKS: "OrderedDict[bytes, _torchpickle.Walk]" = OrderedDict()
_WALKS_LOCK = threading.Lock()
_WALKS_MAX = 8
_WALKS_MAX_BYTES = 16 << 20


def _walk(pickle_bytes: bytes) -> _torchpickle.Walk:
    """_torchpickle.run on a torch data.pkl, reusing a recent walk of the
    same bytes (walks are only read, never changed)."""
    with _WALKS_LOCK:
        hit = _WALKS.get(pickle_bytes)
        if hit is not None:
            _WALKS.move_to_end(pickle_bytes)
            return hit
    walk = _torchpickle.run(pickle_bytes, "torch data.pkl")
    if len(pickle_bytes) <= _WALKS_MAX_BYTES:
        with _WALKS_LOCK:
            _WALKS[pickle_bytes] = walk
            while len(_WALKS) > _WALKS_MAX or sum(map(len, _WALKS)) > _WALKS_MAX_BYTES:
                _WALKS.popitem(last=False)
    return walk


def storage_dtypes(pickle_bytes: bytes) -> Dict[str, Tuple[str, int]]:
    """Map each storage key named in a torch data.pkl to (dtype, numel).

    dtype is a safetensors dtype name (see DTYPE_WIDTH) and numel counts
    elements of that dtype, so the record <root>/data/<key> should hold
    numel * DTYPE_WIDTH[dtype] bytes. Storages of other dtypes (complex,
    quantized, unknown classes) are left out. The pickle is only scanned,
    never executed. Raises CorruptDataError for a broken pickle and
    UnsupportedFormatError for one too large to model.
    """
    return _Claims(_walk(bytes(pickle_bytes))).result()


def storage_names(walk: _torchpickle.Walk, keys: Any) -> Dict[str, str]:
    """A region name for each of keys: the state-dict path of the first
    tensor on that storage ("model/encoder.weight", "state/0/exp_avg"), else
    "data/<key>" (its record's name); unique, a repeat getting "#<key>"."""
    try:
        found = _torchpickle.paths(walk.value)
    except _torchpickle.Unnameable:
        found = {}
    names: Dict[str, str] = {}
    used = set()
    for key in sorted(keys, key=lambda k: (len(k), k)):
        name = found.get(key) or f"data/{key}"
        if name in used:
            name = f"{name}#{key}"
        used.add(name)
        names[key] = name
    return names


def _zip_reason(infos: list) -> Tuple[Optional[str], Optional[str]]:
    """(root, None) when the records are laid out as torch.save writes
    them, else (None, reason). Mirrors core/torchzip's Parse."""
    if len(infos) > MAX_RECORDS:
        return None, f"{len(infos)} records exceed {MAX_RECORDS}"
    if not infos:
        return None, "no data.pkl (empty zip)"
    root = None
    seen = set()
    for info in infos:
        head, sep, rest = info.filename.partition("/")
        if not head or not sep or not rest:
            return None, f"record {info.filename!r} is not inside a root folder"
        if root is None:
            root = head
        elif head != root:
            return None, f"mixed roots {root!r} and {head!r}"
        if info.filename in seen:
            return None, f"duplicate record {info.filename!r}"
        seen.add(info.filename)
        if rest.startswith("code/") or rest == "constants.pkl":
            return None, f"TorchScript archive (has {info.filename!r})"
    if f"{root}/data.pkl" not in seen:
        return None, "no data.pkl"
    return root, None


def scan(path: Union[str, "os.PathLike[str]"]) -> Tuple[Optional[Dict[str, str]], Optional[str]]:
    """Read the storage dtypes of the torch.save file at path.

    Returns (key -> dtype name, None) for a plain torch.save zip, or
    (None, reason) when the file is not one: not a zip, TorchScript, a
    deflated data.pkl or storage record, several roots. A pickle without
    storages gives {}. A key whose dtype is unknown, or whose numel does not
    match its record's size, is left out (its bytes stay verbatim). Raises
    CorruptDataError when data.pkl is broken, or fails its CRC.
    """
    found, reason = _scan(path)
    return (None, reason) if found is None else (found[0], None)


def _scan(path: Union[str, "os.PathLike[str]"]) -> Tuple[Optional[Tuple[Dict[str, str], Dict[str, str]]],
                                                         Optional[str]]:
    """scan, with the region name of each key it types (storage_names)."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return None, "not a zip"
    except (EOFError, ValueError, struct.error) as e:
        # zipfile's reading of a mangled central directory can fail in
        # these ways too; for tpde the file is then no container either.
        return None, f"not a readable zip: {e}"
    with zf:
        infos = zf.infolist()
        root, reason = _zip_reason(infos)
        if reason is not None:
            return None, reason
        by_name = {i.filename: i for i in infos}
        for info in infos:
            if info.flag_bits & 0x1:
                return None, f"encrypted record {info.filename!r}"
            is_data = info.filename.startswith(f"{root}/data/")
            if (is_data or info.filename == f"{root}/data.pkl") and info.compress_type != zipfile.ZIP_STORED:
                return None, f"deflated record {info.filename!r} (method {info.compress_type})"
        pkl = by_name[f"{root}/data.pkl"]
        if pkl.file_size > MAX_PICKLE_BYTES:
            return None, f"data.pkl of {pkl.file_size} bytes exceeds {MAX_PICKLE_BYTES}"
        try:
            # Bounded read: a central directory that understates the size
            # must not make this read more than was checked above.
            with zf.open(pkl) as f:
                pickle_bytes = f.read(MAX_PICKLE_BYTES + 1)
        except (zipfile.BadZipFile, EOFError) as e:
            raise CorruptDataError(f"torch data.pkl in {os.fspath(path)}: {e}") from None
        try:
            walk = _walk(pickle_bytes)
        except UnsupportedFormatError as e:
            return None, str(e)
        dtypes = {}
        for key, (dtype, numel) in _Claims(walk).result().items():
            rec = by_name.get(f"{root}/data/{key}")
            if rec is not None and rec.file_size == numel * DTYPE_WIDTH[dtype]:
                dtypes[key] = dtype
        return (dtypes, storage_names(walk, dtypes)), None


def count_tensors(source: Any) -> Optional[int]:
    """How many tensors the torch.save zip source (a path, or a seekable
    binary file) holds, as its data.pkl rebuilds them (a parameter and a
    tensor shared by two entries are one each); None for a file that is no
    torch.save zip (TorchScript, several roots, a data.pkl over
    MAX_PICKLE_BYTES). Nothing is unpickled. Raises CorruptDataError for a
    data.pkl that does not parse."""
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, EOFError, ValueError, struct.error):
        return None
    with zf:
        root, reason = _zip_reason(zf.infolist())
        if reason is not None:
            return None
        pkl = zf.getinfo(f"{root}/data.pkl")
        if pkl.file_size > MAX_PICKLE_BYTES:
            return None
        try:
            with zf.open(pkl) as f:
                pickle_bytes = f.read(MAX_PICKLE_BYTES + 1)
        except (zipfile.BadZipFile, EOFError, NotImplementedError) as e:
            raise CorruptDataError(f"torch data.pkl: {e}") from None
    try:
        return _walk(pickle_bytes).tensors
    except _torchpickle.TooLarge:
        return None


def hints(path: Union[str, bytes, "os.PathLike[str]"]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """What the C ABI's torch hints should say of the file at path
    (include/tpde.h, TPDE_TORCH_HINTS), read from its pickles.

    Returns (hints, None) for a torch.save zip ({"torch_zip": dtypes,
    "torch_zip_names": region names}) or a legacy torch.save file
    ({"torch_legacy": layout}); (None, note) for a
    torch file tpde stores whole, the note saying why; (None, None) for
    any other file, and for a stream (a pipe or FIFO, which must not be
    read ahead of the library). Raises CorruptDataError when a zip's
    data.pkl is broken or fails its CRC, OSError when path is unreadable.
    """
    from . import _torchlegacy

    p = os.fsdecode(path)
    if not os.path.isfile(p):
        return None, None
    with open(p, "rb") as fh:
        head = fh.read(32)
    if head[:4] == b"PK\x03\x04":
        found, reason = _scan(p)
        if found is None:
            return None, f"torch file stored whole: {reason}"
        return {"torch_zip": found[0], "torch_zip_names": found[1]}, None
    if _torchlegacy.sniff(head):
        layout, reason = _torchlegacy.scan(p)
        if layout is None:
            return None, f"legacy torch file stored whole: {reason}"
        return {"torch_legacy": layout}, None
    return None, None
