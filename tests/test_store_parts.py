"""Many writers, one commit (Store.stage / Part / Store.commit, holders and
reclaim), with real processes and real signals: participants that stage a
checkpoint's files beside each other while a third process commits, each of
them SIGKILLed at random moments; participants killed at chosen moments;
holder folders removed or renamed; and descriptors that lie."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

import tpde
from tpde.errors import TPDEError

from conftest import recorded_sha256, sha256, tree_digest
from test_store_crash import _live, _on_disk

# One worker script for every role; it talks to the test over stdin/stdout:
# "ready" once imported, then it waits for "go" (so that the test's clock
# and kill delays start at the operation, not at interpreter start-up).
#   stage STORE SRC NAME   stage SRC (a file; "sd:SEED" a torch state dict)
#                          as NAME; print "staged <descriptor>", then wait
#                          for "close" and close the part.
#   midadd STORE SRC       stage the folder SRC; print "mid" once its first
#                          file is in the store, and hang there.
#   commit STORE STEP HOLDER DESC-FILE...   commit the descriptors; print
#                          "committed STEP" or "refused <TPDEError class>".
#   repair STORE           verify(deep=False, repair=True): a writer's cleanup.
_WORKER = r"""
import json, sys, time
import tpde
from tpde.errors import TPDEError
role, store = sys.argv[1], sys.argv[2]
print("ready", flush=True)
sys.stdin.readline()
t0 = time.perf_counter()
if role == "stage":
    src, name = sys.argv[3], sys.argv[4]
    part = tpde.Store(store).stage()
    if src.startswith("sd:"):
        import torch
        g = torch.Generator().manual_seed(int(src[3:]))
        part.add({"exp_avg": torch.randn(50_000, generator=g) * 1e-3,
                  "exp_avg_sq": torch.rand(50_000, generator=g) * 1e-6,
                  "step": torch.tensor(float(src[3:]))}, name=name)
    else:
        part.add(src, name=name)
    desc = part.finish()
    print("staged", time.perf_counter() - t0, desc, flush=True)
    sys.stdin.readline()
    part.close()
    print("closed", flush=True)
elif role == "midadd":
    class Hang:
        calls = 0
        def is_set(self):
            if sys._getframe(1).f_code.co_name == "_add_files":  # tpde.store.folders: once per file
                Hang.calls += 1
                if Hang.calls == 2:  # the first file is added, the second not yet
                    print("mid", flush=True)
                    sys.stdin.readline()
                    time.sleep(3600)
            return False
    part = tpde.Store(store).stage()
    part.add(sys.argv[3], cancel=Hang())
    print("unexpected: the add finished", flush=True)
elif role == "commit":
    step, holder = int(sys.argv[3]), sys.argv[4]
    descs = [open(p).read() for p in sys.argv[5:]]
    try:
        info = tpde.Store(store).commit(descs, step=step, holder=holder or None)
        print("committed", info.step, time.perf_counter() - t0, flush=True)
    except TPDEError as e:
        print("refused", type(e).__name__, str(e).replace("\n", " "), flush=True)
elif role == "repair":
    rep = tpde.Store(store).verify(deep=False, repair=True)
    print("repaired", rep.ok, time.perf_counter() - t0, flush=True)
