"""tpde._torchfile: storage dtypes of real torch.save files, read without unpickling."""

from __future__ import annotations

import io
import json
import pickle
import pickletools
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tpde import _torchpickle
from tpde._torchfile import DTYPE_WIDTH, count_tensors, scan, storage_dtypes, storage_names
from tpde._torchfile import hints as hints_of
from tpde.errors import CorruptDataError, UnsupportedFormatError

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]

TORCH_DTYPE_NAMES = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


def every_dtype() -> Dict[str, "torch.Tensor"]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=g)
    ints = torch.arange(-7, 8).reshape(3, 5)
    out = {}
    for dt, name in TORCH_DTYPE_NAMES.items():
        src = ints if not (dt.is_floating_point or dt == torch.bool) else base
        if dt in (torch.uint8, torch.uint16, torch.uint32, torch.uint64):
            src = ints.abs()
        out[name] = (src > 0) if dt == torch.bool else src.to(dt)
    return out


def read_zip(path: Path) -> tuple[str, Dict[str, int], bytes]:
    """(root, storage key -> record size, data.pkl) by Python's zipfile."""
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/", 1)[0]
        prefix = f"{root}/data/"
        sizes = {i.filename[len(prefix):]: i.file_size for i in z.infolist() if i.filename.startswith(prefix)}
        return root, sizes, z.read(f"{root}/data.pkl")


def check_sizes(path: Path) -> Dict[str, tuple[str, int]]:
    """storage_dtypes of path's pickle, after checking numel * width against
    each storage record, and that scan agrees."""
    _, sizes, pkl = read_zip(path)
    found = storage_dtypes(pkl)
    for key, (dtype, numel) in found.items():
        assert numel * DTYPE_WIDTH[dtype] == sizes[key], (key, dtype, numel)
    assert scan(path) == ({k: d for k, (d, _) in found.items()}, None)
    return found


def rewrite(src: Path, dst: Path, *, compress: Callable[[str], int] = lambda n: zipfile.ZIP_STORED,
            replace: Optional[Dict[str, bytes]] = None, extra: Optional[Dict[str, bytes]] = None) -> Path:
    """Copy the zip src to dst, changing methods or record contents."""
    replace, extra = replace or {}, extra or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = replace.get(info.filename, zin.read(info))
            zout.writestr(info.filename, data, compress_type=compress(info.filename))
        for name, data in extra.items():
            zout.writestr(name, data, compress_type=zipfile.ZIP_STORED)
    return dst


def torch_zip_with_pickle(tmp_path: Path, pkl: bytes, name: str = "evil.pt") -> Path:
    src = tmp_path / ("base_" + name)
    torch.save({"w": torch.ones(4)}, src)
    root, _, _ = read_zip(src)
    return rewrite(src, tmp_path / name, replace={f"{root}/data.pkl": pkl})


def test_every_dtype(tmp_path: Path) -> None:
    sd = every_dtype()
    path = tmp_path / "every.pt"
    torch.save(sd, path)
    found = check_sizes(path)
    # One storage per tensor, keyed in pickling (dict) order.
    assert found == {str(i): (name, t.numel()) for i, (name, t) in enumerate(sd.items())}
    assert set(d for d, _ in found.values()) == set(DTYPE_WIDTH)


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_pickle_protocols(tmp_path: Path, protocol: int) -> None:
    # torch.save writes protocol 2 (GLOBAL, BINPUT); 4 and 5 use
    # STACK_GLOBAL, MEMOIZE and FRAME.
    sd = every_dtype()
    path = tmp_path / f"p{protocol}.pt"
    torch.save(sd, path, pickle_protocol=protocol)
    found = check_sizes(path)
    assert {k: d for k, (d, _) in found.items()} == {str(i): n for i, n in enumerate(sd)}
    ops = {op.name for op, _, _ in pickletools.genops(read_zip(path)[2])}
    assert ("STACK_GLOBAL" in ops) == (protocol >= 4)


