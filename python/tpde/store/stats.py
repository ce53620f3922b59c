"""Records turned into what Store returns: a checkpoint's info (info,
list), verify's report, the runs, and stats (sizes per checkpoint, ratio
per tensor group, elements changed per layer)."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional, Tuple

from ..errors import CorruptDataError, TPDEIOError, UnsupportedFormatError
from .counts import tensor_counts
from .handle import _DENIED, _Reader
from .types import CheckpointInfo, FileInfo, Problem, VerifyReport


def _info(entry: Dict[str, Any], counts: Optional[Dict[str, Optional[int]]] = None) -> CheckpointInfo:
    """A checkpoint's info from its reader entry; counts: tensors per file
    (store.counts), None to leave them uncounted."""
    rec = entry["record"]
    files, stored, max_err, max_chain = [], 0, 0.0, 1
    for f, chains in zip(rec["files"], entry["chains"]):
        files.append(FileInfo(path=f["path"], size=f["size"], mode=f["mode"], layout=f["layout"],
                              sha256=f["sha256"], tensors=None if counts is None else counts.get(f["path"]),
                              note=f.get("note", ""), frames=len(f["regions"]), digest=f.get("digest", "")))
        stored += f["skeleton"]["stored"]
        for r, n in zip(f["regions"], chains):
            stored += r["stored"]
            max_err = max(max_err, r["max_error"])
            max_chain = max(max_chain, n)
    return CheckpointInfo(step=rec["step"], tags=tuple(rec["tags"]), created=rec["created"], files=tuple(files),
                          raw_bytes=sum(f.size for f in files), stored_bytes=stored, max_error=max_err,
                          max_chain=max_chain, problem=entry.get("problem", ""))


def _counted(rd: _Reader, entry: Dict[str, Any], base: bool = False) -> CheckpointInfo:
    """_info, with each file's tensors counted (one checkpoint's headers
    and pickles read)."""
    rec = entry["record"]
    return _info(entry, tensor_counts(rd, rec["step"], rec["files"], 2 if base else 0))


def _infos(rd: _Reader) -> List[CheckpointInfo]:
    """Every checkpoint's info, oldest first; one that cannot be read (or
    read whole) with its problem."""
    out = []
    for s in rd.steps:
        try:
            out.append(_info(rd.entry(s, keep=False)))
        except (CorruptDataError, UnsupportedFormatError, TPDEIOError) as e:
            if isinstance(e, TPDEIOError) and e.errno in _DENIED:
                raise  # this user may not read it: nothing says it is damaged
            out.append(CheckpointInfo(step=s, tags=(), created="", files=(), raw_bytes=0, stored_bytes=0,
                                      max_error=0.0, max_chain=0, problem=str(e)))
    return out


def _runs(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Store.runs from the reader's list: newest None for a run holding no
    checkpoint, parent None, {"base": True} or {"run", "step"}."""
    for r in runs:
        r["newest"] = None if r["newest"] < 0 else r["newest"]
        p = r["parent"]
        r["parent"] = None if p is None else ({"base": True} if p.get("base") else
                                              {"run": p.get("run", ""), "step": p.get("step", 0)})
    return runs


def _report(res: Dict[str, Any]) -> VerifyReport:
    """verify's report from tpde_store_verify's result."""
    probs = tuple(Problem(step=p.get("step", 0), file=p.get("file", ""), region=p.get("region", ""),
                          object=p.get("object", ""), message=p["message"], base=p.get("base", False),
                          degraded=p.get("degraded", False), unchecked=p.get("unchecked", False))
                  for p in res["problems"])
    return VerifyReport(probs, res.get("cleaned"))


def _records(rd: _Reader) -> Tuple[List[Dict[str, Any]], Dict[Tuple[int, str, str], int], Dict[str, str]]:
    """(records, chain length by (step, file, region), {step: why} of the
    checkpoints whose record cannot be read) for stats."""
    records, chains, damaged = [], {}, {}
    for step in rd.steps:
        try:
            e = rd.entry(step, keep=False)
        except (CorruptDataError, UnsupportedFormatError) as err:
            damaged[str(step)] = str(err)
            continue
        records.append(e["record"])
        for f, ns in zip(e["record"]["files"], e["chains"]):
            for r, n in zip(f["regions"], ns):
                chains[(step, f["path"], r["name"])] = n
    return records, chains, damaged


# A number that is a whole component of a tensor name: between separators
# (".", "_", "/") or at either end. "layer.10" and "state/3" hold one,
# "fc1" and "conv2d" do not.
_NUMBER = re.compile(r"(?:(?<=[._/])|^)\d+(?=[._/]|$)")


