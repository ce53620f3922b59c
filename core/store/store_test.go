package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// safetensorsFile lays out tensors (name -> f32 values) as a safetensors
// file, names sorted, as the reference writer does.
func safetensorsFile(t testing.TB, tensors map[string][]float32) []byte {
	names := make([]string, 0, len(tensors))
	for n := range tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	hdr := map[string]any{}
	var data bytes.Buffer
	for _, n := range names {
		v := tensors[n]
		begin := data.Len()
		for _, x := range v {
			_ = binary.Write(&data, binary.LittleEndian, x)
		}
		hdr[n] = map[string]any{"dtype": "F32", "shape": []int{len(v)}, "data_offsets": []int{begin, data.Len()}}
	}
	h, err := json.Marshal(hdr)
	require.NoError(t, err)
	for len(h)%8 != 0 {
		h = append(h, ' ')
	}
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(h)))
	out = append(out, h...)
	return append(out, data.Bytes()...)
}

// series is a toy training run: weights that drift a little each step,
// one frozen tensor, one tiny tensor.
type series struct {
	r       *rand.Rand
	weights []float32
	frozen  []float32
}

func newSeries(seed int64) *series {
	r := rand.New(rand.NewSource(seed))
	s := &series{r: r, weights: make([]float32, 8192), frozen: make([]float32, 4096)}
	for i := range s.weights {
		s.weights[i] = float32(r.NormFloat64() * 0.02)
	}
	for i := range s.frozen {
		s.frozen[i] = float32(r.NormFloat64())
	}
	return s
}

func (s *series) step(t testing.TB) []byte {
	for i := range s.weights {
		if s.r.Intn(4) == 0 {
			s.weights[i] += float32(s.r.NormFloat64() * 1e-4)
		}
	}
	return safetensorsFile(t, map[string][]float32{
		"w":    s.weights,
		"emb":  s.frozen,
		"bias": {1, 2, 3, float32(math.Copysign(0, -1)), float32(math.NaN())},
	})
}

func write(t testing.TB, dir, name string, b []byte) string {
	p := filepath.Join(dir, name)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o755))
	require.NoError(t, os.WriteFile(p, b, 0o640))
	return p
}

func addFiles(t testing.TB, s *Store, step int64, files map[string]string) *Checkpoint {
	tx, err := s.Begin(step, true, []string{"t"})
	require.NoError(t, err)
	rels := make([]string, 0, len(files))
	for rel := range files {
		rels = append(rels, rel)
	}
	sort.Strings(rels)
	for _, rel := range rels {
		require.NoError(t, tx.AddFile(rel, files[rel], nil, ""))
	}
	c, err := tx.Commit()
	require.NoError(t, err)
	return c
}

// addOne adds b as the checkpoint's one file, name.
func addOne(t testing.TB, s *Store, step int64, name string, b []byte) *Checkpoint {
	return addFiles(t, s, step, map[string]string{name: write(t, t.TempDir(), name, b)})
}

// withReader opens the store in dir for reading and runs fn on a reader
// of run of its newest snapshot.
func withReader(dir, run string, fn func(s *Store, rd *Reader) error) error {
	s, err := Open(dir, Options{})
	if err != nil {
		return err
	}
	defer s.Close()
	rd, err := s.Reader()
	if err != nil {
		return err
	}
	defer rd.Close()
	if err := rd.Use(run); err != nil {
		return err
	}
	return fn(s, rd)
}

// withCheckpoint runs fn on checkpoint step of the main run of the
// newest snapshot of the store in dir.
func withCheckpoint(dir string, step int64, fn func(s *Store, rd *Reader, c *Checkpoint) error) error {
	return withReader(dir, MainRun, func(s *Store, rd *Reader) error {
		c, err := rd.Checkpoint(step, false)
		if err != nil {
			return err
		}
		return fn(s, rd, c)
	})
}

func restoreAll(t testing.TB, dir string, step int64) map[string][]byte {
	var out map[string][]byte
	require.NoError(t, withCheckpoint(dir, step, func(_ *Store, rd *Reader, c *Checkpoint) error {
		out = restoredFiles(t, rd, c)
		return nil
	}))
	return out
}

