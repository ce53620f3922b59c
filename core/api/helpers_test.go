package api

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"testing"

	"github.com/stretchr/testify/require"
)

// caller is the Caller the tests' calls on no handle use.
const caller Caller = 7

// doc decodes the document the last call on h left (0: caller's) into v.
func doc(t *testing.T, h uint64, v any) {
	t.Helper()
	b, err := Result(h, caller)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, v), "%s", b)
}

// floats is n float32s, little-endian, slowly varying.
func floats(n int, scale float32) []byte {
	b := make([]byte, 4*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(scale*float32(i%97)/97))
	}
	return b
}

// nudged is src with every third float changed slightly.
func nudged(src []byte) []byte {
	b := append([]byte{}, src...)
	for i := 0; i < len(b)/4; i += 3 {
		f := math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(f+1e-3))
	}
	return b
}

// f32 is the TPDE_F32 code.
const f32 = 11

// noSessionsLeft checks that a test released every session it opened.
func noSessionsLeft(t *testing.T, before [4]int) {
	t.Helper()
	require.Equal(t, before, open(), "sessions open: stores, readers, bundle writers, bundles")
}
