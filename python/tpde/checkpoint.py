"""Whole checkpoints: the design document's encoder API over checkpoint bundles.

    enc = tpde.TemporalPositionDeltaEncoder()             # lossless
    full, meta = enc.compress_checkpoint(model.state_dict())
    ...train...
    delta, meta = enc.compress_checkpoint_delta(model.state_dict(), previous)
    sd = enc.decompress_checkpoint(delta, previous=decoded_previous)

A checkpoint is a state dict: a mapping of names to tensors (torch or
numpy), or any nesting of dicts, lists and tuples of tensors and JSON-like
values (str, int, float, bool, None), such as an optimizer's state_dict().
It is stored as one bundle (docs/FORMAT.md section 9): a keyframe per
tensor for a full checkpoint, or per tensor a delta frame against the tensor
of the same name in a reference checkpoint.

Lossless is the default everywhere. The design document's examples pass
threshold=1e-3; here that turns on the opt-in lossy mode (delta frames of
float tensors only; every element within the threshold, the bound and the
measured max error recorded per tensor and reported in the metadata).

References and closed loop. A delta is coded against the checkpoint the
*decoder* will hold. The encoder therefore keeps a private copy of what
decoding its last output gives (the reconstruction: the checkpoint itself
when lossless), and never codes against a ``previous`` it cannot vouch
for. ``previous`` omitted, or the very object it compressed last, means
that copy. Any other ``previous`` is compared with it:

- if a tensor of ``previous`` shares memory with the same-named tensor of
  the checkpoint being compressed, ``previous`` is not a snapshot but the
  live state: ``model.state_dict()`` returns the live parameters, which
  training overwrites in place, so by the next epoch a "previous" dict
  taken earlier already holds the new values. The delta is coded against
  the copy, the checkpoint compressed last, which is what was meant;
- if ``previous`` equals the copy bit for bit (names, dtypes, shapes and
  bytes), the copy is used (it carries that checkpoint's epoch);
- else ``previous`` is a different checkpoint, chosen by the caller, and
  the delta is coded against it: the decoder must pass that checkpoint.

An encoder that holds no copy (none compressed yet, or keep_reference=
False, which saves one checkpoint of memory) refuses a ``previous`` that
shares memory with the checkpoint being compressed (InvalidArgumentError):
a delta against the new values themselves could never be decoded. Lossy
errors never accumulate along a chain, since each delta is coded against
the decoded previous state.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Union

from . import _bundle, _chain, _load, _memory, _structure, _tensors
from ._load import FORMAT_VERSION, Checkpoint, Source, checkpoint_info, load_checkpoint
from ._options import POSITION_CODINGS, RESIDUALS, code, threads_arg
from ._steps import step_from_name
from ._structure import state_dict_nbytes
from ._tensors import DTYPES, WIDTHS
from .errors import InvalidArgumentError, ReferenceMismatchError, UnsupportedFormatError

__all__ = [
    "TemporalPositionDeltaEncoder",
    "TPDECheckpointCompressor",
    "CompressedCheckpoint",
    "checkpoint_info",
    "load_checkpoint",
    "state_dict_nbytes",
    "FORMAT_VERSION",
    "COMPRESSION_METHODS",
]

#: compression_method names -> TPDE_DELTA_* position-coding flags (the
#: table of _options.POSITION_CODINGS).
COMPRESSION_METHODS = POSITION_CODINGS
_FLOAT_CODES = frozenset(i for i, n in enumerate(DTYPES) if n.startswith("F"))
# Lossy coding needs at least 2-byte floats (F8 stays lossless).
_LOSSY_CODES = frozenset(i for i in _FLOAT_CODES if WIDTHS[i] >= 2)
# Input bytes per library call when saving to output_dir.
_SAVE_CHUNK = 1 << 28


def _version() -> str:
    from . import __version__

    return __version__


@dataclass
class _Reference:
    """What a delta checkpoint is coded against: tensors by name (aliases
    included), which checkpoint that is ("previous" or "base"), its epoch
    when known, and for prediction the checkpoint before it."""

    tensors: Dict[str, Any]
    kind: str
    epoch: Optional[int] = None
    older: Optional[Dict[str, Any]] = None


@dataclass
class _Call:
    """What one compression does beyond the encoder's own settings."""

    method: str  # a COMPRESSION_METHODS name
    path: Optional[str] = None  # stream to this file rather than return the bytes
    chunk_size: int = 0  # bytes of input per library call when streaming
    keep_reference: bool = True  # keep the reconstruction as the next reference


