package store

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A seeded model check of writer sessions on one local store (clean close,
// docs/FORMAT.md §11.6 step 5 and §11.10). Each seed runs sessions of a
// writer that adds, removes, aborts adds, commits or abandons participants'
// parts, holds readers across commits or its Close and holds the background
// count of a writer that opened without a sweep; each session ends with
// Close or dies (its lock closed without Close, an orphan planted as the
// object a dead writer linked). After each session the store verifies,
// lists what the model committed, and a clean close says so in writer.lock
// with objects/ holding exactly what the newest generation names; every
// writer's open leaves objects/ so, sweeping after a writer that died or a
// staged part and only then. Each seed ends restoring every checkpoint.
//
// TPDE_RANDOM_SESSIONS=n runs n sessions in all (in seeds of
// randomSessionsPerSeed) instead of the default.
const (
	randomSessionsPerSeed = 8
	randomSeedsDefault    = 12
)

func randomSeeds(t *testing.T) []int64 {
	n := randomSeedsDefault
	if v := os.Getenv("TPDE_RANDOM_SESSIONS"); v != "" {
		sessions, err := strconv.Atoi(v)
		require.NoError(t, err, "TPDE_RANDOM_SESSIONS must be a number")
		require.Positive(t, sessions, "TPDE_RANDOM_SESSIONS")
		n = (sessions + randomSessionsPerSeed - 1) / randomSessionsPerSeed
	}
	seeds := make([]int64, n)
	for i := range seeds {
		seeds[i] = int64(i + 1)
	}
	return seeds
}

func TestRandomWriterSessionsKeepTheStoreClean(t *testing.T) {
	for _, seed := range randomSeeds(t) {
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			m := &sessionModel{
				seed: seed,
				dir:  filepath.Join(t.TempDir(), "s"),
				rng:  rand.New(rand.NewSource(seed)),
				sr:   newSeries(seed),
				sr1:  newSeries(seed + 1_000_000),
				next: 1,
				want: map[int64]map[string][]byte{},
			}
			m.k = 1 + m.rng.Intn(4)
			for i := 0; i < randomSessionsPerSeed; i++ {
				if !t.Run(fmt.Sprintf("session=%d", i), func(t *testing.T) { m.session(t, i) }) {
					return // the sessions after a failed one start from a store the model does not know
				}
			}
			t.Run("final", func(t *testing.T) { m.final(t) })
		})
	}
}

// sessionModel is what the test believes of the store of one seed.
type sessionModel struct {
	seed     int64
	dir      string
	rng      *rand.Rand
	sr, sr1  *series
	k        int
	next     int64                       // the next step: steps only grow
	want     map[int64]map[string][]byte // committed, not removed: step -> file -> bytes
	sessions int                         // sessions run so far
	prev     sessionEnd                  // how the last session ended
}

// sessionEnd is how a session ended, for the next writer's open.
type sessionEnd struct {
	died   bool
	orphan string // planted after it died
	// closedLine: it closed cleanly with no reader held, so writer.lock
	// says "closed <gen>".
	closedLine bool
}

// heldReader is a reader kept open across the next commit or the Close.
type heldReader struct {
	s           *Store
	rd          *Reader
	step        int64
	want        map[string][]byte
	acrossClose bool
}

// sessionHandles is what a session holds open; its cleanup closes what a
// failed assertion left open, so no goroutine stays blocked.
type sessionHandles struct {
	w        *Store
	reader   *heldReader
	parts    []*Store
	release  chan struct{} // what the count hook waits on; nil if the count is not held
	released bool
}

func (h *sessionHandles) releaseCount() {
	if h.release != nil && !h.released {
		h.released = true
		close(h.release)
	}
}

func (h *sessionHandles) closeAll() {
	h.releaseCount()
	if h.reader != nil {
		h.reader.rd.Close()
		h.reader.s.Close()
		h.reader = nil
	}
	for _, p := range h.parts {
		p.Close()
	}
	h.parts = nil
	if h.w != nil {
		h.w.Close() // waits for the count, which read countHook
		h.w = nil
	}
	countHook = nil
}

