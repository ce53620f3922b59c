"""The torch.distributed.checkpoint benchmark: tpde.dcp.Writer beside torch's own FileSystemWriter.

State: the full training state of a real fine-tuning run (bench/hf_run.py:
the all-MiniLM-L6-v2 weights fine-tuned on the CPU with AdamW, 2
checkpoints 10 steps apart, cached in bench/out/), as one flat dict of fp32
tensors: the weights and AdamW's exp_avg/exp_avg_sq by parameter name
(bench/store.py flat_state). Save 1 is the state at step 10, save 2 the
state at step 20.

Each configuration runs under torchrun (gloo, CPU): 1 rank holding plain
tensors, and 2 ranks holding every tensor as a DTensor sharded on dim 0
(distribute_tensor with Shard(0): each rank gets half of every tensor, as
FSDP2 shards parameters), so each rank codes half of the state.

- save throughput: state bytes / wall time of dcp.save (barrier to barrier
  on rank 0; median of --reps), for tpde.dcp.Writer with 1 coding thread
  per rank (torch and tpde set to 1 thread, OMP_NUM_THREADS=1): the 2-rank
  figure over the 1-rank figure measures how coding scales across ranks
  (target >= 1.8). With the default sync_files=True (every file fsynced:
  the disk is shared by the ranks) and, to see the coding alone, with
  sync_files=False ("tpde_nosync"). The 1-rank run also times tpde with 2
  coding threads in one rank (codec_threads=2), and both runs time the
  coding alone (tpde.compress_tensor of each rank's tensors, no DCP, no
  files): its scaling is the most this machine allows. The load average is
  recorded: other processes on the cores take from the scaling.
- size (all files of the checkpoint folder, .metadata included), of save 1
  alone (tpde keyframes) and save 2 (tpde: deltas against save 1, the same
  Writer with a new checkpoint_id), against FileSystemWriter and
  FileSystemWriter(_extensions=[ZStandard()]) (torch's zstd stream
  extension, zstandard's default level 3) on the same saves; target: tpde
  >= 1.5x smaller than FileSystemWriter+ZStandard.
- every checkpoint of every rep is loaded back (into fresh tensors, or
  DTensors of the same sharding) and compared bit for bit on every rank; a
  mismatch stops the run with exit status 1.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/dcp.py --quick
    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/dcp.py --json bench/results/dcp.json
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
from typing import Any, Callable, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, BenchError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN = {"checkpoints": 2, "steps_between": 10}
TARGETS = {"scaling_2_ranks": 1.8, "zstd_over_tpde": 1.5}
TOOLS = ("tpde", "fsw", "fsw_zstd")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- the torchrun side -------------------------------------------------------------

def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def worker(work: Path, reps: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint._extension import ZStandard
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    import tpde
    import tpde.dcp

    torch.set_num_threads(1)
    tpde.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    states = [torch.load(work / f"state{i}.pt", weights_only=True) for i in (1, 2)]
    state_bytes = sum(t.nbytes for t in states[0].values())
    if world > 1:
        mesh = init_device_mesh("cpu", (world,))
        # every rank holds the full tensors, so each cuts its own shard (no scatter)
        states = [{k: distribute_tensor(v, mesh, [Shard(0)], src_data_rank=None) for k, v in s.items()}
                  for s in states]

    def local(t: Any) -> Any:
        return t.to_local() if isinstance(t, DTensor) else t

    def check(path: Path, want: Dict[str, Any]) -> None:
        got = {k: (distribute_tensor(torch.zeros(v.shape), v.device_mesh, v.placements, src_data_rank=None)
                   if isinstance(v, DTensor) else torch.zeros_like(v)) for k, v in want.items()}
        reader = tpde.dcp.Reader(path) if path.name.startswith("tpde") else dcp.FileSystemReader(path)
        dcp.load(got, storage_reader=reader)
        for k, v in want.items():
            a, b = local(v).contiguous().view(-1).view(torch.uint8), local(got[k]).contiguous().view(-1).view(torch.uint8)
            if not torch.equal(a, b):
                raise BenchError(f"rank {rank}: {k} differs after loading {path}")

    def timed_save(sd: Dict[str, Any], writer: Any, path: Path) -> float:
        dist.barrier()
        t0 = time.perf_counter()
        dcp.save(sd, checkpoint_id=path, storage_writer=writer)
        dist.barrier()
        return time.perf_counter() - t0

    writers: Dict[str, Callable[[Path], Any]] = {
        "tpde": lambda p: tpde.dcp.Writer(p, codec_threads=1),
        "tpde_nosync": lambda p: tpde.dcp.Writer(p, codec_threads=1, sync_files=False),
        "fsw": lambda p: dcp.FileSystemWriter(p),
        "fsw_zstd": lambda p: dcp.FileSystemWriter(p, _extensions=[ZStandard()]),
    }
    if world == 1:
        writers["tpde_2threads"] = lambda p: tpde.dcp.Writer(p, codec_threads=2)
    def code_only() -> float:
        # the coding alone (no DCP, no files): how far this machine lets the ranks scale
        dist.barrier()
        t0 = time.perf_counter()
        for v in states[0].values():
            tpde.compress_tensor(local(v), threads=1)
        dist.barrier()
        return time.perf_counter() - t0

    codec_s = [code_only() for _ in range(reps)]
    out: Dict[str, Any] = {name: {"save1_s": [], "save2_s": []} for name in writers}
    base = work / f"ranks{world}"
    for rep in range(reps):
        for name, make in writers.items():
            p1, p2 = base / f"{name}-{rep}-save1", base / f"{name}-{rep}-save2"
            w = make(p1)
            out[name]["save1_s"].append(timed_save(states[0], w, p1))
            # tpde: the same Writer, so save 2 is coded as deltas against save 1
            out[name]["save2_s"].append(timed_save(states[1], w if name.startswith("tpde") else make(p2), p2))
            check(p1, states[0])
            check(p2, states[1])
            dist.barrier()
            if rank == 0:
                out[name]["save1_bytes"], out[name]["save2_bytes"] = folder_bytes(p1), folder_bytes(p2)
                shutil.rmtree(p1)
                shutil.rmtree(p2)
            dist.barrier()
    per_rank: List[Optional[int]] = [None] * world
    dist.all_gather_object(per_rank, sum(local(t).nbytes for t in states[0].values()))
    if rank == 0:
        (work / f"ranks{world}.json").write_text(json.dumps(
            {"world_size": world, "state_bytes": state_bytes, "bytes_per_rank": per_rank, "codec_only_s": codec_s,
             "tools": out}))
    dist.barrier()
    dist.destroy_process_group()


# --- the driver ----------------------------------------------------------------------

def prepare(work: Path) -> Dict[str, Any]:
    """The run's two states as torch files the workers load, and what they are."""
    import torch

    import hf_run
    import store

    run = hf_run.load_run(hf_run.make_params(**RUN), log=log)
    info = {"dir": str(run.root), "params": run.info["params"], "saves": []}
    for i, d in enumerate(run.dirs[:2], 1):
        sd = store.flat_state(d)
        torch.save(sd, work / f"state{i}.pt")
        info["saves"].append({"checkpoint": d.name, "tensors": len(sd), "bytes": sum(t.nbytes for t in sd.values()),
                              "dtypes": sorted({str(t.dtype) for t in sd.values()})})
    return info


