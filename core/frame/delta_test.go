package frame

import (
	"encoding/binary"
	"math"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

func encodeDelta(t testing.TB, src, ref, ref2 []byte, d dtype.DType, shape []uint64, opt DeltaOptions) ([]byte, DeltaResult) {
	t.Helper()
	b, err := DeltaBound(uint64(len(src)), d, len(shape), opt.ChunkElems)
	require.NoError(t, err)
	dst := make([]byte, b)
	res, err := EncodeDelta(dst, src, ref, ref2, d, shape, opt)
	require.NoError(t, err)
	require.LessOrEqual(t, uint64(res.Len), b)
	return dst[:res.Len], res
}

func decodeDelta(t testing.TB, blob, ref, ref2 []byte, threads int) ([]byte, *Header) {
	t.Helper()
	h, err := ParseAny(blob)
	require.NoError(t, err)
	dst := make([]byte, h.RawSize)
	h, err = DecodeDelta(blob, ref, ref2, dst, threads)
	require.NoError(t, err)
	return dst, h
}

// walker produces a random walk of tensors of one dtype: every step moves
// a fraction of the elements by a small amount (floats: Gaussian noise
// relative to the value plus an additive part; integers: a few units; bool:
// a few flips). It keeps the exact real values of float tensors.
type walker struct {
	r     *rand.Rand
	d     dtype.DType
	vals  []float64 // float dtypes: the true values
	bytes []byte    // current tensor
	frac  float64
}

func newWalker(seed int64, d dtype.DType, n int, frac float64) *walker {
	w := &walker{r: rand.New(rand.NewSource(seed)), d: d, frac: frac}
	w.bytes = make([]byte, n*d.Width())
	if d.IsFloat() && delta.CanQuantize(d) {
		w.vals = make([]float64, n)
		for i := range w.vals {
			w.vals[i] = w.r.NormFloat64() * 0.02
		}
		w.cast()
	} else {
		w.r.Read(w.bytes)
	}
	return w
}

func (w *walker) cast() {
	wd := w.d.Width()
	for i, v := range w.vals {
		b := delta.FromFloat64(w.d, v)
		for k := 0; k < wd; k++ {
			w.bytes[i*wd+k] = byte(b >> (8 * k))
		}
	}
}

func (w *walker) step() []byte {
	if w.vals != nil {
		for i := range w.vals {
			if w.r.Float64() < w.frac {
				w.vals[i] += w.vals[i]*w.r.NormFloat64()*0.01 + w.r.NormFloat64()*1e-4
			}
		}
		w.cast()
		return append([]byte(nil), w.bytes...)
	}
	wd := w.d.Width()
	for i := 0; i < len(w.bytes)/wd; i++ {
		if w.r.Float64() >= w.frac {
			continue
		}
		if w.d == dtype.Bool {
			w.bytes[i] ^= 1
			continue
		}
		// Add a small signed amount to the little-endian integer.
		carry := uint64(w.r.Intn(7) - 3)
		var v uint64
		for k := 0; k < wd; k++ {
			v |= uint64(w.bytes[i*wd+k]) << (8 * k)
		}
		v += carry
		for k := 0; k < wd; k++ {
			w.bytes[i*wd+k] = byte(v >> (8 * k))
		}
	}
	return append([]byte(nil), w.bytes...)
}

// Approach A (delta against the previous decoded checkpoint) and B (delta
// against a fixed base) restore every step bit for bit, in every dtype and
// residual kind.
func TestDeltaChainsEveryDtype(t *testing.T) {
	const steps = 22
	for d := dtype.DType(0); d < dtype.Count; d++ {
		for _, kind := range []delta.Kind{delta.Auto, delta.XOR, delta.Diff, delta.Pred} {
			wk := newWalker(int64(d)*10+int64(kind), d, 3001, 0.3)
			base := append([]byte(nil), wk.bytes...)
			prev, prev2 := base, []byte(nil)
			opt := DeltaOptions{Residual: kind, ChunkElems: 1000, Threads: 2}
			for s := 0; s < steps; s++ {
				cur := wk.step()
				// A: against the previous decoded checkpoint (and the
				// one before, for prediction).
				r2 := prev2
				o := opt
				if kind == delta.Pred && r2 == nil {
					o.Residual = delta.Diff
				}
				if kind != delta.Pred {
					r2 = nil
				}
				blob, res := encodeDelta(t, cur, prev, r2, d, []uint64{3001}, o)
				got, h := decodeDelta(t, blob, prev, r2, 2)
				require.Equal(t, cur, got, "A %s %s step %d", d, kind, s)
				assert.Equal(t, uint8(KindDelta), h.Kind)
				assert.Equal(t, res.Residual, h.Delta.Residual)
				assert.Equal(t, res.Changed, h.Delta.Changed)
				// B: against the fixed base.
				blob, _ = encodeDelta(t, cur, base, nil, d, []uint64{3001}, DeltaOptions{Residual: delta.Auto})
				got, _ = decodeDelta(t, blob, base, nil, 1)
				require.Equal(t, cur, got, "B %s %s step %d", d, kind, s)
				prev2, prev = prev, got
			}
		}
	}
}

// Every combination of options round-trips, on several shapes.
func TestDeltaOptionsRoundTrip(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.I32, dtype.U8, dtype.F64} {
		for _, shape := range [][]uint64{{}, {0}, {1}, {3, 0, 5}, {7}, {13, 17}, {2, 3, 5, 7}} {
			n, _ := elems(shape)
			ref := weights(r, d, int(n))
			for _, frac := range []float64{0, 0.01, 0.5, 1} {
				cur := append([]byte(nil), ref...)
				for j := 0; j < int(n); j++ {
					if r.Float64() < frac {
						cur[j*d.Width()] ^= byte(1 + r.Intn(3))
					}
				}
				for _, opt := range []DeltaOptions{
					{Residual: delta.Auto},
					{Residual: delta.XOR, ChunkElems: 4, Threads: 3},
					{Residual: delta.Diff, ChunkElems: 1, Effort: entropy.Max},
					{Residual: delta.Diff, Sparse: delta.SparseAlways, Context: delta.ContextOn},
					{Residual: delta.XOR, Sparse: delta.SparseNever, Context: delta.ContextOff, Effort: entropy.Fast},
				} {
					blob, res := encodeDelta(t, cur, ref, nil, d, shape, opt)
					got, h := decodeDelta(t, blob, ref, nil, 0)
					require.Equal(t, len(cur), len(got))
					if len(cur) > 0 {
						require.Equal(t, cur, got, "%s %v %+v", d, shape, opt)
					}
					assert.Equal(t, shape, h.Shape)
					assert.Equal(t, d, h.DType)
					assert.Equal(t, res.Identical, h.Delta.Identical)
					if frac == 0 {
						assert.True(t, res.Identical)
						assert.Equal(t, 100.0, h.Sparsity())
					}
				}
			}
		}
	}
}

