package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/s3"
	"github.com/tpde/tpde/core/s3/s3test"
)

// remoteFor starts nothing: it is a client of srv on a fresh bucket, and
// the store.Remote of prefix "run" in it.
func remoteFor(t *testing.T, srv *s3test.Server, bucket string) (*s3.Client, *s3.Remote) {
	t.Helper()
	srv.SetEnv(t)
	cfg, err := s3.ConfigFromEnv()
	require.NoError(t, err)
	c, err := s3.New(context.Background(), cfg)
	require.NoError(t, err)
	require.NoError(t, c.CreateBucket(context.Background(), bucket))
	return c, s3.NewRemote(c, s3.Location{Bucket: bucket, Prefix: "run"})
}

// A store in a bucket holds what a local store holds, and a second cache
// (another machine) reads every checkpoint from the bucket alone.
func TestARemoteStoreRoundTripsThroughAFreshCache(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-rt")
	src := t.TempDir()
	s, err := Open(filepath.Join(t.TempDir(), "cache1"), Options{Write: true, KeyframeInterval: 3, Remote: rm})
	require.NoError(t, err)
	ser := newSeries(3)
	want := map[int64][]byte{}
	for step := int64(1); step <= 5; step++ {
		want[step] = ser.step(t)
		addFiles(t, s, step, map[string]string{"model.safetensors": write(t, src, fmt.Sprintf("%d.st", step), want[step])})
	}
	require.NoError(t, s.Settle())
	s.Close()

	cache2 := filepath.Join(t.TempDir(), "cache2")
	r, err := Open(cache2, Options{Remote: rm})
	require.NoError(t, err)
	rd, err := r.Reader()
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 2, 3, 4, 5}, rd.Steps())
	deltas := 0
	for step, b := range want {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		for _, reg := range c.Files[0].Regions {
			if reg.Ref != nil {
				deltas++
			}
		}
		got := make([]byte, len(b))
		require.NoError(t, rd.ReadRange(c, "model.safetensors", 0, got))
		require.Equal(t, b, got, "step %d", step)
	}
	assert.Positive(t, deltas, "the older checkpoints decode through reverse deltas fetched from the bucket")
	rd.Close()
	r.Close()
}

