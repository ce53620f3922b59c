// Package entropy codes one byte stream at a time with whichever of its
// methods gives the fewest bytes: raw, run-length, huff0 (4 interleaved
// Huffman streams) or zstd.
//
// An Encoder and a Decoder each hold scratch space that is reused across
// calls, so the hot path does not allocate; neither is safe for concurrent
// use, so keep one per goroutine.
package entropy

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"runtime"

	"github.com/klauspost/compress/huff0"
	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/errs"
)

// Method is how one stream is stored. The values are part of the frame
// format (docs/FORMAT.md §Stream methods).
type Method uint8

const (
	Raw   Method = 0 // the bytes themselves
	RLE   Method = 1 // one byte, repeated for the stream's length
	Huff0 Method = 2 // a huff0 4X block: table, then four bitstreams
	Zstd  Method = 3 // one zstd frame (RFC 8878)
)

// MaxMethod is the largest defined method.
const MaxMethod = Zstd

func (m Method) String() string {
	switch m {
	case Raw:
		return "raw"
	case RLE:
		return "rle"
	case Huff0:
		return "huff0"
	case Zstd:
		return "zstd"
	}
	return fmt.Sprintf("method(%d)", uint8(m))
}

// MaxStreamLen caps one stream's decoded length. It bounds what a decoder
// allocates for untrusted input.
const MaxStreamLen = 1 << 24

// Effort chooses which candidates the encoder tries.
type Effort uint8

const (
	// Balanced (the default) tries raw, run-length and huff0, and zstd where
	// zstd can plausibly beat huff0: when the stream's order-0 entropy is
	// under MatchEntropyBits (huff0 cannot code a symbol in less than one
	// bit; zstd's sequences can), or when a sample of the stream shows
	// repeated 8-byte windows (structure an order-0 coder cannot see). On
	// float mantissa planes neither holds and zstd is skipped; those planes
	// are nearly all the bytes of a checkpoint.
	Balanced Effort = 0
	// Fast tries raw, run-length and huff0 only.
	Fast Effort = 1
	// Max tries every method on every stream.
	Max Effort = 2
)

// MatchEntropyBits is the order-0 entropy (bits per byte) under which
// Balanced tries zstd.
const MatchEntropyBits = 2.0

// maxZstdStates caps the zstd encoder states per level (see init).
const maxZstdStates = 16

var (
	sharedZstdEnc *zstd.Encoder
	// sharedZstdFast is zstd's fastest level, for Encoder.FastZstd.
	sharedZstdFast *zstd.Encoder
	sharedZstdDec  *zstd.Decoder
)

func init() {
	var err error
	// EncodeAll and DecodeAll are safe for concurrent use; one instance of
	// each serves every goroutine. An encoder's concurrency is how many
	// EncodeAll calls run at once (each takes one of that many encoder
	// states, the others wait for one), so it is one per core: with 1,
	// the chunks that par.For spreads over the cores were zstd-coded one
	// at a time (bench/PROFILE.md, "Add and resume"). A state's match
	// tables (about 1.3 MiB at the default level) are allocated on the
	// first EncodeAll, hence the cap.
	conc := min(max(runtime.NumCPU(), 1), maxZstdStates)
	sharedZstdFast, err = zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedFastest),
		zstd.WithEncoderConcurrency(conc),
		zstd.WithZeroFrames(true),
		zstd.WithEncoderCRC(false))
	if err != nil {
		panic(err)
	}
	sharedZstdEnc, err = zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.SpeedDefault),
		zstd.WithEncoderConcurrency(conc),
		zstd.WithZeroFrames(true),
		zstd.WithEncoderCRC(false)) // frames carry their own CRC32C
	if err != nil {
		panic(err)
	}
	sharedZstdDec, err = zstd.NewReader(nil,
		zstd.WithDecoderConcurrency(0),
		zstd.WithDecoderMaxMemory(MaxStreamLen),
		zstd.WithDecoderMaxWindow(MaxStreamLen),
		zstd.IgnoreChecksum(true))
	if err != nil {
		panic(err)
	}
}

// Histogram counts byte values in src.
func Histogram(src []byte, h *[256]uint32) {
	// Four tables break the store-to-load dependency on runs of equal bytes.
	var c [4][256]uint32
	i := 0
	for ; i+4 <= len(src); i += 4 {
		c[0][src[i]]++
		c[1][src[i+1]]++
		c[2][src[i+2]]++
		c[3][src[i+3]]++
	}
	for ; i < len(src); i++ {
		c[0][src[i]]++
	}
	for b := range h {
		h[b] = c[0][b] + c[1][b] + c[2][b] + c[3][b]
	}
}

