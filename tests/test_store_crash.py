"""Crash safety of the checkpoint store: a writer SIGKILLed at random
moments (while it opens, cleans up, adds or removes) never leaves a store
that does not open, verify and restore exactly what was committed; and a
full disk (a real small tmpfs) fails an add cleanly, with ENOSPC."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import tpde
from tpde.errors import TPDEIOError

from conftest import tree_digest


def _live(store: tpde.Store) -> Set[str]:
    with store._reader() as rd:
        s = rd.snapshot
    # Each record has a second copy, <object>.copy (docs/FORMAT.md §11.2).
    live = {o for c in s["manifest"]["checkpoints"] for o in (c["object"], c["object"] + ".copy")}
    for c in s["checkpoints"]:
        for f in c["files"]:
            live.add(f["skeleton"]["object"])
            live.update(r["object"] for r in f["regions"])
    return live


def _on_disk(path: Path) -> Set[str]:
    return {p.name for p in (path / "objects").glob("*/*")}


def _source(d: Path, i: int, mib: float) -> Path:
    """A multi-file checkpoint of about `mib` MiB whose tensors drift a
    little from one i to the next (so older ones become deltas)."""
    d.mkdir(parents=True)
    rng = np.random.default_rng(i)
    base = np.random.default_rng(0)
    n = int(mib * (1 << 20) / 4 * 0.6) // 4
    layers = {f"layer.{k}.weight": (base.standard_normal(n) * 0.02 + 1e-4 * i).astype(np.float32) for k in range(4)}
    layers["layer.1.weight"][rng.integers(0, n, n // 10)] += 0.01
    save_file(layers, str(d / "model.safetensors"), metadata={"step": str(i)})
    g = torch.Generator().manual_seed(i)
    torch.save({"state": {0: {"exp_avg": torch.randn(n // 2, generator=g) * 1e-3, "step": torch.tensor(float(i))}},
                "param_groups": [{"lr": 1e-3, "params": [0]}]}, d / "optimizer.pt")
    (d / "rng.bin").write_bytes(rng.bytes(int(mib * (1 << 20) * 0.15)))
    (d / "trainer_state.json").write_text(json.dumps({"global_step": i}))
    (d / "nested").mkdir()
    (d / "nested" / "tokenizer.json").write_text(json.dumps({"vocab": list(range(2000))}))
    os.chmod(d / "trainer_state.json", 0o600)
    return d


_CHILD = r"""
import sys, time, tpde
store, op, step, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
st = tpde.Store(store)
if op == "add":
    st.add(src, step=step)
else:
    st.remove(step)
