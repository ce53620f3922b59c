"""The torchrun side of tests/test_integration_dcp.py: tpde.dcp with 2 ranks, gloo, CPU.

    torchrun --standalone --nproc_per_node=2 tests/dcp_worker.py WORKDIR [--async-process]

Every rank checks what it loads bit for bit and stops with an exception
(a nonzero exit) on the first mismatch; rank r writes what the test checks
on top (sizes, descriptors, error messages) to WORKDIR/rank{r}.json.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Dict

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

import tpde
import tpde.dcp


def bits(t: torch.Tensor) -> torch.Tensor:
    if isinstance(t, DTensor):
        t = t.to_local()
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def check_equal(want: Dict[str, Any], got: Dict[str, Any], what: str) -> None:
    assert want.keys() == got.keys(), (what, sorted(want), sorted(got))
    for k, v in want.items():
        if isinstance(v, dict):
            check_equal(v, got[k], f"{what}.{k}")
        elif isinstance(v, torch.Tensor):
            assert v.dtype == got[k].dtype and v.shape == got[k].shape, (what, k)
            assert torch.equal(bits(v), bits(got[k])), f"{what}: {k} differs"
        else:
            assert v == got[k], (what, k, v, got[k])


def special_floats() -> torch.Tensor:
    """NaN payloads (quiet, signalling, negative), -0.0, subnormals, infinities."""
    raw = torch.tensor([0x7FC00001, 0x7F800001, -0x0040_0001, 0x80000000, 0x00000001, 0x007FFFFF, 0x7F800000,
                        -0x0080_0000, 0x3F800000, 0], dtype=torch.int64).to(torch.int32)
    return torch.cat([raw.view(torch.float32), torch.linspace(-3, 3, 54)])


def make_state(mesh: Any) -> Dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "w_sharded": distribute_tensor(torch.randn(64, 48, generator=g), mesh, [Shard(0)]),
            "b_sharded": distribute_tensor(torch.randn(30, generator=g).to(torch.bfloat16), mesh, [Shard(0)]),
            "w_plain": torch.randn(40, 24, generator=g),
            "bf16_plain": torch.randn(33, generator=g).to(torch.bfloat16),
            "i64": torch.arange(-50, 50, dtype=torch.int64) * 7919,
            "special": special_floats(),
        },
        "extra": {"epoch": 3, "note": "non-tensor values are BYTE_IO items"},
    }


def fresh_like(sd: Dict[str, Any]) -> Dict[str, Any]:
    """Same structure, other values (so a load that does nothing fails)."""
    out: Dict[str, Any] = {}
    for k, v in sd.items():
        if isinstance(v, dict):
            out[k] = fresh_like(v)
        elif isinstance(v, DTensor):
            out[k] = distribute_tensor(torch.full(v.shape, 9.0, dtype=v.dtype), v.device_mesh, v.placements)
        elif isinstance(v, torch.Tensor):
            out[k] = torch.full_like(v, 9)
        else:
            out[k] = None
    return out


def clone(sd: Dict[str, Any]) -> Dict[str, Any]:
    return {k: clone(v) if isinstance(v, dict) else v.clone() if isinstance(v, torch.Tensor) else v
            for k, v in sd.items()}


def sparse_update(sd: Dict[str, Any]) -> None:
    """A training-like step touching a few elements of every tensor, in place."""
    m = sd["model"]
    m["w_sharded"].to_local()[::7, ::5] += 0.5
    m["b_sharded"].to_local()[::4] += 1
    m["w_plain"][3, :10] -= 1
    m["bf16_plain"][::9] *= 2
    m["i64"][::11] += 1
    sd["extra"]["epoch"] = 4


def distcp_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".distcp"))


def descriptors(path: str) -> Dict[str, Any]:
    md = dcp.FileSystemReader(path).read_metadata()
    return {f"{k.fqn}@{list(k.offset or [])}": v.transform_descriptors for k, v in md.storage_data.items()}


def load(path: str, like: Dict[str, Any]) -> Dict[str, Any]:
    got = fresh_like(like)
    dcp.load(got, storage_reader=tpde.dcp.Reader(path))
    return got


def main() -> None:
    work = sys.argv[1]
    torch.set_num_threads(1)
    tpde.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    rec: Dict[str, Any] = {"rank": rank}
    s1, s2 = os.path.join(work, "s1"), os.path.join(work, "s2")

    # 1. a save, then a second one as deltas, with one Writer; both load bit for bit.
    sd = make_state(mesh)
    want1 = clone(sd)
    writer = tpde.dcp.Writer(s1, codec_threads=1)
    dcp.save(sd, storage_writer=writer)
    check_equal(want1, load(s1, sd), "s1")
    sparse_update(sd)
    want2 = clone(sd)
    dcp.save(sd, checkpoint_id=s2, storage_writer=writer)
    check_equal(want1, load(s1, sd), "s1 after s2")
    check_equal(want2, load(s2, sd), "s2")
    # resharding: the sharded tensor read whole on every rank, and a tensor stored
    # whole read as shards (each rank decodes the chunk and takes its rows)
    resharded = {"model": {"w_sharded": torch.zeros(64, 48),
                           "w_plain": distribute_tensor(torch.zeros(40, 24), mesh, [Shard(0)])}}
    dcp.load(resharded, storage_reader=tpde.dcp.Reader(s2))
    assert torch.equal(bits(resharded["model"]["w_sharded"]), bits(want2["model"]["w_sharded"].full_tensor()))
    assert torch.equal(bits(resharded["model"]["w_plain"]), bits(want2["model"]["w_plain"].chunk(2)[rank]))
    rec["sizes"] = {"s1": distcp_bytes(s1), "s2": distcp_bytes(s2)}
    rec["descriptors_s2"] = descriptors(s2)
    rec["files_s2"] = sorted(os.listdir(s2))

    # 2. DistributedTPDECompressor's collective save/load, deltas against its own previous save.
    comp = tpde.dcp.DistributedTPDECompressor(rank=rank, world_size=dist.get_world_size())
    c1, c2 = os.path.join(work, "c1"), os.path.join(work, "c2")
    comp.save(want1, c1)
    comp.save(want2, c2)
    for path, want in ((c1, want1), (c2, want2)):
        got = fresh_like(want)
        comp.load(got, path)
        check_equal(want, got, path)
    rec["descriptors_c2"] = descriptors(c2)

    # 3. async_save in a checkpoint process: the Writer travels pickled.
    if "--async-process" in sys.argv:
        from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

        a1 = os.path.join(work, "a1")
        sparse_update(sd)
        want3 = clone(sd)
        fut = dcp.async_save(sd, storage_writer=tpde.dcp.Writer(a1, previous=s2, codec_threads=1),
                             async_checkpointer_type=AsyncCheckpointerType.PROCESS)
        fut.result()
        check_equal(want3, load(a1, sd), "a1")
        rec["descriptors_a1"] = descriptors(a1)

    # 4. the first checkpoint deleted: loading the second names it.
    dist.barrier()
    if rank == 0:
        shutil.rmtree(s1)
    dist.barrier()
    # DCP gathers every rank's storage error into one CheckpointException
    # (a BaseException) on all ranks: .failures maps rank -> (error, traceback).
    try:
        load(s2, sd)
        rec["missing_error"] = None
    except CheckpointException as e:
        rec["missing_error"] = {str(r): {"type": type(exc).__name__, "tpde": isinstance(exc, tpde.TPDEError),
                                         "message": str(exc)} for r, (exc, _tb) in e.failures.items()}
    with open(os.path.join(work, f"rank{rank}.json"), "w") as f:
        json.dump(rec, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
