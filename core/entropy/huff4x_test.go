package entropy

import (
	"fmt"
	"math"
	"math/rand"
	"testing"

	"github.com/klauspost/compress/huff0"
	"github.com/stretchr/testify/require"
)

// klauspostDecode is the reference: huff0.ReadTable and Decompress4X.
func klauspostDecode(src []byte, n int) ([]byte, error) {
	var s huff0.Scratch
	sc, rem, err := huff0.ReadTable(src, &s)
	if err != nil {
		return nil, err
	}
	return sc.Decoder().Decompress4X(make([]byte, 0, n), rem)
}

// huffSamples are planes of the shapes keyframes meet: exponent-like
// (narrow, ~2.5 bits), fp16-exponent-like (~5.5 bits), near-uniform, and
// geometric ones whose rare symbols get the longest (11-bit) codes.
func huffSamples(r *rand.Rand, n int) map[string][]byte {
	out := map[string][]byte{}
	gen := func(name string, f func() byte) {
		b := make([]byte, n)
		for i := range b {
			b[i] = f()
		}
		out[name] = b
	}
	gen("narrow", func() byte { return byte(120 + int(r.NormFloat64()*1.5)) })
	gen("medium", func() byte { return byte(100 + int(r.NormFloat64()*12)) })
	gen("wide", func() byte { return byte(r.Intn(256) & 0xfe) })
	gen("geometric", func() byte { return byte(math.Min(255, r.ExpFloat64()*3)) })
	gen("two", func() byte { return byte(7 + r.Intn(2)*3) })
	return out
}

func encodeHuff(t testing.TB, src []byte) []byte {
	var s huff0.Scratch
	s.Reuse = huff0.ReusePolicyNone
	out, _, err := huff0.Compress4X(src, &s)
	require.NoError(t, err)
	return append([]byte(nil), out...)
}

// The multi-symbol decoder takes every stream klauspost's encoder writes at
// the lengths it handles, and reproduces the bytes (where this build and
// CPU have its kernel); Decode reproduces them everywhere.
func TestHuffMultiDecodes(t *testing.T) {
	r := rand.New(rand.NewSource(4))
	for _, n := range []int{multiMinLen, multiMinLen + 1, multiMinLen + 2, multiMinLen + 3, 1 << 17, 3<<16 + 5, huff0.BlockSizeMax} {
		for name, src := range huffSamples(r, n) {
			enc := encodeHuff(t, src)
			var s huff0.Scratch
			_, rem, err := huff0.ReadTable(enc, &s)
			require.NoError(t, err)
			var h huffMulti
			dst := make([]byte, n)
			if haveMulti {
				require.True(t, h.decode4X(enc, rem, dst), "%s n=%d: multi-symbol decoder refused a valid stream", name, n)
				require.Equal(t, src, dst, "%s n=%d", name, n)
			}
			var d Decoder
			clear(dst)
			require.NoError(t, d.Decode(Huff0, enc, dst))
			require.Equal(t, src, dst, "%s n=%d", name, n)
		}
	}
}

// A stream one byte too long or too short for its bits, or with a flipped
// bit, is refused as klauspost refuses it, or decodes as klauspost does.
func TestHuffMultiAgreesOnDamage(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	src := huffSamples(r, 1<<15)["medium"]
	enc := encodeHuff(t, src)
	for _, n := range []int{len(src) - 1, len(src) + 1, len(src) + 4} {
		checkAgainstKlauspost(t, enc, n)
	}
	for i := 0; i < 300; i++ {
		bad := append([]byte(nil), enc...)
		bad[r.Intn(len(bad))] ^= 1 << r.Intn(8)
		checkAgainstKlauspost(t, bad, len(src))
	}
	// The tree description, which the multi-symbol decoder parses without
	// klauspost's ReadTable before it: every bit of it, and random bytes.
	n, ok := huffDescLen(enc)
	require.True(t, ok)
	for i := 0; i < n*8+8; i++ {
		bad := append([]byte(nil), enc...)
		bad[i/8] ^= 1 << (i % 8)
		checkAgainstKlauspost(t, bad, len(src))
	}
	for i := 0; i < 300; i++ {
		bad := append([]byte(nil), enc...)
		bad[r.Intn(n+1)] = byte(r.Intn(256))
		checkAgainstKlauspost(t, bad, len(src))
	}
	// Truncated anywhere in or just after the description.
	for cut := 0; cut <= n+16 && cut < len(enc); cut++ {
		checkAgainstKlauspost(t, enc[:cut], len(src))
	}
}

