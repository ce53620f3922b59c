"""PEP 517 build backend for tpde.

tpde's compiled part is a Go c-shared library loaded with ctypes, so there is
no CPython extension for setuptools to build. This backend runs the Go
toolchain, places libtpde.so inside the package and writes the wheel itself.
The wheel is tagged for the platform (py3-none-<platform>): it holds native
code but no CPython ABI dependency, and it needs no Go toolchain to install.

Environment:
  TPDE_GO       the go binary (default: "go" on PATH)
  TPDE_PREBUILT path of an already built libtpde.so to package instead of
                building (for CI that builds once)
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sysconfig
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "python" / "tpde"
LIB = PKG / "libtpde.so"
NAME = "tpde"


def _version() -> str:
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', (PKG / "__init__.py").read_text(), re.M)
    if not m:
        raise RuntimeError("python/tpde/__init__.py has no __version__")
    return m.group(1)


def _platform_tag() -> str:
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def _build_lib() -> None:
    # Build beside the target and rename over it: a process that has the old
    # library mapped (a test run, say) keeps its inode and does not crash.
    tmp = LIB.with_name(".libtpde.so.building")
    prebuilt = os.environ.get("TPDE_PREBUILT")
    if prebuilt:
        shutil.copyfile(prebuilt, tmp)
        os.replace(tmp, LIB)
        return
    go = os.environ.get("TPDE_GO") or shutil.which("go")
    if not go:
        raise RuntimeError(
            "building tpde from source needs the Go toolchain (https://go.dev/dl/); "
            "install Go or use a prebuilt wheel"
        )
    env = dict(os.environ, CGO_ENABLED="1")
    subprocess.run(
        [go, "build", "-trimpath", "-buildmode=c-shared", "-o", str(tmp), "./capi"],
        cwd=ROOT, env=env, check=True,
    )
    os.replace(tmp, LIB)
    tmp.with_suffix(".h").unlink(missing_ok=True)
    LIB.with_suffix(".h").unlink(missing_ok=True)


def _metadata() -> str:
    readme = (ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else ""
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {NAME}\n"
        f"Version: {_version()}\n"
        "Summary: Lossless compression for deep-learning checkpoints and checkpoint series\n"
        "License: Apache-2.0\n"
        "Requires-Python: >=3.9\n"
        "Requires-Dist: tqdm>=4.62\n"
        "Provides-Extra: torch\n"
        "Requires-Dist: torch>=2.0; extra == \"torch\"\n"
        "Provides-Extra: numpy\n"
        "Requires-Dist: numpy>=1.22; extra == \"numpy\"\n"
        "Description-Content-Type: text/markdown\n"
        "\n" + readme
    )


def _wheel_file(tag: str) -> str:
    return f"Wheel-Version: 1.0\nGenerator: tpde_backend\nRoot-Is-Purelib: false\nTag: {tag}\n"


ENTRY_POINTS = "[console_scripts]\ntpde = tpde.cli:main\n"


def _dist_info() -> str:
    return f"{NAME}-{_version()}.dist-info"


class _Wheel:
    def __init__(self, path: Path) -> None:
        self.zf = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.records: list[str] = []

    def add(self, arcname: str, data: bytes, mode: int = 0o644) -> None:
        info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (0o100000 | mode) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zf.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.records.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self, dist_info: str) -> None:
        self.records.append(f"{dist_info}/RECORD,,")
        info = zipfile.ZipInfo(f"{dist_info}/RECORD", date_time=(2020, 1, 1, 0, 0, 0))
        self.zf.writestr(info, "\n".join(self.records) + "\n")
        self.zf.close()


def _write_wheel(wheel_directory: str, editable: bool) -> str:
    tag = f"py3-none-{_platform_tag()}"
    name = f"{NAME}-{_version()}-{tag}.whl"
    di = _dist_info()
    whl = _Wheel(Path(wheel_directory) / name)
    if editable:
        # A .pth file puts the source tree on sys.path; the library was built
        # in place, so edits to Python files apply at once and a rebuild of
        # the Go code only needs ./build.sh.
        whl.add(f"{NAME}_editable.pth", (str(ROOT / "python") + "\n").encode())
    else:
        for f in sorted(PKG.rglob("*")):
            if f.is_dir() or "__pycache__" in f.parts or f.suffix in (".pyc", ".h"):
                continue
            mode = 0o755 if f.suffix == ".so" else 0o644
            whl.add(f"{NAME}/{f.relative_to(PKG).as_posix()}", f.read_bytes(), mode)
    whl.add(f"{di}/METADATA", _metadata().encode())
    whl.add(f"{di}/WHEEL", _wheel_file(tag).encode())
    whl.add(f"{di}/entry_points.txt", ENTRY_POINTS.encode())
    whl.add(f"{di}/top_level.txt", b"tpde\n")
    whl.close(di)
    return name


# PEP 517 hooks -------------------------------------------------------------

def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None):
    di = Path(metadata_directory) / _dist_info()
    di.mkdir(parents=True, exist_ok=True)
    (di / "METADATA").write_text(_metadata())
    (di / "WHEEL").write_text(_wheel_file(f"py3-none-{_platform_tag()}"))
    (di / "entry_points.txt").write_text(ENTRY_POINTS)
    return di.name


prepare_metadata_for_build_editable = prepare_metadata_for_build_wheel


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _build_lib()
    return _write_wheel(wheel_directory, editable=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    _build_lib()
    return _write_wheel(wheel_directory, editable=True)


SDIST_PATHS = ["capi", "core", "include", "python", "go.mod", "go.sum", "pyproject.toml",
               "build.sh", "README.md", "LICENSE"]


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{_version()}"
    name = f"{base}.tar.gz"
    with tarfile.open(Path(sdist_directory) / name, "w:gz") as tar:
        for rel in SDIST_PATHS:
            p = ROOT / rel
            if not p.exists():
                continue
            tar.add(p, arcname=f"{base}/{rel}",
                    filter=lambda ti: None if ("__pycache__" in ti.name or ti.name.endswith(".so")) else ti)
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tar.addfile(ti, io.BytesIO(pkg_info))
    return name
