package store

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// addTo adds one file to run as its next checkpoint.
func addTo(t *testing.T, s *Store, run string, parent *RunParent, b []byte) *Checkpoint {
	tx, err := s.BeginRun(run, parent, 0, false, nil)
	require.NoError(t, err)
	require.NoError(t, tx.AddFile("model.safetensors", write(t, t.TempDir(), "m.st", b), nil, ""))
	c, err := tx.Commit()
	require.NoError(t, err)
	return c
}

func restoreRun(t *testing.T, dir, run string, step int64) []byte {
	dest := t.TempDir()
	require.NoError(t, withReader(dir, run, func(_ *Store, rd *Reader) error {
		c, err := rd.Checkpoint(step, false)
		if err != nil {
			return err
		}
		return rd.Restore(c, dest, false)
	}))
	b, err := os.ReadFile(filepath.Join(dest, "model.safetensors"))
	require.NoError(t, err)
	return b
}

func dirBytes(t *testing.T, dir string) int64 {
	var n int64
	require.NoError(t, filepath.Walk(dir, func(_ string, fi os.FileInfo, err error) error {
		if err == nil && fi.Mode().IsRegular() {
			n += fi.Size()
		}
		return err
	}))
	return n
}

// fineTune drifts a copy of base's weights (a fine-tune that started from it).
func fineTune(base *series, seed int64) *series {
	ft := newSeries(seed)
	copy(ft.weights, base.weights)
	copy(ft.frozen, base.frozen)
	return ft
}

// twoFineTunes is a store whose main run holds a pretrained checkpoint,
// and runs a and b fine-tunes of it (three checkpoints each).
func twoFineTunes(t *testing.T, k int) (dir string, want map[string][][]byte) {
	dir = filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true, KeyframeInterval: k})
	require.NoError(t, err)
	defer s.Close()
	pre := newSeries(5)
	want = map[string][][]byte{MainRun: {pre.step(t)}}
	addTo(t, s, MainRun, nil, want[MainRun][0])
	for i, run := range []string{"a", "b"} {
		ft := fineTune(pre, int64(10+i))
		for step := 0; step < 3; step++ {
			b := ft.step(t)
			want[run] = append(want[run], b)
			c := addTo(t, s, run, &RunParent{Run: MainRun, Step: 0}, b)
			assert.Equal(t, int64(step), c.Step)
		}
	}
	return dir, want
}

func TestTwoFineTunesOfOneBaseShareItAndRestoreByteIdentical(t *testing.T) {
	dir, want := twoFineTunes(t, 10)
	for run, bs := range want {
		for step, b := range bs {
			assert.Equal(t, b, restoreRun(t, dir, run, int64(step)), "%s/%d", run, step)
		}
	}
	// A run's first checkpoint is coded against its parent.
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	require.NoError(t, rd.Use("b"))
	c, err := rd.Checkpoint(0, false)
	require.NoError(t, err)
	deltas := 0
	for _, r := range c.Files[0].Regions {
		if r.Ref != nil && r.Ref.Run == MainRun {
			deltas++
		}
	}
	assert.Positive(t, deltas)
	runs := rd.Runs()
	require.Len(t, runs, 3)
	assert.Equal(t, RunInfo{Name: "b", Parent: &RunParent{Run: MainRun}, Count: 3, Newest: 2}, runs[2])
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
}

func TestARunsFirstCheckpointCostsLessThanInAStoreOfItsOwn(t *testing.T) {
	parent := t.TempDir()
	shared, alone := filepath.Join(parent, "shared"), filepath.Join(parent, "alone")
	pre := newSeries(5)
	base := pre.step(t)
	ft := fineTune(pre, 9)
	first := ft.step(t)

	s, err := Open(shared, Options{Write: true})
	require.NoError(t, err)
	addTo(t, s, MainRun, nil, base)
	before := dirBytes(t, filepath.Join(shared, "objects"))
	addTo(t, s, "ft", &RunParent{Run: MainRun, Step: 0}, first)
	s.Close()
	grown := dirBytes(t, filepath.Join(shared, "objects")) - before

	a, err := Open(alone, Options{Write: true})
	require.NoError(t, err)
	addTo(t, a, MainRun, nil, first)
	a.Close()
	own := dirBytes(t, filepath.Join(alone, "objects"))
	assert.Less(t, float64(grown), 0.8*float64(own), "grew %d bytes, %d alone", grown, own)
}

