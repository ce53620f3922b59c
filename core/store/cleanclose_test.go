package store

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// lockText is writer.lock's content.
func lockText(t *testing.T, dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "writer.lock"))
	require.NoError(t, err)
	return string(b)
}

// die ends a writer as kill -9 would: its lock goes with the process, and
// nothing it would have done at Close happens.
func die(s *Store) {
	_ = s.wlock.Close()
	s.wlock = nil
	s.Close()
}

// plantOrphan links a copy of one of the store's objects under a name no
// record uses: what a writer that died between writing an object and its
// commit leaves.
func plantOrphan(t *testing.T, dir string) string {
	for o := range objectFiles(t, dir) {
		if len(o) != 64 {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "objects", o[:2], o))
		require.NoError(t, err)
		name := o[:2] + strings.Repeat("0", len(o)-2)
		require.NoError(t, os.WriteFile(filepath.Join(dir, "objects", name[:2], name), b, 0o644))
		return name
	}
	t.Fatal("the store holds no object")
	return ""
}

// A writer that closes with nothing unnamed says so in writer.lock; the next
// writer's open then reads no record and lists no object (no sweep), and
// its commits' cleanups still leave objects/ holding exactly what the
// newest generation names, through the index it counted beside its work.
func TestAWriterAfterACleanCloseOpensWithoutASweep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3})
	require.NoError(t, err)
	sr := newSeries(5)
	for step := int64(1); step <= 4; step++ {
		addOne(t, s, step, "model.safetensors", sr.step(t))
	}
	s.Close()
	assert.Equal(t, "closed "+itoa(s.gen)+"\n", lockText(t, dir))

	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	assert.Zero(t, s.sweeps, "the open swept a store whose last writer closed cleanly")
	assert.Regexp(t, `^\d+\n$`, lockText(t, dir), "an open writer's lock holds its pid")
	for step := int64(5); step <= 8; step++ {
		addOne(t, s, step, "model.safetensors", sr.step(t))
		require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after adding %d", step)
	}
	require.NoError(t, s.Remove(6))
	require.Equal(t, namedNow(t, s), objectFiles(t, dir), "after a remove")
	assert.Zero(t, s.sweeps, "a commit's cleanup swept the store")
	s.Close()

	// A reader's open and close change nothing.
	r, err := Open(dir, Options{})
	require.NoError(t, err)
	r.Close()
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, s.sweeps)
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
}

func itoa(g uint64) string { return string(appendUint(nil, g)) }

func appendUint(b []byte, g uint64) []byte {
	if g >= 10 {
		b = appendUint(b, g/10)
	}
	return append(b, byte('0'+g%10))
}

// A commit whose cleanup comes before the count is done removes nothing
// then; Close waits for the count and removes what the commits left
// unnamed, so the store is clean for the next writer.
func TestWhatACommitDropsWhileTheCountRunsGoesAtClose(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3})
	require.NoError(t, err)
	sr := newSeries(6)
	for step := int64(1); step <= 3; step++ {
		addOne(t, s, step, "model.safetensors", sr.step(t))
	}
	s.Close()

	release := make(chan struct{})
	t.Cleanup(func() { countHook = nil })
	countHook = func() { <-release }
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	addOne(t, s, 4, "model.safetensors", sr.step(t))
	addOne(t, s, 5, "model.safetensors", sr.step(t))
	require.NoError(t, s.Settle())
	assert.Nil(t, s.index.Load(), "the count finished while its hook held it")
	files, named := objectFiles(t, dir), namedNow(t, s)
	for o := range named {
		assert.True(t, files[o], "%s is named and missing", o)
	}
	assert.Greater(t, len(files), len(named), "the demotions dropped keyframes, and nothing removed them yet")
	close(release)
	s.Close()
	assert.Zero(t, s.sweeps)
	assert.Equal(t, "closed "+itoa(s.gen)+"\n", lockText(t, dir))

	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, s.sweeps)
	require.Equal(t, namedNow(t, s), objectFiles(t, dir), "the close left something unnamed")
}

