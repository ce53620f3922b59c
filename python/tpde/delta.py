"""Delta frames: one tensor coded against a reference tensor (kind 1 frames,
docs/FORMAT.md section 6). The building block of checkpoint series; the
seed's TemporalPositionDeltaEncoder API will sit on top of it.

Lossless by default. ``threshold > 0`` (float tensors only) is the opt-in
lossy mode: every decoded element is within ``threshold`` of the input, and
the frame records the bound and the measured maximum error. For a chain of
lossy checkpoints, code each one against the previous *decoded* checkpoint
(``compress_delta(..., return_recon=True)``): the error then stays within
the bound at every step instead of accumulating.
"""

from __future__ import annotations

from ctypes import byref, c_double, c_uint64
from typing import Any, Dict, Optional, Tuple, Union

from . import _memory, _tensors
from ._buffers import into_new_bytes, readable
from ._native import call, call_json
from ._options import CONTEXTS, POSITION_CODINGS, RESIDUALS, code, effort_code, int_arg, threads_arg
from ._tensors import DTYPES
from .codec import _decode_into, _encode_bound_of
from .errors import InvalidArgumentError

__all__ = ["compress_delta", "decompress_delta", "inspect_delta", "delta_threshold", "RESIDUALS", "POSITION_CODINGS",
           "CONTEXTS"]


def _same_layout(x: Any, ref: Any, what: str) -> Any:
    src, r = _tensors.source(x), _tensors.source(ref)
    if (r.code, r.shape) != (src.code, src.shape):
        raise InvalidArgumentError(
            f"{what} is {DTYPES[r.code]}{list(r.shape)}, the tensor is {DTYPES[src.code]}{list(src.shape)}")
    return r


def compress_delta(
    x: Any,
    ref: Any,
    *,
    ref2: Any = None,
    residual: str = "auto",
    threshold: float = 0.0,
    quant_bits: int = 0,
    positions: str = "auto",
    contexts: str = "auto",
    chunk_elems: int = 0,
    effort: str = "balanced",
    threads: int = 0,
    return_recon: bool = False,
) -> Union[bytes, Tuple[bytes, Any]]:
    """Code tensor x as a delta frame against ref (same dtype and shape).

    ref2: an older reference, for residual="pred" (or as a candidate for
    "auto"). threshold: 0 is lossless; > 0 drops residuals within it (float
    dtypes only). quant_bits: 0, 8 or 4, quantize the kept residuals (needs a
    threshold). positions: "auto", "dense" or "elias_delta_zstd".
    contexts: "auto" (group residuals by the reference's exponent where a
    sample estimates it saves 8%, 3% at effort "max"; "fast" never does),
    "one" or "full".
    return_recon: also return what decompress_delta will give back (x
    itself when lossless), to use as the next reference in a closed loop.
    """
    src = _tensors.source(x)
    r = _same_layout(x, ref, "ref")
    r2 = _same_layout(x, ref2, "ref2") if ref2 is not None else None
    kind = code(RESIDUALS, residual, "residual")
    flags = code(POSITION_CODINGS, positions, "positions") | code(CONTEXTS, contexts, "contexts")
    eff = effort_code(effort)
    if not threshold >= 0.0:
        raise InvalidArgumentError(f"threshold must be >= 0, got {threshold!r}")
    qb = int_arg(quant_bits, "quant_bits", 0, 8)
    ce = int_arg(chunk_elems, "chunk_elems", 0, 2**32 - 1)
    th = threads_arg(threads)
    ndim = len(src.shape)
    shape = (c_uint64 * max(ndim, 1))(*src.shape)
    bound = _encode_bound_of("tpde_encode_delta_bound", src.nbytes, src.code, ndim, ce)
    recon = None
    recon_ptr, recon_cap = None, 0
    if return_recon:
        recon = _tensors.empty_like(x)
        recon_ptr, recon_cap = _tensors.address(recon)[0], src.nbytes

    def encode(dst: int, cap: int) -> int:
        n = c_uint64()
        call("tpde_encode_delta", src.ptr, src.nbytes, r.ptr, r.nbytes,
             r2.ptr if r2 else None, r2.nbytes if r2 else 0, src.code, shape, ndim,
             kind, float(threshold), qb, flags, ce, eff, th, dst, cap, byref(n), recon_ptr, recon_cap)
        return n.value

    blob = into_new_bytes(bound, encode)
    return (blob, recon) if return_recon else blob


def decompress_delta(blob: Any, ref: Any, *, ref2: Any = None, out: Any = None, like: str = "torch",
                     threads: int = 0, max_output_bytes: Optional[int] = None) -> Any:
    """Decode a frame from compress_delta against the reference it was made
    with (and ref2 when the frame needs it). A wrong reference raises
    ReferenceMismatchError; nothing is returned. Keyframes decode too.
    max_output_bytes as for decompress_tensor."""
    th = threads_arg(threads)
    if out is None and like not in ("torch", "numpy"):
        raise InvalidArgumentError(f"like must be 'torch' or 'numpy', got {like!r}")
    limit = _memory.output_limit(max_output_bytes)
    r = _tensors.source(ref)
    r2 = _tensors.source(ref2) if ref2 is not None else None
    with readable(blob) as (src, n):
        return _decode_into(src, n, out, like, th, limit, "tpde_decode_delta",
                            (r.ptr, r.nbytes, r2.ptr if r2 else None, r2.nbytes if r2 else 0))


def inspect_delta(blob: Any) -> Dict[str, Any]:
    """Describe a frame of either kind without decoding it: dtype, shape and
    sizes, and for a delta frame the residual kind, whether it is lossy with
    its bound and measured max_error, and sparsity (percent of elements
    whose residual is zero)."""
    with readable(blob) as (src, n):
        info = call_json("tpde_inspect_delta", src, n)
    kinds = {v: k for k, v in RESIDUALS.items()}
    return {
        "kind": "delta" if info["kind"] == 1 else "keyframe",
        "dtype": DTYPES[info["dtype"]],
        "shape": tuple(info["shape"]),
        "raw_size": info["raw_size"],
        "frame_size": info["frame_size"],
        "residual": kinds.get(info["residual"]) if info["kind"] == 1 else None,
        "identical": info["identical"],
        "lossy": info["lossy"],
        "bound": float(info["bound"]),
        "max_error": float(info["max_error"]),
        "quant_bits": info["quant_bits"],
        "needs_ref2": info["needs_ref2"],
        "changed_elems": info["changed_elems"],
        "sparsity": float(info["sparsity"]),
    }


def delta_threshold(x: Any, ref: Any, percentile: float) -> float:
    """The given percentile (0 to 100) of |x - ref| over the elements of a
    float tensor, as real numbers (NaN and infinite differences left out):
    an adaptive lossy threshold (design document section 7.1). E.g. 99 gives
    a threshold under which about 99% of the changes fall. Exact (nearest
    rank), computed in the library without copying either tensor."""
    src = _tensors.source(x)
    r = _same_layout(x, ref, "ref")
    if not 0.0 <= percentile <= 100.0:
        raise InvalidArgumentError(f"percentile must be in [0, 100], got {percentile!r}")
    out = c_double()
    call("tpde_delta_threshold", src.ptr, r.ptr, src.nbytes, src.code, float(percentile), byref(out))
    return out.value
