"""Memory handed to libtpde: input buffers located without copying, and
output buffers the library writes into before Python takes the bytes.

Every output that is bytes in Python (a frame, a bundle, a JSON answer) is
written by the library into an OutBuffer and copied out once, by take().
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from ctypes import addressof, c_char
from typing import Callable, Iterator, Optional, Tuple, Union

from .errors import InternalError

__all__ = ["Buffer", "readable", "OutBuffer", "into_new_bytes"]

Buffer = Union[bytes, bytearray, memoryview]

_scratch = threading.local()
# Per-thread output buffers up to this size are kept for reuse: the encoder
# writes each chunk into its worst-case slot, so a fresh buffer costs a page
# fault and a zero-fill per page on every call. Larger ones are mmapped per
# call and their unused pages dropped, so a huge output is not held on to.
_KEEP_MAX = 64 << 20
_KEEP_MIN = 1 << 16


@contextlib.contextmanager
def readable(blob: Buffer) -> Iterator[Tuple[object, int]]:
    """Yield (pointer argument, length) for a bytes-like object, zero-copy where possible."""
    if isinstance(blob, bytes):
        yield blob, len(blob)  # ctypes passes a bytes object's own buffer to void *
        return
    try:
        mv = memoryview(blob)
    except TypeError:
        raise TypeError(f"expected bytes, bytearray or memoryview, not {type(blob).__name__}") from None
    with mv:
        n = mv.nbytes
        if n == 0:
            yield None, 0
        elif mv.readonly or not mv.c_contiguous:
            # ctypes can only take the address of a writable buffer; a
            # read-only one other than bytes is copied once.
            data = mv.tobytes()
            yield data, n
        else:
            flat = mv.cast("B") if (mv.ndim != 1 or mv.format != "B") else mv
            arr = (c_char * n).from_buffer(flat)
            try:
                yield addressof(arr), n
            finally:
                del arr
                if flat is not mv:
                    flat.release()


class OutBuffer:
    """At least cap writable bytes (.cap of them) at .address for the
    library to fill: this thread's reusable scratch buffer when it is free
    and cap is small, else an anonymous map. Use as a context manager;
    take() copies the result out."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._map: Optional[mmap.mmap] = None
        self._arr: Optional[ctypes.Array] = None
        self._scratch: Optional[ctypes.Array] = None
        if cap <= _KEEP_MAX:
            buf = getattr(_scratch, "buf", None)
            # Taken from the thread while in use, so that a nested
            # OutBuffer (a bundle's tail written beside its frames) gets
            # memory of its own.
            _scratch.buf = None
            if buf is None or len(buf) < cap:
                buf = ctypes.create_string_buffer(max(cap, _KEEP_MIN))
            self._scratch = buf
            self.address = addressof(buf)
            self.cap = len(buf)  # room to spare is the caller's to use
        else:
            self._map = mmap.mmap(-1, cap)
            self._arr = (c_char * cap).from_buffer(self._map)
            self.address = addressof(self._arr)

    def take(self, n: int, tail: bytes = b"") -> bytes:
        """The first n bytes the library wrote, then tail, as new bytes."""
        if n > self.cap:
            raise InternalError(f"library reported {n} bytes written into a {self.cap}-byte buffer")
        if self._scratch is not None:
            if not tail:
                return ctypes.string_at(self._scratch, n)
            with memoryview(self._scratch).cast("B") as mv:
                return b"".join((mv[:n], tail))
        assert self._map is not None
        # The encoder touched pages past n (each chunk is coded in its
        # worst-case slot, then compacted); drop them before the copy.
        end = -(-n // mmap.PAGESIZE) * mmap.PAGESIZE
        if end < self.cap and hasattr(self._map, "madvise"):
            self._map.madvise(mmap.MADV_DONTNEED, end, self.cap - end)
        if not tail:
            return self._map[:n]
        with memoryview(self._map) as mv:
            return b"".join((mv[:n], tail))

    def close(self) -> None:
        if self._scratch is not None:
            buf, self._scratch = self._scratch, None
            if getattr(_scratch, "buf", None) is None:
                _scratch.buf = buf
        if self._map is not None:
            self._arr = None  # release the export so the map can close
            m, self._map = self._map, None
            m.close()

    def __enter__(self) -> "OutBuffer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def into_new_bytes(cap: int, fill: Callable[[int, int], int]) -> bytes:
    """Run fill(address, cap), which writes n bytes and returns n; return them as bytes."""
    with OutBuffer(cap) as buf:
        return buf.take(fill(buf.address, cap))


