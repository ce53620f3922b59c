package store

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
)

// A writer's open sweeps the store for what a writer that died left
// behind: objects it linked that no generation names. That sweep reads
// every record and lists every object, so its cost grows with the store's
// history; it is needed only when the last writer did not close cleanly
// or a participant has staged a part since the last sweep
// (docs/FORMAT.md, "Store layout", writer.lock and staged).
//
//   - A writer that closes with nothing left to remove writes
//     "closed <generation>\n" into writer.lock, where its open had written
//     its pid. The next writer skips the sweep if it reads that line with
//     the newest generation; it counts what the store names beside its
//     work instead (indexBuild). A writer killed at any moment leaves its
//     pid there, so the next one sweeps.
//   - A participant (parts.go) links objects into objects/ without the
//     writer lock, and one that closes without its part committed leaves
//     them unnamed. Before it links any, it makes the file staged, while
//     it holds readers.lock shared; a sweep removes staged only while it
//     holds readers.lock exclusively (no participant is coding) and no
//     part folder is left in tmp/ (no participant holds a finished part).
//
// Either marker can only make a writer skip removing objects, never remove
// one: a forged or stale "closed" line costs disk space (which a repair
// reclaims), never a checkpoint.

// closedPrefix starts the line a clean close writes into writer.lock.
const closedPrefix = "closed "

// stagedMarker is the file a participant makes before it stages a part.
const stagedMarker = "staged"

// parseClosed reads a writer.lock's text: the generation a writer closed
// cleanly at, if that is what it says.
func parseClosed(b []byte) (uint64, bool) {
	t, ok := strings.CutPrefix(string(b), closedPrefix)
	if !ok {
		return 0, false
	}
	t, ok = strings.CutSuffix(t, "\n")
	if !ok || t == "" || len(t) > 20 {
		return 0, false
	}
	for _, r := range t {
		if r < '0' || r > '9' {
			return 0, false
		}
	}
	g, err := strconv.ParseUint(t, 10, 64)
	if err != nil || g == 0 {
		return 0, false
	}
	return g, true
}

// readClosed reads writer.lock (locked by this writer, not yet rewritten
// with its pid) for a clean close's line.
func readClosed(f *os.File) (uint64, bool) {
	b := make([]byte, 32)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return 0, false
	}
	return parseClosed(b[:n])
}

// needsSweep reports whether a writer's open must sweep: a remote store
// always does (its bucket is shared with writers on other machines),
// else unless the last writer closed cleanly at the newest generation and
// no participant staged since the last sweep.
func (s *Store) needsSweep() bool {
	if s.remote != nil || !s.closedClean || s.closedGen != s.gen || s.gen == 0 {
		return true
	}
	_, err := s.root.Stat(stagedMarker)
	return !errors.Is(err, fs.ErrNotExist)
}

// markStaged makes the staged marker (a participant, under readers.lock
// shared, before it links any object). A local store only: a remote
// store's writers always sweep.
func (s *Store) markStaged() error {
	if s.remote != nil {
		return nil
	}
	if _, err := s.root.Stat(stagedMarker); err == nil {
		return nil
	}
	f, err := s.root.OpenFile(stagedMarker, os.O_CREATE|os.O_WRONLY, 0o666)
	if err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return ioErr(s.path(stagedMarker), err)
	}
	// Durable before any object is: a machine that crashes after a
	// participant linked objects must not come back without the marker.
	return s.root.Sync()
}

// forgetStaged removes the staged marker after a sweep (which holds
// readers.lock exclusively) if no part folder is left in tmp/.
func (s *Store) forgetStaged() {
	if _, err := s.root.Stat(stagedMarker); err != nil {
		return
	}
	ents, err := s.tmp.ReadDir()
	if err != nil {
		return
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name, partPrefix) {
			return
		}
	}
	_ = s.root.Remove(stagedMarker)
}

// closeClean writes the clean close's line into writer.lock if this writer
// leaves nothing unnamed in objects/: its open found the store swept (or
// swept it), and every object it linked is named by the newest generation
// or removed. A writer that committed waits here for the count of the
// store it started at open (what the open would otherwise have paid) and
// tidies once more. Best effort: a writer that cannot say it closed
// cleanly leaves its pid, and the next writer sweeps.
func (s *Store) closeClean() {
	if s.wlock == nil || s.remote != nil || s.stage {
		return
	}
	s.written.mu.Lock()
	touched := s.gen != s.openGen || s.written.any
	s.written.mu.Unlock()
	if !touched {
		s.stopIndexBuild()
	} else if ready, _ := s.takeIndexBuild(true); ready {
		c, err := s.tidy()
		ix := s.index.Load()
		if err != nil || c.ReadersBusy || ix == nil || ix.gen != s.gen || len(ix.pending) > 0 || s.writtenPending() {
			return
		}
	} else {
		return
	}
	if !s.swept || s.gen == 0 {
		return
	}
	line := closedPrefix + strconv.FormatUint(s.gen, 10) + "\n"
	if s.wlock.Truncate(0) != nil {
		return
	}
	_, _ = s.wlock.WriteAt([]byte(line), 0)
}
