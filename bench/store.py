"""The checkpoint-store benchmark: tpde.Store on real Trainer checkpoints, beside ZipNN and zstd.

Data: bench/hf_run.py runs of the real all-MiniLM-L6-v2 weights fine-tuned on
the CPU, written as Hugging Face Trainer checkpoint-N/ folders (fp32 weights;
and the same training saving bf16 weights). Default: 8 checkpoints 100 steps
apart (the series benchmark's reference interval); --quick: the demo's run,
4 checkpoints 10 steps apart. Runs are cached in bench/out/.

Parts, all in one run, every figure measured now:

(a) size: three series, each added checkpoint by checkpoint (Store.add) to
    a fresh lossless store: the whole Trainer folders, their fp32
    model.safetensors alone, the bf16 run's model.safetensors alone. The
    store's bytes on disk after the last add vs the sum of ZipNN and of
    zstd-3 over every file, each file compressed alone. Every checkpoint is
    restored and compared (sha256). Targets: ZipNN/store >= 1.5 (fp32
    series) and >= 3 (bf16 weights).
(b) torch files: the full training state of each checkpoint as one flat
    state dict (weights + AdamW exp_avg/exp_avg_sq by parameter name), saved
    with torch.save (.pt) and with safetensors, each series added to its own
    fresh store: the ratios (raw/disk) should agree within 1%.
(c) resume: Store.load(unpickle=True) of the newest checkpoint (under the
    numpy allowlist the Trainer itself loads rng_state.pth with) vs
    safetensors.torch.load_file + torch.load(weights_only=True) of the same
    four tensor files, model.safetensors' tensors copied out of the map;
    page cache warm, then cold (caches dropped through
    /proc/sys/vm/drop_caches when writable, else posix_fadvise(DONTNEED) on
    every file involved; which one is printed). Each load once in a new
    process, as a resume runs (bench/resume_child.py), and, informational,
    repeated in this process. Targets (new process): store <= 1.5x raw
    warm, <= 1.0x cold.
(d) add speed: Store.add of the newest checkpoint into a copy of the store
    holding the others (a delta add, which also re-codes the previous
    newest), and of the first checkpoint into an empty store (keyframes), vs
    ZipNN compressing the same files one by one, file to file (read,
    compress, write, fsync, as the store does). Target: store no slower.
(e) memory (--memory, slow): peak RSS of one subprocess that adds a
    synthetic >= 4 GB safetensors checkpoint (a few large fp32/bf16
    tensors), then a second one (every fp32 element perturbed: a delta add),
    then restores both; bound: 2 x the largest tensor + 256 MiB.

Timings are medians of --reps runs (default 3), tools interleaved; ratios
between tools are printed beside the absolute times. Missed targets print
FAIL; the exit status is 1 only when something does not restore
byte-identical or the setup is broken.

    PYTHONPATH=python HF_HUB_OFFLINE=1 $(./build.sh venv)/bin/python bench/store.py --quick
    ... bench/store.py --json bench/results/store.json            # the full run (trains twice the first time)
    ... bench/store.py --memory                                    # adds (e), ~4 GB x 6 of disk
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import hf_run  # noqa: E402
from common import MB, MiB, BenchError  # noqa: E402

FULL = {"checkpoints": 8, "steps_between": 100}
QUICK = {"checkpoints": 4, "steps_between": 10}
TARGETS = {"fp32": 1.5, "bf16": 3.0, "torch_vs_safetensors": 0.01, "resume": 1.5, "resume_cold": 1.0,
           "add": 1.0}
TENSOR_FILES = ("model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth")

_verbose = False


def log(msg: str) -> None:
    if _verbose:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(xs: Sequence[float]) -> float:
    return statistics.median(xs)


def timed(fn: Callable[[], Any]) -> Tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def restore_check(store: Path, step: int, want: Dict[str, str], dest: Path) -> None:
    """Store.restore(step) into dest and compare every file's sha256 with want; raises BenchError."""
    import tpde

    with tpde.Store(store) as s:
        s.restore(step, dest)
    got = hf_run.sha_tree(dest)
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    shutil.rmtree(dest)
    if bad:
        raise BenchError(f"{store} checkpoint {step}: {', '.join(bad)} not restored byte-identical")


# --- (a) size ---------------------------------------------------------------------------

class ToolCache:
    """zstd-3 / ZipNN results per file, so a file in two series is compressed once."""

    def __init__(self) -> None:
        self.by_path: Dict[Path, Dict[str, Dict[str, float]]] = {}

    def get(self, p: Path) -> Dict[str, Dict[str, float]]:
        if p not in self.by_path:
            self.by_path[p] = hf_run.per_file_tools([p])
        return self.by_path[p]


