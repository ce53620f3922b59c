package delta

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/bits"

	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: delta chunk: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// reader walks a chunk payload; every read is bounds checked.
type reader struct {
	b   []byte
	off int
}

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.off {
		return nil, corrupt("payload truncated: %d bytes needed at offset %d of %d", n, r.off, len(r.b))
	}
	out := r.b[r.off : r.off+n]
	r.off += n
	return out, nil
}

// stream reads method, stored_len and the stored bytes and decodes them into
// exactly len(dst) bytes.
func (r *reader) stream(dec *entropy.Decoder, dst []byte, what string) error {
	h, err := r.take(streamHdr)
	if err != nil {
		return err
	}
	m := entropy.Method(h[0])
	n := binary.LittleEndian.Uint32(h[1:])
	if m > entropy.MaxMethod {
		return fmt.Errorf("%w: delta chunk: %s: stream method %d", errs.Unsupported, what, h[0])
	}
	if uint64(n) > uint64(len(dst)) {
		return corrupt("%s: %d stored bytes for a %d-byte stream", what, n, len(dst))
	}
	src, err := r.take(int(n))
	if err != nil {
		return err
	}
	if err := dec.Decode(m, src, dst); err != nil {
		return fmt.Errorf("delta chunk: %s: %w", what, err)
	}
	return nil
}

// Decode reconstructs one chunk into dst (its raw length) from its mode,
// count and payload and the same chunk of the reference(s). p carries the
// frame's dtype, residual kind and quantization (Threshold is not used).
// It checks everything it reads; the caller checks the chunk's CRCs.
func (s *Scratch) Decode(mode Mode, count uint32, payload, ref, ref2, dst []byte, p *Params) error {
	switch p.DType.Width() {
	case 1:
		return decodeT[uint8](s, mode, count, payload, ref, ref2, dst, p)
	case 2:
		return decodeT[uint16](s, mode, count, payload, ref, ref2, dst, p)
	case 4:
		return decodeT[uint32](s, mode, count, payload, ref, ref2, dst, p)
	default:
		return decodeT[uint64](s, mode, count, payload, ref, ref2, dst, p)
	}
}

