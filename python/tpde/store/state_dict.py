"""State dicts in and out of the store.

In: a state dict added from Python is laid out as one file of the
state-dict layout (docs/FORMAT.md §10: a JSON header, then each tensor
64-byte aligned): the header is built here, and Go reads each tensor
from the memory it points to.
Out: a checkpoint's tensor files (state-dict layout, safetensors, torch
pickles) read back as torch tensors, every header field checked (a record
is untrusted input), torch pickles loaded only with
torch.load(weights_only=True). torch is imported on first use, never here.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import pickle
import re
import struct
from ctypes import c_uint64
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import _memory, _native, _structure, _tensors
from .._text import printable
from ..errors import CorruptDataError, InvalidArgumentError, TPDEError
from .handle import _Reader, _renamed, _utf8, call

#: The file name a state dict added from Python is stored under.
STATE_DICT_FILE = "state_dict.tpde"
_SD_FORMAT = "tpde-state-dict"
_ALIGN = 64


def _add_state_dict(h: int, sd: Mapping[str, Any], rel: str = STATE_DICT_FILE) -> None:
    """Add sd to the checkpoint or part begun on handle h, as the file rel."""
    flat = _structure.Flat(sd, "state dict")
    entries, srcs = [], []
    offset = 0
    for name, t in flat.tensors.items():
        src = _tensors.source(t)
        offset = -(-offset // _ALIGN) * _ALIGN
        entries.append({"name": name, "dtype": _tensors.DTYPES[src.code], "shape": list(src.shape),
                        "offset": offset, "nbytes": src.nbytes})
        srcs.append(src)
        offset += src.nbytes
    header = {"format": _SD_FORMAT, "version": 1, "skeleton": flat.skeleton, "aliases": flat.aliases,
              "state_dict_metadata": flat.state_dict_metadata, "tensors": entries}
    hjs = json.dumps(header, separators=(",", ":")).encode("utf-8")
    pad = (-(8 + len(hjs))) % _ALIGN
    head = struct.pack("<Q", len(hjs) + pad) + hjs + b" " * pad
    base = len(head)
    arr = (_native.StoreTensor * max(len(srcs), 1))()
    keep = []
    for i, (e, src) in enumerate(zip(entries, srcs)):
        shape = (c_uint64 * max(len(src.shape), 1))(*src.shape)
        keep.append(shape)
        # The header's offsets count from the end of the header.
        arr[i] = _native.StoreTensor(_utf8(e["name"], "tensor name"), src.code, len(src.shape),
                                     ctypes.addressof(shape), base + e["offset"], src.ptr, src.nbytes)
    call("tpde_store_add_state_dict", h, _utf8(rel, "file name"), head, len(head), arr, len(srcs))
    del keep, srcs


def _load_checkpoint(rd: _Reader, rec: Dict[str, Any], file: Optional[str], unpickle: bool, limit: int,
                     map_location: Any) -> Tuple[Dict[str, Any], bool]:
    """({file: state dict} of record rec's tensor files (file= only that
    one), whether Store.load returns the one state dict alone). Torch
    pickles are refused unless unpickle; more than limit bytes is refused
    before anything is read."""
    where = f"checkpoint {rec['step']}"
    files = list(rec["files"])
    if file is not None:
        files = [f for f in files if f["path"] == file]
        if not files:
            raise InvalidArgumentError(f"{where} has no file {file!r}")
    tensor_files = [f for f in files if _loadable(f)]
    pickles = [f["path"] for f in tensor_files if _is_pickle(f)]
    if pickles and not unpickle:
        raise InvalidArgumentError(
            f"{where}'s {', '.join(pickles)} {'is a' if len(pickles) == 1 else 'are'} torch "
            "pickle(s); pass unpickle=True to load with torch.load(weights_only=True), or file= to pick "
            "another file")
    _memory.check_output(sum(f["size"] for f in tensor_files), limit, where)
    out = {f["path"]: _load_guarded(rd, rec["step"], f, map_location) for f in tensor_files}
    alone = len(out) == 1 and (file is not None or len(rec["files"]) == 1
                               or any(f["layout"] == "state-dict" for f in tensor_files))
    return out, alone


def _loadable(f: Dict[str, Any]) -> bool:
    return f["layout"] in ("safetensors", "state-dict", "torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and _is_pickle(f) and bool(f.get("note")))


def _is_pickle(f: Dict[str, Any]) -> bool:
    note = f.get("note", "")
    return f["layout"] in ("torch-zip", "torch-legacy") or (
        f["layout"] == "raw" and (note.startswith("torch file") or note.startswith("legacy torch file")))


def _load_guarded(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any) -> Any:
    """_load_file, with every failure a TPDEError naming the checkpoint and
    the file: a record is untrusted, and what it describes may be checksum-
    consistent and still hostile (a header of the wrong shape, a pickle
    torch refuses)."""
    where = f"checkpoint {step}: file {printable(f['path'])}"
    try:
        return _load_file(rd, step, f, map_location)
    except TPDEError as e:
        raise _renamed(e, where) from e
    except MemoryError as e:
        from ..errors import TPDEMemoryError

        raise TPDEMemoryError(f"{where}: {e}") from e
    except Exception as e:  # noqa: BLE001 - torch.load, struct and json raise many types for bad input
        detail = _torch_refusal(str(e)) if isinstance(e, pickle.UnpicklingError) else _clean(str(e))
        raise CorruptDataError(f"{where}: cannot be loaded: {type(e).__name__}" + (f": {detail}" if detail else "")) \
            from e


def _torch_refusal(text: str) -> str:
    """What torch.load(weights_only=True) refused, without its advice: it
    suggests loading again with weights_only=False, which for a pickle
    read from an untrusted store is the one thing not to do."""
    if "Weights only load failed" not in text:
        return _clean(text)
    text = text.split("\n\nCheck the documentation of torch.load", 1)[0]
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    else:
        text = text.rsplit("\n\n", 1)[-1]
    text = text.split(" Please use `torch.serialization", 1)[0]
    return "torch.load(weights_only=True) refuses it: " + _clean(text)


def _clean(text: str, limit: int = 300) -> str:
    """An exception's message fit for one line: escape sequences (torch's
    colours) dropped, control characters escaped, cut to limit."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
    text = printable(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit] + "..."


