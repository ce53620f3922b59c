package store

import (
	"bytes"
	"encoding/binary"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
)

// A buffer keeps what its last tensor left in it (drop hands back only the
// pages past residentBytes), so what is coded into it must not depend on
// what it held: a keyframe coded into a buffer full of another tensor's
// bytes is the keyframe coded into fresh memory, byte for byte.
func TestCodingIntoAReusedBufferIgnoresWhatItHeld(t *testing.T) {
	s := &Store{threads: 2}
	const n = 1 << 20 // elements: 4 MiB of F32, several chunks
	raw := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		v := float32(math.Sin(float64(i)*0.001)) * 0.02
		binary.LittleEndian.PutUint32(raw[4*i:], math.Float32bits(v))
	}
	shape := []uint64{1024, 1024}

	var fresh buffer
	defer fresh.free()
	want, err := s.encodeKeyframe(&fresh, raw, dtype.F32, shape, 2, nil)
	require.NoError(t, err)
	want = bytes.Clone(want)

	var used buffer
	defer used.free()
	b, err := used.get(uint64(len(raw)) * 2)
	require.NoError(t, err)
	for i := range b {
		b[i] = 0xA5
	}
	used.drop()
	got, err := s.encodeKeyframe(&used, raw, dtype.F32, shape, 2, nil)
	require.NoError(t, err)
	require.Equal(t, want, got)
}