func TestDeltaSpecialValues(t *testing.T) {
	ref := f32s(
		0x0000_0000, 0x8000_0000, 0x7fc0_0000, 0xffc0_0000,
		0x7f80_0001, 0x7fbf_ffff, 0xffff_ffff, 0x7f80_0000,
		0xff80_0000, 0x0000_0001, 0x8000_0001, 0x007f_ffff,
		0x0080_0000, 0x7f7f_ffff, 0xff7f_ffff, math.Float32bits(-1.5))
	// Every element turns into another special value.
	cur := f32s(
		0x8000_0000, 0x0000_0000, 0x7fc0_0001, 0x7f80_0000,
		0xff80_0000, 0x7fbf_fffe, 0x7fc0_0000, 0x7f7f_ffff,
		0x0000_0001, 0x8000_0001, 0x0000_0000, 0x0080_0000,
		0x007f_ffff, 0x7f80_0000, 0xffff_ffff, math.Float32bits(-1.5))
	for _, kind := range []delta.Kind{delta.XOR, delta.Diff, delta.Pred, delta.Auto} {
		for _, sp := range []delta.SparseMode{delta.SparseAuto, delta.SparseAlways, delta.SparseNever} {
			var r2 []byte
			if kind == delta.Pred {
				r2 = cur
			}
			blob, _ := encodeDelta(t, cur, ref, r2, dtype.F32, []uint64{4, 4}, DeltaOptions{Residual: kind, Sparse: sp})
			got, _ := decodeDelta(t, blob, ref, r2, 1)
			require.Equal(t, cur, got, "%s", kind)
			// Lossy frames keep special values exactly too.
			blob, res := encodeDelta(t, cur, ref, r2, dtype.F32, []uint64{4, 4}, DeltaOptions{Residual: kind, Sparse: sp, Threshold: 1e-3, QuantBits: 8})
			got, _ = decodeDelta(t, blob, ref, r2, 1)
			for i := 0; i < 16; i++ {
				c := math.Float32frombits(binary.LittleEndian.Uint32(cur[4*i:]))
				g := math.Float32frombits(binary.LittleEndian.Uint32(got[4*i:]))
				if c != c || math.IsInf(float64(c), 0) || math.Abs(float64(c)) > 1 {
					assert.Equal(t, cur[4*i:4*i+4], got[4*i:4*i+4], "element %d", i)
				} else {
					assert.LessOrEqual(t, math.Abs(float64(c)-float64(g)), 1e-3)
				}
			}
			assert.LessOrEqual(t, res.MaxErr, 1e-3)
		}
	}
}

