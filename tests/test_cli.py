"""The tpde command, run as `python -m tpde` in a subprocess."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, List

import pytest

import tpde
from tpde import cli


@pytest.fixture
def tpde_cmd(run_py):
    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return run_py("-m", "tpde", *args, cwd=cwd)

    return run


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("tpde: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def test_compress_decompress_info(tmp_path: Path, tpde_cmd, make_safetensors, file_sha256) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    p = tpde_cmd("compress", str(src), "-o", str(tmp_path / "m.tpde"), "--threads", "2")
    assert p.returncode == 0, p.stderr
    assert p.stderr == "" and "m.tpde" in p.stdout and "ratio" in p.stdout
    p = tpde_cmd("decompress", str(tmp_path / "m.tpde"), "-o", str(tmp_path / "back.safetensors"), "--quiet")
    assert p.returncode == 0, p.stderr
    assert p.stdout == p.stderr == ""
    assert file_sha256(tmp_path / "back.safetensors") == file_sha256(src)

    p = tpde_cmd("info", str(tmp_path / "m.tpde"))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "safetensors" in out and "ratio" in out
    for name, dtype, shape in [("layer.weight_bf16", "BF16", "64x48"), ("ids", "I64", "10x100"),
                               ("scalar", "F32", "scalar"), ("safetensors header", "-", "-")]:
        (row,) = [line for line in out.splitlines() if line.startswith(name + " ")]
        assert re.split(r"\s{2,}", row)[1:3] == [dtype, shape], row
    p = tpde_cmd("info", str(tmp_path / "m.tpde"), "--json")
    assert p.returncode == 0
    assert json.loads(p.stdout) == tpde.file_info(tmp_path / "m.tpde")


def test_default_output_names(tmp_path: Path, tpde_cmd) -> None:
    data = os.urandom(5000)
    (tmp_path / "a.bin").write_bytes(data)
    assert tpde_cmd("compress", "a.bin", "-q", cwd=tmp_path).returncode == 0
    assert (tmp_path / "a.bin.tpde").is_file()
    os.rename(tmp_path / "a.bin", tmp_path / "orig.bin")
    assert tpde_cmd("decompress", "a.bin.tpde", "-q", cwd=tmp_path).returncode == 0
    assert (tmp_path / "a.bin").read_bytes() == data


@pytest.mark.parametrize("command", ["decompress", "info"])
def test_corrupt_input_exits_1(tmp_path: Path, tpde_cmd, make_safetensors, command: str) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    blob = bytearray(Path(tpde.compress_file(src)).read_bytes())
    blob[len(blob) // 2] ^= 0x40
    bad = tmp_path / "bad.tpde"
    bad.write_bytes(bytes(blob))
    p = tpde_cmd(command, str(bad))
    assert p.returncode == 1
    line = _one_error_line(p)
    assert "bad.tpde" in line and "corrupt" in line
    assert not (tmp_path / "bad").exists()


def test_unsupported_and_non_tpde_input_exit_1(tmp_path: Path, tpde_cmd) -> None:
    frame = bytearray(tpde.compress_tensor(__import__("numpy").zeros(10)))
    frame[4] = 9
    (tmp_path / "future.tpde").write_bytes(bytes(frame))
    p = tpde_cmd("info", str(tmp_path / "future.tpde"))
    assert p.returncode == 1 and "unsupported" in _one_error_line(p)
    (tmp_path / "plain.tpde").write_bytes(b"hello world, not compressed at all")
    p = tpde_cmd("decompress", str(tmp_path / "plain.tpde"))
    assert p.returncode == 1
    _one_error_line(p)


def test_io_error_exits_1(tmp_path: Path, tpde_cmd) -> None:
    (tmp_path / "a").write_bytes(b"abc")
    p = tpde_cmd("compress", str(tmp_path / "a"), "-o", str(tmp_path / "missing" / "dir" / "a.tpde"))
    assert p.returncode == 1
    assert "missing" in _one_error_line(p)


@pytest.mark.parametrize("args", [
    [],
    ["frobnicate", "x"],
    ["compress"],
    ["compress", "does-not-exist.safetensors"],
    ["decompress", "does-not-exist.tpde"],
    ["info", "does-not-exist.tpde"],
    ["compress", "."],
    ["compress", "x", "--threads", "-3"],
    ["compress", "x", "--bogus"],
])
def test_usage_errors_exit_2(tmp_path: Path, tpde_cmd, args: List[str]) -> None:
    (tmp_path / "x").write_bytes(b"x")
    p = tpde_cmd(*args, cwd=tmp_path)
    assert p.returncode == 2, (p.stdout, p.stderr)
    _one_error_line(p)
    assert p.stdout == ""


def test_refusing_to_overwrite_input_is_a_usage_error(tmp_path: Path, tpde_cmd) -> None:
    (tmp_path / "x").write_bytes(b"x")
    p = tpde_cmd("compress", "x", "-o", "x", cwd=tmp_path)
    assert p.returncode == 2
    _one_error_line(p)
    assert (tmp_path / "x").read_bytes() == b"x"


def _refused(p: subprocess.CompletedProcess, *words: str) -> None:
    assert p.returncode == 2, (p.stdout, p.stderr)
    line = _one_error_line(p)
    assert all(w in line for w in words), line
    assert p.stdout == ""


@pytest.mark.parametrize("explicit", [False, True])
def test_compress_refuses_an_existing_output_unless_forced(tmp_path: Path, tpde_cmd, explicit: bool) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    out = tmp_path / ("other.tpde" if explicit else "f.tpde")
    out.write_bytes(b"precious")
    args = ["-o", out.name] if explicit else []
    _refused(tpde_cmd("compress", "f", *args, cwd=tmp_path), out.name, "already exists", "-f")
    assert out.read_bytes() == b"precious"
    p = tpde_cmd("compress", "f", *args, "-f", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert tpde.file_info(out)["original_size"] == len(data)
    p = tpde_cmd("compress", "f", *args, "--force", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(["f", out.name]), "no temporary file left"


@pytest.mark.parametrize("explicit", [False, True])
def test_decompress_refuses_an_existing_output_unless_forced(tmp_path: Path, tpde_cmd, explicit: bool) -> None:
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    tpde.compress_file(tmp_path / "f")
    out = tmp_path / ("other" if explicit else "f")
    out.write_bytes(b"precious")
    args = ["-o", out.name] if explicit else []
    _refused(tpde_cmd("decompress", "f.tpde", *args, cwd=tmp_path), out.name, "already exists", "-f")
    assert out.read_bytes() == b"precious"
    p = tpde_cmd("decompress", "f.tpde", *args, "-f", "-q", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data


@pytest.mark.parametrize("force", [[], ["-f"]])
@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_a_symlink_output_is_refused_and_its_target_untouched(tmp_path: Path, tpde_cmd, command: str,
                                                              force: List[str]) -> None:
    (tmp_path / "f").write_bytes(os.urandom(5000))
    tpde.compress_file(tmp_path / "f")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target").write_bytes(b"theirs")
    (tmp_path / "link").symlink_to(elsewhere / "target")
    (tmp_path / "dangling").symlink_to(elsewhere / "nothing")
    src = "f" if command == "compress" else "f.tpde"
    for link in ("link", "dangling"):
        _refused(tpde_cmd(command, src, "-o", link, *force, cwd=tmp_path), link, "symbolic link")
        assert (tmp_path / link).is_symlink()
    assert (elsewhere / "target").read_bytes() == b"theirs"
    assert os.listdir(elsewhere) == ["target"]


def test_force_never_replaces_a_directory_or_fifo(tmp_path: Path, tpde_cmd) -> None:
    (tmp_path / "f").write_bytes(b"data")
    (tmp_path / "d").mkdir()
    os.mkfifo(tmp_path / "p")
    for out, what in (("d", "directory"), ("p", "not a regular file")):
        _refused(tpde_cmd("compress", "f", "-o", out, "-f", cwd=tmp_path), out, what)
    assert (tmp_path / "d").is_dir() and os.listdir(tmp_path / "d") == []
    assert sorted(os.listdir(tmp_path)) == ["d", "f", "p"]


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_output_same_as_input_is_refused_even_with_force(tmp_path: Path, tpde_cmd, command: str) -> None:
    (tmp_path / "f").write_bytes(b"data")
    src = Path(tpde.compress_file(tmp_path / "f")) if command == "decompress" else tmp_path / "f"
    before = src.read_bytes()
    os.link(src, tmp_path / "hard")
    for out in (src.name, "hard"):
        _refused(tpde_cmd(command, src.name, "-o", out, "-f", cwd=tmp_path), "output is the input", "even with -f")
    assert src.read_bytes() == before


def test_an_output_created_while_compressing_is_not_replaced(tmp_path: Path, py_env) -> None:
    """The output appears after tpde checked it (the input is a FIFO, so the
    test decides when): the library's own check refuses it, and the CLI
    reports it as it does an output that existed from the start."""
    fifo, out = tmp_path / "in.fifo", tmp_path / "out.tpde"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "tpde", "compress", str(fifo), "-o", str(out)], env=py_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def unblock() -> None:
        # Should tpde exit without opening the FIFO, open it here so that
        # the test's open below returns (and its write fails) instead of
        # waiting forever.
        proc.wait()
        os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))

    threading.Thread(target=unblock, daemon=True).start()
    try:
        with open(fifo, "wb") as w:  # returns once tpde opened the FIFO to read, past its checks
            w.write(os.urandom(5000))
            out.write_bytes(b"theirs")
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    _refused(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr), "out.tpde", "already exists")
    assert out.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["in.fifo", "out.tpde"]


def test_help_and_version(tpde_cmd) -> None:
    p = tpde_cmd("--help")
    assert p.returncode == 0 and "compress" in p.stdout and "decompress" in p.stdout and "info" in p.stdout
    p = tpde_cmd("--version")
    assert p.returncode == 0 and p.stdout.strip() == f"tpde {tpde.__version__}"


def test_main_in_process(tmp_path: Path, capsys) -> None:
    (tmp_path / "f").write_bytes(bytes(1000))
    assert cli.main(["compress", str(tmp_path / "f"), "-q"]) == 0
    assert cli.main(["info", str(tmp_path / "f.tpde"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["original_size"] == 1000
    assert cli.main(["info"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tpde: error: ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty behaviour")
def test_progress_bar_on_a_terminal_quiet_with_q_and_in_a_pipe(tmp_path: Path, on_a_terminal, run_py,
                                                               py_env: Dict[str, str]) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: cheap to write, fast to compress
        f.truncate(48 << 20)
    rc, err = on_a_terminal(["compress", "big.bin"], tmp_path)
    assert rc == 0, err
    assert "compressing big.bin:" in err and "100%|" in err and "48.0 MiB / 48.0 MiB" in err, err
    assert "\r" in err  # drawn in place
    rc, err = on_a_terminal(["decompress", "big.bin.tpde", "-o", "back.bin"], tmp_path)
    assert rc == 0 and "decompressing big.bin.tpde:" in err and "100%|" in err, err
    assert (tmp_path / "back.bin").stat().st_size == big.stat().st_size
    # -q: nothing at all on the terminal.
    rc, err = on_a_terminal(["compress", "big.bin", "-o", "q.tpde", "--quiet"], tmp_path)
    assert rc == 0 and err == ""
    # Work quicker than the delay draws no bar.
    rc, err = on_a_terminal(["compress", "big.bin", "-o", "d.tpde"], tmp_path, delay="60")
    assert rc == 0 and err == ""
    # In a pipe: no bar, the summary line only.
    p = run_py("-m", "tpde", "compress", "big.bin", "-o", "p.tpde", cwd=tmp_path, env={**py_env, "TPDE_PROGRESS_DELAY": "0"})
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert p.stdout.startswith("big.bin -> p.tpde: 48.0 MiB -> ")


def test_help_for_every_argument_and_option() -> None:
    """Every argument and option of every command says what it is."""
    parser = cli._parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    missing = []
    for name, p in sub.choices.items():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if not (action.help or "").strip():
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []
    assert {"compress", "decompress", "info", "add", "restore", "ls", "rm", "verify", "stats"} <= set(sub.choices)


@pytest.mark.parametrize("command,says,never", [
    ("compress", "default: FILE.tpde", "without its .tpde"),
    ("decompress", "default: FILE without its .tpde suffix, else FILE.restored", "default: FILE.tpde"),
])
def test_each_command_states_its_own_default_output(tpde_cmd, command: str, says: str, never: str) -> None:
    p = tpde_cmd(command, "--help")
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    assert says in text and never not in text, text


@pytest.mark.parametrize("command", ["restore", "rm", "info"])
def test_help_says_where_latest_is_a_step(tpde_cmd, command: str) -> None:
    p = tpde_cmd(command, "--help")
    assert p.returncode == 0 and "'latest'" in p.stdout, p.stdout


@pytest.mark.parametrize("make,says", [
    ("safetensors", "not a tpde file (a safetensors file, uncompressed; tpde compress makes one of it)"),
    ("torch", "not a tpde file (a zip file (a torch checkpoint?), uncompressed"),
    ("json", "not a tpde file"),
    ("empty", "not a tpde file (an empty file"),
])
def test_a_file_that_is_not_a_tpde_file_is_called_that(tmp_path: Path, tpde_cmd, make_safetensors, make: str,
                                                         says: str) -> None:
    import torch

    f = tmp_path / f"x.{make}"
    if make == "safetensors":
        make_safetensors(f)
    elif make == "torch":
        torch.save({"w": torch.zeros(4)}, f)
    elif make == "json":
        f.write_text('{"a": 1}')
    else:
        f.write_bytes(b"")
    for command in (["info", str(f)], ["decompress", str(f), "-o", str(tmp_path / "out")]):
        p = tpde_cmd(*command)
        assert p.returncode == 1, (p.stdout, p.stderr)
        line = _one_error_line(p)
        assert says in line, line
        assert line.count(str(f)) == 1, line  # the file named once
        assert "magic" not in line and "corrupt" not in line
    assert not (tmp_path / "out").exists()


def test_an_error_names_the_file_once(tmp_path: Path, tpde_cmd, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    tpde.compress_file(src, tmp_path / "m.tpde")
    data = (tmp_path / "m.tpde").read_bytes()
    (tmp_path / "cut.tpde").write_bytes(data[: len(data) // 2])
    for command in ("info", "decompress"):
        p = tpde_cmd(command, str(tmp_path / "cut.tpde"), *(["-o", str(tmp_path / "x")] if command == "decompress"
                                                            else []))
        assert p.returncode == 1
        line = _one_error_line(p)
        assert line.count("cut.tpde") == 1, line
