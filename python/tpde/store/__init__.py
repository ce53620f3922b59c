"""The checkpoint store: a whole training run in one directory.

A store (docs/FORMAT.md §11) keeps every checkpoint of a run as
content-addressed objects: identical tensors and files are stored once, each
tensor of an older checkpoint is a delta against its neighbour (or a base),
and the newest checkpoint, the one a resume loads, is kept whole. Go owns
every byte of it; this package walks folders, reads torch files' pickles for
their dtypes (never unpickling), lays out state dicts, and turns records into
Python values.

    with tpde.Store("run.tpde") as store:
        store.add("out/checkpoint-500", step=500)
        state = store.load()                 # the newest, as torch tensors
        store.restore(500, "restored/")      # the original files, byte for byte

Its modules, each depending only on those after it:

    api.py         Store and Part: argument checks, then calls below
    state_dict.py  state dicts laid out to add, tensor files loaded back
    folders.py     folders walked to add, a state dict restored into a folder
    stats.py       records turned into CheckpointInfo, VerifyReport, runs, stats
    types.py       CheckpointInfo, FileInfo, Problem, VerifyReport
    handle.py      native handles (store, reader), argument checks, errors
"""

from __future__ import annotations

from .api import Part, Store, open  # noqa: F401
from .handle import MAIN_RUN, MAX_STEP, PathLike, StoreLockedError, check_step, read_pointer  # noqa: F401
# Used by tpde.integrations.deepspeed to name the store in its own errors.
from .handle import _naming, _renamed  # noqa: F401
from .state_dict import STATE_DICT_FILE  # noqa: F401
from .types import CheckpointInfo, FileInfo, Problem, VerifyReport  # noqa: F401

__all__ = ["Store", "open", "CheckpointInfo", "FileInfo", "VerifyReport", "Problem", "StoreLockedError"]

# Named where callers import them from, as when this package was one
# module: pickles (a StoreLockedError sent between processes, say), reprs
# and help() say tpde.store.X, whichever module X is defined in.
for _x in (Store, Part, open, CheckpointInfo, FileInfo, Problem, VerifyReport, StoreLockedError, check_step,
           read_pointer):
    _x.__module__ = __name__
del _x
