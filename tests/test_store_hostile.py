"""Hostile checkpoint stores: manifests and records crafted by hand.

A store is JSON manifests (STORE/manifests/<20-digit generation>.json) that
name checkpoint records, and records that name objects; every object lies
under STORE/objects/xx/<its sha256>. Each case below takes a healthy store,
writes a crafted record under its own sha256 name and publishes it in a new
(newest) manifest generation, or crafts the manifest itself. Opening,
listing, loading, restoring and verifying such a store must raise a typed
tpde error (CorruptDataError, or UnsupportedFormatError for a later
layout), never crash, never return data other than what was added, and a
restore must never write outside its destination folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
import torch
import zstandard
from safetensors.torch import load_file, save_file

import tpde
from tpde.errors import CorruptDataError, TPDEIOError, UnsupportedFormatError

from conftest import tree_digest

TYPED = (CorruptDataError, UnsupportedFormatError)


# --- a healthy store and the tools to craft it ------------------------------


def _source(d: Path, step: int) -> Path:
    d.mkdir(parents=True)
    rng = np.random.default_rng(step)
    base = np.random.default_rng(99).standard_normal(2048).astype(np.float32)
    save_file({"a": torch.from_numpy(base + np.float32(0.01 * step)),
               "b": torch.from_numpy(rng.standard_normal(2048).astype(np.float32)),
               "c": torch.arange(1024, dtype=torch.int64) * step}, str(d / "model.safetensors"))
    (d / "sub").mkdir()
    (d / "sub" / "notes.txt").write_text(f"step {step}\n" * 40)
    return d


@pytest.fixture(scope="module")
def healthy(tmp_path_factory) -> Tuple[Path, Dict[int, Path]]:
    root = tmp_path_factory.mktemp("healthy")
    srcs = {s: _source(root / f"src-{s}", s) for s in range(5)}
    with tpde.Store(root / "store", keyframe_interval=3) as st:
        for s, p in srcs.items():
            st.add(p, step=s)
    return root / "store", srcs


def manifests(store: Path) -> List[Path]:
    return sorted((store / "manifests").glob("*.json"))


def newest(store: Path) -> Dict[str, Any]:
    return json.loads(manifests(store)[-1].read_text())


def get_object(store: Path, h: str) -> bytes:
    return (store / "objects" / h[:2] / h).read_bytes()


def put_object(store: Path, b: bytes) -> str:
    h = hashlib.sha256(b).hexdigest()
    p = store / "objects" / h[:2] / h
    p.parent.mkdir(exist_ok=True)
    if not p.exists():
        p.write_bytes(b)
    return h


def publish(store: Path, m: Any, *, raw: bytes | None = None, generation: int | None = None) -> Path:
    g = int(manifests(store)[-1].name[:-5]) + 1
    if raw is None:
        m = dict(m)
        m["generation"] = g if generation is None else generation
        raw = json.dumps(m, indent=1).encode()
    p = store / "manifests" / f"{g:020d}.json"
    p.write_bytes(raw)
    return p


def records(store: Path) -> List[Dict[str, Any]]:
    return [json.loads(get_object(store, c["object"])) for c in newest(store)["checkpoints"]]


def publish_records(store: Path, recs: Dict[int, Any]) -> None:
    """Publish a generation whose checkpoint i names the record recs[i]
    (a dict, or bytes written as they are)."""
    m = newest(store)
    for i, rec in recs.items():
        b = rec if isinstance(rec, bytes) else json.dumps(rec, indent=1).encode()
        m["checkpoints"][i]["object"] = put_object(store, b)
    publish(store, m)


def model_file(rec: Dict[str, Any]) -> Dict[str, Any]:
    return next(f for f in rec["files"] if f["path"] == "model.safetensors")


def region(rec: Dict[str, Any], name: str) -> Dict[str, Any]:
    return next(r for r in model_file(rec)["regions"] if r["name"] == name)


# --- the crafted cases -------------------------------------------------------

Case = Callable[[Path], None]


def _rec_case(fn: Callable[[List[Dict[str, Any]]], Any]) -> Case:
    def apply(store: Path) -> None:
        recs = records(store)
        orig = copy.deepcopy(recs)
        fn(recs)
        publish_records(store, {i: r for i, r in enumerate(recs) if r != orig[i]})

    return apply


def _manifest_case(fn: Callable[[Dict[str, Any]], Any]) -> Case:
    def apply(store: Path) -> None:
        m = newest(store)
        gen = fn(m)
        publish(store, m, generation=gen)

    return apply


def _raw_manifest(fn: Callable[[str], str]) -> Case:
    def apply(store: Path) -> None:
        m = newest(store)
        m["generation"] = int(manifests(store)[-1].name[:-5]) + 1
        publish(store, None, raw=fn(json.dumps(m, indent=1)).encode())

    return apply


def _raw_record(i: int, fn: Callable[[str], str]) -> Case:
    def apply(store: Path) -> None:
        publish_records(store, {i: fn(json.dumps(records(store)[i], indent=1)).encode()})

    return apply


def _set(obj: Dict[str, Any], **kw: Any) -> None:
    obj.update(kw)


def _swap_objects(recs: List[Dict[str, Any]]) -> None:
    # The newest checkpoint's keyframe of "a" replaced by its keyframe of "b":
    # a valid F32 frame of the same shape, under its own (true) name.
    a, b = region(recs[-1], "a"), region(recs[-1], "b")
    assert a["ref"] is None and b["ref"] is None
    a["object"], a["stored"] = b["object"], b["stored"]


def _drop_crcs_and_swap(recs: List[Dict[str, Any]]) -> None:
    # Without its CRC a region is checked by its sha256, as in a record
    # written before CRCs: dropping them must not let a swapped object by.
    for f in recs[-1]["files"]:
        for r in f["regions"]:
            r.pop("crc32c", None)
    recs[-1]["version"] = 1
    _swap_objects(recs)


def _digest_in_version_1(recs: List[Dict[str, Any]]) -> None:
    # a version 1 record in all else (no region CRCs): only the digest is wrong there
    for f in recs[4]["files"]:
        for r in f["regions"]:
            r.pop("crc32c", None)
    recs[4]["version"] = 1
    model_file(recs[4])["digest"] = "regions"


def _cycle(recs: List[Dict[str, Any]]) -> None:
    region(recs[0], "b")["ref"] = {"step": 1, "file": "model.safetensors", "region": "b"}
    region(recs[1], "b")["ref"] = {"step": 0, "file": "model.safetensors", "region": "b"}


def _long_chain(recs: List[Dict[str, Any]]) -> None:
    # K is 3: a chain 0 -> 1 -> 2 -> 3 -> 4 walks five frames.
    for i in range(4):
        region(recs[i], "b")["ref"] = {"step": i + 1, "file": "model.safetensors", "region": "b"}


def _self_ref(recs: List[Dict[str, Any]]) -> None:
    region(recs[2], "b")["ref"] = {"step": 2, "file": "model.safetensors", "region": "b"}


def _ref_missing_step(recs: List[Dict[str, Any]]) -> None:
    region(recs[0], "b")["ref"] = {"step": 77, "file": "model.safetensors", "region": "b"}


def _ref_missing_region(recs: List[Dict[str, Any]]) -> None:
    region(recs[0], "b")["ref"] = {"step": 4, "file": "model.safetensors", "region": "zzz"}


def _ref_other_dtype(recs: List[Dict[str, Any]]) -> None:
    # "a" is 2048 F32 and "c" 1024 I64: the same 8192 bytes, another dtype.
    region(recs[0], "a")["ref"] = {"step": 4, "file": "model.safetensors", "region": "c"}


def _ref_to_lossy(recs: List[Dict[str, Any]]) -> None:
    region(recs[4], "b")["max_error"] = 0.5
    region(recs[3], "b")["ref"] = {"step": 4, "file": "model.safetensors", "region": "b"}


def _ref_base_missing(recs: List[Dict[str, Any]]) -> None:
    region(recs[0], "b")["ref"] = {"base": True, "step": 0, "file": "model.safetensors", "region": "b"}


def _path(p: str) -> Callable[[List[Dict[str, Any]]], None]:
    def fn(recs: List[Dict[str, Any]]) -> None:
        for r in recs:
            next(f for f in r["files"] if f["path"] == "sub/notes.txt")["path"] = p
            r["files"].sort(key=lambda f: f["path"])

    return fn


def _ref_path(p: str) -> Callable[[List[Dict[str, Any]]], None]:
    def fn(recs: List[Dict[str, Any]]) -> None:
        region(recs[0], "b")["ref"] = {"step": 1, "file": p, "region": "b"}

    return fn


def _dup_file(recs: List[Dict[str, Any]]) -> None:
    recs[4]["files"].append(copy.deepcopy(recs[4]["files"][0]))


def _file_and_folder(recs: List[Dict[str, Any]]) -> None:
    f = copy.deepcopy(next(f for f in recs[4]["files"] if f["path"] == "sub/notes.txt"))
    f["path"] = "sub"
    recs[4]["files"].insert(0, f)


def _overlap(recs: List[Dict[str, Any]]) -> None:
    a, b = region(recs[4], "a"), region(recs[4], "b")
    b["offset"] = a["offset"] + 16


def _region_outside(recs: List[Dict[str, Any]]) -> None:
    c = region(recs[4], "c")
    c["offset"] = model_file(recs[4])["size"] - 8


def _shape_lies(recs: List[Dict[str, Any]]) -> None:
    region(recs[4], "b")["shape"] = [2047]


def _dtype_unknown(recs: List[Dict[str, Any]]) -> None:
    region(recs[4], "b")["dtype"] = "F128"


def _dtype_lies(recs: List[Dict[str, Any]]) -> None:
    # Same size, another dtype: the frame says F32, the record I32.
    r = region(recs[4], "b")
    r["dtype"] = "I32"


def _mode(m: int) -> Callable[[List[Dict[str, Any]]], None]:
    def fn(recs: List[Dict[str, Any]]) -> None:
        recs[4]["files"][0]["mode"] = m

    return fn


def _record_to_other_object(store: Path) -> None:
    # The manifest names, for checkpoint 4, a file whose bytes are another
    # record: its name is not the hash of what it holds.
    m = newest(store)
    h = m["checkpoints"][4]["object"]
    other = get_object(store, m["checkpoints"][3]["object"])
    p = store / "objects" / h[:2] / h
    p.chmod(0o644)
    p.write_bytes(other)


def _record_symlink(store: Path) -> None:
    m = newest(store)
    h = m["checkpoints"][4]["object"]
    p = store / "objects" / h[:2] / h
    outside = store.parent / "outside-record.json"
    shutil.copy(p, outside)
    p.unlink()
    p.symlink_to(outside)


def _object_symlink(store: Path) -> None:
    h = region(records(store)[4], "a")["object"]
    p = store / "objects" / h[:2] / h
    outside = store.parent / "outside-object"
    shutil.copy(p, outside)
    p.unlink()
    p.symlink_to(outside)


def _record_missing(store: Path) -> None:
    m = newest(store)
    m["checkpoints"][2]["object"] = hashlib.sha256(b"nothing").hexdigest()
    publish(store, m)


def _not_utf8(store: Path) -> None:
    m = newest(store)
    m["generation"] = int(manifests(store)[-1].name[:-5]) + 1
    publish(store, None, raw=json.dumps(m, indent=1).encode().replace(b'"previous"', b'"prev\xff\xfeious"'))


def _manifest_dir(store: Path) -> None:
    g = int(manifests(store)[-1].name[:-5]) + 1
    (store / "manifests" / f"{g:020d}.json").mkdir()


def _deep_json(store: Path) -> None:
    publish(store, None, raw=b"[" * 200_000 + b"]" * 200_000)


def _marker_version(store: Path) -> None:
    (store / "tpde-store.json").write_text('{"format": "tpde-store", "version": 2}\n')


def _marker_unknown(store: Path) -> None:
    (store / "tpde-store.json").write_text('{"format": "tpde-store", "version": 1, "x": 1}\n')


CASES: Dict[str, Tuple[Case, type]] = {
    # lying sizes
    "region-stored-lies": (_rec_case(lambda r: region(r[4], "a").update(stored=region(r[4], "a")["stored"] + 1)), CorruptDataError),
    "skeleton-stored-lies": (_rec_case(lambda r: model_file(r[4])["skeleton"].update(stored=3)), CorruptDataError),
    "file-size-bigger": (_rec_case(lambda r: model_file(r[4]).update(size=model_file(r[4])["size"] + 1)), CorruptDataError),
    "file-size-smaller": (_rec_case(lambda r: model_file(r[4]).update(size=model_file(r[4])["size"] - 1)), CorruptDataError),
    "region-outside-file": (_rec_case(_region_outside), CorruptDataError),
    "regions-overlap": (_rec_case(_overlap), CorruptDataError),
    "shape-lies": (_rec_case(_shape_lies), CorruptDataError),
    "dtype-unknown": (_rec_case(_dtype_unknown), CorruptDataError),
    "dtype-lies": (_rec_case(_dtype_lies), CorruptDataError),
    # lying hashes
    "file-sha256-lies": (_rec_case(lambda r: model_file(r[4]).update(sha256="0" * 64)), CorruptDataError),
    "region-object-swapped": (_rec_case(_swap_objects), CorruptDataError),
    "region-object-missing": (_rec_case(lambda r: region(r[4], "a").update(object="ab" * 32)), CorruptDataError),
    "hash-not-hex": (_rec_case(lambda r: region(r[4], "a").update(object="Z" * 64)), CorruptDataError),
    "hash-upper-case": (_rec_case(lambda r: region(r[4], "a").update(object=region(r[4], "a")["object"].upper())), CorruptDataError),
    "record-is-another-object": (_record_to_other_object, CorruptDataError),
    "record-missing": (_record_missing, CorruptDataError),
    "record-symlink": (_record_symlink, CorruptDataError),
    "object-symlink": (_object_symlink, CorruptDataError),
    # refs
    "ref-cycle": (_rec_case(_cycle), CorruptDataError),
    "ref-self": (_rec_case(_self_ref), CorruptDataError),
    "chain-longer-than-k": (_rec_case(_long_chain), CorruptDataError),
    "ref-missing-step": (_rec_case(_ref_missing_step), CorruptDataError),
    "ref-missing-region": (_rec_case(_ref_missing_region), CorruptDataError),
    "ref-other-dtype": (_rec_case(_ref_other_dtype), CorruptDataError),
    "ref-to-lossy": (_rec_case(_ref_to_lossy), CorruptDataError),
    "ref-to-absent-base": (_rec_case(_ref_base_missing), CorruptDataError),
    "ref-file-dotdot": (_rec_case(_ref_path("../model.safetensors")), CorruptDataError),
    # paths
    "path-dotdot": (_rec_case(_path("../escaped.txt")), CorruptDataError),
    "path-dotdot-inner": (_rec_case(_path("sub/../../escaped.txt")), CorruptDataError),
    "path-absolute": (_rec_case(_path("/tmp/tpde-escaped.txt")), CorruptDataError),
    "path-dot": (_rec_case(_path("./escaped.txt")), CorruptDataError),
    "path-empty-part": (_rec_case(_path("sub//escaped.txt")), CorruptDataError),
    "path-backslash": (_rec_case(_path("..\\escaped.txt")), CorruptDataError),
    "path-nul": (_rec_case(_path("sub/a\x00b")), CorruptDataError),
    "path-empty": (_rec_case(_path("")), CorruptDataError),
    "path-listed-twice": (_rec_case(_dup_file), CorruptDataError),
    "path-file-and-folder": (_rec_case(_file_and_folder), CorruptDataError),
    "mode-setuid": (_rec_case(_mode(0o4755)), CorruptDataError),
    "mode-huge": (_rec_case(_mode(1 << 31)), CorruptDataError),
    # strict JSON
    "manifest-duplicate-key": (_raw_manifest(lambda t: t.replace('"version": 1,', '"version": 1, "version": 1,', 1)), CorruptDataError),
    "record-duplicate-key": (_raw_record(4, lambda t: t.replace('"step": 4,', '"step": 4, "step": 4,', 1)), CorruptDataError),
    "record-duplicate-key-nested": (_raw_record(4, lambda t: t.replace('"layout":', '"size": 1, "layout":', 1)), CorruptDataError),
    "manifest-unknown-field": (_manifest_case(lambda m: m.update(extra=True)), CorruptDataError),
    "record-unknown-field": (_rec_case(lambda r: r[4].update(owner="me")), CorruptDataError),
    "region-unknown-field": (_rec_case(lambda r: region(r[4], "a").update(codec="mine")), CorruptDataError),
    "manifest-trailing-data": (_raw_manifest(lambda t: t + "\n{}"), CorruptDataError),
    "manifest-not-json": (_raw_manifest(lambda t: t[: len(t) // 3]), CorruptDataError),
    "manifest-not-utf8": (lambda store: _not_utf8(store), CorruptDataError),
    "manifest-control-char": (_raw_manifest(lambda t: t.replace("tpde-store-manifest", "tpde-store-manifest\x01")), CorruptDataError),
    "manifest-deeply-nested": (_deep_json, CorruptDataError),
    "manifest-is-a-folder": (_manifest_dir, CorruptDataError),
    # manifest semantics
    "generation-disagrees": (_manifest_case(lambda m: 3), CorruptDataError),
    "generation-zero": (_manifest_case(lambda m: 0), CorruptDataError),
    "steps-out-of-order": (_manifest_case(lambda m: m["checkpoints"].reverse()), CorruptDataError),
    "steps-duplicate": (_manifest_case(lambda m: m["checkpoints"].append(dict(m["checkpoints"][-1]))), CorruptDataError),
    "record-step-disagrees": (_rec_case(lambda r: r[2].update(step=99)), CorruptDataError),
    "keyframe-interval-zero": (_manifest_case(lambda m: m["config"].update(keyframe_interval=0)), CorruptDataError),
    "keyframe-interval-huge": (_manifest_case(lambda m: m["config"].update(keyframe_interval=10**9)), CorruptDataError),
    "reference-unknown": (_manifest_case(lambda m: m["config"].update(reference="next")), CorruptDataError),
    "base-policy-without-base": (_manifest_case(lambda m: m["config"].update(reference="base")), CorruptDataError),
    "lossy-negative": (_manifest_case(lambda m: m["config"].update(lossy=[{"pattern": "*", "threshold": -1}])), CorruptDataError),
    "format-wrong": (_manifest_case(lambda m: m.update(format="something-else")), CorruptDataError),
    "manifest-version-3": (_manifest_case(lambda m: m.update(version=3)), UnsupportedFormatError),
    "holder-in-version-1": (_manifest_case(lambda m: m["checkpoints"][0].update(holder="step-1")), CorruptDataError),
    "holder-outside": (_manifest_case(lambda m: m.update(version=2) or m["checkpoints"][0].update(holder="../x")),
                       CorruptDataError),
    "record-version-3": (_rec_case(lambda r: r[4].update(version=3)), UnsupportedFormatError),
    # region CRCs (record version 2): a lie, a value that is no u32, one in
    # a version 1 record, and dropped ones (the sha256 then still checks)
    "region-crc-lies": (_rec_case(lambda r: region(r[4], "a").update(crc32c=(region(r[4], "a")["crc32c"] + 1) % 2**32)),
                        CorruptDataError),
    "region-crc-not-u32": (_rec_case(lambda r: region(r[4], "a").update(crc32c=2**32)), CorruptDataError),
    "region-crc-negative": (_rec_case(lambda r: region(r[4], "a").update(crc32c=-1)), CorruptDataError),
    "region-crc-in-version-1": (_rec_case(lambda r: r[4].update(version=1)), CorruptDataError),
    "region-crc-dropped-and-object-swapped": (_rec_case(_drop_crcs_and_swap), CorruptDataError),
    # A regions digest (FORMAT §11.4): only in version 2 records, and of a known kind.
    "record-version-1-with-a-digest": (_rec_case(_digest_in_version_1), CorruptDataError),
    "digest-of-no-known-kind": (_rec_case(lambda r: model_file(r[4]).update(digest="x")), CorruptDataError),
    "marker-version-2": (_marker_version, UnsupportedFormatError),
    "marker-unknown-field": (_marker_unknown, CorruptDataError),
}


def _check(store: Path, srcs: Dict[int, Path], work: Path, expected: type) -> None:
    """Every operation either raises a typed error or gives exactly what was
    added; at least one raises `expected`; nothing appears outside DEST."""
    box = work / "box"
    box.mkdir()
    errors: List[BaseException] = []
    wrong: List[str] = []  # what must not happen, gathered so that one case reports all of it

    def attempt(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except TYPED as e:
            errors.append(e)
        except tpde.TPDEError as e:
            wrong.append(f"untyped error {type(e).__name__}: {str(e)[:160]}")
        return None

    st = attempt(lambda: tpde.Store(store))
    if st is not None:
        steps = attempt(st.steps)
        rep = attempt(lambda: st.verify(deep=True))
        if rep is not None:
            assert isinstance(rep, tpde.VerifyReport)
            if not rep.ok:
                errors.append(CorruptDataError("verify: " + str(rep.problems[0])))
        for step, src in srcs.items():
            got = attempt(lambda: st.load(step, file="model.safetensors"))
            if got is not None:
                want = load_file(str(src / "model.safetensors"))
                assert set(got) == set(want), (step, set(got))
                for k in want:
                    if not torch.equal(got[k].view(torch.uint8), want[k].view(torch.uint8)):
                        wrong.append(f"step {step}: load returned tensor {k!r} with bytes other than those added")
            dest = box / f"dest-{step}"
            if attempt(lambda: st.restore(step, dest)) is not None:
                if tree_digest(dest) != tree_digest(src):
                    wrong.append(f"step {step}: restore wrote bytes other than those added")
        st.close()
        del steps
    assert not wrong, wrong
    assert errors, "the crafted store was accepted everywhere"
    assert any(isinstance(e, expected) for e in errors), [type(e).__name__ for e in errors]
    # Nothing outside the destinations.
    assert sorted(p.name for p in box.iterdir()) == sorted(p.name for p in box.iterdir() if p.name.startswith("dest-"))
    assert not (work / "escaped.txt").exists() and not (box / "escaped.txt").exists()
    assert not Path("/tmp/tpde-escaped.txt").exists()
    for d in box.iterdir():
        for p in d.rglob("*"):
            assert p.resolve().is_relative_to(d.resolve()), p


@pytest.mark.parametrize("name", list(CASES))
def test_crafted_store_is_refused(tmp_path: Path, healthy, name: str) -> None:
    src_store, srcs = healthy
    store = tmp_path / "store"
    shutil.copytree(src_store, store, symlinks=True)
    craft, expected = CASES[name]
    craft(store)
    _check(store, srcs, tmp_path, expected)


# --- huge declared sizes: in a subprocess, so that a crash is a failure, not the end of the run

_HUGE = r"""
import json, sys, tpde
store, dest, rel, off = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def attempt(what, fn):
    try:
        fn()
        print(json.dumps([what, "ok"]), flush=True)
    except tpde.TPDEError as e:
        print(json.dumps([what, type(e).__name__, str(e)[:200]]), flush=True)
