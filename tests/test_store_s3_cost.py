"""What a store in a bucket costs and shows (README, "Progress and cost"):
the S3 requests of an operation (Store.requests(), `tpde stats --json`,
`tpde add --json`) and the bytes and objects an add sends, on its progress
bar on a terminal. Against the real server (tests/s3server.py), never a
mock."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict

import pytest

import tpde

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
REQUEST_KEYS = {"get", "put", "head", "list", "delete", "parts", "multipart", "other", "bytes_sent",
                "bytes_received"}


def state(step: int) -> Dict[str, "torch.Tensor"]:
    g = torch.Generator().manual_seed(0)
    base = {f"layer.{i}.weight": torch.randn(128, 64, generator=g) for i in range(3)}
    return {k: v + step * 1e-3 for k, v in base.items()}


def objects_of(rec: Dict) -> set:
    """The objects a record's files name (their skeletons and regions)."""
    out = set()
    for f in rec["files"]:
        out.add(f["skeleton"]["object"])
        out.update(r["object"] for r in f["regions"])
    return out


def test_a_load_of_the_newest_gets_its_manifest_record_and_objects_once_and_lists_nothing(
        s3env, s3_bucket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"s3://{s3_bucket}/cost"
    with tpde.Store(url, recode="inline") as st:
        for step in (1, 2, 3):
            st.add(state(step), step=step)
        sent = st.requests()
        up = st.uploads()
    assert sent is not None and set(sent) == REQUEST_KEYS, sent
    # Every object the adds coded went up, each once (a writer's cleanup
    # lists its removal notes, gc/: writes may list, loads never do).
    assert up is not None and up["uploaded_objects"] == up["queued_objects"] > 0, up
    assert 0 < up["uploaded_bytes"] == up["queued_bytes"] <= sent["bytes_sent"], (up, sent)
    assert sent["put"] >= up["uploaded_objects"], sent

    monkeypatch.setenv("TPDE_S3_CACHE", str(tmp_path / "cache-2"))  # everything below comes from the bucket
    with tpde.Store(url) as st:
        opened = st.requests()
        got = st.load()
        n = st.requests()
        rec = st._reader().record(None)
    assert torch.equal(got["layer.0.weight"], state(3)["layer.0.weight"])
    load = {k: n[k] - opened[k] for k in n}
    # Opening reads the marker, the hint and the newest manifest (and
    # HEADs the generations it probes); the load, its record and each
    # object its file names, one GET each (all under a part's size).
    assert opened["get"] == 3 and opened["list"] == 0, opened
    assert load["get"] == 1 + len(objects_of(rec)), (load, len(objects_of(rec)))
    assert n["list"] == 0 and n["put"] == n["delete"] == n["parts"] == n["multipart"] == 0, n
    assert load["bytes_received"] >= sum(r["stored"] for f in rec["files"] for r in f["regions"]), load


def test_a_local_store_has_no_requests(tmp_path: Path) -> None:
    from tpde.store.handle import call

    with tpde.Store(tmp_path / "s") as st:
        st.add(state(1), step=1)
        assert st.requests() is None and st.uploads() is None
        with pytest.raises(tpde.InvalidArgumentError, match="written"):
            call("tpde_store_transfer", st._write, None, 0, None)


def cli(env: Dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tpde", *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=300)


def checkpoint_folder(d: Path, step: int) -> Path:
    from safetensors.torch import save_file

    d.mkdir(parents=True)
    save_file(state(step), str(d / "model.safetensors"))
    (d / "trainer_state.json").write_text(f'{{"global_step": {step}}}\n')
    return d


def test_stats_and_add_json_carry_the_requests_of_the_command(s3env, s3_bucket, tmp_path: Path) -> None:
    url = f"s3://{s3_bucket}/cli"
    env = {**os.environ, **s3env, "PYTHONPATH": str(ROOT / "python")}
    p = cli(env, tmp_path, "add", url, str(checkpoint_folder(tmp_path / "checkpoint-1", 1)), "--json")
    assert p.returncode == 0, p.stderr
    (added,) = json.loads(p.stdout)
    req = added["requests"]
    assert set(req) == REQUEST_KEYS and req["put"] > 0 and req["bytes_sent"] >= added["stored_bytes"], added
    # the summary line says what went to the bucket
    p = cli(env, tmp_path, "add", url, str(checkpoint_folder(tmp_path / "checkpoint-2", 2)))
    assert p.returncode == 0, p.stderr
    assert re.search(r"sent \d+ objects? \([\d.]+ [KMG]?i?B\) to the bucket", p.stderr), p.stderr

    env["TPDE_S3_CACHE"] = str(tmp_path / "cache-stats")
    p = cli(env, tmp_path, "stats", url, "--json")
    assert p.returncode == 0, p.stderr
    st = json.loads(p.stdout)
    req = st["requests"]
    # stats read the manifest and every record, and wrote nothing
    assert set(req) == REQUEST_KEYS and req["get"] >= 3 and req["bytes_received"] > 0, req
    assert req["put"] == req["delete"] == req["parts"] == req["multipart"] == 0, req

    local = tmp_path / "local"
    p = cli(env, tmp_path, "add", str(local), str(tmp_path / "checkpoint-1"), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)[0]["requests"] is None, p.stdout
    p = cli(env, tmp_path, "stats", str(local), "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["requests"] is None, p.stdout


SENT = re.compile(r"sent ([\d.]+ [KMGT]?i?B) / ([\d.]+ [KMGT]?i?B) \(([\d,]+) / ([\d,]+) objects?\)")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pty behaviour")
def test_an_add_on_a_terminal_shows_what_it_sent_to_the_bucket_and_in_a_pipe_does_not(
        s3_server, s3_proxy, s3_bucket, tmp_path: Path) -> None:
    from conftest import run_on_a_terminal
    from s3proxy import on

    url = f"s3://{s3_bucket}/tty"
    env = {**os.environ, **s3_server.env(s3_proxy.endpoint), "TPDE_S3_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT / "python")}
    src = checkpoint_folder(tmp_path / "checkpoint-1", 1)
    # The bucket answers the first object uploads late: the commit waits
    # for them, and the bar must show that wait (some sent, more queued).
    s3_proxy.delay(1.0, on("PUT", path_prefix=f"/{s3_bucket}/tty/objects/"), n=3)
    rc, err = run_on_a_terminal(["add", url, str(src)], env, tmp_path)
    assert rc == 0, err
    seen = [(int(m[3].replace(",", "")), int(m[4].replace(",", ""))) for m in SENT.finditer(err)]
    assert seen, err
    assert all(done <= queued for done, queued in seen), seen
    assert any(done < queued for done, queued in seen), seen  # drawn while uploads were still out
    assert max(q for _, q in seen) >= 3, seen  # the safetensors' tensors, its skeleton, the JSON file, the record
    assert s3_proxy.pending_faults() == 0  # the delays did happen
    assert "added checkpoint 1: " in err and "to the bucket" in err, err

    # In a pipe: the summary line, never the bar's count.
    p = cli({**env, "TPDE_PROGRESS_DELAY": "0"}, tmp_path, "add", url, str(checkpoint_folder(tmp_path / "c2", 2)))
    assert p.returncode == 0, p.stderr
    assert not SENT.search(p.stderr) and p.stderr.count("\n") == 1, p.stderr
    # A local store on a terminal: a bar, and nothing about a bucket.
    rc, err = run_on_a_terminal(["add", str(tmp_path / "local"), str(src)], env, tmp_path)
    assert rc == 0 and "adding checkpoint-1" in err and "sent" not in err, err
