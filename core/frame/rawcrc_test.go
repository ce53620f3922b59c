package frame

import (
	"hash/crc32"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
)

// RawCRC, read from the chunk table alone, is the CRC32C of what the frame
// decodes to: keyframes and deltas, one chunk or many, a short last chunk,
// an empty tensor and an identical delta.
func TestRawCRCIsTheDecodedBytesCRC(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	table := crc32.MakeTable(crc32.Castagnoli)
	for _, n := range []int{0, 1, 1000, 3*4096 + 17} {
		src := make([]byte, 4*n)
		for i := range src {
			src[i] = byte(rng.IntN(7))
		}
		shape := []uint64{uint64(n)}
		blob := make([]byte, must(Bound(uint64(len(src)), dtype.F32, 1, 4096)))
		k, err := Encode(blob, src, dtype.F32, shape, Options{ChunkElems: 4096})
		require.NoError(t, err)
		h, err := Parse(blob[:k])
		require.NoError(t, err)
		require.Equal(t, crc32.Checksum(src, table), h.RawCRC(), "keyframe of %d", n)

		cur := append([]byte{}, src...)
		for i := 0; i < len(cur); i += 97 {
			cur[i]++
		}
		for _, c := range [][]byte{cur, src} { // a real delta, then an identical one
			dblob := make([]byte, must(DeltaBound(uint64(len(c)), dtype.F32, 1, 4096)))
			res, err := EncodeDelta(dblob, c, src, nil, dtype.F32, shape, DeltaOptions{ChunkElems: 4096})
			require.NoError(t, err)
			dh, err := ParseAny(dblob[:res.Len])
			require.NoError(t, err)
			require.Equal(t, crc32.Checksum(c, table), dh.RawCRC(), "delta of %d", n)
		}
	}
}

func must(n uint64, err error) uint64 {
	if err != nil {
		panic(err)
	}
	return n
}
