"""Stores on object storage (docs/FORMAT.md §11.12): `s3://bucket/prefix`
wherever a store path is taken, against a real S3 server (VersityGW on
loopback, tests/s3server.py), never a mock.

Each test points the store's cache (TPDE_S3_CACHE) at a folder of its own,
and most open the store a second time through a fresh cache: what that one
sees came from the bucket, not from the first one's disk.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import tpde

torch = pytest.importorskip("torch")
from safetensors.numpy import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def fresh_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> Path:
    p = tmp_path / name
    monkeypatch.setenv("TPDE_S3_CACHE", str(p))
    return p


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tree(d: Path) -> Dict[str, str]:
    return {str(p.relative_to(d)): sha(p) for p in sorted(d.rglob("*")) if p.is_file()}


def checkpoint(d: Path, step: int) -> Path:
    """A small Trainer-like folder: safetensors weights, a torch zip
    optimizer, a legacy (pre-zip) torch file and a JSON file."""
    rng = np.random.default_rng(step // 10)
    d.mkdir(parents=True, exist_ok=True)
    base = np.random.default_rng(0)
    w = {f"layer.{i}.weight": (base.standard_normal((64, 96)).astype(np.float32)
                               + rng.standard_normal((64, 96)).astype(np.float32) * 1e-3 * step)
         for i in range(4)}
    w["layer.0.weight"][0, :4] = np.array([np.nan, -0.0, np.inf, 1e-45], dtype=np.float32)
    save_file(w, str(d / "model.safetensors"))
    opt = {"state": {i: {"exp_avg": torch.from_numpy(v * 1e-2).clone()} for i, v in enumerate(w.values())},
           "param_groups": [{"lr": 1e-3, "params": list(range(len(w)))}]}
    torch.save(opt, d / "optimizer.pt")
    torch.save({"step": step, "x": torch.arange(100, dtype=torch.float32) * step}, d / "legacy.pt",
               _use_new_zipfile_serialization=False)
    (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}\n')
    return d


def test_a_checkpoint_of_every_kind_round_trips_through_the_bucket(s3env, s3_bucket, tmp_path, monkeypatch) -> None:
    url = f"s3://{s3_bucket}/runs/first"
    srcs = {s: checkpoint(tmp_path / f"src-{s}", s) for s in (10, 20, 30)}
    with tpde.Store(url) as st:
        for s, d in srcs.items():
            st.add(d, step=s)
        sd = {"w": torch.randn(300, 17), "b": torch.zeros(5, dtype=torch.bfloat16)}
        st.add(sd, step=40)
        assert st.steps() == [10, 20, 30, 40]
    # A second cache: everything below comes from the bucket.
    fresh_cache(monkeypatch, tmp_path, "cache-2")
    with tpde.Store(url) as st:
        assert st.steps() == [10, 20, 30, 40]
        for s, d in srcs.items():
            out = tmp_path / f"out-{s}"
            st.restore(s, out)
            assert tree(out) == tree(d), s
        got = st.load(40)
        assert set(got) == {"w", "b"}
        assert torch.equal(got["w"], sd["w"]) and torch.equal(got["b"].view(torch.int16), sd["b"].view(torch.int16))
        w = st.load(30, file="model.safetensors")
        want = tpde_load_safetensors(srcs[30] / "model.safetensors")
        for k, v in want.items():
            assert w[k].numpy().tobytes() == v.tobytes(), k


def tpde_load_safetensors(p: Path) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(p))


def test_the_bucket_holds_the_local_layout(s3_server, s3env, s3_bucket, tmp_path, monkeypatch) -> None:
    # No grace period: what no generation names leaves the bucket at once
    # (FORMAT §11.12), so the bucket holds what a local store holds.
    monkeypatch.setenv("TPDE_S3_GRACE", "0")
    url = f"s3://{s3_bucket}/r"
    with tpde.Store(url) as st:
        for s in (1, 2, 3):
            st.add(checkpoint(tmp_path / f"s{s}", s * 10), step=s)
    c = s3_server.client()
    keys = {o["Key"] for o in c.list_objects_v2(Bucket=s3_bucket, Prefix="r/")["Contents"]}
    assert "r/tpde-store.json" in keys and "r/manifests/latest" in keys
    assert any(k.startswith("r/manifests/") and k.endswith(".json") for k in keys)
    assert any(k.startswith("r/objects/") for k in keys)
    assert not any("/tmp/" in k or k.endswith(".lock") or "/gc/" in k for k in keys), sorted(keys)
    # The same frames as a local store of the same adds holds, under the
    # same names (records differ: they carry the time they were made).
    local = tmp_path / "local.tpde"
    with tpde.Store(local) as st:
        for s in (1, 2, 3):
            st.add(tmp_path / f"s{s}", step=s)

    def frames(names):
        records = {n[:-len(".copy")] for n in names if n.endswith(".copy")}
        return {n for n in names if not n.endswith(".copy") and n not in records}

    local_objects = frames({str(p.relative_to(local)) for p in (local / "objects").rglob("*") if p.is_file()})
    remote_objects = frames({k[len("r/"):] for k in keys if k.startswith("r/objects/")})
    assert local_objects and local_objects == remote_objects


def test_two_writers_racing_to_commit_one_wins_and_every_step_restores(s3env, s3_bucket, tmp_path, monkeypatch) -> None:
    url = f"s3://{s3_bucket}/race"
    with tpde.Store(url) as st:
        st.add(checkpoint(tmp_path / "s1", 10), step=1)
    a_src, b_src = checkpoint(tmp_path / "a", 20), checkpoint(tmp_path / "b", 30)
    # Two machines: each its own cache (read when a handle opens).
    fresh_cache(monkeypatch, tmp_path, "cache-a")
    a = tpde.Store(url, recode="inline")
    a._writer()
    fresh_cache(monkeypatch, tmp_path, "cache-b")
    b = tpde.Store(url, recode="inline")
    b._writer()
    try:
        # Both opened at generation 1; both try to commit generation 2.
        a.add(a_src, step=2)
        with pytest.raises(tpde.TPDEError, match="another writer committed"):
            b.add(b_src, step=2)
    finally:
        a.close()
        b.close()
    fresh_cache(monkeypatch, tmp_path, "cache-check")
    with tpde.Store(url) as st:
        assert st.steps() == [1, 2]
        st.restore(2, tmp_path / "out2")
        assert tree(tmp_path / "out2") == tree(a_src)
        st.restore(1, tmp_path / "out1")
        assert tree(tmp_path / "out1") == tree(tmp_path / "s1")
        # and the next add goes on from there
        st.add(b_src, step=3)
        assert st.steps() == [1, 2, 3]


def test_wrong_credentials_give_one_line_naming_access_and_no_secret(s3env, s3_bucket, tmp_path, monkeypatch) -> None:
    secret = "not-the-secret-" + "x" * 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    with pytest.raises(tpde.TPDEError) as e:
        with tpde.Store(f"s3://{s3_bucket}/denied") as st:
            st.add(checkpoint(tmp_path / "s", 10), step=1)
    msg = str(e.value)
    assert "access" in msg.lower(), msg
    assert "\n" not in msg.strip(), msg
    assert secret not in msg and s3env["AWS_ACCESS_KEY_ID"] not in msg, msg


def test_a_checkpoint_is_removed_and_what_cannot_be_done_yet_is_refused(s3env, s3_bucket, tmp_path,
                                                                         monkeypatch) -> None:
    url = f"s3://{s3_bucket}/refuse"
    srcs = {s: checkpoint(tmp_path / f"s{s}", s * 10) for s in (1, 2, 3)}
    with tpde.Store(url) as st:
        for s, d in srcs.items():
            st.add(d, step=s)
        st.remove(2)
        assert st.steps() == [1, 3]
        with pytest.raises(tpde.UnsupportedFormatError, match="remote store"):
            st.verify(repair=True)
    fresh_cache(monkeypatch, tmp_path, "cache-2")
    with tpde.Store(url) as st:
        assert st.steps() == [1, 3]
        for s in (1, 3):
            st.restore(s, tmp_path / f"out{s}")
            assert tree(tmp_path / f"out{s}") == tree(srcs[s])


def test_other_urls_are_refused_never_taken_for_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for u in ("gs://bucket/run", "file:///tmp/x", "HTTPS://h/x"):
        with pytest.raises(tpde.UnsupportedFormatError, match="s3://"):
            tpde.Store(u)
    assert list(tmp_path.iterdir()) == []


def test_the_cli_adds_lists_and_restores_through_s3(s3env, s3_server, s3_bucket, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/cli"
    src = checkpoint(tmp_path / "src", 10)
    env = {**os.environ, **s3env, "PYTHONPATH": str(ROOT / "python")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tpde", *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=300)

    p = cli("add", url, str(src), "--step", "5")
    assert p.returncode == 0, p.stderr
    assert not (tmp_path / "s3:").exists()
    p = cli("ls", url)
    assert p.returncode == 0 and "5" in p.stdout, (p.stdout, p.stderr)
    p = cli("info", url)
    assert p.returncode == 0 and "5" in p.stdout, (p.stdout, p.stderr)
    env["TPDE_S3_CACHE"] = str(tmp_path / "cli-cache-2")
    p = cli("restore", url, "5", str(tmp_path / "out"))
    assert p.returncode == 0, p.stderr
    assert tree(tmp_path / "out") == tree(src)
    # stats sizes the store by what its checkpoints name in the bucket (a
    # walk of a local folder named like the URL would find nothing)
    p = cli("stats", url)
    assert p.returncode == 0 and "in the bucket" in p.stdout, (p.stdout, p.stderr)
    p = cli("stats", url, "--json")
    st = json.loads(p.stdout)
    assert st["where"] == "bucket" and 0 < st["disk_bytes"] == st["stored_bytes"] < st["raw_bytes"], st
    # verify checks the bucket, not the cache: an object deleted from the
    # bucket is named though this cache still holds it
    p = cli("verify", url)
    assert p.returncode == 0, (p.stdout, p.stderr)
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="cli/objects/")["Contents"]
    victims = [o["Key"] for o in listed if not o["Key"].endswith(".copy") and o["Size"] > 4096]
    assert victims, listed
    for key in victims:
        client.delete_object(Bucket=s3_bucket, Key=key)
    p = cli("verify", url)
    assert p.returncode != 0 and "missing from" in p.stdout + p.stderr, \
        (p.stdout, p.stderr)


def test_throttling_and_resets_are_retried_and_a_dead_server_ends_in_one_line(s3_server, s3_proxy, s3_bucket,
                                                                              tmp_path, monkeypatch) -> None:
    from s3proxy import on

    for k, v in {**s3_server.env(s3_proxy.endpoint), "TPDE_S3_CACHE": str(tmp_path / "cache"),
                 "TPDE_S3_MAX_ATTEMPTS": "3", "TPDE_S3_TIMEOUT": "10"}.items():
        monkeypatch.setenv(k, v)
    url = f"s3://{s3_bucket}/faults"
    src = checkpoint(tmp_path / "s1", 10)
    # Two 503 SlowDown answers and a connection reset mid-body on the
    # uploads: each retried, the add commits, and the bytes are right.
    s3_proxy.slow_down(2, on("PUT", path_prefix=f"/{s3_bucket}/faults/objects/"))
    s3_proxy.reset_after(1000, on("PUT", path_prefix=f"/{s3_bucket}/faults/objects/"))
    with tpde.Store(url) as st:
        st.add(src, step=1)
    assert s3_proxy.pending_faults() == 0, "every fault was met and retried"
    fresh_cache(monkeypatch, tmp_path, "cache-2")
    with tpde.Store(url) as st:
        st.restore(1, tmp_path / "out")
    assert tree(tmp_path / "out") == tree(src)
    # A server that only ever answers 503: the add gives up after its
    # attempts, with one line naming the URL, and commits nothing.
    s3_proxy.slow_down(10_000)
    with pytest.raises(tpde.TPDEError) as e:
        with tpde.Store(url) as st:
            st.add(checkpoint(tmp_path / "s2", 20), step=2)
    msg = str(e.value)
    assert "s3://" in msg and "\n" not in msg.strip(), msg
    s3_proxy.clear_faults()
    fresh_cache(monkeypatch, tmp_path, "cache-3")
    with tpde.Store(url) as st:
        assert st.steps() == [1]


def test_parts_staged_through_separate_caches_commit_from_the_bucket(s3env, s3_bucket, tmp_path,
                                                                     monkeypatch) -> None:
    """Store.stage on s3://: two participants, each through a cache of its own,
    and a committer with a third: the bucket alone carries the parts. The holder
    folder's pointer names the URL, and reclaim is refused (a folder this machine
    cannot see may be held on another)."""
    url = f"s3://{s3_bucket}/parts"
    descs, parts = [], []
    for r in (0, 1):
        fresh_cache(monkeypatch, tmp_path, f"cache-rank{r}")
        st = tpde.Store(url)
        part = st.stage()
        part.add(checkpoint(tmp_path / f"src{r}", r * 10) / "model.safetensors", name=f"rank{r}.safetensors")
        descs.append(part.finish())
        parts.append((part, st))
    folder = tmp_path / "save-1"
    folder.mkdir()
    fresh_cache(monkeypatch, tmp_path, "cache-coordinator")
    with tpde.Store(url) as st:
        with pytest.raises(tpde.InvalidArgumentError, match="absolute path"):
            st.commit(descs, holder="save-1")
        info = st.commit(descs, holder=str(folder))
        assert tpde.store.read_pointer(folder) == {"store": url, "step": info.step}
        with pytest.raises(tpde.UnsupportedFormatError, match="remove checkpoints by step"):
            st.reclaim()
    for part, st in parts:
        part.close()
        st.close()
    fresh_cache(monkeypatch, tmp_path, "cache-reader")
    with tpde.Store(url) as st:
        assert st.steps() == [info.step]
        st.restore(info.step, tmp_path / "out")
    for r in (0, 1):
        assert sha(tmp_path / "out" / f"rank{r}.safetensors") == sha(tmp_path / f"src{r}" / "model.safetensors")
