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

import "github.com/tpde/tpde/core/dirfd"

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