def _live_name(previous: Dict[str, Any], current: Checkpoint) -> Optional[str]:
    """The name of a tensor of previous that shares memory with the tensor
    of the same name in current, if any: then previous is (in part) the
    live state, not a snapshot. Only same-named tensors are compared, since
    only they ever serve as a delta's reference."""
    now = _structure.Flat(current).tensors_with_aliases()
    for name, t in previous.items():
        c = now.get(name)
        if c is not None and _tensors.shares_memory(t, c):
            return name
    return None


def _same_checkpoint(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Whether two checkpoints (names to tensors) hold the same names,
    dtypes, shapes and bytes: bitwise, so NaN payloads and -0.0 count."""
    return a.keys() == b.keys() and all(_tensors.same_bits(t, b[name]) for name, t in a.items())


# --- the compressed object ----------------------------------------------------

class CompressedCheckpoint(bytes):
    """The bytes of a compressed checkpoint, with its metadata attached.

    The design document uses compress_checkpoint's result two ways: as a
    pair (``data, metadata = ...``, §3.4) and as the bytes themselves
    (``len(data)``, ``decompress_checkpoint(data)``, §5.1). This object is
    both: it is bytes (write it to a file as is), and unpacking it gives
    ``(bytes, metadata)``. Pickling it, or torch.save, stores the bytes
    alone, which load back as a bytearray. Iterating it therefore yields
    those two items, not the bytes' integers; use ``bytes(c)`` or a
    memoryview for the raw bytes.
    """

    metadata: Dict[str, Any]

    def __new__(cls, data: bytes, metadata: Dict[str, Any]) -> "CompressedCheckpoint":
        obj = super().__new__(cls, data)
        obj.metadata = metadata
        return obj

    def __iter__(self):  # type: ignore[override]
        return iter((bytes(self), self.metadata))

    def __reduce__(self):
        # Pickled (and torch.save'd) as a bytearray of the same bytes: any
        # subclass of bytes pickles through a global, and bytearray is one
        # that torch.load's default weights_only unpickler allows (bytes
        # is not). Everything in tpde that reads bytes reads a bytearray.
        return (bytearray, (bytes(self),))

    def __repr__(self) -> str:
        return f"<CompressedCheckpoint {len(self)} bytes, {self.metadata.get('checkpoint_type')}>"


# --- the encoders ---------------------------------------------------------------

class TemporalPositionDeltaEncoder:
    """Compress checkpoints of one training run: full (keyframes) or as
    deltas against an earlier checkpoint (Temporal Position Delta Encoding).

    threshold: 0.0 (the default) is lossless: every bit of every tensor is
    restored, NaN payloads and -0.0 included. The design document's default
    of 1e-3 is *lossy*: threshold > 0 lets delta frames of float tensors
    replace any element within threshold of its reference element by it,
    so each restored element is within threshold of the original; the
    bound and the measured max error are recorded per tensor and reported
    as metadata['max_error']. Integer and bool tensors, and full
    (keyframe) checkpoints, are always lossless.
    adaptive: per-tensor thresholds from the given percentile of |delta|
    (design document §7.1: percentile=99 drops the 99% smallest changes);
    capped by threshold when that is > 0. Lossy, opt-in. Each checkpoint
    is within its own recorded bound, but with high percentiles the dropped
    changes pile up and the bound grows from checkpoint to checkpoint; a
    fixed threshold (or the cap) gives one bound for the whole chain.
    quant_bits: 8 or 4 additionally quantizes the kept residuals (lossy
    only), within the same bound.
    compression_method: how the positions of changed elements are coded:
    "auto" (per chunk, whichever is smaller), "elias_delta_zstd" (always the
    design document's sparse coding) or "dense".
    residual: "auto", "xor", "diff" (integer difference of bit patterns).
    keep_reference: keep a copy of the last checkpoint as the decoder will
    see it, the reference of the next delta, also when ``previous`` is the
    live state dict rather than a snapshot (see the module docstring).
    output_dir: where save_checkpoint and save_compressed_delta write.
    """

    def __init__(self, threshold: float = 0.0, adaptive: bool = False, compression_method: str = "auto", *,
                 percentile: float = 99.0, quant_bits: int = 0, residual: str = "auto",
                 keep_reference: bool = True, output_dir: Union[str, "os.PathLike[str]"] = "tpde_checkpoints",
                 effort: str = "balanced", threads: int = 0) -> None:
        if not (isinstance(threshold, (int, float)) and threshold >= 0 and math.isfinite(threshold)):
            raise InvalidArgumentError(f"threshold must be a finite number >= 0, got {threshold!r}")
        code(COMPRESSION_METHODS, compression_method, "compression_method")
        if residual not in RESIDUALS or residual == "pred":
            raise InvalidArgumentError(f"residual must be 'auto', 'xor' or 'diff', got {residual!r}")
        if not (isinstance(percentile, (int, float)) and 0 < percentile < 100):
            raise InvalidArgumentError(f"percentile must be in (0, 100), got {percentile!r}")
        if quant_bits not in (0, 4, 8):
            raise InvalidArgumentError(f"quant_bits must be 0, 4 or 8, got {quant_bits!r}")
        if quant_bits and not (threshold > 0 or adaptive):
            raise InvalidArgumentError("quant_bits needs a lossy mode (threshold > 0 or adaptive=True)")
        self.threshold = float(threshold)
        self.adaptive = bool(adaptive)
        self.compression_method = compression_method
        self.percentile = float(percentile)
        self.quant_bits = int(quant_bits)  # stored as a JSON integer even if given False
        self.residual = residual
        self.keep_reference = keep_reference
        self.output_dir = Path(output_dir)
        self.effort = effort
        self.threads = threads_arg(threads)
        self.last_metadata: Optional[Dict[str, Any]] = None
        # The reconstruction of the last checkpoint compressed, by name,
        # and the object it was made from.
        self._reference: Optional[Dict[str, Any]] = None
        self._reference2: Optional[Dict[str, Any]] = None
        self._reference_source: Any = None
        self._reference_epoch: Optional[int] = None
        self._thresholds: Mapping[str, float] = {}

    @property
    def lossy(self) -> bool:
        return self.threshold > 0 or self.adaptive or bool(self._thresholds)

    # -- compression --

    def compress_checkpoint(self, state_dict: Checkpoint, checkpoint_type: str = "full", *,
                            epoch: Optional[int] = None, previous: Optional[Checkpoint] = None,
                            metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress a checkpoint. checkpoint_type "full" stores every tensor
        alone (a keyframe: decodable without any other checkpoint, always
        lossless); "delta" is compress_checkpoint_delta(state_dict,
        previous). Returns a CompressedCheckpoint: bytes that unpack as
        (bytes, metadata). metadata: extra JSON-serializable fields stored
        with the checkpoint (e.g. model_name)."""
        if checkpoint_type == "delta":
            return self.compress_checkpoint_delta(state_dict, previous, epoch=epoch, metadata=metadata)
        if checkpoint_type != "full":
            raise InvalidArgumentError(f"checkpoint_type must be 'full' or 'delta', got {checkpoint_type!r}")
        return self._compress(state_dict, None, epoch, metadata, _Call(self.compression_method))

    def compress_checkpoint_delta(self, current: Checkpoint, previous: Optional[Checkpoint] = None, *,
                                  epoch: Optional[int] = None, method: Optional[str] = None,
                                  metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress current as deltas against previous: each tensor against
        the tensor of the same name (tensors new or reshaped since are
        stored as keyframes). previous omitted, the checkpoint this encoder
        compressed last, a state dict that shares memory with current (the
        live parameters, taken before training moved them) or one equal to
        that checkpoint bit for bit, means this encoder's copy of it as the
        decoder will see it; see the module docstring. Returns a
        CompressedCheckpoint (bytes that unpack as (bytes, metadata));
        decode it with decompress_checkpoint(data, previous=<that
        checkpoint, decoded>). method: a compression_method for this call
        only."""
        ref = self._resolve_previous(previous, current)
        return self._compress(current, ref, epoch, metadata, _Call(method or self.compression_method))

    def _resolve_previous(self, previous: Optional[Checkpoint], current: Checkpoint) -> _Reference:
        """What a delta of current against previous is coded against (the
        rule of the module docstring): this encoder's reconstruction, with
        its epoch, when previous is omitted, is what it compressed last, is
        the live state (shares memory with current) or equals the
        reconstruction bit for bit; else previous itself. Raises when
        there is no reconstruction and previous is omitted or live."""
        held = self._reference
        if previous is None or (held is not None and previous is self._reference_source):
            if held is None:
                raise InvalidArgumentError(
                    "no previous checkpoint: pass previous=, or compress a full checkpoint with this encoder first"
                    + ("" if self.keep_reference else " (keep_reference=False keeps none)"))
            return _Reference(held, "previous", self._reference_epoch)
        given = _structure.Flat(previous, "previous").tensors_with_aliases()
        live = _live_name(given, current)
        # Sharing is checked first: it costs no reads of the data, and a
        # live previous must never be coded against, even when no copy is held.
        if held is not None and (live is not None or _same_checkpoint(given, held)):
            return _Reference(held, "previous", self._reference_epoch)
        if live is not None:
            raise InvalidArgumentError(
                f"previous shares memory with current (tensor {live!r}): it is the live state dict, not a "
                "snapshot, and already holds the new values; pass a copy, e.g. {k: v.clone() for k, v in "
                "model.state_dict().items()}, or compress the previous checkpoint with this encoder first"
                + ("" if self.keep_reference else " (with keep_reference=True, which keeps a copy of it)"))
        return _Reference(given, "previous")

    def _compress(self, ckpt: Checkpoint, ref: Optional[_Reference], epoch: Optional[int],
                  user: Optional[Mapping[str, Any]], call: _Call) -> CompressedCheckpoint:
        """Code ckpt in full (ref None) or as deltas against ref; keep its
        reconstruction as the next reference when call.keep_reference."""
        t0 = time.perf_counter()
        flat = _structure.Flat(ckpt)
        code(COMPRESSION_METHODS, call.method, "method")
        keep = self.keep_reference and call.keep_reference
        specs = [self._spec(name, t, ref, call.method, keep) for name, t in flat.tensors.items()]
        stored = self._stored_metadata(flat, ref, epoch, user, call.method)
        ckpt_meta = stored["checkpoint"]

        def finish(results: List[_bundle.ItemResult]) -> Dict[str, Any]:
            # What only coding tells, stored with the rest: the writer
            # takes the metadata after the tensors.
            bound = max((r.threshold for r in results), default=0.0)
            changed = sum(r.changed_elems if s.ref is not None else r.nelem for s, r in zip(specs, results))
            total = sum(r.nelem for r in results)
            ckpt_meta["lossless"] = bound == 0
            ckpt_meta["error_bound"] = bound
            ckpt_meta["sparsity"] = 0.0 if ref is None or total == 0 else 100.0 * (1 - changed / total)
            ckpt_meta["max_error"] = max((r.max_error for r in results), default=0.0)
            return stored

        if call.path is None:
            blob, _ = _bundle.encode(specs, finish, effort=self.effort, threads=self.threads)
            size = len(blob)
        else:
            blob, size = b"", self._stream(specs, call, finish)
        meta = dict(ckpt_meta)
        meta.update(stored["user"])
        meta["sparsity"] = ckpt_meta["sparsity"]
        meta["max_error"] = ckpt_meta["max_error"]
        meta["compressed_size"] = size
        meta["compressed_size_mb"] = size / 1e6
        meta["ratio"] = meta["original_size"] / size if size else float("inf")
        meta["method"] = "tpde-keyframe" if ref is None else f"tpde-delta-{ref.kind}"
        meta["time"] = time.perf_counter() - t0
        if keep:
            recon = {s.name: s.recon for s in specs}
            for alias, name in flat.aliases.items():
                recon[alias] = recon[name]
            self._reference2 = self._reference if ref is not None else None
            self._reference, self._reference_source, self._reference_epoch = recon, ckpt, epoch
        self.last_metadata = meta
        return CompressedCheckpoint(blob, meta)

    def _spec(self, name: str, t: Any, ref: Optional[_Reference], method: str, keep: bool) -> _bundle.ItemSpec:
        """How one tensor is coded: as a delta against the reference's
        tensor of the same name, dtype and shape, else as a keyframe."""
        spec = _bundle.ItemSpec(name, t)
        r = ref.tensors.get(name) if ref is not None else None
        # An empty tensor has nothing to delta against (and may have no
        # data pointer at all): it is stored as a keyframe.
        if ref is not None and r is not None and _tensors.nbytes(t) > 0 and _tensors.layout(r) == _tensors.layout(t):
            spec.ref = r
            r2 = ref.older.get(name) if ref.older is not None else None
            if r2 is not None and _tensors.layout(r2) == _tensors.layout(t):
                spec.ref2 = r2
            spec.residual = RESIDUALS[self.residual]
            spec.flags = COMPRESSION_METHODS[method]
            self._lossy(spec, name, t)
        if keep:
            spec.recon = _tensors.empty_like(t)
        return spec

    def _lossy(self, spec: _bundle.ItemSpec, name: str, t: Any) -> None:
        """A delta item's lossy threshold: the tensor's own (adaptive_thresholds),
        else the encoder's, with adaptive's percentile (capped by the
        threshold when that is > 0). Float tensors only; the library
        computes the percentiles of a checkpoint in one call."""
        if _tensors.layout(t)[0] not in _LOSSY_CODES:
            return
        if name in self._thresholds:
            spec.threshold = float(self._thresholds[name])
        else:
            spec.threshold = self.threshold
            if self.adaptive:
                spec.percentile = self.percentile
        spec.quant_bits = self.quant_bits

    def _stored_metadata(self, flat: _structure.Flat, ref: Optional[_Reference], epoch: Optional[int],
                         user: Optional[Mapping[str, Any]], method: str) -> Dict[str, Any]:
        """The bundle's metadata (docs/FORMAT.md §9.6), less what coding
        tells (lossless, error_bound, sparsity, max_error: see _compress)."""
        ckpt_meta = {
            "checkpoint_type": "full" if ref is None else "delta",
            "reference": None if ref is None else ref.kind,
            "epoch": epoch,
            "reference_epoch": None if ref is None else ref.epoch,
            "tpde_version": _version(),
            "format_version": FORMAT_VERSION,
            "compression_method": method,
            "threshold": self.threshold,
            "adaptive": self.adaptive,
            "percentile": self.percentile if self.adaptive else None,
            "quant_bits": self.quant_bits,
            "lossless": True,
            "error_bound": 0.0,
            "timestamp": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "num_tensors": len(flat.tensors),
            "original_size": sum(_tensors.nbytes(t) for t in flat.tensors.values()),
        }
        ckpt_meta["original_size_mb"] = ckpt_meta["original_size"] / 1e6
        tp = {"format": "tpde-checkpoint", "skeleton": flat.skeleton, "aliases": flat.aliases,
              "state_dict_metadata": flat.state_dict_metadata}
        return {"tpde": tp, "checkpoint": ckpt_meta, "user": dict(user or {})}

    def _stream(self, specs: List[_bundle.ItemSpec], call: _Call, finish: _bundle.Finish) -> int:
        """Write specs to call.path, about call.chunk_size bytes of input
        per library call (at least one tensor); return the file's size."""
        assert call.path is not None
        results: List[_bundle.ItemResult] = []
        with _bundle.FileWriter(call.path, effort=self.effort, threads=self.threads) as w:
            group: List[_bundle.ItemSpec] = []
            group_bytes = 0
            for s in specs:
                nb = _tensors.nbytes(s.tensor)
                if group and group_bytes + nb > call.chunk_size:
                    results += w.add(group)
                    group, group_bytes = [], 0
                group.append(s)
                group_bytes += nb
            if group:
                results += w.add(group)
            return w.commit(finish(results))

    # -- decompression --

    def decompress_checkpoint(self, data: Source, previous: Optional[Checkpoint] = None, *,
                              previous2: Optional[Checkpoint] = None, like: str = "torch",
                              threads: int = 0, max_output_bytes: Optional[int] = None) -> Checkpoint:
        """Decode a compressed checkpoint (bytes, or a path to one). A delta
        needs previous: the decoded checkpoint it was made against (a
        different one raises ReferenceMismatchError, never wrong data).
        Returns the state dict, with tensors on the CPU. max_output_bytes:
        as for tpde.load_checkpoint."""
        return _load.decode(data, previous, previous2, like, threads or self.threads, max_output_bytes)

    def decompress_parallel(self, data: Source, num_threads: int = 0, previous: Optional[Checkpoint] = None, *,
                            max_output_bytes: Optional[int] = None) -> Checkpoint:
        """decompress_checkpoint on num_threads threads (design document
        §8.2). Decoding is always parallel; 0 uses tpde.get_num_threads()."""
        return self.decompress_checkpoint(data, previous, threads=num_threads, max_output_bytes=max_output_bytes)

    # -- files --

    def _path(self, epoch: Any) -> Path:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        return self.output_dir / f"checkpoint_epoch_{epoch}.tpde"

    def save_checkpoint(self, state_dict: Checkpoint, epoch: int) -> int:
        """Write a full checkpoint to output_dir/checkpoint_epoch_{epoch}.tpde
        (atomically) and return its size in bytes. The metadata is in
        last_metadata."""
        path = self._path(epoch)
        c = self._compress(state_dict, None, epoch, None, _Call(self.compression_method, str(path), _SAVE_CHUNK))
        return int(c.metadata["compressed_size"])

    def save_compressed_delta(self, state_dict: Checkpoint, previous_checkpoint: Optional[Checkpoint] = None,
                              epoch: Optional[int] = None) -> int:
        """Write state_dict as a delta against previous_checkpoint (see
        compress_checkpoint_delta) to output_dir/checkpoint_epoch_{epoch}.tpde
        and return its size in bytes."""
        ref = self._resolve_previous(previous_checkpoint, state_dict)
        path = self._path(epoch)
        c = self._compress(state_dict, ref, epoch, None, _Call(self.compression_method, str(path), _SAVE_CHUNK))
        return int(c.metadata["compressed_size"])

    def load_checkpoint(self, epoch_or_path: Any, previous: Optional[Checkpoint] = None, *,
                        max_output_bytes: Optional[int] = None, **kw: Any) -> Checkpoint:
        """Decode a checkpoint written by save_checkpoint/save_compressed_delta
        (an epoch number) or any compressed checkpoint file (a path); keywords
        as for decompress_checkpoint."""
        p = epoch_or_path if isinstance(epoch_or_path, (str, os.PathLike)) else self.output_dir / \
            f"checkpoint_epoch_{epoch_or_path}.tpde"
        return self.decompress_checkpoint(p, previous, max_output_bytes=max_output_bytes, **kw)

    def stream_compress_to_file(self, checkpoint: Checkpoint, path: Union[str, "os.PathLike[str]"],
                                chunk_size: Union[int, float] = 1 << 28, *,
                                previous: Optional[Checkpoint] = None, epoch: Optional[int] = None) -> int:
        """Compress a checkpoint straight to a file (design document §8.2):
        tensors are coded and written about chunk_size bytes of input at a
        time, so the extra memory is about the compressed size of chunk_size
        bytes (at least one tensor's worth) rather than of the checkpoint.
        Full unless previous is given, which is resolved as by
        compress_checkpoint_delta. It does not keep a reference copy (that
        would cost a checkpoint of memory), so it leaves this encoder's
        chain as it was. Returns the file's size in bytes."""
        cs = int(chunk_size)
        if cs <= 0:
            raise InvalidArgumentError(f"chunk_size must be > 0, got {chunk_size!r}")
        ref = None if previous is None else self._resolve_previous(previous, checkpoint)
        c = self._compress(checkpoint, ref, epoch, None,
                           _Call(self.compression_method, os.fspath(path), cs, keep_reference=False))
        return int(c.metadata["compressed_size"])



class TPDECheckpointCompressor(TemporalPositionDeltaEncoder):
    """A stateful chain of checkpoints (design document §4.2, §10): the
    first compress() is a full checkpoint, every later one a delta against
    the previous checkpoint (reference="previous", approach A) or against
    the first one (reference="base", approach B: each checkpoint decodes
    with the base alone). keyframe_interval K (1 to 1000, default 10, the
    store's policy: docs/FORMAT.md §6.14) makes every K-th checkpoint full,
    so that no checkpoint needs more than K to be decoded, and one lost
    checkpoint costs at most the K - 1 after it.
    predict=True (approach A) also keeps the checkpoint before the previous
    and lets the encoder predict each element from the last two (one more
    checkpoint of memory on both sides; often smaller deltas).

    decompress() is the mirror image: feed it the checkpoints in the order
    they were compressed (a full one starts a chain) and it returns each
    decoded state dict.

    adaptive_threshold=True is the design document's per-layer adaptive
    threshold (lossy); adaptive_thresholds={name: threshold} gives explicit
    per-tensor thresholds (§7.1). Both are opt-in; the default is lossless.
    """

    def __init__(self, adaptive_threshold: bool = False, compression_method: str = "auto", *,
                 threshold: float = 0.0, adaptive_thresholds: Optional[Mapping[str, float]] = None,
                 reference: str = "previous", keyframe_interval: Optional[int] = None, predict: bool = False,
                 version: Optional[str] = None, **kw: Any) -> None:
        if version is not None and str(version).split(".")[:1] != _version().split(".")[:1]:
            raise UnsupportedFormatError(f"tpde {_version()} cannot act as version {version}")
        policy = _chain.policy(keyframe_interval, reference)
        super().__init__(threshold=threshold, adaptive=adaptive_threshold, compression_method=compression_method,
                         **kw)
        if adaptive_thresholds is not None:
            for k, v in adaptive_thresholds.items():
                if not (isinstance(v, (int, float)) and v >= 0 and math.isfinite(v)):
                    raise InvalidArgumentError(f"adaptive_thresholds[{k!r}] must be a finite number >= 0, got {v!r}")
            self._thresholds = dict(adaptive_thresholds)
        if not self.keep_reference:
            raise InvalidArgumentError("TPDECheckpointCompressor needs keep_reference=True: it is a chain")
        self._policy = policy
        self.reference = reference
        self.keyframe_interval: int = policy["keyframe_interval"]
        self._keyframe_interval_given = keyframe_interval is not None  # else an existing store's K stands
        self.predict = predict and reference == "previous"
        self._since_keyframe = 0
        self._base: Optional[Dict[str, Any]] = None
        self._base_epoch: Optional[int] = None
        # Decoder side.
        self._dec_prev: Optional[Checkpoint] = None
        self._dec_prev2: Optional[Checkpoint] = None
        self._dec_base: Optional[Checkpoint] = None

    def compress(self, checkpoint: Checkpoint, epoch: Optional[int] = None, *,
                 metadata: Optional[Mapping[str, Any]] = None) -> CompressedCheckpoint:
        """Compress the next checkpoint of the chain; returns bytes (a
        CompressedCheckpoint, whose .metadata has the statistics)."""
        full = self._reference is None or _chain.keyframe_next(self._policy, self._since_keyframe)
        self._since_keyframe = 1 if full else self._since_keyframe + 1
        call = _Call(self.compression_method)
        if full:
            c = self._compress(checkpoint, None, epoch, metadata, call)
            self._base, self._base_epoch = self._reference, epoch
            self._reference2 = None
            return c
        if self.reference == "base":
            assert self._base is not None
            return self._compress(checkpoint, _Reference(self._base, "base", self._base_epoch), epoch, metadata, call)
        assert self._reference is not None
        ref = _Reference(self._reference, "previous", self._reference_epoch,
                         self._reference2 if self.predict else None)
        return self._compress(checkpoint, ref, epoch, metadata, call)

    def compress_directory(self, path: Union[str, "os.PathLike[str]"],
                           store: Optional[Union[str, "os.PathLike[str]"]] = None) -> List[Any]:
        """The design document's §9.2 call, on the store: add a Trainer
        output_dir's checkpoint-N/ folders that the store does not hold yet
        (in step order, steps from the names), or path itself when it holds
        none, to the store at store (default: path/tpde-store). Returns
        the CheckpointInfo of each one added. The folders are left as they
        are: deleting them is the caller's choice."""
        from .store import Store

        root = os.fspath(path)
        if not os.path.isdir(root):
            raise InvalidArgumentError(f"{root} is not a folder")
        dest = os.fspath(store) if store is not None else os.path.join(root, "tpde-store")
        found = []
        for name in os.listdir(root):
            # The Trainer's folders only; their step read as Store.add reads it.
            step = step_from_name(os.path.join(root, name)) if name.startswith("checkpoint-") else None
            if step is not None:
                found.append((step, os.path.join(root, name)))
        found.sort()
        inside = os.path.commonpath([os.path.abspath(dest), os.path.abspath(root)]) == os.path.abspath(root)
        if not found and inside:
            raise InvalidArgumentError(f"{root} holds no checkpoint-N folder; to add the folder itself, pass a "
                                       "store= outside it")
        new = not os.path.exists(os.path.join(dest, "tpde-store.json"))
        base = found[0][1] if self.reference == "base" and new and found else None
        with Store(dest, keyframe_interval=self.keyframe_interval if self._keyframe_interval_given else None,
                   reference=self.reference,
                   base=base, lossy={"*": self.threshold} if self.threshold > 0 else None) as st:
            held = set() if new else set(st.steps())
            if not found:
                return [st.add(root)]
            newest = max(held, default=-1)
            return [st.add(p, step=step) for step, p in found if step not in held and step > newest]

    def decompress(self, data: Source, *, like: str = "torch", threads: int = 0,
                   max_output_bytes: Optional[int] = None) -> Checkpoint:
        """Decode the next checkpoint of a chain made by compress().
        max_output_bytes: as for tpde.load_checkpoint."""
        th = threads or self.threads
        limit = _memory.output_limit(max_output_bytes)
        with _load.open_checkpoint(data) as b:
            if b.meta.checkpoint_type == "full":
                sd = _load.decode_opened(b, None, None, like, th, limit)
                self._dec_base, self._dec_prev, self._dec_prev2 = sd, sd, None
                return sd
            if self._dec_prev is None:
                raise ReferenceMismatchError("this checkpoint is a delta and this decoder has not decoded the full "
                                             "checkpoint its chain starts with")
            if b.meta.reference == "base":
                sd = _load.decode_opened(b, self._dec_base, None, like, th, limit)
            else:
                sd = _load.decode_opened(b, self._dec_prev, self._dec_prev2, like, th, limit)
        self._dec_prev2, self._dec_prev = self._dec_prev, sd
        return sd
