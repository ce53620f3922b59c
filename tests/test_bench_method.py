"""The benchmark's timing method does what bench/README.md says ("How it is timed").

bench/run.py's 1-thread rows claim one core: every thread of the process
pinned, not only the calling one (Go's runtime threads and the tools' pools
exist before the pinning). These tests check the pinning and the same-input
contract of the per-tensor tools; nothing here times anything.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_common():
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location("tpde_bench_common", ROOT / "bench" / "common.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod
    finally:
        sys.path.remove(str(ROOT / "bench"))


common = _load_common()


def _allowed(tid: int) -> set:
    return os.sched_getaffinity(tid)


def _tids() -> list:
    return [int(t) for t in os.listdir("/proc/self/task")]


needs_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="pinning needs at least two usable cores (pin_core returns None and nothing is pinned)")


@needs_two_cores
def test_pinned_holds_every_thread_and_restores_them():
    before = os.sched_getaffinity(0)
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)  # a thread started before the pinning, like a tool's pool
    t.start()
    try:
        core = common.pin_core()
        assert core in before
        with common.pinned(core):
            pinned = {tid: _allowed(tid) for tid in _tids()}
            # a thread started inside inherits the pin
            seen = {}
            u = threading.Thread(target=lambda: seen.setdefault("mask", os.sched_getaffinity(0)))
            u.start()
            u.join()
        after = {tid: _allowed(tid) for tid in _tids()}
    finally:
        stop.set()
        t.join()
    assert len(pinned) >= 2
    assert all(m == {core} for m in pinned.values()), pinned
    assert seen["mask"] == {core}
    assert all(m == before for m in after.values()), after


def test_pinned_none_changes_nothing():
    before = {tid: _allowed(tid) for tid in _tids()}
    with common.pinned(None):
        inside = {tid: _allowed(tid) for tid in _tids()}
    assert inside == before


def test_every_per_tensor_tool_gets_the_same_bytes_and_restores_them():
    torch = pytest.importorskip("torch")
    pytest.importorskip("zipnn")
    pytest.importorskip("z4ai")
    g = torch.Generator().manual_seed(0)
    tensors = {
        "w": (torch.randn(300, 70, generator=g) * 0.02).to(torch.bfloat16),
        "b": torch.zeros(70, dtype=torch.bfloat16),
        "ids": torch.arange(33, dtype=torch.int64),
    }
    codecs = [common.TpdeTensors(tensors, 1), common.ZipNNPerTensor(tensors, 1),
              common.ZipNNPerTensorTorch(tensors, 1), common.Z4aiTensors(tensors, 1)]
    assert len({c.input_bytes for c in codecs}) == 1  # one set of tensors for every tool
    rows = common.decode_only([(c, None) for c in codecs], reps=1)  # raises BenchError on any difference
    assert [r["tool"] for r in rows] == [c.name for c in codecs]
    assert all(r["compressed_bytes"] > 0 for r in rows)


def test_a_tool_that_does_not_restore_its_input_stops_the_run():
    class Broken(common.Codec):
        name = "broken"

        def compress(self):
            return b"x"

        def size(self, state):
            return len(state)

        def decompress(self, state):
            return b"y"

        def verify(self, out):
            return False

    with pytest.raises(common.BenchError, match="broken"):
        common.decode_only([(Broken(1), None)], reps=1)
    with pytest.raises(common.BenchError, match="broken"):
        common.measure([Broken(1)], reps=1)
