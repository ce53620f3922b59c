"""Regenerates the golden torch files that torchzip's tests parse.

Run with a Python that has torch:  python core/torchzip/testdata/make.py
Each .pt is written next to this script; golden.json records, for every
file, what a reader must find (root, storage keys and their byte sizes),
taken from Python's zipfile so that the Go test checks against an
independent reader. Tensors are tiny so that the files stay a few KiB.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def state_dict() -> dict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, generator=g)
    sd = {
        "f32": base,
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(5),
        "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16),
        "i8": torch.arange(5, dtype=torch.int8),
        "u8": torch.arange(5, dtype=torch.uint8),
        "bool": base > 0,
        "f8e4m3": base.to(torch.float8_e4m3fn),
        "f8e5m2": base.to(torch.float8_e5m2),
        "u16": torch.arange(5).to(torch.uint16),
        "u32": torch.arange(5).to(torch.uint32),
        "u64": torch.arange(5).to(torch.uint64),
        "empty": torch.zeros(0, 3),
    }
    sd["f32_view"] = sd["f32"][2:]  # shares f32's storage: one record
    return sd


def describe(path: str) -> dict:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        root = names[0].split("/", 1)[0]
        prefix = root + "/data/"
        storages = {n[len(prefix):]: z.getinfo(n).file_size for n in names if n.startswith(prefix)}
        return {"root": root, "records": names, "storages": storages}


def main() -> None:
    golden = {}

    path = os.path.join(HERE, "state.pt")
    torch.save(state_dict(), path)
    golden["state.pt"] = describe(path)

    # Saved to a buffer, torch names the root "archive".
    buf = io.BytesIO()
    torch.save({"w": torch.ones(3, 2)}, buf)
    path = os.path.join(HERE, "buffer.pt")
    with open(path, "wb") as f:
        f.write(buf.getvalue())
    golden["buffer.pt"] = describe(path)

    path = os.path.join(HERE, "script.pt")
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), path)

    path = os.path.join(HERE, "legacy.pt")
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)

    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
