package transform

import (
	"math"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/x448/float16"

	"github.com/tpde/tpde/core/dtype"
)

func planesFor(w, n int) [][]byte {
	p := make([][]byte, w)
	for i := range p {
		p[i] = make([]byte, n)
	}
	return p
}

func TestRoundTripAllDtypes(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	for d := dtype.DType(0); d < dtype.Count; d++ {
		k, w := For(d)
		for _, n := range []int{0, 1, 3, 17, 1000} {
			src := make([]byte, n*w)
			r.Read(src)
			pl := planesFor(w, n)
			Split(k, w, src, pl)
			dst := make([]byte, len(src))
			Merge(k, w, pl, dst)
			require.Equal(t, src, dst, "%s n=%d", d, n)
		}
	}
}

func TestBF16AndF32ExponentIsPlaneZero(t *testing.T) {
	// 1.5 and -1.5 differ only in sign: plane 0 must be equal (the exponent),
	// and the sign must land in the low bit of the last plane.
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32} {
		k, w := For(d)
		require.Equal(t, RotatedPlanes, k)
		bitsPos := math.Float32bits(1.5)
		bitsNeg := math.Float32bits(-1.5)
		src := make([]byte, 2*w)
		put := func(i int, b uint32) {
			if w == 2 {
				b >>= 16
			}
			for j := 0; j < w; j++ {
				src[i*w+j] = byte(b >> (8 * j))
			}
		}
		put(0, bitsPos)
		put(1, bitsNeg)
		pl := planesFor(w, 2)
		Split(k, w, src, pl)
		assert.Equal(t, pl[0][0], pl[0][1], d.String())
		assert.Equal(t, byte(127), pl[0][0], "biased exponent of 1.5 in %s", d)
		assert.Equal(t, byte(0), pl[w-1][0]&1, "sign of +1.5 in the lowest bit")
		assert.Equal(t, byte(1), pl[w-1][1]&1, "sign of -1.5 in the lowest bit")
	}
}

func TestSpecialValuesSurvive(t *testing.T) {
	specials := []uint16{
		float16.Fromfloat32(float32(math.Inf(1))).Bits(),
		float16.Fromfloat32(float32(math.Inf(-1))).Bits(),
		0x8000,         // -0
		0x0001,         // smallest subnormal
		0x7e01, 0xfd55, // NaNs with payloads
	}
	src := make([]byte, 2*len(specials))
	for i, s := range specials {
		src[2*i], src[2*i+1] = byte(s), byte(s>>8)
	}
	k, w := For(dtype.F16)
	pl := planesFor(w, len(specials))
	Split(k, w, src, pl)
	dst := make([]byte, len(src))
	Merge(k, w, pl, dst)
	assert.Equal(t, src, dst)
}

func BenchmarkSplitF32(b *testing.B) {
	src := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(src)
	pl := planesFor(4, len(src)/4)
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		Split(RotatedPlanes, 4, src, pl)
	}
}

func BenchmarkMergeBF16(b *testing.B) {
	dst := make([]byte, 1<<20)
	pl := planesFor(2, len(dst)/2)
	b.SetBytes(int64(len(dst)))
	for i := 0; i < b.N; i++ {
		Merge(RotatedPlanes, 2, pl, dst)
	}
}

func BenchmarkSplitBF16(b *testing.B) {
	src := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(src)
	pl := planesFor(2, len(src)/2)
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		Split(RotatedPlanes, 2, src, pl)
	}
}

func BenchmarkMergeF32(b *testing.B) {
	dst := make([]byte, 1<<20)
	pl := planesFor(4, len(dst)/4)
	b.SetBytes(int64(len(dst)))
	for i := 0; i < b.N; i++ {
		Merge(RotatedPlanes, 4, pl, dst)
	}
}

// The vector kernels must agree with the scalar definition on every length
// and alignment, with and without rotation.
func TestVectorKernelsMatchScalar(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	for _, w := range []int{2, 4} {
		for _, k := range []Kind{Planes, RotatedPlanes} {
			for _, n := range []int{0, 1, 15, 16, 17, 31, 32, 33, 100, 1000, 4099} {
				for _, off := range []int{0, 1, 3} {
					buf := make([]byte, n*w+off)
					r.Read(buf)
					src := buf[off:]
					want := referencePlanes(k, w, src)
					got := planesFor(w, n)
					Split(k, w, src, got)
					require.Equal(t, want, got, "split w=%d k=%d n=%d off=%d", w, k, n, off)
					back := make([]byte, n*w+off)[off:]
					Merge(k, w, got, back)
					require.Equal(t, src, back, "merge w=%d k=%d n=%d off=%d", w, k, n, off)
				}
			}
		}
	}
}
