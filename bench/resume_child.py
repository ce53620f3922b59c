"""One resume in a process of its own, for bench/store.py's part (c).

A training job resumes once, at the start of a process: the memory its
tensors land in has never been touched. Repeated in one process, a load
instead reuses the heap its previous repetition freed, which a resume never
can (glibc raises its mmap threshold after the first free, so the raw
side's later repetitions skip the page faults the store's, mapped afresh,
still pay). So each timed load runs here, in a new process: it imports
torch and tpde and loads tpde's library (a trainer has them loaded before
it resumes), says "ready", waits for "go" on stdin (the parent drops the
page cache in between for the cold rows), times the load alone and prints
{"s": seconds}.

    python bench/resume_child.py store|raw STORE STEP DIR FILE...
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from safetensors.torch import load_file

import tpde
from tpde import _native


def main() -> int:
    kind, store, step, folder, *files = sys.argv[1:]
    allow = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    _native.lib()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    if sys.stdin.readline().strip() != "go":
        return 2
    t0 = time.perf_counter()
    with torch.serialization.safe_globals(allow):  # the Trainer's allowlist for rng_state.pth
        if kind == "store":
            with tpde.Store(store) as s:
                out = {f: s.load(int(step), file=f, unpickle=True) for f in files}
        elif kind == "raw":
            out = {f: load_file(f"{folder}/{f}") if f.endswith(".safetensors")
                   else torch.load(f"{folder}/{f}", weights_only=True) for f in files}
            # materialised, as store.py's raw_load_copied
            out = {f: {k: v.clone() for k, v in o.items()} if f.endswith(".safetensors") else o
                   for f, o in out.items()}
        else:
            return 2
    seconds = time.perf_counter() - t0
    del out
    print(json.dumps({"s": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