// An unchanged tensor costs a header: at most 64 bytes for up to 2 dims.
func TestDeltaIdenticalIsTiny(t *testing.T) {
	r := rand.New(rand.NewSource(8))
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.I64, dtype.Bool} {
		for _, shape := range [][]uint64{{1 << 16}, {512, 768}} {
			n, _ := elems(shape)
			ref := weights(r, d, int(n))
			for _, kind := range []delta.Kind{delta.Auto, delta.XOR, delta.Diff, delta.Pred} {
				blob, res := encodeDelta(t, ref, ref, ref, d, shape, DeltaOptions{Residual: kind})
				assert.True(t, res.Identical)
				assert.LessOrEqual(t, len(blob), 64, "%s %v %s", d, shape, kind)
				got, h := decodeDelta(t, blob, ref, nil, 2)
				assert.Equal(t, ref, got)
				assert.True(t, h.Delta.Identical)
				assert.Equal(t, 100.0, h.Sparsity())
			}
		}
	}
	blob, _ := encodeDelta(t, make([]byte, 8), make([]byte, 8), nil, dtype.F32, []uint64{2}, DeltaOptions{})
	assert.Equal(t, 36+8+8, len(blob))
}

func TestDeltaReferenceMismatch(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	ref := weights(r, dtype.BF16, 5000)
	ref2 := weights(r, dtype.BF16, 5000)
	cur := append([]byte(nil), ref...)
	cur[100] ^= 1
	blob, _ := encodeDelta(t, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{Residual: delta.Diff})
	dst := make([]byte, len(cur))
	other := append([]byte(nil), ref...)
	other[4999] ^= 0x80
	for name, bad := range map[string][]byte{"other": other, "short": ref[:9998], "long": append(ref[:len(ref):len(ref)], 0, 0), "nil": nil, "zeros": make([]byte, len(ref))} {
		_, err := DecodeDelta(blob, bad, nil, dst, 1)
		require.ErrorIs(t, err, errs.ReferenceMismatch, name)
		assert.ErrorIs(t, err, errs.Invalid, name)
		assert.Contains(t, err.Error(), "reference", name)
	}
	// Prediction needs the right second reference as well.
	blob, _ = encodeDelta(t, cur, ref, ref2, dtype.BF16, []uint64{50, 100}, DeltaOptions{Residual: delta.Pred})
	_, err := DecodeDelta(blob, ref, nil, dst, 1)
	assert.ErrorIs(t, err, errs.ReferenceMismatch)
	_, err = DecodeDelta(blob, ref, ref, dst, 1)
	assert.ErrorIs(t, err, errs.ReferenceMismatch)
	assert.Contains(t, err.Error(), "second reference")
	_, err = DecodeDelta(blob, ref2, ref, dst, 1)
	assert.ErrorIs(t, err, errs.ReferenceMismatch)
	_, err = DecodeDelta(blob, ref, ref2, dst, 1)
	assert.NoError(t, err)
	assert.Equal(t, cur, dst)

	// The keyframe entry points refuse delta frames, clearly.
	_, err = Decode(blob, dst, 1)
	assert.ErrorIs(t, err, errs.Unsupported)
	assert.Contains(t, err.Error(), "delta frame")
	_, err = Parse(blob)
	assert.ErrorIs(t, err, errs.Unsupported)

	// Encoding: references must match the tensor's size; lossy and
	// quantized coding is for floats only.
	bound, _ := DeltaBound(uint64(len(cur)), dtype.BF16, 2, 0)
	out := make([]byte, bound)
	_, err = EncodeDelta(out, cur, ref[:100], nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, ref2[:10], dtype.BF16, []uint64{50, 100}, DeltaOptions{Residual: delta.Pred})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{Residual: delta.Pred})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 99}, DeltaOptions{})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.I16, []uint64{50, 100}, DeltaOptions{Threshold: 0.1})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{QuantBits: 8})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{Threshold: 0.1, QuantBits: 5})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur[:5000], ref[:5000], nil, dtype.F8E4M3, []uint64{5000}, DeltaOptions{Threshold: 0.1, QuantBits: 8})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{Threshold: math.NaN()})
	assert.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeDelta(out[:100], cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{})
	assert.ErrorIs(t, err, errs.BufferTooSmall)
	_, err = EncodeDelta(out, cur, ref, nil, dtype.BF16, []uint64{50, 100}, DeltaOptions{Recon: make([]byte, 3)})
	assert.ErrorIs(t, err, errs.Invalid)
}

