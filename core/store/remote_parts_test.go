package store

import (
	"context"
	"encoding/json"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/s3"
	"github.com/tpde/tpde/core/s3/s3test"
)

// stageRemote stages files as one participant through a cache of its own
// (a rank on its own machine) and returns its descriptor and the open
// staging store.
func stageRemote(t *testing.T, rm *s3.Remote, cache string, files map[string][]byte) ([]byte, *Store) {
	t.Helper()
	return stageWith(t, cache, Options{Stage: true, Remote: rm}, files)
}

// commitRanks stages shards as ranks 0 and 1, each through a cache of its
// own under caches, and commits them as one checkpoint from a coordinator's
// cache there (holder folder, "" for none), every handle closed after.
func commitRanks(t *testing.T, rm *s3.Remote, caches string, shards [2][]byte, folder string) *Checkpoint {
	t.Helper()
	d0, p0 := stageRemote(t, rm, filepath.Join(caches, "rank0"), map[string][]byte{"rank0.safetensors": shards[0]})
	defer p0.Close()
	d1, p1 := stageRemote(t, rm, filepath.Join(caches, "rank1"), map[string][]byte{"rank1.safetensors": shards[1]})
	defer p1.Close()
	w, err := Open(filepath.Join(caches, "coordinator"), Options{Write: true, Remote: rm, Recode: RecodeInline})
	require.NoError(t, err)
	defer w.Close()
	c, err := w.CommitParts([][]byte{d0, d1}, 0, false, nil, folder)
	require.NoError(t, err)
	return c
}

