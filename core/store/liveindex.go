package store

import (
	"errors"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/par"
)

// liveIndex is a writer's count of what the newest generation names: how
// many times each record is listed (a run's checkpoints, the base), and for
// each object how many listed records name it. A full cleanup, which reads
// every record and lists every object, builds it (at a writer's open);
// after each of the writer's own commits, tidy updates it from the records
// that commit listed or dropped, and removes only the objects whose count
// fell to zero. A commit's cleanup then costs what the commit changed, not
// the store's history: with thousands of checkpoints the full sweep read
// every record and listed every object at each add, twice with the
// demotion.
//
// Only the writer, which holds the writer lock, commits, so the
// generations it publishes are the only ones after the index's; objects a
// participant stages (parts) are kept while its folder is locked, as a full
// cleanup keeps them.
type liveIndex struct {
	mu      sync.Mutex
	gen     uint64
	records map[string]int  // record object -> times the generation lists it
	objects map[string]int  // object -> listed records naming it, per listing
	pending map[string]bool // named by nothing, not yet removed (readers were busy)
	noted   map[string]bool // pending objects already in a remote store's gc notes
}

// writtenSet is every object a writer linked into objects/ since its last
// tidy or sweep: one that no record names (a tx that wrote an object it
// then did not use, an aborted one) is removed by the next tidy. It is
// kept whether or not an index exists yet (one being counted beside the
// writer's work, indexBuild), so that nothing written meanwhile escapes.
type writtenSet struct {
	mu    sync.Mutex
	names map[string]bool
	any   bool // an object was linked since the writer opened
}

// noteWritten records that object name was linked into objects/ (by any of
// the coding threads).
func (s *Store) noteWritten(name string) {
	w := &s.written
	w.mu.Lock()
	if w.names == nil {
		w.names = map[string]bool{}
	}
	w.names[name] = true
	w.any = true
	w.mu.Unlock()
}

// drainWritten moves what was written since the last tidy into pending.
func (s *Store) drainWritten(pending map[string]bool) {
	w := &s.written
	w.mu.Lock()
	for o := range w.names {
		pending[o] = true
	}
	w.names = nil
	w.mu.Unlock()
}

// forgetWritten is called by a full sweep that holds readers.lock
// exclusively, before it lists objects/: what was written before it is
// either named by the generation it reads or removed by it.
func (s *Store) forgetWritten() {
	s.written.mu.Lock()
	s.written.names = nil
	s.written.mu.Unlock()
}

func (s *Store) writtenPending() bool {
	s.written.mu.Lock()
	defer s.written.mu.Unlock()
	return len(s.written.names) > 0
}

// indexBuild counts a writer's liveIndex beside its work, after an open
// that needed no sweep (cleanClose): reading every record is the one part
// of a writer's open whose cost grows with the store's history, and no
// add waits for it. It only reads records, which never change, of the
// generation the open found; until it is done, a commit's tidy removes
// nothing (what the commit left unnamed stays pending in the records and
// in written), and the first tidy after it follows the index from that
// generation to the newest (followIndex).
type indexBuild struct {
	done   chan struct{}
	cancel atomic.Bool
	ix     *liveIndex
	err    error
}

// countHook, if set (tests), runs first in a background count.
var countHook func()

// errBuildCanceled ends a build nobody needs any more.
var errBuildCanceled = errors.New("the count of the store's objects was canceled")

// startIndexBuild counts what sn names, in the background.
func (s *Store) startIndexBuild(sn *snapshot) {
	b := &indexBuild{done: make(chan struct{})}
	s.buildMu.Lock()
	s.building = b
	s.buildMu.Unlock()
	par.Go(func() error {
		defer close(b.done)
		if countHook != nil {
			countHook()
		}
		b.ix, b.err = s.countIndex(sn, &b.cancel)
		return b.err
	})
}

// takeIndexBuild installs a finished build's index and reports whether an
// index is there now, and whether a build is still counting; with wait it
// waits for a build in flight. A build that failed leaves no index: tidy
// then sweeps, which says what is wrong.
func (s *Store) takeIndexBuild(wait bool) (ready, counting bool) {
	s.buildMu.Lock()
	defer s.buildMu.Unlock()
	if b := s.building; b != nil {
		if !wait {
			select {
			case <-b.done:
			default:
				return false, true
			}
		}
		<-b.done
		s.building = nil
		if b.err == nil && s.index.Load() == nil {
			s.index.Store(b.ix)
		}
	}
	return s.index.Load() != nil, false
}

