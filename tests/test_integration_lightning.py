"""tpde.integrations.lightning on real, tiny CPU training runs.

Bit-exactness is checked on losses (==) and on tensor bits; the runs are
deterministic at one thread with dropout off (a Lightning checkpoint holds
no RNG state, so dropout masks after a resume differ with any plugin).
Stores in a bucket are tested against a real S3 server on loopback
(VersityGW, tests/s3server.py), each read back through an empty cache.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import threading
from pathlib import Path
from typing import Any, Dict, List

import pytest

torch = pytest.importorskip("torch")
pl = pytest.importorskip("lightning.pytorch")
transformers = pytest.importorskip("transformers")

from lightning.fabric.plugins.io import TorchCheckpointIO  # noqa: E402
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.plugins.io import AsyncCheckpointIO  # noqa: E402

import tpde  # noqa: E402
from tpde.integrations.lightning import TPDECallback, TPDECheckpointIO, load_from_store, materialize  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def bits(t: Any) -> bytes:
    return t.detach().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes()


def assert_bit_equal(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and bits(a[k]) == bits(b[k]), k


class Bert(pl.LightningModule):
    """BertForSequenceClassification from the real MiniLM config, 2 layers."""

    def __init__(self, config_dir: str) -> None:
        super().__init__()
        self.save_hyperparameters()
        cfg = transformers.BertConfig.from_pretrained(
            config_dir, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=64, num_labels=2,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        torch.manual_seed(0)
        self.model = transformers.BertForSequenceClassification(cfg)
        self.losses: List[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        ids, labels = batch
        loss = self.model(input_ids=ids, labels=labels).loss
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


class MLP(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(32, 256), torch.nn.Tanh(), torch.nn.Linear(256, 1))
        self.losses: List[float] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        x, y = batch
        loss = ((self.net(x) - y) ** 2).mean()
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=1e-2)


def bert_data() -> Any:
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randint(0, 1000, (40, 16), generator=g),
                                        torch.randint(0, 2, (40,), generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=4)  # 10 steps an epoch


def mlp_data() -> Any:
    g = torch.Generator().manual_seed(1)
    ds = torch.utils.data.TensorDataset(torch.randn(40, 32, generator=g), torch.randn(40, 1, generator=g))
    return torch.utils.data.DataLoader(ds, batch_size=4)


def fit(model: Any, root: Path, ckpt_path: Any = None, plugins: Any = None, callbacks: Any = (),
        data: Any = bert_data, epochs: int = 3) -> Any:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, deterministic=True, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
                         plugins=plugins, callbacks=list(callbacks), enable_checkpointing=bool(callbacks))
    trainer.fit(model, data(), ckpt_path=ckpt_path)
    return model


def every_10(dirpath: Path, **kw: Any) -> ModelCheckpoint:
    return ModelCheckpoint(dirpath=dirpath, every_n_train_steps=10, save_top_k=-1, **kw)


@pytest.fixture(scope="module")
def bert_runs(tmp_path_factory: pytest.TempPathFactory, minilm_model_dir: Path) -> Dict[str, Any]:
    """30 steps with the default plugin and with TPDECheckpointIO, a
    checkpoint every 10 steps."""
    tmp = tmp_path_factory.mktemp("bert")
    plain = fit(Bert(str(minilm_model_dir)), tmp, callbacks=[every_10(tmp / "plain")])
    tpde_run = fit(Bert(str(minilm_model_dir)), tmp, plugins=[TPDECheckpointIO(tmp / "store")],
                   callbacks=[every_10(tmp / "ptr")])
    return {"tmp": tmp, "config": str(minilm_model_dir), "plain": plain, "tpde": tpde_run}


def test_checkpoint_io_resume_is_bit_exact(bert_runs: Dict[str, Any]) -> None:
    tmp, cfg = bert_runs["tmp"], bert_runs["config"]
    uninterrupted = bert_runs["plain"].losses
    assert len(uninterrupted) == 30 and bert_runs["tpde"].losses == uninterrupted
    names = sorted(os.listdir(tmp / "ptr"))
    assert names == sorted(os.listdir(tmp / "plain")) == [f"epoch={e}-step={s}.ckpt" for e, s in
                                                         ((0, 10), (1, 20), (2, 30))]
    pointer = json.loads((tmp / "ptr" / "epoch=1-step=20.ckpt").read_text())
    assert pointer["format"] == "tpde-lightning-checkpoint" and (tmp / "ptr" / names[1]).stat().st_size < 1000
    assert len(tpde.Store(tmp / "store").steps()) == 3

    from_store = fit(Bert(cfg), tmp, ckpt_path=tmp / "ptr" / "epoch=1-step=20.ckpt",
                     plugins=[TPDECheckpointIO(tmp / "store")], callbacks=[every_10(tmp / "ptr2")])
    from_plain = fit(Bert(cfg), tmp, ckpt_path=tmp / "plain" / "epoch=1-step=20.ckpt")
    assert from_store.losses == from_plain.losses == uninterrupted[20:]
    # What the store gives back is what was saved: the same bits as the
    # default plugin's file of the same (deterministic) step.
    got = TPDECheckpointIO(tmp / "store").load_checkpoint(tmp / "ptr" / "epoch=2-step=30.ckpt")
    want = torch.load(tmp / "plain" / "epoch=2-step=30.ckpt", weights_only=True)
    assert_bit_equal(got["state_dict"], want["state_dict"])
    for a, b in zip(got["optimizer_states"][0]["state"].values(), want["optimizer_states"][0]["state"].values()):
        assert_bit_equal(a, b)


def test_callback_resume_is_bit_exact(bert_runs: Dict[str, Any], tmp_path: Path) -> None:
    cfg = bert_runs["config"]
    run = fit(Bert(cfg), tmp_path, callbacks=[TPDECallback(save_every_n_epochs=1, output_dir=tmp_path / "cb")])
    assert run.losses == bert_runs["plain"].losses
    # A Checkpoint callback: the Trainer adds no default ModelCheckpoint beside it.
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "lightning_logs").exists()
    store = tpde.Store(tmp_path / "cb")
    tags = {s: store.info(s).tags for s in store.steps()}
    assert list(tags.values()) == [(f"epoch={e}", f"global_step={10 * (e + 1)}") for e in range(3)]
    step20 = next(s for s, t in tags.items() if "global_step=20" in t)
    ckpt = materialize(tmp_path / "cb", step=step20, path=tmp_path / "resume.ckpt")
    resumed = fit(Bert(cfg), tmp_path, ckpt_path=ckpt)
    assert resumed.losses == bert_runs["plain"].losses[20:]
    # load_from_checkpoint through the loader: the trained weights, bit for bit.
    assert_bit_equal(load_from_store(Bert, tmp_path / "cb").state_dict(), run.state_dict())


def test_load_from_store_gives_the_saved_weights(bert_runs: Dict[str, Any]) -> None:
    tmp = bert_runs["tmp"]
    loaded = load_from_store(Bert, tmp / "ptr" / "epoch=2-step=30.ckpt", map_location="cpu")
    assert isinstance(loaded, Bert)
    assert_bit_equal(loaded.state_dict(), bert_runs["tpde"].state_dict())
    # LightningModule.load_from_checkpoint itself cannot read a pointer.
    with pytest.raises(pickle.UnpicklingError):
        Bert.load_from_checkpoint(tmp / "ptr" / "epoch=2-step=30.ckpt")


def test_plain_checkpoint_loads_and_removes_as_default(bert_runs: Dict[str, Any], tmp_path: Path) -> None:
    src = bert_runs["tmp"] / "plain" / "epoch=0-step=10.ckpt"
    io = TPDECheckpointIO(tmp_path / "store")
    got, want = io.load_checkpoint(src), TorchCheckpointIO().load_checkpoint(src)
    assert got.keys() == want.keys() and got["global_step"] == want["global_step"] == 10
    assert_bit_equal(got["state_dict"], want["state_dict"])
    with pytest.raises(FileNotFoundError):
        io.load_checkpoint(tmp_path / "missing.ckpt")
    copy_ = tmp_path / "copy.ckpt"
    copy_.write_bytes(src.read_bytes())
    io.remove_checkpoint(copy_)
    assert not copy_.exists() and not (tmp_path / "store").exists()


def pointers(d: Path) -> Dict[str, int]:
    return {n: json.loads((d / n).read_text())["step"] for n in sorted(os.listdir(d))}


@pytest.mark.parametrize("wrap", [False, True], ids=["sync", "async"])
def test_top_k_and_last_leave_what_the_default_plugin_leaves(tmp_path: Path, wrap: bool) -> None:
    def ckpt(d: Path) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=d, every_n_train_steps=4, save_top_k=1, save_last=True)

    fit(MLP(), tmp_path, data=mlp_data, callbacks=[ckpt(tmp_path / "plain")])
    io = TPDECheckpointIO(tmp_path / "store")
    fit(MLP(), tmp_path, data=mlp_data, callbacks=[ckpt(tmp_path / "ptr")],
        plugins=[AsyncCheckpointIO(io) if wrap else io])
    assert sorted(os.listdir(tmp_path / "ptr")) == sorted(os.listdir(tmp_path / "plain")) == [
        "epoch=2-step=28.ckpt", "last.ckpt"]
    store = tpde.Store(tmp_path / "store")
    assert sorted(store.steps()) == sorted(pointers(tmp_path / "ptr").values())  # no step nothing points to
    for name in os.listdir(tmp_path / "plain"):
        assert_bit_equal(io.load_checkpoint(tmp_path / "ptr" / name)["state_dict"],
                         torch.load(tmp_path / "plain" / name, weights_only=True)["state_dict"])
    # epoch=..ckpt and last.ckpt hold the same tensors: stored once.
    rows = store.stats()["checkpoints"]
    assert rows[-1]["new_bytes"] < rows[-1]["raw_bytes"] // 10
    if not wrap:  # ckpt_path="last" finds last.ckpt (the newest last*.ckpt) and loads it through the store
        again = fit(MLP(), tmp_path, data=mlp_data, ckpt_path="last", callbacks=[ckpt(tmp_path / "ptr")],
                    plugins=[TPDECheckpointIO(tmp_path / "store")])
        # last.ckpt is step 28, mid-epoch, where even the default plugin's resume departs from the
        # uninterrupted run (a plain DataLoader has no position to restore): compare with that resume.
        default = fit(MLP(), tmp_path, data=mlp_data, ckpt_path="last", callbacks=[ckpt(tmp_path / "plain")])
        assert len(again.losses) == 2 and again.losses == default.losses
        assert_bit_equal(again.state_dict(), default.state_dict())
    assert sorted(os.listdir(tmp_path)) == ["plain", "ptr", "store"]  # no scratch left behind


class Gate:
    """Pickling it (inside torch.save, inside the plugin's save) blocks
    until release is set: a save held half-way, deterministically."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()

    def __reduce__(self) -> Any:
        self.entered.set()
        assert self.release.wait(60)
        return (int, (0,))


def test_async_remove_before_its_save_has_finished(tmp_path: Path) -> None:
    io = AsyncCheckpointIO(TPDECheckpointIO(tmp_path / "store"))
    weights = MLP().state_dict()
    a, b, c = (tmp_path / "ckpt" / f"{n}.ckpt" for n in "abc")
    gate = Gate()
    io.save_checkpoint({"state_dict": weights, "gate": gate}, a)
    assert gate.entered.wait(60)  # a's save is under way on the worker thread
    io.remove_checkpoint(a)  # while a is being saved
    io.save_checkpoint({"state_dict": weights}, b)  # queued behind a
    io.remove_checkpoint(b)  # before b's save has begun
    gate.release.set()
    io.save_checkpoint({"state_dict": weights}, c)
    io.teardown()  # waits for the worker
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["c.ckpt"]  # no orphan pointer
    store = tpde.Store(tmp_path / "store")
    assert store.steps() == [pointers(tmp_path / "ckpt")["c.ckpt"]]  # no orphan step
    assert_bit_equal(io.load_checkpoint(c)["state_dict"], weights)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "store"]


