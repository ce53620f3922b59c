"""Which checkpoint a delta of TemporalPositionDeltaEncoder is coded against
(issue 17, item 5).

model.state_dict() returns the live parameters: a "previous" dict taken
before training holds the new values afterwards. The encoder must code such
a delta against its own copy of the checkpoint it compressed last (or refuse
when it holds none), never against the new values: that blob decodes with no
checkpoint the user has.
"""

from __future__ import annotations

import collections
import struct
from pathlib import Path
from typing import Any, Callable, Dict

import numpy as np
import pytest
import torch

import tpde
from tpde import _tensors


def bits_equal(a: Any, b: Any) -> bool:
    """Same dtype, shape and bytes (NaN payloads, -0.0 included)."""
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return a.numel() == 0 or torch.equal(a.contiguous().reshape(-1).view(torch.uint8),
                                         b.contiguous().reshape(-1).view(torch.uint8))


def assert_same_state(got: Dict[str, Any], want: Dict[str, Any]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert bits_equal(got[k], want[k]), k


def snapshot(sd: Dict[str, torch.Tensor]) -> "collections.OrderedDict[str, torch.Tensor]":
    return collections.OrderedDict((k, v.detach().clone()) for k, v in sd.items())


class Run:
    """A small model trained for real with Adam: every step moves the
    parameters in place, as training does."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.model = torch.nn.Sequential(torch.nn.Linear(24, 48), torch.nn.BatchNorm1d(48), torch.nn.ReLU(),
                                         torch.nn.Linear(48, 8))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.g = torch.Generator().manual_seed(seed + 1)

    def train(self, steps: int = 3) -> None:
        self.model.train()
        for _ in range(steps):
            x = torch.randn(16, 24, generator=self.g)
            y = torch.randn(16, 8, generator=self.g)
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()


# --- previous is the live state dict ------------------------------------------

# "another call": the README's form, compress_checkpoint(model.state_dict()),
# where previous is a different dict of the same live tensors. "previous":
# compress_checkpoint(previous), the very object, which the encoder always
# recognised.
@pytest.mark.parametrize("first", ["another call", "previous"])
def test_readme_snippet_with_a_live_previous_decodes_against_the_decoded_first(first: str) -> None:
    run = Run()
    model = run.model
    # The README and design document, as users type them.
    enc = tpde.TemporalPositionDeltaEncoder()
    previous = model.state_dict()                  # aliases the live parameters
    data, meta = enc.compress_checkpoint(model.state_dict() if first == "another call" else previous)
    decoded_previous = tpde.load_checkpoint(data)
    run.train()
    want = snapshot(model.state_dict())
    assert not bits_equal(want["0.weight"], decoded_previous["0.weight"])  # training moved it
    data, meta = enc.compress_checkpoint_delta(model.state_dict(), previous)
    sd = enc.decompress_checkpoint(data, previous=decoded_previous)
    assert_same_state(sd, want)
    # Coded against the new values themselves, it was ~100% sparse: nothing
    # had changed. Adam moves every element of the weights.
    assert meta["sparsity"] < 50.0
    assert meta["reference_epoch"] is None and meta["reference"] == "previous"


@pytest.mark.parametrize("how", ["compress_checkpoint_delta", "compress_checkpoint", "save_compressed_delta",
                                 "stream_compress_to_file"])
def test_every_entry_point_codes_a_live_previous_against_the_held_copy(how: str, tmp_path: Path) -> None:
    """Model and optimizer state (Adam's moments and step are live too), a
    chain of three deltas, each through the same entry point."""
    run = Run(seed=1)
    enc = tpde.TemporalPositionDeltaEncoder(output_dir=tmp_path)

    def state() -> Dict[str, Any]:
        return {"model": run.model.state_dict(), "optimizer": run.opt.state_dict()}

    run.train(1)  # Adam's state exists from the first step on
    decoded = tpde.load_checkpoint(enc.compress_checkpoint(state(), epoch=0))
    for epoch in range(1, 4):
        previous = state()
        run.train()
        want = tpde.load_checkpoint(tpde.TemporalPositionDeltaEncoder().compress_checkpoint(state()))
        if how == "compress_checkpoint_delta":
            blob: Any = enc.compress_checkpoint_delta(state(), previous, epoch=epoch)
        elif how == "compress_checkpoint":
            blob = enc.compress_checkpoint(state(), "delta", epoch=epoch, previous=previous)
        elif how == "save_compressed_delta":
            enc.save_compressed_delta(state(), previous, epoch=epoch)
            blob = tmp_path / f"checkpoint_epoch_{epoch}.tpde"
        else:
            blob = tmp_path / f"s{epoch}.tpde"
            enc.stream_compress_to_file(state(), blob, chunk_size=4096, previous=previous, epoch=epoch)
        info = tpde.checkpoint_info(blob)
        # The held copy carries the epoch it was made at; stream_compress_to_file
        # keeps none, so its chain stays at the full checkpoint.
        assert info["reference_epoch"] == (0 if how == "stream_compress_to_file" else epoch - 1)
        assert info["sparsity"] < 50.0
        got = tpde.load_checkpoint(blob, previous=decoded)
        assert_same_state(got["model"], want["model"])
        assert_same_state(got["optimizer"]["state"][0], want["optimizer"]["state"][0])
        if how != "stream_compress_to_file":
            decoded = got


def test_lossy_chain_with_a_live_previous_decodes_within_its_bound() -> None:
    """Lossy: the held copy is the reconstruction, not the checkpoint, so
    the decoded previous is the only reference that decodes."""
    run = Run(seed=2)
    enc = tpde.TemporalPositionDeltaEncoder(threshold=1e-4)
    decoded = tpde.load_checkpoint(enc.compress_checkpoint(run.model.state_dict()))
    for _ in range(3):
        previous = run.model.state_dict()
        run.train()
        data, meta = enc.compress_checkpoint_delta(run.model.state_dict(), previous)
        decoded = tpde.load_checkpoint(data, previous=decoded)
        for k, v in run.model.state_dict().items():
            if v.is_floating_point():
                assert (decoded[k] - v).abs().max().item() <= 1e-4, k
            else:
                assert torch.equal(decoded[k], v), k


@pytest.mark.parametrize("keep_reference", [True, False])
@pytest.mark.parametrize("how", ["compress_checkpoint_delta", "compress_checkpoint", "save_compressed_delta",
                                 "stream_compress_to_file"])
def test_no_held_copy_and_a_live_previous_is_refused_at_compress_time(how: str, keep_reference: bool,
                                                                      tmp_path: Path) -> None:
    run = Run(seed=3)
    enc = tpde.TemporalPositionDeltaEncoder(keep_reference=keep_reference, output_dir=tmp_path)
    if not keep_reference:
        enc.compress_checkpoint(run.model.state_dict())  # keeps no copy of it
    previous = run.model.state_dict()
    run.train()
    current = run.model.state_dict()
    calls: Dict[str, Callable[[], Any]] = {
        "compress_checkpoint_delta": lambda: enc.compress_checkpoint_delta(current, previous),
        "compress_checkpoint": lambda: enc.compress_checkpoint(current, "delta", previous=previous),
        "save_compressed_delta": lambda: enc.save_compressed_delta(current, previous, epoch=1),
        "stream_compress_to_file": lambda: enc.stream_compress_to_file(current, tmp_path / "s.tpde",
                                                                       previous=previous),
    }
    with pytest.raises(tpde.InvalidArgumentError, match="shares memory with current.*clone"):
        calls[how]()
    assert not list(tmp_path.glob("*.tpde"))


def test_previous_sharing_one_tensor_with_current_is_live() -> None:
    """A copy of the parameters that left a buffer uncloned is still (in
    part) the live state."""
    run = Run(seed=4)
    enc = tpde.TemporalPositionDeltaEncoder()
    sd = run.model.state_dict()
    previous = {k: (v if k == "1.running_mean" else v.clone()) for k, v in sd.items()}
    run.train()
    with pytest.raises(tpde.InvalidArgumentError, match="'1.running_mean'"):
        enc.compress_checkpoint_delta(run.model.state_dict(), previous)


# --- previous is a snapshot ---------------------------------------------------

def test_a_clone_equal_to_the_held_copy_uses_it() -> None:
    run = Run(seed=5)
    enc = tpde.TemporalPositionDeltaEncoder()
    first = snapshot(run.model.state_dict())
    decoded = tpde.load_checkpoint(enc.compress_checkpoint(run.model.state_dict(), epoch=7))
    run.train()
    want = snapshot(run.model.state_dict())
    data, meta = enc.compress_checkpoint_delta(run.model.state_dict(), snapshot(first), epoch=8)
    # The held copy's epoch: previous as given would have none.
    assert meta["reference_epoch"] == 7
    assert_same_state(tpde.load_checkpoint(data, previous=decoded), want)
    assert_same_state(tpde.load_checkpoint(data, previous=first), want)


def test_a_different_previous_is_coded_against_as_given() -> None:
    run = Run(seed=6)
    enc = tpde.TemporalPositionDeltaEncoder()
    d0 = tpde.load_checkpoint(enc.compress_checkpoint(run.model.state_dict(), epoch=0))
    run.train()
    d1 = tpde.load_checkpoint(enc.compress_checkpoint_delta(run.model.state_dict(), epoch=1), previous=d0)
    run.train()
    want = snapshot(run.model.state_dict())
    # Against the older checkpoint, by the caller's choice.
    data, meta = enc.compress_checkpoint_delta(run.model.state_dict(), d0, epoch=2)
    assert meta["reference_epoch"] is None
    assert_same_state(tpde.load_checkpoint(data, previous=d0), want)
    with pytest.raises(tpde.ReferenceMismatchError):
        tpde.load_checkpoint(data, previous=d1)


def special_state() -> "collections.OrderedDict[str, torch.Tensor]":
    w = torch.linspace(-1, 1, 64)
    w[3] = -0.0
    w.view(torch.int32)[5] = 0x7FC00ABC  # a NaN with a payload
    return collections.OrderedDict([("w", w), ("step", torch.tensor(1))])


@pytest.mark.parametrize("change, held", [
    (None, True),                     # bit for bit equal: NaN != NaN as floats, yet the same
    ("nan_payload", False),           # another NaN: equal as "both NaN", not as bits
    ("negative_zero", False),         # 0.0 == -0.0 as floats, not as bits
])
def test_equality_with_the_held_copy_is_bitwise(change: Any, held: bool) -> None:
    enc = tpde.TemporalPositionDeltaEncoder()
    first = special_state()
    decoded = tpde.load_checkpoint(enc.compress_checkpoint(special_state(), epoch=0))
    previous = special_state()
    if change == "nan_payload":
        previous["w"].view(torch.int32)[5] = 0x7FC00001
    elif change == "negative_zero":
        previous["w"][3] = 0.0
    current = special_state()
    current["w"][10:20] += 1
    current["step"] += 1
    data, meta = enc.compress_checkpoint_delta(current, previous, epoch=1)
    assert meta["reference_epoch"] == (0 if held else None)
    assert_same_state(tpde.load_checkpoint(data, previous=previous), current)
    if held:
        assert_same_state(tpde.load_checkpoint(data, previous=decoded), current)
    else:
        with pytest.raises(tpde.ReferenceMismatchError):
            tpde.load_checkpoint(data, previous=first)


# --- numpy ------------------------------------------------------------------

def numpy_state(seed: int) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((40, 30)).astype(np.float32), "ids": np.arange(100, dtype=np.int64)}


def numpy_train(state: Dict[str, np.ndarray]) -> None:
    """In place, as an optimizer steps."""
    state["w"][:, ::3] -= 0.01
    state["ids"][::7] += 1


@pytest.mark.parametrize("alias", ["same arrays", "views"])
def test_numpy_live_previous(alias: str) -> None:
    state = numpy_state(7)
    previous = dict(state) if alias == "same arrays" else {k: v[...] for k, v in state.items()}
    with pytest.raises(tpde.InvalidArgumentError, match="shares memory with current"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint_delta(state, previous)
    enc = tpde.TemporalPositionDeltaEncoder()
    decoded = tpde.load_checkpoint(enc.compress_checkpoint(dict(state)), like="numpy")
    numpy_train(state)
    want = {k: v.copy() for k, v in state.items()}
    data, meta = enc.compress_checkpoint_delta(state, previous)
    assert 0.0 < meta["sparsity"] < 100.0
    assert_same_state(tpde.load_checkpoint(data, previous=decoded, like="numpy"), want)


def test_numpy_snapshot_previous() -> None:
    state = numpy_state(8)
    first = {k: v.copy() for k, v in state.items()}
    enc = tpde.TemporalPositionDeltaEncoder()
    enc.compress_checkpoint(dict(state), epoch=0)
    numpy_train(state)
    data, meta = enc.compress_checkpoint_delta(state, {k: v.copy() for k, v in first.items()}, epoch=1)
    assert meta["reference_epoch"] == 0
    assert_same_state(tpde.load_checkpoint(data, previous=first, like="numpy"), state)


def test_shares_memory_follows_the_bytes_not_the_objects() -> None:
    buf = np.zeros(100, dtype=np.float32)
    assert _tensors.shares_memory(buf[::-1], buf)               # negative strides
    assert _tensors.shares_memory(buf[10:20], buf[::7])         # interleaved: may share
    assert not _tensors.shares_memory(buf[:50], buf[50:])       # the same buffer, disjoint halves
    assert not _tensors.shares_memory(buf, buf.copy())
    t = torch.from_numpy(buf)
    assert _tensors.shares_memory(t[60:], buf[90:])             # torch and numpy, one buffer
    assert not _tensors.shares_memory(t[:10], t[10:])
    assert _tensors.shares_memory(t.reshape(10, 10).t(), buf)   # a transposed view
    assert not _tensors.shares_memory(torch.zeros(0), torch.zeros(0))
    x = struct.pack("<f", -0.0)
    assert not _tensors.same_bits(np.frombuffer(x, np.float32), np.zeros(1, np.float32))
