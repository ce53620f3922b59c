"""State dicts in and out of the store.

In: a state dict added from Python is laid out as one file of the
state-dict layout (docs/FORMAT.md §10: a JSON header, then each tensor
64-byte aligned): Python walks the dict, Go lays the file out and reads
each tensor from the memory it points to.
Out: a checkpoint's tensor files (state-dict layout, safetensors, torch
pickles) read back as torch tensors: Go parses and checks every header
(a record is untrusted input) and decodes a file's tensors, allocated
here, in one call; torch pickles are loaded only with
torch.load(weights_only=True). torch is imported on first use, never here.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pickle
import re
from ctypes import c_uint64
from typing import Any, Dict, List, Mapping, Optional, Tuple

from .. import _memory, _native, _structure, _tensors
from .._text import printable
from ..errors import CorruptDataError, InvalidArgumentError, TPDEError, require
from .handle import _Reader, _renamed, _utf8, call, call_json

#: The file name a state dict added from Python is stored under.
STATE_DICT_FILE = "state_dict.tpde"


def _add_state_dict(h: int, sd: Mapping[str, Any], rel: str = STATE_DICT_FILE) -> Dict[str, int]:
    """Add sd to the checkpoint or part begun on handle h, as the file rel.
    Python walks the dict (_structure.Flat: tensors by name, a JSON
    skeleton of the rest); Go lays the file out (core/statedict) and reads
    each tensor from the memory it points to, in one call. Returns
    {tensor name: byte offset in the file} (aliases: their tensor's)."""
    flat = _structure.Flat(sd, "state dict")
    srcs = [_tensors.source(t) for t in flat.tensors.values()]
    arr = (_native.StoreTensor * max(len(srcs), 1))()
    keep = []
    for i, (name, src) in enumerate(zip(flat.tensors, srcs)):
        shape = (c_uint64 * max(len(src.shape), 1))(*src.shape)
        keep.append(shape)
        arr[i] = _native.StoreTensor(_utf8(name, "tensor name"), src.code, len(src.shape), ctypes.addressof(shape),
                                     src.ptr, src.nbytes)
    meta = json.dumps({"skeleton": flat.skeleton, "aliases": flat.aliases,
                       "state_dict_metadata": flat.state_dict_metadata}, separators=(",", ":")).encode("utf-8")
    laid = call_json("tpde_store_add_state_dict", h, _utf8(rel, "file name"), meta, len(meta), arr, len(srcs))
    del keep, srcs
    offsets = {t["name"]: int(t["offset"]) for t in laid["tensors"]}
    for alias, name in flat.aliases.items():
        offsets[alias] = offsets[name]
    return offsets


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
    tables = _tensor_tables(rd, rec["step"], tensor_files, file)
    out = {f["path"]: _load_guarded(rd, rec["step"], f, map_location, tables) for f in tensor_files}
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


def _tensor_tables(rd: _Reader, step: int, files: List[Dict[str, Any]], only: Optional[str]) -> Dict[str, Any]:
    """{path: what its header says} of the safetensors and state-dict files
    among files, read and checked by Go in one call for the checkpoint (a
    damaged header is an error only when its own file is asked for: with
    several files, each is described on its own when one fails)."""
    wanted = [f for f in files if not _is_pickle(f)]
    if not wanted:
        return {}
    try:
        described = call_json("tpde_store_reader_tensors", rd.handle, step, 0,
                              None if only is None else _utf8(only, "file name"))
        return {t["path"]: t for t in described["files"]}
    except (CorruptDataError, InvalidArgumentError):
        if len(wanted) == 1:
            raise
    return {}  # each file's own call names what is wrong with it (_load_file)


def _load_guarded(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any,
                  tables: Optional[Dict[str, Any]] = None) -> Any:
    """_load_file, with every failure a TPDEError naming the checkpoint and
    the file: a record is untrusted, and what it describes may be checksum-
    consistent and still hostile (a header of the wrong shape, a pickle
    torch refuses)."""
    where = f"checkpoint {step}: file {printable(f['path'])}"
    try:
        return _load_file(rd, step, f, map_location, (tables or {}).get(f["path"]))
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


def _load_zip_mapped(rd: _Reader, step: int, rel: str, size: int, map_location: Any) -> Any:
    """A torch zip file decoded into an anonymous memory file, then loaded
    with torch.load(mmap=True): its tensors are views of the decoded bytes.
    Through a bytearray, a load paid twice over: zeroing the buffer, then
    torch.load copying every storage out of it."""
    import mmap

    import torch

    fd = os.memfd_create("tpde-load", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        with mmap.mmap(fd, size) as mm:
            view = (ctypes.c_char * size).from_buffer(mm)
            try:
                rd.read_into(step, rel, 0, ctypes.addressof(view), size)
            finally:
                del view  # the mapping closes only once nothing exports it
        with _numpy_globals(torch):
            return torch.load(f"/proc/self/fd/{fd}", map_location=map_location, weights_only=True, mmap=True)
    finally:
        os.close(fd)  # the tensors' mapping keeps the memory alive


def _load_file(rd: _Reader, step: int, f: Dict[str, Any], map_location: Any,
               table: Optional[Dict[str, Any]] = None) -> Any:
    """One file of checkpoint step as torch objects: a torch pickle through
    torch.load(weights_only=True); a safetensors or state-dict file from the
    table Go read from its header (table, or one call now), every tensor
    allocated here and decoded into in one call."""
    torch = require("torch", "loading a checkpoint's tensors")

    rel, size = f["path"], f["size"]
    if _is_pickle(f):
        if f["layout"] == "torch-zip" and size and hasattr(os, "memfd_create"):
            return _load_zip_mapped(rd, step, rel, size, map_location)
        import io

        data = bytearray(size)  # decoded straight into it: no copy before torch.load's own
        if size:
            rd.read_into(step, rel, 0, ctypes.addressof((ctypes.c_char * size).from_buffer(data)), size)
        with _numpy_globals(torch):
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    if table is None:
        files = call_json("tpde_store_reader_tensors", rd.handle, step, 0, _utf8(rel, "file name"))["files"]
        if not files:
            raise CorruptDataError("holds no tensor table")
        table = files[0]
    entries = table["tensors"]
    tensors: Dict[str, Any] = {}
    spans = (_native.StoreSpan * max(len(entries), 1))()
    for i, e in enumerate(entries):
        t = _empty_tensor(e["dtype"], e["shape"], e["nbytes"])
        tensors[e["name"]] = t
        ptr = _tensors.address(t)[0] if e["nbytes"] else None
        spans[i] = _native.StoreSpan(e["offset"], ptr, e["nbytes"])
    call("tpde_store_read_tensors", rd.handle, step, _utf8(rel, "file name"), spans, len(entries))
    if map_location is not None:
        tensors = {k: v.to(map_location) for k, v in tensors.items()}
    if f["layout"] == "safetensors":
        return tensors
    meta = table["meta"] or {}
    aliases = meta.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise CorruptDataError("state dict header: aliases is not a map")
    order = [e["name"] for e in entries]
    for alias, name in aliases.items():
        tensors[alias] = tensors[name]  # Go checked that each names a tensor
    if meta.get("skeleton") is None:
        import collections

        od = collections.OrderedDict((n, tensors[n]) for n in order)
        for alias in aliases:
            od[alias] = tensors[alias]
        return _structure.with_state_dict_metadata(od, meta.get("state_dict_metadata"))
    return _structure.rebuild(meta["skeleton"], tensors)


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


def _empty_tensor(dtype: str, shape: List[int], nbytes: int) -> Any:
    """An uninitialised torch tensor for a header's entry (Go checked that
    shape and dtype make nbytes)."""
    try:
        code = _tensors.dtype_code(dtype)
    except (KeyError, ValueError, TPDEError):
        raise CorruptDataError(f"tensor dtype {printable(dtype)!r} is not one tpde knows") from None
    n = 1
    for d in shape:
        n *= d
    if n * _tensors.WIDTHS[code] != nbytes:
        raise CorruptDataError(f"a {dtype} tensor of shape {shape} in {nbytes} bytes")
    return _tensors.empty(code, tuple(shape), "torch")
