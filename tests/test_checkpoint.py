"""Whole-checkpoint API: TemporalPositionDeltaEncoder, TPDECheckpointCompressor
and the checkpoint bundle they write (docs/FORMAT.md section 9)."""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import sys
import zlib
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import tpde

FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
INTS = [torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.uint16, torch.uint32, torch.uint64]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical: same dtype, shape and bytes (NaN payloads, -0.0 included)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def assert_same_state(got: Dict[str, Any], want: Dict[str, Any]) -> None:
    assert list(got) == list(want)
    for k in want:
        assert same(got[k], want[k]), k


def special_values(dtype: torch.dtype) -> torch.Tensor:
    v = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, -1e-45, 65504.0, 1.0],
                     dtype=torch.float64).to(dtype)
    if dtype in (torch.float32,):
        # A NaN with a payload, and a subnormal, as bit patterns.
        bits = v.view(torch.int32)
        bits[4] = 0x7FC00ABC
        bits[5] = 0x00000001
    return v


def random_state(g: torch.Generator, dtype: torch.dtype) -> "collections.OrderedDict[str, torch.Tensor]":
    sd = collections.OrderedDict()
    # Drawn in float64 so that float64 tensors use their whole mantissa.
    sd["layer.weight"] = (torch.randn(64, 96, generator=g, dtype=torch.float64) * 0.05).to(dtype)
    sd["layer.bias"] = (torch.randn(96, generator=g, dtype=torch.float64) * 0.01).to(dtype)
    sd["special"] = special_values(dtype)
    sd["steps"] = torch.tensor(7, dtype=torch.int64)
    sd["ids"] = torch.randint(-1000, 1000, (300,), generator=g, dtype=torch.int32)
    sd["mask"] = torch.rand(50, generator=g) > 0.5
    sd["frozen"] = (torch.randn(32, 32, generator=g, dtype=torch.float64)).to(dtype)
    sd["empty"] = torch.zeros(0, 5, dtype=dtype)
    return sd


def step_state(sd: Dict[str, torch.Tensor], g: torch.Generator, scale: float = 1e-3) -> Dict[str, torch.Tensor]:
    """One random-walk step: floats move a little (some elements stay put),
    integers change in a few places, the frozen tensor and specials do not."""
    out = collections.OrderedDict()
    for k, v in sd.items():
        if k in ("frozen", "special", "empty"):
            out[k] = v.clone()
        elif v.is_floating_point():
            move = torch.randn(v.shape, generator=g, dtype=torch.float64) * scale
            keep = torch.rand(v.shape, generator=g) < 0.3
            out[k] = torch.where(keep, v.double(), v.double() + move).to(v.dtype)
        elif v.dtype == torch.bool:
            flip = torch.rand(v.shape, generator=g) < 0.05
            out[k] = v ^ flip
        else:
            out[k] = v + (torch.rand(v.shape, generator=g) < 0.1).to(v.dtype)
    return out


# --- lossless chains ------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reference", ["previous", "base"])
def test_lossless_chain_of_21_every_dtype(dtype: torch.dtype, reference: str) -> None:
    # A seed of the parameters alone: hash() of a str changes with every
    # process (PYTHONHASHSEED), so a failure could not be replayed.
    g = torch.Generator().manual_seed(zlib.crc32(f"{dtype}/{reference}".encode()))
    enc = tpde.TPDECheckpointCompressor(reference=reference)
    dec = tpde.TPDECheckpointCompressor(reference=reference)
    state = random_state(g, dtype)
    sizes = []
    for epoch in range(21):
        blob = enc.compress(state, epoch=epoch)
        meta = blob.metadata
        assert meta["lossless"] and meta["max_error"] == 0.0
        # The store's default K = 10: every 10th checkpoint is full.
        assert meta["checkpoint_type"] == ("full" if epoch % 10 == 0 else "delta")
        if epoch % 10:
            assert meta["reference"] == reference
            assert meta["reference_epoch"] == (epoch - 1 if reference == "previous" else epoch - epoch % 10)
        got = dec.decompress(bytes(blob))
        assert_same_state(got, state)
        sizes.append(len(blob))
        state = step_state(state, g)
    # Deltas are smaller than the full checkpoint they follow.
    assert max(s for i, s in enumerate(sizes) if i % 10) < sizes[0]


