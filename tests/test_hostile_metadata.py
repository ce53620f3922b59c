"""Hostile checkpoint bundles (issue 7): every checksum valid, the contents not.

Each bundle here starts as a real one made by the encoder; its metadata (or
a frame header, or the index) is then replaced and the index checksum
recomputed, so only the readers' own checks stand between the bytes and the
caller. Every reader entry point must then raise one TPDEError subclass,
the same one for the same damage, with a message naming the problem, and
never RecursionError, KeyError, TypeError, numpy's MemoryError or the like.
"""

from __future__ import annotations

import collections
import copy
import json
import struct
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, Union

import pytest
import torch

import tpde
from crc32c import crc32c
from tpde import _structure as tpde_structure
from tpde import _tensors as tpde_tensors
from tpde import _load as tpde_load

# --- CRC32C and bundle surgery (docs/FORMAT.md §1, §9) --------------------------


PREAMBLE = b"\x89TPB\x01\x00\x00\x00"


@dataclass
class Parts:
    """A bundle taken apart: preamble, (name, frame) entries, metadata bytes."""

    preamble: bytes
    entries: List[Tuple[bytes, bytes]]
    meta: bytes


def split(blob: bytes) -> Parts:
    index_len, _, magic = struct.unpack_from("<QI4s", blob, len(blob) - 16)
    assert magic == b"TPBE"
    index = blob[len(blob) - 16 - index_len:len(blob) - 16]
    (count,) = struct.unpack_from("<I", index, 0)
    pos, entries = 4, []
    for _ in range(count):
        (name_len,) = struct.unpack_from("<H", index, pos)
        name = index[pos + 2:pos + 2 + name_len]
        offset, length = struct.unpack_from("<QQ", index, pos + 2 + name_len)
        pos += 2 + name_len + 16
        entries.append((name, blob[offset:offset + length]))
    (meta_len,) = struct.unpack_from("<I", index, pos)
    return Parts(blob[:8], entries, index[pos + 4:pos + 4 + meta_len])


def join(parts: Parts) -> bytes:
    """Lay the parts out as a bundle, with a correct index checksum."""
    frames, index = [], [struct.pack("<I", len(parts.entries))]
    offset = len(parts.preamble)
    for name, frame in parts.entries:
        index.append(struct.pack("<H", len(name)) + name + struct.pack("<QQ", offset, len(frame)))
        frames.append(frame)
        offset += len(frame)
    index.append(struct.pack("<I", len(parts.meta)) + parts.meta)
    idx = b"".join(index)
    trailer = struct.pack("<QI", len(idx), crc32c(idx, crc32c(parts.preamble))) + b"TPBE"
    return b"".join([parts.preamble, *frames, idx, trailer])


def with_meta(blob: bytes, meta: Union[bytes, Dict[str, Any]]) -> bytes:
    parts = split(blob)
    parts.meta = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    return join(parts)


def meta_of(blob: bytes) -> Dict[str, Any]:
    return json.loads(split(blob).meta)


def test_crc32c_known_vector() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0
    assert crc32c(b"6789", crc32c(b"12345")) == 0xE3069283


def test_surgery_reproduces_the_encoders_bytes(bundles: Dict[str, bytes]) -> None:
    """split/join and the CRC agree with the library, so a hostile bundle
    below differs from a valid one only where a case says."""
    for blob in bundles.values():
        assert join(split(blob)) == blob
    meta = meta_of(bundles["flat"])
    assert tpde.load_checkpoint(with_meta(bundles["flat"], meta)).keys() == tpde.load_checkpoint(bundles["flat"]).keys()


# --- the valid bundles the hostile ones are made from ----------------------------


def _flat_state() -> "collections.OrderedDict[str, torch.Tensor]":
    """A state dict with tied weights (an alias) and module versions
    (state_dict_metadata), stored without a skeleton."""
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(20, 4, generator=g)
    sd = collections.OrderedDict([("emb.weight", emb), ("head.weight", emb), ("bias", torch.randn(4, generator=g)),
                                  ("steps", torch.tensor(3))])
    versions = collections.OrderedDict([("", {"version": 1}), ("emb", {"version": 2})])
    sd._metadata = versions  # type: ignore[attr-defined]
    return sd


