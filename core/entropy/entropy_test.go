package entropy

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func roundTrip(t testing.TB, e *Encoder, src []byte) Method {
	m, out := e.Encode(nil, src)
	var d Decoder
	dst := make([]byte, len(src))
	require.NoError(t, d.Decode(m, out, dst))
	require.Equal(t, len(src), len(dst))
	if len(src) > 0 {
		require.Equal(t, src, dst)
	}
	return m
}

func skewed(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(120 + int(r.NormFloat64()*2))
	}
	return b
}

func TestMethodChoice(t *testing.T) {
	r := rand.New(rand.NewSource(1))
	e := NewEncoder(Balanced)
	random := make([]byte, 100000)
	r.Read(random)
	assert.Equal(t, Raw, roundTrip(t, e, random), "random bytes stay raw")
	assert.Equal(t, Huff0, roundTrip(t, e, skewed(r, 100000)), "a skewed exponent plane is huffman coded")
	same := make([]byte, 5000)
	for i := range same {
		same[i] = 7
	}
	assert.Equal(t, RLE, roundTrip(t, e, same))
	rows := make([]byte, 100000)
	row := make([]byte, 333)
	r.Read(row)
	for i := range rows {
		rows[i] = row[i%len(row)]
	}
	assert.Equal(t, Zstd, roundTrip(t, e, rows), "repeated rows need a match coder")
	assert.Equal(t, Raw, roundTrip(t, e, nil))
}

func TestFastNeverUsesZstd(t *testing.T) {
	rows := make([]byte, 100000)
	for i := range rows {
		rows[i] = byte(i % 251)
	}
	assert.NotEqual(t, Zstd, roundTrip(t, NewEncoder(Fast), rows))
}

func TestMaxIsNeverLarger(t *testing.T) {
	r := rand.New(rand.NewSource(2))
	for i := 0; i < 20; i++ {
		src := skewed(r, 1+r.Intn(200000))
		_, b := NewEncoder(Balanced).Encode(nil, src)
		_, m := NewEncoder(Max).Encode(nil, src)
		assert.LessOrEqual(t, len(m), len(b))
		assert.LessOrEqual(t, len(b), len(src))
	}
}

func TestEntropyBits(t *testing.T) {
	var h [256]uint32
	Histogram([]byte{0, 1, 0, 1}, &h)
	assert.InDelta(t, 4.0, EntropyBits(&h), 1e-12)
	Histogram(nil, &h)
	assert.Equal(t, 0.0, EntropyBits(&h))
}

func TestDecodeRejectsBadInput(t *testing.T) {
	var d Decoder
	dst := make([]byte, 10)
	assert.ErrorIs(t, d.Decode(Raw, make([]byte, 9), dst), ErrCorrupt)
	assert.ErrorIs(t, d.Decode(RLE, nil, dst), ErrCorrupt)
	assert.ErrorIs(t, d.Decode(Huff0, []byte{1, 2, 3}, dst), ErrCorrupt)
	assert.ErrorIs(t, d.Decode(Zstd, []byte{1, 2, 3}, dst), ErrCorrupt)
	assert.ErrorIs(t, d.Decode(Method(9), nil, dst), ErrCorrupt)
	assert.ErrorIs(t, d.Decode(Raw, nil, make([]byte, MaxStreamLen+1)), ErrCorrupt)
}

// FuzzDecode feeds arbitrary bytes to every method: no panic, and any
// success must re-encode-decode to the same bytes.
func FuzzDecode(f *testing.F) {
	r := rand.New(rand.NewSource(3))
	e := NewEncoder(Max)
	for _, src := range [][]byte{skewed(r, 1000), {1, 1, 1, 1}, []byte("abcabcabcabcabcabc")} {
		m, out := e.Encode(nil, src)
		f.Add(uint8(m), out, uint16(len(src)))
	}
	f.Fuzz(func(t *testing.T, m uint8, src []byte, n uint16) {
		var d Decoder
		dst := make([]byte, n)
		if err := d.Decode(Method(m), src, dst); err != nil {
			require.ErrorIs(t, err, ErrCorrupt)
			return
		}
		roundTrip(t, NewEncoder(Balanced), dst)
	})
}

// FuzzRoundTrip encodes arbitrary bytes with every effort and checks the
// decoded bytes are identical.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("hello hello hello"), uint8(1))
	f.Add([]byte{0, 0, 0, 0}, uint8(2))
	f.Fuzz(func(t *testing.T, src []byte, effort uint8) {
		roundTrip(t, NewEncoder(Effort(effort%3)), src)
	})
}

func BenchmarkEncodeSkewed(b *testing.B) {
	src := skewed(rand.New(rand.NewSource(1)), 1<<17)
	e := NewEncoder(Balanced)
	var dst []byte
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		_, dst = e.Encode(dst[:0], src)
	}
}

func BenchmarkDecodeSkewed(b *testing.B) {
	src := skewed(rand.New(rand.NewSource(1)), 1<<17)
	m, enc := NewEncoder(Balanced).Encode(nil, src)
	var d Decoder
	dst := make([]byte, len(src))
	b.SetBytes(int64(len(src)))
	for i := 0; i < b.N; i++ {
		_ = d.Decode(m, enc, dst)
	}
}

func TestSampledEntropyMatchesHistogram(t *testing.T) {
	r := rand.New(rand.NewSource(5))
	e := NewEncoder(Balanced)
	for _, n := range []int{1, 7, 255, 256, 1000, 8191, 8192, 100000} {
		src := skewed(r, n)
		got := e.sampledEntropy(src)
		var h [256]uint32
		step := 8
		if n < 1<<13 {
			step = 1
		}
		m := 0
		for i := 0; i < n; i += step {
			h[src[i]]++
			m++
		}
		assert.InDelta(t, EntropyBits(&h)/float64(m), got, 1e-9, "n=%d", n)
		assert.Equal(t, [256]uint32{}, e.hist, "histogram left clean, n=%d", n)
	}
}

// Delta encoders (MatchBits set) try zstd on streams with runs of zeros,
// which huff0 cannot code below one bit per byte, but not on streams whose
// zeros are scattered.
func TestZeroRunsTriggerZstd(t *testing.T) {
	r := rand.New(rand.NewSource(3))
	runs := make([]byte, 1<<16)
	r.Read(runs)
	for i := 0; i < len(runs); i += 4096 {
		clear(runs[i : i+2048]) // half the stream in long zero runs
	}
	scattered := make([]byte, 1<<16)
	for i := range scattered {
		if r.Intn(2) == 0 {
			scattered[i] = byte(1 + r.Intn(15))
		}
	}
	require.GreaterOrEqual(t, zeroWindows(runs), 1.0/8)
	require.Less(t, zeroWindows(scattered), 1.0/8)
	require.Zero(t, zeroWindows(make([]byte, 100)), "too short to sample")

	e := NewEncoder(Balanced)
	e.MatchBits, e.FastZstd = 0.3, true
	m, out := e.Encode(nil, runs)
	require.Equal(t, Zstd, m)
	assert.Less(t, len(out), len(runs)*6/10)
	var d Decoder
	got := make([]byte, len(runs))
	require.NoError(t, d.Decode(m, out, got))
	require.Equal(t, runs, got)
}
