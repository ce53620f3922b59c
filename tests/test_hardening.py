"""Issue 7: tpde under conditions nobody plans for.

Each test exercises the real condition: a real FIFO and pipe, a real
thread race on the default thread count, a real truncation of a mapped
file, a real fork (and a real DataLoader worker), a real kill -9, real
signals, a real umask, a real full disk. Most run tpde in a child process,
so that a crash or a hang is a test failure instead of the end of pytest.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

import tpde
from crc32c import crc32c

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc, FIFOs and fork")


def _tpde(py_env: Dict[str, str], *args: str, umask: int | None = None, **kw) -> subprocess.Popen:
    pre = (lambda: os.umask(umask)) if umask is not None else None
    return subprocess.Popen([sys.executable, "-m", "tpde", *args], env=py_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=pre, **kw)


def _one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("tpde: error: ") and "Traceback" not in stderr, stderr
    return lines[0]


def _names(d: Path) -> List[str]:
    return sorted(p.name for p in d.iterdir())


def _wait_for_output_in_progress(proc: subprocess.Popen, out_dir: Path, timeout: float = 60) -> None:
    """Wait until proc has a file open in out_dir (its temporary output):
    the input is then mapped and the work under way. (An unnamed O_TMPFILE
    file shows in /proc as '<dir>/#<inode> (deleted)'.)"""
    deadline = time.monotonic() + timeout
    prefix = f"{out_dir}/"
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"finished before it could be interrupted: {proc.communicate()}"
        try:
            for fd in os.listdir(f"/proc/{proc.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{proc.pid}/fd/{fd}").startswith(prefix):
                        return
                except OSError:
                    pass
        except OSError:
            pass
        time.sleep(0.005)
    proc.kill()
    raise AssertionError("the output file never appeared")


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory) -> Tuple[Path, Path]:
    """A 256 MiB bf16 safetensors file (slow enough to interrupt on one
    thread), and its compressed form."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("big")
    g = torch.Generator().manual_seed(11)
    block = (torch.randn(1 << 21, generator=g) * 0.02).to(torch.bfloat16)
    tensors = {f"layer{i}.weight": block.clone().view(1024, 2048) for i in range(64)}
    src = d / "model.safetensors"
    save_file(tensors, str(src))
    packed = Path(tpde.compress_file(src, d / "model.safetensors.tpde"))
    return src, packed


# --- 1. streams: no silent empty output --------------------------------------------------------------


def test_compressing_a_fifo_reads_it_all(tmp_path: Path, make_safetensors, py_env) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = subprocess.Popen(["sh", "-c", f"cat '{src}' > '{fifo}'"])
    proc = _tpde(py_env, "compress", str(fifo), "-o", str(tmp_path / "out.tpde"), "--quiet")
    _, err = proc.communicate(timeout=120)
    assert writer.wait(timeout=60) == 0
    assert proc.returncode == 0, err
    info = tpde.file_info(tmp_path / "out.tpde")
    assert info["original_size"] == src.stat().st_size and info["source"] == "safetensors"
    back = tpde.decompress_file(tmp_path / "out.tpde", tmp_path / "back")
    assert Path(back).read_bytes() == src.read_bytes()
    assert _names(tmp_path) == ["back", "in.fifo", "m.safetensors", "out.tpde"]


