package store

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// stage stages files (name -> bytes) as one participant and returns its
// descriptor and the open staging store (close it after the commit).
func stage(t *testing.T, dir string, files map[string][]byte) ([]byte, *Store) {
	return stageWith(t, dir, Options{Stage: true}, files)
}

// stageWith is stage with the store opened with opt.
func stageWith(t *testing.T, dir string, opt Options, files map[string][]byte) ([]byte, *Store) {
	t.Helper()
	s, err := Open(dir, opt)
	require.NoError(t, err)
	tx, err := s.BeginPart()
	require.NoError(t, err)
	src := t.TempDir()
	for name, b := range files {
		require.NoError(t, tx.AddFile(name, write(t, src, name, b), nil, ""))
	}
	desc, err := tx.Finish()
	require.NoError(t, err)
	return desc, s
}

// rankSeries is two ranks' shards of one drifting run.
type rankSeries struct{ ranks [2]*series }

func newRankSeries() *rankSeries { return &rankSeries{[2]*series{newSeries(1), newSeries(2)}} }

func (r *rankSeries) step(t *testing.T) [2][]byte {
	return [2][]byte{r.ranks[0].step(t), r.ranks[1].step(t)}
}

func commitSave(t *testing.T, dir string, shards [2][]byte, holder string) *Checkpoint {
	d0, p0 := stage(t, dir, map[string][]byte{"rank0.safetensors": shards[0]})
	defer p0.Close()
	d1, p1 := stage(t, dir, map[string][]byte{"rank1.safetensors": shards[1]})
	defer p1.Close()
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	c, err := w.CommitParts([][]byte{d0, d1}, 0, false, []string{"t"}, holder)
	require.NoError(t, err)
	return c
}

func TestPartsFromTwoParticipantsCommitAsOneCheckpointWithReverseDeltas(t *testing.T) {
	dir := filepath.Join(t.TempDir(), ".tpde-store")
	rs := newRankSeries()
	var saves [][2][]byte
	for i := 0; i < 3; i++ {
		shards := rs.step(t)
		saves = append(saves, shards)
		c := commitSave(t, dir, shards, "")
		assert.Equal(t, int64(i), c.Step)
	}
	for step, shards := range saves {
		got := restoreAll(t, dir, int64(step))
		assert.Equal(t, shards[0], got["rank0.safetensors"])
		assert.Equal(t, shards[1], got["rank1.safetensors"])
	}
	// Each participant re-coded the previous newest's tensors of its own
	// file against its new ones: older checkpoints hold deltas.
	require.NoError(t, withCheckpoint(dir, 1, func(_ *Store, _ *Reader, c *Checkpoint) error {
		for _, f := range c.Files {
			deltas := 0
			for _, r := range f.Regions {
				if r.Ref != nil {
					deltas++
					assert.Equal(t, int64(2), r.Ref.Step)
					assert.Equal(t, f.Path, r.Ref.File)
				}
			}
			assert.Positive(t, deltas, f.Path)
		}
		return nil
	}))
	// Nothing of the parts is left in tmp/ once they are closed.
	ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, ents)
}

func TestAPartsObjectsSurviveAWritersCleanupUntilItsCommit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	shards := rs.step(t)
	desc, p := stage(t, dir, map[string][]byte{"rank0.safetensors": shards[0]})
	defer p.Close()
	// A writer opens (its cleanup runs) and a repair runs, between the
	// part's finish and the commit that names its objects.
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Repair()
	require.NoError(t, err)
	_, err = w.CommitParts([][]byte{desc}, 0, false, nil, "")
	require.NoError(t, err)
	assert.Equal(t, shards[0], restoreAll(t, dir, 1)["rank0.safetensors"])
}

func TestADeadParticipantsObjectsAreReclaimedAndNeverCommitted(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	desc, p := stage(t, dir, map[string][]byte{"rank0.safetensors": rs.step(t)[0]})
	p.Close() // the participant is gone before any commit
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.Repair()
	require.NoError(t, err)
	var part Part
	require.NoError(t, json.Unmarshal(desc, &part))
	for _, name := range part.objects() {
		_, err := os.Stat(objectFile(dir, name))
		if !os.IsNotExist(err) {
			// Shared with the committed checkpoint (a frozen tensor):
			// then the manifest names it.
			require.NoError(t, withCheckpoint(dir, 0, func(s *Store, rd *Reader, _ *Checkpoint) error {
				live, err := rd.sn.live()
				require.NoError(t, err)
				assert.True(t, live[name], "object %s of a dead part is still there", name)
				return nil
			}))
		}
	}
	// Its descriptor no longer commits: the objects are gone.
	_, err = w.CommitParts([][]byte{desc}, 0, false, nil, "")
	require.Error(t, err)
	assert.Equal(t, []int64{0}, stepsOf(t, dir))
}

