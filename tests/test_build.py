"""Packaging: `pip wheel .` gives a platform wheel that installs and works
on a machine without Go, and `pip install -e .` gives a working editable
install."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "-w", str(out), str(ROOT)])
    (whl,) = out.glob("tpde-*.whl")
    return whl


def test_wheel_is_platform_tagged_and_carries_the_library(wheel: Path) -> None:
    assert "-py3-none-linux" in wheel.name or "-py3-none-macosx" in wheel.name, wheel.name
    names = zipfile.ZipFile(wheel).namelist()
    assert "tpde/libtpde.so" in names
    assert "tpde/py.typed" in names
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def _fresh_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True).create(path)
    return path / "bin"


def test_wheel_installs_and_runs_without_go(wheel: Path, tmp_path: Path) -> None:
    bindir = _fresh_venv(tmp_path / "env")
    _run([str(bindir / "pip"), "install", "--no-deps", "--no-index", str(wheel)])
    # A PATH with no Go toolchain on it: the installed package must not need one.
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    if subprocess.run(["sh", "-c", "command -v go"], env=env, capture_output=True).returncode == 0:
        env["PATH"] = str(bindir)
    data = os.urandom(300_000) + bytes(200_000)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    _run([str(bindir / "tpde"), "compress", str(src), "-o", str(tmp_path / "blob.tpde"), "--quiet"], env=env, cwd=tmp_path)
    _run([str(bindir / "tpde"), "decompress", str(tmp_path / "blob.tpde"), "-o", str(tmp_path / "back.bin"), "--quiet"], env=env, cwd=tmp_path)
    assert hashlib.sha256((tmp_path / "back.bin").read_bytes()).digest() == hashlib.sha256(data).digest()
    out = _run([str(bindir / "python"), "-c", "import tpde, sys; print(tpde.__version__); assert 'torch' not in sys.modules"],
               env=env, cwd=tmp_path).stdout
    assert out.strip()


def test_editable_install(tmp_path: Path) -> None:
    bindir = _fresh_venv(tmp_path / "env")
    _run([str(bindir / "pip"), "install", "--no-deps", "--no-index", "-e", str(ROOT)])
    out = _run([str(bindir / "python"), "-c", "import tpde; print(tpde.__file__)"], cwd=tmp_path).stdout
    assert out.strip().startswith(str(ROOT / "python" / "tpde"))
