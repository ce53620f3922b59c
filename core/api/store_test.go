package api

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/store"
)

// stateDict is the tensors of a small model whose weights scale with step.
func stateDict(step int) []NamedTensor {
	w := floats(3000, 1)
	for i := 0; i < step; i++ {
		w = nudged(w)
	}
	return []NamedTensor{
		{Name: "layer.weight", Tensor: Tensor{DType: f32, Shape: []uint64{30, 100}, Data: w}},
		{Name: "layer.bias", Tensor: Tensor{DType: f32, Shape: []uint64{30}, Data: floats(30, float32(step+1))}},
	}
}

const sdMeta = `{"skeleton": {"layer": {"weight": {"__tensor__": "layer.weight"}, "bias": {"__tensor__": "layer.bias"}}}}`

// addCheckpoint adds step (a file and a state dict) and commits it.
func addCheckpoint(t *testing.T, h uint64, step int, notes string) store.Checkpoint {
	t.Helper()
	require.NoError(t, Begin(h, int64(step), true, []byte(`["nightly"]`), false))
	require.NoError(t, AddFile(h, "notes.txt", notes, nil, "", nil, nil))
	require.NoError(t, AddStateDict(h, "model.tpde", []byte(sdMeta), stateDict(step)))
	var laid StateDictAdded
	doc(t, h, &laid)
	require.Len(t, laid.Tensors, 2)
	require.Equal(t, "layer.weight", laid.Tensors[0].Name)
	require.Equal(t, uint64(12000), laid.Tensors[0].NBytes)
	require.NoError(t, Commit(h))
	var rec store.Checkpoint
	doc(t, h, &rec)
	require.Equal(t, int64(step), rec.Step)
	return rec
}

// storeAndNotes is where a test's store goes, and a small text file to add.
func storeAndNotes(t *testing.T, text string) (dir, notes string) {
	dir, notes = filepath.Join(t.TempDir(), "store"), filepath.Join(t.TempDir(), "notes.txt")
	require.NoError(t, os.WriteFile(notes, []byte(text), 0o644))
	return dir, notes
}

