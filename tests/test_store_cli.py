"""The store commands of `tpde` end to end, run as `python -m tpde`:
add / restore / ls / info / rm / verify / stats, their --json output,
exit codes (0 success, 1 damage or failure, 2 usage) and one-line errors."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import tree_digest


@pytest.fixture
def tpde_cli(py_env):
    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tpde", *map(str, args)], env=py_env, cwd=cwd,
                              capture_output=True, text=True, timeout=300)

    return run


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("tpde: error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def ok(p: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    return p


@pytest.fixture
def run_dirs(tmp_path: Path, hf_run) -> Dict[int, Path]:
    run = hf_run(tmp_path / "out")
    return {s: run.save(s) for s in (100, 200, 300)}


def test_add_ls_info_stats_restore_rm_verify(tmp_path: Path, tpde_cli, run_dirs, hf_run) -> None:
    store = tmp_path / "run.tpde"
    # Several folders at once; the step from the checkpoint-N names.
    p = ok(tpde_cli("add", store, *run_dirs.values(), "--tag", "nightly", "--tag", "a100", "--keyframe-interval", "3",
                    "-q", "--json"))
    added = json.loads(p.stdout)
    assert [a["step"] for a in added] == [100, 200, 300]
    assert all(a["tags"] == ["nightly", "a100"] and a["lossless"] for a in added)
    # --step, then a folder without a number: the newest + 1.
    extra = hf_run(tmp_path / "more").save(0, name="final")
    ok(tpde_cli("add", store, run_dirs[300], "--step", "350", "-q"))
    p = ok(tpde_cli("add", store, extra))
    assert p.stdout == "" and "added checkpoint 351" in p.stderr

    p = ok(tpde_cli("ls", store, "--json"))
    ls = json.loads(p.stdout)
    assert [c["step"] for c in ls] == [100, 200, 300, 350, 351]
    assert {c["step"]: c["tags"] for c in ls}[200] == ["nightly", "a100"]
    assert all(c["max_chain"] <= 3 and c["raw_bytes"] > 0 for c in ls)
    assert ls[-1]["max_chain"] == 1
    files = {f["path"]: f for f in ls[0]["files"]}
    assert files["run.sh"]["mode"] == 0o755 and files["training_args.bin"]["mode"] == 0o600
    p = ok(tpde_cli("ls", store))
    assert [line.split()[0] for line in p.stdout.splitlines()[1:]] == ["100", "200", "300", "350", "351"]

    p = ok(tpde_cli("info", store, "200", "--json"))
    info = json.loads(p.stdout)
    assert info["step"] == 200 and info["lossless"] is True and len(info["files"]) == len(tree_digest(run_dirs[200]))
    p = ok(tpde_cli("info", store, "200"))
    assert p.stdout.startswith("checkpoint 200 ") and "model.safetensors" in p.stdout and "bit-exact" in p.stdout
    p = ok(tpde_cli("info", store, "latest", "--json"))
    assert json.loads(p.stdout)["step"] == 351
    p = ok(tpde_cli("info", store, "--json"))
    whole = json.loads(p.stdout)
    assert whole["config"]["keyframe_interval"] == 3 and whole["config"]["reference"] == "previous"
    assert [r["step"] for r in whole["stats"]["checkpoints"]] == [100, 200, 300, 350, 351]
    p = ok(tpde_cli("info", store))
    assert p.stdout.startswith(f"store {store}: 5 checkpoints")

    p = ok(tpde_cli("stats", store, "--json"))
    stats = json.loads(p.stdout)
    assert stats["raw_bytes"] == sum(c["raw_bytes"] for c in ls)
    rows = {r["step"]: r for r in stats["checkpoints"]}
    assert rows[350]["new_bytes"] < 0.2 * rows[350]["raw_bytes"]  # the same folder as 300 again
    assert stats["groups"] and stats["disk_bytes"] > 0
    ok(tpde_cli("stats", store))

    for step, src in run_dirs.items():
        ok(tpde_cli("restore", store, step, tmp_path / f"r{step}", "-q"))
        assert tree_digest(tmp_path / f"r{step}") == tree_digest(src)
    p = ok(tpde_cli("restore", store, "latest", tmp_path / "latest"))
    assert "restored checkpoint 351" in p.stderr
    assert tree_digest(tmp_path / "latest") == tree_digest(extra)

    p = ok(tpde_cli("rm", store, "200"))
    assert p.stderr.startswith("removed checkpoint 200 in ") and p.stdout == ""
    p = ok(tpde_cli("ls", store, "--json"))
    assert [c["step"] for c in json.loads(p.stdout)] == [100, 300, 350, 351]
    ok(tpde_cli("restore", store, "100", tmp_path / "r100b", "-q"))
    assert tree_digest(tmp_path / "r100b") == tree_digest(run_dirs[100])

    p = ok(tpde_cli("verify", store))
    assert p.stderr.startswith("ok: every object and chain checked (decoded) in ") and p.stdout == ""
    assert p.stderr.count("\n") == 1
    p = ok(tpde_cli("verify", store, "-q"))
    assert p.stderr == "" and p.stdout == ""
    p = ok(tpde_cli("verify", store, "--json", "--shallow"))
    assert json.loads(p.stdout) == {"ok": True, "affected_steps": [], "cleaned": None, "problems": []}


def test_verify_names_damage_and_exits_1(tmp_path: Path, tpde_cli, run_dirs) -> None:
    store = tmp_path / "s"
    ok(tpde_cli("add", store, *run_dirs.values(), "-q"))
    rec = json.loads(ok(tpde_cli("info", store, "300", "--json")).stdout)
    assert rec["step"] == 300
    # The newest checkpoint's keyframe of embed.weight: older ones decode through it.
    from tpde import Store

    with Store(store) as st:
        with st._reader() as rd:
            snapshot = rd.snapshot
    f = next(f for f in snapshot["checkpoints"][-1]["files"] if f["path"] == "model.safetensors")
    r = next(r for r in f["regions"] if r["name"] == "embed.weight")
    obj = store / "objects" / r["object"][:2] / r["object"]
    obj.chmod(0o644)
    b = bytearray(obj.read_bytes())
    b[len(b) // 2] ^= 1
    obj.write_bytes(bytes(b))
    p = tpde_cli("verify", store)
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "checkpoint 300: model.safetensors tensor embed.weight" in p.stdout
    assert p.stderr.strip().splitlines()[-1].startswith("damaged: checkpoints ")
    p = tpde_cli("verify", store, "--json")
    assert p.returncode == 1
    rep = json.loads(p.stdout)
    assert rep["ok"] is False and 300 in rep["affected_steps"]
    assert all(pr["object"] == r["object"] for pr in rep["problems"])
    p = tpde_cli("restore", store, "300", tmp_path / "bad")
    assert p.returncode == 1
    assert "corrupt" in one_error_line(p)


def test_verify_repair_removes_leftovers(tmp_path: Path, tpde_cli, run_dirs) -> None:
    store = tmp_path / "s"
    ok(tpde_cli("add", store, run_dirs[100], "-q"))
    (store / "tmp" / "obj-dead-writer").write_bytes(b"x" * 100)
    junk = hashlib.sha256(b"unreferenced").hexdigest()
    (store / "objects" / junk[:2]).mkdir(exist_ok=True)
    (store / "objects" / junk[:2] / junk).write_bytes(b"unreferenced")
    p = ok(tpde_cli("verify", store))  # read-only: reports, removes nothing
    assert (store / "tmp" / "obj-dead-writer").exists()
    p = ok(tpde_cli("verify", store, "--repair", "--json"))
    rep = json.loads(p.stdout)
    assert rep["ok"]
    assert os.listdir(store / "tmp") == []
    assert not (store / "objects" / junk[:2] / junk).exists()
    p = ok(tpde_cli("verify", store, "--repair"))
    assert "removed 0 unfinished files, 0 unreferenced objects, " in p.stderr
    # What the first repair removed is what it reports.
    assert rep["cleaned"]["temporary"] == 1 and rep["cleaned"]["objects"] == 1, rep["cleaned"]


def test_lossy_and_base_options(tmp_path: Path, tpde_cli, run_dirs) -> None:
    store = tmp_path / "lossy"
    ok(tpde_cli("add", store, *run_dirs.values(), "--lossy", "optimizer.pt:*=1e-3", "-q"))
    cfg = json.loads(ok(tpde_cli("info", store, "--json")).stdout)["config"]
    assert cfg["lossy"] == [{"pattern": "optimizer.pt:*", "threshold": 1e-3}]
    ls = json.loads(ok(tpde_cli("ls", store, "--json")).stdout)
    assert all(c["max_error"] <= 1e-3 for c in ls) and ls[-1]["lossless"]
    # The base: every older checkpoint against it.
    base = tmp_path / "base"
    shutil.copytree(run_dirs[100], base)
    bstore = tmp_path / "based"
    ok(tpde_cli("add", bstore, run_dirs[200], run_dirs[300], "--reference", "base", "--base", base, "-q"))
    whole = json.loads(ok(tpde_cli("info", bstore, "--json")).stdout)
    assert whole["config"]["reference"] == "base"
    for step in (200, 300):
        ok(tpde_cli("restore", bstore, step, tmp_path / f"b{step}", "-q"))
        assert tree_digest(tmp_path / f"b{step}") == tree_digest(run_dirs[step])


@pytest.mark.parametrize("args,needle", [
    (["ls", "{missing}"], "not a tpde store"),
    (["info", "{store}", "12x"], "invalid step"),
    (["restore", "{store}", "999", "{tmp}/x"], "no checkpoint 999"),
    (["restore", "{store}", "soon", "{tmp}/x"], "invalid step"),
    (["rm", "{store}", "999"], "no checkpoint 999"),
    (["rm", "{store}", "abc"], "invalid step"),
    (["add", "{store}", "{tmp}/no-such-folder"], "no such file or folder"),
    (["add", "{store}", "{src100}", "{src200}", "--step", "5"], "--step takes one PATH"),
    (["add", "{store}", "{src100}", "--step", "50"], "not after the newest"),
    (["add", "{store}", "{src100}", "--step", "500", "--keyframe-interval", "4"], "cannot be reopened"),
    (["add", "{store}", "{src100}", "--lossy", "nonsense"], "PATTERN=BOUND"),
    (["add", "{store}", "{src100}", "--reference", "previous", "--base", "{src100}"], "--base goes with"),
    (["add", "{tmp}/fresh", "{src100}", "--lossy", "*=-1"], "lossy bound"),
    (["add", "{tmp}/fresh", "{src100}", "--lossy", "*=nan"], "lossy bound"),
    (["add", "{tmp}/fresh", "{src100}", "--keyframe-interval", "0"], "keyframe"),
    (["add", "{tmp}/fresh", "{src100}", "--step", "99999999999999999999"], "out of range"),
    (["add", "{tmp}/fresh", "s3://bucket/run"], "s3://"),
    (["rm", "{store}", "18446744073709551626"], "out of range"),
    (["rm", "{store}", "-1"], "out of range"),
    (["restore", "{store}", "18446744073709551716", "{tmp}/out"], "out of range"),
    (["verify"], "the following arguments are required"),
    (["restore", "{store}", "100"], "the following arguments are required"),
])
def test_usage_errors_exit_2(tmp_path: Path, tpde_cli, run_dirs, args: List[str], needle: str) -> None:
    store = tmp_path / "s"
    ok(tpde_cli("add", store, run_dirs[100], "-q"))
    subst = {"store": store, "missing": tmp_path / "missing", "tmp": tmp_path, "src100": run_dirs[100],
             "src200": run_dirs[200]}
    p = tpde_cli(*[a.format(**subst) for a in args])
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert needle in one_error_line(p)
    assert json.loads(ok(tpde_cli("ls", store, "--json")).stdout)[0]["step"] == 100  # unchanged


def test_failures_exit_1(tmp_path: Path, tpde_cli, run_dirs, py_env) -> None:
    store = tmp_path / "s"
    ok(tpde_cli("add", store, run_dirs[100], "-q"))
    # A damaged manifest: its second copy serves; verify says so (exit 1)
    # and --repair writes it anew.
    man, copy = sorted((store / "manifests").glob("*.json"))[-1], sorted((store / "manifests").glob("*.copy"))[-1]
    good = man.read_bytes()
    man.write_bytes(good[:-20])
    ok(tpde_cli("ls", store))
    p = tpde_cli("verify", store)
    assert p.returncode == 1 and "manifest" in p.stdout, (p.stdout, p.stderr)
    ok(tpde_cli("verify", store, "--repair"))
    ok(tpde_cli("verify", store))
    # Both copies damaged: corrupt, exit 1, for every command that reads it.
    man, copy = sorted((store / "manifests").glob("*.json"))[-1], sorted((store / "manifests").glob("*.copy"))[-1]
    good = man.read_bytes()
    man.write_bytes(good[:-20])
    copy.write_bytes(good[:-20])
    for args in (["ls", store], ["info", store, "100"], ["verify", store], ["restore", store, "100", tmp_path / "x"],
                 ["add", store, run_dirs[200]]):
        p = tpde_cli(*args)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert "corrupt" in one_error_line(p)
    man.write_bytes(good)
    copy.write_bytes(good)
    # Another writer holds the lock: exit 1, one line.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time, tpde\n"
                               "st = tpde.Store(sys.argv[1]); st.verify(repair=True)\n"
                               "print('holding', flush=True); time.sleep(600)", str(store)],
                              env=py_env, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        p = tpde_cli("add", store, run_dirs[200], "-q")
        assert p.returncode == 1
        assert "another process is writing" in one_error_line(p)
        p = tpde_cli("rm", store, "100")
        assert p.returncode == 1 and "another process is writing" in one_error_line(p)
        ok(tpde_cli("ls", store))  # reading needs no lock
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    ok(tpde_cli("add", store, run_dirs[200], "-q"))
    # A destination that is a file: an I/O failure, exit 1.
    (tmp_path / "afile").write_text("x")
    p = tpde_cli("restore", store, "200", tmp_path / "afile")
    assert p.returncode == 1
    one_error_line(p)


def _layered_run(root: Path, steps: List[int]) -> Dict[int, Path]:
    """checkpoint-N folders of a 12-layer model whose layer i changes
    (i + 1) / 16 of its elements at every step (so no two layers read the
    same), with a real AdamW state as optimizer.pt (a torch zip)."""
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(48, 48) for _ in range(12)])})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = {}
    for step in steps:
        opt.zero_grad()
        x = torch.randn(4, 48)
        for layer in model["layers"]:
            x = torch.tanh(layer(x))
        x.sum().backward()
        opt.step()
        with torch.no_grad():
            for i, layer in enumerate(model["layers"]):  # the weights as each test wants them
                w = layer.weight.view(-1)
                w.copy_(torch.arange(w.numel(), dtype=torch.float32) * 1e-3 + i)
                w[: (i + 1) * w.numel() // 16] += step * 1e-2
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
        torch.save(opt.state_dict(), d / "optimizer.pt")
        out[step] = d
    return out


def test_stats_rows_are_named_by_parameter_and_ordered_by_number(tmp_path: Path, tpde_cli) -> None:
    dirs = _layered_run(tmp_path / "out", [10, 20, 30])
    store = tmp_path / "s"
    ok(tpde_cli("add", store, *dirs.values(), "-q"))
    st = json.loads(ok(tpde_cli("stats", store, "--json")).stdout)
    groups = list(st["groups"])
    # Zip storages by state-dict path, never data/N; a parameter of every layer is one row.
    assert not any(":data/" in g for g in groups), groups
    assert {"optimizer.pt:state/N/exp_avg", "optimizer.pt:state/N/exp_avg_sq",
            "model.safetensors:layers.N.weight"} <= set(groups), groups
    assert st["groups"]["optimizer.pt:state/N/exp_avg"]["tensors"] == 12  # the weights; biases are too small
    changed = st["changed"]["10"]
    layers = [k for k in changed if k.startswith("model.safetensors:")]
    assert layers == [f"model.safetensors:layers.{i}" for i in range(12)]  # 2 before 10
    for i in range(12):
        assert changed[f"model.safetensors:layers.{i}"] == pytest.approx((i + 1) / 16, abs=0.01)
    assert [k for k in changed if k.startswith("optimizer.pt:")][:3] == [
        "optimizer.pt:state/0", "optimizer.pt:state/2", "optimizer.pt:state/4"]

    text = ok(tpde_cli("stats", store)).stdout
    assert "data/" not in text
    lines = text.splitlines()
    assert "ratio per tensor group" in text and "state/N/exp_avg" in text
    head = next(i for i, line in enumerate(lines) if line.startswith("elements changed per layer"))
    rows = {line.split()[0]: line.split()[1:] for line in lines[head + 1:] if line.startswith("    ")}
    assert [r for r in rows if r.startswith("layers.")] == [f"layers.{i}" for i in range(12)]
    for i in range(12):  # the text shows what --json has, per step
        assert rows[f"layers.{i}"] == [f"{100 * st['changed'][s][f'model.safetensors:layers.{i}']:.1f}%"
                                       for s in ("10", "20")]
    # Every optimizer state changes wholly at every step: one row for them all.
    assert [r for r in rows if r.startswith("state/")] == ["state/0-22"]


def _tensor_count(obj: object) -> int:
    import torch

    seen: set = set()
    todo = [obj]
    while todo:
        o = todo.pop()
        if isinstance(o, torch.Tensor):
            seen.add(id(o))
        elif isinstance(o, dict):
            todo.extend(o.values())
        elif isinstance(o, (list, tuple)):
            todo.extend(o)
    return len(seen)


def test_info_counts_tensors_and_files_as_a_user_does(tmp_path: Path, tpde_cli, run_dirs) -> None:
    import torch
    from safetensors import safe_open

    store = tmp_path / "s"
    ok(tpde_cli("add", store, run_dirs[100], "-q"))
    with safe_open(str(run_dirs[100] / "model.safetensors"), "pt") as f:
        n_model = len(list(f.keys()))
    n_opt = _tensor_count(torch.load(run_dirs[100] / "optimizer.pt", weights_only=True))
    info = json.loads(ok(tpde_cli("info", store, "100", "--json")).stdout)
    files = {f["path"]: f for f in info["files"]}
    assert files["model.safetensors"]["tensors"] == n_model
    assert files["model.safetensors"]["frames"] < n_model  # biases stay in the skeleton: counted all the same
    assert files["optimizer.pt"]["tensors"] == n_opt
    assert files["config.json"]["tensors"] == 0
    text = ok(tpde_cli("info", store, "100")).stdout
    rows = {line.split()[0]: line for line in text.splitlines()[1:]}
    assert rows["model.safetensors"].rstrip().endswith(f"{n_model} tensors")
    assert rows["optimizer.pt"].rstrip().endswith(f"{n_opt} tensors")
    assert rows["config.json"].rstrip().endswith(" -")
    assert f"{len(files)} files," in text.splitlines()[0]

    # One file of one tensor: singular words.
    from safetensors.torch import save_file

    one = tmp_path / "one"
    one.mkdir()
    save_file({"w": torch.zeros(64, 64)}, str(one / "w.safetensors"))
    one_store = tmp_path / "one.tpde"
    p = ok(tpde_cli("add", one_store, one, "--step", "1"))
    assert "added checkpoint 1: 1 file, " in p.stderr
    text = ok(tpde_cli("info", one_store, "1")).stdout
    assert "; 1 file, " in text and "at most 1 frame per tensor" in text and text.rstrip().endswith(" 1 tensor")
    assert "1 files" not in text and "1 tensors" not in text
    assert ok(tpde_cli("info", one_store)).stdout.startswith(f"store {one_store}: 1 checkpoint, ")
    p = ok(tpde_cli("restore", one_store, "latest", tmp_path / "back"))
    assert p.stderr.startswith("restored checkpoint 1: 1 file, ")


def _seen(terminal: str) -> List[str]:
    """The lines a terminal shows at the end: each line as its last
    carriage return left it, blank ones left out."""
    lines = terminal.replace("\r\n", "\n").split("\n")
    return [v for v in (line.split("\r")[-1].strip() for line in lines) if v]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty behaviour")
def test_progress_on_a_terminal_for_every_store_command(tmp_path: Path, on_a_terminal, tpde_cli, run_dirs,
                                                        py_env) -> None:
    store = tmp_path / "s"
    rc, err = on_a_terminal(["add", store, run_dirs[100], run_dirs[200]], tmp_path)
    assert rc == 0, err
    assert "adding checkpoint-100:" in err and "adding checkpoint-200:" in err and "%|" in err, err
    seen = _seen(err)
    assert len(seen) == 2 and seen[0].startswith("added checkpoint 100: ") and seen[1].startswith(
        "added checkpoint 200: "), err
    for args, label, counted, summary in (
            (["restore", store, "latest", tmp_path / "r"], "restoring checkpoint 200 (", "100%|",
             "restored checkpoint 200: "),
            (["verify", store], "verifying ", ": 100%|", "ok: every object and chain checked"),
            (["rm", store, "100"], "removing checkpoint 100 ", "", "removed checkpoint 100 in ")):
        rc, err = on_a_terminal(args, tmp_path)
        assert rc == 0, err
        assert label in err, err  # drawn,
        assert counted in err, err  # with the library's count where it has one,
        seen = _seen(err)
        assert len(seen) == 1 and seen[0].startswith(summary), err  # then cleared: the summary is what stays
    # -q: nothing on the terminal; in a pipe: the summary, no bar.
    ok(tpde_cli("add", store, run_dirs[300], "-q"))
    for args in (["add", store, run_dirs[100], "--step", "400", "-q"], ["restore", store, "latest", tmp_path / "q", "-q"],
                 ["verify", store, "-q"], ["rm", store, "latest", "-q"]):
        rc, err = on_a_terminal(args, tmp_path)
        assert rc == 0 and err == "", (args, err)
    env = {**py_env, "TPDE_PROGRESS_DELAY": "0"}
    for args, summary in ((["add", store, run_dirs[100], "--step", "500"], "added checkpoint 500: "),
                          (["restore", store, "latest", tmp_path / "p"], "restored checkpoint 500: "),
                          (["verify", store], "ok: "), (["rm", store, "latest"], "removed checkpoint 500 in ")):
        p = subprocess.run([sys.executable, "-m", "tpde", *map(str, args)], env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 0, p.stderr
        assert p.stderr.startswith(summary) and p.stderr.count("\n") == 1 and "\r" not in p.stderr, p.stderr
