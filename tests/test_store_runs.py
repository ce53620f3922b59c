"""Runs: many named series in one store (docs/FORMAT.md §11.9), on real
fine-tunes of the pretrained all-MiniLM-L6-v2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

import tpde
from tpde.errors import InvalidArgumentError

pytest.importorskip("transformers")


def _disk(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file() and not p.is_symlink())


def _fine_tune(model_dir: Path, seed: int, steps: int, out: Path) -> List[Path]:
    """A real fine-tune of the pretrained model: AdamW at 2e-5, one
    Trainer-like folder (model.safetensors + optimizer.pt) per step."""
    from safetensors.torch import save_file
    from transformers import AutoModel

    torch.manual_seed(seed)
    model = AutoModel.from_pretrained(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(seed)
    folders = []
    for step in range(1, steps + 1):
        ids = torch.randint(1000, 30000, (4, 16), generator=g)
        h = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state
        loss = (h[:, 0] - h[:, 1:].mean(1)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        d = out / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
        torch.save(opt.state_dict(), d / "optimizer.pt")
        folders.append(d)
    return folders


@pytest.fixture(scope="module")
def fine_tunes(minilm_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[Path]]:
    """main: the pretrained weights (as a Trainer folder would hold them);
    a and b: two fine-tunes of them, two checkpoints each."""
    root = tmp_path_factory.mktemp("runs")
    pre = root / "pretrained"
    pre.mkdir()
    shutil.copy(minilm_model_dir / "model.safetensors", pre / "model.safetensors")
    return {"main": [pre], "a": _fine_tune(minilm_model_dir, 1, 2, root / "a"),
            "b": _fine_tune(minilm_model_dir, 2, 2, root / "b")}


@pytest.fixture(scope="module")
def shared(fine_tunes: Dict[str, List[Path]], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, object]:
    """One store holding main, a and b (built once: real checkpoints take
    seconds each), and how much b's first checkpoint grew it."""
    path = tmp_path_factory.mktemp("shared") / "store"
    st = tpde.Store(path)
    st.add(fine_tunes["main"][0])
    grown = {}
    for run in ("a", "b"):
        for i, folder in enumerate(fine_tunes[run]):
            before = _disk(path / "objects")
            st.add(folder, step=i + 1, run=run, parent=("main", 0) if i == 0 else None)
            grown[(run, i + 1)] = _disk(path / "objects") - before
    st.close()
    return {"path": path, "grown": grown}


def test_two_fine_tunes_share_one_store_and_restore_byte_identical(fine_tunes, shared, tmp_path, tree_sha256) -> None:
    st = tpde.Store(shared["path"])
    assert [(r["name"], r["parent"], r["count"], r["newest"]) for r in st.runs()] == [
        ("main", None, 1, 0), ("a", {"run": "main", "step": 0}, 2, 2), ("b", {"run": "main", "step": 0}, 2, 2)]
    for run in ("a", "b"):
        assert st.steps(run=run) == [1, 2]
        for i, folder in enumerate(fine_tunes[run]):
            dest = tmp_path / f"out-{run}-{i}"
            st.restore(i + 1, dest, run=run)
            assert tree_sha256(dest) == tree_sha256(folder)
    sd = st.load(1, run="b", file="model.safetensors")
    from safetensors.torch import load_file
    want = load_file(str(fine_tunes["b"][0] / "model.safetensors"))
    assert sd.keys() == want.keys() and all(torch.equal(sd[k], want[k]) for k in want)
    assert st.verify().ok


def test_a_second_fine_tunes_first_checkpoint_costs_under_0_8x_of_its_own_store(fine_tunes, shared, tmp_path) -> None:
    """The target: weights and optimizer state of b's first checkpoint grow
    a store holding main and a by at most 0.8x of what they cost alone."""
    alone = tpde.Store(tmp_path / "alone")
    alone.add(fine_tunes["b"][0], step=1)
    own = _disk(tmp_path / "alone" / "objects")
    grown = shared["grown"][("b", 1)]
    assert grown <= 0.8 * own, (grown, own)
    # Its optimizer state shares little with its parent: the saving is the weights'.
    info = tpde.Store(shared["path"]).info(1, run="b")
    assert {f.path for f in info.files} == {"model.safetensors", "optimizer.pt"}


def test_removing_one_run_leaves_the_other_whole(fine_tunes, shared, tmp_path, tree_sha256) -> None:
    shutil.copytree(shared["path"], tmp_path / "store")
    st = tpde.Store(tmp_path / "store")
    st.remove_run("a")
    assert [r["name"] for r in st.runs()] == ["main", "b"]
    st.remove(0)  # b's parent
    assert st.steps() == []
    for i, folder in enumerate(fine_tunes["b"]):
        dest = tmp_path / f"b-{i}"
        st.restore(i + 1, dest, run="b")
        assert tree_sha256(dest) == tree_sha256(folder)
    rep = st.verify()
    assert rep.ok, rep.problems
    with pytest.raises(InvalidArgumentError, match="no run"):
        st.steps(run="a")


def test_run_arguments_are_checked_before_anything_is_written(fine_tunes, tmp_path) -> None:
    st = tpde.Store(tmp_path / "s")
    st.add(fine_tunes["main"][0])
    folder = fine_tunes["a"][0]
    for kw in ({"run": "../x"}, {"run": ""}, {"run": "a b"}, {"run": 3}, {"parent": ("main", 0)},
               {"run": "r", "parent": ("main", 5)}, {"run": "r", "parent": ("nope", 0)},
               {"run": "r", "parent": "base"}, {"run": "r", "parent": ("main", -1)}, {"run": "r", "parent": 7},
               {"run": "r", "parent": ("r", 0)}):
        with pytest.raises(InvalidArgumentError):
            st.add(folder, **kw)
    assert [r["name"] for r in st.runs()] == ["main"]
    with pytest.raises(InvalidArgumentError):
        st.remove_run("nope")


def test_cli_run_options(fine_tunes, tmp_path, py_env) -> None:
    def tpde_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tpde", *args], env=py_env, capture_output=True, text=True,
                              timeout=300)

    s = str(tmp_path / "s")
    assert tpde_cli("add", s, str(fine_tunes["main"][0]), "-q").returncode == 0
    r = tpde_cli("add", s, str(fine_tunes["b"][0]), "--run", "b", "--parent", "main:0", "--step", "1", "-q")
    assert r.returncode == 0, r.stderr
    r = tpde_cli("ls", s, "--runs")
    assert r.returncode == 0 and "main:0" in r.stdout and "b " in r.stdout
    r = tpde_cli("ls", s, "--run", "b")
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == "1"
    r = tpde_cli("restore", s, "latest", str(tmp_path / "out"), "--run", "b", "-q")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model.safetensors").read_bytes() == (fine_tunes["b"][0] / "model.safetensors").read_bytes()
    r = tpde_cli("info", s, "1", "--run", "b")
    assert r.returncode == 0 and "checkpoint 1" in r.stdout
    assert tpde_cli("add", s, str(fine_tunes["b"][1]), "--parent", "main:0").returncode == 2
    assert tpde_cli("add", s, str(fine_tunes["b"][1]), "--run", "c", "--parent", "main").returncode == 2
    r = tpde_cli("rm", s, "--run", "b")
    assert r.returncode == 0, r.stderr
    assert tpde.Store(s).runs() == [{"name": "main", "parent": None, "count": 1, "newest": 0}]
    assert tpde_cli("rm", s).returncode == 2
    assert os.path.isdir(s)
