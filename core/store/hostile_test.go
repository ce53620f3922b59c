package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// The store as untrusted input (docs/FORMAT.md §11.8): links, FIFOs and
// devices planted in it, damaged records and manifests, records that claim
// more than a reader may decode, and a destination raced while a restore
// writes into it.

// fiveSteps is a store of checkpoints 1..5 (K = 3) and what each held.
func fiveSteps(t *testing.T) (dir string, want map[int64][]byte) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3})
	require.NoError(t, err)
	defer s.Close()
	ser := newSeries(17)
	want = map[int64][]byte{}
	for step := int64(1); step <= 5; step++ {
		b := ser.step(t)
		want[step] = b
		addFiles(t, s, step, map[string]string{
			"model.safetensors": write(t, src, fmt.Sprintf("%d/m.st", step), b),
			"sub/config.json":   write(t, src, fmt.Sprintf("%d/c.json", step), []byte(`{"a": 1}`)),
		})
	}
	return dir, want
}

// outsideDir is a folder beside the store holding a file that must survive.
func outsideDir(t *testing.T) string {
	d := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(d, "precious"), []byte("keep me"), 0o644))
	return d
}

func assertUntouched(t *testing.T, outside string) {
	t.Helper()
	ents, err := os.ReadDir(outside)
	require.NoError(t, err)
	require.Len(t, ents, 1, "something was written into the folder a planted link points to")
	b, err := os.ReadFile(filepath.Join(outside, "precious"))
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))
}

func recordOf(t *testing.T, dir string, step int64) string {
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	m, err := s.newestManifest()
	require.NoError(t, err)
	for _, c := range m.Checkpoints {
		if c.Step == step {
			return c.Object
		}
	}
	t.Fatalf("no step %d", step)
	return ""
}

// objectFile is the path of object h in the store in dir.
func objectFile(dir, h string) string { return filepath.Join(dir, "objects", h[:2], h) }

func flip(t *testing.T, p string) {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	b[len(b)/2] ^= 0x10
	require.NoError(t, os.WriteFile(p, b, 0o644))
}

func restoreErr(dir string, step int64, dest string) error {
	return withCheckpoint(dir, step, func(_ *Store, rd *Reader, c *Checkpoint) error {
		return rd.Restore(c, dest, false)
	})
}

func TestASymlinkedTmpIsReplacedNeverEmptied(t *testing.T) {
	dir, _ := fiveSteps(t)
	outside := outsideDir(t)
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "tmp")))
	require.NoError(t, os.Symlink(outside, filepath.Join(dir, "tmp")))
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	_, err = s.Repair()
	require.NoError(t, err)
	require.NoError(t, s.Remove(3))
	s.Close()
	assertUntouched(t, outside)
	st, err := os.Lstat(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.True(t, st.IsDir(), "tmp/ is a real folder again")
}

func TestASymlinkedObjectFolderIsNeverWrittenOrEmptied(t *testing.T) {
	dir, _ := fiveSteps(t)
	outside := outsideDir(t)
	// Move one objects/<hh> aside and plant a link to a folder elsewhere.
	ents, err := os.ReadDir(filepath.Join(dir, "objects"))
	require.NoError(t, err)
	hh := filepath.Join(dir, "objects", ents[0].Name())
	require.NoError(t, os.RemoveAll(hh))
	require.NoError(t, os.Symlink(outside, hh))

	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err, "opening runs cleanup, which must not follow the link")
	c, err := s.Repair()
	require.NoError(t, err)
	assert.Contains(t, c.Foreign, "objects/"+ents[0].Name())
	problems, err := s.Verify(false)
	require.NoError(t, err)
	for _, p := range problems {
		assert.NotContains(t, p.Message, "keep me")
	}
	s.Close()
	assertUntouched(t, outside)
}

