"""Delta frames through Python: lossless chains restore bit-exactly under
both of the seed's approaches, lossy chains stay within their bound at every
step (closed loop), and a wrong reference is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tpde

INT_VIEW = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16,
            torch.float64: torch.int64}


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    v = INT_VIEW.get(a.dtype)
    return a.dtype == b.dtype and a.shape == b.shape and (
        torch.equal(a.view(v), b.view(v)) if v is not None else torch.equal(a, b))


def walk(dtype: torch.dtype, steps: int, shape=(64, 33), seed: int = 0, scale: float = 1e-3):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=g, dtype=torch.float64) * 0.05
    out = []
    for _ in range(steps):
        w = w + torch.randn(shape, generator=g, dtype=torch.float64) * scale
        out.append(w.to(dtype))
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("approach", ["previous", "base"])
def test_lossless_chain_restores_every_step(dtype: torch.dtype, approach: str) -> None:
    chain = walk(dtype, 21, seed=1)
    base = chain[0]
    prev = base
    for cur in chain[1:]:
        ref = prev if approach == "previous" else base
        blob = tpde.compress_delta(cur, ref)
        back = tpde.decompress_delta(blob, ref)
        assert bits_equal(back, cur)
        info = tpde.inspect_delta(blob)
        assert info["kind"] == "delta" and not info["lossy"] and info["max_error"] == 0.0
        prev = back


def test_integer_chain_and_special_values() -> None:
    ref = torch.tensor([0.0, -0.0, float("inf"), float("nan"), 1e-45, 3.0], dtype=torch.float32)
    cur = torch.tensor([-0.0, 0.0, float("-inf"), 1.0, float("nan"), 3.0], dtype=torch.float32)
    assert bits_equal(tpde.decompress_delta(tpde.compress_delta(cur, ref), ref), cur)
    a = torch.randint(-1000, 1000, (500,), dtype=torch.int64)
    b = a.clone()
    b[::7] += 3
    assert torch.equal(tpde.decompress_delta(tpde.compress_delta(b, a), a), b)


def test_identical_tensor_is_tiny_and_sparsity_is_reported() -> None:
    x = torch.randn(1000, 100)
    blob = tpde.compress_delta(x, x.clone())
    assert len(blob) <= 64
    info = tpde.inspect_delta(blob)
    assert info["identical"] and info["sparsity"] == 100.0
    y = x.clone()
    y[:10] += 1
    assert tpde.inspect_delta(tpde.compress_delta(y, x))["sparsity"] == pytest.approx(99.0)


def test_wrong_reference_is_refused() -> None:
    x, ref = walk(torch.float32, 2, seed=2)
    blob = tpde.compress_delta(x, ref)
    other = ref.clone()
    other[0, 0] += 1
    with pytest.raises(tpde.ReferenceMismatchError):
        tpde.decompress_delta(blob, other)
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_delta(x, ref.to(torch.float16))
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_delta(x, ref.reshape(-1))


def test_lossy_is_float_only() -> None:
    a = torch.arange(10, dtype=torch.int32)
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_delta(a + 1, a, threshold=0.5)


@settings(max_examples=15, deadline=None)
@given(threshold=st.sampled_from([1e-5, 1e-4, 1e-3]), quant=st.sampled_from([0, 8, 4]),
       seed=st.integers(0, 1000), dtype=st.sampled_from([torch.float32, torch.bfloat16]))
def test_lossy_chain_stays_within_bound(threshold: float, quant: int, seed: int, dtype: torch.dtype) -> None:
    chain = walk(dtype, 20, seed=seed, scale=2e-4)
    prev = chain[0]
    for cur in chain[1:]:
        # Closed loop: the reference is always the previous decoded tensor.
        blob, recon = tpde.compress_delta(cur, prev, threshold=threshold, quant_bits=quant, return_recon=True)
        back = tpde.decompress_delta(blob, prev)
        assert bits_equal(back, recon), "recon is what decoding returns"
        info = tpde.inspect_delta(blob)
        assert info["lossy"] and info["bound"] == threshold
        err = (back.double() - cur.double()).abs().max().item()
        assert err <= threshold
        assert info["max_error"] == pytest.approx(err, rel=1e-6, abs=1e-12)
        prev = back


def test_numpy_delta() -> None:
    a = np.random.default_rng(3).standard_normal(1000).astype(np.float32)
    b = a.copy()
    b[::3] += np.float32(1e-3)
    blob = tpde.compress_delta(b, a)
    back = tpde.decompress_delta(blob, a, like="numpy")
    assert back.tobytes() == b.tobytes()


def adam_step(w: torch.Tensor, step: float, seed: int) -> torch.Tensor:
    """w moved by the same absolute amount everywhere, of random sign, as
    Adam's update is: small weights move by many ulps, large ones by few."""
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, w.shape, generator=g).to(torch.float64) * 2 - 1
    return (w.to(torch.float64) + sign * step).to(w.dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_default_groups_residuals_by_exponent(dtype: torch.dtype) -> None:
    # The default effort weighs exponent contexts: on an Adam-like update it
    # beats the one-context coding; "fast" keeps one context.
    g = torch.Generator().manual_seed(5)
    ref = (torch.randn(256, 512, generator=g, dtype=torch.float64) * 0.02).to(dtype)
    cur = adam_step(ref, 2e-4, 6)
    sizes = {}
    for contexts in ("auto", "one", "full"):
        blob = tpde.compress_delta(cur, ref, contexts=contexts)
        assert bits_equal(tpde.decompress_delta(blob, ref), cur)
        sizes[contexts] = len(blob)
    assert sizes["auto"] < 0.97 * sizes["one"]
    assert len(tpde.compress_delta(cur, ref)) == sizes["auto"]
    fast = tpde.compress_delta(cur, ref, effort="fast")
    assert fast == tpde.compress_delta(cur, ref, effort="fast", contexts="one")
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_delta(cur, ref, contexts="many")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("contexts", ["auto", "full"])
def test_contexts_round_trip_special_values(dtype: torch.dtype, contexts: str) -> None:
    g = torch.Generator().manual_seed(7)
    ref = (torch.randn(64, 1024, generator=g, dtype=torch.float64) * 0.02).to(dtype)
    cur = adam_step(ref, 1e-3, 8)
    info = torch.finfo(dtype)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), info.tiny, info.tiny / 4,
                            -info.tiny / 2, info.max, -info.max], dtype=torch.float64).to(dtype)
    iv = INT_VIEW[dtype]
    # NaNs with payloads, positive and negative, as bit patterns.
    nan_bits = special[4:5].view(iv).repeat(3)
    nan_bits[1] |= 1
    nan_bits[2] = nan_bits[2] | 3 | torch.tensor(-1, dtype=iv).bitwise_left_shift(8 * ref.element_size() - 1)
    special = torch.cat([special, nan_bits.view(dtype)])
    flat_ref, flat_cur = ref.view(-1), cur.view(-1)
    idx = torch.arange(0, flat_ref.numel(), 11)
    flat_ref[idx] = special[idx % special.numel()]
    flat_cur[idx[::2]] = special[(idx[::2] // 3) % special.numel()]
    blob = tpde.compress_delta(cur, ref, contexts=contexts)
    assert bits_equal(tpde.decompress_delta(blob, ref), cur)