func TestStoreAddCommitReadRestore(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	dir, notes := storeAndNotes(t, "epoch 3, loss 0.25\n")

	h, err := OpenStore(dir, StoreWrite, []byte(`{"keyframe_interval": 3}`), 0)
	require.NoError(t, err)
	var cfg store.Config
	doc(t, h, &cfg)
	require.Equal(t, 3, cfg.KeyframeInterval)

	// One checkpoint at a time on a session; none without a begin.
	require.ErrorIs(t, AddFile(h, "x", notes, nil, "", nil, nil), errs.Invalid)
	require.ErrorIs(t, Commit(h), errs.Invalid)
	addCheckpoint(t, h, 0, notes)
	require.NoError(t, Begin(h, 0, false, nil, false))
	require.ErrorIs(t, Begin(h, 0, false, nil, false), errs.Invalid)
	require.ErrorIs(t, Remove(h, "", 0), errs.Invalid, "removing while adding")
	require.NoError(t, Abort(h))
	addCheckpoint(t, h, 1, notes)
	addCheckpoint(t, h, 2, notes)

	r, err := OpenReader(h)
	require.NoError(t, err)
	var head ReaderHead
	doc(t, r, &head)
	require.Equal(t, 3, head.Count)
	require.False(t, head.Base)
	require.NoError(t, ReaderSteps(r))
	var steps Steps
	doc(t, r, &steps)
	require.Equal(t, []int64{0, 1, 2}, steps.Steps)

	require.NoError(t, ReaderRecord(r, 0, RecordLatest))
	var entry RecordEntry
	doc(t, r, &entry)
	require.Equal(t, int64(2), entry.Record.Step)
	require.Equal(t, []string{"nightly"}, entry.Record.Tags)
	require.NotEmpty(t, entry.Object)
	require.Empty(t, entry.Problem)
	require.Len(t, entry.Chains, len(entry.Record.Files))
	require.ErrorIs(t, ReaderRecord(r, 0, RecordBase), errs.Invalid, "no base")
	require.ErrorIs(t, ReaderRecord(r, 0, 3), errs.Invalid)

	// Describe the loadable files (the state dict, not notes.txt), then
	// load every tensor of it in one call.
	require.NoError(t, ReaderTensors(r, 1, RecordStep, ""))
	var desc CheckpointTensors
	doc(t, r, &desc)
	require.Equal(t, int64(1), desc.Step)
	require.Len(t, desc.Files, 1)
	f := desc.Files[0]
	require.Equal(t, "model.tpde", f.Path)
	want := stateDict(1)
	spans := make([]Span, len(f.Tensors))
	for i, te := range f.Tensors {
		require.Equal(t, want[i].Name, te.Name)
		spans[i] = Span{Offset: te.Offset, Dst: make([]byte, te.NBytes)}
	}
	require.NoError(t, ReadTensors(r, 1, "model.tpde", spans))
	for i := range spans {
		require.Equal(t, want[i].Data, spans[i].Dst, want[i].Name)
	}
	require.NoError(t, ReaderTensors(r, 1, RecordStep, "notes.txt"), "a filter that matches no loadable file")
	doc(t, r, &desc)
	require.Empty(t, desc.Files)

	got := make([]byte, 5)
	require.NoError(t, ReadRange(r, 2, "notes.txt", 6, got))
	require.Equal(t, "3, lo", string(got))

	// Restore: the whole checkpoint, one file, and what refuses.
	out := filepath.Join(t.TempDir(), "out")
	require.NoError(t, Restore(r, 0, "", out, 0, nil))
	b, err := os.ReadFile(filepath.Join(out, "notes.txt"))
	require.NoError(t, err)
	require.Equal(t, "epoch 3, loss 0.25\n", string(b))
	one := filepath.Join(t.TempDir(), "notes-again.txt")
	require.NoError(t, Restore(r, 2, "notes.txt", one, 0, nil))
	require.ErrorIs(t, Restore(r, 2, "notes.txt", one, 0, nil), errs.IO, "exists")
	require.NoError(t, Restore(r, 2, "notes.txt", one, RestoreForce, nil))
	err = Restore(r, 2, "missing.bin", one, RestoreForce, nil)
	require.ErrorIs(t, err, errs.Invalid)
	require.Contains(t, err.Error(), "missing.bin")
	require.ErrorIs(t, Restore(r, 2, "", out, 2, nil), errs.Invalid, "unknown restore flag")

	require.NoError(t, Verify(h, true, true, nil))
	var v Verified
	doc(t, h, &v)
	require.Empty(t, v.Problems)
	require.NotNil(t, v.Cleaned)

	require.NoError(t, Remove(h, "", 1))
	require.NoError(t, CloseReader(r))
	require.ErrorIs(t, CloseReader(r), errs.Invalid)
	r, err = OpenReader(h)
	require.NoError(t, err)
	require.NoError(t, ReaderSteps(r))
	doc(t, r, &steps)
	require.Equal(t, []int64{0, 2}, steps.Steps)
	require.NoError(t, CloseReader(r))

	// A second writer is refused; a reader is not.
	_, err = OpenStore(dir, StoreWrite, nil, 0)
	require.ErrorIs(t, err, errs.IO)
	ro, err := OpenStore(dir, StoreRead, nil, 0)
	require.NoError(t, err)
	_, err = OpenStore(dir, StoreRead, []byte(`{"keyframe_interval": 5}`), 0)
	require.ErrorIs(t, err, errs.Invalid, "a config that differs from the store's")
	require.NoError(t, CloseStore(ro))
	require.NoError(t, Begin(h, 9, true, nil, false))
	require.NoError(t, CloseStore(h), "closing drops the checkpoint being added")
	require.ErrorIs(t, CloseStore(h), errs.Invalid)
}

func TestStoreRuns(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	dir, notes := storeAndNotes(t, "run notes\n")
	h, err := OpenStore(dir, StoreWrite, nil, 0)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseStore(h)) }()
	addCheckpoint(t, h, 0, notes)

	require.NoError(t, BeginRun(h, "ft", []byte(`{"run": "main", "step": 0}`), 10, true, nil))
	require.NoError(t, AddStateDict(h, "model.tpde", []byte(sdMeta), stateDict(1)))
	require.NoError(t, Commit(h))
	require.ErrorIs(t, BeginRun(h, "ft2", []byte(`{"run": "main", "stepp": 0}`), 0, false, nil), errs.Invalid)

	r, err := OpenReader(h)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseReader(r)) }()
	require.NoError(t, ReaderRuns(r))
	var runs Runs
	doc(t, r, &runs)
	require.Len(t, runs.Runs, 2)
	require.Equal(t, store.MainRun, runs.Runs[0].Name)
	require.Equal(t, "ft", runs.Runs[1].Name)
	require.Equal(t, &store.RunParent{Run: "main", Step: 0}, runs.Runs[1].Parent)
	require.NoError(t, ReaderUse(r, "ft"))
	var count RunCount
	doc(t, r, &count)
	require.Equal(t, 1, count.Count)
	require.NoError(t, ReaderSteps(r))
	var steps Steps
	doc(t, r, &steps)
	require.Equal(t, []int64{10}, steps.Steps)
	require.NoError(t, ReaderUse(r, ""))
	doc(t, r, &count)
	require.Equal(t, 1, count.Count, "back to main")

	require.NoError(t, RemoveRun(h, "ft"))
	require.Error(t, RemoveRun(h, "ft"))
}

