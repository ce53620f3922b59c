"""README.md's measured figures are the rendering of the committed bench results.

The blocks between `<!-- bench:begin -->` / `<!-- bench:end -->` and
`<!-- series:begin -->` / `<!-- series:end -->` (and any such block in
docs/*.md) must equal what bench/render.py renders from bench/results/run.json
and bench/results/series.json. A figure edited by hand, or results
regenerated without rendering, fails here. To fix: `python bench/render.py`
(or regenerate first: `./build.sh bench`, `./build.sh series`,
`./build.sh render`). Nothing here measures or times anything.

TPDE_FIGURES_README=PATH checks another copy of the README (to see this test
fail on a hand-edited scratch copy).
"""

from __future__ import annotations

import collections
import difflib
import importlib.util
import os
import re
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = Path(os.environ.get("TPDE_FIGURES_README", ROOT / "README.md"))
NUMBER = re.compile(r"\d[\d,]*(?:\.\d+)?")


def _load_render():
    spec = importlib.util.spec_from_file_location("tpde_bench_render", ROOT / "bench" / "render.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


render = _load_render()


@pytest.fixture(scope="module")
def blocks():
    return render.render_blocks(render.RESULTS)


def _files() -> List[Path]:
    docs = [p for p in sorted((ROOT / "docs").glob("*.md")) if render.block_contents(p.read_text())]
    return [README, *docs]


def _numbers(text: str) -> collections.Counter:
    return collections.Counter(NUMBER.findall(text))


def test_readme_has_both_blocks():
    found = render.block_contents(README.read_text())
    assert {"bench", "series"} <= found.keys(), f"{README}: marked blocks found: {sorted(found)}"


def test_results_are_committed_full_runs():
    data = render.load_results(render.RESULTS)
    for name in ("run", "series"):
        d = data[name]
        assert d is not None, f"bench/results/{name}.json is missing"
        assert not d["quick"], f"bench/results/{name}.json is from a --quick run"
        assert d.get("date") and d.get("machine") and d.get("versions"), f"{name}.json lacks its provenance"
        assert all("key" in t for t in d["targets"]), f"{name}.json: targets without keys (an older script)"


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_blocks_equal_their_rendering(path: Path, blocks):
    text = path.read_text()
    want = render.render_text(text, blocks, str(path))
    if text != want:
        diff = "".join(difflib.unified_diff(text.splitlines(True), want.splitlines(True), f"{path.name} (as is)",
                                            f"{path.name} (rendered from bench/results)"))
        pytest.fail(f"{path} differs from the rendering of bench/results/*.json; run python bench/render.py "
                    f"(never edit the figures by hand)\n{diff}")


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.name)
def test_every_figure_in_a_block_is_rendered(path: Path, blocks):
    """Every number-looking token in a block occurs (as often) in what the JSON renders."""
    extra: Dict[str, List[str]] = {}
    for name, content in render.block_contents(path.read_text()).items():
        if name not in blocks:
            continue
        have, want = _numbers(content), _numbers(blocks[name]())
        bad = sorted((have - want).elements())
        if bad:
            extra[name] = bad
    assert not extra, f"{path}: figures not in the rendering of bench/results/*.json: {extra}"


def test_a_hand_edited_figure_is_caught(blocks):
    """The checks above fail on a copy with one figure changed by hand."""
    text = README.read_text()
    content = render.block_contents(text)["bench"]
    m = next(m for m in NUMBER.finditer(content) if "." in m.group())  # a ratio such as 1.2213
    fig = m.group()
    edited_fig = fig[:-1] + str((int(fig[-1]) + 1) % 10)
    edited_block = content[:m.start()] + edited_fig + content[m.end():]
    edited = text.replace(content, edited_block, 1)
    assert edited != text
    assert render.render_text(edited, blocks) != edited
    have, want = _numbers(edited_block), _numbers(blocks["bench"]())
    assert edited_fig in (have - want)


def test_render_is_idempotent(blocks):
    text = README.read_text()
    once = render.render_text(text, blocks)
    assert render.render_text(once, blocks) == once


def test_the_venv_size_is_of_the_venv_the_lock_file_makes():
    """bench/results/venv.json (the README's venv size) was measured on the
    venv of today's .ci/requirements.lock; a changed lock needs
    ./build.sh venv-size (then ./build.sh render)."""
    import hashlib
    import json

    v = json.loads((ROOT / "bench" / "results" / "venv.json").read_text())
    lock = hashlib.sha256((ROOT / ".ci" / "requirements.lock").read_bytes()).hexdigest()[:16]
    assert v["lock_sha256_16"] == lock, (f"bench/results/venv.json is of the lock file {v['lock_sha256_16']}, not "
                                         f"today's {lock}: run ./build.sh venv-size, then ./build.sh render")
    assert v["venv_disk_bytes"] > v["torch_disk_bytes"] + v["nvidia_disk_bytes"] > 0