// A writer that dies leaves its pid in writer.lock: the next writer sweeps
// and removes what the dead one left unnamed.
func TestAWriterThatDiesLeavesTheSweepToTheNext(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sr := newSeries(7)
	addOne(t, s, 1, "model.safetensors", sr.step(t))
	addOne(t, s, 2, "model.safetensors", sr.step(t))
	require.NoError(t, s.Settle())
	orphan := plantOrphan(t, dir)
	die(s)
	assert.NotContains(t, lockText(t, dir), "closed")

	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	assert.Equal(t, 1, s.sweeps, "the open after a dead writer did not sweep")
	assert.False(t, objectFiles(t, dir)[orphan], "the dead writer's object is still there")
	require.Equal(t, namedNow(t, s), objectFiles(t, dir))
	s.Close()
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, s.sweeps)
}

// A participant links objects without the writer lock; one that closes
// with its part never committed leaves them unnamed. The staged marker it
// made first makes the next writer sweep them away, and the sweep removes
// the marker once no part folder is left.
func TestAnUncommittedPartMakesTheNextWriterSweep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sr := newSeries(8)
	addOne(t, w, 1, "model.safetensors", sr.step(t))
	w.Close()
	before := objectFiles(t, dir)

	_, p := stage(t, dir, map[string][]byte{"rank0.safetensors": sr.step(t)})
	staged := objectFiles(t, dir)
	assert.Greater(t, len(staged), len(before), "the part linked no object")
	// While the participant holds its finished part, a writer keeps the
	// part's objects and the marker.
	w, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	assert.Equal(t, 1, w.sweeps)
	assert.Equal(t, staged, objectFiles(t, dir))
	w.Close()
	assert.FileExists(t, filepath.Join(dir, stagedMarker))
	p.Close() // never committed

	w, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	assert.Equal(t, 1, w.sweeps, "the open after an abandoned part did not sweep")
	assert.Equal(t, before, objectFiles(t, dir), "the abandoned part's objects are still there")
	assert.NoFileExists(t, filepath.Join(dir, stagedMarker))
	w.Close()
	w, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	assert.Zero(t, w.sweeps)
}

// writer.lock is anyone's to write. A line that does not parse, or names
// another generation than the newest, makes the next writer sweep; one
// forged to name the newest can only make it skip removing objects: the
// orphan stays (a repair removes it) and every checkpoint still restores.
func TestAForgedClosedLineNeverCostsACheckpoint(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sr := newSeries(9)
	addOne(t, s, 1, "model.safetensors", sr.step(t))
	addOne(t, s, 2, "model.safetensors", sr.step(t))
	s.Close()
	gen := s.gen
	lock := filepath.Join(dir, "writer.lock")
	for _, text := range []string{
		"closed " + itoa(gen+1) + "\n", "closed " + itoa(gen-1) + "\n", "closed " + itoa(gen),
		"closed +" + itoa(gen) + "\n", "closed 0\n", "closed 99999999999999999999999\n", "closed \n",
		"CLOSED " + itoa(gen) + "\n", "closed " + itoa(gen) + "\nx", "1234\n", "",
	} {
		require.NoError(t, os.WriteFile(lock, []byte(text), 0o644))
		s, err = Open(dir, Options{Write: true})
		require.NoError(t, err)
		assert.Equal(t, 1, s.sweeps, "%q", text)
		s.Close()
	}
	orphan := plantOrphan(t, dir)
	require.NoError(t, os.WriteFile(lock, []byte("closed "+itoa(gen)+"\n"), 0o644))
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Zero(t, s.sweeps)
	assert.True(t, objectFiles(t, dir)[orphan])
	probs, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, probs)
	c, err := s.Repair()
	require.NoError(t, err)
	assert.Equal(t, 1, c.Objects)
	assert.False(t, objectFiles(t, dir)[orphan])
}

