"""Runs in one store: what a second fine-tune of one base costs there.

Data: two real fine-tunes of the pretrained all-MiniLM-L6-v2 (bench/hf_run.py,
the same task, seeds 1 and 2, each 2 checkpoints 10 steps apart, written as
Hugging Face Trainer checkpoint folders: weights, AdamW state, scheduler,
rng, trainer state, tokenizer), and the base they both start from: the
pretrained weights with the classification head as seed 1 initialises it,
saved as a Trainer folder would hold them (config.json, model.safetensors).

One store: the base is the main run's step 0; fine-tune A is run "a" and
fine-tune B run "b", both with parent main:0 (docs/FORMAT.md §11.9). What is
measured, in one run:

- growth: how many bytes B's first checkpoint adds to the store's objects
  (which already hold the base and A) against what the same folder costs in
  a store of its own (target: at most 0.8x), for the whole folder and for
  its model.safetensors alone;
- every checkpoint of every run restores byte-identical (sha256), also after
  run "a" is removed;
- zstd-3 of the same folder's files, each file alone, for scale.

    PYTHONPATH=python HF_HUB_OFFLINE=1 $(./build.sh venv)/bin/python bench/runs.py --json bench/results/runs.json
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import hf_run  # noqa: E402

TARGET = 0.8


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def objects_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in (store / "objects").rglob("*") if p.is_file())


def base_folder(p: hf_run.RunParams, out: Path) -> Path:
    """The pretrained weights with a fresh head, as the fine-tunes start."""
    model, _ = hf_run._model_and_tokenizer(p)
    d = out / "base"
    model.save_pretrained(str(d))
    return d


def zstd3(files: List[Path]) -> int:
    import zstandard

    c = zstandard.ZstdCompressor(level=3)
    return sum(len(c.compress(f.read_bytes())) for f in files)


def check_restores(st: Any, runs: Dict[str, List[Path]], work: Path) -> bool:
    ok = True
    for run, folders in runs.items():
        for step, folder in enumerate(folders):
            dest = work / f"restore-{run}-{step}-{time.monotonic_ns()}"
            st.restore(step if run == "main" else step + 1, dest, run=run)
            same = hf_run.sha_tree(dest) == hf_run.sha_tree(folder)
            ok = ok and same
            log(f"  {run} checkpoint {step if run == 'main' else step + 1}: "
                f"{'byte-identical' if same else 'DIFFERS'}")
            shutil.rmtree(dest)
    return ok


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)

    import tpde

    record: Dict[str, Any] = {"bench": "runs", **common.run_info(), "machine": common.machine(),
                              "versions": common.versions(), "command": common.command_line()}
    pa = hf_run.make_params(checkpoints=2, steps_between=10, seed=1)
    pb = hf_run.make_params(checkpoints=2, steps_between=10, seed=2)
    ra, rb = hf_run.load_run(pa, log=log), hf_run.load_run(pb, log=log)
    with tempfile.TemporaryDirectory(prefix="tpde-runs-") as tmp:
        work = Path(tmp)
        base = base_folder(pa, work)
        runs = {"main": [base], "a": ra.dirs, "b": rb.dirs}
        st = tpde.Store(work / "store")
        st.add(base)
        for i, d in enumerate(ra.dirs):
            st.add(d, step=i + 1, run="a", parent=("main", 0) if i == 0 else None)
        before = objects_bytes(work / "store")
        info = st.add(rb.dirs[0], step=1, run="b", parent=("main", 0))
        grown = objects_bytes(work / "store") - before
        st.add(rb.dirs[1], step=2, run="b")
        alone = tpde.Store(work / "alone")
        alone.add(rb.dirs[0], step=1)
        own = objects_bytes(work / "alone")
        # The weights alone, the same way.
        wa = tpde.Store(work / "w-alone")
        wa.add(rb.dirs[0] / "model.safetensors")
        ws = tpde.Store(work / "w-shared")
        ws.add(base / "model.safetensors")
        wbefore = objects_bytes(work / "w-shared")
        ws.add(rb.dirs[0] / "model.safetensors", run="b", parent=("main", 0))
        wgrown, wown = objects_bytes(work / "w-shared") - wbefore, objects_bytes(work / "w-alone")
        files = [f for _, f in hf_run.tree_files(rb.dirs[0])]
        raw = sum(f.stat().st_size for f in files)
        z3 = zstd3(files)
        log(f"b's first checkpoint: {raw / 1e6:.1f} MB raw; grows the shared store by {grown / 1e6:.1f} MB, "
            f"costs {own / 1e6:.1f} MB alone: {grown / own:.3f}x (target at most {TARGET}); "
            f"weights alone {wgrown / wown:.3f}x; zstd-3 {z3 / 1e6:.1f} MB")
        ok = check_restores(st, runs, work)
        st.remove_run("a")
        ok_after = check_restores(st, {"main": runs["main"], "b": runs["b"]}, work)
        verify = st.verify()
        record.update({
            "runs": {"a": pa.describe(), "b": pb.describe()},
            "first_checkpoint": {"raw_bytes": raw, "grown_bytes": grown, "own_store_bytes": own,
                                 "zstd3_bytes": z3, "ratio": grown / own, "stored_bytes": info.stored_bytes,
                                 "weights_grown_bytes": wgrown, "weights_own_store_bytes": wown,
                                 "weights_ratio": wgrown / wown},
            "target": TARGET, "pass": grown / own <= TARGET,
            "byte_identical": ok, "byte_identical_after_removing_a": ok_after, "verify_ok": verify.ok,
        })
    record["load_average_end"] = common.load_average()
    if args.json:
        common.write_json(args.json, record)
    log("PASS" if record["pass"] else "FAIL: over the target")
    return 0 if (ok and ok_after and verify.ok) else 1


if __name__ == "__main__":
    sys.exit(main())
