package api

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// The hint covers only whole huge pages inside the buffer, at any
// alignment and length, and leaves its bytes as they were.
func TestHugePageOutKeepsBytes(t *testing.T) {
	buf := make([]byte, 11<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	for _, cut := range [][2]int{{0, len(buf)}, {1, len(buf) - 3}, {4095, 4095 + hugeOutMin}, {5, 5 + hugeOutMin - 1}, {0, 0}} {
		hugePageOut(buf[cut[0]:cut[1]])
	}
	for i := range buf {
		if buf[i] != byte(i*7) {
			require.Failf(t, "byte changed", "offset %d", i)
		}
	}
}
