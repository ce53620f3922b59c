"""tpde.integrations.hf with the real Hugging Face Trainer: tiny CPU runs of a
2-layer BERT built from the real all-MiniLM-L6-v2 config (vocabulary cut to
1024 tokens to keep each checkpoint near 50 MB)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from transformers import (BertConfig, BertForSequenceClassification, Trainer, TrainerCallback,  # noqa: E402
                          TrainerControl, TrainerState, TrainingArguments)

import tpde  # noqa: E402
from tpde.integrations.hf import TPDETrainerCallback, materialize  # noqa: E402

torch.set_num_threads(1)  # every run at one thread: runs at different counts differ in their last bits
VOCAB = 1024


class TokenDataset(torch.utils.data.Dataset):
    """Fixed-seed token ids and labels, batch-ready dicts."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.ids = torch.randint(0, VOCAB, (n, 32), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def make_model(model_dir: Path) -> Any:
    cfg = BertConfig.from_pretrained(model_dir, num_hidden_layers=2, num_labels=2, vocab_size=VOCAB)
    torch.manual_seed(0)
    return BertForSequenceClassification(cfg)


def training_args(out: Path, **kw: Any) -> TrainingArguments:
    base = dict(output_dir=str(out), use_cpu=True, report_to=[], seed=0, dataloader_num_workers=0, save_steps=10,
                max_steps=30, logging_steps=1, disable_tqdm=True, per_device_train_batch_size=8)
    return TrainingArguments(**{**base, **kw})


def make_trainer(model_dir: Path, out: Path, callbacks: List[Any] = (), model: Any = None, **kw: Any) -> Trainer:
    return Trainer(model=model if model is not None else make_model(model_dir), args=training_args(out, **kw),
                   train_dataset=TokenDataset(64, 1), eval_dataset=TokenDataset(16, 2), callbacks=list(callbacks))


def train(model_dir: Path, out: Path, callbacks: List[Any] = (), resume: Any = None, model: Any = None,
          **kw: Any) -> Trainer:
    trainer = make_trainer(model_dir, out, callbacks, model, **kw)
    trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    return trainer


def losses(trainer: Trainer) -> Dict[int, float]:
    return {e["step"]: e["loss"] for e in trainer.state.log_history if "loss" in e}


def digest(folder: Path) -> Dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def same_bits(a: Any, b: Any) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(torch.uint8).flatten(),
                                                                      b.contiguous().view(torch.uint8).flatten())


class Spy(TrainerCallback):
    """Placed after TPDETrainerCallback: at each on_save, what output_dir
    holds and the digest of the folder just saved."""

    def __init__(self) -> None:
        self.listings: Dict[int, List[str]] = {}
        self.not_checkpoints: Dict[int, List[str]] = {}  # named checkpoint-* but no complete checkpoint folder
        self.digests: Dict[int, Dict[str, str]] = {}
        self.logged: List[Dict[str, float]] = []  # what on_log hands to callbacks listed after TPDETrainerCallback

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
        out = Path(args.output_dir)
        self.listings[state.global_step] = names = sorted(os.listdir(out))
        self.not_checkpoints[state.global_step] = [
            n for n in names if n.startswith("checkpoint-")
            and not (re.fullmatch(r"checkpoint-\d+", n) and (out / n / "trainer_state.json").is_file())]
        self.digests[state.global_step] = digest(out / f"checkpoint-{state.global_step}")

    def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
               logs: Dict[str, float], **kw: Any) -> None:
        self.logged.append(dict(logs))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hf")


@pytest.fixture(scope="module")
def plain_run(minilm_model_dir: Path, work: Path) -> Trainer:
    """30 steps without tpde: the uninterrupted reference, with its checkpoint-20."""
    return train(minilm_model_dir, work / "plain")


@pytest.fixture(scope="module")
def stored_run(minilm_model_dir: Path, work: Path) -> Dict[str, Any]:
    """The same 30 steps with the callback (every folder kept, profiling on)."""
    cb = TPDETrainerCallback(compression_output_dir=work / "store", keep_last_uncompressed=3, enable_profiling=True)
    spy = Spy()
    trainer = train(minilm_model_dir, work / "stored", callbacks=[cb, spy])
    return {"trainer": trainer, "cb": cb, "spy": spy, "store": work / "store", "out": work / "stored"}


