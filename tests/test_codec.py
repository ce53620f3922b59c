"""Tensor frames through the Python API: bit-exact round trips for every
dtype, zero-copy paths, argument checks, corruption and thread safety."""

from __future__ import annotations

import math
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tpde

TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.int8, torch.uint16, torch.int16, torch.uint32, torch.int32,
    torch.uint64, torch.int64, torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.float8_e4m3fn, torch.float8_e5m2,
]
NUMPY_DTYPES = [
    np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64, np.int64,
    np.float16, np.float32, np.float64,
]
assert len(TORCH_DTYPES) == len(tpde.DTYPES)
NAMES = dict(zip(TORCH_DTYPES, tpde.DTYPES))
# (sign/exponent/mantissa layout) of each float dtype, for special values.
FLOAT_LAYOUT = {
    torch.float16: (5, 10), torch.bfloat16: (8, 7), torch.float32: (8, 23), torch.float64: (11, 52),
    torch.float8_e4m3fn: (4, 3), torch.float8_e5m2: (5, 2),
}
UINT_OF_WIDTH = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}


# --- helpers --------------------------------------------------------------

def torch_bits(dtype: torch.dtype, shape: Tuple[int, ...], seed: int) -> torch.Tensor:
    """Random bit patterns viewed as dtype: NaN payloads, +-0, +-inf and subnormals all occur."""
    width = torch.empty((), dtype=dtype).element_size()
    raw = np.random.default_rng(seed).integers(0, 256, math.prod(shape) * width, dtype=np.uint8)
    if dtype == torch.bool:
        raw &= 1  # other byte values are not valid torch bools
    if raw.size == 0:
        return torch.empty(shape, dtype=dtype)  # torch cannot view an empty buffer as a wider dtype
    return torch.from_numpy(raw).view(dtype).reshape(shape)


def numpy_bits(dtype: Any, shape: Tuple[int, ...], seed: int) -> np.ndarray:
    width = np.dtype(dtype).itemsize
    raw = np.random.default_rng(seed).integers(0, 256, math.prod(shape) * width, dtype=np.uint8)
    if np.dtype(dtype) == np.bool_:
        raw &= 1
    return raw.view(dtype).reshape(shape)


def raw_bytes(x: Any) -> bytes:
    if isinstance(x, torch.Tensor):
        return x.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return np.ascontiguousarray(x).tobytes()


def assert_identical(got: Any, want: Any) -> None:
    """Same type, dtype, shape and bytes (never ==: NaN != NaN)."""
    assert type(got) is type(want)
    assert got.dtype == want.dtype
    assert tuple(got.shape) == tuple(want.shape)
    assert raw_bytes(got) == raw_bytes(want)


