"""The torchrun side of tests/test_integration_dcp.py: tpde.dcp with 2 ranks, gloo, CPU.

    torchrun --standalone --nproc_per_node=2 tests/dcp_worker.py WORKDIR

Three saves of a sharded state into WORKDIR/run/s1, s2, s3, each with a NEW
tpde.dcp.Writer given only its folder (as torchtitan and accelerate call
DCP), so that the store WORKDIR/run/.tpde-store is all that links them;
then the oldest folder removed (rmtree) and a fourth save through
async_save in a checkpoint process (the Writer travels pickled), whose
commit reclaims the removed folder's checkpoint. Every rank checks what
it loads bit for bit and stops with an exception (a nonzero exit) on the
first mismatch; rank 0 writes what the test checks on top (store steps and
sizes, descriptors, error messages) to WORKDIR/rank0.json, and the full
tensors of each save to WORKDIR/want{k}.pt for the test's 1-rank loads.
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
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

import tpde
import tpde.dcp
from tpde.store import read_pointer


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
    """Tensors of 4 KiB and more are stored as tensors (deltas); smaller ones
    in the file's verbatim bytes. Sharded DTensors, and plain tensors that
    DCP writes from one rank (de-duplicated)."""
    g = torch.Generator().manual_seed(0)
    return {
        "model": {
            "w_sharded": distribute_tensor(torch.randn(256, 128, generator=g), mesh, [Shard(0)]),
            "b_sharded": distribute_tensor(torch.randn(4096, generator=g).to(torch.bfloat16), mesh, [Shard(0)]),
            "w_plain": torch.randn(128, 64, generator=g),
            "bf16_plain": torch.randn(4096, generator=g).to(torch.bfloat16),
            "i64": torch.arange(-1024, 1024, dtype=torch.int64) * 7919,
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


def full(sd: Dict[str, Any]) -> Dict[str, Any]:
    """The state with every DTensor gathered whole (collective)."""
    return {k: full(v) if isinstance(v, dict) else v.full_tensor() if isinstance(v, DTensor) else v
            for k, v in sd.items()}


def sparse_update(sd: Dict[str, Any], k: int) -> None:
    """A training-like step touching a few elements of every tensor, in place."""
    m = sd["model"]
    m["w_sharded"].to_local()[k::7, ::5] += 0.5
    m["b_sharded"].to_local()[k::40] += 1
    m["w_plain"][k, :10] -= 1
    m["bf16_plain"][k::90] *= 2
    m["i64"][k::110] += 1
    sd["extra"]["epoch"] = 3 + k


def descriptors(path: str) -> Dict[str, Any]:
    md = dcp.FileSystemReader(path).read_metadata()
    return {f"{k.fqn}@{list(k.offset or [])}": v.transform_descriptors for k, v in md.storage_data.items()}


def load(path: str, like: Dict[str, Any]) -> Dict[str, Any]:
    got = fresh_like(like)
    dcp.load(got, storage_reader=tpde.dcp.Reader(path))
    return got


def store_state(store: str) -> Dict[str, Any]:
    with tpde.Store(store) as st:
        return {"steps": st.steps(), "stored": {str(s): st.info(s).stored_bytes for s in st.steps()},
                "disk": sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(store) for f in fs)}


def main() -> None:
    work = sys.argv[1]
    run = os.path.join(work, "run")
    store = os.path.join(run, tpde.dcp.DEFAULT_STORE)
    torch.set_num_threads(1)
    tpde.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    mesh = init_device_mesh("cpu", (2,))
    rec: Dict[str, Any] = {"rank": rank, "after_save": []}
    folders = {k: os.path.join(run, f"s{k}") for k in (1, 2, 3, 4)}

    # 1. three saves, each with a fresh Writer: each loads bit for bit at once.
    sd = make_state(mesh)
    wants: Dict[int, Dict[str, Any]] = {}
    for k in (1, 2, 3):
        if k > 1:
            sparse_update(sd, k)
        wants[k] = clone(sd)
        dcp.save(sd, storage_writer=tpde.dcp.Writer(folders[k], codec_threads=1))
        check_equal(wants[k], load(folders[k], sd), f"s{k}")
        if rank == 0:
            rec["after_save"].append(store_state(store))
        dist.barrier()
    for k in (1, 2, 3):
        check_equal(wants[k], load(folders[k], sd), f"s{k} after s3")
    rec["descriptors_s3"] = descriptors(folders[3])
    rec["files_s3"] = sorted(os.listdir(folders[3]))
    rec["pointers"] = {str(k): read_pointer(folders[k])["step"] for k in (1, 2, 3)}
    # resharding: the sharded tensor read whole on every rank, and a tensor stored
    # whole read as shards (each rank decodes the rank file and takes its rows)
    resharded = {"model": {"w_sharded": torch.zeros(256, 128),
                           "w_plain": distribute_tensor(torch.zeros(128, 64), mesh, [Shard(0)])}}
    dcp.load(resharded, storage_reader=tpde.dcp.Reader(folders[2]))
    assert torch.equal(bits(resharded["model"]["w_sharded"]), bits(wants[2]["model"]["w_sharded"].full_tensor()))
    assert torch.equal(bits(resharded["model"]["w_plain"]), bits(wants[2]["model"]["w_plain"].chunk(2)[rank]))

    # 2. the oldest folder removed: the others still load.
    dist.barrier()
    if rank == 0:
        shutil.rmtree(folders[1])
    dist.barrier()
    for k in (2, 3):
        check_equal(wants[k], load(folders[k], sd), f"s{k} after rmtree s1")

    # 3. a save through async_save in a checkpoint process, with a fresh (pickled)
    # Writer: coded against s3, and its commit reclaims s1's checkpoint.
    sparse_update(sd, 4)
    wants[4] = clone(sd)
    fut = dcp.async_save(sd, storage_writer=tpde.dcp.Writer(folders[4], codec_threads=1),
                         async_checkpointer_type=AsyncCheckpointerType.PROCESS)
    fut.result()
    for k in (2, 3, 4):
        check_equal(wants[k], load(folders[k], sd), f"s{k} after the async save")
    rec["pointers"]["4"] = read_pointer(folders[4])["step"]
    if rank == 0:
        rec["after_async"] = store_state(store)

    # 4. DistributedTPDECompressor's collective save/load: a store of its own parent.
    comp = tpde.dcp.DistributedTPDECompressor(rank=rank, world_size=dist.get_world_size())
    c1, c2 = os.path.join(work, "comp", "c1"), os.path.join(work, "comp", "c2")
    comp.save(wants[2], c1)
    comp.save(wants[3], c2)
    for path, want in ((c1, wants[2]), (c2, wants[3])):
        got = fresh_like(want)
        comp.load(got, path)
        check_equal(want, got, path)

    # 5. a folder whose pointer is gone: both ranks get a TPDEIOError naming it.
    dist.barrier()
    if rank == 0:
        os.unlink(os.path.join(c1, ".tpde-checkpoint.json"))
    dist.barrier()
    try:
        load(c1, sd)
        rec["missing_error"] = None
    except CheckpointException as e:
        rec["missing_error"] = {str(r): {"type": type(exc).__name__, "tpde": isinstance(exc, tpde.TPDEError),
                                         "message": str(exc)} for r, (exc, _tb) in e.failures.items()}

    # the full tensors of every save, for the test's loads in one process (resharded to 1 rank)
    fulls = {k: full(w) for k, w in wants.items()}
    if rank == 0:
        for k, f in fulls.items():
            torch.save(f, os.path.join(work, f"want{k}.pt"))
        with open(os.path.join(work, f"rank{rank}.json"), "w") as fh:
            json.dump(rec, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
    # Everything this worker checks is checked, and written, by now. Leave
    # without interpreter finalization: once in about 15 CI runs a rank of
    # this test died with C++'s "terminate called without an active
    # exception" (SIGABRT) and no Python traceback, the way gloo's threads
    # can when the interpreter tears down under them (pytorch/pytorch#179291
    # describes that crash). Unexplained beyond that; a failure in main()
    # still raises before this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
