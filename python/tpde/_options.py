"""Option tables and argument checks shared by every entry point.

The tables map the names the Python API takes to the library's codes
(include/tpde.h); each is written once here, and each check raises the
same InvalidArgumentError wherever the option is taken.
"""

from __future__ import annotations

from typing import Mapping

from .errors import InvalidArgumentError

__all__ = ["EFFORTS", "RESIDUALS", "POSITION_CODINGS", "CONTEXTS", "code", "effort_code", "int_arg", "threads_arg"]

#: Encoder effort by name (TPDE_EFFORT_*).
EFFORTS = {"balanced": 0, "fast": 1, "max": 2}
#: Residual kinds by name (TPDE_RESIDUAL_*).
RESIDUALS = {"auto": -1, "xor": 0, "diff": 1, "pred": 2}
#: How the positions of changed elements are coded (TPDE_DELTA_* flags):
#: "auto" lets the encoder pick per chunk (dense or sparse, whichever is
#: smaller); "elias_delta_zstd" forces the design document's sparse coding
#: (positions as Elias-delta gaps, then zstd); "dense" never codes positions.
POSITION_CODINGS = {"auto": 0, "dense": 1, "elias_delta_zstd": 2}
#: How residuals are grouped by the reference element's exponent (TPDE_DELTA_*
#: flags): "auto" uses up to 16 groups where a sample estimates they save 8%
#: at effort "balanced", 3% at "max" ("fast" uses one); "one" never groups;
#: "full" always uses 16 (float dtypes).
CONTEXTS = {"auto": 0, "one": 4, "full": 8}


def code(table: Mapping[str, int], value: object, name: str) -> int:
    """table[value], or InvalidArgumentError naming the choices."""
    if value not in table:
        raise InvalidArgumentError(f"{name} must be one of {', '.join(table)}, got {value!r}")
    return table[value]  # type: ignore[index]


def effort_code(effort: object) -> int:
    return code(EFFORTS, effort, "effort")


def int_arg(value: object, name: str, lo: int, hi: int) -> int:
    # ctypes silently wraps out-of-range integers, so range-check here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise InvalidArgumentError(f"{name} must be in [{lo}, {hi}], got {value}")
    return value


def threads_arg(threads: object) -> int:
    return int_arg(threads, "threads", 0, 2**31 - 1)
