"""tpde.dcp: torch.distributed.checkpoint folders whose tensors live in a shared store.

The 2-rank test runs tests/dcp_worker.py under torchrun (gloo, CPU); the
others run dcp in this process, which needs no process group. DCP gathers a
storage error into a CheckpointException (a BaseException) whose .failures
map each rank to (error, traceback): `failure` unpacks it.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import tpde  # noqa: E402
import tpde.dcp  # noqa: E402
from tpde.store import read_pointer  # noqa: E402

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "dcp-v1"
STORE = tpde.dcp.DEFAULT_STORE

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning",
                                        "ignore:Detected an existing checkpoint:UserWarning")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def bits(t: Any) -> Any:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same(want: Dict[str, Any], got: Dict[str, Any], what: str = "") -> None:
    assert want.keys() == got.keys(), what
    for k, v in want.items():
        if isinstance(v, dict):
            assert_same(v, got[k], f"{what}.{k}")
        elif isinstance(v, torch.Tensor):
            assert (v.dtype, v.shape) == (got[k].dtype, got[k].shape), (what, k)
            assert torch.equal(bits(v), bits(got[k])), (what, k)
        else:
            assert v == got[k], (what, k)


def state(seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    nan = torch.tensor([0x7FC00001, 0x7F800001, -0x00400001, -0x80000000, 1], dtype=torch.int64).to(torch.int32)
    return {
        "w": torch.randn(120, 40, generator=g),
        "special": torch.cat([nan.view(torch.float32), torch.tensor([float("inf"), -0.0, 1e-45])]),
        "bf16": torch.randn(4096, generator=g).bfloat16(),
        "f8": torch.randn(32, generator=g).to(torch.float8_e4m3fn),
        "i64": torch.arange(1000) * 104729,
        "mask": torch.rand(20, generator=g) > 0.5,
        "complex": torch.randn(600, 2, dtype=torch.complex64, generator=g),  # no tpde dtype: stored as bytes
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "step": 7,
        "name": "run-1",
    }


def step_update(sd: Dict[str, Any], k: int) -> None:
    """A training-like step: a few elements of the large tensors change."""
    sd["w"][k % 120, :7] += 1.0
    sd["bf16"][k::97] = -sd["bf16"][k::97]
    sd["i64"][k::50] += 1
    sd["step"] = 7 + k


def fresh(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: torch.ones_like(v) if isinstance(v, torch.Tensor) else fresh(v) if isinstance(v, dict) else None
            for k, v in sd.items()}


def clone(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else clone(v) if isinstance(v, dict) else v
            for k, v in sd.items()}


def load(path: Path, like: Dict[str, Any]) -> Dict[str, Any]:
    got = fresh(like)
    dcp.load(got, storage_reader=tpde.dcp.Reader(path))
    return got


def save(sd: Dict[str, Any], path: Path, **kw: Any) -> int:
    """dcp.save with a new Writer (as trainers call DCP); the store step it made."""
    dcp.save(sd, storage_writer=tpde.dcp.Writer(path, codec_threads=1, **kw))
    return read_pointer(path)["step"]


def descriptors(path: Path) -> Dict[str, Any]:
    md = dcp.FileSystemReader(path).read_metadata()
    return {k.fqn: v.transform_descriptors for k, v in md.storage_data.items()}


def failure(excinfo: Any) -> BaseException:
    (exc, _tb), = excinfo.value.failures.values()
    return exc


def steps(store: Path) -> List[int]:
    with tpde.Store(store) as st:
        return st.steps()


def stored(store: Path, step: int) -> int:
    with tpde.Store(store) as st:
        return st.info(step).stored_bytes


# --- two ranks under torchrun ------------------------------------------------------

def test_two_ranks_torchrun(tmp_path: Path, py_env: Dict[str, str]) -> None:
    """Three saves with a fresh Writer each, sharded DTensors and replicated tensors
    (bit-exact loads on both ranks, checked in the worker), the oldest folder removed, a
    fourth save through async_save in a checkpoint process whose commit reclaims it;
    here: deltas in the store, 1-rank (resharded) loads of every remaining save, and in
    a copy of the whole run a middle folder removed."""
    env = dict(py_env, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dcp_worker.py"), str(tmp_path)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-8000:]
    rec = json.loads((tmp_path / "rank0.json").read_text())
    run = tmp_path / "run"
    ptr = {int(k): v for k, v in rec["pointers"].items()}
    assert ptr[1] < ptr[2] < ptr[3] < ptr[4], ptr
    assert rec["after_save"][-1]["steps"] == [ptr[1], ptr[2], ptr[3]]
    # the removed folder's checkpoint went with the next save's commit
    assert rec["after_async"]["steps"] == [ptr[2], ptr[3], ptr[4]] == steps(run / STORE)

    # deltas: each save after the first grew the store by a fraction of the first
    disk = [a["disk"] for a in rec["after_save"]]
    assert disk[1] - disk[0] < disk[0] / 3 and disk[2] - disk[1] < disk[0] / 3, disk
    # the newest is whole, the older ones are deltas against it
    final = {int(k): v for k, v in rec["after_async"]["stored"].items()}
    assert final[ptr[2]] * 3 < final[ptr[4]] and final[ptr[3]] * 3 < final[ptr[4]], final

    # the folder holds .metadata and the pointer; every item is in the store's step
    assert rec["files_s3"] == [".metadata", ".tpde-checkpoint.json"]
    d = rec["descriptors_s3"]
    assert {"model.w_sharded@[0, 0]", "model.w_sharded@[128, 0]", "extra.epoch@[]"} <= d.keys()
    assert all(v[:2] == ["tpde.store/1", f"step={ptr[3]}"] and v[2].startswith("name=") for v in d.values()), d
    assert d["model.w_sharded@[128, 0]"][2] == "name=model.w_sharded@128,0"

    errs = rec["missing_error"]
    assert errs is not None and set(errs) == {"0", "1"}, errs
    for e in errs.values():
        assert e["tpde"] and e["type"] == "TPDEIOError", e
        assert str(tmp_path / "comp" / "c1") in e["message"] and ".tpde-checkpoint.json" in e["message"], e

    wants = {k: torch.load(tmp_path / f"want{k}.pt", weights_only=True) for k in (2, 3, 4)}
    # offset and length locate each tensor item (a shard: a chunk) in its rank's file of the store
    with tpde.Store(run / STORE) as st:
        st.restore(ptr[3], tmp_path / "restored")
    md = dcp.FileSystemReader(run / "s3").read_metadata()
    files = {n: (tmp_path / "restored" / n).read_bytes() for n in ("__0.tpde", "__1.tpde")}
    checked = 0
    for key, info in md.storage_data.items():
        group, name = key.fqn.split(".", 1)
        want = wants[3][group][name]
        if not isinstance(want, torch.Tensor):
            continue
        (chunk,) = [c for c in md.state_dict_metadata[key.fqn].chunks if list(c.offsets) == list(key.offset)]
        for d, (o, n) in enumerate(zip(chunk.offsets, chunk.sizes)):
            want = want.narrow(d, o, n)
        got = files[info.relative_path][info.offset:info.offset + info.length]
        assert got == bits(want).numpy().tobytes(), key
        checked += 1
    assert checked == 8
    for k in (2, 3, 4):  # 2 ranks' shards, read whole by one process
        assert_same(wants[k], load(run / f"s{k}", wants[k]), f"s{k}")

    # a copy of the whole run (the pointers are relative), a middle folder removed
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "s3")
    for k in (2, 4):
        assert_same(wants[k], load(copy / f"s{k}", wants[k]), f"copy s{k}")
    sd = clone(wants[4])
    sd["model"]["w_plain"][0] += 1
    p5 = save(sd, copy / "s5")
    assert steps(copy / STORE) == [ptr[2], ptr[4], p5]  # s3 reclaimed in the copy only
    assert steps(run / STORE) == [ptr[2], ptr[3], ptr[4]]
    for k, want in ((2, wants[2]), (4, wants[4]), (5, sd)):
        assert_same(want, load(copy / f"s{k}", want), f"copy s{k} after s5")


def test_two_ranks_torchrun_s3_store(tmp_path: Path, py_env: Dict[str, str], s3_server: Any, s3_bucket: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """tests/dcp_s3_worker.py: three saves of 2 ranks into local folders with the store in
    a bucket of a real S3 server, each rank through a cache of its own (bit-exact loads on
    both ranks, checked in the worker); here: the pointers name the URL, the older saves
    are deltas in the bucket, removing a folder kept its checkpoint, and a fresh cache
    (another machine) loads every save bit for bit, resharded to 1 rank."""
    url = f"s3://{s3_bucket}/run"
    env = dict(py_env, OMP_NUM_THREADS="1", **s3_server.env())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dcp_s3_worker.py"), str(tmp_path), url]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-8000:]
    rec = json.loads((tmp_path / "rank0.json").read_text())
    assert [len(s) for s in rec["steps"]] == [1, 2, 3], rec["steps"]
    first, second, third = rec["steps"][-1]
    # s1's folder was removed before the third save: its checkpoint stays in the bucket
    assert rec["steps"][0] == [first]
    assert {k: v["step"] for k, v in rec["pointers"].items()} == {"2": second, "3": third}
    assert all(v["store"] == url for v in rec["pointers"].values()), rec["pointers"]
    assert rec["files_s3"] == [".metadata", ".tpde-checkpoint.json"]  # the tensors are in the bucket
    assert all(v[:2] == ["tpde.store/1", f"step={third}"] for v in rec["descriptors_s3"].values())
    stored = {int(k): v for k, v in rec["stored"].items()}
    assert stored[first] * 3 < stored[third] and stored[second] * 3 < stored[third], stored
    # each rank had a cache of its own; the test's loads use a third, fresh one
    for r in (0, 1):
        assert len(list((tmp_path / f"cache-rank{r}").glob("*/tpde-store.json"))) == 1, r
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TPDE_S3_CACHE", str(tmp_path / "cache-test"))
    for k in (2, 3):
        want = torch.load(tmp_path / f"want{k}.pt", weights_only=True)
        assert_same(want, load(tmp_path / "run" / f"s{k}", want), f"s{k}")
    with tpde.Store(url) as st:
        assert st.steps() == [first, second, third]
        assert sorted(f.path for f in st.info(third).files) == ["__0.tpde", "__1.tpde"]


# --- one process -------------------------------------------------------------------

def test_round_trip_every_dtype_and_bytes(tmp_path: Path) -> None:
    sd = state()
    step = save(sd, tmp_path / "a")
    assert_same(sd, load(tmp_path / "a", sd))
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [".metadata", ".tpde-checkpoint.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [STORE, "a"]
    d = descriptors(tmp_path / "a")
    assert d["w"] == ["tpde.store/1", f"step={step}", "name=w@0,0"]
    assert d["scalar"] == ["tpde.store/1", f"step={step}", "name=scalar@"]
    assert d["name"] == ["tpde.store/1", f"step={step}", "name=name@bytes"]
    md = dcp.FileSystemReader(tmp_path / "a").read_metadata()
    info = {k.fqn: v for k, v in md.storage_data.items()}
    assert {v.relative_path for v in info.values()} == {"__0.tpde"}
    assert info["w"].length == 120 * 40 * 4 and info["complex"].length == 600 * 2 * 8
    # the rank file in the store holds each item under its name
    with tpde.Store(tmp_path / STORE) as st:
        (f,) = st.info(step).files
        assert f.path == "__0.tpde" and f.layout == "state-dict"
        held = st.load(step, file="__0.tpde")
    assert torch.equal(bits(held["w@0,0"]), bits(sd["w"]))
    assert held["complex@0,0"].dtype == torch.uint8 and held["complex@0,0"].shape == (600, 2, 8)
    # a 4 KiB tensor and more is a tensor of the store (a region), a smaller one in
    # the file's verbatim bytes; both have their offset in the file
    assert info["w"].offset > 0 and info["w"].offset % 64 == 0 and info["scalar"].offset > 0


def test_fresh_writer_per_save_codes_deltas(tmp_path: Path) -> None:
    """A new Writer per save, given only its folder, codes against the newest checkpoint
    of the store: the store grows by deltas, and every save loads bit-exact."""
    sd = state()
    run = tmp_path / "run"
    wants, disk = [], []
    for k in range(4):
        if k:
            step_update(sd, k)
        wants.append(clone(sd))
        save(sd, run / f"s{k}")
        disk.append(sum(p.stat().st_size for p in (run / STORE).rglob("*") if p.is_file()))
    for k in (1, 2, 3):
        assert disk[k] - disk[k - 1] < disk[0] / 3, disk
    ptr = [read_pointer(run / f"s{k}")["step"] for k in range(4)]
    assert steps(run / STORE) == ptr
    for k in range(3):
        assert stored(run / STORE, ptr[k]) * 3 < stored(run / STORE, ptr[3])
    for k in range(4):
        assert_same(wants[k], load(run / f"s{k}", wants[k]), f"s{k}")
    # the whole tree moved: the pointers name the store relative to their folder
    shutil.move(run, tmp_path / "moved")
    for k in range(4):
        assert_same(wants[k], load(tmp_path / "moved" / f"s{k}", wants[k]), f"moved s{k}")


@pytest.mark.parametrize("victim", [0, 1, 3])
def test_rmtree_any_folder_keeps_the_others(tmp_path: Path, victim: int) -> None:
    """rmtree of the oldest, a middle or the newest folder: every other still loads, and
    the next save reclaims the removed folder's checkpoint (and only it)."""
    sd = state()
    run = tmp_path / "run"
    wants, ptr = [], []
    for k in range(4):
        if k:
            step_update(sd, k)
        wants.append(clone(sd))
        ptr.append(save(sd, run / f"s{k}"))
    shutil.rmtree(run / f"s{victim}")
    rest = [k for k in range(4) if k != victim]
    for k in rest:
        assert_same(wants[k], load(run / f"s{k}", wants[k]), f"s{k}")
    assert steps(run / STORE) == ptr  # nothing reclaimed before the next save
    step_update(sd, 4)
    want4 = clone(sd)
    p4 = save(sd, run / "s4")
    assert steps(run / STORE) == [ptr[k] for k in rest] + [p4]
    for k in rest:
        assert_same(wants[k], load(run / f"s{k}", wants[k]), f"s{k} after s4")
    assert_same(want4, load(run / "s4", want4))


