package frame

import (
	"encoding/binary"
	"math"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/huff0"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

func encode(t testing.TB, src []byte, d dtype.DType, shape []uint64, opt Options) []byte {
	b, err := Bound(uint64(len(src)), d, len(shape), opt.ChunkElems)
	require.NoError(t, err)
	dst := make([]byte, b)
	n, err := Encode(dst, src, d, shape, opt)
	require.NoError(t, err)
	require.LessOrEqual(t, uint64(n), b)
	return dst[:n]
}

// weights makes float bytes that look like trained weights: normal values of
// small scale, so exponent planes are skewed and mantissa planes are noise.
func weights(r *rand.Rand, d dtype.DType, n int) []byte {
	out := make([]byte, n*d.Width())
	for i := 0; i < n; i++ {
		v := r.NormFloat64() * 0.02
		switch d {
		case dtype.F32:
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(float32(v)))
		case dtype.BF16:
			binary.LittleEndian.PutUint16(out[2*i:], uint16(math.Float32bits(float32(v))>>16))
		case dtype.F64:
			binary.LittleEndian.PutUint64(out[8*i:], math.Float64bits(v))
		default:
			r.Read(out[i*d.Width() : (i+1)*d.Width()])
		}
	}
	return out
}

func TestRoundTripEveryDtypeAndShape(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	shapes := [][]uint64{{}, {0}, {1}, {3, 0, 5}, {7}, {13, 17}, {2, 3, 5, 7}}
	for d := dtype.DType(0); d < dtype.Count; d++ {
		for _, shape := range shapes {
			n, _ := elems(shape)
			src := make([]byte, int(n)*d.Width())
			r.Read(src)
			for _, opt := range []Options{{}, {ChunkElems: 4, Threads: 3}, {ChunkElems: 1, Effort: entropy.Max}} {
				blob := encode(t, src, d, shape, opt)
				dst := make([]byte, len(src))
				h, err := Decode(blob, dst, 0)
				require.NoError(t, err, "%s %v", d, shape)
				assert.Equal(t, src, dst)
				assert.Equal(t, d, h.DType)
				assert.Equal(t, shape, h.Shape)
				assert.Equal(t, uint64(len(src)), h.RawSize)
			}
		}
	}
}

func TestCompressesWeights(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32} {
		src := weights(r, d, 300000)
		blob := encode(t, src, d, []uint64{300000}, Options{})
		ratio := float64(len(src)) / float64(len(blob))
		assert.Greater(t, ratio, 1.1, d.String())
		dst := make([]byte, len(src))
		_, err := Decode(blob, dst, 2)
		require.NoError(t, err)
		assert.Equal(t, src, dst)
	}
}

func TestIdenticalChunksAreRLE(t *testing.T) {
	src := make([]byte, 4*1000)
	blob := encode(t, src, dtype.F32, []uint64{1000}, Options{})
	h, err := Parse(blob)
	require.NoError(t, err)
	for _, m := range h.Methods(0) {
		assert.Equal(t, entropy.RLE, m)
	}
	// header 32+8+4, table 8+4*5+4, four 1-byte streams
	assert.Equal(t, 80, len(blob))
}

func TestEncodeRejectsBadArguments(t *testing.T) {
	dst := make([]byte, 1000)
	_, err := Encode(dst, make([]byte, 6), dtype.F32, []uint64{2}, Options{})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(dst, make([]byte, 8), dtype.DType(99), []uint64{2}, Options{})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(dst, make([]byte, 8), dtype.F32, []uint64{1 << 63, 1 << 63}, Options{})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(dst[:10], make([]byte, 8), dtype.F32, []uint64{2}, Options{})
	assert.ErrorIs(t, err, errs.BufferTooSmall)
	_, err = Encode(dst, make([]byte, 8), dtype.F32, []uint64{2}, Options{ChunkElems: MaxChunkElems + 1})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(dst, make([]byte, 8), dtype.F32, make([]uint64, MaxNDim+1), Options{})
	assert.ErrorIs(t, err, errs.Invalid)
}

func TestDecodeBufferTooSmall(t *testing.T) {
	blob := encode(t, make([]byte, 64), dtype.F32, []uint64{16}, Options{})
	_, err := Decode(blob, make([]byte, 63), 1)
	assert.ErrorIs(t, err, errs.BufferTooSmall)
}

