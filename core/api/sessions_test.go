package api

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func TestEachCallerKeepsItsOwnDocument(t *testing.T) {
	a := keyframe(t, Tensor{DType: f32, Shape: []uint64{3}, Data: floats(3, 1)})
	b := keyframe(t, Tensor{DType: f32, Shape: []uint64{5}, Data: floats(5, 1)})
	require.NoError(t, Inspect(100, a))
	require.NoError(t, Inspect(101, b))
	for c, want := range map[Caller][]uint64{100: {3}, 101: {5}} {
		got, err := Result(0, c)
		require.NoError(t, err)
		var info FrameInfo
		require.NoError(t, json.Unmarshal(got, &info))
		require.Equal(t, want, info.Shape)
	}
	// A failed call leaves the caller's previous document.
	require.Error(t, Inspect(100, a[:8]))
	got, err := Result(0, 100)
	require.NoError(t, err)
	require.Contains(t, string(got), `"shape":[3]`)

	_, err = Result(0, 999)
	require.ErrorIs(t, err, errs.Invalid, "a caller with no document")
	_, err = Result(1<<60, caller)
	require.ErrorIs(t, err, errs.Invalid, "a handle that is not open")
}

func TestCopyResultAsksForRoomAndKeepsTheDocument(t *testing.T) {
	require.NoError(t, Inspect(caller, keyframe(t, Tensor{DType: f32, Shape: []uint64{3}, Data: floats(3, 1)})))
	whole, err := Result(0, caller)
	require.NoError(t, err)
	small := make([]byte, 4)
	n, err := CopyResult(0, caller, small)
	require.ErrorIs(t, err, errs.BufferTooSmall)
	require.Equal(t, uint64(len(whole)), n)
	require.Equal(t, make([]byte, 4), small, "nothing copied into too small a buffer")
	out := make([]byte, n+10)
	n, err = CopyResult(0, caller, out)
	require.NoError(t, err)
	require.Equal(t, whole, out[:n])
}