func TestParseClosed(t *testing.T) {
	g, ok := parseClosed([]byte("closed 42\n"))
	assert.True(t, ok)
	assert.Equal(t, uint64(42), g)
	g, ok = parseClosed([]byte("closed 18446744073709551615\n"))
	assert.True(t, ok)
	assert.Equal(t, uint64(18446744073709551615), g)
	for _, bad := range []string{"closed 18446744073709551616\n", "closed -1\n", "closed 1 \n", " closed 1\n", "closed 0x1\n", "closed ١\n"} {
		_, ok := parseClosed([]byte(bad))
		assert.False(t, ok, "%q", bad)
	}
}

// staged is anyone's to plant. A link there (to a file outside the store)
// makes a writer sweep, and the sweep removes the link itself, never its
// target; a participant finds it there and stages without following it.
func TestAPlantedStagedLinkIsNeverFollowed(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sr := newSeries(10)
	addOne(t, w, 1, "model.safetensors", sr.step(t))
	w.Close()
	outside := filepath.Join(t.TempDir(), "victim")
	require.NoError(t, os.WriteFile(outside, []byte("keep me"), 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, stagedMarker)))

	_, p := stage(t, dir, map[string][]byte{"rank0.safetensors": sr.step(t)})
	p.Close()
	b, err := os.ReadFile(outside)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b), "staging wrote through the link")

	w, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	assert.Equal(t, 1, w.sweeps, "a planted link did not make the writer sweep")
	_, err = os.Lstat(filepath.Join(dir, stagedMarker))
	assert.ErrorIs(t, err, os.ErrNotExist, "the sweep left the link")
	b, err = os.ReadFile(outside)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))
	require.Equal(t, namedNow(t, w), objectFiles(t, dir))
}

// staged planted as a FIFO or a folder (with something in it): a writer
// never opens it (no hang on the FIFO) and sweeps while it is there,
// losing nothing; a participant stages beside it. The sweep unlinks a
// FIFO as it would the file, so the next open skips the sweep; a folder
// it cannot unlink makes every open sweep (as before clean closes).
func TestAStagedThatIsNotAFileMakesEveryWriterSweep(t *testing.T) {
	for _, kind := range []string{"fifo", "folder"} {
		t.Run(kind, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "s")
			w, err := Open(dir, Options{Write: true})
			require.NoError(t, err)
			sr := newSeries(11)
			addOne(t, w, 1, "model.safetensors", sr.step(t))
			w.Close()
			p := filepath.Join(dir, stagedMarker)
			if kind == "fifo" {
				require.NoError(t, syscall.Mkfifo(p, 0o644))
			} else {
				require.NoError(t, os.MkdirAll(filepath.Join(p, "x"), 0o755))
			}
			_, part := stage(t, dir, map[string][]byte{"rank0.safetensors": sr.step(t)})
			part.Close()
			for i := 0; i < 2; i++ {
				w, err = Open(dir, Options{Write: true})
				require.NoError(t, err)
				want := 1
				if kind == "fifo" && i > 0 {
					want = 0
				}
				assert.Equal(t, want, w.sweeps, "open %d", i)
				require.Equal(t, namedNow(t, w), objectFiles(t, dir))
				probs, err := w.Verify(true)
				require.NoError(t, err)
				assert.Empty(t, probs)
				w.Close()
			}
		})
	}
}

// writer.lock planted as a FIFO: opening to write never hangs on it, and
// never skips the sweep on what it cannot read.
func TestAWriterLockThatIsAFIFONeverSkipsTheSweep(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	addOne(t, w, 1, "model.safetensors", newSeries(12).step(t))
	w.Close()
	lock := filepath.Join(dir, "writer.lock")
	require.NoError(t, os.Remove(lock))
	require.NoError(t, syscall.Mkfifo(lock, 0o644))
	err = inTime(t, 30*time.Second, func() error {
		s, err := Open(dir, Options{Write: true})
		if err == nil {
			assert.Equal(t, 1, s.sweeps)
			s.Close()
		}
		return nil
	})
	require.NoError(t, err)
}