def test_resume_from_the_store_reproduces_the_uninterrupted_run(minilm_model_dir: Path, work: Path, plain_run: Trainer,
                                                                 stored_run: Dict[str, Any]) -> None:
    reference = losses(plain_run)
    assert sorted(reference) == list(range(1, 31))
    assert losses(stored_run["trainer"]) == reference  # the callback leaves training untouched
    with tpde.Store(stored_run["store"]) as store:
        assert store.steps() == [10, 20, 30]
        for step in store.steps():
            dest = work / f"restored-{step}"
            store.restore(step, dest)
            assert digest(dest) == digest(stored_run["out"] / f"checkpoint-{step}")
    path = materialize(stored_run["store"], 20, output_dir=work / "resumed-from-store")
    assert path == work / "resumed-from-store" / "checkpoint-20"
    assert digest(path) == digest(stored_run["out"] / "checkpoint-20")
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint-20"]  # no temporary folder left
    from_store = train(minilm_model_dir, path.parent, resume=path)
    from_folder = train(minilm_model_dir, work / "resumed-from-folder", resume=work / "plain" / "checkpoint-20")
    tail = {s: v for s, v in reference.items() if s > 20}
    assert {s: v for s, v in losses(from_store).items() if s > 20} == tail
    assert {s: v for s, v in losses(from_folder).items() if s > 20} == tail
    final = plain_run.model.state_dict()
    for name, t in from_store.model.state_dict().items():
        assert same_bits(t, final[name]), name


def test_materialize_defaults_to_the_newest_and_refuses_to_overwrite(work: Path, stored_run: Dict[str, Any]) -> None:
    path = materialize(tpde.Store(stored_run["store"]), output_dir=work / "newest")
    assert path.name == "checkpoint-30" and digest(path) == digest(stored_run["out"] / "checkpoint-30")
    with pytest.raises(tpde.InvalidArgumentError, match="exists already"):
        materialize(stored_run["store"], 30, output_dir=work / "newest")
    with pytest.raises(tpde.InvalidArgumentError, match="holds no checkpoint 25"):
        materialize(stored_run["store"], 25, output_dir=work / "newest")


def test_profiling_figures_reach_the_trainer_log(stored_run: Dict[str, Any]) -> None:
    cb, trainer = stored_run["cb"], stored_run["trainer"]
    assert [p["step"] for p in cb.profile] == [10, 20, 30]
    logged = [e for e in trainer.state.log_history if "tpde/step" in e]
    assert [e["tpde/step"] for e in logged] == [10, 20, 30]
    with tpde.Store(stored_run["store"]) as store:
        for fig, entry in zip(cb.profile, logged):
            assert {k: entry[f"tpde/{k}"] for k in fig} == fig
            assert fig["original_bytes"] == store.info(fig["step"]).raw_bytes
            assert fig["ratio"] == fig["original_bytes"] / fig["stored_bytes"] and fig["seconds"] > 0
            assert entry["step"] >= fig["step"]  # merged into a log call after the add...
            assert "loss" in entry or "train_runtime" in entry  # ...of the Trainer's own
    # A callback listed after this one (a reporting integration, say) gets them in its logs.
    assert [{k: v for k, v in e.items() if k.startswith("tpde/")} for e in stored_run["spy"].logged
            if "tpde/step" in e] == [{k: v for k, v in e.items() if k.startswith("tpde/")} for e in logged]
    # Each figure is the store's growth, counted by the store as it links and
    # removes objects (no walk of the store at each save): together they are
    # the size of its objects; the rest of the store is its manifests and
    # marker, a few kilobytes.
    total = sum(p["stored_bytes"] for p in cb.profile)
    assert total == disk_bytes(stored_run["store"] / "objects")
    assert 0 < disk_bytes(stored_run["store"]) - total < 64 << 10


def test_rotation_with_save_total_limit_1(minilm_model_dir: Path, work: Path) -> None:
    out, spy = work / "rotated", Spy()
    cb = TPDETrainerCallback(compression_output_dir=work / "rotated-store", keep_last_uncompressed=1)
    # A save every 2 steps, sooner than an add takes: each add still runs
    # when the next save begins, and its rotation would delete that folder.
    train(minilm_model_dir, out, callbacks=[cb, spy], save_total_limit=1, save_steps=2, max_steps=10)
    for step, names in spy.listings.items():
        assert f"checkpoint-{step}" in names, (step, names)  # rotation never took the newest
        assert spy.not_checkpoints[step] == [], names
        assert not [n for n in names if n.startswith(".tpde")], names
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-10"]
    with tpde.Store(work / "rotated-store") as store:
        assert store.steps() == [2, 4, 6, 8, 10]
        for step, want in spy.digests.items():  # rotation deleted folders 2-8, each once stored
            store.restore(step, work / f"rotated-restored-{step}")
            assert digest(work / f"rotated-restored-{step}") == want