st = tpde.Store(store)
attempt("steps", st.steps)
def read(what, offset, n):
    with st._reader() as rd:
        print(json.dumps([what + "-bytes", rd.read(4, rel, offset, n).hex()]), flush=True)
attempt("read-header", lambda: read("read-header", 0, 8))
attempt("read-region", lambda: read("read-region", off, 16))
attempt("restore", lambda: st.restore(4, dest))
def verify():
    rep = st.verify(deep=True)
    print(json.dumps(["verify-ok", rep.ok]), flush=True)
attempt("verify", verify)
"""


def _huge_file(size: int) -> Callable[[List[Dict[str, Any]]], Any]:
    def fn(recs: List[Dict[str, Any]]) -> None:
        model_file(recs[4])["size"] = size

    return fn


def _huge_region(recs: List[Dict[str, Any]]) -> None:
    f = model_file(recs[4])
    last = f["regions"][-1]
    n = 1 << 38
    f["size"] = f["size"] - last["size"] + n * 8
    last["shape"], last["size"] = [n], n * 8


def _huge_region_max(recs: List[Dict[str, Any]]) -> None:
    f = model_file(recs[4])
    last = f["regions"][-1]
    n = (1 << 60) // 8
    f["size"] = last["offset"] + n * 8
    last["shape"], last["size"] = [n], n * 8


HUGE = {
    "file-size-1TiB": _huge_file(1 << 40),
    "file-size-2^62": _huge_file(1 << 62),
    "file-size-2^64-1": _huge_file((1 << 64) - 1),
    "region-size-2TiB": _huge_region,
    "region-size-2^60": _huge_region_max,
}


@pytest.mark.parametrize("name", list(HUGE))
def test_huge_declared_size_is_refused_without_crashing(tmp_path: Path, healthy, py_env, name: str) -> None:
    src_store, srcs = healthy
    store = tmp_path / "store"
    shutil.copytree(src_store, store)
    _rec_case(HUGE[name])(store)
    off = region(records(store)[4], "c")["offset"]
    proc = subprocess.run([sys.executable, "-c", _HUGE, str(store), str(tmp_path / "dest"), "model.safetensors",
                           str(off)], env=py_env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"crashed (rc {proc.returncode}): {proc.stderr[-1500:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    by = {r[0]: r[1:] for r in results}
    assert {"steps", "read-header", "read-region", "restore", "verify"} <= set(by), proc.stdout
    typed = ("CorruptDataError", "UnsupportedFormatError")
    # A read either fails typed or gives the bytes that were added there.
    data = (srcs[4] / "model.safetensors").read_bytes()
    for what, at, n in (("read-header", 0, 8), ("read-region", off, 16)):
        if by[what][0] == "ok":
            assert by[what + "-bytes"][0] == data[at:at + n].hex(), (what, by[what + "-bytes"])
        else:
            assert by[what][0] in typed, (what, by[what])
    assert by["restore"][0] in typed, ("restore", by["restore"])
    assert by["verify"][0] in typed or by["verify-ok"] == [False], by.get("verify-ok", by["verify"])


# --- symlinks planted in the destination ---------------------------------------


@pytest.fixture
def folder_store(tmp_path: Path) -> Tuple[Path, Path]:
    src = _source(tmp_path / "src", 1)
    with tpde.Store(tmp_path / "store") as st:
        st.add(src, step=1)
    return tmp_path / "store", src


def test_restore_refuses_a_planted_file_symlink(tmp_path: Path, folder_store) -> None:
    store, src = folder_store
    dest = tmp_path / "dest"
    dest.mkdir()
    victim = tmp_path / "victim.safetensors"
    victim.write_bytes(b"precious")
    (dest / "model.safetensors").symlink_to(victim)
    with tpde.Store(store) as st, pytest.raises(TPDEIOError):
        st.restore(1, dest)
    assert victim.read_bytes() == b"precious"
    assert (dest / "model.safetensors").is_symlink()


def test_restore_refuses_a_planted_folder_symlink(tmp_path: Path, folder_store) -> None:
    store, src = folder_store
    dest = tmp_path / "dest"
    dest.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (dest / "sub").symlink_to(outside, target_is_directory=True)
    with tpde.Store(store) as st, pytest.raises(TPDEIOError):
        st.restore(1, dest)
    assert list(outside.iterdir()) == []


def test_restore_of_a_state_dict_refuses_a_planted_symlink(tmp_path: Path) -> None:
    with tpde.Store(tmp_path / "store") as st:
        st.add({"w": torch.randn(64, 64)}, step=1)
        dest = tmp_path / "dest"
        dest.mkdir()
        victim = tmp_path / "victim.txt"
        victim.write_bytes(b"precious")
        (dest / "state_dict.pt").symlink_to(victim)
        with pytest.raises(TPDEIOError):
            st.restore(1, dest)
    assert victim.read_bytes() == b"precious", "restore wrote through a symlink, outside DEST"


# --- checksum-consistent, hostile content (issue 17, items 12 and 15) ----------
#
# Every object below hashes to its name and every region to its record's
# sha256: what is hostile is the *content* of a file's verbatim bytes (its
# skeleton object): a safetensors header, a state dict header, a torch
# pickle. Such a file no longer hashes to its record's whole-file sha256,
# which a load does not check (it reads the header and the regions, each
# region checked by its own hash) and a restore does: load must fail typed,
# restore must fail CorruptDataError, both naming the store, the checkpoint
# and the file, and neither may print a control character.

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _file_of(rec: Dict[str, Any], path: str) -> Dict[str, Any]:
    return next(f for f in rec["files"] if f["path"] == path)


def craft_file(store: Path, i: int, path: str, fn: Callable[[bytes], bytes]) -> None:
    """Checkpoint i's file path rewritten by fn, which gets the file's bytes
    with zeros where its regions lie and must return as many bytes, the
    regions untouched: the verbatim bytes around them become a new skeleton
    object (u64 V, one zstd frame), under its true name, in a new record."""
    rec = records(store)[i]
    f = _file_of(rec, path)
    sk = get_object(store, f["skeleton"]["object"])
    (v,) = struct.unpack("<Q", sk[:8])
    verbatim = zstandard.ZstdDecompressor().decompress(sk[8:], max_output_size=v)
    assert len(verbatim) == v
    spans, pos = [], 0  # the verbatim spans [lo, hi) of the file, in order
    for r in f["regions"]:
        spans.append((pos, r["offset"]))
        pos = r["offset"] + r["size"]
    spans.append((pos, f["size"]))
    full, at = bytearray(f["size"]), 0
    for lo, hi in spans:
        full[lo:hi] = verbatim[at:at + hi - lo]
        at += hi - lo
    new = fn(bytes(full))
    assert len(new) == len(full), "a crafted file keeps its size (the record's offsets stay valid)"
    for r in f["regions"]:
        assert new[r["offset"]:r["offset"] + r["size"]] == bytes(r["size"]), "a crafted file keeps its regions"
    assert new != bytes(full)
    out = b"".join(new[lo:hi] for lo, hi in spans)
    obj = struct.pack("<Q", v) + zstandard.ZstdCompressor().compress(out)
    f["skeleton"] = {"object": put_object(store, obj), "stored": len(obj)}
    publish_records(store, {i: rec})


def _json_header(raw: Any) -> Callable[[bytes], bytes]:
    """A file (safetensors or tpde state dict: a u64 length N, N bytes of
    JSON) whose header is raw (text, or a value dumped as JSON), padded
    with spaces to the same N so that every offset stays where it was."""
    def fn(b: bytes) -> bytes:
        (n,) = struct.unpack("<Q", b[:8])
        text = (raw if isinstance(raw, str) else json.dumps(raw, separators=(",", ":"))).encode()
        assert len(text) <= n, (len(text), n)
        return b[:8] + text.ljust(n, b" ") + b[8 + n:]

    return fn


def _header_of(b: bytes) -> Dict[str, Any]:
    (n,) = struct.unpack("<Q", b[:8])
    return json.loads(b[8:8 + n])


def _edit_header(edit: Callable[[Dict[str, Any]], Any]) -> Callable[[bytes], bytes]:
    """The file's own JSON header, changed by edit (which may return a new
    value to write instead), at the same length."""
    def fn(b: bytes) -> bytes:
        h = _header_of(b)
        out = edit(h)
        return _json_header(h if out is None else out)(b)

    return fn


# Entries of model.safetensors (_source): "a" is F32 [2048] at data bytes
# [8192, 16384); "c" I64 [1024] at [0, 8192).
_A = {"dtype": "F32", "shape": [2048], "data_offsets": [8192, 16384]}
_ESC = "\x1b]0;pwned\x07"

SAFETENSORS: Dict[str, Any] = {
    "entry-not-an-object": {"a": [8192, 16384]},
    "entry-null": {"a": None},
    "dtype-a-list": {"a": {**_A, "dtype": ["F32"]}},
    "dtype-unknown": {"a": {**_A, "dtype": "Q99"}},
    "dtype-escape-sequence": {"a": {**_A, "dtype": _ESC + "F32"}},
    "dtype-missing": {"a": {"shape": [2048], "data_offsets": [8192, 16384]}},
    "shape-a-string": {"a": {**_A, "shape": "2048"}},
    "shape-negative": {"a": {**_A, "shape": [-1, -2048]}},
    "shape-float": {"a": {**_A, "shape": [2048.0]}},
    "shape-bool": {"a": {**_A, "shape": [True] * 3}},
    "shape-too-large": {"a": {**_A, "shape": [1 << 62, 1 << 62]}},
    "offsets-outside-the-file": {"a": {**_A, "shape": [1 << 18], "data_offsets": [0, 1 << 20]}},
    "offsets-reversed": {"a": {**_A, "data_offsets": [16384, 8192]}},
    "offsets-10^30": {"a": {**_A, "data_offsets": [10**30, 10**30 + 8192]}},
    "offsets-negative": {"a": {**_A, "data_offsets": [-8192, 0]}},
    "offsets-three": {"a": {**_A, "data_offsets": [8192, 16384, 16384]}},
    "header-a-list": [{"a": _A}],
    "header-a-string": "model",
    "header-not-json": '{"a": {"dtype": "F32", "sha',
    "metadata-a-list": {"__metadata__": ["format", "pt"], "a": _A},
    "metadata-nested": {"__metadata__": {"format": {"pt": 1}}, "a": _A},
    "key-repeated": '{"a": %s, "a": %s}' % (json.dumps(_A), json.dumps({**_A, "data_offsets": [0, 8192]})),
}


def _header_length(n: int) -> Callable[[bytes], bytes]:
    return lambda b: struct.pack("<Q", n) + b[8:]


SAFETENSORS_RAW: Dict[str, Callable[[bytes], bytes]] = {
    "header-length-past-the-file": _header_length(1 << 40),
    "header-length-2^64-1": _header_length((1 << 64) - 1),
}


def _sd(edit: Callable[[Dict[str, Any]], Any]) -> Callable[[bytes], bytes]:
    return _edit_header(edit)


def _sd_entry(tensor: str, **kw: Any) -> Callable[[Dict[str, Any]], None]:
    def edit(h: Dict[str, Any]) -> None:
        next(e for e in h["tensors"] if e["name"] == tensor).update(kw)

    return edit


def _sd_repeat_name(h: Dict[str, Any]) -> None:
    h["tensors"][1]["name"] = h["tensors"][0]["name"]


# The state dict added below: "w" F32 [64, 64], "x.y" I64 [2000], "tied"
# an alias of "w", nested under a skeleton.
STATE_DICT: Dict[str, Callable[[bytes], bytes]] = {
    "tensors-not-a-list": _sd(lambda h: h.update(tensors={e["name"]: e for e in h["tensors"]})),
    "tensor-entry-not-an-object": _sd(lambda h: h.update(tensors=[5])),
    "tensor-name-not-a-string": _sd(_sd_entry("w", name=7)),
    "tensor-name-repeated": _sd(_sd_repeat_name),
    "alias-to-unknown-tensor": _sd(lambda h: h.update(aliases={"tied": "nowhere"})),
    "aliases-a-list": _sd(lambda h: h.update(aliases=["tied", "w"])),
    "skeleton-unknown-tag": _sd(lambda h: h.update(skeleton={"$bogus": 1})),
    "skeleton-names-missing-tensor": _sd(lambda h: h.update(skeleton={"$tensor": "missing" + _ESC})),
    "skeleton-a-dict-of-numbers": _sd(lambda h: h.update(skeleton={"$dict": [[1, 2, 3]]})),
    "nbytes-disagrees-with-shape": _sd(_sd_entry("w", nbytes=8)),
    "nbytes-negative": _sd(_sd_entry("w", nbytes=-16384)),
    "offset-a-string": _sd(_sd_entry("w", offset="0")),
    "offset-outside-the-file": _sd(_sd_entry("w", offset=1 << 40)),
    "dtype-unknown": _sd(_sd_entry("w", dtype="Q99")),
    "shape-negative": _sd(_sd_entry("w", shape=[-64, -64])),
    "format-other": _sd(lambda h: h.update(format="tpde-state-dict-2")),
    "header-a-list": _sd(lambda h: [h]),
    "key-repeated": lambda b: _json_header(
        json.dumps(_header_of(b), separators=(",", ":")).replace('"version":1', '"version":1,"version":1', 1))(b),
}


def _replace(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    def fn(b: bytes) -> bytes:
        assert len(old) == len(new) and b.count(old) >= 1
        return b.replace(old, new, 1)

    return fn


def _zip64_cd_offset(value: int) -> Callable[[bytes], bytes]:
    # The zip64 end-of-central-directory record (torch.save writes one):
    # its central directory offset is the u64 at byte 48.
    def fn(b: bytes) -> bytes:
        at = b.rfind(b"PK\x06\x06")
        assert at > 0
        return b[:at + 48] + struct.pack("<Q", value) + b[at + 56:]

    return fn


def _truncate_pickle(b: bytes) -> bytes:
    # The pickle's last opcode, STOP ('.'), made NONE ('N'): the unpickler
    # runs out of input.
    at = b.find(b"u.")
    assert at > 0
    return b[:at + 1] + b"N" + b[at + 2:]


PICKLE: Dict[str, Callable[[bytes], bytes]] = {
    # torch refuses a GLOBAL it does not allow with a message in ANSI bold.
    "global-not-allowed": _replace(b"collections\nOrderedDict", b"collections\ndefaultdict"),
    "global-blocked": _replace(b"collections\nOrderedDict", b"subprocess\ncheck_output"),
    "truncated": _truncate_pickle,
    "storage-key-unknown": _replace(b"X\x01\x00\x00\x000q", b"X\x01\x00\x00\x009q"),
    # miniz seeks to the offset it reads: Python's BytesIO says
    # "ValueError: negative seek value".
    "negative-seek": _zip64_cd_offset((1 << 64) - 100),
    "central-directory-past-the-end": _zip64_cd_offset(1 << 62),
}

# (step, file) of each kind of file in the store below.
_KINDS = {"safetensors": (4, "model.safetensors"), "state-dict": (5, "state_dict.tpde"),
          "pickle": (6, "model.pt")}

CONTENT: Dict[str, Tuple[str, Callable[[bytes], bytes]]] = {
    **{f"safetensors-{k}": ("safetensors", _json_header(v)) for k, v in SAFETENSORS.items()},
    **{f"safetensors-{k}": ("safetensors", v) for k, v in SAFETENSORS_RAW.items()},
    **{f"state-dict-{k}": ("state-dict", v) for k, v in STATE_DICT.items()},
    **{f"pickle-{k}": ("pickle", v) for k, v in PICKLE.items()},
}


@pytest.fixture(scope="module")
def content_store(tmp_path_factory, healthy) -> Path:
    """healthy's store and two checkpoints more: 5, a state dict added from
    Python; 6, a folder holding a torch.save (zip) file."""
    root = tmp_path_factory.mktemp("content")
    store = root / "store"
    shutil.copytree(healthy[0], store)
    w = torch.randn(64, 64)
    pt = root / "pt"
    pt.mkdir()
    torch.save({"w": torch.randn(64, 64), "n": torch.arange(3)}, pt / "model.pt")
    with tpde.Store(store) as st:
        st.add({"w": w, "x": {"y": torch.arange(2000)}, "tied": w}, step=5)
        st.add(pt, step=6)
    return store


def assert_names(e: BaseException, store: Path, step: int, file: str) -> None:
    text = str(e)
    assert str(store) in text, text
    assert f"checkpoint {step}" in text, text
    assert file in text, text
    assert not CONTROL.search(text), f"a control character in {text!r}"
    # torch's advice for a pickle it refuses is to load it again unsafely:
    # never to be passed on for a file read from an untrusted store.
    assert "weights_only` set to `False" not in text and "weights_only=False" not in text, text


@pytest.mark.parametrize("name", list(CONTENT))
def test_hostile_content_is_refused_typed_and_named(tmp_path: Path, content_store: Path, name: str) -> None:
    kind, fn = CONTENT[name]
    step, file = _KINDS[kind]
    store = tmp_path / "store"
    shutil.copytree(content_store, store)
    i = next(n for n, c in enumerate(newest(store)["checkpoints"]) if c["step"] == step)
    craft_file(store, i, file, fn)
    with tpde.Store(store) as st:
        # Never another type (RuntimeError, TypeError, KeyError, ctypes'
        # ArgumentError, torch's UnpicklingError...): pytest.raises would
        # let those through as they are, failing the test with their type.
        with pytest.raises(tpde.TPDEError) as load_err:
            st.load(step, file=file, unpickle=True)
        assert isinstance(load_err.value, CorruptDataError), repr(load_err.value)
        assert_names(load_err.value, store, step, file)
        # The file no longer hashes to what was added: restore refuses it,
        # and leaves nothing behind.
        dest = tmp_path / "dest"
        with pytest.raises(CorruptDataError) as restore_err:
            st.restore(step, dest)
        assert_names(restore_err.value, store, step, file)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
        # Damage stays local: checkpoint 3 (coded against 4's tensors, not
        # its verbatim bytes) still loads.
        assert set(st.load(3, file="model.safetensors")) == {"a", "b", "c"}


# --- names and tags that would draw on a terminal (issue 17, item 15) -----------

# A record naming a file, or tagging its checkpoint, with a newline (a fake
# line in a listing) or an escape sequence (xterm's "set window title",
# ESC ] 0 ; ... BEL): the record is corrupt (docs/FORMAT.md §11.4), and nothing that
# reports it may print the text raw.
_FAKE = "FAKE LINE"


def _rec0(edit: Callable[[Dict[str, Any]], Any]) -> Case:
    # Checkpoint 0: the oldest; no other checkpoint's chain passes through
    # its record, so the damage is its own.
    return _rec_case(lambda recs: edit(recs[0]))


def _rename_notes(new: str) -> Callable[[Dict[str, Any]], None]:
    def edit(rec: Dict[str, Any]) -> None:
        _file_of(rec, "sub/notes.txt")["path"] = new
        rec["files"].sort(key=lambda f: f["path"])

    return edit


TERMINAL: Dict[str, Case] = {
    "path-newline": _rec0(_rename_notes(f"sub/x\n{_FAKE}")),
    "path-escape": _rec0(_rename_notes(f"sub/{_ESC}notes.txt")),
    "path-c1-csi": _rec0(_rename_notes("sub/\x9b31mnotes.txt")),
    "tag-newline": _rec0(lambda rec: rec.update(tags=[f"ok\n{_FAKE}"])),
    "tag-escape": _rec0(lambda rec: rec.update(tags=[f"ok{_ESC}"])),
    "created-escape": _rec0(lambda rec: rec.update(created=f"{_ESC}2026-01-01T00:00:00Z")),
}

# A control character in the output: C0 but newline, DEL, and C1 (as UTF-8).
_RAW_CONTROL = re.compile(rb"[\x00-\x09\x0b-\x1f\x7f]|\xc2[\x80-\x9f]")


@pytest.mark.parametrize("name", list(TERMINAL))
def test_control_characters_in_a_record_are_never_printed_raw(tmp_path: Path, healthy, py_env, name: str) -> None:
    store = tmp_path / "store"
    shutil.copytree(healthy[0], store)
    TERMINAL[name](store)
    with tpde.Store(store) as st:
        # The store opens and lists; the checkpoint is listed as damaged.
        assert st.steps() == [0, 1, 2, 3, 4]
        infos = {i.step: i for i in st.list()}
        assert sorted(infos) == [0, 1, 2, 3, 4]
        assert infos[0].damaged and infos[0].problem
        assert not CONTROL.search(infos[0].problem), infos[0].problem
        assert not any(infos[s].damaged for s in (1, 2, 3, 4))
        with pytest.raises(CorruptDataError) as err:
            st.restore(0, tmp_path / "dest")
        assert not CONTROL.search(str(err.value)), str(err.value)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "restore created a file"
        assert st.load(4, file="model.safetensors").keys() == {"a", "b", "c"}
    for args in (["ls"], ["ls", "--json"], ["info"], ["info", "--json"], ["info", "0"], ["info", "4"],
                 ["verify", "--shallow"], ["stats"], ["restore", "0", str(tmp_path / "dest2")]):
        p = subprocess.run([sys.executable, "-m", "tpde", args[0], str(store), *args[1:]], env=py_env,
                           capture_output=True, timeout=300)
        for stream, out in (("stdout", p.stdout), ("stderr", p.stderr)):
            assert not _RAW_CONTROL.search(out), (args, stream, out[-600:])
            assert not any(line.startswith(_FAKE.encode()) for line in out.splitlines()), (args, stream, out)
        assert b"Traceback" not in p.stderr, (args, p.stderr[-2000:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"], "tpde restore created a file"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700)])
def test_restore_gives_a_crafted_mode_less_the_umask(tmp_path: Path, healthy, umask: int, mode: int) -> None:
    # A record may say 0o777 (docs/FORMAT.md §11.4 allows it): the file is created with it
    # less the umask, as any new file, never chmod-ed world-writable.
    store = tmp_path / "store"
    shutil.copytree(healthy[0], store)
    _rec_case(lambda recs: _file_of(recs[4], "model.safetensors").update(mode=0o777))(store)
    old = os.umask(umask)
    try:
        with tpde.Store(store) as st:
            st.restore(4, tmp_path / "dest")
    finally:
        os.umask(old)
    assert stat_mode(tmp_path / "dest" / "model.safetensors") == mode
    assert (tmp_path / "dest" / "model.safetensors").read_bytes() == (healthy[1][4] / "model.safetensors").read_bytes()


def stat_mode(p: Path) -> int:
    return p.stat().st_mode & 0o7777


# --- a state dict's regions digest (FORMAT §11.4): each tensor byte hashed once at add, wrong data still caught

def _state_dict_store(root: Path) -> Tuple[Path, Dict[str, Any]]:
    store = root / "sd-store"
    g = torch.Generator().manual_seed(3)
    sd = {"a": torch.randn(64, 64, generator=g), "b": torch.randn(64, 64, generator=g), "n": torch.arange(3)}
    with tpde.Store(store) as st:
        st.add(sd, step=1)
        f = st.info(1).files[0]
        assert (f.layout, f.digest, f.tensors, f.frames) == ("state-dict", "regions", 3, 2)  # n is in the skeleton
    return store, sd


def test_a_state_dict_named_with_another_tensors_object_is_refused(tmp_path: Path) -> None:
    # a and b are both 64x64 float32: b's frame decodes into a's place
    # with every CRC of its own intact; only a's sha256 tells.
    store, sd = _state_dict_store(tmp_path)
    recs = records(store)
    f = recs[0]["files"][0]
    ra, rb = (next(r for r in f["regions"] if r["name"] == n) for n in ("a", "b"))
    ra["object"], ra["stored"] = rb["object"], rb["stored"]
    publish_records(store, {0: recs[0]})
    with tpde.Store(store) as st:
        with pytest.raises(CorruptDataError, match="decodes to bytes other than were added"):
            st.load(1)
        with pytest.raises(CorruptDataError):
            st.restore(1, tmp_path / "out")
        assert not st.verify(deep=True).ok
    assert not (tmp_path / "out").exists()


def test_state_dicts_whose_digest_lies_are_refused_on_restore_and_load_checked(tmp_path: Path) -> None:
    # Two ranks' state dicts, as DCP stages them: a checkpoint of several
    # files is restored file by file in Go, each checked against its sha256.
    store = tmp_path / "sd-store"
    g = torch.Generator().manual_seed(4)
    sds = [{"a": torch.randn(64, 64, generator=g)}, {"a": torch.randn(64, 64, generator=g)}]
    with tpde.Store(store) as st:
        parts = [st.stage() for _ in sds]
        descs = []
        for k, (part, sd) in enumerate(zip(parts, sds)):
            part.add(sd, name=f"__{k}.tpde")
            descs.append(part.finish())
        st.commit(descs, step=1)
        for part in parts:
            part.close()
        assert [(f.path, f.digest) for f in st.info(1).files] == [("__0.tpde", "regions"), ("__1.tpde", "regions")]
        st.restore(1, tmp_path / "good")
    recs = records(store)
    recs[0]["files"][1]["sha256"] = hashlib.sha256(b"another file").hexdigest()
    publish_records(store, {0: recs[0]})
    with tpde.Store(store) as st:
        # Each tensor is checked on its own (its CRC): the load is right.
        got = st.load(1, file="__1.tpde")
        assert torch.equal(got["a"], sds[1]["a"])
        with pytest.raises(CorruptDataError, match="restores to bytes that hash to"):
            st.restore(1, tmp_path / "out")
        rep = st.verify(deep=True)
        assert not rep.ok and {p.file for p in rep.problems} == {"__1.tpde"}
    assert not (tmp_path / "out").exists()
