"""Permission errors of the store are named as what they are: a
TPDEIOError with errno EACCES naming the path the OS refused, from the
Python API, and one `tpde: error: ...` line with exit status 1 from the CLI
(issue 17, item 13). Before, an unreadable folder was "holds no file", an
unreadable store "not a tpde store", an unreadable objects/ "record object
is missing".

Every case is a real chmod on a real folder. Root ignores file modes
(CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), so when the tests run as root the
operation runs in a subprocess started through setpriv with those two
capabilities dropped; the fixture first checks that the drop works (a
chmod 000 file cannot be read) and skips, saying why, where it does not.
The stores themselves are built in this process, before any chmod."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

CAPS = "-dac_override,-dac_read_search"

# Runs in the unprivileged subprocess: each snippet of the JSON list
# argv[1], with the names it uses, then one JSON line saying how each ended.
_RUNNER = r"""
import json, sys
import tpde
from tpde.errors import TPDEIOError
outs = []
for snippet in json.loads(sys.argv[1]):
    try:
        exec(snippet, {"tpde": tpde, "args": sys.argv[2:]})
        outs.append({"ok": True})
    except BaseException as e:
        outs.append({"ok": False, "type": type(e).__name__, "tpde_io": isinstance(e, TPDEIOError),
                     "errno": getattr(e, "errno", None), "message": str(e)})
