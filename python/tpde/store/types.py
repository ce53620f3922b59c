"""What the store's methods return: a checkpoint's info (CheckpointInfo,
FileInfo) and verify's report (VerifyReport, Problem). Plain frozen
dataclasses; stats.py builds them from the records Go returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple


@dataclass(frozen=True)
class FileInfo:
    """One file of a checkpoint. sha256 is of the file's bytes, or, when
    digest is "regions" (a state dict added from memory, whose file only
    the store lays out), its regions digest (docs/FORMAT.md §11.4), which
    pins the same bytes and costs an add one hash of each tensor byte."""

    path: str
    size: int
    mode: int
    layout: str
    sha256: str
    #: The tensors the file holds, as its header or pickle lists them (a
    #: state dict's tied names included); 0 for a file that holds none.
    #: None where not counted: Store.list() reads records only, and a
    #: torch file stored whole, or a header that cannot be read, is not.
    tensors: Optional[int]
    #: Why a file that looks like a container was stored whole; "" else.
    note: str = ""
    #: Of its tensors (a torch file: its storages), those stored as frames
    #: of their own; smaller ones stay in the file's zstd-coded rest.
    frames: int = 0
    digest: str = ""


@dataclass(frozen=True)
class CheckpointInfo:
    """What the store holds of one checkpoint."""

    step: int
    tags: Tuple[str, ...]
    created: str
    files: Tuple[FileInfo, ...]
    raw_bytes: int
    #: Bytes of the objects this checkpoint's files are stored in (shared
    #: objects counted in full for every checkpoint that uses them).
    stored_bytes: int
    #: The largest |original - stored| of any element; 0.0 when every
    #: tensor decodes bit-exactly.
    max_error: float
    #: The most frames one of its tensors' decode walks.
    max_chain: int
    #: Why (part of) this checkpoint cannot be read; "" when it can. Only
    #: Store.list() returns damaged checkpoints; info() raises for them.
    problem: str = ""

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.stored_bytes if self.stored_bytes else float("inf")

    @property
    def lossless(self) -> bool:
        return self.max_error == 0.0

    @property
    def damaged(self) -> bool:
        return bool(self.problem)


@dataclass(frozen=True)
class Problem:
    step: int
    file: str
    region: str
    object: str
    message: str
    base: bool = False
    #: Nothing is lost: one copy of a record or of the manifest is damaged
    #: and the other serves. verify(repair=True) writes it anew.
    degraded: bool = False
    #: Not damage, and not checked: decoding it would exceed the decode
    #: limit (max_output_bytes / TPDE_MAX_OUTPUT); a higher limit checks it.
    unchecked: bool = False


@dataclass(frozen=True)
class VerifyReport:
    problems: Tuple[Problem, ...]
    cleaned: Optional[Dict[str, Any]] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def affected_steps(self) -> List[int]:
        """The checkpoints that cannot be read whole."""
        return sorted({p.step for p in self.problems if not p.base and not p.degraded and not p.unchecked})

    @property
    def unchecked_steps(self) -> List[int]:
        """The checkpoints not checked whole: over the decode limit."""
        return sorted({p.step for p in self.problems if not p.base and p.unchecked})

    @property
    def degraded(self) -> List[Problem]:
        """Damaged copies whose twin still serves (nothing lost)."""
        return [p for p in self.problems if p.degraded]
