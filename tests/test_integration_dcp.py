"""tpde.dcp: torch.distributed.checkpoint storage with tpde frames.

The 2-rank test runs tests/dcp_worker.py under torchrun (gloo, CPU); the
others run dcp in this process, which needs no process group. DCP gathers a
storage error into a CheckpointException (a BaseException) whose .failures
map each rank to (error, traceback): `failure` unpacks it.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.api import CheckpointException  # noqa: E402

import tpde  # noqa: E402
import tpde.dcp  # noqa: E402

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled:UserWarning",
                                        "ignore:Detected an existing checkpoint:UserWarning")


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(1)


def bits(t: Any) -> Any:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def assert_same(want: Dict[str, Any], got: Dict[str, Any]) -> None:
    assert want.keys() == got.keys()
    for k, v in want.items():
        if isinstance(v, torch.Tensor):
            assert (v.dtype, v.shape) == (got[k].dtype, got[k].shape), k
            assert torch.equal(bits(v), bits(got[k])), k
        else:
            assert v == got[k], k


def state(seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    nan = torch.tensor([0x7FC00001, 0x7F800001, -0x00400001, -0x80000000, 1], dtype=torch.int64).to(torch.int32)
    return {
        "w": torch.randn(120, 40, generator=g),
        "special": torch.cat([nan.view(torch.float32), torch.tensor([float("inf"), -0.0, 1e-45])]),
        "bf16": torch.randn(64, generator=g).bfloat16(),
        "f8": torch.randn(32, generator=g).to(torch.float8_e4m3fn),
        "i64": torch.arange(50) * 104729,
        "mask": torch.rand(20, generator=g) > 0.5,
        "complex": torch.randn(6, 2, dtype=torch.complex64, generator=g),  # no tpde dtype: framed as bytes
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "step": 7,
        "name": "run-1",
    }


def fresh(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: torch.ones_like(v) if isinstance(v, torch.Tensor) else None for k, v in sd.items()}


def clone(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in sd.items()}


def load(path: Path, like: Dict[str, Any]) -> Dict[str, Any]:
    got = fresh(like)
    dcp.load(got, storage_reader=tpde.dcp.Reader(path))
    return got


def descriptors(path: Path) -> Dict[str, Any]:
    md = dcp.FileSystemReader(path).read_metadata()
    return {k.fqn: v.transform_descriptors for k, v in md.storage_data.items()}


def failure(excinfo: Any) -> BaseException:
    (exc, _tb), = excinfo.value.failures.values()
    return exc


def distcp_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.distcp"))


# --- two ranks under torchrun ------------------------------------------------------

def test_two_ranks_torchrun(tmp_path: Path, py_env: Dict[str, str]) -> None:
    """Sharded DTensors and replicated tensors: save, delta save, bit-exact loads on both
    ranks (checked in the worker), the delta smaller, DistributedTPDECompressor's
    collective save/load, an async_save in a checkpoint process, and the error that
    names a deleted reference."""
    env = dict(py_env, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dcp_worker.py"), str(tmp_path), "--async-process"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-8000:]
    recs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    sizes = recs[0]["sizes"]
    assert sizes["s2"] * 3 < sizes["s1"], sizes
    for name, ref in (("descriptors_s2", "../s1"), ("descriptors_c2", "../c1"), ("descriptors_a1", "../s2")):
        d = recs[0][name]
        deltas = {k for k, v in d.items() if v[0] == "tpde.delta/1"}
        assert {k for k in d if k.startswith("model.")} == deltas, (name, d)
        assert all(d[k][2] == f"ref={ref}" for k in deltas), (name, d)
        assert {k for k in d if k.startswith("extra.")} == {k for k, v in d.items() if v == ["tpde.frame/1"]}
    # both shards of the DTensor were written, one file per rank, nothing temporary left
    assert {"model.w_sharded@[0, 0]", "model.w_sharded@[32, 0]"} <= recs[0]["descriptors_s2"].keys()
    assert recs[0]["files_s2"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert recs[0]["descriptors_a1"]["model.w_plain@[0, 0]"][1] == "depth=2"
    for rec in recs:
        errs = rec["missing_error"]
        assert errs is not None and set(errs) == {"0", "1"}, errs
        for e in errs.values():
            assert e["tpde"] and e["type"] == "TPDEIOError", e
            assert str(tmp_path / "s1") in e["message"] and "missing" in e["message"], e


# --- one process -------------------------------------------------------------------

def test_round_trip_every_dtype_and_bytes(tmp_path: Path) -> None:
    sd = state()
    dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "a", codec_threads=1))
    assert_same(sd, load(tmp_path / "a", sd))
    assert set(map(tuple, descriptors(tmp_path / "a").values())) == {("tpde.frame/1",)}
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.endswith(".tmp")]
    dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "b", thread_count=2, codec_threads=1))
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [".metadata", "__0_0.distcp", "__0_1.distcp"]
    assert_same(sd, load(tmp_path / "b", sd))


def test_deltas_chain_keyframes_and_moved_tree(tmp_path: Path) -> None:
    """One Writer over four saves with keyframe_interval=3: depths 0, 1, 2, 0; every save
    loads bit-exact, also after the whole tree is moved (references are relative)."""
    sd = state()
    writer = tpde.dcp.Writer(tmp_path / "run" / "s0", keyframe_interval=3, codec_threads=1)
    wants = []
    for k in range(4):
        if k:
            sd["w"][k, :7] += 1.0
            sd["bf16"][k] = -sd["bf16"][k]
        sd["resized"] = torch.arange(k + 3.0)  # another shape, or
        sd["retyped"] = torch.ones(5, dtype=(torch.float32, torch.float64)[k % 2])  # dtype: keyframes
        wants.append(clone(sd))
        dcp.save(sd, checkpoint_id=tmp_path / "run" / f"s{k}", storage_writer=writer)
    depths = [descriptors(tmp_path / "run" / f"s{k}")["w"] for k in range(4)]
    assert depths == [["tpde.frame/1"], ["tpde.delta/1", "depth=1", "ref=../s0"],
                      ["tpde.delta/1", "depth=2", "ref=../s1"], ["tpde.frame/1"]]
    for k in range(4):
        d = descriptors(tmp_path / "run" / f"s{k}")
        assert d["resized"] == d["retyped"] == ["tpde.frame/1"]
    assert distcp_bytes(tmp_path / "run" / "s1") * 5 < distcp_bytes(tmp_path / "run" / "s0")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    for k in range(4):
        assert_same(wants[k], load(tmp_path / "moved" / f"s{k}", wants[k]))


def test_previous_by_path_and_pickled_writer(tmp_path: Path) -> None:
    """previous= codes against a checkpoint on disk; a pickled Writer (what async_save's
    process mode sends) carries no copy of the state and still codes deltas, from disk."""
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    copy = pickle.loads(pickle.dumps(w))
    assert copy._saved is None and copy.previous == str(tmp_path / "a")
    assert len(pickle.dumps(w)) < 4096
    sd["w"][0] += 1
    want = clone(sd)
    dcp.save(sd, checkpoint_id=tmp_path / "b", storage_writer=copy)
    dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "c", previous=tmp_path / "a", codec_threads=1))
    for name in ("b", "c"):
        assert descriptors(tmp_path / name)["w"] == ["tpde.delta/1", "depth=1", "ref=../a"]
        assert_same(want, load(tmp_path / name, sd))
    with pytest.raises(CheckpointException) as ei:
        dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "d", previous=tmp_path / "gone"))
    assert isinstance(failure(ei), tpde.TPDEIOError) and str(tmp_path / "gone") in str(failure(ei))


def test_same_folder_twice_is_keyframes(tmp_path: Path) -> None:
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    sd["w"] += 1
    dcp.save(sd, storage_writer=w)  # the same folder: it cannot be its own reference
    assert descriptors(tmp_path / "a")["w"] == ["tpde.frame/1"]
    assert_same(sd, load(tmp_path / "a", sd))


def test_wrong_reference_is_refused(tmp_path: Path) -> None:
    """A reference folder replaced by another checkpoint: ReferenceMismatchError, not wrong data."""
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    sd["w"][1] += 1
    dcp.save(sd, checkpoint_id=tmp_path / "b", storage_writer=w)
    shutil.rmtree(tmp_path / "a")
    dcp.save(state(seed=1), storage_writer=tpde.dcp.Writer(tmp_path / "a", codec_threads=1))
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "b", sd)
    assert isinstance(failure(ei), tpde.ReferenceMismatchError)


@pytest.mark.parametrize("edit, ref", [("b", "."), ("a", "../b")])
def test_reference_cycle_is_corrupt(tmp_path: Path, edit: str, ref: str) -> None:
    """Descriptors edited into a cycle (b its own reference; a and b each other's):
    CorruptDataError, not endless recursion."""
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    sd["w"][1] += 1
    dcp.save(sd, checkpoint_id=tmp_path / "b", storage_writer=w)
    md_path = tmp_path / edit / ".metadata"
    md = pickle.loads(md_path.read_bytes())
    key, = [k for k in md.storage_data if k.fqn == "w"]
    md.storage_data[key].transform_descriptors = ["tpde.delta/1", "depth=1", f"ref={ref}"]
    md_path.write_bytes(pickle.dumps(md))
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "b", sd)
    assert isinstance(failure(ei), tpde.CorruptDataError) and "depth" in str(failure(ei))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_distcp_raises_corrupt(tmp_path: Path, damage: str) -> None:
    sd = {"w": torch.randn(64, 64, generator=torch.Generator().manual_seed(3))}
    dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "a", codec_threads=1))
    f = tmp_path / "a" / "__0_0.distcp"
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x10
    else:
        del data[-100:]
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointException) as ei:
        load(tmp_path / "a", sd)
    err = failure(ei)
    assert isinstance(err, tpde.CorruptDataError), repr(err)
    assert str(f) in str(err) and "item w" in str(err)
    if damage == "truncate":
        assert "the file has" in str(err) and "truncated" in str(err)


def test_next_save_codes_against_memory(tmp_path: Path) -> None:
    """Each rank keeps what it saved: the next save needs none of the previous files'
    bytes (here damaged after the save), only its .metadata."""
    sd = state()
    w = tpde.dcp.Writer(tmp_path / "a", codec_threads=1)
    dcp.save(sd, storage_writer=w)
    (tmp_path / "a" / "__0_0.distcp").write_bytes(b"")
    sd["w"][2] += 1
    dcp.save(sd, checkpoint_id=tmp_path / "b", storage_writer=w)
    assert descriptors(tmp_path / "b")["w"] == ["tpde.delta/1", "depth=1", "ref=../a"]


def test_plain_checkpoints_and_plain_reader(tmp_path: Path) -> None:
    """tpde's Reader reads a plain FileSystemWriter checkpoint; torch's own reader refuses a
    tpde checkpoint (an unknown extension) rather than misreading it."""
    sd = {"w": torch.randn(10, 10), "step": 3}
    dcp.save(sd, storage_writer=dcp.FileSystemWriter(tmp_path / "plain"))
    assert_same(sd, load(tmp_path / "plain", sd))
    dcp.save(sd, storage_writer=tpde.dcp.Writer(tmp_path / "t"))
    with pytest.raises(CheckpointException) as ei:
        dcp.load(fresh(sd), storage_reader=dcp.FileSystemReader(tmp_path / "t"))
    assert "tpde.frame" in str(failure(ei))


def test_real_minilm_training_step_delta(tmp_path: Path, minilm_model_dir: Path) -> None:
    """The MiniLM architecture (2 layers, random init) before and after an AdamW step."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig.from_pretrained(str(minilm_model_dir), num_hidden_layers=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    w = tpde.dcp.Writer(tmp_path / "s1", codec_threads=1)
    dcp.save({"model": model.state_dict()}, storage_writer=w)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    model(input_ids=torch.randint(0, 1000, (2, 16))).last_hidden_state.pow(2).mean().backward()
    opt.step()
    dcp.save({"model": model.state_dict()}, checkpoint_id=tmp_path / "s2", storage_writer=w)
    raw = sum(t.nbytes for t in first.values())
    assert distcp_bytes(tmp_path / "s2") < distcp_bytes(tmp_path / "s1") < raw
    for path, want in ((tmp_path / "s1", first), (tmp_path / "s2", model.state_dict())):
        got = {"model": {k: torch.zeros_like(v) for k, v in want.items()}}
        dcp.load(got, storage_reader=tpde.dcp.Reader(path))
        assert_same(want, got["model"])


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
        compressor.save({"m": model.state_dict()}, tmp_path / "c1")
        got = {"m": {k: torch.zeros_like(v) for k, v in model.state_dict().items()}}
        compressor.load(got, tmp_path / "c1")
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
    for kw in ({"keyframe_interval": 0}, {"compression_method": "lz4"}, {"thread_count": 0}):
        with pytest.raises(tpde.InvalidArgumentError):
            tpde.dcp.Writer(tmp_path / "x", **kw)
