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
of the pickle machine's stack and memo, in which every object other than
strings, integers, tuples, global names and storage ids is an opaque
placeholder. Nothing is imported, called or constructed, so a pickle that
names ``os.system`` is as harmless here as any other.

Only the standard library is imported; this module must not load torch.
"""

from __future__ import annotations

import os
import pickletools
import struct
import zipfile
from typing import Dict, Optional, Tuple, Union

from .errors import CorruptDataError, UnsupportedFormatError

__all__ = ["storage_dtypes", "scan", "DTYPE_WIDTH"]

#: Bytes per element of each dtype name this module reports (the
#: safetensors spellings of tpde's dtype table).
DTYPE_WIDTH: Dict[str, int] = {
    "F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}

# Typed storage classes (module "torch") whose numel counts elements.
_STORAGE_CLASS_DTYPE = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
    "BoolStorage": "BOOL", "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2", "UInt16Storage": "U16",
    "UInt32Storage": "U32", "UInt64Storage": "U64",
}

# torch dtypes as pickled (GLOBAL "torch <name>") for _rebuild_tensor_v3.
_TORCH_DTYPE = {
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "uint16": "U16", "uint32": "U32", "uint64": "U64",
}

_UNTYPED_STORAGE = {("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage")}
_REBUILD_V3 = ("torch._utils", "_rebuild_tensor_v3")

#: data.pkl records larger than this are not scanned (a real one holds a
#: few hundred bytes per tensor).
MAX_PICKLE_BYTES = 1 << 30

# Stack plus memo entries the model may hold: each costs the model ~100
# bytes however few bytes of pickle made it, so a hostile pickle of
# repeated MEMOIZE or MARK opcodes would otherwise cost far more memory
# than its size. Real checkpoints use about ten per tensor.
_MAX_ENTRIES = 1 << 24

#: Records a zip may hold before scan gives up on it (as core/torchzip).
MAX_RECORDS = 1 << 20


class _Global:
    """A module-level name a GLOBAL or STACK_GLOBAL opcode refers to."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def ident(self) -> Tuple[str, str]:
        return (self.module, self.name)


class _StorageRef:
    """What BINPERSID yields for a storage id: the storage, by key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class _Mark:
    __slots__ = ()


_MARK = _Mark()
_OPAQUE = object()  # any value the model does not track

_STRING_OPS = frozenset({
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "STRING", "BINSTRING", "SHORT_BINSTRING",
})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_TUPLE_N = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


class _TooLarge(Exception):
    pass


class _Claims:
    """What the pickle says about each storage key: every dtype and byte
    size it was named with. Only a key with exactly one of each is
    reported; torch refuses to save two dtypes for one storage, so two
    means a pickle tpde should not trust, and the storage stays verbatim."""

    def __init__(self) -> None:
        self.dtypes: Dict[str, set] = {}
        self.nbytes: Dict[str, set] = {}

    def storage(self, key: str, cls: Tuple[str, str], numel: int) -> None:
        if cls in _UNTYPED_STORAGE:
            self.nbytes.setdefault(key, set()).add(numel)
            self.dtypes.setdefault(key, set())
            return
        dtype = _STORAGE_CLASS_DTYPE.get(cls[1]) if cls[0] == "torch" else None
        # None marks a class tpde has no dtype for (complex, quantized,
        # anything unknown): the key is then never reported.
        self.dtypes.setdefault(key, set()).add(dtype)
        if dtype is not None:
            self.nbytes.setdefault(key, set()).add(numel * DTYPE_WIDTH[dtype])

    def view(self, key: str, dtype_name: Optional[Tuple[str, str]]) -> None:
        dtype = _TORCH_DTYPE.get(dtype_name[1]) if dtype_name and dtype_name[0] == "torch" else None
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


def _storage_id(pid: object) -> Optional[Tuple[str, Tuple[str, str], int]]:
    """(key, class, numel) when pid is torch's storage id, else None."""
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
        return None
    _, cls, key, location, numel = pid
    # type() rather than isinstance: True is an int to isinstance.
    if not (isinstance(cls, _Global) and type(key) is str and type(location) is str
            and type(numel) is int and numel >= 0):
        return None
    return key, cls.ident(), numel


