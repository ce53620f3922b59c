package delta

import (
	"encoding/binary"
	"math"
)

// Lossy coding (float dtypes only, opt-in). With threshold t > 0, an element
// whose real value c is within t of its base b (|c - b| <= t, computed in
// binary64) is reconstructed as b: its residual becomes zero. The others are
// coded exactly, or, with quantization, as a code q of a per-chunk scale s:
// the reconstruction is round(b + q*s) (float.go), accepted only when it is
// within t of c; otherwise the element escapes and is coded exactly. Every
// element's reconstruction is thus within t of the input: the frame's bound.
// NaNs and infinities are never approximated.

// threshold writes the reconstruction of cur into x and returns the largest
// error it makes.
func threshold[T word](cur, ref, ref2, x []byte, p *Params) float64 {
	f := formatOf(p.DType)
	t := p.Threshold
	n := len(cur) / size[T]()
	maxErr := 0.0
	for j := 0; j < n; j++ {
		c := load[T](cur, j)
		b := base[T](p.Kind, ref, ref2, j)
		if c == b {
			store(x, j, c)
			continue
		}
		d := math.Abs(f.value(uint64(c)) - f.value(uint64(b)))
		if d <= t { // false for NaN
			store(x, j, b)
			maxErr = max(maxErr, d)
		} else {
			store(x, j, c)
		}
	}
	return maxErr
}

// quantize codes a chunk with quantization codes (one byte each, in s.res),
// exact residuals for the escaped elements (s.esc), the reconstruction in
// s.x.
func quantize[T word](s *Scratch, cur, ref, ref2 []byte, p *Params) (Result, error) {
	f := formatOf(p.DType)
	t := p.Threshold
	scale := 2 * t
	qmax := float64(qMax(p.QuantBits))
	escape := byte(escCode(p.QuantBits))
	w := size[T]()
	n := len(cur) / w
	s.codes = grow(s.codes, n)
	s.x = grow(s.x, len(cur))
	s.esc = grow(s.esc, len(cur))
	codes, x := s.codes, s.x
	nesc, nz := 0, 0
	maxErr := 0.0
	for j := 0; j < n; j++ {
		c := load[T](cur, j)
		b := base[T](p.Kind, ref, ref2, j)
		if c == b {
			codes[j] = 0
			store(x, j, c)
			continue
		}
		vc, vb := f.value(uint64(c)), f.value(uint64(b))
		d := vc - vb
		if math.Abs(d) <= t {
			codes[j] = 0
			store(x, j, b)
			maxErr = max(maxErr, math.Abs(d))
			continue
		}
		nz++
		if finite(vc) && finite(vb) {
			qf := math.Round(d / scale)
			if qf != 0 && math.Abs(qf) <= qmax {
				rb := quantRecon(f, vb, int(qf), scale)
				if e := math.Abs(vc - f.value(rb)); e <= t {
					codes[j] = byte(int8(qf))
					store(x, j, T(rb))
					maxErr = max(maxErr, e)
					continue
				}
			}
		}
		codes[j] = escape
		store(x, j, c)
		store(s.esc, nesc, residual(p.Kind, c, load[T](ref, j), loadOr[T](ref2, j)))
		nesc++
	}
	r := Result{Recon: x, MaxErr: maxErr, Count: uint32(nz)}
	if nz == 0 {
		r.Mode = Copy
		return r, nil
	}
	var hdr [quantHdrLen]byte
	binary.LittleEndian.PutUint64(hdr[:], math.Float64bits(scale))
	binary.LittleEndian.PutUint32(hdr[8:], uint32(nesc))
	ef := contextField(p)
	ns := sampleCodes[T](s, codes, ref)
	pl := makePlan[T, uint8](s, ns, n, p, ef)
	var dense, sparse []byte
	if pl.trySparse {
		if cap(s.pos) < n {
			s.pos = make([]uint32, n)
		}
		s.vals = grow(s.vals, n)
		m := gatherCodes(s, codes)
		sparse = codeSparse[T, uint8](s, m, n, ref, p, ef, pl.sparse, hdr[:], s.esc, nesc)
	}
	if pl.tryDense || sparse == nil {
		dense = codeDenseArr[T, uint8](s, codes, n, ref, p, ef, pl.dense, hdr[:], s.esc, nesc)
	}
	if sparse != nil && (dense == nil || len(sparse) < len(dense)) {
		r.Mode, r.Payload, r.Contexts = SparseQ, sparse, pl.sparse.k
	} else {
		r.Mode, r.Payload, r.Contexts = DenseQ, dense, pl.dense.k
	}
	return r, nil
}

// loadOr loads element j of b, or returns 0 when b is empty (no second
// reference).
func loadOr[T word](b []byte, j int) T {
	if len(b) == 0 {
		return 0
	}
	return load[T](b, j)
}