def special_values(dtype: torch.dtype) -> torch.Tensor:
    """+-0, +-inf, quiet/signalling/negative NaNs with payloads, subnormals, extremes."""
    e, m = FLOAT_LAYOUT[dtype]
    w = 1 + e + m
    sign, exp, mant = 1 << (w - 1), ((1 << e) - 1) << m, (1 << m) - 1
    patterns = [
        0, sign,                        # +0, -0
        exp, sign | exp,                # +-inf (NaN in e4m3fn, which has no inf)
        exp | (1 << (m - 1)),           # quiet NaN
        exp | 1, sign | exp | mant,     # signalling NaN, negative NaN with all-ones payload
        exp | (mant & 0b1010),          # NaN with a payload
        1, mant, sign | 1,              # smallest and largest subnormals, negative subnormal
        (exp - (1 << m)) | mant,        # largest finite
        1 << m,                         # smallest normal
    ]
    arr = np.array(patterns, dtype=UINT_OF_WIDTH[w // 8])
    return torch.from_numpy(arr).view(dtype)


def roundtrip(x: Any, **kw: Any) -> Any:
    like = "torch" if isinstance(x, torch.Tensor) else "numpy"
    threads = kw.pop("dthreads", 0)
    return tpde.decompress_tensor(tpde.compress_tensor(x, **kw), like=like, threads=threads)


shapes = st.lists(st.integers(0, 7), min_size=0, max_size=4).map(tuple)
chunk_sizes = st.sampled_from([0, 1, 3, 17, 256])
efforts = st.sampled_from(["fast", "balanced", "max"])
thread_counts = st.sampled_from([0, 1, 3])


# --- round trips ----------------------------------------------------------

@settings(max_examples=150)
@given(dtype=st.sampled_from(TORCH_DTYPES), shape=shapes, chunk=chunk_sizes, effort=efforts,
       threads=thread_counts, seed=st.integers(0, 2**32 - 1))
def test_torch_random_bits_roundtrip(dtype: torch.dtype, shape: Tuple[int, ...], chunk: int, effort: str,
                                     threads: int, seed: int) -> None:
    x = torch_bits(dtype, shape, seed)
    assert_identical(roundtrip(x, chunk_elems=chunk, effort=effort, threads=threads, dthreads=threads), x)


@settings(max_examples=100)
@given(dtype=st.sampled_from(NUMPY_DTYPES), shape=shapes, chunk=chunk_sizes, effort=efforts,
       seed=st.integers(0, 2**32 - 1))
def test_numpy_random_bits_roundtrip(dtype: Any, shape: Tuple[int, ...], chunk: int, effort: str, seed: int) -> None:
    x = numpy_bits(dtype, shape, seed)
    assert_identical(roundtrip(x, chunk_elems=chunk, effort=effort), x)


@pytest.mark.parametrize("n", [1, 3, 131073])
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_odd_sizes_many_chunks(dtype: torch.dtype, n: int) -> None:
    x = torch_bits(dtype, (n,), seed=n)
    for chunk in (0, 1000):
        blob = tpde.compress_tensor(x, chunk_elems=chunk)
        info = tpde.inspect(blob)
        if chunk:
            assert info["nchunks"] == -(-n // chunk)
        assert_identical(tpde.decompress_tensor(blob), x)


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_odd_sizes(dtype: Any) -> None:
    for n in (1, 3, 131073):
        x = numpy_bits(dtype, (n,), seed=n)
        assert_identical(roundtrip(x, chunk_elems=777), x)


@pytest.mark.parametrize("dtype", list(FLOAT_LAYOUT), ids=str)
def test_special_float_values(dtype: torch.dtype) -> None:
    x = special_values(dtype)
    assert len(set(raw_bytes(x))) > 1
    for chunk in (0, 1, 4):
        assert_identical(roundtrip(x, chunk_elems=chunk), x)
    if dtype in (torch.float16, torch.float32, torch.float64):
        a = x.numpy()
        assert_identical(roundtrip(a, chunk_elems=3), a)


def test_special_values_cover_nan_inf_zero_subnormal() -> None:
    # Guards the helper itself: the patterns decode to what they claim.
    x = special_values(torch.float32).tolist()
    assert x[0] == 0.0 and math.copysign(1, x[1]) == -1.0
    assert x[2] == math.inf and x[3] == -math.inf
    assert all(math.isnan(v) for v in x[4:8])
    assert 0 < x[8] < 1.2e-38 and 0 < x[9] < 1.2e-38


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (0, 0)])
@pytest.mark.parametrize("lib", ["torch", "numpy"])
def test_empty_and_scalar(shape: Tuple[int, ...], lib: str) -> None:
    x: Any = torch_bits(torch.float32, shape, 1)
    if lib == "numpy":
        x = x.numpy()
    blob = tpde.compress_tensor(x)
    info = tpde.inspect(blob)
    assert info["shape"] == shape and info["raw_size"] == 4 * math.prod(shape)
    assert_identical(tpde.decompress_tensor(blob, like=lib), x)


def test_many_dimensions() -> None:
    x = torch_bits(torch.int16, (2,) * 10 + (3,), 5)
    assert_identical(roundtrip(x, chunk_elems=100), x)
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_tensor(torch.zeros((1,) * 33))


def test_smooth_weights_compress_and_roundtrip() -> None:
    x = (torch.randn(256, 384, generator=torch.Generator().manual_seed(0)) * 0.02).to(torch.bfloat16)
    blob = tpde.compress_tensor(x)
    assert len(blob) < x.numel() * 2 * 0.85
    assert_identical(tpde.decompress_tensor(blob), x)
    for effort in ("fast", "balanced", "max"):
        assert_identical(tpde.decompress_tensor(tpde.compress_tensor(x, effort=effort)), x)


def test_output_is_deterministic_across_thread_counts() -> None:
    x = torch_bits(torch.float32, (50_000,), 3)
    blobs = {tpde.compress_tensor(x, threads=t, chunk_elems=4096) for t in (1, 2, 5)}
    assert len(blobs) == 1
    blobs = {tpde.compress_tensor(x, threads=t) for t in (1, 4)}
    assert len(blobs) == 1


# --- layouts and copies ---------------------------------------------------

def test_non_contiguous_torch_is_copied_and_roundtrips() -> None:
    base = torch_bits(torch.float32, (40, 30), 9)
    before = raw_bytes(base)
    for x in (base.t(), base[::3, 1::2], base.view(40, 30, 1).permute(2, 1, 0),
              torch.arange(7, dtype=torch.int64).expand(5, 7)):
        assert not x.is_contiguous()
        y = roundtrip(x, chunk_elems=64)
        assert y.is_contiguous()
        assert_identical(y, x.contiguous())
    assert raw_bytes(base) == before


def test_non_contiguous_numpy_is_copied_and_roundtrips() -> None:
    base = numpy_bits(np.float64, (20, 12), 2)
    for x in (base.T, base[::2, ::-3], np.broadcast_to(np.arange(5), (4, 5))):
        assert not x.flags.c_contiguous
        y = roundtrip(x)
        assert y.flags.c_contiguous
        assert_identical(y, np.ascontiguousarray(x))


def test_numpy_big_endian_input() -> None:
    x = np.arange(1000, dtype=">i4").reshape(10, 100)
    y = tpde.decompress_tensor(tpde.compress_tensor(x), like="numpy")
    assert y.dtype == np.dtype("<i4") and np.array_equal(x, y)


def test_requires_grad_and_parameter() -> None:
    p = torch.nn.Parameter(torch_bits(torch.float32, (3, 4), 0).nan_to_num())
    assert_identical(tpde.decompress_tensor(tpde.compress_tensor(p)), p.detach())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_is_copied_to_cpu() -> None:
    x = torch_bits(torch.bfloat16, (1000, 3), 4)
    blob = tpde.compress_tensor(x.cuda())
    assert blob == tpde.compress_tensor(x)
    assert_identical(tpde.decompress_tensor(blob), x)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2], ids=str)
