package delta

import (
	"encoding/binary"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

// adamStep returns ref (float weights of dtype d) moved by one step of the
// same absolute size for every element, of random sign, as Adam's update
// is: small weights move by many units in the last place, large ones by
// few, so the residuals group by the reference's exponent.
func adamStep(r *rand.Rand, d dtype.DType, ref []byte, step float64) []byte {
	w := d.Width()
	cur := make([]byte, len(ref))
	for j := 0; j < len(ref)/w; j++ {
		v := ToFloat64(d, loadWord(ref, w, j))
		if r.Intn(2) == 0 {
			v -= step
		} else {
			v += step
		}
		storeWord(cur, w, j, FromFloat64(d, v))
	}
	return cur
}

func loadWord(b []byte, w, j int) uint64 {
	switch w {
	case 1:
		return uint64(b[j])
	case 2:
		return uint64(binary.LittleEndian.Uint16(b[2*j:]))
	case 4:
		return uint64(binary.LittleEndian.Uint32(b[4*j:]))
	}
	return binary.LittleEndian.Uint64(b[8*j:])
}

func storeWord(b []byte, w, j int, v uint64) {
	switch w {
	case 1:
		b[j] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b[2*j:], uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b[4*j:], uint32(v))
	default:
		binary.LittleEndian.PutUint64(b[8*j:], v)
	}
}

// preparedRoundTrip plans the whole tensor with Prepare, as a frame does,
// codes it as one chunk and checks that it decodes bit-exactly.
func preparedRoundTrip(t *testing.T, cur, ref []byte, p Params) Result {
	t.Helper()
	s := NewScratch()
	Prepare(&p, s, cur, ref, nil)
	return chunkRoundTrip(t, s, cur, ref, nil, &p)
}

// The default effort weighs exponent contexts (they pay on Adam-like
// updates); Fast never does; ContextOff is obeyed at every effort.
func TestContextAutoWeighsContextsBelowMaxEffort(t *testing.T) {
	r := rand.New(rand.NewSource(41))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32} {
		ref := weightsOf(r, d, 1<<16)
		cur := adamStep(r, d, ref, 2e-4)
		off := preparedRoundTrip(t, cur, ref, Params{DType: d, Kind: Auto, Context: ContextOff})
		require.Equal(t, 1, off.Contexts, "%s", d)
		for _, e := range []entropy.Effort{entropy.Balanced, entropy.Max} {
			res := preparedRoundTrip(t, cur, ref, Params{DType: d, Kind: Auto, Effort: e})
			assert.Greater(t, res.Contexts, 1, "%s effort %d", d, e)
			// Smaller than the one-context coding at the same effort.
			one := preparedRoundTrip(t, cur, ref, Params{DType: d, Kind: Auto, Effort: e, Context: ContextOff})
			assert.Less(t, len(res.Payload), len(one.Payload)*97/100, "%s effort %d", d, e)
		}
		fast := preparedRoundTrip(t, cur, ref, Params{DType: d, Kind: Auto, Effort: entropy.Fast})
		assert.Equal(t, 1, fast.Contexts, "%s", d)
	}
}

// Where contexts do not pay (non-float dtypes, or residuals that do not
// depend on the exponent), the default keeps one context.
func TestContextAutoKeepsOneContextWhereContextsDoNotPay(t *testing.T) {
	r := rand.New(rand.NewSource(42))
	ref := weightsOf(r, dtype.I16, 1<<15)
	res := preparedRoundTrip(t, perturb(r, dtype.I16, ref, 0.5, 3), ref, Params{DType: dtype.I16, Kind: Auto})
	assert.Equal(t, 1, res.Contexts)
	// A change of a few ulps whatever the magnitude: the buckets' residuals
	// are alike.
	ref = weightsOf(r, dtype.BF16, 1<<15)
	res = preparedRoundTrip(t, perturb(r, dtype.BF16, ref, 0.5, 3), ref, Params{DType: dtype.BF16, Kind: Auto})
	assert.Equal(t, 1, res.Contexts)
}

