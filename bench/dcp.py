"""The torch.distributed.checkpoint benchmark: tpde.dcp.Writer beside torch's own FileSystemWriter.

State: the full training state of a real fine-tuning run (bench/hf_run.py:
the all-MiniLM-L6-v2 weights fine-tuned on the CPU with AdamW,
RUN["checkpoints"] checkpoints RUN["steps_between"] steps apart, cached in
bench/out/), as one flat dict of fp32 tensors: the weights and AdamW's
exp_avg/exp_avg_sq by parameter name (bench/store.py flat_state). Save k is
the state at the run's k-th checkpoint.

One torchrun with 2 ranks (gloo, CPU) measures both configurations side by
side: 1 rank (rank 0 alone, DCP with no_dist, holding the full tensors) and
2 ranks (both, every tensor a DTensor sharded on dim 0 with Shard(0): each
rank gets half of every tensor, as FSDP2 shards parameters, so each rank
codes half of the state). Each 1-rank measurement is taken next to the
same 2-rank one, alternating which goes first from rep to rep, so that
other load on the machine weighs on both alike. Every save uses a NEW
writer given only its folder (`<series>/step-k`), as torchtitan and
accelerate call DCP: tpde's saves share `<series>/.tpde-store`, so every
save after the first is coded against the store's newest checkpoint.

- size, per save: what each writer keeps on disk for it. tpde: the folder
  (.metadata, the pointer) plus what the save added to the store (its size
  after the save less its size before: the new checkpoint whole, less what
  re-coding the previous one as deltas saved). torch: the folder.
  Target (a): every save after the first at least 1.5x smaller with tpde
  than with FileSystemWriter(_extensions=[ZStandard()]) (torch's zstd
  stream extension, zstandard's default level 3).
- save throughput: state bytes / wall time of dcp.save (barrier to barrier
  on rank 0; median of --reps series), 1 coding thread per rank (torch and
  tpde set to 1 thread, OMP_NUM_THREADS=1). Two ranks on this machine's
  cores do not double anything, so the reference is the codec's own
  scaling measured in the same run: the coding alone (no DCP, no store, no
  files) of each rank's tensors by 1 process and by 2 at once, timed the
  same way: keyframes of save 1 (what a first save codes), and keyframes
  of save 2 plus save 1's keyframes decoded and re-coded as deltas against
  them (what a later save codes: its own keyframes, and the previous newest
  re-coded as reverse deltas).
  Target (b): tpde's 2-rank / 1-rank save throughput at least 0.9x the
  codec's 2-process / 1-process throughput, for the first save and for the
  later ones (median over them).
- every save of every series is loaded back at the end of the series
  (into fresh tensors, or DTensors of the same sharding) and compared bit
  for bit on every rank; a mismatch stops the run with exit status 1.

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
RUN = {"checkpoints": 4, "steps_between": 10}
TARGETS = {"zstd_over_tpde_later_saves": 1.5, "scaling_over_codec_scaling": 0.9}
TOOLS = ("tpde", "fsw", "fsw_zstd")
STORE = ".tpde-store"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def tree_bytes(path: Path) -> int:
    """Bytes of every file under path (0 when it does not exist)."""
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


# --- the torchrun side -------------------------------------------------------------

def worker(work: Path, reps: int, saves: int) -> None:
    """Under torchrun with 2 ranks. Every measurement of 1 rank (rank 0 alone,
    DCP with no_dist, the full tensors) is taken next to the same one of 2
    ranks (both, DTensor shards), alternating which goes first: other load
    on the machine then weighs on both alike."""
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
    if world != 2:
        raise BenchError(f"the worker runs with 2 ranks, not {world}")
    full = [torch.load(work / f"state{i}.pt", weights_only=True) for i in range(1, saves + 1)]
    state_bytes = sum(t.nbytes for t in full[0].values())
    mesh = init_device_mesh("cpu", (world,))
    # every rank holds the full tensors, so each cuts its own shard (no scatter)
    sharded = [{k: distribute_tensor(v, mesh, [Shard(0)], src_data_rank=None) for k, v in s.items()} for s in full]
    states = {1: full, 2: sharded}

    def local(t: Any) -> Any:
        return t.to_local() if isinstance(t, DTensor) else t

    def check(path: Path, want: Dict[str, Any], reader: Any, solo: bool) -> None:
        got = {k: (distribute_tensor(torch.zeros(v.shape), v.device_mesh, v.placements, src_data_rank=None)
                   if isinstance(v, DTensor) else torch.zeros_like(v)) for k, v in want.items()}
        dcp.load(got, storage_reader=reader, no_dist=solo)
        for k, v in want.items():
            a, b = local(v).contiguous().view(-1).view(torch.uint8), local(got[k]).contiguous().view(-1).view(torch.uint8)
            if not torch.equal(a, b):
                raise BenchError(f"rank {rank}: {k} differs after loading {path}")

    def timed(ranks: int, fn: Callable[[], Any]) -> float:
        """Wall time of fn on rank 0 alone (ranks 1) or on both ranks, barrier to barrier."""
        dist.barrier()
        t0 = time.perf_counter()
        if ranks == 2 or rank == 0:
            fn()
        dist.barrier()
        return time.perf_counter() - t0

    writers: Dict[str, Callable[[Path], Any]] = {
        "tpde": lambda p: tpde.dcp.Writer(p, codec_threads=1),
        "fsw": lambda p: dcp.FileSystemWriter(p),
        "fsw_zstd": lambda p: dcp.FileSystemWriter(p, _extensions=[ZStandard()]),
    }
    readers: Dict[str, Callable[[Path], Any]] = {
        "tpde": lambda p: tpde.dcp.Reader(p),
        "fsw": lambda p: dcp.FileSystemReader(p),
        "fsw_zstd": lambda p: dcp.FileSystemReader(p),
    }

    # the coding alone, no DCP, no store, no files: how far this machine lets two processes scale
    def code_first(n: int) -> None:
        for v in states[n][0].values():
            tpde.compress_tensor(local(v), threads=1)

    # a later save's work: its keyframes, and the previous save's keyframes decoded and re-coded as
    # deltas against them (the store's reverse deltas)
    prev_frames = {n: {k: tpde.compress_tensor(local(v), threads=1) for k, v in states[n][0].items()} for n in (1, 2)}

    def code_later(n: int) -> None:
        for k, v in states[n][1].items():
            tpde.compress_tensor(local(v), threads=1)
            tpde.compress_delta(tpde.decompress_tensor(prev_frames[n][k], threads=1), local(v), threads=1)

    codec = {n: {"first_s": [], "later_s": []} for n in (1, 2)}
    out: Dict[int, Dict[str, Any]] = {n: {name: {"save_s": [[] for _ in range(saves)], "kept_bytes": [],
                                                 "folder_bytes": [], "store_bytes_end": []} for name in writers}
                                      for n in (1, 2)}
    for rep in range(reps):
        order = (1, 2) if rep % 2 == 0 else (2, 1)
        for n in order:
            codec[n]["first_s"].append(timed(n, lambda: code_first(n)))
        for n in order:
            codec[n]["later_s"].append(timed(n, lambda: code_later(n)))
        for name, make in writers.items():
            series = {n: work / f"ranks{n}" / f"{name}-{rep}" for n in (1, 2)}
            kept: Dict[int, List[int]] = {1: [], 2: []}
            folders: Dict[int, List[int]] = {1: [], 2: []}
            for k in range(saves):
                for n in order:
                    path = series[n] / f"step-{k + 1}"
                    before = tree_bytes(series[n] / STORE) if rank == 0 else 0
                    out[n][name]["save_s"][k].append(timed(n, lambda: dcp.save(
                        states[n][k], checkpoint_id=path, storage_writer=make(path), no_dist=n == 1)))
                    if rank == 0:
                        folder = tree_bytes(path)
                        folders[n].append(folder)
                        kept[n].append(folder + tree_bytes(series[n] / STORE) - before)
            for n in (1, 2):  # every save, after the whole series (older ones were re-coded since)
                for k in range(saves):
                    path = series[n] / f"step-{k + 1}"
                    if n == 2 or rank == 0:
                        check(path, states[n][k], readers[name](path), solo=n == 1)
                dist.barrier()
                if rank == 0:
                    out[n][name]["kept_bytes"].append(kept[n])
                    out[n][name]["folder_bytes"].append(folders[n])
                    out[n][name]["store_bytes_end"].append(tree_bytes(series[n] / STORE))
                    shutil.rmtree(series[n])
                dist.barrier()
    per_rank: List[Optional[int]] = [None] * world
    dist.all_gather_object(per_rank, sum(local(t).nbytes for t in sharded[0].values()))
    if rank == 0:
        (work / "ranks.json").write_text(json.dumps(
            {"state_bytes": state_bytes, "bytes_per_rank": per_rank,
             "ranks1": {"codec_only_s": codec[1], "tools": out[1]},
             "ranks2": {"codec_only_s": codec[2], "tools": out[2]}}))
    dist.barrier()
    dist.destroy_process_group()


# --- the driver ----------------------------------------------------------------------

def prepare(work: Path) -> Dict[str, Any]:
    """The run's states as torch files the workers load, and what they are."""
    import torch

    import hf_run
    import store

    run = hf_run.load_run(hf_run.make_params(**RUN), log=log)
    info = {"dir": str(run.root), "params": run.info["params"], "saves": []}
    for i, d in enumerate(run.dirs, 1):
        sd = store.flat_state(d)
        torch.save(sd, work / f"state{i}.pt")
        info["saves"].append({"checkpoint": d.name, "tensors": len(sd), "bytes": sum(t.nbytes for t in sd.values()),
                              "dtypes": sorted({str(t.dtype) for t in sd.values()})})
    return info