def run_ranks(work: Path, world: int, reps: int) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           str(Path(__file__).resolve()), "--worker", str(work), "--reps", str(reps)]
    log(f"{world} rank(s): {' '.join(cmd[2:])}")
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"torchrun with {world} rank(s) failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads((work / f"ranks{world}.json").read_text())


def summarize(r1: Dict[str, Any], r2: Dict[str, Any]) -> Dict[str, Any]:
    nbytes = r1["state_bytes"]

    def thr(r: Dict[str, Any], tool: str, save: str) -> float:
        return nbytes / statistics.median(r["tools"][tool][f"{save}_s"]) / MB

    tp = {f"{tool}_{save}_ranks{r['world_size']}": thr(r, tool, save)
          for r in (r1, r2) for tool in r["tools"] for save in ("save1", "save2")}
    scaling = {f"{tool}_{save}": tp[f"{tool}_{save}_ranks2"] / tp[f"{tool}_{save}_ranks1"]
               for tool in ("tpde", "tpde_nosync") for save in ("save1", "save2")}
    codec = {f"ranks{r['world_size']}": nbytes / statistics.median(r["codec_only_s"]) / MB for r in (r1, r2)}
    codec["scaling"] = codec["ranks2"] / codec["ranks1"]
    # the fastest rep: what the other processes on the machine took least from
    best = {tool: (min(r1["tools"][tool]["save1_s"]) / min(r2["tools"][tool]["save1_s"]))
            for tool in ("tpde", "tpde_nosync")}
    sizes = {tool: {save: r2["tools"][tool][f"{save}_bytes"] for save in ("save1", "save2")} for tool in TOOLS}
    sizes_1rank = {tool: {save: r1["tools"][tool][f"{save}_bytes"] for save in ("save1", "save2")} for tool in TOOLS}
    vs_zstd = {save: sizes["fsw_zstd"][save] / sizes["tpde"][save] for save in ("save1", "save2")}
    return {
        "state_bytes": nbytes,
        "bytes_per_rank_2ranks": r2["bytes_per_rank"],
        "throughput_MBps": tp,
        "scaling_2_over_1_rank": scaling,
        "scaling_2_over_1_rank_fastest_rep_save1": best,
        "codec_only_MBps": codec,
        "sizes_2ranks": sizes,
        "sizes_1rank": sizes_1rank,
        "ratio_raw_over_size_2ranks": {t: {s: nbytes / v for s, v in d.items()} for t, d in sizes.items()},
        "zstd_over_tpde": vs_zstd,
        "targets": {
            "scaling_2_ranks_save1": scaling["tpde_save1"] >= TARGETS["scaling_2_ranks"],
            "scaling_2_ranks_save1_nosync": scaling["tpde_nosync_save1"] >= TARGETS["scaling_2_ranks"],
            "zstd_over_tpde_save1": vs_zstd["save1"] >= TARGETS["zstd_over_tpde"],
            "zstd_over_tpde_save2": vs_zstd["save2"] >= TARGETS["zstd_over_tpde"],
        },
        "measurements": {"ranks1": r1["tools"], "ranks2": r2["tools"]},
    }