@pytest.mark.parametrize("k", [1, 2, 3, 7])
@pytest.mark.parametrize("reference", ["previous", "base"])
def test_chain_policy_is_the_stores(tmp_path: Path, k: int, reference: str) -> None:
    """The compressor's forward chains obey the store's K (one policy,
    core/chain): no checkpoint needs more than K blobs to be decoded, and
    decoding restarts cleanly at each keyframe."""
    g = torch.Generator().manual_seed(k)
    enc = tpde.TPDECheckpointCompressor(reference=reference, keyframe_interval=k)
    assert enc.keyframe_interval == k
    state = random_state(g, torch.float32)
    since_full = 0
    for epoch in range(2 * k + 3):
        blob = enc.compress(state, epoch=epoch)
        since_full = 0 if blob.metadata["checkpoint_type"] == "full" else since_full + 1
        assert since_full + 1 <= k, f"checkpoint {epoch} needs {since_full + 1} blobs with K={k}"
        assert (blob.metadata["checkpoint_type"] == "full") == (epoch % k == 0)
        # Decoding from the newest keyframe alone works: a lost blob before
        # it costs nothing after it.
        if blob.metadata["checkpoint_type"] == "full":
            dec = tpde.TPDECheckpointCompressor(reference=reference, keyframe_interval=k)
        assert_same_state(dec.decompress(bytes(blob)), state)
        state = step_state(state, g)


@pytest.mark.parametrize("bad", [0, -1, 1001, 2.5, True, "10"])
def test_chain_policy_refusals_are_the_stores(tmp_path: Path, bad: Any) -> None:
    with pytest.raises(tpde.InvalidArgumentError) as compressor:
        tpde.TPDECheckpointCompressor(keyframe_interval=bad)
    with pytest.raises(tpde.InvalidArgumentError) as store:
        tpde.Store(tmp_path / "s", keyframe_interval=bad)
    assert str(compressor.value) == str(store.value)
    assert not (tmp_path / "s").exists()
    with pytest.raises(tpde.InvalidArgumentError, match="reference"):
        tpde.TPDECheckpointCompressor(reference="next")


def test_encoder_chain_each_approach_with_standalone_decoder() -> None:
    """Approach A with TemporalPositionDeltaEncoder and explicit previous
    checkpoints, decoded with the module-level load_checkpoint."""
    g = torch.Generator().manual_seed(3)
    enc = tpde.TemporalPositionDeltaEncoder()
    state = random_state(g, torch.float32)
    data, _ = enc.compress_checkpoint(state, epoch=0)
    decoded = tpde.load_checkpoint(data)
    assert_same_state(decoded, state)
    for epoch in range(1, 21):
        new = step_state(state, g)
        data, meta = enc.compress_checkpoint_delta(new, state, epoch=epoch)
        assert 0.0 < meta["sparsity"] < 100.0
        decoded = tpde.load_checkpoint(data, decoded)
        assert_same_state(decoded, new)
        state = new


def test_integer_only_chain_and_prediction() -> None:
    g = torch.Generator().manual_seed(4)
    enc = tpde.TPDECheckpointCompressor(predict=True)
    dec = tpde.TPDECheckpointCompressor(predict=True)
    # Drawn and stepped in int64: torch has no arithmetic on uint16/32/64.
    state = collections.OrderedDict((f"t{i}", torch.randint(0, 5, (200,), generator=g).to(d))
                                    for i, d in enumerate(INTS))
    state["w"] = torch.randn(4000, generator=g)
    drift = torch.randn(4000, generator=g) * 1e-4
    for epoch in range(21):
        assert_same_state(dec.decompress(enc.compress(state, epoch)), state)
        state = collections.OrderedDict((k, (v.to(torch.int64) + 1).to(v.dtype) if not v.is_floating_point()
                                         else v + drift) for k, v in state.items())


