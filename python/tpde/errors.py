"""Exceptions raised by tpde.

Every failure reported by libtpde is a :class:`TPDEError`; the subclass says
which status code the library returned (see include/tpde.h).
"""

from __future__ import annotations

__all__ = [
    "TPDEError",
    "InvalidArgumentError",
    "CorruptDataError",
    "UnsupportedFormatError",
    "BufferTooSmallError",
    "TPDEIOError",
    "InternalError",
    "ReferenceMismatchError",
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
    """The operating system refused a file operation (TPDE_E_IO)."""

    status = 5

    def __str__(self) -> str:
        # OSError's __str__ would format "[Errno ...]" from several args;
        # tpde raises it with one message, which is all there is to show.
        return str(self.args[0]) if self.args else ""


class InternalError(TPDEError):
    """A bug in libtpde; the message says where (TPDE_E_INTERNAL)."""

    status = 6


class ReferenceMismatchError(InvalidArgumentError):
    """A delta frame was given a reference other than the one it was made
    against (TPDE_E_REFERENCE); nothing is returned rather than wrong data."""

    status = 7
