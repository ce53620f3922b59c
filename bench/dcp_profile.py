"""Where a DCP save's time goes, phase by phase, on 1 rank and on 2 (bench/PROFILE.md, "DCP save").

The same state and sharding as bench/dcp.py (the MiniLM run's first
checkpoint, 273 MB of fp32; 2 ranks: every tensor a DTensor Shard(0)), the
same alternation of 1-rank and 2-rank saves, every save the first of a new
store (a first save: keyframes only). Each phase is timed by wrapping the
method that runs it; the medians print per rank:

  plan        from dcp.save's start to write_data's (torch's planning: the
              local plans gathered, the global plan scattered)
  part_add    Part.add: the rank's state dict coded into the store (Go)
  add_cpu     the CPU time of part_add (all of the process's threads):
              what it costs whatever else the machine runs
  write_data  all of the rank's write_data (part_add, its open and finish)
  finish      the coordinator's finish: commit, .metadata, reclaim
  commit      of which the commit of every rank's part (CommitParts)
  total       dcp.save, barrier to barrier

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/dcp_profile.py [--reps 6] [--workdir DIR]

Run it under `perf record -g` or `py-spy record --subprocesses` to see
inside a phase. It reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))

PHASES = ("plan", "part_add", "add_cpu", "write_data", "finish", "commit", "total")


def worker(work: Path, reps: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import tpde
    from tpde.integrations import dcp as tdcp
    from tpde.store import api

    torch.set_num_threads(1)
    tpde.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    full = torch.load(work / "state1.pt", weights_only=True)
    mesh = init_device_mesh("cpu", (2,))
    sharded = {k: distribute_tensor(v, mesh, [Shard(0)], src_data_rank=None) for k, v in full.items()}
    times: Dict[str, float] = {}
    start = [0.0]

    def timed(cls: Any, name: str, phase: str) -> None:
        f = getattr(cls, name)

        def g(*a: Any, **k: Any) -> Any:
            t0, c0 = time.perf_counter(), time.process_time()
            times.setdefault(phase + ">", t0 - start[0])
            try:
                return f(*a, **k)
            finally:
                times[phase] = times.get(phase, 0.0) + time.perf_counter() - t0
                if phase == "part_add":
                    times["add_cpu"] = times.get("add_cpu", 0.0) + time.process_time() - c0

        setattr(cls, name, g)

    timed(tdcp.Writer, "write_data", "write_data")
    timed(tdcp.Writer, "finish", "finish")
    timed(tdcp.Writer, "_commit", "commit")
    timed(api.Part, "add", "part_add")
    got: Dict[int, List[Dict[str, float]]] = {1: [], 2: []}
    for rep in range(reps):
        for n in ((1, 2) if rep % 2 == 0 else (2, 1)):
            path = work / f"ranks{n}" / "step-1"
            if rank == 0:
                shutil.rmtree(path.parent, ignore_errors=True)
            dist.barrier()
            times.clear()
            start[0] = time.perf_counter()
            if n == 2 or rank == 0:
                dcp.save(sharded if n == 2 else full, checkpoint_id=path,
                         storage_writer=tdcp.Writer(path, codec_threads=1), no_dist=n == 1)
            dist.barrier()
            times["total"] = time.perf_counter() - start[0]
            times["plan"] = times.get("write_data>", 0.0)
            got[n].append(dict(times))
    every: List[Any] = [None, None]
    dist.all_gather_object(every, got)
    if rank == 0:
        print(f"{'ranks':>5} {'rank':>4} " + " ".join(f"{p:>10}" for p in PHASES) + "   (median s)")
        for n in (1, 2):
            for r in range(n):
                runs = every[r][n]
                print(f"{n:>5} {r:>4} " + " ".join(f"{statistics.median(x.get(p, 0.0) for x in runs):>10.3f}"
                                                  for p in PHASES))
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--workdir", help="scratch folder, kept (default: a temporary one)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(Path(args.worker), args.reps)
        return 0
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tpde-dcp-profile-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not (work / "state1.pt").exists():
            import dcp

            dcp.prepare(work)
        env = dict(os.environ, OMP_NUM_THREADS="1")
        root = Path(__file__).resolve().parents[1]
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root / "python"), env.get("PYTHONPATH")) if p)
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               __file__, "--worker", str(work), "--reps", str(args.reps)], env=env).returncode
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