def test_numpy_gets_raw_bits_for_bf16_and_float8(dtype: torch.dtype) -> None:
    x = torch_bits(dtype, (5, 7), 1)
    blob = tpde.compress_tensor(x)
    a = tpde.decompress_tensor(blob, like="numpy")
    assert a.dtype == (np.uint16 if dtype == torch.bfloat16 else np.uint8)
    assert a.shape == (5, 7) and a.tobytes() == raw_bytes(x)
    # ...and numpy can compress those bits back as the original dtype.
    assert tpde.compress_tensor(a, dtype=NAMES[dtype]) == blob


def test_dtype_override_needs_the_same_width() -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="wide"):
        tpde.compress_tensor(np.zeros(4, np.uint8), dtype="BF16")
    with pytest.raises(tpde.InvalidArgumentError, match="unknown dtype"):
        tpde.compress_tensor(np.zeros(4, np.uint8), dtype="F4")


@pytest.mark.parametrize("blob_type", ["bytes", "bytearray", "memoryview-ro", "memoryview-rw-slice", "numpy"])
def test_blob_types(blob_type: str) -> None:
    x = torch_bits(torch.int32, (100,), 6)
    blob = tpde.compress_tensor(x)
    assert type(blob) is bytes
    padded = bytearray(b"xx" + blob + b"yy")
    arg = {
        "bytes": blob,
        "bytearray": bytearray(blob),
        "memoryview-ro": memoryview(blob),
        "memoryview-rw-slice": memoryview(padded)[2:-2],
        "numpy": np.frombuffer(bytearray(blob), dtype=np.uint8),
    }[blob_type]
    assert_identical(tpde.decompress_tensor(arg), x)
    assert tpde.inspect(arg)["frame_size"] == len(blob)
    if isinstance(arg, memoryview):
        arg.release()
        padded.extend(b"z")  # tpde released its own export of the buffer too
    with pytest.raises(TypeError):
        tpde.decompress_tensor(12345)  # type: ignore[arg-type]