// Every single-byte change and every truncation of a delta frame is
// reported as corrupt (unsupported for the version byte), never decoded.
func TestDeltaEveryFlipAndTruncationIsDetected(t *testing.T) {
	r := rand.New(rand.NewSource(10))
	ref := weights(r, dtype.BF16, 3000)
	ref2 := weights(r, dtype.BF16, 3000)
	cur := append([]byte(nil), ref...)
	for j := 0; j < 3000; j++ {
		switch {
		case j < 1000 && r.Intn(2) == 0: // dense chunk
			cur[2*j] += byte(r.Intn(5) - 2)
		case j >= 2000 && r.Intn(50) == 0: // sparse chunk
			cur[2*j] ^= 1
		}
	}
	frames := map[string][]byte{}
	frames["lossless"], _ = encodeDelta(t, cur, ref, nil, dtype.BF16, []uint64{30, 100}, DeltaOptions{Residual: delta.Diff, ChunkElems: 1000})
	frames["pred"], _ = encodeDelta(t, cur, ref, ref2, dtype.BF16, []uint64{30, 100}, DeltaOptions{Residual: delta.Pred, ChunkElems: 1000})
	frames["quant"], _ = encodeDelta(t, cur, ref, nil, dtype.BF16, []uint64{30, 100}, DeltaOptions{Residual: delta.Diff, ChunkElems: 1000, Threshold: 1e-5, QuantBits: 4})
	frames["identical"], _ = encodeDelta(t, ref, ref, nil, dtype.BF16, []uint64{30, 100}, DeltaOptions{})
	for name, blob := range frames {
		h, err := ParseAny(blob)
		require.NoError(t, err)
		if name == "lossless" {
			assert.Equal(t, 1, h.Delta.Modes[delta.Copy])
			assert.Equal(t, 1, h.Delta.Modes[delta.Dense])
			assert.Equal(t, 1, h.Delta.Modes[delta.Sparse])
		}
		r2 := ref2
		dst := make([]byte, len(cur))
		for i := range blob {
			for _, x := range []byte{0x01, 0x80, 0xff} {
				bad := append([]byte(nil), blob...)
				bad[i] ^= x
				_, err := DecodeDelta(bad, ref, r2, dst, 2)
				require.Error(t, err, "%s: flip %#x at byte %d", name, x, i)
				if i == 4 {
					assert.ErrorIs(t, err, errs.Unsupported)
				} else {
					assert.ErrorIs(t, err, errs.Corrupt, "%s: byte %d", name, i)
				}
			}
		}
		for n := 0; n < len(blob); n++ {
			_, err := DecodeDelta(blob[:n], ref, r2, dst, 1)
			require.ErrorIs(t, err, errs.Corrupt, "%s: truncated to %d", name, n)
		}
		_, err = DecodeDelta(append(append([]byte(nil), blob...), 0), ref, r2, dst, 1)
		assert.ErrorIs(t, err, errs.Corrupt, "%s: trailing byte", name)
	}
}

