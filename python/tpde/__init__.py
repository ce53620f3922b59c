"""tpde: lossless compression for deep-learning checkpoints and tensors.

    blob = tpde.compress_tensor(t)            # torch.Tensor or numpy.ndarray
    t2 = tpde.decompress_tensor(blob)         # bit-identical
    tpde.compress_file("model.safetensors")   # -> model.safetensors.tpde
    tpde.decompress_file("model.safetensors.tpde", "restored.safetensors")
    # (an existing output is refused unless overwrite=True)

    enc = tpde.TemporalPositionDeltaEncoder()  # checkpoint series, lossless
    data, meta = enc.compress_checkpoint(model.state_dict())
    delta, meta = enc.compress_checkpoint_delta(model.state_dict(), previous)

Training integrations (each imports its framework on first use):
tpde.TPDETrainerCallback (Hugging Face Trainer), tpde.TPDECallback and
tpde.TPDECheckpointIO (Lightning), tpde.dcp.Writer / tpde.dcp.Reader and
tpde.DistributedTPDECompressor (torch.distributed.checkpoint), and
tpde.integrations.deepspeed.

Importing tpde loads neither torch, numpy nor the native library; libtpde is
loaded on the first call that needs it ($TPDE_LIBRARY overrides its path).
"""

from __future__ import annotations

# Kept literal (not read from the library) so that reading it loads nothing;
# the packaging backend parses this line and a test checks it against
# tpde_version().
__version__ = "0.1.0"

# Each module's __all__ is the package's: one list per name, kept where the
# name is defined.
from . import checkpoint as _checkpoint
from . import codec as _codec
from . import delta as _delta
from . import errors as _errors
from . import store as _store
from .checkpoint import *  # noqa: F401,F403
from .codec import *  # noqa: F401,F403
from .delta import *  # noqa: F401,F403
from .errors import *  # noqa: F401,F403
from .store import *  # noqa: F401,F403

__all__ = ["__version__", *_codec.__all__, *_delta.__all__, *_checkpoint.__all__, *_store.__all__, *_errors.__all__]

# The framework integrations' names, resolved on first use: each import
# brings in its framework (transformers, lightning, torch.distributed), which
# `import tpde` must not. They are left out of __all__ so that
# `from tpde import *` stays light too.
_LAZY = {
    "TPDETrainerCallback": "tpde.integrations.hf",
    "TPDECallback": "tpde.integrations.lightning",
    "TPDECheckpointIO": "tpde.integrations.lightning",
    "DistributedTPDECompressor": "tpde.integrations.dcp",
}
_LAZY_MODULES = ("dcp", "integrations")


def __getattr__(name: str):  # PEP 562
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tpde' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_LAZY, *_LAZY_MODULES})
