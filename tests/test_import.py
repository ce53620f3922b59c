"""Importing tpde is light, the library is found and loaded lazily, and the
public names and exception hierarchy are as documented."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

import tpde
from tpde import _native

ROOT = Path(__file__).resolve().parents[1]


def _ok(proc) -> str:
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_import_loads_neither_torch_numpy_nor_the_library(run_py) -> None:
    code = textwrap.dedent("""
        import sys
        import tpde
        assert 'torch' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)
        assert tpde._native._lib is None
        maps = open('/proc/self/maps').read()
        assert 'libtpde' not in maps
        assert tpde.__version__
        print('ok')
    """)
    assert _ok(run_py("-c", code)).strip() == "ok"


def test_numpy_use_never_imports_torch(run_py) -> None:
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import tpde
        a = np.arange(1000, dtype=np.float32).reshape(10, 100)
        b = tpde.decompress_tensor(tpde.compress_tensor(a), like='numpy')
        assert b.tobytes() == a.tobytes() and b.shape == a.shape and b.dtype == a.dtype
        tpde.entropy_bound_bits(a)
        assert 'torch' not in sys.modules
        assert 'libtpde' in open('/proc/self/maps').read()
        print('ok')
    """)
    assert _ok(run_py("-c", code)).strip() == "ok"


def test_missing_library_is_a_clear_error(run_py, py_env, tmp_path: Path) -> None:
    env = dict(py_env, TPDE_LIBRARY=str(tmp_path / "nope" / "libtpde.so"))
    code = textwrap.dedent("""
        import tpde
        try:
            tpde.get_num_threads()
        except tpde.TPDEError as e:
            print(type(e).__name__, e)
        else:
            raise SystemExit('no error')
    """)
    out = _ok(run_py("-c", code, env=env))
    assert out.startswith("TPDEError ")
    assert "build.sh" in out and str(tmp_path / "nope") in out


def test_library_that_is_not_loadable_is_a_clear_error(run_py, py_env, tmp_path: Path) -> None:
    bogus = tmp_path / "libtpde.so"
    bogus.write_bytes(b"not an ELF file")
    code = "import tpde\ntry:\n    tpde.get_num_threads()\nexcept tpde.TPDEError as e:\n    print(e)\n"
    out = _ok(run_py("-c", code, env=dict(py_env, TPDE_LIBRARY=str(bogus))))
    assert "cannot load libtpde" in out and "build.sh" in out


def test_tpde_library_env_var_is_used(run_py, py_env, tmp_path: Path) -> None:
    # A copy elsewhere, so the default path beside _native.py cannot be what loaded.
    lib = tmp_path / "copy" / "libtpde.so"
    lib.parent.mkdir()
    lib.write_bytes(_native.library_path().read_bytes())
    code = ("import tpde\ntpde.get_num_threads()\n"
            "print([l for l in open('/proc/self/maps') if 'libtpde' in l][0].split()[-1])")
    out = _ok(run_py("-c", code, env=dict(py_env, TPDE_LIBRARY=str(lib))))
    assert out.strip() == str(lib)


def test_version_matches_the_library() -> None:
    assert tpde.__version__ == _native.library_version()


def test_abi_version() -> None:
    assert _native.lib().tpde_abi_version() == _native.ABI_VERSION


def test_every_header_function_has_a_signature() -> None:
    header = (ROOT / "include" / "tpde.h").read_text()
    declared = set(re.findall(r"\b(tpde_[a-z0-9_]+)\s*\(", header))
    assert declared == set(_native._SIGNATURES), declared ^ set(_native._SIGNATURES)
    for name in declared:
        assert getattr(_native.lib(), name).argtypes is not None


ERRORS = [
    (tpde.InvalidArgumentError, 1),
    (tpde.CorruptDataError, 2),
    (tpde.UnsupportedFormatError, 3),
    (tpde.BufferTooSmallError, 4),
    (tpde.TPDEIOError, 5),
    (tpde.InternalError, 6),
]


@pytest.mark.parametrize("cls,status", ERRORS)
def test_error_classes(cls: type, status: int) -> None:
    assert issubclass(cls, tpde.TPDEError) and issubclass(cls, Exception)
    assert cls.status == status
    e = _native.error_for(status, b"what failed", "tpde_x")
    assert type(e) is cls and str(e) == "what failed"


def test_error_mixins() -> None:
    assert issubclass(tpde.InvalidArgumentError, ValueError)
    assert issubclass(tpde.TPDEIOError, OSError)
    assert not issubclass(tpde.CorruptDataError, ValueError)
    assert _native.error_for(99, b"x", "tpde_x").__class__ is tpde.InternalError
    assert "tpde_x failed with status 2" in str(_native.error_for(2, b"", "tpde_x"))


