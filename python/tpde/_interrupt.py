"""Long library calls that a signal can stop.

A ctypes call holds the calling thread until it returns, and Python runs a
signal handler only between bytecodes: a SIGTERM or Ctrl-C during a long
call would wait for it to end. So the call runs on a helper thread with a
cancel flag the library polls, and the calling thread waits in short,
interruptible steps; an exception there (KeyboardInterrupt, or a handler's)
sets the flag, waits for the call to stop cleanly, and propagates.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from ctypes import c_int32
from typing import Any, Callable, Iterator, List, Optional

from .errors import CancelledError

__all__ = ["Stop", "run_cancellable"]

_POLL_S = 0.05


def run_cancellable(fn: Callable[[c_int32], Any], cancel: Optional[Any] = None,
                    poll: Optional[Callable[[], None]] = None) -> Any:
    """fn(flag) on a helper thread; flag is the c_int32 the library polls.
    cancel: anything with is_set() (a threading.Event) that stops the call
    with CancelledError. poll() is called while the call runs (to report
    its progress); an exception from it stops the call too."""
    flag = c_int32(1 if cancel is not None and cancel.is_set() else 0)
    result: List[Any] = []
    failure: List[BaseException] = []

    def work() -> None:
        try:
            result.append(fn(flag))
        except BaseException as e:  # re-raised on the calling thread
            failure.append(e)

    worker = threading.Thread(target=work, name="tpde-call", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(_POLL_S)
            if cancel is not None and cancel.is_set():
                flag.value = 1
            if poll is not None and worker.is_alive():
                poll()
    except BaseException:
        flag.value = 1
        worker.join()
        raise
    if failure:
        raise failure[0]
    return result[0] if result else None


class Stop:
    """Turns SIGINT and SIGTERM into a request to stop the operation in
    progress (its cancel flag), instead of an exception that would leave the
    question of whether the output was completed to chance."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signum: Optional[int] = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.signum = signum
        self.event.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator["Stop"]:
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be set on the main thread
            return
        old = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, h in old.items():
                signal.signal(sig, h)

    def exit_status(self) -> int:
        """128 + the signal that stopped the work, as a shell reports it."""
        return 128 + (self.signum or signal.SIGINT)

    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "a signal"


def raise_if_cancelled(cancel: Optional[Any]) -> None:
    if cancel is not None and cancel.is_set():
        raise CancelledError("cancelled")
