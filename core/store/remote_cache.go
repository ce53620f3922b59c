package store

// The cache of a remote store is trimmed (docs/FORMAT.md §11.12, "The
// cache"). A writer's cleanup after each commit removes from its cache the
// objects of the committed generation that neither of the two newest
// checkpoints of any run decodes through: every object a generation names
// is in the remote before the generation is published (commitRemote), so
// a read that needs one again fetches it, checked against its name as
// always. Without this the cache of a trainer's node would grow into a
// second copy of the whole store, on the disk that object storage was
// meant to spare. The two newest are kept because the next add codes
// against the newest and re-codes the one before it. Records stay: they
// are small, and listing the store reads them.

import (
	"syscall"

	"github.com/tpde/tpde/core/dirfd"
)

// trimCache removes the cache files of the objects in committed (what the
// generation names, parts staged in this cache excluded) that the newest
// two checkpoints of every run, and the base, do not need. It returns how
// many it removed. Cleanup calls it holding the readers' lock exclusively.
func (s *Store) trimCache(sn *snapshot, committed func(string) bool) (int, error) {
	keep := map[string]bool{} // frames and skeletons to keep, and every record
	need := func(c *Checkpoint, v *snapshot) error {
		for fi := range c.Files {
			f := &c.Files[fi]
			keep[f.Skeleton.Object] = true
			for ri := range f.Regions {
				ch, err := v.chain(&f.Regions[ri])
				if err != nil {
					return err
				}
				for _, link := range ch {
					keep[link.Object.Object] = true
				}
			}
		}
		return nil
	}
	if sn.m.Base != nil {
		keep[sn.m.Base.Object], keep[sn.m.Base.Object+copySuffix] = true, true
		c, err := sn.record(-1)
		if err != nil {
			return 0, err
		}
		if err := need(c, sn); err != nil {
			return 0, err
		}
	}
	for _, name := range sn.runNames() {
		v, err := sn.view(name)
		if err != nil {
			return 0, err
		}
		for _, ref := range v.m.Checkpoints {
			keep[ref.Object], keep[ref.Object+copySuffix] = true, true
		}
		for i := max(0, v.latest()-1); i <= v.latest(); i++ {
			c, err := v.record(i)
			if err != nil {
				return 0, err
			}
			if err := need(c, v); err != nil {
				return 0, err
			}
		}
	}
	n := 0
	err := s.eachObjectFolder(func(sub *dirfd.Dir, ents []dirfd.Entry) {
		for _, o := range ents {
			if committed(o.Name) && !keep[o.Name] && sub.Remove(o.Name) == nil {
				n++
			}
		}
	})
	return n, err
}

// trimStageCache trims a participant's cache (a store opened for staging
// on a remote store) as a writer's cleanup trims its own: a rank on a
// machine of its own never commits, so without this its cache would keep
// every object it ever staged, a second copy of its share of the store on
// the rank's disk. It runs when the participant opens, before it stages:
// what the newest two checkpoints of every run, the base and the records
// need stays, and so does every object a live part in this cache listed
// (another participant sharing the cache, staging now). The newest
// generation is this cache's (brought up to date at open). Best effort,
// skipped while a reader or a coding participant holds readers.lock: a
// cache left larger loses nothing.
func (s *Store) trimStageCache() {
	if s.remote == nil || !s.stage || s.objects == nil {
		return
	}
	lf, err := s.root.Open("readers.lock")
	if err != nil {
		return
	}
	defer lf.Close()
	if syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return
	}
	defer syscall.Flock(int(lf.Fd()), syscall.LOCK_UN)
	sn, err := s.snapshot()
	if err != nil || sn.m.Generation == 0 {
		return
	}
	tmp, err := s.root.OpenDir("tmp")
	if err != nil {
		return
	}
	defer tmp.Close()
	staged := map[string]bool{}
	var c Cleaned
	if s.livePartsIn(tmp, staged, &c) != nil {
		return
	}
	_, _ = s.trimCache(sn, func(o string) bool { return !staged[o] })
}