func TestRemovingARunOrItsParentNeverBreaksAnother(t *testing.T) {
	dir, want := twoFineTunes(t, 10)
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	require.NoError(t, s.RemoveRun("a"))
	require.NoError(t, s.RemoveFrom(MainRun, 0)) // b's parent
	s.Close()
	for step, b := range want["b"] {
		assert.Equal(t, b, restoreRun(t, dir, "b", int64(step)))
	}
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	require.ErrorIs(t, s.RemoveRun("a"), errs.Invalid)
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
	require.NoError(t, s.RemoveRun(MainRun))
	require.NoError(t, s.RemoveRun("b"))
	// Nothing is left but what an empty store holds.
	live, err := func() (map[string]bool, error) { sn, err := s.snapshot(); require.NoError(t, err); return sn.live() }()
	require.NoError(t, err)
	assert.Empty(t, live)
}

func TestAParentKeepsItsChildrensChainsWithinK(t *testing.T) {
	// K = 2: a child's first checkpoint decodes through its parent's
	// keyframe; the parent's next checkpoint must not turn that keyframe
	// into a delta, which would make the child's chain 3 long.
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 2})
	require.NoError(t, err)
	pre := newSeries(5)
	main0 := pre.step(t)
	addTo(t, s, MainRun, nil, main0)
	child := fineTune(pre, 3).step(t)
	addTo(t, s, "c", &RunParent{Run: MainRun, Step: 0}, child)
	main1 := pre.step(t)
	addTo(t, s, MainRun, nil, main1)
	probs, err := s.Verify(true)
	s.Close()
	require.NoError(t, err)
	assert.Empty(t, probs)
	assert.Equal(t, child, restoreRun(t, dir, "c", 0))
	assert.Equal(t, main0, restoreRun(t, dir, MainRun, 0))
	assert.Equal(t, main1, restoreRun(t, dir, MainRun, 1))
}

func TestRunsAreCheckedWhereTheyAreNamed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	b := newSeries(1).step(t)
	addTo(t, s, MainRun, nil, b)
	for _, c := range []struct {
		run    string
		parent *RunParent
	}{
		{"../x", nil}, {"", &RunParent{Run: "main"}}, {"x y", nil}, {"r", &RunParent{Run: "nope"}},
		{"r", &RunParent{Run: MainRun, Step: 7}}, {"r", &RunParent{Base: true}}, {"r", &RunParent{Run: "r"}},
		{MainRun, &RunParent{Run: MainRun}},
	} {
		_, err := s.BeginRun(c.run, c.parent, 0, false, nil)
		require.ErrorIs(t, err, errs.Invalid, fmt.Sprintf("%q %+v", c.run, c.parent))
	}
	addTo(t, s, "r", &RunParent{Run: MainRun, Step: 0}, b)
	_, err = s.BeginRun("r", &RunParent{Base: true}, 0, false, nil)
	require.ErrorIs(t, err, errs.Invalid) // another parent than its own
	// The same content as the parent: stored once (dedup or a tiny delta).
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
}

func TestAStoreWithoutRunsStaysLayoutOne(t *testing.T) {
	dir, _ := fiveSteps(t)
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	gens, err := s.generations() // five adds, and a demotion after each but the first when they are deferred
	s.Close()
	require.NoError(t, err)
	require.NotEmpty(t, gens)
	b, err := os.ReadFile(filepath.Join(dir, "manifests", manifestName(gens[0])))
	require.NoError(t, err)
	assert.Contains(t, string(b), `"version": 1`)
	assert.NotContains(t, string(b), `"runs"`)
}