def _tree_state() -> Dict[Any, Any]:
    g = torch.Generator().manual_seed(2)
    return {"model": {"w": torch.randn(8, 8, generator=g), "b": torch.zeros(8)},
            "optimizer": {"state": {0: {"exp_avg": torch.randn(8, generator=g)}},
                          "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": float("inf")}]},
            "epoch": 3}


@pytest.fixture(scope="module")
def bundles() -> Dict[str, bytes]:
    enc = tpde.TemporalPositionDeltaEncoder()
    flat = _flat_state()
    full = bytes(enc.compress_checkpoint(flat, epoch=1))
    moved = _flat_state()
    emb = moved["emb.weight"] + 0.001
    moved.update({"emb.weight": emb, "head.weight": emb, "bias": moved["bias"] + 0.001})  # still tied
    delta = bytes(enc.compress_checkpoint_delta(moved, epoch=2))
    tree = bytes(tpde.TemporalPositionDeltaEncoder().compress_checkpoint(_tree_state()))
    kinds = {t["name"]: t["kind"] for t in tpde.checkpoint_info(delta)["tensors"]}
    assert kinds["emb.weight"] == "delta", kinds
    return {"flat": full, "delta": delta, "tree": tree}


# --- the readers ---------------------------------------------------------------------

Reader = Callable[[bytes, Path], Any]


def _to_file(blob: bytes, tmp: Path) -> Path:
    p = tmp / "hostile.tpde"
    p.write_bytes(blob)
    return p


READERS: Dict[str, Reader] = {
    "load_checkpoint": lambda blob, tmp: tpde.load_checkpoint(blob),
    "load_checkpoint(path, numpy)": lambda blob, tmp: tpde.load_checkpoint(_to_file(blob, tmp), like="numpy"),
    "decompress_checkpoint": lambda blob, tmp: tpde.TemporalPositionDeltaEncoder().decompress_checkpoint(blob),
    "decompress_parallel": lambda blob, tmp: tpde.TemporalPositionDeltaEncoder().decompress_parallel(blob, 2),
    "TPDECheckpointCompressor.decompress": lambda blob, tmp: tpde.TPDECheckpointCompressor().decompress(blob),
    "checkpoint_info": lambda blob, tmp: tpde.checkpoint_info(blob),
    "encoder.load_checkpoint(path)": lambda blob, tmp: tpde.TemporalPositionDeltaEncoder(
        output_dir=tmp).load_checkpoint(_to_file(blob, tmp)),
}


# --- the cases -------------------------------------------------------------------------

Edit = Callable[[Dict[str, Any]], Union[bytes, Dict[str, Any]]]


@dataclass
class Case:
    base: str  # which bundle of the fixture
    edit: Edit  # its metadata (a copy) -> new metadata, or raw bytes
    error: type
    says: str


def _set(path: str, value: Any) -> Edit:
    """Set (or with value _DELETE, remove) the member at a dotted path."""

    def edit(meta: Dict[str, Any]) -> Dict[str, Any]:
        *parents, last = path.split(".")
        obj = meta
        for p in parents:
            obj = obj[p]
        if value is _DELETE:
            del obj[last]
        else:
            obj[last] = value
        return meta

    return edit


_DELETE = object()


def _raw(text: bytes) -> Edit:
    return lambda meta: text


def _nested(depth: int) -> bytes:
    """Metadata of a valid checkpoint but for a member nested depth deep."""
    return b'{"x": ' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"


def _skeleton(node: Any) -> Edit:
    """The tree checkpoint with its optimizer's state replaced by node."""

    def edit(meta: Dict[str, Any]) -> Dict[str, Any]:
        top = meta["tpde"]["skeleton"]["$dict"]
        for pair in top:
            if pair[0] == "optimizer":
                pair[1] = node
        return meta

    return edit


CorruptDataError, Unsupported = tpde.CorruptDataError, tpde.UnsupportedFormatError