def _header(rd: _Reader, step: int, rel: str, size: int, what: str, limit: int = 100_000_000) -> Tuple[Any, int]:
    if size < 8:
        raise CorruptDataError(f"{size} bytes, too short for a {what} header")
    (n,) = struct.unpack("<Q", rd.read(step, rel, 0, 8))
    if n > min(limit, size - 8):
        raise CorruptDataError(f"{what} header of {n} bytes")
    try:
        hdr = json.loads(rd.read(step, rel, 8, n).decode("utf-8"), object_pairs_hook=_unique_keys,
                         parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptDataError(f"{what} header is not JSON: {_clean(str(e))}") from None
    if not isinstance(hdr, dict):
        raise CorruptDataError(f"{what} header is not a JSON object")
    return hdr, 8 + n


def _unique_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """A JSON object whose keys are all different: json keeps the last of
    a repeated key, another reader (or the writer that found the file's
    regions) may keep the first, so a header that repeats one is corrupt
    rather than read one way here and another way elsewhere."""
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise CorruptDataError(f"header repeats the key {printable(k)!r}")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    # NaN and Infinity are not JSON; json.loads takes them unless told.
    raise CorruptDataError(f"header holds {name}, which is not JSON")


def _tensor_entry(e: Any, name: str, data_size: int, what: str) -> Tuple[int, int, str, List[int]]:
    """(offset, nbytes, dtype, shape) of one header entry, every field
    checked: offsets inside the data, shape a list of ints >= 0, a dtype
    tpde knows, and nbytes = prod(shape) x width."""
    if not isinstance(e, dict):
        raise CorruptDataError(f"{what} entry {printable(name)!r} is not an object")
    dtype, shape = e.get("dtype"), e.get("shape")
    if what == "safetensors":
        offs = e.get("data_offsets")
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(x) is int for x in offs)):
            raise CorruptDataError(f"safetensors entry {printable(name)!r}: data_offsets {offs!r}")
        offset, nbytes = offs[0], offs[1] - offs[0]
    else:
        offset, nbytes = e.get("offset"), e.get("nbytes")
        if type(offset) is not int or type(nbytes) is not int:
            raise CorruptDataError(f"state dict entry {printable(name)!r}: offset {offset!r}, nbytes {nbytes!r}")
    if not (isinstance(shape, list) and all(type(x) is int and x >= 0 for x in shape)):
        raise CorruptDataError(f"{what} entry {printable(name)!r}: shape {shape!r}")
    if not isinstance(dtype, str):
        raise CorruptDataError(f"{what} entry {printable(name)!r}: dtype {dtype!r}")
    if offset < 0 or nbytes < 0 or offset + nbytes > data_size:
        raise CorruptDataError(f"{what} entry {printable(name)!r}: bytes [{offset}, {offset + nbytes}) outside "
                               f"the {data_size} bytes of data")
    return offset, nbytes, dtype, shape


