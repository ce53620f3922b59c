package delta

import (
	"fmt"
	"math/bits"

	"github.com/tpde/tpde/core/errs"
)

// Positions of the changed elements of a sparse chunk are coded as gaps
// (the first position plus one, then the difference to the previous one,
// all >= 1), each gap as an Elias-delta code, the codes bit-packed most
// significant bit first. The bit string is then entropy coded as one stream
// (zstd, unless zstd does not shrink it): the "elias_delta_zstd" method.

// maxEliasBits is the longest code of a gap <= MaxChunkElems (2^24):
// N = 24, L = 4, 4 + 5 + 24 bits.
const maxEliasBits = 33

// eliasLen is the length in bits of g's Elias-delta code.
func eliasLen(g uint64) int {
	n := bits.Len64(g) - 1
	l := bits.Len64(uint64(n)+1) - 1
	return 2*l + 1 + n
}

// appendElias appends the Elias-delta codes of the gaps between positions
// (strictly increasing) to dst.
func appendElias(dst []byte, pos []uint32) []byte {
	var acc uint64 // holds nacc pending bits, right-aligned
	var nacc uint
	prev := int64(-1)
	for _, p := range pos {
		g := uint64(int64(p) - prev)
		prev = int64(p)
		n := uint(bits.Len64(g) - 1)
		l := uint(bits.Len64(uint64(n)+1) - 1)
		// L zero bits, then N+1 in L+1 bits, then the N low bits of g:
		// together the value (N+1)<<N | low(g) in 2L+1+N bits.
		code := (uint64(n)+1)<<n | g&(1<<n-1)
		acc = acc<<(2*l+1+n) | code
		nacc += 2*l + 1 + n
		for nacc >= 8 {
			nacc -= 8
			dst = append(dst, byte(acc>>nacc))
		}
	}
	if nacc > 0 {
		dst = append(dst, byte(acc<<(8-nacc)))
	}
	return dst
}

// decodeElias decodes exactly len(pos) gaps from src into positions, each
// below n, and checks that src holds nothing else (the padding bits of the
// last byte are zero).
func decodeElias(src []byte, pos []uint32, n int) error {
	var acc uint64 // nacc unread bits, right-aligned
	var nacc uint
	i := 0
	refill := func() {
		for nacc <= 56 && i < len(src) {
			acc = acc<<8 | uint64(src[i])
			i++
			nacc += 8
		}
	}
	prev := int64(-1)
	for k := range pos {
		refill()
		if nacc == 0 {
			return fmt.Errorf("%w: positions end after %d of %d gaps", errs.Corrupt, k, len(pos))
		}
		// Leading zeros of the unread bits: L.
		top := acc << (64 - nacc)
		l := uint(bits.LeadingZeros64(top))
		if l > 4 || l >= nacc {
			return fmt.Errorf("%w: bad Elias-delta code at gap %d", errs.Corrupt, k)
		}
		if nacc < 2*l+1 {
			return fmt.Errorf("%w: positions truncated at gap %d", errs.Corrupt, k)
		}
		nacc -= l
		np1 := (acc >> (nacc - (l + 1))) & (1<<(l+1) - 1) // N+1, leading bit set
		nacc -= l + 1
		nb := uint(np1 - 1)
		if nb > 24 {
			return fmt.Errorf("%w: Elias-delta gap of %d bits at gap %d", errs.Corrupt, nb+1, k)
		}
		if nacc < nb {
			refill()
			if nacc < nb {
				return fmt.Errorf("%w: positions truncated at gap %d", errs.Corrupt, k)
			}
		}
		g := uint64(1)<<nb | (acc>>(nacc-nb))&(1<<nb-1)
		nacc -= nb
		p := prev + int64(g)
		if p >= int64(n) {
			return fmt.Errorf("%w: position %d is outside a chunk of %d elements", errs.Corrupt, p, n)
		}
		pos[k] = uint32(p)
		prev = p
	}
	if i != len(src) || nacc >= 8 || acc&(1<<nacc-1) != 0 {
		return fmt.Errorf("%w: %d bytes of positions after the last gap", errs.Corrupt, len(src)-i+int(nacc/8))
	}
	return nil
}