func stepsOf(t *testing.T, dir string) []int64 {
	var steps []int64
	require.NoError(t, withReader(dir, MainRun, func(_ *Store, rd *Reader) error { steps = rd.Steps(); return nil }))
	return steps
}

func TestPartsThatClashOrLieAreRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	shards := rs.step(t)
	d0, p0 := stage(t, dir, map[string][]byte{"same.safetensors": shards[0]})
	defer p0.Close()
	d1, p1 := stage(t, dir, map[string][]byte{"same.safetensors": shards[1]})
	defer p1.Close()
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{d0, d1}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid)

	var part Part
	require.NoError(t, json.Unmarshal(d0, &part))
	part.Files[0].Regions[0].Object.Object = fmt.Sprintf("%064x", 7)
	forged, err := json.Marshal(part)
	require.NoError(t, err)
	_, err = w.CommitParts([][]byte{forged}, 0, false, nil, "")
	require.Error(t, err)

	require.NoError(t, json.Unmarshal(d0, &part))
	part.Files[0].Regions[0].Ref = &Ref{Step: 0, File: "x", Region: "w"}
	forged, err = json.Marshal(part)
	require.NoError(t, err)
	_, err = w.CommitParts([][]byte{forged}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid)

	_, err = w.CommitParts([][]byte{[]byte(`{"format":"tpde-store-part","version":1,"x":1}`)}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid)
	assert.Equal(t, []int64{0}, stepsOf(t, dir))
}

func TestACommitBesideANewerCheckpointDropsStaleDeltasNotData(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	late := rs.step(t)
	d0, p0 := stage(t, dir, map[string][]byte{"rank0.safetensors": late[0]})
	defer p0.Close()
	// Another checkpoint is committed after the part was coded.
	mid := rs.step(t)
	commitSave(t, dir, mid, "")
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{d0}, 0, false, nil, "")
	require.NoError(t, err)
	assert.Equal(t, late[0], restoreAll(t, dir, 2)["rank0.safetensors"])
	assert.Equal(t, mid[0], restoreAll(t, dir, 1)["rank0.safetensors"])
}

func TestHoldersKeepCheckpointsAndReclaimWhatNoFolderNames(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, ".tpde-store")
	rs := newRankSeries()
	var saves [][2][]byte
	for i := 0; i < 4; i++ {
		folder := fmt.Sprintf("step-%d", i)
		require.NoError(t, os.Mkdir(filepath.Join(parent, folder), 0o755))
		shards := rs.step(t)
		saves = append(saves, shards)
		c := commitSave(t, dir, shards, folder)
		store, step, err := ReadPointer(filepath.Join(parent, folder))
		require.NoError(t, err)
		assert.Equal(t, c.Step, step)
		assert.Equal(t, filepath.Clean(dir), filepath.Clean(store))
	}
	require.NoError(t, os.RemoveAll(filepath.Join(parent, "step-1")))                             // a middle one
	require.NoError(t, os.Rename(filepath.Join(parent, "step-2"), filepath.Join(parent, "best"))) // renamed
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	removed, err := w.Reclaim()
	w.Close()
	require.NoError(t, err)
	assert.Equal(t, []int64{1}, removed)
	assert.Equal(t, []int64{0, 2, 3}, stepsOf(t, dir))
	for _, step := range []int64{0, 2, 3} {
		assert.Equal(t, saves[step][1], restoreAll(t, dir, step)["rank1.safetensors"])
	}
	// The newest folder goes too: repair reclaims it, and the one before
	// it becomes whole.
	require.NoError(t, os.RemoveAll(filepath.Join(parent, "step-3")))
	w, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	c, err := w.Repair()
	w.Close()
	require.NoError(t, err)
	assert.Equal(t, []int64{3}, c.Reclaimed)
	assert.Equal(t, saves[2][0], restoreAll(t, dir, 2)["rank0.safetensors"])
}

func TestAPointerThatCannotBeReadReclaimsNothing(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "st")
	rs := newRankSeries()
	for i := 0; i < 2; i++ {
		folder := fmt.Sprintf("f%d", i)
		require.NoError(t, os.Mkdir(filepath.Join(parent, folder), 0o755))
		commitSave(t, dir, rs.step(t), folder)
	}
	require.NoError(t, os.RemoveAll(filepath.Join(parent, "f0")))
	require.NoError(t, os.WriteFile(filepath.Join(parent, "f1", PointerName), []byte("{garbage"), 0o644))
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	removed, err := w.Reclaim()
	require.NoError(t, err)
	assert.Empty(t, removed)
	assert.Equal(t, []int64{0, 1}, stepsOf(t, dir))
}