def test_load_best_model_at_end_with_save_only_model(minilm_model_dir: Path, work: Path) -> None:
    cb = TPDETrainerCallback(compression_output_dir=work / "best-store", keep_last_uncompressed=0)
    trainer = train(minilm_model_dir, work / "best", callbacks=[cb], eval_strategy="steps", eval_steps=10,
                    load_best_model_at_end=True, metric_for_best_model="eval_loss", save_only_model=True,
                    learning_rate=3e-4, save_total_limit=1)  # the Trainer deletes all but the best, right at the end
    best_step = int(trainer.state.best_model_checkpoint.rsplit("-", 1)[1])
    assert best_step != 30  # else loading the best would prove nothing
    assert not list((work / "best").glob("checkpoint-*"))  # keep_last_uncompressed=0: all stored, then deleted
    with tpde.Store(work / "best-store") as store:
        assert store.steps() == [10, 20, 30]
        assert "optimizer.pt" not in {f.path for f in store.info(best_step).files}
        best = store.load(best_step, file="model.safetensors")
        last = store.load(30, file="model.safetensors")
    loaded = trainer.model.state_dict()
    assert all(same_bits(loaded[k], t) for k, t in best.items())  # the best folder was there to load
    assert not all(same_bits(loaded[k], t) for k, t in last.items())


def test_sharded_safetensors_checkpoint(minilm_model_dir: Path, work: Path, stored_run: Dict[str, Any]) -> None:
    # The Trainer has no shard-size option (save_pretrained's default is
    # 50GB): shard a Trainer checkpoint's weights with save_pretrained and
    # hand that folder to the callback's on_save.
    out = work / "sharded"
    folder = out / "checkpoint-40"
    shutil.copytree(stored_run["out"] / "checkpoint-30", folder)
    (folder / "model.safetensors").unlink()
    model = stored_run["trainer"].model
    model.save_pretrained(folder, max_shard_size="5MB")
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 1 and (folder / "model.safetensors.index.json").exists()
    want = digest(folder)
    args, state, control = training_args(out), TrainerState(global_step=40), TrainerControl()
    cb = TPDETrainerCallback(compression_output_dir=work / "sharded-store", keep_last_uncompressed=0)
    cb.on_train_begin(args, state, control)
    cb.on_save(args, state, control)
    cb.on_train_end(args, state, control)
    assert not folder.exists()
    path = materialize(work / "sharded-store", output_dir=out)
    assert digest(path) == want
    again = BertForSequenceClassification.from_pretrained(path)
    assert all(same_bits(t, model.state_dict()[k]) for k, t in again.state_dict().items())


def test_peft_lora_checkpoints_hold_only_the_adapter(minilm_model_dir: Path, work: Path) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(make_model(minilm_model_dir),
                                peft.LoraConfig(r=4, target_modules=["query", "value"], task_type="SEQ_CLS"))
    base_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    out, spy = work / "lora", Spy()
    cb = TPDETrainerCallback(compression_output_dir=work / "lora-store", keep_last_uncompressed=3)
    train(minilm_model_dir, out, callbacks=[cb, spy], model=model)
    with tpde.Store(work / "lora-store") as store:
        assert store.steps() == [10, 20, 30]
        for step in store.steps():
            files = {f.path for f in store.info(step).files}
            assert {"adapter_model.safetensors", "adapter_config.json"} <= files and "model.safetensors" not in files
            store.restore(step, work / f"lora-restored-{step}")
            assert digest(work / f"lora-restored-{step}") == spy.digests[step] == digest(out / f"checkpoint-{step}")
    # The frozen base weights are in no checkpoint: each one grows the store
    # by adapter-sized amounts, a small fraction of the base.
    adapter = (out / "checkpoint-10" / "adapter_model.safetensors").stat().st_size
    assert adapter * 20 < base_bytes
    assert all(p["stored_bytes"] < 4 * adapter for p in cb.profile), (cb.profile, adapter)
    assert disk_bytes(work / "lora-store") < base_bytes / 4


