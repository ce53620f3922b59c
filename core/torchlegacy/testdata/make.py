"""Regenerates the golden legacy torch files that torchlegacy's tests check.

Run with a Python that has torch:  python core/torchlegacy/testdata/make.py
Each .pt is written next to this script by
torch.save(..., _use_new_zipfile_serialization=False). golden.json records,
for every file, the layout a reader must find (core/torchlegacy.Layout:
where the storage area starts, and each storage's key, region name,
dtype, count and element size) and where each storage's bytes start. It
is taken with Python's own unpickler (with stand-ins for torch's names,
on these files only) and torch's own dtype sizes, not with tpde's
scanner, so that the Go and Python tests check against an independent
reader. Tensors are tiny so that the files stay a few KiB.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import struct
import sys
import warnings

import torch

warnings.filterwarnings("ignore", message="TypedStorage is deprecated")

HERE = os.path.dirname(os.path.abspath(__file__))

# torch dtype -> tpde's (safetensors) dtype name; "" for bytes tpde keeps
# verbatim.
SAFETENSORS_NAME = {
    torch.float32: "F32", torch.float64: "F64", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2", torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64",
}


def every_dtype() -> dict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, generator=g)
    sd = {
        "f32": base,
        "f64": base.double(),
        "f16": base.half(),
        "bf16": base.bfloat16(),
        "i64": torch.arange(5),
        "i32": torch.arange(5, dtype=torch.int32),
        "i16": torch.arange(5, dtype=torch.int16),
        "i8": torch.arange(5, dtype=torch.int8),
        "u8": torch.arange(5, dtype=torch.uint8),
        "bool": base > 0,
        "c64": torch.complex(base, -base),
        "empty": torch.zeros(0, 3),
    }
    sd["f32_view"] = sd["f32"][2:]  # shares f32's storage: one storage
    return sd


def untyped() -> dict:
    """The dtypes torch pickles with an UntypedStorage and
    _rebuild_tensor_v3. torch writes them in a legacy file but cannot read
    them back from one (its legacy loader asks UntypedStorage for a
    dtype), so no real legacy file holds them; tpde still codes them."""
    base = torch.randn(6, generator=torch.Generator().manual_seed(0))
    return {
        "f8e4m3": base.to(torch.float8_e4m3fn),
        "f8e5m2": base.to(torch.float8_e5m2),
        "u16": torch.arange(5).to(torch.uint16),
        "u32": torch.arange(5).to(torch.uint32),
        "u64": torch.arange(5).to(torch.uint64),
    }


def nested() -> dict:
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.LayerNorm(2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3,
            "param": torch.nn.Parameter(torch.ones(2)), "pair": (torch.zeros(1), [torch.ones(1)])}


class _Tensor:
    def __init__(self, storage: "_Storage", dtype: object) -> None:
        self.storage, self.dtype = storage, dtype


class _Storage:
    def __init__(self, key: str) -> None:
        self.key = key


class _Reader(pickle.Unpickler):
    """Python's unpickler with stand-ins for the names torch's pickles use:
    enough to see every storage id and which tensor views which storage."""

    def __init__(self, f) -> None:
        super().__init__(f)
        self.ids: list = []

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor_v3"):
            return lambda storage, *args: _Tensor(storage, args[5] if len(args) > 5 else None)
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return lambda data, *args: data
        if module in ("torch", "torch.storage"):
            return getattr(torch, name)  # a storage class or dtype: not called
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid):
        typename, cls, key, _location, numel, _view = pid
        assert typename == "storage"
        self.ids.append((key, cls, numel))
        return _Storage(key)


def _paths(obj, path=""):
    """(storage key, path) for every tensor, depth first in dict order."""
    if isinstance(obj, (_Tensor, _Storage)):
        yield (obj.storage.key if isinstance(obj, _Tensor) else obj.key), path or "tensor"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(k, (str, int)) and not isinstance(k, bool):
                yield from _paths(v, f"{path}/{k}" if path else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _paths(v, f"{path}/{i}" if path else str(i))


def _views(obj, out):
    if isinstance(obj, _Tensor):
        out.setdefault(obj.storage.key, set()).add(obj.dtype)
    elif isinstance(obj, dict):
        for v in obj.values():
            _views(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _views(v, out)
    return out


def describe(path: str) -> dict:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        assert pickle.load(f) == 0x1950A86A20F9469CFC6C
        assert pickle.load(f) == 1001
        assert pickle.load(f)["little_endian"] is True
        reader = _Reader(f)
        obj = reader.load()
        keys = pickle.load(f)
        data_start = f.tell()
        first, classes = {}, {}
        for key, cls, numel in reader.ids:
            first.setdefault(key, (cls, numel))
            classes.setdefault(key, set()).add(cls)
        names = {}
        for key, p in _paths(obj):
            names.setdefault(key, p)
        views = _views(obj, {})
        storages, offsets = [], []
        pos = data_start
        for key in keys:
            cls, numel = first[key]
            if cls is torch.UntypedStorage:
                elem = 1
                vd = views.get(key, set())
                dtype = SAFETENSORS_NAME.get(next(iter(vd)), "") if len(vd) == 1 and len(classes[key]) == 1 else ""
            else:
                elem = cls.dtype.itemsize
                ok = len(classes[key]) == 1 and views.get(key, {None}) == {None}
                dtype = SAFETENSORS_NAME.get(cls.dtype, "") if ok else ""
            f.seek(pos)
            (count,) = struct.unpack("<Q", f.read(8))
            assert count == numel, (key, count, numel)
            offsets.append(pos + 8)
            pos += 8 + count * elem
            storages.append({"key": key, "name": names.get(key, f"storage/{key}"), "dtype": dtype, "count": numel,
                             "element_size": elem})
        assert pos == size, (pos, size)
    return {"layout": {"data_start": data_start, "storages": storages}, "storage_offsets": offsets, "size": size}


def main() -> None:
    golden = {}
    for name, obj, kw in [
        ("state.pt", every_dtype(), {}),
        ("untyped.pt", untyped(), {}),
        ("nested.pt", nested(), {}),
        ("protocol4.pt", {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, {"pickle_protocol": 4}),
    ]:
        path = os.path.join(HERE, name)
        torch.save(obj, path, _use_new_zipfile_serialization=False, **kw)
        if name != "untyped.pt":
            # torch's weights-only loader knows no FRAME opcode; the file
            # is the one just written, so the full unpickler is safe here.
            back = torch.load(path, weights_only=name != "protocol4.pt")
            assert type(back) is dict, name
        golden[name] = describe(path)
    with open(os.path.join(HERE, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"wrote {len(golden)} golden files with torch {torch.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
