package frame

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestCRCCombine(t *testing.T) {
	r := rand.New(rand.NewSource(40))
	buf := make([]byte, 5000)
	r.Read(buf)
	for i := 0; i < 300; i++ {
		a := r.Intn(len(buf) + 1)
		b := a + r.Intn(len(buf)-a+1)
		require.Equal(t, crc(buf[:b]), crcCombine(crc(buf[:a]), crc(buf[a:b]), uint64(b-a)), "%d %d", a, b)
	}
	require.Equal(t, crc(nil), crcCombine(0, 0, 0))
}

func TestCRCShift(t *testing.T) {
	r := rand.New(rand.NewSource(41))
	buf := make([]byte, 10000)
	r.Read(buf)
	for _, piece := range []int{1, 7, 1000, 4096} {
		for _, total := range []int{0, 1, piece, piece + 1, 3 * piece, len(buf)} {
			if total > len(buf) {
				continue
			}
			var crcs []uint32
			last := 0
			for lo := 0; lo < total; lo += piece {
				hi := min(lo+piece, total)
				crcs = append(crcs, crc(buf[lo:hi]))
				last = hi - lo
			}
			require.Equal(t, crc(buf[:total]), combineChunks(crcs, uint64(piece), uint64(last)), "piece %d total %d", piece, total)
		}
	}
}
