package frame

import (
	"sync"

	"github.com/tpde/tpde/core/par"
)

// CRC32C of a concatenation from the CRCs of its parts (zlib's
// crc32_combine, for the Castagnoli polynomial): lets workers checksum the
// chunks of a reference tensor in parallel and still produce (and check)
// the CRC32C of the whole tensor that delta frames record.

const castagnoliReflected = 0x82F63B78

func gf2Times(mat *[32]uint32, vec uint32) uint32 {
	var sum uint32
	for i := 0; vec != 0; i, vec = i+1, vec>>1 {
		if vec&1 != 0 {
			sum ^= mat[i]
		}
	}
	return sum
}

func gf2Square(square, mat *[32]uint32) {
	for n := 0; n < 32; n++ {
		square[n] = gf2Times(mat, mat[n])
	}
}

// crcCombine returns the CRC32C of A followed by B, given crcA, crcB and
// the length of B in bytes.
func crcCombine(crcA, crcB uint32, lenB uint64) uint32 {
	if lenB == 0 {
		return crcA
	}
	var even, odd [32]uint32
	// The operator for one zero bit.
	odd[0] = castagnoliReflected
	row := uint32(1)
	for n := 1; n < 32; n++ {
		odd[n] = row
		row <<= 1
	}
	gf2Square(&even, &odd) // two zero bits
	gf2Square(&odd, &even) // four zero bits
	// Apply len2 zero bytes to crcA, squaring the operator for each bit of
	// the length (the first squaring gives one zero byte).
	for {
		gf2Square(&even, &odd)
		if lenB&1 != 0 {
			crcA = gf2Times(&even, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
		gf2Square(&odd, &even)
		if lenB&1 != 0 {
			crcA = gf2Times(&odd, crcA)
		}
		lenB >>= 1
		if lenB == 0 {
			break
		}
	}
	return crcA ^ crcB
}

// parallelCRC is the CRC32C of buf, computed in pieces of piece bytes on
// up to threads goroutines and combined.
func parallelCRC(buf []byte, piece, threads int) uint32 {
	if piece <= 0 || len(buf) <= piece || threads <= 1 {
		return crc(buf)
	}
	n := (len(buf) + piece - 1) / piece
	crcs := make([]uint32, n)
	_ = par.For(n, min(threads, n), func(_, i int) error {
		crcs[i] = crc(buf[i*piece : min((i+1)*piece, len(buf))])
		return nil
	})
	return combineTensorChunks(crcs, uint64(piece), uint64(len(buf)))
}

// crcShift is the linear operator that appends a fixed number of bytes to
// the input of a CRC32C: crc(A||B) = shift(crc(A)) ^ crc(B) with len(B)
// fixed. Building it costs about as much as one crcCombine; applying it is
// one matrix-vector product, so combining many chunks of one length is
// cheap.
type crcShift [32]uint32

func gf2Compose(dst, a, b *[32]uint32) {
	var c [32]uint32
	for n := 0; n < 32; n++ {
		c[n] = gf2Times(a, b[n])
	}
	*dst = c
}

// crcShifts caches operators by length: a checkpoint's tensors share a
// handful of chunk sizes, and building one costs about 1 µs per combine.
var crcShifts sync.Map // uint64 -> *crcShift

// shiftFor returns the (cached) operator for n appended bytes.
func shiftFor(n uint64) *crcShift {
	if s, ok := crcShifts.Load(n); ok {
		return s.(*crcShift)
	}
	s := newCRCShift(n)
	crcShifts.Store(n, s)
	return s
}

// newCRCShift returns the operator for n appended bytes.
func newCRCShift(n uint64) *crcShift {
	var base, op [32]uint32
	// One zero bit, then squared to one zero byte.
	base[0] = castagnoliReflected
	row := uint32(1)
	for i := 1; i < 32; i++ {
		base[i] = row
		row <<= 1
	}
	for i := 0; i < 3; i++ {
		gf2Square(&op, &base)
		base = op
	}
	var m [32]uint32 // identity
	for i := range m {
		m[i] = 1 << i
	}
	for ; n != 0; n >>= 1 {
		if n&1 != 0 {
			gf2Compose(&m, &base, &m)
		}
		gf2Square(&op, &base)
		base = op
	}
	s := crcShift(m)
	return &s
}

// combine returns the CRC32C of A||B from crcA and crcB.
func (s *crcShift) combine(crcA, crcB uint32) uint32 {
	return gf2Times((*[32]uint32)(s), crcA) ^ crcB
}

// combineChunks combines the CRC32Cs of consecutive chunks of chunkBytes bytes
// (the last one of last bytes).
func combineChunks(crcs []uint32, chunkBytes, last uint64) uint32 {
	if len(crcs) == 0 {
		return 0
	}
	full := shiftFor(chunkBytes)
	sum := crcs[0]
	for i := 1; i < len(crcs)-1; i++ {
		sum = full.combine(sum, crcs[i])
	}
	if len(crcs) > 1 {
		sum = shiftFor(last).combine(sum, crcs[len(crcs)-1])
	}
	return sum
}

// combineTensorChunks is combineChunks for the chunks of chunkBytes bytes
// of a tensor of rawSize bytes (one CRC per chunk, the last one shorter).
func combineTensorChunks(crcs []uint32, chunkBytes, rawSize uint64) uint32 {
	if len(crcs) == 0 {
		return 0
	}
	return combineChunks(crcs, chunkBytes, rawSize-uint64(len(crcs)-1)*chunkBytes)
}

// RawCRC is the CRC32C of the whole tensor the frame decodes to, combined
// from its chunk table alone (O(chunks), no pass over the data). Decoding
// checks every chunk's bytes against its entry, so a decode that succeeds
// produced bytes with this CRC: a store compares it with the CRC it
// recorded for the region instead of hashing the decoded bytes again. An
// identical delta frame decodes to its reference: its CRC is RefCRC.
func (h *Header) RawCRC() uint32 {
	if h.Delta != nil && h.Delta.Identical {
		return h.Delta.RefCRC
	}
	crcs := make([]uint32, h.NChunks)
	for i := range crcs {
		if h.Kind == KindDelta {
			crcs[i] = h.dchunks[i].crc
		} else {
			crcs[i] = h.chunks[i].crc
		}
	}
	return combineTensorChunks(crcs, uint64(h.ChunkElems)*uint64(h.DType.Width()), h.RawSize)
}
