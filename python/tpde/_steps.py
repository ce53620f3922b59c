"""Steps: one grammar for the Python API and the command line.

A step is a number from 0 to 2**63 - 1: an int, or its decimal digits as
text (what a command line, an environment variable or a file name gives);
"latest" (or None, from Python) names the newest checkpoint wherever an
existing checkpoint is meant. A checkpoint added without a step from a
folder named ``checkpoint-N`` (a Hugging Face Trainer's), ``step-N``
(torch.distributed.checkpoint's, torchtitan's) or just ``N`` takes N; from
any other path, the newest step + 1. Everything else is refused before it
reaches the library, naming what was given (a C int64 would wrap 2**64 + 10
to 10).

``Store.add``, ``Store.load`` and the rest check their step here, and so do
``tpde add``, ``restore``, ``info`` and ``rm``: Python and the command line
read the same step from the same argument or folder.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Any, Optional

from .errors import InvalidArgumentError

__all__ = ["MAX_STEP", "check_step", "step_from_name"]

#: The largest step a store holds: steps are signed 64-bit in the format.
MAX_STEP = (1 << 63) - 1
_RANGE = "steps are 0 to 2**63 - 1"

# ASCII digits only: str.isdigit() and int() also take '²' and other
# scripts' digits, which no file system or shell user means as a step.
# The sign is read so that "-1" is refused as out of range, as -1 is.
_DECIMAL = re.compile(r"-?[0-9]+\Z")
# checkpoint-500 (a Hugging Face Trainer's), step-500 (DCP's, torchtitan's),
# their "_" spellings, and a bare 500 (Orbax's); never "run-3" or "v2",
# whose numbers are not steps.
_FOLDER_NAME = re.compile(r"(?:(?:checkpoint|step)[-_])?([0-9]+)\Z")


def check_step(step: Any, what: str = "step", *, latest: bool = True) -> Optional[int]:
    """step as the store takes it: an int (or its decimal text) in
    [0, 2**63), returned as an int; or, where latest is allowed, None for
    "latest" or None (the newest). Anything else raises
    InvalidArgumentError naming what was given."""
    if latest and (step is None or (isinstance(step, str) and step == "latest")):
        return None
    if isinstance(step, str) and _DECIMAL.match(step):
        if len(step.lstrip("-").lstrip("0")) > 19:  # 2**63 - 1 has 19 digits; int() of 5,000 would fail
            raise InvalidArgumentError(f"{what} {step} is out of range: {_RANGE}")
        step = int(step)
    if isinstance(step, bool) or not isinstance(step, numbers.Integral):
        raise InvalidArgumentError(f"invalid {what} {step!r}: a number from 0 to 2**63 - 1"
                                   + (" or 'latest'" if latest else ""))
    step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise InvalidArgumentError(f"{what} {step} is out of range: {_RANGE}")
    return step


def step_from_name(path: Any) -> Optional[int]:
    """The step a folder's name gives when a checkpoint is added without
    one: checkpoint-500/, step-500/ (or checkpoint_500/, step_500/) and
    500/ -> 500. None for any other name, and for anything that is not a
    folder (a file's digits are a version or a shard number more often
    than a step), so the store takes the newest step + 1. A name whose
    number is out of range is refused."""
    if not isinstance(path, (str, bytes, os.PathLike)):
        return None
    name = os.path.basename(os.path.normpath(os.fsdecode(path)))
    m = _FOLDER_NAME.match(name)
    if m is None or not os.path.isdir(path):
        return None
    try:
        return check_step(m.group(1), latest=False)
    except InvalidArgumentError:
        raise InvalidArgumentError(f"the step in the folder name {name!r} is out of range: {_RANGE}; "
                                   "pass step= (--step)") from None