# --- zero copy ------------------------------------------------------------

def test_decompress_into_out_torch() -> None:
    x = torch_bits(torch.bfloat16, (64, 33), 7)
    blob = tpde.compress_tensor(x, chunk_elems=100)
    out = torch.full((64, 33), 1.0, dtype=torch.bfloat16)
    ptr = out.data_ptr()
    got = tpde.decompress_tensor(blob, out=out)
    assert got is out and out.data_ptr() == ptr
    assert_identical(out, x)


def test_decompress_into_out_numpy() -> None:
    x = numpy_bits(np.int64, (3, 5, 7), 8)
    out = np.zeros((3, 5, 7), np.int64)
    got = tpde.decompress_tensor(tpde.compress_tensor(x), out=out)
    assert got is out
    assert_identical(out, x)
    # A BF16 frame decodes into a numpy uint16 out.
    bits = np.zeros((4,), np.uint16)
    tpde.decompress_tensor(tpde.compress_tensor(torch.ones(4, dtype=torch.bfloat16)), out=bits)
    assert bits.tolist() == [0x3F80] * 4


@pytest.mark.parametrize("bad_out", [
    lambda: torch.empty(64, 33, dtype=torch.float16),      # dtype
    lambda: torch.empty(33, 64, dtype=torch.bfloat16),     # shape
    lambda: torch.empty(64 * 33, dtype=torch.bfloat16),    # same bytes, other shape
    lambda: torch.empty(33, 64, dtype=torch.bfloat16).t(),  # not contiguous
    lambda: np.empty((64, 33), np.float32),
    lambda: np.empty((64, 33), np.uint16)[::-1],
])
def test_wrong_out_is_invalid(bad_out: Any) -> None:
    blob = tpde.compress_tensor(torch.zeros(64, 33, dtype=torch.bfloat16))
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.decompress_tensor(blob, out=bad_out())


def test_read_only_numpy_out_is_invalid() -> None:
    out = np.zeros(8, np.float32)
    out.flags.writeable = False
    with pytest.raises(tpde.InvalidArgumentError, match="writable"):
        tpde.decompress_tensor(tpde.compress_tensor(np.ones(8, np.float32)), out=out)
    assert not out.any()
    with pytest.raises(TypeError):
        tpde.decompress_tensor(tpde.compress_tensor(np.ones(8, np.float32)), out=[0.0] * 8)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")