def test_dataloader_workers_fork_after_libtpde_is_loaded(minilm_model_dir: Path, work: Path,
                                                          py_env: Dict[str, str], run_py: Any) -> None:
    script = work / "fork_run.py"
    script.write_text(textwrap.dedent(f"""
        import faulthandler, sys
        faulthandler.dump_traceback_later(240, exit=True)  # a hang shows where it stands
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import torch, tpde
        tpde.compress_tensor(torch.arange(1000, dtype=torch.float32))  # the Go runtime is up before the forks
        from test_integration_hf import train
        from tpde.integrations.hf import TPDETrainerCallback
        from pathlib import Path
        cb = TPDETrainerCallback(compression_output_dir={str(work / "fork-store")!r})
        train(Path({str(minilm_model_dir)!r}), Path({str(work / "fork")!r}), callbacks=[cb],
              dataloader_num_workers=2, max_steps=10, save_steps=5)
        print("steps", tpde.Store({str(work / "fork-store")!r}).steps())
    """))
    try:
        r = run_py(str(script), env={**py_env, "HF_HUB_OFFLINE": "1"}, timeout=300)
    except subprocess.TimeoutExpired as e:  # a hang fails the test, with what the run had printed
        pytest.fail(f"the run hung; its stderr ends: {str(e.stderr)[-3000:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "steps [5, 10]" in r.stdout


@pytest.mark.parametrize("max_steps", [10, 5])  # a save at step 10 follows the failed add, or the end of training
def test_a_failed_background_add_is_raised(minilm_model_dir: Path, work: Path, max_steps: int) -> None:
    store = work / f"locked-store-{max_steps}"
    (work / "one.txt").write_text("x")
    holder = tpde.Store(store)
    holder.add(work / "one.txt", step=0)  # holds the writer lock until closed
    cb = TPDETrainerCallback(compression_output_dir=store, keep_last_uncompressed=0)
    trainer = make_trainer(minilm_model_dir, work / f"locked-{max_steps}", [cb], max_steps=max_steps, save_steps=5)
    try:
        with pytest.raises(tpde.TPDEError, match=r"checkpoint-5 \(step 5\)") as e:
            trainer.train()
    finally:
        holder.close()
    assert isinstance(e.value.__cause__, tpde.StoreLockedError)
    assert trainer.state.global_step == max_steps  # raised before the next save, or at the end
    assert (work / f"locked-{max_steps}" / "checkpoint-5").is_dir()  # not stored, so not deleted
    assert tpde.Store(store).steps() == [0]


def test_refused_store_paths(work: Path, stored_run: Dict[str, Any]) -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="named like a Trainer checkpoint"):
        TPDETrainerCallback(compression_output_dir=work / "checkpoint-store")
    args, state, control = training_args(work / "inside"), TrainerState(), TrainerControl()
    with pytest.raises(tpde.InvalidArgumentError, match="inside a Trainer checkpoint folder"):
        TPDETrainerCallback(compression_output_dir=work / "inside" / "checkpoint-10" / "s").on_train_begin(
            args, state, control)
    with pytest.raises(tpde.InvalidArgumentError, match="steps up to 30"):  # a store ahead of this run
        TPDETrainerCallback(compression_output_dir=stored_run["store"]).on_train_begin(
            args, TrainerState(global_step=20), control)
    with pytest.raises(tpde.InvalidArgumentError, match="keep_last_uncompressed"):
        TPDETrainerCallback(keep_last_uncompressed=-1)
    with pytest.raises(tpde.InvalidArgumentError, match="compression_method"):
        TPDETrainerCallback(compression_method="gzip")


def test_hyperparameter_search_trials_get_a_store_each(work: Path) -> None:
    # No search backend (optuna, ray) is installed: the trial's state as the Trainer sets it.
    out, control = work / "hp", TrainerControl()
    for trial in ("trial-a", "trial-b"):
        (out / trial / "checkpoint-10").mkdir(parents=True)
        (out / trial / "checkpoint-10" / "trainer_state.json").write_text(f'{{"trial": "{trial}"}}')
        state = TrainerState(global_step=10, is_hyper_param_search=True, trial_name=trial)
        cb = TPDETrainerCallback(compression_output_dir=work / "hp-stores")
        for event in (cb.on_train_begin, cb.on_save, cb.on_train_end):
            event(training_args(out), state, control)
        with tpde.Store(work / "hp-stores" / trial) as store:
            store.restore(10, work / f"hp-restored-{trial}")
        assert (work / f"hp-restored-{trial}" / "trainer_state.json").read_text() == f'{{"trial": "{trial}"}}'
    with pytest.raises(tpde.InvalidArgumentError, match="hp_name"):
        TPDETrainerCallback().on_train_begin(training_args(out), TrainerState(is_hyper_param_search=True), control)


