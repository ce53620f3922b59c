"""Everything in tpde that knows torch and numpy.

The dtype tables, how a tensor's bytes are found (and when they are
copied: the CUDA and non-contiguous copy policy), how a destination is
checked, and how new tensors are allocated. No other module touches a
torch or numpy object's internals, and neither module is imported unless
the caller's objects are (or the caller asks for one, like="torch"): a
torch tensor or numpy array can exist only once its module is imported,
so sys.modules tells which one an object is without importing anything.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Dict, Optional, Tuple

from .errors import InternalError, InvalidArgumentError, TPDEMemoryError, require

__all__ = [
    "DTYPES", "WIDTHS", "TORCH", "NUMPY", "NUMPY_NATIVE",
    "Src", "dtype_code", "torch_code", "source", "layout", "nbytes", "is_tensor", "span", "shares_memory",
    "same_bits",
    "check_out", "address", "empty", "empty_like",
]

#: tpde dtype names (the safetensors spellings), indexed by their TPDE_* code.
DTYPES: Tuple[str, ...] = (
    "BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64",
    "F16", "BF16", "F32", "F64", "F8_E4M3", "F8_E5M2",
)
WIDTHS = (1, 1, 1, 2, 2, 4, 4, 8, 8, 2, 2, 4, 8, 1, 1)
# torch attribute names by code; getattr'd so an old torch lacking one
# (uint16 before 2.3, float8 before 2.1) fails only for that dtype.
TORCH = (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2",
)
# numpy dtypes by code. numpy has no bfloat16 or float8: those frames decode
# to their raw bit patterns as unsigned integers of the same width.
NUMPY = (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float16", "uint16", "float32", "float64", "uint8", "uint8",
)
NUMPY_NATIVE = frozenset(i for i, name in enumerate(NUMPY) if name == TORCH[i])
_BY_NAME = {name.lower(): i for i, name in enumerate(DTYPES)}
_BY_NAME.update({name: i for i, name in enumerate(TORCH)})


def dtype_code(name: str) -> int:
    """The TPDE_* code of a tpde ("BF16") or torch ("bfloat16") dtype name."""
    code = _BY_NAME.get(str(name).lower())
    if code is None:
        raise InvalidArgumentError(f"unknown dtype {name!r}; expected one of {', '.join(DTYPES)}")
    return code


# --- input tensors --------------------------------------------------------

class Src:
    """A tensor's bytes as the library sees them; keeps the owner alive."""

    __slots__ = ("ptr", "nbytes", "code", "shape", "owner")

    def __init__(self, ptr: int, nbytes: int, code: int, shape: Tuple[int, ...], owner: object) -> None:
        self.ptr, self.nbytes, self.code, self.shape, self.owner = ptr, nbytes, code, shape, owner


_torch_codes: Dict[Any, int] = {}


def torch_code(torch: Any, dt: Any) -> int:
    """The TPDE_* code of a torch dtype."""
    # Built once: a scan of 15 getattr's per call was a visible share of the
    # cost of compressing a small tensor.
    if not _torch_codes:
        for code, name in enumerate(TORCH):
            tdt = getattr(torch, name, None)
            if tdt is not None:
                _torch_codes[tdt] = code
    code = _torch_codes.get(dt)
    if code is None:
        raise InvalidArgumentError(f"unsupported tensor dtype {dt}")
    return code