// restoredFiles restores checkpoint c through rd into a new folder and
// returns its files.
func restoredFiles(t testing.TB, rd *Reader, c *Checkpoint) map[string][]byte {
	dest := filepath.Join(t.TempDir(), "out")
	require.NoError(t, rd.Restore(c, dest, false))
	out := map[string][]byte{}
	for _, f := range c.Files {
		b, err := os.ReadFile(filepath.Join(dest, f.Path))
		require.NoError(t, err)
		out[f.Path] = b
	}
	return out
}

func TestSeriesRestoresEveryCheckpointByteForByte(t *testing.T) {
	for _, k := range []int{1, 2, 3, 10} {
		t.Run(fmt.Sprintf("K=%d", k), func(t *testing.T) {
			dir, src := t.TempDir(), t.TempDir()
			s, err := Open(dir, Options{Write: true, KeyframeInterval: k})
			require.NoError(t, err)
			ser := newSeries(1)
			want := map[int64][]byte{}
			for step := int64(1); step <= 7; step++ {
				b := ser.step(t)
				want[step] = b
				addFiles(t, s, step*10, map[string]string{
					"model.safetensors": write(t, src, fmt.Sprintf("%d/model.safetensors", step), b),
					"config.json":       write(t, src, fmt.Sprintf("%d/config.json", step), []byte(`{"a": 1}`)),
				})
			}
			s.Close()
			for step, b := range want {
				got := restoreAll(t, dir, step*10)
				assert.Equal(t, b, got["model.safetensors"], "step %d", step)
				assert.Equal(t, []byte(`{"a": 1}`), got["config.json"])
			}
			// Chains never walk more than K frames, and the newest is whole.
			s, err = Open(dir, Options{})
			require.NoError(t, err)
			defer s.Close()
			rd, err := s.Reader()
			require.NoError(t, err)
			defer rd.Close()
			deltas := 0
			for i, c := range records(t, rd) {
				assert.Equal(t, RecordVersionCRC, c.Version)
				for _, f := range c.Files {
					for ri := range f.Regions {
						// Keyframe or reverse delta, each region records the
						// CRC32C of its own bytes: what a load checks.
						r := &f.Regions[ri]
						require.NotNil(t, r.CRC32C, "step %d region %s", c.Step, r.Name)
						assert.Equal(t, crc32.Checksum(want[c.Step/10][r.Offset:r.Offset+r.Size], castagnoli), *r.CRC32C)
						ch, err := rd.sn.chain(&f.Regions[ri])
						require.NoError(t, err)
						assert.LessOrEqual(t, len(ch), max(k, 1))
						if i == len(rd.sn.m.Checkpoints)-1 {
							assert.Len(t, ch, 1, "the newest checkpoint decodes in one frame")
						}
						if len(ch) > 1 {
							deltas++
						}
					}
				}
			}
			if k > 1 {
				assert.Positive(t, deltas)
			} else {
				assert.Zero(t, deltas)
			}
		})
	}
}

func TestIdenticalTensorsAndFilesAreStoredOnce(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	ser := newSeries(2)
	for step := int64(0); step < 4; step++ {
		addFiles(t, s, step, map[string]string{
			"model.safetensors": write(t, src, fmt.Sprintf("%d/m.safetensors", step), ser.step(t)),
			"tokenizer.json":    write(t, src, fmt.Sprintf("%d/tok.json", step), bytes.Repeat([]byte("tok"), 5000)),
		})
	}
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	embs, toks := map[string]bool{}, map[string]bool{}
	for _, c := range records(t, rd) {
		for _, f := range c.Files {
			if f.Path == "tokenizer.json" {
				toks[f.Skeleton.Object] = true
			}
			for _, r := range f.Regions {
				if r.Name == "emb" {
					embs[r.Object.Object] = true
				}
			}
		}
	}
	assert.Len(t, embs, 1, "a frozen tensor is one object")
	assert.Len(t, toks, 1, "an unchanged file is one object")
}

