package entropy

// A huff0 4X decoder that reads up to four symbols per table lookup.
//
// klauspost's Decompress4X reads one symbol per lookup. Exponent planes of
// float weights, most of every keyframe's coded bytes, average 2.5 to 5.5
// bits per symbol, so an 11-bit lookup holds two to four whole codes: a
// table of every tableLog-bit window's complete codes cuts the dependent
// load-shift steps per byte by that factor. The stream format is unchanged
// (docs/FORMAT.md §4, method 2): the tree description is still validated
// by huff0.ReadTable, and a stream is accepted exactly when klauspost's
// decoder accepts it: each of the four bitstreams must yield exactly its
// share of the bytes and consume exactly its bits. Anything this decoder
// refuses is handed to klauspost's, so errors stay its errors.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math/bits"
	"unsafe"

	"github.com/klauspost/compress/fse"
	"github.com/klauspost/compress/huff0"
)

const (
	huffTableLogMax = 11 // huff0's tableLogMax: codes are at most 11 bits
	// multiMinLen is the shortest stream worth the multi-symbol table:
	// building it costs about as much as decoding a few thousand bytes.
	multiMinLen = 8 << 10
	// multiSyms is the most symbols one entry of the table holds.
	multiSyms = 4
	// multiMaxBits is the most coded bits per byte at which the
	// multi-symbol loop beats klauspost's: about 1.5x at 5.6 bits (fp16
	// exponent planes; BenchmarkHuffDecode's "medium", 128 KiB) and even at
	// 7 bits ("wide"), where its lookups are dearer and seldom hold two
	// symbols. It paid on fp16 planes only once klauspost's own table
	// stopped being built beside it for every chunk (decodeHuff0).
	multiMaxBits = 6.5
)

// huffMulti is the scratch of the multi-symbol decoder.
type huffMulti struct {
	fse     fse.Scratch
	weights [256]byte
	single  [1 << huffTableLogMax]uint16 // symbol<<8 | code length
	// multi[window] is, for the top 11 bits of the container, the
	// complete codes they hold (up to multiSyms): symbols in bits 0-31
	// (first symbol lowest), bits consumed in byte 6, symbol count in
	// byte 7 (huff4x_amd64.s).
	multi [1 << huffTableLogMax]uint64
	// desc is the tree description single and multi were built from:
	// neighbouring chunks of a tensor often carry the same one, and
	// rebuilding the table cost up to a tenth of decoding a bf16 tensor.
	desc     []byte
	descLog  uint
	descGood bool
	// fit[r] is the first index of single whose code is at most r bits
	// long (1<<tableLog if none): codes are laid out longest first
	// (readWeights), so every index below it holds a longer code.
	fit [huffTableLogMax + 1]uint32
}

// huffDescLen is the length of the tree description that starts a huff0
// block, as its first byte gives it (huff0's ReadTable: 4-bit weights
// when it is 128 or more, else that many bytes of FSE-coded weights).
func huffDescLen(src []byte) (int, bool) {
	if len(src) < 2 {
		return 0, false
	}
	n := 1 + int(src[0])
	if src[0] >= 128 {
		n = 1 + (int(src[0])-127+1)/2
	}
	return n, n < len(src)
}