def source(x: object) -> Src:
    """Locate x's bytes, copying only when they are not contiguous CPU memory."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        code = torch_code(torch, x.dtype)
        if x.layout != torch.strided:
            raise InvalidArgumentError(f"unsupported tensor layout {x.layout}; convert with .to_dense()")
        if x.device.type == "meta":
            raise InvalidArgumentError("a meta tensor has no data")
        t = x
        if t.device.type != "cpu":
            t = t.detach().cpu()
        if not t.is_contiguous():
            t = t.detach().contiguous()
        return Src(t.data_ptr(), t.nbytes, code, tuple(t.shape), t)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        a = x
        if a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
            a = a.astype(a.dtype.newbyteorder("<"))
        code = -1
        for i in NUMPY_NATIVE:
            if a.dtype == np.dtype(NUMPY[i]):
                code = i
                break
        if code < 0:
            raise InvalidArgumentError(f"unsupported array dtype {x.dtype}")
        if not a.flags.c_contiguous:
            a = np.ascontiguousarray(a)  # note: this makes 0-d arrays 1-d; shape comes from x
        return Src(a.ctypes.data, a.nbytes, code, tuple(x.shape), a)
    raise TypeError(f"expected a torch.Tensor or numpy.ndarray, not {type(x).__module__}.{type(x).__qualname__}")


def layout(t: Any) -> Tuple[int, Tuple[int, ...]]:
    """t's tpde dtype code and shape, from its metadata alone: unlike
    source, never copies a CUDA or non-contiguous tensor."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        return torch_code(torch, t.dtype), tuple(t.shape)
    import numpy as np

    for code in NUMPY_NATIVE:
        if t.dtype == np.dtype(NUMPY[code]).newbyteorder(t.dtype.byteorder):
            return code, tuple(t.shape)
    raise InvalidArgumentError(f"unsupported array dtype {t.dtype}")


def nbytes(t: Any) -> int:
    """Bytes of t's data, without copying or moving it."""
    return int(t.nbytes) if hasattr(t, "nbytes") else int(t.numel() * t.element_size())


def is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return True
    np = sys.modules.get("numpy")
    return np is not None and isinstance(x, np.ndarray)


# --- comparing tensors ------------------------------------------------------

# Bytes compared per step by same_bits: two copies of this much at a time,
# rather than two copies of a whole tensor.
_COMPARE_CHUNK = 1 << 22


