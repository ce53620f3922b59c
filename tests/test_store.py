"""The checkpoint store (tpde.Store, tpde.open; docs/FORMAT.md section 11),
used as a demanding user would: whole Hugging Face-style folders, sharded
safetensors, torch files and state dicts from Python, added for many steps
and restored byte for byte; reverse-delta chains, deduplication, a base,
lossy rules, removal, damage, concurrent writers and readers, and a golden
store of layout 1 committed to the repository.

Hostile (crafted) stores are in test_store_hostile.py, the command line in
test_store_cli.py, SIGKILL and a full disk in test_store_crash.py.
"""

from __future__ import annotations

import collections
import errno
import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import tpde
from tpde.errors import CorruptDataError, InvalidArgumentError, TPDEIOError

from conftest import sha256, tree_digest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "store-v1"


# --- helpers ---------------------------------------------------------------


def snap(store: tpde.Store) -> Dict[str, Any]:
    """The committed snapshot as JSON: {"manifest", "base", "checkpoints"}."""
    with store._reader() as rd:
        return json.loads(json.dumps(rd.snapshot))


def objects_on_disk(path: Path) -> Set[str]:
    return {p.name for p in (Path(path) / "objects").glob("*/*")}


def live_objects(s: Dict[str, Any]) -> Set[str]:
    live = set()
    m = s["manifest"]
    if m and m.get("base"):
        live.update((m["base"]["object"], m["base"]["object"] + ".copy"))
    for c in (m or {}).get("checkpoints", []):
        live.update((c["object"], c["object"] + ".copy"))  # a record and its second copy
    for rec in ([s["base"]] if s.get("base") else []) + s["checkpoints"]:
        for f in rec["files"]:
            live.add(f["skeleton"]["object"])
            for r in f["regions"]:
                live.add(r["object"])
    return live


def region_index(s: Dict[str, Any]) -> Dict[Tuple[Any, str, str], Dict[str, Any]]:
    idx = {}
    for c in s["checkpoints"]:
        for f in c["files"]:
            for r in f["regions"]:
                idx[(c["step"], f["path"], r["name"])] = r
    if s.get("base"):
        for f in s["base"]["files"]:
            for r in f["regions"]:
                idx[("base", f["path"], r["name"])] = r
    return idx


def chains(s: Dict[str, Any]) -> Dict[Tuple[int, str, str], List[Dict[str, Any]]]:
    """Every region's decode chain, walked from the records (not from
    tpde's own chain_lengths): the region first, its keyframe last."""
    idx = region_index(s)
    out = {}
    for key, r in idx.items():
        if key[0] == "base":
            continue
        ch, cur = [r], r
        while cur.get("ref"):
            ref = cur["ref"]
            cur = idx[("base" if ref.get("base") else ref["step"], ref["file"], ref["region"])]
            ch.append(cur)
            assert len(ch) < 2000, "ref loop in a store tpde wrote"
        out[key] = ch
    return out


def assert_same_tree(got: Path, want: Path) -> None:
    g, w = tree_digest(got), tree_digest(want)
    assert sorted(g) == sorted(w), (sorted(set(g) ^ set(w)))
    for rel in w:
        assert g[rel][0] == w[rel][0], f"{rel}: bytes differ"
        assert g[rel][1] == w[rel][1], f"{rel}: mode {oct(g[rel][1])} != {oct(w[rel][1])}"


def bits(t: torch.Tensor) -> torch.Tensor:
    """t's bit patterns as an integer tensor of the same width."""
    t = t.contiguous()
    width = t.element_size()
    if t.dtype == torch.bool:
        return t.view(torch.uint8)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[width])


def assert_bitwise(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), path
        assert got.dtype == want.dtype and got.shape == want.shape, (path, got.dtype, want.dtype, got.shape, want.shape)
        assert torch.equal(bits(got), bits(want)), f"{path}: bits differ"
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), (path, list(got), list(want))
        for k in want:
            assert_bitwise(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want), (path, type(got), type(want))
        for i, (a, b) in enumerate(zip(got, want)):
            assert_bitwise(a, b, f"{path}[{i}]")
    else:
        assert got == want and type(got) is type(want), (path, got, want)


def random_bits(dtype: torch.dtype, n: int, rng: np.random.Generator) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.from_numpy(rng.integers(0, 2, n).astype(np.bool_))
    width = torch.empty(0, dtype=dtype).element_size()
    raw = torch.frombuffer(bytearray(rng.bytes(n * width)), dtype=torch.uint8)
    return raw.view(dtype).clone()


ALL_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.uint16, torch.int16, torch.uint32, torch.int32,
              torch.uint64, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
              torch.float8_e4m3fn, torch.float8_e5m2]


def special_f32() -> torch.Tensor:
    words = np.array([0x7FC00001, 0xFFC12345, 0x7FA00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000000,
                      0x00000001, 0x007FFFFF, 0x80000001, 0x7F7FFFFF, 0x3F800000], dtype=np.uint32)
    return torch.from_numpy(np.tile(words, 400).view(np.int32)).view(torch.float32)


def special_bf16() -> torch.Tensor:
    words = np.array([0x7FC1, 0xFFC3, 0x7F81, 0x7F80, 0xFF80, 0x8000, 0x0000, 0x0001, 0x807F, 0x3F80],
                     dtype=np.uint16)
    return torch.from_numpy(np.tile(words, 600).view(np.int16)).view(torch.bfloat16)


def special_f16() -> torch.Tensor:
    words = np.array([0x7E01, 0xFE55, 0x7C01, 0x7C00, 0xFC00, 0x8000, 0x0000, 0x0001, 0x83FF, 0x3C00],
                     dtype=np.uint16)
    return torch.from_numpy(np.tile(words, 600).view(np.int16)).view(torch.float16)


def state_dict_of_every_kind(step: int) -> Dict[str, Any]:
    """Nested dicts/lists/tuples, a tied tensor, every dtype (large enough
    for an object of its own, and tiny ones kept in the skeleton), an empty
    tensor, NaN payloads, -0.0, infinities and subnormals."""
    rng = np.random.default_rng(1000 + step)
    big = {str(dt).replace("torch.", ""): random_bits(dt, 5000, rng) for dt in ALL_DTYPES}
    small = {str(dt).replace("torch.", ""): random_bits(dt, 7, rng) for dt in ALL_DTYPES}
    w = torch.from_numpy(rng.standard_normal((64, 64)).astype(np.float32))
    frozen = torch.from_numpy(np.random.default_rng(7).standard_normal(3000).astype(np.float32))
    model = collections.OrderedDict([("embed.weight", w), ("lm_head.weight", w), ("frozen", frozen)])
    return {
        "model": model,
        "big": big,
        "small": small,
        "special": {"f32": special_f32() if step % 2 == 0 else -special_f32(), "bf16": special_bf16(),
                    "f16": special_f16()},
        "empty": torch.zeros(0, 5),
        "empty_bf16": torch.zeros(3, 0, dtype=torch.bfloat16),
        "scalar": torch.tensor(float(step)),
        "nested": [torch.arange(10, dtype=torch.int8), (torch.ones(3, dtype=torch.bool), {"deep": torch.eye(3)})],
        "strided": torch.from_numpy(rng.standard_normal((70, 80)).astype(np.float32)).t(),
        "epoch": step,
        "lr": 0.5 / (1 + step),
        "name": "run-π",
        "none": None,
        "flag": True,
    }


