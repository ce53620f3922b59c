"""Write the golden checkpoint store of layout 1: tests/golden/store-v1/.

    PYTHONPATH=python python tests/golden/make_store_v1.py [--force]

Run once, when the layout was introduced; the store it wrote is committed,
and the hashes it prints are pasted into tests/test_store.py (GOLDEN_FILES,
GOLDEN_STATE_DICT). Later versions of tpde must read that store and restore
those bytes: do not regenerate it to make a failing test pass.

The store holds, with keyframe interval 3 and reference "previous":
  steps 1, 2, 3: a folder of model.safetensors (two F32 tensors of 1024
                 elements, a small I64 one), optimizer.pt (torch.save of an
                 optimizer-like state) and trainer_state.json; steps 1 and 2
                 are stored as reverse deltas;
  step 4:        a state dict added from Python (F32, I64, a small BF16
                 tensor, an int).
It is a few KB: the tensors are low-entropy so that frames are small.
Git keeps no empty folder, so the empty tmp/ and objects/xx/ are removed; writer.lock is
emptied (it held the generating process's pid).
"""

from __future__ import annotations

import hashlib
import json
import pprint
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import tpde

HERE = Path(__file__).resolve().parent
OUT = HERE / "store-v1"


def bits(t: torch.Tensor) -> bytes:
    t = t.contiguous()
    if t.dtype == torch.bool:
        t = t.view(torch.uint8)
    else:
        t = t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t.numpy().tobytes()


def folder(root: Path, step: int) -> Path:
    d = root / f"checkpoint-{step}"
    d.mkdir(parents=True)
    x = np.arange(1024)
    a = np.round(np.sin(x / 40.0) * 32) / 32
    b = np.round(np.cos(x / 25.0) * 16) / 16
    a[step * 100: step * 100 + 40] += 0.25 * step  # a few elements change each step
    b[500 + step] = -step
    save_file({"layer.a": torch.tensor(a, dtype=torch.float32), "layer.b": torch.tensor(b, dtype=torch.float32),
               "ids": torch.arange(16) * step}, str(d / "model.safetensors"), metadata={"format": "pt"})
    m = np.round(np.sin(x / 10.0 + step) * 8) / 8
    torch.save({"state": {0: {"step": torch.tensor(float(step)), "exp_avg": torch.tensor(m, dtype=torch.float32)}},
                "param_groups": [{"lr": 0.001, "params": [0]}]}, d / "optimizer.pt")
    (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "epoch": step / 10}) + "\n")
    for p in d.iterdir():
        p.chmod(0o644)
    return d


def state_dict() -> dict:
    x = np.arange(1200)
    return {
        "w": torch.tensor(np.round(np.tanh((x - 600) / 200.0) * 64) / 64, dtype=torch.float32),
        "counts": torch.arange(600, dtype=torch.int64) % 7,
        "small": {"bf16": torch.linspace(-1, 1, 50).to(torch.bfloat16)},
        "epoch": 4,
    }


def flat(x, name: str = "") -> dict:
    out = {}
    if isinstance(x, torch.Tensor):
        out[name] = hashlib.sha256(bits(x)).hexdigest()
    elif isinstance(x, dict):
        for k, v in x.items():
            out.update(flat(v, f"{name}.{k}" if name else str(k)))
    return out


def main() -> int:
    if OUT.exists():
        if "--force" not in sys.argv[1:]:
            print(f"{OUT} exists; it is a golden vector (pass --force only if you know why)", file=sys.stderr)
            return 1
        shutil.rmtree(OUT)
    files = {}
    with tempfile.TemporaryDirectory() as tmp:
        with tpde.Store(OUT, keyframe_interval=3) as st:
            for step in (1, 2, 3):
                d = folder(Path(tmp), step)
                st.add(d, step=step, tags=["golden"])
                files[step] = {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
                               for p in sorted(d.rglob("*")) if p.is_file()}
            sd = state_dict()
            st.add(sd, step=4)
            assert st.verify(deep=True).ok
    (OUT / "tmp").rmdir()
    for sub in (OUT / "objects").iterdir():  # cleanup leaves emptied objects/xx/ folders
        if not any(sub.iterdir()):
            sub.rmdir()
    (OUT / "writer.lock").write_bytes(b"")
    for p in OUT.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"# {OUT.relative_to(HERE.parent.parent)}: {total} bytes in {sum(1 for _ in OUT.rglob('*'))} entries")
    print("GOLDEN_FILES = " + pprint.pformat(files, width=120))
    print("GOLDEN_STATE_DICT = " + pprint.pformat({4: flat(sd)}, width=120))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