def run_ranks(work: Path, reps: int, saves: int) -> Dict[str, Any]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(Path(__file__).resolve()), "--worker", str(work), "--reps", str(reps), "--saves", str(saves)]
    log(" ".join(cmd[2:]))
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"torchrun failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}")
    return json.loads((work / "ranks.json").read_text())


def summarize(res: Dict[str, Any]) -> Dict[str, Any]:
    nbytes = res["state_bytes"]
    r1, r2 = res["ranks1"], res["ranks2"]
    saves = len(r1["tools"]["tpde"]["save_s"])
    runs = {1: r1, 2: r2}

    def thr(r: Dict[str, Any], tool: str, k: int) -> float:
        return nbytes / statistics.median(r["tools"][tool]["save_s"][k]) / MB

    throughput = {f"ranks{w}": {tool: [thr(r, tool, k) for k in range(saves)] for tool in TOOLS}
                  for w, r in runs.items()}
    # per save: 2-rank throughput over 1-rank throughput
    scaling_per_save = [throughput["ranks2"]["tpde"][k] / throughput["ranks1"]["tpde"][k] for k in range(saves)]
    scaling = {"first": scaling_per_save[0], "later": statistics.median(scaling_per_save[1:])}
    codec_mbps = {f"ranks{w}": {kind: nbytes / statistics.median(r["codec_only_s"][f"{kind}_s"]) / MB
                                for kind in ("first", "later")} for w, r in runs.items()}
    codec_scaling = {kind: codec_mbps["ranks2"][kind] / codec_mbps["ranks1"][kind] for kind in ("first", "later")}
    vs_codec = {kind: scaling[kind] / codec_scaling[kind] for kind in ("first", "later")}
    # sizes from the first series
    sizes = {f"ranks{w}": {tool: r["tools"][tool]["kept_bytes"][0] for tool in TOOLS} for w, r in runs.items()}
    # how far a later series' sizes differ from the first's (timestamps and ids in metadata)
    spread = max(abs(x - x0) / x0 for r in runs.values() for tool in TOOLS
                 for rep in r["tools"][tool]["kept_bytes"] for x, x0 in zip(rep, r["tools"][tool]["kept_bytes"][0]))
    zstd_over_tpde = {w: [s["fsw_zstd"][k] / s["tpde"][k] for k in range(saves)] for w, s in sizes.items()}
    later_min = {w: min(v[1:]) for w, v in zstd_over_tpde.items()}
    return {
        "state_bytes": nbytes,
        "saves": saves,
        "bytes_per_rank_2ranks": res["bytes_per_rank"],
        "throughput_MBps": throughput,
        "scaling_2_over_1_rank": {"per_save": scaling_per_save, **scaling},
        "codec_only_MBps": codec_mbps,
        "codec_scaling_2_over_1_process": codec_scaling,
        "scaling_over_codec_scaling": vs_codec,
        "kept_bytes": sizes,
        "kept_bytes_spread_across_reps": spread,
        "tpde_store_bytes_end": {f"ranks{w}": r["tools"]["tpde"]["store_bytes_end"][0] for w, r in runs.items()},
        "zstd_over_tpde": zstd_over_tpde,
        "zstd_over_tpde_later_min": later_min,
        "targets": {
            "zstd_over_tpde_later_saves_ranks1": later_min["ranks1"] >= TARGETS["zstd_over_tpde_later_saves"],
            "zstd_over_tpde_later_saves_ranks2": later_min["ranks2"] >= TARGETS["zstd_over_tpde_later_saves"],
            "scaling_over_codec_first": vs_codec["first"] >= TARGETS["scaling_over_codec_scaling"],
            "scaling_over_codec_later": vs_codec["later"] >= TARGETS["scaling_over_codec_scaling"],
        },
        "measurements": {"ranks1": r1["tools"], "ranks2": r2["tools"],
                         "codec_only_s": {"ranks1": r1["codec_only_s"], "ranks2": r2["codec_only_s"]}},
    }


