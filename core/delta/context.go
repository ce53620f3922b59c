package delta

import (
	"math"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
)

// Contexts. Elements of a float tensor whose reference values share an
// exponent tend to change by alike amounts of their bit patterns: an update
// of fixed size moves a small weight by many ulps and a large one by few.
// A chunk therefore groups its coded elements by the reference element's
// biased exponent e into K buckets,
//
//	bucket(e) = min(max(e - lo, 0), K - 1),
//
// and codes each bucket's byte planes as separate streams, so each stream
// gets its own entropy coder table. K = 1 is a single bucket (no context);
// non-float dtypes always use K = 1. The encoder picks K and lo per chunk
// from a sample (chooseContext).

// MaxContexts is the largest K.
const MaxContexts = 16

// expField locates the exponent field of a dtype's bit pattern.
type expField struct {
	shift uint
	mask  uint64 // 0: no exponent (non-float dtypes)
}

func expFieldOf(d dtype.DType) expField {
	l := d.Layout()
	if !l.Float {
		return expField{}
	}
	return expField{shift: uint(l.MantBits), mask: 1<<uint(l.ExpBits) - 1}
}

// ctxCfg is one chunk's context map.
type ctxCfg struct {
	k  int // buckets, 1..MaxContexts
	lo int // exponent of bucket 0 (0 when k == 1)
}

// buildLUT fills lut[e] = bucket(e) for every exponent value.
func (c ctxCfg) buildLUT(lut []uint8, ef expField) {
	for e := 0; e <= int(ef.mask); e++ {
		lut[e] = uint8(min(max(e-c.lo, 0), c.k-1))
	}
}

// ContextMode chooses whether the encoder splits residuals by context.
type ContextMode uint8

const (
	// ContextAuto picks the bucket count whose estimated size is smallest
	// (K = 1 included; more buckets only where they save 3% at Max effort,
	// 8% at Balanced); at Fast it uses K = 1.
	ContextAuto ContextMode = 0
	// ContextOff always uses K = 1.
	ContextOff ContextMode = 1
	// ContextOn always uses K = MaxContexts on float dtypes.
	ContextOn ContextMode = 2

	// contextAutoOff is ContextAuto at Fast effort: contexts cost speed (a
	// scalar scatter by bucket when encoding and gather when decoding,
	// about half the speed of the vector K = 1 paths), so Fast never
	// weighs them. Balanced does, where they save 8% (ctxMargin): on the
	// bf16 weights of a real fine-tuning series they made delta frames 18%
	// smaller (bench/delta_ratio.py), and delta frames are coded in the
	// store's background work and decoded only to read an older
	// checkpoint.
	contextAutoOff ContextMode = 255
)

const (
	fineBuckets = MaxContexts
	// sampleTarget is about how many elements a chunk's plan looks at
	// (Prepare looks at 4 times as many over the whole tensor), in runs of
	// sampleRun elements.
	sampleTarget = 4096
	sampleRun    = 64
	maxPlanes    = 8
)

// estimator holds the sampled histograms of one chunk: for each of the
// fineBuckets exponents from fineLo (clamped at both ends), the byte
// histograms of each plane of the non-zero values, and the count of zero
// values.
type estimator struct {
	expHist [2048]uint32
	hist    [fineBuckets][maxPlanes][256]uint32
	zeros   [fineBuckets]uint32
	nz      [fineBuckets]uint32
	fineLo  int
	samples int // sampled elements
	sampNZ  int // of which non-zero
	merged  [maxPlanes][256]uint32
}

// fill fills the estimator from a sample: cnt values (V each, zero for an
// unchanged element) in vals and the reference elements (T) they belong to
// in refs. With ef.mask == 0 everything goes to fine bucket 0.
func fill[T, V word](e *estimator, vals, refs []byte, cnt int, ef expField) {
	P := size[V]()
	e.fineLo = 0
	if ef.mask != 0 {
		clear(e.expHist[:ef.mask+1])
		for j := 0; j < cnt; j++ {
			if load[V](vals, j) != 0 {
				e.expHist[(uint64(load[T](refs, j))>>ef.shift)&ef.mask&2047]++
			}
		}
		// The window of fineBuckets exponents holding the most changed
		// elements.
		var sum, bestSum uint32
		w := min(fineBuckets, int(ef.mask)+1)
		for x := 0; x <= int(ef.mask); x++ {
			sum += e.expHist[x]
			if x >= w {
				sum -= e.expHist[x-w]
			}
			if x >= w-1 && sum > bestSum {
				e.fineLo, bestSum = x-w+1, sum
			}
		}
	}
	for b := range e.hist {
		for p := 0; p < P; p++ {
			clear(e.hist[b][p][:])
		}
	}
	clear(e.zeros[:])
	clear(e.nz[:])
	e.samples, e.sampNZ = cnt, 0
	for j := 0; j < cnt; j++ {
		v := uint64(load[V](vals, j))
		fb := 0
		if ef.mask != 0 {
			ex := int((uint64(load[T](refs, j)) >> ef.shift) & ef.mask)
			fb = min(max(ex-e.fineLo, 0), fineBuckets-1)
		}
		if v == 0 {
			e.zeros[fb]++
			continue
		}
		e.sampNZ++
		e.nz[fb]++
		for p := 0; p < P; p++ {
			e.hist[fb][p][byte(v>>(8*(P-1-p)))]++
		}
	}
}