def size_series(name: str, steps: Sequence[int], paths: Sequence[Path], work: Path, tools: ToolCache,
                keep_before_last: Optional[Path] = None) -> Dict[str, Any]:
    """Add paths (folders or files) at steps to a fresh store in work/name; sizes, times, restore checks."""
    import tpde

    store = work / f"{name}.tpde"
    rows = []
    for k, (step, p) in enumerate(zip(steps, paths)):
        if keep_before_last is not None and k == len(paths) - 1:
            shutil.copytree(store, keep_before_last)  # (d) adds the last checkpoint to copies of this
        files = [f for _, f in hf_run.tree_files(p)] if p.is_dir() else [p]
        raw = sum(f.stat().st_size for f in files)
        before = hf_run.dir_bytes(store)
        with tpde.Store(store) as s:
            _, add_s = timed(lambda: s.add(p, step=step))
            # The previous checkpoint's re-code runs after add returns: its
            # time is shown apart, and the growth is measured once it ends.
            _, recode_s = timed(s.wait)
        grew = hf_run.dir_bytes(store) - before
        t = {n: {"bytes": 0, "seconds": 0.0} for n in ("zstd-3", "ZipNN")}
        for f in files:
            for n, v in tools.get(f).items():
                t[n]["bytes"] += v["bytes"]
                t[n]["seconds"] += v["seconds"]
        rows.append({"step": step, "files": len(files), "raw_bytes": raw, "store_growth_bytes": grew,
                     "add_s": add_s, "recode_s": recode_s, "zipnn_bytes": t["ZipNN"]["bytes"], "zipnn_s": t["ZipNN"]["seconds"],
                     "zstd_bytes": t["zstd-3"]["bytes"], "zstd_s": t["zstd-3"]["seconds"]})
        log(f"  {name}: added step {step}: {raw / MB:.1f} MB, store +{grew / MB:.1f} MB in {add_s:.2f} s"
            f" (+ {recode_s:.2f} s re-coding the one before, after add returned)")
    disk = hf_run.dir_bytes(store)
    for step, p in zip(steps, paths):
        want = hf_run.sha_tree(p) if p.is_dir() else {p.name: common.sha256_file(p)}
        restore_check(store, step, want, work / f"restored-{name}-{step}")
    raw = sum(r["raw_bytes"] for r in rows)
    zn = sum(r["zipnn_bytes"] for r in rows)
    zs = sum(r["zstd_bytes"] for r in rows)
    return {"series": name, "store": str(store), "checkpoints": rows, "raw_bytes": raw, "store_disk_bytes": disk,
            "zipnn_bytes": zn, "zstd_bytes": zs, "ratio_store": raw / disk, "ratio_zipnn": raw / zn,
            "ratio_zstd": raw / zs, "zipnn_over_store": zn / disk, "zstd_over_store": zs / disk,
            "restored_byte_identical": True}


# --- (b) torch files -----------------------------------------------------------------------

_PARAM_ORDER: Dict[Path, List[str]] = {}


def param_order(d: Path) -> List[str]:
    """The model's parameter names in optimizer.pt's order: the Trainer's two groups (weight decay, then
    none for biases and LayerNorm), each in named_parameters() order (a meta-device model from config.json)."""
    if d not in _PARAM_ORDER:
        import torch
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(str(d))
        with torch.device("meta"):
            model = transformers.BertForSequenceClassification(cfg)
        names = [n for n, _ in model.named_parameters()]
        _PARAM_ORDER[d] = [n for n in names if not hf_run._no_decay(n)] + [n for n in names if hf_run._no_decay(n)]
    return _PARAM_ORDER[d]


