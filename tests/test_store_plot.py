"""`tpde stats STORE --plot FILE.png` draws the store's figures with matplotlib."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file


def test_stats_plot_writes_a_png(tmp_path: Path, run_py) -> None:
    g = torch.Generator().manual_seed(0)
    w = {"encoder.layer.0.weight": torch.randn(256, 256, generator=g),
         "encoder.layer.1.weight": torch.randn(256, 256, generator=g)}
    for step in (10, 20, 30):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        w["encoder.layer.0.weight"][: step // 10] += 1e-3
        save_file(w, d / "model.safetensors")
    store = tmp_path / "run.tpde"
    r = run_py("-m", "tpde", "add", str(store), *(str(tmp_path / f"checkpoint-{s}") for s in (10, 20, 30)),
               "--quiet")
    assert r.returncode == 0, r.stderr
    png = tmp_path / "stats.png"
    r = run_py("-m", "tpde", "stats", str(store), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # three drawn panels, not an empty canvas
    assert "ratio per tensor group" in r.stdout
