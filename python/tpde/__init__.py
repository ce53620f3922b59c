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
