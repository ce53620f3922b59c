package chain

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseDefaultsAndRefusals(t *testing.T) {
	p, err := Parse([]byte(`{}`))
	require.NoError(t, err)
	assert.Equal(t, Default(), p)
	p, err = Parse([]byte(`{"keyframe_interval": 3, "reference": "base"}`))
	require.NoError(t, err)
	assert.Equal(t, Policy{Interval: 3, Reference: Base}, p)
	for _, bad := range []string{
		`{"keyframe_interval": 0}`, `{"keyframe_interval": 1001}`, `{"keyframe_interval": -1}`,
		`{"reference": "next"}`, `{"keyframe_interval": 3, "keyframe_interval": 4}`, `{"k": 1}`,
		`{"keyframe_interval": 2.5}`, `[]`, `{} {}`, ``,
	} {
		_, err := Parse([]byte(bad))
		assert.Error(t, err, bad)
	}
	_, err = Parse(make([]byte, maxPolicyBytes+1))
	assert.ErrorContains(t, err, "bytes")
}

// A forward chain under the policy never makes a decode walk more than K
// frames, and never keyframes more often than it must.
func TestForwardChainsWalkAtMostK(t *testing.T) {
	for _, k := range []int{1, 2, 3, 10, 1000} {
		p := Policy{Interval: k, Reference: Previous}
		since, longest, keyframes := 0, 0, 0
		for i := 0; i < 3*k+5; i++ {
			if p.Forward(since) {
				since, keyframes = 0, keyframes+1
			}
			frames := since + 1 // itself and every delta back to its keyframe
			longest = max(longest, frames)
			require.LessOrEqual(t, frames, k, "K=%d checkpoint %d", k, i)
			since++
		}
		assert.Equal(t, k, longest, "K=%d: the chain should reach K", k)
		assert.Equal(t, (3*k+5+k-1)/k, keyframes, "K=%d", k)
	}
}

func TestDemoteKeepsReverseChainsWithinK(t *testing.T) {
	p := Policy{Interval: 4, Reference: Previous}
	assert.True(t, p.Demote(0))  // 2 frames
	assert.True(t, p.Demote(2))  // 4 frames
	assert.False(t, p.Demote(3)) // 5 frames
	// K=1 keeps every checkpoint whole, but a reader still accepts a
	// delta against a base (two frames).
	assert.False(t, Policy{Interval: 1, Reference: Previous}.Demote(0))
	assert.Equal(t, 2, Policy{Interval: 1, Reference: Base}.MaxFrames())
	assert.False(t, p.Allows(0))
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(`{"keyframe_interval": 3, "reference": "base"}`))
	f.Add([]byte(`{"keyframe_interval": 1e9}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err == nil {
			require.NoError(t, p.Validate())
			require.GreaterOrEqual(t, p.MaxFrames(), 2)
		}
	})
}