def flip_byte(p: Path, at: Optional[int] = None) -> None:
    p.chmod(0o644)
    b = bytearray(p.read_bytes())
    i = len(b) // 2 if at is None else at
    b[i] ^= 0x5A
    p.write_bytes(bytes(b))


def object_path(store: Path, h: str) -> Path:
    return Path(store) / "objects" / h[:2] / h


# --- 1. round trips --------------------------------------------------------


def test_hf_folder_every_step_restores_byte_identical(tmp_path: Path, hf_run) -> None:
    run = hf_run(tmp_path / "out")
    st = tpde.open(tmp_path / "store", keyframe_interval=3)
    srcs = {}
    for step in (10, 20, 30, 40, 50, 60):
        srcs[step] = run.save(step)
        info = st.add(srcs[step], step=step)
        assert info.step == step and info.lossless and info.max_chain == 1
        files = {f.path: f for f in info.files}
        assert set(files) == set(tree_digest(srcs[step])), set(files) ^ set(tree_digest(srcs[step]))
        assert files["run.sh"].mode == 0o755 and files["training_args.bin"].mode == 0o600
        assert files["model.safetensors"].layout == "safetensors" and files["model.safetensors"].tensors >= 4
        assert files["optimizer.pt"].layout == "torch-zip" and files["optimizer.pt"].tensors >= 4, files["optimizer.pt"]
        # The just-added checkpoint and every older one (now re-coded as deltas).
        for s in st.steps():
            out = tmp_path / f"restored-{step}-{s}"
            st.restore(s, out)
            assert_same_tree(out, srcs[s])
    assert st.steps() == [10, 20, 30, 40, 50, 60]
    assert st.verify(deep=True).ok
    # The older checkpoints really are deltas: not a store of whole copies.
    s = snap(st)
    refs = [r for c in s["checkpoints"][:-1] for f in c["files"] for r in f["regions"] if r["ref"]]
    assert refs, "no older checkpoint was stored as a delta"
    st.close()
    # A fresh handle (another process's view) restores them all the same.
    with tpde.Store(tmp_path / "store") as st2:
        for step, src in srcs.items():
            out = tmp_path / f"again-{step}"
            assert st2.restore(step, out) == out
            assert_same_tree(out, src)


def test_hf_folder_load_by_file(tmp_path: Path, hf_run) -> None:
    run = hf_run(tmp_path / "out")
    st = tpde.Store(tmp_path / "store")
    srcs = {s: run.save(s) for s in (1, 2, 3)}
    for s, p in srcs.items():
        st.add(p, step=s)
    for s, p in srcs.items():
        got = st.load(s, file="model.safetensors")
        assert_bitwise(dict(got), dict(load_file(str(p / "model.safetensors"))))
        opt = st.load(s, file="optimizer.pt", unpickle=True)
        want = torch.load(p / "optimizer.pt", weights_only=True)
        assert_bitwise(opt, want)
        assert set(opt["state"]) == set(want["state"]) and "exp_avg" in opt["state"][0]
        # Loaded tensors are views of the decoded file (torch.load(mmap=True)):
        # each load's are its own, and writable without touching another's.
        opt["state"][0]["exp_avg"].add_(1)
        assert_bitwise(st.load(s, file="optimizer.pt", unpickle=True), want)
    # A folder holding torch pickles is not unpickled unless asked.
    with pytest.raises(InvalidArgumentError, match="unpickle"):
        st.load(2)
    with pytest.raises(InvalidArgumentError, match="unpickle"):
        st.load(2, file="optimizer.pt")
    whole = st.load(None, unpickle=True)
    assert {"model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth"} <= set(whole)
    assert_bitwise(dict(whole["model.safetensors"]), dict(load_file(str(srcs[3] / "model.safetensors"))))
    with pytest.raises(InvalidArgumentError):
        st.load(2, file="no-such-file.bin")
    with pytest.raises(InvalidArgumentError):
        st.load(99)
    with pytest.raises(InvalidArgumentError):
        st.restore(99, tmp_path / "nope")


def test_sharded_safetensors_with_index(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(3)
    st = tpde.Store(tmp_path / "store", keyframe_interval=4)
    layers = {f"model.layers.{i}.weight": torch.randn(48, 48, generator=g) for i in range(6)}
    srcs = {}
    for step in range(4):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        layers = {k: v + 1e-3 * torch.randn(v.shape, generator=g) if i % 2 == 0 else v
                  for i, (k, v) in enumerate(layers.items())}
        names = list(layers)
        shards = {"model-00001-of-00002.safetensors": names[:3], "model-00002-of-00002.safetensors": names[3:]}
        weight_map = {}
        for shard, keys in shards.items():
            save_file({k: layers[k] for k in keys}, str(d / shard), metadata={"format": "pt"})
            weight_map.update({k: shard for k in keys})
        (d / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(v.numel() * 4 for v in layers.values())}, "weight_map": weight_map}))
        srcs[step] = (d, dict(layers))
        st.add(d, step=step)
    for step, (d, layers_then) in srcs.items():
        out = tmp_path / f"r{step}"
        st.restore(step, out)
        assert_same_tree(out, d)
        got = st.load(step)  # no pickle in it: {relative path: state dict} of its tensor files
        assert set(got) == {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}
        merged = {**got["model-00001-of-00002.safetensors"], **got["model-00002-of-00002.safetensors"]}
        assert_bitwise(dict(sorted(merged.items())), dict(sorted(layers_then.items())))
    # The unchanged (odd) layers are one keyframe object each across all steps.
    s = snap(st)
    for name in list(srcs[0][1])[1::2]:
        objs = {r["object"] for c in s["checkpoints"] for f in c["files"] for r in f["regions"] if r["name"] == name}
        assert len(objs) == 1, (name, objs)
    assert st.verify().ok


