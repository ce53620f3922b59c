"""Every code block of README.md and docs/*.md runs as written, so none can rot.

Each fenced ```python block runs in a fresh interpreter (this venv's), each
```sh block in a fresh bash (-e -o pipefail, with `tpde` and `python` on
PATH as an installed package puts them), each in a new empty folder of its
own: a block holds every line it needs, as a reader who copies it has
nothing else. A block that cannot run here carries, on the line before its
fence, `<!-- not run: WHY -->`; NOT_RUN below lists every such block and
why, so one cannot be added unnoticed. Fenced blocks without a language
(diagrams, byte layouts) and ```json / ```text are not code.

The longer programs of docs/examples/ run in tests/test_examples.py, the
design document's examples in tests/test_seed_examples.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNERS = {"python": "python", "sh": "sh", "bash": "sh"}
NOT_CODE = {"", "json", "text"}

# (file, the reason its marker gives): every block that is not run.
NOT_RUN = [
    ("README.md", "./build.sh test runs this file's blocks, and the demo takes minutes: run it by hand"),
    ("README.md", "installs into the current environment; tests/test_build.py builds the wheel and installs "
                  "it, and an editable install, in fresh venvs"),
    ("README.md", "it needs a bucket and its credentials; tests/test_store_s3.py makes these calls against a real "
                  "S3 server"),
]

_FENCE = re.compile(r"^(?P<indent> *)```(?P<lang>[A-Za-z0-9_+-]*)[ \t]*$")
_NOT_RUN = re.compile(r"^<!-- not run: (?P<why>.+?) -->$")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    not_run: Optional[str]

    @property
    def id(self) -> str:
        return f"{self.path.name}:{self.line}"


def blocks_of(path: Path) -> List[Block]:
    """The fenced blocks of a markdown file, with the not-run reason on the
    line before each (if any)."""
    lines = path.read_text().splitlines()
    out: List[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, start = len(m.group("indent")), i
        body: List[str] = []
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{path.name}:{start + 1}: a code block that is never closed")
        prev = lines[start - 1].strip() if start > 0 else ""
        mark = _NOT_RUN.match(prev)
        out.append(Block(path, start + 1, m.group("lang"), "\n".join(body) + "\n", mark and mark.group("why")))
        i += 1
    return out


ALL = [b for p in FILES for b in blocks_of(p)]
CODE = [b for b in ALL if b.lang not in NOT_CODE]


def test_every_block_is_code_we_run_or_marked_as_not_run() -> None:
    unknown = [f"{b.id} ```{b.lang}" for b in CODE if b.lang not in RUNNERS]
    assert not unknown, f"blocks in a language this test cannot run: {unknown}"
    # A snippet fenced without a language would slip past: code must say what it is.
    untyped = [b.id for b in ALL if b.lang == "" and re.search(r"^(import |from \S+ import |tpde |\$ )", b.code, re.M)]
    assert not untyped, f"code fenced without a language (```python, ```sh): {untyped}"
    assert [(b.path.name, b.not_run) for b in CODE if b.not_run] == NOT_RUN
    marks = [b.id for b in ALL if b.not_run and b.lang in NOT_CODE]
    assert not marks, f"a not-run mark on a block that is not code: {marks}"


def test_the_readme_has_no_indented_code() -> None:
    # An indented (unfenced) block is code this test would never run.
    lines = (ROOT / "README.md").read_text().splitlines()
    fenced, found = False, []
    for n, line in enumerate(lines):
        if _FENCE.match(line) or (fenced and line.strip() == "```"):
            fenced = not fenced
            continue
        if not fenced and line.startswith("    ") and line.strip() and n > 0 and not lines[n - 1].strip():
            found.append(f"README.md:{n + 1}: {line.strip()[:60]}")
    assert not found, f"indented code blocks (fence them, ```sh or ```python): {found}"


# tpde.X.Y as the text names it; not a file (tpde.h) or a format tag (tpde.store/1).
_NAME = re.compile(r"(?<![\w./-])tpde(?:\.[A-Za-z_]\w*)+(?![\w/])")


def test_every_tpde_name_the_docs_mention_resolves_after_import_tpde(run_py) -> None:
    names = sorted({m.group() for p in FILES for m in _NAME.finditer(p.read_text())})
    assert "tpde.integrations.deepspeed.initialize" in names and "tpde.Store" in names, names
    code = ("import functools, tpde\n"
            f"for name in {names!r}:\n"
            "    functools.reduce(getattr, name.split('.')[1:], tpde)\n"
            "print('ok')\n")
    proc = run_py("-c", code, timeout=600)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_a_failing_block_fails(tmp_path: Path) -> None:
    # The runner below reports a block's failure (and would not pass a block
    # that never ran): the check of the checker.
    with pytest.raises(AssertionError, match="exited 1"):
        _run(Block(tmp_path / "x.md", 1, "python", "raise SystemExit(1)\n", None), tmp_path / "py")
    with pytest.raises(AssertionError, match="exited 1"):
        _run(Block(tmp_path / "x.md", 1, "sh", "true\nfalse\necho not reached\n", None), tmp_path / "sh")


def _run(block: Block, work: Path) -> subprocess.CompletedProcess:
    work.mkdir(parents=True)
    bin_dir = work.parent / f"{work.name}-bin"
    bin_dir.mkdir()
    # `tpde` as `pip install` makes it (the console script runs tpde.cli:main,
    # as python -m tpde does); `python` is this interpreter, venv included.
    (bin_dir / "tpde").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m tpde "$@"\n')
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT / "python"), os.environ.get("PYTHONPATH")) if p),
               MPLBACKEND="Agg")
    if RUNNERS[block.lang] == "python":
        (work / "block.py").write_text(block.code)
        cmd = [sys.executable, "block.py"]
    else:
        (work / "block.sh").write_text(block.code)
        cmd = ["bash", "-e", "-o", "pipefail", "block.sh"]
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (f"{block.id} (```{block.lang}) exited {proc.returncode}:\n{block.code}\n"
                                  f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}")
    return proc


@pytest.mark.parametrize("block", [b for b in CODE if not b.not_run], ids=lambda b: b.id)
def test_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    _run(block, tmp_path / "work")
