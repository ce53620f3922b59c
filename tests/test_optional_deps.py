"""A missing optional dependency (torch, numpy) is a TPDEError naming the
extra that installs it, raised only by what needs it: in a process where
the module cannot be imported, as in a venv without it."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

# Makes `import MODULE` (and its submodules) fail as it does when the module
# is not installed: a finder ahead of every other that raises
# ModuleNotFoundError naming it.
_HIDE = textwrap.dedent("""
    import importlib.abc, sys

    class _NotInstalled(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == {module!r} or name.startswith({module!r} + "."):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, _NotInstalled())
""")


def _run(run_py, module: str, body: str, tmp_path: Path) -> str:
    code = _HIDE.format(module=module) + textwrap.dedent(body)
    proc = run_py("-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_without_torch_store_load_names_the_extra(run_py, tmp_path: Path) -> None:
    out = _run(run_py, "torch", """
        import json, os, struct, sys
        import tpde

        # A checkpoint folder with a safetensors file, written without torch.
        os.makedirs("checkpoint-5")
        data = struct.pack("<4f", 1.0, -0.0, 2.5, 3.0)
        header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, len(data)]}}).encode()
        with open("checkpoint-5/model.safetensors", "wb") as f:
            f.write(struct.pack("<Q", len(header)) + header + data)
        with tpde.Store("run.tpde") as st:
            assert st.add("checkpoint-5").step == 5      # adding needs no torch
            st.restore("latest", "restored")             # nor does restoring files
            assert open("restored/model.safetensors", "rb").read() == open("checkpoint-5/model.safetensors", "rb").read()
            for call in (lambda: st.load(), lambda: st.load(5, file="model.safetensors")):
                try:
                    call()
                except tpde.TPDEError as e:
                    assert isinstance(e, tpde.MissingDependencyError) and isinstance(e, ImportError), type(e)
                    assert e.name == "torch", e.name
                    assert "pip install 'tpde[torch]'" in str(e) and "Store.load()" in str(e), str(e)
                else:
                    raise AssertionError("Store.load() without torch did not raise")
        assert "torch" not in sys.modules
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_without_torch_decoding_to_torch_names_the_extra_and_numpy_still_works(run_py, tmp_path: Path) -> None:
    out = _run(run_py, "torch", """
        import numpy as np
        import tpde

        a = np.arange(12, dtype=np.float32).reshape(3, 4)
        blob = tpde.compress_tensor(a)
        assert tpde.decompress_tensor(blob, like="numpy").tobytes() == a.tobytes()
        try:
            tpde.decompress_tensor(blob)  # like="torch", the default
        except tpde.TPDEError as e:
            assert isinstance(e, ModuleNotFoundError) and "pip install 'tpde[torch]'" in str(e), str(e)
        else:
            raise AssertionError("no error")
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_without_numpy_like_numpy_names_the_extra(run_py, tmp_path: Path) -> None:
    out = _run(run_py, "numpy", """
        import warnings
        warnings.simplefilter("ignore")  # torch warns that numpy is missing
        import torch
        import tpde

        t = torch.arange(12, dtype=torch.float32)
        blob = tpde.compress_tensor(t)
        assert torch.equal(tpde.decompress_tensor(blob), t)
        try:
            tpde.decompress_tensor(blob, like="numpy")
        except tpde.MissingDependencyError as e:
            assert e.name == "numpy" and "pip install 'tpde[numpy]'" in str(e), str(e)
        else:
            raise AssertionError("no error")
        print("ok")
    """, tmp_path)
    assert out.strip() == "ok"


def test_a_module_that_fails_inside_is_not_called_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed module that fails to import (a broken install importing
    # something of its own that is gone) keeps its own error: no extra
    # would fix it.
    from tpde.errors import MissingDependencyError, require

    (tmp_path / "tpde_test_broken").mkdir()
    (tmp_path / "tpde_test_broken" / "__init__.py").write_text("import tpde_test_broken_part_that_is_gone\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("tpde_test_broken", "this test")
    assert not isinstance(e.value, MissingDependencyError) and e.value.name == "tpde_test_broken_part_that_is_gone"
    with pytest.raises(MissingDependencyError, match=r"pip install 'tpde\[tpde_test_absent\]'"):
        require("tpde_test_absent", "this test")
