"""The main job (./build.sh demo): a training run's checkpoints into a tpde store and back, byte for byte.

What a user does with tpde, on a real model:

1. a short fine-tuning run of the real all-MiniLM-L6-v2 weights on the CPU
   (bench/hf_run.py: 4 Hugging Face Trainer checkpoint-N/ folders, 10
   steps apart: model.safetensors, optimizer.pt, scheduler.pt,
   rng_state.pth, trainer_state.json, config.json, tokenizer files;
   cached in bench/out/ after the first run);
2. ``python -m tpde add STORE checkpoint-N`` for each folder, one command
   per checkpoint as a training job would run it after each save; the
   store's growth (its directory's bytes after the add minus before) and
   the command's wall time are recorded;
3. ``python -m tpde restore STORE N DEST`` for every checkpoint, and a
   sha256 comparison of every restored file with its source (the same
   file list, the same bytes);
4. beside the store, zstd level 3 and ZipNN 0.5.4 on every file of every
   checkpoint, each file alone (what compressing the folder file by file
   gives), round trip checked;
5. a single-file round trip of the original model.safetensors through
   tpde.compress_file / tpde.decompress_file (a few seconds).

Exits 1 if any file is not restored byte-identical (or a comparison tool
fails to round-trip). About 1-2 minutes on 2 cores with the run cached
(+1 minute to train it once). Times are one run each; bench/store.py
measures repeatedly. Sizes are in MiB (2^20 bytes), the unit tpde's own
commands print. The store and the restored folders are in a temporary
folder (--tmpdir) removed when the demo ends; the training run stays cached.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import hf_run  # noqa: E402
from common import MiB, BenchError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tpde_cli(*args: str) -> subprocess.CompletedProcess:
    """python -m tpde ARGS..., as a user runs it (this interpreter, this PYTHONPATH)."""
    p = subprocess.run([sys.executable, "-m", "tpde", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise BenchError(f"tpde {' '.join(args)} exited {p.returncode}: {p.stderr.strip() or p.stdout.strip()}")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=4, help="checkpoints in the run (default 4)")
    ap.add_argument("--steps-between", type=int, default=10, help="training steps between them (default 10)")
    ap.add_argument("--tmpdir", metavar="DIR",
                    help="where the temporary folder for the store and the restored folders goes (removed at the end)")
    ap.add_argument("--no-file-demo", action="store_true", help="skip the single-file compress_file round trip")
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    mach, vers = common.machine(), common.versions()
    print("tpde demo: a fine-tuning run's Trainer checkpoints -> tpde store -> restored -> sha256 compare")
    print(f"machine:  {mach['cpu']}, {mach['cores']} cores; load average {common.load_average()}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    params = hf_run.make_params(args.checkpoints, args.steps_between, "fp32")
    t0 = time.perf_counter()
    cached = (hf_run.default_dir(params) / "run.json").is_file()
    run = hf_run.load_run(params, log=lambda s: print(s, flush=True))
    print(f"run:      {run.root} ({'cached' if cached else f'trained now in {time.perf_counter() - t0:.0f} s'}): "
          f"{params.describe()}")

    failures: List[str] = []
    rows: List[List[str]] = []
    tot: Dict[str, float] = {k: 0.0 for k in ("raw", "zstd", "zstd_s", "znn", "znn_s", "store", "add_s",
                                              "restore_s")}
    with tempfile.TemporaryDirectory(prefix="tpde-demo-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        store = work / "run.tpde"
        print(f"store:    {store} ({common.fs_type(work)}; temporary: removed with the restored folders when the "
              "demo ends)")
        print()
        for step, d in zip(run.steps, run.dirs):
            src = hf_run.sha_tree(d)
            raw = hf_run.dir_bytes(d)
            before = hf_run.dir_bytes(store)
            t0 = time.perf_counter()
            p = tpde_cli("add", str(store), str(d))
            add_s = time.perf_counter() - t0
            grew = hf_run.dir_bytes(store) - before
            print(f"$ tpde add {store.name} {d.name}    # {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else ''}",
                  flush=True)
            tools = hf_run.per_file_tools([f for _, f in hf_run.tree_files(d)])
            rows.append([d.name, str(len(src)), f"{raw / MiB:.1f}",
                         f"{tools['zstd-3']['bytes'] / MiB:.1f} ({raw / tools['zstd-3']['bytes']:.2f}x)",
                         f"{tools['zstd-3']['seconds']:.2f}",
                         f"{tools['ZipNN']['bytes'] / MiB:.1f} ({raw / tools['ZipNN']['bytes']:.2f}x)",
                         f"{tools['ZipNN']['seconds']:.2f}",
                         f"{grew / MiB:.1f}", f"{add_s:.2f}"])
            tot["raw"] += raw
            tot["zstd"] += tools["zstd-3"]["bytes"]
            tot["zstd_s"] += tools["zstd-3"]["seconds"]
            tot["znn"] += tools["ZipNN"]["bytes"]
            tot["znn_s"] += tools["ZipNN"]["seconds"]
            tot["store"] += grew
            tot["add_s"] += add_s
        final = hf_run.dir_bytes(store)

        # restore every checkpoint (after all adds: older ones are now deltas) and compare
        print()
        restored_ok = 0
        restore_rows = []
        for step, d in zip(run.steps, run.dirs):
            dest = work / f"restored-{step}"
            t0 = time.perf_counter()
            tpde_cli("restore", str(store), str(step), str(dest))
            rs = time.perf_counter() - t0
            tot["restore_s"] += rs
            want, got = hf_run.sha_tree(d), hf_run.sha_tree(dest)
            bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
            if bad:
                failures.append(f"checkpoint {step}: {', '.join(bad)} differ (or are missing/extra) after restore")
            else:
                restored_ok += 1
            restore_rows.append((step, len(want), rs, not bad))
            print(f"$ tpde restore {store.name} {step} {dest.name}    # {rs:.2f} s, {len(want)} files, sha256 "
                  + ("all identical" if not bad else f"DIFFERENT: {', '.join(bad)}"), flush=True)
            shutil.rmtree(dest)
        ls = tpde_cli("ls", str(store)).stdout.rstrip()

        file_row = None if args.no_file_demo else file_demo(work, failures)

    print()
    print(common.render_table(
        ["checkpoint", "files", "raw MiB", "zstd-3 MiB", "zstd s", "ZipNN MiB", "ZipNN s", "store +MiB", "add s"],
        rows + [["total", str(sum(int(r[1]) for r in rows)), f"{tot['raw'] / MiB:.1f}",
                 f"{tot['zstd'] / MiB:.1f} ({tot['raw'] / tot['zstd']:.2f}x)", f"{tot['zstd_s']:.2f}",
                 f"{tot['znn'] / MiB:.1f} ({tot['raw'] / tot['znn']:.2f}x)", f"{tot['znn_s']:.2f}",
                 f"{final / MiB:.1f} ({tot['raw'] / final:.2f}x)", f"{tot['add_s']:.2f}"]]))
    print()
    print(f"store on disk after the last add: {final / MiB:.1f} MiB = {tot['raw'] / final:.2f}x the raw folders, "
          f"{tot['znn'] / final:.2f}x smaller than ZipNN per file, {tot['zstd'] / final:.2f}x smaller than zstd-3; "
          f"restoring all {len(restore_rows)} checkpoints took {tot['restore_s']:.2f} s")
    print("MiB = 2^20 bytes, as tpde prints sizes. zstd-3 / ZipNN: each file compressed alone, in memory (reading not timed), "
          f"zstd at {os.cpu_count()} threads, ZipNN 0.5.4 byte mode with the file's float dtype, its other "
          "settings at their defaults (files without float tensors: zstd-3, see hf_run.zipnn_file_codec); both round trip checked. store +MiB: growth of the store's directory by "
          "that add (an add re-codes the previous newest checkpoint as a delta against the new one, so the "
          "growth can be smaller than the size `tpde add` reports for the checkpoint itself); add s: wall time of `python -m tpde add` "
          "(read, code, write, fsync, interpreter start included).")
    print()
    print("$ tpde ls " + store.name)
    print(ls)
    if file_row:
        print()
        print(common.render_table(["file", "original", "tpde", "ratio", "compress", "decompress", "byte-identical"],
                                  [file_row], "lrrrrrl"))
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    if failures:
        for f in failures:
            print(f"MISMATCH: {f}", file=sys.stderr)
        print(f"VERDICT: FAILED - {len(failures)} problem(s); {restored_ok} of {len(restore_rows)} checkpoints "
              "restored byte-identical")
        return 1
    print(f"VERDICT: all {len(restore_rows)} checkpoints ({sum(r[1] for r in restore_rows)} files) restored "
          "byte-identical from the store (sha256 match)" + ("" if file_row is None else
                                                              ", and the single-file round trip"))
    return 0


def file_demo(work: Path, failures: List[str]) -> List[str]:
    """tpde.compress_file / decompress_file of the original fp32 model.safetensors."""
    import tpde

    src = common.model_path()
    size, want = src.stat().st_size, common.sha256_file(src)
    packed, restored = work / "model.safetensors.tpde", work / "model.safetensors.restored"
    t0 = time.perf_counter()
    tpde.compress_file(src, packed)
    t1 = time.perf_counter()
    tpde.decompress_file(packed, restored)
    t2 = time.perf_counter()
    ok = common.sha256_file(restored) == want
    if not ok:
        failures.append(f"{src}: decompress_file did not restore it byte-identical")
    c = packed.stat().st_size
    return [f"{src.name} (fp32, the package's)", f"{size / MiB:.2f} MiB", f"{c / MiB:.2f} MiB", f"{size / c:.3f}",
            f"{t1 - t0:.2f} s", f"{t2 - t1:.2f} s", "yes" if ok else "NO"]


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"demo: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