// Two writers that opened the store at the same generation race for the
// next: exactly one commits; the other is told so and commits nothing.
func TestTwoRemoteWritersRacingCommitExactlyOne(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-race")
	src := t.TempDir()
	ser := newSeries(5)
	first := ser.step(t)
	s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	addFiles(t, s, 1, map[string]string{"m.st": write(t, src, "1.st", first)})
	s.Close()

	a, err := Open(filepath.Join(t.TempDir(), "ca"), Options{Write: true, Remote: rm, Recode: RecodeInline})
	require.NoError(t, err)
	defer a.Close()
	b, err := Open(filepath.Join(t.TempDir(), "cb"), Options{Write: true, Remote: rm, Recode: RecodeInline})
	require.NoError(t, err)
	defer b.Close()
	second, third := ser.step(t), ser.step(t)
	addFiles(t, a, 2, map[string]string{"m.st": write(t, src, "2.st", second)})
	tx, err := b.Begin(2, true, nil)
	require.NoError(t, err)
	require.NoError(t, tx.AddFile("m.st", write(t, src, "3.st", third), nil, ""))
	_, err = tx.Commit()
	require.Error(t, err)
	assert.ErrorIs(t, err, syscall.EEXIST)
	assert.Contains(t, err.Error(), "another writer committed")

	r, err := Open(filepath.Join(t.TempDir(), "check"), Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	got := restoreAllFrom(t, r, 2)
	assert.Equal(t, second, got["m.st"], "the winner's checkpoint is the one stored")
	assert.Equal(t, first, restoreAllFrom(t, r, 1)["m.st"])
}

// An object the bucket serves with other bytes than its name says is
// refused before anything decodes it, and never enters the cache.
func TestAnObjectTheBucketAltersIsRefusedAndNotCached(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-lie")
	src := t.TempDir()
	s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	ser := newSeries(9)
	addFiles(t, s, 1, map[string]string{"m.st": write(t, src, "1.st", ser.step(t))})
	s.Close()

	var frames []string
	require.NoError(t, c.List(context.Background(), "tpde-store-lie", "run/objects/", func(key string, size int64) error {
		if !strings.HasSuffix(key, ".copy") && size > 4096 {
			frames = append(frames, key)
		}
		return nil
	}))
	require.NotEmpty(t, frames)
	for _, key := range frames {
		body, err := c.Get(context.Background(), "tpde-store-lie", key, 1<<30)
		require.NoError(t, err)
		body[len(body)/2] ^= 1
		require.NoError(t, c.Put(context.Background(), "tpde-store-lie", key, bytes.NewReader(body), int64(len(body))))
	}
	cache := filepath.Join(t.TempDir(), "c1")
	r, err := Open(cache, Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.Reader()
	require.NoError(t, err)
	defer rd.Close()
	ck, err := rd.Checkpoint(1, false)
	require.NoError(t, err)
	err = rd.ReadRange(ck, "m.st", 0, make([]byte, ck.Files[0].Size))
	require.ErrorIs(t, err, errs.Corrupt)
	assert.Contains(t, err.Error(), "hashes to")
	for _, key := range frames {
		rel := strings.TrimPrefix(key, "run/")
		_, err := os.Lstat(filepath.Join(cache, rel))
		assert.True(t, errors.Is(err, fs.ErrNotExist), "%s entered the cache: %v", rel, err)
	}
}

// Loading the newest checkpoint lists nothing: it reads the marker, the
// hint, the generations it probes, the manifest, the record and the
// objects it decodes, each once.
func TestLoadingTheNewestListsNothingAndGetsEachObjectOnce(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-count")
	src := t.TempDir()
	s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	ser := newSeries(4)
	for step := int64(1); step <= 4; step++ {
		addFiles(t, s, step, map[string]string{"m.st": write(t, src, fmt.Sprintf("%d.st", step), ser.step(t))})
	}
	require.NoError(t, s.Settle())
	s.Close()

	c.ResetCounts()
	r, err := Open(filepath.Join(t.TempDir(), "c1"), Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.Reader()
	require.NoError(t, err)
	defer rd.Close()
	ck, err := rd.Checkpoint(4, true)
	require.NoError(t, err)
	require.NoError(t, rd.ReadRange(ck, "m.st", 0, make([]byte, ck.Files[0].Size)))
	n := c.Counts()
	assert.Zero(t, n.List, "a load lists nothing")
	objects := map[string]bool{}
	for _, reg := range ck.Files[0].Regions {
		objects[reg.Object.Object] = true
	}
	objects[ck.Files[0].Skeleton.Object] = true
	// marker + hint + manifest + the record + its objects (each under a
	// part's size: one GET each)
	assert.LessOrEqual(t, n.Get, int64(4+len(objects)), "%+v", n)
}

// restoreAllFrom restores checkpoint step of the open store s and returns
// its files.
func restoreAllFrom(t *testing.T, s *Store, step int64) map[string][]byte {
	t.Helper()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	c, err := rd.Checkpoint(step, false)
	require.NoError(t, err)
	return restoredFiles(t, rd, c)
}

// Objects a commit leaves unreferenced (keyframes its re-code replaced by
// deltas) leave the bucket once the grace period is over, and only then;
// every checkpoint still restores from a fresh cache.
func TestARemoteStoreRemovesWhatNoGenerationNamesAfterTheGrace(t *testing.T) {
	for _, grace := range []string{"3600", "0"} {
		t.Run("grace="+grace, func(t *testing.T) {
			t.Setenv("TPDE_S3_GRACE", grace)
			srv := s3test.Start(t)
			bucket := "tpde-store-gc-" + grace
			c, rm := remoteFor(t, srv, bucket)
			s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, KeyframeInterval: 4, Remote: rm})
			require.NoError(t, err)
			ser := newSeries(6)
			want := map[int64][]byte{}
			swept := 0
			for step := int64(1); step <= 6; step++ {
				want[step] = ser.step(t)
				addOne(t, s, step, "m.st", want[step])
				if step == 1 {
					require.NoError(t, s.Settle())
					swept = s.sweeps
				}
			}
			require.NoError(t, s.Settle())
			// After the first commit built the count of what names each
			// object, no add swept the cache or read every record; what
			// they dropped still reached the bucket's gc notes (stale is
			// zero without a grace period).
			assert.Equal(t, swept, s.sweeps)
			sn, err := s.snapshot()
			require.NoError(t, err)
			live, err := sn.live()
			require.NoError(t, err)
			s.Close()

			stale := 0
			require.NoError(t, c.List(context.Background(), bucket, "run/objects/", func(key string, _ int64) error {
				if !live[key[strings.LastIndex(key, "/")+1:]] {
					stale++
				}
				return nil
			}))
			if grace == "0" {
				assert.Zero(t, stale, "objects no generation names are gone")
			} else {
				assert.Positive(t, stale, "within the grace period the replaced keyframes stay")
			}
			r, err := Open(filepath.Join(t.TempDir(), "check"), Options{Remote: rm})
			require.NoError(t, err)
			defer r.Close()
			for step, b := range want {
				assert.Equal(t, b, restoreAllFrom(t, r, step)["m.st"], "step %d", step)
			}
		})
	}
}

// Removing a checkpoint of a remote store re-codes what depended on it,
// commits, and (after the grace period, here none) takes out of the bucket
// every object no generation names, including ones this cache never held.
func TestRemovingACheckpointOfARemoteStore(t *testing.T) {
	t.Setenv("TPDE_S3_GRACE", "0")
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-rm")
	s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, KeyframeInterval: 4, Remote: rm})
	require.NoError(t, err)
	ser := newSeries(8)
	want := map[int64][]byte{}
	for step := int64(1); step <= 4; step++ {
		want[step] = ser.step(t)
		addOne(t, s, step, "m.st", want[step])
	}
	require.NoError(t, s.Settle())
	s.Close()

	// Another machine, whose cache holds nothing yet, removes step 2.
	w, err := Open(filepath.Join(t.TempDir(), "c1"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	require.NoError(t, w.Remove(2))
	sn, err := w.snapshot()
	require.NoError(t, err)
	live, err := sn.live()
	require.NoError(t, err)
	w.Close()
	delete(want, 2)

	stale := 0
	require.NoError(t, c.List(context.Background(), "tpde-store-rm", "run/objects/", func(key string, _ int64) error {
		if !live[key[strings.LastIndex(key, "/")+1:]] {
			stale++
		}
		return nil
	}))
	assert.Zero(t, stale, "every object the newest generation does not name has left the bucket")
	r, err := Open(filepath.Join(t.TempDir(), "check"), Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.Reader()
	require.NoError(t, err)
	assert.Equal(t, []int64{1, 3, 4}, rd.Steps())
	rd.Close()
	for step, b := range want {
		assert.Equal(t, b, restoreAllFrom(t, r, step)["m.st"], "step %d", step)
	}
}

// A malformed grace period is refused when the store opens, never taken
// for the default: it decides when objects are deleted.
func TestAMalformedGraceIsRefused(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-grace")
	for _, v := range []string{"1h", "-1", "nan", "1e9"} {
		t.Setenv("TPDE_S3_GRACE", v)
		_, err := Open(filepath.Join(t.TempDir(), "c"), Options{Write: true, Remote: rm})
		require.ErrorIs(t, err, errs.Invalid, v)
		assert.Contains(t, err.Error(), "TPDE_S3_GRACE", v)
	}
}

// remoteSeries adds steps 1..n to a remote store and returns them.
func remoteSeries(t *testing.T, rm *s3.Remote, n int64) map[int64][]byte {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "c0"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer s.Close()
	ser := newSeries(12)
	want := map[int64][]byte{}
	for step := int64(1); step <= n; step++ {
		want[step] = ser.step(t)
		addOne(t, s, step, "m.st", want[step])
	}
	require.NoError(t, s.Settle())
	return want
}

// newestKeys is the bucket's newest manifest generation and its copy.
func newestKeys(t *testing.T, c *s3.Client, bucket string) (string, string) {
	t.Helper()
	newest := ""
	require.NoError(t, c.List(context.Background(), bucket, "run/manifests/", func(key string, _ int64) error {
		if strings.HasSuffix(key, ".json") && key > newest {
			newest = key
		}
		return nil
	}))
	require.NotEmpty(t, newest)
	return newest, newest + copySuffix
}

func put(t *testing.T, c *s3.Client, bucket, key, body string) {
	t.Helper()
	require.NoError(t, c.Put(context.Background(), bucket, key, strings.NewReader(body), int64(len(body))))
}

// The hint is advice from the bucket: one that names a generation far
// past the newest, a stale one, or no number at all never hides a
// committed generation or invents one.
func TestAHostileHintNeverHidesOrInventsAGeneration(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-hint")
	want := remoteSeries(t, rm, 3)
	for _, hint := range []string{"18446744073709551615\n", "9223372036854775807\n", "99999\n", "1\n", "garbage", ""} {
		put(t, c, "tpde-store-hint", "run/"+latestHint, hint)
		r, err := Open(filepath.Join(t.TempDir(), "c"), Options{Remote: rm})
		require.NoError(t, err, "hint %q", hint)
		rd, err := r.Reader()
		require.NoError(t, err)
		assert.Equal(t, []int64{1, 2, 3}, rd.Steps(), "hint %q", hint)
		rd.Close()
		assert.Equal(t, want[3], restoreAllFrom(t, r, 3)["m.st"], "hint %q", hint)
		r.Close()
	}
}

// A damaged newest manifest in the bucket falls back to its copy, as in a
// local store; with both damaged, the open fails as corrupt rather than
// showing an older state.
func TestADamagedRemoteManifestFallsBackToItsCopy(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-man")
	want := remoteSeries(t, rm, 3)
	first, second := newestKeys(t, c, "tpde-store-man")
	body, err := c.Get(context.Background(), "tpde-store-man", first, 1<<20)
	require.NoError(t, err)
	put(t, c, "tpde-store-man", first, string(body[:len(body)/2])) // truncated
	r, err := Open(filepath.Join(t.TempDir(), "c1"), Options{Remote: rm})
	require.NoError(t, err)
	assert.Equal(t, want[3], restoreAllFrom(t, r, 3)["m.st"])
	r.Close()

	put(t, c, "tpde-store-man", second, "{\"format\": \"nonsense\"}")
	_, err = Open(filepath.Join(t.TempDir(), "c2"), Options{Remote: rm})
	require.ErrorIs(t, err, errs.Corrupt)
}

// A link planted in the cache where an object was is refused, never
// followed and never replaced by a download through it.
func TestALinkPlantedInTheCacheIsNeverFollowed(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-link")
	remoteSeries(t, rm, 2)
	cache := filepath.Join(t.TempDir(), "c")
	r, err := Open(cache, Options{Remote: rm})
	require.NoError(t, err)
	restoreAllFrom(t, r, 2) // every object of step 2 now in the cache
	rd0, err := r.Reader()
	require.NoError(t, err)
	c0, err := rd0.Checkpoint(2, false)
	require.NoError(t, err)
	h := c0.Files[0].Regions[0].Object.Object // a frame: it has no copy to fall back to
	rd0.Close()
	r.Close()
	outside := filepath.Join(t.TempDir(), "outside")
	require.NoError(t, os.WriteFile(outside, []byte("not an object"), 0o644))
	planted := filepath.Join(cache, "objects", h[:2], h)
	require.NoError(t, os.Remove(planted))
	require.NoError(t, os.Symlink(outside, planted))

	r, err = Open(cache, Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.Reader()
	require.NoError(t, err)
	defer rd.Close()
	c, err := rd.Checkpoint(2, false)
	require.NoError(t, err)
	err = rd.ReadRange(c, "m.st", 0, make([]byte, c.Files[0].Size))
	require.ErrorIs(t, err, errs.Corrupt)
	b, err := os.ReadFile(outside)
	require.NoError(t, err)
	assert.Equal(t, "not an object", string(b))
	st, err := os.Lstat(planted)
	require.NoError(t, err)
	assert.NotZero(t, st.Mode()&fs.ModeSymlink, "the link is left as it is")
}

// An add's uploads are counted as they are queued and as the bucket takes
// them (what a progress display shows): after the commit every queued
// object is uploaded, and the counts are the objects the add made; a
// local store counts none.
func TestAnAddCountsItsUploadsEachObjectOnce(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-uploads")
	cache := filepath.Join(t.TempDir(), "c0")
	s, err := Open(cache, Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer s.Close()
	assert.Equal(t, Uploads{}, s.Uploads())
	assert.Same(t, rm, s.Remote().(*s3.Remote))

	src := t.TempDir()
	b := newSeries(5).step(t)
	c.ResetCounts()
	addFiles(t, s, 1, map[string]string{"a.st": write(t, src, "a.st", b)})
	require.NoError(t, s.Settle())
	u := s.Uploads()

	// Every object file of the cache is new with this first add.
	var objects, bytes int64
	require.NoError(t, filepath.WalkDir(filepath.Join(cache, "objects"), func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		objects++
		bytes += st.Size()
		return nil
	}))
	require.Positive(t, objects)
	assert.Equal(t, Uploads{QueuedObjects: objects, QueuedBytes: bytes, UploadedObjects: objects, UploadedBytes: bytes}, u)
	n := c.Counts()
	// The objects, then the manifest generation, its copy and the hint
	// (and perhaps a removal note).
	assert.LessOrEqual(t, n.Put, objects+4, "%+v", n)
	assert.GreaterOrEqual(t, n.BytesSent, bytes, "%+v", n)

	local, err := Open(t.TempDir(), Options{Write: true})
	require.NoError(t, err)
	defer local.Close()
	addFiles(t, local, 1, map[string]string{"a.st": write(t, src, "c.st", b)})
	assert.Equal(t, Uploads{}, local.Uploads())
	assert.Nil(t, local.Remote())
}