def test_compress_reads_contiguous_input_in_place(run_py) -> None:
    """Peak memory shows that a contiguous tensor is not copied (and a non-contiguous one is).

    A constant tensor compresses to almost nothing, so any copy of the
    128 MiB input shows up in the process's peak RSS (VmHWM, reset through
    /proc/self/clear_refs)."""
    code = textwrap.dedent("""
        import json, torch, tpde
        def status(key):
            for line in open('/proc/self/status'):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        def growth(fn):
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            base = status('VmRSS')
            r = fn()
            return status('VmHWM') - base, r
        n = 32 << 20
        x = torch.ones(n)
        tpde.decompress_tensor(tpde.compress_tensor(x[:1000]))  # load the library, start the runtime
        contig, blob = growth(lambda: tpde.compress_tensor(x))
        strided, blob2 = growth(lambda: tpde.compress_tensor(x.view(2, n // 2).t()))
        out = torch.zeros(n)
        decode, _ = growth(lambda: tpde.decompress_tensor(blob, out=out))
        assert torch.equal(out, x) and len(blob) < n // 100
        print(json.dumps(dict(contig=contig, strided=strided, decode=decode, raw=4 * n)))
    """)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError as e:
        pytest.skip(f"cannot reset peak RSS here: {e}")
    proc = run_py("-c", code)
    assert proc.returncode == 0, proc.stderr
    import json

    m = json.loads(proc.stdout)
    assert m["contig"] < m["raw"] // 8, m
    assert m["decode"] < m["raw"] // 8, m
    assert m["strided"] > m["raw"] * 0.9, m  # the documented copy: the measurement can see one


# --- argument checks ------------------------------------------------------

@pytest.mark.parametrize("x", [torch.zeros(3, dtype=torch.complex64), np.zeros(3, np.complex64),
                               np.array(["a"], dtype=object), torch.zeros(3, dtype=torch.float8_e4m3fnuz)])
def test_unsupported_dtypes(x: Any) -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="unsupported"):
        tpde.compress_tensor(x)


def test_not_a_tensor() -> None:
    with pytest.raises(TypeError):
        tpde.compress_tensor([1.0, 2.0])
    with pytest.raises(TypeError):
        tpde.entropy_bound_bits(b"abc")


@pytest.mark.parametrize("kw", [dict(effort="slow"), dict(chunk_elems=-1), dict(chunk_elems=2**32),
                                dict(threads=-1), dict(threads=2**31), dict(chunk_elems=1.5),
                                dict(threads=True)])
def test_bad_options(kw: dict) -> None:
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.compress_tensor(torch.zeros(4), **kw)


def test_bad_like_and_threads_on_decompress() -> None:
    blob = tpde.compress_tensor(torch.zeros(4))
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.decompress_tensor(blob, like="jax")
    with pytest.raises(tpde.InvalidArgumentError):
        tpde.decompress_tensor(blob, threads=-2)


def test_sparse_tensor_is_invalid() -> None:
    with pytest.raises(tpde.InvalidArgumentError, match="layout"):
        tpde.compress_tensor(torch.zeros(3, 3).to_sparse())


def test_inspect_fields() -> None:
    x = torch_bits(torch.float64, (10, 301), 1)
    blob = tpde.compress_tensor(x, chunk_elems=1000)
    info = tpde.inspect(blob)
    assert info == {"dtype": "F64", "shape": (10, 301), "raw_size": 8 * 3010, "frame_size": len(blob),
                    "chunk_elems": 1000, "nchunks": 4, "version": "1.0", "kind": 0}
    # Bytes after the frame are ignored by inspect, refused by decompress.
    assert tpde.inspect(blob + b"\0")["frame_size"] == len(blob)
    with pytest.raises(tpde.CorruptDataError):
        tpde.decompress_tensor(blob + b"\0")