// Histogram4 counts every step-th byte of src into h, with four tables to
// break the store-to-load dependency on runs of equal bytes.
func Histogram4(src []byte, step int, h *[256]uint32) {
	var c [4][256]uint32
	i := 0
	for ; i+3*step < len(src); i += 4 * step {
		c[0][src[i]]++
		c[1][src[i+step]]++
		c[2][src[i+2*step]]++
		c[3][src[i+3*step]]++
	}
	for ; i < len(src); i += step {
		c[0][src[i]]++
	}
	for b := range h {
		h[b] = c[0][b] + c[1][b] + c[2][b] + c[3][b]
	}
}

// EntropyBits is the order-0 Shannon entropy of a histogram, in bits for the
// whole stream (not per symbol): the lower bound for any order-0 coder.
// It uses H = N log2 N - sum c log2 c, with c log2 c tabulated for small
// counts, because this runs on every stream the encoder sees.
func EntropyBits(h *[256]uint32) float64 {
	var n uint64
	var sum float64
	// No test for c == 0 (the table holds 0 there): a data-dependent branch
	// per bin mispredicts on sparse histograms and dominated small streams.
	for _, c := range h {
		n += uint64(c)
		if c < clog2cTableLen {
			sum += clog2cTable[c]
		} else {
			sum += float64(c) * math.Log2(float64(c))
		}
	}
	if n == 0 {
		return 0
	}
	nf := float64(n)
	bits := nf*math.Log2(nf) - sum
	if bits < 0 { // rounding on a single-symbol stream
		return 0
	}
	return bits
}

const clog2cTableLen = 1 << 13

var clog2cTable = func() (t [clog2cTableLen]float64) {
	for c := 1; c < clog2cTableLen; c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return t
}()

// Encoder codes streams. The zero value is not usable; call NewEncoder.
type Encoder struct {
	Effort Effort
	// MatchBits, if > 0, replaces Balanced's rule for trying zstd: zstd is
	// tried when the sampled entropy is under MatchBits, and only then (no
	// test for repeated windows: on streams of small residuals, whose
	// alphabet is small, it fires without zstd winning). The zero value
	// keeps the keyframe behaviour.
	MatchBits float64
	// ZstdOnlyBits, if > 0: a stream whose sampled entropy is under it is
	// not tried with huff0 when zstd will be tried (huff0 cannot code a
	// byte in less than one bit, so on such streams it cannot win). The
	// zero value keeps the keyframe behaviour.
	ZstdOnlyBits float64
	// FastZstd selects zstd's fastest level instead of its default one.
	// The zero value keeps the keyframe behaviour.
	FastZstd bool
	huff     huff0.Scratch
	hist     [256]uint32
	seen     [1 << seenBits]seenSlot
	gen      uint32
}

// NewEncoder returns an encoder with the given effort.
func NewEncoder(e Effort) *Encoder {
	enc := &Encoder{Effort: e}
	enc.huff.Reuse = huff0.ReusePolicyNone
	return enc
}

// Encode appends src's smallest encoding to dst and returns the method used
// and the extended slice. An empty stream is always Raw.
func (e *Encoder) Encode(dst, src []byte) (Method, []byte) {
	if len(src) == 0 {
		return Raw, dst
	}
	bitsPerByte := e.sampledEntropy(src)
	best, bestOut := Raw, src
	zeros := 0.0 // sampled once, for both decisions below
	if e.MatchBits > 0 && e.Effort == Balanced {
		zeros = zeroWindows(src)
	}
	withZstd := e.tryZstd(src, bitsPerByte, zeros)
	zstdOnly := withZstd && e.ZstdOnlyBits > 0 && e.Effort != Max &&
		(bitsPerByte < e.ZstdOnlyBits || zeros >= zstdOnlyZeroWindows)
	if zstdOnly && bitsPerByte == 0 && allEqual(src) {
		return RLE, append(dst, src[0])
	}
	if zstdOnly {
		// Straight to zstd below.
	} else if len(src) <= huff0.BlockSizeMax && (e.Effort == Max || huffmanMayPay(len(src), bitsPerByte)) {
		out, _, err := huff0.Compress4X(src, &e.huff)
		switch {
		case err == nil && len(out) < len(bestOut):
			best, bestOut = Huff0, out
		case errors.Is(err, huff0.ErrUseRLE) && allEqual(src):
			return RLE, append(dst, src[0])
		}
		// ErrIncompressible leaves raw, or zstd below, as the candidates.
	} else if bitsPerByte == 0 && allEqual(src) {
		return RLE, append(dst, src[0])
	}
	if withZstd {
		// zstd output is built in dst's spare capacity and compared there.
		start := len(dst)
		enc := sharedZstdEnc
		if e.FastZstd {
			enc = sharedZstdFast
		}
		out := enc.EncodeAll(src, dst[start:start])
		if len(out) < len(bestOut) {
			return Zstd, append(dst[:start], out...)
		}
	}
	return best, append(dst, bestOut...)
}

