package store

import (
	"fmt"
	"sort"
	"sync"

	"github.com/tpde/tpde/core/errs"
)

// snapshot is one manifest generation. Its checkpoint records are read
// when first needed, not when it is opened: opening a store, and loading
// its newest checkpoint (whose tensors are all keyframes), then cost the
// same whatever the store's history. A record that cannot be read makes
// its own checkpoint unreadable, and the regions coded against it; it
// does not stop the snapshot from opening.
type snapshot struct {
	s *Store
	// m is this view's manifest: the generation with Checkpoints being
	// run's (full is the whole generation, every run).
	m      *Manifest
	full   *Manifest
	run    string
	byStep map[int64]int
	// Read lazily, by checkpoint index; -1 is the base.
	mu    sync.Mutex
	cps   map[int]*loaded
	state generationState
	// views are the snapshots of the generation's other runs, shared by
	// all views of it, so that a chain that crosses runs resolves in the
	// run of each region it reaches.
	views *viewSet
}

type viewSet struct {
	mu sync.Mutex
	m  map[string]*snapshot
}

type loaded struct {
	c   *Checkpoint
	err error
	// regions by "file\x00region".
	index map[string]*Region
}

func regionKey(file, region string) string { return file + "\x00" + region }

// newSnapshot is the main run's view of generation m.
func newSnapshot(s *Store, m *Manifest) *snapshot {
	vs := &viewSet{m: map[string]*snapshot{}}
	sn := newView(s, m, MainRun, m.Checkpoints, vs)
	vs.m[MainRun] = sn
	return sn
}

func newView(s *Store, full *Manifest, run string, cps []CheckpointRef, vs *viewSet) *snapshot {
	m := *full
	m.Checkpoints, m.Runs = cps, nil
	sn := &snapshot{s: s, m: &m, full: full, run: run, byStep: make(map[int64]int, len(cps)), cps: map[int]*loaded{}, views: vs}
	for i, ref := range cps {
		sn.byStep[ref.Step] = i
	}
	return sn
}

// runOf is run name's entry in the generation, nil if it has none (the
// main run always exists).
func (sn *snapshot) runOf(name string) *Run {
	for i := range sn.full.Runs {
		if sn.full.Runs[i].Name == name {
			return &sn.full.Runs[i]
		}
	}
	return nil
}

// view is run name's snapshot of this generation; an error if the
// generation has no such run.
func (sn *snapshot) view(name string) (*snapshot, error) {
	if name == "" {
		name = MainRun
	}
	sn.views.mu.Lock()
	defer sn.views.mu.Unlock()
	if v, ok := sn.views.m[name]; ok {
		return v, nil
	}
	r := sn.runOf(name)
	if r == nil {
		return nil, fmt.Errorf("%w: the store has no run %q", errs.Invalid, printable(name))
	}
	v := newView(sn.s, sn.full, name, r.Checkpoints, sn.views)
	v.state = sn.state
	sn.views.m[name] = v
	return v, nil
}

// viewOrEmpty is run name's view, or an empty one for a run not yet made.
func (sn *snapshot) viewOrEmpty(name string) (*snapshot, bool, error) {
	v, err := sn.view(name)
	if err == nil {
		return v, true, nil
	}
	if verr := validRunName(name); verr != nil {
		return nil, false, fmt.Errorf("%w: %v", errs.Invalid, verr)
	}
	return newView(sn.s, sn.full, name, []CheckpointRef{}, sn.views), false, nil
}

// runNames lists every run of the generation, main first.
func (sn *snapshot) runNames() []string {
	out := []string{MainRun}
	for _, r := range sn.full.Runs {
		out = append(out, r.Name)
	}
	return out
}

// merged is the whole generation with this view's run holding cps (a new
// run is added with parent; a run left with no checkpoints stays, empty,
// until it is removed).
func (sn *snapshot) merged(cps []CheckpointRef, parent *RunParent) Manifest {
	m := *sn.full
	if sn.run == MainRun {
		m.Checkpoints = cps
		return m
	}
	m.Runs = append([]Run{}, sn.full.Runs...)
	for i := range m.Runs {
		if m.Runs[i].Name == sn.run {
			m.Runs[i].Checkpoints = cps
			return m
		}
	}
	m.Runs = append(m.Runs, Run{Name: sn.run, Parent: parent, Checkpoints: cps})
	sort.Slice(m.Runs, func(i, j int) bool { return m.Runs[i].Name < m.Runs[j].Name })
	return m
}

