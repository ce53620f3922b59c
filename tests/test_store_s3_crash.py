"""Crashes of a store on object storage (docs/FORMAT.md §11.12), for real:
a writer killed with SIGKILL in the middle of its upload, and the S3 server
killed with SIGKILL in the middle of an add. In both, nothing committed is
lost, no half checkpoint is listed, and the next add succeeds.

The adds run in a child process (the CLI) through tests/s3proxy.py, whose
bandwidth cap stretches the upload to seconds, so that the kill lands while
objects are being sent (the test waits until the proxy has seen some).
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import tpde
from s3proxy import FaultProxy

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("safetensors")
from safetensors.numpy import save_file  # noqa: E402


def checkpoint(d: Path, seed: int, mb: int = 8) -> Path:
    """A folder of mb MiB of float32 weights (several tensors) and a JSON file."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    n = mb * (1 << 20) // 4 // 8
    save_file({f"w{i}": rng.standard_normal(n).astype(np.float32) for i in range(8)}, str(d / "model.safetensors"))
    (d / "state.json").write_text(f'{{"seed": {seed}}}\n')
    return d


def tree(d: Path) -> Dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def cli_env(srv, endpoint: str, cache: Path) -> Dict[str, str]:
    env = {**os.environ, **srv.env(endpoint), "TPDE_S3_CACHE": str(cache), "PYTHONPATH": str(ROOT / "python"),
           "TPDE_S3_MAX_ATTEMPTS": "2", "TPDE_S3_TIMEOUT": "5"}
    env.pop("AWS_CA_BUNDLE", None)
    return env


def add(env: Dict[str, str], url: str, src: Path, step: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tpde", "add", url, str(src), "--step", str(step)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_puts(proxy: FaultProxy, before: int, p: subprocess.Popen, n: int = 2, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while proxy.count("PUT") < before + n:
        assert p.poll() is None, f"the add ended before the kill: {p.communicate()}"
        assert time.monotonic() < end, "the add sent no object in time"
        time.sleep(0.05)


def check_store(srv, url: str, cache: Path, want: Dict[int, Path], tmp: Path) -> None:
    """Through a fresh cache, on the server directly: exactly want's steps,
    each byte-identical."""
    env = {**srv.env(), "TPDE_S3_CACHE": str(cache)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tpde.Store(url) as st:
            assert st.steps() == sorted(want)
            for s, src in want.items():
                out = tmp / f"check-{cache.name}-{s}"
                st.restore(s, out)
                assert tree(out) == tree(src), s
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def test_a_writer_killed_mid_upload_loses_nothing(own_s3_server, tmp_path: Path) -> None:
    srv = own_s3_server
    bucket = srv.make_bucket("tpde-crash-writer")
    url = f"s3://{bucket}/run"
    with FaultProxy(srv.endpoint) as proxy:
        env = cli_env(srv, proxy.endpoint, tmp_path / "cache-w")
        one, two = checkpoint(tmp_path / "one", 1), checkpoint(tmp_path / "two", 2)
        p = add(env, url, one, 1)
        assert p.wait(timeout=300) == 0, p.communicate()
        proxy.set_bandwidth(2 << 20)  # 2 MiB/s: the next upload takes seconds
        before = proxy.count("PUT")
        p = add(env, url, two, 2)
        wait_for_puts(proxy, before, p)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
        assert p.returncode == -signal.SIGKILL
        proxy.set_bandwidth(None)
        check_store(srv, url, tmp_path / "cache-a", {1: one}, tmp_path)
        # The killed writer's cache holds its unfinished objects: the next
        # add from it goes through.
        p = add(env, url, two, 2)
        assert p.wait(timeout=300) == 0, p.communicate()
    check_store(srv, url, tmp_path / "cache-b", {1: one, 2: two}, tmp_path)


def test_the_server_killed_mid_add_loses_nothing(own_s3_server, tmp_path: Path) -> None:
    srv = own_s3_server
    bucket = srv.make_bucket("tpde-crash-server")
    url = f"s3://{bucket}/run"
    one, two = checkpoint(tmp_path / "one", 1), checkpoint(tmp_path / "two", 2)
    with FaultProxy(srv.endpoint) as proxy:
        env = cli_env(srv, proxy.endpoint, tmp_path / "cache-w")
        p = add(env, url, one, 1)
        assert p.wait(timeout=300) == 0, p.communicate()
        proxy.set_bandwidth(2 << 20)
        before = proxy.count("PUT")
        p = add(env, url, two, 2)
        wait_for_puts(proxy, before, p)
        srv.kill9()
        # The add fails, in bounded time (2 attempts, 5 s per operation), with one line.
        out, err = p.communicate(timeout=300)
        assert p.returncode not in (0, -signal.SIGKILL), (out, err)
        last = err.strip().splitlines()[-1]
        assert "s3://" in last, err
        assert env["AWS_SECRET_ACCESS_KEY"] not in err and env["AWS_ACCESS_KEY_ID"] not in err
        srv.restart()
        proxy.set_bandwidth(None)
        check_store(srv, url, tmp_path / "cache-a", {1: one}, tmp_path)
        p = add(env, url, two, 2)
        assert p.wait(timeout=300) == 0, p.communicate()
    check_store(srv, url, tmp_path / "cache-b", {1: one, 2: two}, tmp_path)
