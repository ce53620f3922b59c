package delta

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

// Scratch is one goroutine's reusable state for coding chunks.
type Scratch struct {
	enc    *entropy.Encoder
	posEnc *entropy.Encoder
	dec    entropy.Decoder
	est    estimator
	lut    [2048]uint8

	x      []byte // lossy: the reconstruction
	codes  []byte // quantized: one code per element
	esc    []byte // quantized: exact residuals (T) of the escaped elements
	vals   []byte // sparse: the changed values (V), gathered
	bk     []byte // context bucket of each coded value
	planes []byte // plane p of cnt values at [p*cnt, (p+1)*cnt)
	sv, sr []byte // sample: values (V) and their reference elements (T)
	bits   []byte // Elias-delta bit string, or bitmap
	pos    []uint32
	pa, pb []byte // coded position candidates
	counts [MaxContexts]int
	// qcounts: bucket sizes per quarter of the chunk (bucketsDense).
	qcounts [4][MaxContexts]int
	zero    uint8  // planes splitDense found all zero (bit p: plane p)
	out     []byte // dense candidate payload
	slot    []byte // where the caller would like the dense payload
	alt     []byte // sparse candidate payload
}

// Stream coder settings for residual streams, which (unlike keyframe
// planes) are often under one bit per byte, where huff0 cannot go.
const (
	deltaMatchBits = 0.3
	deltaZstdOnly  = 0.3
)

// NewScratch returns an empty scratch.
func NewScratch() *Scratch {
	enc := entropy.NewEncoder(entropy.Balanced)
	enc.MatchBits, enc.ZstdOnlyBits = deltaMatchBits, deltaZstdOnly
	// Residual streams zstd is tried on are mostly runs of zeros, where
	// the fastest level loses little (measured: <1% of the frame) and
	// halves the time.
	enc.FastZstd = true
	return &Scratch{enc: enc, posEnc: entropy.NewEncoder(entropy.Max)}
}

func grow(b []byte, n int) []byte {
	if cap(b) < n {
		return make([]byte, n, n+n/8)
	}
	return b[:n]
}

// Result describes one coded chunk.
type Result struct {
	Mode  Mode
	Count uint32 // elements with a non-zero residual (or code)
	// Payload is the chunk's stored bytes; it lives in the scratch and is
	// valid until the scratch codes another chunk.
	Payload []byte
	// Recon is what a decoder will reconstruct: the input chunk itself
	// when lossless, otherwise the scratch's copy.
	Recon []byte
	// MaxErr is the largest |input - reconstruction| of the chunk as real
	// numbers (lossy frames).
	MaxErr float64
	// Contexts is the bucket count K used (0 for Copy).
	Contexts int
}

// Encode codes one chunk: cur against ref (and ref2, for Pred), all of the
// same length, a whole number of p.DType elements. p must have passed
// Validate.
func (s *Scratch) Encode(cur, ref, ref2 []byte, p *Params) (Result, error) {
	return s.EncodeInto(nil, cur, ref, ref2, p)
}

// EncodeInto is Encode that may build the payload in slot's capacity (a
// frame's worst-case slot for the chunk, len(cur)+ChunkOverhead bytes),
// saving a copy; Result.Payload then starts at slot[0].
func (s *Scratch) EncodeInto(slot, cur, ref, ref2 []byte, p *Params) (Result, error) {
	s.slot = slot[:0]
	defer func() { s.slot = nil }()
	s.enc.Effort = p.Effort
	switch p.DType.Width() {
	case 1:
		return encodeT[uint8](s, cur, ref, ref2, p)
	case 2:
		return encodeT[uint16](s, cur, ref, ref2, p)
	case 4:
		return encodeT[uint32](s, cur, ref, ref2, p)
	case 8:
		return encodeT[uint64](s, cur, ref, ref2, p)
	}
	return Result{}, fmt.Errorf("%w: element width %d", errs.Invalid, p.DType.Width())
}