func checkAgainstKlauspost(t *testing.T, src []byte, n int) {
	want, werr := klauspostDecode(src, n)
	var d Decoder
	got := make([]byte, n)
	err := d.Decode(Huff0, src, got)
	if werr != nil {
		require.ErrorIs(t, err, ErrCorrupt)
		return
	}
	require.NoError(t, err)
	require.Equal(t, want, got)
	// The multi-symbol decoder on its own: where it accepts, it agrees.
	var s huff0.Scratch
	if _, rem, err := huff0.ReadTable(src, &s); err == nil {
		var h huffMulti
		alone := make([]byte, n)
		if h.decode4X(src, rem, alone) {
			require.Equal(t, want, alone)
		}
	}
}

// FuzzHuffMulti: on any block and length, Decode accepts exactly what
// klauspost's decoder accepts, with the same bytes, and the multi-symbol
// decoder never accepts what klauspost refuses.
func FuzzHuffMulti(f *testing.F) {
	r := rand.New(rand.NewSource(6))
	for _, src := range huffSamples(r, multiMinLen+3) {
		f.Add(encodeHuff(f, src), uint32(len(src)))
	}
	f.Fuzz(func(t *testing.T, src []byte, n uint32) {
		if n == 0 || n > huff0.BlockSizeMax {
			return
		}
		want, werr := klauspostDecode(src, int(n))
		var s huff0.Scratch
		if _, rem, err := huff0.ReadTable(src, &s); err == nil {
			var h huffMulti
			alone := make([]byte, n)
			if h.decode4X(src, rem, alone) {
				require.NoError(t, werr)
				require.Equal(t, want, alone)
			}
		}
		var d Decoder
		got := make([]byte, n)
		err := d.Decode(Huff0, src, got)
		if werr != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		require.NoError(t, err)
		require.Equal(t, want, got)
	})
}

func BenchmarkHuffDecode(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	for name, src := range huffSamples(r, 1<<17) {
		enc := encodeHuff(b, src)
		dst := make([]byte, len(src))
		b.Run(name+"/multi", func(b *testing.B) {
			var d Decoder
			b.SetBytes(int64(len(src)))
			for i := 0; i < b.N; i++ {
				_ = d.Decode(Huff0, enc, dst)
			}
		})
		b.Run(name+"/kernel", func(b *testing.B) {
			if !haveMulti {
				b.Skip("no multi-symbol kernel in this build or on this CPU")
			}
			var s huff0.Scratch
			var h huffMulti
			b.SetBytes(int64(len(src)))
			for i := 0; i < b.N; i++ {
				_, rem, _ := huff0.ReadTable(enc, &s)
				h.decode4X(enc, rem, dst)
			}
		})
		b.Run(name+"/klauspost", func(b *testing.B) {
			var s huff0.Scratch
			b.SetBytes(int64(len(src)))
			for i := 0; i < b.N; i++ {
				sc, rem, _ := huff0.ReadTable(enc, &s)
				_, _ = sc.Decoder().Decompress4X(dst[:0], rem)
			}
		})
	}
}