def test_verify_repair_reclaims(tmp_path: Path) -> None:
    """What no folder names is reclaimed by `tpde verify --repair` too, without a save."""
    sd = state()
    p0 = save(sd, tmp_path / "s0")
    step_update(sd, 1)
    p1 = save(sd, tmp_path / "s1")
    shutil.rmtree(tmp_path / "s0")
    r = subprocess.run([sys.executable, "-m", "tpde", "verify", "--repair", str(tmp_path / STORE)],
                       capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(HERE.parent / "python")))
    assert r.returncode == 0, r.stdout + r.stderr
    assert steps(tmp_path / STORE) == [p1] and p0 != p1
    assert_same(sd, load(tmp_path / "s1", sd))


def test_same_folder_twice(tmp_path: Path) -> None:
    """A save into a folder that holds one: the folder then holds the new one, and the
    old one's checkpoint is reclaimed at once (no folder names it)."""
    sd = state()
    p0 = save(sd, tmp_path / "a")
    step_update(sd, 1)
    p1 = save(sd, tmp_path / "a")
    assert p1 != p0 and steps(tmp_path / STORE) == [p1]
    assert_same(sd, load(tmp_path / "a", sd))


def test_store_argument(tmp_path: Path) -> None:
    """store= names another store in the same parent; one elsewhere is refused before
    anything is written (the store names checkpoints by folder name in its parent)."""
    sd = state()
    step = save(sd, tmp_path / "a", store=tmp_path / "mystore")
    assert read_pointer(tmp_path / "a") == {"store": str(tmp_path / "mystore"), "step": step}
    assert not (tmp_path / STORE).exists() and steps(tmp_path / "mystore") == [step]
    assert_same(sd, load(tmp_path / "a", sd))
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(CheckpointException) as ei:
        save(sd, tmp_path / "b", store=tmp_path / "elsewhere" / "store")
    err = failure(ei)
    assert isinstance(err, tpde.InvalidArgumentError) and "parent" in str(err)
    assert not (tmp_path / "b" / ".metadata").exists() and not (tmp_path / "elsewhere" / "store").exists()