"""


class Worker:
    def __init__(self, py_env: Dict[str, str], role: str, *args: object) -> None:
        self.role = role
        self.p = subprocess.Popen([sys.executable, "-c", _WORKER, role, *map(str, args)], env=py_env,
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.killed = False
        self.lines: List[str] = []

    def go(self) -> "Worker":
        """Wait until it is ready (imported), then start it."""
        line = self.p.stdout.readline().strip()
        assert line == "ready", (self.role, line, self.p.stderr.read())
        self.send("go")
        return self

    def send(self, line: str) -> None:
        try:
            self.p.stdin.write(line + "\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass  # it was killed

    def kill(self) -> bool:
        """SIGKILL it unless it has exited; True if the signal landed."""
        if self.p.poll() is not None:
            return False
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(30)
        self.killed = self.p.returncode == -signal.SIGKILL
        return self.killed

    def line(self) -> str:
        """Its next line of output ("" once it is gone)."""
        s = self.p.stdout.readline()
        if s:
            self.lines.append(s.strip())
        return s.strip()

    def finish(self) -> None:
        out, err = self.p.communicate(timeout=120)
        self.lines += out.split("\n") if out else []
        if not self.killed:
            assert self.p.returncode == 0, (self.role, self.p.returncode, err)


def _shard(path: Path, rank: int, i: int, n: int = 96_000) -> Path:
    """A rank's weights at save i: a frozen tensor (the same object in
    every save) and tensors that drift in a few percent of their elements
    from one save to the next (so older saves become small deltas)."""
    base = np.random.default_rng(100 + rank)
    w = {f"block.{k}.weight": (base.standard_normal(n) * 0.02).astype(np.float32) for k in range(3)}
    frozen = (base.standard_normal(n // 4) * 0.02).astype(np.float32)
    for j in range(1, i + 1):
        rng = np.random.default_rng((rank, j))
        for k, t in enumerate(w.values()):
            idx = rng.integers(0, n, n // 30)
            t[idx] += rng.standard_normal(idx.size).astype(np.float32) * 1e-3
    save_file({**w, "embed.frozen": frozen}, str(path), metadata={"rank": str(rank), "save": str(i)})
    return path


def _objects(desc: str) -> Set[str]:
    """Every object a part's descriptor names."""
    p = json.loads(desc)
    out = set()
    for f in p["files"]:
        out.add(f["skeleton"]["object"])
        out.update(r["object"] for r in f["regions"])
    out.update(c["object"] for c in p["converted"])
    return out


def _parts(store: Path) -> List[str]:
    tmp = store / "tmp"
    return sorted(e for e in os.listdir(tmp) if e.startswith("part-")) if tmp.exists() else []


def _files(st: tpde.Store, step: int) -> Dict[str, str]:
    return {f.path: f.sha256 for f in st.info(step).files}


def _restored(st: tpde.Store, step: int, out: Path) -> Dict[str, str]:
    """{path: what it hashes to, made as its record's sha256 is} of every
    file restore writes: a state dict's file has a regions digest."""
    st.restore(step, out)
    try:
        with st._reader() as rd:
            recorded = {f["path"]: f for f in rd.record(step)["files"]}
        got = {k: recorded_sha256(out / k, recorded[k]) for k in tree_digest(out)}
        assert {k for k, f in recorded.items() if f.get("digest")} == {k for k in got if k.endswith(".tpde")}
        return got
    finally:
        shutil.rmtree(out)


def _stage_here(st: tpde.Store, what: object, name: str) -> "tuple[tpde.store.Part, str]":
    part = st.stage()
    part.add(what, name=name)
    return part, part.finish()


# --- 1. round trip --------------------------------------------------------------


