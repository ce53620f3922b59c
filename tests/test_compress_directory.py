"""The design document's §9.2 TPDECheckpointCompressor().compress_directory(output_dir), on the store."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import tpde


def _checkpoint(root: Path, step: int, w: torch.Tensor) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir()
    save_file({"w": w}, d / "model.safetensors")
    (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}')
    return d


def test_each_call_adds_the_checkpoints_the_store_lacks(tmp_path: Path) -> None:
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "out"
    out.mkdir()
    srcs = {10: _checkpoint(out, 10, w.clone())}
    infos = tpde.TPDECheckpointCompressor().compress_directory(out)
    assert [i.step for i in infos] == [10]
    w[0] += 1
    srcs[20] = _checkpoint(out, 20, w.clone())
    srcs[30] = _checkpoint(out, 30, w + 1)
    infos = tpde.TPDECheckpointCompressor().compress_directory(out)
    assert [i.step for i in infos] == [20, 30]
    assert tpde.TPDECheckpointCompressor().compress_directory(out) == []
    with tpde.Store(out / "tpde-store") as st:
        assert st.steps() == [10, 20, 30]
        for step, src in srcs.items():
            dest = tmp_path / f"r{step}"
            st.restore(step, dest)
            for f in src.iterdir():
                assert (dest / f.name).read_bytes() == f.read_bytes()


def test_a_folder_without_checkpoints_needs_a_store_outside_it(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.TPDECheckpointCompressor().compress_directory(tmp_path)
    infos = tpde.TPDECheckpointCompressor().compress_directory(tmp_path, store=tmp_path.parent / "elsewhere.tpde")
    assert [f.path for f in infos[0].files] == ["a.txt"]
