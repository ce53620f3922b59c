package store

import (
	"fmt"
	"os"

	"github.com/tpde/tpde/core/errs"
)

// snapshot is one manifest generation with every checkpoint record it
// names, parsed and cross-checked.
type snapshot struct {
	m    *Manifest
	base *Checkpoint
	cps  []*Checkpoint
	// regions by checkpoint index (-1: the base), then "file\x00region".
	index  map[int]map[string]*Region
	byStep map[int64]int
}

func regionKey(file, region string) string { return file + "\x00" + region }

func emptySnapshot(cfg Config) *snapshot {
	return &snapshot{
		m:      &Manifest{Format: manifestFormat, Version: Version, Config: cfg, Checkpoints: []CheckpointRef{}},
		index:  map[int]map[string]*Region{},
		byStep: map[int64]int{},
	}
}

// snapshot loads the newest generation.
func (s *Store) snapshot() (*snapshot, error) {
	m, err := s.newestManifest()
	if err != nil {
		return nil, err
	}
	if m == nil {
		return emptySnapshot(s.cfg), nil
	}
	sn := &snapshot{m: m, index: map[int]map[string]*Region{}, byStep: map[int64]int{}}
	if m.Base != nil {
		c, err := s.readRecord(m.Base.Object, 0, true)
		if err != nil {
			return nil, err
		}
		sn.base = c
		sn.index[-1] = indexRegions(c)
	}
	for i, ref := range m.Checkpoints {
		c, err := s.readRecord(ref.Object, ref.Step, false)
		if err != nil {
			return nil, err
		}
		sn.cps = append(sn.cps, c)
		sn.index[i] = indexRegions(c)
		sn.byStep[ref.Step] = i
	}
	if err := sn.link(); err != nil {
		return nil, err
	}
	return sn, nil
}

func indexRegions(c *Checkpoint) map[string]*Region {
	ix := map[string]*Region{}
	for i := range c.Files {
		f := &c.Files[i]
		for j := range f.Regions {
			ix[regionKey(f.Path, f.Regions[j].Name)] = &f.Regions[j]
		}
	}
	return ix
}

func (s *Store) readRecord(h string, step int64, base bool) (*Checkpoint, error) {
	what := fmt.Sprintf("checkpoint %d", step)
	if base {
		what = "the base"
	}
	p := s.objectPath(h)
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: its record object %s is missing", errs.Corrupt, what, h)
	}
	o, err := s.openObject(h, uint64(st.Size()), what+" (record)")
	if err != nil {
		return nil, err
	}
	defer o.release()
	if len(o.Data) > maxCheckpointBytes {
		return nil, corrupt(what, "record of %d bytes", len(o.Data))
	}
	return parseCheckpoint(append([]byte(nil), o.Data...), step, base)
}

// resolve finds the region a ref names.
func (sn *snapshot) resolve(r *Ref) (*Region, int, error) {
	ci := -1
	if !r.Base {
		i, ok := sn.byStep[r.Step]
		if !ok {
			return nil, 0, fmt.Errorf("refers to step %d, which the store does not hold", r.Step)
		}
		ci = i
	} else if sn.base == nil {
		return nil, 0, fmt.Errorf("refers to a base the store does not hold")
	}
	reg, ok := sn.index[ci][regionKey(r.File, r.Region)]
	if !ok {
		return nil, 0, fmt.Errorf("refers to %q in %q, which that checkpoint does not hold", r.Region, r.File)
	}
	return reg, ci, nil
}

// maxChain is the most frames a region's decode may walk: K, and at least
// 2 so that a delta against the base is always allowed.
func (sn *snapshot) maxChain() int { return max(sn.m.Config.KeyframeInterval, 2) }

// chain returns the regions a decode of r walks, r first and its keyframe
// last. A chain longer than the store's K, or one that loops, is refused:
// a crafted manifest must not make a reader walk forever.
func (sn *snapshot) chain(r *Region) ([]*Region, error) {
	out := []*Region{r}
	for cur := r; cur.Ref != nil; {
		next, _, err := sn.resolve(cur.Ref)
		if err != nil {
			return nil, err
		}
		if next.DType != r.DType || next.Size != r.Size {
			return nil, fmt.Errorf("refers to a %s region of %d bytes, but it is %s of %d bytes", next.DType, next.Size, r.DType, r.Size)
		}
		if next.MaxError != 0 {
			return nil, fmt.Errorf("refers to a lossy region: lossy regions are never references")
		}
		out = append(out, next)
		if len(out) > sn.maxChain() {
			return nil, fmt.Errorf("its chain is longer than the store's keyframe interval %d (or loops)", sn.m.Config.KeyframeInterval)
		}
		cur = next
	}
	return out, nil
}

// link checks every ref of every record.
func (sn *snapshot) link() error {
	check := func(c *Checkpoint, what string) error {
		for _, f := range c.Files {
			for i := range f.Regions {
				if f.Regions[i].Ref == nil {
					continue
				}
				if _, err := sn.chain(&f.Regions[i]); err != nil {
					return corrupt(what, "file %q region %q %v", f.Path, f.Regions[i].Name, err)
				}
			}
		}
		return nil
	}
	if sn.base != nil {
		if err := check(sn.base, "the base"); err != nil {
			return err
		}
	}
	for i, c := range sn.cps {
		if err := check(c, fmt.Sprintf("checkpoint %d", sn.m.Checkpoints[i].Step)); err != nil {
			return err
		}
	}
	return nil
}

// live is every object the snapshot names.
func (sn *snapshot) live() map[string]bool {
	live := map[string]bool{}
	add := func(c *Checkpoint) {
		for _, f := range c.Files {
			live[f.Skeleton.Object] = true
			for _, r := range f.Regions {
				live[r.Object.Object] = true
			}
		}
	}
	if sn.m.Base != nil {
		live[sn.m.Base.Object] = true
		add(sn.base)
	}
	for i, c := range sn.cps {
		live[sn.m.Checkpoints[i].Object] = true
		add(c)
	}
	return live
}

func (sn *snapshot) checkpoint(step int64) (*Checkpoint, int, error) {
	i, ok := sn.byStep[step]
	if !ok {
		return nil, 0, fmt.Errorf("%w: the store holds no checkpoint %d", errs.Invalid, step)
	}
	return sn.cps[i], i, nil
}

// latest is the newest checkpoint's index, -1 if none.
func (sn *snapshot) latest() int { return len(sn.cps) - 1 }
