package delta

import (
	"encoding/binary"
	"math"
	"math/rand"
	"sort"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// perturb returns a copy of ref with about frac of its elements changed by
// a few units in the last place (or randomly, for non-float dtypes).
func perturb(r *rand.Rand, d dtype.DType, ref []byte, frac float64, ulps int) []byte {
	w := d.Width()
	cur := append([]byte(nil), ref...)
	for j := 0; j < len(ref)/w; j++ {
		if r.Float64() >= frac {
			continue
		}
		delta := uint64(r.Intn(2*ulps+1) - ulps)
		switch w {
		case 1:
			cur[j] += byte(delta)
		case 2:
			binary.LittleEndian.PutUint16(cur[2*j:], binary.LittleEndian.Uint16(cur[2*j:])+uint16(delta))
		case 4:
			binary.LittleEndian.PutUint32(cur[4*j:], binary.LittleEndian.Uint32(cur[4*j:])+uint32(delta))
		case 8:
			binary.LittleEndian.PutUint64(cur[8*j:], binary.LittleEndian.Uint64(cur[8*j:])+delta)
		}
	}
	return cur
}

func weightsOf(r *rand.Rand, d dtype.DType, n int) []byte {
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

func chunkRoundTrip(t *testing.T, s *Scratch, cur, ref, ref2 []byte, p *Params) Result {
	t.Helper()
	res, err := s.Encode(cur, ref, ref2, p)
	require.NoError(t, err)
	payload := append([]byte(nil), res.Payload...)
	recon := append([]byte(nil), res.Recon...)
	if !p.Lossy() {
		require.Equal(t, cur, recon)
	}
	dst := make([]byte, len(cur))
	d := NewScratch()
	require.NoError(t, d.Decode(res.Mode, res.Count, payload, ref, ref2, dst, p), "%s %s %s", p.DType, p.Kind, res.Mode)
	require.Equal(t, recon, dst, "%s %s %s", p.DType, p.Kind, res.Mode)
	return res
}

func TestChunkRoundTripEveryDtypeKindMode(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	s := NewScratch()
	for d := dtype.DType(0); d < dtype.Count; d++ {
		for _, n := range []int{1, 7, 1000, 5000} {
			ref := weightsOf(r, d, n)
			ref2 := perturb(r, d, ref, 0.5, 3)
			for _, frac := range []float64{0, 0.001, 0.05, 0.5, 1} {
				cur := perturb(r, d, ref, frac, 3)
				for k := XOR; k <= Pred; k++ {
					for _, sp := range []SparseMode{SparseAuto, SparseNever, SparseAlways} {
						for _, cm := range []ContextMode{ContextAuto, ContextOff, ContextOn} {
							p := &Params{DType: d, Kind: k, Sparse: sp, Context: cm}
							var r2 []byte
							if k == Pred {
								r2 = ref2
							}
							res := chunkRoundTrip(t, s, cur, ref, r2, p)
							if frac == 0 && k != Pred {
								assert.Equal(t, Copy, res.Mode)
							}
						}
					}
				}
			}
		}
	}
}

func TestEliasRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for _, n := range []int{1, 2, 100, 1 << 24} {
		for _, m := range []int{1, 2, 50} {
			if m > n {
				continue
			}
			seen := map[uint32]bool{}
			pos := []uint32{}
			for len(pos) < m {
				p := uint32(r.Intn(n))
				if !seen[p] {
					seen[p] = true
					pos = append(pos, p)
				}
			}
			if m == 2 {
				pos = []uint32{0, uint32(n - 1)}
				if n == 1 {
					continue
				}
			}
			sortU32(pos)
			bits := appendElias(nil, pos)
			got := make([]uint32, len(pos))
			require.NoError(t, decodeElias(bits, got, n))
			require.Equal(t, pos, got)
			// One position too few or too many is refused.
			if len(pos) > 1 {
				assert.ErrorIs(t, decodeElias(bits, got[:len(pos)-1], n), errs.Corrupt)
			}
			assert.ErrorIs(t, decodeElias(bits, make([]uint32, len(pos)+1), n), errs.Corrupt)
		}
	}
	// A gap of g costs at most 2g bits (equality at g = 2), so the codes
	// of a chunk of n elements fit in n/4 bytes.
	for g := uint64(1); g <= 1<<16; g++ {
		require.LessOrEqual(t, uint64(eliasLen(g)), 2*g)
	}
	assert.Equal(t, 33, eliasLen(1<<24))
	assert.Equal(t, 1, eliasLen(1))
	assert.Equal(t, 4, eliasLen(2))
}

func sortU32(a []uint32) {
	for i := 1; i < len(a); i++ {
		for j := i; j > 0 && a[j] < a[j-1]; j-- {
			a[j], a[j-1] = a[j-1], a[j]
		}
	}
}

func TestFloatRound(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	f32 := formatOf(dtype.F32)
	for i := 0; i < 1000000; i++ {
		var x float64
		switch i % 4 {
		case 0:
			x = math.Float64frombits(r.Uint64())
		case 1:
			x = r.NormFloat64() * math.Pow(2, float64(r.Intn(300)-150))
		case 2:
			x = float64(math.Float32frombits(r.Uint32())) * (1 + float64(r.Intn(3)-1)*math.Pow(2, -24))
		default:
			x = math.Ldexp(float64(r.Intn(1<<25)), -149-r.Intn(4))
		}
		if x != x {
			continue
		}
		require.Equal(t, uint64(math.Float32bits(float32(x))), f32.round(x), "%v (%#x)", x, math.Float64bits(x))
		require.Equal(t, uint64(math.Float32bits(float32(x))), f32.roundFinite(x), "%v (%#x)", x, math.Float64bits(x))
		// value(round(x)) is the float32 value.
		require.Equal(t, float64(float32(x)), f32.value(f32.round(x)))
	}
	// BF16 and F16: round(value(v)) == v for every finite pattern, and
	// round is monotone between neighbours.
	for _, d := range []dtype.DType{dtype.BF16, dtype.F16} {
		f := formatOf(d)
		for v := uint64(0); v < 1<<16; v++ {
			x := f.value(v)
			if x != x {
				assert.Equal(t, uint64(f.round(x)), f.round(math.NaN()))
				continue
			}
			require.Equal(t, v, f.round(x), "%s %#x", d, v)
		}
	}
	// Ties go to even: halfway between 1 and the next BF16 (1 + 2^-7).
	bf := formatOf(dtype.BF16)
	assert.Equal(t, uint64(0x3f80), bf.round(1+math.Pow(2, -8)))
	assert.Equal(t, uint64(0x3f82), bf.round(1+3*math.Pow(2, -8)))
	assert.Equal(t, uint64(0x7f80), bf.round(math.MaxFloat32))
	assert.Equal(t, uint64(0x0001), bf.round(math.Pow(2, -133)))
	assert.Equal(t, uint64(0x0000), bf.round(math.Pow(2, -134)))
	assert.Equal(t, uint64(0x0001), bf.round(math.Pow(2, -134)*1.0000001))
	assert.Equal(t, uint64(0x7c00), formatOf(dtype.F16).round(65520))
	assert.Equal(t, uint64(0x7bff), formatOf(dtype.F16).round(65519))
}

// The SWAR fast paths agree with the generic code.
func TestFastPathsMatchGeneric(t *testing.T) {
	r := rand.New(rand.NewSource(4))
	for _, n := range []int{0, 1, 3, 4, 5, 1000, 1003} {
		for _, w := range []int{2, 4} {
			x, ref := make([]byte, n*w), make([]byte, n*w)
			r.Read(x)
			r.Read(ref)
			for j := 0; j < n; j += 3 {
				copy(x[j*w:(j+1)*w], ref[j*w:(j+1)*w])
			}
			small := make([]byte, len(ref))
			copy(small, ref)
			for j := 0; j < n; j++ {
				small[j*w] += byte(r.Intn(3))
			}
			for _, x := range [][]byte{x, small, ref} {
				for _, k := range []Kind{XOR, Diff} {
					want, got := make([]byte, n*w), make([]byte, n*w)
					var nzw, nzg int
					if w == 2 {
						nzw = splitResiduals[uint16](k, x, ref, nil, want)
						var or uint64
						nzg, or = split2(k == Diff, x, ref, got[:n], got[n:])
						for p := 0; p < 2; p++ {
							require.Equal(t, isZero(want[p*n:(p+1)*n]), zeroPlanes2(or)&(1<<p) != 0)
						}
					} else {
						nzw = splitResiduals[uint32](k, x, ref, nil, want)
						var or uint64
						nzg, or = split4(k == Diff, x, ref, got[:n], got[n:2*n], got[2*n:3*n], got[3*n:])
						for p := 0; p < 4; p++ {
							require.Equal(t, isZero(want[p*n:(p+1)*n]), zeroPlanes4(or)&(1<<p) != 0)
						}
					}
					require.Equal(t, want, got, "split w=%d %s n=%d", w, k, n)
					require.Equal(t, nzw, nzg)
					back := make([]byte, n*w)
					if w == 2 {
						nzg = merge2(k == Diff, got[:n], got[n:], ref, back)
					} else {
						nzg = merge4(k == Diff, got[:n], got[n:2*n], got[2*n:3*n], got[3*n:], ref, back)
					}
					require.Equal(t, x, back, "merge w=%d %s n=%d", w, k, n)
					require.Equal(t, nzw, nzg)
				}
			}
		}
	}
}

func isZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func TestPercentileThreshold(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.F16, dtype.F64, dtype.F8E4M3} {
		ref := weightsOf(r, d, 2001)
		cur := perturb(r, d, ref, 0.7, 50)
		f := formatOf(d)
		w := d.Width()
		var diffs []float64
		for j := 0; j < 2001; j++ {
			var c, rr uint64
			for b := 0; b < w; b++ {
				c |= uint64(cur[j*w+b]) << (8 * b)
				rr |= uint64(ref[j*w+b]) << (8 * b)
			}
			x := math.Abs(f.value(c) - f.value(rr))
			if x <= math.MaxFloat64 {
				diffs = append(diffs, x)
			}
		}
		sort.Float64s(diffs)
		for _, pct := range []float64{0, 1, 25, 50, 90, 99.9, 100} {
			got, err := PercentileThreshold(d, cur, ref, pct)
			require.NoError(t, err)
			k := int(math.Ceil(pct / 100 * float64(len(diffs))))
			k = min(max(k, 1), len(diffs))
			assert.Equal(t, diffs[k-1], got, "%s %v", d, pct)
		}
	}
	_, err := PercentileThreshold(dtype.I32, make([]byte, 8), make([]byte, 8), 50)
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = PercentileThreshold(dtype.F32, make([]byte, 8), make([]byte, 8), 101)
	assert.ErrorIs(t, err, errs.Invalid)
	got, err := PercentileThreshold(dtype.F32, nil, nil, 50)
	require.NoError(t, err)
	assert.Equal(t, 0.0, got)
}