// Every single-byte change and every truncation of a frame must be reported
// as corrupt (or unsupported, for the version byte), never decoded.
func TestEveryFlipAndTruncationIsDetected(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	src := weights(r, dtype.BF16, 3000)
	blob := encode(t, src, dtype.BF16, []uint64{30, 100}, Options{ChunkElems: 1000})
	dst := make([]byte, len(src))
	for i := range blob {
		for _, x := range []byte{0x01, 0x80, 0xff} {
			bad := append([]byte(nil), blob...)
			bad[i] ^= x
			_, err := Decode(bad, dst, 2)
			require.Error(t, err, "flip %#x at byte %d", x, i)
			if i == 4 {
				assert.ErrorIs(t, err, errs.Unsupported)
			} else {
				assert.ErrorIs(t, err, errs.Corrupt, "byte %d", i)
			}
		}
	}
	for n := 0; n < len(blob); n++ {
		_, err := Decode(blob[:n], dst, 1)
		require.ErrorIs(t, err, errs.Corrupt, "truncated to %d", n)
	}
	_, err := Decode(append(append([]byte(nil), blob...), 0), dst, 1)
	assert.ErrorIs(t, err, errs.Corrupt, "trailing byte")
}

func TestUnknownVersionIsUnsupported(t *testing.T) {
	blob := encode(t, make([]byte, 8), dtype.F32, []uint64{2}, Options{})
	blob[4] = 2
	_, err := Parse(blob)
	assert.ErrorIs(t, err, errs.Unsupported)
}

func TestBound(t *testing.T) {
	_, err := Bound(10, dtype.DType(200), 1, 0)
	assert.ErrorIs(t, err, errs.Invalid)
	b, err := Bound(0, dtype.F32, 0, 0)
	require.NoError(t, err)
	assert.Equal(t, uint64(headerLen(0)+4), b)
}

// A keyframe of a 2-byte dtype is cut into about two chunks where other
// dtypes get eight, and delta frames keep eight: Encode, Bound and the
// header agree on it, and the frame fits its bound.
func TestKeyframeChunkElems(t *testing.T) {
	const mid = 147456 // a 384x384 weight matrix
	assert.Equal(t, uint32(mid/2), KeyframeChunkElems(mid, dtype.BF16))
	assert.Equal(t, uint32(mid/2), KeyframeChunkElems(mid, dtype.F16))
	assert.Equal(t, uint32(mid/8), KeyframeChunkElems(mid, dtype.F32))
	assert.Equal(t, uint32(mid/8), AutoChunkElems(mid))
	assert.Equal(t, uint32(MinAutoChunkElems), KeyframeChunkElems(100, dtype.BF16))
	assert.Equal(t, uint32(196608), KeyframeChunkElems(589824, dtype.BF16), "a 384x1536 matrix: 3 chunks, not 4 and a half")
	assert.Equal(t, uint32(DefaultChunkElems), KeyframeChunkElems(1<<24, dtype.F32))
	// 2-byte keyframes: chunks within one huff0 block, at least two from
	// 2 x MinAutoChunkElems elements, and none short by as many elements
	// as there are chunks.
	require.LessOrEqual(t, maxKeyframeChunkElems2, huff0.BlockSizeMax)
	for _, n := range []uint64{1, MinAutoChunkElems, 2*MinAutoChunkElems + 1, 147456, 196609, 589824, 11720448, 1 << 24, 1<<24 + 7, 1 << 32} {
		ce := uint64(KeyframeChunkElems(n, dtype.F16))
		require.LessOrEqual(t, ce, uint64(maxKeyframeChunkElems2), "%d", n)
		chunks := nchunksFor(n, uint32(ce))
		if n > 2*MinAutoChunkElems {
			assert.GreaterOrEqual(t, chunks, uint64(2), "%d", n)
			assert.Less(t, chunks*ce-n, chunks, "%d elements: %d chunks of %d", n, chunks, ce)
		}
	}
	r := rand.New(rand.NewSource(9))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F16, dtype.F32} {
		src := weights(r, d, mid)
		shape := []uint64{384, 384}
		blob := encode(t, src, d, shape, Options{})
		h, err := Parse(blob)
		require.NoError(t, err)
		assert.Equal(t, KeyframeChunkElems(mid, d), h.ChunkElems, "%s", d)
		b, err := Bound(uint64(len(src)), d, 2, 0)
		require.NoError(t, err)
		assert.LessOrEqual(t, uint64(len(blob)), b)
		got := make([]byte, len(src))
		_, err = Decode(blob, got, 1)
		require.NoError(t, err)
		assert.Equal(t, src, got)
	}
}