// Two ranks stage their files in caches of their own and a coordinator,
// with a third cache, commits both as one checkpoint: the bucket alone
// carries the parts. Each save's folder holds a pointer naming the bucket's
// URL; a fresh cache restores every save bit-exact, older ones through the
// reverse deltas the ranks made.
func TestRemotePartsFromSeparateCachesCommitAsOneCheckpoint(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-parts")
	caches := t.TempDir()
	folders := t.TempDir()
	rs := newRankSeries()
	var saves [][2][]byte
	for i := 0; i < 3; i++ {
		shards := rs.step(t)
		saves = append(saves, shards)
		folder := filepath.Join(folders, "step-"+string(rune('0'+i)))
		require.NoError(t, os.Mkdir(folder, 0o755))
		c := commitRanks(t, rm, caches, shards, folder)
		assert.Equal(t, int64(i), c.Step)
		// The coordinator checks the parts' objects in the bucket: none
		// of their frames enters its cache.
		for _, f := range c.Files {
			for _, reg := range f.Regions {
				if reg.Ref == nil {
					h := reg.Object.Object
					_, err := os.Lstat(filepath.Join(caches, "coordinator", "objects", h[:2], h))
					assert.True(t, os.IsNotExist(err), "%s: a part's frame in the coordinator's cache: %v", reg.Name, err)
				}
			}
		}

		store, step, err := ReadPointer(folder)
		require.NoError(t, err)
		assert.Equal(t, rm.URL(""), store, "the folder's pointer names the store by its URL")
		assert.Equal(t, int64(i), step)
	}

	r, err := Open(filepath.Join(caches, "reader"), Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	deltas := 0
	for step, shards := range saves {
		got := restoreAllFrom(t, r, int64(step))
		assert.Equal(t, shards[0], got["rank0.safetensors"], "step %d", step)
		assert.Equal(t, shards[1], got["rank1.safetensors"], "step %d", step)
		rd, err := r.Reader()
		require.NoError(t, err)
		c, err := rd.Checkpoint(int64(step), false)
		require.NoError(t, err)
		for _, f := range c.Files {
			for _, reg := range f.Regions {
				if reg.Ref != nil {
					deltas++
				}
			}
		}
		rd.Close()
	}
	sn, err := r.snapshot()
	require.NoError(t, err)
	for _, ref := range sn.m.Checkpoints {
		assert.Empty(t, ref.Holder, "a remote store's manifest names no local folder")
	}
	assert.Positive(t, deltas, "the ranks re-coded the older saves as deltas, through the bucket")
}

// A rank's cache is trimmed when it opens to stage, as a writer's is after
// each commit: after five saves it holds none of the frames that only the
// oldest checkpoints need (every save is still in the bucket, and restores
// through a fresh cache), so a rank's disk does not collect a second copy
// of its share of the store.
func TestARanksCacheKeepsOnlyWhatTheNewestCheckpointsNeed(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-rank-cache")
	caches := t.TempDir()
	rs := newRankSeries()
	var saves [][2][]byte
	for i := 0; i < 5; i++ {
		shards := rs.step(t)
		saves = append(saves, shards)
		commitRanks(t, rm, caches, shards, "")
	}
	r, err := Open(filepath.Join(caches, "reader"), Options{Remote: rm})
	require.NoError(t, err)
	defer r.Close()
	// The last open trimmed against the generation of save 3: saves 0
	// and 1 are neither of the two newest, and their frames are deltas
	// no newer chain walks.
	// (A frame a newer checkpoint names too, such as an unchanged
	// tensor's, is not one of them.)
	old, newer := map[string]bool{}, map[string]bool{}
	rd, err := r.Reader()
	require.NoError(t, err)
	for step := int64(0); step < int64(len(saves)); step++ {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		for _, f := range c.Files {
			for _, reg := range f.Regions {
				if step <= 1 {
					old[reg.Object.Object] = true
				} else {
					newer[reg.Object.Object] = true
				}
			}
		}
	}
	rd.Close()
	for o := range newer {
		delete(old, o)
	}
	require.NotEmpty(t, old)
	for _, rank := range []string{"rank0", "rank1"} {
		ents, err := filepath.Glob(filepath.Join(caches, rank, "objects", "*", "*"))
		require.NoError(t, err)
		require.NotEmpty(t, ents, "%s: its cache holds its newest frames", rank)
		for _, e := range ents {
			assert.False(t, old[filepath.Base(e)], "%s: %s, a frame only saves 0 and 1 need, is still cached", rank, filepath.Base(e))
		}
	}
	for step, shards := range saves {
		got := restoreAllFrom(t, r, int64(step))
		assert.Equal(t, shards[0], got["rank0.safetensors"], "step %d", step)
		assert.Equal(t, shards[1], got["rank1.safetensors"], "step %d", step)
	}
}

// A remote store is never reclaimed by its folders: a folder this machine
// cannot see may be held on another.
func TestARemoteStoreRefusesToReclaim(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-reclaim")
	caches := t.TempDir()
	folder := filepath.Join(t.TempDir(), "step-0")
	require.NoError(t, os.Mkdir(folder, 0o755))
	d0, p0 := stageRemote(t, rm, filepath.Join(caches, "rank0"), map[string][]byte{"m.st": newSeries(1).step(t)})
	defer p0.Close()
	w, err := Open(filepath.Join(caches, "coordinator"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{d0}, 0, false, nil, folder)
	require.NoError(t, err)
	require.NoError(t, os.RemoveAll(folder))
	_, err = w.Reclaim()
	require.ErrorIs(t, err, errs.Unsupported)
	assert.Contains(t, err.Error(), "remove checkpoints by step")
	assert.Equal(t, []int64{0}, remoteSteps(t, w))
	// A holder of a remote store is an absolute local folder, never a
	// name relative to the cache.
	_, err = w.CommitParts([][]byte{d0}, 0, false, nil, "step-1")
	require.ErrorIs(t, err, errs.Invalid)
}

// A part whose objects are not in the bucket (its Finish never ran, or
// they were removed) is refused by the coordinator, naming what is
// missing, and nothing is committed.
func TestARemotePartWhoseObjectsAreGoneIsRefused(t *testing.T) {
	srv := s3test.Start(t)
	c, rm := remoteFor(t, srv, "tpde-store-partgone")
	caches := t.TempDir()
	d0, p0 := stageRemote(t, rm, filepath.Join(caches, "rank0"), map[string][]byte{"m.st": newSeries(1).step(t)})
	defer p0.Close()
	var objects []string
	require.NoError(t, c.List(context.Background(), "tpde-store-partgone", "run/objects/", func(key string, _ int64) error {
		objects = append(objects, key)
		return nil
	}))
	require.NotEmpty(t, objects, "Finish uploaded the part's objects")
	for _, k := range objects {
		require.NoError(t, c.Delete(context.Background(), "tpde-store-partgone", k))
	}
	w, err := Open(filepath.Join(caches, "coordinator"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{d0}, 0, false, nil, "")
	require.Error(t, err)
	assert.True(t, strings.Contains(err.Error(), "is not in s3://tpde-store-partgone/run"), err.Error())
	assert.Empty(t, remoteSteps(t, w))
}

func remoteSteps(t *testing.T, s *Store) []int64 {
	t.Helper()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	return rd.Steps()
}

// A coordinator reads of a part's large frames only their headers: the
// bytes it downloads do not grow with the checkpoint (a job of many ranks
// would otherwise pull every rank's checkpoint through one machine).
func TestACoordinatorReadsOnlyTheHeadsOfAPartsFrames(t *testing.T) {
	srv := s3test.Start(t)
	cl, rm := remoteFor(t, srv, "tpde-store-heads")
	caches := t.TempDir()
	r := rand.New(rand.NewSource(5))
	big := make([]float32, 1<<20) // 4 MiB of fp32
	for i := range big {
		big[i] = float32(r.NormFloat64() * 0.02)
	}
	shard := safetensorsFile(t, map[string][]float32{"w": big, "b": {1, 2, 3}})
	d0, p0 := stageRemote(t, rm, filepath.Join(caches, "rank0"), map[string][]byte{"m.safetensors": shard})
	defer p0.Close()
	w, err := Open(filepath.Join(caches, "coordinator"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer w.Close()
	before := cl.Counts()
	c, err := w.CommitParts([][]byte{d0}, 0, false, nil, "")
	require.NoError(t, err)
	got := cl.Counts().BytesReceived - before.BytesReceived
	var stored uint64
	for _, reg := range c.Files[0].Regions {
		stored += reg.Stored
	}
	require.Greater(t, stored, uint64(2<<20))
	assert.Less(t, got, int64(64<<10), "bytes the commit downloaded, of %d stored", stored)
	assert.Equal(t, shard, restoreAllFrom(t, w, 0)["m.safetensors"], "the commit is whole")
}

// A part that lies about a frame (its descriptor names a frame of another
// tensor's size) is refused from the frame's header in the bucket.
func TestARemotePartThatLiesAboutAFrameIsRefused(t *testing.T) {
	srv := s3test.Start(t)
	_, rm := remoteFor(t, srv, "tpde-store-liar")
	caches := t.TempDir()
	d0, p0 := stageRemote(t, rm, filepath.Join(caches, "rank0"), map[string][]byte{"m.st": newSeries(3).step(t)})
	defer p0.Close()
	var desc map[string]any
	require.NoError(t, json.Unmarshal(d0, &desc))
	lied := strings.Replace(string(d0), `"dtype":"F32"`, `"dtype":"I32"`, 1)
	require.NotEqual(t, string(d0), lied, "the descriptor names an F32 region")
	w, err := Open(filepath.Join(caches, "coordinator"), Options{Write: true, Remote: rm})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{[]byte(lied)}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid)
	assert.Contains(t, err.Error(), "frame")
	assert.Empty(t, remoteSteps(t, w))
}
