"""A model of the pickle machine that reads what torch's pickles say, running nothing.

:func:`run` walks one pickle with :func:`pickletools.genops` over a model of
the machine's stack and memo in which only plain values are real: strings,
integers, booleans, None, tuples, and dicts and lists as :class:`Dict` and
:class:`List`. A global name is a :class:`Global` (recorded, never looked
up); torch's storage ids become :class:`StorageRef`, and a call of one of
torch's tensor-rebuilding functions a :class:`TensorRef`. Every other value
is an opaque placeholder. Nothing is imported, called or constructed, so a
pickle that names ``os.system`` is as harmless here as any other; the
callers decide whether a pickle that names anything else is one they trust.

Used by _torchfile (torch.save zips) and _torchlegacy (pre-zip files).
Only the standard library is imported; this module must not load torch.
"""

from __future__ import annotations

import pickletools
import struct
from typing import Any, Dict, List as ListT, Optional, Tuple

from .errors import CorruptDataError, UnsupportedFormatError

#: Bytes per element of each dtype name this module reports (the
#: safetensors spellings of tpde's dtype table).
DTYPE_WIDTH: Dict[str, int] = {
    "F32": 4, "F64": 8, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}

# Typed storage classes (module "torch") whose numel counts elements.
STORAGE_CLASS_DTYPE = {
    "FloatStorage": "F32", "DoubleStorage": "F64", "HalfStorage": "F16",
    "BFloat16Storage": "BF16", "LongStorage": "I64", "IntStorage": "I32",
    "ShortStorage": "I16", "CharStorage": "I8", "ByteStorage": "U8",
    "BoolStorage": "BOOL", "Float8_e4m3fnStorage": "F8_E4M3",
    "Float8_e5m2Storage": "F8_E5M2", "UInt16Storage": "U16",
    "UInt32Storage": "U32", "UInt64Storage": "U64",
}

# Element sizes of torch's storage classes that tpde has no dtype for:
# their bytes are kept verbatim, but a legacy file still counts them in
# these units.
OTHER_STORAGE_CLASS_WIDTH = {
    "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "ComplexHalfStorage": 4,
    "QInt8Storage": 1, "QUInt8Storage": 1, "QInt32Storage": 4,
    "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
}

# torch dtypes as pickled (GLOBAL "torch <name>") for _rebuild_tensor_v3.
TORCH_DTYPE = {
    "float32": "F32", "float64": "F64", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "uint16": "U16", "uint32": "U32", "uint64": "U64",
}

UNTYPED_STORAGE = frozenset({("torch", "UntypedStorage"), ("torch.storage", "UntypedStorage")})
REBUILD_V2 = ("torch._utils", "_rebuild_tensor_v2")
REBUILD_V3 = ("torch._utils", "_rebuild_tensor_v3")
REBUILD_PARAMETER = frozenset({("torch._utils", "_rebuild_parameter"),
                               ("torch._utils", "_rebuild_parameter_with_state")})
ORDERED_DICT = ("collections", "OrderedDict")

# Stack plus memo entries the model may hold: each costs the model ~100
# bytes however few bytes of pickle made it, so a hostile pickle of
# repeated MEMOIZE or MARK opcodes would otherwise cost far more memory
# than its size. Real checkpoints use about ten per tensor.
MAX_ENTRIES = 1 << 24


class Global:
    """A module-level name a GLOBAL or STACK_GLOBAL opcode refers to."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def ident(self) -> Tuple[str, str]:
        return (self.module, self.name)


class StorageRef:
    """What BINPERSID yields for a storage id: the storage, by key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class TensorRef:
    """A tensor rebuilt by torch._utils from the storage with this key."""

    __slots__ = ("key",)

    def __init__(self, key: str) -> None:
        self.key = key


class Dict:
    """A dict (or OrderedDict) under construction: its items in order."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: ListT[Tuple[Any, Any]] = []


class List:
    """A list under construction."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items: ListT[Any] = []


class _Mark:
    __slots__ = ()


MARK = _Mark()
OPAQUE = object()  # any value the model does not track


class TooLarge(UnsupportedFormatError):
    """The pickle needs more model entries than MAX_ENTRIES."""


class StorageId:
    """One storage id: ("storage", class, key, location, numel[, view])."""

    __slots__ = ("cls", "key", "numel")

    def __init__(self, cls: Tuple[str, str], key: str, numel: int) -> None:
        self.cls, self.key, self.numel = cls, key, numel


class Walk:
    """What :func:`run` found: the value the pickle makes, every global it
    names, every storage id (in pickle order), every tensor view's
    (storage key, dtype global) for _rebuild_tensor_v3, and how many
    tensors it rebuilds (a tensor the pickle refers to twice, through its
    memo, is one)."""

    def __init__(self) -> None:
        self.value: Any = OPAQUE
        self.globals: ListT[Tuple[str, str]] = []
        self.storage_ids: ListT[StorageId] = []
        self.views: ListT[Tuple[str, Optional[Tuple[str, str]]]] = []
        self.tensors = 0
        self.end = 0  # the offset just past STOP, from the start of the walk


