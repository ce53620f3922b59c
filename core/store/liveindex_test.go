package store

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// objectFiles is every file under objects/, as "<name>".
func objectFiles(t *testing.T, dir string) map[string]bool {
	out := map[string]bool{}
	subs, err := os.ReadDir(filepath.Join(dir, "objects"))
	require.NoError(t, err)
	for _, d := range subs {
		ents, err := os.ReadDir(filepath.Join(dir, "objects", d.Name()))
		require.NoError(t, err)
		for _, e := range ents {
			out[e.Name()] = true
		}
	}
	return out
}

// namedNow is what a full sweep keeps: what the newest generation names,
// counted afresh from every record.
func namedNow(t *testing.T, s *Store) map[string]bool {
	require.NoError(t, s.Settle())
	sn, err := s.snapshot()
	require.NoError(t, err)
	ix, err := s.buildIndex(sn)
	require.NoError(t, err)
	return ix.live()
}

// A writer's cleanup after its own commit removes exactly what the commit
// left unnamed (a demoted checkpoint's keyframes, an object written and
// not used) without a full sweep of the store: after each add objects/
// holds what the newest generation names, no more and no less, and only
// the first commit of the session (which builds the index) swept. The
// frozen tensor is one object shared by every checkpoint, so a count that
// dropped a shared object when one of its records went would fail here,
// as would Verify. Removing a checkpoint or a run is a commit too.
func TestACommitsCleanupRemovesWhatItLeftUnnamedWithoutASweep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3})
	require.NoError(t, err)
	defer s.Close()
	sr := newSeries(3)
	addOne(t, s, 1, "model.safetensors", sr.step(t))
	require.NoError(t, s.Settle())
	swept := s.sweeps
	require.NotNil(t, s.index.Load(), "the first commit's full cleanup built the index")
	for step := int64(2); step <= 12; step++ {
		addOne(t, s, step, "model.safetensors", sr.step(t))
		require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after adding %d", step)
	}
	ft := fineTune(sr, 7)
	addTo(t, s, "ft", &RunParent{Run: MainRun, Step: 12}, ft.step(t))
	addTo(t, s, "ft", nil, ft.step(t))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after the run's adds")
	assert.Equal(t, swept, s.sweeps, "an add's cleanup swept the whole store")

	// The same bytes as an earlier checkpoint: objects named again before
	// their removal stay.
	addOne(t, s, 13, "model.safetensors", sr.step(t))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir))
	require.NoError(t, s.Remove(5))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after a remove")
	require.NoError(t, s.RemoveRun("ft"))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after a run's removal")
	assert.Equal(t, swept, s.sweeps, "a remove's cleanup swept the whole store")
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
}

// While a reader holds a snapshot, a commit's cleanup removes nothing (the
// reader may be decoding what the commit dropped); the next commit after
// the reader is gone removes it, still without a sweep.
func TestWhatAReaderHeldGoesAtTheNextCommit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	sr := newSeries(4)
	addOne(t, s, 1, "model.safetensors", sr.step(t))
	addOne(t, s, 2, "model.safetensors", sr.step(t))
	require.NoError(t, s.Settle())
	swept := s.sweeps
	require.NoError(t, withReader(dir, MainRun, func(_ *Store, _ *Reader) error {
		addOne(t, s, 3, "model.safetensors", sr.step(t))
		return s.Settle()
	}))
	named, files := namedNow(t, s), objectFiles(t, dir)
	for o := range named {
		assert.True(t, files[o], "%s is named and missing", o)
	}
	assert.Greater(t, len(files), len(named), "the demotion's dropped keyframes stayed while the reader held them")
	addOne(t, s, 4, "model.safetensors", sr.step(t))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir))
	assert.Equal(t, swept, s.sweeps)
}

// objectsSize is the bytes of every file under objects/.
func objectsSize(t *testing.T, dir string) int64 {
	return dirBytes(t, filepath.Join(dir, "objects"))
}

// ObjectBytes follows the size of objects/ through adds, their demotions,
// a remove and a cleanup held off by a reader, without a walk: what the
// Trainer callback reports as a checkpoint's cost.
func TestObjectBytesIsTheGrowthOfObjects(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sr := newSeries(5)
	for step := int64(1); step <= 6; step++ {
		addOne(t, s, step, "model.safetensors", sr.step(t))
		require.NoError(t, s.Settle())
		assert.Equal(t, objectsSize(t, dir), s.ObjectBytes(), "after adding %d", step)
	}
	require.NoError(t, withReader(dir, MainRun, func(_ *Store, _ *Reader) error {
		addOne(t, s, 7, "model.safetensors", sr.step(t))
		return s.Settle()
	}))
	assert.Equal(t, objectsSize(t, dir), s.ObjectBytes(), "what a reader held is still there, and counted")
	require.NoError(t, s.Remove(3))
	assert.Equal(t, objectsSize(t, dir), s.ObjectBytes(), "after a remove")
	s.Close()

	// A new handle counts from its open: its open's cleanup is not its work.
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, s.ObjectBytes())
	before := objectsSize(t, dir)
	addOne(t, s, 8, "model.safetensors", sr.step(t))
	require.NoError(t, s.Settle())
	assert.Equal(t, objectsSize(t, dir)-before, s.ObjectBytes())
}