// streamCost estimates the stored bytes of a stream with histogram h
// (sampled; scale converts to the real count), directory entry included.
func streamCost(h *[256]uint32, scale float64) float64 {
	var total uint32
	distinct := 0
	for _, c := range h {
		total += c
		if c != 0 {
			distinct++
		}
	}
	switch {
	case total == 0:
		return 0
	case distinct == 1:
		return 6
	}
	// The plug-in entropy of a sample is biased low by about
	// (distinct-1)/(2 ln 2) bits (Miller and Madow); without the correction
	// thin per-bucket samples make many buckets look better than they are.
	bits := entropy.EntropyBits(h)*scale + float64(distinct-1)/(2*math.Ln2)*(scale-1)
	per := bits / (float64(total) * scale)
	if per < 1 {
		// huff0 cannot go under one bit per byte; zstd can, less well
		// than the order-0 bound.
		return bits/8*1.25 + 30
	}
	return bits/8*1.02 + 12 + float64(distinct)/2
}

// cost estimates the value streams of config c over the sampled
// population (zeros included when dense), in bytes of the real chunk.
func (e *estimator) cost(c ctxCfg, P int, dense bool, scale float64) float64 {
	total := 0.0
	for b := 0; b < c.k; b++ {
		// Fine buckets fb map to bucket clamp(fineLo+fb-lo, 0, k-1).
		any := false
		for p := 0; p < P; p++ {
			clear(e.merged[p][:])
		}
		for fb := 0; fb < fineBuckets; fb++ {
			if min(max(e.fineLo+fb-c.lo, 0), c.k-1) != b {
				continue
			}
			any = true
			for p := 0; p < P; p++ {
				m, h := &e.merged[p], &e.hist[fb][p]
				for x := range m {
					m[x] += h[x]
				}
				if dense {
					m[0] += e.zeros[fb]
				}
			}
		}
		if !any {
			continue
		}
		for p := 0; p < P; p++ {
			total += streamCost(&e.merged[p], scale)
		}
	}
	return total
}

// candidates returns the context maps worth estimating.
func (e *estimator) candidates(mode ContextMode, ef expField) []ctxCfg {
	if oneBucketMode(mode, ef) {
		return []ctxCfg{{k: 1}}
	}
	span := min(fineBuckets, int(ef.mask)+1)
	if mode == ContextOn {
		return []ctxCfg{{k: span, lo: e.fineLo}}
	}
	out := []ctxCfg{{k: 1}}
	for _, k := range []int{4, 8, 16} {
		if k > span {
			break
		}
		// The window of k fine buckets holding the most changed samples
		// (within the fine window, so the estimate is exact).
		best, bestN := 0, -1
		for lo := 0; lo+k <= fineBuckets; lo++ {
			n := 0
			for fb := lo; fb < lo+k; fb++ {
				n += int(e.nz[fb])
			}
			if n > bestN {
				best, bestN = lo, n
			}
		}
		out = append(out, ctxCfg{k: k, lo: e.fineLo + best})
	}
	return out
}

// positionsCost estimates the bytes of the positions of m changed elements
// among n: the smaller of Elias-delta gaps and a bitmap, each entropy coded.
func positionsCost(m, n int) float64 {
	if m == 0 {
		return 0
	}
	g := float64(n) / float64(m)
	elias := float64(m) * float64(eliasLen(uint64(math.Max(1, math.Round(g))))) / 8 * 0.95
	p := float64(m) / float64(n)
	bitmap := float64(n) / 8
	if p < 1 {
		bitmap = float64(n) * -(p*math.Log2(p) + (1-p)*math.Log2(1-p)) / 8 * 1.03
	}
	return math.Min(elias, bitmap+40) + posHdrLen
}

// oneBucketMode reports whether mode allows only one context bucket for a
// dtype with exponent field ef.
func oneBucketMode(mode ContextMode, ef expField) bool {
	return ef.mask == 0 || mode == ContextOff || mode == contextAutoOff
}
