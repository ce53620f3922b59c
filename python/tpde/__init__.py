"""tpde: lossless compression for deep-learning checkpoints and tensors.

    blob = tpde.compress_tensor(t)            # torch.Tensor or numpy.ndarray
    t2 = tpde.decompress_tensor(blob)         # bit-identical
    tpde.compress_file("model.safetensors")   # -> model.safetensors.tpde
    tpde.decompress_file("model.safetensors.tpde")

    enc = tpde.TemporalPositionDeltaEncoder()  # checkpoint series, lossless
    data, meta = enc.compress_checkpoint(model.state_dict())
    delta, meta = enc.compress_checkpoint_delta(model.state_dict(), previous)

Importing tpde loads neither torch, numpy nor the native library; libtpde is
loaded on the first call that needs it ($TPDE_LIBRARY overrides its path).
"""

from __future__ import annotations

# Kept literal (not read from the library) so that reading it loads nothing;
# the packaging backend parses this line and a test checks it against
# tpde_version().
__version__ = "0.1.0"

from .codec import (
    DTYPES,
    compress_file,
    compress_tensor,
    decompress_file,
    decompress_tensor,
    entropy_bound_bits,
    file_info,
    get_num_threads,
    inspect,
    set_num_threads,
)
from .checkpoint import (
    CompressedCheckpoint,
    TemporalPositionDeltaEncoder,
    TPDECheckpointCompressor,
    checkpoint_info,
    load_checkpoint,
    state_dict_nbytes,
)
from .delta import compress_delta, decompress_delta, delta_threshold, inspect_delta
from .store import CheckpointInfo, Store, StoreLockedError, VerifyReport, open
from .errors import (
    BufferTooSmallError,
    CancelledError,
    CorruptDataError,
    DecodeLimitError,
    ForkedProcessError,
    InternalError,
    ReferenceMismatchError,
    InvalidArgumentError,
    TPDEError,
    TPDEIOError,
    TPDEMemoryError,
    UnsupportedFormatError,
)

__all__ = [
    "__version__",
    "DTYPES",
    "compress_tensor",
    "decompress_tensor",
    "inspect",
    "compress_file",
    "decompress_file",
    "file_info",
    "entropy_bound_bits",
    "set_num_threads",
    "get_num_threads",
    "compress_delta",
    "decompress_delta",
    "inspect_delta",
    "delta_threshold",
    "TemporalPositionDeltaEncoder",
    "TPDECheckpointCompressor",
    "CompressedCheckpoint",
    "checkpoint_info",
    "load_checkpoint",
    "state_dict_nbytes",
    "Store",
    "open",
    "CheckpointInfo",
    "VerifyReport",
    "StoreLockedError",
    "TPDEError",
    "InvalidArgumentError",
    "CorruptDataError",
    "UnsupportedFormatError",
    "BufferTooSmallError",
    "TPDEIOError",
    "InternalError",
    "ReferenceMismatchError",
    "DecodeLimitError",
    "TPDEMemoryError",
    "CancelledError",
    "ForkedProcessError",
]
