"""`tpde stats STORE --plot FILE.png` draws the store's figures with
matplotlib, legibly at its default size: every text whole and inside the
figure, titles apart, the legend off the data, no colour twice, the change
axis from 0 to 100%."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from safetensors.torch import save_file

matplotlib = pytest.importorskip("matplotlib")

from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from tpde import _cli_stats  # noqa: E402


def _store_stats(tmp_path: Path, run_py) -> Dict[str, Any]:
    """stats --json of a store of 4 checkpoints of a 14-block model whose
    block i changes i/13 of its elements per step (blocks 10-13 frozen),
    and the PNG the CLI drew of it."""
    g = torch.Generator().manual_seed(0)
    w = {f"model.encoder.blocks.{i}.{p}.weight": torch.randn(48, 48, generator=g)
         for i in range(14) for p in ("attention.query", "attention.key", "mlp.up_projection")}
    w["embed.weight"] = torch.randn(300, 48, generator=g)
    for step in (100, 200, 300, 400):
        for i in range(10):
            for p in ("attention.query", "attention.key", "mlp.up_projection"):
                t = w[f"model.encoder.blocks.{i}.{p}.weight"].view(-1)
                t[: t.numel() * i // 13] += 1e-3
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        save_file(w, d / "model.safetensors")
    store = tmp_path / "run.tpde"
    r = run_py("-m", "tpde", "add", str(store), *(str(tmp_path / f"checkpoint-{s}") for s in (100, 200, 300, 400)),
               "--quiet")
    assert r.returncode == 0, r.stderr
    png = tmp_path / "stats.png"
    r = run_py("-m", "tpde", "stats", str(store), "--plot", str(png))
    assert r.returncode == 0, r.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ratio per tensor group" in r.stdout and "elements changed per layer" in r.stdout
    r = run_py("-m", "tpde", "stats", str(store), "--json")
    return json.loads(r.stdout)


def _extreme_stats() -> Dict[str, Any]:
    """Stats no real store is kind enough to give: names of 90 characters,
    40 groups, 30 layers that all differ, 60 steps."""
    steps = [1000 * (k + 1) for k in range(61)]
    long = "model.decoder.transformer_blocks.{}.self_attention_with_rotary_position_embeddings.projection"
    groups = {f"model-00001-of-00002.safetensors:{long.format('N')}_{j}.weight":
              {"raw_bytes": (j + 1) << 20, "stored_bytes": (j + 1) << 19, "tensors": 30, "ratio": 2.0 - j / 40}
              for j in range(40)}
    changed = {str(s): {**{f"model-00001-of-00002.safetensors:{long.format(i).rsplit('.', 1)[0]}":
                           min(1.0, i / 30 + k / 200) for i in range(30)},
                        "optimizer.pt:state/0": 1.0}
               for k, s in enumerate(steps[:-1])}
    return {"checkpoints": [{"step": s, "raw_bytes": 3 << 30, "new_bytes": (1 << 30) // (1 + k % 7), "files": 6,
                             "max_chain": 1} for k, s in enumerate(steps)],
            "raw_bytes": 61 * (3 << 30), "stored_bytes": 10 << 30, "disk_bytes": 10 << 30, "ratio": 18.3,
            "files": ["model-00001-of-00002.safetensors", "optimizer.pt"], "groups": groups, "changed": changed, "damaged": {}}


def _texts(fig: Figure) -> List[Text]:
    """Every text the figure draws: a tick label only where its tick lies
    within its axis's view (matplotlib keeps, and does not draw, others)."""
    ticks, drawn = set(), []
    for ax in fig.get_axes():
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in (*axis.get_major_ticks(), *axis.get_minor_ticks()):
                for label in (tick.label1, tick.label2):
                    ticks.add(id(label))
                    if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9:
                        drawn.append(label)
    drawn += [t for t in fig.findobj(Text) if id(t) not in ticks]
    return [t for t in drawn if t.get_visible() and t.get_text().strip()]


def _group_axes(fig: Figure) -> Any:
    """The ratio-per-group panel: the bottom subfigure's one axes."""
    (ax,) = fig.subfigs[1].get_axes()
    return ax


def _group_title(fig: Figure) -> Text:
    title = fig.subfigs[1]._suptitle
    assert title is not None and title.get_text().startswith("ratio per tensor group")
    return title


