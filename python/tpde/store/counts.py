"""How many tensors each file of a checkpoint holds, as its user counts
them: a safetensors file's header entries, a state dict's names (tied
ones included), a torch file's tensors as its pickle rebuilds them.

A record lists a file's regions, which are not that: tensors under the
store's object size stay in the file's skeleton, and a torch file's regions
are storages, which tensors may share. So the counts are read from the
files' headers and pickles, through the reader: Go parses the tensor
files' headers (tpde_store_reader_tensors); a torch file's pickle is read
back from the store and walked with pickletools, nothing unpickled.
"""

from __future__ import annotations

import io
from typing import Any, Dict, List, Optional

from .. import _torchfile, _torchlegacy
from ..errors import CorruptDataError, InvalidArgumentError, TPDEError
from .handle import _Reader, call_json

#: A torch file's bytes read to find its pickle: a legacy file's five
#: pickles lie before its storages; a zip's data.pkl and directory are read
#: through a seekable view, a block at a time.
_BLOCK = 1 << 16
_MAX_HEAD = 64 << 20


class _Stored(io.RawIOBase):
    """A stored file of a checkpoint as a seekable, read-only binary file."""

    def __init__(self, rd: _Reader, step: int, rel: str, size: int) -> None:
        super().__init__()
        self.rd, self.step, self.rel, self.size, self.pos = rd, step, rel, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, b: Any) -> int:
        n = max(0, min(len(b), self.size - self.pos))
        if n:
            b[:n] = self.rd.read(self.step, self.rel, self.pos, n)
            self.pos += n
        return n


def tensor_counts(rd: _Reader, step: int, files: List[Dict[str, Any]], which: int = 0) -> Dict[str, Optional[int]]:
    """{path: how many tensors it holds} for the record's files of
    checkpoint step (which: 0 that step, 2 the base, as the reader's
    record calls take it): 0 for a file that is no tensor file, None where
    it cannot be told (a torch file stored whole, a header or pickle that
    cannot be read: tpde verify says what is damaged)."""
    out: Dict[str, Optional[int]] = {}
    if any(f["layout"] in ("safetensors", "state-dict") for f in files):
        try:
            for t in call_json("tpde_store_reader_tensors", rd.handle, step, which, None)["files"]:
                aliases = (t.get("meta") or {}).get("aliases") if t["layout"] == "state-dict" else None
                out[t["path"]] = len(t["tensors"]) + len(aliases or {})
        except (CorruptDataError, InvalidArgumentError):
            pass  # each such file is None below
    for f in files:
        if f["path"] in out:
            continue
        layout = f["layout"]
        if layout == "raw":
            out[f["path"]] = None if f.get("note") else 0
        elif layout in ("torch-zip", "torch-legacy") and which == 0:
            out[f["path"]] = _torch_count(rd, step, f)
        else:
            out[f["path"]] = None
    return out


def _torch_count(rd: _Reader, step: int, f: Dict[str, Any]) -> Optional[int]:
    try:
        if f["layout"] == "torch-zip":
            view = io.BufferedReader(_Stored(rd, step, f["path"], f["size"]), _BLOCK)
            return _torchfile.count_tensors(view)
        regions = f["regions"]
        head = min(f["size"], _MAX_HEAD, regions[0]["offset"] if regions else f["size"])
        return _torchlegacy.count_tensors(rd.read(step, f["path"], 0, head))
    except (TPDEError, OSError, ValueError):
        return None


__all__ = ["tensor_counts"]