func (m *sessionModel) steps() []int64 {
	out := make([]int64, 0, len(m.want))
	for s := range m.want {
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

func (m *sessionModel) stagedExists() bool {
	_, err := os.Lstat(filepath.Join(m.dir, stagedMarker))
	return err == nil
}

// openWriter opens the session's writer and checks what its open did
// against how the last session ended.
func (m *sessionModel) openWriter(t *testing.T, at string, recode string, h *sessionHandles) *Store {
	staged := m.stagedExists()
	if m.prev.died {
		require.True(t, objectFiles(t, m.dir)[m.prev.orphan], "%s: the planted orphan is not there", at)
	}
	w, err := Open(m.dir, Options{Write: true, KeyframeInterval: m.k, Recode: recode})
	require.NoError(t, err, at)
	h.w = w
	switch {
	case m.prev.died:
		assert.Equal(t, 1, w.sweeps, "%s: the open after a writer that died did not sweep", at)
		assert.False(t, objectFiles(t, m.dir)[m.prev.orphan], "%s: the dead writer's object is still there", at)
	case staged:
		assert.Equal(t, 1, w.sweeps, "%s: the open with a staged marker did not sweep", at)
	case m.prev.closedLine:
		assert.Zero(t, w.sweeps, "%s: the open after a clean close swept", at)
	}
	if staged {
		assert.False(t, m.stagedExists(), "%s: the open's sweep left the staged marker (no part folder is left)", at)
	}
	// No participant is staging: whether it swept or not, the open leaves
	// objects/ holding exactly what the newest generation names.
	require.Equal(t, namedNow(t, w), objectFiles(t, m.dir), "%s: objects/ after the open (swept %d)", at, w.sweeps)
	return w
}

// session runs one writer session of 1 to 4 random operations.
func (m *sessionModel) session(t *testing.T, i int) {
	at := fmt.Sprintf("seed %d session %d", m.seed, i)
	var ops []string
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s: operations %s", at, strings.Join(ops, ", "))
		}
	})
	h := &sessionHandles{}
	t.Cleanup(h.closeAll)
	first := m.sessions == 0
	m.sessions++

	recode := []string{"", RecodeInline, RecodeBackground}[m.rng.Intn(3)]
	nops := 1 + m.rng.Intn(4)
	holdCount := m.rng.Intn(3) == 0
	releaseAfter := m.rng.Intn(nops + 1) // ops done when the count goes on
	dies := m.rng.Intn(4) == 0
	ops = append(ops, fmt.Sprintf("open(recode=%q K=%d)", recode, m.k))
	if holdCount {
		h.release = make(chan struct{})
		release := h.release
		countHook = func() { <-release }
		ops = append(ops, fmt.Sprintf("hold count until op %d", releaseAfter))
	}

	w := m.openWriter(t, at, recode, h)

	partStaged := false
	// committed releases a reader held across the next commit.
	committed := func() {
		if h.reader != nil && !h.reader.acrossClose {
			m.releaseReader(t, at, h)
		}
	}
	for op := 0; op < nops; op++ {
		if holdCount && op == releaseAfter {
			h.releaseCount()
		}
		kind := m.rng.Intn(100)
		switch {
		case first && op == 0:
			kind = 0 // a store's first session adds first: a dead writer's orphan copies an object
		case kind >= 35 && kind < 50 && len(m.want) < 2:
			kind = 0 // keep one checkpoint
		case kind >= 82 && (h.reader != nil || len(m.want) == 0):
			kind = 0
		}
		switch {
		case kind < 35: // add
			step := m.next
			m.next++
			files := map[string][]byte{"model.safetensors": m.sr.step(t)}
			if m.rng.Intn(2) == 0 {
				files["config.json"] = []byte(`{"a": 1}`)
			}
			src := t.TempDir()
			paths := map[string]string{}
			for name, b := range files {
				paths[name] = write(t, src, name, b)
			}
			addFiles(t, w, step, paths)
			m.want[step] = files
			ops = append(ops, fmt.Sprintf("add %d", step))
			committed()
		case kind < 50: // remove
			steps := m.steps()
			step := steps[m.rng.Intn(len(steps))]
			require.NoError(t, w.Remove(step), "%s: remove %d", at, step)
			delete(m.want, step)
			ops = append(ops, fmt.Sprintf("remove %d", step))
			committed()
		case kind < 62: // an aborted add
			if h.release != nil && !h.released {
				// Abort sweeps the store, which cancels the count and
				// waits for it to end.
				h.releaseCount()
				ops = append(ops, "release count")
			}
			tx, err := w.Begin(m.next, true, []string{"t"})
			require.NoError(t, err, at)
			require.NoError(t, tx.AddFile("model.safetensors", write(t, t.TempDir(), "model.safetensors", m.sr.step(t)), nil, ""), at)
			tx.Abort()
			ops = append(ops, fmt.Sprintf("abort %d", m.next))
		case kind < 82: // a part, committed or abandoned
			partStaged = true
			files := map[string][]byte{"rank0.safetensors": m.sr.step(t)}
			if m.rng.Intn(2) == 0 {
				files["rank1.safetensors"] = m.sr1.step(t)
			}
			commit := m.rng.Intn(3) != 0
			var descs [][]byte
			for _, name := range []string{"rank0.safetensors", "rank1.safetensors"} {
				if b, ok := files[name]; ok {
					d, p := stage(t, m.dir, map[string][]byte{name: b})
					h.parts = append(h.parts, p)
					descs = append(descs, d)
				}
			}
			require.True(t, m.stagedExists(), "%s: a participant staged without the staged marker", at)
			if commit {
				step := m.next
				m.next++
				c, err := w.CommitParts(descs, step, true, []string{"t"}, "")
				require.NoError(t, err, "%s: commit parts at %d", at, step)
				require.Equal(t, step, c.Step, at)
				m.want[step] = files
				ops = append(ops, fmt.Sprintf("commit %d parts at %d", len(descs), step))
			} else {
				ops = append(ops, fmt.Sprintf("abandon %d parts", len(descs)))
			}
			for _, p := range h.parts {
				p.Close()
			}
			h.parts = nil
			if commit {
				committed()
			}
		default: // hold a reader
			steps := m.steps()
			step := steps[m.rng.Intn(len(steps))]
			acrossClose := m.rng.Intn(2) == 0
			rs, err := Open(m.dir, Options{})
			require.NoError(t, err, at)
			rd, err := rs.Reader()
			if err != nil {
				rs.Close()
				require.NoError(t, err, at)
			}
			h.reader = &heldReader{s: rs, rd: rd, step: step, want: m.want[step], acrossClose: acrossClose}
			require.NoError(t, rd.Use(MainRun), at)
			require.Equal(t, steps, rd.Steps(), "%s: a reader's steps", at)
			ops = append(ops, fmt.Sprintf("hold reader of %d (across close: %v)", step, acrossClose))
		}
	}
	h.releaseCount()

	readerAtClose := h.reader != nil
	var gen uint64 // the newest generation, read once a background re-code is done
	if dies {
		die(w)
		h.w = nil
		countHook = nil
		assert.NotContains(t, lockText(t, m.dir), "closed", "%s: a writer that died left a closed line", at)
		m.prev = sessionEnd{died: true, orphan: plantOrphan(t, m.dir)}
		ops = append(ops, "die")
	} else {
		w.Close()
		h.w = nil
		countHook = nil
		gen = w.gen
		m.prev = sessionEnd{closedLine: !readerAtClose}
		ops = append(ops, "close")
	}
	if h.reader != nil {
		m.releaseReader(t, at, h)
	}

	// What any session leaves: a store that verifies, listing what the
	// model committed.
	r, err := Open(m.dir, Options{})
	require.NoError(t, err, at)
	defer r.Close()
	probs, err := r.Verify(true)
	require.NoError(t, err, at)
	require.Empty(t, probs, "%s: verify", at)
	require.Equal(t, m.steps(), stepsOf(t, m.dir), "%s: the listed checkpoints", at)
	if dies || readerAtClose {
		return
	}
	// A clean close with no reader in its way says so, at its generation.
	assert.Equal(t, "closed "+itoa(gen)+"\n", lockText(t, m.dir), "%s: writer.lock after a clean close", at)
	if !partStaged {
		// Nothing a participant left: objects/ holds what a fresh count
		// of the newest generation names, no more and no less.
		assert.False(t, m.stagedExists(), "%s: a staged marker with no part staged", at)
		require.Equal(t, namedNow(t, r), objectFiles(t, m.dir), "%s: objects/ after a clean close", at)
	}
}