func TestAWriterLockThatIsALinkIsNeverTruncated(t *testing.T) {
	dir, _ := fiveSteps(t)
	outside := outsideDir(t)
	lock := filepath.Join(dir, "writer.lock")
	require.NoError(t, os.Remove(lock))
	require.NoError(t, os.Symlink(filepath.Join(outside, "precious"), lock))
	_, err := Open(dir, Options{Write: true})
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.ELOOP)
	assertUntouched(t, outside)

	// A hard link is the same file under another name: refused too.
	require.NoError(t, os.Remove(lock))
	require.NoError(t, os.Link(filepath.Join(outside, "precious"), lock))
	_, err = Open(dir, Options{Write: true})
	require.ErrorContains(t, err, "hard links")
	b, _ := os.ReadFile(filepath.Join(outside, "precious"))
	assert.Equal(t, "keep me", string(b))
}

// frameObject is the path of a frame object of checkpoint step's tensor w.
func frameObject(t *testing.T, dir string, step int64) string {
	var p string
	require.NoError(t, withCheckpoint(dir, step, func(s *Store, _ *Reader, c *Checkpoint) error {
		for _, f := range c.Files {
			for _, r := range f.Regions {
				if r.Name == "w" {
					p = s.objectPath(r.Object.Object)
				}
			}
		}
		return nil
	}))
	require.NotEmpty(t, p, "no region w")
	return p
}

// inTime runs fn and fails the test if it takes longer than limit: a
// reader must refuse a FIFO, never wait on it.
func inTime(t *testing.T, limit time.Duration, fn func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		return err
	case <-time.After(limit):
		t.Fatalf("still running after %v", limit)
		return nil
	}
}

func TestObjectsThatAreNotFilesAreRefusedWithoutHanging(t *testing.T) {
	for _, kind := range []string{"fifo", "dev-zero", "folder"} {
		t.Run(kind, func(t *testing.T) {
			dir, want := fiveSteps(t)
			p := frameObject(t, dir, 5)
			require.NoError(t, os.Remove(p))
			switch kind {
			case "fifo":
				require.NoError(t, syscall.Mkfifo(p, 0o644))
			case "dev-zero":
				require.NoError(t, os.Symlink("/dev/zero", p))
			case "folder":
				require.NoError(t, os.Mkdir(p, 0o755))
			}
			err := inTime(t, 20*time.Second, func() error { return restoreErr(dir, 5, filepath.Join(t.TempDir(), "out")) })
			require.ErrorIs(t, err, errs.Corrupt)
			// A read of its files' bytes (decodeRegions, which also asks
			// the kernel to read ahead every object it will decode).
			err = inTime(t, 20*time.Second, func() error { return readRangesErr(dir, 5) })
			require.ErrorIs(t, err, errs.Corrupt)
			// The others do not decode through checkpoint 5's w... except
			// the one whose delta is coded against it: 4.
			require.NoError(t, restoreErr(dir, 1, filepath.Join(t.TempDir(), "out")))
			s, err := Open(dir, Options{})
			require.NoError(t, err)
			defer s.Close()
			problems := inTime(t, 20*time.Second, func() error {
				ps, err := s.Verify(true)
				require.NoError(t, err)
				require.NotEmpty(t, ps)
				return nil
			})
			require.NoError(t, problems)
			_ = want
		})
	}
}

func TestAFIFOAsTheNewestManifestIsRefusedWithoutHanging(t *testing.T) {
	dir, _ := fiveSteps(t)
	gens, err := os.ReadDir(filepath.Join(dir, "manifests"))
	require.NoError(t, err)
	g := 0
	for _, e := range gens {
		if strings.HasSuffix(e.Name(), ".json") {
			g++
		}
	}
	require.Equal(t, 1, g)
	next := filepath.Join(dir, "manifests", manifestName(1000))
	require.NoError(t, syscall.Mkfifo(next, 0o644))
	err = inTime(t, 20*time.Second, func() error {
		_, err := Open(dir, Options{})
		return err
	})
	require.ErrorIs(t, err, errs.Corrupt)
}

