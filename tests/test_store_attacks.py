"""The store tried as a hostile, unlucky or careless user would: each test
re-runs one break of the store as it was found (issue 17), under real
conditions: real symlinks planted in a store and in a destination, a real
thread racing a restore, real FIFOs and /dev/zero, a real memory cgroup (or
RLIMIT_AS) around a decode bomb, real byte flips, a real SIGTERM. Each must
end in a correct result or a clean typed error: never a write outside the
store or the destination, a signal, a hang, or a silent loss."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import pytest
import torch

import tpde
from tpde.errors import CorruptDataError, DecodeLimitError, InvalidArgumentError, TPDEIOError

from conftest import HFRun, tree_digest

CLI_TIMEOUT = 120


@pytest.fixture
def cli(py_env) -> Callable[..., subprocess.CompletedProcess]:
    def run(*args: object, env: Optional[Dict[str, str]] = None, timeout: float = CLI_TIMEOUT,
            prefix: Optional[List[str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run([*(prefix or []), sys.executable, "-m", "tpde", *map(str, args)], env=env or py_env,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def run3(tmp_path: Path) -> Dict[str, object]:
    """A store of three Trainer-style checkpoints (10, 20, 30), K = 3."""
    run = HFRun(tmp_path / "out", seed=3)
    srcs = {s: run.save(s) for s in (10, 20, 30)}
    store = tmp_path / "store"
    with tpde.Store(store, keyframe_interval=3) as st:
        for s, p in srcs.items():
            st.add(p, step=s)
    return {"store": store, "srcs": srcs, "run": run}


def outside_folder(tmp_path: Path) -> Path:
    d = tmp_path / "outside"
    d.mkdir()
    (d / "precious.txt").write_text("keep me")
    (d / "notes").mkdir()
    (d / "notes" / "a.txt").write_text("mine")
    return d


def assert_untouched(outside: Path) -> None:
    assert sorted(p.relative_to(outside).as_posix() for p in outside.rglob("*")) == \
        ["notes", "notes/a.txt", "precious.txt"], "something was written or removed through a planted link"
    assert (outside / "precious.txt").read_text() == "keep me"


def records_on_disk(store: Path) -> set:
    return {p.name for p in (store / "objects").glob("*/*")}


# --- links planted in a store ----------------------------------------------------


@pytest.mark.parametrize("where", ["tmp", "objects"])
def test_a_symlinked_store_folder_never_loses_a_file_elsewhere(tmp_path: Path, run3, cli, where: str) -> None:
    store = run3["store"]
    outside = outside_folder(tmp_path)
    if where == "tmp":
        shutil.rmtree(store / "tmp")
        (store / "tmp").symlink_to(outside)
    else:
        # The folder that holds a frame of the newest checkpoint.
        with tpde.Store(store) as st, st._reader() as rd:
            obj = next(f for f in rd.record(30)["files"] if f["path"] == "model.safetensors")["regions"][0]["object"]
        hh = store / "objects" / obj[:2]
        shutil.rmtree(hh)
        hh.symlink_to(outside)
    new = run3["run"].save(40)
    cli("add", store, new, "-q")
    cli("rm", store, 10)
    repaired = cli("verify", store, "--repair")
    assert_untouched(outside)
    if where == "objects":
        # What that folder held is gone from the store: verify says so,
        # never "ok"; the link is reported, and left alone.
        assert repaired.returncode == 1, repaired.stderr
        assert "ok" not in repaired.stderr.splitlines()[-1]
        assert f"objects/{hh.name}" in repaired.stderr and hh.is_symlink()
    else:
        assert repaired.returncode == 0, repaired.stderr
        assert (store / "tmp").is_dir() and not (store / "tmp").is_symlink()
        with tpde.Store(store) as st:
            assert st.steps() == [20, 30, 40]


def test_a_writer_lock_that_is_a_link_is_never_written(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    outside = outside_folder(tmp_path)
    (store / "writer.lock").unlink()
    (store / "writer.lock").symlink_to(outside / "precious.txt")
    p = cli("add", store, run3["run"].save(40), "-q")
    assert p.returncode == 1 and "writer.lock" in p.stderr, p.stderr
    assert_untouched(outside)


# --- a restore raced into writing elsewhere --------------------------------------


def test_a_thread_swapping_folders_for_links_never_redirects_a_restore(tmp_path: Path, run3) -> None:
    """A thread replaces every folder it finds below the restore's parent
    (1_Pooling/, extra/, deep/) with a link to a folder elsewhere, as fast
    as it can, while restores run."""
    store, outside = run3["store"], outside_folder(tmp_path)
    parent = tmp_path / "restores"
    parent.mkdir()
    stop, swaps = threading.Event(), [0]

    def swapper() -> None:
        while not stop.is_set():
            for root, dirs, _ in os.walk(parent):
                for d in dirs:
                    p = os.path.join(root, d)
                    if d in ("1_Pooling", "extra", "deep") and not os.path.islink(p):
                        try:
                            os.rename(p, p + ".aside")
                            os.symlink(outside, p)
                            swaps[0] += 1
                        except OSError:
                            pass

    th = threading.Thread(target=swapper, daemon=True)
    th.start()
    outcomes = {"restored": 0, "refused": 0}
    try:
        with tpde.Store(store) as st:
            for i in range(300):
                if swaps[0] >= 30:
                    break
                try:
                    st.restore(30, parent / f"r{i}")
                    outcomes["restored"] += 1
                except TPDEIOError as e:  # a folder it made was swapped: refused, never followed
                    assert e.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT, errno.EEXIST), str(e)
                    outcomes["refused"] += 1
                assert_untouched(outside)
    finally:
        stop.set()
        th.join()
    assert swaps[0] > 0, "the race never landed: this test proved nothing"
    assert_untouched(outside)


def test_a_symlink_planted_in_dest_is_replaced_never_written_through(tmp_path: Path, run3) -> None:
    store, outside = run3["store"], outside_folder(tmp_path)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "config.json").symlink_to(outside / "precious.txt")
    (dest / "extra").symlink_to(outside / "notes")
    with tpde.Store(store) as st:
        with pytest.raises(TPDEIOError) as e:
            st.restore(30, dest)  # not empty
        assert e.value.errno == errno.EEXIST
        with pytest.raises(TPDEIOError) as e:
            st.restore(30, dest, force=True)  # extra/ is a link: never entered
        assert e.value.errno == errno.ELOOP
        (dest / "extra").unlink()
        st.restore(30, dest, force=True)  # config.json, a link, is replaced itself
    assert_untouched(outside)
    assert not (dest / "config.json").is_symlink()
    assert tree_digest(dest) == tree_digest(run3["srcs"][30])


# --- mistakes: steps, existing output, partial output ----------------------------


def test_steps_never_wrap(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    for step in (2**64 + 10, 2**64 + 20, -1, 2**63):
        p = cli("rm", store, step)
        assert p.returncode == 2 and "out of range" in p.stderr, (step, p.stderr)
        with tpde.Store(store) as st, pytest.raises(InvalidArgumentError, match="out of range"):
            st.remove(step)
    for bad in (True, 1.0, "1e1", " 10"):  # decimal text ("10") is a step, as on the command line
        with tpde.Store(store) as st, pytest.raises(InvalidArgumentError):
            st.remove(bad)
    p = cli("add", store, run3["run"].save(40), "--step", "99999999999999999999")
    assert p.returncode == 2 and "out of range" in p.stderr, p.stderr
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]
        st.add(run3["srcs"][10], step=np.int64(2**63 - 1))
        with pytest.raises(InvalidArgumentError, match="no step comes after"):
            st.add(run3["run"].save(40, name="final"))  # no step, and none in the name: the newest + 1
        st.remove("latest")
        assert st.steps() == [10, 20, 30]
        assert st.info("latest").step == 30


def test_restore_into_a_folder_that_is_not_empty_needs_force(tmp_path: Path, run3, cli) -> None:
    store, src = run3["store"], run3["srcs"][30]
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine.txt").write_text("mine")
    (dest / "config.json").write_text("old")
    p = cli("restore", store, 30, dest)
    assert p.returncode == 1 and "not empty" in p.stderr and "--force" in p.stderr, p.stderr
    assert (dest / "config.json").read_text() == "old"
    assert sorted(os.listdir(dest)) == ["config.json", "mine.txt"]
    p = cli("restore", store, "latest", dest, "--force")
    assert p.returncode == 0, p.stderr
    got = tree_digest(dest)
    assert got.pop("mine.txt")[0]  # kept
    assert got == tree_digest(src)


def test_a_failed_restore_leaves_nothing(tmp_path: Path, run3) -> None:
    store = run3["store"]
    with tpde.Store(store) as st, st._reader() as rd:
        rec = rd.record(30)
    # The last file restored (files go in path order) has lost its bytes:
    # every file before it has been written when the restore fails.
    last = sorted(rec["files"], key=lambda f: f["path"])[-1]
    obj = last["skeleton"]["object"]
    (store / "objects" / obj[:2] / obj).unlink()
    parent = tmp_path / "restores"
    parent.mkdir()
    with tpde.Store(store) as st, pytest.raises(CorruptDataError):
        st.restore(30, parent / "dest")
    assert os.listdir(parent) == [], "a failed restore left a partial destination or its staging folder"


# --- damage stays local ------------------------------------------------------------


def test_a_record_lost_in_both_copies_costs_only_what_decodes_through_it(tmp_path: Path, run3, cli) -> None:
    store, srcs = run3["store"], run3["srcs"]
    with tpde.Store(store) as st, st._reader() as rd:
        obj = next(c["object"] for c in rd.manifest["checkpoints"] if c["step"] == 20)
    for name in (obj, obj + ".copy"):
        p = store / "objects" / obj[:2] / name
        b = bytearray(p.read_bytes())
        b[len(b) // 2] ^= 0x01
        p.write_bytes(bytes(b))
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]
        listed = {i.step: i for i in st.list()}
        assert listed[20].damaged and not listed[30].damaged
        st.restore(30, tmp_path / "r30")  # the newest decodes alone
        assert tree_digest(tmp_path / "r30") == tree_digest(srcs[30])
        with pytest.raises(CorruptDataError, match="checkpoint 20"):
            st.restore(20, tmp_path / "r20")
        rep = st.verify()
        assert 20 in rep.affected_steps and 30 not in rep.affected_steps
    ls = cli("ls", store)
    assert ls.returncode == 1 and "damaged" in ls.stdout and "30" in ls.stdout, ls.stdout
    assert cli("verify", store, "--repair").returncode == 1  # still damaged, but it ran
    assert cli("rm", store, 20).returncode == 0
    with tpde.Store(store) as st:
        assert st.steps() == [10, 30]
        st.restore(30, tmp_path / "r30b")
        assert tree_digest(tmp_path / "r30b") == tree_digest(srcs[30])


# --- objects and manifests that are not files ---------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_an_object_that_is_not_a_file_is_refused_at_once(tmp_path: Path, run3, cli, kind: str) -> None:
    store = run3["store"]
    with tpde.Store(store) as st, st._reader() as rd:
        rec = rd.record(30)
    f = next(f for f in rec["files"] if f["path"] == "model.safetensors")
    obj = f["regions"][0]["object"]
    p = store / "objects" / obj[:2] / obj
    p.unlink()
    if kind == "fifo":
        os.mkfifo(p)
    else:
        p.symlink_to("/dev/zero")
    for args in (("restore", store, 30, tmp_path / "restored"), ("verify", store)):
        r = cli(*args, timeout=60)  # a hang fails here, with TimeoutExpired
        assert r.returncode == 1, (args, r.stdout, r.stderr)
    assert not (tmp_path / "restored").exists()
    assert os.listdir(store / "tmp") == []


def test_a_fifo_as_the_newest_manifest_never_hangs(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    (newest,) = sorted((store / "manifests").glob("*.json"))[-1:]
    # The newest generation's file is a FIFO: its copy serves.
    newest.unlink()
    os.mkfifo(newest)
    r = cli("ls", store, timeout=60)
    assert r.returncode == 0 and "30" in r.stdout, r.stderr
    # A newer generation that is a FIFO, with no copy: refused, at once.
    g = int(newest.name[:-5]) + 1
    os.mkfifo(store / "manifests" / f"{g:020d}.json")
    r = cli("ls", store, timeout=60)
    assert r.returncode == 1 and "corrupt" in r.stderr, r.stderr


# --- a decode bomb --------------------------------------------------------------------

_GIB = 1 << 30


def _memory_cgroup(limit: int) -> Optional[Path]:
    """A new memory cgroup (v2, else v1) limited to limit bytes, below this
    process's own; None where this machine lets us make none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        hid, ctrls, path = line.split(":", 2)
        if hid == "0" and ctrls == "":
            base, limit_file = Path("/sys/fs/cgroup") / path.lstrip("/"), "memory.max"
        elif "memory" in ctrls.split(","):
            base, limit_file = Path("/sys/fs/cgroup/memory") / path.lstrip("/"), "memory.limit_in_bytes"
        else:
            continue
        cg = base / f"tpde-test-{os.getpid()}"
        try:
            cg.mkdir()
            (cg / limit_file).write_text(str(limit))
        except OSError:
            with_rmdir(cg)
            continue
        return cg
    return None