def natural_key(name: str) -> Tuple[Any, ...]:
    """A sort key that orders the numbers inside names by value:
    layer.2 before layer.10, data/9 before data/10."""
    parts = re.split(r"(\d+)", name)
    # Even places hold text and odd places numbers, so tuples compare.
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def _group(file: str, region: str) -> str:
    """A tensor's group for stats: its file and name, with the numbers
    between separators as N (encoder.layer.N.attention.query.weight,
    state/N/exp_avg): the same parameter of every layer."""
    return f"{file}:{_NUMBER.sub('N', region)}"


def _layer(region: str) -> str:
    """The layer a tensor belongs to: its name up to its first number
    (encoder.layer.3, state/17), else its first component (embeddings)."""
    m = _NUMBER.search(region)
    if m:
        return region[:m.end()]
    return re.split(r"[./]", region, 1)[0] or region


def _disk_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _stats(snap: Dict[str, Any], chains: Dict[Tuple[int, str, str], int], path: str) -> Dict[str, Any]:
    seen: set = set()
    rows = []
    groups: Dict[str, Dict[str, Any]] = {}
    # step -> "file:layer" -> [elements changed, elements], over its deltas
    changes: Dict[int, Dict[str, List[float]]] = {}
    files: set = set()
    cps = snap["checkpoints"]
    for i, c in enumerate(cps):
        # A tensor identical to the next checkpoint's is stored once, with
        # no delta frame: it changed nothing.
        after = {(f["path"], r["name"]): r["sha256"] for f in cps[i + 1]["files"] for r in f["regions"]} \
            if i + 1 < len(cps) else {}
        new, raw = 0, 0
        for f in c["files"]:
            raw += f["size"]
            files.add(f["path"])
            objs = [(f["skeleton"]["object"], f["skeleton"]["stored"])]
            for r in f["regions"]:
                objs.append((r["object"], r["stored"]))
                g = groups.setdefault(_group(f["path"], r["name"]), {"raw_bytes": 0, "stored_bytes": 0, "names": set()})
                g["raw_bytes"] += r["size"]
                g["stored_bytes"] += r["stored"]
                g["names"].add(r["name"])
                same = not r.get("ref") and after.get((f["path"], r["name"])) == r["sha256"]
                if r.get("ref") or same:
                    acc = changes.setdefault(c["step"], {}).setdefault(f"{f['path']}:{_layer(r['name'])}", [0.0, 0])
                    acc[0] += (0.0 if same else r["changed"]) * r["size"]
                    acc[1] += r["size"]
            for o, n in objs:
                if o not in seen:
                    seen.add(o)
                    new += n
        rows.append({"step": c["step"], "raw_bytes": raw, "new_bytes": new, "files": len(c["files"]),
                     "max_chain": max([chains.get((c["step"], f["path"], r["name"]), 1)
                                       for f in c["files"] for r in f["regions"]] or [1])})
    raw_total = sum(r["raw_bytes"] for r in rows)
    stored = sum(r["new_bytes"] for r in rows)
    # A store in a bucket: the bytes of the objects its checkpoints name
    # (objects awaiting removal after the grace period are not counted:
    # they are the bucket's, not the store's); a local store: its folder.
    remote = path.startswith("s3://")
    disk = stored if remote else _disk_bytes(path)
    return {
        "checkpoints": rows,
        "raw_bytes": raw_total,
        "stored_bytes": stored,
        "disk_bytes": disk,
        "where": "bucket" if remote else "disk",
        "ratio": raw_total / disk if disk else None,
        # Every file path the checkpoints hold: what the "file:" of a key
        # below is (a path may hold a colon).
        "files": sorted(files, key=natural_key),
        # Ordered by file, then by name with numbers by value.
        "groups": {k: {"raw_bytes": v["raw_bytes"], "stored_bytes": v["stored_bytes"], "tensors": len(v["names"]),
                       "ratio": (v["raw_bytes"] / v["stored_bytes"]) if v["stored_bytes"] else None}
                   for k, v in sorted(groups.items(), key=lambda kv: natural_key(kv[0]))},
        # step -> "file:layer" -> the fraction of the layer's elements
        # (weighted by bytes) that differ from the tensors its delta frames
        # are coded against, 0 for tensors identical to the next
        # checkpoint's; a checkpoint with neither (a keyframe) is absent.
        "changed": {str(step): {layer: done / total if total else 0.0
                                for layer, (done, total) in sorted(layers.items(), key=lambda kv: natural_key(kv[0]))}
                    for step, layers in sorted(changes.items())},
    }
