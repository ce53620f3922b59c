package store

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/s3/s3test"
)

// A writer's cache keeps the objects of the two newest checkpoints and
// the records, not the whole store: the older checkpoints' objects are in
// the bucket, and reading one fetches it again, into the same cache.
func TestAWritersCacheKeepsOnlyTheNewestTwoCheckpoints(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-trim")
	cache := filepath.Join(t.TempDir(), "cache")
	s, err := Open(cache, Options{Write: true, KeyframeInterval: 3, Remote: rm, Recode: RecodeInline})
	require.NoError(t, err)
	ser := newSeries(31)
	want := map[int64][]byte{}
	for step := int64(1); step <= 5; step++ {
		want[step] = ser.step(t)
		addOne(t, s, step, "m.st", want[step])
	}
	require.NoError(t, s.Settle())
	rd, err := s.Reader()
	require.NoError(t, err)
	cached := func(h string) bool {
		_, err := os.Lstat(filepath.Join(cache, "objects", h[:2], h))
		return err == nil
	}
	// What the two newest decode through (an unchanged tensor's delta
	// frame is one object shared by every step, kept for the newest two).
	needed := map[string]bool{}
	for step := int64(4); step <= 5; step++ {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		needed[c.Files[0].Skeleton.Object] = true
		for _, r := range c.Files[0].Regions {
			ch, err := rd.sn.chain(&r)
			require.NoError(t, err)
			for _, link := range ch {
				needed[link.Object.Object] = true
				assert.True(t, cached(link.Object.Object), "step %d tensor %s", step, r.Name)
			}
		}
	}
	trimmed := 0
	for step := int64(1); step <= 3; step++ {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		for _, r := range c.Files[0].Regions {
			if !needed[r.Object.Object] {
				assert.False(t, cached(r.Object.Object), "step %d tensor %s", step, r.Name)
				trimmed++
			}
		}
	}
	assert.Positive(t, trimmed, "the older checkpoints have objects of their own")
	rd.Close()
	// Every checkpoint still reads through this cache, fetched anew.
	for step, b := range want {
		assert.Equal(t, b, restoreAllFrom(t, s, step)["m.st"], "step %d", step)
	}
	s.Close()
}