func TestADamagedRecordCostsNothingWhileItsCopyIsIntact(t *testing.T) {
	dir, want := fiveSteps(t)
	rec := recordOf(t, dir, 3)
	flip(t, objectFile(dir, rec))
	for step, b := range want {
		got := restoreAll(t, dir, step)
		assert.Equal(t, b, got["model.safetensors"], "step %d", step)
	}
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	ps, err := s.Verify(true)
	require.NoError(t, err)
	require.Len(t, ps, 1)
	assert.True(t, ps[0].Degraded)
	assert.Equal(t, rec, ps[0].Object)
	c, err := s.Repair()
	require.NoError(t, err)
	assert.Equal(t, 1, c.Copies)
	ps, err = s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, ps)
}

func TestALostRecordCostsItsCheckpointAndWhatDecodesThroughIt(t *testing.T) {
	dir, want := fiveSteps(t)
	rec := recordOf(t, dir, 3)
	flip(t, objectFile(dir, rec))
	flip(t, objectFile(dir, rec)+copySuffix)

	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err, "a lost record does not stop the store from opening")
	defer s.Close()
	ps, err := s.Verify(true)
	require.NoError(t, err)
	damaged := map[int64]bool{}
	for _, p := range ps {
		if !p.Degraded {
			damaged[p.Step] = true
		}
	}
	// 3 is lost; 2 is coded against 3 (reverse deltas, K = 3). 1 starts
	// a new chain at K, 4 and 5 are after it: they restore.
	assert.True(t, damaged[3])
	for step := int64(1); step <= 5; step++ {
		err := restoreErr(dir, step, filepath.Join(t.TempDir(), "out"))
		if damaged[step] {
			assert.ErrorIs(t, err, errs.Corrupt, "step %d", step)
			continue
		}
		require.NoError(t, err, "step %d", step)
		assert.Equal(t, want[step], restoreAll(t, dir, step)["model.safetensors"], "step %d", step)
	}
	assert.False(t, damaged[5], "the newest decodes alone")
	assert.Less(t, len(damaged), 5, "the damage stayed local")

	// Cleanup cannot tell which objects the lost record needed: it keeps
	// every object, and says why.
	c, err := s.Repair()
	require.NoError(t, err)
	assert.NotEmpty(t, c.Kept)
	// Removing the lost checkpoint works, and then cleanup runs again.
	require.NoError(t, s.Remove(3))
	c, err = s.Repair()
	require.NoError(t, err)
	assert.Empty(t, c.Kept)
	rd, err := s.Reader()
	require.NoError(t, err)
	assert.NotContains(t, rd.Steps(), int64(3))
	rd.Close()
	for _, step := range []int64{4, 5} {
		assert.Equal(t, want[step], restoreAll(t, dir, step)["model.safetensors"], "step %d after rm 3", step)
	}
}

func TestADamagedNewestManifestFallsBackToItsCopy(t *testing.T) {
	dir, want := fiveSteps(t)
	s0, err := Open(dir, Options{})
	require.NoError(t, err)
	gens, err := s0.generations()
	require.NoError(t, err)
	s0.Close()
	p := filepath.Join(dir, "manifests", manifestName(gens[0]))
	for _, damage := range []func(){
		func() { flip(t, p) },
		func() {
			b, _ := os.ReadFile(p)
			require.NoError(t, os.WriteFile(p, b[:len(b)/2], 0o644))
		},
		func() { require.NoError(t, os.Remove(p)) },
	} {
		good, err := os.ReadFile(p + copySuffix)
		require.NoError(t, err)
		damage()
		assert.Equal(t, want[5], restoreAll(t, dir, 5)["model.safetensors"])
		s, err := Open(dir, Options{Write: true})
		require.NoError(t, err)
		ps, err := s.Verify(false)
		require.NoError(t, err)
		require.NotEmpty(t, ps)
		assert.True(t, ps[0].Degraded)
		_, err = s.Repair()
		require.NoError(t, err)
		ps, err = s.Verify(true)
		require.NoError(t, err)
		assert.Empty(t, ps)
		gens, err = s.generations()
		require.NoError(t, err)
		s.Close()
		p = filepath.Join(dir, "manifests", manifestName(gens[0]))
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		assert.JSONEq(t, strings.Replace(string(good), fmt.Sprintf(`"generation": %d`, gens[0]-1), fmt.Sprintf(`"generation": %d`, gens[0]), 1), string(b))
	}
	// Both copies damaged: an error naming the generation, never a
	// silent fallback to an older one.
	flip(t, p)
	flip(t, p+copySuffix)
	_, err = Open(dir, Options{})
	require.ErrorIs(t, err, errs.Corrupt)
}