st.close()
print("done", time.perf_counter() - t0, flush=True)
"""


def _start(py_env: Dict[str, str], store: Path, op: str, step: int, src: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", _CHILD, str(store), op, str(step), str(src)], env=py_env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready", p.stderr.read()
    return p


def test_sigkill_at_random_moments(tmp_path: Path, py_env) -> None:
    pool_size, keep, want_kills = 5, 4, 50
    pool = [_source(tmp_path / f"src-{i}", i, 7.0) for i in range(pool_size)]
    digests = [tree_digest(p) for p in pool]
    store = tmp_path / "store"
    src_of = lambda step: step % pool_size  # noqa: E731

    # Calibrate: how long an add takes here, from "go" to committed.
    with tpde.Store(store, keyframe_interval=3) as st:
        st.add(pool[0], step=0)
    durations = []
    for step in (1, 2):
        child = _start(py_env, store, "add", step, pool[src_of(step)])
        child.stdin.write("go\n")
        child.stdin.flush()
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        durations.append(float(out.split()[-1]))
    duration = max(durations) * 1.2 + 0.02

    rnd = random.Random(20240601)
    listed: List[int] = [0, 1, 2]
    next_step, kills, completed, t_start = 3, 0, 0, time.monotonic()
    for iteration in range(4 * want_kills):
        if kills >= want_kills:
            break
        if len(listed) >= keep:
            op, step = "remove", rnd.choice(listed)
        else:
            op, step = "add", next_step
            next_step += 1
        child = _start(py_env, store, op, step, pool[src_of(step)])
        child.stdin.write("go\n")
        child.stdin.flush()
        time.sleep(rnd.uniform(0, duration if op == "add" else duration / 2))  # a remove is quicker
        if child.poll() is None:
            child.kill()
            child.wait(30)
            killed = child.returncode == -9
        else:
            killed = False
        if killed:
            kills += 1
        else:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, (op, step, err)
            completed += 1

        # The store opens cleanly and lists exactly a committed state.
        with tpde.Store(store) as st:
            steps = st.steps()
            before_op = listed
            after_op = sorted(set(listed) | {step}) if op == "add" else [s for s in listed if s != step]
            if killed:
                assert steps in (before_op, after_op), (iteration, op, step, listed, steps)
            else:
                assert steps == after_op, (iteration, op, step, listed, steps)
            rep = st.verify(deep=True)
            assert rep.ok, (iteration, rep.problems)
            # Deep verify decoded every file to its recorded sha256; the
            # records must name exactly the sources' bytes and modes.
            for s in steps:
                files = {f.path: (f.sha256, f.mode) for f in st.info(s).files}
                assert files == digests[src_of(s)], (iteration, s)
            for s in {steps[-1], rnd.choice(steps)}:
                out_dir = tmp_path / "restored"
                st.restore(s, out_dir)
                assert tree_digest(out_dir) == digests[src_of(s)], (iteration, s)
                shutil.rmtree(out_dir)
        # A writer that closed says so in writer.lock; the next writer's
        # open then skips its sweep, and after a killed writer it sweeps
        # (docs/FORMAT.md §11.6 step 5). Either way, once that writer has
        # closed, objects/ holds exactly what the store names.
        if not killed:
            assert (store / "writer.lock").read_text().startswith("closed "), iteration
        with tpde.Store(store) as st:
            st._writer()
        assert (store / "writer.lock").read_text().startswith("closed "), iteration
        with tpde.Store(store) as st:
            assert _on_disk(store) == _live(st), (iteration, killed)
        listed = steps
    elapsed = time.monotonic() - t_start
    assert kills >= want_kills, f"only {kills} kills landed in {iteration + 1} tries ({completed} completed)"
    assert completed >= 1  # the delays span the whole add, not only its start

    # A writer (tpde verify --repair) leaves no temporary file, no
    # unreferenced object and one manifest generation.
    with tpde.Store(store) as st:
        rep = st.verify(deep=True, repair=True)
        assert rep.ok
        assert os.listdir(store / "tmp") == []
        assert _on_disk(store) == _live(st)
        assert len(list((store / "manifests").glob("*.json"))) == 1  # and its copy, .json.copy
        assert st.steps() == listed
    print(f"{kills} kills, {completed} completed, {elapsed:.1f} s; an add took up to {duration:.2f} s")


# --- a full disk ---------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if sys.platform != "linux":
        pytest.skip("tmpfs is Linux")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _fill_to(mnt: Path, free: int) -> None:
    filler = mnt / "filler"
    if filler.exists():
        filler.unlink()
    vfs = os.statvfs(mnt)
    avail = vfs.f_bavail * vfs.f_frsize
    if avail > free:
        with open(filler, "wb") as f:
            f.write(b"\0" * (avail - free))


def test_disk_full_commits_nothing(tmp_path: Path, small_tmpfs: Path) -> None:
    mnt = small_tmpfs
    rng = np.random.default_rng(3)
    a = tmp_path / "a"
    a.mkdir()
    save_file({"w": rng.standard_normal(40_000).astype(np.float32)}, str(a / "model.safetensors"))
    (a / "notes.txt").write_text("first\n")
    b = tmp_path / "b"
    b.mkdir()
    save_file({"w": rng.standard_normal(40_000).astype(np.float32),
               "v": rng.standard_normal(60_000).astype(np.float32)}, str(b / "model.safetensors"))
    (b / "blob.bin").write_bytes(rng.bytes(500_000))
    (b / "notes.txt").write_text("second\n")
    store = mnt / "store"
    with tpde.Store(store) as st:
        st.add(a, step=1)

    def state() -> Tuple[List[int], Set[str]]:
        with tpde.Store(store) as st:
            return st.steps(), _on_disk(store)

    steps0, objs0 = state()
    failures, ok_at = 0, None
    # Coarse, then fine, so that the disk fills up at every stage of an
    # add: objects, the re-coded previous record, the new record, the manifest.
    for free in list(range(0, 1_400_000, 100_000)) + [None]:
        if free is None:
            break
        _fill_to(mnt, free)
        st = tpde.Store(store)
        try:
            st.add(b, step=2)
        except TPDEIOError as e:
            assert e.errno == errno.ENOSPC, (free, e.errno, str(e))
            failures += 1
            assert st.steps() == steps0
            st.close()
            (mnt / "filler").unlink()
            with tpde.Store(store) as st2:
                assert st2.verify(deep=True, repair=True).ok
                assert st2.steps() == steps0
                assert os.listdir(store / "tmp") == []
                assert _on_disk(store) == objs0
            continue
        ok_at = free
        st.close()
        break
    assert failures >= 3 and ok_at is not None, (failures, ok_at)
    # The fine sweep just below the first free size that fitted.
    with tpde.Store(store) as st:
        st.remove(2)
    (mnt / "filler").unlink()
    with tpde.Store(store) as st:
        st.verify(repair=True)
    steps0, objs0 = state()
    for free in range(max(0, ok_at - 120_000), ok_at, 4096):
        _fill_to(mnt, free)
        st = tpde.Store(store)
        try:
            st.add(b, step=2)
        except TPDEIOError as e:
            assert e.errno == errno.ENOSPC, (free, str(e))
            failures += 1
            assert st.steps() == steps0
            st.close()
            (mnt / "filler").unlink()
            with tpde.Store(store) as st2:
                assert st2.verify(deep=True, repair=True).ok and st2.steps() == steps0
                assert os.listdir(store / "tmp") == [] and _on_disk(store) == objs0
            continue
        st.close()
        (mnt / "filler").unlink()
        with tpde.Store(store) as st2:  # it fitted: committed whole
            assert st2.steps() == [1, 2]
            st2.restore(2, tmp_path / "r2")
            assert tree_digest(tmp_path / "r2") == tree_digest(b)
            shutil.rmtree(tmp_path / "r2")
            st2.remove(2)
            st2.verify(repair=True)
        steps0, objs0 = state()
    assert failures >= 6
    with tpde.Store(store) as st:
        st.restore(1, tmp_path / "r1")
        assert tree_digest(tmp_path / "r1") == tree_digest(a)
        assert st.verify(deep=True).ok


# --- runs, killed at random moments --------------------------------------------

_RUN_CHILD = r"""
import sys, time, tpde
store, op, step, src = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
st = tpde.Store(store)
if op == "add":
    st.add(src, step=step, run="ft", parent=None if "ft" in [r["name"] for r in st.runs()] else ("main", 0))
