"""What ``tpde stats`` prints and draws from Store.stats(): bytes per
checkpoint, ratio per tensor group, and elements changed per layer, as a
text report and (--plot) a figure.

Both are grouped by file and ordered by name with numbers by value
(layer.2 before layer.10). Layers that read the same, the same name but
for their number and the same figures at every step, are folded into one
row (encoder.layer.0-11, 12 layers): a fine-tune's optimizer holds a state
per parameter, and each changes entirely at every step.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

from ._text import checkpoints, human, plural
from ._text import printable as _p
from .store.stats import _NUMBER, natural_key

#: Steps shown as columns of the text report's change table; --json and
#: --plot have them all.
TEXT_STEPS = 8
#: Lines drawn in the figure's change panel (one colour each, none repeated).
PLOT_LAYERS = 10
#: Tensor groups drawn in the figure's ratio panel (the largest).
PLOT_GROUPS = 24


def _splitter(st: Dict[str, Any]) -> Any:
    """split("file:name") -> ("file", "name"), by the longest of the
    store's file paths the key starts with: a path, and a name, may hold a
    colon."""
    files = sorted(st.get("files") or [], key=len, reverse=True)

    def split(key: str) -> Tuple[str, str]:
        for f in files:
            if key.startswith(f + ":"):
                return f, key[len(f) + 1:]
        file, _, name = key.partition(":")
        return file, name

    return split


class _Row:
    """One row of a table: a name within a file, and its cells."""

    def __init__(self, file: str, name: str, cells: Sequence[Any]) -> None:
        self.file, self.name, self.cells, self.count = file, name, tuple(cells), 1
        self.last = name

    def label(self) -> str:
        if self.count == 1:
            return self.name
        m, last = _NUMBER.search(self.name), _NUMBER.search(self.last)
        assert m is not None and last is not None
        return f"{self.name[:m.start()]}{m.group()}-{last.group()}{self.name[m.end():]} ({self.count} layers)"


def _pattern(name: str) -> Optional[str]:
    """name with its one number as N, or None when it holds none or several."""
    found = _NUMBER.findall(name)
    return _NUMBER.sub("N", name) if len(found) == 1 else None


def fold(rows: List[_Row]) -> List[_Row]:
    """Consecutive rows of one file whose names differ only in their one
    number and whose cells are equal, as one row."""
    out: List[_Row] = []
    for r in rows:
        prev = out[-1] if out else None
        pat = _pattern(r.name)
        if (prev is not None and pat is not None and prev.file == r.file and prev.cells == r.cells
                and _pattern(prev.name) == pat):
            prev.count += 1
            prev.last = r.name
            continue
        out.append(r)
    return out


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def change_rows(st: Dict[str, Any], steps: Sequence[str], cell: Any = _pct) -> List[_Row]:
    """One row per layer (file order, then numbers by value), with
    cell(fraction or None) per step, folded."""
    changed = st["changed"]
    layers: Dict[str, None] = {}
    for s in changed:
        for key in changed[s]:
            layers.setdefault(key, None)
    split = _splitter(st)
    rows = [_Row(*split(key), [cell(changed[s].get(key)) for s in steps])
            for key in sorted(layers, key=natural_key)]
    return fold(rows)


def text(st: Dict[str, Any], reference: str = "previous") -> str:
    """The report tpde stats prints; reference: the store's (what a delta
    is coded against)."""
    lines = [f"{'step':>10}  {'raw':>10}  {'new bytes':>10}  {'files':>5}"]
    for r in st["checkpoints"]:
        lines.append(f"{r['step']:>10}  {human(r['raw_bytes']):>10}  {human(r['new_bytes']):>10}  {r['files']:>5}")
    where = "in the bucket" if st.get("where") == "bucket" else "on disk"
    lines.append(f"total: {human(st['raw_bytes'])} raw, {human(st['disk_bytes'])} {where} "
                 f"({(st['ratio'] or 0):.2f}x)" + (f"; damaged, left out: {checkpoints(list(st['damaged']))}"
                                                  if st.get("damaged") else ""))

    split = _splitter(st)
    groups = [(*split(k), v) for k, v in st["groups"].items()]
    if groups:
        lines += ["", "ratio per tensor group (layer numbers as N; raw over stored bytes, all checkpoints):"]
        width = max(len(_p(name)) for _, name, _ in groups) + 2
        file = None
        for f, name, v in groups:
            if f != file:
                lines.append(f"  {_p(f)}")
                file = f
            ratio = f"{v['ratio']:.2f}x" if v["ratio"] else "-"
            lines.append(f"    {_p(name):<{width}} {plural(v.get('tensors', 0), 'tensor'):>12}  "
                         f"{human(v['raw_bytes']):>10} -> {human(v['stored_bytes']):>10}  {ratio:>8}")

    steps = list(st["changed"])
    if steps:
        shown = steps[-TEXT_STEPS:]
        more = f"; the last {len(shown)} of {len(steps)} steps (--json has all)" if len(shown) < len(steps) else ""
        rows = change_rows(st, shown)
        lines += ["", f"elements changed per layer, each step's checkpoint vs {_against(reference)}{more}:"]
        width = max(len(_p(r.label())) for r in rows) + 2
        cols = [max(len(s), 6) for s in shown]
        lines.append(f"    {'':<{width}} " + "  ".join(f"{s:>{w}}" for s, w in zip(shown, cols)))
        file = None
        for r in rows:
            if r.file != file:
                lines.append(f"  {_p(r.file)}")
                file = r.file
            lines.append(f"    {_p(r.label()):<{width}} " + "  ".join(f"{c:>{w}}" for c, w in zip(r.cells, cols)))
    elif st["checkpoints"]:
        lines += ["", "elements changed per layer: no delta frames yet (a checkpoint is coded against the next "
                      "one added)"]
    return "\n".join(line.rstrip() for line in lines)


# -- the figure ----------------------------------------------------------


def _unit(n: float) -> Tuple[float, str]:
    for scale, name in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if n >= scale:
            return scale, name
    return 1, "bytes"


def _against(reference: str) -> str:
    return "the base" if reference == "base" else "the next checkpoint"


#: Inches per character of the figure's 8-point labels (DejaVu Sans,
#: generously), to make the figure wide enough for its longest ones.
_INCH_PER_CHAR = 0.075


def figure(st: Dict[str, Any], reference: str = "previous") -> Any:
    """The stats figure, a matplotlib Figure: bytes each checkpoint added,
    elements changed per layer, and ratio per tensor group. Sized for its
    content, every label whole and inside it. reference: the store's
    (what a delta is coded against). Raises ImportError without
    matplotlib."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter, MaxNLocator, PercentFormatter

    split = _splitter(st)
    groups = [(k, v) for k, v in st["groups"].items() if v["ratio"]]
    n_groups = len(groups)
    if n_groups > PLOT_GROUPS:  # the largest, still in file and name order
        keep = {k for k, _ in sorted(groups, key=lambda kv: -kv[1]["raw_bytes"])[:PLOT_GROUPS]}
        groups = [(k, v) for k, v in groups if k in keep]
    # One file: named once, in the title; several: each label says which.
    group_files = {split(k)[0] for k, _ in groups}
    group_labels = [_p(split(k)[1] if len(group_files) == 1 else k) for k, _ in groups]

    steps = list(st["changed"])
    rows_c = change_rows(st, steps, cell=lambda x: None if x is None else round(x, 3)) if steps else []
    shown = rows_c[:PLOT_LAYERS]
    layer_files = {r.file for r in shown}
    line_labels = [_p(r.label() if len(layer_files) == 1 else f"{r.file}:{r.label()}") for r in shown]

    longest_group = max([len(t) for t in group_labels] + [0])
    longest_line = max([len(t) for t in line_labels] + [0])
    width = max(13.0, 6.0 + _INCH_PER_CHAR * longest_group, 9.5 + _INCH_PER_CHAR * longest_line)
    bottom_h = 1.4 + 0.25 * max(len(groups), 3)
    # A Figure of its own, drawn by Agg: no pyplot state, no GUI backend.
    fig = Figure(figsize=(width, 4.6 + bottom_h), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subfigures(2, 1, height_ratios=[4.6, bottom_h])
    ax_new, ax_chg = top.subplots(1, 2, width_ratios=[1, 1.4])

    # Bytes each checkpoint added to the store.
    rows = st["checkpoints"]
    scale, unit = _unit(max([r["new_bytes"] for r in rows] or [0]))
    xs = list(range(len(rows)))
    ax_new.bar(xs, [r["new_bytes"] / scale for r in rows], color="tab:blue")
    ax_new.set_title("bytes each checkpoint added")
    ax_new.set_ylabel(unit)
    ax_new.set_xlabel("step")
    every = max(1, -(-len(rows) // 8))
    slant = len(rows) > 5
    ax_new.set_xticks(xs[::every], [str(r["step"]) for r in rows][::every], rotation=40 if slant else 0,
                      ha="right" if slant else "center", rotation_mode="anchor" if slant else "default")

    # Elements changed per layer, folded as in the text, one colour each.
    # Lines that coincide (every layer of a fine-tune changes wholly) stay
    # visible: each is drawn thinner, with smaller markers, than the one
    # before it.
    ax_chg.set_title(f"elements changed per layer, vs {_against(reference)}")
    ax_chg.set_xlabel("step")
    ax_chg.set_ylim(-0.04, 1.04)
    ax_chg.yaxis.set_major_formatter(PercentFormatter(1.0))
    if shown:
        colours = matplotlib.colormaps["tab10"].colors
        markers = "osD^v<>ph*"
        x = [int(s) for s in steps]
        for i, (r, label) in enumerate(zip(shown, line_labels)):
            pts = [(xi, c) for xi, c in zip(x, r.cells) if c is not None]
            ax_chg.plot([p[0] for p in pts], [p[1] for p in pts], color=colours[i], marker=markers[i],
                        markersize=10 - 0.5 * i, linewidth=2.6 - 0.15 * i, label=label)
        if len(x) <= 8:
            ax_chg.set_xticks(x, [str(v) for v in x])
        else:
            ax_chg.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=6))
            if max(x) >= 10000:  # 20k, not 20000 run into its neighbours
                ax_chg.xaxis.set_major_formatter(EngFormatter(sep=""))
        span = (max(x) - min(x)) or 1
        ax_chg.set_xlim(min(x) - 0.06 * span, max(x) + 0.06 * span)
        title = _p(next(iter(layer_files))) if len(layer_files) == 1 else "layer"
        if len(rows_c) > len(shown):
            title += f"\nthe first {len(shown)} of {len(rows_c)} (--json: all)"
        ax_chg.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, title=title, title_fontsize=8,
                      frameon=False, borderaxespad=0, alignment="left")
    else:
        ax_chg.text(0.5, 0.5, "no delta frames yet", transform=ax_chg.transAxes, ha="center", va="center")

    # Ratio per tensor group, full names, in file and name order, top down.
    # Its title is the subfigure's: long names narrow the axes, and a title
    # centred over them would run off the figure.
    ax_grp = bottom.subplots()
    title = "ratio per tensor group (raw / stored bytes; layer numbers as N)"
    if len(group_files) == 1:
        title += f" of {_p(next(iter(group_files)))}"
    if n_groups > len(groups):
        title += f": the {len(groups)} largest of {n_groups}"
    bottom.suptitle(title)
    if groups:
        ys = list(range(len(groups)))[::-1]
        ratios = [v["ratio"] for _, v in groups]
        bars = ax_grp.barh(ys, ratios, color="tab:green")
        ax_grp.set_yticks(ys, group_labels, fontsize=8)
        ax_grp.bar_label(bars, [f"{r:.2f}x" for r in ratios], padding=3, fontsize=8)
        ax_grp.set_xlim(0, max(ratios) * 1.12)
        ax_grp.set_ylim(-0.6, len(groups) - 0.4)
    else:
        ax_grp.set_yticks([])
    ax_grp.set_xlabel("ratio")
    return fig


def plot(st: Dict[str, Any], path: str, reference: str = "previous") -> None:
    """Write the stats figure to path (a PNG, or any format matplotlib
    infers from its suffix)."""
    figure(st, reference).savefig(path, dpi=100)


__all__: List[str] = ["text", "figure", "plot", "fold", "change_rows"]