def test_two_processes_stage_a_third_commits_round_trip(tmp_path: Path, py_env) -> None:
    store = tmp_path / "run" / "store"
    store.parent.mkdir()
    expected: Dict[int, Dict[str, str]] = {}
    for i in range(3):
        src = _shard(tmp_path / f"rank0-{i}.safetensors", 0, i)
        a = Worker(py_env, "stage", store, src, "model/rank0.safetensors")
        b = Worker(py_env, "stage", store, f"sd:{i}", "optim/rank1.tpde")
        for w in (a, b):
            w.go()
        descs = []
        for w in (a, b):
            line = w.line()
            assert line.startswith("staged "), (line, w.p.stderr.read())
            descs.append(line.split(" ", 2)[2])
        # The two parts were staged beside each other: each has its live,
        # locked folder in tmp/ until it is closed.
        assert len(_parts(store)) == 2
        paths = []
        for k, d in enumerate(descs):
            paths.append(tmp_path / f"desc-{i}-{k}.json")
            paths[-1].write_text(d)
        c = Worker(py_env, "commit", store, 10 * (i + 1), "", *paths)
        c.go().finish()
        assert c.lines[0].split()[:2] == ["committed", str(10 * (i + 1))], c.lines
        for w in (a, b):
            w.send("close")
            assert w.line() == "closed"
            w.finish()
        with tpde.Store(store) as st:
            files = _files(st, 10 * (i + 1))
        assert set(files) == {"model/rank0.safetensors", "optim/rank1.tpde"}
        assert files["model/rank0.safetensors"] == sha256(src)
        expected[10 * (i + 1)] = files

    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]
        assert st.verify(deep=True).ok
        for step, files in expected.items():
            # Restore writes every file byte for byte: the safetensors
            # file as staged, the state dict as its tpde file, both with
            # the sha256 recorded at staging.
            assert _restored(st, step, tmp_path / "out") == files
            i = step // 10 - 1
            assert sha256(tmp_path / f"rank0-{i}.safetensors") == files["model/rank0.safetensors"]
            sd = st.load(step, file="optim/rank1.tpde")
            g = torch.Generator().manual_seed(i)
            want = {"exp_avg": torch.randn(50_000, generator=g) * 1e-3,
                    "exp_avg_sq": torch.rand(50_000, generator=g) * 1e-6, "step": torch.tensor(float(i))}
            assert set(sd) == set(want)
            for k, t in want.items():
                assert sd[k].dtype == t.dtype and torch.equal(sd[k], t), (step, k)
            w = st.load(step, file="model/rank0.safetensors")
            assert set(w) == {"block.0.weight", "block.1.weight", "block.2.weight", "embed.frozen"}
        # Reverse deltas: the newest is whole, the older saves' drifting
        # weights are deltas against their successor. (The optimizer state
        # is fresh noise every save, so it stays a keyframe either way.)
        newest = st.info(30)
        for s in (10, 20):
            assert st.info(s).stored_bytes < 0.6 * newest.stored_bytes, (s, st.info(s).stored_bytes,
                                                                          newest.stored_bytes)
        assert newest.max_chain == 1 and st.info(10).max_chain >= 2
        rep = st.verify(deep=False, repair=True)
        assert rep.ok
        assert os.listdir(store / "tmp") == []
        assert _on_disk(store) == _live(st)


def test_reverse_deltas_of_weights_alone(tmp_path: Path) -> None:
    """Without the optimizer noise, the older saves are a few percent of
    the newest (the weights drift in about 3% of their elements)."""
    store = tmp_path / "store"
    with tpde.Store(store) as st:
        for i in range(3):
            p0, d0 = _stage_here(st, _shard(tmp_path / f"r0-{i}", 0, i), "rank0.safetensors")
            p1, d1 = _stage_here(st, _shard(tmp_path / f"r1-{i}", 1, i), "rank1.safetensors")
            st.commit([d1, d0])
            p0.close()
            p1.close()
        sizes = [st.info(s).stored_bytes for s in st.steps()]
        assert st.steps() == [0, 1, 2]
        assert sizes[0] < 0.3 * sizes[2] and sizes[1] < 0.3 * sizes[2], sizes
        for i in range(3):
            assert _restored(st, i, tmp_path / "out") == {
                "rank0.safetensors": sha256(tmp_path / f"r0-{i}"), "rank1.safetensors": sha256(tmp_path / f"r1-{i}")}


# --- many processes create a store at once ----------------------------------------


def test_many_processes_create_a_store_at_once(tmp_path: Path, py_env) -> None:
    """The first save of a job: every rank stages into a store that does
    not exist yet while the coordinator opens it for writing. Each of them
    must open it (one of them creates it)."""
    failures = []
    srcs = [_shard(tmp_path / f"rank{k}.safetensors", k, 0, n=4000) for k in range(4)]
    for trial in range(10):
        store = tmp_path / f"store-{trial}"
        crew = [Worker(py_env, "repair", store)] + [
            Worker(py_env, "stage", store, p, p.name) for p in srcs]
        for w in crew:
            w.go()
        for w in crew[1:]:
            line = w.line()
            w.send("close")
            if line.startswith("staged "):
                w.finish()
            else:  # reported with its error below, not as a bare exit status
                _, err = w.p.communicate(timeout=120)
                failures.append((trial, w.role, w.p.returncode, line, err.strip().splitlines()[-3:]))
        crew[0].finish()
        if not crew[0].lines[0].startswith("repaired"):
            failures.append((trial, crew[0].lines))
    assert not failures, failures


