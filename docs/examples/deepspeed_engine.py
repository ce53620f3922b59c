"""DeepSpeed ZeRO-1 on the CPU, checkpointing through tpde.

    PYTHONPATH=python python docs/examples/deepspeed_engine.py --workdir /tmp/ds-example

Trains a small MLP with the config block
"checkpoint": {"compression": {"enabled": true, "method": "tpde"}}, saves
two tags (checkpoints of one tpde store, ckpt/.tpde-store: the older is
kept as a delta against the newer), removes the older tag folder, loads
the newer into a fresh engine, checks weights and optimizer state bit for
bit and 3 more steps' losses against the run that never stopped, and reads
the weights back with DeepSpeed's zero_to_fp32 after materializing the tag
in place. Exits nonzero on any mismatch. The first DeepSpeed run on a machine JIT-builds one small
op with g++ (about a minute on 2 cores; cached afterwards).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, List

# One process, as rank 0 of a world of 1: DeepSpeed then runs on the CPU with gloo.
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(_s.getsockname()[1]))

import torch  # noqa: E402
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint  # noqa: E402

import tpde.integrations.deepspeed as tds  # noqa: E402

CONFIG = {
    "train_micro_batch_size_per_gpu": 16,
    "zero_optimization": {"stage": 1},
    "steps_per_print": 10**9,
    "checkpoint": {"compression": {"enabled": True, "method": "tpde"}},
}


def make_engine(seed: int) -> Any:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(128, 512), torch.nn.GELU(), torch.nn.Linear(512, 512),
                                torch.nn.GELU(), torch.nn.Linear(512, 10))
    # A torch optimizer: DeepSpeed's configured "Adam" would JIT-build FusedAdam as well.
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = tds.initialize(model=model, optimizer=optimizer, config=copy.deepcopy(CONFIG))
    return engine


def train(engine: Any, batches: List[Any]) -> List[float]:
    losses = []
    for x, y in batches:
        loss = torch.nn.functional.cross_entropy(engine(x), y)
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    return losses


def same_bits(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                         b.reshape(-1).view(torch.uint8))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))
    if hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:  # ZeRO's loss scaler
        return same_bits(vars(a), vars(b))
    return a == b


def state(engine: Any) -> Any:
    def clone(x: Any) -> Any:
        if isinstance(x, torch.Tensor):
            return x.detach().clone()
        if isinstance(x, dict):
            return {k: clone(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return type(x)(clone(v) for v in x)
        return copy.deepcopy(x)

    return clone({"module": engine.module.state_dict(), "optimizer": engine.optimizer.state_dict()})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    ckpt = args.workdir / "ckpt"

    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 128, generator=g), torch.randint(0, 10, (16,), generator=g)) for _ in range(10)]
    a = make_engine(seed=0)
    if not isinstance(a.checkpoint_engine, tds.TPDECheckpointEngine):
        return fail("the config block did not install the tpde engine")
    grown = []
    for segment in (batches[:4], batches[4:7]):
        train(a, segment)
        before = folder_bytes(ckpt / tds.STORE_NAME)
        a.save_checkpoint(str(ckpt))
        grown.append(folder_bytes(ckpt / tds.STORE_NAME) - before)
    saved = state(a)
    uninterrupted = train(a, batches[7:])

    tag = (ckpt / "latest").read_text()
    older = sorted(p for p in ckpt.iterdir() if p.name.startswith("global_step") and p.name != tag)
    print(f"store {ckpt / tds.STORE_NAME}: +{grown[0]:,} bytes for {older[0].name}, +{grown[1]:,} for {tag}")
    print(f"{ckpt / tag}: " + ", ".join(f"{p.name} ({p.stat().st_size} bytes)" for p in sorted((ckpt / tag).iterdir())))
    if grown[1] >= grown[0]:
        return fail("the second tag cost the store as much as the first: no deltas")
    shutil.rmtree(older[0])  # removing a tag folder breaks no other tag

    b = make_engine(seed=1)
    b.load_checkpoint(str(ckpt))
    if not same_bits(state(b), saved):
        return fail("the loaded weights or optimizer state differ from the saved ones")
    resumed = train(b, batches[7:])
    if resumed != uninterrupted:
        return fail(f"losses after the resume {resumed} differ from the uninterrupted run's {uninterrupted}")

    tds.materialize(ckpt)  # the tag's files as plain torch files again, in place
    fp32 = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
    if not same_bits({k: fp32[k] for k in saved["module"]}, saved["module"]):
        return fail("zero_to_fp32 on the materialized tag does not give the saved weights")
    print(f"resume: weights, optimizer state and {len(resumed)} more losses identical; "
          f"zero_to_fp32 reads {ckpt / tag} after materialize")
    return 0


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def fail(message: str) -> int:
    print(f"MISMATCH: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