func encodeT[T word](s *Scratch, cur, ref, ref2 []byte, p *Params) (Result, error) {
	w := size[T]()
	n := len(cur) / w
	if len(ref) != len(cur) || (p.Kind == Pred && len(ref2) != len(cur)) || len(cur)%w != 0 {
		return Result{}, fmt.Errorf("%w: chunk of %d bytes against references of %d and %d", errs.Invalid, len(cur), len(ref), len(ref2))
	}
	limit := len(cur) + ChunkOverhead(w)
	r := Result{Recon: cur}
	x := cur
	if p.Lossy() {
		if p.QuantBits != 0 {
			q, err := quantize[T](s, cur, ref, ref2, p)
			if err != nil {
				return Result{}, err
			}
			if q.Mode == Copy || len(q.Payload) <= limit {
				return q, nil
			}
			// Escapes made the codes larger than exact residuals would
			// be: code the chunk with the threshold alone.
		}
		s.x = grow(s.x, len(cur))
		r.MaxErr = threshold[T](cur, ref, ref2, s.x, p)
		x = s.x
		r.Recon = x
	}
	if p.Kind != Pred && bytes.Equal(x, ref) {
		r.Mode = Copy
		return r, nil
	}
	ef := contextField(p)
	c := p.ctx
	if !p.prepared {
		// A chunk coded on its own: plan from its own sample.
		ns := sampleExact[T](s, x, ref, ref2, p.Kind, 1)
		c = makePlan[T, T](s, ns, n, p, ef).dense
	}
	// Sparse coding pays only when few elements changed (sparseLimit);
	// under 1/16 of them dense never won.
	var dense, sparse []byte
	nz := -1
	sparseUpTo := sparseLimit(p.Effort, n)
	if p.Sparse != SparseAlways {
		nz = splitDense[T](s, x, ref, ref2, p, ef, c)
		if nz == 0 {
			r.Mode = Copy
			return r, nil
		}
		// Dense too, unless the sparse coding is sure to win.
		if p.Sparse == SparseNever || nz > sparseUpTo || 16*nz > n {
			dense = codeDense(s, n, w, c)
		}
	}
	if p.Sparse == SparseAlways || (p.Sparse == SparseAuto && nz <= sparseUpTo) {
		if cap(s.pos) < n {
			s.pos = make([]uint32, n)
		}
		s.vals = grow(s.vals, len(cur))
		m := gatherExact[T](s, x, ref, ref2, p.Kind)
		if m == 0 {
			r.Mode = Copy
			return r, nil
		}
		nz = m
		sparse = codeSparse[T, T](s, m, n, ref, p, ef, c, nil, nil, 0)
		if len(sparse) > limit {
			sparse = nil
		}
	}
	if dense == nil && sparse == nil {
		if p.Sparse == SparseAlways {
			splitDense[T](s, x, ref, ref2, p, ef, c)
		}
		dense = codeDense(s, n, w, c)
	}
	r.Count = uint32(nz)
	if sparse != nil && (dense == nil || len(sparse) < len(dense)) {
		r.Mode, r.Payload = Sparse, sparse
	} else {
		r.Mode, r.Payload = Dense, dense
	}
	r.Contexts = c.k
	return r, nil
}

// contextField is the exponent field contexts are taken from, or none.
func contextField(p *Params) expField {
	if p.Context == ContextOff {
		return expField{}
	}
	return expFieldOf(p.DType)
}

// sparseLimit is the most changed elements of n for which the encoder
// tries the sparse coding. Past half of them it never won in any
// measurement; past about 1/8 it is slower to decode than the dense coding
// (a patch per element instead of vector code), so only Max effort looks
// that far, and Fast stops at 1/16, where the sparse coding always wins
// and is the only one tried.
func sparseLimit(e entropy.Effort, n int) int {
	switch e {
	case entropy.Max:
		return n / 2
	case entropy.Fast:
		return n / 16
	}
	return n / 8
}

// closeCall: when the estimates of the dense and sparse codings are within
// this factor of each other, the encoder codes both and keeps the smaller.
const closeCall = 1.5

// ctxMargin: in ContextAuto, more buckets are used only when they are
// estimated to cost under this fraction of the single-bucket size, since
// they halve encoding and decoding speed: at Max, a saving of 3% is worth
// it; at Balanced only one of 8%. Measured on a real fine-tuning series
// (bench/delta_ratio.py, checkpoints 1-4): bf16 weights saved 19% at 3%
// and 18% at 8%, fp32 weights 4% at 3% and nothing at 8% (so they keep
// the full speed), AdamW's moments 0.35% either way.
func ctxMargin(e entropy.Effort) float64 {
	if e == entropy.Max {
		return 0.97
	}
	return 0.92
}

