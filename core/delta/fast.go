package delta

import (
	"encoding/binary"
	"math/bits"
)

// Fast paths for the common case: one context bucket, residual kind XOR or
// Diff, 2- and 4-byte elements (BF16, F16, F32, 16/32-bit integers). They
// compute exactly what splitResiduals and applyDense compute generically
// (the tests compare them), several elements per 64-bit word (SWAR).

const (
	hi16 = 0x8000_8000_8000_8000
	lo16 = 0x0001_0001_0001_0001
	m15  = 0x7FFF_7FFF_7FFF_7FFF
	hi32 = 0x8000_0000_8000_0000
	lo32 = 0x0000_0001_0000_0001
	m31  = 0x7FFF_FFFF_7FFF_FFFF
)

// sub16 subtracts four 16-bit lanes without borrows between them.
func sub16(a, b uint64) uint64 { return ((a | hi16) - (b &^ hi16)) ^ ((a ^ ^b) & hi16) }

// add16 adds four 16-bit lanes without carries between them.
func add16(a, b uint64) uint64 { return ((a & m15) + (b & m15)) ^ ((a ^ b) & hi16) }

func zigzag16(d uint64) uint64 { return ((d << 1) &^ lo16) ^ (((d >> 15) & lo16) * 0xFFFF) }

func unzigzag16(z uint64) uint64 { return ((z >> 1) & m15) ^ ((z & lo16) * 0xFFFF) }

// nonzero16 counts the non-zero 16-bit lanes.
func nonzero16(z uint64) int { return bits.OnesCount64((((z & m15) + m15) | z) & hi16) }

func sub32(a, b uint64) uint64 { return ((a | hi32) - (b &^ hi32)) ^ ((a ^ ^b) & hi32) }

func add32(a, b uint64) uint64 { return ((a & m31) + (b & m31)) ^ ((a ^ b) & hi32) }

func zigzag32(d uint64) uint64 { return ((d << 1) &^ lo32) ^ (((d >> 31) & lo32) * 0xFFFF_FFFF) }

func unzigzag32(z uint64) uint64 { return ((z >> 1) & m31) ^ ((z & lo32) * 0xFFFF_FFFF) }

func nonzero32(z uint64) int { return bits.OnesCount64((((z & m31) + m31) | z) & hi32) }

// spread16 moves the 4 bytes of x into the low byte of each 16-bit lane.
func spread16(x uint64) uint64 {
	x = (x | x<<16) & 0x0000FFFF_0000FFFF
	return (x | x<<8) & 0x00FF00FF_00FF00FF
}

// Each of split2, merge2, split4 and merge4 is a wrapper (inlined) of a
// *With function that takes whether to run the SSE2 kernels first. With
// vector false only the SWAR and scalar loops run, as on other
// architectures, so the tests can compare both paths on the same input on
// amd64; the choice costs one branch per call, not per element.

// split2 writes the planes of the residuals of 2-byte elements and returns
// how many residuals are not zero and the OR of all of them.
func split2(diff bool, x, ref, p0, p1 []byte) (int, uint64) {
	return split2With(true, diff, x, ref, p0, p1)
}

func split2With(vector, diff bool, x, ref, p0, p1 []byte) (int, uint64) {
	n := len(p0)
	p1 = p1[:n]
	x, ref = x[:2*n], ref[:2*n]
	var j, zeros int
	var or uint64
	if vector {
		j, zeros, or = vectorSplit2(diff, x, ref, p0, p1)
	}
	nz := j - zeros
	for ; j+4 <= n; j += 4 {
		a := binary.LittleEndian.Uint64(x[2*j:])
		b := binary.LittleEndian.Uint64(ref[2*j:])
		z := a ^ b
		if diff {
			z = zigzag16(sub16(a, b))
		}
		or |= z
		binary.LittleEndian.PutUint32(p0[j:], uint32(z>>8&0xFF|z>>16&0xFF00|z>>24&0xFF0000|z>>32&0xFF000000))
		binary.LittleEndian.PutUint32(p1[j:], uint32(z&0xFF|z>>8&0xFF00|z>>16&0xFF0000|z>>24&0xFF000000))
		nz += nonzero16(z)
	}
	for ; j < n; j++ {
		c, r := binary.LittleEndian.Uint16(x[2*j:]), binary.LittleEndian.Uint16(ref[2*j:])
		z := c ^ r
		if diff {
			z = zigzag(c - r)
		}
		p0[j], p1[j] = byte(z>>8), byte(z)
		nz += nonzero(z)
		or |= uint64(z)
	}
	return nz, or
}

