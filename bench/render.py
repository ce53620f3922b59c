"""Render the measured blocks of README.md (and docs/*.md) from committed bench results.

    python bench/render.py            # rewrite the marked blocks in place
    python bench/render.py --check    # exit 1, with a diff, when a file differs from its rendering

The blocks are the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->`
lines; NAME is one of the names below, each rendered from one JSON file in
bench/results/ (written by `./build.sh bench` and `./build.sh series`):

    bench    bench/results/run.json      bench/run.py --json
    series   bench/results/series.json   bench/series.py --json
    store    bench/results/store.json    bench/store.py --memory --json
    integrations  bench/results/hf_overhead.json + dcp.json   bench/hf_overhead.py, bench/dcp.py --json
    deepspeed  bench/results/deepspeed.json   bench/deepspeed_store.py --json
    legacy   bench/results/legacy.json   bench/legacy.py --json
    scale    bench/results/store_scale.json   bench/store_scale.py --json
    venv     bench/results/venv.json     bench/venv_size.py (./build.sh venv-size)

Every measured figure in a block comes from that JSON, and so do the
targets' thresholds; the templates below hold words, names that contain
digits (zstd-3, fp32, order-0, int8, 2-D, 1 thread) and one rule of this
renderer (TIE: a speed ratio this close to its line is called out). A block
whose file is missing, or whose JSON is from a --quick or partial run, is an
error: those are not the figures to quote. Standard library only, so tests/test_figures.py
runs without torch.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DTYPE_ORDER = ("fp32", "bf16", "fp16")
STREAMS = ("bf16", "fp32", "full")
STREAM_LABELS = {"bf16": "bf16 weights", "fp32": "fp32 weights", "full": "full training state"}
# How the README names the files (relative to the repository, so the text is the same on every machine).
RUN_JSON = "bench/results/run.json"
SERIES_JSON = "bench/results/series.json"
STORE_JSON = "bench/results/store.json"
HF_OVERHEAD_JSON = "bench/results/hf_overhead.json"
DCP_JSON = "bench/results/dcp.json"
DEEPSPEED_JSON = "bench/results/deepspeed.json"
LEGACY_JSON = "bench/results/legacy.json"
SCALE_JSON = "bench/results/store_scale.json"
RUNS_JSON = "bench/results/runs.json"
VENV_JSON = "bench/results/venv.json"
S3_JSON = "bench/results/s3.json"
# A speed ratio within this fraction of its target line is flagged "within N% of the line": on a shared
# machine runs spread by 10-30% (bench/README.md, "Reading the numbers"), so such a PASS or FAIL is a tie.
TIE = 0.05


class RenderError(RuntimeError):
    """The results cannot be rendered (missing, partial, or inconsistent)."""


# --- formatting helpers ---------------------------------------------------------------

def _num_words(n: int) -> str:
    return {2: "both", 3: "all three"}.get(n, f"all {n}")


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _range(vals: Iterable[float], fmt: str, unit: str = "") -> str:
    vs = sorted(vals)
    lo, hi = format(vs[0], fmt), format(vs[-1], fmt)
    return f"{lo}{unit}" if lo == hi else f"{lo}-{hi}{unit}"


def _g(x: float) -> str:
    """2e-05 -> 2e-5"""
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{x:g}").replace("e+", "e")


def _short(commit: Optional[str]) -> str:
    return commit[:7] if commit else "unknown"


def _provenance(d: Dict[str, Any], path: str) -> str:
    """'recorded in PATH: DATE, commit C (uncommitted changes in the tree)'."""
    g = d.get("git") or {}
    dirty = " with uncommitted changes in the tree" if g.get("dirty") else ""
    return f"recorded in `{path}`: {d['date']}, at commit `{_short(g.get('commit'))}`{dirty}"


def _machine(d: Dict[str, Any]) -> str:
    m = d["machine"]
    kind = " VM" if m.get("virtual") else ""
    usable = m.get("affinity")
    cores = f"{m['cores']}-core" + (f" ({usable} usable)" if usable and usable != m["cores"] else "")
    return f"a {cores} {m['cpu']}{kind} ({m['platform'].split('-with-')[0]})"


def _load(d: Dict[str, Any]) -> str:
    """A sentence on how busy the machine was (absolute speeds depend on it)."""
    a, b = d.get("load_average_start"), d.get("load_average_end")
    if not a or not b:
        return ""
    return (f" The machine's 1-minute load average was {a[0]:.2f} at the start of the run and {b[0]:.2f} at "
            f"the end.")


def _busy(d: Dict[str, Any]) -> str:
    """A warning when other processes outnumbered the cores during the run (then
    even a pinned core was shared, and one-core speeds are noise-dominated)."""
    a, b = d.get("load_average_start"), d.get("load_average_end")
    cores = d["machine"].get("affinity") or d["machine"].get("cores")
    if not a or not b or not cores or max(a[0], b[0]) <= cores:
        return ""
    return (" That is more than its cores: other processes shared even the pinned core, so the speeds below "
            "are noisy; quote a run on an idle machine.")


def _versions(d: Dict[str, Any], keys: Sequence[Tuple[str, str]]) -> str:
    v = d["versions"]
    return ", ".join(f"{label} {v[k]}" for k, label in keys if k in v)


def _targets(d: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    out = {}
    for t in d["targets"]:
        if "key" not in t:
            raise RenderError(f"target {t['target']!r} has no key: results from an older bench script, rerun it")
        out[t["key"]] = t
    return out


def _yes_no(results: Sequence[Tuple[str, bool, str]]) -> str:
    """[(dtype, passed, figure)] -> 'yes on fp32 (1.31x) and fp16 (1.02x), no on bf16 (0.94x)'.
    figure may be '' (no parenthesis)."""
    yes = [(n, f) for n, ok, f in results if ok]
    no = [(n, f) for n, ok, f in results if not ok]

    def part(word: str, items: List[Tuple[str, str]]) -> str:
        if len(items) == len(results) and len(items) > 1:
            figs = [f for _, f in items if f]
            return f"{word} on {_num_words(len(items))}" + (f" ({', '.join(figs)})" if figs else "")
        return f"{word} on " + _join([f"{n} ({f})" if f else n for n, f in items])

    return ", ".join(part(w, it) for w, it in (("yes", yes), ("no", no)) if it)


def _met(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


# --- bench block (bench/run.py) ---------------------------------------------------------

def render_bench(run: Dict[str, Any]) -> str:
    if run.get("quick"):
        raise RenderError(f"{RUN_JSON} is from a --quick run: rerun ./build.sh bench (no options)")
    dts = [d for d in DTYPE_ORDER if d in run["dtypes"]]
    if dts != list(DTYPE_ORDER):
        raise RenderError(f"{RUN_JSON} covers {dts}, not all of {list(DTYPE_ORDER)}: rerun ./build.sh bench")
    T = _targets(run)
    reps = run["repetitions"]
    if "method" not in run or "z4ai" not in run or f"{dts[0]}.ratio_vs_z4ai" not in T:
        raise RenderError(f"{RUN_JSON} predates the z4ai rows and the method block: rerun ./build.sh bench")
    meth, z4 = run["method"], run["z4ai"]
    out = Block()
    z4_state = ("z4ai's native accelerators loaded: its SIMD byte shuffle and rANS kernels"
                + (", and brotli for `effort=\"max\"`" if z4.get("brotli") else "") if z4.get("accelerated") else
                "**z4ai's native accelerators did not all load, so its speeds are those of a fallback**")
    has_max = bool(run.get("z4ai_max"))
    out.para(f"All figures below come from one run of `./build.sh bench` (bench/run.py), "
             f"{_provenance(run, RUN_JSON)}; on {_machine(run)}; "
             + _versions(run, (("tpde", "tpde"), ("libtpde", "libtpde"), ("zipnn", "ZipNN"), ("z4ai", "z4ai"),
                               ("zstandard", "zstandard"), ("torch", "torch"), ("python", "Python")))
             + f"; {z4_state}. The real all-MiniLM-L6-v2 weights (fp32 original, bf16 and fp16 copies), every "
             f"tool round-trip-checked, timings the best of {reps} with tools interleaved. Two kinds of figure: "
             "**ratios** (compressed sizes, and one tool's speed over another's in the same run) are what to "
             "compare; sizes are deterministic, and tools timed interleaved in one run share the machine's "
             "state, so their speed ratios are fair to within its noise. **MB/s** are absolute speeds: they "
             f"move with the machine and its load, so compare the tools within a row, not across runs."
             f"{_load(run)}{_busy(run)} Full tables: `./build.sh bench --markdown out.md`.")
    add = out.line
    add("| dtype | tpde | ZipNN | z4ai | z4ai max | zstd-3 | order-0 bound | tpde vs bound |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for dt in dts:
        d = run["dtypes"][dt]
        tools = d["tools"]
        rt, bt = T[f"{dt}.ratio_vs_zipnn"]["values"], T[f"{dt}.bound"]["values"]
        z4max = tools.get("z4ai per-tensor max")
        z4max_ratio = f"{z4max['ratio']:.4f}" if z4max else "-"
        add(f"| {dt} | {rt['tpde_ratio']:.4f} | {rt['zipnn_ratio']:.4f} | {tools['z4ai per-tensor']['ratio']:.4f} "
            f"| {z4max_ratio} | {tools['zstd-3']['ratio']:.4f} | {d['entropy_bound_ratio']:.4f} "
            f"| {bt['gap_pct']:+.2f}% |")
    files = " / ".join(f"{run['dtypes'][dt]['tools']['tpde file']['ratio']:.4f}" for dt in dts)
    out.para("Compression ratios (input bytes over compressed bytes) above. tpde, ZipNN, z4ai and the bound "
             "code each tensor on its own (ZipNN in the better of its two modes, per tensor or on the "
             "concatenated tensors, as the targets judge; z4ai at its default tier and at `effort=\"max\"`, "
             "its high-ratio tier" + ("" if has_max else ", which this run left out with `--no-z4ai-max`: "
                                       "its column holds dashes")
             + "); zstd-3 codes the whole file. Whole files, header included: `tpde compress` "
             f"gives {files} ({' / '.join(dts)}). A negative distance to the bound means some planes were "
             "coded below their order-0 entropy (run-length and zstd). Below, speeds on one core: MB/s of "
             "uncompressed bytes, compress / decompress (tpde and ZipNN: each in its faster mode in each direction, "
             "per tensor or on the concatenated tensors, as the targets judge), and "
             "decompression as a share of a plain memory copy on the same core in the same run (memcpy).")
    add("| dtype | memcpy GB/s | tpde | ZipNN | z4ai | z4ai max |")
    add("| --- | ---: | ---: | ---: | ---: | ---: |")

    def cell(c: float, dmb: float, mc: float) -> str:
        return f"{c:.0f} / {dmb:.0f} ({100 * dmb / mc:.0f}%)"

    for dt in dts:
        d = run["dtypes"][dt]
        tools = d["tools"]
        mc = d["memcpy"]["GBps"] * 1e3
        sc, sd = T[f"{dt}.speed_vs_zipnn.compress"]["values"], T[f"{dt}.speed_vs_zipnn.decompress"]["values"]
        z, zm = tools["z4ai per-tensor"], tools.get("z4ai per-tensor max")
        add(f"| {dt} | {d['memcpy']['GBps']:.2f} | {cell(sc['tpde_MBps'], sd['tpde_MBps'], mc)} "
            f"| {cell(sc['zipnn_MBps'], sd['zipnn_MBps'], mc)} "
            f"| {cell(z['compress_MBps_1'], z['decompress_MBps_1'], mc)} "
            f"| {cell(zm['compress_MBps_1'], zm['decompress_MBps_1'], mc) if zm else '-'} |")
    out.para(f"How it is timed (the `method` block of `{RUN_JSON}`): {meth['timed']}. Best of {meth['best_of']} "
             f"repetitions, {meth['interleaved']}. One thread: {meth['one_thread']}; ZipNN in byte "
             "mode with `threads=1`, z4ai with `threads=1` (its decoder has no thread setting and starts its own "
             "pool, which the pinning holds to the one core), tpde with `threads=1`. Tensors: "
             f"{meth['tensors']}. memcpy: {meth['memcpy']}. Two threads: {meth['two_threads']}.")
    # decode method variants
    add("| dtype | tensors decoded | tpde | ZipNN byte mode | ZipNN torch mode | z4ai |")
    add("| --- | --- | ---: | ---: | ---: | ---: |")
    setname = {"all": "all {n}, pinned", "large": "{n} with at least {m} elements, pinned",
               "all, unpinned": "all {n}, not pinned"}
    for dt in dts:
        v = run["dtypes"][dt]["decode_variants"]
        for label, st in v["sets"].items():
            tl = st["tools"]
            name = setname[label].format(n=st["tensors"], m=f"{v['large_min_elements']:,}")
            add(f"| {dt} | {name} | {tl['tpde per-tensor']['decompress_MBps_best']:.0f} "
                f"| {tl['ZipNN per-tensor']['decompress_MBps_best']:.0f} "
                f"| {tl['ZipNN per-tensor, torch mode']['decompress_MBps_best']:.0f} "
                f"| {tl['z4ai per-tensor']['decompress_MBps_best']:.0f} |")
    out.para("The table above is the decode alone (1 thread, MB/s, compressed once, every variant interleaved "
             "with the others) under the methods earlier measurements used, so that their figures can be told "
             "apart: ZipNN's byte mode (what the rows above time) against its torch mode (a tensor built per "
             "call), every tensor against only the large ones (the small tensors cost a call each and carry "
             "almost no bytes), and pinned against not pinned. A 1-thread decode figure is comparable only "
             "with one measured the same way.")
    tm = run["targets_met"]
    out.para(f"Where the issue's targets stand (PASS/FAIL lines of the same run, {tm['met']} of {tm['total']} "
             "met):")
    # ratio vs ZipNN
    res = []
    for dt in dts:
        t = T[f"{dt}.ratio_vs_zipnn"]
        v = t["values"]
        fig = "" if t["pass"] else (f"behind by {100 * (v['tpde_bytes'] / v['zipnn_bytes'] - 1):.3f}%: "
                                    f"{v['tpde_bytes']:,} vs {v['zipnn_bytes']:,} bytes")
        res.append((dt, t["pass"], fig))
    behind = "" if all(ok for _, ok, _ in res) else \
        " (tpde's frames carry per-chunk Huffman tables and two checksums per chunk)"
    bullets = [f"ratio at least ZipNN's: {_yes_no(res)}{behind};"]
    res = []
    for dt in dts:
        t = T[f"{dt}.ratio_vs_z4ai"]
        v = t["values"]
        res.append((dt, t["pass"], f"{v['tpde_ratio']:.4f} vs {v['z4ai_ratio']:.4f}"))
    tiers = "its better tier" if has_max else "its default tier; effort max did not run"
    bullets.append(f"ratio at least z4ai's ({tiers}): {_yes_no(res)};")
    # bound
    lim = T[f"{dts[0]}.bound"]["values"]["limit_pct"]
    res = [(dt, T[f"{dt}.bound"]["pass"], "" if T[f"{dt}.bound"]["pass"] else
            f"{T[f'{dt}.bound']['values']['gap_pct']:+.2f}%") for dt in dts]
    bullets.append(f"within {lim:g}% of the order-0 bound: {_yes_no(res)};")
    # speed vs ZipNN
    parts = []
    noun = {"compress": "compression", "decompress": "decompression"}
    for label in ("compress", "decompress"):
        res = [(dt, T[f"{dt}.speed_vs_zipnn.{label}"]["pass"],
                f"{T[f'{dt}.speed_vs_zipnn.{label}']['values']['tpde_over_zipnn']:.2f}x") for dt in dts]
        parts.append(f"{noun[label]} {_yes_no(res)}")
    bullets.append("single-thread speed at least ZipNN's (tpde's MB/s over ZipNN's, same run): "
                   + "; ".join(parts) + ";")
    res = [(dt, T[f"{dt}.speed_vs_z4ai.decompress"]["pass"],
            f"{T[f'{dt}.speed_vs_z4ai.decompress']['values']['tpde_over_z4ai']:.2f}x") for dt in dts]
    bullets.append("single-thread decompression at least z4ai's (tpde's MB/s over z4ai's faster tier, same run): "
                   + _yes_no(res) + ";")
    # threads
    lim = T[f"{dts[0]}.threads.per-tensor.compress"]["values"]["limit"]
    thr = {label: [T[f"{dt}.threads.{label}.{wl}"] for dt in dts for wl in ("compress", "decompress")]
           for label in ("per-tensor", "file")}
    allt = thr["per-tensor"] + thr["file"]
    npass = sum(t["pass"] for t in allt)
    verdict = "yes" if npass == len(allt) else ("no" if npass == 0 else f"{npass} of {len(allt)} rows")
    zipnn_sp = [row[k] for dt in dts for name, row in run["dtypes"][dt]["tools"].items() if name.startswith("ZipNN")
                for k in ("compress_speedup_2", "decompress_speedup_2") if k in row]
    zstd_sp = [run["dtypes"][dt]["tools"]["zstd-3"]["compress_speedup_2"] for dt in dts]
    bullets.append(
        f"2 threads at least {lim:g}x one thread: {verdict}, "
        f"{_range((t['values']['speedup'] for t in thr['per-tensor']), '.2f', 'x')} per tensor and "
        f"{_range((t['values']['speedup'] for t in thr['file']), '.2f', 'x')} per file (file rows include "
        f"reading, writing and fsync); in the same run ZipNN reaches "
        f"{_range(zipnn_sp, '.2f', 'x')} and zstd-3 {_range(zstd_sp, '.2f', 'x')} (compression);")
    # call overhead
    oc, od = T["overhead.compress"], T["overhead.decompress"]
    vc, vd = oc["values"], od["values"]
    yn = {(True, True): "yes", (False, False): "no"}.get((oc["pass"], od["pass"]), "partly")
    lib = ""
    if vc.get("library_us_per_call") is not None and vd.get("library_us_per_call") is not None:
        lib = (f", of which the library calls themselves take {vc['library_us_per_call']:.1f} and "
               f"{vd['library_us_per_call']:.1f} us")
    bullets.append(
        f"{vc['calls']:,} x {vc['small_bytes'] // 1024} KiB tensors at most {vc['limit']:g}x one "
        f"{vc['calls'] * vc['small_bytes'] // 1024:,} KiB tensor: {yn}, {vc['ratio']:.1f}x to compress and "
        f"{vd['ratio']:.1f}x to decompress ({vc['python_us_per_call']:.1f} and {vd['python_us_per_call']:.1f} us "
        f"per call through Python{lib});")
    m = T["memory"]
    mv = m["values"]
    bullets.append(f"`decompress_file` peak memory at most N + {mv['limit_MiB'] - mv['compressed_MiB']:.0f} MiB: "
                   f"{'yes' if m['pass'] else 'no'}, {mv['peak_MiB']:.1f} MiB against {mv['limit_MiB']:.0f} MiB "
                   f"for the {mv['compressed_MiB']:.0f} MiB compressed fp32 file.")
    out.bullets(bullets)
    out.para("A speed ratio within a few percent of its line is a tie on a shared machine (bench/README.md, "
             "\"Reading the numbers\").")
    return out.text()


# --- series block (bench/series.py) -------------------------------------------------------

def _r(raw: float, size: float, fmt: str = ".2f") -> str:
    return format(raw / size, fmt) if size > 0 else "inf"


def render_series(ser: Dict[str, Any], run: Optional[Dict[str, Any]] = None) -> str:
    if ser.get("quick"):
        raise RenderError(f"{SERIES_JSON} is from a --quick run: rerun ./build.sh series (no options)")
    if ser.get("no_lossy") or not ser.get("lossy"):
        raise RenderError(f"{SERIES_JSON} has no lossy section (--no-lossy): rerun ./build.sh series")
    T = _targets(ser)
    p = ser["series"]["params"]
    n = p["checkpoints"]
    same = run is not None and all(run["machine"].get(k) == ser["machine"].get(k) for k in ("cpu", "cores",
                                                                                           "platform"))
    where = "on the same machine as the run above" if same else f"on {_machine(ser)}"
    out = Block()
    out.para(f"From one run of `./build.sh series` (bench/series.py), {_provenance(ser, SERIES_JSON)}, "
             f"{where}: all-MiniLM-L6-v2 fine-tuned on the CPU from the real pretrained weights "
             f"with AdamW (lr {_g(p['lr'])}, weight decay {_g(p['weight_decay'])}), {n} checkpoints "
             f"{p['steps_between']} steps apart after the base; each checkpoint saved as fp32 weights, as bf16 "
             "weights, and as the full training state (fp32 weights + `exp_avg` + `exp_avg_sq`). Every output "
             f"is decoded and compared bit for bit. Ratios are tensor bytes over compressed bytes, over the {n} "
             "deltas together; they depend only on the series and the codecs, not on the machine's speed."
             f"{_load(ser)}")
    add = out.line
    streams = ser["streams"]
    # z4ai's column and target exist from the series.py of issue 20 on; an older series.json renders without them
    has_z4 = "z4ai" in ser and all("z4ai_delta" in streams[s]["total_deltas"] for s in STREAMS)
    add("| stream | zstd-3 | ZipNN | ZipNN xor delta |" + (" z4ai delta |" if has_z4 else "")
        + " tpde alone | tpde delta vs previous | at effort max | tpde delta vs base | order-0 bound of the residual |")
    add("| --- | ---: | ---: | ---: |" + (" ---: |" if has_z4 else "") + " ---: | ---: | ---: | ---: | ---: |")
    for s in STREAMS:
        t = streams[s]["total_deltas"]
        raw = t["raw"]
        add(f"| {STREAM_LABELS[s]} | {_r(raw, t['zstd'])} | {_r(raw, t['zipnn'])} | {_r(raw, t['zipnn_delta'])} "
            + (f"| {_r(raw, t['z4ai_delta'])} " if has_z4 else "") + f"| {_r(raw, t['key'])} | **{_r(raw, t['dprev'])}** | {_r(raw, t['dmax'])} | {_r(raw, t['dbase'])} "
            f"| {_r(raw, t['h_best'])} |")
    note = ("\"ZipNN xor delta\" is ZipNN's own delta mode (`delta_second_data`: XOR with the previous "
            "checkpoint)" + (f"; \"z4ai delta\" is z4ai {ser['z4ai']['version']}'s `compress_delta(tensor, "
                             "previous, dtype)`, tensor by tensor (XOR with the previous checkpoint, then its default "
                             "codec)" if has_z4 else "") + ". The order-0 bound is that of the better of the xor and integer-difference residuals, "
            "byte plane by byte plane; tpde goes below it where its sparse chunks and zstd code runs of "
            "unchanged elements.")
    if ser.get("bundle_ok") and all(streams[s].get("bundle") for s in STREAMS):
        diffs = []
        for s in STREAMS:
            t = streams[s]["total_deltas"]
            diffs.append(abs(t["raw"] / sum(streams[s]["bundle"][1:]) - t["raw"] / t["dprev"]))
        note += (" The whole-checkpoint API (`TemporalPositionDeltaEncoder`) gives the ratios of the per-tensor "
                 f"frames to within {max(diffs):.3f} (its blobs add an index and metadata).")
    u16, u32 = streams["bf16"]["unchanged_pct"], streams["fp32"]["unchanged_pct"]
    f32 = ("none of the fp32 ones" if max(u32) == 0 else
           f"{_range(u32, '.1f' if min(u32) >= 0.1 else '.2g', '%')} of the fp32 ones")
    note += f" Between checkpoints {_range(u16, '.0f', '%')} of bf16 elements and {f32} were unchanged."
    out.para(note)
    tm = ser["targets_met"]
    out.para(f"Targets of the issue, from the same run ({tm['met']} of {tm['total']} met):")
    bullets: List[str] = []

    t = T["bf16"]
    v = t["values"]
    bullets.append(f"bf16 weight series, lossless, at least {v['limit']:g}x per delta: {_met(t['pass'])}, "
                   f"min {v['min']:.2f}x, median {v['median']:.2f}x (ZipNN's delta: median "
                   f"{v['zipnn_delta_median']:.2f}x).")
    if has_z4:
        res = []
        for s_ in ("bf16", "fp32"):
            t = T[f"z4ai.{s_}"]
            v = t["values"]
            res.append((f"{s_} weights", t["pass"], f"min {v['min']:.3f}x, median {v['median']:.3f}x"))
        lim = T["z4ai.bf16"]["values"]["limit"]
        bullets.append(f"tpde's delta frames at least {lim:.2f}x smaller than z4ai's `compress_delta` on every "
                       f"delta (z4ai's bytes over tpde's): {_yes_no(res)}.")
    t, tmx = T["full"], T["full_max"]
    v, vm = t["values"], tmx["values"]
    fth = ser["throughput"]["full"]["MBps_best"]
    bullets.append(
        f"full training state, lossless, at least {v['limit']:g}x per delta: {_met(t['pass'])}, min "
        f"{v['min']:.2f}x, median {v['median']:.2f}x (`effort=\"max\"`, not judged: min {vm['min']:.2f}x, median "
        f"{vm['median']:.2f}x, encoding at {fth['delta enc max'] / fth['delta enc']:.2f}x and decoding at "
        f"{fth['delta dec max'] / fth['delta dec']:.2f}x the default effort's delta speed).")
    t = T["identical"]
    v = t["values"]
    bullets.append(f"an identical tensor at most {v['limit']} bytes: {_met(t['pass'])}, {v['max_bytes']} bytes "
                   f"(2-D tensors up to {'x'.join(map(str, v['largest_shape']))}).")

    def speed(s: str, label: str) -> str:
        t = T[f"throughput.{s}.{label}"]
        v = t["values"]
        tie = (f", within {100 * TIE:g}% of the line" if abs(v["ratio"] / v["limit"] - 1) < TIE else "")
        return (f"{label} {_met(t['pass'])} ({v['delta_MBps']:.0f} vs {v['key_MBps']:.0f} MB/s, "
                f"{v['ratio']:.2f}x{tie})")

    lim = T["throughput.full.encode"]["values"]["limit"]
    slow_dec = any(T[f"throughput.{s}.decode"]["values"]["ratio"] < 1 for s in ("full", "bf16"))
    bullets.append(
        f"delta encode and decode at least {lim:g}x the keyframe codec's speed (1 thread, MB/s of tensor "
        f"bytes; the figure that counts is the ratio of the two codecs in the same run, the MB/s are "
        f"absolute and move with the machine): for the full state, {speed('full', 'encode')} and "
        f"{speed('full', 'decode')}; for bf16, {speed('bf16', 'encode')} and {speed('bf16', 'decode')}."
        + (" A delta decode does more entropy decoding per byte than a keyframe (fewer planes are stored "
           "raw) and checksums the reference too." if slow_dec else "")
        + " A ratio within a few percent of the line is a tie on a shared machine.")

    lossy = ser["lossy"]
    t = T["lossy"]
    v = t["values"]
    settings = lossy["settings"]
    uni = [st for st in settings if not st["mixed"]]
    mixed = [st for st in settings if st["mixed"]]
    base = v["lossless_train_loss"], v["lossless_eval_loss"]

    def loss(c: Dict[str, Any]) -> str:
        return (f"loss {100 * (c['train_loss'] / base[0] - 1):+.2f}% train, "
                f"{100 * (c['eval_loss'] / base[1] - 1):+.2f}% eval")

    head = (f"lossy, at least {v['limit_ratio']:g}x on weights + optimizer state with the loss after "
            f"{lossy['continuation']['steps']} more training steps within {100 * v['limit_rel_loss']:g}% of the "
            f"lossless run's: {_met(t['pass'])}")
    curve = (f"The ratio/error curve (closed loop, thresholds at a percentile of |delta|, with and without "
             f"int8/int4 quantization) runs from {min(st['ratio'] for st in uni):.1f}x to "
             f"{max(st['ratio'] for st in uni):.1f}x over {len(uni)} uniform settings"
             + (f"; {len(mixed)} mixed ones (weights and optimizer moments coded apart, some exact) reach "
                f"{_range((st['ratio'] for st in mixed), '.1f', 'x')}" if mixed else "") + ".")
    if t["pass"]:
        c = v["best_passing"]
        body = (f", `{c['setting']}` at {c['ratio']:.1f}x ({loss(c)}; {v['passing']} of {v['continued']} settings "
                f"continued pass). {curve}")
    else:
        bw, bc = v["best_within_loss"], v["best_ratio_continued"]
        within = (f"the best ratio among them is `{bw['setting']}`, {bw['ratio']:.1f}x ({loss(bw)})"
                  if bw else "none does")
        top = (f"; the best ratio overall, `{bc['setting']}` at {bc['ratio']:.1f}x, moves them by "
               f"{100 * bc['rel_train']:.1f}% (train) and {100 * bc['rel_eval']:.1f}% (eval)" if bc else "")
        body = (f". {curve} Of the {v['continued']} settings continued, {v['within_loss']} "
                f"{'keeps' if v['within_loss'] == 1 else 'keep'} both losses "
                f"within {100 * v['limit_rel_loss']:g}%: {within}{top}.")
    stale: Dict[str, Dict[str, Any]] = {}
    for st in settings:
        stale.setdefault(st["groups"]["w"], st)
    ws = sorted(stale.items(), key=lambda kv: kv[1]["w_at_base_pct"])
    (glo, slo), (ghi, shi) = ws[0], ws[-1]
    stale_txt = (f"A percentile threshold refreshes the same share of elements at every checkpoint, so in a "
                 f"closed-loop chain most values fall further behind: after {n} checkpoints "
                 f"{slo['w_at_base_pct']:.1f}% (weights at {glo}) to {shi['w_at_base_pct']:.1f}% (at {ghi}) of "
                 f"the weights are still at their checkpoint-0 values. Settings: w weights, m `exp_avg`, v "
                 f"`exp_avg_sq`; pN the percentile, qB the quantization bits. bench/series.py prints the whole "
                 f"curve.")
    bullets.append(f"{head}{body} {stale_txt}")
    out.bullets(bullets)
    return out.text()


# --- blocks and files ----------------------------------------------------------------------

WIDTH = 78


# --- store block (bench/store.py) --------------------------------------------------------

_SERIES_LABELS = {"full": "full training state (every file of `checkpoint-N/`)",
                  "fp32-weights": "fp32 weights (`model.safetensors`)",
                  "bf16-weights": "bf16 weights (`model.safetensors`)"}


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def render_store(st: Dict[str, Any]) -> str:
    if st.get("quick"):
        raise RenderError(f"{STORE_JSON} is from a --quick run: rerun ./build.sh store (no options)")
    if not st.get("memory"):
        raise RenderError(f"{STORE_JSON} has no memory part: rerun ./build.sh store (no options)")
    T = _targets(st)
    p = st["runs"]["fp32"]["params"]
    out = Block()
    out.para(f"From one run of `./build.sh store` (bench/store.py), {_provenance(st, STORE_JSON)}, on "
             f"{_machine(st)}: all-MiniLM-L6-v2 fine-tuned on the CPU from the real pretrained weights with "
             f"AdamW, {p['checkpoints']} checkpoints {p['steps_between']} steps apart, each a Trainer-style "
             "`checkpoint-N/` folder (`model.safetensors`, `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, "
             "tokenizer and config files); the bf16 run saves the same training's weights as bf16. Every "
             "checkpoint is added to a store (lossless, the defaults) and restored byte-identical. zstd and "
             "ZipNN compress each file on its own, as a user without a store would. Sizes are deterministic; "
             f"times are medians of {st['reps']} runs on a shared machine.{_load(st)}")
    add = out.line
    add("| series | raw | zstd-3 per file | ZipNN per file | tpde store | ZipNN / store | target |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for run in st["size"]:
        name = run["series"]
        t = T[f"size.{name}"]
        add(f"| {_SERIES_LABELS.get(name, name)} | {_mib(run['raw_bytes'])} | {run['ratio_zstd']:.2f}x "
            f"| {run['ratio_zipnn']:.2f}x | **{run['ratio_store']:.2f}x** | {run['zipnn_over_store']:.2f} "
            f"| >= {t['values']['threshold']:g}: {_met(t['pass'])} |")
    tf = st["torch_files"]
    rs, ad, mem = st["resume"], st["add"], st["memory"]
    dev = tf["ratio_pt_over_safetensors"] - 1
    bullets = [
        f"Torch files: the same {tf['tensors']} tensors as `.pt` and as `.safetensors` store at ratios "
        f"{dev * 100:+.2f}% apart ({T['torch_files']['target']}: {_met(T['torch_files']['pass'])}).",
        f"Resume: `Store.load()` of the newest checkpoint ({_mib(rs['raw_bytes'])}, every tensor file), "
        f"alone in a new process as a resume runs (`bench/resume_child.py`), takes "
        f"{rs['median_s']['store_fresh_warm']:.2f} s warm, {rs['ratio_warm']:.2f}x `safetensors.torch.load_file` + "
        f"`torch.load` on the raw files with their tensors materialised, as `Store.load`'s are "
        f"({rs['median_s']['raw_copied_fresh_warm']:.3f} s): {_met(T['resume.warm']['pass'])} "
        f"({T['resume.warm']['target']}). Cold (page cache dropped with `{rs['cold_method']}`): "
        f"{rs['median_s']['store_fresh_cold']:.2f} s against {rs['median_s']['raw_copied_fresh_cold']:.2f} s, "
        f"{rs['ratio_cold']:.2f}x: {_met(T['resume.cold']['pass'])} ({T['resume.cold']['target']}). "
        f"Repeated in one process, where the raw side's later loads reuse the heap the previous one freed, "
        f"the same loads take {rs['ratio_warm_in_process']:.2f}x warm and {rs['ratio_cold_in_process']:.2f}x "
        f"cold. Left as views of `load_file`'s map (bytes read only when touched), the raw files load in "
        f"{rs['median_s']['raw_warm']:.3f} s warm and {rs['median_s']['raw_cold']:.3f} s cold. The oldest "
        f"checkpoint, step {rs['oldest_step']}, decodes through its chain in "
        f"{rs['median_s']['store_oldest_warm']:.2f} s.",
        f"Add: adding a checkpoint takes {ad['median_s']['store_delta']:.2f} s, {ad['ratio_delta']:.2f}x ZipNN "
        f"compressing the same files one by one ({ad['median_s']['zipnn_last']:.2f} s); the first add, with "
        f"no previous checkpoint to re-code, {ad['ratio_first']:.2f}x: {_met(T['add.delta']['pass'])} "
        f"({T['add.delta']['target']}).",
        f"Memory: adding and restoring a synthetic {mem['checkpoint_bytes'] / 2**30:.1f} GiB checkpoint "
        f"(largest tensor {_mib(mem['largest_tensor_bytes'])}) peaked at {_mib(mem['peak_rss_bytes'])} RSS, "
        f"against 2 x the largest tensor + 256 MiB = {_mib(mem['bound_bytes'])}: {_met(T['memory']['pass'])}; "
        f"restored byte-identical: {'yes' if mem['restored_byte_identical'] else 'no'}.",
    ]
    out.bullets(bullets)
    return out.text()


# --- integrations block (bench/hf_overhead.py, bench/dcp.py) ----------------------------

def _spread(hf: Dict[str, Any]) -> str:
    """How far each variant's runs spread: on a shared VM, wider than a
    few percent of target."""
    sec, med = hf["seconds"], hf["median_s"]
    parts = [f"{k} {min(v):.1f}-{max(v):.1f} s ({(max(v) - min(v)) / med[k]:.0%} of its median)"
             for k, v in sec.items() if k in ("plain", "tpde")]
    margin = _targets(hf)["overhead"]["values"]["threshold"] - 1
    return f" The runs spread over {_join(parts)}, against a target {margin:.0%} above plain."


def _peer_sentence(hf: Dict[str, Any]) -> str:
    """The peers of bench/hf_overhead.py (absent from runs with --no-peers)."""
    peers = hf.get("peers") or {}
    if not peers:
        return ""
    names = {"zipnn": "ZipNN (zstd-3 for files without floats)", "zstd": "zstd-3"}
    parts = "; ".join(f"{names[k]}: {v['ratio']:.3f}x, {_mib(v['bytes'])} written" for k, v in sorted(peers.items()))
    return (" In the same run, the same training with a callback in the same position (one background "
            "thread at `SCHED_IDLE`, waited for before the next save and at the end) that compresses each "
            f"checkpoint's files one by one, as a user without a store would: {parts} for the "
            f"{len(hf['store']['steps'])} checkpoints, against the store's {_mib(hf['store']['store_bytes'])}.")


def render_integrations(hf: Dict[str, Any], dcp: Dict[str, Any]) -> str:
    for d, path in ((hf, HF_OVERHEAD_JSON), (dcp, DCP_JSON)):
        if d.get("quick"):
            raise RenderError(f"{path} is from a --quick run: rerun it without --quick")
    t = _targets(hf)["overhead"]
    hp, med = hf["params"], hf["median_s"]
    out = Block()
    out.para(f"Trainer callback overhead, from `bench/hf_overhead.py` ({_provenance(hf, HF_OVERHEAD_JSON)}, "
             f"on {_machine(hf)}): the real `transformers.Trainer` fine-tunes all-MiniLM-L6-v2 on the CPU for "
             f"{hp['steps']} steps, saving every {hp['save_every']}, with and without `TPDETrainerCallback` "
             f"(runs alternated, medians of {hp['reps']}). Training took {med['plain']:.1f} s plain and "
             f"{med['tpde']:.1f} s with the callback, end-of-training wait included: {hf['ratio']:.3f}x "
             f"({t['target']}: {_met(t['pass'])}).{_spread(hf)} The losses were identical"
             f"{' in every run' if hf['losses_identical'] else ' NOT in every run'}; the store held "
             f"{len(hf['store']['steps'])} checkpoints in {_mib(hf['store']['store_bytes'])}, against "
             f"{_mib(hf['store']['checkpoint_bytes'])} for one uncompressed folder.{_load(hf)} On this "
             "machine training and the background compression share the same two cores; a GPU run, where "
             "the CPU is free while the GPU trains, was not measured."
             + _peer_sentence(hf))
    if "saves" not in dcp:
        raise RenderError(f"{DCP_JSON} is from an older bench/dcp.py (one writer reused across saves): rerun it")
    th, tg, n = dcp["targets_thresholds"], dcp["targets"], dcp["saves"]
    data = dcp["data"]["saves"]
    steps = _join([s["checkpoint"].split("-")[-1] for s in data])
    out.para(f"torch.distributed.checkpoint, from `bench/dcp.py` ({_provenance(dcp, DCP_JSON)}, on "
             f"{_machine(dcp)}): the MiniLM weights and AdamW moments of a real Trainer run "
             f"({_mib(dcp['state_bytes'])}), saved at its steps {steps}: {n} saves, each with a new writer "
             f"given only its folder (as torchtitan and accelerate call DCP), by 1 rank and by 2 ranks under "
             f"`torchrun` with gloo, each rank holding half of every tensor (DTensor `Shard(0)`); medians of "
             f"{dcp['reps']} series, every save loaded back and compared bit for bit.{_load(dcp)}")
    add = out.line
    add("| writer | 1 rank, MB/s (first / later saves) | 2 ranks, MB/s | kept on disk, first save | each later save |")
    add("| --- | ---: | ---: | ---: | ---: |")
    thr, kept = dcp["throughput_MBps"], dcp["kept_bytes"]["ranks2"]

    def mbps(w: str, key: str) -> str:
        v = thr[w][key]
        return f"{v[0]:.0f} / {statistics.median(v[1:]):.0f}"

    for key, label in (("tpde", "`tpde.dcp.Writer`"), ("fsw_zstd", "`FileSystemWriter` + `ZStandard`"),
                       ("fsw", "`FileSystemWriter`")):
        add(f"| {label} | {mbps('ranks1', key)} | {mbps('ranks2', key)} | {_mib(kept[key][0])} "
            f"| {_range([b / 2**20 for b in kept[key][1:]], ',.0f', ' MiB')} |")
    sc, cs, vc = dcp["scaling_2_over_1_rank"], dcp["codec_scaling_2_over_1_process"], dcp["scaling_over_codec_scaling"]
    z = dcp["zstd_over_tpde"]
    out.bullets([
        f"Size: tpde keeps, for each save, its folder plus what the save added to the store beside it (the "
        f"new save whole, less what re-coding the one before as deltas saved). `FileSystemWriter` + "
        f"`ZStandard` keeps {_range(z['ranks2'][1:], '.2f', 'x')} those bytes for each save after the first "
        f"with 2 ranks ({_range(z['ranks1'][1:], '.2f', 'x')} with 1); target >= "
        f"{_g(th['zstd_over_tpde_later_saves'])}: "
        f"{_met(tg['zstd_over_tpde_later_saves_ranks1'] and tg['zstd_over_tpde_later_saves_ranks2'])}. The first "
        f"save, keyframes only: {z['ranks2'][0]:.2f}x.",
        f"Rank scaling: 2 ranks save at {sc['first']:.2f}x the throughput of 1 rank for the first save and "
        f"{sc['later']:.2f}x for the later ones (median). Two ranks on this machine's cores cannot double, so "
        f"the reference is the codec alone, timed the same way in the same run (1 process, then 2 at once, "
        f"no DCP, no store): {cs['first']:.2f}x for the keyframes of a first save and {cs['later']:.2f}x for "
        f"a later save's work (its keyframes, and the previous save's decoded and re-coded as deltas). tpde's "
        f"saves keep {vc['first']:.2f} and {vc['later']:.2f} of that scaling; target >= "
        f"{_g(th['scaling_over_codec_scaling'])}: {_met(tg['scaling_over_codec_first'])} and "
        f"{_met(tg['scaling_over_codec_later'])}.",
    ])
    return out.text()


# --- DeepSpeed block (bench/deepspeed_store.py) ---------------------------------------------

def render_deepspeed(ds: Dict[str, Any]) -> str:
    if ds.get("quick"):
        raise RenderError(f"{DEEPSPEED_JSON} is from a --quick run: rerun ./build.sh deepspeed (no options)")
    su, th, tg, tags = ds["setup"], ds["targets_thresholds"], ds["targets"], ds["tags"]
    if len(tags) < 2:
        raise RenderError(f"{DEEPSPEED_JSON} has fewer than two tags: rerun ./build.sh deepspeed (no options)")
    out = Block()
    out.para(f"DeepSpeed, from `bench/deepspeed_store.py` ({_provenance(ds, DEEPSPEED_JSON)}, on {_machine(ds)}): "
             f"the real all-MiniLM-L6-v2 weights fine-tuned on the CPU under DeepSpeed "
             f"{ds['versions'].get('deepspeed', '')} (ZeRO stage {su['zero_stage']}, {su['ranks']} rank, "
             f"{su['dtype']}, AdamW lr {_g(su['lr'])}), a tag every {su['steps_between']} steps, each saved from the "
             "same state through `TPDECheckpointEngine` (all tags in one store) and through DeepSpeed's own "
             "engine. A tag's tpde size is the store's growth on that save plus what stays in the tag folder "
             "(pointer and stubs); every tag was read back from the store and compared bit for bit with "
             f"DeepSpeed's files.{_load(ds)}")
    add = out.line
    add("| tag | DeepSpeed's files | zstd-3 | ZipNN | tpde, each file alone | tpde store | zstd-3 / tpde store |")
    add("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in tags:
        p = t["plain_bytes"]
        add(f"| `{t['tag']}` | {_mib(p)} | {_r(p, t['zstd3_bytes'])}x | {_r(p, t['zipnn_bytes'])}x "
            f"| {_r(p, t['per_file_tpde_bytes'])}x | **{_r(p, t['tpde_bytes'])}x** "
            f"| {t['zstd3_over_tpde']:.2f}x |")
    z = ds["zstd3_over_tpde"]
    later = tags[1:]
    out.bullets([
        f"Size: zstd-3 of DeepSpeed's files is {_range(z['after_first'], '.2f', 'x')} the size of what each tag "
        f"after the first costs tpde ({z['after_first_total']:.2f}x over those tags); target >= "
        f"{th['zstd3_over_tpde_after_first']:g} for every one: {_met(tg['zstd3_over_tpde_after_first'])}. The "
        f"first tag, with nothing to be a delta against: {z['first']:.2f}x. \"tpde, each file alone\" is what "
        "the earlier engine wrote (every file a tpde file, no deltas across tags); the store also keeps once "
        "a tensor that several files of a tag hold.",
        f"Save time per tag after the first: {_range([t['tpde_save_s'] for t in later], '.1f', ' s')} through tpde "
        f"(coding, and re-coding the previous tag as deltas, in the saving process), against "
        f"{_range([t['plain_save_s'] for t in later], '.1f', ' s')} for DeepSpeed's own engine; one run, no "
        "repetitions.",
    ])
    return out.text()


# --- legacy torch files block (bench/legacy.py) ------------------------------------------

_FORMAT_LABELS = {"safetensors": "`.safetensors`", "pth": "`.pth`, legacy (pre-zip)", "pt": "`.pt`, zip"}


def render_legacy(lg: Dict[str, Any]) -> str:
    if lg.get("quick"):
        raise RenderError(f"{LEGACY_JSON} is from a --quick run: rerun ./build.sh legacy (no options)")
    t = lg["target"]
    out = Block()
    out.para(f"From one run of `./build.sh legacy` (bench/legacy.py), {_provenance(lg, LEGACY_JSON)}, on "
             f"{_machine(lg)}: the same real tensors written as `.safetensors`, as a legacy `.pth` "
             "(`torch.save(..., _use_new_zipfile_serialization=False)`, the format of many model-zoo "
             "weights) and as torch's zip `.pt`; each file compressed alone by tpde, zstd-3 and ZipNN, and "
             "every tpde output restored byte-identical. Sizes only: nothing is timed.")
    add = out.line
    add("| tensors | file | raw | tpde | zstd-3 | ZipNN | tpde read it as |")
    add("| --- | --- | ---: | ---: | ---: | ---: | --- |")
    for r in lg["single"]:
        for f, m in r["formats"].items():
            add(f"| all-MiniLM-L6-v2, {r['dtype']} | {_FORMAT_LABELS.get(f, f)} | {_mib(m['raw_bytes'])} "
                f"| **{m['ratio_tpde']:.3f}x** | {m['ratio_zstd']:.3f}x | {m['ratio_zipnn']:.3f}x | {m['source']} |")
    bullets = [f"{r['dtype']}: ratio `.pth` / ratio `.safetensors` = {r['pth_over_safetensors']:.4f} "
               f"(target within {t:.0%}): {_met(r['pass'])}." for r in lg["single"]]
    s = lg["series"]
    bullets.append(
        f"A series: the full training state ({s['tensors']} tensors: weights and AdamW moments) of "
        f"{s['checkpoints']} checkpoints of a short real fine-tuning run, each saved as `.pth` and as "
        f"`.safetensors`, each series added to a store: {s['pth']['ratio']:.3f}x and "
        f"{s['safetensors']['ratio']:.3f}x, `.pth` / `.safetensors` = {s['pth_over_safetensors']:.4f}: "
        f"{_met(s['pass'])}. Of the older checkpoints' {s['pth']['older_regions']} regions, "
        f"{s['pth']['older_deltas']} are deltas in the `.pth` store and {s['safetensors']['older_deltas']} "
        "in the `.safetensors` one (a region stays a keyframe when its delta is not smaller): legacy "
        "storage keys change with every save, but regions are named by state-dict path, so each storage "
        "still finds its previous version.")
    out.bullets(bullets)
    return out.text()


def render_scale(sc: Dict[str, Any]) -> str:
    if sc.get("quick") or not sc.get("ratios"):
        raise RenderError(f"{SCALE_JSON} is from a partial run: rerun ./build.sh scale (no options)")
    pts = sc["points"]
    r, t, ok = sc["ratios"], sc["targets"], sc["pass"]
    out = Block()
    out.para(f"From one run of `./build.sh scale` (bench/store_scale.py), {_provenance(sc, SCALE_JSON)}, on "
             f"{_machine(sc)}: one store grown to {pts[-1]['checkpoints']:,} checkpoints of real weights "
             f"({sc['tensors']} tensors of all-MiniLM-L6-v2's first encoder layer, "
             f"{sc['raw_bytes_per_checkpoint'] / 1e6:.1f} MB, drifting every step as a fine-tune's do, each "
             "saved Trainer-style as a folder and added with `Store.add`). Each figure is a median of "
             f"{sc['reps']} runs. Opening a store parses its newest manifest, once per handle; `list()`, `info()` "
             "and `load()` ran on an open `Store`, as a training script holds one; `tpde ls` and `tpde info` "
             "ran as commands, interpreter start included. The newest checkpoint loaded bit-exact at every "
             "size.")
    add = out.line
    add("| checkpoints | open | `list()` (every checkpoint) | `info()` of the newest | `load()` of the newest "
        "| `tpde ls` | `tpde info STORE latest` | an add |")
    add("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in pts:
        add(f"| {p['checkpoints']:,} | {p['open_s'] * 1e3:.2f} ms | {p['ls_s'] * 1e3:.1f} ms "
            f"| {p['info_s'] * 1e3:.2f} ms | {p['load_s'] * 1e3:.1f} ms | {p['ls_cli_s']:.2f} s "
            f"| {p['info_cli_s']:.2f} s | {p['add_s'] * 1e3:.0f} ms |")
    out.bullets([
        f"From 100 to 1,000 checkpoints: `list()` {r['ls']:.2f}x (target at most {t['ls']:g}x): {_met(ok['ls'])}; "
        f"`info()` of the newest {r['info']:.2f}x (at most {t['info']:g}x): {_met(ok['info'])}; `load()` of the "
        f"newest {r['load']:.2f}x (at most {t['load']:g}x): {_met(ok['load'])}. Opening {r['open']:.2f}x: "
        "it parses the manifest, one line a checkpoint. As commands, which open the store each time, "
        f"`tpde ls` {r['ls_cli']:.2f}x and `tpde info` {r['info_cli']:.2f}x.",
        _scale_add_line(sc),
    ] + _scale_writer_lines(sc))
    return out.text()


def _scale_writer_lines(sc: Dict[str, Any]) -> List[str]:
    r, t, ok, pts = sc["ratios"], sc["targets"], sc["pass"], sc["points"]
    if "open_write_vs_open" not in t:  # a run from before the writer's open was timed
        return []
    ms = lambda k: ", ".join(f"{p[k] * 1e3:.1f} ms" for p in pts)  # noqa: E731
    sizes = ", ".join(f"{p['checkpoints']:,}" for p in pts)
    return [
        f"Opening to write, after a writer that closed cleanly ({sizes} checkpoints): {ms('open_write_s')}: at "
        f"1,000 checkpoints {r['open_write_vs_open']:.2f}x a reader's open (at most {t['open_write_vs_open']:g}x: "
        "a `Store` that writes holds a reader's handle and a writer's, each parsing the manifest once, and the "
        f"writer's reads no record): {_met(ok['open_write_vs_open'])}. "
        f"A one-shot session's open and first add: {ms('first_add_s')}, {r['first_add']:.2f}x (at most "
        f"{t['first_add']:g}x): {_met(ok['first_add'])}; with its close, which waits for the count of the store "
        f"that the open started beside the add, {ms('session_s')} ({r['session']:.2f}x).",
        f"Opening to write after a writer that died (its pid left in writer.lock, as kill -9 leaves it), which "
        f"sweeps the store: {ms('open_write_after_death_s')}, {r['open_write_after_death']:.2f}x: linear in the "
        "history, as a sweep is, and reported, not targeted (docs/FORMAT.md §11.6 step 5).",
    ]


def _scale_add_line(sc: Dict[str, Any]) -> str:
    r, t, ok = sc["ratios"], sc["targets"], sc["pass"]
    if "add" not in t:  # a run from before adds had a target
        return ("An add is not bounded this way: it codes against the K + 1 newest records only, but its cleanup "
                f"reads every record once per process ({r['add']:.2f}x from 100 to 1,000).")
    return (f"An add (the median of the {sc.get('add_window', 1)} adds before each size, on one open `Store`): "
            f"{r['add']:.2f}x from 100 to 1,000 (at most {t['add']:g}x): {_met(ok['add'])}. It codes against the "
            "K + 1 newest records, and its cleanup reads only the records its commit listed or dropped.")


def render_runs(rn: Dict[str, Any]) -> str:
    f = rn["first_checkpoint"]
    out = Block()
    out.para(f"From one run of `./build.sh runs` (bench/runs.py), {_provenance(rn, RUNS_JSON)}, on "
             f"{_machine(rn)}: two real fine-tunes of all-MiniLM-L6-v2 on the CPU (seeds 1 and 2, "
             "Trainer checkpoint folders with weights, AdamW state, scheduler, rng and tokenizer), kept in one "
             "store as runs `a` and `b` whose parent is the pretrained weights, the main run's step 0.")
    out.bullets([
        f"Fine-tune `b`'s first checkpoint ({f['raw_bytes'] / 1e6:.1f} MB) grows that store by "
        f"{f['grown_bytes'] / 1e6:.1f} MB; in a store of its own it costs {f['own_store_bytes'] / 1e6:.1f} MB "
        f"(zstd-3, each file alone: {f['zstd3_bytes'] / 1e6:.1f} MB): {f['ratio']:.2f}x (target at most "
        f"{rn['target']:g}x): {_met(rn['pass'])}. Its weights alone: {f['weights_ratio']:.2f}x; its AdamW "
        "moments share little with the base, and stay keyframes.",
        "Every checkpoint of every run restored byte-identical"
        + ("" if rn["byte_identical"] else " (NOT: see the JSON)")
        + ", and again after run `a` was removed"
        + ("" if rn["byte_identical_after_removing_a"] else " (NOT)") + "; `verify` "
        + ("found nothing." if rn["verify_ok"] else "found damage."),
    ])
    return out.text()


def render_s3(d: Dict[str, Any]) -> str:
    up, res = d["upload"], d["resume"]
    cup, cres = d["capped"]["upload"], d["capped"]["resume"]
    t = d["targets"]
    cap = f"{d['capped']['mbit_s']:g} Mbit/s"
    req = res["requests"]["by_method"]
    out = Block()
    out.para(f"From one run of `./build.sh s3` (bench/s3.py), {_provenance(d, S3_JSON)}, on {_machine(d)}, with "
             "the S3 server (VersityGW) on the same machine's loopback: the store benchmark's fp32 Trainer run "
             f"({up['raw_bytes'] / 1e6:.1f} MB per checkpoint folder) in `s3://`, against boto3 on the raw files. "
             f"Medians of {d['reps']}; the capped rows go through tests/s3proxy.py at {cap}.{_load(d)}")
    out.line("| | tpde | boto3 | tpde / boto3 | target |")
    out.line("| --- | --- | --- | --- | --- |")
    out.line(f"| upload: `Store.add` of the newest folder, committed / `upload_file` of its files | "
             f"{up['median_s']['store_add']:.2f} s | {up['median_s']['boto3']:.2f} s | {up['ratio']:.2f} | "
             f"at most {t['upload']:g}: {_met(up['ratio'] <= t['upload'])} |")
    out.line(f"| resume: `Store.load` of its tensor files through an empty cache / download and load | "
             f"{res['median_s']['store']:.3f} s | {res['median_s']['boto3']:.3f} s | {res['ratio']:.2f} | "
             f"at most {t['resume']:g}: {_met(res['ratio'] <= t['resume'])} |")
    out.line(f"| upload at {cap} | {cup['median_s']['store_add']:.2f} s | {cup['median_s']['boto3']:.2f} s | "
             f"{cup['ratio']:.2f} | |")
    out.line(f"| resume at {cap} | {cres['median_s']['store']:.3f} s | {cres['median_s']['boto3']:.3f} s | "
             f"{cres['ratio']:.2f} | |")
    sent = up["bytes_sent"]
    out.bullets([b for b in [
        f"Bytes an add sent: {sent['store'] / 1e6:.1f} MB, against {sent['boto3'] / 1e6:.1f} MB for the raw files "
        f"({sent['boto3'] / sent['store']:.2f}x fewer). The newest checkpoint is stored as keyframes (a resume "
        "decodes no chain), so an add sends a keyframe's size; the previous newest's reverse deltas follow in "
        f"the background ({up['median_s']['store_recode']:.2f} s more, not in the add's time), and the keyframes "
        "they replace leave the bucket after the grace period.",
        f"The whole series ({res['series']['checkpoints']} checkpoints, "
        f"{res['series']['raw_bytes'] / 1e6:.0f} MB raw) takes {res['series']['bucket_bytes'] / 1e6:.0f} MB in "
        f"the bucket once the replaced keyframes are gone ({res['series']['ratio']:.2f}x): what boto3 would "
        "store is the raw size."
        if "series" in res else "",
        f"A load of the newest checkpoint through an empty cache made {req['GET']} GETs for "
        f"{res['requests']['objects_fetched']} objects (an object larger than a part, 8 MiB, is fetched as "
        f"ranges in parallel; the others are the store's marker, the hint, the manifest and the record), "
        f"{req['HEAD']} HEADs (the generation probe) and {req['LIST']} LISTs.",
        "On loopback the server shares the 2 cores with the add's coding, so an upload is CPU-bound here; "
        "the capped rows are closer to a network between machines.",
    ] if b])
    return out.text()


def render_venv(v: Dict[str, Any]) -> str:
    gib = 1 << 30
    out = Block()
    out.para(f"The venv takes {v['venv_disk_bytes'] / gib:.2f} GiB on disk ({v['distributions']} packages), of "
             f"which torch {v['torch_version']}, a CUDA build, takes {v['torch_disk_bytes'] / gib:.2f} GiB and "
             f"the NVIDIA CUDA libraries it depends on {v['nvidia_disk_bytes'] / gib:.2f} GiB: measured as `du` "
             f"counts by `./build.sh venv-size` (bench/venv_size.py), {_provenance(v, VENV_JSON)}, for the lock "
             f"file whose sha256 begins `{v['lock_sha256_16']}` (`du -sh $(./build.sh venv)` shows it on yours).")
    return out.text()


class Block:
    """Markdown text built from paragraphs, bullet lists and raw lines (tables)."""

    def __init__(self) -> None:
        self.parts: List[List[str]] = []

    def para(self, text: str) -> None:
        self.parts.append(_wrap(text, "", ""))

    def bullets(self, items: Sequence[str]) -> None:
        self.parts.append([ln for it in items for ln in _wrap(it, "- ", "  ")])

    def line(self, text: str) -> None:
        """A raw line (a table row), appended to the current table part."""
        if not self.parts or not self.parts[-1] or not self.parts[-1][0].startswith("|"):
            self.parts.append([])
        self.parts[-1].append(text)

    def text(self) -> str:
        return "\n\n".join("\n".join(p) for p in self.parts)


def _wrap(text: str, first: str, rest: str, width: int = WIDTH) -> List[str]:
    """text wrapped at width (first/rest: line prefixes); never breaks inside `code`."""
    out: List[str] = []
    cur = ""
    for w in _words(text):
        prefix = rest if out else first
        if cur and len(prefix) + len(cur) + 1 + len(w) > width:
            out.append(prefix + cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    out.append((rest if out else first) + cur)
    return out


def _words(text: str) -> List[str]:
    """Split on spaces outside backticks."""
    words, cur, code = [], "", False
    for ch in text:
        if ch == "`":
            code = not code
        if ch == " " and not code:
            if cur:
                words.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        words.append(cur)
    return words


def load_results(results: Path = RESULTS) -> Dict[str, Optional[Dict[str, Any]]]:
    out: Dict[str, Optional[Dict[str, Any]]] = {}
    for name, fname in (("run", "run.json"), ("series", "series.json"), ("store", "store.json"),
                        ("hf_overhead", "hf_overhead.json"), ("dcp", "dcp.json"), ("legacy", "legacy.json"),
                        ("scale", "store_scale.json"), ("runs", "runs.json"), ("deepspeed", "deepspeed.json"),
                        ("venv", "venv.json"), ("s3", "s3.json")):
        p = results / fname
        out[name] = json.loads(p.read_text()) if p.is_file() else None
    return out


def render_blocks(results: Path = RESULTS) -> Dict[str, Callable[[], str]]:
    """Block name -> a function rendering it (lazy: a file without that block needs no JSON)."""
    data = load_results(results)

    def need(name: str, fname: str) -> Dict[str, Any]:
        d = data[name]
        if d is None:
            cmd = {"run": "bench", "hf_overhead": "integrations", "venv": "venv-size"}.get(name, name)
            raise RenderError(f"{results / fname} is missing: run ./build.sh {cmd}")
        return d

    return {
        "bench": lambda: render_bench(need("run", "run.json")),
        "series": lambda: render_series(need("series", "series.json"), data["run"]),
        "store": lambda: render_store(need("store", "store.json")),
        "integrations": lambda: render_integrations(need("hf_overhead", "hf_overhead.json"), need("dcp", "dcp.json")),
        "legacy": lambda: render_legacy(need("legacy", "legacy.json")),
        "scale": lambda: render_scale(need("scale", "store_scale.json")),
        "deepspeed": lambda: render_deepspeed(need("deepspeed", "deepspeed.json")),
        "runs": lambda: render_runs(need("runs", "runs.json")),
        "venv": lambda: render_venv(need("venv", "venv.json")),
        "s3": lambda: render_s3(need("s3", "s3.json")),
    }


_MARK = re.compile(r"^<!-- ([a-z0-9_-]+):(begin|end) -->[ \t]*$", re.M)


def render_text(text: str, blocks: Dict[str, Callable[[], str]], where: str = "text") -> str:
    """text with the content of every known marked block replaced by its rendering.
    Markers with other names are left alone; a known name must have exactly one
    begin line followed by one end line."""
    for name, fn in blocks.items():
        begin = f"<!-- {name}:begin -->"
        end = f"<!-- {name}:end -->"
        nb = len(re.findall(rf"^{re.escape(begin)}[ \t]*$", text, re.M))
        ne = len(re.findall(rf"^{re.escape(end)}[ \t]*$", text, re.M))
        if nb == 0 and ne == 0:
            continue
        if nb != 1 or ne != 1:
            raise RenderError(f"{where}: {name} markers: {nb} begin and {ne} end lines (need one of each)")
        m = re.search(rf"^{re.escape(begin)}[ \t]*\n(.*?)^{re.escape(end)}[ \t]*$", text, re.M | re.S)
        if m is None:
            raise RenderError(f"{where}: {end} comes before {begin}")
        text = text[:m.start(1)] + fn().rstrip("\n") + "\n" + text[m.end(1):]
    return text


def block_contents(text: str) -> Dict[str, str]:
    """name -> content between its markers (without the marker lines), for every marked block."""
    out = {}
    for m in re.finditer(r"^<!-- ([a-z0-9_-]+):begin -->[ \t]*\n(.*?)^<!-- \1:end -->[ \t]*$", text, re.M | re.S):
        out[m.group(1)] = m.group(2)
    return out


def default_files() -> List[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def check_file(path: Path, blocks: Dict[str, Callable[[], str]]) -> Tuple[str, str]:
    """(current text, rendered text) of one file."""
    text = path.read_text()
    return text, render_text(text, blocks, str(path))


def _write(path: Path, text: str) -> None:
    # a temporary file beside it, renamed over it: a reader never sees half a file
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=str(path.parent))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 with a diff if a file differs")
    ap.add_argument("--results", type=Path, default=RESULTS, help="directory of run.json and series.json")
    ap.add_argument("files", nargs="*", type=Path, help="files to render (default README.md and docs/*.md)")
    args = ap.parse_args(argv)
    blocks = render_blocks(args.results)
    files = args.files or default_files()
    stale = 0
    try:
        for path in files:
            text, new = check_file(path, blocks)
            if text == new:
                continue
            rel = os.path.relpath(path, ROOT)
            if args.check:
                stale += 1
                sys.stdout.writelines(difflib.unified_diff(text.splitlines(True), new.splitlines(True),
                                                           f"{rel} (as is)", f"{rel} (rendered)"))
            else:
                _write(path, new)
                print(f"rendered {rel}")
    except RenderError as e:
        print(f"render: {e}", file=sys.stderr)
        return 2
    if stale:
        print(f"render: {stale} file(s) differ from the rendering of {os.path.relpath(args.results, ROOT)}; "
              f"run: python bench/render.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