func TestRemoveReencodesWhatDependsOnIt(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 4})
	require.NoError(t, err)
	ser := newSeries(3)
	want := map[int64][]byte{}
	for step := int64(1); step <= 6; step++ {
		want[step] = ser.step(t)
		addFiles(t, s, step, map[string]string{"m.safetensors": write(t, src, fmt.Sprintf("%d.st", step), want[step])})
	}
	for _, gone := range []int64{3, 6, 1} {
		require.NoError(t, s.Remove(gone))
		delete(want, gone)
		for step, b := range want {
			assert.Equal(t, b, restoreAll(t, dir, step)["m.safetensors"], "step %d after removing %d", step, gone)
		}
	}
	problems, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, problems)
	s.Close()
}

func TestVerifyNamesWhatADamagedObjectAffects(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	ser := newSeries(4)
	for step := int64(1); step <= 4; step++ {
		addFiles(t, s, step, map[string]string{"m.safetensors": write(t, src, fmt.Sprintf("%d.st", step), ser.step(t))})
	}
	rd, err := s.Reader()
	require.NoError(t, err)
	// Damage checkpoint 2's own delta of "w": 1 and 2 decode through it.
	var victim string
	for _, r := range records(t, rd)[1].Files[0].Regions {
		if r.Name == "w" {
			require.NotNil(t, r.Ref)
			victim = r.Object.Object
		}
	}
	rd.Close()
	p := s.objectPath(victim)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	b[len(b)/2] ^= 1
	require.NoError(t, os.Chmod(p, 0o644))
	require.NoError(t, os.WriteFile(p, b, 0o644))
	problems, err := s.Verify(false)
	require.NoError(t, err)
	steps := map[int64]bool{}
	for _, pr := range problems {
		steps[pr.Step] = true
		assert.Equal(t, "w", pr.Region)
		assert.Equal(t, victim, pr.Object)
	}
	assert.Equal(t, map[int64]bool{1: true, 2: true}, steps)
	s.Close()
	// The damaged checkpoints refuse to restore; the others restore.
	s, err = Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	rd, err = s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	for step := int64(1); step <= 4; step++ {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		err = rd.Restore(c, t.TempDir(), false)
		if step <= 2 {
			assert.ErrorIs(t, err, errs.Corrupt, "step %d", step)
		} else {
			assert.NoError(t, err, "step %d", step)
		}
	}
}

func TestADiskFullAddCommitsNothing(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	ser := newSeries(5)
	first := ser.step(t)
	addFiles(t, s, 1, map[string]string{"m.safetensors": write(t, src, "1.st", first)})
	require.NoError(t, s.Settle()) // no background re-code reads faultHook while the loop sets it
	before := listTree(t, dir)
	second := write(t, src, "2.st", ser.step(t))
	for fail := 1; fail < 12; fail++ {
		n := 0
		faultHook = func(int) error {
			n++
			if n == fail {
				return syscall.ENOSPC
			}
			return nil
		}
		tx, err := s.Begin(2, true, nil)
		require.NoError(t, err)
		err = tx.AddFile("m.safetensors", second, nil, "")
		if err == nil {
			_, err = tx.Commit()
		} else {
			tx.Abort()
		}
		_ = s.Settle() // a background re-code (which may meet the fault too: it then stays whole) reads faultHook
		faultHook = nil
		if err == nil {
			break // fail is past the last write: this add went through
		}
		assert.ErrorIs(t, err, syscall.ENOSPC, "write %d", fail)
		_, _ = s.cleanup()
		assert.Equal(t, before, listTree(t, dir), "write %d", fail)
		assert.Equal(t, first, restoreAll(t, dir, 1)["m.safetensors"])
	}
}

func listTree(t testing.TB, dir string) []string {
	var out []string
	require.NoError(t, filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return err
	}))
	sort.Strings(out)
	return out
}

func TestOneWriterAtATime(t *testing.T) {
	dir := t.TempDir()
	a, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	_, err = Open(dir, Options{Write: true})
	require.ErrorIs(t, err, syscall.EWOULDBLOCK)
	assert.True(t, IsLocked(err))
	assert.Contains(t, err.Error(), fmt.Sprintf("pid %d", os.Getpid()))
	// Readers are not writers.
	r, err := Open(dir, Options{})
	require.NoError(t, err)
	r.Close()
	a.Close()
	b, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	b.Close()
}