def test_single_pt_file(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    w = {"encoder.weight": torch.randn(64, 64, generator=g), "encoder.bias": torch.randn(64, generator=g),
         "step_count": torch.tensor(0)}
    st = tpde.Store(tmp_path / "store")
    digests = {}
    for step in range(3):
        w = {k: (v + 0.01 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v + 1
             for k, v in w.items()}
        p = tmp_path / "model.pt"
        torch.save(w, p)
        digests[step] = (sha256(p), dict(w))
        info = st.add(p, step=step)
        (f,) = info.files
        assert f.path == "model.pt" and f.layout == "torch-zip" and f.tensors >= 1
    for step, (digest, want) in digests.items():
        st.restore(step, tmp_path / f"r{step}")
        assert sha256(tmp_path / f"r{step}" / "model.pt") == digest
        assert_bitwise(st.load(step, unpickle=True), want)
        with pytest.raises(InvalidArgumentError, match="unpickle"):
            st.load(step)


def test_lightning_ckpt(tmp_path: Path) -> None:
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(40, 40), torch.nn.ReLU(), torch.nn.Linear(40, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    st = tpde.Store(tmp_path / "store")
    saved = {}
    for epoch in range(3):
        model(torch.randn(4, 40)).sum().backward()
        opt.step()
        ckpt = {"epoch": epoch, "global_step": 100 * (epoch + 1), "pytorch-lightning_version": "2.2.0",
                "state_dict": model.state_dict(), "optimizer_states": [opt.state_dict()],
                "lr_schedulers": [], "callbacks": {"ModelCheckpoint": {"best_model_score": None}},
                "hyper_parameters": {"lr": 1e-3, "layers": [40, 40, 10]}}
        p = tmp_path / "lightning" / f"epoch={epoch}-step={100 * (epoch + 1)}.ckpt"
        p.parent.mkdir(exist_ok=True)
        torch.save(ckpt, p)
        saved[epoch] = (p, sha256(p))
        st.add(p, step=100 * (epoch + 1))
    for epoch, (p, digest) in saved.items():
        step = 100 * (epoch + 1)
        out = tmp_path / f"r{epoch}"
        st.restore(step, out)
        assert sha256(out / p.name) == digest
        got = st.load(step, unpickle=True)
        want = torch.load(p, weights_only=True)
        assert got["epoch"] == epoch and set(got) == set(want)
        assert_bitwise(dict(got["state_dict"]), dict(want["state_dict"]))
        assert_bitwise(got["optimizer_states"], want["optimizer_states"])


def test_state_dicts_bitwise_every_dtype(tmp_path: Path) -> None:
    st = tpde.Store(tmp_path / "store", keyframe_interval=3)
    want = {}
    for step in range(5):
        want[step] = state_dict_of_every_kind(step)
        info = st.add(want[step], step=step)
        assert [f.path for f in info.files] == ["state_dict.tpde"]
        assert info.lossless
    for step in range(5):
        got = st.load(step)
        assert_bitwise(got, want[step])
        # A tied tensor comes back tied.
        assert got["model"]["embed.weight"].data_ptr() == got["model"]["lm_head.weight"].data_ptr()
    assert_bitwise(st.load(), want[4])  # step=None: the newest
    assert_bitwise(st.load(None), want[4])
    # Restoring a state dict added from Python writes state_dict.pt.
    out = tmp_path / "restored"
    st.restore(2, out)
    assert os.listdir(out) == ["state_dict.pt"]
    assert_bitwise(torch.load(out / "state_dict.pt", weights_only=True), want[2])
    assert st.verify(deep=True).ok
    # The frozen tensor is one object in every checkpoint.
    s = snap(st)
    objs = {r["object"] for c in s["checkpoints"] for f in c["files"] for r in f["regions"]
            if r["name"].endswith("frozen")}
    assert len(objs) == 1, objs


def test_module_state_dict_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(6)
    model = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 8))
    sd = model.state_dict()
    with tpde.Store(tmp_path / "store") as st:
        st.add(sd)
        got = st.load()
    assert list(got) == list(sd)
    assert_bitwise(dict(got), dict(sd))
    assert getattr(got, "_metadata", None) == getattr(sd, "_metadata")
    fresh = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.BatchNorm1d(64), torch.nn.Linear(64, 8))
    fresh.load_state_dict(got, strict=True)
    assert torch.equal(fresh[0].weight, model[0].weight)


def test_restore_folder_whose_only_file_is_named_state_dict_tpde(tmp_path: Path) -> None:
    # A user's file that happens to carry the name tpde gives state dicts
    # added from Python is still just a file: restored byte for byte.
    src = tmp_path / "export"
    src.mkdir()
    (src / "state_dict.tpde").write_bytes(b"my own bytes, not a tpde state dict\n" * 50)
    with tpde.Store(tmp_path / "store") as st:
        st.add(src, step=1)
        st.restore(1, tmp_path / "out")
    assert_same_tree(tmp_path / "out", src)


def test_add_arguments_and_steps(tmp_path: Path, hf_run) -> None:
    run = hf_run(tmp_path / "out")
    st = tpde.Store(tmp_path / "store")
    # Folders whose names give no step (checkpoint-N would: tests/test_steps.py).
    a, b, c = run.save(1, name="a"), run.save(2, name="b"), run.save(3, name="c")
    assert st.add(a).step == 0  # no step: the newest + 1, from 0
    assert st.add(b, step=7, tags=["best", "eval"]).tags == ("best", "eval")
    assert st.add(c).step == 8
    with pytest.raises(InvalidArgumentError):
        st.add(c, step=8)  # steps only grow
    with pytest.raises(InvalidArgumentError):
        st.add(c, step=3)
    with pytest.raises(InvalidArgumentError):
        st.add(c, step=True)
    with pytest.raises(InvalidArgumentError):
        st.add(12345)
    with pytest.raises(TPDEIOError):
        st.add(tmp_path / "does-not-exist")
    assert st.steps() == [0, 7, 8]
    assert st.info(7).tags == ("best", "eval") and st.info().step == 8
    with pytest.raises(InvalidArgumentError):
        tpde.Store(tmp_path / "store", keyframe_interval=4).add(c, step=9)  # not how it was created
    st.close()
    with pytest.raises(InvalidArgumentError):
        st.steps()  # closed


# --- 2. chains and deduplication -------------------------------------------


@pytest.mark.parametrize("k", [1, 3, 10])
def test_chain_lengths_bounded_by_keyframe_interval(tmp_path: Path, hf_run, k: int) -> None:
    run = hf_run(tmp_path / "out")
    st = tpde.Store(tmp_path / "store", keyframe_interval=k)
    srcs = {}
    for step in range(8):
        srcs[step] = run.save(step)
        st.add(srcs[step], step=step)
        s = snap(st)
        ch = chains(s)
        for (cstep, f, r), c in ch.items():
            assert len(c) <= max(k, 1), (cstep, f, r, len(c))
            assert c[-1]["ref"] is None
        for cstep in st.steps():
            assert st.info(cstep).max_chain <= k, (cstep, st.info(cstep).max_chain)
        newest = st.steps()[-1]
        assert st.info(newest).max_chain == 1
        assert all(len(c) == 1 for (cstep, _, _), c in ch.items() if cstep == newest)
    assert s["manifest"]["config"]["keyframe_interval"] == k
    # The bound above holds at every moment; the last add's re-code may
    # still be running in the background until close() waits for it.
    st.close()
    st = tpde.Store(tmp_path / "store")
    ch = chains(snap(st))
    if k > 1:  # older checkpoints are deltas, as many as K allows
        assert max(len(c) for c in ch.values()) == min(k, 8)
    for step in (0, 3, 7):
        st.restore(step, tmp_path / f"r{step}")
        assert_same_tree(tmp_path / f"r{step}", srcs[step])


