"""Legacy (pre-zip) torch.save files as containers: one typed frame per storage.

Files are made here with torch.save(..., _use_new_zipfile_serialization=False),
and the golden ones in core/torchlegacy/testdata by its make.py, which
describes them with Python's own unpickler rather than tpde's scanner.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

import tpde
from tpde import _torchfile, _torchlegacy, codec
from tpde.errors import TPDEError

GOLDEN = Path(__file__).resolve().parent.parent / "core" / "torchlegacy" / "testdata"


def legacy_save(obj: Any, path: Path, **kw: Any) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False, **kw)
    return path


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def round_trip(src: Path, tmp: Path) -> Dict[str, Any]:
    """compress then decompress src; assert byte-identical; return info."""
    packed = tpde.compress_file(src, tmp / (src.name + ".tpde"))
    back = tpde.decompress_file(packed, tmp / (src.name + ".back"))
    assert Path(back).read_bytes() == src.read_bytes()
    return tpde.file_info(packed)


def every_dtype() -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(40, generator=g)
    special = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-45])
    return {
        "f32": torch.cat([base, special]),
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(-20, 20),
        "i32": torch.arange(40, dtype=torch.int32),
        "i16": torch.arange(40, dtype=torch.int16),
        "i8": torch.arange(-20, 20, dtype=torch.int8),
        "u8": torch.arange(40, dtype=torch.uint8),
        "bool": base > 0,
        "c64": torch.complex(base, -base),
        "f8e4m3": base.to(torch.float8_e4m3fn),
        "u16": torch.arange(40).to(torch.uint16),
        "empty": torch.zeros(0, 3),
    }


# --- the scanner against an independent reader ------------------------------


@pytest.mark.parametrize("name", sorted(json.loads((GOLDEN / "golden.json").read_text())))
def test_scan_agrees_with_pythons_own_unpickler_on_the_golden_files(name: str) -> None:
    golden = json.loads((GOLDEN / "golden.json").read_text())[name]
    layout, reason = _torchlegacy.scan(GOLDEN / name)
    assert reason is None
    assert layout == golden["layout"]


def test_golden_files_are_what_torch_writes_today(tmp_path: Path) -> None:
    # Saving make.py's objects again with this torch gives files that scan
    # reads as the golden ones, but for the storage keys (addresses).
    import importlib.util

    spec = importlib.util.spec_from_file_location("legacy_make", GOLDEN / "make.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    golden = json.loads((GOLDEN / "golden.json").read_text())

    def without_keys(layout: Dict[str, Any]) -> List[Dict[str, Any]]:
        return sorted(({k: v for k, v in s.items() if k != "key"} for s in layout["storages"]), key=lambda s: s["name"])

    for name, obj in (("state.pt", mod.every_dtype()), ("nested.pt", mod.nested())):
        fresh = legacy_save(obj, tmp_path / name)
        layout, reason = _torchlegacy.scan(fresh)
        assert reason is None and layout == mod.describe(str(fresh))["layout"]
        assert without_keys(layout) == without_keys(golden[name]["layout"])


# --- round trips ------------------------------------------------------------


def test_every_dtype_round_trips_as_typed_frames(tmp_path: Path) -> None:
    sd = every_dtype()
    src = legacy_save(sd, tmp_path / "every.pth")
    info = round_trip(src, tmp_path)
    assert info["source"] == "torch-legacy"
    hints, note = _torchfile.hints(src)
    assert note is None
    by_name = {s["name"]: s for s in hints["torch_legacy"]["storages"]}
    assert by_name["bf16"]["dtype"] == "BF16" and by_name["bf16"]["count"] == 40
    assert by_name["u16"]["dtype"] == "U16" and by_name["u16"]["element_size"] == 1  # untyped: bytes
    assert by_name["c64"]["dtype"] == "" and by_name["c64"]["element_size"] == 8  # kept verbatim
    assert by_name["empty"]["count"] == 0
    # Each frame is a storage, of the storage's dtype (small ones may be
    # zstd-coded together instead, when that is smaller).
    frames = [s for s in info["segments"] if s["kind"] == "frame"]
    assert frames and {f["dtype"] for f in frames} <= {s["dtype"] for s in by_name.values()}, frames
    # torch cannot read uint16 or float8 from a legacy file it wrote (see
    # core/torchlegacy/testdata/make.py), so the load check leaves them out.
    typed = {k: v for k, v in sd.items() if k not in ("u16", "f8e4m3")}
    round_trip(legacy_save(typed, tmp_path / "typed.pth"), tmp_path)
    got = torch.load(tmp_path / "typed.pth.back", weights_only=True)
    for k, v in typed.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert got[k].flatten().view(torch.uint8).tolist() == v.flatten().view(torch.uint8).tolist(), k


def test_nested_dicts_with_an_optimizer_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.GELU(), torch.nn.Linear(8, 4))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        model(torch.randn(5, 16)).pow(2).mean().backward()
        opt.step()
    ckpt = {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "best": 0.25,
            "history": [1.0, 0.5], "name": "run-1", "flags": (True, None)}
    src = legacy_save(ckpt, tmp_path / "ckpt.pth")
    info = round_trip(src, tmp_path)
    assert info["source"] == "torch-legacy"
    hints, _ = _torchfile.hints(src)
    names = {s["name"] for s in hints["torch_legacy"]["storages"]}
    assert {"model/0.weight", "model/2.bias", "optimizer/state/0/exp_avg", "optimizer/state/3/exp_avg_sq",
            "optimizer/state/1/step"} <= names


def test_shared_storages_and_views_are_one_storage(tmp_path: Path) -> None:
    base = torch.arange(64, dtype=torch.float32)
    sd = {"whole": base, "tail": base[32:], "strided": base[::2], "tied": base}
    src = legacy_save(sd, tmp_path / "shared.pth")
    hints, _ = _torchfile.hints(src)
    (only,) = hints["torch_legacy"]["storages"]
    assert only["name"] == "whole" and only["count"] == 64 and only["dtype"] == "F32"
    round_trip(src, tmp_path)
    got = torch.load(tmp_path / "shared.pth.back", weights_only=True)
    got["whole"][40] = -1.0
    assert got["tail"][8] == -1.0, "the restored file still shares one storage"


def test_an_empty_state_dict_and_an_empty_tensor(tmp_path: Path) -> None:
    for name, obj in (("none.pth", {}), ("empty.pth", {"e": torch.zeros(0)}), ("bare.pth", torch.ones(3))):
        src = legacy_save(obj, tmp_path / name)
        info = round_trip(src, tmp_path)
        assert info["source"] == "torch-legacy", name
    hints, _ = _torchfile.hints(tmp_path / "bare.pth")
    assert [s["name"] for s in hints["torch_legacy"]["storages"]] == ["tensor"]


def test_store_codes_a_second_legacy_save_against_the_first(tmp_path: Path) -> None:
    # Storage keys are addresses, so they differ between the two saves;
    # regions are named by state-dict path, so each one still finds the
    # same tensor of the previous checkpoint.
    g = torch.Generator().manual_seed(3)
    sd = {"layer.weight": torch.randn(256, 256, generator=g), "layer.bias": torch.randn(4096, generator=g)}
    st = tpde.Store(tmp_path / "store")
    digests = {}
    for step in range(3):
        sd = {k: v + 1e-3 * torch.randn(v.shape, generator=g) for k, v in sd.items()}
        p = legacy_save(sd, tmp_path / "model.pth")
        digests[step] = sha(p)
        (f,) = st.add(p, step=step).files
        assert f.layout == "torch-legacy" and f.tensors == 2 and not f.note
    for step, digest in digests.items():
        out = st.restore(step, tmp_path / f"r{step}")
        assert sha(out / "model.pth") == digest
    st.wait()  # the newest's predecessor becomes a delta in the background
    with st._reader() as rd:
        snapshot = json.loads(json.dumps(rd.snapshot))
    older = [r for c in snapshot["checkpoints"][:-1] for f in c["files"] for r in f["regions"]]
    assert {r["name"] for r in older} == {"layer.weight", "layer.bias"}
    assert all(r["ref"] and r["ref"]["region"] == r["name"] for r in older), older
    loaded = st.load(2, unpickle=True)
    assert torch.equal(loaded["layer.bias"], sd["layer.bias"])
    st.close()


def test_real_model_legacy_file_codes_like_its_safetensors(tmp_path: Path, minilm_model_dir: Path) -> None:
    # The target, on the real pretrained all-MiniLM-L6-v2: the
    # legacy .pth of its tensors compresses within 1% of the same tensors
    # as .safetensors (sizes, not times; bench/legacy.py reports the figures).
    from safetensors.torch import load_file

    sd = load_file(str(minilm_model_dir / "model.safetensors"))
    st_path = minilm_model_dir / "model.safetensors"
    pth = legacy_save(sd, tmp_path / "model.pth")
    a = Path(tpde.compress_file(st_path, tmp_path / "st.tpde")).stat().st_size
    b = Path(tpde.compress_file(pth, tmp_path / "pth.tpde")).stat().st_size
    assert tpde.file_info(tmp_path / "pth.tpde")["source"] == "torch-legacy"
    assert abs(b - a) / a < 0.01, (a, b)
    tpde.decompress_file(tmp_path / "pth.tpde", tmp_path / "back.pth")
    assert sha(tmp_path / "back.pth") == sha(pth)


# --- odd files: stored whole, and info says why ------------------------------


def legacy_bytes(obj_pickle: bytes, keys: List[str], storages: bytes = b"", little_endian: bool = True,
                 sys_info_pickle: bytes | None = None) -> bytes:
    """A legacy file assembled by hand around a given object pickle."""
    info = {"protocol_version": 1001, "little_endian": little_endian,
            "type_sizes": {"short": 2, "int": 4, "long": 4}}
    return (pickle.dumps(_torchlegacy.MAGIC_NUMBER, protocol=2) + pickle.dumps(1001, protocol=2)
            + (sys_info_pickle if sys_info_pickle is not None else pickle.dumps(info, protocol=2))
            + obj_pickle + pickle.dumps(keys, protocol=2) + storages)


def stored_whole(path: Path, tmp: Path) -> str:
    """Compress and store path; both restore it exactly; return the note."""
    info = round_trip(path, tmp)
    assert info["source"] == "bytes"
    _, cli_note = codec.torch_hints(str(path))
    with tpde.Store(tmp / f"store-{path.name}") as st:
        (f,) = st.add(path, step=0).files
        assert f.layout == "raw" and f.note
        out = st.restore(0, tmp / f"restored-{path.name}")
        assert (out / path.name).read_bytes() == path.read_bytes()
    # The CLI knows what the pickles said; what the bytes say (a count, trailing
    # data) only the library finds, and the store records it.
    assert cli_note is None or cli_note == f.note
    return f.note


def test_a_big_endian_file_is_stored_whole(tmp_path: Path) -> None:
    p = tmp_path / "be.pth"
    p.write_bytes(legacy_bytes(pickle.dumps({}, protocol=2), [], little_endian=False))
    assert "big-endian" in stored_whole(p, tmp_path)


def test_trailing_data_and_a_wrong_count_are_stored_whole(tmp_path: Path) -> None:
    src = legacy_save({"w": torch.arange(8, dtype=torch.float32)}, tmp_path / "ok.pth")
    data = src.read_bytes()
    trailing = tmp_path / "trailing.pth"
    trailing.write_bytes(data + b"\0")
    assert "trailing data" in stored_whole(trailing, tmp_path)
    layout, _ = _torchlegacy.scan(src)
    at = layout["data_start"]
    wrong = tmp_path / "count.pth"
    wrong.write_bytes(data[:at] + struct.pack("<Q", 9) + data[at + 8:])
    assert "the file counts 9 elements" in stored_whole(wrong, tmp_path)


def test_a_pickle_that_is_not_a_plain_state_dict_is_stored_whole(tmp_path: Path) -> None:
    import argparse
    import collections

    p = legacy_save({"w": torch.ones(2), "args": argparse.Namespace(lr=1)}, tmp_path / "ns.pth")
    assert "not a plain state dict: pickle 4 names argparse.Namespace" in stored_whole(p, tmp_path)
    p = legacy_save(collections.OrderedDict(w=torch.ones(2)), tmp_path / "od.pth")
    assert round_trip(p, tmp_path)["source"] == "torch-legacy"


# --- hostile pickles: never run ---------------------------------------------


def evil_reduce(marker: Path, protocol: int) -> bytes:
    """A pickle that, unpickled, would run os.system("touch <marker>")."""

    class Evil:
        def __reduce__(self) -> Tuple[Any, ...]:
            import os

            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"w": Evil()}, protocol=protocol)


@pytest.mark.parametrize("where", ["object", "sys_info", "keys"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_a_pickle_naming_os_system_is_never_run(tmp_path: Path, where: str, protocol: int) -> None:
    marker = tmp_path / "ran"
    evil = evil_reduce(marker, protocol)
    assert b"system" in evil
    plain = pickle.dumps({}, protocol=2)
    if where == "object":
        data = legacy_bytes(evil, [])
    elif where == "sys_info":
        data = legacy_bytes(plain, [], sys_info_pickle=evil)
    else:
        data = legacy_bytes(plain, []).rsplit(pickle.dumps([], protocol=2), 1)[0] + evil
    p = tmp_path / "evil.pth"
    p.write_bytes(data)
    note = stored_whole(p, tmp_path)
    assert "system" in note and "legacy torch file stored whole" in note, note
    assert not marker.exists()
    # The control: Python's own unpickler would have run it.
    if where == "object":
        with io.BytesIO(data) as f:
            for _ in range(4):
                pickle.load(f)
        assert marker.exists()


# --- corruption: a typed error or an exact restore, never wrong data ---------


def pickle_spans(data: bytes) -> List[Tuple[int, int]]:
    """[start, end) of each of the five pickles, by Python's own reader."""
    import pickletools

    spans, f = [], io.BytesIO(data)
    for _ in range(5):
        start = f.tell()
        for op, _arg, _pos in pickletools.genops(f):
            pass
        spans.append((start, f.tell()))
    return spans