// snapshot loads the newest generation (its manifest only).
func (s *Store) snapshot() (*snapshot, error) {
	m, err := s.newestManifest()
	if err != nil {
		return nil, err
	}
	if m == nil {
		m = &Manifest{Format: manifestFormat, Version: Version, Config: s.cfg, Checkpoints: []CheckpointRef{}}
	}
	return newSnapshot(s, m), nil
}

// load reads checkpoint i's record (-1: the base), once.
func (sn *snapshot) load(i int) *loaded {
	sn.mu.Lock()
	defer sn.mu.Unlock()
	if l, ok := sn.cps[i]; ok {
		return l
	}
	var l loaded
	switch {
	case i == -1 && sn.m.Base == nil:
		l.err = fmt.Errorf("the store has no base")
	case i == -1:
		l.c, l.err = sn.s.readRecord(sn.m.Base.Object, 0, true)
	case i < 0 || i >= len(sn.m.Checkpoints):
		l.err = fmt.Errorf("no checkpoint %d", i)
	default:
		ref := sn.m.Checkpoints[i]
		l.c, l.err = sn.s.readRecord(ref.Object, ref.Step, false)
	}
	if l.err == nil {
		l.index = indexRegions(l.c)
	}
	sn.cps[i] = &l
	return &l
}

// record is checkpoint i's record (-1: the base).
func (sn *snapshot) record(i int) (*Checkpoint, error) {
	l := sn.load(i)
	return l.c, l.err
}

// region is region key of checkpoint i, nil if it holds none (or its
// record cannot be read).
func (sn *snapshot) region(i int, key string) *Region {
	l := sn.load(i)
	if l.err != nil {
		return nil
	}
	return l.index[key]
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

// readRecord reads and checks a checkpoint record: the object h, else its
// copy h.copy (docs/FORMAT.md §11.2), each checked against the name h.
// Records are immutable, so a parsed one is cached by its name.
func (s *Store) readRecord(h string, step int64, base bool) (*Checkpoint, error) {
	what := fmt.Sprintf("checkpoint %d", step)
	if base {
		what = "the base"
	}
	if c := s.records.get(h); c != nil {
		if !base && c.Step != step {
			return nil, corrupt(what, "record says step %d", c.Step)
		}
		return c, nil
	}
	b, err := s.recordBytes(h, what)
	if err != nil {
		return nil, err
	}
	c, err := parseCheckpoint(b, step, base)
	if err != nil {
		return nil, err
	}
	s.records.put(h, c, len(b))
	return c, nil
}

// recordBytes reads record object h, falling back to its copy. An error
// says what was wrong with both.
func (s *Store) recordBytes(h, what string) ([]byte, error) {
	var errs2 [2]error
	for i, name := range []string{h, h + copySuffix} {
		o, err := s.mapObject(h, name, anySize, what+" (record)", true)
		if err != nil {
			errs2[i] = err
			continue
		}
		if len(o.Data) > maxCheckpointBytes {
			o.release()
			errs2[i] = corrupt(what, "record of %d bytes", len(o.Data))
			continue
		}
		b := append([]byte(nil), o.Data...)
		o.release()
		return b, nil
	}
	if denied(errs2[1]) && !denied(errs2[0]) {
		// Not allowed to read the copy is what stands between the caller
		// and the record, whatever became of the first: say that, with
		// its errno, rather than "missing".
		return nil, fmt.Errorf("%w (the record itself: %v)", errs2[1], errs2[0])
	}
	return nil, fmt.Errorf("%w (its copy: %v)", errs2[0], errs2[1])
}

// recordCache keeps parsed records by object name, up to a budget of their
// JSON size: enough for every record of a long run of a large model, and
// bounded for a hostile store.
type recordCache struct {
	mu    sync.Mutex
	m     map[string]*Checkpoint
	bytes int
}

const recordCacheBytes = 512 << 20

func (rc *recordCache) get(h string) *Checkpoint {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.m[h]
}

func (rc *recordCache) put(h string, c *Checkpoint, n int) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.m == nil || rc.bytes+n > recordCacheBytes {
		rc.m, rc.bytes = map[string]*Checkpoint{}, 0
	}
	rc.m[h] = c
	rc.bytes += n
}