func decodeT[T word](s *Scratch, mode Mode, count uint32, payload, ref, ref2, dst []byte, p *Params) error {
	w := size[T]()
	n := len(dst) / w
	quant := mode == DenseQ || mode == SparseQ
	switch {
	case mode > MaxMode:
		return fmt.Errorf("%w: delta chunk mode %d", errs.Unsupported, mode)
	case quant && p.QuantBits == 0:
		return corrupt("quantized chunk in a frame without quantization")
	case mode == Copy:
		if count != 0 || len(payload) != 0 {
			return corrupt("copy chunk with %d changed elements and %d payload bytes", count, len(payload))
		}
		fillBase[T](p.Kind, ref, ref2, dst)
		return nil
	case count == 0 || uint64(count) > uint64(n):
		return corrupt("%d changed elements in a chunk of %d", count, n)
	}
	sparse := mode == Sparse || mode == SparseQ
	cnt := n // coded values
	if sparse {
		cnt = int(count)
	}
	rd := reader{b: payload}
	// Context header.
	h, err := rd.take(ctxHdrLen)
	if err != nil {
		return err
	}
	ef := expFieldOf(p.DType)
	c := ctxCfg{k: int(h[0]), lo: int(binary.LittleEndian.Uint16(h[2:]))}
	switch {
	case c.k < 1 || c.k > MaxContexts:
		return corrupt("%d contexts (1 to %d)", c.k, MaxContexts)
	case h[1] != 0:
		return corrupt("reserved context byte is not zero")
	case c.k > 1 && ef.mask == 0:
		return corrupt("%d contexts for %s, which has no exponent", c.k, p.DType)
	case c.k == 1 && c.lo != 0:
		return corrupt("context base %d with one context", c.lo)
	case uint64(c.lo) > ef.mask:
		return corrupt("context base %d beyond the exponent range", c.lo)
	}
	// Quantization header.
	var scale float64
	nesc := 0
	if quant {
		h, err := rd.take(quantHdrLen)
		if err != nil {
			return err
		}
		scale = math.Float64frombits(binary.LittleEndian.Uint64(h))
		esc := binary.LittleEndian.Uint32(h[8:])
		if !(scale > 0) || math.IsInf(scale, 0) {
			return corrupt("quantization scale %v", scale)
		}
		if uint64(esc) > uint64(cnt) {
			return corrupt("%d escapes among %d codes", esc, cnt)
		}
		nesc = int(esc)
	}
	// Positions.
	var pos []uint32
	if sparse {
		h, err := rd.take(posHdrLen)
		if err != nil {
			return err
		}
		coding, m := h[0], entropy.Method(h[1])
		sl := binary.LittleEndian.Uint32(h[2:])
		dl := binary.LittleEndian.Uint32(h[6:])
		var want uint64
		switch coding {
		case posElias:
			// At most maxEliasBits per gap, and at most 2 bits per element
			// of the chunk (a code of g bits is at most 2g bits long,
			// reached at g = 2); decodeElias checks the rest exactly.
			want = min((uint64(count)*maxEliasBits+7)/8, (uint64(n)+3)/4)
			if uint64(dl) > want || dl == 0 {
				return corrupt("positions: %d bytes of Elias-delta codes for %d gaps", dl, count)
			}
		case posBitmap:
			if want = (uint64(n) + 7) / 8; uint64(dl) != want {
				return corrupt("positions: %d-byte bitmap for %d elements", dl, n)
			}
		default:
			return fmt.Errorf("%w: delta chunk: position coding %d", errs.Unsupported, coding)
		}
		if m > entropy.MaxMethod {
			return fmt.Errorf("%w: delta chunk: positions: stream method %d", errs.Unsupported, h[1])
		}
		if sl > dl {
			return corrupt("positions: %d stored bytes for a %d-byte stream", sl, dl)
		}
		src, err := rd.take(int(sl))
		if err != nil {
			return err
		}
		s.bits = grow(s.bits, int(dl))
		if err := s.dec.Decode(m, src, s.bits); err != nil {
			return fmt.Errorf("delta chunk: positions: %w", err)
		}
		if cap(s.pos) < cnt {
			s.pos = make([]uint32, cnt)
		}
		pos = s.pos[:cnt]
		if coding == posElias {
			err = decodeElias(s.bits, pos, n)
		} else {
			err = decodeBitmap(s.bits, pos, n)
		}
		if err != nil {
			return err
		}
	}
	// Buckets and value streams.
	var counts [MaxContexts]int
	if sparse {
		counts = bucketsSparse[T](s, ref, pos, ef, c)
	} else {
		counts = bucketsDense[T](s, ref, n, ef, c)
	}
	P := w
	if quant {
		P = 1
	}
	s.planes = grow(s.planes, cnt*P)
	off := 0
	for b := 0; b < c.k; b++ {
		if counts[b] == 0 {
			continue
		}
		for pl := 0; pl < P; pl++ {
			if err := rd.stream(&s.dec, s.planes[pl*cnt+off:pl*cnt+off+counts[b]], "values"); err != nil {
				return err
			}
		}
		off += counts[b]
	}
	if nesc > 0 {
		s.esc = grow(s.esc, nesc*w)
		for pl := 0; pl < w; pl++ {
			if err := rd.stream(&s.dec, s.esc[pl*nesc:(pl+1)*nesc], "escapes"); err != nil {
				return err
			}
		}
	}
	if rd.off != len(payload) {
		return corrupt("%d bytes after the last stream", len(payload)-rd.off)
	}
	// Reconstruction.
	var bk []byte
	if c.k > 1 {
		bk = s.bk[:cnt]
	}
	if !quant {
		if sparse {
			return applySparse[T](p.Kind, s.planes, cnt, bk, c.k, &counts, pos, ref, ref2, dst)
		}
		var nz int
		switch {
		case c.k == 1 && p.Kind != Pred && w == 2:
			nz = merge2(p.Kind == Diff, s.planes[:n], s.planes[n:2*n], ref, dst)
		case c.k == 1 && p.Kind != Pred && w == 4:
			nz = merge4(p.Kind == Diff, s.planes[:n], s.planes[n:2*n], s.planes[2*n:3*n], s.planes[3*n:4*n], ref, dst)
		case p.Kind != Pred && w == 2:
			nz = gather2(p.Kind == Diff, s.planes[:n], s.planes[n:2*n], bk, &s.qcounts, c.k, ref, dst)
		case p.Kind != Pred && w == 4:
			nz = gather4(p.Kind == Diff, s.planes[:n], s.planes[n:2*n], s.planes[2*n:3*n], s.planes[3*n:4*n], bk, &s.qcounts, c.k, ref, dst)
		default:
			nz = applyDense[T](p.Kind, s.planes, n, bk, c.k, &counts, ref, ref2, dst)
		}
		if nz != int(count) {
			return corrupt("%d changed elements decoded, %d recorded", nz, count)
		}
		return nil
	}
	return applyQuant[T](p, s.planes, cnt, bk, c.k, &counts, pos, count, scale, s.esc, nesc, ref, ref2, dst)
}

// decodeBitmap lists the set bits of a bitmap of n elements in pos, which
// must be exactly their number; padding bits must be zero.
func decodeBitmap(bm []byte, pos []uint32, n int) error {
	if n%8 != 0 && bm[len(bm)-1]>>(n%8) != 0 {
		return corrupt("positions: bitmap padding bits are set")
	}
	m := 0
	i := 0
	for ; i+8 <= len(bm); i += 8 {
		word := binary.LittleEndian.Uint64(bm[i:])
		for word != 0 {
			if m == len(pos) {
				return corrupt("positions: bitmap has more than the %d recorded bits", len(pos))
			}
			pos[m] = uint32(8*i + bits.TrailingZeros64(word))
			m++
			word &= word - 1
		}
	}
	for ; i < len(bm); i++ {
		b := bm[i]
		for b != 0 {
			if m == len(pos) {
				return corrupt("positions: bitmap has more than the %d recorded bits", len(pos))
			}
			pos[m] = uint32(8*i + bits.TrailingZeros8(b))
			m++
			b &= b - 1
		}
	}
	if m != len(pos) {
		return corrupt("positions: bitmap has %d bits, %d recorded", m, len(pos))
	}
	return nil
}