type plan struct {
	dense, sparse       ctxCfg
	tryDense, trySparse bool
}

// effectiveContext resolves ContextAuto: contexts are weighed at every
// effort but Fast.
func effectiveContext(p *Params) ContextMode {
	if p.Context == ContextAuto && p.Effort == entropy.Fast {
		return contextAutoOff
	}
	return p.Context
}

// makePlan estimates, from the sample in s.sv and s.sr (ns elements), the
// best context map for the dense and the sparse coding and which of them
// to try.
func makePlan[T, V word](s *Scratch, ns, n int, p *Params, ef expField) plan {
	e := &s.est
	fill[T, V](e, s.sv, s.sr, ns, ef)
	P := size[V]()
	mode := effectiveContext(p)
	cands := e.candidates(mode, ef)
	pl := plan{dense: cands[0], sparse: cands[0]}
	pick := func(dense bool, scale float64) (ctxCfg, float64) {
		best, cost := cands[0], e.cost(cands[0], P, dense, scale)
		base := cost
		for _, c := range cands[1:] {
			cc := e.cost(c, P, dense, scale)
			if p.Context == ContextAuto && cc >= base*ctxMargin(p.Effort) {
				continue
			}
			if cc < cost {
				best, cost = c, cc
			}
		}
		return best, cost
	}
	var costD float64
	pl.dense, costD = pick(true, float64(n)/float64(max(e.samples, 1)))
	nzEst := float64(e.sampNZ) * float64(n) / float64(max(e.samples, 1))
	costS := math.Inf(1)
	if p.Sparse == SparseAlways || (p.Sparse == SparseAuto && nzEst <= float64(sparseLimit(p.Effort, n))) {
		if e.sampNZ >= 64 {
			pl.sparse, costS = pick(false, nzEst/float64(e.sampNZ))
		} else {
			// Too few changed samples to tell: raw values, one bucket.
			pl.sparse, costS = ctxCfg{k: 1}, nzEst*float64(P)+10
		}
		costS += positionsCost(int(math.Ceil(nzEst)), n)
	}
	switch p.Sparse {
	case SparseNever:
		pl.tryDense = true
	case SparseAlways:
		pl.trySparse = true
	default:
		pl.trySparse = costS < costD*closeCall
		pl.tryDense = !pl.trySparse || costD < costS*closeCall
	}
	return pl
}

// sampleExact puts the residuals of a sample of the elements into s.sv and
// their reference elements into s.sr, and returns their count: all
// elements of a short tensor, otherwise runs of sampleRun elements spread
// evenly (runs touch fewer cache lines than a stride would).
func sampleExact[T word](s *Scratch, x, ref, ref2 []byte, k Kind, scale int) int {
	w := size[T]()
	n := len(x) / w
	target := sampleTarget * scale
	s.sv, s.sr = grow(s.sv, min(n, target)*w), grow(s.sr, min(n, target)*w)
	if n <= target {
		sampleRange[T](s.sv, s.sr, 0, x, ref, ref2, k, 0, n)
		return n
	}
	runs := target / sampleRun
	for r := 0; r < runs; r++ {
		lo := int(uint64(r) * uint64(n-sampleRun) / uint64(runs-1))
		sampleRange[T](s.sv, s.sr, r*sampleRun, x, ref, ref2, k, lo, lo+sampleRun)
	}
	return runs * sampleRun
}

// sampleRange stores the residuals of elements [lo, hi) and their
// reference elements at index i of sv and sr.
func sampleRange[T word](sv, sr []byte, i int, x, ref, ref2 []byte, k Kind, lo, hi int) {
	switch k {
	case XOR:
		for j := lo; j < hi; j, i = j+1, i+1 {
			r := load[T](ref, j)
			store(sv, i, load[T](x, j)^r)
			store(sr, i, r)
		}
	case Diff:
		for j := lo; j < hi; j, i = j+1, i+1 {
			r := load[T](ref, j)
			store(sv, i, zigzag(load[T](x, j)-r))
			store(sr, i, r)
		}
	default:
		for j := lo; j < hi; j, i = j+1, i+1 {
			r := load[T](ref, j)
			store(sv, i, zigzag(load[T](x, j)-predict(r, load[T](ref2, j))))
			store(sr, i, r)
		}
	}
}

