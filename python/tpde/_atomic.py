"""Writing a file so that its path never names a torn file: into a
temporary file beside it, fsynced, renamed over it, the folder fsynced.
Used by the Python-side writers (the Go core has core/atomicfile)."""

from __future__ import annotations

import contextlib
import os
from typing import Any, BinaryIO, Callable, Union

__all__ = ["write_atomically", "fsync_dir"]


def fsync_dir(path: Union[str, "os.PathLike[str]"]) -> None:
    """Make a folder's entries (a rename into it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(dst: Union[str, "os.PathLike[str]"], write: Callable[[BinaryIO], Any]) -> None:
    """write(file) into a hidden temporary file in dst's folder (same file
    system, so the rename is atomic), fsync, rename over dst, fsync the
    folder. On any error, or Ctrl-C, the temporary file is removed and dst
    is as it was."""
    dst = os.fspath(dst)
    folder = os.path.dirname(dst) or "."
    tmp = os.path.join(folder, f".{os.path.basename(dst)}.tpde-tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        with open(tmp, "xb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(folder)
