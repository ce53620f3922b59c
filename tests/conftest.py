"""Shared fixtures for the Python tests of tpde."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import pytest
from hypothesis import HealthCheck, settings

ROOT = Path(__file__).resolve().parents[1]

# Timing varies with load (CI runs on 2 cores), so no per-example deadline;
# each test sets its own modest max_examples.
settings.register_profile("tpde", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tpde")


@pytest.fixture(scope="session")
def py_env() -> Dict[str, str]:
    """Environment for a subprocess that imports tpde from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    return env


@pytest.fixture(scope="session")
def run_py(py_env: Dict[str, str]) -> Callable[..., subprocess.CompletedProcess]:
    """run_py(*args, env=None, cwd=None): run this interpreter with args, capturing text output."""

    def run(*args: str, env: Dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, *args], env=env or py_env, cwd=cwd, capture_output=True,
                              text=True, timeout=timeout)

    return run


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="session")
def file_sha256() -> Callable[[Path], str]:
    return sha256


@pytest.fixture(scope="session")
def make_safetensors() -> Callable[[Path], Path]:
    """make_safetensors(path, seed=0): write a small .safetensors file of many dtypes, with metadata."""

    def make(path: Path, seed: int = 0) -> Path:
        import torch
        from safetensors.torch import save_file

        g = torch.Generator().manual_seed(seed)
        w = torch.randn(64, 48, generator=g) * 0.02
        tensors = {
            "layer.weight": w,
            "layer.weight_bf16": w.to(torch.bfloat16),
            "layer.bias_f16": torch.randn(48, generator=g).to(torch.float16),
            "embed.f64": torch.randn(7, 5, generator=g, dtype=torch.float64),
            "ids": torch.arange(1000, dtype=torch.int64).reshape(10, 100),
            "mask": torch.rand(33, generator=g) > 0.5,
            "bytes": torch.randint(0, 256, (500,), generator=g, dtype=torch.uint8),
            "f8": (torch.randn(64, generator=g)).to(torch.float8_e4m3fn),
            "scalar": torch.tensor(3.5),
            "empty": torch.zeros(0, 4),
        }
        save_file(tensors, str(path), metadata={"format": "pt", "note": "tpde test"})
        return path

    return make