func TestOpeningAndLoadingTheNewestReadNoOtherRecord(t *testing.T) {
	dir, want := fiveSteps(t)
	for step := int64(1); step <= 4; step++ {
		rec := recordOf(t, dir, step)
		require.NoError(t, os.Remove(objectFile(dir, rec)))
		require.NoError(t, os.Remove(objectFile(dir, rec)+copySuffix))
	}
	// With every older record gone, the newest still opens, lists and
	// restores: nothing but its own record is read.
	assert.Equal(t, want[5], restoreAll(t, dir, 5)["model.safetensors"])
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	assert.Equal(t, []int64{1, 2, 3, 4, 5}, rd.Steps())
	c, err := rd.Checkpoint(0, true)
	require.NoError(t, err)
	chains, problem, err := rd.Chains(c)
	require.NoError(t, err)
	assert.Empty(t, problem)
	for _, ch := range chains {
		for _, n := range ch {
			assert.Equal(t, 1, n)
		}
	}
	_, err = rd.Checkpoint(2, false)
	assert.ErrorIs(t, err, errs.Corrupt)
}

func TestDecodesOverTheLimitAreRefusedBeforeAllocating(t *testing.T) {
	dir, want := fiveSteps(t)
	for _, lim := range []Limits{{Memory: 1000}, {Output: 1000}} {
		s, err := Open(dir, Options{Limits: lim})
		require.NoError(t, err)
		rd, err := s.Reader()
		require.NoError(t, err)
		c, err := rd.Checkpoint(2, false)
		require.NoError(t, err)
		err = rd.Restore(c, filepath.Join(t.TempDir(), "out"), false)
		assert.ErrorIs(t, err, errs.Limit, "%+v", lim)
		if lim.Memory != 0 {
			buf := make([]byte, 8)
			f, err := c.File("model.safetensors")
			require.NoError(t, err)
			assert.ErrorIs(t, rd.ReadRange(c, "model.safetensors", f.Size-100, buf), errs.Limit)
			ps, err := s.Verify(true)
			require.NoError(t, err)
			require.NotEmpty(t, ps)
			assert.Contains(t, ps[0].Message, "limit")
		}
		rd.Close()
		s.Close()
	}
	// A record that claims a tensor larger than this process may hold is
	// refused by default, with no limit given.
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	err = s.fits(&Region{Name: "huge", Size: machineMemory()/2 + 1}, 2)
	assert.ErrorIs(t, err, errs.Limit)
	assert.NoError(t, s.fits(&Region{Name: "w", Size: uint64(len(want[1]))}, 2))
	err = s.fits(&Region{Name: "overflow", Size: math.MaxUint64}, 2)
	assert.ErrorIs(t, err, errs.Limit)
}

func TestRestoreIsAllOrNothing(t *testing.T) {
	dir, _ := fiveSteps(t)
	// Damage the config's skeleton: it is restored after model.safetensors
	// has been written in full.
	require.NoError(t, withCheckpoint(dir, 5, func(s *Store, _ *Reader, c *Checkpoint) error {
		for _, f := range c.Files {
			if f.Path == "sub/config.json" {
				return os.Remove(s.objectPath(f.Skeleton.Object))
			}
		}
		return fmt.Errorf("no sub/config.json")
	}))
	parent := t.TempDir()
	err := restoreErr(dir, 5, filepath.Join(parent, "out"))
	require.ErrorIs(t, err, errs.Corrupt)
	ents, err := os.ReadDir(parent)
	require.NoError(t, err)
	assert.Empty(t, ents, "a failed restore leaves nothing: no partial DEST, no staging folder")
}