// sampleCodes is sampleExact for quantization codes.
func sampleCodes[T word](s *Scratch, codes, ref []byte) int {
	w := size[T]()
	n := len(codes)
	stride := max(1, n/sampleTarget)
	cnt := (n + stride - 1) / stride
	s.sv, s.sr = grow(s.sv, cnt), grow(s.sr, cnt*w)
	for i, j := 0, 0; i < cnt; i, j = i+1, j+stride {
		s.sv[i] = codes[j]
		store(s.sr, i, load[T](ref, j))
	}
	return cnt
}

// nonzero is 1 if v != 0, else 0, without a branch.
func nonzero[T word](v T) int { return int(uint64(v|-v) >> (8*size[T]() - 1)) }

// base returns element j's base: the value a zero residual reconstructs.
func base[T word](k Kind, ref, ref2 []byte, j int) T {
	if k == Pred {
		return predict(load[T](ref, j), load[T](ref2, j))
	}
	return load[T](ref, j)
}

// gatherExact puts the positions of the non-zero residuals into s.pos and
// the residuals into s.vals, and returns their count.
func gatherExact[T word](s *Scratch, x, ref, ref2 []byte, k Kind) int {
	n := len(x) / size[T]()
	pos, vals := s.pos[:n], s.vals
	if k != Pred {
		// The sparse coding is tried only when few elements changed, so
		// most 8-byte words of residuals are zero: test a word at a time.
		switch size[T]() {
		case 2:
			return gatherWords16(k == Diff, x, ref, pos, vals)
		case 4:
			return gatherWords32(k == Diff, x, ref, pos, vals)
		}
	}
	m := 0
	// Branch-free: every element is written at m, which advances only
	// past the non-zero ones (m <= j, so the writes stay in bounds).
	for j := 0; j < n; j++ {
		v := residual(k, load[T](x, j), load[T](ref, j), loadOr[T](ref2, j))
		pos[m] = uint32(j)
		store(vals, m, v)
		m += nonzero(v)
	}
	return m
}

// gatherCodes is gatherExact for quantization codes.
func gatherCodes(s *Scratch, codes []byte) int {
	pos, vals := s.pos[:len(codes)], s.vals[:len(codes)]
	m := 0
	for j, c := range codes {
		pos[m] = uint32(j)
		vals[m] = c
		m += nonzero(c)
	}
	return m
}

func putCtxHeader(out []byte, c ctxCfg) []byte {
	return append(out, byte(c.k), 0, byte(c.lo), byte(c.lo>>8))
}

// putStream appends src's entropy coding as method, stored_len, bytes.
func putStream(enc *entropy.Encoder, out, src []byte) []byte {
	start := len(out)
	out = append(out, 0, 0, 0, 0, 0)
	m, coded := enc.Encode(out[len(out):len(out)], src)
	out = appendCoded(out, coded)
	out[start] = byte(m)
	binary.LittleEndian.PutUint32(out[start+1:], uint32(len(coded)))
	return out
}

// appendCoded extends out by coded, which an entropy encoder wrote either
// into out's spare capacity or elsewhere.
func appendCoded(out, coded []byte) []byte {
	if len(coded) > 0 && (cap(out)-len(out) < len(coded) || &out[:len(out)+1][len(out)] != &coded[0]) {
		return append(out, coded...)
	}
	return out[:len(out)+len(coded)]
}

