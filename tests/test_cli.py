"""The tpde command, run as `python -m tpde` in a subprocess."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
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


def test_progress_bar_draws_in_place() -> None:
    stream = io.StringIO()
    bar = cli._Bar("compress", stream)
    bar(0, 200 << 20)
    bar(100 << 20, 200 << 20)
    bar(200 << 20, 200 << 20)
    bar.close()
    text = stream.getvalue()
    frames = text.split("\r")[1:]
    assert len(frames) == 3 and text.endswith("\n") and "\n" not in "".join(frames)[:-1]
    assert " 50.0%" in frames[1] and "100.0%" in frames[2] and "200.0 MiB" in frames[2]


def _run_on_a_tty(args: List[str], env: Dict[str, str], cwd: Path) -> tuple:
    """Run python -m tpde with stderr on a pseudo-terminal; return (rc, stderr text)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "tpde", *args], stdout=subprocess.DEVNULL, stderr=slave,
                            env=env, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], 60)
        if not r:
            break
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty behaviour")
def test_progress_bar_only_for_large_files_on_a_tty(tmp_path: Path, py_env: Dict[str, str]) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # sparse: cheap to write, fast to compress
        f.truncate(cli.PROGRESS_MIN_BYTES + (1 << 20))
    (tmp_path / "small.bin").write_bytes(bytes(1 << 20))
    rc, err = _run_on_a_tty(["compress", "big.bin"], py_env, tmp_path)
    assert rc == 0 and "100.0%" in err and "\r" in err
    rc, err = _run_on_a_tty(["compress", "big.bin", "-o", "q.tpde", "--quiet"], py_env, tmp_path)
    assert rc == 0 and err == ""
    rc, err = _run_on_a_tty(["compress", "small.bin"], py_env, tmp_path)
    assert rc == 0 and err == ""
    rc, err = _run_on_a_tty(["decompress", "big.bin.tpde", "-o", "back.bin"], py_env, tmp_path)
    assert rc == 0 and "100.0%" in err
    assert (tmp_path / "back.bin").stat().st_size == big.stat().st_size
