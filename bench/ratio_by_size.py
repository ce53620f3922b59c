"""Where tpde's single-checkpoint bytes differ from ZipNN's, by tensor size.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/ratio_by_size.py \
        [--json bench/results/ratio_by_size.json]

bench/run.py's ratio target compares the sums, over every float tensor of
the MiniLM checkpoint (fp32, and converted to bf16 and fp16), of
tpde.compress_tensor's frame and ZipNN's byte-mode output
(ZipNN(input_format="byte", bytearray_dtype=<dtype>)). This script splits
those sums by element count, so a miss of a few hundred bytes can be told
apart: per-tensor header against coded payload, small tensors against
large ones. Beside the default frame it codes each tensor with 1, 2 and 4
chunks (chunk_elems = ceil(n/k)) and keeps the smallest: what choosing
the chunking per tensor would win.

Every frame is decoded and compared bit for bit; ZipNN's outputs too. It
reports; it asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

DTYPES = ("bf16", "fp16", "fp32")


def by_size(tensors: Dict[str, Any], zdt: str) -> List[Dict[str, Any]]:
    import torch
    import tpde

    ZipNN = common.quiet_import_zipnn()
    zc = ZipNN(input_format="byte", bytearray_dtype=zdt, threads=1)
    zd = ZipNN(input_format="byte", bytearray_dtype=zdt, threads=1)
    groups: Dict[int, Dict[str, Any]] = {}
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        n = t.numel()
        raw = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        frame = tpde.compress_tensor(t, threads=1)
        if tpde.decompress_tensor(frame, threads=1).view(-1).view(torch.uint8).numpy().tobytes() != raw:
            raise common.BenchError(f"{name}: tpde did not round-trip")
        sizes = [len(frame)]
        for k in (1, 2, 4):
            blob = tpde.compress_tensor(t, threads=1, chunk_elems=max(1, -(-n // k)))
            if tpde.decompress_tensor(blob, threads=1).view(-1).view(torch.uint8).numpy().tobytes() != raw:
                raise common.BenchError(f"{name}: tpde with {k} chunks did not round-trip")
            sizes.append(len(blob))
        z = bytes(zc.compress(bytearray(raw)))
        if bytes(zd.decompress(z)) != raw:
            raise common.BenchError(f"{name}: ZipNN did not round-trip")
        info = tpde.inspect(frame)
        g = groups.setdefault(n, {"elements": n, "tensors": 0, "raw_bytes": 0, "tpde_bytes": 0,
                                  "tpde_best_chunking_bytes": 0, "zipnn_bytes": 0, "tpde_chunks": set()})
        g["tensors"] += 1
        g["raw_bytes"] += len(raw)
        g["tpde_bytes"] += len(frame)
        g["tpde_best_chunking_bytes"] += min(sizes)
        g["zipnn_bytes"] += len(z)
        g["tpde_chunks"].add(info["nchunks"])
    out = []
    for n in sorted(groups):
        g = groups[n]
        g["tpde_chunks"] = sorted(g["tpde_chunks"])
        g["tpde_minus_zipnn"] = g["tpde_bytes"] - g["zipnn_bytes"]
        g["best_chunking_minus_zipnn"] = g["tpde_best_chunking_bytes"] - g["zipnn_bytes"]
        out.append(g)
    return out


def main(argv: List[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args(argv)
    import tempfile

    result: Dict[str, Any] = {"benchmark": "ratio_by_size", "command": common.command_line(), **common.run_info(),
                              "machine": common.machine(), "versions": common.versions(), "dtypes": {}}
    with tempfile.TemporaryDirectory(prefix="tpde-ratio-by-size-") as tmp:
        paths = common.make_variants(Path(tmp))
        for dt in DTYPES:
            rows = by_size(common.load_tensors(paths[dt]), common.DTYPES[dt][1])
            total = {k: sum(r[k] for r in rows) for k in ("tensors", "raw_bytes", "tpde_bytes",
                                                           "tpde_best_chunking_bytes", "zipnn_bytes")}
            total["tpde_minus_zipnn"] = total["tpde_bytes"] - total["zipnn_bytes"]
            total["best_chunking_minus_zipnn"] = total["tpde_best_chunking_bytes"] - total["zipnn_bytes"]
            result["dtypes"][dt] = {"by_elements": rows, "total": total}
            print(f"\n{dt}: float tensors by element count (bytes; negative: tpde smaller)")
            table = [[f"{r['elements']:,}", str(r["tensors"]), ",".join(map(str, r["tpde_chunks"])),
                      f"{r['tpde_minus_zipnn']:+,}", f"{r['tpde_minus_zipnn'] / r['tensors']:+.1f}",
                      f"{r['best_chunking_minus_zipnn']:+,}"] for r in rows]
            table.append(["all", str(total["tensors"]), "", f"{total['tpde_minus_zipnn']:+,}", "",
                          f"{total['best_chunking_minus_zipnn']:+,}"])
            print(common.render_table(["elements", "tensors", "tpde chunks", "tpde - ZipNN", "per tensor",
                                       "smallest of 1/2/4 chunks - ZipNN"], table))
    result["load_average_end"] = common.load_average()
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