def test_identical_checkpoint_costs_at_most_64_bytes_per_tensor() -> None:
    g = torch.Generator().manual_seed(5)
    enc = tpde.TemporalPositionDeltaEncoder()
    state = random_state(g, torch.bfloat16)
    enc.compress_checkpoint(state)
    info = tpde.checkpoint_info(enc.compress_checkpoint_delta(state))
    for t in info["tensors"]:
        if t["raw_size"]:
            assert t["identical"], t["name"]
        assert t["frame_size"] <= 64, t
    assert info["checkpoint_type"] == "delta"


def test_new_and_reshaped_tensors_become_keyframes() -> None:
    g = torch.Generator().manual_seed(6)
    enc = tpde.TemporalPositionDeltaEncoder()
    a = {"w": torch.randn(10, 10, generator=g), "gone": torch.randn(3, generator=g)}
    enc.compress_checkpoint(a)
    b = {"w": a["w"].reshape(100).clone(), "new": torch.randn(4, generator=g)}
    blob = enc.compress_checkpoint_delta(b, a)
    kinds = {t["name"]: t["kind"] for t in tpde.checkpoint_info(blob)["tensors"]}
    assert kinds == {"w": "keyframe", "new": "keyframe"}
    assert_same_state(tpde.load_checkpoint(blob, a), b)


# --- structure ---------------------------------------------------------------

def test_training_state_structure_round_trips_and_loads() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(5, 8)).sum().backward()
    opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3, "lr": [1e-3, float("inf")],
            "betas": (0.9, 0.999), "note": "ünïcode", "none": None, 7: "int key"}
    enc = tpde.TemporalPositionDeltaEncoder()
    back = enc.decompress_checkpoint(enc.compress_checkpoint(ckpt))
    assert back["epoch"] == 3 and back["lr"] == [1e-3, math.inf] and back["betas"] == (0.9, 0.999)
    assert back["note"] == "ünïcode" and back["none"] is None and back[7] == "int key"
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    for k, v in model.state_dict().items():
        assert same(back["model"][k], v)
    m2 = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    m2.load_state_dict(back["model"])
    o2 = torch.optim.AdamW(m2.parameters(), lr=1e-3)
    o2.load_state_dict(back["optimizer"])
    for s, t in zip(o2.state_dict()["state"].values(), opt.state_dict()["state"].values()):
        for k in t:
            assert same(s[k], t[k])


def test_state_dict_metadata_and_tied_weights_survive() -> None:
    emb = torch.nn.Embedding(50, 8)
    head = torch.nn.Linear(8, 50, bias=False)
    head.weight = emb.weight  # tied, as in GPT-2
    model = torch.nn.ModuleDict({"emb": emb, "head": head, "bn": torch.nn.BatchNorm1d(8)})
    sd = model.state_dict()
    enc = tpde.TemporalPositionDeltaEncoder()
    blob = enc.compress_checkpoint(sd)
    back = enc.decompress_checkpoint(blob)
    assert back._metadata == sd._metadata
    assert back["emb.weight"].data_ptr() == back["head.weight"].data_ptr()
    # Stored once.
    assert [t["name"] for t in tpde.checkpoint_info(blob)["tensors"]].count("emb.weight") == 1
    assert len(blob) < 1.5 * 50 * 8 * 4 + 4096
    model.load_state_dict(back)