func TestCheckpointsWithoutAHolderAreNeverReclaimed(t *testing.T) {
	dir, _ := fiveSteps(t)
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	removed, err := w.Reclaim()
	require.NoError(t, err)
	assert.Empty(t, removed)
	assert.Len(t, stepsOf(t, dir), 5)
}

func TestAHolderMustBeOneFolderBesideTheStore(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "st")
	rs := newRankSeries()
	d0, p0 := stage(t, dir, map[string][]byte{"r.safetensors": rs.step(t)[0]})
	defer p0.Close()
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	for _, h := range []string{"../x", "a/b", "/etc", ".."} {
		_, err = w.CommitParts([][]byte{d0}, 0, false, nil, h)
		require.ErrorIs(t, err, errs.Invalid, h)
	}
	// A holder that is a link is not followed.
	require.NoError(t, os.Symlink(t.TempDir(), filepath.Join(parent, "link")))
	_, err = w.CommitParts([][]byte{d0}, 0, false, nil, "link")
	require.Error(t, err)
	assert.Empty(t, stepsOf(t, dir))
}

// FuzzParsePart: a descriptor parses into files that validate, or is
// refused with a typed error; never a panic.
func FuzzParsePart(f *testing.F) {
	f.Add([]byte(`{"format":"tpde-store-part","version":1,"generation":0,"previous":null,"files":[],"converted":[]}`))
	f.Add([]byte(`{"format":"tpde-store-part","version":1,"generation":3,"previous":{"step":2,"object":"` + fmt.Sprintf("%064x", 1) + `"},"files":[{"path":"a","mode":420,"size":1,"sha256":"` + fmt.Sprintf("%064x", 2) + `","layout":"raw","skeleton":{"object":"` + fmt.Sprintf("%064x", 3) + `","stored":9},"regions":[]}],"converted":[]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := parsePart(b, 0)
		if err != nil {
			require.True(t, errsIs(err, errs.Invalid) || errsIs(err, errs.Unsupported), "untyped error %v", err)
			return
		}
		for i := range p.Files {
			require.NoError(t, p.Files[i].validate())
		}
	})
}

func TestPartsThatHoldNoFileCommitNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	empty, p := stage(t, dir, nil)
	defer p.Close()
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{empty, empty}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid)
	assert.Equal(t, []int64{0}, stepsOf(t, dir))
	// Beside a part with files, an empty part adds nothing and is fine.
	d, q := stage(t, dir, map[string][]byte{"rank0.safetensors": rs.step(t)[0]})
	defer q.Close()
	c, err := w.CommitParts([][]byte{empty, d}, 0, false, nil, "")
	require.NoError(t, err)
	require.Len(t, c.Files, 1)
	assert.Equal(t, "rank0.safetensors", c.Files[0].Path)
}

func TestAParticipantOpensBesideACleanupThatRunsAtTheSameTime(t *testing.T) {
	// A cleanup (any writer's open or commit) that meets a part folder
	// made a moment ago, not locked yet, must not take it from its
	// participant: each Open for staging here succeeds and stages.
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	shard := rs.step(t)[0]
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	stop := make(chan struct{})
	done := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				done <- n
				return
			default:
			}
			_, err := w.cleanup()
			assert.NoError(t, err)
			n++
		}
	}()
	var failed []error
	for i := 0; i < 300; i++ {
		s, err := Open(dir, Options{Stage: true})
		if err != nil {
			failed = append(failed, err)
			continue
		}
		tx, err := s.BeginPart()
		if err == nil {
			src := t.TempDir()
			if err = tx.AddFile("rank0.safetensors", write(t, src, "rank0.safetensors", shard), nil, ""); err == nil {
				_, err = tx.Finish()
			}
		}
		if err != nil {
			failed = append(failed, err)
		}
		s.Close()
	}
	close(stop)
	cleanups := <-done
	assert.Empty(t, failed, "%d of 300 participants failed beside %d cleanups", len(failed), cleanups)
	_, err = w.cleanup()
	require.NoError(t, err)
	ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
	require.NoError(t, err)
	assert.Empty(t, ents)
}

func TestPartsThatWouldMakeAnUnreadableRecordAreRefused(t *testing.T) {
	// Each of these was published before, as a newest checkpoint that
	// no reader accepts (a path that leaves the folder, a file that is
	// another's folder) or that verify finds damaged (sizes its objects
	// do not hold).
	dir := filepath.Join(t.TempDir(), "s")
	rs := newRankSeries()
	commitSave(t, dir, rs.step(t), "")
	shards := rs.step(t)
	d0, p0 := stage(t, dir, map[string][]byte{"model": shards[0]})
	defer p0.Close()
	d1, p1 := stage(t, dir, map[string][]byte{"model/rank1.safetensors": shards[1]})
	defer p1.Close()
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	_, err = w.CommitParts([][]byte{d0, d1}, 0, false, nil, "")
	require.ErrorIs(t, err, errs.Invalid, "a file that is also the other part's folder")

	edit := func(f func(p *Part)) []byte {
		var p Part
		require.NoError(t, json.Unmarshal(d1, &p))
		p.Converted = []ConvertedRegion{}
		f(&p)
		b, err := json.Marshal(p)
		require.NoError(t, err)
		return b
	}
	for what, b := range map[string][]byte{
		"leaves the folder": edit(func(p *Part) { p.Files[0].Path = "../../escaped.safetensors" }),
		"absolute":          edit(func(p *Part) { p.Files[0].Path = "/etc/x" }),
		"not clean":         edit(func(p *Part) { p.Files[0].Path = "a//b" }),
		"2 GiB more file":   edit(func(p *Part) { p.Files[0].Size += 2 << 30 }),
		"2 GiB tensor": edit(func(p *Part) {
			f := &p.Files[0]
			r := &f.Regions[len(f.Regions)-1]
			r.Size, r.Shape = 2<<30, []uint64{(2 << 30) / 4}
			f.Size = r.Offset + r.Size
		}),
	} {
		_, err = w.CommitParts([][]byte{b}, 0, false, nil, "")
		require.ErrorIs(t, err, errs.Invalid, what)
	}
	assert.Equal(t, []int64{0}, stepsOf(t, dir))
	c, err := w.CommitParts([][]byte{d1}, 0, false, nil, "")
	require.NoError(t, err)
	assert.Equal(t, "model/rank1.safetensors", c.Files[0].Path)
}

func TestAPointerThatIsALinkOrAFIFOIsNeverFollowedOrRead(t *testing.T) {
	parent := t.TempDir()
	dir := filepath.Join(parent, "st")
	rs := newRankSeries()
	for i := 0; i < 2; i++ {
		folder := fmt.Sprintf("f%d", i)
		require.NoError(t, os.Mkdir(filepath.Join(parent, folder), 0o755))
		commitSave(t, dir, rs.step(t), folder)
	}
	// f0's pointer becomes a link to f1's (which names step 1), f1's a FIFO.
	p0, p1 := filepath.Join(parent, "f0", PointerName), filepath.Join(parent, "f1", PointerName)
	require.NoError(t, os.Remove(p0))
	require.NoError(t, os.Symlink(p1, p0))
	_, _, err := ReadPointer(filepath.Join(parent, "f0"))
	require.Error(t, err)
	require.NoError(t, os.Remove(p1))
	require.NoError(t, syscall.Mkfifo(p1, 0o644))
	_, _, err = ReadPointer(filepath.Join(parent, "f1"))
	require.Error(t, err)
	w, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer w.Close()
	var removed []int64
	require.NoError(t, inTime(t, 10*time.Second, func() error { removed, err = w.Reclaim(); return err }))
	assert.Empty(t, removed, "an unreadable pointer reclaims nothing")
	assert.Equal(t, []int64{0, 1}, stepsOf(t, dir))
}

func TestTensorSpansOutsideTheFileAreRefusedBeforeDecoding(t *testing.T) {
	dir, want := fiveSteps(t)
	require.NoError(t, withCheckpoint(dir, 5, func(_ *Store, rd *Reader, c *Checkpoint) error {
		ft, err := rd.Tensors(c, "model.safetensors")
		require.NoError(t, err)
		require.NotEmpty(t, ft.Tensors)
		size := uint64(len(want[5]))
		for _, sp := range []Span{{Offset: size, Dst: make([]byte, 1)}, {Offset: math.MaxUint64 - 2, Dst: make([]byte, 8)}} {
			require.ErrorIs(t, rd.ReadTensors(c, "model.safetensors", []Span{sp}), errs.Invalid)
		}
		_, err = rd.Tensors(c, "sub/config.json")
		require.ErrorIs(t, err, errs.Invalid, "a raw file has no tensor table")
		// Every tensor, decoded in one call, is the file's bytes.
		spans := make([]Span, len(ft.Tensors))
		for i, e := range ft.Tensors {
			spans[i] = Span{Offset: e.Offset, Dst: make([]byte, e.NBytes)}
		}
		require.NoError(t, rd.ReadTensors(c, "model.safetensors", spans))
		for _, sp := range spans {
			assert.Equal(t, want[5][sp.Offset:sp.Offset+uint64(len(sp.Dst))], sp.Dst)
		}
		return nil
	}))
}