def test_adamw_optimizer_state(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3), torch.nn.Linear(3, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 4)).sum().backward()
        opt.step()
    path = tmp_path / "train.pt"
    torch.save({"model": model.state_dict(), "optim": opt.state_dict(), "epoch": 2,
                "half": model[0].weight.detach().half()}, path)
    found = check_sizes(path)
    _, sizes, _ = read_zip(path)
    assert set(found) == set(sizes)
    n_params = len(list(model.parameters()))
    # params + (step, exp_avg, exp_avg_sq) per param + the half copy
    assert len(found) == n_params * 4 + 1
    assert sorted(d for d, _ in found.values()).count("F16") == 1
    assert all(d in ("F32", "F16") for d, _ in found.values())


def _tensors_in(obj: object) -> int:
    """Tensors torch.load builds for obj, each object once (as a pickle's memo does)."""
    seen: set = set()

    def walk(o: object) -> None:
        if isinstance(o, torch.Tensor):
            seen.add(id(o))
        elif isinstance(o, dict):
            for v in o.values():
                walk(v)
        elif isinstance(o, (list, tuple)):
            for v in o:
                walk(v)

    walk(obj)
    return len(seen)


def test_storages_are_named_by_state_dict_path_and_tensors_counted(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(12)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt.zero_grad()
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    path = tmp_path / "train.pt"
    shared = model[0].weight.detach()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "tied": shared, "view": shared[1:]},
               path)
    hints, note = hints_of(path)
    assert note is None
    names = hints["torch_zip_names"]
    assert set(names) == set(hints["torch_zip"])
    assert len(set(names.values())) == len(names)
    assert {"optimizer/state/0/exp_avg", "optimizer/state/23/exp_avg_sq", "optimizer/state/5/step",
            "model/0.weight", "model/11.bias"} <= set(names.values())
    assert not any(n.startswith("data/") or n in ("tied", "view") for n in names.values()), names
    # Counted as torch.load builds them: the tied tensor and the view are
    # tensors of their own on a shared storage.
    want = _tensors_in(torch.load(path, weights_only=True))
    assert want == 12 * 2 + 24 * 3 + 2
    assert count_tensors(path) == want


def test_a_storage_no_path_reaches_keeps_its_record_name() -> None:
    walk = _torchpickle.Walk()
    root = _torchpickle.Dict()
    root.items.append(("w", _torchpickle.TensorRef("0")))
    root.items.append((1, _torchpickle.TensorRef("1")))
    root.items.append(("1", _torchpickle.TensorRef("2")))  # spelt as the int key 1 is
    walk.value = root
    assert storage_names(walk, ["0", "1", "2", "3"]) == {"0": "w", "1": "1", "2": "1#2", "3": "data/3"}
    walk.value = _torchpickle.TensorRef("0")
    assert storage_names(walk, ["0"]) == {"0": "tensor"}


def test_shared_storage_is_one_key(tmp_path: Path) -> None:
    x = torch.arange(12, dtype=torch.float32)
    u = torch.arange(6).to(torch.uint16)
    path = tmp_path / "shared.pt"
    torch.save({"x": x, "x_view": x[3:7], "x_2d": x.view(3, 4), "u": u, "u_view": u[1:]}, path)
    found = check_sizes(path)
    assert found == {"0": ("F32", 12), "1": ("U16", 6)}


