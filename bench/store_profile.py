"""Where a store's add and resume spend their time (bench/PROFILE.md, "Add" and "Resume").

The same checkpoints as bench/store.py's full series (the MiniLM Trainer
run, fp32, 273 MB of tensors per checkpoint): a store holding all but the
newest, then

  add     Store.add of the newest checkpoint folder (a steady-state add),
          each repetition on a fresh copy of the store;
  resume  Store.load(step, file=F, unpickle=True) of the newest
          checkpoint's tensor files, as bench/store.py times a resume.

Each phase reports its wall time and its CPU time (every thread of the
process: what it costs whatever else runs on the machine), median of the
repetitions. A resume is split further: the Go decode calls (the one call
per file that decodes into the caller's memory), torch.load (the pickle
part of torch files) and the rest (allocation, tables, Python).

With --perf (Linux perf on PATH), each phase is also run under
`perf record -g`, and the samples are sorted by the function that was
running into a few kinds of work (sha256, CRC32C, entropy coding, plane
transforms, page faults, writes, Python, ...): shares of CPU time move much
less with the machine's load than seconds do.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/store_profile.py [--reps 5] [--perf] \
        [--json bench/results/store_profile.json]

It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import hf_run  # noqa: E402
import store as store_bench  # noqa: E402  (FULL, TENSOR_FILES, trainer_safe_globals)

#: What a sampled function's name says about the work it does, first match
#: wins. A function not listed is "other Go" or "other native".
KINDS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("page faults, zeroing", ("page_fault", "clear_page", "shmem_", "handle_mm_fault", "do_anonymous_page",
                              "folio", "__pte", "_raw_spin", "lru", "memcg", "rmqueue", "alloc_pages")),
    ("sha256", ("sha256",)),
    ("crc32c", ("crc32",)),
    ("huffman (huff0)", ("huff0",)),
    ("zstd", ("zstd.",)),
    ("plane transforms", ("core/transform",)),
    ("delta kernels", ("core/delta",)),
    ("memmove", ("memmove", "memcpy", "memclr", "__memset")),
    ("write, sync, read syscalls", ("vfs_", "ext4", "xfs", "btrfs", "filemap", "copy_user", "copy_folio", "rep_movs",
                                    "sync_file_range", "syncfs", "iomap", "submit_bio", "generic_perform_write")),
    ("Go runtime, GC", ("runtime.",)),
    ("scheduler", ("finish_task_switch", "schedule", "futex", "recently_deleted", "try_to_wake_up")),
    ("Python interpreter", ("_PyEval", "PyObject", "_Py", "Py", "unicode", "visit_", "gc_collect", "dict", "list_")),
    ("torch (C++)", ("c10::", "at::", "torch::")),
)


def kind_of(sym: str) -> str:
    for kind, marks in KINDS:
        if any(m in sym for m in marks):
            return kind
    if "github.com/" in sym or sym.startswith("main.") or "tpde" in sym:
        return "other Go"
    return "other native"


def perf_shares(data: Path) -> Dict[str, float]:
    """Self-time shares by kind, from `perf report --no-children`."""
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "sym", "--stdio",
                          "-g", "none", "--percent-limit", "0"], capture_output=True, text=True, check=True).stdout
    shares: Dict[str, float] = {}
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "%" not in line:
            continue
        pct, _, rest = line.partition("%")
        try:
            p = float(pct)
        except ValueError:
            continue
        sym = rest.split("]", 1)[-1].strip()
        k = kind_of(sym)
        shares[k] = shares.get(k, 0.0) + p
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


class PerfControl:
    """perf record's control FIFOs (--control fifo:CTL,ACK, started with -D -1):
    sampling is enabled only around the timed calls, so imports and set-up
    are not in the shares."""

    def __init__(self) -> None:
        spec = os.environ.get("TPDE_PROFILE_PERF_CTL")
        self.ctl = self.ack = None
        if spec:
            ctl, ack = spec.split(",")
            self.ctl, self.ack = open(ctl, "w"), open(ack, "r")

    def send(self, cmd: str) -> None:
        if self.ctl is not None:
            self.ctl.write(cmd + "\n")
            self.ctl.flush()
            self.ack.readline()


PERF = PerfControl()


def timed(fn: Callable[[], Any]) -> Tuple[Any, float, float]:
    PERF.send("enable")
    w, c = time.perf_counter(), time.process_time()
    try:
        r = fn()
    finally:
        PERF.send("disable")
    return r, time.perf_counter() - w, time.process_time() - c


def build_base(run: hf_run.Run, work: Path) -> Tuple[Path, Path, int]:
    import tpde

    base = work / "base.tpde"
    with tpde.Store(base) as s:
        for d in run.dirs[:-1]:
            s.add(d)
    return base, run.dirs[-1], run.steps[-1]


def profile_add(base: Path, newest: Path, work: Path, reps: int) -> Dict[str, Any]:
    import tpde

    walls: List[float] = []
    cpus: List[float] = []
    close_walls: List[float] = []
    for _ in range(reps):
        dst = work / "add.tpde"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(base, dst, symlinks=True)
        os.sync()  # the copy's dirty pages are not the add's to flush (bench/store.py does the same)
        s = tpde.Store(dst)
        try:
            _, w, c = timed(lambda: s.add(newest))
        finally:
            _, cw, _ = timed(s.close)  # background work, if any, finishes here
        walls.append(w)
        cpus.append(c)
        close_walls.append(cw)
    return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus),
            "close_wall_s": statistics.median(close_walls), "reps": reps}


def profile_resume(store: Path, step: int, reps: int) -> Dict[str, Any]:
    import torch

    import tpde

    files = list(store_bench.TENSOR_FILES)
    phases: Dict[str, List[float]] = {}
    acc: Dict[str, float] = {}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def go(*a: Any, **k: Any) -> Any:
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*a, **k)
            finally:
                acc[name + "_wall"] = acc.get(name + "_wall", 0.0) + time.perf_counter() - w
                acc[name + "_cpu"] = acc.get(name + "_cpu", 0.0) + time.process_time() - c
        return go

    # The decode calls are wrapped where the loader looks them up.
    from tpde.store import handle, state_dict

    real_call, real_read_into, real_load = state_dict.call, handle._Reader.read_into, torch.load

    def call(name: str, *a: Any, **k: Any) -> Any:
        if name == "tpde_store_read_tensors":
            return wrap("decode", real_call)(name, *a, **k)
        return real_call(name, *a, **k)

    state_dict.call = call
    handle._Reader.read_into = wrap("decode", real_read_into)
    torch.load = wrap("torch_load", real_load)
    try:
        for rep in range(reps + 1):  # the first warms the page cache and is not counted
            acc.clear()
            with store_bench.trainer_safe_globals():
                _, w, c = timed(lambda: [tpde.Store(store).load(step, file=f, unpickle=True) for f in files])
            if rep == 0:
                continue
            row = {"total_wall": w, "total_cpu": c, **acc}
            for k, v in row.items():
                phases.setdefault(k, []).append(v)
    finally:
        state_dict.call, handle._Reader.read_into, torch.load = real_call, real_read_into, real_load
    med = {k: statistics.median(v) for k, v in phases.items()}
    med["other_wall"] = med["total_wall"] - med.get("decode_wall", 0) - med.get("torch_load_wall", 0)
    med["other_cpu"] = med["total_cpu"] - med.get("decode_cpu", 0) - med.get("torch_load_cpu", 0)
    return {"seconds": med, "reps": reps, "files": files}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5, help="repetitions per phase (median; default 5)")
    ap.add_argument("--perf", action="store_true", help="also sample each phase with perf record -g")
    ap.add_argument("--only", choices=("add", "resume"), help="one phase (what --perf runs under perf)")
    ap.add_argument("--work", metavar="DIR", help="reuse this folder's base store (made when missing)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON")
    args = ap.parse_args(argv)

    p = hf_run.make_params(store_bench.FULL["checkpoints"], store_bench.FULL["steps_between"], "fp32")
    run = hf_run.load_run(p, log=lambda s: print(s, file=sys.stderr, flush=True))
    rec: Dict[str, Any] = {"benchmark": "store_profile", **common.run_info(), "command": common.command_line(),
                           "machine": common.machine(), "run": p.describe(), "reps": args.reps}
    with tempfile.TemporaryDirectory(prefix="tpde-store-profile-") as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        base = work / "base.tpde"
        if not (base / "manifests").is_dir():
            base, newest, step = build_base(run, work)
        newest, step = run.dirs[-1], run.steps[-1]
        resume_store = work / "resume.tpde"
        if args.only in (None, "resume") and not (resume_store / "manifests").is_dir():
            shutil.rmtree(resume_store, ignore_errors=True)
            shutil.copytree(base, resume_store, symlinks=True)
            import tpde
            with tpde.Store(resume_store) as s:
                s.add(newest)
        if args.only in (None, "add"):
            rec["add"] = profile_add(base, newest, work, args.reps)
            print(f"add: wall {rec['add']['wall_s']:.3f} s, cpu {rec['add']['cpu_s']:.3f} s, "
                  f"close {rec['add']['close_wall_s']:.3f} s")
        if args.only in (None, "resume"):
            rec["resume"] = profile_resume(resume_store, step, args.reps)
            sec = rec["resume"]["seconds"]
            print("resume: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(sec.items())))
        if args.perf and args.only is None:
            if not shutil.which("perf"):
                raise SystemExit("--perf: perf is not on PATH")
            rec["perf"] = {}
            for phase in ("add", "resume"):
                data = work / f"{phase}.perf.data"
                ctl, ack = work / "perf.ctl", work / "perf.ack"
                for f in (ctl, ack):
                    f.unlink(missing_ok=True)
                    os.mkfifo(f)
                cmd = ["perf", "record", "-F", "999", "-g", "-D", "-1", f"--control=fifo:{ctl},{ack}",
                       "-o", str(data), "--", sys.executable, __file__,
                       "--only", phase, "--reps", str(args.reps), "--work", str(work)]
                env = {**os.environ, "TPDE_PROFILE_PERF_CTL": f"{ctl},{ack}"}
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
                rec["perf"][phase] = perf_shares(data)
                print(f"{phase} (perf, share of CPU samples in the timed calls):")
                for k, v in rec["perf"][phase].items():
                    print(f"  {v:5.1f}%  {k}")
    rec["load_average_end"] = list(os.getloadavg())
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