# --- 2. kill -9 at random moments ------------------------------------------------


def test_sigkill_one_of_three_at_random_moments(tmp_path: Path, py_env) -> None:
    """Each round, two participants stage save r while a coordinator
    commits save r-1 (whose participants are still alive, holding their
    parts), and one of the three is SIGKILLed after a random delay. Then:
    every save committed before is still there and restores exactly, no
    listed checkpoint lacks a rank's file, verify is ok, a repair leaves
    exactly the live participants' folders and objects, and the next
    round commits (no lock is stuck)."""
    seed = int(os.environ.get("TPDE_PARTS_SEED", "20250711"))
    rounds = int(os.environ.get("TPDE_PARTS_ROUNDS", "32"))
    print(f"seed {seed} (TPDE_PARTS_SEED), {rounds} rounds (TPDE_PARTS_ROUNDS)")
    rnd = random.Random(seed)
    run = tmp_path / "run"
    run.mkdir()
    store = run / "store"
    src = tmp_path / "src"
    src.mkdir()
    with tpde.Store(store) as st:  # created beforehand (see test_many_processes_create_a_store_at_once)
        assert st.reclaim() == []
    names = ("rank0.safetensors", "rank1.safetensors")
    want: Dict[int, Dict[str, str]] = {}  # what each round staged
    committed: Set[int] = set()  # commits that reported success
    attempted: Set[int] = set()  # commits that started (perhaps killed)
    reclaimed: Set[int] = set()
    prev: Optional[dict] = None
    # How long each role takes here, from "go" to done (its own clock):
    # measured in rounds 0 and 1, and kept up to date.
    took: Dict[str, List[float]] = {"stage": [], "commit": [], "repair": []}
    kills = {"stage": 0, "stage-after-finish": 0, "commit": 0, "repair": 0}
    refusals = 0

    def sources(r: int) -> List[Path]:
        paths = [_shard(src / f"{r}-{k}.safetensors", k, r, n=48_000) for k in range(2)]
        want[r] = {n: sha256(p) for n, p in zip(names, paths)}
        return paths

    t_start = time.monotonic()
    for r in range(rounds + 1):
        ctx = f"seed {seed}, round {r}"
        last = r == rounds
        paths = sources(r)
        (run / f"step-{r}").mkdir()
        stagers = [] if last else [Worker(py_env, "stage", store, p, n) for p, n in zip(paths, names)]
        if prev is not None and all(d is not None for d in prev["descs"]):
            files = []
            for k, d in enumerate(prev["descs"]):
                files.append(tmp_path / f"desc-{prev['step']}-{k}.json")
                files[-1].write_text(d)
            coord = Worker(py_env, "commit", store, prev["step"], f"step-{prev['step']}", *files)
            attempted.add(prev["step"])
        else:
            coord = Worker(py_env, "repair", store)
        crew = stagers + [coord]
        victim = rnd.choice(crew) if r >= 2 and not last else None  # rounds 0 and 1 calibrate: no kill
        for w in crew:
            w.go()
        if victim is not None:
            # Up to a little past its usual end: a stager is then killed
            # after finish(), before its part is committed.
            time.sleep(rnd.uniform(0, float(np.median(took[victim.role])) * 1.2 + 0.005))
            victim.kill()
        # Collect: a stager prints its descriptor, then waits to be closed;
        # the coordinator exits.
        descs: List[Optional[str]] = []
        for w in stagers:
            line = w.line()
            if line.startswith("staged "):
                descs.append(line.split(" ", 2)[2])
                took["stage"].append(float(line.split(" ", 2)[1]))
                if w.killed:
                    kills["stage-after-finish"] += 1
            else:
                assert w.killed, (ctx, line, w.p.stderr.read())
                kills["stage"] += 1
                descs.append(None)
        coord.finish()
        if coord.killed:
            kills[coord.role] += 1
        out = coord.lines[0].split() if coord.lines and coord.lines[0] else []
        if not coord.killed and out[0] != "refused":
            took[coord.role].append(float(out[-1]))
        if coord.role == "commit" and not coord.killed:
            if out[0] == "committed":
                assert out[1] == str(prev["step"]), (ctx, out)
                committed.add(prev["step"])
            else:
                # Refused, as a TPDEError: only when a participant died
                # after finishing (the coordinator's own writer open then
                # cleans its part up, objects and all).
                assert out[0] == "refused" and any(w.killed for w in prev["stagers"]), (ctx, coord.lines)
                refusals += 1
        if coord.role == "repair" and not coord.killed:
            assert out[:2] == ["repaired", "True"], (ctx, coord.lines)
        if r < 2:
            assert coord.role == "repair" or out[0] == "committed", (ctx, coord.lines)
        # The previous round's participants are done with: close them.
        if prev is not None:
            for w in prev["stagers"]:
                w.send("close")
                if not w.killed:
                    assert w.line() == "closed", ctx
                w.finish()
        with tpde.Store(store) as st:
            steps = st.steps()
            assert committed - reclaimed <= set(steps), (ctx, sorted(committed), steps)
            assert set(steps) <= attempted - reclaimed, (ctx, sorted(attempted), steps)
            # Never half a checkpoint: both ranks' files, as staged.
            for s in steps:
                assert _files(st, s) == want[s], (ctx, s)
            rep = st.verify(deep=False)
            assert rep.ok, (ctx, rep.problems)
            for s in {steps[-1], rnd.choice(steps)} if steps else ():
                assert _restored(st, s, tmp_path / "out") == want[s], (ctx, s)
            # Keep the store small: the oldest checkpoint's holder folder
            # goes, and reclaim removes that checkpoint (and no other).
            if len(steps) > 4:
                shutil.rmtree(run / f"step-{steps[0]}")
                assert st.reclaim() == [steps[0]], ctx
                reclaimed.add(steps[0])
            # A repair here runs beside the live parts of this round: it
            # removes every dead participant's folder and every object no
            # checkpoint and no live part names, and keeps theirs.
            rep = st.verify(deep=False, repair=True)
            assert rep.ok, (ctx, rep.problems)
            alive = [d for w, d in zip(stagers, descs) if not w.killed]
            assert len(_parts(store)) == len(alive), (ctx, _parts(store), [w.killed for w in stagers])
            assert set(os.listdir(store / "tmp")) == set(_parts(store)), ctx
            live = _live(st).union(*(_objects(d) for d in alive))
            assert _on_disk(store) == live, (ctx, len(_on_disk(store) - live), len(live - _on_disk(store)))
        prev = {"step": r, "stagers": stagers, "descs": descs}

    elapsed = time.monotonic() - t_start
    with tpde.Store(store) as st:
        steps = st.steps()
        assert committed - reclaimed == set(steps) - (attempted - committed)
        rep = st.verify(deep=True, repair=True)
        assert rep.ok, rep.problems
        assert os.listdir(store / "tmp") == []
        assert _on_disk(store) == _live(st)
        for s in steps:
            assert _restored(st, s, tmp_path / "out") == want[s], (seed, s)
    landed = sum(kills.values())
    print(f"{landed} kills {kills}, {len(committed)} commits, {refusals} refused, {elapsed:.1f} s; "
          f"median times {({k: round(float(np.median(v)), 3) for k, v in took.items() if v})}")
    assert landed >= rounds // 3, kills
    assert len(committed) >= rounds // 4, (len(committed), kills)


