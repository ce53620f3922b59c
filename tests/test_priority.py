"""Background coding stays out of training's way: a store opened with
priority="idle" or "low" does its writes on threads lowered to it (the Go
library's, core/par), never more than threads= of them run at once besides
the one that leads the work, and no lowered thread outlives the work."""
from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import pytest

import tpde
from tpde.integrations.hf import TPDETrainerCallback

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="thread priorities are Linux's")

SCHED_IDLE = 5


def thread_runs() -> Dict[int, Tuple[int, int, bool]]:
    """{tid: (policy, nice, running)} of this process's threads, from /proc:
    running is state R (on a core or waiting for one)."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            stat = Path(f"/proc/self/task/{tid}/stat").read_text()
        except OSError:  # the thread ended
            continue
        rest = stat[stat.rindex(")") + 2:].split()  # fields from 3 on
        out[int(tid)] = (int(rest[38]), int(rest[16]), rest[0] == "R")  # policy (41), nice (19), state (3)
    return out


def lowered_threads(want: Tuple[int, int]) -> List[int]:
    return [tid for tid, st in thread_runs().items() if st[:2] == want]


class Sampler:
    """Samples the threads every millisecond while work runs."""

    def __init__(self) -> None:
        self.samples: List[Dict[int, Tuple[int, int, bool]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(thread_runs())
            time.sleep(0.001)

    def __enter__(self) -> "Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def lowered(self, want: Tuple[int, int]) -> Tuple[Set[int], int]:
        """The threads ever seen at priority want, and the most that ran
        at once (threads that ended but are still listed do not count)."""
        seen: Set[int] = set()
        most = 0
        for s in self.samples:
            seen |= {tid for tid, st in s.items() if st[:2] == want}
            most = max(most, sum(1 for st in s.values() if st[:2] == want and st[2]))
        return seen, most


def wanted(priority: str) -> Tuple[int, int]:
    base = os.getpriority(os.PRIO_PROCESS, 0)  # the suite may run under nice
    if priority == "low" and base == 19:
        pytest.skip("the process already runs at nice 19: lowering to it shows nothing")
    return (SCHED_IDLE, base) if priority == "idle" else (0, 19)


def settled(want: Tuple[int, int]) -> bool:
    """No thread left at want. Lowered threads end with their work; on a
    busy machine an idle one gets a core last, so wait for it (a bound on
    liveness, not a timing)."""
    for _ in range(1200):
        if not lowered_threads(want):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("priority,threads", [("idle", 2), ("idle", 1), ("low", 2)])
def test_a_stores_writes_run_on_lowered_threads(tmp_path: Path, minilm_model_dir: Path, priority: str,
                                                threads: int) -> None:
    want = wanted(priority)
    assert settled(want), "a lowered thread before the test: it would prove nothing"
    caller = threading.get_native_id()
    with Sampler() as s, tpde.Store(tmp_path / "store", threads=threads, priority=priority) as st:
        st.add(minilm_model_dir, step=1)
    seen, most = s.lowered(want)
    assert seen, "the add ran on no lowered thread"
    assert caller not in seen, "the caller's own thread must keep its priority"
    # One thread leads the work, and at most `threads` workers run beside it;
    # a lowered thread that finished may still be listed as runnable while
    # it waits, on a busy machine, for a core to end on: at most as many.
    assert most <= 2 * (threads + 1), (most, threads)
    assert settled(want), f"lowered threads left behind: {lowered_threads(want)}"
    # The caller's thread and a plain store's work are untouched.
    assert thread_runs()[caller][:2] != want
    with Sampler() as s, tpde.Store(tmp_path / "store2", threads=2) as st:
        st.add(minilm_model_dir, step=1)
    assert not s.lowered(want)[0]
    with tpde.Store(tmp_path / "store") as st:
        assert st.steps() == [1]


def test_the_trainer_callback_codes_at_idle_priority_by_default(tmp_path: Path, minilm_model_dir: Path) -> None:
    cb = TPDETrainerCallback(compression_output_dir=tmp_path / "store")
    assert (cb.priority, cb.threads) == ("idle", 0)
    with pytest.raises(tpde.InvalidArgumentError, match="priority"):
        TPDETrainerCallback(priority="realtime")
    with pytest.raises(tpde.InvalidArgumentError, match="threads"):
        TPDETrainerCallback(threads=-1)
    with pytest.raises(tpde.InvalidArgumentError, match="priority"):
        tpde.Store(tmp_path / "s", priority="high")


def test_a_training_run_with_the_callback_codes_on_idle_threads(tmp_path: Path, minilm_model_dir: Path) -> None:
    from test_integration_hf import train  # the same tiny Trainer run the integration tests use

    want = wanted("idle")
    assert settled(want)
    cb = TPDETrainerCallback(compression_output_dir=tmp_path / "store", threads=1)
    with Sampler() as s:
        train(minilm_model_dir, tmp_path / "out", callbacks=[cb], max_steps=20)
    seen, most = s.lowered(want)
    assert seen, "the callback's adds ran on no SCHED_IDLE thread"
    # The bound of test_a_stores_writes_run_on_lowered_threads: one leader
    # and threads=1 worker, plus as many finished ones still listed as
    # runnable while they wait, behind training's threads, for a core to
    # exit on (an add follows its predecessor's background re-code, whose
    # threads may still be exiting: CI saw 4).
    assert most <= 2 * (1 + 1), most
    assert settled(want)
    with tpde.Store(tmp_path / "store") as st:
        assert st.steps() == [10, 20]