def test_pickled_writer(tmp_path: Path) -> None:
    """What async_save's process mode sends: a small pickle holding no handle; a Writer
    unpickled after a save codes the next save against the store's newest."""
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    blob = pickle.dumps(w)
    assert len(blob) < 4096
    copy = pickle.loads(blob)
    assert copy._part is None and copy._store is None
    step_update(sd, 1)
    dcp.save(sd, checkpoint_id=tmp_path / "b", storage_writer=copy)
    pa, pb = read_pointer(tmp_path / "a")["step"], read_pointer(tmp_path / "b")["step"]
    assert stored(tmp_path / STORE, pa) * 3 < stored(tmp_path / STORE, pb)
    assert_same(sd, load(tmp_path / "b", sd))


def test_plain_checkpoints_and_plain_reader(tmp_path: Path) -> None:
    """tpde's Reader reads a plain FileSystemWriter checkpoint; torch's own reader finds no
    file of a tpde checkpoint's items in its folder rather than misreading anything."""
    sd = {"w": torch.randn(10, 10), "step": 3}
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(tmp_path / "plain"))
    assert_same(sd, load(tmp_path / "plain", sd))
    save(sd, tmp_path / "t")
    with pytest.raises(CheckpointException) as ei:
        dcp.load(fresh(sd), storage_reader=dcp.FileSystemReader(tmp_path / "t"))
    err = failure(ei)
    assert isinstance(err, FileNotFoundError) and "__0.tpde" in str(err)  # the item's file is in the store