elif op == "remove":
    st.remove(step, run="ft")
else:
    st.remove_run("ft")
st.close()
print("done", time.perf_counter() - t0, flush=True)
"""


def test_sigkill_during_run_adds_and_removals(tmp_path: Path, py_env) -> None:
    """A second run coded against the main run's checkpoint 0: adds to it,
    removals of its checkpoints and of the whole run, each SIGKILLed at a
    random moment. The store always lists one committed state of both
    runs, verifies deep, and restores every listed checkpoint exactly;
    the main run is never touched."""
    pool = [_source(tmp_path / f"src-{i}", i, 4.0) for i in range(4)]
    digests = [tree_digest(p) for p in pool]
    store = tmp_path / "store"
    with tpde.Store(store, keyframe_interval=3) as st:
        st.add(pool[0], step=0)

    def start(op: str, step: int) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", _RUN_CHILD, str(store), op, str(step), str(pool[step % 4])],
                             env=py_env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
        p.stdin.write("go\n")
        p.stdin.flush()
        return p

    calib = start("add", 1)
    out, err = calib.communicate(timeout=120)
    assert calib.returncode == 0, err
    duration = float(out.split()[-1]) * 1.3 + 0.02
    rnd = random.Random(20261206)
    ft: List[int] = [1]
    next_step, kills, completed = 2, 0, 0
    for iteration in range(60):
        if kills >= 15:
            break
        if len(ft) >= 3:
            op, step = rnd.choice([("remove", rnd.choice(ft)), ("remove-run", 0)])
        else:
            op, step = "add", next_step
            next_step += 1
        child = start(op, step)
        time.sleep(rnd.uniform(0, duration))
        killed = False
        if child.poll() is None:
            child.kill()
            child.wait(30)
            killed = child.returncode == -9
        if killed:
            kills += 1
        else:
            out, err = child.communicate(timeout=120)
            assert child.returncode == 0, (op, step, err)
            completed += 1
        after = {"add": sorted(ft + [step]), "remove": [s for s in ft if s != step], "remove-run": []}[op]
        with tpde.Store(store) as st:
            runs = {r["name"]: r for r in st.runs()}
            got = st.steps(run="ft") if "ft" in runs else []
            assert got in ((ft, after) if killed else (after,)), (iteration, op, step, ft, got)
            assert st.steps() == [0]
            rep = st.verify(deep=True)
            assert rep.ok, (iteration, rep.problems)
            for s in got:
                assert {f.path: (f.sha256, f.mode) for f in st.info(s, run="ft").files} == digests[s % 4]
            if got:
                out_dir = tmp_path / "restored"
                st.restore(got[-1], out_dir, run="ft")
                assert tree_digest(out_dir) == digests[got[-1] % 4], iteration
                shutil.rmtree(out_dir)
            if "ft" in runs and not got:
                st.remove_run("ft")  # an empty run left by a removal: start it again from main
        ft = got
    assert kills >= 15 and completed >= 1, (kills, completed)
    with tpde.Store(store) as st:
        assert st.verify(deep=True, repair=True).ok
        assert os.listdir(store / "tmp") == []
        if "ft" in [r["name"] for r in st.runs()]:
            st.remove_run("ft")
        # Nothing of the run, of its killed adds or of its removals is left
        # (_live names the main run's objects).
        assert _on_disk(store) == _live(st)
        assert st.steps() == [0] and st.runs() == [{"name": "main", "parent": None, "count": 1, "newest": 0}]
    print(f"{kills} kills, {completed} completed")
