package store

// Demotion: the re-code of the previous newest checkpoint's keyframes as
// reverse deltas against the new newest one (Tx.convert), done after the
// add has committed rather than inside it (Options.Recode). The add
// publishes its checkpoint as keyframes beside a predecessor that is
// still whole; both are valid states of the store, so a demotion that
// never finishes (a crash, a kill) loses nothing: the store is only
// larger until a later demotion catches up. A demotion publishes its
// re-coded record as a new manifest generation, as a commit does, and
// holds the store's writer side (no other write of this Store runs beside
// it: each waits for it, in settle); readers never wait for it.

import (
	"fmt"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/par"
)

// Recode modes (Options.Recode).
const (
	// RecodeInline re-codes the predecessor inside the add, before Commit
	// returns: the store is as small as it gets when the add returns.
	RecodeInline = "inline"
	// RecodeBackground commits the new checkpoint at once and re-codes
	// its predecessor on a goroutine of its own; the next write (or
	// Close, or Settle) waits for it.
	RecodeBackground = "background"
)

// demotion is one background re-code in flight.
type demotion struct {
	wait func() error
	run  string
	// untidy: a cleanup after its publish left objects behind (a reader
	// held the store; often this process's own, reading the add's
	// result): Settle cleans up again.
	untidy bool
}

// defaultRecode is the Recode of Options that give none. Tests set it
// (TestMain, from TPDE_STORE_RECODE) to run every store test both ways.
var defaultRecode = RecodeInline

// demoteHook, when a test sets it, runs in the demotion at point ("start",
// before it reads the store, step -1; "publish", once the objects of the
// checkpoint re-coded against step are written, before the generation that
// names them is published).
var demoteHook func(point string, step int64)

// startDemotion re-codes, on a goroutine of its own, the checkpoints of
// run that the commit just made older than the newest. Its error (a panic
// included) is kept for Settle.
func (s *Store) startDemotion(run string) {
	d := &demotion{run: run}
	s.demoting = d
	d.wait = par.Start(s.prio, func() error { return s.demote(run, d) })
}

// Settle waits for a background re-code in flight, if any, and returns its
// error (once). A failed re-code leaves its checkpoint stored whole, which
// is valid; the next demotion of its run looks back K checkpoints, and so
// tries it again. Every write of the Store calls it first (Begin,
// CommitParts, Remove, RemoveRun, Reclaim, Repair), and Close.
func (s *Store) Settle() error {
	d := s.demoting
	if d == nil {
		return nil
	}
	err := d.wait()
	s.demoting = nil
	if err != nil {
		delete(s.caughtUp, d.run) // the next demotion looks back K again
	}
	if d.untidy {
		_, _ = s.tidy() // best effort, as a commit's
	}
	if err != nil {
		return fmt.Errorf("the background re-code of the checkpoint before the newest failed (that checkpoint stays stored whole, which loses nothing): %w", err)
	}
	return nil
}

// demote re-codes run's checkpoint before its newest against the newest.
// A session's first demotion of a run also catches up on the K
// checkpoints before that, which a demotion killed in an earlier session
// may have left whole: a checkpoint there that holds no delta of its own
// run is re-coded against its successor, oldest first, as the adds would
// have done. The cost is bounded by K checkpoints, never the history.
func (s *Store) demote(run string, d *demotion) error {
	if demoteHook != nil {
		demoteHook("start", -1)
	}
	root, err := s.snapshot()
	if err != nil {
		return err
	}
	sn, err := root.view(run)
	if err != nil {
		return err
	}
	last := sn.latest()
	if last < 1 {
		return nil
	}
	from := last - 1
	if !s.caughtUp[run] {
		from = max(0, last-sn.m.Config.KeyframeInterval)
	}
	for ci := from; ci < last; ci++ {
		if ci < last-1 && s.demoted(sn, ci) {
			continue
		}
		// Each checkpoint is published before the next is looked at: the
		// chains the next one's decision counts run through it.
		if sn, err = s.demoteOne(sn, run, ci, d); err != nil {
			return err
		}
	}
	s.caughtUp[run] = true
	return nil
}

// demoted says whether checkpoint ci of sn holds a delta against its own
// run or the base: a demotion (or an inline re-code) has been through it.
// One that holds none was never re-coded, or all its tensors stayed
// keyframes; it is tried again (once per session).
func (s *Store) demoted(sn *snapshot, ci int) bool {
	c, err := sn.record(ci)
	if err != nil {
		return true // unreadable: nothing to re-code
	}
	for _, f := range c.Files {
		for _, r := range f.Regions {
			if r.Ref != nil && r.Ref.Run == "" {
				return true
			}
		}
	}
	return false
}

// demoteOne re-codes checkpoint ci's keyframes against checkpoint ci+1 of
// run, exactly as the add of ci+1 would have inline (Tx.convert), and
// publishes the record that holds them. It returns the snapshot to go on
// from: the new generation, or sn if nothing changed.
func (s *Store) demoteOne(sn *snapshot, run string, ci int, d *demotion) (*snapshot, error) {
	next, err := sn.record(ci + 1)
	if err != nil {
		return sn, nil // nothing is coded against what cannot be read
	}
	tx := &Tx{s: s, sn: sn, prev: ci, cp: &Checkpoint{Step: next.Step},
		converted: map[string]Region{}, tails: map[*Region]int{}}
	defer tx.freeBuffers()
	tx.countTails(ci - sn.m.Config.KeyframeInterval)
	for _, f := range next.Files {
		for j := range f.Regions {
			r := &f.Regions[j]
			d, ok := dtype.FromName(r.DType)
			if !ok || r.MaxError != 0 {
				continue // a lossy region is never a reference
			}
			if err := tx.convert(f.Path, r, d, nil); err != nil {
				return sn, fmt.Errorf("checkpoint %d: %s: tensor %q: %w", sn.m.Checkpoints[ci].Step, f.Path, r.Name, err)
			}
		}
	}
	if len(tx.converted) == 0 {
		return sn, nil
	}
	m := sn.merged(append([]CheckpointRef{}, sn.m.Checkpoints...), nil)
	m.Config = s.cfg
	if err := tx.replacePrev(&m); err != nil {
		return sn, err
	}
	if demoteHook != nil {
		demoteHook("publish", next.Step)
	}
	if err := s.publish(&m); err != nil {
		return sn, err
	}
	if c, err := s.tidy(); err != nil || c.ReadersBusy {
		d.untidy = true
	}
	root, err := s.snapshot()
	if err != nil {
		return sn, err
	}
	v, err := root.view(run)
	if err != nil {
		return sn, err
	}
	return v, nil
}