func TestRestoreRefusesANonEmptyDestUnlessForced(t *testing.T) {
	dir, want := fiveSteps(t)
	dest := t.TempDir()
	write(t, dest, "mine.txt", []byte("mine"))
	write(t, dest, "model.safetensors", []byte("old"))
	err := restoreErr(dir, 5, dest)
	require.ErrorIs(t, err, syscall.EEXIST)
	b, _ := os.ReadFile(filepath.Join(dest, "model.safetensors"))
	assert.Equal(t, "old", string(b))

	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	c, err := rd.Checkpoint(5, false)
	require.NoError(t, err)
	require.NoError(t, rd.Restore(c, dest, true))
	b, _ = os.ReadFile(filepath.Join(dest, "model.safetensors"))
	assert.Equal(t, want[5], b)
	b, _ = os.ReadFile(filepath.Join(dest, "mine.txt"))
	assert.Equal(t, "mine", string(b), "force replaces the checkpoint's files and keeps the rest")
	// An empty folder is not "existing content".
	empty := t.TempDir()
	require.NoError(t, rd.Restore(c, empty, false))
	// Modes are the recorded ones less the umask.
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	fresh := filepath.Join(t.TempDir(), "fresh")
	require.NoError(t, rd.Restore(c, fresh, false))
	st, err := os.Stat(filepath.Join(fresh, "model.safetensors"))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "0640 recorded, umask 077")
}

// A thread swaps every folder it sees below the destination (and the
// staging folder beside it) for a link to a folder elsewhere, as fast as
// it can, while restores run: nothing is ever written elsewhere.
func TestRacingFoldersIntoLinksNeverRedirectsARestore(t *testing.T) {
	dir, _ := fiveSteps(t)
	outside := outsideDir(t)
	parent := t.TempDir()
	var stop atomic.Bool
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for !stop.Load() {
			_ = filepath.WalkDir(parent, func(p string, d fs.DirEntry, err error) error {
				if err != nil || p == parent || !d.IsDir() || d.Type()&fs.ModeSymlink != 0 {
					return nil
				}
				if filepath.Base(p) == "sub" {
					aside := p + ".aside"
					if os.Rename(p, aside) == nil {
						if os.Symlink(outside, p) == nil {
							swaps.Add(1)
						}
					}
				}
				return nil
			})
		}
	}()
	for i := 0; i < 200 && swaps.Load() < 20; i++ {
		err := restoreErr(dir, 5, filepath.Join(parent, fmt.Sprintf("out-%d", i)))
		if err != nil && !errors.Is(err, errs.IO) {
			t.Errorf("restore %d: %v", i, err)
		}
		for _, f := range []string{"config.json", "model.safetensors"} {
			_, err := os.Lstat(filepath.Join(outside, f))
			require.True(t, os.IsNotExist(err), "restore %d wrote %s through a link", i, f)
		}
	}
	stop.Store(true)
	wg.Wait()
	assertUntouched(t, outside)
	t.Logf("%d folders swapped for links", swaps.Load())
	assert.Positive(t, swaps.Load(), "the race never landed; the test proved nothing")
}

func TestStepsStopAtTheLargestInt64(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	p := write(t, src, "a", []byte("x"))
	addFiles(t, s, math.MaxInt64, map[string]string{"a": p})
	_, err = s.Begin(0, false, nil)
	require.ErrorIs(t, err, errs.Invalid)
	require.ErrorContains(t, err, "no step comes after")
	_, err = s.Begin(-1, true, nil)
	require.ErrorIs(t, err, errs.Invalid)
}

func TestAURLIsNeverTakenForAFolder(t *testing.T) {
	cwd, err := os.Getwd()
	require.NoError(t, err)
	t.Chdir(t.TempDir())
	defer func() { _ = os.Chdir(cwd) }()
	for _, u := range []string{"s3://bucket/run", "gs://b/r", "file:///tmp/x", "HTTPS://h/x"} {
		_, err := Open(u, Options{Write: true})
		require.ErrorIs(t, err, errs.Unsupported, u)
	}
	ents, _ := os.ReadDir(".")
	assert.Empty(t, ents, "no folder named like the scheme was made")
	assert.Equal(t, "", SchemeOf("./s3:/x"))
	assert.Equal(t, "", SchemeOf("/data/a://b"))
}

