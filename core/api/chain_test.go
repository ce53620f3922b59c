package api

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func TestChainForward(t *testing.T) {
	pol := []byte(`{"keyframe_interval": 3}`)
	for since, want := range map[int64]bool{0: true, 1: false, 2: false, 3: true} {
		kf, k, err := ChainForward(pol, since)
		require.NoError(t, err)
		require.Equal(t, int32(3), k)
		require.Equal(t, want, kf, "since %d", since)
	}
	kf, k, err := ChainForward(nil, 5)
	require.NoError(t, err)
	require.Equal(t, int32(10), k)
	require.False(t, kf)
	_, _, err = ChainForward([]byte(`{"keyframe_interval": 0}`), 1)
	require.ErrorIs(t, err, errs.Invalid)
	require.Contains(t, err.Error(), "keyframe_interval")
}
