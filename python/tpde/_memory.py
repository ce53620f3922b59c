"""Output limits and guarded allocation for everything tpde decodes into memory.

A frame or bundle says how large its decoded tensors are, and a hostile one
can claim terabytes (or expand a few kilobytes of run-length codes to
gigabytes). Every decoder therefore checks the total it is about to
allocate against a limit first, as zstd's decoders check a frame's window
size, and turns an allocation that fails anyway into a TPDEError.

The limit is, in order: the call's ``max_output_bytes`` argument;
``$TPDE_MAX_OUTPUT`` (bytes, or with a K/M/G/T suffix, powers of 1024);
else, for decodes into memory, the machine's physical memory (a larger
output could not be held anyway). Decompressing a file to disk has no
default limit: it streams, and the disk is the bound.
"""

from __future__ import annotations

import os
import re
from typing import Any, Optional, Tuple

from .errors import DecodeLimitError, InvalidArgumentError, TPDEMemoryError

__all__ = ["output_limit", "check_output", "empty", "ENV_MAX_OUTPUT"]

ENV_MAX_OUTPUT = "TPDE_MAX_OUTPUT"
_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"\s*(\d+)\s*([KMGTP]?)(?:I?B)?\s*", re.IGNORECASE)
#: No limit (what decompress_file gets by default).
UNLIMITED = (1 << 64) - 1


def parse_size(text: str, what: str = ENV_MAX_OUTPUT) -> int:
    """'1073741824', '64G', '512MiB' -> bytes."""
    m = _SIZE.fullmatch(text)
    if m is None:
        raise InvalidArgumentError(f"{what}={text!r} is not a size (bytes, or a number with K, M, G, T or P)")
    return min(int(m.group(1)) * _SUFFIX[m.group(2).upper()], UNLIMITED)


def physical_memory() -> int:
    """Bytes of physical memory, or UNLIMITED when the OS does not say."""
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return UNLIMITED
    return pages * size if pages > 0 and size > 0 else UNLIMITED


def output_limit(max_output_bytes: Optional[int], *, to_memory: bool = True) -> int:
    """Resolve the decode limit for one call (see the module docstring)."""
    if max_output_bytes is not None:
        if isinstance(max_output_bytes, bool) or not isinstance(max_output_bytes, int) or max_output_bytes < 0:
            raise InvalidArgumentError(f"max_output_bytes must be an int >= 0 or None, got {max_output_bytes!r}")
        return min(max_output_bytes, UNLIMITED)
    env = os.environ.get(ENV_MAX_OUTPUT)
    if env:
        return parse_size(env)
    return physical_memory() if to_memory else UNLIMITED


def check_output(nbytes: int, limit: int, what: str) -> None:
    """Raise DecodeLimitError if decoding nbytes would exceed limit."""
    if nbytes > limit:
        raise DecodeLimitError(
            f"{what} decodes to {nbytes:,} bytes, more than the limit of {limit:,} "
            f"(pass max_output_bytes= or set {ENV_MAX_OUTPUT} to allow more)")


def empty(torch_name: str, numpy_name: str, shape: Tuple[int, ...], like: str) -> Any:
    """A new uninitialised torch tensor or numpy array; a failed allocation
    raises TPDEMemoryError instead of MemoryError or torch's RuntimeError."""
    n = 1
    for d in shape:
        n *= d
    try:
        if like == "torch":
            import torch

            tdt = getattr(torch, torch_name, None)
            if tdt is None:
                raise InvalidArgumentError(f"this torch has no {torch_name}; use like='numpy'")
            return torch.empty(shape, dtype=tdt)
        import numpy as np

        return np.empty(shape, dtype=np.dtype(numpy_name))
    except MemoryError as e:
        raise TPDEMemoryError(f"cannot allocate {n:,} elements of {numpy_name if like != 'torch' else torch_name} "
                              f"for shape {list(shape)}: out of memory") from e
    except RuntimeError as e:
        # torch reports a failed allocation as RuntimeError ("DefaultCPUAllocator:
        # can't allocate memory ..."); its other RuntimeErrors are not ours.
        if "alloc" in str(e).lower() or "memory" in str(e).lower():
            raise TPDEMemoryError(f"cannot allocate a tensor of shape {list(shape)}: {e}") from e
        raise