def test_empty_tensor(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    torch.save({"e": torch.zeros(0, 3), "e16": torch.zeros(0).to(torch.uint16), "s": torch.tensor(2.5)}, path)
    found = check_sizes(path)
    assert found == {"0": ("F32", 0), "1": ("U16", 0), "2": ("F32", 1)}


def test_unmapped_dtypes_left_out(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # quantized tensors are deprecated
        q = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    torch.save({"c": torch.zeros(3, dtype=torch.complex64), "q": q, "f": torch.ones(2),
                "e4fnuz": torch.zeros(2).to(torch.float8_e4m3fnuz)}, path)
    found = check_sizes(path)
    assert found == {"2": ("F32", 2)}


def test_torchscript_file(tmp_path: Path) -> None:
    path = tmp_path / "script.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)
    dtypes, reason = scan(path)
    assert dtypes is None and "TorchScript" in reason


def test_saved_from_buffer(tmp_path: Path) -> None:
    buf = io.BytesIO()
    torch.save({"a": torch.ones(3, dtype=torch.bfloat16), "b": torch.arange(4)}, buf)
    path = tmp_path / "from_buffer.pt"
    path.write_bytes(buf.getvalue())
    assert read_zip(path)[0] == "archive"
    assert check_sizes(path) == {"0": ("BF16", 3), "1": ("I64", 4)}


def test_roots_torch_derives_from_odd_names(tmp_path: Path) -> None:
    for name in ["..pt", "a b.c.pt", "noext", "ü.pt"]:
        path = tmp_path / name
        torch.save({"w": torch.ones(2, dtype=torch.float16)}, path)
        assert scan(path) == ({"0": "F16"}, None), name


def test_golden_files_of_the_go_package() -> None:
    # The files core/torchzip's tests parse: both readers must agree.
    testdata = ROOT / "core" / "torchzip" / "testdata"
    golden = json.loads((testdata / "golden.json").read_text())
    for name, want in golden.items():
        found = check_sizes(testdata / name)
        assert set(found) == set(want["storages"]), name
    dtypes, _ = scan(testdata / "state.pt")
    # Every dtype once, plus the empty tensor's F32.
    assert sorted(dtypes.values()) == sorted(list(DTYPE_WIDTH) + ["F32"])
    assert scan(testdata / "script.pt")[0] is None
    assert scan(testdata / "legacy.pt") == (None, "not a zip")


def test_not_a_zip(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    assert scan(legacy) == (None, "not a zip")
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00" * 1000)
    assert scan(junk) == (None, "not a zip")
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "missing.pt")


def test_deflated_records(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(64)}, src)
    deflate_all = rewrite(src, tmp_path / "all.pt", compress=lambda n: zipfile.ZIP_DEFLATED)
    dtypes, reason = scan(deflate_all)
    assert dtypes is None and "deflated record 'src/data.pkl'" in reason
    deflate_data = rewrite(src, tmp_path / "data.pt",
                           compress=lambda n: zipfile.ZIP_DEFLATED if "/data/" in n else zipfile.ZIP_STORED)
    dtypes, reason = scan(deflate_data)
    assert dtypes is None and "deflated record 'src/data/0'" in reason
    # Other records may be compressed: tpde never reads them.
    deflate_version = rewrite(src, tmp_path / "version.pt",
                              compress=lambda n: zipfile.ZIP_DEFLATED if n.endswith("/version") else zipfile.ZIP_STORED)
    assert scan(deflate_version) == ({"0": "F32"}, None)


def test_archive_layouts_that_are_not_torch(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"w": torch.ones(2)}, src)
    mixed = rewrite(src, tmp_path / "mixed.pt", extra={"other/data/9": b"abcd"})
    assert "mixed roots" in scan(mixed)[1]
    loose = rewrite(src, tmp_path / "loose.pt", extra={"loose": b"abcd"})
    assert "not inside a root folder" in scan(loose)[1]
    consts = rewrite(src, tmp_path / "consts.pt", extra={"src/constants.pkl": b"\x80\x02)."})
    assert "TorchScript" in scan(consts)[1]
    with pytest.warns(UserWarning, match="Duplicate name"):
        dup = rewrite(src, tmp_path / "dup.pt", extra={"src/data/0": b"abcdefgh"})
    assert "duplicate record" in scan(dup)[1]
    with zipfile.ZipFile(tmp_path / "nopkl.pt", "w") as z:
        z.writestr("x/data/0", b"abcd")
    assert scan(tmp_path / "nopkl.pt") == (None, "no data.pkl")


def test_size_mismatch_is_left_out(tmp_path: Path) -> None:
    src = tmp_path / "src.pt"
    torch.save({"a": torch.ones(4), "b": torch.ones(2)}, src)
    bad = rewrite(src, tmp_path / "bad.pt", replace={"src/data/0": b"\x00" * 15})
    assert scan(bad) == ({"1": "F32"}, None)