func TestReopeningWithAnotherConfigIsRefused(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 5})
	require.NoError(t, err)
	addFiles(t, s, 1, map[string]string{"a": write(t, src, "a", []byte("x"))})
	s.Close()
	_, err = Open(dir, Options{Write: true, KeyframeInterval: 6})
	require.ErrorIs(t, err, errs.Invalid)
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	assert.Equal(t, 5, s.Config().KeyframeInterval)
	s.Close()
}

func TestANonEmptyFolderIsNotMadeAStore(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "precious.txt", []byte("mine"))
	_, err := Open(dir, Options{Write: true})
	require.ErrorIs(t, err, errs.Invalid)
	// An empty folder opened for reading is no store yet: nothing to read.
	_, err = Open(t.TempDir(), Options{})
	require.ErrorIs(t, err, syscall.ENOENT)
	require.ErrorContains(t, err, "not a tpde store")
}

func TestGlob(t *testing.T) {
	assert.True(t, glob("*exp_avg*", "state.0.exp_avg_sq"))
	assert.True(t, glob("optimizer.pt:*", "optimizer.pt:data/3"))
	assert.True(t, glob("a?c", "abc"))
	assert.False(t, glob("a?c", "abbc"))
	assert.False(t, glob("*.weight", "x.bias"))
}

// A crafted store whose refs loop, or run longer than K, or point at a
// lossy region, is refused when it is read, before anything decodes.
func TestLinkRefusesLoopsLongChainsAndLossyReferences(t *testing.T) {
	region := func(name string, ref *Ref, maxErr float64) Region {
		return Region{Name: name, Offset: 0, Size: 4096, DType: "F32", Shape: []uint64{1024}, SHA256: hashHex([]byte(name)),
			Object: Object{Object: hashHex([]byte("o" + name)), Stored: 10}, Ref: ref, MaxError: maxErr}
	}
	cp := func(step int64, r Region) *Checkpoint {
		return &Checkpoint{Format: checkpointFormat, Version: Version, Step: step,
			Files: []File{{Path: "m", Size: 4096, SHA256: hashHex(nil), Layout: LayoutRaw, Skeleton: Object{Object: hashHex(nil)}, Regions: []Region{r}}}}
	}
	build := func(k int, cps ...*Checkpoint) *testSnapshot {
		m := &Manifest{Format: manifestFormat, Version: Version, Config: Config{KeyframeInterval: k, Reference: RefPrevious}}
		for i, c := range cps {
			m.Checkpoints = append(m.Checkpoints, CheckpointRef{Step: c.Step, Object: hashHex([]byte{byte(i)})})
		}
		sn := newSnapshot(nil, m)
		for i, c := range cps {
			sn.cps[i] = &loaded{c: c, index: indexRegions(c)}
		}
		return &testSnapshot{sn, cps}
	}
	loop := build(10, cp(1, region("w", &Ref{Step: 2, File: "m", Region: "w"}, 0)), cp(2, region("w", &Ref{Step: 1, File: "m", Region: "w"}, 0)))
	require.ErrorContains(t, loop.link(), "longer than the store's keyframe interval")
	require.ErrorIs(t, loop.link(), errs.Corrupt)

	long := build(2, cp(1, region("w", &Ref{Step: 2, File: "m", Region: "w"}, 0)), cp(2, region("w", &Ref{Step: 3, File: "m", Region: "w"}, 0)), cp(3, region("w", nil, 0)))
	require.ErrorIs(t, long.link(), errs.Corrupt)
	require.NoError(t, build(3, long.records...).link(), "three frames are within K = 3")

	lossy := build(10, cp(1, region("w", &Ref{Step: 2, File: "m", Region: "w"}, 0)), cp(2, region("w", &Ref{Step: 3, File: "m", Region: "w"}, 0.5)), cp(3, region("w", nil, 0)))
	require.ErrorContains(t, lossy.link(), "lossy")

	dangling := build(10, cp(1, region("w", &Ref{Step: 9, File: "m", Region: "w"}, 0)))
	require.ErrorContains(t, dangling.link(), "does not hold")
}

// records reads every checkpoint record of rd's snapshot.
func records(t testing.TB, rd *Reader) []*Checkpoint {
	var out []*Checkpoint
	for i := range rd.sn.m.Checkpoints {
		c, err := rd.sn.record(i)
		require.NoError(t, err)
		out = append(out, c)
	}
	return out
}