def test_identical_checkpoint_and_unchanged_files_stored_once(tmp_path: Path, hf_run) -> None:
    run = hf_run(tmp_path / "out")
    store = tmp_path / "store"
    st = tpde.Store(store)
    a = run.save(1)
    st.add(a, step=1)
    b = run.save(2)
    st.add(b, step=2)
    st.wait()  # checkpoint 1 re-coded against 2 (in the background)
    before = objects_on_disk(store)
    size_before = sum(p.stat().st_size for p in (store / "objects").glob("*/*"))
    info = st.add(b, step=3)  # the same folder again
    st.wait()
    new = objects_on_disk(store) - before
    size_after = sum(p.stat().st_size for p in (store / "objects").glob("*/*"))
    s = snap(st)
    # Only checkpoint 3's record (and its second copy) is new; every file
    # and tensor is shared.
    record = s["manifest"]["checkpoints"][-1]["object"]
    assert new == {record, record + ".copy"}, new
    assert size_after - size_before == 2 * object_path(store, record).stat().st_size
    assert info.raw_bytes > 100_000
    two, three = s["checkpoints"][1], s["checkpoints"][2]
    assert [(f["path"], f["skeleton"], [r["object"] for r in f["regions"]]) for f in two["files"]] == \
        [(f["path"], f["skeleton"], [r["object"] for r in f["regions"]]) for f in three["files"]]
    # Files that never change (tokenizer, vocab, config) are one skeleton in every checkpoint.
    for rel in ("tokenizer.json", "vocab.txt", "special_tokens_map.json", "1_Pooling/config.json"):
        skels = {f["skeleton"]["object"] for c in s["checkpoints"] for f in c["files"] if f["path"] == rel}
        assert len(skels) == 1, (rel, skels)
    # The frozen layer is one keyframe object in every checkpoint.
    frozen = {r["object"] for c in s["checkpoints"] for f in c["files"] if f["path"] == "model.safetensors"
              for r in f["regions"] if r["name"] == "frozen.weight"}
    assert len(frozen) == 1
    st.restore(3, tmp_path / "r3")
    assert_same_tree(tmp_path / "r3", b)
    st.restore(1, tmp_path / "r1")
    assert_same_tree(tmp_path / "r1", a)
    # Nothing on disk is unreferenced after a commit.
    assert objects_on_disk(store) == live_objects(s)


# --- 3. reference="base" ---------------------------------------------------