def _walk(pickle_bytes: bytes) -> Dict[str, Tuple[str, int]]:
    stack: list = []
    memo: dict = {}
    claims = _Claims()

    def pop(pos: int) -> object:
        # The real machine hides everything below a MARK until the mark is
        # popped, so reaching one here is the same underflow it reports.
        if not stack or stack[-1] is _MARK:
            raise CorruptDataError(f"torch data.pkl: stack underflow at byte {pos}")
        return stack.pop()

    def pop_to_mark(pos: int) -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is _MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise CorruptDataError(f"torch data.pkl: no MARK for the opcode at byte {pos}")

    for op, arg, pos in pickletools.genops(pickle_bytes):
        name = op.name
        if len(stack) + len(memo) > _MAX_ENTRIES:
            raise _TooLarge(f"data.pkl needs more than {_MAX_ENTRIES} stack and memo entries")
        if name in _STRING_OPS or name in _INT_OPS:
            stack.append(arg)
        elif name == "MARK":
            stack.append(_MARK)
        elif name in _TUPLE_N:
            n = _TUPLE_N[name]
            items = [pop(pos) for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(pop_to_mark(pos)))
        elif name in _PUT_OPS or name == "MEMOIZE":
            if not stack or stack[-1] is _MARK:
                raise CorruptDataError(f"torch data.pkl: memo write from an empty stack at byte {pos}")
            memo[len(memo) if name == "MEMOIZE" else arg] = stack[-1]
        elif name in _GET_OPS:
            if arg not in memo:
                raise CorruptDataError(f"torch data.pkl: memo entry {arg} read before written at byte {pos}")
            stack.append(memo[arg])
        elif name == "DUP":
            value = pop(pos)
            stack += [value, value]
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            stack.append(_Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = pop(pos), pop(pos)
            ok = type(module) is str and type(attr) is str
            stack.append(_Global(module, attr) if ok else _OPAQUE)
        elif name == "BINPERSID":
            sid = _storage_id(pop(pos))
            if sid is None:
                stack.append(_OPAQUE)
            else:
                claims.storage(*sid)
                stack.append(_StorageRef(sid[0]))
        elif name == "REDUCE":
            args, func = pop(pos), pop(pos)
            # _rebuild_tensor_v3(storage, offset, size, stride, requires_grad,
            # backward_hooks, dtype[, metadata])
            if (isinstance(func, _Global) and func.ident() == _REBUILD_V3 and isinstance(args, tuple)
                    and len(args) >= 7 and isinstance(args[0], _StorageRef)):
                dtype = args[6].ident() if isinstance(args[6], _Global) else None
                claims.view(args[0].key, dtype)
            stack.append(_OPAQUE)
        elif name == "POP" and stack and stack[-1] is _MARK:
            # As in pickle's load_pop: POP right after a MARK drops the mark.
            stack.pop()
        elif name == "STOP":
            pop(pos)
            break
        else:
            # Every other opcode: pop what pickletools says it consumes and
            # push placeholders for what it produces.
            before = op.stack_before
            if pickletools.markobject in before:
                pop_to_mark(pos)
                for _ in range(before.index(pickletools.markobject)):
                    pop(pos)
            else:
                for _ in before:
                    pop(pos)
            stack.extend(_OPAQUE for _ in op.stack_after)
    return claims.result()


def storage_dtypes(pickle_bytes: bytes) -> Dict[str, Tuple[str, int]]:
    """Map each storage key named in a torch data.pkl to (dtype, numel).

    dtype is a safetensors dtype name (see DTYPE_WIDTH) and numel counts
    elements of that dtype, so the record <root>/data/<key> should hold
    numel * DTYPE_WIDTH[dtype] bytes. Storages of other dtypes (complex,
    quantized, unknown classes) are left out. The pickle is only scanned,
    never executed. Raises CorruptDataError for a broken pickle and
    UnsupportedFormatError for one too large to model.
    """
    try:
        return _walk(bytes(pickle_bytes))
    except _TooLarge as e:
        raise UnsupportedFormatError(str(e)) from None
    except CorruptDataError:
        raise
    # genops reports a truncated or unknown opcode as ValueError, a bad
    # UTF-8 string as UnicodeDecodeError (a ValueError) and some short
    # reads as struct.error.
    except (ValueError, struct.error, EOFError, OverflowError) as e:
        raise CorruptDataError(f"torch data.pkl: {e}") from None


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
            found = storage_dtypes(pickle_bytes)
        except UnsupportedFormatError as e:
            return None, str(e)
        dtypes = {}
        for key, (dtype, numel) in found.items():
            rec = by_name.get(f"{root}/data/{key}")
            if rec is not None and rec.file_size == numel * DTYPE_WIDTH[dtype]:
                dtypes[key] = dtype
        return dtypes, None