print(json.dumps(outs))
"""


class Unprivileged:
    """Runs Python snippets and `python -m tpde` without the power to
    ignore file modes."""

    def __init__(self, prefix: List[str], env: Dict[str, str]) -> None:
        self.prefix = prefix
        self.env = env

    def run(self, argv: List[str]) -> subprocess.CompletedProcess:
        return subprocess.run([*self.prefix, sys.executable, *argv], env=self.env, capture_output=True, text=True,
                              timeout=300)

    def api(self, snippet: str, *args: Any) -> Dict[str, Any]:
        return self.api_each([snippet], *args)[0]

    def api_each(self, snippets: List[str], *args: Any) -> List[Dict[str, Any]]:
        """How each snippet ended, run one after another in one process."""
        p = self.run(["-c", _RUNNER, json.dumps(snippets), *map(str, args)])
        assert p.returncode == 0 and p.stdout.strip(), (p.returncode, p.stdout, p.stderr)
        return json.loads(p.stdout.strip().splitlines()[-1])

    def cli(self, *args: Any) -> subprocess.CompletedProcess:
        return self.run(["-m", "tpde", *map(str, args)])


@pytest.fixture(scope="session")
def unprivileged(py_env: Dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Unprivileged:
    prefix: List[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root, and setpriv (util-linux) is missing: root ignores file modes, so no "
                        "permission error can be made here")
        prefix = [setpriv, f"--bounding-set={CAPS}", f"--inh-caps={CAPS}", "--"]
    u = Unprivileged(prefix, py_env)
    probe = tmp_path_factory.mktemp("probe") / "secret"
    probe.write_bytes(b"x")
    probe.chmod(0)
    try:
        p = u.run(["-c", "import sys; open(sys.argv[1], 'rb').read()", str(probe)])
    except OSError as e:
        pytest.skip(f"cannot start {prefix or [sys.executable]}: {e}")
    finally:
        probe.chmod(0o600)
    if p.returncode == 0:
        pytest.skip(f"the subprocess ({' '.join(prefix) or 'this user'}) still reads a chmod 000 file: it keeps "
                    "the capability to ignore file modes, so no permission error can be made here")
    if "PermissionError" not in p.stderr:
        pytest.skip(f"the unprivileged subprocess did not start as expected: {p.stderr.strip()[-500:]}")
    return u


@contextlib.contextmanager
def chmod(path: Path, mode: int) -> Iterator[None]:
    """path with mode, then its old mode again (so tmp cleanup, and later
    steps of the test, can reach it)."""
    old = path.stat().st_mode & 0o7777
    path.chmod(mode)
    try:
        yield
    finally:
        path.chmod(old)


def assert_eacces(out: Dict[str, Any], *names: Path) -> None:
    assert not out["ok"], out
    assert out["tpde_io"] and out["errno"] == errno.EACCES, out
    for n in names:
        assert str(n) in out["message"], out
    assert "permission denied" in out["message"].lower(), out


def assert_cli_eacces(p: subprocess.CompletedProcess, *names: Path) -> str:
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tpde: error: "), p.stderr
    for n in names:
        assert str(n) in lines[0], p.stderr
    assert "permission denied" in lines[0].lower(), p.stderr
    return lines[0]


def checkpoint(root: Path, make_safetensors: Any, seed: int = 0) -> Path:
    """A small checkpoint folder: a tensor file, a JSON file, a subfolder."""
    root.mkdir(parents=True)
    make_safetensors(root / "model.safetensors", seed=seed)
    (root / "config.json").write_text('{"hidden_size": 64}\n')
    (root / "sub").mkdir()
    (root / "sub" / "notes.txt").write_text(f"seed {seed}\n")
    return root


@pytest.fixture
def store(tmp_path: Path, make_safetensors: Any) -> Path:
    """A store of two checkpoints (steps 1 and 2), built with privileges."""
    import tpde

    path = tmp_path / "run.tpde"
    with tpde.Store(path) as s:
        s.add(checkpoint(tmp_path / "ck1", make_safetensors, 1), step=1)
        s.add(checkpoint(tmp_path / "ck2", make_safetensors, 2), step=2)
    return path


def listing(folder: Path) -> List[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --- adding ---------------------------------------------------------------


def test_add_folder_with_unreadable_subfolder(tmp_path: Path, unprivileged: Unprivileged, make_safetensors) -> None:
    ck = checkpoint(tmp_path / "ck", make_safetensors)
    st = tmp_path / "run.tpde"
    with chmod(ck / "sub", 0):
        out = unprivileged.api("tpde.Store(args[0]).add(args[1], step=1)", st, ck)
        assert_eacces(out, ck / "sub")
        p = unprivileged.cli("add", st, ck, "--step", "1", "-q")
        assert_cli_eacces(p, ck / "sub")
    # Nothing was committed: the store holds no checkpoint.
    import tpde

    assert not (st / "tpde-store.json").exists() or tpde.Store(st).steps() == []


def test_add_unreadable_file(tmp_path: Path, unprivileged: Unprivileged, make_safetensors) -> None:
    ck = checkpoint(tmp_path / "ck", make_safetensors)
    st = tmp_path / "run.tpde"
    for f in (ck / "config.json", ck / "sub" / "notes.txt", ck / "model.safetensors"):
        with chmod(f, 0):
            # In an added folder, and named directly.
            assert_eacces(unprivileged.api("tpde.Store(args[0]).add(args[1], step=1)", st, ck), f)
            assert_eacces(unprivileged.api("tpde.Store(args[0]).add(args[1], step=1)", st, f), f)
            assert_cli_eacces(unprivileged.cli("add", st, ck, "--step", "1", "-q"), f)


# --- the store itself -----------------------------------------------------


@pytest.mark.parametrize("mode", [0o000, 0o311], ids=["000", "311-searchable-not-listable"])
def test_unreadable_store_folder(store: Path, unprivileged: Unprivileged, mode: int) -> None:
    with chmod(store, mode):
        assert_eacces(unprivileged.api("tpde.Store(args[0]).steps()", store), store)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).load(1)", store), store)
        assert_cli_eacces(unprivileged.cli("ls", store), store)
        assert_cli_eacces(unprivileged.cli("info", store), store)
        assert_cli_eacces(unprivileged.cli("info", store, "1"), store)
        assert_cli_eacces(unprivileged.cli("verify", store), store)


@pytest.mark.parametrize("mode", [0o000, 0o311], ids=["000", "311-searchable-not-listable"])
def test_unreadable_objects(store: Path, tmp_path: Path, unprivileged: Unprivileged, mode: int) -> None:
    objects = store / "objects"
    dest = tmp_path / "restored"
    with chmod(objects, mode):
        assert_eacces(unprivileged.api("tpde.Store(args[0]).load(2)", store), objects)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).load(1)", store), objects)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).restore(1, args[1])", store, dest), objects)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).verify()", store), objects)
        assert_cli_eacces(unprivileged.cli("restore", store, "1", dest), objects)
        assert_cli_eacces(unprivileged.cli("verify", store), objects)
        assert_cli_eacces(unprivileged.cli("ls", store), objects)
    assert not dest.exists()


def test_unreadable_object_fanout_folder(store: Path, tmp_path: Path, unprivileged: Unprivileged) -> None:
    """One folder below objects/ (objects/ab/) unreadable: whatever needs
    an object there is refused with EACCES naming that folder, never told
    the checkpoint is damaged or its object missing. verify needs every
    object, so it always refuses."""
    dest = tmp_path / "restored"
    subs = sorted(p for p in (store / "objects").iterdir() if p.is_dir())
    assert len(subs) > 1
    refused = 0
    ops = ["verify()", "verify(deep=False)", "restore(1, args[1])", "restore(2, args[1])", "load(1)", "load(2)",
           "list()", "info(1)", "info(2)"]
    for sub in subs:
        with chmod(sub, 0):
            # A restore that needs nothing in sub succeeds; the next one
            # restores into the same dest, so each removes it afterwards.
            outs = unprivileged.api_each([f"tpde.Store(args[0]).{op}\nimport shutil; shutil.rmtree(args[1])"
                                          if op.startswith("restore") else f"tpde.Store(args[0]).{op}"
                                          for op in ops], store, dest)
            assert_eacces(outs[0], sub)
            assert_eacces(outs[1], sub)
            for op, out in zip(ops[2:], outs[2:]):
                if out["ok"]:  # needs no object in sub
                    continue
                refused += 1
                assert_eacces(out, sub)
            assert not dest.exists()
            if sub == subs[0]:  # the CLI's verify is the API's; once is enough
                assert_cli_eacces(unprivileged.cli("verify", store), sub)
            p = unprivileged.cli("ls", store)
            if p.returncode != 0:
                assert_cli_eacces(p, sub)
            assert "damaged" not in p.stdout + p.stderr
    assert refused  # some object lies in every folder; something needed one


def test_unreadable_record_file(store: Path, unprivileged: Unprivileged) -> None:
    """A record file chmod 000: its copy serves the reads, but verify
    cannot tell whether it is intact and refuses (and repair does not
    write over it); with the copy unreadable too, reads refuse."""
    import tpde

    with tpde.Store(store) as s, s._reader() as rd:
        record = rd.manifest["checkpoints"][0]["object"]
    primary = store / "objects" / record[:2] / record
    copy = primary.with_name(record + ".copy")
    assert primary.is_file() and copy.is_file()
    before = primary.read_bytes()
    with chmod(primary, 0):
        assert unprivileged.api("tpde.Store(args[0]).info(1)", store)["ok"]
        assert_eacces(unprivileged.api("tpde.Store(args[0]).verify()", store), primary)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).verify(repair=True)", store), primary)
        assert_cli_eacces(unprivileged.cli("verify", store), primary)
        with chmod(copy, 0):
            assert_eacces(unprivileged.api("tpde.Store(args[0]).info(1)", store), primary)
            assert_eacces(unprivileged.api("tpde.Store(args[0]).list()", store), primary)
            assert_cli_eacces(unprivileged.cli("info", store, "1"), primary)
        with chmod(copy, 0), chmod(primary, 0o644):
            assert_eacces(unprivileged.api("tpde.Store(args[0]).verify()", store), copy)
    assert primary.read_bytes() == before


def test_unreadable_manifest_files(store: Path, unprivileged: Unprivileged) -> None:
    """The newest manifest and its copy chmod 000: EACCES, not "both
    damaged"; one of them alone: reads are served by the other, verify
    refuses."""
    manifests = store / "manifests"
    newest = sorted(p for p in manifests.iterdir() if p.name.endswith(".json"))[-1]
    copy = newest.with_name(newest.name + ".copy")
    assert copy.is_file()
    with chmod(newest, 0):
        assert unprivileged.api("tpde.Store(args[0]).steps()", store)["ok"]
        assert_eacces(unprivileged.api("tpde.Store(args[0]).verify()", store), newest)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).verify(repair=True)", store), newest)
        with chmod(copy, 0):
            assert_eacces(unprivileged.api("tpde.Store(args[0]).steps()", store), newest)
            assert_cli_eacces(unprivileged.cli("ls", store), newest)
            assert_cli_eacces(unprivileged.cli("verify", store), newest)


def test_unreadable_manifests(store: Path, unprivileged: Unprivileged) -> None:
    manifests = store / "manifests"
    with chmod(manifests, 0):
        assert_eacces(unprivileged.api("tpde.Store(args[0]).steps()", store), manifests)
        assert_eacces(unprivileged.api("tpde.Store(args[0]).load()", store), manifests)
        assert_cli_eacces(unprivileged.cli("ls", store), manifests)
        assert_cli_eacces(unprivileged.cli("info", store), manifests)


# --- restoring ------------------------------------------------------------


def test_restore_into_unwritable_parent(store: Path, tmp_path: Path, unprivileged: Unprivileged) -> None:
    parent = tmp_path / "locked"
    parent.mkdir()
    dest = parent / "restored"
    with chmod(parent, 0o555):
        assert_eacces(unprivileged.api("tpde.Store(args[0]).restore(1, args[1])", store, dest), dest)
        assert_cli_eacces(unprivileged.cli("restore", store, "1", dest), dest)
    assert listing(parent) == []


def test_restore_into_an_existing_folder_needs_no_writable_parent(store: Path, tmp_path: Path,
                                                                  unprivileged: Unprivileged) -> None:
    """An existing dest is staged inside itself: a user who may write a
    folder but not its parent can still restore into it, and the parent
    is never written."""
    parent = tmp_path / "locked"
    parent.mkdir()
    dest = parent / "restored"
    dest.mkdir()
    with chmod(parent, 0o555):
        p = unprivileged.cli("restore", store, "1", dest)
        assert p.returncode == 0, p.stderr
    assert os.listdir(parent) == ["restored"]
    assert sorted(os.listdir(dest)) and not [n for n in os.listdir(dest) if "tpde-restore" in n]


def test_restore_state_dict_into_unwritable_parent(tmp_path: Path, unprivileged: Unprivileged) -> None:
    """A state dict added from Python is restored by Python (torch.save),
    not by Go: the same promise holds there."""
    import torch

    import tpde

    st = tmp_path / "sd.tpde"
    with tpde.Store(st) as s:
        s.add({"w": torch.arange(12, dtype=torch.float32)}, step=1)
    parent = tmp_path / "locked"
    parent.mkdir()
    dest = parent / "restored"
    with chmod(parent, 0o555):
        assert_eacces(unprivileged.api("tpde.Store(args[0]).restore(1, args[1])", st, dest), dest)
        assert_cli_eacces(unprivileged.cli("restore", st, "1", dest), dest)
    assert listing(parent) == []