CASES: Dict[str, Case] = {
    # What the library itself refuses (core/bundle checkMeta).
    "nested 5000 deep": Case("flat", _raw(_nested(5000)), CorruptDataError, "nests more than 100 levels deep"),
    "nested 101 deep": Case("flat", _raw(_nested(101)), CorruptDataError, "nests more than 100 levels deep"),
    "invalid UTF-8": Case("flat", _raw(b'{"tpde": {"format": "tpde-checkpoint\xff"}}'), CorruptDataError,
                          "not valid UTF-8"),
    "an encoded surrogate": Case("flat", _raw(b'{"user": {"a": "\xed\xa0\x80"}}'), CorruptDataError,
                                 "not valid UTF-8"),
    "not JSON": Case("flat", _raw(b'{"tpde": }'), CorruptDataError, "not valid JSON"),
    "an array": Case("flat", _raw(b"[1, 2]"), CorruptDataError, "not a JSON object"),
    "a string": Case("flat", _raw(b'"{}"'), CorruptDataError, "not a JSON object"),
    # Not a tpde checkpoint at all, or a newer one.
    "empty object": Case("flat", _raw(b"{}"), Unsupported, "no tpde checkpoint metadata"),
    "missing tpde": Case("flat", _set("tpde", _DELETE), Unsupported, "no tpde checkpoint metadata"),
    "another format": Case("flat", _set("tpde.format", "tpde-checkpoint-v2"), Unsupported,
                           "not a 'tpde-checkpoint'"),
    "format version 2.0": Case("flat", _set("checkpoint.format_version", "2.0"), Unsupported,
                               "checkpoint format version 2.0"),
    # The tpde member.
    "tpde an array": Case("flat", _set("tpde", []), CorruptDataError, "'tpde' is an array, not an object"),
    "missing format": Case("flat", _set("tpde.format", _DELETE), CorruptDataError, "has no 'format' member"),
    "format a number": Case("flat", _set("tpde.format", 1), CorruptDataError, "'tpde.format' is the number 1"),
    "missing skeleton": Case("flat", _set("tpde.skeleton", _DELETE), CorruptDataError, "no 'skeleton' member"),
    "missing aliases": Case("flat", _set("tpde.aliases", _DELETE), CorruptDataError, "no 'aliases' member"),
    "missing state_dict_metadata": Case("flat", _set("tpde.state_dict_metadata", _DELETE), CorruptDataError,
                                        "no 'state_dict_metadata' member"),
    "aliases an array": Case("flat", _set("tpde.aliases", [["head.weight", "emb.weight"]]), CorruptDataError,
                             "'tpde.aliases' is an array, not an object"),
    "aliases a string": Case("flat", _set("tpde.aliases", "emb.weight"), CorruptDataError,
                             "'tpde.aliases' is the string"),
    "alias to a missing tensor": Case("flat", _set("tpde.aliases", {"head.weight": "nope"}), CorruptDataError,
                                      "alias 'head.weight' refers to tensor 'nope', which the bundle does not hold"),
    "alias to a number": Case("flat", _set("tpde.aliases", {"head.weight": 3}), CorruptDataError,
                              "alias 'head.weight' is the number 3"),
    "alias over a stored tensor": Case("flat", _set("tpde.aliases", {"bias": "emb.weight"}), CorruptDataError,
                                       "alias 'bias' is also the name of a stored tensor"),
    "state_dict_metadata an array": Case("flat", _set("tpde.state_dict_metadata", [1]), CorruptDataError,
                                         "stands for an array, not a mapping"),
    "state_dict_metadata with a tensor": Case(
        "flat", _set("tpde.state_dict_metadata", {"$dict": [["", {"$tensor": "bias"}]]}), CorruptDataError,
        "tpde.state_dict_metadata[''] refers to tensor 'bias'"),
    "state_dict_metadata unknown tag": Case("flat", _set("tpde.state_dict_metadata", {"$set": []}),
                                            CorruptDataError, "unknown tag '$set'"),
    # The skeleton.
    "skeleton a string": Case("flat", _set("tpde.skeleton", "model"), CorruptDataError,
                              "'tpde.skeleton' stands for the string 'model', not a mapping"),
    "skeleton a list": Case("flat", _set("tpde.skeleton", [{"$tensor": "bias"}]), CorruptDataError,
                            "'tpde.skeleton' stands for an array, not a mapping"),
    "skeleton unknown tag": Case("tree", _skeleton({"$set": [1, 2]}), CorruptDataError,
                                 "tpde.skeleton['optimizer'] has the unknown tag '$set'"),
    "skeleton plain object": Case("tree", _skeleton({"lr": 1}), CorruptDataError, "has the unknown tag 'lr'"),
    "skeleton two tags": Case("tree", _skeleton({"$tensor": "model.w", "$dict": []}), CorruptDataError,
                              "exactly one of"),
    "skeleton empty object": Case("tree", _skeleton({}), CorruptDataError, "is an object with keys none"),
    "skeleton missing tensor": Case("tree", _skeleton({"$tensor": "optimizer.gone"}), CorruptDataError,
                                    "tpde.skeleton['optimizer'] refers to tensor 'optimizer.gone', which the bundle "
                                    "does not hold"),
    "skeleton tensor name a list": Case("tree", _skeleton({"$tensor": ["model.w"]}), CorruptDataError,
                                        "a $tensor node whose name is an array"),
    "skeleton dict of a string": Case("tree", _skeleton({"$dict": "state"}), CorruptDataError,
                                      "a $dict node holding the string 'state', not an array"),
    "skeleton dict item not a pair": Case("tree", _skeleton({"$dict": [["a", 1, 2]]}), CorruptDataError,
                                          "item 0 is not a [key, value] pair"),
    "skeleton dict key a list": Case("tree", _skeleton({"$dict": [[["a"], 1]]}), CorruptDataError,
                                     "key 0 is an array"),
    "skeleton dict key an object": Case("tree", _skeleton({"$dict": [[{"a": 1}, 1]]}), CorruptDataError,
                                        "key 0 is an object"),
    "skeleton tuple of an object": Case("tree", _skeleton({"$tuple": {"a": 1}}), CorruptDataError,
                                        "a $tuple node holding an object, not an array"),
    "skeleton float of nonsense": Case("tree", _skeleton({"$float": "1e999x"}), CorruptDataError,
                                       "a $float node of '1e999x'"),
    "skeleton float of a number": Case("tree", _skeleton({"$float": 5}), CorruptDataError,
                                       "a $float node of 5"),
    "skeleton deep inside": Case("tree", _skeleton({"$dict": [["k", {"$float": None}]]}), CorruptDataError,
                                 "tpde.skeleton['optimizer']['k'] is a $float node of None"),
    # The checkpoint member.
    "missing checkpoint": Case("flat", _set("checkpoint", _DELETE), CorruptDataError, "no 'checkpoint' member"),
    "checkpoint an array": Case("flat", _set("checkpoint", []), CorruptDataError, "'checkpoint' is an array"),
    "missing checkpoint_type": Case("flat", _set("checkpoint.checkpoint_type", _DELETE), CorruptDataError,
                                    "no 'checkpoint_type' member"),
    "missing reference": Case("flat", _set("checkpoint.reference", _DELETE), CorruptDataError,
                              "no 'reference' member"),
    "checkpoint_type partial": Case("flat", _set("checkpoint.checkpoint_type", "partial"), CorruptDataError,
                                    "'checkpoint.checkpoint_type' is 'partial', not 'full' or 'delta'"),
    "a full checkpoint with a reference": Case("flat", _set("checkpoint.reference", "previous"), CorruptDataError,
                                               "a full checkpoint whose 'checkpoint.reference' is the string"),
    "a delta without a reference": Case("delta", _set("checkpoint.reference", None), CorruptDataError,
                                        "a delta checkpoint whose 'checkpoint.reference' is null"),
    "a delta with reference 'base2'": Case("delta", _set("checkpoint.reference", "base2"), CorruptDataError,
                                           "not 'previous' or 'base'"),
    "a delta that says full": Case("delta", lambda m: _set("checkpoint.reference", None)(
        _set("checkpoint.checkpoint_type", "full")(m)), CorruptDataError,
        "a full checkpoint (decodable alone) whose tensor 'emb.weight' is a delta frame"),
    "format_version nonsense": Case("flat", _set("checkpoint.format_version", "one"), CorruptDataError,
                                    "'checkpoint.format_version' is 'one', not MAJOR.MINOR"),
    "user an array": Case("flat", _set("user", [1]), CorruptDataError, "'user' is an array, not an object"),
}