def test_damaged_pointer_or_missing_step_is_a_tpde_error(tmp_path: Path) -> None:
    io = TPDECheckpointIO(tmp_path / "store")
    good = tmp_path / "good.ckpt"
    io.save_checkpoint({"state_dict": MLP().state_dict()}, good)
    pointer = json.loads(good.read_text())
    bad = tmp_path / "bad.ckpt"
    cases = {
        "truncated": good.read_bytes()[:30],
        "empty": b"",
        "missing step": json.dumps({**pointer, "step": pointer["step"] + 7}).encode(),
        "missing store": json.dumps({**pointer, "store": str(tmp_path / "nowhere")}).encode(),
        "other bytes": json.dumps({**pointer, "sha256": "0" * 64}).encode(),
    }
    for case, data in cases.items():
        bad.write_bytes(data)
        for read in (io.load_checkpoint, lambda p: load_from_store(MLP, p)):
            with pytest.raises(tpde.TPDEError, match=str(bad)):
                read(bad)
    with pytest.raises(tpde.CorruptDataError, match=str(bad)):  # through the Trainer, before any step
        fit(MLP(), tmp_path, data=mlp_data, ckpt_path=bad, plugins=[TPDECheckpointIO(tmp_path / "store")])
    assert_bit_equal(io.load_checkpoint(good)["state_dict"], MLP().state_dict())