def with_rmdir(p: Path) -> None:
    try:
        p.rmdir()
    except OSError:
        pass


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A store whose one checkpoint is a 4 GiB tensor of zeros: a frame of
    a few hundred kilobytes. torch.zeros maps zero pages, so making it
    takes no memory either."""
    store = tmp_path_factory.mktemp("bomb") / "store"
    with tpde.Store(store) as st:
        st.add({"w": torch.zeros(_GIB, dtype=torch.float32)}, step=1)
    size = sum(p.stat().st_size for p in store.rglob("*") if p.is_file())
    assert size < 8 << 20, size
    return store


def test_a_decode_bomb_is_refused_before_it_is_allocated(tmp_path: Path, bomb: Path, cli, py_env) -> None:
    """In a 1 GiB memory cgroup, the 4 GiB tensor used to get verify,
    restore and load killed (a cgroup kills, it does not fail an
    allocation). Where no cgroup can be made here, RLIMIT_AS stands in."""
    cg = _memory_cgroup(_GIB)
    if cg is not None:
        prefix = ["sh", "-c", f'echo $$ > {cg / "cgroup.procs"} && exec "$0" "$@"']
    else:
        prefix = ["prlimit", f"--as={6 * _GIB}"]  # Python, Go and libtpde fit in 6 GiB of address space
    load = "import sys, tpde\ntry:\n tpde.Store(sys.argv[1]).load()\nexcept tpde.DecodeLimitError as e:\n print('refused:', e)\n"
    try:
        for env_limit in (None, "1G"):
            env = dict(py_env)
            if env_limit:
                env["TPDE_MAX_OUTPUT"] = env_limit
            v = cli("verify", bomb, env=env, prefix=prefix)
            assert v.returncode == 1 and "limit" in v.stdout, (v.returncode, v.stdout, v.stderr)
            r = cli("restore", bomb, 1, tmp_path / f"out-{env_limit}", env=env, prefix=prefix)
            assert r.returncode == 1 and "limit" in r.stderr, (r.returncode, r.stdout, r.stderr)
            assert not (tmp_path / f"out-{env_limit}").exists()
            p = subprocess.run([*prefix, sys.executable, "-c", load, str(bomb)], env=env, capture_output=True,
                               text=True, timeout=CLI_TIMEOUT)
            assert p.returncode == 0 and p.stdout.startswith("refused:"), (p.returncode, p.stdout, p.stderr)
    finally:
        if cg is not None:
            with_rmdir(cg)
    with tpde.Store(bomb) as st, pytest.raises(DecodeLimitError):
        st.load(max_output_bytes=_GIB)


# --- cost ----------------------------------------------------------------------------


def test_listing_reads_each_record_once_and_loading_the_newest_reads_one(tmp_path: Path, abi_calls) -> None:
    store = tmp_path / "store"
    with tpde.Store(store, keyframe_interval=4) as st:
        for s in range(12):
            st.add({"w": torch.full((2048,), float(s))}, step=s)
    calls = abi_calls
    with tpde.Store(store) as st:
        calls.clear()
        infos = st.list()
        assert [i.step for i in infos] == list(range(12))
        assert calls["tpde_store_reader_open"] == 1 and calls["tpde_store_reader_record"] == 12, calls
        calls.clear()
        st.info()
        assert calls["tpde_store_reader_record"] == 1, calls
        calls.clear()
        assert torch.equal(st.load()["w"], torch.full((2048,), 11.0))
        assert calls["tpde_store_reader_record"] == 1, calls


# --- what add takes --------------------------------------------------------------------


def test_a_url_is_never_taken_for_a_folder(tmp_path: Path, run3, cli) -> None:
    # s3:// stores are served (tests/test_store_s3.py); any other scheme is
    # refused, never made a folder named after it.
    p = cli("add", "gs://bucket/run", run3["srcs"][10])
    assert p.returncode == 2 and "gs://" in p.stderr, p.stderr
    assert not Path("gs:").exists()
    with pytest.raises(tpde.UnsupportedFormatError, match="gs://"):
        tpde.Store("gs://bucket/run")


def test_add_refuses_the_store_itself_and_a_folder_that_holds_it(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    for src in (store, store.parent, store / "objects"):
        p = cli("add", store, src, "--step", "99")
        assert p.returncode == 2 and "store" in p.stderr, (src, p.stderr)
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]


def test_a_link_out_of_the_added_folder_is_refused_unless_asked(tmp_path: Path, run3, cli) -> None:
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    src = run3["run"].save(40)
    (src / "tokenizer.json").unlink()
    (src / "tokenizer.json").symlink_to(secret)
    (src / "vocab-link.txt").symlink_to(src / "vocab.txt")  # inside: stored as the file
    store = run3["store"]
    before = records_on_disk(store)
    p = cli("add", store, src)
    assert p.returncode == 2 and "tokenizer.json" in p.stderr and "--follow-links" in p.stderr, p.stderr
    assert records_on_disk(store) == before
    assert cli("add", store, src, "--follow-links", "-q").returncode == 0
    with tpde.Store(store) as st:
        files = {f.path for f in st.info(40).files}
    assert {"tokenizer.json", "vocab-link.txt"} <= files


def test_sigterm_stops_an_add_like_ctrl_c(tmp_path: Path, run3, py_env) -> None:
    store = run3["store"]
    src = tmp_path / "big"
    src.mkdir()
    rng = np.random.default_rng(0)
    from safetensors.numpy import save_file

    save_file({f"w{i}": rng.standard_normal(6 << 20).astype(np.float32) for i in range(4)},
              str(src / "model.safetensors"))
    before = records_on_disk(store)
    proc = subprocess.Popen([sys.executable, "-m", "tpde", "add", str(store), str(src), "--step", "50", "-q"],
                            env=py_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Wait until the add is writing objects, then stop it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list((store / "tmp").iterdir()) and proc.poll() is None:
            time.sleep(0.005)
        assert proc.poll() is None, "the add finished before it could be stopped"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    assert err.strip().splitlines() == [err.strip()] and "SIGTERM" in err and "nothing" in err, err
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]
    assert os.listdir(store / "tmp") == []
    assert records_on_disk(store) == before, "the stopped add left objects behind"


# --- found by trying the hardened store again ------------------------------------------


def test_a_file_written_into_an_empty_dest_while_restoring_is_never_lost(tmp_path: Path) -> None:
    """A thread writes its own files into the (empty, existing) destination
    as soon as the restore's staging folder appears in it. Whatever the
    timing, the thread's files survive: a restore without force never
    replaces or removes what it did not put there."""
    rng = np.random.default_rng(1)
    src = tmp_path / "ckpt"
    src.mkdir()
    from safetensors.numpy import save_file

    save_file({f"w{i}": rng.standard_normal(3 << 20).astype(np.float32) for i in range(4)},
              str(src / "model.safetensors"))
    (src / "sub").mkdir()
    (src / "sub" / "config.json").write_text("{}")
    store = tmp_path / "store"
    with tpde.Store(store) as st:
        st.add(src, step=1)
    dest = tmp_path / "dest"
    dest.mkdir()
    done = threading.Event()

    def racer() -> None:
        while not done.is_set():
            if any(n.startswith(".tpde-restore-") for n in os.listdir(dest)):
                (dest / "model.safetensors").write_text("theirs")
                (dest / "sub").mkdir(exist_ok=True)
                (dest / "sub" / "mine.txt").write_text("theirs too")
                return
            time.sleep(0.0005)

    th = threading.Thread(target=racer)
    th.start()
    try:
        with tpde.Store(store) as st:
            try:
                st.restore(1, dest)
            except TPDEIOError as e:
                assert e.errno == errno.EEXIST, str(e)
    finally:
        done.set()
        th.join()
    assert (dest / "sub" / "mine.txt").exists(), "the race never landed: this test proved nothing"
    assert (dest / "model.safetensors").read_text() == "theirs"
    assert (dest / "sub" / "mine.txt").read_text() == "theirs too"


def test_a_store_whose_manifests_are_gone_is_never_committed_over(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    before = records_on_disk(store)
    shutil.rmtree(store / "manifests")
    p = cli("verify", store)
    assert p.returncode == 1 and "manifests are missing" in p.stdout, (p.stdout, p.stderr)
    p = cli("add", store, run3["run"].save(40), "-q")
    assert p.returncode == 1 and "no manifest" in p.stderr, p.stderr
    cli("verify", store, "--repair")
    assert records_on_disk(store) == before, "objects of the history were removed"


def test_a_generation_near_two_to_the_64_is_not_the_store(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    (newest,) = sorted((store / "manifests").glob("*.json"))[-1:]
    top = store / "manifests" / f"{2**64 - 1:020d}.json"
    top.write_bytes(newest.read_bytes())
    Path(str(top) + ".copy").write_bytes(newest.read_bytes())
    p = cli("add", store, run3["run"].save(40), "--step", "100", "-q")
    assert p.returncode == 0, p.stderr
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30, 100]
        assert st.verify().ok


def test_follow_links_never_adds_the_store_itself(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    src = run3["run"].save(40)
    (src / "mystore").symlink_to(store)
    p = cli("add", store, src, "--follow-links")
    assert p.returncode == 2 and "store" in p.stderr, p.stderr
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]


@pytest.mark.parametrize("call", ["store-nul", "store-none", "dest-none", "dest-empty", "dest-nul", "add-nul",
                                  "tag-surrogate", "key-surrogate"])
def test_paths_and_names_that_c_would_misread_are_refused(tmp_path: Path, run3, call: str) -> None:
    store, src = run3["store"], run3["srcs"][10]
    calls = {
        "store-nul": lambda: tpde.Store(str(tmp_path / "a\0/b")),
        "store-none": lambda: tpde.Store(None),
        "dest-none": lambda: tpde.Store(store).restore(10, None),
        "dest-empty": lambda: tpde.Store(store).restore(10, "", force=True),
        "dest-nul": lambda: tpde.Store(store).restore(10, str(tmp_path / "n\0/etc")),
        "add-nul": lambda: tpde.Store(store).add(str(src) + "\0/x", step=99),
        "tag-surrogate": lambda: tpde.Store(store).add(src, step=99, tags=["a\ud800"]),
        "key-surrogate": lambda: tpde.Store(store).add({"w\udc80": torch.zeros(4)}, step=99),
    }
    with pytest.raises(InvalidArgumentError):
        calls[call]()
    assert not (tmp_path / "a").exists() and not (tmp_path / "n").exists()
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]


def test_a_file_name_that_is_not_utf8_is_refused_naming_it(tmp_path: Path, run3) -> None:
    src = run3["run"].save(40)
    (src / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name")
    with tpde.Store(run3["store"]) as st, pytest.raises(InvalidArgumentError, match="not UTF-8"):
        st.add(src)


def test_the_decode_limit_is_not_damage(tmp_path: Path, run3, cli, py_env) -> None:
    env = {**py_env, "TPDE_MAX_OUTPUT": "1"}
    p = cli("verify", run3["store"], env=env)
    assert p.returncode == 1 and "not checked" in p.stderr and "damaged" not in p.stderr, (p.stdout, p.stderr)


def test_a_restore_never_writes_into_the_store(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    before = sorted(p.relative_to(store).as_posix() for p in store.rglob("*"))
    for dest in (store, store / "objects", store / "new"):
        p = cli("restore", store, "latest", dest, "--force")
        assert p.returncode == 2 and "store" in p.stderr, (dest, p.stderr)
    assert sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) == before


def test_a_state_dict_restore_to_a_dangling_link_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with tpde.Store(store) as st:
        st.add({"w": torch.arange(6.0)}, step=1)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "nowhere" / "deep")
    with tpde.Store(store) as st, pytest.raises(TPDEIOError) as e:
        st.restore(1, link)
    assert e.value.errno == errno.ENOENT
    assert not (tmp_path / "nowhere").exists()


def test_stats_and_info_survive_a_lost_record(tmp_path: Path, run3, cli) -> None:
    store = run3["store"]
    with tpde.Store(store) as st, st._reader() as rd:
        obj = rd.entry(20)["object"]
    for name in (obj, obj + ".copy"):
        (store / "objects" / obj[:2] / name).unlink()
    with tpde.Store(store) as st:
        s = st.stats()
    assert [r["step"] for r in s["checkpoints"]] == [10, 30] and list(s["damaged"]) == ["20"]
    p = cli("info", store)
    assert p.returncode == 1 and "damaged: checkpoint 20 (" in p.stdout, (p.stdout, p.stderr)
    assert cli("stats", store).returncode == 0


def test_a_device_is_no_source_and_a_stream_stops_on_sigterm(tmp_path: Path, run3, cli, py_env) -> None:
    store = run3["store"]
    p = cli("add", store, "/dev/zero", "--step", "99", timeout=60)
    assert p.returncode == 1 and "device" in p.stderr, p.stderr
    fifo = tmp_path / "stream"
    os.mkfifo(fifo)
    proc = subprocess.Popen([sys.executable, "-m", "tpde", "add", str(store), str(fifo), "--step", "99", "-q"],
                            env=py_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    writer = open(fifo, "wb")  # blocks until the add opens the stream
    try:
        writer.write(b"x" * (4 << 20))
        writer.flush()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        try:
            writer.close()
        except BrokenPipeError:
            pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, err)
    with tpde.Store(store) as st:
        assert st.steps() == [10, 20, 30]