def _check_legible(fig: Figure) -> None:
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    for t in _texts(fig):
        e = t.get_window_extent(renderer)
        assert (e.x0 >= box.x0 - 1 and e.y0 >= box.y0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1), \
            f"{t.get_text()!r} at {e} is cut by the figure {box}"
    axes = fig.get_axes()
    # Titles apart from each other and from every other panel.
    titles = [(ax.title, ax) for ax in axes if ax.get_title()] + [(_group_title(fig), _group_axes(fig))]
    for i, (t, own) in enumerate(titles):
        a = t.get_window_extent(renderer)
        for u, _ in titles[i + 1:]:
            assert not a.overlaps(u.get_window_extent(renderer)), (t.get_text(), u.get_text())
        for other in axes:
            if other is not own:
                assert not a.overlaps(other.get_window_extent(renderer)), t.get_text()
    # Step labels apart.
    for ax in axes:
        shown = [t.get_window_extent(renderer) for t in _texts(fig) if t in ax.get_xticklabels()]
        shown.sort(key=lambda e: e.x0)
        for a, b in zip(shown, shown[1:]):
            assert a.x1 <= b.x0 + 0.5, "step labels overlap"
    ax_grp = _group_axes(fig)
    labels = [t for t in ax_grp.get_yticklabels() if t.get_text()]
    extents = sorted((t.get_window_extent(renderer) for t in labels), key=lambda e: e.y0)
    for a, b in zip(extents, extents[1:]):
        assert a.y1 <= b.y0 + 0.5, "group labels overlap"
    ax_chg = next(ax for ax in axes if ax.get_title().startswith("elements changed per layer"))
    lines = [ln for ln in ax_chg.get_lines() if ln.get_label() and not ln.get_label().startswith("_")]
    if lines:
        assert ax_chg.get_ylim()[0] <= 0 and ax_chg.get_ylim()[1] >= 1, "the change axis shows 0 to 100%"
        colours = [matplotlib.colors.to_hex(ln.get_color()) for ln in lines]
        assert len(set(colours)) == len(colours), "a colour used twice"
        legend = ax_chg.get_legend()
        assert legend is not None
        lb = legend.get_window_extent(renderer)
        assert not lb.overlaps(ax_chg.get_window_extent(renderer)), "the legend covers the data"
        for ln in lines:
            assert not lb.overlaps(ln.get_window_extent(renderer)), ln.get_label()
        assert [t.get_text() for t in legend.get_texts()] == [ln.get_label() for ln in lines]


def test_stats_plot_of_a_store_is_legible(tmp_path: Path, run_py) -> None:
    st = _store_stats(tmp_path, run_py)
    fig = _cli_stats.figure(st)
    _check_legible(fig)
    axes = {ax.get_title(): ax for ax in fig.get_axes()}
    ax_grp = _group_axes(fig)
    # Full names, top down in file and name order; the one file in the title.
    assert [t.get_text() for t in ax_grp.get_yticklabels()] == [g.split(":", 1)[1] for g in st["groups"]]
    assert _group_title(fig).get_text().endswith(" of model.safetensors")
    ax_chg = next(ax for t, ax in axes.items() if t.startswith("elements changed per layer"))
    labels = [ln.get_label() for ln in ax_chg.get_lines()]
    assert labels == ["embed", *(f"model.encoder.blocks.{i}" for i in range(9))]  # numbers by value
    assert ax_chg.get_legend().get_title().get_text() == "model.safetensors\nthe first 10 of 12 (--json: all)"
    ax_new = next(ax for t, ax in axes.items() if t.startswith("bytes each checkpoint added"))
    assert [t.get_text() for t in ax_new.get_xticklabels()] == ["100", "200", "300", "400"]


def test_stats_plot_stays_legible_with_long_names_and_many_rows() -> None:
    st = _extreme_stats()
    fig = _cli_stats.figure(st)
    _check_legible(fig)
    assert f"the {_cli_stats.PLOT_GROUPS} largest of 40" in _group_title(fig).get_text()
    assert len(_group_axes(fig).get_yticklabels()) == _cli_stats.PLOT_GROUPS
    ax_chg = next(ax for ax in fig.get_axes() if ax.get_title().startswith("elements changed per layer"))
    assert len(ax_chg.get_lines()) == _cli_stats.PLOT_LAYERS
    assert ax_chg.get_legend().get_title().get_text() == (
        f"model-00001-of-00002.safetensors\nthe first {_cli_stats.PLOT_LAYERS} of 31 (--json: all)")
