"""tpde benchmarks: the figures behind README.md and docs/ (./build.sh bench).

    ./build.sh bench                   # full run (about 15-25 minutes on 2 idle cores)
    ./build.sh bench --quick           # 3 repetitions instead of 5, no zstd-19, no z4ai max (a few minutes)
    ./build.sh bench --json out.json --markdown out.md

On the real all-MiniLM-L6-v2 weights (fp32, and bf16/fp16 conversions), per
dtype: zstd-3, zstd-19, ZipNN (per tensor in byte mode and on the
concatenated tensor data), z4ai per tensor (default tier; effort="max" at
one thread), tpde per tensor and tpde on the whole file, each at 1 thread
(every thread of the process pinned to one core) and 2 threads, next to
the order-0 entropy bound and a one-core memcpy. Then decode alone under
the methods earlier measurements used (ZipNN torch vs byte mode, all vs
large tensors, pinned or not), the per-call overhead of the Python API and
the peak memory of tpde.decompress_file. The JSON's `method` block says
exactly what is timed (bench/README.md, "How it is timed").

This script reports; it asserts nothing about speed or size. Targets are
printed as PASS/FAIL lines. It exits non-zero only when a tool fails to
restore its input bit-exactly or the setup is broken. Every figure printed
comes from this run; see bench/README.md for how to read them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, MiB, BenchError, Result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

OVERHEAD_N = 10_000  # tensors
Z4AI_MAX = "max"  # z4ai's high-ratio tier (effort="max"), beside its default
# The decode-method comparison: the measurement coded only the tensors
# with at least this many elements, each alone.
LARGE_ELEMS = 65_536
OVERHEAD_ELEMS = 256  # fp32 elements each: 1 KiB


class Report:
    """Collects printed text (and Markdown) as the run goes."""

    def __init__(self) -> None:
        self.md: List[str] = []
        self.targets: List[Dict[str, Any]] = []
        self.t0 = time.perf_counter()

    def out(self, s: str = "") -> None:
        print(s, flush=True)

    def section(self, title: str) -> None:
        self.out()
        self.out(f"== {title}  [t+{time.perf_counter() - self.t0:.0f}s]")
        self.md.append(f"\n## {title}\n")

    def table(self, headers: List[str], rows: List[List[str]], align: Optional[str] = None) -> None:
        self.out(common.render_table(headers, rows, align))
        self.md.append(common.render_markdown(headers, rows, align))

    def note(self, s: str) -> None:
        self.out(s)
        self.md.append("")
        self.md.append(s)

    def target(self, name: str, ok: bool, detail: str, key: Optional[str] = None,
               values: Optional[Dict[str, Any]] = None) -> None:
        """A PASS/FAIL line. key: a stable id for bench/render.py; values: the
        figures the line quotes (and those the README states about it), so
        the README can be rendered from the JSON without parsing detail."""
        t: Dict[str, Any] = {"target": name, "pass": ok, "detail": detail}
        if key is not None:
            t["key"] = key
        if values is not None:
            t["values"] = values
        self.targets.append(t)
        self.out(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        self.md.append(f"- **{'PASS' if ok else 'FAIL'}** {name}: {detail}")


# --- per-dtype comparison ----------------------------------------------------

def build_codecs(path: Path, data: bytes, sha: str, tensors: Dict[str, Any], dt: str, workdir: Path,
                 quick: bool, z4ai_max: bool) -> List[common.Codec]:
    zipnn_dtype = common.DTYPES[dt][1]
    codecs: List[common.Codec] = []
    for th in (1, 2):
        codecs.append(common.ZstdFile(data, 3, th))
    if not quick:
        for th in (1, 2):
            z = common.ZstdFile(data, 19, th)
            z.reps = 1  # ~1 MB/s per core: one repetition keeps the run under 10 minutes
            codecs.append(z)
    for th in (1, 2):
        codecs.append(common.TpdeFile(path, workdir, th, sha))
    for th in (1, 2):
        codecs.append(common.ZipNNPerTensor(tensors, th))
        codecs.append(common.ZipNNConcat(tensors, th, zipnn_dtype))
        codecs.append(common.Z4aiTensors(tensors, th))
        codecs.append(common.TpdeTensors(tensors, th))
        codecs.append(common.TpdeConcat(tensors, th))
    if z4ai_max:
        # z4ai's high-ratio tier compresses at well under 1 MB/s per core here (brotli-11, zstd-19 and rANS
        # tried per stream) and decodes at a few MB/s: one thread only, one compression, two decodes.
        z = common.Z4aiTensors(tensors, 1, effort=Z4AI_MAX)
        z.reps, z.compress_reps = 2, 1
        codecs.append(z)
    return codecs


def by_tool(results: List[Result]) -> Dict[str, Dict[int, Result]]:
    out: Dict[str, Dict[int, Result]] = {}
    for r in results:
        out.setdefault(r.codec.name, {})[r.codec.threads] = r
    return out


def bench_dtype(rep: Report, dt: str, path: Path, workdir: Path, reps: int, quick: bool,
                verbose: bool, core: Optional[int], z4ai_max: bool) -> Dict[str, Any]:
    import tpde

    data = path.read_bytes()
    sha = common.sha256_file(path)
    tensors = common.load_tensors(path)
    codecs = build_codecs(path, data, sha, tensors, dt, workdir, quick, z4ai_max)
    log: Callable[[str], None] = (lambda s: print(s, file=sys.stderr, flush=True)) if verbose else (lambda s: None)
    memcpy = common.memcpy_speed(core, reps=max(reps, 3))
    results = common.measure(codecs, reps, log, core=core)
    tools = by_tool(results)
    tensor_bytes = sum(t.numel() * t.element_size() for t in tensors.values())
    bound = sum(tpde.entropy_bound_bits(t) for t in tensors.values()) / 8

    rep.section(f"{dt}: {path.name}, {len(data):,} bytes, {len(tensors)} tensors ({tensor_bytes:,} tensor bytes)")
    headers = ["tool", "input", "compressed", "ratio", "comp 1T", "decomp 1T", "/memcpy", "comp 2T", "decomp 2T",
               "2T/1T c,d"]
    rows: List[List[str]] = []
    notes: List[str] = []
    mc = memcpy["GBps"] * 1e3  # MB/s
    for name, per in tools.items():
        r1, r2 = per[1], per.get(2)
        c = r1.codec
        row = [name, common.fmt_bytes(c.input_bytes), f"{r1.size:,}", f"{r1.ratio:.4f}",
               f"{r1.mbps('c'):.0f}", f"{r1.mbps('d'):.0f}", f"{r1.mbps('d') / mc:.2f}"]
        if r2 is not None:
            d2 = f"{r2.mbps('d'):.0f}" if c.decompress_threads else "n/a"
            sc = f"{r1.best('c') / r2.best('c'):.2f}x"
            sd = f"{r1.best('d') / r2.best('d'):.2f}x" if c.decompress_threads else "-"
            row += [f"{r2.mbps('c'):.0f}", d2, f"{sc},{sd}"]
            if r2.size != r1.size:
                notes.append(f"  {name}: the 2-thread output is {r2.size:,} bytes (ratio {r2.ratio:.4f}).")
        else:
            row += ["-", "-", "-"]
        rows.append(row)
    rows.append(["order-0 bound", common.fmt_bytes(tensor_bytes), f"{bound:,.0f}", f"{tensor_bytes / bound:.4f}",
                 "", "", "", "", "", ""])
    rep.table(headers, rows)
    reps_note = {n: len(per[1].ctimes) for n, per in tools.items()}
    rep.note(f"MB/s = 10^6 uncompressed bytes per second, best of {reps} repetitions"
             + (" (zstd-19: 1 run)" if not quick else "")
             + (f" (z4ai {Z4AI_MAX}: 1 compression, 2 decompressions of it, 1 thread only)" if z4ai_max else "")
             + "; 'file' rows code the whole .safetensors file (tpde file: read + write + fsync),"
             + " the others the tensors' bytes in memory. zstd decompresses on one thread. "
             + (f"1T rows pinned to core {core}. " if core is not None else "1T rows not pinned (one usable core). ")
             + f"/memcpy = decomp 1T over a plain copy on the same core: {memcpy['GBps']:.2f} GB/s "
             + f"(numpy.copyto, 64 MiB; into a new buffer: {memcpy['new_buffer_GBps']:.2f} GB/s).")
    for n in notes:
        rep.note(n)

    tp1, tp2 = tools["tpde per-tensor"][1], tools["tpde per-tensor"][2]
    tf1, tf2 = tools["tpde file"][1], tools["tpde file"][2]
    zips = [tools["ZipNN per-tensor"][1], tools["ZipNN concat"][1]]
    gap = (tp1.size / bound - 1) * 100
    rep.note(f"tpde per-tensor: {tp1.size:,} bytes vs order-0 bound {bound:,.0f} bytes: "
             f"{gap:+.2f}% (negative: below the bound, where rle/zstd beat order-0 coding); "
             f"tpde file adds {tf1.size - tp1.size:+,} bytes (header, names, container)")

    bz_ratio = max(zips, key=lambda r: r.ratio)
    rep.target(f"{dt} ratio tpde >= ZipNN", tp1.ratio >= bz_ratio.ratio,
               f"tpde per-tensor {tp1.ratio:.4f} vs best ZipNN ({bz_ratio.codec.name}) {bz_ratio.ratio:.4f}",
               key=f"{dt}.ratio_vs_zipnn",
               values={"tpde_ratio": tp1.ratio, "zipnn_ratio": bz_ratio.ratio, "zipnn_tool": bz_ratio.codec.name,
                       "tpde_bytes": tp1.size, "zipnn_bytes": bz_ratio.size})
    rep.target(f"{dt} tpde within 2% of the order-0 bound", tp1.size <= bound * 1.02,
               f"{gap:+.2f}% ({tp1.size:,} vs {bound:,.0f} bytes)",
               key=f"{dt}.bound", values={"gap_pct": gap, "tpde_bytes": tp1.size, "bound_bytes": bound,
                                          "limit_pct": 2.0})
    # Speed: each tool in its faster mode, per tensor or on the float
    # tensors concatenated (one call), in each direction.
    tpdes = [tp1, tools["tpde concat"][1]]
    for which, label in (("c", "compress"), ("d", "decompress")):
        bz = max(zips, key=lambda r: r.mbps(which))
        bt = max(tpdes, key=lambda r: r.mbps(which))
        rep.target(f"{dt} 1-thread {label} MB/s tpde >= ZipNN", bt.mbps(which) >= bz.mbps(which),
                   f"fastest tpde ({bt.codec.name}) {bt.mbps(which):.0f} vs fastest ZipNN ({bz.codec.name}) "
                   f"{bz.mbps(which):.0f} MB/s",
                   key=f"{dt}.speed_vs_zipnn.{label}",
                   values={"tpde_MBps": bt.mbps(which), "tpde_tool": bt.codec.name, "zipnn_MBps": bz.mbps(which),
                           "zipnn_tool": bz.codec.name, "tpde_over_zipnn": bt.mbps(which) / bz.mbps(which)})
    z4 = [per[1] for name, per in tools.items() if name.startswith("z4ai")]
    bz4 = max(z4, key=lambda r: r.ratio)
    rep.target(f"{dt} ratio tpde >= z4ai", tp1.ratio >= bz4.ratio,
               f"tpde per-tensor {tp1.ratio:.4f} vs best z4ai ({bz4.codec.name}) {bz4.ratio:.4f}",
               key=f"{dt}.ratio_vs_z4ai",
               values={"tpde_ratio": tp1.ratio, "z4ai_ratio": bz4.ratio, "z4ai_tool": bz4.codec.name,
                       "tpde_bytes": tp1.size, "z4ai_bytes": bz4.size})
    fz4 = max(z4, key=lambda r: r.mbps("d"))
    rep.target(f"{dt} 1-thread decompress MB/s tpde >= z4ai", tp1.mbps("d") >= fz4.mbps("d"),
               f"tpde per-tensor {tp1.mbps('d'):.0f} vs fastest z4ai ({fz4.codec.name}) {fz4.mbps('d'):.0f} MB/s "
               f"(memcpy {memcpy['GBps']:.2f} GB/s on the same core)",
               key=f"{dt}.speed_vs_z4ai.decompress",
               values={"tpde_MBps": tp1.mbps("d"), "z4ai_MBps": fz4.mbps("d"), "z4ai_tool": fz4.codec.name,
                       "tpde_over_z4ai": tp1.mbps("d") / fz4.mbps("d"), "memcpy_GBps": memcpy["GBps"]})
    for label, a, b in (("per-tensor", tp1, tp2), ("file", tf1, tf2)):
        for which, wl in (("c", "compress"), ("d", "decompress")):
            s = a.best(which) / b.best(which)
            rep.target(f"{dt} tpde {label} {wl} 2 threads >= 1.8x 1 thread", s >= 1.8,
                       f"{s:.2f}x ({a.mbps(which):.0f} -> {b.mbps(which):.0f} MB/s)",
                       key=f"{dt}.threads.{label}.{wl}",
                       values={"speedup": s, "MBps_1": a.mbps(which), "MBps_2": b.mbps(which), "limit": 1.8})

    # One row per tool, 1 thread and 2 threads: what README.md's table quotes (bench/render.py).
    summary: Dict[str, Any] = {}
    for name, per in tools.items():
        r1, r2 = per[1], per.get(2)
        row: Dict[str, Any] = {"group": r1.codec.group, "input_bytes": r1.codec.input_bytes,
                               "compressed_bytes": r1.size, "ratio": r1.ratio,
                               "compress_MBps_1": r1.mbps("c"), "decompress_MBps_1": r1.mbps("d"),
                               "decompress_GBps_1": r1.mbps("d") / 1e3,
                               "decompress_over_memcpy_1": r1.mbps("d") / mc,
                               "compress_repetitions": len(r1.ctimes), "decompress_repetitions": len(r1.dtimes)}
        if r2 is not None:
            row.update(compress_MBps_2=r2.mbps("c"), compress_speedup_2=r1.best("c") / r2.best("c"),
                       compressed_bytes_2=r2.size)
            if r1.codec.decompress_threads:
                row.update(decompress_MBps_2=r2.mbps("d"), decompress_speedup_2=r1.best("d") / r2.best("d"))
        summary[name] = row

    variants = decode_variants(rep, dt, tensors, reps, core, memcpy)

    return {
        "file": path.name, "file_sha256": sha, "file_bytes": len(data), "tensor_bytes": tensor_bytes,
        "tensors": len(tensors), "memcpy": memcpy, "decode_variants": variants,
        "entropy_bound_bytes": bound, "entropy_bound_ratio": tensor_bytes / bound, "tpde_vs_bound_pct": gap,
        "tools": summary, "results": [r.as_dict() for r in results], "repetitions": reps_note,
    }


def decode_variants(rep: Report, dt: str, tensors: Dict[str, Any], reps: int, core: Optional[int],
                    memcpy: Dict[str, Any]) -> Dict[str, Any]:
    """Decode alone, one thread, under the methods earlier measurements used:
    ZipNN in byte and in torch mode, every tensor or only those with at least
    LARGE_ELEMS elements (the issue's set), pinned or not. Explains why
    1-thread decode figures disagreed between measurements."""
    large = {k: t for k, t in tensors.items() if t.numel() >= LARGE_ELEMS}
    sets = [("all", tensors, core), ("large", large, core)]
    if core is not None:  # else nothing is pinned anyway: the first set is this one
        sets.append(("all, unpinned", tensors, None))
    out: Dict[str, Any] = {"large_min_elements": LARGE_ELEMS, "core": core, "sets": {}}
    makers = (lambda ts: common.TpdeTensors(ts, 1), lambda ts: common.ZipNNPerTensor(ts, 1),
              lambda ts: common.ZipNNPerTensorTorch(ts, 1), lambda ts: common.Z4aiTensors(ts, 1))
    pairs = [(mk(ts), c) for _, ts, c in sets for mk in makers]
    res = common.decode_only(pairs, reps)  # every variant interleaved with the others
    rows = []
    for i, (label, ts, c) in enumerate(sets):
        part = res[i * len(makers):(i + 1) * len(makers)]
        nbytes = part[0]["input_bytes"]
        out["sets"][label] = {"tensors": len(ts), "bytes": nbytes, "pinned": c is not None,
                              "tools": {r["tool"]: r for r in part}}
        rows.append([label, str(len(ts)), common.fmt_bytes(nbytes),
                     *(f"{r['decompress_MBps_best']:.0f}" for r in part)])
    rep.table(["tensors", "n", "bytes", "tpde", "ZipNN byte", "ZipNN torch", "z4ai"], rows, "lrrrrrr")
    rep.note(f"decode method: 1-thread decompress MB/s alone (compressed once, untimed), best of {reps}; 'large' = "
             f"tensors with >= {LARGE_ELEMS:,} elements; pinned to core {core} except 'unpinned'. "
             f"memcpy {memcpy['GBps']:.2f} GB/s.")
    return out


# --- call overhead -------------------------------------------------------------

def _best(fn: Callable[[], Any], reps: int) -> Tuple[float, Any]:
    times = []
    out = None
    for _ in range(reps):
        out, t = common._timed(fn)
        times.append(t)
    return min(times), out


def _library_call_costs(t: Any, reps: int) -> Optional[Dict[str, float]]:
    """Per-call cost of the C functions alone on one small tensor (uses tpde._native, a private module)."""
    import ctypes

    try:
        from tpde import _native
    except ImportError:
        return None
    lib = _native.lib()
    a = t.numpy()
    n, cap = a.nbytes, 1 << 16
    dst = ctypes.create_string_buffer(cap)
    shape = (ctypes.c_uint64 * 1)(a.shape[0])
    got = ctypes.c_uint64()
    code = 11  # TPDE_F32
    if lib.tpde_encode(a.ctypes.data, n, code, shape, 1, 0, 0, 1, dst, cap, ctypes.byref(got), None, 0) != 0:
        return None
    blob = dst.raw[: got.value]
    out = ctypes.create_string_buffer(n)
    doc, needed = ctypes.create_string_buffer(1024), ctypes.c_uint64()
    ptr = a.ctypes.data

    def per_call(fn: Callable[[], int]) -> float:
        best = min(common._timed(lambda: [fn() for _ in range(OVERHEAD_N)])[1] for _ in range(reps))
        return best / OVERHEAD_N * 1e6

    res = {
        "encode_us": per_call(lambda: lib.tpde_encode(ptr, n, code, shape, 1, 0, 0, 1, dst, cap, ctypes.byref(got),
                                                      None, 0)),
        "bound_us": per_call(lambda: lib.tpde_encode_bound(n, code, 1, 0, ctypes.byref(got), None, 0)),
        "decode_us": per_call(lambda: lib.tpde_decode(blob, len(blob), out, n, 1, ctypes.byref(got), None, 0)),
        # A frame's description: tpde_inspect, then its document (tpde_result).
        "inspect_us": per_call(lambda: lib.tpde_inspect(blob, len(blob), None, 0)
                               or lib.tpde_result(0, doc, len(doc), ctypes.byref(needed), None, 0)),
    }
    if bytes(out.raw) != a.tobytes():
        raise BenchError("tpde_decode through ctypes did not restore the tensor")
    return res


def bench_overhead(rep: Report, reps: int) -> Dict[str, Any]:
    import numpy as np
    import torch

    import tpde

    rng = np.random.default_rng(0)
    big_np = (rng.standard_normal(OVERHEAD_N * OVERHEAD_ELEMS) * 0.02).astype(np.float32)
    big = torch.from_numpy(big_np)
    small = [torch.from_numpy(big_np[i * OVERHEAD_ELEMS:(i + 1) * OVERHEAD_ELEMS].copy()) for i in range(OVERHEAD_N)]
    rep.section(f"call overhead: {OVERHEAD_N:,} tensors of {OVERHEAD_ELEMS} fp32 (1 KiB) "
                f"vs one tensor of the same {big.numel() * 4 // 1024:,} KiB")
    rows, data = [], {}
    for th in (1, 0):
        cm, blobs = _best(lambda: [tpde.compress_tensor(s, threads=th) for s in small], reps)
        c1, blob = _best(lambda: tpde.compress_tensor(big, threads=th), reps)
        dm, outs = _best(lambda: [tpde.decompress_tensor(b, threads=th) for b in blobs], reps)
        d1, out = _best(lambda: tpde.decompress_tensor(blob, threads=th), reps)
        if not (all(torch.equal(a.view(torch.int32), b.view(torch.int32)) for a, b in zip(small, outs))
                and torch.equal(out.view(torch.int32), big.view(torch.int32))):
            raise BenchError("call-overhead tensors did not round-trip")
        label = "1" if th == 1 else f"default ({tpde.get_num_threads()})"
        for what, tm, t1 in (("compress", cm, c1), ("decompress", dm, d1)):
            per_call = (tm - t1) / OVERHEAD_N * 1e6
            rows.append([what, label, f"{tm * 1e3:.1f}", f"{t1 * 1e3:.1f}", f"{tm / t1:.2f}x",
                         f"{tm / OVERHEAD_N * 1e6:.1f}", f"{per_call:.1f}"])
            data[f"{what}_threads{th}"] = {"many_s": tm, "one_s": t1, "ratio": tm / t1,
                                           "overhead_us_per_call": per_call}
        data[f"sizes_threads{th}"] = {"many_bytes": sum(len(b) for b in blobs), "one_bytes": len(blob)}
    rep.table(["op", "threads", f"{OVERHEAD_N} calls ms", "1 call ms", "ratio", "us/call", "overhead us/call"], rows,
              "llrrrrr")
    rep.note(f"best of {reps}; overhead/call = (time for {OVERHEAD_N:,} calls - time for 1 call) / {OVERHEAD_N:,}. "
             f"Frames: {data['sizes_threads1']['many_bytes']:,} bytes for the {OVERHEAD_N:,} small tensors, "
             f"{data['sizes_threads1']['one_bytes']:,} for the one large tensor.")
    raw = _library_call_costs(small[0], reps)
    if raw:
        rows = [["compress", f"{data['compress_threads1']['many_s'] / OVERHEAD_N * 1e6:.1f}", f"{raw['encode_us']:.1f}",
                 f"{raw['bound_us']:.1f}"],
                ["decompress", f"{data['decompress_threads1']['many_s'] / OVERHEAD_N * 1e6:.1f}",
                 f"{raw['decode_us']:.1f}", f"{raw['inspect_us']:.1f}"]]
        rep.table(["op (1 KiB, 1 thread)", "Python API us", "library call us", "helper call us"], rows, "lrrr")
        rep.note("library call: tpde_encode / tpde_decode called through ctypes with preallocated buffers "
                 "(no Python wrapper); helper call: tpde_encode_bound / tpde_inspect, which the Python API "
                 "also calls once per tensor. The rest of the Python API column is wrapper code.")
        data["library_only"] = raw
    for what, lib_key in (("compress", "encode_us"), ("decompress", "decode_us")):
        d = data[f"{what}_threads1"]
        rep.target(f"call overhead, {what} (1 thread): {OVERHEAD_N:,} x 1 KiB <= 2x one {OVERHEAD_N:,} KiB tensor",
                   d["ratio"] <= 2.0, f"{d['ratio']:.2f}x, {d['overhead_us_per_call']:.1f} us per call",
                   key=f"overhead.{what}",
                   values={"ratio": d["ratio"], "limit": 2.0, "overhead_us_per_call": d["overhead_us_per_call"],
                           "python_us_per_call": d["many_s"] / OVERHEAD_N * 1e6,
                           "library_us_per_call": raw[lib_key] if raw else None,
                           "calls": OVERHEAD_N, "small_bytes": OVERHEAD_ELEMS * 4})
    return data


# --- memory ------------------------------------------------------------------------

_CHILD = r"""
import json, sys
def status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                d[k] = int(v.split()[0]) * 1024
    return d
import tpde
a = status()
tpde.get_num_threads()  # loads libtpde (the Go runtime) without doing any work
b = status()
tpde.decompress_file(sys.argv[1], sys.argv[2])
c = status()
print(json.dumps({"after_import": a, "after_load": b, "end": c}))
"""


def bench_memory(rep: Report, fp32: Path, workdir: Path) -> Dict[str, Any]:
    import tpde

    packed = workdir / "mem.safetensors.tpde"
    restored = workdir / "mem.safetensors"
    tpde.compress_file(fp32, packed)
    n = packed.stat().st_size
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "python"), env.get("PYTHONPATH")) if p)
    # The child reads its own VmRSS/VmHWM. getrusage's ru_maxrss is no use
    # here: for a child it includes the RSS of the forked parent before exec
    # (this process, with torch loaded), and RUSAGE_CHILDREN is the maximum
    # over every child so far (importing torch already runs one).
    p = subprocess.run([sys.executable, "-c", _CHILD, str(packed), str(restored)], env=env,
                       capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise BenchError(f"memory child failed ({p.returncode}): {p.stderr.strip()[-2000:]}")
    st = json.loads(p.stdout.strip().splitlines()[-1])
    if common.sha256_file(restored) != common.sha256_file(fp32):
        raise BenchError("decompress_file in the memory child did not restore the fp32 file")
    base, loaded, peak = st["after_import"]["VmRSS"], st["after_load"]["VmRSS"], st["end"]["VmHWM"]
    limit = n + 64 * MiB
    rep.section("memory: tpde.decompress_file on the compressed fp32 file in a child process")
    rows = [
        ["compressed file N", f"{n / MiB:.1f}"],
        ["original file", f"{fp32.stat().st_size / MiB:.1f}"],
        ["baseline RSS: python + import tpde", f"{base / MiB:.1f}"],
        ["RSS after loading libtpde", f"{loaded / MiB:.1f}"],
        ["peak RSS (VmHWM at the end)", f"{peak / MiB:.1f}"],
        ["  of which above the baseline", f"{(peak - base) / MiB:.1f}"],
        ["RSS at the end: anon / file-backed", f"{st['end'].get('RssAnon', 0) / MiB:.1f} / "
                                               f"{st['end'].get('RssFile', 0) / MiB:.1f}"],
        ["limit N + 64 MiB", f"{limit / MiB:.1f}"],
    ]
    rep.table(["", "MiB"], rows, "lr")
    rep.target("memory: decompress_file peak RSS <= N + 64 MiB", peak <= limit,
               f"peak {peak / MiB:.1f} MiB (baseline {base / MiB:.1f}, +{(peak - base) / MiB:.1f}) "
               f"vs {limit / MiB:.1f} MiB",
               key="memory",
               values={"peak_MiB": peak / MiB, "baseline_MiB": base / MiB, "limit_MiB": limit / MiB,
                       "compressed_MiB": n / MiB, "original_MiB": fp32.stat().st_size / MiB})
    return {"compressed_bytes": n, "limit_bytes": limit, "status": st,
            "peak_bytes": peak, "baseline_bytes": base, "after_load_bytes": loaded}


def run_method(reps: int, core: Optional[int], z4ai_max: bool) -> Dict[str, Any]:
    """What is timed, in words and settings: the JSON's `method` block (bench/render.py quotes it)."""
    return {
        "timed": "compress: each tool's compress call(s) on the input; decompress: each tensor's compressed "
                 "bytes decoded into a new buffer holding that tensor's bytes (tpde: decompress_tensor, a "
                 "torch.Tensor; ZipNN byte mode: a bytearray; z4ai: bytes), summed over the tensors; file rows "
                 "time the whole file to file. Python's garbage collector is paused; input copies a tool needs "
                 "(ZipNN rewrites its input) are made before the timer starts",
        "best_of": reps,
        "throughput": "10^6 uncompressed bytes per second (MB/s) from the best (shortest) repetition",
        "interleaved": "repetitions round-robin across tools (rep 1 of every tool, then rep 2, ...)",
        "tensors": "every tensor of the file, the same set for every per-tensor tool; ZipNN codes the float "
                   "tensors and its rows code the one int64 tensor with zstd-3 inside the timed region",
        "one_thread": ("every thread of the process (Go's runtime and the tools' pools included) pinned to "
                       f"core {core} with sched_setaffinity" if core is not None else
                       "not pinned: the process may use one core only"),
        "pinned_core": core,
        "two_threads": "not pinned, each tool told 2 threads (zstd: threads=2 workers, decompression single-"
                       "threaded; ZipNN: threads=2; z4ai: threads=2 for compression, its decompression always "
                       "uses a pool of os.cpu_count() threads; tpde: threads=2)",
        "tools": {
            "tpde per-tensor": "tpde.compress_tensor(t, threads=n) / tpde.decompress_tensor(blob, threads=n)",
            "ZipNN per-tensor": "ZipNN(input_format='byte', bytearray_dtype=<dtype>, threads=n) on each float "
                                "tensor's bytes (byte mode: ZipNN's mode for raw buffers)",
            "ZipNN concat": "the same on all float tensors concatenated (as ZipNN's file tools feed it)",
            "tpde concat": "tpde.compress_tensor / decompress_tensor on all float tensors concatenated into one "
                           "1-D tensor (one frame, one call), and on the other tensors one by one",
            "z4ai per-tensor": "z4ai.compress(bytes, dtype=<dtype>, threads=n) (default tier) / z4ai.decompress",
            f"z4ai per-tensor {Z4AI_MAX}": (f"the same with effort='{Z4AI_MAX}' (its high-ratio tier), 1 thread "
                                            "only: one compression and two decodes (it compresses at well under "
                                            "1 MB/s)" if z4ai_max else "not run (--quick or --no-z4ai-max)"),
            "zstd-3, zstd-19": "zstandard on the whole file's bytes",
            "tpde file": "tpde.compress_file / decompress_file, file to file (read, write, fsync)",
        },
        "memcpy": "numpy.copyto of a 64 MiB buffer into a preallocated buffer, pinned to the same core, best "
                  "of max(reps, 3), measured before each dtype's tools; /memcpy = decompress MB/s over it",
        "decode_variants": f"decode alone, 1 thread, under earlier methods: ZipNN torch vs byte mode, every "
                           f"tensor vs tensors >= {LARGE_ELEMS:,} elements, pinned vs not",
    }


# --- main ------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 repetitions instead of 5, no zstd-19, no z4ai max (a few minutes)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 5, --quick 3)")
    ap.add_argument("--json", metavar="PATH", help="also write every measurement as JSON")
    ap.add_argument("--markdown", metavar="PATH", help="also write the tables as Markdown")
    ap.add_argument("--tmpdir", metavar="DIR", help="where to put the converted and compressed files "
                                                    "(default: the system temp dir)")
    ap.add_argument("--dtypes", default="fp32,bf16,fp16", help="comma-separated subset of fp32,bf16,fp16")
    ap.add_argument("--no-z4ai-max", action="store_true",
                    help=f"leave out z4ai effort={Z4AI_MAX!r} (well under 1 MB/s: minutes per dtype); "
                         "--quick leaves it out too")
    ap.add_argument("-v", "--verbose", action="store_true", help="log every repetition on stderr")
    args = ap.parse_args(argv)
    z4ai_max = not (args.quick or args.no_z4ai_max)
    reps = args.reps or (3 if args.quick else 5)
    dts = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for d in dts:
        if d not in common.DTYPES:
            ap.error(f"unknown dtype {d!r}")

    import tpde
    import torch

    torch.set_num_threads(1)  # the dtype conversions are the only torch work; keep it off the tools' cores
    rep = Report()
    info = common.run_info()
    mach, vers = common.machine(), common.versions()
    z4 = common.z4ai_status()  # builds z4ai's JIT rANS kernel now, untimed
    core = common.pin_core()
    method = run_method(reps, core, z4ai_max)
    with tempfile.TemporaryDirectory(prefix="tpde-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        rep.out("tpde benchmark" + (" (--quick)" if args.quick else ""))
        rep.out(f"command:  {common.command_line()}")
        rep.out(f"machine:  {mach['cpu']}, {mach['cores']} cores ({mach['affinity']} usable), {mach['platform']}")
        rep.out("versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
        fs = common.fs_type(work)
        rep.out(f"temp dir: {work} ({fs})")
        rep.out(f"timing:   best of {reps} repetitions, tools interleaved round-robin; "
                f"tpde default threads = {tpde.get_num_threads()}; 1-thread rows "
                + (f"pinned to core {core}" if core is not None else "not pinned (one usable core)"))
        rep.out("z4ai:     " + ", ".join(f"{k} {v}" for k, v in z4.items()))
        if not z4.get("accelerated"):
            rep.out("WARNING:  z4ai's native accelerators did not all load: its speeds are those of a fallback")
        rep.md += ["# tpde benchmark", "", f"- command: `{common.command_line()}`",
                   f"- machine: {mach['cpu']}, {mach['cores']} cores",
                   "- versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
                   f"- temp dir filesystem: {common.fs_type(work)}",
                   f"- timing: best of {reps} repetitions, tools interleaved round-robin"]
        variants = common.make_variants(work)
        per_dtype = {}
        for d in dts:
            per_dtype[d] = bench_dtype(rep, d, variants[d], work, reps, args.quick, args.verbose, core, z4ai_max)
        overhead = bench_overhead(rep, max(reps, 3))
        memory = bench_memory(rep, variants["fp32"], work)

    rep.section("targets")
    for t in rep.targets:
        rep.out(f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['detail']}")
    npass = sum(t["pass"] for t in rep.targets)
    rep.out(f"{npass}/{len(rep.targets)} targets met; total time {time.perf_counter() - rep.t0:.0f}s")
    rep.md.append(f"\n{npass}/{len(rep.targets)} targets met.")

    if args.json:
        counted = {"met": npass, "total": len(rep.targets)}
        common.write_json(args.json, {"benchmark": "bench/run.py", "command": common.command_line(), **info,
                          "load_average_end": common.load_average(), "total_seconds": time.perf_counter() - rep.t0,
                          "machine": mach, "versions": vers, "quick": args.quick, "dtypes_run": dts,
                          "temp_dir_fs": fs, "default_threads": tpde.get_num_threads(),
                          "repetitions": reps, "timing": "best (minimum) of the repetitions; all times in seconds",
                          "method": method, "z4ai": z4, "z4ai_max": z4ai_max,
                          "dtypes": per_dtype, "overhead": overhead, "memory": memory, "targets": rep.targets,
                          "targets_met": counted})
        rep.out(f"wrote {args.json}")
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text("\n".join(rep.md) + "\n")
        rep.out(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