def report(s: Dict[str, Any]) -> None:
    tp, sz, n = s["throughput_MBps"], s["sizes_2ranks"], s["state_bytes"]
    print(f"state: {n / MB:.1f} MB; 2 ranks hold {[round(b / MB, 1) for b in s['bytes_per_rank_2ranks']]} MB each")
    rows = []
    for tool in ("tpde", "tpde_nosync", "tpde_2threads", "fsw", "fsw_zstd"):
        r1 = tp.get(f"{tool}_save1_ranks1"), tp.get(f"{tool}_save2_ranks1")
        r2 = tp.get(f"{tool}_save1_ranks2"), tp.get(f"{tool}_save2_ranks2")
        f = lambda x: "-" if x is None else f"{x:.0f}"  # noqa: E731
        size = sz.get(tool, {})
        g = lambda k: "-" if k not in size else f"{size[k] / MB:.1f} ({n / size[k]:.2f}x)"  # noqa: E731
        rows.append([tool, f(r1[0]), f(r1[1]), f(r2[0]), f(r2[1]), g("save1"), g("save2")])
    print(common.render_table(["writer", "1 rank MB/s s1", "s2", "2 ranks MB/s s1", "s2", "size s1 MB", "size s2 MB"],
                              rows))
    sc, vz, t = s["scaling_2_over_1_rank"], s["zstd_over_tpde"], s["targets"]
    ok = lambda b: "ok" if b else "FAIL"  # noqa: E731
    print(f"2 ranks / 1 rank, tpde: save 1 {sc['tpde_save1']:.2f}x [{ok(t['scaling_2_ranks_save1'])} >= "
          f"{TARGETS['scaling_2_ranks']}], save 2 {sc['tpde_save2']:.2f}x; without fsync: save 1 "
          f"{sc['tpde_nosync_save1']:.2f}x [{ok(t['scaling_2_ranks_save1_nosync'])}], save 2 {sc['tpde_nosync_save2']:.2f}x")
    cd, b = s["codec_only_MBps"], s["scaling_2_over_1_rank_fastest_rep_save1"]
    print(f"  fastest reps, save 1: {b['tpde']:.2f}x, without fsync {b['tpde_nosync']:.2f}x; tpde coding alone "
          f"(no DCP, no files): {cd['ranks1']:.0f} -> {cd['ranks2']:.0f} MB/s, {cd['scaling']:.2f}x")
    print(f"FileSystemWriter+ZStandard / tpde size: save 1 {vz['save1']:.2f}x [{ok(t['zstd_over_tpde_save1'])}], "
          f"save 2 (deltas) {vz['save2']:.2f}x [{ok(t['zstd_over_tpde_save2'])}] (target >= {TARGETS['zstd_over_tpde']})")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one rep instead of three")
    ap.add_argument("--reps", type=int, default=None, help="timed reps (default 3, --quick 1)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    if args.worker:
        worker(Path(args.worker), reps)
        return 0
    rec: Dict[str, Any] = {"benchmark": "dcp", **common.run_info(), "command": common.command_line(),
                           "quick": args.quick, "reps": reps, "machine": common.machine(),
                           "versions": common.versions(), "targets_thresholds": TARGETS,
                           "setup": {"threads_per_rank": 1, "codec_threads": 1, "zstd_level": 3,
                                     "sharding_2ranks": "DTensor Shard(0) of every tensor"}}
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tpde-bench-dcp-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rec["data"] = prepare(work)
        r1 = run_ranks(work, 1, reps)
        r2 = run_ranks(work, 2, reps)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    rec.update(summarize(r1, r2))
    rec["load_average_end"] = common.load_average()
    report(rec)
    if args.json:
        common.write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