// NoiseBits is the sampled order-0 entropy (bits per byte) from which a
// stream is treated as noise and stored raw without trying huff0: at 7.95
// bits an order-0 coder could save at most 0.6%, less its table, while
// counting the stream would cost as much time as coding an exponent plane.
// Low mantissa planes of float weights sit here.
const NoiseBits = 7.95

// huffTableBytes is a typical size of a huff0 table description for a
// stream using most byte values.
const huffTableBytes = 64

// huffmanMayPay reports whether the order-0 bound promises a saving larger
// than a Huffman table. The entropy of a short stream is estimated from few
// samples and biased low, so short noise streams (planes of a 1 KiB tensor)
// would otherwise pay ~10 µs each for a table that cannot win.
func huffmanMayPay(n int, bitsPerByte float64) bool {
	if bitsPerByte >= NoiseBits {
		return false
	}
	return float64(n)*(8-bitsPerByte)/8 > huffTableBytes
}

func allEqual(src []byte) bool {
	if len(src) == 0 {
		return true
	}
	// Eight bytes at a time: constant planes (zero mantissas, unchanged
	// residuals) are common and long.
	v := uint64(src[0]) * 0x0101_0101_0101_0101
	i := 0
	for ; i+8 <= len(src); i += 8 {
		if binary.LittleEndian.Uint64(src[i:]) != v {
			return false
		}
	}
	for ; i < len(src); i++ {
		if src[i] != src[0] {
			return false
		}
	}
	return true
}

// sampledEntropy estimates src's order-0 entropy in bits per byte from every
// 8th byte (every byte of short streams). The estimate is biased low by
// about 0.01 bit at 16K samples, which only makes huff0 slightly more likely
// to be tried.
func (e *Encoder) sampledEntropy(src []byte) float64 {
	step := 8
	if len(src) < 1<<13 {
		step = 1
	}
	if (len(src)+step-1)/step > clog2cTableLen {
		// Counts may outgrow the table, where the running sum below
		// would cost two Log2 calls per sample (a 128 KiB plane of one
		// dominant byte took ~250 us): count, then evaluate the
		// histogram once.
		Histogram4(src, step, &e.hist)
		n := (len(src) + step - 1) / step
		bits := EntropyBits(&e.hist)
		e.hist = [256]uint32{}
		return bits / float64(n)
	}
	// sum of c*log2(c) over the histogram, kept up to date per sample so
	// that no pass over all 256 bins is needed: on the planes of a small
	// tensor that pass cost more than the counting.
	h := &e.hist
	var sum float64
	n := 0
	for i := 0; i < len(src); i += step {
		c := h[src[i]]
		h[src[i]] = c + 1
		if c+1 < clog2cTableLen {
			sum += clog2cTable[c+1] - clog2cTable[c]
		} else {
			f := float64(c + 1)
			sum += f*math.Log2(f) - float64(c)*math.Log2(float64(c))
		}
		n++
	}
	if n < len(h) {
		for i := 0; i < len(src); i += step {
			h[src[i]] = 0
		}
	} else {
		*h = [256]uint32{}
	}
	nf := float64(n)
	bits := nf*math.Log2(nf) - sum
	if bits < 0 { // rounding on a single-symbol stream
		bits = 0
	}
	return bits / nf
}

func (e *Encoder) tryZstd(src []byte, bitsPerByte, zeros float64) bool {
	switch e.Effort {
	case Fast:
		return false
	case Max:
		return true
	}
	if e.MatchBits > 0 {
		return bitsPerByte < e.MatchBits || zeros >= tryZstdZeroWindows
	}
	return bitsPerByte < MatchEntropyBits || e.repetitive(src)
}