// FuzzDecode: arbitrary bytes never panic; whatever decodes must re-encode
// and decode to the same bytes, shape and dtype.
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewSource(4))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.U8, dtype.I64} {
		src := weights(r, d, 50)
		f.Add(encode(f, src, d, []uint64{5, 10}, Options{ChunkElems: 16}))
	}
	f.Add(encode(f, nil, dtype.F16, []uint64{0}, Options{}))
	f.Fuzz(func(t *testing.T, blob []byte) {
		h, err := Parse(blob)
		if err != nil {
			return
		}
		if h.RawSize > 1<<20 {
			return
		}
		dst := make([]byte, h.RawSize)
		if _, err := Decode(blob[:h.FrameLen], dst, 2); err != nil {
			return
		}
		again := encode(t, dst, h.DType, h.Shape, Options{ChunkElems: h.ChunkElems})
		back := make([]byte, len(dst))
		_, err = Decode(again, back, 1)
		require.NoError(t, err)
		require.Equal(t, dst, back)
	})
}

// FuzzRoundTrip: arbitrary bytes as any dtype survive encode/decode.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0xff, 0x7f, 0xc0, 1, 2}, uint8(10), uint16(3))
	f.Fuzz(func(t *testing.T, src []byte, code uint8, chunk uint16) {
		d := dtype.DType(code % dtype.Count)
		src = src[:len(src)/d.Width()*d.Width()]
		shape := []uint64{uint64(len(src) / d.Width())}
		blob := encode(t, src, d, shape, Options{ChunkElems: uint32(chunk) + 1})
		dst := make([]byte, len(src))
		_, err := Decode(blob, dst, 2)
		require.NoError(t, err)
		require.Equal(t, src, dst)
	})
}

func benchWeights(b *testing.B, d dtype.DType, threads int, decode bool) {
	src := weights(rand.New(rand.NewSource(5)), d, 1<<22)
	bound, _ := Bound(uint64(len(src)), d, 1, 0)
	blob := make([]byte, bound)
	n, _ := Encode(blob, src, d, []uint64{1 << 22}, Options{Threads: threads})
	blob = blob[:n]
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if decode {
			_, _ = Decode(blob, dst, threads)
		} else {
			_, _ = Encode(blob[:cap(blob)], src, d, []uint64{1 << 22}, Options{Threads: threads})
		}
	}
}

func BenchmarkEncodeBF16x1(b *testing.B) { benchWeights(b, dtype.BF16, 1, false) }
func BenchmarkDecodeBF16x1(b *testing.B) { benchWeights(b, dtype.BF16, 1, true) }
func BenchmarkEncodeF32x1(b *testing.B)  { benchWeights(b, dtype.F32, 1, false) }
func BenchmarkDecodeF32x1(b *testing.B)  { benchWeights(b, dtype.F32, 1, true) }
func BenchmarkEncodeF32x2(b *testing.B)  { benchWeights(b, dtype.F32, 2, false) }
func BenchmarkDecodeF32x2(b *testing.B)  { benchWeights(b, dtype.F32, 2, true) }

// Per-call overhead: 10,000 tensors of 1 KiB against the same bytes in one
// tensor (bench/run.py measures the same through Python).
func BenchmarkManySmall(b *testing.B) {
	src := weights(rand.New(rand.NewSource(6)), dtype.F32, 256*10000)
	bound, _ := Bound(1024, dtype.F32, 1, 0)
	dst := make([]byte, bound)
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		for t := 0; t < 10000; t++ {
			if _, err := Encode(dst, src[t*1024:(t+1)*1024], dtype.F32, []uint64{256}, Options{Threads: 1}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkOneLarge(b *testing.B) {
	src := weights(rand.New(rand.NewSource(6)), dtype.F32, 256*10000)
	bound, _ := Bound(uint64(len(src)), dtype.F32, 1, 0)
	dst := make([]byte, bound)
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		if _, err := Encode(dst, src, dtype.F32, []uint64{256 * 10000}, Options{Threads: 1}); err != nil {
			b.Fatal(err)
		}
	}
}
