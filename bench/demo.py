"""The main job (./build.sh demo): real weights in, byte-identical weights out.

Takes the real all-MiniLM-L6-v2 checkpoint as fp32 (the original file) and as
bf16 and fp16 (converted with torch into a temporary folder). For each file:
tpde.compress_file, tpde.decompress_file, and a sha256 comparison of the
restored file with the original; beside tpde, the ratios zstd-3 and ZipNN
reach on the same file.

Then the main job for a training run: a short real fine-tuning series
(MiniLM trained on the CPU with AdamW from the pretrained weights, a few
checkpoints a few steps apart; bench/series_data.py) compressed as a chain
with tpde.TPDECheckpointCompressor: the first checkpoint full, the others as
deltas against the previous one; each checkpoint (fp32 weights + AdamW
state, and the bf16 weights) is decoded by a fresh decompressor and compared
bit for bit. bench/series.py measures the long series.

Exits 1 if anything is not restored bit for bit (or a comparison tool fails
to round-trip). Runs in about a minute.

Times are one run each at tpde's default thread count; for repeated,
thread-controlled measurements use bench/run.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, BenchError  # noqa: E402


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tmpdir", metavar="DIR", help="where to put the converted and compressed files")
    args = ap.parse_args(argv)

    import tpde

    t_start = time.perf_counter()
    mach, vers = common.machine(), common.versions()
    print("tpde demo: all-MiniLM-L6-v2, compress -> restore -> sha256 compare")
    print(f"machine:  {mach['cpu']}, {mach['cores']} cores; tpde threads: {tpde.get_num_threads()} (default)")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    rows: List[List[str]] = []
    failures: List[str] = []
    with tempfile.TemporaryDirectory(prefix="tpde-demo-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        variants = common.make_variants(work)
        for dt, src in variants.items():
            size = src.stat().st_size
            want = common.sha256_file(src)
            packed = work / f"{src.name}.tpde"
            restored = work / f"{src.name}.restored"

            t0 = time.perf_counter()
            tpde.compress_file(src, packed)
            t1 = time.perf_counter()
            tpde.decompress_file(packed, restored)
            t2 = time.perf_counter()
            got = common.sha256_file(restored)
            csize = packed.stat().st_size
            identical = got == want
            if not identical:
                failures.append(f"{dt}: {src} restored with sha256 {got}, the original has {want}")

            # The comparison tools, once each, round-trip checked (common.measure aborts on a mismatch).
            data = src.read_bytes()
            tensors = common.load_tensors(src)
            header = size - sum(t.numel() * t.element_size() for t in tensors.values())
            res = common.measure([
                common.ZstdFile(data, 3, 1),
                common.ZipNNPerTensor(tensors, 0),
                common.ZipNNConcat(tensors, 0, common.DTYPES[dt][1]),
            ], reps=1)
            zstd = res[0]
            # ZipNN codes tensor data only; count the file's JSON header as
            # stored raw so every ratio here is over the same whole file. Its
            # better mode of the two is shown.
            znn = min(res[1:], key=lambda r: r.size)
            znn_ratio = size / (znn.size + header)
            rows.append([
                dt, f"{size / MB:.2f} MB", f"{csize / MB:.2f} MB", f"{size / csize:.4f}",
                f"{zstd.ratio:.4f}", f"{znn_ratio:.4f}",
                f"{t1 - t0:.2f} s ({size / MB / (t1 - t0):.0f} MB/s)",
                f"{t2 - t1:.2f} s ({size / MB / (t2 - t1):.0f} MB/s)",
                "yes" if identical else "NO",
            ])
            del data, tensors, res

    print()
    print(common.render_table(
        ["dtype", "original", "tpde", "tpde ratio", "zstd-3 ratio", "ZipNN ratio", "tpde compress",
         "tpde decompress", "byte-identical"], rows, "lrrrrrrrl"))
    print()
    print("ratio = original file bytes / compressed bytes, whole .safetensors file for every tool "
          "(ZipNN: its better mode, per-tensor or concatenated, plus the file's JSON header stored raw).")
    print("tpde times: one run each, file to file (read, code, write, fsync), default threads; "
          "MB = 10^6 bytes of the original file.")
    rows2, failures2 = demo_series()
    failures += failures2
    print()
    print(common.render_table(
        ["checkpoint", "step", "stream", "original", "tpde", "tpde ratio", "alone (keyframe)", "kind",
         "bit-exact"], rows2, "lrlrrrrll"))
    print()
    print("stream 'state' = fp32 weights + AdamW exp_avg + exp_avg_sq (+ step counts); 'bf16' = the weights "
          "cast to bf16. tpde ratio = tensor bytes / compressed checkpoint bytes (the whole bundle); alone = "
          "the same checkpoint compressed on its own (compress_checkpoint).")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if failures:
        for f in failures:
            print(f"MISMATCH: {f}", file=sys.stderr)
        print(f"VERDICT: FAILED - {len(failures)} of {len(rows)} files were NOT restored byte-identical")
        return 1
    print(f"VERDICT: all {len(rows)} files restored byte-identical (sha256 match: "
          f"{', '.join(r[0] for r in rows)}), and all {len(rows2)} series checkpoints bit-exact")
    return 0


def _same_tree(a: Any, b: Any) -> bool:
    import torch

    if isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and
                torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(b, dict):
        return isinstance(a, dict) and list(a) == list(b) and all(_same_tree(a[k], b[k]) for k in b)
    return a == b


def demo_series(checkpoints: int = 3, steps_between: int = 10) -> Tuple[List[List[str]], List[str]]:
    """A short real fine-tuning series through TPDECheckpointCompressor."""
    import series_data
    import tpde

    params = series_data.SeriesParams(checkpoints=checkpoints, steps_between=steps_between)
    print()
    print(f"series: {params.describe()}")
    tr = series_data.Trainer(params)
    enc = {"state": tpde.TPDECheckpointCompressor(), "bf16": tpde.TPDECheckpointCompressor()}
    dec = {"state": tpde.TPDECheckpointCompressor(), "bf16": tpde.TPDECheckpointCompressor()}
    rows: List[List[str]] = []
    failures: List[str] = []
    for k in range(checkpoints + 1):
        if k:
            tr.train_steps(steps_between)
        torch = tr.torch
        weights = {n: t.detach().clone() for n, t in tr.params}
        streams = {
            "state": {"model": weights, "optimizer": tr.optim_state(), "step": tr.step},
            "bf16": {n: t.to(torch.bfloat16) for n, t in weights.items()},
        }
        for name, ckpt in streams.items():
            blob = enc[name].compress(ckpt, epoch=k)
            meta = blob.metadata
            alone = len(tpde.TemporalPositionDeltaEncoder().compress_checkpoint(ckpt))
            ok = _same_tree(dec[name].decompress(bytes(blob)), ckpt)
            if not ok:
                failures.append(f"series checkpoint {k} ({name}) did not decode bit for bit")
            raw = meta["original_size"]
            rows.append([str(k), str(tr.step), name, f"{raw / MB:.1f} MB", f"{len(blob) / MB:.2f} MB",
                         f"{raw / len(blob):.2f}", f"{raw / alone:.2f}",
                         meta["checkpoint_type"] + (" vs previous" if k else ""), "yes" if ok else "NO"])
    return rows, failures


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"demo: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