def report(s: Dict[str, Any]) -> None:
    n, saves = s["state_bytes"], s["saves"]
    print(f"state: {n / MB:.1f} MB x {saves} saves; 2 ranks hold "
          f"{[round(b / MB, 1) for b in s['bytes_per_rank_2ranks']]} MB each")
    rows = []
    for tool in TOOLS:
        for w in ("ranks1", "ranks2"):
            tp, kept = s["throughput_MBps"][w][tool], s["kept_bytes"][w][tool]
            rows.append([tool, w[-1], " / ".join(f"{x:.0f}" for x in tp), " / ".join(f"{b / MB:.1f}" for b in kept)])
    print(common.render_table(["writer", "ranks", "MB/s per save", "MB kept per save"], rows))
    t, sc, cs, vc = s["targets"], s["scaling_2_over_1_rank"], s["codec_scaling_2_over_1_process"], \
        s["scaling_over_codec_scaling"]
    ok = lambda b: "ok" if b else "FAIL"  # noqa: E731
    for w in ("ranks1", "ranks2"):
        z = s["zstd_over_tpde"][w]
        print(f"{w}: FileSystemWriter+ZStandard / tpde kept bytes per save: {' / '.join(f'{x:.2f}' for x in z)}; "
              f"later saves >= {TARGETS['zstd_over_tpde_later_saves']} [{ok(t[f'zstd_over_tpde_later_saves_{w}'])}]")
    for kind in ("first", "later"):
        print(f"2 ranks / 1 rank, {kind} save(s): tpde {sc[kind]:.2f}x, codec alone {cs[kind]:.2f}x -> "
              f"{vc[kind]:.2f} of the codec's scaling [{ok(t[f'scaling_over_codec_{kind}'])} >= "
              f"{TARGETS['scaling_over_codec_scaling']}]")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one rep instead of five")
    ap.add_argument("--reps", type=int, default=None, help="timed series (default 5, --quick 1)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    ap.add_argument("--worker", metavar="WORKDIR", help=argparse.SUPPRESS)
    ap.add_argument("--saves", type=int, default=RUN["checkpoints"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    reps = args.reps or (1 if args.quick else 5)
    if args.worker:
        worker(Path(args.worker), reps, args.saves)
        return 0
    rec: Dict[str, Any] = {"benchmark": "dcp", **common.run_info(), "command": common.command_line(),
                           "quick": args.quick, "reps": reps, "machine": common.machine(),
                           "versions": common.versions(), "targets_thresholds": TARGETS,
                           "setup": {"threads_per_rank": 1, "codec_threads": 1, "zstd_level": 3,
                                     "sharding_2ranks": "DTensor Shard(0) of every tensor",
                                     "writer_per_save": "a new writer for every save, given only its folder"}}
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tpde-bench-dcp-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rec["data"] = prepare(work)
        saves = len(rec["data"]["saves"])
        ranks = run_ranks(work, reps, saves)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    rec.update(summarize(ranks))
    rec["load_average_end"] = common.load_average()
    report(rec)
    if args.json:
        common.write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