def test_pointer_and_store_mismatches(tmp_path: Path) -> None:
    """A folder whose pointer names another checkpoint than its .metadata (a save into
    it that did not finish), whose pointer is gone, or whose checkpoint was removed from
    the store: typed errors naming the folder, never other data."""
    sd = state()
    save(sd, tmp_path / "a")
    step_update(sd, 1)
    save(sd, tmp_path / "b")
    # b's pointer copied into a: the .metadata is of another checkpoint
    shutil.copy(tmp_path / "b" / ".tpde-checkpoint.json", tmp_path / "a" / ".tpde-checkpoint.json")
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "a", sd)
    err = failure(ei)
    assert isinstance(err, tpde.CorruptDataError) and "did not finish" in str(err) and str(tmp_path / "a") in str(err)
    os.unlink(tmp_path / "a" / ".tpde-checkpoint.json")
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "a", sd)
    err = failure(ei)
    assert isinstance(err, tpde.TPDEIOError) and ".tpde-checkpoint.json" in str(err)
    with tpde.Store(tmp_path / STORE) as st:
        st.remove(read_pointer(tmp_path / "b")["step"])
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "b", sd)
    err = failure(ei)
    assert isinstance(err, tpde.TPDEIOError) and "no longer in the store" in str(err)


def test_real_minilm_training_step_delta(tmp_path: Path, minilm_model_dir: Path) -> None:
    """The MiniLM architecture (2 layers, random init) before and after an AdamW step,
    each saved with a new Writer: the older save is a delta, both load bit-exact."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig.from_pretrained(str(minilm_model_dir), num_hidden_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    p1 = save({"model": model.state_dict()}, tmp_path / "s1")
    model(input_ids=torch.randint(0, 1000, (2, 16))).last_hidden_state.pow(2).mean().backward()
    opt.step()
    p2 = save({"model": model.state_dict()}, tmp_path / "s2")
    raw = sum(t.nbytes for t in first.values())
    assert stored(tmp_path / STORE, p1) < stored(tmp_path / STORE, p2) < raw
    for path, want in ((tmp_path / "s1", first), (tmp_path / "s2", model.state_dict())):
        got = {"model": {k: torch.zeros_like(v) for k, v in want.items()}}
        dcp.load(got, storage_reader=tpde.dcp.Reader(path))
        assert_same(want, got["model"])


# --- folders of tpde's first DCP writer (forward chains; tests/golden/dcp-v1) ----------------

@pytest.fixture
def golden(tmp_path: Path) -> Path:
    shutil.copytree(GOLDEN, tmp_path / "g")
    return tmp_path / "g"


def test_first_writer_folders_still_read(golden: Path) -> None:
    wants = torch.load(golden / "want.pt", weights_only=True)
    assert descriptors(golden / "run" / "s1")["w"] == ["tpde.delta/1", "depth=1", "ref=../s0"]
    for k in (0, 1):
        assert_same(wants[k], load(golden / "run" / f"s{k}", wants[k]), f"s{k}")
    # as documented for those folders: a chain needs its reference folder
    shutil.rmtree(golden / "run" / "s0")
    with pytest.raises(CheckpointException) as ei:
        load(golden / "run" / "s1", wants[1])
    err = failure(ei)
    assert isinstance(err, tpde.TPDEIOError) and str(golden / "run" / "s0") in str(err) and "missing" in str(err)


@pytest.mark.parametrize("edit, ref", [("s1", "."), ("s0", "../s1")])
def test_first_writer_reference_cycle_is_corrupt(golden: Path, edit: str, ref: str) -> None:
    """Descriptors edited into a cycle (s1 its own reference; s0 and s1 each other's):
    CorruptDataError, not endless recursion."""
    md_path = golden / "run" / edit / ".metadata"
    md = pickle.loads(md_path.read_bytes())
    key, = [k for k in md.storage_data if k.fqn == "w"]
    md.storage_data[key].transform_descriptors = ["tpde.delta/1", "depth=1", f"ref={ref}"]
    md_path.write_bytes(pickle.dumps(md))
    want = torch.load(golden / "want.pt", weights_only=True)[1]
    with pytest.raises(CheckpointException) as ei:
        load(golden / "run" / "s1", want)
    assert isinstance(failure(ei), tpde.CorruptDataError) and "depth" in str(failure(ei))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_first_writer_damaged_distcp_raises_corrupt(golden: Path, damage: str) -> None:
    f = golden / "run" / "s0" / "__0_0.distcp"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[-100:]
    f.write_bytes(bytes(data))
    want = torch.load(golden / "want.pt", weights_only=True)[0]
    with pytest.raises(CheckpointException) as ei:
        load(golden / "run" / "s0", want)
    err = failure(ei)
    assert isinstance(err, tpde.CorruptDataError), repr(err)
    assert str(f) in str(err) and "item" in str(err)
    if damage == "truncate":
        assert "the file has" in str(err) and "truncated" in str(err)


# --- the design document's compressor, and arguments -----------------------------------

def test_distributed_compressor_design_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The design document's example as written (3 epochs, one process group of one rank),
    then every file decoded in order by a fresh compressor, bit-exact."""
    from tpde.dcp import DistributedTPDECompressor

    monkeypatch.chdir(tmp_path)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        rank = dist.get_rank()
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        saved = []
        compressor = DistributedTPDECompressor(rank=rank, world_size=dist.get_world_size(),
                                               compression_method='elias_delta_zstd')
        for epoch in range(3):
            model(torch.randn(4, 64)).sum().backward()
            opt.step()
            if rank == 0:
                checkpoint = model.state_dict()
                saved.append({k: v.clone() for k, v in checkpoint.items()})
                compressed = compressor.compress_distributed(checkpoint)
                torch.save(compressed, f'falcon_distributed_epoch_{epoch}.tpde')
            dist.barrier()
        # the collective path with the same object, here in a group of one
        compressor.save({"m": model.state_dict()}, tmp_path / "ckpt" / "c1")
        got = {"m": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
        compressor.load(got, tmp_path / "ckpt" / "c1")
        assert_same(model.state_dict(), got["m"])
    finally:
        dist.destroy_process_group()
    decoder = DistributedTPDECompressor(rank=0, world_size=1)
    kinds = []
    for epoch, want in enumerate(saved):
        blob = torch.load(tmp_path / f"falcon_distributed_epoch_{epoch}.tpde", weights_only=True)
        kinds.append(tpde.checkpoint_info(bytes(blob))["checkpoint_type"])
        assert_same(want, decoder.decompress(blob))
    assert kinds == ["full", "delta", "delta"]


def test_argument_checks(tmp_path: Path) -> None:
    from tpde.dcp import DistributedTPDECompressor

    for kw in ({"rank": 2, "world_size": 2}, {"rank": 0, "world_size": 0}, {"rank": -1, "world_size": 1},
               {"rank": 0, "world_size": 1, "compression_method": "lz4"}):
        with pytest.raises(tpde.InvalidArgumentError):
            DistributedTPDECompressor(**kw)
    with pytest.raises(tpde.InvalidArgumentError, match="rank 0 of 2"):
        DistributedTPDECompressor(0, 2).save({"w": torch.ones(2)}, tmp_path / "x")  # no process group: 0 of 1
    for kw in ({"keyframe_interval": 0}, {"keyframe_interval": 1001}, {"compression_method": "lz4"},
               {"codec_threads": -1}):
        with pytest.raises(tpde.InvalidArgumentError):
            tpde.dcp.Writer(tmp_path / "x", **kw)
    # a store created with one keyframe interval is not reopened with another
    save({"w": torch.randn(64, 64)}, tmp_path / "k1", keyframe_interval=3)
    with pytest.raises(CheckpointException) as ei:
        save({"w": torch.randn(64, 64)}, tmp_path / "k2", keyframe_interval=4)
    assert isinstance(failure(ei), tpde.InvalidArgumentError)
    # without collectives DCP calls the writer directly: the error is not gathered
    with pytest.raises(tpde.InvalidArgumentError, match="use_collectives"):
        dcp.save({"w": torch.ones(2)}, storage_writer=tpde.dcp.Writer(tmp_path / "y"), use_collectives=False)
