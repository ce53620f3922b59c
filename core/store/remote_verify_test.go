package store

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/s3/s3test"
)

// Verify of a remote store checks the bucket, not the cache: an object
// deleted from the bucket is reported by a verify whose cache still holds
// it (the writer's own) and by one whose cache never did, and a deep
// verify through a fresh cache decodes every checkpoint from the bucket.
func TestVerifyOfARemoteStoreChecksTheBucket(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-verify")
	src := t.TempDir()
	writerCache := filepath.Join(t.TempDir(), "c0")
	s, err := Open(writerCache, Options{Write: true, KeyframeInterval: 3, Remote: rm})
	require.NoError(t, err)
	ser := newSeries(21)
	for step := int64(1); step <= 3; step++ {
		addFiles(t, s, step, map[string]string{"m.st": write(t, src, "x.st", ser.step(t))})
	}
	require.NoError(t, s.Settle())
	s.Close()

	verify := func(cache string, deep bool) []Problem {
		t.Helper()
		r, err := Open(cache, Options{Remote: rm})
		require.NoError(t, err)
		defer r.Close()
		probs, err := r.Verify(deep)
		require.NoError(t, err)
		return probs
	}
	assert.Empty(t, verify(writerCache, false))
	assert.Empty(t, verify(filepath.Join(t.TempDir(), "fresh"), true), "a deep verify fetches and decodes every checkpoint")

	// Delete the object of a region of the newest checkpoint (a keyframe).
	r, err := Open(writerCache, Options{Remote: rm})
	require.NoError(t, err)
	rd, err := r.Reader()
	require.NoError(t, err)
	ck, err := rd.Checkpoint(3, false)
	require.NoError(t, err)
	require.NotEmpty(t, ck.Files[0].Regions)
	h := ck.Files[0].Regions[0].Object.Object
	rd.Close()
	r.Close()
	victim := "run/objects/" + h[:2] + "/" + h
	require.NoError(t, c.Delete(context.Background(), "tpde-store-verify", victim))
	name := filepath.Base(victim)
	for _, cache := range []string{writerCache, filepath.Join(t.TempDir(), "fresh2")} {
		for _, deep := range []bool{false, true} {
			probs := verify(cache, deep)
			require.NotEmpty(t, probs, "cache %s deep %v", cache, deep)
			found := false
			for _, p := range probs {
				if p.Object == name {
					found = true
					assert.Contains(t, p.Message, "missing from s3://tpde-store-verify/run")
				}
			}
			assert.True(t, found, "the deleted object is named: %+v", probs)
		}
	}
}