def test_frame_shape_agrees_with_inspect_and_refuses_what_it_refuses() -> None:
    """tpde_frame_shape (what decompress_tensor allocates from) reads the
    same header as tpde_inspect: the same dtype, shape and raw size for a
    scalar, an empty tensor and the most dimensions a frame may have, and
    the same refusal, with the same error class, for a frame inspect
    refuses."""
    from ctypes import byref, c_int32, c_uint64

    from tpde import _native, codec

    g = torch.Generator().manual_seed(3)
    tensors = [torch.tensor(1.5), torch.empty(0, 7), torch.randn(2, 3, 4, generator=g).to(torch.bfloat16),
               torch.zeros((1,) * 31 + (5,), dtype=torch.int16), torch.arange(300, dtype=torch.int64)]
    for x in tensors:
        blob = tpde.compress_tensor(x)
        info = tpde.inspect(blob)
        code, shape, raw = codec._frame_shape(blob, len(blob))
        assert (tpde.DTYPES[code], shape, raw) == (info["dtype"], info["shape"], info["raw_size"]), x.shape
        assert shape == tuple(x.shape)
        got = tpde.decompress_tensor(blob)
        assert got.dtype == x.dtype and got.shape == x.shape and torch.equal(got.view(-1).view(torch.uint8),
                                                                             x.view(-1).view(torch.uint8))
    blob = tpde.compress_tensor(tensors[2])
    ref = tensors[2].clone()
    delta = tpde.compress_delta(tensors[2], ref)
    for bad in (blob[:20], blob[:-1], b"\0" * 64, delta):
        with pytest.raises(tpde.TPDEError) as inspect_err:
            tpde.inspect(bad)
        with pytest.raises(type(inspect_err.value)):
            codec._frame_shape(bad, len(bad))
    # Every out-pointer is required: a NULL is refused, never written through.
    vals = (c_int32(), c_int32(), (c_uint64 * _native.MAX_NDIM)(), c_uint64())
    for i in range(4):
        args = [byref(v) if j != 2 else v for j, v in enumerate(vals)]
        args[i] = None
        with pytest.raises(tpde.InvalidArgumentError):
            _native.call("tpde_frame_shape", blob, len(blob), *args)


def test_frame_shape_on_every_truncation_and_header_bit_flip() -> None:
    """A damaged frame gets from tpde_frame_shape what tpde_inspect gives
    it: the same fields where the header still parses, else the same
    error class, for every truncation and every bit flip of the header
    and chunk table (where dtype, rank, shape and sizes live)."""
    from tpde import codec

    x = (torch.randn(4, 3, 40, generator=torch.Generator().manual_seed(5)) * 0.1).to(torch.bfloat16)
    blob = tpde.compress_tensor(x, chunk_elems=160)
    cases = [blob[:k] for k in range(len(blob))]
    for i in range(min(128, len(blob))):  # the header and chunk table lie in the first bytes
        for bit in range(8):
            b = bytearray(blob)
            b[i] ^= 1 << bit
            cases.append(bytes(b))
    agreed = refused = 0
    for bad in cases:
        try:
            info = tpde.inspect(bad)
        except tpde.TPDEError as e:
            with pytest.raises(type(e)):
                codec._frame_shape(bad, len(bad))
            refused += 1
            continue
        code, shape, raw = codec._frame_shape(bad, len(bad))
        assert (tpde.DTYPES[code], shape, raw) == (info["dtype"], info["shape"], info["raw_size"])
        agreed += 1
    assert refused > len(blob) and agreed > 0, (refused, agreed)


def test_entropy_bound_bits() -> None:
    assert tpde.entropy_bound_bits(torch.zeros(1000)) == 0.0
    n = 1 << 16
    rnd = numpy_bits(np.uint8, (n,), 0)
    bits = tpde.entropy_bound_bits(rnd)
    assert 7.99 * n < bits <= 8 * n
    assert tpde.entropy_bound_bits(torch.from_numpy(rnd)) == bits
    assert tpde.entropy_bound_bits(torch.empty(0)) == 0.0


# --- corruption -----------------------------------------------------------