def test_compressing_stdin_and_a_process_substitution(tmp_path: Path, make_safetensors, py_env) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    cmd = f"'{sys.executable}' -m tpde"
    for name, shell in (("stdin", f"cat '{src}' | {cmd} compress /dev/stdin -o '{tmp_path}/stdin.tpde'"),
                        ("procsub", f"{cmd} compress <(cat '{src}') -o '{tmp_path}/procsub.tpde'")):
        p = subprocess.run(["bash", "-c", shell], env=py_env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        out = tpde.decompress_file(tmp_path / f"{name}.tpde", tmp_path / f"{name}.back")
        assert Path(out).read_bytes() == src.read_bytes(), name
        assert "ratio 1.000x" not in p.stdout and "-> 0 B" not in p.stdout, p.stdout


def test_compressing_a_proc_file_keeps_its_content(tmp_path: Path) -> None:
    want = Path("/proc/version").read_bytes()
    assert want and os.stat("/proc/version").st_size == 0  # the case: a regular file whose size reads 0
    out = tpde.decompress_file(tpde.compress_file("/proc/version", tmp_path / "v.tpde"), tmp_path / "v")
    assert Path(out).read_bytes() == want


def test_decompressing_from_a_pipe(tmp_path: Path, make_safetensors, py_env) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    packed = tpde.compress_file(src, tmp_path / "m.tpde")
    shell = f"cat '{packed}' | '{sys.executable}' -m tpde decompress /dev/stdin -o '{tmp_path}/back' --quiet"
    p = subprocess.run(["bash", "-c", shell], env=py_env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "back").read_bytes() == src.read_bytes()


# --- 2. the default thread count changing under a running call ------------------------------------------


def test_set_num_threads_while_another_thread_codes(run_py) -> None:
    """set_num_threads(16) during compress_delta(threads=0) on another thread
    aborted the process (an index out of range in a worker goroutine)."""
    code = textwrap.dedent("""
        import threading, numpy as np, tpde
        rng = np.random.default_rng(1)
        ref = rng.standard_normal(64 * 1024).astype(np.float32)
        x = ref.copy(); x[::13] += 1
        stop = threading.Event()
        def toggle():
            while not stop.is_set():
                for n in (1, 16, 2, 7):
                    tpde.set_num_threads(n)
        t = threading.Thread(target=toggle); t.start()
        try:
            for _ in range(300):
                blob = tpde.compress_delta(x, ref, chunk_elems=1024)
                assert (tpde.decompress_delta(blob, ref, like="numpy") == x).all()
                k = tpde.compress_tensor(x, chunk_elems=1024)
                assert (tpde.decompress_tensor(k, like="numpy") == x).all()
        finally:
            stop.set(); t.join()
        print("ok")
    """)
    p = run_py("-c", code, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


# --- 3. a file truncated while it is mapped -------------------------------------------------------------


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_an_input_truncated_while_read_is_an_error_not_a_crash(command: str, big_checkpoint, tmp_path: Path,
                                                               py_env) -> None:
    src, packed = big_checkpoint
    victim = tmp_path / ("in.safetensors" if command == "compress" else "in.tpde")
    victim.write_bytes((src if command == "compress" else packed).read_bytes())
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = _tpde(py_env, command, str(victim), "-o", str(out_dir / "result"), "--threads", "1", "--quiet")
    _wait_for_output_in_progress(proc, out_dir)
    os.truncate(victim, 1 << 20)  # a trainer rewriting the checkpoint
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    line = _one_error_line(err)
    assert str(victim) in line and "changed while tpde was reading it" in line, line
    assert _names(out_dir) == [], "the temporary output is gone"


def test_load_checkpoint_of_a_file_truncated_while_decoding(tmp_path: Path, run_py) -> None:
    """load_checkpoint(path) maps the file; another process shortening it
    while the library decodes from the mapping raised SIGBUS."""
    code = textwrap.dedent(f"""
        import os, torch, tpde
        from tpde import _bundle
        enc = tpde.TemporalPositionDeltaEncoder(output_dir={str(tmp_path)!r})
        enc.save_checkpoint({{"w": torch.randn(1 << 22), "b": torch.randn(1 << 22)}}, epoch=1)
        path = {str(tmp_path / "checkpoint_epoch_1.tpde")!r}
        real = _bundle.decode
        def truncate_then_decode(*a, **kw):
            os.truncate(path, 4096)   # the mapping is live; the library is about to read it
            return real(*a, **kw)
        _bundle.decode = truncate_then_decode
        try:
            tpde.load_checkpoint(path)
        except tpde.TPDEIOError as e:
            print("TPDEIOError", e.errno, e)
    """)
    p = run_py("-c", code, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.startswith(f"TPDEIOError {errno.EIO} "), p.stdout
    assert "became unreadable" in p.stdout


# --- 4. fork -------------------------------------------------------------------------------------------

_FORK_CHILD = textwrap.dedent("""
    import os, sys, time, json, numpy as np, tpde
    def in_child(fn):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                res = fn()
            except BaseException as e:
                res = [type(e).__name__, str(e)]
            os.write(w, json.dumps(res).encode())
            os._exit(0)
        os.close(w)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return json.loads(os.read(r, 1 << 20).decode())
            time.sleep(0.01)
        os.kill(pid, 9); os.waitpid(pid, 0)
        return ["hang"]
    x = np.arange(1 << 20, dtype=np.float32)
    def work():
        return bool((tpde.decompress_tensor(tpde.compress_tensor(x, threads=2), like="numpy", threads=2) == x).all())
    before = in_child(work)          # forked before the parent used tpde: fine
    work()                           # the parent uses tpde (the Go runtime starts)
    after = in_child(work)           # forked after: refused, not hung
    print(json.dumps({"before": before, "after": after, "parent": work()}))
""")


def test_a_forked_child_refuses_with_a_clear_error_instead_of_hanging(run_py) -> None:
    p = run_py("-c", _FORK_CHILD, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout)
    assert r["before"] is True and r["parent"] is True, r
    name, message = r["after"]
    assert name == "ForkedProcessError", r
    assert "fork" in message and "'spawn'" in message, message


_DATALOADER = textwrap.dedent("""
    import sys, torch, tpde
    from torch.utils.data import DataLoader, Dataset

    class Compressing(Dataset):
        def __len__(self):
            return 4
        def __getitem__(self, i):
            t = torch.full((4096,), float(i))
            return tpde.decompress_tensor(tpde.compress_tensor(t, threads=2), threads=2)

    if __name__ == "__main__":
        tpde.decompress_tensor(tpde.compress_tensor(torch.ones(1 << 16)))  # the parent used tpde
        ctx = sys.argv[1]
        try:
            batches = list(DataLoader(Compressing(), batch_size=2, num_workers=2, multiprocessing_context=ctx))
            print("ok", sum(float(b.sum()) for b in batches))
        except tpde.ForkedProcessError as e:
            print("ForkedProcessError", e)
""")


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers(context: str, tmp_path: Path, run_py) -> None:
    """DataLoader(num_workers=2) workers calling tpde hung in 10 of 10 runs
    with the fork start method. They now get ForkedProcessError; with spawn
    (the documented remedy) they work."""
    script = tmp_path / "loader.py"
    script.write_text(_DATALOADER)
    p = run_py(str(script), context, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    if context == "fork":
        assert p.stdout.startswith("ForkedProcessError"), p.stdout + p.stderr[-2000:]
        assert "spawn" in p.stdout
    else:
        assert p.stdout.split() == ["ok", str(4096.0 * (0 + 1 + 2 + 3))], p.stdout + p.stderr[-2000:]


# --- 5. bounded decoding -------------------------------------------------------------------------------


def _claiming(frame: bytes, nelem: int) -> bytes:
    """An identical-delta frame (header only) of a 1-d F32 tensor, rewritten
    to claim nelem elements, with its header CRC recomputed."""
    b = bytearray(frame)
    b[16:24] = (4 * nelem).to_bytes(8, "little")
    b[32:40] = nelem.to_bytes(8, "little")
    b[-4:] = crc32c(bytes(b[:-4])).to_bytes(4, "little")
    return bytes(b)


def test_a_frame_claiming_a_terabyte_raises_a_typed_error(monkeypatch) -> None:
    x = np.zeros(16, dtype=np.float32)
    header_only = tpde.compress_delta(x, x)
    assert tpde.inspect_delta(header_only)["identical"]
    huge = _claiming(header_only, 1 << 38)  # 1 TiB of float32, in 64 bytes
    assert tpde.inspect_delta(huge)["raw_size"] == 1 << 40
    for like in ("numpy", "torch"):
        with pytest.raises(tpde.DecodeLimitError, match="1,099,511,627,776 bytes"):
            tpde.decompress_delta(huge, x, like=like)  # default limit: physical memory
        # Past the limit, the allocation itself fails: a TPDEError too, not
        # numpy's MemoryError or torch's RuntimeError.
        with pytest.raises(tpde.TPDEMemoryError):
            tpde.decompress_delta(huge, x, like=like, max_output_bytes=1 << 41)
    monkeypatch.setenv("TPDE_MAX_OUTPUT", "1K")
    blob = tpde.compress_tensor(np.zeros(1024, dtype=np.float32))
    with pytest.raises(tpde.DecodeLimitError, match="limit of 1,024"):
        tpde.decompress_tensor(blob)
    assert tpde.decompress_tensor(blob, max_output_bytes=4096).numel() == 1024
    monkeypatch.setenv("TPDE_MAX_OUTPUT", "lots")
    with pytest.raises(tpde.InvalidArgumentError, match="TPDE_MAX_OUTPUT"):
        tpde.decompress_tensor(blob)


def test_decompress_file_honours_its_limit(tmp_path: Path, make_safetensors, monkeypatch) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    packed = tpde.compress_file(src, tmp_path / "m.tpde")
    size = src.stat().st_size
    with pytest.raises(tpde.DecodeLimitError):
        tpde.decompress_file(packed, tmp_path / "out", max_output_bytes=size - 1)
    monkeypatch.setenv("TPDE_MAX_OUTPUT", str(size - 1))
    with pytest.raises(tpde.DecodeLimitError):
        tpde.decompress_file(packed, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert Path(tpde.decompress_file(packed, tmp_path / "out", max_output_bytes=size)).stat().st_size == size


def test_info_of_a_file_with_many_segments_is_bounded(tmp_path: Path, run_py) -> None:
    """A safetensors file of 50,000 one-element tensors: info lists the
    first --limit segments and checks them all."""
    import torch
    from safetensors.torch import save_file

    src = tmp_path / "many.safetensors"
    save_file({f"t{i}": torch.tensor([float(i)]) for i in range(50_000)}, str(src))
    packed = tpde.compress_file(src, tmp_path / "many.tpde")
    info = tpde.file_info(packed, max_segments=100)
    assert info["segment_count"] > 50_000 and len(info["segments"]) == 100
    p = run_py("-m", "tpde", "info", str(packed), "--limit", "5")
    assert p.returncode == 0, p.stderr
    assert f"and {info['segment_count'] - 5:,} more segments" in p.stdout


# --- 6. errors that name the problem -----------------------------------------------------------------


def test_io_errors_carry_errno_and_name_the_problem(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(tmp_path / "missing.safetensors")
    assert e.value.errno == errno.ENOENT and "missing.safetensors" in str(e.value)
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(tmp_path, tmp_path / "x.tpde")
    assert e.value.errno == errno.EISDIR and "is a directory" in str(e.value)
    (tmp_path / "outdir").mkdir()
    # overwrite=True: without it these exist and are refused as such
    # (test_files.py); with it they are still not replaced.
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(src, tmp_path / "outdir", overwrite=True)
    assert e.value.errno == errno.EISDIR and "outdir: is a directory" in str(e.value)
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(src, "/dev/null", overwrite=True)
    assert e.value.errno == errno.EINVAL and "not a regular file" in str(e.value)
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(src, tmp_path / "no" / "such" / "dir.tpde")
    assert e.value.errno == errno.ENOENT
    assert isinstance(e.value, OSError)


# --- 7. files: kill -9, signals, permissions, symlinks, long names, full disk ---------------------------


@pytest.mark.parametrize("command", ["compress", "decompress"])
def test_kill_9_leaves_no_temporary_file(command: str, big_checkpoint, tmp_path: Path, py_env) -> None:
    src, packed = big_checkpoint
    proc = _tpde(py_env, command, str(src if command == "compress" else packed), "-o", str(tmp_path / "out"),
                 "--threads", "1", "--quiet")
    _wait_for_output_in_progress(proc, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert _names(tmp_path) == []


def test_kill_9_during_a_checkpoint_save_leaves_no_temporary_file(tmp_path: Path, py_env) -> None:
    code = textwrap.dedent(f"""
        import torch, tpde
        sd = {{f"w{{i}}": torch.randn(1 << 22) for i in range(24)}}
        tpde.TemporalPositionDeltaEncoder(output_dir={str(tmp_path)!r}, threads=1).save_checkpoint(sd, epoch=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=py_env, stderr=subprocess.PIPE, text=True)
    _wait_for_output_in_progress(proc, tmp_path, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _names(tmp_path) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_promptly_and_leaves_nothing(sig: int, big_checkpoint, tmp_path: Path, py_env) -> None:
    src, _ = big_checkpoint
    proc = _tpde(py_env, "compress", str(src), "-o", str(tmp_path / "out.tpde"), "--threads", "1")
    _wait_for_output_in_progress(proc, tmp_path)
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    stopped_after = time.monotonic() - t0
    assert proc.returncode == 128 + sig, (out, err)
    line = _one_error_line(err)
    assert f"interrupted by {signal.Signals(sig).name}" in line and "nothing was written" in line, line
    assert out == "", "no success summary after an interrupt"
    assert _names(tmp_path) == []
    assert stopped_after < 30  # a generous sanity bound, not a timing: it must not run to the end of a long job


def test_ctrl_c_in_a_library_call_stops_it_and_leaves_nothing(big_checkpoint, tmp_path: Path, run_py) -> None:
    """compress_file waits on a helper thread, so Ctrl-C (a real SIGINT) is
    handled while the library works; it cancels the work, which removes
    its output before KeyboardInterrupt propagates."""
    src, _ = big_checkpoint
    code = textwrap.dedent(f"""
        import os, signal, threading, time, tpde
        out_dir = {str(tmp_path)!r}
        def interrupt_when_writing():
            while not any(os.readlink(f"/proc/self/fd/{{fd}}").startswith(out_dir + "/")
                          for fd in os.listdir("/proc/self/fd") if os.path.exists(f"/proc/self/fd/{{fd}}")):
                time.sleep(0.002)
            os.kill(os.getpid(), signal.SIGINT)
        threading.Thread(target=interrupt_when_writing, daemon=True).start()
        try:
            tpde.compress_file({str(src)!r}, os.path.join(out_dir, "out.tpde"), threads=1)
            print("completed")
        except KeyboardInterrupt:
            print("interrupted", sorted(os.listdir(out_dir)))
    """)
    # The signal is sent once the output is open; on a loaded machine the
    # library may finish before Python delivers it. That race lost is no
    # failure if the output is then whole: try again, up to three times.
    # An interrupt must always leave nothing, and one must land.
    outcomes = []
    for _ in range(3):
        for f in os.listdir(tmp_path):
            os.remove(tmp_path / f)
        p = run_py("-c", code, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        outcomes.append(p.stdout.strip())
        if outcomes[-1] != "completed":
            break
        assert sorted(os.listdir(tmp_path)) == ["out.tpde"]
        tpde.decompress_file(tmp_path / "out.tpde", tmp_path / "back")  # whole: it decodes
    assert outcomes[-1] == "interrupted []", outcomes


@pytest.mark.parametrize("umask,src_mode,want", [(0o077, 0o644, 0o600), (0o022, 0o600, 0o600),
                                                 (0o022, 0o644, 0o644), (0o002, 0o664, 0o664),
                                                 (0o027, 0o666, 0o640)])
def test_new_files_get_the_mode_the_umask_gives_and_never_more_than_the_source(
        umask: int, src_mode: int, want: int, tmp_path: Path, make_safetensors, py_env) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    os.chmod(src, src_mode)
    packed, back = tmp_path / "m.tpde", tmp_path / "back"
    for args, out in ((["compress", str(src), "-o", str(packed)], packed),
                      (["decompress", str(packed), "-o", str(back)], back)):
        p = _tpde(py_env, *args, "--quiet", umask=umask)
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert stat.S_IMODE(out.stat().st_mode) == want, (args[0], oct(umask), oct(src_mode), oct(out.stat().st_mode))
        # The restored file is made from the compressed one: give it the
        # original's mode, so the same rule gives the same answer.
        os.chmod(packed, src_mode)


def test_a_symlink_destination_is_written_through_with_overwrite(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    os.chmod(src, 0o644)
    store = tmp_path / "store"
    store.mkdir()
    real = store / "m.tpde"
    real.write_bytes(b"old")
    os.chmod(real, 0o640)
    link = tmp_path / "current.tpde"
    link.symlink_to(real)
    tpde.compress_file(src, link, overwrite=True)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert stat.S_IMODE(real.stat().st_mode) == 0o640, "the target keeps its own mode"
    assert Path(tpde.decompress_file(link, tmp_path / "back")).read_bytes() == src.read_bytes()
    assert _names(store) == ["m.tpde"]


def test_destination_names_up_to_255_bytes(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    for n in (245, 250, 255):
        out = tmp_path / ("n" * (n - 5) + ".tpde")
        assert len(out.name.encode()) == n
        tpde.compress_file(src, out)
        assert Path(tpde.decompress_file(out, tmp_path / f"back{n}")).read_bytes() == src.read_bytes()


def test_a_full_disk_is_an_enospc_error_and_leaves_nothing(big_checkpoint, tmp_path: Path, py_env) -> None:
    """A real full filesystem: an 8 MiB tmpfs, mounted in a private mount
    namespace (unshare) so that no root privilege is needed on the host."""
    src, packed = big_checkpoint
    mnt = tmp_path / "small"
    mnt.mkdir()
    code = textwrap.dedent(f"""
        import os, tpde
        for fn, a in ((tpde.compress_file, {str(src)!r}), (tpde.decompress_file, {str(packed)!r})):
            try:
                fn(a, {str(mnt / "out")!r})
                print("no error")
            except tpde.TPDEIOError as e:
                print(e.errno, os.listdir({str(mnt)!r}), e)
    """)
    script = tmp_path / "full.py"
    script.write_text(code)
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here (unshare -rm: {probe.stderr.strip()}); "
                    "the full-disk path is untested on this machine")
    shell = f"mount -t tmpfs -o size=8m tmpfs '{mnt}' && exec '{sys.executable}' '{script}'"
    p = subprocess.run(["unshare", "-rm", "sh", "-c", shell], env=py_env, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = p.stdout.splitlines()
    assert len(lines) == 2, p.stdout
    for line in lines:
        assert line.startswith(f"{errno.ENOSPC} [] "), line  # errno, and nothing left on the full disk
        assert "no space left on device" in line
