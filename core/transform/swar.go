package transform

import (
	"encoding/binary"
	"math/bits"
)

// split2 and merge2 first run the SSE2 kernels (planes_amd64.s) where
// available and vector is set; the rest, and every element elsewhere,
// moves four 16-bit elements per 64-bit load with all lanes rotated at once
// (SWAR).

const (
	lanes16Hi = 0xFFFE_FFFE_FFFE_FFFE
	lanes16Lo = 0x0001_0001_0001_0001
)

func split2(vector, rot bool, src, p0, p1 []byte) {
	n := len(p0)
	i := 0
	if vector {
		i = vectorSplit2(rot, src, p0, p1)
	}
	for ; i+4 <= n; i += 4 {
		v := binary.LittleEndian.Uint64(src[2*i:])
		if rot {
			v = (v<<1)&lanes16Hi | (v>>15)&lanes16Lo
		}
		// Lane k's high byte is at bit 16k+8, its low byte at 16k.
		binary.LittleEndian.PutUint32(p0[i:], uint32(v>>8&0xFF|v>>16&0xFF00|v>>24&0xFF0000|v>>32&0xFF000000))
		binary.LittleEndian.PutUint32(p1[i:], uint32(v&0xFF|v>>8&0xFF00|v>>16&0xFF0000|v>>24&0xFF000000))
	}
	for ; i < n; i++ {
		v := binary.LittleEndian.Uint16(src[2*i:])
		if rot {
			v = bits.RotateLeft16(v, 1)
		}
		p0[i], p1[i] = byte(v>>8), byte(v)
	}
}

// spread16 moves the 4 bytes of x into the low byte of each 16-bit lane.
func spread16(x uint64) uint64 {
	x = (x | x<<16) & 0x0000FFFF_0000FFFF
	return (x | x<<8) & 0x00FF00FF_00FF00FF
}

// merge2 is split2's inverse, four elements per 64-bit store.
func merge2(vector, rot bool, p0, p1, dst []byte) {
	n := len(p0)
	p1 = p1[:n]
	dst = dst[:2*n]
	i := 0
	if vector {
		i = vectorMerge2(rot, p0, p1, dst)
	}
	for ; i+4 <= n; i += 4 {
		v := spread16(uint64(binary.LittleEndian.Uint32(p0[i:])))<<8 | spread16(uint64(binary.LittleEndian.Uint32(p1[i:])))
		if rot {
			// Rotate each 16-bit lane right by one.
			v = (v>>1)&^(lanes16Lo<<15) | (v&lanes16Lo)<<15
		}
		binary.LittleEndian.PutUint64(dst[2*i:], v)
	}
	for ; i < n; i++ {
		v := uint16(p0[i])<<8 | uint16(p1[i])
		if rot {
			v = bits.RotateLeft16(v, -1)
		}
		binary.LittleEndian.PutUint16(dst[2*i:], v)
	}
}
