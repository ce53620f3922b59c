"""Exceptions raised by tpde.

Every failure reported by libtpde is a :class:`TPDEError`; the subclass says
which status code the library returned (see include/tpde.h).
"""

from __future__ import annotations

import types

__all__ = [
    "TPDEError",
    "InvalidArgumentError",
    "CorruptDataError",
    "UnsupportedFormatError",
    "BufferTooSmallError",
    "TPDEIOError",
    "InternalError",
    "ReferenceMismatchError",
    "DecodeLimitError",
    "CancelledError",
    "TPDEMemoryError",
    "ForkedProcessError",
    "MissingDependencyError",
]


class TPDEError(Exception):
    """Base class of every error tpde raises for a failed operation."""

    #: The library status code (TPDE_E_*) this class stands for; 0 for the base.
    status: int = 0


class InvalidArgumentError(TPDEError, ValueError):
    """A bad argument: dtype, shape or size mismatch, bad option (TPDE_E_INVALID)."""

    status = 1


class CorruptDataError(TPDEError):
    """The input is not a valid tpde object: checksum, truncation, bad header (TPDE_E_CORRUPT)."""

    status = 2


class UnsupportedFormatError(TPDEError):
    """A valid object this build cannot read: newer major version, unknown kind (TPDE_E_UNSUPPORTED)."""

    status = 3


class BufferTooSmallError(TPDEError):
    """An output buffer was too small (TPDE_E_BUFFER_TOO_SMALL)."""

    status = 4


class TPDEIOError(TPDEError, OSError):
    """The operating system refused a file operation, or a file changed
    while tpde read it (TPDE_E_IO). Raised as TPDEIOError(errno, message)
    when the OS gave an error number: .errno is then set (errno.ENOENT,
    errno.ENOSPC, ...) and .strerror is the message."""

    status = 5

    def __str__(self) -> str:
        # OSError's __str__ would format "[Errno N] ..."; tpde's message
        # already names the file and the problem.
        if self.strerror is not None:
            return str(self.strerror)
        return str(self.args[0]) if self.args else ""


class InternalError(TPDEError):
    """A bug in libtpde; the message says where (TPDE_E_INTERNAL)."""

    status = 6


class ReferenceMismatchError(InvalidArgumentError):
    """A delta frame was given a reference other than the one it was made
    against (TPDE_E_REFERENCE); nothing is returned rather than wrong data."""

    status = 7


class CancelledError(TPDEError):
    """The operation was asked to stop (TPDE_E_CANCELLED) and left no output.
    tpde's own functions turn this back into the KeyboardInterrupt that
    asked for it."""

    status = 9


class DecodeLimitError(TPDEError):
    """Decoding would produce more bytes than allowed: the max_output_bytes
    argument, else $TPDE_MAX_OUTPUT, else the machine's physical memory for
    decodes into memory. Raised before anything is allocated."""

    status = 8


class TPDEMemoryError(TPDEError, MemoryError):
    """Memory for a decoded tensor (or another buffer) could not be allocated."""


class ForkedProcessError(TPDEError, RuntimeError):
    """libtpde was used in a process that has since forked, and this is the
    child. The Go runtime inside libtpde does not survive fork(): its
    threads stay behind in the parent, so calls in the child could hang.
    Start workers with the 'spawn' or 'forkserver' method instead (see the
    README, "Processes and fork")."""


class MissingDependencyError(TPDEError, ModuleNotFoundError):
    """A function needs an optional dependency that is not installed: torch
    for torch tensors and Store.load, numpy for like="numpy". The message
    names the extra that installs it (pip install 'tpde[torch]'); .name is
    the missing module.

    A TPDEError, so that one ``except tpde.TPDEError`` catches every failure
    of tpde; and a ModuleNotFoundError (an ImportError), which is what a
    missing module raised before this class existed, so that code which
    falls back when torch is absent (``except ImportError``) still does."""


def require(module: str, what: str) -> "types.ModuleType":
    """import module (torch or numpy), or raise MissingDependencyError
    naming what needs it and the tpde extra that installs it. A module that
    is installed but fails to import (a broken CUDA build, say) raises its
    own error: that is not a missing dependency."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module:
            raise
        raise MissingDependencyError(f"{what} needs {module}, which is not installed: "
                                     f"pip install 'tpde[{module}]' (or pip install {module})", name=module) from e
