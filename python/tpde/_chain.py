"""The chain and keyframe policy (docs/FORMAT.md §6.14): K and the
reference, shared by the store and TPDECheckpointCompressor. The rules live
in Go (core/chain); this module only asks them, so that one K means the same
bound for every series."""

from __future__ import annotations

import json
import numbers
from ctypes import byref, c_int32
from typing import Any, Dict, Optional

from ._native import call
from .errors import InvalidArgumentError


def policy(keyframe_interval: Optional[int] = None, reference: Optional[str] = None) -> Dict[str, Any]:
    """The policy document for the given fields (None: the default), after
    Go has checked it; it holds the K in effect."""
    doc: Dict[str, Any] = {}
    if keyframe_interval is not None:
        if isinstance(keyframe_interval, bool) or not isinstance(keyframe_interval, numbers.Integral):
            raise InvalidArgumentError(f"keyframe_interval must be an int, not {keyframe_interval!r}")
        doc["keyframe_interval"] = int(keyframe_interval)
    if reference is not None:
        if not isinstance(reference, str):
            raise InvalidArgumentError(f"reference must be 'previous' or 'base', not {reference!r}")
        doc["reference"] = reference
    k = c_int32(0)
    _forward(doc, 0, None, k)
    return {"keyframe_interval": k.value, "reference": doc.get("reference", "previous")}


def keyframe_next(doc: Dict[str, Any], since_keyframe: int) -> bool:
    """Whether the next checkpoint of a forward chain, since_keyframe
    checkpoints after its last keyframe (0: none yet), is a keyframe."""
    kf = c_int32(0)
    _forward(doc, since_keyframe, kf, None)
    return bool(kf.value)


def _forward(doc: Dict[str, Any], since: int, kf: Optional[c_int32], k: Optional[c_int32]) -> None:
    b = json.dumps(doc).encode("utf-8")
    call("tpde_chain_forward", b, len(b), since, byref(kf) if kf is not None else None,
         byref(k) if k is not None else None)
