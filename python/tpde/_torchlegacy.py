"""Find where a legacy (pre-zip) torch.save file keeps its storages, unpickling nothing.

A legacy file (``torch.save(..., _use_new_zipfile_serialization=False)``,
and every torch.save before torch 1.6) is five pickles back to back:

1. torch's magic number, 0x1950a86a20f9469cfc6c;
2. the protocol version, 1001;
3. a system-info dict, whose ``little_endian`` must be True here;
4. the saved object, in which each storage is a persistent id
   ``("storage", <class>, key, location, numel, view)``;
5. the sorted list of storage keys;

then, for each key in that list's order, a u64 little-endian element count
and count × element-size bytes, up to the end of the file (docs/FORMAT.md,
"Legacy torch files").

:func:`scan` walks the pickles with tpde._torchpickle, so nothing is
imported, called or constructed, and returns what core/torchlegacy needs
to check the storage area and type its regions. A file it cannot vouch for
(a pickle that names anything but the few torch and collections names a
state dict uses, a big-endian file, a pickle that does not parse) gets a
reason instead; the caller then stores it whole, which is still lossless.

Storage keys are the addresses the storages had in the saving process, so
they differ between two saves of the same model. Each storage is named
instead by the first state-dict path that reaches it ("encoder.weight",
"optimizer/state/0/exp_avg"), which is what lets the store code a storage
against the same storage of the previous checkpoint.

Only the standard library is imported; this module must not load torch.
"""

from __future__ import annotations

import io
import mmap
import os
from typing import Any, Dict, List, Optional, Tuple, Union

from . import _torchpickle as tp
from .errors import CorruptDataError, UnsupportedFormatError