// merge2 inverts split2 into dst and counts the non-zero residuals.
func merge2(diff bool, p0, p1, ref, dst []byte) int {
	return merge2With(true, diff, p0, p1, ref, dst)
}

func merge2With(vector, diff bool, p0, p1, ref, dst []byte) int {
	n := len(p0)
	p1 = p1[:n]
	ref, dst = ref[:2*n], dst[:2*n]
	var j, zeros int
	if vector {
		j, zeros = vectorMerge2(diff, p0, p1, ref, dst)
	}
	nz := j - zeros
	for ; j+4 <= n; j += 4 {
		z := spread16(uint64(binary.LittleEndian.Uint32(p0[j:])))<<8 | spread16(uint64(binary.LittleEndian.Uint32(p1[j:])))
		r := binary.LittleEndian.Uint64(ref[2*j:])
		var c uint64
		if diff {
			c = add16(r, unzigzag16(z))
		} else {
			c = r ^ z
		}
		binary.LittleEndian.PutUint64(dst[2*j:], c)
		nz += nonzero16(z)
	}
	for ; j < n; j++ {
		z := uint16(p0[j])<<8 | uint16(p1[j])
		r := binary.LittleEndian.Uint16(ref[2*j:])
		c := r ^ z
		if diff {
			c = r + unzigzag(z)
		}
		binary.LittleEndian.PutUint16(dst[2*j:], c)
		nz += nonzero(z)
	}
	return nz
}

// split4 writes the planes of the residuals of 4-byte elements, two per
// 64-bit word, and returns the count of non-zero ones and their OR.
func split4(diff bool, x, ref, p0, p1, p2, p3 []byte) (int, uint64) {
	return split4With(true, diff, x, ref, p0, p1, p2, p3)
}

func split4With(vector, diff bool, x, ref, p0, p1, p2, p3 []byte) (int, uint64) {
	n := len(p0)
	p1, p2, p3 = p1[:n], p2[:n], p3[:n]
	x, ref = x[:4*n], ref[:4*n]
	var j, zeros int
	var or uint64
	if vector {
		j, zeros, or = vectorSplit4(diff, x, ref, p0, p1, p2, p3)
	}
	nz := j - zeros
	for ; j+2 <= n; j += 2 {
		a := binary.LittleEndian.Uint64(x[4*j:])
		b := binary.LittleEndian.Uint64(ref[4*j:])
		z := a ^ b
		if diff {
			z = zigzag32(sub32(a, b))
		}
		or |= z
		binary.LittleEndian.PutUint16(p0[j:], uint16(z>>24&0xFF|z>>48&0xFF00))
		binary.LittleEndian.PutUint16(p1[j:], uint16(z>>16&0xFF|z>>40&0xFF00))
		binary.LittleEndian.PutUint16(p2[j:], uint16(z>>8&0xFF|z>>32&0xFF00))
		binary.LittleEndian.PutUint16(p3[j:], uint16(z&0xFF|z>>24&0xFF00))
		nz += nonzero32(z)
	}
	for ; j < n; j++ {
		c, r := binary.LittleEndian.Uint32(x[4*j:]), binary.LittleEndian.Uint32(ref[4*j:])
		z := c ^ r
		if diff {
			z = zigzag(c - r)
		}
		p0[j], p1[j], p2[j], p3[j] = byte(z>>24), byte(z>>16), byte(z>>8), byte(z)
		nz += nonzero(z)
		or |= uint64(z)
	}
	return nz, or
}

// zeroPlanes2 and zeroPlanes4 turn the OR of residual words into a mask of
// the planes that are all zero (bit p: plane p).
func zeroPlanes2(or uint64) uint8 {
	or |= or >> 32
	or |= or >> 16
	var m uint8
	if or&0xFF00 == 0 {
		m |= 1
	}
	if or&0xFF == 0 {
		m |= 2
	}
	return m
}

func zeroPlanes4(or uint64) uint8 {
	or |= or >> 32
	var m uint8
	for p := 0; p < 4; p++ {
		if or>>(8*(3-p))&0xFF == 0 {
			m |= 1 << p
		}
	}
	return m
}

// merge4 inverts split4.
func merge4(diff bool, p0, p1, p2, p3, ref, dst []byte) int {
	return merge4With(true, diff, p0, p1, p2, p3, ref, dst)
}