// repetitive samples 8-byte windows at a stride and reports whether enough
// of them occurred earlier in the stream for LZ matching to pay off.
func (e *Encoder) repetitive(src []byte) bool {
	const stride, window = 32, 8
	if len(src) < 4*window {
		return false
	}
	// A generation number instead of clearing the table on every call.
	e.gen++
	if e.gen == 0 {
		e.seen = [len(e.seen)]seenSlot{}
		e.gen = 1
	}
	// 2048 samples (the first 64 KiB) tell repetitive from not; scanning
	// further only costs time on every exponent plane.
	const maxSamples = 2048
	end := min(len(src), maxSamples*stride)
	samples, hits := 0, 0
	for i := 0; i+window <= end; i += stride {
		v := binary.LittleEndian.Uint64(src[i:])
		slot := &e.seen[(v*0x9E3779B97F4A7C15)>>(64-seenBits)]
		if slot.gen == e.gen && slot.v == v {
			hits++
		}
		slot.gen, slot.v = e.gen, v
		samples++
	}
	return hits*16 >= samples // at least ~6% of windows repeat
}

const seenBits = 12

type seenSlot struct {
	v   uint64
	gen uint32
}

// fill sets every byte of dst to b: a memclr for zero (the common run, a
// plane of unchanged residuals or zero mantissas), else by doubling copies.
func fill(dst []byte, b byte) {
	if b == 0 {
		clear(dst)
		return
	}
	if len(dst) == 0 {
		return
	}
	dst[0] = b
	for n := 1; n < len(dst); n *= 2 {
		copy(dst[n:], dst[:n])
	}
}

// ErrCorrupt is wrapped by every decoding failure caused by bad input.
var ErrCorrupt = errs.Corrupt

// Decoder decodes streams. The zero value is ready to use.
type Decoder struct {
	huff  huff0.Scratch
	multi *huffMulti // allocated on the first stream long enough to use it
}

// Decode decodes src, coded with m, into exactly len(dst) bytes of dst.
func (d *Decoder) Decode(m Method, src, dst []byte) error {
	if len(dst) > MaxStreamLen {
		return fmt.Errorf("%w: stream of %d bytes exceeds the %d cap", ErrCorrupt, len(dst), MaxStreamLen)
	}
	switch m {
	case Raw:
		if len(src) != len(dst) {
			return fmt.Errorf("%w: raw stream is %d bytes, want %d", ErrCorrupt, len(src), len(dst))
		}
		copy(dst, src)
		return nil
	case RLE:
		if len(src) != 1 {
			return fmt.Errorf("%w: rle stream is %d bytes, want 1", ErrCorrupt, len(src))
		}
		fill(dst, src[0])
		return nil
	case Huff0:
		if len(dst) == 0 || len(dst) > huff0.BlockSizeMax {
			return fmt.Errorf("%w: huff0 stream of %d bytes is out of range", ErrCorrupt, len(dst))
		}
		return d.decodeHuff0(src, dst)
	case Zstd:
		out, err := sharedZstdDec.DecodeAll(src, dst[:0:len(dst)])
		if err != nil {
			return fmt.Errorf("%w: zstd: %v", ErrCorrupt, err)
		}
		if len(out) != len(dst) || (len(out) > 0 && &out[0] != &dst[0]) {
			return fmt.Errorf("%w: zstd gave %d bytes, want %d", ErrCorrupt, len(out), len(dst))
		}
		return nil
	}
	return fmt.Errorf("%w: unknown stream method %d", ErrCorrupt, uint8(m))
}

// zeroWindows samples 8-byte windows spread over src and returns the
// fraction of them that are all zero: runs of zeros (residuals of unchanged
// stretches, such as embedding rows no step touched) that LZ matching codes
// in a few bytes while huff0 spends at least one bit per byte. Scattered zeros rarely fill a window, so
// streams of small residuals, whose alphabet is small, do not reach it.
func zeroWindows(src []byte) float64 {
	const window, maxSamples = 8, 2048
	if len(src) < 64*window {
		return 0
	}
	stride := max(4*window, len(src)/maxSamples)
	samples, zero := 0, 0
	for i := 0; i+window <= len(src); i += stride {
		samples++
		if binary.LittleEndian.Uint64(src[i:]) == 0 {
			zero++
		}
	}
	return float64(zero) / float64(samples)
}

// tryZstdZeroWindows: from this fraction of zero windows a delta stream
// is also tried with zstd.
const tryZstdZeroWindows = 1.0 / 8

// zstdOnlyZeroWindows: from this fraction of zero windows a delta stream
// goes to zstd without trying huff0, which cannot win there.
const zstdOnlyZeroWindows = 0.5