def span(t: Any) -> Optional[Tuple[Any, int, int]]:
    """Where t's elements lie, from its metadata alone (nothing is copied or
    moved): (device, first byte, one past the last byte), or None when it
    holds no bytes or no address can be had (an empty or meta tensor). The
    span of a strided view covers the elements it skips too."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        if t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:
            return None
        try:
            ptr = t.data_ptr()
        except RuntimeError:  # a tensor subclass without storage (fake, functional)
            return None
        width = t.element_size()
        dims, steps = tuple(t.shape), tuple(s * width for s in t.stride())  # torch's are in elements
        device: Any = (t.device.type, t.device.index)
    else:
        if t.size == 0:
            return None
        ptr = t.__array_interface__["data"][0]
        width = t.itemsize
        dims, steps = t.shape, t.strides  # in bytes
        device = ("cpu", None)  # as a CPU torch tensor's: torch.from_numpy shares memory
    # numpy strides may be negative (a[::-1]): the first element is not
    # always the lowest address.
    lo = sum(min(0, (n - 1) * s) for n, s in zip(dims, steps))
    hi = sum(max(0, (n - 1) * s) for n, s in zip(dims, steps))
    return device, ptr + lo, ptr + hi + width


def shares_memory(a: Any, b: Any) -> bool:
    """Whether a and b may share memory: their spans overlap on one device
    (numpy's may_share_memory test, for torch and numpy alike). Two
    interleaved views of one buffer count as sharing: deciding whether a
    checkpoint is a snapshot, a false alarm costs an error or the use of
    the encoder's own copy, a miss an undecodable delta."""
    sa, sb = span(a), span(b)
    if sa is None or sb is None or sa[0] != sb[0]:
        return False
    return sa[1] < sb[2] and sb[1] < sa[2]


def same_bits(a: Any, b: Any) -> bool:
    """Whether a and b hold the same tpde dtype, shape and bytes: compared
    as bytes, so NaN payloads count and -0.0 differs from 0.0 (float ==
    says neither). A chunk of each at a time is copied for the comparison,
    and a whole CUDA or non-contiguous tensor is copied by source()."""
    if layout(a) != layout(b):
        return False
    if nbytes(a) == 0:
        return True
    sa, sb = source(a), source(b)
    if sa.nbytes != sb.nbytes:
        return False
    if sa.ptr == sb.ptr:
        return True
    for off in range(0, sa.nbytes, _COMPARE_CHUNK):
        n = min(_COMPARE_CHUNK, sa.nbytes - off)
        if ctypes.string_at(sa.ptr + off, n) != ctypes.string_at(sb.ptr + off, n):
            return False
    return True


# --- destinations ---------------------------------------------------------

def check_out(out: Any, code: int, shape: Tuple[int, ...], raw_size: int) -> int:
    """Validate a caller's destination for a frame; return its data address."""
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    if torch is not None and isinstance(out, torch.Tensor):
        want = getattr(torch, TORCH[code], None)
        if out.dtype != want:
            raise InvalidArgumentError(f"out has dtype {out.dtype}, the frame holds {DTYPES[code]}")
        if out.device.type != "cpu" or out.layout != torch.strided or not out.is_contiguous():
            raise InvalidArgumentError("out must be a contiguous CPU tensor")
        got, ptr = tuple(out.shape), out.data_ptr()
    elif np is not None and isinstance(out, np.ndarray):
        want = np.dtype(NUMPY[code])
        if out.dtype != want:
            raise InvalidArgumentError(f"out has dtype {out.dtype}, the frame holds {DTYPES[code]} (numpy {want})")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise InvalidArgumentError("out must be a writable C-contiguous array")
        got, ptr = tuple(out.shape), out.ctypes.data
    else:
        raise TypeError(f"out must be a torch.Tensor or numpy.ndarray, not {type(out).__name__}")
    if got != shape:
        raise InvalidArgumentError(f"out has shape {got}, the frame holds {shape}")
    if out.nbytes != raw_size:
        raise InternalError(f"out holds {out.nbytes} bytes, the frame {raw_size}")
    return int(ptr)


def address(dst: Any) -> Tuple[int, int]:
    """The address and size of a destination tpde allocated itself (empty,
    empty_like): without source's dtype lookup, which costs more than
    decoding a small tensor (and a bundle may hold a million of them)."""
    data_ptr = getattr(dst, "data_ptr", None)
    if data_ptr is not None:  # torch
        if not dst.is_contiguous() or dst.device.type != "cpu":
            raise InternalError("decode destination must be contiguous CPU memory")
        return data_ptr(), dst.nbytes
    if not dst.flags.c_contiguous or not dst.flags.writeable:
        raise InternalError("decode destination must be contiguous, writable memory")
    return dst.ctypes.data, dst.nbytes


# --- allocation -------------------------------------------------------------

def empty(code: int, shape: Tuple[int, ...], like: str) -> Any:
    """A new uninitialised torch tensor (like="torch") or numpy array of a
    tpde dtype; a failed allocation raises TPDEMemoryError instead of
    MemoryError or torch's RuntimeError. Check the size against the decode
    limit (_memory.check_output) first."""
    n = 1
    for d in shape:
        n *= d
    try:
        if like == "torch":
            torch = require("torch", "a torch tensor (like='torch', the default)")
            tdt = getattr(torch, TORCH[code], None)
            if tdt is None:
                raise InvalidArgumentError(f"this torch has no {TORCH[code]}; use like='numpy'")
            return torch.empty(shape, dtype=tdt)
        np = require("numpy", "a numpy array (like='numpy')")
        return np.empty(shape, dtype=np.dtype(NUMPY[code]))
    except MemoryError as e:
        raise TPDEMemoryError(f"cannot allocate {n:,} elements of {DTYPES[code]} for shape {list(shape)}: "
                              "out of memory") from e
    except RuntimeError as e:
        # torch reports a failed allocation as RuntimeError ("DefaultCPUAllocator:
        # can't allocate memory ..."); its other RuntimeErrors are not ours.
        if "alloc" in str(e).lower() or "memory" in str(e).lower():
            raise TPDEMemoryError(f"cannot allocate a tensor of shape {list(shape)}: {e}") from e
        raise


def empty_like(t: Any) -> Any:
    """A new contiguous CPU tensor (or array) of t's dtype and shape."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        return torch.empty(tuple(t.shape), dtype=t.dtype)
    import numpy as np

    return np.empty(t.shape, dtype=t.dtype)