// readWeights parses the Huffman tree description at the start of src (one
// that huff0.ReadTable accepted) into h.single, and returns the table log.
// ok is false where the description does not parse as ReadTable's did.
func (h *huffMulti) readWeights(src []byte) (tableLog uint, ok bool) {
	if len(src) < 2 {
		return 0, false
	}
	hdr := int(src[0])
	src = src[1:]
	var w []byte
	if hdr >= 128 {
		n := hdr - 127
		if (n+1)/2 > len(src) {
			return 0, false
		}
		for i := 0; i < n; i += 2 {
			v := src[i/2]
			h.weights[i] = v >> 4
			if i+1 < len(h.weights) {
				h.weights[i+1] = v & 15
			}
		}
		w = h.weights[:n]
	} else {
		if hdr > len(src) {
			return 0, false
		}
		h.fse.DecompressLimit = 255
		h.fse.Out = h.weights[:]
		b, err := fse.Decompress(src[:hdr], &h.fse)
		h.fse.Out = nil
		if err != nil || len(b) > 255 || (len(b) > 0 && &b[0] != &h.weights[0]) {
			return 0, false
		}
		w = h.weights[:len(b)]
	}
	var rank [huffTableLogMax + 2]uint32
	total := uint32(0)
	for _, v := range w {
		if v > huffTableLogMax {
			return 0, false
		}
		rank[v]++
		if v > 0 {
			total += 1 << (v - 1)
		}
	}
	if total == 0 {
		return 0, false
	}
	tableLog = uint(bits.Len32(total)) // highBit32(total) + 1
	if tableLog > huffTableLogMax {
		return 0, false
	}
	rest := uint32(1)<<tableLog - total
	if rest&(rest-1) != 0 {
		return 0, false
	}
	last := uint8(bits.Len32(rest)) // weight of the implied last symbol
	if len(w) >= 256 {
		return 0, false
	}
	h.weights[len(w)] = last
	w = h.weights[:len(w)+1]
	rank[last]++
	if rank[1] < 2 || rank[1]&1 != 0 {
		return 0, false
	}
	// Codes of weight 1 (the longest) come first in the table, as in
	// huff0's ReadTable.
	start := uint32(0)
	for n := uint(1); n <= tableLog; n++ {
		c := rank[n]
		rank[n] = start
		start += c << (n - 1)
	}
	// Weight n is a code of tableLog+1-n bits, so codes of at most r bits
	// start where weight tableLog+1-r does.
	for r := range h.fit {
		switch n := int(tableLog) + 1 - r; {
		case n > int(tableLog):
			h.fit[r] = 1 << tableLog
		case n <= 1:
			h.fit[r] = 0
		default:
			h.fit[r] = rank[n]
		}
	}
	for sym, v := range w {
		if v == 0 {
			continue
		}
		e := uint16(sym)<<8 | uint16(tableLog+1-uint(v))
		lo, n := rank[v], uint32(1)<<(v-1)
		if lo+n > 1<<tableLog {
			return 0, false
		}
		for i := lo; i < lo+n; i++ {
			h.single[i] = e
		}
		rank[v] += n
	}
	return tableLog, true
}

// buildMulti fills h.multi from h.single, codes of at most tl bits, for an
// 11-bit window: the window, not tl, bounds how many codes one lookup
// reads, so short tables (a plane of few distinct bytes) get the most
// symbols per lookup too. It walks the code tree once, writing each entry
// once: decoding entry by entry cost more than decoding a 16 KiB plane.
func (h *huffMulti) buildMulti(tl uint) {
	h.fillMulti(tl, 0, huffTableLogMax, 0, 0, 0)
}

// fillMulti fills the entries [base, base+2^r), which share k decoded
// symbols (syms, used bits) and differ in their r remaining bits.
func (h *huffMulti) fillMulti(tl, base, r, used uint, syms uint64, k int) {
	done := syms | uint64(used)<<48 | uint64(k)<<56
	if k == multiSyms {
		m := h.multi[base : base+1<<r]
		for i := range m {
			m[i] = done
		}
		return
	}
	// Below first, the next code is longer than the r bits left: those
	// entries end with the symbols so far (k >= 1 there, as every code
	// fits an empty window). Codes are laid out longest first, and the
	// codes of one length in a complete code start on a multiple of their
	// size, so these windows are one run, filled without a branch each.
	var first uint
	if fit := uint(h.fit[r]); r >= tl {
		first = fit << (r - tl)
	} else {
		first = (fit + 1<<(tl-r) - 1) >> (tl - r)
	}
	first = min(first, 1<<r)
	m := h.multi[base : base+first]
	for i := range m {
		m[i] = done
	}
	for x := first; x < 1<<r; {
		// The next code is read from the top tl bits of the r remaining
		// ones (zeros below them where r < tl).
		var si uint
		if r >= tl {
			si = x >> (r - tl)
		} else {
			si = x << (tl - r)
		}
		e := h.single[si]
		l := uint(e & 0xff)
		if l > r {
			// Not reached for a table readWeights built; kept so that
			// any other layout still gets greedy entries.
			h.multi[base+x] = done
			x++
			continue
		}
		next, left := syms|uint64(e>>8)<<(8*k), r-l
		if k+1 == multiSyms || h.fit[left] == 1<<tl {
			// The entry is full, or no code fits the bits left: the
			// range ends here, filled without a call. Most ranges of
			// a wide plane's table are such leaves.
			leaf := next | uint64(used+l)<<48 | uint64(k+1)<<56
			m := h.multi[base+x : base+x+1<<left]
			for i := range m {
				m[i] = leaf
			}
		} else {
			h.fillMulti(tl, base+x, left, used+l, next, k+1)
		}
		x += 1 << left
	}
}

