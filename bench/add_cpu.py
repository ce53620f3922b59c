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
        [--threads 0] [--recode background] [--peers] [--json PATH]

With --peers it also times, on each checkpoint, what bench/hf_overhead.py's
peer callbacks do: its files coded one by one with ZipNN (zstd-3 for files
without floats) and with zstd-3, read, coded, written and fsynced.

It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: The per-file peers timed with --peers (bench/hf_overhead.py's callbacks).
PEERS = ("zipnn", "zstd")


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peer_cpu(folder: Path, tool: str, out: Path) -> Dict[str, float]:
    """CPU and wall time of coding folder's files one by one with a peer
    (hf_run.compress_folder_like_a_user, as bench/hf_overhead.py's peer
    callbacks do), and the bytes written."""
    import hf_run

    dtypes = {f: hf_run.zipnn_dtype(f) for _, f in hf_run.tree_files(folder)}  # untimed, as a user passes them
    c0, t0 = cpu_s(), time.perf_counter()
    n = hf_run.compress_folder_like_a_user(folder, out, tool, dtypes)
    r = {"cpu_s": cpu_s() - c0, "wall_s": time.perf_counter() - t0, "bytes": n}
    shutil.rmtree(out)
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a folder of checkpoint-N folders")
    ap.add_argument("--checkpoints", type=int, default=4)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--recode", choices=("background", "inline"), default="background")
    ap.add_argument("--peers", action="store_true",
                    help="also code each checkpoint's files one by one with ZipNN and with zstd-3")
    ap.add_argument("--json", metavar="PATH", help="record the figures (with --peers: the medians too)")
    args = ap.parse_args()
    from tpde import Store

    import common

    rec: Dict[str, Any] = {"benchmark": "add_cpu", **common.run_info(), "command": common.command_line(),
                           "machine": common.machine(), "versions": common.versions()}
    folders = sorted((p for p in args.run.iterdir() if re.fullmatch(r"checkpoint-\d+", p.name)),
                     key=lambda p: int(p.name.split("-")[1]))[:args.checkpoints]
    if not folders:
        raise SystemExit(f"{args.run}: no checkpoint-N folders")
    if args.peers:
        common.quiet_import_zipnn()  # untimed: zipnn imports torch on first use
    rows: List[Dict[str, Any]] = []
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
            row: Dict[str, Any] = {"step": step, "add_cpu_s": c1 - c0, "add_wall_s": t1 - t0,
                                   "recode_cpu_s": c2 - c1, "recode_wall_s": t2 - t1}
            line = (f"step {step}: add cpu {c1 - c0:.2f} s wall {t1 - t0:.2f} s | "
                    f"re-code cpu {c2 - c1:.2f} s wall {t2 - t1:.2f} s")
            if args.peers:
                for tool in PEERS:
                    row[tool] = peer_cpu(f, tool, work / tool)
                    line += f" | {tool} cpu {row[tool]['cpu_s']:.2f} s"
            print(line, flush=True)
            rows.append(row)
        s.close()
        size = sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)
        print(f"store bytes {size:,}")
    finally:
        shutil.rmtree(work)
    if args.json:
        later = rows[1:] or rows  # the first add has no predecessor to re-code
        med = {"tpde_add_cpu_s": statistics.median(r["add_cpu_s"] for r in later),
               "tpde_recode_cpu_s": statistics.median(r["recode_cpu_s"] for r in later)}
        med["tpde_cpu_s"] = statistics.median(r["add_cpu_s"] + r["recode_cpu_s"] for r in later)
        if args.peers:
            for tool in PEERS:
                med[f"{tool}_cpu_s"] = statistics.median(r[tool]["cpu_s"] for r in later)
        rec.update({"params": {"run": args.run.name, "checkpoints": len(folders), "threads": args.threads,
                               "recode": args.recode, "peers": args.peers},
                    "checkpoints": rows, "store_bytes": size, "median_after_first": med,
                    "load_average_end": common.load_average()})
        common.write_json(args.json, rec)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