def test_corrupt_data_pkl_crc(tmp_path: Path) -> None:
    path = tmp_path / "crc.pt"
    torch.save({"a": torch.ones(4)}, path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("crc/data.pkl")
    # The payload follows the local header, whose extra field (torch's
    # alignment padding) differs from the central directory's.
    h = info.header_offset
    name_len, extra_len = int.from_bytes(raw[h + 26:h + 28], "little"), int.from_bytes(raw[h + 28:h + 30], "little")
    raw[h + 30 + name_len + extra_len + 10] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptDataError, match="CRC"):
        scan(path)


def test_os_system_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    for protocol in (2, 4):
        evil = pickle.dumps({"x": Evil()}, protocol=protocol)
        assert b"system" in evil
        assert storage_dtypes(evil) == {}
        assert scan(torch_zip_with_pickle(tmp_path, evil, f"evil{protocol}.pt")) == ({}, None)

    # A storage id whose class is os.system, and a rebuild whose dtype is.
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj == "storage-evil":
                import os
                return ("storage", os.system, "0", "cpu", 4)
            return None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": "storage-evil", "x": Evil()})
    assert storage_dtypes(buf.getvalue()) == {}
    assert scan(torch_zip_with_pickle(tmp_path, buf.getvalue(), "evil_sid.pt")) == ({}, None)
    assert not marker.exists()

    # The payload is live: unpickling it does run the command.
    pickle.loads(pickle.dumps(Evil(), protocol=2))
    assert marker.exists()


def test_import_loads_no_torch(run_py) -> None:
    r = run_py("-c", "import sys, tpde._torchfile; print('torch' in sys.modules, 'numpy' in sys.modules)")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"]


def _pickle_with_ids(*ids) -> bytes:
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return obj[1] if isinstance(obj, tuple) and obj[:1] == ("pid",) else None

    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump([("pid", i) for i in ids])
    return buf.getvalue()


def test_conflicting_claims_are_left_out() -> None:
    pkl = _pickle_with_ids(("storage", torch.FloatStorage, "0", "cpu", 4),
                           ("storage", torch.IntStorage, "0", "cpu", 4),
                           ("storage", torch.HalfStorage, "1", "cpu", 4),
                           ("storage", torch.HalfStorage, "1", "cpu", 6),
                           ("storage", torch.LongStorage, "2", "cpu", 3),
                           ("storage", torch.LongStorage, "2", "cuda:0", 3))
    assert storage_dtypes(pkl) == {"2": ("I64", 3)}


def test_malformed_storage_ids_are_ignored() -> None:
    pkl = _pickle_with_ids(("storage", torch.FloatStorage, 0, "cpu", 4),
                           ("storage", torch.FloatStorage, "1", "cpu", -1),
                           ("storage", torch.FloatStorage, "2", "cpu", True),
                           ("storage", "torch FloatStorage", "3", "cpu", 4),
                           ("module", torch.FloatStorage, "4", "cpu", 4),
                           ("storage", torch.FloatStorage, "5", "cpu"),
                           "storage",
                           ("storage", torch.FloatStorage, "6", "cpu", 2**70))
    assert storage_dtypes(pkl) == {"6": ("F32", 2**70)}


@pytest.mark.parametrize("data", [
    b"",
    b"\x80\x02",                 # no STOP
    b"\x80\x02}q\x00(X",         # truncated string
    b"\x80\x02h\x05.",           # BINGET of an unset memo slot
    b"\x80\x02\xff.",            # unknown opcode
    b"\x80\x02t.",               # TUPLE without MARK
    b"\x80\x02\x85.",            # TUPLE1 on an empty stack
    b"\x80\x02(\x85.",           # TUPLE1 reaching a MARK
    b"\x80\x02q\x00.",           # BINPUT from an empty stack
    b"\x80\x02X\x02\x00\x00\x00\xff\xfe.",  # bad UTF-8
    b"\x80\x02Q.",               # BINPERSID on an empty stack
])
def test_broken_pickles(data: bytes) -> None:
    with pytest.raises(CorruptDataError):
        storage_dtypes(data)