class Snapshots(pl.Callback):
    """The exact training state at each epoch end."""

    def __init__(self) -> None:
        self.states: List[Dict[str, Any]] = []

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.states.append({"weights": copy.deepcopy(pl_module.state_dict()),
                            "optimizer": copy.deepcopy(trainer.optimizers[0].state_dict())})


def test_compression_threshold_is_a_recorded_bound_on_weights_only(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="LOSSY"):
        cb = TPDECallback(compression_threshold=1e-3, output_dir=tmp_path / "cb")
    snaps = Snapshots()
    fit(MLP(), tmp_path, data=mlp_data, callbacks=[snaps, cb])
    store = tpde.Store(tmp_path / "cb")
    steps = store.steps()
    assert len(steps) == len(snaps.states) == 3
    errors = [store.info(s).max_error for s in steps]
    assert errors[1] > 0  # weights between keyframes are lossy...
    assert errors[0] == errors[-1] == 0.0  # ...the keyframe and the newest (kept whole) exact
    for step, snap in zip(steps, snaps.states):
        assert store.info(step).max_error <= 1e-3
        got = torch.load(materialize(tmp_path / "cb", step, path=tmp_path / "m.ckpt"), weights_only=True)
        for k, v in snap["weights"].items():
            assert (got["state_dict"][k] - v).abs().max().item() <= 1e-3, k
        for a, b in zip(got["optimizer_states"][0]["state"].values(), snap["optimizer"]["state"].values()):
            assert_bit_equal(a, b)  # optimizer moments stay exact