// bucketsDense fills s.bk[j] with the bucket of reference element j and
// returns the bucket sizes; s.qcounts gets them per quarter of the chunk
// (for the four-way loops of fast.go), counted in four independent tables.
func bucketsDense[T word](s *Scratch, ref []byte, n int, ef expField, c ctxCfg) (counts [MaxContexts]int) {
	if c.k == 1 {
		counts[0] = n
		return counts
	}
	c.buildLUT(s.lut[:], ef)
	s.bk = grow(s.bk, n)
	bk := s.bk[:n]
	lut := &s.lut
	var qc [4][MaxContexts]uint32
	n4, last := quarters(n)
	at := func(j int) uint8 { return lut[(uint64(load[T](ref, j))>>ef.shift)&ef.mask&2047] & (MaxContexts - 1) }
	for i := 0; i < n4; i++ {
		b0, b1, b2, b3 := at(i), at(n4+i), at(2*n4+i), at(3*n4+i)
		bk[i], bk[n4+i], bk[2*n4+i], bk[3*n4+i] = b0, b1, b2, b3
		qc[0][b0]++
		qc[1][b1]++
		qc[2][b2]++
		qc[3][b3]++
	}
	for i := n4; i < last; i++ {
		b := at(3*n4 + i)
		bk[3*n4+i] = b
		qc[3][b]++
	}
	for q := range qc {
		for b := range counts {
			s.qcounts[q][b] = int(qc[q][b])
			counts[b] += int(qc[q][b])
		}
	}
	return counts
}

// bucketsSparse is bucketsDense for the reference elements at pos.
func bucketsSparse[T word](s *Scratch, ref []byte, pos []uint32, ef expField, c ctxCfg) (counts [MaxContexts]int) {
	if c.k == 1 {
		counts[0] = len(pos)
		return counts
	}
	c.buildLUT(s.lut[:], ef)
	s.bk = grow(s.bk, len(pos))
	bk := s.bk[:len(pos)]
	lut := &s.lut
	var cnt [MaxContexts]uint32
	for i, j := range pos {
		b := lut[(uint64(load[T](ref, int(j)))>>ef.shift)&ef.mask&2047]
		bk[i] = b
		cnt[b&(MaxContexts-1)]++
	}
	for b := range counts {
		counts[b] = int(cnt[b])
	}
	return counts
}

// scatter splits cnt values of V into P planes, each grouped by bucket in
// bucket order (element order within a bucket).
func scatter[V word](vals []byte, cnt int, bk []byte, k int, counts *[MaxContexts]int, planes []byte) {
	P := size[V]()
	if k == 1 {
		for i := 0; i < cnt; i++ {
			v := uint64(load[V](vals, i))
			for p := 0; p < P; p++ {
				planes[p*cnt+i] = byte(v >> (8 * (P - 1 - p)))
			}
		}
		return
	}
	cur := bucketStarts(k, counts)
	for i := 0; i < cnt; i++ {
		b := bk[i] & (MaxContexts - 1)
		o := cur[b]
		cur[b]++
		v := uint64(load[V](vals, i))
		for p := 0; p < P; p++ {
			planes[p*cnt+o] = byte(v >> (8 * (P - 1 - p)))
		}
	}
}

// putValueStreams appends the streams of every non-empty bucket and plane.
func putValueStreams(s *Scratch, out []byte, P, cnt int, k int, counts *[MaxContexts]int) []byte {
	off := 0
	for b := 0; b < k; b++ {
		if counts[b] == 0 {
			continue
		}
		for p := 0; p < P; p++ {
			out = putStream(s.enc, out, s.planes[p*cnt+off:p*cnt+off+counts[b]])
		}
		off += counts[b]
	}
	return out
}

// putEscapes appends the w planes of nesc exact residuals, one bucket.
func putEscapes[T word](s *Scratch, out, esc []byte, nesc int) []byte {
	if nesc == 0 {
		return out
	}
	w := size[T]()
	s.planes = grow(s.planes, nesc*w)
	var counts [MaxContexts]int
	counts[0] = nesc
	scatter[T](esc, nesc, nil, 1, &counts, s.planes)
	return putValueStreams(s, out, w, nesc, 1, &counts)
}

func (s *Scratch) outBuf(need int) []byte {
	if cap(s.slot) >= need {
		return s.slot[:0]
	}
	if cap(s.out) < need {
		s.out = make([]byte, 0, need)
	}
	return s.out[:0]
}

// keep remembers a payload built by outBuf for reuse, unless it is the
// caller's slot.
func (s *Scratch) keep(out []byte) {
	if cap(s.slot) == 0 || cap(out) == 0 || &out[:1][0] != &s.slot[:1][0] {
		s.out = out
	}
}

