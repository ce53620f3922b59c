"""The structure of a checkpoint: a state dict taken apart into named
tensors plus a JSON skeleton of everything else, and put back together.

A checkpoint may be any nesting of dicts, lists and tuples of tensors and
JSON-like values (an optimizer's state_dict(), an epoch number). Flat finds
its tensors (tied weights once, under one name) and describes the rest as
nodes (docs/FORMAT.md section 9.6); rebuild turns nodes back into values,
refusing anything malformed as corrupt.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Dict, List, Mapping, Tuple

from . import _tensors
from .errors import CorruptDataError, InvalidArgumentError

__all__ = ["Flat", "rebuild", "json_type", "with_state_dict_metadata", "state_dict_nbytes", "MAX_META_DEPTH",
           "ABSENT"]

Checkpoint = Any  # a state dict

#: How deeply a bundle's metadata JSON may nest (bundle.MaxMetaDepth,
#: docs/FORMAT.md §9.5). The library refuses deeper metadata, in a bundle
#: as corrupt and from a writer as invalid; the encoder refuses a
#: checkpoint whose structure would need it before coding anything.
MAX_META_DEPTH = 100
#: The JSON depth of the skeleton's (and state_dict_metadata's) top node:
#: inside the metadata object and its "tpde" member.
SKELETON_DEPTH = 3


def _key_json(k: Any, path: str) -> Any:
    if k is None or isinstance(k, (str, bool, int)):
        return k
    if isinstance(k, float) and math.isfinite(k):
        return k
    raise InvalidArgumentError(f"{path}: a key of type {type(k).__name__} cannot be stored (str, int, float, bool or None)")


class Flat:
    """A checkpoint taken apart: its tensors by unique name, plus a JSON
    skeleton of everything else (None when it is a flat name -> tensor
    mapping, the common case)."""

    def __init__(self, ckpt: Checkpoint, what: str = "checkpoint") -> None:
        self.tensors: Dict[str, Any] = {}
        self.aliases: Dict[str, str] = {}  # name -> earlier name of the same tensor
        self._seen: Dict[Tuple[Any, ...], str] = {}
        self.state_dict_metadata: Any = None
        if not isinstance(ckpt, Mapping):
            raise InvalidArgumentError(f"{what} must be a mapping (a state dict), not {type(ckpt).__name__}")
        md = getattr(ckpt, "_metadata", None)
        if isinstance(md, Mapping):
            # nn.Module.state_dict() versions its modules here; load_state_dict reads it.
            self.state_dict_metadata = self._plain(md, f"{what}._metadata", SKELETON_DEPTH)
        if all(isinstance(k, str) and _tensors.is_tensor(v) for k, v in ckpt.items()):
            self.skeleton = None
            for k, v in ckpt.items():
                self._add(k, v)
        else:
            self.skeleton = self._walk(ckpt, what, "", SKELETON_DEPTH)

    @staticmethod
    def _identity(t: Any) -> Tuple[Any, ...]:
        if hasattr(t, "data_ptr"):
            return ("t", t.data_ptr(), t.dtype, tuple(t.shape), tuple(t.stride()), t.device.type)
        return ("n", t.ctypes.data, t.dtype.str, t.shape, t.strides)

    def _add(self, name: str, t: Any) -> str:
        if not name:
            name = "<root>"
        base, k = name, 1
        while name in self.tensors or name in self.aliases:
            k += 1
            name = f"{base}#{k}"
        nbytes = t.nbytes if hasattr(t, "nbytes") else 0
        ident = self._identity(t) if nbytes else None
        if ident is not None and ident in self._seen:
            # The same memory under two names (tied weights): stored once,
            # restored as one shared tensor, as torch.save does.
            self.aliases[name] = self._seen[ident]
        else:
            if ident is not None:
                self._seen[ident] = name
            self.tensors[name] = t
        return name

    # depth is the JSON nesting level of the node made for x, if x makes a
    # container: a mapping nests its values 3 levels down ({"$dict": [[k,
    # v]]}), a tuple 2, a list 1. Refusing more than MAX_META_DEPTH here
    # also stops a list that contains itself.

    def _plain(self, x: Any, path: str, depth: int) -> Any:
        if x is None or isinstance(x, (str, bool, int)):
            return x
        if isinstance(x, float) and math.isfinite(x):
            return x
        _check_depth(depth, path)
        if isinstance(x, float):
            return {"$float": repr(x)}
        if isinstance(x, Mapping):
            return {"$dict": [[_key_json(k, path), self._plain(v, f"{path}[{k!r}]", depth + 3)]
                              for k, v in x.items()]}
        if isinstance(x, list):
            return [self._plain(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(x)]
        if isinstance(x, tuple):
            return {"$tuple": [self._plain(v, f"{path}[{i}]", depth + 2) for i, v in enumerate(x)]}
        raise InvalidArgumentError(
            f"{path} is a {type(x).__module__}.{type(x).__qualname__}: tpde stores tensors and JSON-like values "
            "(str, int, float, bool, None, and dicts, lists and tuples of them); save other objects separately")

    def _walk(self, x: Any, path: str, name: str, depth: int) -> Any:
        if _tensors.is_tensor(x):
            _check_depth(depth, path)
            return {"$tensor": self._add(name, x)}
        sub = (lambda k: f"{name}.{k}" if name else str(k))
        if isinstance(x, Mapping):
            _check_depth(depth, path)
            return {"$dict": [[_key_json(k, path), self._walk(v, f"{path}[{k!r}]", sub(k), depth + 3)]
                              for k, v in x.items()]}
        if isinstance(x, list):
            _check_depth(depth, path)
            return [self._walk(v, f"{path}[{i}]", sub(i), depth + 1) for i, v in enumerate(x)]
        if isinstance(x, tuple):
            _check_depth(depth, path)
            return {"$tuple": [self._walk(v, f"{path}[{i}]", sub(i), depth + 2) for i, v in enumerate(x)]}
        return self._plain(x, path, depth)

    def get(self, name: str) -> Any:
        return self.tensors.get(name if name not in self.aliases else self.aliases[name])

    def tensors_with_aliases(self) -> Dict[str, Any]:
        """Every name, aliases included, to its tensor."""
        return {name: self.get(name) for name in (*self.tensors, *self.aliases)}


def _check_depth(depth: int, path: str) -> None:
    if depth > MAX_META_DEPTH:
        raise InvalidArgumentError(
            f"{path} is nested too deeply: a checkpoint's structure is stored as JSON nested at most "
            f"{MAX_META_DEPTH} levels deep (3 per level of dicts, 2 of tuples, 1 of lists)")


# --- the structure read back -----------------------------------------------------

_FLOAT_NODES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
_NODE_TAGS = ("$tensor", "$dict", "$tuple", "$float")
# The JSON types a $dict key may have (docs/FORMAT.md §9.6).
_KEY_TYPES = (str, int, float, bool, type(None))
ABSENT = object()

# A node's place in the metadata, built as it is walked and spelled out
# only for an error: (parent trail or None, key or index or root name).
_Trail = Tuple[Any, Any]


def _spell(trail: _Trail) -> str:
    steps: List[str] = []
    while trail[0] is not None:
        trail, key = trail
        steps.append(f"[{key!r}]")
    return str(trail[1]) + "".join(reversed(steps))


def _bad_node(trail: _Trail, problem: str) -> CorruptDataError:
    return CorruptDataError(f"checkpoint metadata: {_spell(trail)} {problem}")


def rebuild(node: Any, tensors: Mapping[str, Any], trail: _Trail = (None, "tpde.skeleton"), depth: int = 1) -> Any:
    """The value a structure node (docs/FORMAT.md §9.6) stands for, with
    each {"$tensor": name} looked up in tensors. Anything else is corrupt
    (the metadata is checksummed, so it is a writer's bug or a forgery,
    nothing to guess at): an unknown tag, a malformed node, a name that
    tensors lacks, or nesting deeper than any bundle may hold."""
    if depth > MAX_META_DEPTH:
        raise _bad_node(trail, f"nests more than {MAX_META_DEPTH} levels deep")
    if isinstance(node, list):
        return [rebuild(v, tensors, (trail, i), depth + 1) for i, v in enumerate(node)]
    if not isinstance(node, dict):
        return node  # a string, number, boolean or null (json gives nothing else)
    if len(node) != 1:
        keys = ", ".join(repr(k) for k in list(node)[:4]) + (", ..." if len(node) > 4 else "")
        raise _bad_node(trail, f"is an object with keys {keys or 'none'}; a node has exactly one of "
                               f"{', '.join(_NODE_TAGS)}")
    ((tag, arg),) = node.items()
    if tag == "$tensor":
        if not isinstance(arg, str):
            raise _bad_node(trail, f"is a $tensor node whose name is {json_type(arg)}, not a string")
        t = tensors.get(arg, ABSENT)
        if t is ABSENT:
            raise _bad_node(trail, f"refers to tensor {arg!r}, which the bundle does not hold")
        return t
    if tag in ("$dict", "$tuple") and not isinstance(arg, list):
        raise _bad_node(trail, f"is a {tag} node holding {json_type(arg)}, not an array")
    if tag == "$dict":
        out = {}
        for i, pair in enumerate(arg):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise _bad_node(trail, f"is a $dict node whose item {i} is not a [key, value] pair")
            k, v = pair
            if not isinstance(k, _KEY_TYPES):
                raise _bad_node(trail, f"is a $dict node whose key {i} is {json_type(k)}")
            out[k] = rebuild(v, tensors, (trail, k), depth + 1)
        return out
    if tag == "$tuple":
        return tuple(rebuild(v, tensors, (trail, i), depth + 1) for i, v in enumerate(arg))
    if tag == "$float":
        f = _FLOAT_NODES.get(arg) if isinstance(arg, str) else None
        if f is None:
            raise _bad_node(trail, f"is a $float node of {arg!r}, not one of {', '.join(map(repr, _FLOAT_NODES))}")
        return f
    raise _bad_node(trail, f"has the unknown tag {tag!r} (a node is one of {', '.join(_NODE_TAGS)})")


def json_type(v: Any) -> str:
    """What a JSON value is, for a message: 'an array', 'the string 'x''."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return f"the boolean {'true' if v else 'false'}"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, tuple):
        return "a tuple"
    return "an array" if isinstance(v, list) else "an object"


def with_state_dict_metadata(out: "collections.OrderedDict[str, Any]", md: Any) -> Any:
    if md is not None:
        out._metadata = rebuild(md, {}, (None, "tpde.state_dict_metadata"))  # type: ignore[attr-defined]
    return out


def state_dict_nbytes(ckpt: Checkpoint) -> int:
    """Bytes of tensor data in a checkpoint (shared tensors counted once)."""
    return sum(_tensors.nbytes(t) for t in Flat(ckpt).tensors.values())