# --- 3. participants killed at chosen moments --------------------------------------


def _two_staged(py_env, store: Path, tmp_path: Path, tag: int) -> "tuple[List[Worker], List[str], List[Path]]":
    srcs = [_shard(tmp_path / f"{tag}-{k}.safetensors", k, 50 + tag) for k in range(2)]
    ws = [Worker(py_env, "stage", store, p, f"rank{k}.safetensors") for k, p in enumerate(srcs)]
    for w in ws:
        w.go()
    descs = []
    for w in ws:
        line = w.line()
        assert line.startswith("staged "), (line, w.p.stderr.read())
        descs.append(line.split(" ", 2)[2])
    return ws, descs, srcs


def _seed_store(store: Path, tmp_path: Path) -> Dict[str, str]:
    with tpde.Store(store) as st:
        p0, d0 = _stage_here(st, _shard(tmp_path / "s0", 0, 0), "rank0.safetensors")
        p1, d1 = _stage_here(st, _shard(tmp_path / "s1", 1, 0), "rank1.safetensors")
        st.commit([d0, d1], step=0)
        p0.close()
        p1.close()
        return _files(st, 0)


def test_participant_killed_after_finish_commits_if_no_cleanup_ran(tmp_path: Path, py_env) -> None:
    store = tmp_path / "store"
    first = _seed_store(store, tmp_path)
    with tpde.Store(store) as st:
        # The coordinator holds the writer already (opening it cleans up,
        # which would take a dead part's objects): reclaim opens it and
        # finds nothing to do.
        assert st.reclaim() == []
        ws, descs, srcs = _two_staged(py_env, store, tmp_path, 1)
        assert ws[0].kill()
        ws[0].finish()
        # No cleanup ran since it died: its objects are all there, and the
        # commit of both descriptors is whole.
        st.commit(descs, step=1)
        assert st.steps() == [0, 1]
        assert _restored(st, 1, tmp_path / "out") == {f"rank{k}.safetensors": sha256(p) for k, p in enumerate(srcs)}
        assert _restored(st, 0, tmp_path / "out") == first
    ws[1].send("close")
    assert ws[1].line() == "closed"
    ws[1].finish()
    with tpde.Store(store) as st:
        assert st.verify(deep=True, repair=True).ok
        assert os.listdir(store / "tmp") == [] and _on_disk(store) == _live(st)


