"""Training-framework integrations, one module per framework.

Each module imports its framework itself, so ``import tpde`` stays light and
a framework that is not installed only matters to the module that needs it:

    tpde.integrations.hf         Hugging Face Trainer: TPDETrainerCallback, materialize
    tpde.integrations.lightning  Lightning: TPDECallback, TPDECheckpointIO, load_from_store
    tpde.integrations.dcp        torch.distributed.checkpoint: Writer, Reader, DistributedTPDECompressor
    tpde.integrations.deepspeed  DeepSpeed: TPDECheckpointEngine

They use the frameworks' official extension points only (callbacks,
CheckpointIO plugins, StorageWriter/StorageReader, CheckpointEngine) and
never patch a framework.
"""

from __future__ import annotations

import importlib as _importlib

# Resolved on first use (PEP 562), so `import tpde; tpde.integrations.hf`
# works as the README writes it, while importing this package imports no
# framework: each submodule imports its own when it is first named.
_MODULES = ("dcp", "deepspeed", "hf", "lightning")


def __getattr__(name: str) -> object:
    if name in _MODULES:
        # import_module also binds the submodule here, so later lookups skip this hook.
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list:
    return sorted({*globals(), *_MODULES})