def test_pytorch_lightning_trainer_accepts_both(tmp_path: Path) -> None:
    P = pytest.importorskip("pytorch_lightning")

    class PMLP(P.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(32, 1)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return ((self.net(batch[0]) - batch[1]) ** 2).mean()

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

    kw = dict(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, default_root_dir=tmp_path)
    m = PMLP()
    P.Trainer(plugins=[TPDECheckpointIO(tmp_path / "store")],
              callbacks=[P.callbacks.ModelCheckpoint(dirpath=tmp_path / "ptr")], **kw).fit(m, mlp_data())
    assert_bit_equal(load_from_store(PMLP, tmp_path / "ptr" / "epoch=0-step=10.ckpt").state_dict(), m.state_dict())
    P.Trainer(callbacks=[TPDECallback(output_dir=tmp_path / "cb")], **kw).fit(PMLP(), mlp_data())
    assert len(tpde.Store(tmp_path / "cb").steps()) == 1


def test_arguments_are_checked_and_the_plugin_pickles(tmp_path: Path) -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="compression_method"):
        TPDECheckpointIO(tmp_path, compression_method="lz4")
    with pytest.raises(tpde.InvalidArgumentError, match="compression_threshold"):
        TPDECallback(compression_threshold=-1.0)
    with pytest.raises(tpde.InvalidArgumentError, match="local"):
        TPDECheckpointIO(tmp_path / "store").save_checkpoint({}, "s3://bucket/x.ckpt")
    io = pickle.loads(pickle.dumps(TPDECheckpointIO(tmp_path / "store", lossy=1e-4,
                                                    compression_method="elias_delta_zstd")))
    assert (io.store_dir, io.lossy, io.compression_method) == (str(tmp_path / "store"), 1e-4, "elias_delta_zstd")
    with pytest.raises(tpde.InvalidArgumentError, match="TorchCheckpointIO"):
        fit(MLP(), tmp_path, data=mlp_data, plugins=[TPDECheckpointIO(tmp_path / "s")],
            callbacks=[TPDECallback(output_dir=tmp_path / "cb")])