// releaseReader restores the held reader's checkpoint through its snapshot
// (which no commit since may take from it), then closes it.
func (m *sessionModel) releaseReader(t *testing.T, at string, h *sessionHandles) {
	r := h.reader
	c, err := r.rd.Checkpoint(r.step, false)
	require.NoError(t, err, "%s: checkpoint %d through a held reader", at, r.step)
	assert.Equal(t, r.want, restoredFiles(t, r.rd, c), "%s: checkpoint %d through a reader held across a commit or close", at, r.step)
	r.rd.Close()
	r.s.Close()
	h.reader = nil
}

// final opens a writer once more (its open checked as a session's), closes
// it, and restores every listed checkpoint.
func (m *sessionModel) final(t *testing.T) {
	at := fmt.Sprintf("seed %d after session %d", m.seed, m.sessions-1)
	h := &sessionHandles{}
	t.Cleanup(h.closeAll)
	w := m.openWriter(t, at, "", h)
	w.Close()
	h.w = nil
	assert.Equal(t, "closed "+itoa(w.gen)+"\n", lockText(t, m.dir), at)
	require.Equal(t, m.steps(), stepsOf(t, m.dir), at)
	for _, step := range m.steps() {
		assert.Equal(t, m.want[step], restoreAll(t, m.dir, step), "%s: checkpoint %d", at, step)
	}
}