// Lossy chains in closed loop: each checkpoint is coded against the
// previous reconstruction, so the error at every step stays within the
// bound and never accumulates.
func TestDeltaLossyClosedLoopChain(t *testing.T) {
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.F16, dtype.F64} {
		for _, qb := range []int{0, 8, 4} {
			const n, steps = 4000, 25
			r := rand.New(rand.NewSource(int64(d)*7 + int64(qb)))
			truth := make([]float64, n)
			for i := range truth {
				truth[i] = r.NormFloat64() * 0.05
			}
			toBytes := func(v []float64) []byte {
				out := make([]byte, n*d.Width())
				for i, x := range v {
					b := delta.FromFloat64(d, x)
					for k := 0; k < d.Width(); k++ {
						out[i*d.Width()+k] = byte(b >> (8 * k))
					}
				}
				return out
			}
			value := func(b []byte, i int) float64 {
				var v uint64
				for k := 0; k < d.Width(); k++ {
					v |= uint64(b[i*d.Width()+k]) << (8 * k)
				}
				return delta.ToFloat64(d, v)
			}
			const bound = 2e-4
			prev := toBytes(truth)
			for s := 0; s < steps; s++ {
				for i := range truth {
					truth[i] += r.NormFloat64() * 1e-4
				}
				cur := toBytes(truth)
				recon := make([]byte, len(cur))
				blob, res := encodeDelta(t, cur, prev, nil, d, []uint64{n}, DeltaOptions{
					Residual: delta.Auto, Threshold: bound, QuantBits: qb, ChunkElems: 1024, Recon: recon})
				got, h := decodeDelta(t, blob, prev, nil, 2)
				require.Equal(t, recon, got, "%s q%d step %d: decoder and encoder disagree", d, qb, s)
				require.True(t, h.Delta.Lossy)
				assert.Equal(t, bound, h.Delta.Bound)
				assert.Equal(t, res.MaxErr, h.Delta.MaxErr)
				assert.Equal(t, qb, h.Delta.QuantBits)
				worst := 0.0
				for i := 0; i < n; i++ {
					// Against the exact input the encoder saw (the cast of
					// the true value) and, within the cast's rounding, the
					// true value itself.
					e := math.Abs(value(got, i) - value(cur, i))
					require.LessOrEqual(t, e, bound, "%s q%d step %d element %d", d, qb, s, i)
					worst = max(worst, e)
				}
				assert.Equal(t, worst, h.Delta.MaxErr)
				prev = got // closed loop: the next reference is what decodes
			}
		}
	}
}

func TestDeltaLossyDropsSmallChanges(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	ref := weights(r, dtype.F32, 10000)
	cur := append([]byte(nil), ref...)
	for j := 0; j < 10000; j++ {
		v := math.Float32frombits(binary.LittleEndian.Uint32(cur[4*j:]))
		binary.LittleEndian.PutUint32(cur[4*j:], math.Float32bits(v+float32(r.NormFloat64()*1e-5)))
	}
	lossless, _ := encodeDelta(t, cur, ref, nil, dtype.F32, []uint64{10000}, DeltaOptions{Residual: delta.Auto})
	lossy, res := encodeDelta(t, cur, ref, nil, dtype.F32, []uint64{10000}, DeltaOptions{Residual: delta.Auto, Threshold: 2e-5})
	quant, _ := encodeDelta(t, cur, ref, nil, dtype.F32, []uint64{10000}, DeltaOptions{Residual: delta.Auto, Threshold: 2e-5, QuantBits: 4})
	assert.Less(t, len(lossy), len(lossless)/3)
	assert.Less(t, len(quant), len(lossy))
	assert.LessOrEqual(t, res.MaxErr, 2e-5)
	assert.Greater(t, res.MaxErr, 1e-5)
	// Everything within the bound: an identical frame.
	all, res := encodeDelta(t, cur, ref, nil, dtype.F32, []uint64{10000}, DeltaOptions{Residual: delta.Auto, Threshold: 1})
	assert.True(t, res.Identical)
	got, h := decodeDelta(t, all, ref, nil, 1)
	assert.Equal(t, ref, got)
	assert.Equal(t, 1.0, h.Delta.Bound)
}

func TestDeltaBoundHolds(t *testing.T) {
	// Unrelated tensors: the worst case for a delta.
	r := rand.New(rand.NewSource(12))
	for _, d := range []dtype.DType{dtype.U8, dtype.BF16, dtype.F32, dtype.F64} {
		for _, n := range []int{1, 100, 70000} {
			a, b := make([]byte, n*d.Width()), make([]byte, n*d.Width())
			r.Read(a)
			r.Read(b)
			for _, opt := range []DeltaOptions{{Residual: delta.XOR}, {Residual: delta.Diff, Sparse: delta.SparseAlways, Context: delta.ContextOn, ChunkElems: 7}} {
				blob, _ := encodeDelta(t, a, b, nil, d, []uint64{uint64(n)}, opt)
				got, _ := decodeDelta(t, blob, b, nil, 2)
				require.Equal(t, a, got)
			}
		}
	}
}

