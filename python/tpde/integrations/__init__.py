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
