package frame

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// headFrames are a keyframe and a delta frame to read the heads of.
func headFrames(t testing.TB) [][]byte {
	r := rand.New(rand.NewSource(6))
	src := weights(r, dtype.BF16, 3000)
	ref := weights(r, dtype.BF16, 3000)
	key := encode(t, src, dtype.BF16, []uint64{30, 100}, Options{ChunkElems: 1000})
	del, _ := encodeDelta(t, src, ref, nil, dtype.BF16, []uint64{30, 100}, DeltaOptions{})
	return [][]byte{key, del}
}

// ParseHead reads from a frame's first HeadLen bytes what ParseAny reads
// of its header, refuses any shorter prefix, and catches every change to
// those bytes (the header CRC, or a field check).
func TestParseHeadReadsTheHeaderAlone(t *testing.T) {
	for _, blob := range headFrames(t) {
		full, err := ParseAny(blob)
		require.NoError(t, err)
		n, ok := HeadLen(blob)
		require.True(t, ok)
		require.Equal(t, full.HeaderLen, n)
		h, err := ParseHead(blob[:n])
		require.NoError(t, err)
		assert.Equal(t, []any{full.Kind, full.DType, full.RawSize, full.Shape, full.ChunkElems, full.HeaderLen},
			[]any{h.Kind, h.DType, h.RawSize, h.Shape, h.ChunkElems, h.HeaderLen})
		for k := 0; k < n; k++ {
			_, err := ParseHead(blob[:k])
			require.ErrorIs(t, err, errs.Corrupt, "prefix of %d bytes", k)
		}
		for i := 0; i < n; i++ {
			bad := append([]byte(nil), blob[:n]...)
			bad[i] ^= 0x40
			_, err := ParseHead(bad)
			require.Error(t, err, "flip at byte %d", i)
		}
	}
	_, ok := HeadLen(make([]byte, 31))
	assert.False(t, ok)
}

// FuzzParseHead: arbitrary bytes never panic, and a frame ParseAny accepts
// has the head ParseHead reads from its first HeadLen bytes.
func FuzzParseHead(f *testing.F) {
	for _, b := range headFrames(f) {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		h, herr := ParseHead(blob)
		full, err := ParseAny(blob)
		if err != nil {
			return
		}
		require.NoError(t, herr)
		n, ok := HeadLen(blob)
		require.True(t, ok)
		require.Equal(t, full.HeaderLen, n)
		assert.Equal(t, full.RawSize, h.RawSize)
		assert.Equal(t, full.DType, h.DType)
		assert.Equal(t, full.Kind, h.Kind)
	})
}