def test_ddp_two_ranks_only_the_main_process_writes_after_every_rank_saved(minilm_model_dir: Path, work: Path,
                                                                           py_env: Dict[str, str]) -> None:
    """torchrun with 2 gloo ranks: the Trainer writes rng_state_0.pth and
    rng_state_1.pth, one per rank, and gives no barrier before on_save. The
    store must hold both in every checkpoint (the callback's barrier waited
    for rank 1), restore each folder byte-identical, and only rank 0 may
    have written."""
    script = work / "ddp_run.py"
    out, store = work / "ddp", work / "ddp-store"
    script.write_text(textwrap.dedent(f"""
        import faulthandler, json, os, sys
        faulthandler.dump_traceback_later(240, exit=True)
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        import time
        from test_integration_hf import TokenDataset, make_model, training_args
        from transformers import Trainer
        import tpde
        from tpde.integrations.hf import TPDETrainerCallback

        # Rank 1 writes its rng_state_1.pth 3 s late: rank 0 reaches on_save
        # first, so only a barrier there lets the store see that file.
        class LateRankOneTrainer(Trainer):
            def _save_rng_state(self, output_dir):
                if self.args.process_index == 1:
                    time.sleep(3)
                super()._save_rng_state(output_dir)

        cb = TPDETrainerCallback(compression_output_dir={str(store)!r}, keep_last_uncompressed=10)
        args = training_args(Path({str(out)!r}), max_steps=10, save_steps=5, ddp_backend="gloo")
        LateRankOneTrainer(model=make_model(Path({str(minilm_model_dir)!r})), args=args,
                           train_dataset=TokenDataset(64, 1), callbacks=[cb]).train()
        rank = int(os.environ["RANK"])
        # A file per rank, not a line on the stdout both ranks share.
        Path({str(work)!r}, f"rank-{{rank}}.json").write_text(json.dumps({{"rank": rank, "stored": len(cb.profile)}}))
        # The Trainer leaves the process group to the script. Exiting with it
        # alive lets gloo's worker threads be torn down during interpreter
        # finalization, which now and then aborts a rank (SIGABRT, "terminate
        # called without an active exception"; pytorch#190489).
        import torch.distributed as dist
        dist.barrier()
        dist.destroy_process_group()
    """))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc_per_node=2", str(script)]
    try:
        r = subprocess.run(cmd, env={**py_env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}, capture_output=True,
                           text=True, timeout=300)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the 2-rank run hung; its stderr ends: {str(e.stderr)[-3000:]}")
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = {k: json.loads((work / f"rank-{k}.json").read_text()) for k in (0, 1)
             if (work / f"rank-{k}.json").exists()}
    assert sorted(ranks) == [0, 1], (r.stdout[-2000:], r.stderr[-3000:])
    assert ranks[0]["stored"] == 2 and ranks[1]["stored"] == 0
    with tpde.Store(store) as st:
        assert st.steps() == [5, 10]
        for step in (5, 10):
            files = {f.path for f in st.info(step).files}
            assert {"rng_state_0.pth", "rng_state_1.pth"} <= files, sorted(files)
            st.restore(step, work / f"ddp-restored-{step}")
            assert digest(work / f"ddp-restored-{step}") == digest(out / f"checkpoint-{step}")


def test_the_callback_stores_the_run_in_a_bucket(minilm_model_dir: Path, work: Path, s3_server: Any, s3_bucket: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """compression_output_dir="s3://...": the Trainer writes its folders on
    the local disk, and every checkpoint lands in the bucket (read back
    through a fresh cache, so from the bucket alone)."""
    for k, v in s3_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("TPDE_S3_CACHE", str(work / "s3-cache-train"))
    url = f"s3://{s3_bucket}/runs/minilm"
    out, spy = work / "s3-run", Spy()
    cb = TPDETrainerCallback(compression_output_dir=url, keep_last_uncompressed=1)
    train(minilm_model_dir, out, callbacks=[cb, spy], save_steps=10, max_steps=20)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-20"]
    monkeypatch.setenv("TPDE_S3_CACHE", str(work / "s3-cache-check"))
    with tpde.Store(url) as store:
        assert store.steps() == [10, 20]
        for step, want in spy.digests.items():
            store.restore(step, work / f"s3-restored-{step}")
            assert digest(work / f"s3-restored-{step}") == want