func merge4With(vector, diff bool, p0, p1, p2, p3, ref, dst []byte) int {
	n := len(p0)
	p1, p2, p3 = p1[:n], p2[:n], p3[:n]
	ref, dst = ref[:4*n], dst[:4*n]
	var j, zeros int
	if vector {
		j, zeros = vectorMerge4(diff, p0, p1, p2, p3, ref, dst)
	}
	nz := j - zeros
	for ; j+2 <= n; j += 2 {
		z := uint64(p0[j])<<24 | uint64(p1[j])<<16 | uint64(p2[j])<<8 | uint64(p3[j]) |
			uint64(p0[j+1])<<56 | uint64(p1[j+1])<<48 | uint64(p2[j+1])<<40 | uint64(p3[j+1])<<32
		r := binary.LittleEndian.Uint64(ref[4*j:])
		var c uint64
		if diff {
			c = add32(r, unzigzag32(z))
		} else {
			c = r ^ z
		}
		binary.LittleEndian.PutUint64(dst[4*j:], c)
		nz += nonzero32(z)
	}
	for ; j < n; j++ {
		z := uint32(p0[j])<<24 | uint32(p1[j])<<16 | uint32(p2[j])<<8 | uint32(p3[j])
		r := binary.LittleEndian.Uint32(ref[4*j:])
		c := r ^ z
		if diff {
			c = r + unzigzag(z)
		}
		binary.LittleEndian.PutUint32(dst[4*j:], c)
		nz += nonzero(z)
	}
	return nz
}

// With contexts, element j's residual goes to the next slot of its bucket
// bk[j]. One cursor per bucket makes a chain of dependent loads and stores
// through memory whenever neighbours share a bucket, so the loops below
// walk the chunk's four quarters at once, each with its own cursors (the
// slots of a quarter's elements in a bucket follow those of the quarters
// before it, which keeps element order within each bucket).

// quarterCursors returns each quarter's starting slot per bucket.
func quarterCursors(k int, qc *[4][MaxContexts]int) (cur [4][MaxContexts]int) {
	off := 0
	for b := 0; b < k; b++ {
		for q := 0; q < 4; q++ {
			cur[q][b] = off
			off += qc[q][b]
		}
	}
	return cur
}

func quarters(n int) (n4 int, last int) { return n / 4, n - 3*(n/4) }

// scatter2 writes the residual planes of 2-byte elements by bucket.
func scatter2(diff bool, x, ref, bk []byte, qc *[4][MaxContexts]int, k int, p0, p1 []byte) int {
	n := len(bk)
	x, ref = x[:2*n], ref[:2*n]
	cur := quarterCursors(k, qc)
	n4, last := quarters(n)
	nz := 0
	one := func(q, j int) {
		a, r := binary.LittleEndian.Uint16(x[2*j:]), binary.LittleEndian.Uint16(ref[2*j:])
		z := a ^ r
		if diff {
			z = zigzag(a - r)
		}
		b := bk[j] & (MaxContexts - 1)
		o := cur[q][b]
		cur[q][b] = o + 1
		p0[o], p1[o] = byte(z>>8), byte(z)
		nz += nonzero(z)
	}
	for i := 0; i < n4; i++ {
		one(0, i)
		one(1, n4+i)
		one(2, 2*n4+i)
		one(3, 3*n4+i)
	}
	for i := n4; i < last; i++ {
		one(3, 3*n4+i)
	}
	return nz
}

// gather2 inverts scatter2 into dst.
func gather2(diff bool, p0, p1, bk []byte, qc *[4][MaxContexts]int, k int, ref, dst []byte) int {
	n := len(bk)
	ref, dst = ref[:2*n], dst[:2*n]
	cur := quarterCursors(k, qc)
	n4, last := quarters(n)
	nz := 0
	one := func(q, j int) {
		b := bk[j] & (MaxContexts - 1)
		o := cur[q][b]
		cur[q][b] = o + 1
		z := uint16(p0[o])<<8 | uint16(p1[o])
		r := binary.LittleEndian.Uint16(ref[2*j:])
		v := r ^ z
		if diff {
			v = r + unzigzag(z)
		}
		binary.LittleEndian.PutUint16(dst[2*j:], v)
		nz += nonzero(z)
	}
	for i := 0; i < n4; i++ {
		one(0, i)
		one(1, n4+i)
		one(2, 2*n4+i)
		one(3, 3*n4+i)
	}
	for i := n4; i < last; i++ {
		one(3, 3*n4+i)
	}
	return nz
}

