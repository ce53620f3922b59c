// Package crc32c computes CRC-32C (Castagnoli), the checksum of every
// frame, chunk and container record, as hash/crc32 does with its
// Castagnoli table, but faster on long buffers where the CPU can fold
// 256 bytes at a time with carry-less multiplies.
//
// hash/crc32 drives the SSE4.2 CRC32 instruction three streams at a time,
// about 8 bytes per cycle at best; a decoder checks two CRCs per chunk
// (stored and decoded bytes), which made CRC a third of single-thread
// keyframe decode time. Folding with 512-bit VPCLMULQDQ runs several times
// faster where it is available; elsewhere, and for short buffers, this is
// hash/crc32.
package crc32c

import "hash/crc32"

var table = crc32.MakeTable(crc32.Castagnoli)

// foldMin is the shortest buffer handed to the folding kernel: below it the
// setup and the final reduction cost more than the CRC32 instruction.
const foldMin = 1024

// Checksum returns the CRC-32C of b.
func Checksum(b []byte) uint32 { return Update(0, b) }

// Update returns the CRC-32C of the bytes whose CRC-32C is crc followed by
// b, as crc32.Update(crc, crc32.MakeTable(crc32.Castagnoli), b).
func Update(crc uint32, b []byte) uint32 {
	if haveFold && len(b) >= foldMin {
		n := len(b) &^ 63
		crc = ^fold(^crc, b[:n])
		b = b[n:]
	}
	return crc32.Update(crc, table, b)
}
