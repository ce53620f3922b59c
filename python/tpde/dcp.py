"""tpde for torch.distributed.checkpoint: ``tpde.dcp.Writer`` / ``tpde.dcp.Reader``.

    import torch.distributed.checkpoint as dcp
    import tpde.dcp

    dcp.save(state_dict, storage_writer=tpde.dcp.Writer("ckpt/step-1"))
    dcp.load(state_dict, storage_reader=tpde.dcp.Reader("ckpt/step-1"))

An alias of tpde.integrations.dcp (which documents how the checkpoint
folders share a store); importing it imports torch.
"""

from .integrations.dcp import DEFAULT_STORE, DistributedTPDECompressor, Reader, Writer

__all__ = ["Writer", "Reader", "DistributedTPDECompressor", "DEFAULT_STORE"]
