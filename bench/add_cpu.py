"""CPU time of each add and each background re-code of a Trainer series
(bench/PROFILE.md, "Trainer callback"): what the Trainer callback's
overhead is made of on a machine whose cores training keeps busy.

Adds the first --checkpoints folders of a cached Trainer run (bench/out/
hf-run-*, made by bench/store.py or bench/hf_run.py) to a new store, and
prints, per add, the process CPU time (every thread) and wall time until
add returns, then the same for the re-code of the checkpoint before it
(Store.wait), and the store's bytes at the end. To compare two libraries,
run it at each commit (./build.sh lib in between). To see where the CPU
goes, run it under perf with --threads 1 --recode inline.

    PYTHONPATH=python python bench/add_cpu.py bench/out/hf-run-<id> [--checkpoints 4] \
        [--threads 0] [--recode background]

It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a folder of checkpoint-N folders")
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--recode", choices=("background", "inline"), default="background")
    args = ap.parse_args()
    from tpde import Store

    folders = sorted((p for p in args.run.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)),
                     key=lambda p: int(p.name.split("-")[1]))[:args.checkpoints]
    if not folders:
        raise SystemExit(f"{args.run}: no checkpoint-N folders")
    work = Path(tempfile.mkdtemp(prefix="tpde-add-cpu-"))
    try:
        path = work / "store"
        s = Store(path, threads=args.threads, recode=args.recode)
        for f in folders:
            step = int(f.name.split("-")[1])
            c0, t0 = cpu_s(), time.perf_counter()
            s.add(f, step=step)
            c1, t1 = cpu_s(), time.perf_counter()
            s.wait()
            c2, t2 = cpu_s(), time.perf_counter()
            print(f"step {step}: add cpu {c1 - c0:.2f} s wall {t1 - t0:.2f} s | "
                  f"re-code cpu {c2 - c1:.2f} s wall {t2 - t1:.2f} s", flush=True)
        s.close()
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)
        print(f"store bytes {size:,}")
    finally:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