// One decoder across blocks with different and with equal tree
// descriptions: the table kept from the previous block is reused only
// for the same description.
func TestHuffMultiReusesTableOnlyForSameDescription(t *testing.T) {
	r := rand.New(rand.NewSource(7))
	var d Decoder
	samples := huffSamples(r, 1<<15)
	names := []string{"narrow", "geometric", "narrow", "narrow", "two", "geometric", "two"}
	encs := map[string][]byte{}
	for _, name := range names {
		if encs[name] == nil {
			encs[name] = encodeHuff(t, samples[name])
		}
		dst := make([]byte, len(samples[name]))
		require.NoError(t, d.Decode(Huff0, encs[name], dst))
		require.Equal(t, samples[name], dst, name)
	}
	// Same description, other streams: a second plane of the same
	// distribution usually gets the same code lengths.
	a, b := huffSamples(rand.New(rand.NewSource(8)), 1<<15)["narrow"], huffSamples(rand.New(rand.NewSource(9)), 1<<15)["narrow"]
	for _, src := range [][]byte{a, b, a} {
		dst := make([]byte, len(src))
		require.NoError(t, d.Decode(Huff0, encodeHuff(t, src), dst))
		require.Equal(t, src, dst)
	}
}

// Every entry of the multi-symbol table is what decoding its 11-bit window
// code by code gives: the first up-to-multiSyms codes that fit whole, their
// symbols, the bits they use and their count. Beside the named samples,
// streams of random alphabets and skews give tables of every table log and
// of every mix of code lengths (buildMulti fills the windows whose next code
// is too long as one run, which relies on how codes are laid out).
func TestHuffMultiTableIsGreedyDecodeOfEachWindow(t *testing.T) {
	r := rand.New(rand.NewSource(10))
	samples := huffSamples(r, 1<<15)
	for i := 0; i < 200; i++ {
		alphabet := 2 + r.Intn(255)
		skew := 0.2 + 3*r.Float64()
		b := make([]byte, 1<<10+r.Intn(1<<14))
		for j := range b {
			b[j] = byte(int(math.Pow(r.Float64(), skew) * float64(alphabet)))
		}
		samples[fmt.Sprintf("random %d (alphabet %d, skew %.2f)", i, alphabet, skew)] = b
	}
	logs := map[uint]bool{}
	for name, src := range samples {
		var s0 huff0.Scratch
		enc, _, err := huff0.Compress4X(src, &s0)
		if err != nil {
			continue // RLE or incompressible: no table
		}
		var s huff0.Scratch
		_, rem, err := huff0.ReadTable(enc, &s)
		require.NoError(t, err)
		var h huffMulti
		tl, ok := h.readWeights(enc[:len(enc)-len(rem)])
		require.True(t, ok, name)
		logs[tl] = true
		h.buildMulti(tl)
		for x := uint(0); x < 1<<huffTableLogMax; x++ {
			var want uint64
			used := uint(0)
			for k := 0; k < multiSyms; k++ {
				left := huffTableLogMax - used
				window := (x << used) & (1<<huffTableLogMax - 1) // the unread bits at the top, zeros below
				e := h.single[window>>(huffTableLogMax-tl)]
				l := uint(e & 0xff)
				if l > left {
					break
				}
				want |= uint64(e>>8) << (8 * k)
				used += l
				want = want&^(0xffff<<48) | uint64(used)<<48 | uint64(k+1)<<56
			}
			require.Equal(t, want, h.multi[x], "%s window %011b", name, x)
		}
	}
	require.GreaterOrEqual(t, len(logs), 5, "table logs covered: %v", logs)
}

// BenchmarkHuffBuild is the multi-symbol table build alone, which every
// chunk with a tree description of its own pays (bench/PROFILE.md, "Keyframe
// decode of one fp16 tensor").
func BenchmarkHuffBuild(b *testing.B) {
	r := rand.New(rand.NewSource(1))
	for name, src := range huffSamples(r, 1<<17) {
		enc := encodeHuff(b, src)
		n, _ := huffDescLen(enc)
		var h huffMulti
		tl, ok := h.readWeights(enc[:n])
		if !ok {
			b.Fatal(name)
		}
		b.Run(name, func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				h.buildMulti(tl)
			}
		})
	}
}