func TestStoreParts(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	parent := t.TempDir()
	dir := filepath.Join(parent, ".tpde-store")
	holder := filepath.Join(parent, "step-5")
	require.NoError(t, os.Mkdir(holder, 0o755))

	// Two participants stage their files; the writer commits both.
	var descs []json.RawMessage
	for rank := 0; rank < 2; rank++ {
		p, err := OpenStore(dir, StoreStage, nil, 0)
		require.NoError(t, err)
		defer func() { require.NoError(t, CloseStore(p)) }()
		require.NoError(t, Begin(p, 0, false, nil, false))
		require.NoError(t, AddStateDict(p, []string{"rank0.tpde", "rank1.tpde"}[rank], nil, stateDict(rank)))
		require.NoError(t, FinishPart(p))
		b, err := Result(p, caller)
		require.NoError(t, err)
		descs = append(descs, b)
	}
	parts, err := json.Marshal(descs)
	require.NoError(t, err)

	h, err := OpenStore(dir, StoreWrite, nil, 0)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseStore(h)) }()
	require.ErrorIs(t, CommitParts(h, 5, true, nil, "", nil), errs.Invalid, "no parts")
	require.NoError(t, CommitParts(h, 5, true, []byte(`["dcp"]`), "step-5", parts))
	var rec store.Checkpoint
	doc(t, h, &rec)
	require.Equal(t, int64(5), rec.Step)
	require.Len(t, rec.Files, 2)

	require.NoError(t, ReadPointer(caller, holder))
	var ptr Pointer
	doc(t, 0, &ptr)
	require.Equal(t, int64(5), ptr.Step)
	require.Equal(t, dir, filepath.Clean(ptr.Store))

	require.NoError(t, Reclaim(h))
	var rc Reclaimed
	doc(t, h, &rc)
	require.Equal(t, []int64{}, rc.Removed, "the folder still holds it")
	require.NoError(t, os.RemoveAll(holder))
	require.NoError(t, Reclaim(h))
	doc(t, h, &rc)
	require.Equal(t, []int64{5}, rc.Removed)
	require.ErrorIs(t, ReadPointer(caller, holder), errs.IO)
}

// A session opened at a lowered priority does the same work (on lowered
// threads: tests/test_priority.py watches them from outside).
func TestStoreSessionAtIdlePriority(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	dir, notes := storeAndNotes(t, "epoch 3\n")
	h, err := OpenStore(dir, StoreWrite, []byte(`{"priority": "idle"}`), 2)
	require.NoError(t, err)
	addCheckpoint(t, h, 0, notes)
	addCheckpoint(t, h, 1, notes)
	require.NoError(t, Remove(h, "", 0))
	require.NoError(t, CloseStore(h))
	h, err = OpenStore(dir, StoreRead, nil, 0)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseStore(h)) }()
	r, err := OpenReader(h)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseReader(r)) }()
	require.NoError(t, ReaderSteps(r))
	var steps Steps
	doc(t, r, &steps)
	require.Equal(t, []int64{1}, steps.Steps)
}

// A write session re-codes the previous newest checkpoint in the
// background (at its own priority) by default, "inline" inside the add;
// either way, once the session is closed the older checkpoint is a reverse
// delta, and every checkpoint reads back.
func TestStoreRecodesInTheBackgroundUntilClose(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	for _, config := range []string{`{"priority": "idle"}`, `{"recode": "inline"}`, `{}`} {
		dir, notes := storeAndNotes(t, "epoch 3\n")
		h, err := OpenStore(dir, StoreWrite, []byte(config), 2)
		require.NoError(t, err)
		addCheckpoint(t, h, 0, notes)
		addCheckpoint(t, h, 1, notes)
		require.NoError(t, WaitStore(h))
		require.NoError(t, WaitStore(h), "nothing in flight: nothing to wait for")
		require.NoError(t, CloseStore(h))
		s, err := store.Open(dir, store.Options{})
		require.NoError(t, err)
		rd, err := s.Reader()
		require.NoError(t, err)
		c, err := rd.Checkpoint(0, false)
		require.NoError(t, err)
		deltas := 0
		for _, f := range c.Files {
			for _, r := range f.Regions {
				if r.Ref != nil {
					deltas++
				}
			}
		}
		require.Equal(t, 1, deltas, "%s: the weight of step 0 is a delta against step 1", config)
		problems, err := s.Verify(true)
		require.NoError(t, err)
		require.Empty(t, problems)
		rd.Close()
		s.Close()
	}
}