# Every field of the checkpoint member with a value of the wrong JSON type.
_WRONG_TYPES = {
    "checkpoint_type": (["full"], "an array"), "reference": (1, "the number 1"),
    "epoch": ([3], "an array"), "reference_epoch": (True, "the boolean true"),
    "tpde_version": (1, "the number 1"), "format_version": (1.0, "the number 1.0"),
    "compression_method": (None, "null"), "threshold": ("0", "the string '0'"),
    "adaptive": (0, "the number 0"), "percentile": ([], "an array"), "quant_bits": (8.0, "the number 8.0"),
    "lossless": ("yes", "the string 'yes'"), "error_bound": (False, "the boolean false"),
    "timestamp": ({}, "an object"), "num_tensors": (2.5, "the number 2.5"),
    "original_size": (None, "null"), "original_size_mb": ("1", "the string '1'"),
    "sparsity": ("0", "the string '0'"), "max_error": (None, "null"),
}
for _field, (_value, _spelled) in _WRONG_TYPES.items():
    CASES[f"checkpoint.{_field} of the wrong type"] = Case(
        "flat", _set(f"checkpoint.{_field}", _value), CorruptDataError, f"'checkpoint.{_field}' is {_spelled}, not")


def test_every_checkpoint_field_has_a_wrong_type_case() -> None:
    assert set(_WRONG_TYPES) == set(tpde_load._CHECKPOINT_FIELDS)