def _corrupt_frames() -> List[Tuple[str, bytes, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    cases = [
        ("bf16", (torch.randn(96, generator=g) * 0.02).to(torch.bfloat16), dict(chunk_elems=32)),
        ("f32-mixed", torch.cat([torch.zeros(40), torch.randn(40, generator=g), torch.arange(40.0)]),
         dict(chunk_elems=40, effort="max")),
        ("i64", torch.arange(50).reshape(5, 10), dict(chunk_elems=16)),
        ("u8-noise", torch_bits(torch.uint8, (70,), 3), dict(chunk_elems=30)),
        ("f16-scalar", torch.tensor(1.5, dtype=torch.float16), {}),
    ]
    return [(name, tpde.compress_tensor(x, **kw), x) for name, x, kw in cases]


CORRUPT_FRAMES = _corrupt_frames()


@pytest.mark.parametrize("name,blob,x", CORRUPT_FRAMES, ids=[c[0] for c in CORRUPT_FRAMES])
def test_every_single_byte_flip_is_detected(name: str, blob: bytes, x: torch.Tensor) -> None:
    assert_identical(tpde.decompress_tensor(blob), x)
    out = torch.empty_like(x)
    for i in range(len(blob)):
        for mask in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= mask
            expected = tpde.UnsupportedFormatError if i == 4 else tpde.CorruptDataError
            with pytest.raises(expected):
                tpde.decompress_tensor(bytes(bad))
            with pytest.raises(expected):
                tpde.decompress_tensor(bad, out=out)


@pytest.mark.parametrize("name,blob,x", CORRUPT_FRAMES, ids=[c[0] for c in CORRUPT_FRAMES])
def test_every_truncation_is_detected(name: str, blob: bytes, x: torch.Tensor) -> None:
    for n in range(len(blob)):
        with pytest.raises(tpde.CorruptDataError):
            tpde.decompress_tensor(blob[:n])
        with pytest.raises(tpde.CorruptDataError):
            tpde.inspect(blob[:n])


# Half zeros, half noise: chunks coded with several methods.
LARGE_BLOB = tpde.compress_tensor(
    torch.cat([torch.zeros(20_000), torch.randn(20_000, generator=torch.Generator().manual_seed(1))]),
    chunk_elems=2000)


@settings(max_examples=200)
@given(st.lists(st.tuples(st.integers(0, len(LARGE_BLOB) - 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_random_multi_byte_corruption_is_detected(flips: List[Tuple[int, int]]) -> None:
    bad = bytearray(LARGE_BLOB)
    for i, mask in flips:
        bad[i] ^= mask
    if bad == LARGE_BLOB:
        return  # the flips cancelled out
    expected = tpde.UnsupportedFormatError if bad[4] != LARGE_BLOB[4] else tpde.CorruptDataError
    with pytest.raises(expected):
        tpde.decompress_tensor(bytes(bad))


def test_messages_name_what_failed() -> None:
    blob = CORRUPT_FRAMES[0][1]
    with pytest.raises(tpde.CorruptDataError, match="truncated"):
        tpde.decompress_tensor(blob[:10])
    with pytest.raises(tpde.UnsupportedFormatError, match="version"):
        tpde.decompress_tensor(blob[:4] + b"\x07" + blob[5:])


# --- threads --------------------------------------------------------------

def test_concurrent_compress_and_decompress() -> None:
    def job(k: int) -> bool:
        dtype = TORCH_DTYPES[k % len(TORCH_DTYPES)]
        for it in range(4):
            x = torch_bits(dtype, (3000 + 977 * k + it, 3), seed=100 * k + it)
            blob = tpde.compress_tensor(x, chunk_elems=1000 + k, threads=1 + it % 3)
            y = tpde.decompress_tensor(blob, threads=it % 2)
            assert_identical(y, x)
            a = numpy_bits(NUMPY_DTYPES[k % len(NUMPY_DTYPES)], (k + 1, 500), seed=k)
            assert_identical(tpde.decompress_tensor(tpde.compress_tensor(a), like="numpy"), a)
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(job, range(8)))


def test_concurrent_error_messages_belong_to_their_call() -> None:
    # Each thread truncates the frame at its own length; the message must
    # name that length, never another thread's.
    blob = tpde.compress_tensor(torch.zeros(1000), chunk_elems=100)
    errors: List[str] = []
    barrier = threading.Barrier(8)

    def job(k: int) -> None:
        barrier.wait()
        n = 5 + k  # all shorter than the fixed header
        for _ in range(300):
            try:
                tpde.decompress_tensor(blob[:n])
            except tpde.CorruptDataError as e:
                if f"truncated header: {n} bytes" not in str(e):
                    errors.append(f"{n}: {e}")
            else:
                errors.append(f"{n}: no error")

    threads = [threading.Thread(target=job, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
