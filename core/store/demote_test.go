package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/statedict"
)

// Background re-codes (demote.go): the add commits its checkpoint whole,
// and the previous newest becomes reverse deltas after it.

const (
	helperEnv      = "TPDE_STORE_TEST_HELPER"
	helperStepsEnv = "TPDE_STORE_TEST_STEPS"
	helperReadyEnv = "TPDE_STORE_TEST_READY"
)

// demoteSeed is the state dict every test here adds, step after step.
const demoteSeed = 11

var sdMeta = statedict.Meta{Skeleton: json.RawMessage(`{"t":"dict"}`), Aliases: json.RawMessage(`{}`), StateDictMetadata: json.RawMessage(`null`)}

// addSD adds tensors as checkpoint step, as addStateDict does, returning
// Begin's or Commit's error.
func addSD(s *Store, step int64, tensors []Tensor) error {
	tx, err := s.Begin(step, true, nil)
	if err != nil {
		return err
	}
	if err := tx.AddStateDict("sd.tpde", sdMeta, tensors); err != nil {
		tx.Abort()
		return err
	}
	_, err = tx.Commit()
	return err
}

// runHelper is the writer a test kills: it adds steps 1..n of the state
// dict demoteSeed with background re-codes, and the demotion after the
// last add stops, for good, just before it publishes (its objects
// written), once it has written the ready file.
func runHelper() int {
	dir := os.Getenv(helperEnv)
	n, err := strconv.Atoi(os.Getenv(helperStepsEnv))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	demoteHook = func(point string, step int64) {
		if point == "publish" && step == int64(n) {
			_ = os.WriteFile(os.Getenv(helperReadyEnv), []byte("ready"), 0o644)
			select {} // killed here
		}
	}
	s, err := Open(dir, Options{Write: true, Recode: RecodeBackground})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	sd := newStateDict(demoteSeed)
	for step := 1; step <= n; step++ {
		if err := addSD(s, int64(step), sd.step()); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	s.Close() // waits on the demotion: the parent kills this process first
	fmt.Fprintln(os.Stderr, "the demotion was not paused")
	return 2
}

// wantSD is steps 1..n of the state dict demoteSeed.
func wantSD(n int) map[int64][]Tensor {
	sd := newStateDict(demoteSeed)
	out := map[int64][]Tensor{}
	for step := 1; step <= n; step++ {
		out[int64(step)] = sd.step()
	}
	return out
}

// checkStore checks that every checkpoint of the store in dir reads back
// bit-exactly, that no decode walks more than k frames (the newest one
// frame), and that deep verify finds nothing. It returns, by step, whether
// the checkpoint holds a delta.
func checkStore(t *testing.T, dir string, k int, want map[int64][]Tensor) map[int64]bool {
	t.Helper()
	deltas := map[int64]bool{}
	for step, ts := range want {
		for _, tn := range ts[:2] {
			got, err := readTensor(dir, step, tn.Name)
			require.NoError(t, err, "step %d tensor %s", step, tn.Name)
			assert.True(t, bytes.Equal(tn.Data, got), "step %d tensor %s", step, tn.Name)
		}
		out := filepath.Join(t.TempDir(), "out")
		require.NoError(t, restoreErr(dir, step, out), "step %d", step)
	}
	require.NoError(t, withReader(dir, MainRun, func(_ *Store, rd *Reader) error {
		cs := records(t, rd)
		require.Len(t, cs, len(want))
		for i, c := range cs {
			for _, f := range c.Files {
				for ri := range f.Regions {
					ch, err := rd.sn.chain(&f.Regions[ri])
					require.NoError(t, err)
					assert.LessOrEqual(t, len(ch), k, "step %d tensor %s", c.Step, f.Regions[ri].Name)
					if i == len(cs)-1 {
						assert.Len(t, ch, 1, "the newest checkpoint decodes in one frame")
					}
					if len(ch) > 1 {
						deltas[c.Step] = true
					}
				}
			}
		}
		return nil
	}))
	s, err := Open(dir, Options{})
	require.NoError(t, err)
	defer s.Close()
	problems, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, problems)
	return deltas
}

