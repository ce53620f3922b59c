"""Records turned into what Store returns: a checkpoint's info (info,
list), verify's report, the runs, and stats (sizes per checkpoint, ratio
per tensor group, elements changed per layer)."""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Tuple

from ..errors import CorruptDataError, TPDEIOError, UnsupportedFormatError
from .handle import _DENIED, _Reader
from .types import CheckpointInfo, FileInfo, Problem, VerifyReport


def _info(entry: Dict[str, Any]) -> CheckpointInfo:
    rec = entry["record"]
    files, stored, max_err, max_chain = [], 0, 0.0, 1
    for f, chains in zip(rec["files"], entry["chains"]):
        files.append(FileInfo(path=f["path"], size=f["size"], mode=f["mode"], layout=f["layout"],
                              sha256=f["sha256"], tensors=len(f["regions"]), note=f.get("note", ""),
                              digest=f.get("digest", "")))
        stored += f["skeleton"]["stored"]
        for r, n in zip(f["regions"], chains):
            stored += r["stored"]
            max_err = max(max_err, r["max_error"])
            max_chain = max(max_chain, n)
    return CheckpointInfo(step=rec["step"], tags=tuple(rec["tags"]), created=rec["created"], files=tuple(files),
                          raw_bytes=sum(f.size for f in files), stored_bytes=stored, max_error=max_err,
                          max_chain=max_chain, problem=entry.get("problem", ""))


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


_LAYER = re.compile(r"(?<=[._])\d+(?=[._]|$)")


def _group(file: str, region: str) -> str:
    """A tensor's group for stats: its name with layer numbers as N."""
    return f"{file}:{_LAYER.sub('N', region)}"


def _layer(region: str) -> str:
    m = re.search(r"^(.*?[._]\d+)(?=[._]|$)", region)
    return m.group(1) if m else region.split(".")[0]


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
    groups: Dict[str, Dict[str, float]] = {}
    changes: Dict[int, Dict[str, List[float]]] = {}
    for c in snap["checkpoints"]:
        new, raw = 0, 0
        for f in c["files"]:
            raw += f["size"]
            objs = [(f["skeleton"]["object"], f["skeleton"]["stored"])]
            for r in f["regions"]:
                objs.append((r["object"], r["stored"]))
                g = groups.setdefault(_group(f["path"], r["name"]), {"raw_bytes": 0, "stored_bytes": 0})
                g["raw_bytes"] += r["size"]
                g["stored_bytes"] += r["stored"]
                if r.get("ref"):
                    changes.setdefault(c["step"], {}).setdefault(_layer(r["name"]), []).append(r["changed"])
            for o, n in objs:
                if o not in seen:
                    seen.add(o)
                    new += n
        rows.append({"step": c["step"], "raw_bytes": raw, "new_bytes": new, "files": len(c["files"]),
                     "max_chain": max([chains.get((c["step"], f["path"], r["name"]), 1)
                                       for f in c["files"] for r in f["regions"]] or [1])})
    raw_total = sum(r["raw_bytes"] for r in rows)
    stored = sum(r["new_bytes"] for r in rows)
    disk = _disk_bytes(path)
    return {
        "checkpoints": rows,
        "raw_bytes": raw_total,
        "stored_bytes": stored,
        "disk_bytes": disk,
        "ratio": raw_total / disk if disk else None,
        "groups": {k: {**v, "ratio": (v["raw_bytes"] / v["stored_bytes"]) if v["stored_bytes"] else None}
                   for k, v in sorted(groups.items())},
        "changed": {str(step): {layer: sum(v) / len(v) for layer, v in sorted(layers.items())}
                    for step, layers in sorted(changes.items())},
    }
