"""One step grammar for the Python API and the command line: a number,
"latest", or the step a checkpoint-N / step-N folder's name gives; anything
else refused, naming what was given, before it reaches the library."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

import tpde
from tpde._steps import MAX_STEP, check_step, step_from_name
from tpde.errors import InvalidArgumentError


@pytest.fixture
def tpde_cli(py_env):
    def run(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tpde", *map(str, args)], env=py_env, capture_output=True,
                              text=True, timeout=300)

    return run


def _folder(root: Path, name: str) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "note.txt").write_text(f"I am {name}\n")
    return d


# Added in this order without a step, by Python and by `tpde add`.
NAMES_AND_STEPS = [
    ("checkpoint-10", 10),   # a Trainer's
    ("step-20", 20),         # torch.distributed.checkpoint's, torchtitan's
    ("final", 21),           # no number: the newest + 1
    ("run-3", 22),           # a number that is not a step
    ("checkpoint_30", 30),
    ("40", 40),              # a bare step (Orbax's folders)
    ("model-v2", 41),
    ("step-0050", 50),
]


def test_python_and_the_cli_read_the_same_step_from_a_folder_name(tmp_path: Path, tpde_cli) -> None:
    folders = [_folder(tmp_path / "src", name) for name, _ in NAMES_AND_STEPS]
    with tpde.Store(tmp_path / "py") as st:
        py_steps = [st.add(f).step for f in folders]
    cli_steps = []
    for f in folders:
        p = tpde_cli("add", tmp_path / "cli", f, "-q", "--json")
        assert p.returncode == 0, p.stderr
        cli_steps.append(json.loads(p.stdout)[0]["step"])
    assert py_steps == cli_steps == [s for _, s in NAMES_AND_STEPS]
    # A trailing slash, a Path, and bytes name the same folder.
    with tpde.Store(tmp_path / "py2") as st:
        assert st.add(str(folders[0]) + "/").step == 10
        assert st.add(folders[1]).step == 20
        assert st.add(bytes(folders[4])).step == 30


def test_step_given_wins_over_the_name_and_a_file_name_gives_none(tmp_path: Path) -> None:
    src = _folder(tmp_path, "checkpoint-10")
    f = tmp_path / "checkpoint-500"  # a file: its digits are not read
    f.write_text("a file")
    with tpde.Store(tmp_path / "s") as st:
        assert st.add(src, step=3).step == 3
        assert st.add(f).step == 4
        assert st.add(src).step == 10
        # The name's step must come after the newest, as --step must.
        with pytest.raises(InvalidArgumentError, match="after"):
            st.add(src)
        assert st.steps() == [3, 4, 10]


def test_a_folder_name_whose_step_is_out_of_range_is_refused(tmp_path: Path, tpde_cli) -> None:
    src = _folder(tmp_path, "checkpoint-99999999999999999999")
    with tpde.Store(tmp_path / "s") as st:
        with pytest.raises(InvalidArgumentError, match="out of range"):
            st.add(src)
        assert st.add(src, step=1).step == 1
        assert st.steps() == [1]
    p = tpde_cli("add", tmp_path / "c", src)
    assert p.returncode == 2 and "out of range" in p.stderr, p.stderr


def test_compress_directory_reads_steps_as_add_does(tmp_path: Path) -> None:
    out = tmp_path / "out"
    for name in ("checkpoint-5", "checkpoint-12", "step-7", "checkpoint-x"):
        _folder(out, name)
    added = tpde.TPDECheckpointCompressor().compress_directory(out)
    assert [i.step for i in added] == [5, 12]


@pytest.mark.parametrize("given,want", [
    (0, 0), ("0", 0), (10, 10), ("10", 10), ("007", 7), (MAX_STEP, MAX_STEP), (str(MAX_STEP), MAX_STEP),
    ("latest", None), (None, None),
])
def test_the_grammar_takes_a_number_or_latest(given, want) -> None:
    assert check_step(given) == want


@pytest.mark.parametrize("given,needle", [
    (-1, "out of range"), ("-1", "out of range"), (MAX_STEP + 1, "out of range"),
    (str(MAX_STEP + 1), "out of range"), (str(2**64 + 10), "out of range"), ("9" * 5000, "out of range"),
    ("ten", "invalid step"), ("1e3", "invalid step"), (" 10", "invalid step"), ("+10", "invalid step"),
    ("1_000", "invalid step"), ("\uff11\uff10", "invalid step"), ("\u00b2", "invalid step"), ("", "invalid step"),
    ("Latest", "invalid step"), (True, "invalid step"), (1.0, "invalid step"), (b"10", "invalid step"),
])
def test_the_grammar_refuses_everything_else_naming_it(given, needle) -> None:
    with pytest.raises(InvalidArgumentError, match=needle):
        check_step(given)


def test_latest_only_where_an_existing_checkpoint_is_meant() -> None:
    for given in ("latest", None):
        with pytest.raises(InvalidArgumentError, match="invalid step"):
            check_step(given, latest=False)


def test_step_from_name_reads_folders_only(tmp_path: Path) -> None:
    assert step_from_name(_folder(tmp_path, "checkpoint-8")) == 8
    assert step_from_name(tmp_path / "checkpoint-9") is None  # missing
    assert step_from_name({"a": 1}) is None  # a state dict
    (tmp_path / "step-3").write_text("a file")
    assert step_from_name(tmp_path / "step-3") is None


def _store_of(tmp_path: Path, steps: List[int]) -> Path:
    store = tmp_path / "s"
    with tpde.Store(store) as st:
        for s in steps:
            st.add(_folder(tmp_path / "src", f"c{s}"), step=s)
    return store


def test_latest_and_decimal_text_in_every_command(tmp_path: Path, tpde_cli) -> None:
    store = _store_of(tmp_path, [10, 20, 30])
    p = tpde_cli("info", store, "latest", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["step"] == 30, p.stderr
    p = tpde_cli("restore", store, "latest", tmp_path / "r", "-q")
    assert p.returncode == 0 and (tmp_path / "r" / "note.txt").read_text() == "I am c30\n", p.stderr
    p = tpde_cli("rm", store, "latest")
    assert p.returncode == 0, p.stderr
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20]
        # Python takes what the command line takes.
        assert st.info("20").step == 20
        st.remove("latest")
        assert st.steps() == [10]


@pytest.mark.parametrize("args,needle", [
    (["rm", "{store}", "-1"], "out of range"),
    (["rm", "{store}", "ten"], "invalid step"),
    (["rm", "{store}", "\u00b2"], "invalid step"),
    (["restore", "{store}", "1.5", "{tmp}/r"], "invalid step"),
    (["info", "{store}", "+10"], "invalid step"),
    (["add", "{store}", "{src}", "--step", "latest"], "invalid step"),
    (["add", "{store}", "{src}", "--run", "b", "--parent", "main:\u00b2"], "invalid parent step"),
    (["add", "{store}", "{src}", "--run", "b", "--parent", "main:latest"], "invalid parent step"),
    (["add", "{store}", "{src}", "--run", "b", "--parent", "main:-1"], "out of range"),
])
def test_the_cli_refuses_bad_steps_in_one_line(tmp_path: Path, tpde_cli, args: List[str], needle: str) -> None:
    store = _store_of(tmp_path, [10])
    src = _folder(tmp_path, "more")
    p = tpde_cli(*[a.format(store=store, tmp=tmp_path, src=src) for a in args])
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpde: error: ") and needle in lines[0], p.stderr