// scatter4 is scatter2 for 4-byte elements.
func scatter4(diff bool, x, ref, bk []byte, qc *[4][MaxContexts]int, k int, p0, p1, p2, p3 []byte) int {
	n := len(bk)
	x, ref = x[:4*n], ref[:4*n]
	cur := quarterCursors(k, qc)
	n4, last := quarters(n)
	nz := 0
	one := func(q, j int) {
		a, r := binary.LittleEndian.Uint32(x[4*j:]), binary.LittleEndian.Uint32(ref[4*j:])
		z := a ^ r
		if diff {
			z = zigzag(a - r)
		}
		b := bk[j] & (MaxContexts - 1)
		o := cur[q][b]
		cur[q][b] = o + 1
		p0[o], p1[o], p2[o], p3[o] = byte(z>>24), byte(z>>16), byte(z>>8), byte(z)
		nz += nonzero(z)
	}
	for i := 0; i < n4; i++ {
		one(0, i)
		one(1, n4+i)
		one(2, 2*n4+i)
		one(3, 3*n4+i)
	}
	for i := n4; i < last; i++ {
		one(3, 3*n4+i)
	}
	return nz
}

// gather4 inverts scatter4.
func gather4(diff bool, p0, p1, p2, p3, bk []byte, qc *[4][MaxContexts]int, k int, ref, dst []byte) int {
	n := len(bk)
	ref, dst = ref[:4*n], dst[:4*n]
	cur := quarterCursors(k, qc)
	n4, last := quarters(n)
	nz := 0
	one := func(q, j int) {
		b := bk[j] & (MaxContexts - 1)
		o := cur[q][b]
		cur[q][b] = o + 1
		z := uint32(p0[o])<<24 | uint32(p1[o])<<16 | uint32(p2[o])<<8 | uint32(p3[o])
		r := binary.LittleEndian.Uint32(ref[4*j:])
		v := r ^ z
		if diff {
			v = r + unzigzag(z)
		}
		binary.LittleEndian.PutUint32(dst[4*j:], v)
		nz += nonzero(z)
	}
	for i := 0; i < n4; i++ {
		one(0, i)
		one(1, n4+i)
		one(2, 2*n4+i)
		one(3, 3*n4+i)
	}
	for i := n4; i < last; i++ {
		one(3, 3*n4+i)
	}
	return nz
}

// gatherWords16 is gatherExact for 2-byte elements and the xor or diff
// residual, four elements per 8-byte word, skipping words whose residuals
// are all zero.
func gatherWords16(diff bool, x, ref []byte, pos []uint32, vals []byte) int {
	n := len(x) / 2
	m, j := 0, 0
	for ; j+4 <= n; j += 4 {
		a := binary.LittleEndian.Uint64(x[2*j:])
		b := binary.LittleEndian.Uint64(ref[2*j:])
		z := a ^ b
		if z == 0 {
			continue
		}
		if diff {
			z = zigzag16(sub16(a, b))
		}
		for l := 0; l < 4; l++ {
			v := uint16(z >> (16 * l))
			pos[m] = uint32(j + l)
			binary.LittleEndian.PutUint16(vals[2*m:], v)
			m += nonzero(v)
		}
	}
	for ; j < n; j++ {
		c, r := binary.LittleEndian.Uint16(x[2*j:]), binary.LittleEndian.Uint16(ref[2*j:])
		v := c ^ r
		if diff {
			v = zigzag(c - r)
		}
		pos[m] = uint32(j)
		binary.LittleEndian.PutUint16(vals[2*m:], v)
		m += nonzero(v)
	}
	return m
}

// gatherWords32 is gatherWords16 for 4-byte elements, two per word.
func gatherWords32(diff bool, x, ref []byte, pos []uint32, vals []byte) int {
	n := len(x) / 4
	m, j := 0, 0
	for ; j+2 <= n; j += 2 {
		a := binary.LittleEndian.Uint64(x[4*j:])
		b := binary.LittleEndian.Uint64(ref[4*j:])
		z := a ^ b
		if z == 0 {
			continue
		}
		if diff {
			z = zigzag32(sub32(a, b))
		}
		for l := 0; l < 2; l++ {
			v := uint32(z >> (32 * l))
			pos[m] = uint32(j + l)
			binary.LittleEndian.PutUint32(vals[4*m:], v)
			m += nonzero(v)
		}
	}
	for ; j < n; j++ {
		c, r := binary.LittleEndian.Uint32(x[4*j:]), binary.LittleEndian.Uint32(ref[4*j:])
		v := c ^ r
		if diff {
			v = zigzag(c - r)
		}
		pos[m] = uint32(j)
		binary.LittleEndian.PutUint32(vals[4*m:], v)
		m += nonzero(v)
	}
	return m
}