// specialValues are bit patterns of every float dtype's edge cases: both
// zeros, the smallest and largest subnormals, the smallest normal, the
// largest finite value, both infinities, a quiet and a signalling NaN with
// payloads, and a negative NaN.
func specialValues(d dtype.DType) []uint64 {
	l := d.Layout()
	mb, eb := uint(l.MantBits), uint(l.ExpBits)
	sign := uint64(1) << (mb + eb)
	expAll := (uint64(1)<<eb - 1) << mb
	mant := uint64(1)<<mb - 1
	vals := []uint64{0, sign, 1, mant, sign | 1, 1 << mb, expAll - 1, sign | (expAll - 1)}
	if d != dtype.F8E4M3 {
		// E4M3 has no infinities; its only NaN is all ones.
		vals = append(vals, expAll, sign|expAll, expAll|1<<(mb-1)|1, expAll|1, sign|expAll|mant>>1)
	} else {
		vals = append(vals, expAll|mant, sign|expAll|mant)
	}
	return vals
}

// Every float dtype round-trips bit-exactly with contexts at the default
// effort (and forced), when the reference or the tensor holds NaNs with
// payloads, -0.0, subnormals and infinities next to Adam-like updates.
func TestContextsRoundTripSpecialValues(t *testing.T) {
	r := rand.New(rand.NewSource(43))
	for d := dtype.DType(0); d < dtype.Count; d++ {
		if !d.IsFloat() {
			continue
		}
		w := d.Width()
		n := 1 << 13
		ref := weightsOf(r, d, n)
		if w == 1 {
			for j := 0; j < n; j++ {
				storeWord(ref, w, j, FromFloat64(d, r.NormFloat64()))
			}
		}
		cur := adamStep(r, d, ref, 1e-3)
		sp := specialValues(d)
		for j := 0; j < n; j += 7 {
			v := sp[r.Intn(len(sp))]
			switch r.Intn(3) {
			case 0:
				storeWord(ref, w, j, v)
			case 1:
				storeWord(cur, w, j, v)
			default:
				storeWord(ref, w, j, v)
				storeWord(cur, w, j, sp[r.Intn(len(sp))])
			}
		}
		for _, cm := range []ContextMode{ContextAuto, ContextOn} {
			for _, k := range []Kind{Auto, XOR, Diff} {
				for _, sm := range []SparseMode{SparseAuto, SparseNever, SparseAlways} {
					res := preparedRoundTrip(t, cur, ref, Params{DType: d, Kind: k, Context: cm, Sparse: sm})
					if cm == ContextOn {
						assert.Equal(t, min(MaxContexts, 1<<d.Layout().ExpBits), res.Contexts, "%s", d)
					}
				}
			}
		}
	}
}

// A chunk with contexts whose header or streams were tampered with is
// refused as corrupt, never decoded into wrong bytes silently.
func TestContextsHostilePayloadsRefused(t *testing.T) {
	r := rand.New(rand.NewSource(44))
	d := dtype.BF16
	ref := weightsOf(r, d, 4096)
	cur := adamStep(r, d, ref, 2e-4)
	p := Params{DType: d, Kind: Diff, Context: ContextOn, Sparse: SparseNever}
	res := preparedRoundTrip(t, cur, ref, p)
	require.Equal(t, MaxContexts, res.Contexts)
	good := append([]byte(nil), res.Payload...)
	decode := func(payload []byte, pp Params) error {
		dst := make([]byte, len(cur))
		return NewScratch().Decode(res.Mode, res.Count, payload, ref, nil, dst, &pp)
	}
	require.NoError(t, decode(good, p))
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	for name, bad := range map[string][]byte{
		"no contexts":     mutate(func(b []byte) []byte { b[0] = 0; return b }),
		"17 contexts":     mutate(func(b []byte) []byte { b[0] = MaxContexts + 1; return b }),
		"reserved byte":   mutate(func(b []byte) []byte { b[1] = 1; return b }),
		"base past range": mutate(func(b []byte) []byte { binary.LittleEndian.PutUint16(b[2:], 256); return b }),
		"fewer contexts":  mutate(func(b []byte) []byte { b[0] = 4; return b }),
		"truncated":       good[:len(good)-1],
		"header only":     good[:ctxHdrLen],
		"trailing byte":   append(append([]byte(nil), good...), 0),
	} {
		assert.ErrorIs(t, decode(bad, p), errs.Corrupt, name)
	}
	// Contexts on a dtype without an exponent.
	i16 := p
	i16.DType = dtype.I16
	assert.ErrorIs(t, decode(good, i16), errs.Corrupt)
}