// stopIndexBuild cancels a build in flight and waits for it to end (it
// reads through the store's folders, which Close then closes).
func (s *Store) stopIndexBuild() {
	s.buildMu.Lock()
	b := s.building
	s.building = nil
	s.buildMu.Unlock()
	if b != nil {
		b.cancel.Store(true)
		<-b.done
	}
}

// listedRecord is one listing of a record by a generation.
type listedRecord struct {
	object string
	step   int64
	base   bool
}

// listed is every record the generation lists: each run's checkpoints and
// the base. It reads no record.
func (sn *snapshot) listed() []listedRecord {
	m := sn.full
	out := make([]listedRecord, 0, len(m.Checkpoints)+1)
	for _, r := range m.Checkpoints {
		out = append(out, listedRecord{r.Object, r.Step, false})
	}
	for _, run := range m.Runs {
		for _, r := range run.Checkpoints {
			out = append(out, listedRecord{r.Object, r.Step, false})
		}
	}
	if m.Base != nil {
		out = append(out, listedRecord{m.Base.Object, 0, true})
	}
	return out
}

// recordObjects is every object record c names.
func recordObjects(c *Checkpoint) []string {
	var out []string
	for _, f := range c.Files {
		out = append(out, f.Skeleton.Object)
		for _, r := range f.Regions {
			out = append(out, r.Object.Object)
		}
	}
	return out
}

// buildIndex counts what sn names. It fails as live does, when a record
// cannot be read.
func (s *Store) buildIndex(sn *snapshot) (*liveIndex, error) {
	return s.countIndex(sn, nil)
}

// countIndex is buildIndex, which a set cancel ends early.
func (s *Store) countIndex(sn *snapshot, cancel *atomic.Bool) (*liveIndex, error) {
	ix := &liveIndex{gen: sn.m.Generation, records: map[string]int{}, objects: map[string]int{}, pending: map[string]bool{}, noted: map[string]bool{}}
	for _, l := range sn.listed() {
		if cancel != nil && cancel.Load() {
			return nil, errBuildCanceled
		}
		c, err := s.readRecord(l.object, l.step, l.base)
		if err != nil {
			return nil, err
		}
		ix.records[l.object]++
		for _, o := range recordObjects(c) {
			ix.objects[o]++
		}
	}
	return ix, nil
}

// names reports whether the indexed generation names object o (a record,
// its copy, or an object a record names).
func (ix *liveIndex) names(o string) bool {
	if ix.objects[o] > 0 || ix.records[o] > 0 {
		return true
	}
	if r, ok := strings.CutSuffix(o, copySuffix); ok {
		return ix.records[r] > 0
	}
	return false
}

// tidy is the cleanup after one of this writer's commits: tmp/ leftovers,
// the objects that commit left unnamed, and older manifest generations.
// On a remote store what the commit dropped also goes into the bucket's
// gc notes, and the cache is trimmed, as the full cleanup does. Without an
// index (none built yet, a record that could not be read) it is the full
// cleanup.
func (s *Store) tidy() (Cleaned, error) {
	if _, counting := s.takeIndexBuild(false); counting {
		// Nothing is removed before the count is done; the first tidy
		// after it (or Close) removes what is pending by then.
		var c Cleaned
		return c, s.removeTemporary(&c)
	}
	ix := s.index.Load()
	if ix == nil {
		return s.cleanup()
	}
	ix.mu.Lock()
	defer ix.mu.Unlock()
	var c Cleaned
	if err := s.removeTemporary(&c); err != nil {
		return c, err
	}
	sn, err := s.snapshot()
	if err != nil {
		return c, err
	}
	if sn.m.Generation < ix.gen {
		// Not a generation this index followed to: start again.
		s.index.Store(nil)
		return s.cleanup()
	}
	s.drainWritten(ix.pending)
	followed := sn.m.Generation != ix.gen
	if err := s.followIndex(ix, sn); err != nil {
		// A record that cannot be read: the full cleanup says which, and
		// keeps what it may need.
		s.index.Store(nil)
		return s.cleanup()
	}
	if len(ix.pending) == 0 && !followed {
		return c, nil // nothing committed since, nothing waiting
	}
	if s.remote != nil {
		// What the commit dropped goes into the bucket's gc notes whether
		// or not this cache holds it (a trimmed cache does not), once.
		for _, o := range slices.Sorted(maps.Keys(ix.pending)) {
			if !ix.noted[o] && !ix.names(o) && len(o) >= 2 {
				s.remote.dropped = append(s.remote.dropped, o[:2]+"/"+o)
				ix.noted[o] = true
			}
		}
	}
	lf, err := s.root.Open("readers.lock")
	if err != nil {
		return c, err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		c.ReadersBusy = true // what is pending, and the old generations, wait for the next commit
		return c, nil
	}
	staged := map[string]bool{}
	if err := s.liveParts(staged, &c); err != nil {
		return c, err
	}
	for _, o := range slices.Sorted(maps.Keys(ix.pending)) {
		if ix.names(o) {
			delete(ix.pending, o) // named again (the same content added anew)
			delete(ix.noted, o)
			continue
		}
		if staged[o] {
			continue // a participant's; checked again after the next commit
		}
		if len(o) < 2 {
			delete(ix.pending, o)
			continue
		}
		sub, err := s.objects.OpenDir(o[:2])
		if err == nil {
			if s.removeObject(sub, o) {
				c.Objects++
			} else if _, err := sub.Stat(o); !errors.Is(err, fs.ErrNotExist) {
				s.swept = false // left behind: the next writer must sweep (cleanClose)
			}
			_ = sub.Close()
		} else if !errors.Is(err, fs.ErrNotExist) {
			s.swept = false
		}
		delete(ix.pending, o)
		delete(ix.noted, o)
	}
	if s.remote != nil {
		// Best effort, as the full cleanup's: what fails stays noted, and
		// a cache left larger loses nothing.
		if err := s.remoteCleanup(ix.names, nil); err != nil {
			c.Remote = err.Error()
		}
		if n, err := s.trimCache(sn, ix.names); err == nil {
			c.Trimmed = n
		}
	}
	if err := s.removeOldGenerations(&c); err != nil {
		return c, err
	}
	return c, nil
}