def _hostile(bundles: Dict[str, bytes], case: Case) -> bytes:
    edited = case.edit(copy.deepcopy(meta_of(bundles[case.base])))
    return with_meta(bundles[case.base], edited)


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize("case", list(CASES))
def test_hostile_metadata_raises_one_typed_error(bundles: Dict[str, bytes], case: str, reader: str,
                                                 tmp_path: Path) -> None:
    c = CASES[case]
    blob = _hostile(bundles, c)
    with pytest.raises(tpde.TPDEError) as caught:
        READERS[reader](blob, tmp_path)
    assert type(caught.value) is c.error, f"{type(caught.value).__name__}: {caught.value}"
    assert c.says in str(caught.value)


@pytest.mark.parametrize("case", list(CASES))
def test_tpde_info_reports_hostile_metadata_in_one_line(bundles: Dict[str, bytes], case: str, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """`tpde info` printed a 20-40 line traceback for these; one line now."""
    from tpde import cli

    path = _to_file(_hostile(bundles, CASES[case]), tmp_path)
    for args in (["info", str(path)], ["info", str(path), "--json"]):
        assert cli.main(args) == 1
        out, err = capsys.readouterr()
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("tpde: error: "), err
        assert "Traceback" not in err and "internal error" not in err, err
        assert CASES[case].says in lines[0]


def test_tpde_info_on_deeply_nested_metadata_in_a_real_process(bundles: Dict[str, bytes], tmp_path: Path,
                                                               run_py: Any) -> None:
    deep = b'{"a":' * 5000 + b"1" + b"}" * 5000
    path = _to_file(with_meta(bundles["flat"], deep), tmp_path)
    p = run_py("-m", "tpde", "info", str(path))
    assert p.returncode == 1, p.stderr
    assert len(p.stderr.splitlines()) == 1 and "Traceback" not in p.stderr, p.stderr


def test_the_cases_start_from_valid_bundles(bundles: Dict[str, bytes], tmp_path: Path) -> None:
    """Every reader accepts the bundles the cases are made from (a delta
    with its previous), so each case's error is the edit's doing."""
    prev = tpde.load_checkpoint(bundles["flat"])
    for name, blob in bundles.items():
        for reader, read in READERS.items():
            if name == "delta" and reader != "checkpoint_info":
                with pytest.raises(tpde.ReferenceMismatchError):
                    read(blob, tmp_path)
            else:
                read(blob, tmp_path)
    got = tpde.load_checkpoint(bundles["delta"], prev)
    assert got["head.weight"] is got["emb.weight"] and got._metadata == _flat_state()._metadata
    tree = tpde.load_checkpoint(bundles["tree"])
    assert tree["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_what_the_encoder_stores_is_never_refused(tmp_path: Path) -> None:
    """The schema accepts every value the encoder writes, including an
    epoch that is not an integer (it stores what it is given)."""
    enc = tpde.TemporalPositionDeltaEncoder(output_dir=tmp_path, threshold=1e-3, adaptive=True, quant_bits=8)
    sd = _flat_state()
    enc.save_checkpoint(sd, epoch="best")
    assert tpde.checkpoint_info(tmp_path / "checkpoint_epoch_best.tpde")["epoch"] == "best"
    moved = collections.OrderedDict((k, v + 0.01 if v.is_floating_point() else v) for k, v in sd.items())
    enc.save_compressed_delta(moved, epoch=2.5)
    info = tpde.checkpoint_info(tmp_path / "checkpoint_epoch_2.5.tpde")
    assert (info["epoch"], info["reference_epoch"], info["lossless"]) == (2.5, "best", False)
    best = tpde.load_checkpoint(tmp_path / "checkpoint_epoch_best.tpde")
    assert tpde.load_checkpoint(tmp_path / "checkpoint_epoch_2.5.tpde", best).keys() == moved.keys()


def test_a_newer_bundle_version_is_unsupported(bundles: Dict[str, bytes]) -> None:
    parts = split(bundles["flat"])
    parts.preamble = PREAMBLE[:4] + b"\x02" + PREAMBLE[5:]
    for reader in ("load_checkpoint", "checkpoint_info", "TPDECheckpointCompressor.decompress"):
        with pytest.raises(tpde.UnsupportedFormatError, match="major version 2"):
            READERS[reader](join(parts), Path("."))


def test_rebuild_refuses_excessive_depth_by_itself() -> None:
    """The library caps the metadata's depth (docs/FORMAT.md §9.5) before
    Python parses it; the rebuild does not rely on that."""
    node: Any = {"$tensor": "w"}
    for _ in range(150):
        node = [node]
    with pytest.raises(tpde.CorruptDataError, match="nests more than 100 levels deep"):
        tpde_structure.rebuild(node, {"w": 1})
    for _ in range(10_000):
        node = {"$tuple": [node]}
    with pytest.raises(tpde.CorruptDataError, match="nests more than 100 levels deep"):
        tpde_structure.rebuild(node, {"w": 1})


# --- the encoder never writes what the readers refuse -------------------------------


def test_encoder_refuses_structure_nested_too_deeply() -> None:
    enc = tpde.TemporalPositionDeltaEncoder()
    deep: Any = torch.zeros(1)
    for _ in range(33):  # 3 JSON levels per dict, under the skeleton's 3
        deep = {"d": deep}
    with pytest.raises(tpde.InvalidArgumentError, match="nested too deeply"):
        enc.compress_checkpoint(deep)
    ok: Any = torch.zeros(1)
    for _ in range(32):
        ok = {"d": ok}
    back = enc.decompress_checkpoint(enc.compress_checkpoint(ok))
    for _ in range(32):
        back = back["d"]
    assert torch.equal(back, torch.zeros(1))
    loop: List[Any] = [torch.zeros(1)]
    loop.append(loop)
    with pytest.raises(tpde.InvalidArgumentError, match="nested too deeply"):
        enc.compress_checkpoint({"loop": loop})


@pytest.mark.parametrize("depth", [150, 5000])
def test_encoder_refuses_user_metadata_nested_too_deeply(depth: int) -> None:
    user: Any = 1
    for _ in range(depth):
        user = [user]
    with pytest.raises(tpde.InvalidArgumentError, match="nest"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint({"w": torch.zeros(1)}, metadata={"u": user})


def test_encoder_refuses_names_that_are_not_unicode() -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="not valid Unicode"):
        tpde.TemporalPositionDeltaEncoder().compress_checkpoint({"w\ud800": torch.zeros(1)})


# --- decode limits (issue 7, item 5) -----------------------------------------------------

DECODERS: Dict[str, Callable[..., Any]] = {
    "load_checkpoint": lambda blob, **kw: tpde.load_checkpoint(blob, **kw),
    "decompress_checkpoint": lambda blob, **kw: tpde.TemporalPositionDeltaEncoder().decompress_checkpoint(blob, **kw),
    "decompress_parallel": lambda blob, **kw: tpde.TemporalPositionDeltaEncoder().decompress_parallel(blob, 2, **kw),
    "TPDECheckpointCompressor.decompress": lambda blob, **kw: tpde.TPDECheckpointCompressor().decompress(blob, **kw),
}


def _forbid_allocation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError(f"allocated {args} before checking the decode limit")

    monkeypatch.setattr(tpde_tensors, "empty", refuse)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_max_output_bytes_refuses_before_allocating(bundles: Dict[str, bytes], decoder: str,
                                                    monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    blob = bundles["flat"]
    total = sum(t["raw_size"] for t in tpde.checkpoint_info(blob)["tensors"])
    assert total > 100
    decode = DECODERS[decoder]
    assert decode(blob, max_output_bytes=total)["bias"].shape == (4,)  # exactly the limit is allowed
    _forbid_allocation(monkeypatch)
    with pytest.raises(tpde.DecodeLimitError) as caught:
        decode(blob, max_output_bytes=total - 1)
    assert f"{total:,} bytes" in str(caught.value) and f"limit of {total - 1:,}" in str(caught.value)
    encoder_file = tmp_path / "checkpoint_epoch_7.tpde"
    encoder_file.write_bytes(blob)
    with pytest.raises(tpde.DecodeLimitError):
        tpde.TemporalPositionDeltaEncoder(output_dir=tmp_path).load_checkpoint(7, max_output_bytes=100)


def test_max_output_environment_variable(bundles: Dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    blob = bundles["flat"]
    monkeypatch.setenv("TPDE_MAX_OUTPUT", "100")
    with pytest.raises(tpde.DecodeLimitError, match="limit of 100 "):
        tpde.load_checkpoint(blob)
    with pytest.raises(tpde.DecodeLimitError, match="TPDE_MAX_OUTPUT"):
        tpde.TPDECheckpointCompressor().decompress(blob)
    assert "bias" in tpde.load_checkpoint(blob, max_output_bytes=1 << 20)  # the argument wins
    monkeypatch.setenv("TPDE_MAX_OUTPUT", "1K")
    assert "bias" in tpde.load_checkpoint(blob)
    with pytest.raises(tpde.InvalidArgumentError, match="max_output_bytes"):
        tpde.load_checkpoint(blob, max_output_bytes=-1)


def _one_tebibyte_delta(bundles: Dict[str, bytes]) -> bytes:
    """The delta bundle with its 'bias' frame replaced by an identical
    delta frame (header only, 52 bytes) that claims an F32 tensor of 2^38
    elements: 1 TiB. Header checksum and index checksum are recomputed."""
    x = torch.arange(10, dtype=torch.float32)
    frame = bytearray(tpde.compress_delta(x, x))
    assert len(frame) == 52 and frame[6] == 1
    struct.pack_into("<Q", frame, 16, 1 << 40)  # raw_size
    struct.pack_into("<Q", frame, 32, 1 << 38)  # dims[0]
    struct.pack_into("<I", frame, 48, crc32c(bytes(frame[:48])))  # header CRC
    parts = split(bundles["delta"])
    parts.entries = [(name, bytes(frame) if name == b"bias" else f) for name, f in parts.entries]
    return join(parts)


@pytest.mark.parametrize("decoder", list(DECODERS))
def test_a_bundle_claiming_a_tebibyte_hits_the_default_limit(bundles: Dict[str, bytes], decoder: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TPDE_MAX_OUTPUT", raising=False)
    blob = _one_tebibyte_delta(bundles)
    info = {t["name"]: t for t in tpde.checkpoint_info(blob)["tensors"]}
    assert info["bias"]["raw_size"] == 1 << 40 and info["bias"]["identical"]
    prev = tpde.load_checkpoint(bundles["flat"])
    if decoder == "TPDECheckpointCompressor.decompress":
        dec = tpde.TPDECheckpointCompressor()
        dec.decompress(bundles["flat"])  # the chain's full checkpoint, so the delta is next
        decode: Callable[..., Any] = lambda blob, **kw: dec.decompress(blob, **kw)
    else:
        decode = DECODERS[decoder]
    for like in ("torch", "numpy"):
        with pytest.raises(tpde.DecodeLimitError, match=r"1,099,511,6\d\d,\d\d\d bytes"):
            decode(blob, like=like) if decoder != "decompress_parallel" else decode(blob)
    if decoder in ("load_checkpoint", "decompress_checkpoint"):
        with pytest.raises(tpde.DecodeLimitError):
            decode(blob, previous=prev)  # the limit comes before references are matched


# --- the cost of a bundle of many tiny entries -----------------------------------------------

_MEASURE = textwrap.dedent(r"""
    import json, sys
    import numpy as np
    import tpde
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    tpde.compress_tensor(np.zeros(1, np.uint8))  # load the library, start its runtime
    what, path = sys.argv[1], sys.argv[2]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS, so the peak below is this call's
    base = status("VmRSS")
    if what == "info":
        n = len(tpde.checkpoint_info(path)["tensors"])
    else:
        n = len(tpde.load_checkpoint(path, like="numpy"))
    print(json.dumps({"entries": n, "growth": status("VmHWM") - base}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_many_tiny_entries_cost_memory_in_proportion_to_the_input(tmp_path: Path, run_py: Any) -> None:
    """A bundle of 100k empty tensors (73 bytes of input each): reading its
    index, or decoding it, costs a bounded multiple of its size, measured as
    the peak RSS growth of a fresh process. The multiple is large (the
    index JSON and a dict per entry), hence the cap on entries
    (bundle.MaxEntries); this bounds it from regressing further."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        pytest.skip(f"cannot reset peak RSS here: {e}")
    count = 100_000
    frame = tpde.compress_tensor(torch.zeros(0, dtype=torch.uint8))
    meta = {"tpde": {"format": "tpde-checkpoint", "skeleton": None, "aliases": {}, "state_dict_metadata": None},
            "checkpoint": {"checkpoint_type": "full", "reference": None}}
    path = tmp_path / "many.tpde"
    path.write_bytes(join(Parts(PREAMBLE, [(b"t%d" % i, frame) for i in range(count)], json.dumps(meta).encode())))
    size = path.stat().st_size
    script = tmp_path / "measure.py"
    script.write_text(_MEASURE)
    for what in ("info", "load"):
        r = run_py(str(script), what, str(path), timeout=300)
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        assert m["entries"] == count
        assert m["growth"] < 48 * size + (64 << 20), (what, m, size)


def test_more_entries_than_the_cap_are_corrupt(bundles: Dict[str, bytes]) -> None:
    """The index says 2^20 + 1 entries (bundle.MaxEntries + 1): refused
    before anything is sized by the count."""
    blob = bytearray(bundles["flat"])
    index_len = struct.unpack_from("<Q", blob, len(blob) - 16)[0]
    at = len(blob) - 16 - index_len
    struct.pack_into("<I", blob, at, (1 << 20) + 1)
    struct.pack_into("<I", blob, len(blob) - 8, crc32c(bytes(blob[at:len(blob) - 16]), crc32c(bytes(blob[:8]))))
    with pytest.raises(tpde.CorruptDataError, match=r"1048577 entries \(max 1048576\)"):
        tpde.checkpoint_info(bytes(blob))