// splitDense computes the residual of every element into the planes of
// s.planes, grouped by the buckets of c (s.counts), and returns how many
// are not zero. codeDense then codes them.
func splitDense[T word](s *Scratch, x, ref, ref2 []byte, p *Params, ef expField, c ctxCfg) int {
	w := size[T]()
	n := len(x) / w
	s.counts = bucketsDense[T](s, ref, n, ef, c)
	s.planes = grow(s.planes, n*w)
	var nz int
	s.zero = 0
	switch {
	case c.k == 1 && p.Kind != Pred && w == 2:
		var or uint64
		nz, or = split2(p.Kind == Diff, x, ref, s.planes[:n], s.planes[n:2*n])
		s.zero = zeroPlanes2(or)
	case c.k == 1 && p.Kind != Pred && w == 4:
		var or uint64
		nz, or = split4(p.Kind == Diff, x, ref, s.planes[:n], s.planes[n:2*n], s.planes[2*n:3*n], s.planes[3*n:4*n])
		s.zero = zeroPlanes4(or)
	case c.k == 1:
		nz = splitResiduals[T](p.Kind, x, ref, ref2, s.planes)
	case p.Kind != Pred && w == 2:
		nz = scatter2(p.Kind == Diff, x, ref, s.bk[:n], &s.qcounts, c.k, s.planes[:n], s.planes[n:2*n])
	case p.Kind != Pred && w == 4:
		nz = scatter4(p.Kind == Diff, x, ref, s.bk[:n], &s.qcounts, c.k, s.planes[:n], s.planes[n:2*n], s.planes[2*n:3*n], s.planes[3*n:4*n])
	default:
		nz = scatterResiduals[T](p.Kind, x, ref, ref2, s.bk, c.k, &s.counts, s.planes)
	}
	return nz
}

// codeDense codes the planes splitDense left in the scratch.
func codeDense(s *Scratch, n, w int, c ctxCfg) []byte {
	out := s.outBuf(n*w + ChunkOverhead(w))
	out = putCtxHeader(out, c)
	if c.k == 1 && s.zero != 0 {
		// Planes known to be all zero (from splitDense) skip the stream
		// coder: they are what it would write, a run of zeros.
		for p := 0; p < w; p++ {
			if s.zero&(1<<p) != 0 {
				out = append(out, byte(entropy.RLE), 1, 0, 0, 0, 0)
			} else {
				out = putStream(s.enc, out, s.planes[p*n:(p+1)*n])
			}
		}
		s.keep(out)
		return out
	}
	out = putValueStreams(s, out, w, n, c.k, &s.counts)
	s.keep(out)
	return out
}

// splitResiduals writes the residuals' planes (one bucket) and counts the
// non-zero ones.
func splitResiduals[T word](k Kind, x, ref, ref2, planes []byte) int {
	w := size[T]()
	n := len(x) / w
	nz := 0
	switch w {
	case 2:
		p0, p1 := planes[:n], planes[n:2*n]
		for j := range p0 {
			v := residual(k, load[T](x, j), load[T](ref, j), loadOr[T](ref2, j))
			nz += nonzero(v)
			p0[j], p1[j] = byte(uint64(v)>>8), byte(v)
		}
	case 4:
		p0, p1, p2, p3 := planes[:n], planes[n:2*n], planes[2*n:3*n], planes[3*n:4*n]
		for j := range p0 {
			v := residual(k, load[T](x, j), load[T](ref, j), loadOr[T](ref2, j))
			nz += nonzero(v)
			p0[j], p1[j], p2[j], p3[j] = byte(uint64(v)>>24), byte(uint64(v)>>16), byte(uint64(v)>>8), byte(v)
		}
	default:
		for j := 0; j < n; j++ {
			v := uint64(residual(k, load[T](x, j), load[T](ref, j), loadOr[T](ref2, j)))
			nz += nonzero(v)
			for p := 0; p < w; p++ {
				planes[p*n+j] = byte(v >> (8 * (w - 1 - p)))
			}
		}
	}
	return nz
}

