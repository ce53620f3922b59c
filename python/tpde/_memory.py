"""Output limits for everything tpde decodes.

A frame or bundle says how large its decoded tensors are, and a hostile one
can claim terabytes (or expand a few kilobytes of run-length codes to
gigabytes). Every decoder therefore checks the total it is about to
allocate against a limit first, as zstd's decoders check a frame's window
size (_tensors.empty then turns an allocation that fails anyway into a
TPDEError).

The limit is, in order: the call's ``max_output_bytes`` argument;
``$TPDE_MAX_OUTPUT`` (bytes, or with a K/M/G/T suffix, powers of 1024);
else, for decodes into memory, the machine's physical memory (a larger
output could not be held anyway). Decompressing a file to disk has no
default limit: it streams, and the disk is the bound.
"""

from __future__ import annotations

import os
import re
import time
from typing import Optional

from .errors import DecodeLimitError, InvalidArgumentError

__all__ = ["output_limit", "check_output", "parse_size", "ENV_MAX_OUTPUT", "UNLIMITED"]

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


#: How long physical_memory() reuses what it read: reading the cgroup files
#: took ~170 µs, a fifth of the single-thread decode of a 1 MB bf16 tensor;
#: a limit that changes is seen within this many seconds.
_PHYSICAL_TTL = 1.0
_physical: "tuple[float, int]" = (float("-inf"), 0)


def physical_memory() -> int:
    """physical_memory_now(), reread at most every _PHYSICAL_TTL seconds."""
    global _physical
    now = time.monotonic()
    at, value = _physical
    if now - at < _PHYSICAL_TTL:
        return value
    value = physical_memory_now()
    _physical = (now, value)
    return value


def physical_memory_now() -> int:
    """Bytes of memory this process may use: the least of physical memory,
    its memory cgroup's limit (v2 memory.max, v1 memory.limit_in_bytes, at
    any level of its cgroup path) and RLIMIT_AS; UNLIMITED when none is
    known. A cgroup kills a process that touches more than it may, rather
    than failing the allocation, so the limit must be known beforehand (the
    Go store reads the same three: core/store/memory_linux.go)."""
    limits = []
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        if pages > 0 and size > 0:
            limits.append(pages * size)
    except (ValueError, OSError, AttributeError):
        pass
    limits += _cgroup_limits()
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, OSError, ValueError):
        pass
    return min(limits) if limits else UNLIMITED


def _cgroup_limits() -> list:
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            base, name = "/sys/fs/cgroup", "memory.max"
        elif "memory" in parts[1].split(","):
            base, name = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
        else:
            continue
        path = parts[2].rstrip("/")
        while True:
            try:
                with open(f"{base}{path}/{name}") as f:
                    text = f.read().strip()
                if text.isdigit() and int(text) > 0:
                    out.append(int(text))
            except OSError:
                pass
            if not path:
                break
            path = path[: path.rfind("/")]
    return out


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