_STRING_OPS = frozenset({
    "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8",
    "STRING", "BINSTRING", "SHORT_BINSTRING",
})
_INT_OPS = frozenset({"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"})
_CONST_OPS = {"NONE": None, "NEWTRUE": True, "NEWFALSE": False}
_TUPLE_N = {"EMPTY_TUPLE": 0, "TUPLE1": 1, "TUPLE2": 2, "TUPLE3": 3}
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})


def storage_id(pid: object) -> Optional[StorageId]:
    """The storage id pid is, if it is one torch writes: a zip's
    ("storage", class, key, location, numel), or a legacy file's with a
    sixth item, None or a (key, offset, size) view of an older torch."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage"):
        return None
    cls, key, location, numel = pid[1:5]
    if len(pid) == 6:
        view = pid[5]
        if not (view is None or (isinstance(view, tuple) and len(view) == 3 and type(view[0]) is str
                                 and type(view[1]) is int and type(view[2]) is int)):
            return None
    # type() rather than isinstance: True is an int to isinstance.
    if not (isinstance(cls, Global) and type(key) is str and type(location) is str
            and type(numel) is int and numel >= 0):
        return None
    return StorageId(cls.ident(), key, numel)


def run(source: Any, what: str) -> Walk:
    """Walk the pickle at the start of source (bytes, or a file-like object
    with read, readline and tell) to its STOP. what names it in errors.

    Raises CorruptDataError for a pickle the real machine would fail on
    (a truncated or unknown opcode, a stack underflow, a memo entry read
    before written) and TooLarge for one too large to model.
    """
    try:
        return _run(source, what)
    except (CorruptDataError, TooLarge):
        raise
    # genops reports a truncated or unknown opcode as ValueError, a bad
    # UTF-8 string as UnicodeDecodeError (a ValueError) and some short
    # reads as struct.error.
    except (ValueError, struct.error, EOFError, OverflowError) as e:
        raise CorruptDataError(f"{what}: {e}") from None


def _run(source: Any, what: str) -> Walk:
    stack: list = []
    memo: dict = {}
    walk = Walk()

    def pop(pos: int) -> object:
        # The real machine hides everything below a MARK until the mark is
        # popped, so reaching one here is the same underflow it reports.
        if not stack or stack[-1] is MARK:
            raise CorruptDataError(f"{what}: stack underflow at byte {pos}")
        return stack.pop()

    def top(pos: int) -> object:
        if not stack or stack[-1] is MARK:
            raise CorruptDataError(f"{what}: stack underflow at byte {pos}")
        return stack[-1]

    def pop_to_mark(pos: int) -> list:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is MARK:
                items = stack[i + 1:]
                del stack[i:]
                return items
        raise CorruptDataError(f"{what}: no MARK for the opcode at byte {pos}")

    def reduce(func: object, args: object) -> object:
        if not isinstance(func, Global) or not isinstance(args, tuple):
            return OPAQUE
        ident = func.ident()
        if ident == ORDERED_DICT and args == ():
            return Dict()
        if ident in (REBUILD_V2, REBUILD_V3) and args and isinstance(args[0], StorageRef):
            # _rebuild_tensor_v3(storage, offset, size, stride,
            # requires_grad, backward_hooks, dtype[, metadata])
            if ident == REBUILD_V3 and len(args) >= 7:
                dtype = args[6].ident() if isinstance(args[6], Global) else None
                walk.views.append((args[0].key, dtype))
            walk.tensors += 1
            return TensorRef(args[0].key)
        if ident in REBUILD_PARAMETER and args and isinstance(args[0], TensorRef):
            return args[0]
        return OPAQUE

    ops = pickletools.genops(source)
    for op, arg, pos in ops:
        name = op.name
        if len(stack) + len(memo) > MAX_ENTRIES:
            raise TooLarge(f"{what} needs more than {MAX_ENTRIES} stack and memo entries")
        if name in _STRING_OPS or name in _INT_OPS:
            stack.append(arg)
        elif name in _CONST_OPS:
            stack.append(_CONST_OPS[name])
        elif name == "MARK":
            stack.append(MARK)
        elif name in _TUPLE_N:
            n = _TUPLE_N[name]
            items = [pop(pos) for _ in range(n)][::-1]
            stack.append(tuple(items))
        elif name == "TUPLE":
            stack.append(tuple(pop_to_mark(pos)))
        elif name == "EMPTY_DICT":
            stack.append(Dict())
        elif name == "EMPTY_LIST":
            stack.append(List())
        elif name in ("DICT", "SETITEMS"):
            items = pop_to_mark(pos)
            if len(items) % 2:
                raise CorruptDataError(f"{what}: {name} of an odd number of items at byte {pos}")
            target = Dict() if name == "DICT" else top(pos)
            if isinstance(target, Dict):
                target.items.extend(zip(items[::2], items[1::2]))
            if name == "DICT":
                stack.append(target)
        elif name == "SETITEM":
            value, key = pop(pos), pop(pos)
            target = top(pos)
            if isinstance(target, Dict):
                target.items.append((key, value))
        elif name in ("LIST", "APPENDS"):
            items = pop_to_mark(pos)
            target = List() if name == "LIST" else top(pos)
            if isinstance(target, List):
                target.items.extend(items)
            if name == "LIST":
                stack.append(target)
        elif name == "APPEND":
            value = pop(pos)
            target = top(pos)
            if isinstance(target, List):
                target.items.append(value)
        elif name == "BUILD":
            # Sets the state of the object below; the object stays.
            pop(pos)
            top(pos)
        elif name in _PUT_OPS or name == "MEMOIZE":
            memo[len(memo) if name == "MEMOIZE" else arg] = top(pos)
        elif name in _GET_OPS:
            if arg not in memo:
                raise CorruptDataError(f"{what}: memo entry {arg} read before written at byte {pos}")
            stack.append(memo[arg])
        elif name == "DUP":
            value = pop(pos)
            stack += [value, value]
        elif name == "GLOBAL":
            module, _, attr = arg.partition(" ")
            walk.globals.append((module, attr))
            stack.append(Global(module, attr))
        elif name == "STACK_GLOBAL":
            attr, module = pop(pos), pop(pos)
            if type(module) is str and type(attr) is str:
                walk.globals.append((module, attr))
                stack.append(Global(module, attr))
            else:
                walk.globals.append(("?", "?"))  # a name made at run time
                stack.append(OPAQUE)
        elif name == "BINPERSID":
            sid = storage_id(pop(pos))
            if sid is None:
                stack.append(OPAQUE)
            else:
                walk.storage_ids.append(sid)
                stack.append(StorageRef(sid.key))
        elif name == "REDUCE":
            args, func = pop(pos), pop(pos)
            stack.append(reduce(func, args))
        elif name == "POP" and stack and stack[-1] is MARK:
            # As in pickle's load_pop: POP right after a MARK drops the mark.
            stack.pop()
        elif name == "STOP":
            walk.value = pop(pos)
            walk.end = pos + 1
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
            stack.extend(OPAQUE for _ in op.stack_after)
    else:
        raise CorruptDataError(f"{what}: ends without a STOP opcode")
    return walk


class Unnameable(UnsupportedFormatError):
    """A dict key no state-dict path can spell (an integer too long for
    str(): Python refuses past 4300 digits)."""


# A path from the root: (the parent's path, this key); the root is None.
_Path = Tuple[Any, str]


def _spell(path: Optional[_Path]) -> str:
    """The string of a path, as joining its keys one by one with
    f"{p}/{k}" if p else k spells it: keys are joined with "/" from the
    first non-empty one on (a leading run of "" keys leaves no trace)."""
    keys: ListT[str] = []
    while path is not None:
        path, key = path
        keys.append(key)
    keys.reverse()
    start = next((i for i, k in enumerate(keys) if k), len(keys))
    return "/".join(keys[start:])


def _key(k: Any) -> str:
    try:
        return str(k)
    except ValueError:
        raise Unnameable("a dict key is an integer too long to name") from None


def paths(root: Any) -> "dict[str, str]":
    """The state-dict path of each storage key a tensor of root (a walk's
    value) lies on: the first path, dict keys and list indexes joined by
    "/" ("encoder.weight", "state/0/exp_avg"), that reaches it, walking
    the object in pickle order; "tensor" for a tensor at the root. A key
    no path reaches is left out.

    A storage key is an address in the saving process (a legacy file) or a
    counter (a zip), so it names nothing a user knows, and a legacy key
    differs between two saves of the same model; the path is what a user
    reads and what lets the store code a storage against the same storage
    of the previous checkpoint. Raises Unnameable for a key no path can
    spell."""
    found: "dict[str, str]" = {}
    seen = set()
    # A path is held as a chain of (parent, key) links, None at the root,
    # and spelt out only for the first tensor on each storage: making its
    # string for every element cost time and memory proportional to depth
    # per element, quadratic in the pickle for deeply nested lists.
    todo: ListT[Tuple[Any, Optional[_Path]]] = [(root, None)]
    while todo:  # iterative: a hostile pickle may nest deeper than recursion can
        value, path = todo.pop()
        if isinstance(value, (TensorRef, StorageRef)):
            if value.key not in found:
                found[value.key] = _spell(path) or "tensor"
            continue
        if id(value) in seen:
            continue
        if isinstance(value, Dict):
            children = [(v, _key(k)) for k, v in value.items if type(k) in (str, int)]
        elif isinstance(value, (List, tuple)):
            items = value.items if isinstance(value, List) else value
            children = [(v, str(i)) for i, v in enumerate(items)]
        else:
            continue
        seen.add(id(value))
        todo.extend((v, (path, k)) for v, k in reversed(children))
    return found