// FuzzDecodeDelta: arbitrary frames never panic; whatever decodes against a
// reference decodes the same way twice and survives re-encoding.
func FuzzDecodeDelta(f *testing.F) {
	r := rand.New(rand.NewSource(13))
	ref := weights(r, dtype.BF16, 50)
	cur := append([]byte(nil), ref...)
	cur[3] ^= 1
	cur[40] += 2
	for _, opt := range []DeltaOptions{{Residual: delta.Diff, ChunkElems: 16}, {Residual: delta.XOR, Sparse: delta.SparseAlways, ChunkElems: 16},
		{Residual: delta.Diff, Threshold: 1e-3, QuantBits: 8, ChunkElems: 16}, {Residual: delta.Pred, ChunkElems: 16}} {
		blob, _ := encodeDelta(f, cur, ref, ref, dtype.BF16, []uint64{5, 10}, opt)
		f.Add(blob, ref, ref)
	}
	blob, _ := encodeDelta(f, ref, ref, nil, dtype.BF16, []uint64{5, 10}, DeltaOptions{})
	f.Add(blob, ref, []byte(nil))
	f.Fuzz(func(t *testing.T, blob, ref, ref2 []byte) {
		h, err := ParseAny(blob)
		if err != nil || h.RawSize > 1<<20 {
			return
		}
		if h.Delta != nil && uint64(len(ref)) != h.RawSize {
			// Give it a reference of the right size (its CRC will
			// rarely match, which must be refused cleanly).
			ref = append(ref, make([]byte, h.RawSize)...)[:h.RawSize]
		}
		dst := make([]byte, h.RawSize)
		if _, err := DecodeDelta(blob[:h.FrameLen], ref, ref2, dst, 2); err != nil {
			return
		}
		again := make([]byte, h.RawSize)
		_, err = DecodeDelta(blob[:h.FrameLen], ref, ref2, again, 1)
		require.NoError(t, err)
		require.Equal(t, dst, again)
		if h.Delta == nil {
			return
		}
		var r2 []byte
		if h.Delta.NeedsRef2() {
			r2 = ref2
		}
		re, _ := encodeDelta(t, dst, ref, r2, h.DType, h.Shape, DeltaOptions{Residual: h.Delta.Residual, ChunkElems: h.ChunkElems})
		back, _ := decodeDelta(t, re, ref, r2, 1)
		require.Equal(t, dst, back)
	})
}

// FuzzDeltaRoundTrip: arbitrary bytes as any dtype, against an arbitrary
// reference, survive encode/decode in every residual kind.
func FuzzDeltaRoundTrip(f *testing.F) {
	f.Add([]byte{0, 0, 0x80, 0xff, 0x7f, 0xc0, 1, 2}, []byte{0, 1, 0x80, 0xff, 0x7f, 0xc0, 1, 3}, uint8(10), uint16(3), uint8(0))
	f.Fuzz(func(t *testing.T, src, ref []byte, code uint8, chunk uint16, flags uint8) {
		d := dtype.DType(code % dtype.Count)
		n := min(len(src), len(ref)) / d.Width() * d.Width()
		src, ref = src[:n], ref[:n]
		ref2 := make([]byte, n)
		for i := range ref2 {
			ref2[i] = ref[(i+1)%n] ^ src[i]
		}
		shape := []uint64{uint64(n / d.Width())}
		opt := DeltaOptions{Residual: delta.Kind(flags % 4), ChunkElems: uint32(chunk) + 1,
			Sparse: delta.SparseMode(flags / 4 % 3), Context: delta.ContextMode(flags / 16 % 3),
			Effort: entropy.Effort(flags / 64 % 3)}
		if opt.Residual == 3 {
			opt.Residual = delta.Auto
		}
		blob, _ := encodeDelta(t, src, ref, ref2, d, shape, opt)
		got, _ := decodeDelta(t, blob, ref, ref2, 2)
		require.Equal(t, src, got)
	})
}