# --- a store in a bucket (docs/FORMAT.md §11.12), on a real S3 server ----

def fresh_cache(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    """Point the store's cache at a new, empty folder: whatever is read
    from here on came from the bucket."""
    assert not path.exists()
    monkeypatch.setenv("TPDE_S3_CACHE", str(path))


class LoggedMLP(MLP):
    """MLP logging its loss, for a ModelCheckpoint that monitors it (save_top_k > 1)."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.log("loss", loss)
        return loss


def test_checkpoint_io_keeps_top_k_and_last_in_a_bucket(s3env: Dict[str, str], s3_bucket: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{s3_bucket}/runs/mlp"

    def ckpt(d: Path) -> ModelCheckpoint:
        return ModelCheckpoint(dirpath=d, every_n_train_steps=4, monitor="loss", save_top_k=2, save_last=True)

    fit(LoggedMLP(), tmp_path, data=mlp_data, callbacks=[ckpt(tmp_path / "plain")])
    fit(LoggedMLP(), tmp_path, data=mlp_data, callbacks=[ckpt(tmp_path / "ptr")], plugins=[TPDECheckpointIO(url)])
    names = sorted(os.listdir(tmp_path / "ptr"))
    assert names == sorted(os.listdir(tmp_path / "plain")) and len(names) == 3 and "last.ckpt" in names
    held = pointers(tmp_path / "ptr")  # the pointers stay local and name the bucket's store
    assert {json.loads((tmp_path / "ptr" / n).read_text())["store"] for n in names} == {url}

    # From here on every read goes to the bucket: the training run's cache is out of reach.
    fresh_cache(monkeypatch, tmp_path / "cache-check")
    with tpde.Store(url) as store:
        steps = store.steps()
    # Each save is the next step (from 0): 7 of last.ckpt alone, plus the
    # top-k ones. Their removals (top-k's, and each replaced last.ckpt's)
    # reached the bucket: it holds the 3 steps pointed to, no other.
    assert steps == sorted(held.values()) and max(steps) >= 7
    io = TPDECheckpointIO(url)
    for name in names:
        assert_bit_equal(io.load_checkpoint(tmp_path / "ptr" / name)["state_dict"],
                         torch.load(tmp_path / "plain" / name, weights_only=True)["state_dict"])
    assert_bit_equal(load_from_store(LoggedMLP, tmp_path / "ptr" / "last.ckpt").state_dict(),
                     torch.load(tmp_path / "plain" / "last.ckpt", weights_only=True)["state_dict"])

    # ckpt_path="last" resumes from the bucket, through another empty cache.
    fresh_cache(monkeypatch, tmp_path / "cache-resume")
    again = fit(LoggedMLP(), tmp_path, data=mlp_data, ckpt_path="last", callbacks=[ckpt(tmp_path / "ptr")],
                plugins=[TPDECheckpointIO(url)])
    default = fit(LoggedMLP(), tmp_path, data=mlp_data, ckpt_path="last", callbacks=[ckpt(tmp_path / "plain")])
    assert len(again.losses) == 2 and again.losses == default.losses
    assert_bit_equal(again.state_dict(), default.state_dict())
    assert os.listdir(tmp_path / "cache-resume")  # what it resumed from was fetched into it
    assert sorted(os.listdir(tmp_path / "ptr")) == names  # no scratch folder left beside the pointers

    # A pointer to a step the bucket does not hold is a damaged reference, named.
    bad = tmp_path / "bad.ckpt"
    bad.write_text(json.dumps({**json.loads((tmp_path / "ptr" / "last.ckpt").read_text()), "step": 99}))
    with pytest.raises(tpde.CorruptDataError, match=str(bad)):
        io.load_checkpoint(bad)


def test_callback_and_materialize_through_a_bucket(s3env: Dict[str, str], s3_bucket: str, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{s3_bucket}/runs/epochs"
    uninterrupted = fit(MLP(), tmp_path / "plain", data=mlp_data).losses
    root = tmp_path / "root"
    run = fit(MLP(), root, data=mlp_data, callbacks=[TPDECallback(save_every_n_epochs=1, output_dir=url)])
    assert len(uninterrupted) == 30 and run.losses == uninterrupted
    assert not root.exists() or os.listdir(root) == []  # the scratch folders went; nothing else is local

    fresh_cache(monkeypatch, tmp_path / "cache-check")
    with tpde.Store(url) as store:
        tags = {s: store.info(s).tags for s in store.steps()}
    assert list(tags.values()) == [(f"epoch={e}", f"global_step={10 * (e + 1)}") for e in range(3)]
    step20 = next(s for s, t in tags.items() if "global_step=20" in t)
    ckpt = materialize(url, step20, path=tmp_path / "resume.ckpt")
    assert ckpt == tmp_path / "resume.ckpt" and torch.load(ckpt, weights_only=True)["global_step"] == 20
    resumed = fit(MLP(), tmp_path / "resumed", data=mlp_data, ckpt_path=ckpt)
    assert resumed.losses == uninterrupted[20:]
    assert_bit_equal(load_from_store(MLP, url).state_dict(), run.state_dict())  # the newest step

    # A second run adds to the bucket's store after its steps, as to a folder.
    fresh_cache(monkeypatch, tmp_path / "cache-more")
    fit(MLP(), root, data=mlp_data, epochs=1, callbacks=[TPDECallback(output_dir=url)])
    with tpde.Store(url) as store:
        assert store.steps() == [*tags, max(tags) + 1]


def test_local_files_refuse_urls(tmp_path: Path) -> None:
    """The store may be in a bucket; the files that name its checkpoints
    (Lightning's checkpoint paths, materialize's .ckpt) are local, and a URL
    there is refused by name, never written as a folder named "s3:"."""
    io = TPDECheckpointIO("s3://tpde-test-refusals/run")
    for call in (lambda: io.save_checkpoint({}, "s3://tpde-test-refusals/ckpt/last.ckpt"),
                 lambda: io.remove_checkpoint("s3://tpde-test-refusals/ckpt/last.ckpt")):
        with pytest.raises(tpde.InvalidArgumentError, match="checkpoint path of TPDECheckpointIO.*local path"):
            call()
    with pytest.raises(tpde.InvalidArgumentError, match="materialize's path.*local path"):
        materialize("s3://tpde-test-refusals/run", path="s3://tpde-test-refusals/resume.ckpt")
    for make in (TPDECheckpointIO, lambda u: TPDECallback(output_dir=u), lambda u: materialize(u, path="x.ckpt")):
        with pytest.raises(tpde.UnsupportedFormatError, match="gs://"):
            make("gs://tpde-test-refusals/run")
    assert pickle.loads(pickle.dumps(io)).store_dir == "s3://tpde-test-refusals/run"
    assert not (tmp_path / "s3:").exists() and not Path("s3:").exists()