def _load_file(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any) -> Any:
    import torch

    rel, size = f["path"], f["size"]
    if _is_pickle(f):
        import io

        data = bytearray(size)  # decoded straight into it: no copy before torch.load's own
        if size:
            rd.read_into(step, rel, 0, ctypes.addressof((ctypes.c_char * size).from_buffer(data)), size)
        with _numpy_globals(torch):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if f["layout"] == "safetensors":
        hdr, start = _header(rd, step, rel, size, "safetensors")
        out = {}
        for name, e in hdr.items():
            if name == "__metadata__":
                # As safetensors (and core/safetensors) read it: a map of
                # strings to strings, nothing else.
                if not (isinstance(e, dict) and all(isinstance(v, str) for v in e.values())):
                    raise CorruptDataError("safetensors __metadata__ is not a map of strings to strings")
                continue
            off, n, dtype, shape = _tensor_entry(e, name, size - start, "safetensors")
            out[name] = _read_tensor(rd, step, rel, start + off, n, dtype, shape, map_location)
        return out
    hdr, start = _header(rd, step, rel, size, "state dict")
    if hdr.get("format") != _SD_FORMAT or hdr.get("version") != 1:
        raise CorruptDataError(f"not a tpde state dict (format {hdr.get('format')!r})")
    entries = hdr.get("tensors")
    if not isinstance(entries, list):
        raise CorruptDataError("state dict header: tensors is not a list")
    tensors: Dict[str, Any] = {}
    for e in entries:
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(name, str) or name in tensors:
            raise CorruptDataError(f"state dict header: tensor name {name!r}")
        off, n, dtype, shape = _tensor_entry(e, name, size - start, "state dict")
        tensors[name] = _read_tensor(rd, step, rel, start + off, n, dtype, shape, map_location)
    aliases = hdr.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(v, str) and v in tensors for v in aliases.values()):
        raise CorruptDataError("state dict header: aliases name tensors it does not hold")
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]
    if hdr.get("skeleton") is None:
        import collections

        od = collections.OrderedDict((e["name"], tensors[e["name"]]) for e in entries)
        for alias in aliases:
            od[alias] = tensors[alias]
        return _structure.with_state_dict_metadata(od, hdr.get("state_dict_metadata"))
    return _structure.rebuild(hdr["skeleton"], tensors)


def _numpy_globals(torch: Any) -> Any:
    """What torch.load(weights_only=True) may build besides tensors: numpy
    arrays and dtypes, as the Hugging Face Trainer allows for its
    rng_state.pth (numpy's RNG state). No other global is allowed."""
    try:
        import numpy as np
    except ImportError:
        return contextlib.nullcontext()
    core = getattr(np, "_core", None) or np.core
    allowed = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    allowed += [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "float32", "bool", "uint8")]
    return torch.serialization.safe_globals(allowed)


def _read_tensor(rd: _Reader, step: int, rel: str, offset: int, nbytes: int, dtype: str, shape: List[int],
                 map_location: Any) -> Any:
    try:
        code = _tensors.dtype_code(dtype)
    except (KeyError, ValueError, TPDEError):
        raise CorruptDataError(f"tensor dtype {printable(dtype)!r} is not one tpde knows") from None
    n = 1
    for d in shape:
        n *= d
    if n * _tensors.WIDTHS[code] != nbytes:
        raise CorruptDataError(f"a {dtype} tensor of shape {shape} in {nbytes} bytes")
    t = _tensors.empty(code, tuple(shape), "torch")
    if nbytes:
        ptr, cap = _tensors.address(t)
        rd.read_into(step, rel, offset, ptr, nbytes)
    if map_location is not None:
        t = t.to(map_location)
    return t