func TestNamesWithControlCharactersAreRefused(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	p := write(t, src, "a", []byte("x"))
	for _, bad := range []string{"a\nb", "\x1b]0;pwned\x07", "x\x7f", "c1\u0085"} {
		tx, err := s.Begin(1, true, nil)
		require.NoError(t, err)
		assert.ErrorIs(t, tx.AddFile(bad, p, nil, ""), errs.Invalid, "%q", bad)
		tx.Abort()
		_, err = s.Begin(1, true, []string{bad})
		assert.ErrorIs(t, err, errs.Invalid, "tag %q", bad)
	}
	assert.Error(t, validPath("ok/\x1b[2J"))
	assert.NoError(t, validPath("ünïcode/名前.bin"))
}

// A record is printed by ls and info (its paths, tags and creation time):
// one that holds a control character in any of them is corrupt, and the
// error quotes it escaped.
func TestARecordWithAControlCharacterIsCorrupt(t *testing.T) {
	var good Checkpoint
	require.NoError(t, json.Unmarshal(seedRecord(), &good))
	_, err := parseCheckpoint(seedRecord(), 3, false)
	require.NoError(t, err)
	for name, edit := range map[string]func(c *Checkpoint){
		"path newline":   func(c *Checkpoint) { c.Files[0].Path = "m/x\nFAKE LINE" },
		"path escape":    func(c *Checkpoint) { c.Files[0].Path = "m/\x1b]0;pwned\x07x" },
		"tag escape":     func(c *Checkpoint) { c.Tags = []string{"ok\x1b]0;pwned\x07"} },
		"created escape": func(c *Checkpoint) { c.Created = "\x1b]0;pwned\x072026-01-01T00:00:00Z" },
		"created text":   func(c *Checkpoint) { c.Created = "yesterday" },
		"created long":   func(c *Checkpoint) { c.Created = strings.Repeat("9", 1000) },
	} {
		c := good
		c.Files = append([]File(nil), good.Files...)
		edit(&c)
		b, err := json.Marshal(c)
		require.NoError(t, err)
		_, err = parseCheckpoint(b, 3, false)
		assert.ErrorIs(t, err, errs.Corrupt, name)
		if err != nil {
			assert.NotRegexp(t, "[\x00-\x1f\x7f]", err.Error(), name)
		}
	}
}

func TestAFileThatAppearsInAnEmptyDestWhileRestoringIsNeverReplaced(t *testing.T) {
	dir, _ := fiveSteps(t)
	dest := t.TempDir()
	stagedHook = func() {
		write(t, dest, "sub/config.json", []byte("theirs"))
		write(t, dest, "sub/more/other.txt", []byte("theirs too"))
	}
	defer func() { stagedHook = nil }()
	err := restoreErr(dir, 5, dest)
	require.ErrorIs(t, err, syscall.EEXIST)
	b, err := os.ReadFile(filepath.Join(dest, "sub", "config.json"))
	require.NoError(t, err)
	assert.Equal(t, "theirs", string(b), "the file that appeared was replaced")
	// What the restore had linked in is taken back; what appeared stays.
	assert.Equal(t, []string{"sub/config.json", "sub/more/other.txt"}, listTree(t, dest))
}

func TestAStoreWhoseManifestsAreGoneIsNeverCommittedOver(t *testing.T) {
	dir, _ := fiveSteps(t)
	before := listTree(t, filepath.Join(dir, "objects"))
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "manifests")))
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, before, listTree(t, filepath.Join(dir, "objects")), "opening for writing removed objects")
	_, err = s.Begin(6, true, nil)
	require.ErrorIs(t, err, errs.Corrupt)
	require.ErrorContains(t, err, "no manifest")
	c, err := s.Repair()
	require.NoError(t, err)
	assert.NotEmpty(t, c.Kept)
	ps, err := s.Verify(false)
	require.NoError(t, err)
	require.Len(t, ps, 1)
	assert.Contains(t, ps[0].Message, "manifests are missing")
	assert.Equal(t, before, listTree(t, filepath.Join(dir, "objects")))
}