// bitStream is one backward huff0 bitstream: value holds the 8 bytes at
// in[off:off+8] shifted left by used, so its top bits are the next code.
type bitStream struct {
	in    []byte
	off   int
	used  uint
	value uint64
}

func (b *bitStream) init(in []byte) bool {
	if len(in) < 8 || in[len(in)-1] == 0 {
		return false // short streams: left to klauspost's decoder
	}
	b.in, b.off = in, len(in)-8
	// The highest set bit of the last byte marks the end; it and the zero
	// bits above it are not data.
	b.used = uint(8 - bits.Len8(in[len(in)-1]) + 1)
	b.value = binary.LittleEndian.Uint64(in[b.off:]) << b.used
	return true
}

// remaining is how many data bits the stream still holds.
func (b *bitStream) remaining() uint { return uint(b.off)*8 + 64 - b.used }

// decode4X decodes the huff0 4X block src (tree description first) into
// dst, all of it, and reports whether it could; on false dst holds
// unspecified bytes and the caller decodes with klauspost's decoder.
func (h *huffMulti) decode4X(src, rem, dst []byte) bool {
	if !haveMulti {
		return false
	}
	if len(rem) < 6+4 {
		return false
	}
	desc := src[:len(src)-len(rem)]
	tl := h.descLog
	if !h.descGood || !bytes.Equal(desc, h.desc) {
		var ok bool
		h.descGood = false
		if tl, ok = h.readWeights(desc); !ok {
			return false
		}
		h.buildMulti(tl)
		h.desc, h.descLog, h.descGood = append(h.desc[:0], desc...), tl, true
	}
	var st [4]bitStream
	start := 6
	for i := 0; i < 3; i++ {
		n := int(binary.LittleEndian.Uint16(rem[2*i:]))
		if start+n >= len(rem) || !st[i].init(rem[start:start+n]) {
			return false
		}
		start += n
	}
	if !st[3].init(rem[start:]) {
		return false
	}
	every := (len(dst) + 3) / 4
	if 3*every >= len(dst) {
		return false // stream 3 would be empty
	}
	var o, end [4]int
	for i := range o {
		o[i], end[i] = i*every, min((i+1)*every, len(dst))
	}
	h.fast4(&st, &o, &end, dst)
	for i := range st {
		if !h.tail(&st[i], dst[o[i]:end[i]], tl) {
			return false
		}
	}
	return true
}

// huffCtx is huff4x's argument block (huff4x_amd64.s reads it by offset).
type huffCtx struct {
	tbl  *uint64   // 0: huffMulti.multi
	ip   [4]*byte  // 8: each stream's window, at in[off]
	lo   [4]*byte  // 40: the lowest window that still leaves a full reload
	op   [4]*byte  // 72: output pointers
	lim  [4]*byte  // 104: the highest output pointer with room for a round
	used [4]uint64 // 136: bits used of the window (at most 7 on entry)
}