def test_participant_killed_after_finish_then_cleanup_refuses_commit(tmp_path: Path, py_env) -> None:
    store = tmp_path / "store"
    first = _seed_store(store, tmp_path)
    ws, descs, _ = _two_staged(py_env, store, tmp_path, 2)
    assert len(_parts(store)) == 2
    assert ws[0].kill()
    ws[0].finish()
    with tpde.Store(store) as st:
        # A writer's cleanup runs between the death and the commit (opening
        # a writer cleans up, as does a repair): the dead part's folder and
        # its own objects go; the live part's stay.
        assert st.verify(deep=False, repair=True).ok
        assert len(_parts(store)) == 1
        gone = _objects(descs[0]) - _live(st)
        assert gone and not gone & _on_disk(store)
        assert _objects(descs[1]) <= _on_disk(store)
        with pytest.raises(TPDEError) as e:
            st.commit(descs, step=1)
        assert any(o in str(e.value) for o in gone) or "object" in str(e.value), e.value
        assert st.steps() == [0]
        assert _files(st, 0) == first
        # The live participant's part alone still commits.
        st.commit([descs[1]], step=1)
        assert set(_files(st, 1)) == {"rank1.safetensors"}
    ws[1].send("close")
    ws[1].finish()
    with tpde.Store(store) as st:
        assert st.verify(deep=True, repair=True).ok
        assert os.listdir(store / "tmp") == [] and _on_disk(store) == _live(st)


def test_participant_killed_mid_add_leaves_nothing(tmp_path: Path, py_env) -> None:
    store = tmp_path / "store"
    first = _seed_store(store, tmp_path)
    before = _on_disk(store)
    folder = tmp_path / "shard"
    folder.mkdir()
    _shard(folder / "a.safetensors", 0, 7)
    _shard(folder / "b.safetensors", 1, 7)
    w = Worker(py_env, "midadd", store, folder).go()
    assert w.line() == "mid", w.p.stderr.read()
    # Its first file's objects are in the store; it holds readers.lock
    # (coding) and its part folder, which has no list yet.
    assert _on_disk(store) - before
    assert len(_parts(store)) == 1 and os.listdir(store / "tmp" / _parts(store)[0]) == []
    assert w.kill()
    w.finish()
    with tpde.Store(store) as st:
        assert st.steps() == [0]
        # The next save works: nothing is stuck, and its commit's cleanup
        # removes the dead participant's folder and objects.
        ws, descs, srcs = _two_staged(py_env, store, tmp_path, 3)
        st.commit(descs, step=1)
        for x in ws:
            x.send("close")
            x.finish()
        assert st.steps() == [0, 1] and _files(st, 0) == first
        assert st.verify(deep=True, repair=True).ok
        assert os.listdir(store / "tmp") == [] and _on_disk(store) == _live(st)


