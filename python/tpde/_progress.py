"""Progress bars of the tpde command: tqdm on stderr.

A bar is drawn only when stderr is a terminal and the command was not
given -q, and only once the work has taken longer than a short delay
(TPDE_PROGRESS_DELAY seconds, default 0.5), so quick commands print their
summary line and nothing else. It is cleared when the work ends; the
command then prints its summary.

Two kinds: Bar, for work the library counts (bytes coded or written,
through a progress callback), and a Bar without a total, for work it does
not count (restore, verify, rm: the C ABI has no counter for them yet),
which shows what is being done and for how long. A ticker thread redraws
both while the library holds the calling thread, so the elapsed time moves
even when the count does not. A bar may also show a status line of its own
(an add to an s3:// store: what was sent to the bucket), which the ticker
asks for anew at each redraw, so that it moves while the library holds the
calling thread (a commit waiting for the last uploads).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any, Callable, Dict, Optional

from ._text import human

__all__ = ["Bar", "DELAY_ENV", "wanted"]

#: Seconds of work before a bar appears (a float; 0 draws at once).
DELAY_ENV = "TPDE_PROGRESS_DELAY"
_DELAY = 0.5
_TICK_S = 0.2
_warned = False


def wanted(quiet: bool) -> bool:
    """Whether a bar may be drawn: stderr is a terminal and not quiet."""
    try:
        return not quiet and sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced, or closed
        return False


def _delay() -> float:
    try:
        return max(0.0, float(os.environ.get(DELAY_ENV, _DELAY)))
    except ValueError:
        return _DELAY


# Sizes in the units every tpde line uses (KiB, MiB: _text.human), not
# tqdm's, which scales counts by 1024 and rates by 1000 with one "M".
_COUNTED = "{desc}: {percentage:3.0f}%|{bar}| {done} / {todo} [{elapsed}<{remaining}, {speed}{postfix}]"
_UNCOUNTED = "{desc} [{elapsed}{postfix}]"


def _tqdm() -> Any:
    global _warned
    try:
        from tqdm import tqdm
    except ImportError:
        # tqdm is a dependency of tpde; an install without it (pip
        # --no-deps) still works, and says once why it shows no bar.
        if not _warned:
            _warned = True
            print("tpde: progress bars need tqdm (pip install tqdm)", file=sys.stderr)
        return None

    class Sized(tqdm):  # type: ignore[misc,valid-type]
        @property
        def format_dict(self) -> Dict[str, Any]:
            d = super().format_dict
            rate = d.get("rate")
            unit = getattr(self, "tpde_unit", None)  # None: bytes
            if unit is None:
                d.update(done=human(d["n"] or 0), todo=human(d["total"] or 0),
                         speed=f"{human(rate)}/s" if rate else "?/s")
            else:
                d.update(done=f"{d['n'] or 0:,}", todo=f"{d['total'] or 0:,} {unit}",
                         speed=f"{rate:.1f} {unit}/s" if rate else f"? {unit}/s")
            return d

    return Sized


class Bar:
    """One operation's bar. As a callback, bar(done, total) sets its
    count of bytes (or of unit, e.g. "checkpoints"); total=None until then, or when the work has no count
    (only the label and the time taken are shown). Use it as a context
    manager, or close() it."""

    def __init__(self, label: str, *, quiet: bool, total: Optional[int] = None, unit: Optional[str] = None,
                 status: Optional[Callable[[], Optional[str]]] = None) -> None:
        self._t: Any = None
        # status() -> the text shown after the rate (None: nothing), asked
        # at each redraw by the ticker thread, never under the lock.
        self._status = status
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: Optional[threading.Thread] = None
        if not wanted(quiet):
            return
        tqdm = _tqdm()
        if tqdm is None:
            return
        self._t = tqdm(desc=label, total=total, leave=False, delay=_delay(), file=sys.stderr, dynamic_ncols=True,
                       bar_format=_UNCOUNTED if total is None else _COUNTED, miniters=0, mininterval=_TICK_S / 2)
        self._t.tpde_unit = unit  # what it counts: None for bytes, else a plural noun
        self._ticker = threading.Thread(target=self._tick, name="tpde-progress", daemon=True)
        self._ticker.start()

    @property
    def drawn(self) -> bool:
        """Whether a bar is shown or may yet be (stderr a terminal, not quiet)."""
        return self._t is not None

    def _tick(self) -> None:
        while not self._stop.wait(_TICK_S):
            text = self._status() if self._status is not None else None
            with self._lock:
                if self._t is not None:
                    if text is not None and text != self._t.postfix:
                        self._t.set_postfix_str(text, refresh=False)
                    self._t.update(0)

    def __call__(self, done: int, total: int) -> None:
        with self._lock:
            t = self._t
            if t is None:
                return
            if total and t.total != total:
                t.total = total
                t.bar_format = _COUNTED
            if total and done >= total:
                t.mininterval = 0  # the last count is drawn, however soon it follows the one before
            if done != t.n:
                t.update(done - t.n)

    def close(self) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
            self._ticker = None
        with self._lock:
            if self._t is not None:
                self._t.close()
                self._t = None

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