def test_reference_base(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(8)
    base = {f"layers.{i}.weight": torch.randn(48, 48, generator=g) for i in range(4)}
    base_file = tmp_path / "pretrained.safetensors"
    save_file(base, str(base_file))
    store = tmp_path / "store"
    st = tpde.Store(store, base=base_file, keyframe_interval=3)
    srcs = {}
    for step in range(5):
        d = tmp_path / f"ft-{step}"
        d.mkdir()
        save_file({k: v + 1e-3 * (step + 1) * torch.randn(v.shape, generator=g) for k, v in base.items()},
                  str(d / "model.safetensors"))
        (d / "adapter_config.json").write_text(json.dumps({"r": 8, "step": step}))
        srcs[step] = d
        st.add(d, step=step)
    st.wait()  # the newest's predecessor becomes a delta against the base in the background
    s = snap(st)
    assert s["manifest"]["config"]["reference"] == "base" and s["base"] is not None
    for c in s["checkpoints"][:-1]:
        for f in c["files"]:
            for r in f["regions"]:
                assert r["ref"] and r["ref"].get("base") is True, (c["step"], r["name"], r["ref"])
                assert r["ref"]["file"] == "pretrained.safetensors"
    assert all(r["ref"] is None for f in s["checkpoints"][-1]["files"] for r in f["regions"])  # newest whole
    for cstep in st.steps():
        assert st.info(cstep).max_chain <= 2
    for step, d in srcs.items():
        st.restore(step, tmp_path / f"r{step}")
        assert_same_tree(tmp_path / f"r{step}", d)
    assert st.verify().ok
    st.close()
    # The same base again stores nothing and publishes nothing.
    objs = objects_on_disk(store)
    gens = sorted(os.listdir(store / "manifests"))
    with tpde.Store(store, base=base_file) as st2:
        assert st2.steps() == [0, 1, 2, 3, 4]
    assert objects_on_disk(store) == objs
    assert sorted(os.listdir(store / "manifests")) == gens
    assert os.listdir(store / "tmp") == []
    # A different base is refused, and so is another reference policy.
    other = tmp_path / "other.safetensors"
    save_file({k: v + 1 for k, v in base.items()}, str(other))
    with pytest.raises(InvalidArgumentError):
        tpde.Store(store, base=other)
    gc.collect()  # (see test_refused_base_releases_the_writer_lock)
    with pytest.raises(InvalidArgumentError):
        tpde.Store(store, reference="previous").add(srcs[0], step=10)
    # Nothing was committed; what the refused base wrote is a leftover that
    # the next writer removes.
    with tpde.Store(store) as st3:
        assert snap(st3)["manifest"]["generation"] == int([g for g in gens if g.endswith(".json")][-1][:-5])
        st3.verify(repair=True)
        assert objects_on_disk(store) == live_objects(snap(st3)) == objs
    with pytest.raises(InvalidArgumentError):
        tpde.Store(tmp_path / "store2", reference="previous", base=base_file)


def test_refused_base_releases_the_writer_lock(tmp_path: Path) -> None:
    # tpde.Store(path, base=...) that refuses the base raises; the half-made
    # Store must not go on holding the writer lock while the exception is
    # still referenced (an `except ... as e` that keeps e, a REPL's
    # sys.last_value, a test's ExceptionInfo).
    save_file({"w": torch.randn(64, 64)}, str(tmp_path / "b1.safetensors"))
    save_file({"w": torch.randn(64, 64)}, str(tmp_path / "b2.safetensors"))
    store = tmp_path / "store"
    tpde.Store(store, base=tmp_path / "b1.safetensors").close()
    with pytest.raises(InvalidArgumentError) as refused:
        tpde.Store(store, base=tmp_path / "b2.safetensors")
    assert "different base" in str(refused.value)
    with tpde.Store(store) as st:
        st.add({"w": torch.zeros(64, 64)}, step=1)  # StoreLockedError while the refused Store lives
        assert st.steps() == [1]


# --- 4. lossy rules --------------------------------------------------------


def _optimizer_like(step: int, g: torch.Generator, prev: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    if prev is None:
        w = torch.randn(64, 64, generator=g)
        m = torch.randn(64, 64, generator=g) * 0.1
        v = torch.rand(64, 64, generator=g) * 0.01
    else:
        w = prev["model"]["weight"] + 1e-4 * torch.randn(64, 64, generator=g)
        m = prev["state"]["0"]["exp_avg"] + 2e-4 * torch.randn(64, 64, generator=g)
        v = prev["state"]["0"]["exp_avg_sq"] + 1e-5 * torch.rand(64, 64, generator=g)
    return {"model": {"weight": w}, "state": {"0": {"exp_avg": m, "exp_avg_sq": v, "step": torch.tensor(float(step))}}}


def test_lossy_rule_bounds_older_checkpoints_newest_exact(tmp_path: Path) -> None:
    bound = 1e-3
    g = torch.Generator().manual_seed(9)
    st = tpde.Store(tmp_path / "store", lossy={"*exp_avg*": bound}, keyframe_interval=4)
    want, prev = {}, None
    for step in range(6):
        prev = want[step] = _optimizer_like(step, g, prev)
        st.add(prev, step=step)
    s = snap(st)
    assert s["manifest"]["config"]["lossy"] == [{"pattern": "*exp_avg*", "threshold": bound}]
    lossy_seen = False
    for c in s["checkpoints"]:
        for f in c["files"]:
            for r in f["regions"]:
                assert 0 <= r["max_error"] <= bound, r
                if "exp_avg" not in r["name"]:
                    assert r["max_error"] == 0, r["name"]
                lossy_seen |= r["max_error"] > 0
    assert lossy_seen, "no region was stored lossy"
    for step in range(6):
        info = st.info(step)
        got = st.load(step)
        assert info.max_error <= bound
        for name in ("exp_avg", "exp_avg_sq"):
            err = (got["state"]["0"][name].double() - want[step]["state"]["0"][name].double()).abs().max().item()
            assert err <= bound, (step, name, err)
            assert err <= info.max_error
        assert_bitwise(got["model"], want[step]["model"])  # not matched by the rule: exact
        assert_bitwise(got["state"]["0"]["step"], want[step]["state"]["0"]["step"])
    newest = st.info()
    assert newest.max_error == 0.0 and newest.lossless
    assert_bitwise(st.load(), want[5])
    assert any(not st.info(x).lossless for x in range(5))


def test_lossy_store_verifies_and_restores(tmp_path: Path, hf_run) -> None:
    # A healthy lossy store is not "damaged": verify is ok, and an older
    # (lossy) checkpoint restores, every lossy tensor within its bound and
    # every other file byte for byte.
    bound = 1e-3
    run = hf_run(tmp_path / "out")
    st = tpde.Store(tmp_path / "store", lossy={"optimizer.pt:*": bound})
    srcs = {s: run.save(s) for s in range(4)}
    for s, p in srcs.items():
        st.add(p, step=s)
    lossy_steps = [s for s in srcs if not st.info(s).lossless]
    assert lossy_steps, "the rule made nothing lossy"
    assert st.info().lossless
    rep = st.verify(deep=True)
    assert rep.ok, rep.problems
    for s in lossy_steps:
        out = tmp_path / f"r{s}"
        st.restore(s, out)
        got, want = tree_digest(out), tree_digest(srcs[s])
        assert set(got) == set(want)
        for rel in want:
            if rel != "optimizer.pt":
                assert got[rel] == want[rel], rel
        a = torch.load(out / "optimizer.pt", weights_only=True)
        b = torch.load(srcs[s] / "optimizer.pt", weights_only=True)
        for pid in b["state"]:
            for k, t in b["state"][pid].items():
                assert (a["state"][pid][k].double() - t.double()).abs().max().item() <= bound


def test_lossless_is_the_default(tmp_path: Path, hf_run) -> None:
    run = hf_run(tmp_path / "out")
    with tpde.Store(tmp_path / "store") as st:
        for s in range(3):
            st.add(run.save(s), step=s)
        assert st.config["lossy"] == []
        for s in range(3):
            i = st.info(s)
            assert i.max_error == 0.0 and i.lossless
        assert all(r["max_error"] == 0 for c in snap(st)["checkpoints"] for f in c["files"] for r in f["regions"])
    with pytest.raises(InvalidArgumentError):
        tpde.Store(tmp_path / "s2", lossy={"*": -1.0}).add({"w": torch.zeros(10)})
    with pytest.raises(InvalidArgumentError):
        tpde.Store(tmp_path / "s3", lossy={"*": float("inf")}).add({"w": torch.zeros(10)})


# --- 5. remove -------------------------------------------------------------


@pytest.mark.parametrize("which", ["first", "middle", "latest", "all"])
def test_remove(tmp_path: Path, hf_run, which: str) -> None:
    run = hf_run(tmp_path / "out")
    store = tmp_path / "store"
    st = tpde.Store(store, keyframe_interval=3)
    srcs = {s: run.save(s) for s in range(0, 70, 10)}
    for s, p in srcs.items():
        st.add(p, step=s)
    order = {"first": [0, 10], "middle": [30, 40], "latest": [60, 50], "all": [30, 0, 60, 10, 50, 20, 40]}[which]
    for gone in order:
        st.remove(gone)
        del srcs[gone]
        assert st.steps() == sorted(srcs)
        for s, p in srcs.items():
            st.restore(s, tmp_path / f"r-{gone}-{s}")
            assert_same_tree(tmp_path / f"r-{gone}-{s}", p)
            assert st.info(s).max_chain <= 3
        if srcs:
            assert st.info().max_chain == 1
        assert st.verify(deep=True).ok
        assert objects_on_disk(store) == live_objects(snap(st))
    with pytest.raises(InvalidArgumentError):
        st.remove(12345)
    # The store goes on: a new checkpoint after removals.
    p = run.save(100)
    st.add(p, step=100)
    st.restore(100, tmp_path / "r100")
    assert_same_tree(tmp_path / "r100", p)


def test_remove_in_base_store(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(10)
    base = {"w": torch.randn(64, 64, generator=g), "v": torch.randn(32, 64, generator=g)}
    save_file(base, str(tmp_path / "base.safetensors"))
    st = tpde.Store(tmp_path / "store", base=tmp_path / "base.safetensors")
    want = {}
    for s in range(4):
        want[s] = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in base.items()}
        st.add(want[s], step=s)
    for gone in (3, 0):
        st.remove(gone)
        del want[gone]
        for s in want:
            assert_bitwise(st.load(s), want[s])
        assert st.verify().ok


# --- 6. damage -------------------------------------------------------------


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Tuple[Path, Dict[int, Path]]:
    from conftest import HFRun

    root = tmp_path_factory.mktemp("pristine")
    run = HFRun(root / "out", seed=11)
    st = tpde.Store(root / "store", keyframe_interval=3)
    srcs = {s: run.save(s) for s in (1, 2, 3, 4, 5)}
    for s, p in srcs.items():
        st.add(p, step=s)
    st.close()
    return root / "store", srcs


def _pick(s: Dict[str, Any], target: str) -> Tuple[str, str, str]:
    """(object, file, region) of the damage target."""
    cps = s["checkpoints"]
    if target == "newest-keyframe":
        f = next(f for f in cps[-1]["files"] if f["path"] == "model.safetensors")
        r = next(r for r in f["regions"] if r["name"] == "embed.weight")
        assert r["ref"] is None
        return r["object"], f["path"], r["name"]
    if target == "oldest-delta":
        for f in cps[0]["files"]:
            for r in f["regions"]:
                if r["ref"]:
                    return r["object"], f["path"], r["name"]
        raise AssertionError("no delta in the oldest checkpoint")
    if target == "shared-skeleton":
        f = next(f for f in cps[0]["files"] if f["path"] == "vocab.txt")
        return f["skeleton"]["object"], f["path"], ""
    if target == "frozen-keyframe":
        f = next(f for f in cps[0]["files"] if f["path"] == "model.safetensors")
        r = next(r for r in f["regions"] if r["name"] == "frozen.weight")
        return r["object"], f["path"], r["name"]
    raise AssertionError(target)


def _expected_damage(s: Dict[str, Any], obj: str) -> Set[Tuple[int, str, str]]:
    exp = set()
    for (step, f, r), ch in chains(s).items():
        if any(link["object"] == obj for link in ch):
            exp.add((step, f, r))
    for c in s["checkpoints"]:
        for f in c["files"]:
            if f["skeleton"]["object"] == obj:
                exp.add((c["step"], f["path"], ""))
    return exp


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete"])
@pytest.mark.parametrize("target", ["newest-keyframe", "oldest-delta", "shared-skeleton", "frozen-keyframe"])
def test_damaged_object(tmp_path: Path, pristine, py_env, target: str, damage: str) -> None:
    src_store, srcs = pristine
    store = tmp_path / "store"
    shutil.copytree(src_store, store)
    st = tpde.Store(store)
    s = snap(st)
    obj, rel, region = _pick(s, target)
    expected = _expected_damage(s, obj)
    affected = sorted({e[0] for e in expected})
    assert affected, "the target affects nothing?"
    p = object_path(store, obj)
    if damage == "flip":
        flip_byte(p)
    elif damage == "truncate":
        p.chmod(0o644)
        with open(p, "r+b") as fh:
            fh.truncate(p.stat().st_size - 1)
    else:
        p.unlink()

    rep = st.verify(deep=True)
    assert not rep.ok
    got = {(pr.step, pr.file, pr.region) for pr in rep.problems}
    assert got == expected, (sorted(got ^ expected))
    assert all(pr.object == obj for pr in rep.problems), rep.problems
    assert rep.affected_steps == affected
    assert st.verify(deep=False).affected_steps == affected

    proc = subprocess.run([sys.executable, "-m", "tpde", "verify", str(store)], env=py_env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert rel in proc.stdout and (region == "" or region in proc.stdout)
    word = "checkpoint " if len(affected) == 1 else "checkpoints "
    assert proc.stderr.strip().splitlines()[-1] == "damaged: " + word + ", ".join(map(str, affected))

    for step, src in srcs.items():
        out = tmp_path / f"r{step}"
        if step in affected:
            with pytest.raises(CorruptDataError):
                st.restore(step, out)
            if rel == "model.safetensors":
                with pytest.raises(CorruptDataError):
                    st.load(step, file=rel)
        else:
            st.restore(step, out)
            assert_same_tree(out, src)
            assert_bitwise(dict(st.load(step, file="model.safetensors")),
                           dict(load_file(str(src / "model.safetensors"))))


def test_damaged_record_and_manifest_cost_nothing(tmp_path: Path, pristine) -> None:
    """A record and the newest manifest each have a second copy: one
    flipped byte in either loses nothing, verify says which copy is
    damaged, and repair writes it anew."""
    src_store, srcs = pristine
    store = tmp_path / "a"
    shutil.copytree(src_store, store)
    with tpde.Store(store) as st:
        rec = snap(st)["manifest"]["checkpoints"][1]["object"]
        steps = st.steps()
    flip_byte(object_path(store, rec))
    with tpde.Store(store) as st:
        assert st.steps() == steps
        for step in steps:
            st.restore(step, tmp_path / f"a{step}")
            assert_same_tree(tmp_path / f"a{step}", srcs[step])
        rep = st.verify()
        assert rep.affected_steps == [] and [p.object for p in rep.degraded] == [rec]
        assert st.verify(repair=True).cleaned["copies"] == 1
        assert st.verify().ok
    store = tmp_path / "b"
    shutil.copytree(src_store, store)
    (newest,) = sorted((store / "manifests").glob("*.json"))[-1:]
    text = newest.read_text()
    newest.write_text(text[: len(text) // 2])
    with tpde.Store(store) as st:
        assert st.steps() == steps
        rep = st.verify()
        assert not rep.ok and rep.affected_steps == [] and "manifest" in rep.degraded[0].message
        st.verify(repair=True)
        assert st.verify().ok and st.steps() == steps


# --- 8. concurrency --------------------------------------------------------

_HOLD_LOCK = r"""
import sys, time, tpde
st = tpde.Store(sys.argv[1])
st.add(sys.argv[2], step=int(sys.argv[3]))
print("holding", flush=True)
time.sleep(600)
"""


def test_second_writer_refused_and_sigkill_releases(tmp_path: Path, hf_run, py_env) -> None:
    run = hf_run(tmp_path / "out")
    a, b, c = run.save(1), run.save(2), run.save(3)
    store = tmp_path / "store"
    child = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(store), str(a), "1"], env=py_env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        assert line.strip() == "holding", child.stderr.read() if child.poll() is not None else line
        st = tpde.Store(store)
        with pytest.raises(tpde.StoreLockedError) as ei:
            st.add(b, step=2)
        assert ei.value.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
        assert isinstance(ei.value, TPDEIOError)
        with pytest.raises(tpde.StoreLockedError):
            st.remove(1)
        with pytest.raises(tpde.StoreLockedError):
            tpde.Store(store).verify(repair=True)
        # Reading needs no lock.
        assert st.steps() == [1]
        st.restore(1, tmp_path / "r1")
        assert_same_tree(tmp_path / "r1", a)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    assert child.returncode == -signal.SIGKILL
    st.add(b, step=2)  # the kernel released the dead writer's lock
    assert st.steps() == [1, 2]
    # Two writers in one process are refused the same way.
    with pytest.raises(tpde.StoreLockedError):
        tpde.Store(store).add(c, step=3)
    st.close()
    with tpde.Store(store) as st2:
        st2.add(c, step=3)
        assert st2.steps() == [1, 2, 3]
        assert st2.verify().ok


_WRITER = r"""
import sys, tpde
store, root, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with tpde.Store(store) as st:
    for i in range(1, n + 1):
        st.add(f"{root}/src-{i}", step=i)
"""


def _small_source(d: Path, i: int) -> Path:
    rng = np.random.default_rng(500 + i)
    d.mkdir(parents=True)
    w = rng.standard_normal((40, 64)).astype(np.float32)
    from safetensors.numpy import save_file as np_save

    np_save({"w": w, "b": rng.standard_normal(64).astype(np.float32), "fixed": np.arange(2048, dtype=np.float32)},
            str(d / "model.safetensors"))
    (d / "state.json").write_text(json.dumps({"step": i}))
    (d / "blob.bin").write_bytes(rng.bytes(3000))
    return d


def test_reader_beside_writer_sees_consistent_snapshots(tmp_path: Path, py_env) -> None:
    n = 30
    root = tmp_path / "src"
    srcs = {i: _small_source(root / f"src-{i}", i) for i in range(0, n + 1)}
    store = tmp_path / "store"
    with tpde.Store(store) as st:
        st.add(srcs[0], step=0)
    child = subprocess.Popen([sys.executable, "-c", _WRITER, str(store), str(root), str(n)], env=py_env,
                             stderr=subprocess.PIPE, text=True)
    rounds, seen = 0, set()
    try:
        while child.poll() is None or rounds < 3:
            with tpde.Store(store) as st:
                steps = st.steps()
                assert steps == list(range(len(steps))), steps
                newest = steps[-1]
                out = tmp_path / f"r{rounds}"
                st.restore(newest, out)
                assert_same_tree(out, srcs[newest])
                old = steps[rounds % len(steps)]
                st.restore(old, tmp_path / f"o{rounds}")
                assert_same_tree(tmp_path / f"o{rounds}", srcs[old])
                seen.add(newest)
            shutil.rmtree(out)
            shutil.rmtree(tmp_path / f"o{rounds}")
            rounds += 1
    finally:
        if child.poll() is None:
            child.kill()
        child.wait(60)
    assert child.returncode == 0, child.stderr.read()
    assert len(seen) >= 2, seen  # the reader really ran beside the writer
    with tpde.Store(store) as st:
        assert st.steps() == list(range(n + 1))
        assert st.verify().ok


_OPEN_AND_LIST = r"""
import sys, tpde
tpde.Store(sys.argv[2]).steps()  # the library is loaded before the delay
print("ready", flush=True)
try:
    st = tpde.Store(sys.argv[1])
    print("steps", st.steps(), flush=True)
except tpde.TPDEError as e:
    print("error", type(e).__name__, e, flush=True)
"""


def test_open_is_not_broken_by_a_concurrent_commit(tmp_path: Path, py_env) -> None:
    # A reader opening the store reads the newest manifest generation; a
    # writer committing meanwhile removes the older generation (cleanup).
    # The reader must still open (the old snapshot or the new one), never
    # fail. strace stretches the moment between the reader listing the
    # generations and opening the newest from microseconds to seconds.
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (needed to widen the race window deterministically)")
    store = (tmp_path / "store").resolve()
    other = (tmp_path / "other").resolve()
    with tpde.Store(other) as st:
        st.add({"x": torch.zeros(4)})
    with tpde.Store(store) as st:
        st.add({"x": torch.zeros(4)}, step=0)
    (manifest,) = sorted((store / "manifests").glob("*.json"))
    probe = subprocess.run(["strace", "-f", "-qq", "-o", "/dev/null", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"ptrace is not permitted here: {probe.stderr.strip()}")
    reader = subprocess.Popen(["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(manifest), "-e", "trace=openat",
                               "-e", "inject=openat:delay_enter=4000000:when=1", sys.executable, "-c", _OPEN_AND_LIST,
                               str(store), str(other)], env=py_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        assert reader.stdout.readline().strip() == "ready"
        time.sleep(1.0)  # the reader is now inside its (delayed) open of the manifest
        with tpde.Store(store) as st:
            st.add({"x": torch.ones(4)}, step=1)  # commits generation 2, removes generation 1
        out, err = reader.communicate(timeout=60)
    finally:
        if reader.poll() is None:
            reader.kill()
    assert out.startswith("steps ["), (out, err)


# --- the real MiniLM weights ----------------------------------------------


def test_real_minilm_two_checkpoints(tmp_path: Path, minilm_model_dir: Path) -> None:
    a = tmp_path / "checkpoint-1"
    shutil.copytree(minilm_model_dir, a)
    b = tmp_path / "checkpoint-2"
    shutil.copytree(minilm_model_dir, b)
    sd = load_file(str(a / "model.safetensors"))
    g = torch.Generator().manual_seed(12)
    tuned = {k: (v + 1e-4 * torch.randn(v.shape, generator=g).to(v.dtype)) if ".layer.5." in k else v
             for k, v in sd.items()}
    save_file(tuned, str(b / "model.safetensors"), metadata={"format": "pt"})
    store = tmp_path / "store"
    with tpde.Store(store) as st:
        i1 = st.add(a, step=1)
        i2 = st.add(b, step=2)
        assert i1.raw_bytes == i2.raw_bytes > 80_000_000
        for step, src in ((1, a), (2, b)):
            st.restore(step, tmp_path / f"r{step}")
            assert_same_tree(tmp_path / f"r{step}", src)
        got = st.load(2, file="model.safetensors")
        assert_bitwise(dict(got), dict(load_file(str(b / "model.safetensors"))))
        stats = st.stats()
        # Only layer 5 changed: the second checkpoint costs a fraction of the first.
        rows = {r["step"]: r for r in stats["checkpoints"]}
        assert rows[2]["new_bytes"] < 0.35 * rows[1]["new_bytes"], rows
        assert st.verify(deep=True).ok


# --- 12. the golden store of layout 1 --------------------------------------

# Generated once by tests/golden/make_store_v1.py (which prints them); these
# are golden vectors: a store written by this layout must restore to them
# forever.
GOLDEN_FILES = {  # step: {relative path: sha256}
    1: {"model.safetensors": "2abafd451c1a1f0b99c3f4e79c0f7e83d827963eb6e8a955500b74b45000bf86",
        "optimizer.pt": "333c9048d066bee638e2ce3c0725bb47cc168f09e655799da719f032e50b9a84",
        "trainer_state.json": "da7b98460f03d7ed2f7bcea3643c46541fa27fb3368b8be611f95ed2be6c2b54"},
    2: {"model.safetensors": "562c641613993bd6427ea6485130135bd7df44193a8fa42557638224b68e0129",
        "optimizer.pt": "33c67b0059d9e97a31e0daead117bd8d344c169ac977555ac78823d76b5ad1d2",
        "trainer_state.json": "72916d958ddc0be513032507fa7bc73a1b501bb7e516a8a6c599389569f51d58"},
    3: {"model.safetensors": "7392e708af1bdea842e468a49f7af40fb5d4f77e8f25a19bfcc134e5df30562d",
        "optimizer.pt": "60f9f8fb23e2690a729e1011efddd0b692d03e98fad511ffabf21b3910466177",
        "trainer_state.json": "92162a4c5d750dad8a330d8b123be8905103dae0d866aece225a6c99a8249804"},
}
GOLDEN_STATE_DICT = {  # step: {tensor name: sha256 of its bytes}
    4: {"counts": "818b5d99e8c40b01d58d9fce6f442669bc1f44807ee5080fc0b256ca75b5c41a",
        "small.bf16": "7b012d61e5be00046e5cb164b6a6821ca0f44ee07a744a34a8f4c6c76b898723",
        "w": "64a64312a0fdf81266da351bc960716f6f97c92305c780b4870eed2369acdb7b"},
}


def _tree_fingerprint(root: Path) -> Dict[str, Tuple[int, int, str]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[p.relative_to(root).as_posix()] = (st.st_mode, st.st_mtime_ns,
                                               sha256(p) if p.is_file() and not p.is_symlink() else "")
    return out


def test_golden_store_files_are_fit_for_git() -> None:
    assert (GOLDEN / "tpde-store.json").is_file(), "tests/golden/store-v1 is missing (make_store_v1.py)"
    total = 0
    for p in GOLDEN.rglob("*"):
        assert not p.is_symlink(), p
        if p.is_dir():
            assert any(p.iterdir()), f"{p}: an empty folder, which git cannot hold"
            continue
        mode = p.stat().st_mode & 0o777
        assert mode & 0o111 == 0 and mode & 0o444 == 0o444, f"{p}: mode {oct(mode)}"
        total += p.stat().st_size
    assert total < 64 * 1024, total


def test_golden_store_v1_restores_to_golden_hashes(tmp_path: Path) -> None:
    assert GOLDEN_FILES and GOLDEN_STATE_DICT
    store = tmp_path / "store-v1"
    shutil.copytree(GOLDEN, store)
    before = _tree_fingerprint(store)
    st = tpde.Store(store)
    assert st.steps() == sorted(set(GOLDEN_FILES) | set(GOLDEN_STATE_DICT))
    rep = st.verify(deep=True)
    assert rep.ok, rep.problems
    s = snap(st)
    assert s["manifest"]["version"] == 1
    assert any(r["ref"] for c in s["checkpoints"] for f in c["files"] for r in f["regions"]), "no delta in golden"
    for step, files in GOLDEN_FILES.items():
        out = tmp_path / f"r{step}"
        st.restore(step, out)
        assert {k: v[0] for k, v in tree_digest(out).items()} == files
    for step, tensors in GOLDEN_STATE_DICT.items():
        sd = st.load(step)
        flat = {}

        def walk(x: Any, name: str) -> None:
            if isinstance(x, torch.Tensor):
                flat[name] = hashlib.sha256(bits(x).numpy().tobytes()).hexdigest()
            elif isinstance(x, dict):
                for k, v in x.items():
                    walk(v, f"{name}.{k}" if name else str(k))

        walk(sd, "")
        assert flat == tensors
    st.close()
    # Reading wrote nothing.
    assert _tree_fingerprint(store) == before


def test_golden_store_v1_can_be_appended_to(tmp_path: Path) -> None:
    # The committed store is as git (or an object store) keeps it: without
    # the empty tmp/ folder. This version must go on writing it.
    store = tmp_path / "store-v1"
    shutil.copytree(GOLDEN, store)
    with tpde.Store(store) as st:
        last = st.steps()[-1]
        st.add({"w": torch.arange(2048, dtype=torch.float32)}, step=last + 1)
        assert st.steps()[-1] == last + 1
        assert st.verify().ok
        for step, files in GOLDEN_FILES.items():
            st.restore(step, tmp_path / f"r{step}")
            assert {k: v[0] for k, v in tree_digest(tmp_path / f"r{step}").items()} == files


def test_compression_method_picks_the_position_coding_of_delta_frames(tmp_path: Path) -> None:
    """compression_method reaches the delta coder: on a 1%-changed tensor the
    forced dense and forced sparse (elias_delta_zstd) codings store different
    sizes, both restore bit-exactly, and an unknown name is refused."""
    g = torch.Generator().manual_seed(7)
    a = torch.randn(256, 1024, generator=g)
    b = a.clone()
    idx = torch.randperm(a.numel(), generator=g)[: a.numel() // 100]
    b.view(-1)[idx] += 1e-3
    sizes = {}
    for method in ("dense", "elias_delta_zstd"):
        with tpde.Store(tmp_path / method, compression_method=method) as st:
            st.add({"w": a}, step=1)
            st.add({"w": b}, step=2)
            st.wait()  # checkpoint 1 becomes a delta in the background
            sizes[method] = st.info(1).stored_bytes
            assert torch.equal(st.load(1)["w"].view(torch.int32), a.view(torch.int32))
            assert torch.equal(st.load(2)["w"].view(torch.int32), b.view(torch.int32))
    assert sizes["dense"] != sizes["elias_delta_zstd"]
    with pytest.raises(InvalidArgumentError, match="compression_method"):
        tpde.Store(tmp_path / "bad", compression_method="lz4")


def test_a_file_deleted_during_an_add_is_a_tpde_io_error_and_adds_nothing(tmp_path: Path, hf_run) -> None:
    """A Trainer's rotation may delete a folder while it is being added: that
    is a TPDEIOError naming the file (not a bare FileNotFoundError), and the
    store is left as it was."""
    run = hf_run()
    d = run.save(1)
    victim = d / "training_args.bin"  # added after optimizer.pt (sorted walk)

    def progress(done: int, total: int) -> None:
        if victim.exists():
            victim.unlink()

    with tpde.Store(tmp_path / "st") as st:
        with pytest.raises(TPDEIOError, match="training_args.bin") as ei:
            st.add(d, step=1, progress=progress)
        assert ei.value.errno == errno.ENOENT
        assert not (tmp_path / "st" / "tpde-store.json").exists() or st.steps() == []


@pytest.mark.parametrize("files", [1, 3, 6])
def test_loading_the_newest_crosses_the_abi_once_per_file_plus_a_constant(tmp_path: Path, abi_calls,
                                                                           files: int) -> None:
    """The seam: Store.load of the newest checkpoint makes at most one ABI
    call per file plus a constant, however many tensors each file holds
    (here 40 per file) and however long the history."""
    src = tmp_path / "ckpt"
    src.mkdir()
    g = torch.Generator().manual_seed(0)
    want = {}
    for i in range(files):
        sd = {f"layer{j}.weight": torch.randn(64, 16, generator=g) for j in range(40)}
        sd["tiny"] = torch.arange(3, dtype=torch.int64)  # stays in the skeleton: no region
        save_file(sd, str(src / f"model-{i}.safetensors"))
        want[f"model-{i}.safetensors"] = sd
    st = tpde.Store(tmp_path / "s")
    for step in range(3):
        st.add(src, step=step)
    st.add({"w": torch.randn(100, 100, generator=g), "nested": {"b": torch.ones(5)}}, step=3)
    st.add(src, step=4)
    st.close()

    st = tpde.Store(tmp_path / "s")
    abi_calls.clear()
    got = st.load()
    calls = list(abi_calls.elements())
    if files == 1:  # one file: its state dict alone
        got = {"model-0.safetensors": got}
    assert got.keys() == want.keys()
    for name, sd in want.items():
        assert got[name].keys() == sd.keys() and all(torch.equal(got[name][k], sd[k]) for k in sd)
    per_file = [c for c in calls if c == "tpde_store_read_tensors"]
    assert len(per_file) == files, calls
    constant = len(calls) - len(per_file)
    assert constant <= 8, calls


def test_a_parts_state_dict_offsets_are_where_the_layout_put_each_tensor(tmp_path: Path) -> None:
    """Part.add of a state dict returns where Go's layout (FORMAT §10) put
    each tensor in the file, aliases included: a DCP rank names its items
    by these offsets rather than laying the file out itself."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(300, 7, generator=g)
    sd = {"w": w, "tied": w, "small": torch.arange(5, dtype=torch.int16), "b": torch.randn(3000, generator=g)}
    (tmp_path / "other.txt").write_text("x")
    st = tpde.Store(tmp_path / "s")
    with st.stage() as part:
        offsets = part.add(sd, name="rank0.tpde")
        assert part.add(tmp_path / "other.txt") is None
        st.commit([part.finish()])
    assert set(offsets) == set(sd) and offsets["tied"] == offsets["w"]
    st.restore("latest", tmp_path / "out")
    raw = (tmp_path / "out" / "rank0.tpde").read_bytes()
    for name, t in sd.items():
        b = t.contiguous().view(torch.uint8).numpy().tobytes()
        assert raw[offsets[name]:offsets[name] + len(b)] == b, name


def test_recode_background_or_inline_ends_in_the_same_store(tmp_path: Path) -> None:
    """recode="inline" re-codes the checkpoint before the newest inside
    add(); "background" (the default) after it returns, which wait() and
    close() wait for: both end with the same reverse deltas, and the same
    sizes. An unknown mode is refused."""
    g = torch.Generator().manual_seed(3)
    a = torch.randn(256, 1024, generator=g)
    steps = [a + 1e-4 * k * (torch.rand(a.shape, generator=g) < 0.1) for k in range(4)]
    sizes = {}
    for mode in ("inline", "background"):
        with tpde.Store(tmp_path / mode, recode=mode, keyframe_interval=3) as st:
            for k, sd in enumerate(steps):
                st.add({"w": sd}, step=k)
            if mode == "background":
                st.wait()  # inline: the store is minimal as add returns
            chains_now = {(s, n): len(c) for (s, _, n), c in chains(snap(st)).items()}
            # K=3: 0 -> 1 -> 2 walks three frames, so 2 stays a keyframe.
            assert chains_now == {(0, "w"): 3, (1, "w"): 2, (2, "w"): 1, (3, "w"): 1}, chains_now
            sizes[mode] = [st.info(k).stored_bytes for k in range(4)]
            for k, sd in enumerate(steps):
                assert torch.equal(st.load(k)["w"].view(torch.int32), sd.view(torch.int32))
    assert sizes["inline"] == sizes["background"]
    with pytest.raises(InvalidArgumentError, match="recode"):
        tpde.Store(tmp_path / "bad", recode="later")