// fillBase writes every element's base into dst.
func fillBase[T word](k Kind, ref, ref2, dst []byte) {
	if k != Pred {
		copy(dst, ref)
		return
	}
	n := len(dst) / size[T]()
	for j := 0; j < n; j++ {
		store(dst, j, predict(load[T](ref, j), load[T](ref2, j)))
	}
}

// gatherAt assembles the value at plane offset o.
func gatherAt[T word](planes []byte, cnt, o int) T {
	P := size[T]()
	var v uint64
	for p := 0; p < P; p++ {
		v = v<<8 | uint64(planes[p*cnt+o])
	}
	return T(v)
}

func bucketStarts(k int, counts *[MaxContexts]int) (cur [MaxContexts]int) {
	off := 0
	for b := 0; b < k; b++ {
		cur[b] = off
		off += counts[b]
	}
	return cur
}

// applyDense reconstructs every element and returns how many residuals were
// not zero.
func applyDense[T word](kind Kind, planes []byte, n int, bk []byte, k int, counts *[MaxContexts]int, ref, ref2, dst []byte) int {
	nz := 0
	bits := 8*size[T]() - 1
	if k == 1 {
		for j := 0; j < n; j++ {
			v := gatherAt[T](planes, n, j)
			nz += int(uint64(v|-v) >> bits)
			store(dst, j, apply(kind, v, load[T](ref, j), loadOr[T](ref2, j)))
		}
		return nz
	}
	cur := bucketStarts(k, counts)
	for j := 0; j < n; j++ {
		b := bk[j] & (MaxContexts - 1)
		o := cur[b]
		cur[b]++
		v := gatherAt[T](planes, n, o)
		nz += int(uint64(v|-v) >> bits)
		store(dst, j, apply(kind, v, load[T](ref, j), loadOr[T](ref2, j)))
	}
	return nz
}

func applySparse[T word](kind Kind, planes []byte, cnt int, bk []byte, k int, counts *[MaxContexts]int, pos []uint32, ref, ref2, dst []byte) error {
	fillBase[T](kind, ref, ref2, dst)
	cur := bucketStarts(k, counts)
	for i, j32 := range pos {
		b := 0
		if k > 1 {
			b = int(bk[i] & (MaxContexts - 1))
		}
		o := cur[b]
		cur[b]++
		v := gatherAt[T](planes, cnt, o)
		if v == 0 {
			return corrupt("zero residual listed as changed at element %d", j32)
		}
		j := int(j32)
		store(dst, j, apply(kind, v, load[T](ref, j), loadOr[T](ref2, j)))
	}
	return nil
}

func applyQuant[T word](p *Params, codes []byte, cnt int, bk []byte, k int, counts *[MaxContexts]int, pos []uint32, count uint32, scale float64, esc []byte, nesc int, ref, ref2, dst []byte) error {
	f := formatOf(p.DType)
	escape := escCode(p.QuantBits)
	qmax := qMax(p.QuantBits)
	sparse := pos != nil
	if sparse {
		fillBase[T](p.Kind, ref, ref2, dst)
	}
	cur := bucketStarts(k, counts)
	used, nz := 0, 0
	for i := 0; i < cnt; i++ {
		b := 0
		if k > 1 {
			b = int(bk[i] & (MaxContexts - 1))
		}
		o := cur[b]
		cur[b]++
		q := int8(codes[o])
		j := i
		if sparse {
			j = int(pos[i])
			if q == 0 {
				return corrupt("zero code listed as changed at element %d", j)
			}
		}
		bs := base[T](p.Kind, ref, ref2, j)
		switch {
		case q == 0:
			store(dst, j, bs)
		case q == escape:
			if used == nesc {
				return corrupt("more escape codes than the %d escapes", nesc)
			}
			v := gatherAt[T](esc, nesc, used)
			used++
			nz++
			store(dst, j, apply(p.Kind, v, load[T](ref, j), loadOr[T](ref2, j)))
		case int(q) >= -qmax && int(q) <= qmax:
			nz++
			store(dst, j, T(quantRecon(f, f.value(uint64(bs)), int(q), scale)))
		default:
			return corrupt("quantization code %d out of range for %d bits", q, p.QuantBits)
		}
	}
	if used != nesc {
		return corrupt("%d escape codes for %d escapes", used, nesc)
	}
	if nz != int(count) {
		return corrupt("%d changed elements decoded, %d recorded", nz, count)
	}
	return nil
}