@pytest.mark.parametrize("bad", [
    {"x": object()},
    {"x": {1, 2}},
    {"x": b"bytes"},
    {(1, 2): torch.zeros(1)},
])
def test_unstorable_values_are_refused_with_their_path(bad: Dict[Any, Any]) -> None:
    with pytest.raises(tpde.InvalidArgumentError, match=r"checkpoint.*(type|is a)"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint(bad)


def test_not_a_mapping() -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="mapping"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint([torch.zeros(1)])


# --- the compressed object ---------------------------------------------------

def test_compressed_checkpoint_is_bytes_and_a_pair(tmp_path: Path) -> None:
    c = tpde.TemporalPositionDeltaEncoder().compress_checkpoint({"w": torch.randn(100)}, epoch=4)
    data, meta = c
    assert type(data) is bytes and data == c and len(c) == len(data) == meta["compressed_size"]
    assert meta["epoch"] == 4 and meta is c.metadata
    for key in ("sparsity", "original_size", "compressed_size", "ratio", "time", "max_error", "method",
                "format_version", "tpde_version", "compression_method", "threshold", "timestamp",
                "original_size_mb", "compressed_size_mb"):
        assert key in meta, key
    assert meta["tpde_version"] == tpde.__version__ and meta["format_version"] == "1.0"
    assert pickle.loads(pickle.dumps(c)) == data
    torch.save(c, tmp_path / "c.pt")
    loaded = torch.load(tmp_path / "c.pt")  # weights_only=True, torch's default
    assert loaded == data
    assert tpde.load_checkpoint(loaded).keys() == {"w"}


def test_user_metadata_is_stored() -> None:
    enc = tpde.TemporalPositionDeltaEncoder()
    c = enc.compress_checkpoint({"w": torch.zeros(3)}, metadata={"model_name": "minilm", "step": 100})
    assert c.metadata["model_name"] == "minilm"
    info = tpde.checkpoint_info(c)
    assert info["user"] == {"model_name": "minilm", "step": 100}
    assert info["tpde_version"] == tpde.__version__
    with pytest.raises(tpde.InvalidArgumentError, match="JSON"):
        enc.compress_checkpoint({"w": torch.zeros(3)}, metadata={"x": object()})


# --- lossy ----------------------------------------------------------------------

@hsettings(max_examples=12)
@given(
    threshold=st.sampled_from([1e-5, 1e-4, 1e-3, 3e-3]),
    quant=st.sampled_from([0, 8, 4]),
    adaptive=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    seed=st.integers(0, 2**16),
)
def test_lossy_chain_stays_within_bound_at_every_step(threshold: float, quant: int, adaptive: bool,
                                                      dtype: torch.dtype, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    enc = tpde.TemporalPositionDeltaEncoder(threshold=threshold, adaptive=adaptive, quant_bits=quant,
                                            percentile=90.0)
    true = random_state(g, dtype)
    data, meta = enc.compress_checkpoint(true, epoch=0)
    assert meta["lossless"]  # a full checkpoint is never lossy
    decoded = enc.decompress_checkpoint(data)
    assert_same_state(decoded, true)
    for epoch in range(1, 7):
        true = step_state(true, g, scale=threshold * 2)
        data, meta = enc.compress_checkpoint_delta(true, epoch=epoch)
        decoded = enc.decompress_checkpoint(data, previous=decoded)
        measured = 0.0
        for k, v in true.items():
            if v.is_floating_point():
                a, b = v.double(), decoded[k].double()
                fin = torch.isfinite(a)
                assert torch.equal(torch.isnan(a), torch.isnan(b)) and torch.equal(a[~fin & ~torch.isnan(a)],
                                                                                   b[~fin & ~torch.isnan(a)])
                if fin.any():
                    measured = max(measured, float((a[fin] - b[fin]).abs().max()))
            else:
                assert same(decoded[k], v), k  # integers and bools stay exact
        assert measured <= meta["error_bound"] <= threshold
        assert meta["max_error"] == pytest.approx(measured, rel=1e-6, abs=0)
        info = tpde.checkpoint_info(data)
        for t in info["tensors"]:
            if t["lossy"]:
                assert t["max_error"] <= t["bound"] <= threshold


def test_lossy_is_opt_in_and_explicit_thresholds() -> None:
    enc = tpde.TPDECheckpointCompressor(adaptive_thresholds={"w": 0.5})
    g = torch.Generator().manual_seed(8)
    w = torch.randn(1000, generator=g)
    enc.compress({"w": w, "b": w.clone()})
    c = enc.compress({"w": w + 0.1, "b": w + 0.1})
    kinds = {t["name"]: t for t in tpde.checkpoint_info(c)["tensors"]}
    assert kinds["w"]["lossy"] and kinds["w"]["bound"] == 0.5 and kinds["w"]["identical"]
    assert not kinds["b"]["lossy"]
    assert not tpde.TemporalPositionDeltaEncoder().lossy
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.TemporalPositionDeltaEncoder(quant_bits=8)  # quantizing needs a lossy mode


# --- bad input -----------------------------------------------------------------

def test_wrong_previous_is_refused_never_wrong_data() -> None:
    g = torch.Generator().manual_seed(9)
    enc = tpde.TemporalPositionDeltaEncoder()
    a = random_state(g, torch.float32)
    b = step_state(a, g)
    c = step_state(b, g)
    enc.compress_checkpoint(a, epoch=1)
    d_b = enc.compress_checkpoint_delta(b, epoch=2)
    d_c = enc.compress_checkpoint_delta(c, epoch=3)
    with pytest.raises(tpde.ReferenceMismatchError, match="epoch 2"):
        tpde.load_checkpoint(d_c, a)  # skipped a link of the chain
    with pytest.raises(tpde.ReferenceMismatchError, match="no previous"):
        tpde.load_checkpoint(d_b)
    missing = dict(a)
    del missing["layer.weight"]
    with pytest.raises(tpde.ReferenceMismatchError, match="lacks"):
        tpde.load_checkpoint(d_b, missing)
    reshaped = dict(a)
    reshaped["layer.weight"] = a["layer.weight"].reshape(96, 64)
    with pytest.raises(tpde.ReferenceMismatchError, match=r"F32\[96, 64\]"):
        tpde.load_checkpoint(d_b, reshaped)
    retyped = dict(a)
    retyped["layer.weight"] = a["layer.weight"].double()
    with pytest.raises(tpde.ReferenceMismatchError, match="F64"):
        tpde.load_checkpoint(d_b, retyped)
    assert_same_state(tpde.load_checkpoint(d_c, tpde.load_checkpoint(d_b, a)), c)


def test_damaged_bundles_raise_typed_errors() -> None:
    g = torch.Generator().manual_seed(10)
    a = random_state(g, torch.bfloat16)
    enc = tpde.TemporalPositionDeltaEncoder()
    full = bytes(enc.compress_checkpoint(a))
    b = step_state(a, g)
    delta = bytes(enc.compress_checkpoint_delta(b))
    for blob, prev in ((full, None), (delta, a)):
        step = max(1, len(blob) // 300)
        for i in range(0, len(blob), step):
            bad = bytearray(blob)
            bad[i] ^= 0x10
            try:
                got = tpde.load_checkpoint(bytes(bad), prev)
            except (tpde.CorruptDataError, tpde.UnsupportedFormatError, tpde.ReferenceMismatchError):
                continue
            # Only a change the format cannot see may decode, and then it
            # must decode to the right data (e.g. JSON whitespace).
            assert_same_state(got, a if prev is None else b)
        for n in (0, 7, 8, 100, len(blob) // 2, len(blob) - 1):
            with pytest.raises(tpde.CorruptDataError):
                tpde.load_checkpoint(blob[:n], prev)
    frame = tpde.compress_tensor(torch.zeros(10))
    with pytest.raises(tpde.InvalidArgumentError, match="single tensor frame"):
        tpde.load_checkpoint(frame + bytes(16))
    with pytest.raises(tpde.InvalidArgumentError, match="decompress_file"):
        tpde.load_checkpoint(b"\x89TPC" + bytes(100))
    with pytest.raises(TypeError):
        tpde.load_checkpoint(12345)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    E = tpde.InvalidArgumentError
    with pytest.raises(E):
        tpde.TemporalPositionDeltaEncoder(threshold=-1)
    with pytest.raises(E):
        tpde.TemporalPositionDeltaEncoder(threshold=float("nan"))
    with pytest.raises(E):
        tpde.TemporalPositionDeltaEncoder(compression_method="lz4")
    with pytest.raises(E):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint({}, checkpoint_type="partial")
    with pytest.raises(E, match="no previous"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint_delta({"w": torch.zeros(1)})
    with pytest.raises(E, match="like"):
        tpde.load_checkpoint(tpde.TemporalPositionDeltaEncoder().compress_checkpoint({}), like="jax")
    with pytest.raises(tpde.UnsupportedFormatError):
        tpde.TPDECheckpointCompressor(version="9.0.0")


# --- files -----------------------------------------------------------------------

def test_save_and_stream_to_files(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(11)
    a = random_state(g, torch.float32)
    b = step_state(a, g)
    enc = tpde.TemporalPositionDeltaEncoder(output_dir=tmp_path / "ck")
    n1 = enc.save_checkpoint(a, epoch=1)
    n2 = enc.save_compressed_delta(b, previous_checkpoint=a, epoch=2)
    p1, p2 = tmp_path / "ck" / "checkpoint_epoch_1.tpde", tmp_path / "ck" / "checkpoint_epoch_2.tpde"
    assert p1.stat().st_size == n1 and p2.stat().st_size == n2 and n2 < n1
    assert oct(p1.stat().st_mode & 0o777) == oct(0o644)
    da = enc.load_checkpoint(1)
    assert_same_state(da, a)
    assert_same_state(enc.load_checkpoint(p2, previous=da), b)
    # Streaming in small groups writes the same bundle as one call.
    s = tmp_path / "stream.tpde"
    for cs in (1, 1000, 1e8):
        n = enc.stream_compress_to_file(b, s, chunk_size=cs, previous=a)
        assert s.stat().st_size == n
        assert_same_state(tpde.load_checkpoint(s, a), b)
    assert enc.decompress_parallel(p1, num_threads=2).keys() == a.keys()
    assert sorted(os.listdir(tmp_path / "ck")) == ["checkpoint_epoch_1.tpde", "checkpoint_epoch_2.tpde"]


def test_failed_stream_leaves_no_file(tmp_path: Path) -> None:
    enc = tpde.TemporalPositionDeltaEncoder()
    dst = tmp_path / "x.tpde"
    # The first group is written, the second (a meta tensor has no data)
    # fails: the temporary file is removed and dst never appears.
    with pytest.raises(tpde.InvalidArgumentError, match="meta"):
        enc.stream_compress_to_file({"a": torch.zeros(1000), "b": torch.empty(3, device="meta")}, dst, chunk_size=1)
    assert os.listdir(tmp_path) == []
    dst.write_bytes(b"old")
    with pytest.raises(tpde.InvalidArgumentError):
        enc.stream_compress_to_file({"w": torch.zeros(3), "x": object()}, dst)
    assert dst.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.tpde"]
    with pytest.raises(tpde.TPDEIOError):
        tpde.load_checkpoint(tmp_path / "missing.tpde")


def test_cli_info_describes_a_checkpoint(tmp_path: Path, run_py: Any) -> None:
    g = torch.Generator().manual_seed(12)
    a = random_state(g, torch.float32)
    enc = tpde.TemporalPositionDeltaEncoder(output_dir=tmp_path)
    enc.save_checkpoint(a, epoch=1)
    enc.save_compressed_delta(step_state(a, g), epoch=2)
    r = run_py("-m", "tpde", "info", str(tmp_path / "checkpoint_epoch_2.tpde"))
    assert r.returncode == 0, r.stderr
    assert "tpde checkpoint 1.0, delta against the previous checkpoint, epoch 2, lossless" in r.stdout
    assert "layer.weight" in r.stdout and "frozen" in r.stdout and "(identical)" in r.stdout
    r = run_py("-m", "tpde", "info", "--json", str(tmp_path / "checkpoint_epoch_1.tpde"))
    assert r.returncode == 0, r.stderr
    import json

    info = json.loads(r.stdout)
    assert info["checkpoint_type"] == "full" and len(info["tensors"]) == len(a)


_STREAM_MEMORY = r"""
import sys, numpy as np, tpde
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
mode, out = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
# 96 tensors of 4 MB: 384 MB of float32 noise (it barely compresses, so
# the compressed checkpoint is about as big as the input).
ckpt = {f"t{i}": rng.standard_normal(1 << 20, dtype=np.float32) for i in range(96)}
tpde.compress_tensor(ckpt["t0"][:1000])  # load the library, start its runtime
# Peak RSS of this process from here on: VmHWM, reset to the current RSS.
# (Not ru_maxrss: that is a high-water mark inherited across fork and
# exec, so a child of a big pytest process starts at pytest's peak.)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
enc = tpde.TemporalPositionDeltaEncoder(keep_reference=False)
if mode == "stream":
    enc.stream_compress_to_file(ckpt, out, chunk_size=8 << 20)
else:
    data = enc.compress_checkpoint(ckpt)
    open(out, "wb").write(data)
print((status("VmHWM") - before) >> 20)  # MiB of peak growth
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_stream_compress_memory_is_bounded_by_chunk_size(tmp_path: Path, run_py: Any) -> None:
    """stream_compress_to_file holds about one chunk of frames, not the
    checkpoint: its peak memory growth stays far below the in-memory path's
    (which must hold the whole compressed checkpoint)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        pytest.skip(f"cannot reset peak RSS here: {e}")
    script = tmp_path / "mem.py"
    script.write_text(_STREAM_MEMORY)
    growth = {}
    for mode in ("stream", "memory"):
        r = run_py(str(script), mode, str(tmp_path / f"{mode}.tpde"), timeout=300)
        assert r.returncode == 0, r.stderr
        growth[mode] = int(r.stdout.strip())
    # The same bundle but for the timestamp in its metadata.
    assert abs((tmp_path / "stream.tpde").stat().st_size - (tmp_path / "memory.tpde").stat().st_size) < 64
    assert growth["memory"] > 300, growth  # the in-memory path holds ~380 MB of output
    assert growth["stream"] < 120, growth  # 8 MB chunks + the library's scratch


# --- what a saved checkpoint says about itself, and what it costs to write and read ---------

def _lossy_pair(seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    a = {f"layer{i}.w": torch.randn(64, 32, generator=g) for i in range(6)}
    a["step"] = torch.tensor(3)
    b = {k: (v + 1e-3 * torch.randn(v.shape, generator=g) * (torch.rand(v.shape, generator=g) < 0.5)
             if v.is_floating_point() else v + 1) for k, v in a.items()}
    return a, b


@pytest.mark.parametrize("how", ["save_checkpoint", "save_compressed_delta", "stream_compress_to_file",
                                 "bytes written to a file"])
def test_a_saved_checkpoints_info_has_its_ratio_sparsity_and_max_error(how: str, tmp_path: Path) -> None:
    """The statistics compression reports are in the file too: the writer
    takes the metadata after the tensors are coded, and the ratio is the
    stored original size over the file's size."""
    a, b = _lossy_pair(21)
    enc = tpde.TemporalPositionDeltaEncoder(threshold=1e-3, output_dir=tmp_path)
    enc.compress_checkpoint(a, epoch=1)
    if how == "save_checkpoint":
        enc.save_checkpoint(b, epoch=2)
        path = tmp_path / "checkpoint_epoch_2.tpde"
    elif how == "save_compressed_delta":
        enc.save_compressed_delta(b, epoch=2)
        path = tmp_path / "checkpoint_epoch_2.tpde"
    elif how == "stream_compress_to_file":
        path = tmp_path / "s.tpde"
        enc.stream_compress_to_file(b, path, chunk_size=4096, previous=a, epoch=2)
    else:
        path = tmp_path / "m.tpde"
        path.write_bytes(enc.compress_checkpoint_delta(b, epoch=2))
    meta = enc.last_metadata
    assert meta is not None
    info = tpde.checkpoint_info(path)
    assert info["compressed_size"] == path.stat().st_size == meta["compressed_size"]
    for key in ("ratio", "sparsity", "max_error", "lossless", "error_bound"):
        assert info[key] == meta[key], key
    if how != "save_checkpoint":
        assert 0 < info["sparsity"] < 100 and 0 < info["max_error"] <= info["error_bound"] <= 1e-3
        assert not info["lossless"]
    else:
        assert info["sparsity"] == 0.0 and info["max_error"] == 0.0 and info["lossless"]


@pytest.mark.parametrize("tensors", [3, 40])
def test_adaptive_thresholds_are_one_library_call_per_checkpoint(tensors: int, abi_calls) -> None:
    """docs/ARCHITECTURE.md: one ABI call per checkpoint, not per tensor;
    the percentiles are those tpde.delta_threshold gives tensor by tensor."""
    g = torch.Generator().manual_seed(tensors)
    a = {f"t{i}": torch.randn(300 + i, generator=g) for i in range(tensors)}
    a["ints"] = torch.arange(10)
    b = {k: v + 1e-2 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in a.items()}
    enc = tpde.TemporalPositionDeltaEncoder(adaptive=True, percentile=80.0)
    enc.compress_checkpoint(a)
    abi_calls.clear()
    data, meta = enc.compress_checkpoint_delta(b)
    calls = dict(abi_calls)
    assert calls["tpde_bundle_thresholds"] == 1 and "tpde_delta_threshold" not in calls, calls
    # bound, thresholds, open, add and its result, close: not per tensor
    assert sum(calls.values()) <= 6, calls
    bounds = {t["name"]: t["bound"] for t in tpde.checkpoint_info(data)["tensors"]}
    for k in a:
        if a[k].is_floating_point():
            assert bounds[k] == tpde.delta_threshold(b[k], a[k], 80.0), k
        else:
            assert bounds[k] == 0.0, k
    assert meta["error_bound"] == max(bounds.values())


def test_decoding_validates_the_bundle_once(abi_calls) -> None:
    """One open (the library validates the bundle there and keeps it), its
    index read once (tpde_result), one decode, one close: whatever the
    tensor count."""
    a, b = _lossy_pair(22)
    enc = tpde.TemporalPositionDeltaEncoder()
    full = enc.compress_checkpoint(a)
    delta = enc.compress_checkpoint_delta(b)
    abi_calls.clear()
    back = tpde.load_checkpoint(delta, previous=tpde.load_checkpoint(full))
    calls = dict(abi_calls)
    assert_same_state(back, b)
    assert calls == {"tpde_bundle_open": 2, "tpde_result": 2, "tpde_bundle_decode": 2, "tpde_bundle_close": 2}


@pytest.mark.parametrize("ckpt", [{}, {"w": torch.arange(3.0)}])
def test_metadata_larger_than_the_room_the_frames_left(ckpt: Dict[str, Any]) -> None:
    """The bundle's tail (metadata, index, trailer) goes after the frames
    when it fits in their buffer, else in a buffer of its own: both make
    the same bundle."""
    user = {"notes": "x" * 100_000}
    enc = tpde.TemporalPositionDeltaEncoder()
    data, meta = enc.compress_checkpoint(ckpt, metadata=user)
    assert len(data) == meta["compressed_size"] > 100_000
    info = tpde.checkpoint_info(data)
    assert info["user"] == user and info["num_tensors"] == len(ckpt)
    assert_same_state(tpde.load_checkpoint(data), ckpt)