// scatterResiduals writes the residuals' planes grouped by the buckets in
// bk and counts the non-zero ones.
func scatterResiduals[T word](k Kind, x, ref, ref2, bk []byte, nb int, counts *[MaxContexts]int, planes []byte) int {
	w := size[T]()
	n := len(x) / w
	cur := bucketStarts(nb, counts)
	nz := 0
	bk = bk[:n]
	for j, b := range bk {
		v := uint64(residual(k, load[T](x, j), load[T](ref, j), loadOr[T](ref2, j)))
		nz += nonzero(v)
		o := cur[b&(MaxContexts-1)]
		cur[b&(MaxContexts-1)] = o + 1
		for p := 0; p < w; p++ {
			planes[p*n+o] = byte(v >> (8 * (w - 1 - p)))
		}
	}
	return nz
}

// codeDenseArr codes n values (V each) from vals densely: quantization
// codes, with a header and escapes.
func codeDenseArr[T, V word](s *Scratch, vals []byte, n int, ref []byte, p *Params, ef expField, c ctxCfg, hdr, esc []byte, nesc int) []byte {
	P := size[V]()
	counts := bucketsDense[T](s, ref, n, ef, c)
	s.planes = grow(s.planes, n*P)
	scatter[V](vals, n, s.bk, c.k, &counts, s.planes)
	out := s.outBuf(n*P + nesc*size[T]() + ChunkOverhead(size[T]()))
	out = putCtxHeader(out, c)
	out = append(out, hdr...)
	out = putValueStreams(s, out, P, n, c.k, &counts)
	out = putEscapes[T](s, out, esc, nesc)
	s.keep(out)
	return out
}

// Position codings of a sparse chunk.
const (
	posElias  = 0 // Elias-delta coded gaps (SparseMethodName)
	posBitmap = 1 // one bit per element, least significant bit first
)

// codeSparse codes the m changed values gathered in s.vals (V each) at the
// positions s.pos: the context header, hdr, the positions, the value
// streams and the escapes.
func codeSparse[T, V word](s *Scratch, m, n int, ref []byte, p *Params, ef expField, c ctxCfg, hdr, esc []byte, nesc int) []byte {
	P := size[V]()
	pos := s.pos[:m]
	out := s.alt[:0]
	if need := n/8 + m*(P+5) + nesc*size[T]() + ChunkOverhead(size[T]()); cap(out) < need {
		out = make([]byte, 0, need)
	}
	out = putCtxHeader(out, c)
	out = append(out, hdr...)
	// Positions: the smaller of the two codings.
	s.bits = appendElias(s.bits[:0], pos)
	ma, ca := s.posEnc.Encode(s.pa[:0], s.bits)
	s.pa = ca[:0]
	eliasLen := len(s.bits)
	coding, mth, coded, decLen := byte(posElias), ma, ca, eliasLen
	if m > n/64 {
		s.bits = appendBitmap(s.bits[:0], pos, n)
		mb, cb := s.posEnc.Encode(s.pb[:0], s.bits)
		s.pb = cb[:0]
		if len(cb) < len(ca) {
			coding, mth, coded, decLen = posBitmap, mb, cb, len(s.bits)
		}
	}
	out = append(out, coding, byte(mth), 0, 0, 0, 0, 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(out[len(out)-8:], uint32(len(coded)))
	binary.LittleEndian.PutUint32(out[len(out)-4:], uint32(decLen))
	out = append(out, coded...)
	// Values.
	counts := bucketsSparse[T](s, ref, pos, ef, c)
	s.planes = grow(s.planes, m*P)
	scatter[V](s.vals, m, s.bk, c.k, &counts, s.planes)
	out = putValueStreams(s, out, P, m, c.k, &counts)
	out = putEscapes[T](s, out, esc, nesc)
	s.alt = out
	return out
}

// appendBitmap appends ceil(n/8) bytes: bit j%8 (least significant first)
// of byte j/8 is set iff j is one of pos.
func appendBitmap(dst []byte, pos []uint32, n int) []byte {
	start := len(dst)
	for range (n + 7) / 8 {
		dst = append(dst, 0)
	}
	bm := dst[start:]
	for _, j := range pos {
		bm[j>>3] |= 1 << (j & 7)
	}
	return dst
}