def test_public_names() -> None:
    for name in tpde.__all__:
        assert hasattr(tpde, name), name
    for name in ("compress_tensor", "decompress_tensor", "inspect", "compress_file", "decompress_file",
                 "file_info", "entropy_bound_bits", "set_num_threads", "get_num_threads"):
        assert callable(getattr(tpde, name))
    assert (ROOT / "python" / "tpde" / "py.typed").is_file()


def test_num_threads() -> None:
    default = tpde.get_num_threads()
    assert default >= 1
    try:
        tpde.set_num_threads(3)
        assert tpde.get_num_threads() == 3
        tpde.set_num_threads(0)
        assert tpde.get_num_threads() == default
        with pytest.raises(tpde.InvalidArgumentError):
            tpde.set_num_threads(2**40)
    finally:
        tpde.set_num_threads(0)


def test_integration_names_resolve_lazily_to_their_modules(run_py) -> None:
    """tpde.TPDETrainerCallback and friends exist at the top level, yet
    `import tpde` (and `from tpde import *`) imports no framework; each name
    imports only its own framework, and is the integration module's class."""
    code = textwrap.dedent("""
        import sys
        import tpde
        from tpde import *
        frameworks = ('torch', 'transformers', 'lightning', 'pytorch_lightning', 'deepspeed')
        assert not [m for m in frameworks if m in sys.modules], sorted(sys.modules)
        names = ['TPDETrainerCallback', 'TPDECallback', 'TPDECheckpointIO', 'DistributedTPDECompressor']
        assert set(names) <= set(dir(tpde)) and not set(names) & set(tpde.__all__)
        cb = tpde.TPDECallback
        assert 'lightning' in sys.modules and 'deepspeed' not in sys.modules
        import tpde.integrations.lightning as L
        assert cb is L.TPDECallback and tpde.TPDECheckpointIO is L.TPDECheckpointIO
        import tpde.integrations.hf as H
        assert tpde.TPDETrainerCallback is H.TPDETrainerCallback
        import tpde.integrations.dcp as D
        assert tpde.DistributedTPDECompressor is D.DistributedTPDECompressor
        assert tpde.dcp.Writer is D.Writer and tpde.dcp.Reader is D.Reader
        try:
            tpde.NoSuchName
        except AttributeError as e:
            assert 'NoSuchName' in str(e)
        else:
            raise AssertionError('tpde.NoSuchName resolved')
        print('ok')
    """)
    assert _ok(run_py("-c", code)).strip() == "ok"


def _lazy_names() -> list:
    """Every name `import tpde` promises to resolve on first use: the
    integration modules (one per file), the top-level integration classes,
    and tpde.dcp's Writer and Reader."""
    mods = sorted(p.stem for p in (ROOT / "python" / "tpde" / "integrations").glob("*.py") if p.stem != "__init__")
    return ([f"integrations.{m}" for m in mods] + sorted(tpde._LAZY)
            + ["dcp", "dcp.Writer", "dcp.Reader", "integrations.deepspeed.initialize",
               "integrations.hf.materialize", "integrations.lightning.load_from_store"])


@pytest.mark.parametrize("name", _lazy_names())
def test_each_lazy_name_resolves_in_a_fresh_process(run_py, name: str) -> None:
    # Only `import tpde`, then the attribute chain, as the README writes it
    # (tpde.integrations.deepspeed.initialize(...)); each in its own process,
    # so no earlier import can have bound the submodule.
    code = textwrap.dedent(f"""
        import tpde
        obj = tpde.{name}
        assert obj is not None
        print('ok')
    """)
    proc = run_py("-c", code, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_every_public_name_resolves_in_a_fresh_process(run_py) -> None:
    code = textwrap.dedent("""
        import sys
        import tpde
        missing = [n for n in tpde.__all__ if getattr(tpde, n, None) is None]
        assert not missing, missing
        assert 'torch' not in sys.modules and 'numpy' not in sys.modules
        assert set(tpde.integrations.__dir__()) >= {'dcp', 'deepspeed', 'hf', 'lightning'}
        try:
            tpde.integrations.nosuch
        except AttributeError as e:
            assert 'nosuch' in str(e)
        else:
            raise AssertionError('tpde.integrations.nosuch resolved')
        print('ok')
    """)
    assert _ok(run_py("-c", code)).strip() == "ok"
