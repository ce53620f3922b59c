package store

// Runs (docs/FORMAT.md, "Runs"): named series of checkpoints in one store,
// sharing its objects. The main run is the manifest's top-level list; a
// run's first checkpoint is coded against its parent (the base, or a
// checkpoint of another run), so a second fine-tune of one model costs
// deltas, not a second copy.

import (
	"fmt"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// runForAdd is the view an add to run works in, and the run's parent.
func (sn *snapshot) runForAdd(run string, parent *RunParent) (*snapshot, *RunParent, error) {
	if run == "" || run == MainRun {
		if parent != nil {
			return nil, nil, fmt.Errorf("%w: the main run has no parent", errs.Invalid)
		}
		return sn, nil, nil
	}
	v, exists, err := sn.viewOrEmpty(run)
	if err != nil {
		return nil, nil, err
	}
	if exists {
		own := sn.runOf(run).Parent
		if parent != nil && (own == nil || *own != *parent) {
			return nil, nil, fmt.Errorf("%w: run %q exists with another parent", errs.Invalid, run)
		}
		return v, own, nil
	}
	if parent == nil {
		return v, nil, nil
	}
	switch {
	case parent.Base && sn.m.Base == nil:
		return nil, nil, fmt.Errorf("%w: the store has no base to be run %q's parent", errs.Invalid, run)
	case parent.Base:
		return v, &RunParent{Base: true}, nil
	case parent.Run == run:
		return nil, nil, fmt.Errorf("%w: run %q cannot be its own parent", errs.Invalid, run)
	}
	pv, err := sn.view(parent.Run)
	if err != nil {
		return nil, nil, err
	}
	if _, ok := pv.byStep[parent.Step]; !ok {
		return nil, nil, fmt.Errorf("%w: run %q holds no checkpoint %d to be run %q's parent", errs.Invalid, parent.Run, parent.Step, run)
	}
	if sn.m.Config.Reference == RefBase {
		return nil, nil, fmt.Errorf("%w: a store with reference=%q codes every run against its base; give the base as the parent", errs.Invalid, RefBase)
	}
	return v, &RunParent{Run: parent.Run, Step: parent.Step}, nil
}

// runCheckpoints is run's list in m (which it may then change in place).
func runCheckpoints(m *Manifest, run string) []CheckpointRef {
	if run == MainRun {
		return m.Checkpoints
	}
	for i := range m.Runs {
		if m.Runs[i].Name == run {
			return m.Runs[i].Checkpoints
		}
	}
	return []CheckpointRef{}
}

// parentCheckpoint is the view and index of the run's parent checkpoint
// (-1 for the base), or nil when the run has none, or it is gone.
func (tx *Tx) parentCheckpoint() (*snapshot, int) {
	p := tx.parent
	switch {
	case p == nil || tx.base:
		return nil, 0
	case p.Base:
		if tx.sn.m.Base == nil {
			return nil, 0
		}
		return tx.sn, -1
	}
	pv, err := tx.sn.view(p.Run)
	if err != nil {
		return nil, 0
	}
	ci, ok := pv.byStep[p.Step]
	if !ok {
		return nil, 0
	}
	return pv, ci
}

// childTails counts, into tails, the chains of other runs' checkpoints
// that end at this run's keyframes: a child run's first checkpoint is
// coded against a checkpoint of this one, and re-coding that keyframe as
// a delta must not make the child's chains longer than K.
func (tx *Tx) childTails() {
	for _, r := range tx.sn.full.Runs {
		if r.Parent == nil || r.Parent.Run != tx.sn.run || len(r.Checkpoints) == 0 {
			continue
		}
		cv, err := tx.sn.view(r.Name)
		if err != nil {
			continue
		}
		c, err := cv.record(0)
		if err != nil {
			continue
		}
		for _, f := range c.Files {
			for j := range f.Regions {
				reg := &f.Regions[j]
				if reg.Ref == nil || reg.Ref.Run != tx.sn.run {
					continue
				}
				ch, err := cv.chain(reg)
				if err != nil {
					continue
				}
				if key := ch[len(ch)-1]; key != nil {
					tx.tails[key] = max(tx.tails[key], len(ch)-1)
				}
			}
		}
	}
}

// againstParent codes the first checkpoint of a run's tensor as a delta
// against its parent's tensor of the same file and name (or, for the
// base, the same name), when the chain stays within K and the delta is
// smaller than the keyframe already stored.
func (tx *Tx) againstParent(file string, r *Region, d dtype.DType, raw []byte) error {
	pv, ci := tx.parentCheckpoint()
	if pv == nil {
		return nil
	}
	key := regionKey(file, r.Name)
	target := pv.region(ci, key)
	var ref Ref
	switch {
	case tx.parent.Base:
		if target == nil {
			target = tx.baseByName(r.Name)
		}
		if target == nil {
			return nil
		}
		ref = Ref{Base: true, File: tx.baseFile(target), Region: target.Name}
	default:
		pfile := file
		if target == nil {
			// Another file name (a renamed file): the tensor of that name,
			// if the parent holds exactly one.
			if target, pfile = pv.regionByName(ci, r.Name); target == nil {
				return nil
			}
		}
		ref = Ref{Run: pv.run, Step: tx.parent.Step, File: pfile, Region: target.Name}
	}
	if target.DType != r.DType || target.Size != r.Size || target.MaxError != 0 || target.SHA256 == "" {
		return nil
	}
	ch, err := pv.chain(target)
	if err != nil || len(ch)+1 > tx.sn.maxChain() {
		return nil // as a keyframe: the parent's chain is already K long
	}
	refRaw, err := tx.bufC.get(target.Size)
	if err != nil {
		return err
	}
	defer tx.bufC.drop()
	if err := tx.s.decodeRegion(pv, target, refRaw, tx.s.threads, &tx.bufB); err != nil {
		return fmt.Errorf("the parent's tensor: %w", err)
	}
	defer tx.bufA.drop()
	coded, res, err := tx.s.encodeDelta(&tx.bufA, raw, refRaw, d, r.Shape, 0)
	if err != nil {
		return err
	}
	if uint64(res.Len) >= r.Stored {
		return nil // the keyframe is smaller: keep it
	}
	obj, err := tx.s.putBytes(coded)
	if err != nil {
		return err
	}
	r.Object, r.Ref, r.MaxError = obj, &ref, 0
	r.Changed = 0
	if n := r.Size / uint64(d.Width()); n > 0 {
		r.Changed = float64(res.Changed) / float64(n)
	}
	return nil
}

// RunInfo describes one run of a snapshot.
type RunInfo struct {
	Name   string     `json:"name"`
	Parent *RunParent `json:"parent"`
	Count  int        `json:"count"`
	// Newest is the newest step, -1 when the run holds none.
	Newest int64 `json:"newest"`
}

// Runs lists the snapshot's runs, main first.
func (rd *Reader) Runs() []RunInfo {
	info := func(name string, parent *RunParent, cps []CheckpointRef) RunInfo {
		ri := RunInfo{Name: name, Parent: parent, Count: len(cps), Newest: -1}
		if len(cps) > 0 {
			ri.Newest = cps[len(cps)-1].Step
		}
		return ri
	}
	full := rd.sn.full
	out := []RunInfo{info(MainRun, nil, full.Checkpoints)}
	for _, r := range full.Runs {
		out = append(out, info(r.Name, r.Parent, r.Checkpoints))
	}
	return out
}

// Use makes the reader read run name (the main run when it opens) of the
// same snapshot.
func (rd *Reader) Use(name string) error {
	v, err := rd.sn.view(name)
	if err != nil {
		return err
	}
	rd.sn = v
	return nil
}

// RunName is the run the reader reads.
func (rd *Reader) RunName() string { return rd.sn.run }

// regionByName is checkpoint ci's region called name, and its file, when
// exactly one file holds one.
func (sn *snapshot) regionByName(ci int, name string) (*Region, string) {
	c, err := sn.record(ci)
	if err != nil {
		return nil, ""
	}
	var found *Region
	file := ""
	for fi := range c.Files {
		for ri := range c.Files[fi].Regions {
			if c.Files[fi].Regions[ri].Name == name {
				if found != nil {
					return nil, ""
				}
				found, file = &c.Files[fi].Regions[ri], c.Files[fi].Path
			}
		}
	}
	return found, file
}