func TestAKilledDemotionLosesNothingAndTheNextAddCatchesUp(t *testing.T) {
	dir := t.TempDir()
	ready := filepath.Join(t.TempDir(), "ready")
	const n = 4
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir, helperStepsEnv+"="+strconv.Itoa(n), helperReadyEnv+"="+ready)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	for {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("the writer ended (%v) before its last demotion: %s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	// The writer is inside its last demotion, the re-coded objects of
	// checkpoint n-1 written and not yet published.
	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	err := <-exited
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit)
	assert.Equal(t, syscall.SIGKILL, exit.Sys().(syscall.WaitStatus).Signal(), stderr.String())

	want := wantSD(n)
	deltas := checkStore(t, dir, DefaultKeyframeInterval, want)
	assert.True(t, deltas[1], "checkpoint 1 was demoted before the kill")
	assert.True(t, deltas[2], "checkpoint 2 was demoted before the kill")
	assert.False(t, deltas[3], "checkpoint 3's demotion was killed: it is whole")

	// The next session's add commits, and its demotion catches up on
	// checkpoint 3 as well as re-coding checkpoint 4.
	s, err := Open(dir, Options{Write: true, Recode: RecodeBackground})
	require.NoError(t, err)
	sd := newStateDict(demoteSeed)
	for step := 1; step <= n; step++ {
		sd.step()
	}
	want[n+1] = sd.step()
	require.NoError(t, addSD(s, n+1, want[n+1]))
	require.NoError(t, s.Settle())
	s.Close()
	deltas = checkStore(t, dir, DefaultKeyframeInterval, want)
	assert.True(t, deltas[3], "the next add's demotion caught up on checkpoint 3")
	assert.True(t, deltas[4])
	assert.False(t, deltas[5])
}

// storeObjects lists the objects of the store in dir that are not
// checkpoint records (a record has a .copy beside it, and records differ
// between stores by their creation time), with their sizes.
func storeObjects(t *testing.T, dir string) (map[string]int64, int64) {
	out := map[string]int64{}
	total := int64(0)
	require.NoError(t, filepath.Walk(filepath.Join(dir, "objects"), func(p string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() || strings.HasSuffix(p, copySuffix) {
			return err
		}
		if _, err := os.Stat(p + copySuffix); err == nil {
			return nil
		}
		out[filepath.Base(p)] = info.Size()
		total += info.Size()
		return nil
	}))
	return out, total
}

// The chain bound holds whatever becomes of the demotions: some fail
// (a panic, reported at the next add), sessions end and start again, and
// afterwards the store holds exactly the objects an inline store holds.
func TestDeferredAndInterruptedDemotionsKeepChainsWithinKAndCatchUp(t *testing.T) {
	const n, k = 30, 3
	want := wantSD(n)
	inline, background := t.TempDir(), t.TempDir()
	s, err := Open(inline, Options{Write: true, KeyframeInterval: k, Recode: RecodeInline})
	require.NoError(t, err)
	for step := int64(1); step <= n; step++ {
		require.NoError(t, addSD(s, step, want[step]))
	}
	s.Close()

	// The demotion that re-codes against step fails once, for each
	// step here (fired is the demotions' own: one runs at a time).
	failAt := map[int64]bool{5: true, 6: true, 15: true, 24: true} // each re-codes something (K=3)
	fired := map[int64]bool{}
	t.Cleanup(func() { demoteHook = nil })
	demoteHook = func(point string, step int64) {
		if point == "publish" && failAt[step] && !fired[step] {
			fired[step] = true
			panic("demotion interrupted")
		}
	}
	open := func() *Store {
		s, err := Open(background, Options{Write: true, KeyframeInterval: k, Recode: RecodeBackground})
		require.NoError(t, err)
		return s
	}
	s = open()
	failed := 0
	for step := int64(1); step <= n; step++ {
		err := addSD(s, step, want[step])
		if failAt[step-1] {
			// The previous add's demotion panicked: this add reports it,
			// and adds nothing; the store is intact, and the add goes on.
			require.ErrorIs(t, err, errs.Internal)
			assert.ErrorContains(t, err, "demotion interrupted")
			failed++
			require.NoError(t, addSD(s, step, want[step]))
		} else {
			require.NoError(t, err)
		}
		if step%7 == 0 {
			s.Close() // a new session: its first demotion looks back K
			s = open()
		}
	}
	require.NoError(t, s.Settle())
	s.Close()
	assert.Equal(t, 4, failed)

	wantInline := checkStore(t, inline, k, want)
	got := checkStore(t, background, k, want)
	assert.Equal(t, wantInline, got, "the same checkpoints hold deltas")
	objInline, sizeInline := storeObjects(t, inline)
	objBackground, sizeBackground := storeObjects(t, background)
	assert.Equal(t, objInline, objBackground, "the same objects as inline re-codes")
	assert.Equal(t, sizeInline, sizeBackground)
	assert.Positive(t, len(got))
}