def test_a_byte_flip_in_each_pickle_and_a_truncated_storage(tmp_path: Path) -> None:
    src = legacy_save({"a": torch.arange(32, dtype=torch.float32), "b": torch.ones(4, 4, dtype=torch.bfloat16)},
                      tmp_path / "src.pth")
    data = src.read_bytes()
    spans = pickle_spans(data)
    cases = []
    for i, (start, end) in enumerate(spans):
        for at in sorted({start, start + 1, (start + end) // 2, end - 2, end - 1}):
            b = bytearray(data)
            b[at] ^= 0x41
            cases.append((f"pickle{i + 1}@{at}", bytes(b)))
    cases.append(("truncated storage", data[: len(data) - 3]))
    cases.append(("truncated count", data[: spans[-1][1] + 4]))
    outcomes = {"typed": 0, "whole": 0, "legacy": 0}
    for n, (name, blob) in enumerate(cases):
        p = tmp_path / f"case{n}.pth"
        p.write_bytes(blob)
        try:
            info = round_trip(p, tmp_path)  # asserts an exact restore
        except TPDEError:
            outcomes["typed"] += 1
            continue
        outcomes["whole" if info["source"] == "bytes" else "legacy"] += 1
        with tpde.Store(tmp_path / f"store{n}") as st:
            st.add(p, step=0)
            out = st.restore(0, tmp_path / f"restored{n}")
            assert (out / p.name).read_bytes() == blob, name
    assert outcomes["whole"] > 0 and sum(outcomes.values()) == len(cases), outcomes


def test_the_cli_says_why_a_legacy_file_is_stored_whole(tmp_path: Path, run_py) -> None:
    p = tmp_path / "be.pth"
    p.write_bytes(legacy_bytes(pickle.dumps({}, protocol=2), [], little_endian=False))
    r = run_py("-m", "tpde", "compress", str(p))
    assert r.returncode == 0, r.stderr
    assert "legacy torch file stored whole: a big-endian file" in r.stdout
    ok = legacy_save({"w": torch.ones(8)}, tmp_path / "ok.pth")
    r = run_py("-m", "tpde", "compress", str(ok))
    assert r.returncode == 0 and "stored whole" not in r.stdout, r.stdout


# --- cost -------------------------------------------------------------------


def _deep_list_file(path: Path, depth: int) -> Path:
    """A legacy file of {"a": [[...[[t, 0], 1]..., depth - 1]}: lists nested
    depth deep, each with a sibling beside the deeper one."""
    import sys
    import threading

    x: Any = torch.zeros(1)
    for i in range(depth):
        x = [x, i]
    # torch.save pickles recursively: more levels than Python's default
    # limit, on a thread whose stack holds them.
    failed: List[BaseException] = []

    def save() -> None:
        try:
            legacy_save({"a": x}, path)
        except BaseException as e:  # re-raised below, on the test's thread
            failed.append(e)

    limit, stack = sys.getrecursionlimit(), threading.stack_size()
    sys.setrecursionlimit(max(limit, 4 * depth + 1000))
    threading.stack_size(256 << 20)
    try:
        t = threading.Thread(target=save)
        t.start()
        t.join()
    finally:
        threading.stack_size(stack)
        sys.setrecursionlimit(limit)
    if failed:
        raise failed[0]
    return path


def _scan_peak_bytes(path: Path) -> Tuple[Dict[str, Any], int]:
    """scan's layout and the most memory Python held during it, in bytes:
    a measure of its work that is the same on every run and machine."""
    import tracemalloc

    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        layout, reason = _torchlegacy.scan(path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        if not was:
            tracemalloc.stop()
    assert reason is None, reason
    assert layout is not None
    return layout, peak


def test_naming_the_storages_of_deeply_nested_lists_is_linear(tmp_path: Path) -> None:
    # Issue 17: scan spelt out every element's state-dict path, so each
    # level of nesting held a string as long as its depth and a 2 MB file
    # of nested lists took a minute (and memory quadratic in its size).
    # Four times the nesting must cost about four times the memory, not
    # sixteen; the measure is bytes held, never seconds.
    n = 2000
    small, big = _deep_list_file(tmp_path / "n.pth", n), _deep_list_file(tmp_path / "4n.pth", 4 * n)
    assert 3.5 < big.stat().st_size / small.stat().st_size < 4.5  # the pickles do grow 4x
    (layout_n, peak_n), (layout_4n, peak_4n) = _scan_peak_bytes(small), _scan_peak_bytes(big)
    # The naming rule is unchanged: the tensor is named by its full path.
    assert [s["name"] for s in layout_n["storages"]] == ["a" + "/0" * n]
    assert [s["name"] for s in layout_4n["storages"]] == ["a" + "/0" * (4 * n)]
    assert peak_4n / peak_n < 6, (peak_n, peak_4n)


def test_an_int_key_too_long_to_name_stores_the_file_whole(tmp_path: Path) -> None:
    """str() refuses an int past 4300 digits; such a key names nothing a
    state dict holds, so the file is stored whole, with that reason, and
    still round-trips byte for byte (it used to escape as a ValueError)."""
    src = tmp_path / "odd.pth"
    torch.save({10**5000: torch.arange(8, dtype=torch.float32)}, src, _use_new_zipfile_serialization=False)
    layout, why = _torchlegacy.scan(src)
    assert layout is None and "too long" in why
    out = tpde.compress_file(src, tmp_path / "odd.tpde")
    tpde.decompress_file(out, tmp_path / "back.pth")
    assert (tmp_path / "back.pth").read_bytes() == src.read_bytes()
