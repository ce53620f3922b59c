"""Write the golden DCP folders of the first tpde.dcp.Writer: tests/golden/dcp-v1/.

    PYTHONPATH=python python tests/golden/make_dcp_v1.py [--force]

Run once, with tpde at commit 77d7dad (the last whose tpde.dcp.Writer coded
forward delta chains across folders, docs/FORMAT.md §19.1 "Folders of the
first writer"); the folders it wrote are committed. Later versions of tpde
must read them: do not regenerate them to make a failing test pass (the
writer that made them no longer exists).

dcp-v1/run/s0  one Writer's first save: every item a "tpde.frame/1" keyframe
dcp-v1/run/s1  its second save: the float tensors "tpde.delta/1" frames
               (depth=1, ref=../s0), the others keyframes
dcp-v1/want.pt torch.save([state of s0, state of s1]): what each must load as
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

import tpde.dcp

HERE = Path(__file__).resolve().parent
OUT = HERE / "dcp-v1"


def state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "w": (torch.randn(64, 32, generator=g) * 16).round() / 16,  # low entropy: small frames
        "bf16": torch.randn(256, generator=g).bfloat16(),
        "i64": torch.arange(300) * 7919,
        "complex": torch.randn(6, 2, dtype=torch.complex64, generator=g),  # no tpde dtype: framed as bytes
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "step": 7,
        "name": "run-1",
    }


def main() -> None:
    if OUT.exists():
        if "--force" not in sys.argv:
            sys.exit(f"{OUT} exists (--force rewrites it; see the docstring before you do)")
        shutil.rmtree(OUT)
    torch.set_num_threads(1)
    sd = state()
    want = []
    writer = tpde.dcp.Writer(OUT / "run" / "s0", codec_threads=1)
    for k in range(2):
        if k:
            sd["w"][3, :7] += 1.0
            sd["bf16"][::9] *= 2
            sd["step"] = 8
        want.append({key: v.clone() if isinstance(v, torch.Tensor) else v for key, v in sd.items()})
        dcp.save(sd, checkpoint_id=OUT / "run" / f"s{k}", storage_writer=writer)
    torch.save(want, OUT / "want.pt")
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(p.relative_to(OUT), p.stat().st_size)


if __name__ == "__main__":
    main()
