"""Every runnable example in docs/examples/ runs and checks itself, so none
can rot; and every integration has one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.py"))
INTEGRATIONS = sorted(p.stem for p in (ROOT / "python" / "tpde" / "integrations").glob("*.py") if p.stem != "__init__")


def test_every_integration_has_an_example() -> None:
    assert INTEGRATIONS, "no integration modules found"
    for name in INTEGRATIONS:
        users = [p.name for p in EXAMPLES
                 if re.search(rf"\btpde\.integrations\.{name}\b|\btpde\.{name}\b|from tpde\.integrations import {name}\b",
                              p.read_text())]
        assert users, f"no docs/examples/*.py uses tpde.integrations.{name}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_runs_and_checks_itself(example: Path, run_py, tmp_path: Path) -> None:
    # From another cwd, as a user would run it; the examples assert their
    # own results and exit nonzero on any mismatch.
    proc = run_py(str(example), "--workdir", str(tmp_path / "work"), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, f"{example.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.stdout.strip(), f"{example.name} printed no summary"