def test_broken_pickle_in_a_zip(tmp_path: Path) -> None:
    with pytest.raises(CorruptDataError):
        scan(torch_zip_with_pickle(tmp_path, b"\x80\x02}q\x00(X"))


def test_trailing_bytes_after_stop_are_ignored() -> None:
    assert storage_dtypes(b"\x80\x02N.\xff\xff") == {}


def test_pickle_with_no_storages(tmp_path: Path) -> None:
    path = tmp_path / "plain.pt"
    torch.save({"epoch": 3, "names": ["a", "b"], "lr": 0.1}, path)
    assert scan(path) == ({}, None)


def test_memo_and_stack_floods_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each one-byte MEMOIZE adds a memo entry, each MARK a stack entry; the
    # model refuses to grow past its cap (lowered here to keep the test
    # fast) instead of using ~100 bytes per byte of pickle.
    import tpde._torchpickle as tp
    monkeypatch.setattr(tp, "MAX_ENTRIES", 1000)
    for flood in (b"\x80\x04N" + b"\x94" * 1002 + b".", b"\x80\x02" + b"(" * 1002 + b"N."):
        with pytest.raises(UnsupportedFormatError, match="stack and memo"):
            storage_dtypes(flood)
        dtypes, reason = scan(torch_zip_with_pickle(tmp_path, flood))
        assert dtypes is None and "stack and memo" in reason
    assert storage_dtypes(b"\x80\x04N" + b"\x94" * 900 + b".") == {}


_REAL = None


def _real_pickle() -> bytes:
    global _REAL
    if _REAL is None:
        buf = io.BytesIO()
        torch.save({"a": torch.ones(2, dtype=torch.bfloat16), "b": torch.arange(3).to(torch.uint16),
                    "c": [torch.zeros(1), {"d": torch.ones(1, dtype=torch.bool)}]}, buf)
        with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as z:
            _REAL = z.read("archive/data.pkl")
    return _REAL


@settings(max_examples=300)
@given(st.data())
def test_mutated_pickles_only_fail_cleanly(data) -> None:
    pkl = bytearray(_real_pickle())
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(pkl) - 1))
        choice = data.draw(st.integers(0, 2))
        if choice == 0:
            pkl[i] = data.draw(st.integers(0, 255))
        elif choice == 1:
            del pkl[i]
        else:
            pkl[i:i] = data.draw(st.binary(min_size=1, max_size=4))
    try:
        found = storage_dtypes(bytes(pkl))
    except (CorruptDataError, UnsupportedFormatError):
        return
    for key, (dtype, numel) in found.items():
        assert type(key) is str and dtype in DTYPE_WIDTH and type(numel) is int and numel >= 0


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_only_fail_cleanly(raw: bytes) -> None:
    try:
        storage_dtypes(b"\x80\x02" + raw)
    except (CorruptDataError, UnsupportedFormatError):
        pass



def test_a_pickle_walked_again_is_the_same_walk_and_only_for_the_same_bytes(tmp_path: Path) -> None:
    """A store's add walks data.pkl for its hints and again to count the
    tensors of what it stored: the second walk of identical bytes is the
    first one reused, a pickle that differs in one byte is walked anew, and
    the cache stays bounded."""
    from tpde import _torchfile

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save({"w": torch.ones(4), "v": torch.zeros(2)}, a)
    torch.save({"w": torch.ones(4), "u": torch.zeros(2)}, b)  # same length, other name
    pa, pb = read_zip(a)[2], read_zip(b)[2]
    assert len(pa) == len(pb) and pa != pb
    first = _torchfile._walk(pa)
    assert _torchfile._walk(bytes(bytearray(pa))) is first  # equal bytes, another object
    other = _torchfile._walk(pb)
    assert other is not first
    assert hints_of(a)[0] is not None and count_tensors(a) == 2
    for i in range(2 * _torchfile._WALKS_MAX):
        pk = pickle.dumps({"n": i}, protocol=2)
        _torchfile._walk(pk)
    assert len(_torchfile._WALKS) <= _torchfile._WALKS_MAX
    assert sum(map(len, _torchfile._WALKS)) <= _torchfile._WALKS_MAX_BYTES