__all__ = ["scan", "sniff", "count_tensors", "MAGIC_NUMBER", "PROTOCOL_VERSION", "MAX_PICKLE_BYTES"]

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: The five pickles together may not be longer than this (a real file's
#: take a few hundred bytes per tensor).
MAX_PICKLE_BYTES = 1 << 30

# The magic number as pickle's LONG1 writes it: opcode, length, 10 bytes.
_MAGIC_LONG1 = b"\x8a\x0a" + MAGIC_NUMBER.to_bytes(10, "little")

# What the saved object's pickle may name and still be a plain state dict
# (nested dicts, lists and tuples of tensors and plain values): the
# functions torch rebuilds tensors and parameters with, its storage classes
# and dtypes, and OrderedDict. Names are only compared, never looked up.
_PLAIN_GLOBALS = frozenset(
    {tp.ORDERED_DICT, tp.REBUILD_V2, tp.REBUILD_V3, *tp.REBUILD_PARAMETER, *tp.UNTYPED_STORAGE}
    | {("torch", c) for c in (*tp.STORAGE_CLASS_DTYPE, *tp.OTHER_STORAGE_CLASS_WIDTH)}
    | {("torch", d) for d in tp.TORCH_DTYPE}
)


class _Odd(Exception):
    """A legacy file tpde stores whole; the message says why."""


class _Reader:
    """read/readline/tell over a mapped file, never past limit: a length in
    a hostile opcode can make genops ask for more, never get it."""

    def __init__(self, mm: mmap.mmap, limit: int) -> None:
        self.mm, self.pos, self.limit = mm, 0, limit

    def read(self, n: int = -1) -> bytes:
        end = self.limit if n < 0 else min(self.limit, self.pos + n)
        b = self.mm[self.pos:end]
        self.pos = end
        return b

    def readline(self) -> bytes:
        i = self.mm.find(b"\n", self.pos, self.limit)
        return self.read((i + 1 if i >= 0 else self.limit) - self.pos)

    def tell(self) -> int:
        return self.pos


def sniff(head: bytes) -> bool:
    """Whether head (a file's first bytes) starts like a legacy torch file:
    a pickle (PROTO) of the magic number within 32 bytes (protocol 4 and
    later put a FRAME opcode first)."""
    return head[:1] == b"\x80" and _MAGIC_LONG1 in head[:32]


def scan(path: Union[str, "os.PathLike[str]"]) -> Tuple[Optional[Dict[str, Any]], Optional[str]]:
    """Read the storage layout of the legacy torch.save file at path.

    Returns (layout, None), where layout is the JSON object core/torchlegacy
    checks ({"data_start": offset just past pickle 5, "storages": [{"key",
    "name", "dtype", "count", "element_size"}, ...] in file order}), or
    (None, reason) for a file tpde should store whole. The counts are the
    pickle's; the Go side checks them against the file's bytes.
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return None, "empty file"
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            rd = _Reader(mm, min(size, MAX_PICKLE_BYTES))
            try:
                return _layout(rd), None
            except _Odd as e:
                return None, str(e)
            except (CorruptDataError, UnsupportedFormatError) as e:
                if rd.pos >= rd.limit and rd.limit < size:
                    return None, f"its pickles are longer than {MAX_PICKLE_BYTES} bytes"
                return None, f"a pickle does not parse: {e}"


def count_tensors(head: bytes) -> Optional[int]:
    """How many tensors the legacy torch.save file whose first bytes are
    head (its five pickles, or more) holds, as its pickle 4 rebuilds them;
    None when pickle 4 does not end within head or is too large to model.
    Nothing is unpickled. Raises CorruptDataError for pickles that do not
    parse."""
    src = io.BytesIO(head)
    try:
        for what in ("pickle 1 (magic number)", "pickle 2 (protocol version)", "pickle 3 (system info)"):
            tp.run(src, what)
        return tp.run(src, "pickle 4 (the saved object)").tensors
    except tp.TooLarge:
        return None
    except CorruptDataError:
        if src.tell() >= len(head):
            return None  # cut short by head, not damaged
        raise


def _plain(rd: _Reader, what: str) -> Any:
    walk = tp.run(rd, what)
    if walk.globals:
        module, name = walk.globals[0]
        raise _Odd(f"{what} names {module}.{name}")
    return walk.value


def _layout(rd: _Reader) -> Dict[str, Any]:
    magic = _plain(rd, "pickle 1 (magic number)")
    if type(magic) is not int or magic != MAGIC_NUMBER:
        raise _Odd("pickle 1 is not torch's magic number")
    proto = _plain(rd, "pickle 2 (protocol version)")
    if type(proto) is not int or proto != PROTOCOL_VERSION:
        raise _Odd(f"protocol version {proto!r}, not {PROTOCOL_VERSION}")
    info = _plain(rd, "pickle 3 (system info)")
    little = dict(info.items).get("little_endian") if isinstance(info, tp.Dict) else None
    if little is False:
        raise _Odd("a big-endian file (system info says little_endian False)")
    if little is not True:
        raise _Odd("system info has no little_endian flag")

    obj = tp.run(rd, "pickle 4 (the saved object)")
    for ident in obj.globals:
        if ident not in _PLAIN_GLOBALS:
            raise _Odd(f"not a plain state dict: pickle 4 names {ident[0]}.{ident[1]}")

    keys = _plain(rd, "pickle 5 (storage keys)")
    if not (isinstance(keys, tp.List) and all(type(k) is str for k in keys.items)):
        raise _Odd("pickle 5 is not a list of storage keys")
    data_start = rd.pos

    first: Dict[str, tp.StorageId] = {}
    classes: Dict[str, set] = {}
    for sid in obj.storage_ids:
        first.setdefault(sid.key, sid)
        classes.setdefault(sid.key, set()).add(sid.cls)
    views: Dict[str, set] = {}
    for key, dt in obj.views:
        views.setdefault(key, set()).add(dt)
    if len(set(keys.items)) != len(keys.items) or set(keys.items) != set(first):
        raise _Odd(f"pickle 5 lists {len(keys.items)} storage keys, pickle 4 names {len(first)} storages")

    names = _names(obj.value, keys.items)
    storages = []
    for key in keys.items:
        elem, dtype = _typed(first[key].cls, classes[key], views.get(key, set()))
        storages.append({"key": key, "name": names[key], "dtype": dtype, "count": first[key].numel,
                         "element_size": elem})
    return {"data_start": data_start, "storages": storages}


def _typed(cls: Tuple[str, str], classes: set, views: set) -> Tuple[int, str]:
    """(element size, dtype name or "") of a storage first named with cls.

    The first id is the one torch wrote the storage with, so its class
    sets the unit of the count. The dtype is given only when every id and
    every tensor view agrees on it; otherwise the bytes stay verbatim.
    """
    if cls in tp.UNTYPED_STORAGE:
        dtypes = {tp.TORCH_DTYPE.get(d[1]) if d and d[0] == "torch" else None for d in views}
        agreed = len(classes) == 1 and len(dtypes) == 1 and None not in dtypes
        return 1, (dtypes.pop() if agreed else "")
    module, name = cls
    if module == "torch" and name in tp.STORAGE_CLASS_DTYPE:
        dtype = tp.STORAGE_CLASS_DTYPE[name]
        return tp.DTYPE_WIDTH[dtype], (dtype if len(classes) == 1 and not views else "")
    if module == "torch" and name in tp.OTHER_STORAGE_CLASS_WIDTH:
        return tp.OTHER_STORAGE_CLASS_WIDTH[name], ""
    raise _Odd(f"storage class {module}.{name} is not one of torch's")


def _names(root: Any, keys: List[str]) -> Dict[str, str]:
    """Name each storage key by the first state-dict path that reaches a
    tensor on it (tpde._torchpickle.paths); a storage no path reaches is
    "storage/<key>"."""
    try:
        found = tp.paths(root)
    except tp.Unnameable as e:
        raise _Odd(str(e)) from None
    names: Dict[str, str] = {}
    used = set()
    for key in keys:
        name = found.get(key, f"storage/{key}")
        if name in used:  # two storages one path reaches: a hostile pickle
            name = f"{name}#{key}"
        used.add(name)
        names[key] = name
    return names