def flat_state(d: Path) -> Dict[str, Any]:
    """A checkpoint's training state as one flat dict: the weights, then AdamW's moments by parameter name."""
    import torch
    from safetensors.torch import load_file

    w = load_file(str(d / "model.safetensors"))
    opt = torch.load(d / "optimizer.pt", weights_only=True)
    order = param_order(d)
    groups = [len(g["params"]) for g in opt["param_groups"]]
    if sum(groups) != len(order):
        raise BenchError(f"{d}: optimizer.pt has {groups} parameters in its groups, the model {len(order)}")
    sd = dict(w)
    for i, n in enumerate(order):
        st = opt["state"].get(i)
        if st is None:
            continue
        if tuple(st["exp_avg"].shape) != tuple(w[n].shape):
            raise BenchError(f"{d}: optimizer state {i} has shape {tuple(st['exp_avg'].shape)}, {n} {tuple(w[n].shape)}")
        sd[f"{n}.exp_avg"] = st["exp_avg"].contiguous()
        sd[f"{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
    return sd


def torch_files(run: hf_run.Run, work: Path) -> Dict[str, Any]:
    import torch
    import tpde
    from safetensors.torch import save_file

    out: Dict[str, Any] = {}
    src = work / "torchfiles"
    for k, d in enumerate(run.dirs):
        sd = flat_state(d)
        cd = src / f"ckpt-{k}"
        cd.mkdir(parents=True)
        torch.save(sd, cd / "state.pt")
        save_file(sd, str(cd / "state.safetensors"), metadata={"format": "pt"})
        out.setdefault("tensors", len(sd))
        del sd
    for fmt in ("pt", "safetensors"):
        store = work / f"torchfiles-{fmt}.tpde"
        raw, add_s, recode_s = 0, [], []
        for step, k in zip(run.steps, range(len(run.dirs))):
            f = src / f"ckpt-{k}" / f"state.{fmt}"
            raw += f.stat().st_size
            with tpde.Store(store) as s:
                _, t = timed(lambda: s.add(f, step=step))
                _, r = timed(s.wait)
            add_s.append(t)
            recode_s.append(r)
        disk = hf_run.dir_bytes(store)
        last = src / f"ckpt-{len(run.dirs) - 1}" / f"state.{fmt}"
        restore_check(store, run.steps[-1], {last.name: common.sha256_file(last)}, work / f"restored-tf-{fmt}")
        first = src / "ckpt-0" / f"state.{fmt}"
        restore_check(store, run.steps[0], {first.name: common.sha256_file(first)}, work / f"restored-tf0-{fmt}")
        with tpde.Store(store) as s:
            layout = s.info().files[0].layout
        out[fmt] = {"raw_bytes": raw, "store_disk_bytes": disk, "ratio": raw / disk, "add_s": add_s, "recode_s": recode_s,
                    "layout": layout}
        log(f"  torch files .{fmt}: {raw / MB:.1f} MB -> {disk / MB:.1f} MB ({raw / disk:.3f}x), layout {layout}")
    shutil.rmtree(src)
    out["ratio_pt_over_safetensors"] = out["pt"]["ratio"] / out["safetensors"]["ratio"]
    return out


# --- (c) resume -------------------------------------------------------------------------------

def drop_method(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("1\n")
        return "drop_caches"
    except OSError:
        return "fadvise"


def make_cold(method: str, paths: Sequence[Path]) -> None:
    os.sync()
    if method == "drop_caches":
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return
    for p in paths:
        for _, f in (hf_run.tree_files(p) if p.is_dir() else [(p.name, p)]):
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@contextlib.contextmanager
def trainer_safe_globals() -> Iterator[None]:
    """The allowlist transformers.Trainer loads rng_state.pth with (trainer_pt_utils.safe_globals)."""
    import numpy as np
    import torch

    allow = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    with torch.serialization.safe_globals(allow):
        yield


def _same(a: Any, b: Any) -> bool:
    import torch

    if isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and
                torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(b, dict):
        return isinstance(a, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if type(b).__name__ == "ndarray":
        return type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape and bool((a == b).all())
    return a == b


def resume(store: Path, d: Path, step: int, oldest: int, reps: int, cold_choice: str) -> Dict[str, Any]:
    import torch
    import tpde
    from safetensors.torch import load_file

    files = [d / f for f in TENSOR_FILES if (d / f).is_file()]

    def raw_load() -> Dict[str, Any]:
        with trainer_safe_globals():
            out = {}
            for f in files:
                out[f.name] = load_file(str(f)) if f.suffix == ".safetensors" else torch.load(f, weights_only=True)
            return out

    def raw_load_copied() -> Dict[str, Any]:
        # load_file's tensors are views of an mmap (pages read when touched); this variant copies
        # them, as a resume's load_state_dict does, so the bytes are really read. Store.load's
        # tensors are in memory too, so this is what the resume targets compare with (issue:
        # "loading the raw files and materialising their tensors").
        out = raw_load()
        out["model.safetensors"] = {k: v.clone() for k, v in out["model.safetensors"].items()}
        return out

    def store_load(which: int) -> Callable[[], Dict[str, Any]]:
        # The same files as raw_load: a Trainer folder's training_args.bin is
        # a pickle of TrainingArguments, which torch.load(weights_only=True)
        # refuses, in a store as on disk.
        def go() -> Dict[str, Any]:
            with trainer_safe_globals(), tpde.Store(store) as s:
                return {f.name: s.load(which, file=f.name, unpickle=True) for f in files}
        return go

    child = Path(__file__).resolve().parent / "resume_child.py"

    def fresh(kind: str, cold_paths: Optional[Sequence[Path]]) -> float:
        """One load in a new process (resume_child.py), the page cache dropped
        for cold_paths once the child is ready (None: warm)."""
        p = subprocess.Popen([sys.executable, str(child), kind, str(store), str(step), str(d),
                              *[f.name for f in files]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if p.stdout.readline().strip() != "ready":
                raise BenchError(f"resume_child.py {kind} did not start")
            if cold_paths is not None:
                make_cold(method, cold_paths)
            p.stdin.write("go\n")
            p.stdin.flush()
            got = json.loads(p.stdout.readline())
        finally:
            p.stdin.close()
            rc = p.wait()
        if rc != 0:
            raise BenchError(f"resume_child.py {kind} exited {rc}")
        return float(got["s"])

    res: Dict[str, Any] = {"files": [f.name for f in files], "raw_bytes": sum(f.stat().st_size for f in files)}
    # correctness and the store-side error a plain call gives
    a, b = store_load(step)(), raw_load()
    if sorted(a) != sorted(b) or not all(_same(a[f], b[f]) for f in b):  # the store lists files sorted
        raise BenchError(f"Store.load({step}) differs from loading the raw files")
    del a, b
    try:
        with tpde.Store(store) as s:
            s.load(step, unpickle=True)
        res["plain_load_unpickle"] = "ok"
    except Exception as e:  # noqa: BLE001 - recorded: what a user without the allowlist sees
        msg = str(e)
        why = next((ln.strip() for ln in msg.splitlines() if "Unsupported global" in ln), msg.splitlines()[0])
        res["plain_load_unpickle"] = f"{type(e).__name__}: {why[:200]}"
    method = drop_method(cold_choice)
    res["cold_method"] = method
    times: Dict[str, List[float]] = {k: [] for k in ("store_warm", "raw_warm", "raw_copied_warm",
                                                     "store_oldest_warm", "store_cold", "raw_cold",
                                                     "raw_copied_cold", "store_fresh_warm",
                                                     "raw_copied_fresh_warm", "store_fresh_cold",
                                                     "raw_copied_fresh_cold")}
    for rep in range(reps):
        # Warm the page cache at every rep: the previous rep's cold rows
        # dropped it (drop_caches empties all of it, so the raw rows' drop
        # evicted the store's objects too, and a "warm" row after it was
        # cold in all but the first rep).
        for fn in (store_load(step), raw_load, store_load(oldest)):
            fn()
        for key, fn in (("store_warm", store_load(step)), ("raw_warm", raw_load),
                        ("raw_copied_warm", raw_load_copied), ("store_oldest_warm", store_load(oldest))):
            out, t = timed(fn)
            del out
            times[key].append(t)
        for key, fn, paths in (("store_cold", store_load(step), [store]), ("raw_cold", raw_load, files),
                               ("raw_copied_cold", raw_load_copied, files)):
            make_cold(method, paths)
            out, t = timed(fn)
            del out
            times[key].append(t)
        # A resume as it happens: one load in a new process (resume_child.py).
        for fn in (store_load(step), raw_load):
            fn()
        times["store_fresh_warm"].append(fresh("store", None))
        times["raw_copied_fresh_warm"].append(fresh("raw", None))
        times["store_fresh_cold"].append(fresh("store", [store]))
        times["raw_copied_fresh_cold"].append(fresh("raw", files))
        log(f"  resume rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.3f}" for k, v in times.items()))
    res["seconds"] = times
    res["median_s"] = {k: med(v) for k, v in times.items()}
    m = res["median_s"]
    # The targets: a resume in a new process against the raw files loaded,
    # with their tensors materialised, in a new process (resume_child.py says
    # why the process matters).
    res["ratio_warm"] = m["store_fresh_warm"] / m["raw_copied_fresh_warm"]
    res["ratio_cold"] = m["store_fresh_cold"] / m["raw_copied_fresh_cold"]
    # Informational: the same loads repeated in this one process.
    res["ratio_warm_in_process"] = m["store_warm"] / m["raw_copied_warm"]
    res["ratio_cold_in_process"] = m["store_cold"] / m["raw_copied_cold"]
    # Informational: against load_file's lazily mapped tensors (bytes not yet read).
    res["ratio_warm_lazy"] = m["store_warm"] / m["raw_warm"]
    res["ratio_cold_lazy"] = m["store_cold"] / m["raw_cold"]
    res["oldest_step"] = oldest
    return res


# --- (d) add speed -------------------------------------------------------------------------------

def zipnn_files_to_files(files: Sequence[Path], outdir: Path) -> float:
    """ZipNN on each file: read, compress, write, fsync (timed), as a per-file tool would run
    (hf_run.compress_file_like_a_user)."""
    import zstandard

    outdir.mkdir(parents=True, exist_ok=True)
    dtypes = {f: hf_run.zipnn_dtype(f) for f in files}  # untimed: what a user would pass on the command line
    t0 = time.perf_counter()
    zc = zstandard.ZstdCompressor(level=3)
    for f in files:
        hf_run.compress_file_like_a_user(f, outdir / (f.name + ".znn"), "zipnn", dtypes[f], zc)
    dt = time.perf_counter() - t0
    shutil.rmtree(outdir)
    os.sync()  # untimed: the next timed row starts with nothing left to flush
    return dt


def add_speed(run: hf_run.Run, before_last: Path, work: Path, reps: int) -> Dict[str, Any]:
    import tpde

    last, first = run.dirs[-1], run.dirs[0]
    times: Dict[str, List[float]] = {k: [] for k in ("store_delta", "store_delta_recode", "store_first",
                                                     "zipnn_last", "zipnn_first")}
    for rep in range(reps):
        st = work / "add-rep.tpde"
        shutil.copytree(before_last, st)
        os.sync()
        with tpde.Store(st) as s:
            # store_delta is until add returns (the target is judged on it);
            # store_delta_recode, the previous checkpoint's re-code after it.
            _, t = timed(lambda: s.add(last, step=run.steps[-1]))
            _, r = timed(s.wait)
        times["store_delta"].append(t)
        times["store_delta_recode"].append(r)
        # Every timed row starts with nothing left to flush: the removal's
        # dirty metadata is not the next row's to write.
        shutil.rmtree(st)
        os.sync()
        with tpde.Store(st) as s:
            _, t = timed(lambda: s.add(first, step=run.steps[0]))
        times["store_first"].append(t)
        shutil.rmtree(st)
        os.sync()
        times["zipnn_last"].append(zipnn_files_to_files([f for _, f in hf_run.tree_files(last)], work / "znn"))
        times["zipnn_first"].append(zipnn_files_to_files([f for _, f in hf_run.tree_files(first)], work / "znn"))
        log(f"  add rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in times.items()))
    m = {k: med(v) for k, v in times.items()}
    return {"seconds": times, "median_s": m, "raw_bytes": hf_run.dir_bytes(last),
            "ratio_delta": m["store_delta"] / m["zipnn_last"], "ratio_first": m["store_first"] / m["zipnn_first"]}


# --- (e) memory --------------------------------------------------------------------------------------

def synth_layout(total: int) -> List[Tuple[str, str, List[int]]]:
    """Four tensors of total/4 bytes each: three fp32, one bf16 (name, dtype, shape)."""
    each = total // 4
    cols = 16384
    out = []
    for i, dt in enumerate(("F32", "F32", "BF16", "F32")):
        w = 4 if dt == "F32" else 2
        rows = max(1, each // (cols * w))
        out.append((f"layers.{i}.weight", dt, [rows, cols]))
    return out


def write_synth(path: Path, layout: Sequence[Tuple[str, str, List[int]]], seed: int, perturb: bool) -> int:
    """A safetensors file written chunk by chunk: N(0, 0.02) weights; perturb adds N(0, 1e-4) to every
    fp32 element (bf16: rounded again, so many stay unchanged), as a training step between checkpoints does."""
    import numpy as np

    hdr: Dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for name, dt, shape in layout:
        n = (4 if dt == "F32" else 2) * shape[0] * shape[1]
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    hj = json.dumps(hdr, separators=(",", ":")).encode()
    hj += b" " * ((-len(hj)) % 8)
    chunk_rows = 1024
    with open(path, "wb") as f:
        f.write(len(hj).to_bytes(8, "little") + hj)
        for ti, (name, dt, shape) in enumerate(layout):
            for r0 in range(0, shape[0], chunk_rows):
                rows = min(chunk_rows, shape[0] - r0)
                rng = np.random.default_rng([seed, ti, r0])
                x = rng.standard_normal((rows, shape[1]), dtype=np.float32) * np.float32(0.02)
                if perturb:
                    x += np.random.default_rng([seed, ti, r0, 1]).standard_normal(x.shape, dtype=np.float32) * \
                        np.float32(1e-4)
                if dt == "BF16":
                    u = x.view(np.uint32)
                    x = ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(
                        np.uint16)
                f.write(x.tobytes())
    return path.stat().st_size


_CHILD = r"""
import json, resource, sys, time
import tpde
store, a, b, ra, rb = sys.argv[1:6]
out = {}
def hwm_kib():
    # VmHWM: this process's own peak RSS. getrusage's ru_maxrss is not: Linux
    # carries the peak from before exec over, so it starts at the RSS of the
    # benchmark process that forked it.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def mark(name):
    out[name + "_maxrss_kib"] = hwm_kib()
    print("PHASE " + name, flush=True)
with tpde.Store(store) as s:
    mark("open")
    t = time.perf_counter(); s.add(a, step=1); out["add_keyframe_s"] = time.perf_counter() - t; mark("add_keyframe")
    t = time.perf_counter(); s.add(b, step=2); out["add_delta_s"] = time.perf_counter() - t; mark("add_delta")
    t = time.perf_counter(); s.wait(); out["recode_delta_s"] = time.perf_counter() - t; mark("recode_delta")
    t = time.perf_counter(); s.restore(1, ra); out["restore_delta_s"] = time.perf_counter() - t; mark("restore_delta")
    t = time.perf_counter(); s.restore(2, rb); out["restore_keyframe_s"] = time.perf_counter() - t; mark("restore_keyframe")
print("RESULT " + json.dumps(out), flush=True)
"""


def _status_kib(pid: int) -> Dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def memory(work: Path, size_gb: float) -> Dict[str, Any]:
    total = int(size_gb * (1 << 30))
    free = shutil.disk_usage(work).free
    need = 6 * total  # two inputs, the store (at most both again), two restored copies
    warning = None
    if free < need:
        scaled = int(free / 6 * 0.9) // (64 * MiB) * (64 * MiB)
        warning = (f"WARNING: {free / (1 << 30):.1f} GiB free in {work}, {need / (1 << 30):.1f} GiB needed for a "
                   f"{total / (1 << 30):.1f} GiB checkpoint: scaled down to {scaled / (1 << 30):.2f} GiB")
        print(warning)
        total = scaled
    layout = synth_layout(total)
    a, b = work / "synth-a.safetensors", work / "synth-b.safetensors"
    t0 = time.perf_counter()
    size = write_synth(a, layout, 1, False)
    write_synth(b, layout, 1, True)
    gen_s = time.perf_counter() - t0
    largest = max((4 if dt == "F32" else 2) * s[0] * s[1] for _, dt, s in layout)
    bound = 2 * largest + 256 * MiB
    log(f"  memory: wrote 2 x {size / (1 << 30):.2f} GiB in {gen_s:.0f} s; largest tensor {largest / MiB:.0f} MiB")
    store, ra, rb = work / "mem.tpde", work / "mem-r1", work / "mem-r2"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(store), str(a), str(b), str(ra), str(rb)],
                            stdout=subprocess.PIPE, text=True, env=env)
    peaks: Dict[str, Dict[str, int]] = {}
    phase = ["start"]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            st = _status_kib(proc.pid)
            cur = peaks.setdefault(phase[0], {})
            for k, v in st.items():
                cur[k] = max(cur.get(k, 0), v)
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    result: Dict[str, Any] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("PHASE "):
            phase[0] = line.split()[1]
            log(f"  memory: {phase[0]} done")
        elif line.startswith("RESULT "):
            result = json.loads(line[7:])
    rc = proc.wait()
    stop.set()
    th.join()
    if rc != 0:
        raise BenchError(f"the memory subprocess exited {rc}")
    ok = (common.sha256_file(ra / a.name) == common.sha256_file(a) and
          common.sha256_file(rb / b.name) == common.sha256_file(b))
    store_disk = hf_run.dir_bytes(store)
    for p in (a, b):
        p.unlink()
    for p in (store, ra, rb):
        shutil.rmtree(p)
    if not ok:
        raise BenchError("the synthetic checkpoints were not restored byte-identical")
    # Phase names mark the end of each phase: the samples taken while phase X ran are under the previous name.
    order = ["start", "open", "add_keyframe", "add_delta", "recode_delta", "restore_delta"]
    names = ["(start)", "add keyframe", "add delta", "re-code after add delta", "restore delta", "restore keyframe"]
    sampled = {n: peaks.get(o, {}) for o, n in zip(order, names)}
    maxrss = max(v for k, v in result.items() if k.endswith("_maxrss_kib")) * 1024
    return {"checkpoint_bytes": size, "tensors": [{"name": n, "dtype": d, "shape": s} for n, d, s in layout],
            "largest_tensor_bytes": largest, "bound_bytes": bound, "peak_rss_bytes": maxrss,
            "peak_rss_by_phase_kib": {k: v for k, v in result.items() if k.endswith("_maxrss_kib")},
            "sampled_peaks_kib": sampled, "times_s": {k: v for k, v in result.items() if k.endswith("_s")},
            "generate_s": gen_s, "store_disk_bytes": store_disk, "restored_byte_identical": ok,
            "warning": warning}


# --- report ---------------------------------------------------------------------------------------------

def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main(argv: Optional[List[str]] = None) -> int:
    global _verbose
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the demo's run (4 checkpoints 10 steps apart)")
    ap.add_argument("--checkpoints", type=int, help=f"checkpoints in the runs (default {FULL['checkpoints']})")
    ap.add_argument("--steps-between", type=int, help=f"steps between them (default {FULL['steps_between']})")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each timing (median; default 3)")
    ap.add_argument("--json", metavar="PATH", help="write the results as JSON (e.g. bench/results/store.json)")
    ap.add_argument("--memory", action="store_true", help="also (e): the >= 4 GB memory test (slow)")
    ap.add_argument("--memory-gb", type=float, default=4.0, help="synthetic checkpoint size in GiB (default 4)")
    ap.add_argument("--cold", choices=("auto", "drop_caches", "fadvise"), default="auto",
                    help="how (c) empties the page cache (auto: drop_caches when writable)")
    ap.add_argument("--tmpdir", metavar="DIR", help="where the stores go (default: the system temp dir)")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: torch,resume,add")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    _verbose = args.verbose
    skip = {s for s in args.skip.split(",") if s}
    base = QUICK if args.quick else FULL
    n = args.checkpoints or base["checkpoints"]
    k = args.steps_between or base["steps_between"]
    if n < 2:
        raise BenchError("--checkpoints must be at least 2")

    t_start = time.perf_counter()
    rec: Dict[str, Any] = {"benchmark": "store", **common.run_info(), "command": common.command_line(),
                           "quick": args.quick, "machine": common.machine(), "versions": common.versions(),
                           "reps": args.reps, "thresholds": TARGETS}
    print(f"tpde store benchmark{' (--quick)' if args.quick else ''}: {rec['machine']['cpu']}, "
          f"{rec['machine']['cores']} cores, load average {rec['load_average_start']}")
    print("versions: " + ", ".join(f"{a} {b}" for a, b in rec["versions"].items()))
    runs = {}
    for dt in ("fp32", "bf16"):
        p = hf_run.make_params(n, k, dt)
        runs[dt] = hf_run.load_run(p, log=lambda s: print(s, flush=True))
        print(f"run {dt}: {runs[dt].root.name}: {p.describe()}")
    rec["runs"] = {dt: {"dir": str(r.root), "params": r.info["params"], "train_seconds": r.info["train_seconds"]}
                   for dt, r in runs.items()}
    fp32, bf16 = runs["fp32"], runs["bf16"]
    targets: List[Dict[str, Any]] = []

    def target(key: str, line: str, ok: bool, **values: Any) -> None:
        targets.append({"target": line, "pass": bool(ok), "key": key, "values": values})

    with tempfile.TemporaryDirectory(prefix="tpde-store-bench-", dir=args.tmpdir) as tmp:
        work = Path(tmp)
        rec["tmpdir_fs"] = common.fs_type(work)
        print(f"work dir: {work} ({rec['tmpdir_fs']})\n")

        # (a)
        log("(a) size")
        tools = ToolCache()
        before_last = work / "before-last.tpde"
        series = [
            size_series("full", fp32.steps, fp32.dirs, work, tools, keep_before_last=before_last),
            size_series("fp32-weights", fp32.steps, [d / "model.safetensors" for d in fp32.dirs], work, tools),
            size_series("bf16-weights", bf16.steps, [d / "model.safetensors" for d in bf16.dirs], work, tools),
        ]
        rec["size"] = series
        rows = []
        for s in series:
            rows.append([s["series"], str(len(s["checkpoints"])), f"{s['raw_bytes'] / MB:.1f}",
                         f"{s['store_disk_bytes'] / MB:.1f} ({s['ratio_store']:.2f}x)",
                         f"{s['zipnn_bytes'] / MB:.1f} ({s['ratio_zipnn']:.2f}x)",
                         f"{s['zstd_bytes'] / MB:.1f} ({s['ratio_zstd']:.2f}x)",
                         f"{s['zipnn_over_store']:.2f}", f"{s['zstd_over_store']:.2f}",
                         f"{sum(r['add_s'] for r in s['checkpoints']):.1f}",
                         f"{sum(r['zipnn_s'] for r in s['checkpoints']):.1f}"])
        print("(a) size: every checkpoint of the series; MB = 10^6 bytes, (ratio) = raw / that")
        print(common.render_table(["series", "ckpts", "raw MB", "store MB", "ZipNN MB", "zstd-3 MB", "ZipNN/store",
                                   "zstd/store", "add s", "ZipNN s"], rows))
        print("store: bytes on disk after the last add (fresh lossless store, Store.add per checkpoint, every "
              "checkpoint restored and sha256-compared); ZipNN / zstd-3: each file alone, summed (ZipNN byte "
              "mode at the file's float dtype, defaults otherwise; zstd level 3, all cores); add s: the adds' "
              "wall time (read, code, write, fsync); ZipNN s: its compress calls, in memory.")
        print("per checkpoint (full series): step, store growth MB / ZipNN MB: " + ", ".join(
            f"{r['step']}: {r['store_growth_bytes'] / MB:.1f}/{r['zipnn_bytes'] / MB:.1f}"
            for r in series[0]["checkpoints"]))
        for s, key in zip(series, ("fp32", "fp32", "bf16")):
            ok = s["zipnn_over_store"] >= TARGETS[key]
            target(f"size.{s['series']}", f"{s['series']}: ZipNN/store {s['zipnn_over_store']:.2f} (target >= "
                   f"{TARGETS[key]:g})", ok, zipnn_over_store=s["zipnn_over_store"], threshold=TARGETS[key])
        print()

        # (b)
        if "torch" not in skip:
            log("(b) torch files")
            tf = torch_files(fp32, work)
            rec["torch_files"] = tf
            d = tf["ratio_pt_over_safetensors"] - 1
            print(f"(b) torch files: the full training state of each of the {len(fp32.dirs)} checkpoints "
                  f"({tf['tensors']} tensors, flat dict) as .pt and .safetensors, each series in a fresh store")
            print(common.render_table(["format", "layout", "raw MB", "store MB", "ratio", "add s (median)"], [
                [f".{f}", tf[f]["layout"], f"{tf[f]['raw_bytes'] / MB:.1f}", f"{tf[f]['store_disk_bytes'] / MB:.1f}",
                 f"{tf[f]['ratio']:.4f}", f"{med(tf[f]['add_s']):.2f}"] for f in ("pt", "safetensors")]))
            target("torch_files", f"torch files: ratio .pt / ratio .safetensors = {tf['ratio_pt_over_safetensors']:.4f} "
                   f"({d:+.2%}; target within 1%)", abs(d) <= TARGETS["torch_vs_safetensors"],
                   ratio_pt_over_safetensors=tf["ratio_pt_over_safetensors"])
            print()

        # (c)
        if "resume" not in skip:
            log("(c) resume")
            rs = resume(Path(series[0]["store"]), fp32.dirs[-1], fp32.steps[-1], fp32.steps[0], args.reps,
                        args.cold)
            rec["resume"] = rs
            m = rs["median_s"]
            print(f"(c) resume: load checkpoint {fp32.steps[-1]}'s {', '.join(rs['files'])} "
                  f"({rs['raw_bytes'] / MB:.1f} MB) as torch objects; median of {args.reps}; cold cache by "
                  f"{rs['cold_method']}")
            print(common.render_table(["cache", "process", "Store.load s", "raw, materialised s", "store / raw",
                                       "raw, mapped s", "store / mapped"], [
                ["warm", "new", f"{m['store_fresh_warm']:.3f}", f"{m['raw_copied_fresh_warm']:.3f}",
                 f"{rs['ratio_warm']:.2f}", "", ""],
                ["cold", "new", f"{m['store_fresh_cold']:.3f}", f"{m['raw_copied_fresh_cold']:.3f}",
                 f"{rs['ratio_cold']:.2f}", "", ""],
                ["warm", "repeated", f"{m['store_warm']:.3f}", f"{m['raw_copied_warm']:.3f}",
                 f"{rs['ratio_warm_in_process']:.2f}", f"{m['raw_warm']:.3f}", f"{rs['ratio_warm_lazy']:.2f}"],
                ["cold", "repeated", f"{m['store_cold']:.3f}", f"{m['raw_copied_cold']:.3f}",
                 f"{rs['ratio_cold_in_process']:.2f}", f"{m['raw_cold']:.3f}", f"{rs['ratio_cold_lazy']:.2f}"],
            ]))
            print("raw, materialised: load_file + torch.load with model.safetensors' tensors copied out of "
                  "load_file's mmap (as load_state_dict reads them); raw, mapped: left as views of the map. "
                  "process new: each load alone in a new process, as a resume runs (bench/resume_child.py; "
                  "the targets); repeated: loads repeated in this process, whose later repetitions reuse the "
                  "heap the previous one freed.")
            print(f"Store.load of the oldest checkpoint ({rs['oldest_step']}, a delta chain) warm: "
                  f"{m['store_oldest_warm']:.3f} s. Both sides under the Trainer's numpy allowlist for "
                  f"rng_state.pth; Store.load(unpickle=True) without it: {rs['plain_load_unpickle']}")
            target("resume.warm", f"resume (warm): Store.load / raw materialised = {rs['ratio_warm']:.2f} "
                   f"(target <= {TARGETS['resume']:g})", rs["ratio_warm"] <= TARGETS["resume"],
                   ratio=rs["ratio_warm"], threshold=TARGETS["resume"])
            target("resume.cold", f"resume (cold): Store.load / raw materialised = {rs['ratio_cold']:.2f} "
                   f"(target <= {TARGETS['resume_cold']:g})", rs["ratio_cold"] <= TARGETS["resume_cold"],
                   ratio=rs["ratio_cold"], threshold=TARGETS["resume_cold"])
            print()

        # (d)
        if "add" not in skip:
            log("(d) add speed")
            ad = add_speed(fp32, before_last, work, args.reps)
            rec["add"] = ad
            m = ad["median_s"]
            raw = ad["raw_bytes"]
            print(f"(d) add speed: one Trainer folder ({raw / MB:.1f} MB); median of {args.reps}")
            print(common.render_table(["add", "Store.add s", "MB/s", "ZipNN s", "MB/s", "store / ZipNN"], [
                [f"newest ({fp32.steps[-1]}) onto {len(fp32.dirs) - 1} others", f"{m['store_delta']:.2f}",
                 f"{raw / MB / m['store_delta']:.0f}", f"{m['zipnn_last']:.2f}", f"{raw / MB / m['zipnn_last']:.0f}",
                 f"{ad['ratio_delta']:.2f}"],
                [f"first ({fp32.steps[0]}) into an empty store", f"{m['store_first']:.2f}",
                 f"{raw / MB / m['store_first']:.0f}", f"{m['zipnn_first']:.2f}",
                 f"{raw / MB / m['zipnn_first']:.0f}", f"{ad['ratio_first']:.2f}"],
            ]))
            print("ZipNN: each file read, compressed (byte mode, the file's float dtype), written and fsynced, "
                  "one after another; Store.add: open, add, commit (fsync), until add returns.")
            print(f"After add returned, the previous newest's re-code as reverse deltas ran in the background "
                  f"for a median {m['store_delta_recode']:.2f} s more (Store.wait; not part of the add).")
            target("add.delta", f"add speed (delta add): Store.add / ZipNN = {ad['ratio_delta']:.2f} (target <= 1.0)",
                   ad["ratio_delta"] <= TARGETS["add"], ratio=ad["ratio_delta"])
            target("add.first", f"add speed (first add): Store.add / ZipNN = {ad['ratio_first']:.2f} (target <= 1.0)",
                   ad["ratio_first"] <= TARGETS["add"], ratio=ad["ratio_first"])
            print()

        # (e)
        if args.memory:
            log("(e) memory")
            mem = memory(work, args.memory_gb)
            rec["memory"] = mem
            print(f"(e) memory: a synthetic {mem['checkpoint_bytes'] / (1 << 30):.2f} GiB safetensors checkpoint "
                  f"({len(mem['tensors'])} tensors, largest {mem['largest_tensor_bytes'] / MiB:.0f} MiB) added, a "
                  "perturbed copy added (delta), both restored, in one subprocess")
            rows = []
            for ph, v in mem["sampled_peaks_kib"].items():
                if ph == "(start)":
                    continue
                rows.append([ph, f"{v.get('VmRSS', 0) / 1024:.0f}", f"{v.get('RssAnon', 0) / 1024:.0f}",
                             f"{v.get('RssFile', 0) / 1024:.0f}",
                             f"{mem['times_s'].get(ph.replace(' ', '_') + '_s', float('nan')):.1f}"])
            print(common.render_table(["phase", "peak RSS MiB", "anon MiB", "file MiB", "s"], rows))
            ok = mem["peak_rss_bytes"] <= mem["bound_bytes"]
            print(f"peak RSS (VmHWM, whole subprocess): {mem['peak_rss_bytes'] / MiB:.0f} MiB; bound 2 x "
                  f"{mem['largest_tensor_bytes'] / MiB:.0f} MiB + 256 MiB = {mem['bound_bytes'] / MiB:.0f} MiB; "
                  f"store {mem['store_disk_bytes'] / MB:.0f} MB; restored byte-identical")
            target("memory", f"memory: peak RSS {mem['peak_rss_bytes'] / MiB:.0f} MiB (bound "
                   f"{mem['bound_bytes'] / MiB:.0f} MiB)", ok, peak_rss_bytes=mem["peak_rss_bytes"],
                   bound_bytes=mem["bound_bytes"])
            print()

    print("targets:")
    for t in targets:
        print(f"  {verdict(t['pass'])}  {t['target']}")
    met = sum(t["pass"] for t in targets)
    print(f"{met}/{len(targets)} targets met; every store restored byte-identical; total "
          f"{time.perf_counter() - t_start:.0f} s")
    rec["targets"] = targets
    rec["targets_met"] = met
    rec["load_average_end"] = common.load_average()
    rec["seconds"] = time.perf_counter() - t_start
    if args.json:
        common.write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"store bench: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