// fast4 decodes the four streams in lockstep with the assembly kernel
// while each has a full 8-byte window of its own input left below its read
// position and room for a whole round of output (5 lookups, each storing
// 8 bytes and advancing up to 4). It advances the streams and their output offsets, leaving each
// stream with at most 7 bits used of its window.
func (h *huffMulti) fast4(st *[4]bitStream, o *[4]int, end *[4]int, dst []byte) {
	// A round advances at most 5 lookups of 4 bytes and its last lookup
	// stores 8 bytes; one byte more keeps the output pointers inside dst
	// (a pointer one past its end could name another object for the
	// garbage collector).
	const round = 4*multiSyms + 8 + 1
	ctx := huffCtx{tbl: &h.multi[0]}
	for i := range st {
		s := &st[i]
		if s.used > 7 {
			s.off--
			s.used -= 8
		}
		if s.off < 8 || o[i] > end[i]-round {
			return
		}
		ctx.ip[i], ctx.lo[i] = &s.in[s.off], &s.in[8]
		ctx.op[i], ctx.lim[i] = &dst[o[i]], &dst[end[i]-round]
		ctx.used[i] = uint64(s.used)
	}
	huff4x(&ctx)
	for i := range st {
		s := &st[i]
		s.off = int(uintptr(unsafe.Pointer(ctx.ip[i])) - uintptr(unsafe.Pointer(&s.in[0])))
		o[i] = int(uintptr(unsafe.Pointer(ctx.op[i])) - uintptr(unsafe.Pointer(&dst[0])))
		s.used = uint(ctx.used[i])
		back := min(int(s.used>>3), s.off)
		s.off -= back
		s.used -= uint(back) * 8
		s.value = binary.LittleEndian.Uint64(s.in[s.off:]) << s.used
	}
}

// tail decodes the rest of one stream a symbol at a time into out, which
// it must fill exactly while consuming exactly the stream's remaining bits.
func (h *huffMulti) tail(s *bitStream, out []byte, tl uint) bool {
	left := s.remaining()
	shift := 64 - tl
	for i := range out {
		if left == 0 {
			return false // bits ran out before the bytes
		}
		if s.used >= 32 {
			// Refill: read the window below, or zero bits past the
			// stream's start, which a valid stream never consumes.
			back := min(int(s.used>>3), s.off)
			s.off -= back
			s.used -= uint(back) * 8
			s.value = binary.LittleEndian.Uint64(s.in[s.off:]) << s.used
		}
		e := h.single[(s.value>>shift)&(1<<huffTableLogMax-1)]
		nb := uint(e & 0xff)
		if nb > left {
			return false // a code reaching past the stream's start
		}
		out[i] = byte(e >> 8)
		s.value <<= nb
		s.used += nb
		left -= nb
	}
	return left == 0
}

// decodeHuff0 decodes the huff0 4X block src (tree description first) into
// exactly len(dst) bytes, with the multi-symbol decoder where it applies;
// blocks that decoder does not accept get klauspost's decoder and its
// error.
func (d *Decoder) decodeHuff0(src, dst []byte) error {
	// The multi-symbol decoder reads the tree description itself (and
	// skips it when a neighbouring chunk's was the same), so klauspost's
	// table, which ReadTable builds, is built only for blocks it does not
	// take: building both cost every chunk a table it did not use.
	if n, ok := huffDescLen(src); ok && len(dst) >= multiMinLen &&
		float64(len(src)-n)*8 <= multiMaxBits*float64(len(dst)) {
		if d.multi == nil {
			d.multi = new(huffMulti)
		}
		if d.multi.decode4X(src, src[n:], dst) {
			return nil
		}
	}
	s, rem, err := huff0.ReadTable(src, &d.huff)
	if err != nil {
		return fmt.Errorf("%w: huff0 table: %v", ErrCorrupt, err)
	}
	out, err := s.Decoder().Decompress4X(dst[:0:len(dst)], rem)
	if err != nil {
		return fmt.Errorf("%w: huff0: %v", ErrCorrupt, err)
	}
	if len(out) != len(dst) {
		return fmt.Errorf("%w: huff0 gave %d bytes, want %d", ErrCorrupt, len(out), len(dst))
	}
	return nil
}