func TestAWrongReferenceOfADeferredDeltaIsCaught(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Write: true, Recode: RecodeBackground})
	require.NoError(t, err)
	want := wantSD(2)
	require.NoError(t, addSD(s, 1, want[1]))
	require.NoError(t, addSD(s, 2, want[2]))
	s.Close()
	republish(t, dir, 1, func(c *Checkpoint) {
		for k := range c.Files[0].Regions {
			if r := &c.Files[0].Regions[k]; r.Name == "a" {
				require.NotNil(t, r.Ref, "the demotion made a a delta")
				r.Ref.Region = "b"
			}
		}
	})
	_, err = readTensor(dir, 1, "a")
	assert.ErrorIs(t, err, errs.Corrupt)
	assert.ErrorIs(t, restoreErr(dir, 1, filepath.Join(t.TempDir(), "out")), errs.Corrupt)
}

// A reader of the same Store reads while a demotion is in flight: it
// never waits for it.
func TestAReaderDoesNotWaitForADemotion(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Write: true, Recode: RecodeBackground})
	require.NoError(t, err)
	want := wantSD(2)
	require.NoError(t, addSD(s, 1, want[1]))
	require.NoError(t, s.Settle())
	release := make(chan struct{})
	t.Cleanup(func() { demoteHook = nil })
	demoteHook = func(point string, _ int64) {
		if point == "start" {
			<-release
		}
	}
	require.NoError(t, addSD(s, 2, want[2]))
	rd, err := s.Reader()
	require.NoError(t, err)
	for _, step := range []int64{1, 2} {
		c, err := rd.Checkpoint(step, false)
		require.NoError(t, err)
		for _, r := range c.Files[0].Regions {
			assert.Nil(t, r.Ref, "step %d: not re-coded yet", step)
		}
		ft, err := rd.Tensors(c, "sd.tpde")
		require.NoError(t, err)
		got := make([]byte, ft.Tensors[0].NBytes)
		require.NoError(t, rd.ReadTensors(c, "sd.tpde", []Span{{Offset: ft.Tensors[0].Offset, Dst: got}}))
		assert.Equal(t, want[step][0].Data, got)
	}
	// The demotion publishes, and its cleanup finds the reader: the
	// replaced keyframes stay until Settle cleans up again.
	close(release)
	_ = s.demoting.wait()
	rd.Close()
	require.NoError(t, s.Settle())
	sn, err := s.snapshot()
	require.NoError(t, err)
	live, err := sn.live()
	require.NoError(t, err)
	onDisk := map[string]bool{}
	require.NoError(t, filepath.Walk(filepath.Join(dir, "objects"), func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			onDisk[filepath.Base(p)] = true
		}
		return err
	}))
	for name := range onDisk {
		assert.True(t, live[name] || live[strings.TrimSuffix(name, copySuffix)], "%s is on disk, and nothing needs it", name)
	}
	s.Close()
	deltas := checkStore(t, dir, DefaultKeyframeInterval, want)
	assert.True(t, deltas[1])
}

func TestAnUnknownRecodeModeIsRefused(t *testing.T) {
	_, err := Open(t.TempDir(), Options{Write: true, Recode: "later"})
	assert.ErrorIs(t, err, errs.Invalid)
}