func TestAGenerationNumberNearTheTopIsNotTheStore(t *testing.T) {
	dir, want := fiveSteps(t)
	gens, err := os.ReadDir(filepath.Join(dir, "manifests"))
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(dir, "manifests", gens[0].Name()))
	require.NoError(t, err)
	top := filepath.Join(dir, "manifests", fmt.Sprintf("%020d.json", uint64(math.MaxUint64)))
	require.NoError(t, os.WriteFile(top, b, 0o644))
	require.NoError(t, os.WriteFile(top+copySuffix, b, 0o644))
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	p := write(t, t.TempDir(), "m.st", newSeries(3).step(t))
	addFiles(t, s, 6, map[string]string{"model.safetensors": p})
	rd, err := s.Reader()
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2, 3, 4, 5, 6}, rd.Steps())
	rd.Close()
	assert.Equal(t, want[5], restoreAll(t, dir, 5)["model.safetensors"])
}

func TestRepairReplacesAFolderPlantedAtARecordAndAHostileReadersLock(t *testing.T) {
	dir, want := fiveSteps(t)
	rec := recordOf(t, dir, 4)
	p := objectFile(dir, rec)
	require.NoError(t, os.Remove(p))
	require.NoError(t, os.MkdirAll(filepath.Join(p, "inside"), 0o755))
	require.NoError(t, os.Remove(filepath.Join(dir, "readers.lock")))
	require.NoError(t, syscall.Mkfifo(filepath.Join(dir, "readers.lock"), 0o644))
	_, err := func() (*Reader, error) {
		s, err := Open(dir, Options{})
		require.NoError(t, err)
		defer s.Close()
		return s.Reader()
	}()
	require.ErrorContains(t, err, "--repair replaces it")
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	c, err := s.Repair()
	require.NoError(t, err)
	assert.Contains(t, c.Foreign, "readers.lock (was not a regular file; replaced by one)")
	assert.Equal(t, 1, c.Copies)
	ps, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, ps)
	assert.Equal(t, want[4], restoreAll(t, dir, 4)["model.safetensors"])
}

func TestARestoreNeverWritesIntoTheStore(t *testing.T) {
	dir, _ := fiveSteps(t)
	for _, dest := range []string{dir, filepath.Join(dir, "objects"), filepath.Join(dir, "new")} {
		err := restoreErr(dir, 5, dest)
		require.ErrorIs(t, err, errs.Invalid, dest)
	}
	require.ErrorIs(t, restoreErr(dir, 5, ""), errs.Invalid)
	// A folder that holds the store is fine where no file lands in it.
	parent := filepath.Dir(dir)
	err := restoreErr(dir, 5, parent)
	assert.ErrorIs(t, err, syscall.EEXIST, "not empty: refused for that reason, not as the store")
}

func TestADeviceIsNoSourceAndAStreamCanBeStopped(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	tx, err := s.Begin(1, true, nil)
	require.NoError(t, err)
	require.ErrorIs(t, tx.AddFile("zero", "/dev/zero", nil, ""), syscall.ENODEV)
	// A FIFO whose writer never stops: the add ends when asked to.
	fifo := filepath.Join(t.TempDir(), "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o644))
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			return
		}
		defer f.Close()
		buf := make([]byte, 1<<16)
		for {
			if _, err := f.Write(buf); err != nil {
				return
			}
		}
	}()
	var calls atomic.Int64
	tx.Stop = func() error {
		if calls.Add(1) > 20 {
			return errs.Cancelled
		}
		return nil
	}
	err = inTime(t, 30*time.Second, func() error { return tx.AddFile("stream", fifo, nil, "") })
	require.ErrorIs(t, err, errs.Cancelled)
	tx.Abort()
}

// readRangesErr reads every file of checkpoint step whole through
// ReadRange and returns the first error.
func readRangesErr(dir string, step int64) error {
	return withCheckpoint(dir, step, func(_ *Store, rd *Reader, c *Checkpoint) error {
		for _, f := range c.Files {
			if err := rd.ReadRange(c, f.Path, 0, make([]byte, f.Size)); err != nil {
				return err
			}
		}
		return nil
	})
}