# --- 4. holders ---------------------------------------------------------------


def test_holders_reclaim_exactly_the_removed_folders(tmp_path: Path, py_env) -> None:
    run = tmp_path / "run"
    run.mkdir()
    store = run / "store"
    want = {}
    with tpde.Store(store) as st:
        for i in range(6):
            (run / f"step-{i}").mkdir()
            (run / f"step-{i}" / "config.json").write_text("{}")
            p0, d0 = _stage_here(st, _shard(tmp_path / f"a{i}", 0, i), "rank0.safetensors")
            p1, d1 = _stage_here(st, {"w": torch.full((1000,), float(i))}, "rank1.tpde")
            st.commit([d0, d1], holder=f"step-{i}")
            p0.close()
            p1.close()
            want[i] = _files(st, i)
            assert tpde.store.read_pointer(run / f"step-{i}")["step"] == i
        # The oldest, a middle and the newest go; one is renamed.
        for i in (0, 2, 5):
            shutil.rmtree(run / f"step-{i}")
        (run / "step-1").rename(run / "kept-for-eval")
        assert st.reclaim() == [0, 2, 5]
        assert st.steps() == [1, 3, 4]
        assert st.reclaim() == []
        for i in (1, 3, 4):
            assert _restored(st, i, tmp_path / "out") == want[i], i
        assert tpde.store.read_pointer(run / "kept-for-eval")["step"] == 1
        assert st.verify(deep=True).ok

    # The CLI's repair reclaims too, and says which.
    (run / "step-3").rename(run / "step-3-old")
    shutil.rmtree(run / "step-4")
    p = subprocess.run([sys.executable, "-m", "tpde", "verify", str(store), "--repair"], env=py_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "removed checkpoint no folder holds any more: 4\n" in p.stderr, p.stderr
    shutil.rmtree(run / "step-3-old")
    p = subprocess.run([sys.executable, "-m", "tpde", "verify", str(store), "--repair", "--json"], env=py_env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["cleaned"]["reclaimed"] == [3]
    with tpde.Store(store) as st:
        assert st.steps() == [1]
        assert _restored(st, 1, tmp_path / "out") == want[1]
        assert _on_disk(store) == _live(st)


# --- 5. hostile descriptors ----------------------------------------------------------


def test_hostile_descriptors_are_refused(tmp_path: Path) -> None:
    store = tmp_path / "store"
    first = _seed_store(store, tmp_path)
    st = tpde.Store(store)
    p0, d0 = _stage_here(st, _shard(tmp_path / "h0", 0, 5), "rank0.safetensors")
    p1, d1 = _stage_here(st, _shard(tmp_path / "h1", 1, 5), "rank1.safetensors")
    dup, ddup = _stage_here(st, _shard(tmp_path / "h2", 1, 6), "rank0.safetensors")
    good = json.loads(d0)

    def forged(edit, converted: bool = True) -> str:
        p = json.loads(d0)
        if not converted:  # so that only what edit changes is wrong
            p["converted"] = []
        edit(p)
        return json.dumps(p)

    def missing(p):
        p["files"][0]["regions"][0]["object"] = "ab" * 32

    def wrong_size(p):
        p["files"][0]["regions"][0]["stored"] += 1

    def other_object(p):  # an object that exists, but is not this tensor
        p["files"][0]["regions"][0]["object"] = p["files"][0]["skeleton"]["object"]

    def with_ref(p):
        p["files"][0]["regions"][0]["ref"] = {"step": 0, "file": "rank0.safetensors", "region": "block.0.weight"}

    def lossy(p):
        p["files"][0]["regions"][0]["max_error"] = 0.5

    def huge(p):  # claims 2 GiB for a tensor whose object is a few hundred KB
        f = p["files"][0]
        r = f["regions"][-1]
        r["size"], r["shape"] = 2 << 30, [(2 << 30) // 4]
        f["size"] = r["offset"] + r["size"]

    def huge_file(p):  # 2 GiB more verbatim bytes than its skeleton holds
        p["files"][0]["size"] += 2 << 30

    def huge_stored(p):
        p["files"][0]["regions"][0]["stored"] = 2 << 30

    def traversal(p):
        p["files"][0]["path"] = "../../escaped.safetensors"

    def absolute(p):
        p["files"][0]["path"] = "/etc/cron.d/x"

    def unclean(p):
        p["files"][0]["path"] = "a//./b"

    def converted_forged(p):  # a delta "of" the previous keyframe that is not its tensor
        c = dict(p["files"][0]["regions"][0])
        c.update(file="rank0.safetensors", ref={"step": -1, "file": "rank0.safetensors", "region": "nope"})
        p["converted"] = [c]

    def bad_format(p):
        p["format"] = "tpde-store-record"

    def future(p):
        p["version"] = 99

    def extra_key(p):
        p["x"] = 1

    cases = {
        "missing object": forged(missing), "wrong stored size": forged(wrong_size),
        "another object": forged(other_object), "forged ref": forged(with_ref), "lossy claim": forged(lossy),
        "2 GiB tensor": forged(huge, False), "2 GiB file": forged(huge_file, False),
        "2 GiB object": forged(huge_stored, False), "traversal": forged(traversal, False),
        "absolute": forged(absolute, False), "unclean": forged(unclean, False),
        "forged converted": forged(converted_forged), "format": forged(bad_format), "version": forged(future),
        "unknown key": forged(extra_key),
        "garbage": "{not json", "truncated": d0[: len(d0) // 2], "null": "null", "number": "1", "array": "[]",
        "empty object": "{}", "NUL": d0.replace('"files"', '"fi\\u0000les"'),
    }
    for what, desc in cases.items():
        with pytest.raises(TPDEError):
            st.commit([desc, d1], step=1)
        assert st.steps() == [0], what
    # Duplicate file names across parts, and the same part twice.
    with pytest.raises(TPDEError):
        st.commit([d0, ddup, d1], step=1)
    # A file of one part that is a folder of another's.
    folder, dfolder = _stage_here(st, _shard(tmp_path / "h3", 1, 7), "rank0.safetensors/inner.safetensors")
    with pytest.raises(TPDEError):
        st.commit([d0, dfolder], step=1)
    folder.close()
    with pytest.raises(TPDEError):
        st.commit([d0, d0], step=1)
    # Envelope games: a descriptor that closes the list and opens another.
    with pytest.raises(TPDEError):
        st.commit([d0 + "]" + "[" + d1], step=1)
    assert st.steps() == [0]
    assert good["files"][0]["path"] == "rank0.safetensors"

    # Nothing was listed, nothing was harmed, and the honest commit works.
    assert _files(st, 0) == first
    st.commit([d0, d1], step=1)
    assert st.steps() == [0, 1]
    assert set(_files(st, 1)) == {"rank0.safetensors", "rank1.safetensors"}
    for p in (p0, p1, dup):
        p.close()
    assert st.verify(deep=True, repair=True).ok
    assert not (tmp_path / "escaped.safetensors").exists()
    assert _on_disk(store) == _live(st)
    st.close()


def test_a_part_with_no_files_lists_no_empty_checkpoint(tmp_path: Path) -> None:
    """A participant that staged nothing: its descriptor is accepted
    beside others (it adds nothing), but alone it must not publish a
    checkpoint without files."""
    store = tmp_path / "store"
    _seed_store(store, tmp_path)
    with tpde.Store(store) as st:
        empty = st.stage()
        d = empty.finish()
        assert json.loads(d)["files"] == []
        try:
            info = st.commit([d], step=1)
        except TPDEError:
            assert st.steps() == [0]
        else:
            pytest.fail(f"a checkpoint without files was committed: {info}")
        finally:
            empty.close()