// followIndex brings ix from its generation to sn's: the records sn lists
// more or fewer times than ix's generation did add or take their objects'
// counts, and what falls to zero becomes pending.
func (s *Store) followIndex(ix *liveIndex, sn *snapshot) error {
	if sn.m.Generation == ix.gen {
		return nil
	}
	now := map[string]int{}
	steps := map[string]listedRecord{}
	for _, l := range sn.listed() {
		now[l.object]++
		steps[l.object] = l
	}
	type change struct {
		object string
		l      listedRecord
		delta  int
	}
	var changes []change
	for o, n := range now {
		if d := n - ix.records[o]; d != 0 {
			changes = append(changes, change{o, steps[o], d})
		}
	}
	for o, n := range ix.records {
		if _, ok := now[o]; !ok {
			changes = append(changes, change{object: o, delta: -n})
		}
	}
	// Read every changed record before changing a count, so that an
	// unreadable one leaves the index as it was.
	objs := make([][]string, len(changes))
	for i, ch := range changes {
		var c *Checkpoint
		var err error
		if ch.delta > 0 {
			c, err = s.readRecord(ch.object, ch.l.step, ch.l.base)
		} else {
			c, err = s.droppedRecord(ch.object)
		}
		if err != nil {
			return err
		}
		objs[i] = recordObjects(c)
	}
	for i, ch := range changes {
		for _, o := range objs[i] {
			ix.objects[o] += ch.delta
			if ix.objects[o] <= 0 {
				delete(ix.objects, o)
				ix.pending[o] = true
			}
		}
		ix.records[ch.object] += ch.delta
		if ix.records[ch.object] <= 0 {
			delete(ix.records, ch.object)
			ix.pending[ch.object] = true
			ix.pending[ch.object+copySuffix] = true
		}
	}
	ix.gen = sn.m.Generation
	return nil
}

// droppedRecord reads a record that the newest generation no longer
// lists, whatever step it was (parsed as the base's is, without a step to
// match): only the objects it names matter.
func (s *Store) droppedRecord(h string) (*Checkpoint, error) {
	if c := s.records.get(h); c != nil {
		return c, nil
	}
	b, err := s.recordBytes(h, "a dropped checkpoint")
	if err != nil {
		return nil, err
	}
	return parseCheckpoint(b, 0, true)
}

// live is the set the full cleanup keeps: every object a listed record
// names, and every listed record with its copy.
func (ix *liveIndex) live() map[string]bool {
	live := make(map[string]bool, len(ix.objects)+2*len(ix.records))
	for o := range ix.objects {
		live[o] = true
	}
	for r := range ix.records {
		live[r] = true
		live[r+copySuffix] = true
	}
	return live
}

// removeObject removes object file name from its folder sub and takes its
// size off objectBytes; it reports whether it removed it.
func (s *Store) removeObject(sub *dirfd.Dir, name string) bool {
	info, serr := sub.Stat(name)
	if sub.Remove(name) != nil {
		return false
	}
	if serr == nil {
		s.objectBytes.Add(-info.Size)
	}
	return true
}