type testSnapshot struct {
	*snapshot
	records []*Checkpoint
}

// link checks every ref of every record, as verify does.
func (ts *testSnapshot) link() error {
	for i, c := range ts.records {
		if err := ts.checkChains(c, fmt.Sprintf("checkpoint %d", ts.m.Checkpoints[i].Step)); err != nil {
			return err
		}
	}
	return nil
}

// ReadTensors spreads small tensors over threads, each decoding its own
// chain with its own buffers: every tensor of every checkpoint, keyframe
// or reverse delta, comes back as it was added (run under -race, this is
// also the test that the workers share nothing they write).
func TestReadTensorsInParallelIsBitExact(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3, Threads: 4})
	require.NoError(t, err)
	r := rand.New(rand.NewSource(7))
	tensors := map[string][]float32{}
	for i := 0; i < 40; i++ {
		v := make([]float32, 1024+64*i) // each over the 4096 bytes a region needs
		for j := range v {
			v[j] = float32(r.NormFloat64())
		}
		tensors[fmt.Sprintf("layer.%02d.weight", i)] = v
	}
	want := map[int64][]byte{}
	for step := int64(1); step <= 5; step++ {
		for _, v := range tensors {
			for j := range v {
				if r.Intn(3) == 0 {
					v[j] += float32(r.NormFloat64() * 1e-3)
				}
			}
		}
		want[step] = safetensorsFile(t, tensors)
		addFiles(t, s, step, map[string]string{"model.safetensors": write(t, src, fmt.Sprintf("%d.safetensors", step), want[step])})
	}
	s.Close()
	// Threads 0 is "every core", as Python's Store opens a store.
	for _, threads := range []int{4, 0} {
		deltas := readEveryTensor(t, dir, threads, want)
		assert.Positive(t, deltas, "older checkpoints should decode through chains")
	}
}

// readEveryTensor reads every checkpoint of want through ReadTensors and
// ReadRange, checks the bytes, and counts the regions decoded from deltas.
func readEveryTensor(t *testing.T, dir string, threads int, want map[int64][]byte) int {
	s, err := Open(dir, Options{Threads: threads})
	require.NoError(t, err)
	defer s.Close()
	rd, err := s.Reader()
	require.NoError(t, err)
	defer rd.Close()
	deltas := 0
	for step, b := range want {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		for _, reg := range c.Files[0].Regions {
			if reg.Ref != nil {
				deltas++
			}
		}
		ft, err := rd.Tensors(c, "model.safetensors")
		require.NoError(t, err)
		spans := make([]Span, len(ft.Tensors))
		for i, e := range ft.Tensors {
			spans[i] = Span{Offset: e.Offset, Dst: make([]byte, e.NBytes)}
		}
		require.NoError(t, rd.ReadTensors(c, "model.safetensors", spans))
		for _, sp := range spans {
			require.Equal(t, b[sp.Offset:sp.Offset+uint64(len(sp.Dst))], sp.Dst, "step %d at %d", step, sp.Offset)
		}
		// A range over the whole file decodes its regions the same way,
		// and the bytes between them from the skeleton.
		whole := make([]byte, len(b))
		require.NoError(t, rd.ReadRange(c, "model.safetensors", 0, whole))
		require.Equal(t, b, whole, "step %d", step)
		part := make([]byte, len(b)/2)
		require.NoError(t, rd.ReadRange(c, "model.safetensors", 100, part))
		require.Equal(t, b[100:100+len(part)], part, "step %d", step)
	}
	return deltas
}

// Two processes create a store at once: one that found no marker, then
// lists the folder after the other linked its marker, opens that store
// instead of calling the folder foreign (a stage worker in
// tests/test_store_parts.py::test_many_processes_create_a_store_at_once
// was refused so).
func TestCreateAfterAnotherCreatorFinishedOpensItsStore(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "s"), Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	require.NoError(t, s.create(), "the marker another creator linked stands")
	require.NoError(t, os.WriteFile(filepath.Join(s.dir, "tpde-store.json"), []byte("{\"format\": \"other\"}\n"), 0o644))
	require.ErrorIs(t, s.create(), errs.Corrupt, "a marker that is not tpde's is refused")
}