// resolve finds the region a ref names, and the index of its checkpoint,
// for a ref within this view's run (or to the base).
func (sn *snapshot) resolve(r *Ref) (*Region, int, error) {
	reg, _, ci, err := sn.resolveAt(r)
	return reg, ci, err
}

// resolveAt finds the region a ref of a region of this view names, and
// the view (run) it lies in: a ref with a run names another run's.
func (sn *snapshot) resolveAt(r *Ref) (*Region, *snapshot, int, error) {
	v := sn
	if r.Run != "" && r.Run != sn.run {
		var err error
		if v, err = sn.view(r.Run); err != nil {
			return nil, nil, 0, fmt.Errorf("refers to run %q, which the store does not hold", printable(r.Run))
		}
	}
	reg, ci, err := v.resolveLocal(r)
	return reg, v, ci, err
}

// qualified is ref, made to mean the same from a region of run other:
// a ref read in view sn names sn's run when it names none.
func (sn *snapshot) qualified(ref Ref, other string) Ref {
	if !ref.Base && ref.Run == "" {
		ref.Run = sn.run
	}
	if ref.Run == other {
		ref.Run = ""
	}
	return ref
}

func (sn *snapshot) resolveLocal(r *Ref) (*Region, int, error) {
	ci := -1
	if !r.Base {
		i, ok := sn.byStep[r.Step]
		if !ok {
			return nil, 0, fmt.Errorf("refers to step %d, which the store does not hold", r.Step)
		}
		ci = i
	} else if sn.m.Base == nil {
		return nil, 0, fmt.Errorf("refers to a base the store does not hold")
	}
	l := sn.load(ci)
	if l.err != nil {
		return nil, 0, fmt.Errorf("refers to a checkpoint whose record cannot be read (%v)", l.err)
	}
	reg, ok := l.index[regionKey(r.File, r.Region)]
	if !ok {
		return nil, 0, fmt.Errorf("refers to %q in %q, which that checkpoint does not hold", r.Region, r.File)
	}
	return reg, ci, nil
}

// maxChain is the most frames a region's decode may walk: K, and at least
// 2 so that a delta against the base is always allowed.
func (sn *snapshot) maxChain() int { return sn.m.Config.Policy().MaxFrames() }

// chain returns the regions a decode of r walks, r first and its keyframe
// last. A chain longer than the store's K, or one that loops, is refused:
// a crafted manifest must not make a reader walk forever.
func (sn *snapshot) chain(r *Region) ([]*Region, error) {
	out := []*Region{r}
	for cur, view := r, sn; cur.Ref != nil; {
		next, v, _, err := view.resolveAt(cur.Ref)
		if err != nil {
			return nil, err
		}
		view = v
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

// checkChains checks every ref of one record, as a reader does before it
// trusts the record (verify; tests).
func (sn *snapshot) checkChains(c *Checkpoint, what string) error {
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

// live is every object the snapshot names, records and their copies
// included (the count a writer's cleanup keeps, liveIndex). It fails if
// any record cannot be read: then no one can know which objects that
// checkpoint needs, and cleanup must remove nothing.
func (sn *snapshot) live() (map[string]bool, error) {
	ix, err := sn.s.buildIndex(sn)
	if err != nil {
		return nil, err
	}
	return ix.live(), nil
}

func (sn *snapshot) checkpoint(step int64) (*Checkpoint, int, error) {
	i, ok := sn.byStep[step]
	if !ok {
		return nil, 0, fmt.Errorf("%w: the store holds no checkpoint %d", errs.Invalid, step)
	}
	c, err := sn.record(i)
	return c, i, err
}

// latest is the newest checkpoint's index, -1 if none.
func (sn *snapshot) latest() int { return len(sn.m.Checkpoints) - 1 }
