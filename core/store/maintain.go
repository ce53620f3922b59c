package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// Cleaned says what cleanup removed, and what it left alone.
type Cleaned struct {
	Temporary   int  `json:"temporary"`
	Objects     int  `json:"objects"`
	Manifests   int  `json:"manifests"`
	ReadersBusy bool `json:"readers_busy"`
	// Copies is how many missing or damaged copies of records and of the
	// newest manifest a repair wrote anew.
	Copies int `json:"copies"`
	// Kept says why unreferenced objects were kept ("" if none were):
	// a checkpoint whose record cannot be read may need any of them.
	Kept string `json:"kept,omitempty"`
	// Foreign lists entries of objects/ that tpde did not write (a
	// symlink, a file where a folder should be): never followed or
	// removed, only reported.
	Foreign []string `json:"foreign,omitempty"`
	// Reclaimed lists the checkpoints a repair removed because no holder
	// folder names them any more (Reclaim).
	Reclaimed []int64 `json:"reclaimed,omitempty"`
	// Remote says what a remote store's cleanup could not do ("" if
	// nothing failed): its objects then stay until a later cleanup.
	Remote string `json:"remote,omitempty"`
	// Trimmed is how many objects a remote store's cleanup removed from
	// its cache that the remote still holds (trimCache).
	Trimmed int `json:"trimmed,omitempty"`
}

// cleanup removes what no committed state needs: a dead writer's unfinished
// files in tmp/, objects the newest manifest does not name, and older
// manifest generations. Objects and old generations go only while no reader
// holds a snapshot (readers.lock); otherwise they wait for the next time.
// Nothing is removed through a link: every folder is reached through a
// descriptor, and a symlink is removed itself, if at all.
func (s *Store) cleanup() (Cleaned, error) {
	var c Cleaned
	if !s.write {
		return c, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	s.stopIndexBuild() // this sweep counts the store itself
	if err := s.removeTemporary(&c); err != nil {
		return c, err
	}
	lf, err := s.root.Open("readers.lock")
	if err != nil {
		return c, err
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		c.ReadersBusy = true
		return c, nil
	}
	s.forgetWritten()
	sn, err := s.snapshot()
	if err != nil {
		return c, err
	}
	s.sweeps++
	ix, err := s.buildIndex(sn)
	var live map[string]bool
	if err == nil {
		live = ix.live()
	}
	s.index.Store(nil)
	why := ""
	switch {
	case err != nil:
		why = fmt.Sprintf("a record cannot be read, so no one can tell which objects its checkpoint needs (remove that checkpoint to reclaim them): %v", err)
		live = nil
	case sn.m.Generation == 0:
		// No commit yet, or every manifest lost: objects/ holds a dead
		// first add's leftovers, or a history whose manifests are gone.
		// Only a commit tells the two apart; until then, keep all.
		why = "the store has no manifest generation yet"
		live = nil
	default:
		s.index.Store(ix) // tidy follows the writer's commits from here
	}
	var committed map[string]bool // what the generation names, for trimCache
	if live != nil {
		if s.remote != nil {
			committed = maps.Clone(live)
		}
		// Objects staged for a commit that has not happened yet.
		if err := s.liveParts(live, &c); err != nil {
			return c, err
		}
	}
	var removed []string
	kept, missed, err := s.removeUnreferenced(live, &c, &removed)
	if err != nil {
		return c, err
	}
	if kept > 0 {
		c.Kept = fmt.Sprintf("%d object(s): %s", kept, why)
	}
	if live != nil && s.remote == nil {
		// objects/ now holds only what the generation or a locked part
		// names, unless an object could not be removed: then only a later
		// sweep may say so (cleanClose).
		s.swept = missed == 0
		if s.swept {
			s.forgetStaged()
		}
	}
	if s.remote != nil && live != nil {
		if err := s.remoteCleanup(func(o string) bool { return live[o] }, removed); err != nil {
			c.Remote = err.Error()
		}
		// Best effort, as the rest of a cleanup: a cache left larger
		// loses nothing.
		if n, err := s.trimCache(sn, func(o string) bool { return committed[o] }); err == nil {
			c.Trimmed = n
		}
	}
	if err := s.removeOldGenerations(&c); err != nil {
		return c, err
	}
	return c, nil
}

// removeTemporary removes tmp/'s entries but the participants' folders
// (parts): a dead writer's unfinished files.
func (s *Store) removeTemporary(c *Cleaned) error {
	ents, err := s.tmp.ReadDir()
	if err != nil {
		return err
	}
	for _, e := range ents {
		// A part's folder belongs to a participant, perhaps alive (see
		// liveParts); everything else in tmp/ is a dead writer's.
		if strings.HasPrefix(e.Name, partPrefix) && e.Type == fs.ModeDir {
			continue
		}
		if s.tmp.RemoveAll(e.Name) == nil {
			c.Temporary++
		}
	}
	return nil
}

// removeOldGenerations removes every manifest generation but the newest
// (called with readers.lock held exclusively).
func (s *Store) removeOldGenerations(c *Cleaned) error {
	gens, err := s.generations()
	if err != nil {
		return err
	}
	for i, g := range gens {
		if i == 0 {
			continue
		}
		n := 0
		for _, name := range []string{manifestName(g), manifestName(g) + copySuffix} {
			if s.manifests.Remove(name) == nil {
				n = 1
			}
		}
		c.Manifests += n
	}
	return nil
}

// refuseOrphans refuses to write a first manifest into a store whose
// objects/ holds checkpoint records already (a record, and only a record,
// has a second copy, <h>.copy): its manifests were lost, and the commit's
// cleanup would remove every object of the history they named.
func (s *Store) refuseOrphans() error {
	n, err := s.orphanRecords()
	if err != nil || n == 0 {
		return err
	}
	return fmt.Errorf("%w: %s holds %d checkpoint record(s) in objects/ but no manifest generation (were manifests/ removed?): tpde will not commit over them, which would remove that history. Put the manifests back; or, if this store never held a checkpoint, remove its objects/ folder", errs.Corrupt, s.dir, n)
}

// orphanRecords counts record copies in objects/ (see refuseOrphans).
func (s *Store) orphanRecords() (int, error) {
	if s.objects == nil {
		return 0, nil
	}
	n := 0
	err := s.eachObjectFolder(func(_ *dirfd.Dir, ents []dirfd.Entry) {
		for _, e := range ents {
			if strings.HasSuffix(e.Name, copySuffix) {
				n++
			}
		}
	})
	return n, err
}

// eachObjectFolder calls fn with each folder of objects/ and its entries,
// skipping what is not a folder or cannot be opened; the first folder
// that cannot be listed ends it with that error.
func (s *Store) eachObjectFolder(fn func(sub *dirfd.Dir, ents []dirfd.Entry)) error {
	dirs, err := s.objects.ReadDir()
	if err != nil {
		return err
	}
	for _, d := range dirs {
		if d.Type != fs.ModeDir {
			continue
		}
		sub, err := s.objects.OpenDir(d.Name)
		if err != nil {
			continue
		}
		ents, err := sub.ReadDir()
		if err == nil {
			fn(sub, ents)
		}
		_ = sub.Close()
		if err != nil {
			return err
		}
	}
	return nil
}

// removeUnreferenced removes every object file live does not name (none
// when live is nil: it is not known; it returns how many it kept), and
// reports entries of objects/ that tpde did not write. missed counts the
// folders it could not list and the objects it could not remove.
func (s *Store) removeUnreferenced(live map[string]bool, c *Cleaned, removed *[]string) (kept, missed int, err error) {
	dirs, err := s.objects.ReadDir()
	if err != nil {
		return 0, 0, err
	}
	for _, d := range dirs {
		if d.Type != fs.ModeDir {
			c.Foreign = append(c.Foreign, "objects/"+d.Name)
			continue
		}
		sub, err := s.objects.OpenDir(d.Name)
		if err != nil {
			c.Foreign = append(c.Foreign, "objects/"+d.Name)
			continue
		}
		objs, err := sub.ReadDir()
		if err != nil {
			missed++
		}
		for _, o := range objs {
			switch {
			case live == nil:
				kept++
			case live[o.Name]:
			case s.removeObject(sub, o.Name):
				c.Objects++
				if removed != nil {
					*removed = append(*removed, d.Name+"/"+o.Name)
				}
			default:
				missed++
			}
		}
		_ = sub.Close()
	}
	return kept, missed, nil
}

// Repair removes leftovers and reports them, with what Open for writing
// already removed; and writes anew every copy of a record or of the newest
// manifest that is missing or damaged while the other copy is intact.
func (s *Store) Repair() (Cleaned, error) {
	if err := s.refuseRemote("repair"); err != nil {
		return Cleaned{}, err
	}
	if err := s.Settle(); err != nil {
		return Cleaned{}, err
	}
	c, err := s.cleanup()
	c.Temporary += s.opened.Temporary
	c.Objects += s.opened.Objects
	c.Manifests += s.opened.Manifests
	for _, f := range s.opened.Foreign {
		if !slices.Contains(c.Foreign, f) {
			c.Foreign = append(c.Foreign, f)
		}
	}
	s.opened = Cleaned{}
	if err != nil {
		return c, err
	}
	n, err := s.repairCopies()
	c.Copies = n
	if err != nil {
		return c, err
	}
	// Checkpoints whose holder folder was removed: what a save would
	// reclaim, a repair does too.
	c.Reclaimed, err = s.Reclaim()
	return c, err
}

// repairCopies restores the redundancy of the newest manifest and of every
// record it names.
func (s *Store) repairCopies() (int, error) {
	gens, err := s.generations()
	if err != nil || len(gens) == 0 {
		return 0, err
	}
	m, st, err := s.readGeneration(gens[0])
	if err == nil && st.Denied != nil {
		err = st.Denied
	}
	if err != nil {
		return 0, err
	}
	n := 0
	refs := append([]CheckpointRef{}, m.Checkpoints...)
	if m.Base != nil {
		refs = append(refs, *m.Base)
	}
	for _, ref := range refs {
		h := ref.Object
		var good []byte
		bad := [2]bool{}
		for i, name := range []string{h, h + copySuffix} {
			o, err := s.mapObject(h, name, anySize, "record", true)
			if denied(err) {
				return n, err // not readable is not damaged: nothing is rewritten over it
			}
			if err != nil {
				bad[i] = true
				continue
			}
			if good == nil {
				good = append([]byte{}, o.Data...)
			}
			o.release()
		}
		if good == nil {
			continue // both lost: verify names the checkpoint
		}
		if bad[0] {
			if err := s.putAs(h, h, good, true); err != nil {
				return n, err
			}
			n++
		}
		if bad[1] {
			if err := s.putAs(h, h+copySuffix, good, true); err != nil {
				return n, err
			}
			n++
		}
	}
	if st.Damaged != "" || st.CopyMissing {
		// The same manifest as a new generation, both copies fresh; the
		// old one goes with the next cleanup.
		if err := s.publish(m); err != nil {
			return n, err
		}
		n++
		if _, err := s.cleanup(); err != nil {
			return n, err
		}
	}
	return n, nil
}

// Remove drops checkpoint step. Every region that was coded against it is
// re-coded first, against what step's own region was coded against (or as
// a keyframe), so every other checkpoint still decodes exactly as before.
// A checkpoint that is already damaged (its record unreadable, or a chain
// through damage) is kept as it is: removing its neighbour neither mends
// nor worsens it, and a damaged checkpoint can itself be removed.
func (s *Store) Remove(step int64) error { return s.RemoveFrom(MainRun, step) }

// RemoveFrom drops checkpoint step of run, as Remove does; regions of
// other runs coded against it (a child run's first checkpoint) are re-coded
// too.
func (s *Store) RemoveFrom(run string, step int64) error {
	if !s.write {
		return fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	if err := s.Settle(); err != nil {
		return err
	}
	root, err := s.snapshot()
	if err != nil {
		return err
	}
	sn, err := root.view(run)
	if err != nil {
		return err
	}
	gone, ok := sn.byStep[step]
	if !ok {
		return fmt.Errorf("%w: the store holds no checkpoint %d%s", errs.Invalid, step, inRun(run))
	}
	var bufs recodeBuffers
	defer bufs.free()
	cps := []CheckpointRef{}
	last := len(sn.m.Checkpoints) - 1
	for ci, ref := range sn.m.Checkpoints {
		if ci == gone {
			continue
		}
		// When the newest goes, the one before it becomes the newest and
		// must decode in one frame per tensor: all its deltas become
		// keyframes.
		mustWhole := gone == last && ci == gone-1
		ref, err := s.recodeCheckpoint(sn, ci, ref, func(r *Ref) bool { return !r.Base && r.Run == "" && r.Step == step }, mustWhole, &bufs)
		if err != nil {
			return err
		}
		cps = append(cps, ref)
	}
	m := sn.merged(cps, nil)
	if err := s.recodeChildren(root, &m, func(r *Ref) bool { return r.Run == run && r.Step == step }, &bufs); err != nil {
		return err
	}
	if err := s.publish(&m); err != nil {
		return err
	}
	_, _ = s.tidy()
	return nil
}

// RemoveRun drops every checkpoint of run, and the run. Regions of other
// runs coded against it are re-coded as keyframes first: removing a run
// never breaks another.
func (s *Store) RemoveRun(run string) error {
	if !s.write {
		return fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	if err := s.Settle(); err != nil {
		return err
	}
	root, err := s.snapshot()
	if err != nil {
		return err
	}
	if _, err := root.view(run); err != nil {
		return err
	}
	m := *root.full
	if run == MainRun {
		m.Checkpoints = []CheckpointRef{}
	} else {
		m.Runs = nil
		for _, r := range root.full.Runs {
			if r.Name != run {
				m.Runs = append(m.Runs, r)
			}
		}
	}
	var bufs recodeBuffers
	defer bufs.free()
	if err := s.recodeChildren(root, &m, func(r *Ref) bool { return r.Run == run }, &bufs); err != nil {
		return err
	}
	if err := s.publish(&m); err != nil {
		return err
	}
	_, _ = s.tidy()
	return nil
}

func inRun(run string) string {
	if run == MainRun || run == "" {
		return ""
	}
	return fmt.Sprintf(" in run %q", run)
}

// recodeCheckpoint re-codes checkpoint ci of view sn so that no region's
// chain uses what hits names (every delta, if whole), and returns its ref
// (a new record object if anything changed). A record that cannot be read
// is kept as it is.
func (s *Store) recodeCheckpoint(sn *snapshot, ci int, ref CheckpointRef, hits func(*Ref) bool, whole bool, b *recodeBuffers) (CheckpointRef, error) {
	c, err := sn.record(ci)
	if err != nil {
		return ref, nil
	}
	nc, changed, err := s.recodeAround(sn, c, hits, whole, b)
	if err != nil || !changed {
		return ref, err
	}
	tx := &Tx{s: s}
	ref.Object, err = tx.putRecord(nc)
	return ref, err
}

// recodeChildren re-codes, in every run of m other than those removed,
// the regions whose ref hits (a run's first checkpoint, coded against a
// checkpoint of its parent run), in m.
func (s *Store) recodeChildren(root *snapshot, m *Manifest, hits func(*Ref) bool, b *recodeBuffers) error {
	fix := func(name string, cps []CheckpointRef) error {
		v, err := root.view(name)
		if err != nil {
			return err
		}
		for ci, ref := range cps {
			if cps[ci], err = s.recodeCheckpoint(v, ci, ref, hits, false, b); err != nil {
				return err
			}
		}
		return nil
	}
	m.Runs = append([]Run{}, m.Runs...)
	for i := range m.Runs {
		m.Runs[i].Checkpoints = append([]CheckpointRef{}, m.Runs[i].Checkpoints...)
		if err := fix(m.Runs[i].Name, m.Runs[i].Checkpoints); err != nil {
			return err
		}
	}
	if len(m.Checkpoints) > 0 {
		m.Checkpoints = append([]CheckpointRef{}, m.Checkpoints...)
		return fix(MainRun, m.Checkpoints)
	}
	return nil
}

type recodeBuffers struct{ spare, raw, ref, out buffer }

func (b *recodeBuffers) free() { b.spare.free(); b.raw.free(); b.ref.free(); b.out.free() }

// recodeAround returns c with every region coded against step (all its
// deltas, if mustWhole) re-coded so that it no longer needs step. A region
// that cannot be decoded (damage) is left as it was.
func (s *Store) recodeAround(sn *snapshot, c *Checkpoint, hits func(*Ref) bool, mustWhole bool, b *recodeBuffers) (*Checkpoint, bool, error) {
	nc := *c
	nc.Files = append([]File{}, c.Files...)
	changed := false
	for fi := range nc.Files {
		f := &nc.Files[fi]
		f.Regions = append([]Region{}, f.Regions...)
		for ri := range f.Regions {
			r := &f.Regions[ri]
			if r.Ref == nil || (!mustWhole && !hits(r.Ref)) {
				continue
			}
			nr, err := s.recodeRegion(sn, &c.Files[fi].Regions[ri], mustWhole || r.Ref.Run != "", b)
			if errors.Is(err, errs.Corrupt) {
				continue
			}
			if err != nil {
				return nil, false, err
			}
			*r = nr
			changed = true
		}
	}
	return &nc, changed, nil
}

// recodeRegion codes r anew: against what its reference was itself coded
// against, skipping over it, or as a keyframe.
func (s *Store) recodeRegion(sn *snapshot, r *Region, mustWhole bool, b *recodeBuffers) (Region, error) {
	target, tview, _, err := sn.resolveAt(r.Ref)
	if err != nil {
		return Region{}, corrupt(fmt.Sprintf("tensor %q", r.Name), "%v", err)
	}
	raw, err := b.raw.get(r.Size)
	if err != nil {
		return Region{}, err
	}
	if err := s.decodeRegion(sn, r, raw, s.threads, &b.spare); err != nil {
		return Region{}, err
	}
	d, _ := dtype.FromName(r.DType)
	nr := *r
	nr.CRC32C = crcOf(raw) // what both codings below decode to
	if !mustWhole && target.Ref != nil && r.MaxError == 0 && target.MaxError == 0 {
		// Skip over the removed checkpoint.
		next, nview, _, err := tview.resolveAt(target.Ref)
		if err != nil {
			return Region{}, corrupt(fmt.Sprintf("tensor %q", r.Name), "%v", err)
		}
		refRaw, err := b.ref.get(next.Size)
		if err != nil {
			return Region{}, err
		}
		if err := s.decodeRegion(nview, next, refRaw, s.threads, &b.spare); err != nil {
			return Region{}, err
		}
		coded, _, err := s.encodeDelta(&b.out, raw, refRaw, d, r.Shape, 0)
		if err != nil {
			return Region{}, err
		}
		if nr.Object, err = s.putBytes(coded); err != nil {
			return Region{}, err
		}
		ref := tview.qualified(*target.Ref, sn.run)
		nr.Ref = &ref
		return nr, nil
	}
	// A keyframe of what the region decodes to: exact for a lossless
	// region, the same reconstruction (and bound) for a lossy one.
	coded, err := s.encodeKeyframe(&b.out, raw, d, r.Shape, s.threads, nil)
	if err != nil {
		return Region{}, err
	}
	if nr.Object, err = s.putBytes(coded); err != nil {
		return Region{}, err
	}
	nr.Ref = nil
	if nr.MaxError == 0 {
		sum := sha256.Sum256(raw)
		nr.SHA256 = hex.EncodeToString(sum[:])
	}
	return nr, nil
}

// Problem is one thing Verify found wrong.
type Problem struct {
	// Run is the checkpoint's run ("" for the main run).
	Run     string `json:"run,omitempty"`
	Step    int64  `json:"step"`
	Base    bool   `json:"base,omitempty"`
	File    string `json:"file"`
	Region  string `json:"region,omitempty"`
	Object  string `json:"object,omitempty"`
	Message string `json:"message"`
	// Degraded: nothing is lost (the other copy of a record or of the
	// manifest serves), but one copy is damaged; --repair rewrites it.
	Degraded bool `json:"degraded,omitempty"`
	// Unchecked: not damage, but not checked either: decoding it would
	// exceed the decode limit (which a raised limit lets verify check).
	Unchecked bool `json:"unchecked,omitempty"`
}

// Verify checks every object of every checkpoint: present, of its size,
// hashing to its name. deep also decodes every region along its chain and
// every file, and checks them against the hashes they were added with.
// A damaged object is reported once for each checkpoint and tensor whose
// decode needs it. On a remote store every object is looked up in the
// remote, and hashed where the cache holds it (remote_verify.go).
func (s *Store) Verify(deep bool) ([]Problem, error) {
	unlock, err := s.readLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	gens, err := s.generations()
	if err != nil {
		return nil, err
	}
	var out []Problem
	if len(gens) == 0 {
		if n, err := s.orphanRecords(); err != nil {
			return nil, err
		} else if n > 0 {
			out = append(out, Problem{Message: fmt.Sprintf("objects/ holds %d checkpoint record(s) but no manifest names them: the store's manifests are missing", n)})
		}
	}
	if len(gens) > 0 {
		_, st, err := s.readGeneration(gens[0])
		if err == nil && st.Denied != nil {
			return nil, st.Denied
		}
		if err == nil && st.Damaged != "" {
			out = append(out, Problem{Message: "manifest: " + st.Damaged, Degraded: true})
		}
	}
	sn, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	// A file verify may not read is not damage, and verify cannot tell
	// whether it is intact: the first such error ends verify, returned as
	// it is (EACCES naming the file), instead of becoming a Problem.
	var refused error
	problem := func(p Problem, err error) {
		if denied(err) {
			if refused == nil {
				refused = err
			}
			return
		}
		p.Message = err.Error()
		p.Unchecked = errors.Is(err, errs.Limit)
		out = append(out, p)
	}
	bad := map[string]error{} // object -> why
	checkObj := func(o Object, what string) error {
		if err, checked := bad[o.Object]; checked {
			return err
		}
		err := s.checkInRemote(o.Object, o.Object, o.Stored, what)
		if err == nil && s.inCache(o.Object, o.Object) {
			var ob *object
			if ob, err = s.openObject(o.Object, o.Stored, what); err == nil {
				ob.release()
			}
		}
		bad[o.Object] = err
		return err
	}
	rd := &Reader{s: s, sn: sn, threads: s.threads}
	defer rd.Close() // its buffers; the read lock is this function's
	run := ""
	problem0 := problem
	problem = func(p Problem, err error) {
		p.Run = run
		problem0(p, err)
	}
	visit := func(c *Checkpoint, step int64, base bool) {
		sn := rd.sn
		for fi := range c.Files {
			f := &c.Files[fi]
			fileBad := false
			if err := checkObj(f.Skeleton, fmt.Sprintf("file %q", f.Path)); err != nil {
				problem(Problem{Step: step, Base: base, File: f.Path, Object: f.Skeleton.Object}, err)
				fileBad = true
			}
			for ri := range f.Regions {
				r := &f.Regions[ri]
				ch, err := sn.chain(r)
				if err != nil {
					problem(Problem{Step: step, Base: base, File: f.Path, Region: r.Name}, err)
					fileBad = true
					continue
				}
				for _, link := range ch {
					if err := checkObj(link.Object, fmt.Sprintf("tensor %q", link.Name)); err != nil {
						problem(Problem{Step: step, Base: base, File: f.Path, Region: r.Name, Object: link.Object.Object}, err)
						fileBad = true
						break
					}
				}
			}
			if refused != nil {
				return
			}
			if deep && !fileBad {
				check := newFileCheck(f)
				rd.wholeFile = !f.Lossy()
				err := rd.walk(f, 0, f.Size, func(pos uint64, b []byte) error { check.write(pos, b); return nil }, nil, 0)
				rd.wholeFile = false
				if err == nil {
					if got := check.sum(); got != f.SHA256 && !f.Lossy() {
						err = fmt.Errorf("%w: restores to bytes that hash to %s, not %s", errs.Corrupt, got, f.SHA256)
					}
				}
				if err != nil {
					problem(Problem{Step: step, Base: base, File: f.Path}, err)
				}
			}
		}
	}
	record := func(i int, ref CheckpointRef, step int64, base bool) {
		c, err := rd.sn.record(i)
		if err != nil {
			problem(Problem{Step: step, Base: base, Object: ref.Object}, err)
			return
		}
		// A record that reads may still have lost one of its two copies.
		for _, name := range []string{ref.Object, ref.Object + copySuffix} {
			err := s.checkInRemote(ref.Object, name, anySize, "record")
			var o *object
			if err == nil {
				o, err = s.mapObject(ref.Object, name, anySize, "record", true)
			}
			if err == nil {
				o.release()
				continue
			}
			if name != ref.Object && isMissing(err) {
				continue // a store written before copies existed
			}
			problem(Problem{Step: step, Base: base, Object: name, Degraded: true}, err)
		}
		if refused == nil {
			visit(c, step, base)
		}
	}
	views := make([]*snapshot, 0, len(sn.runNames()))
	var total, done uint64
	if sn.m.Base != nil {
		total++
	}
	for _, name := range sn.runNames() {
		v, err := sn.view(name)
		if err != nil {
			return nil, err
		}
		views = append(views, v)
		total += uint64(len(v.m.Checkpoints))
	}
	report := func() {
		if s.Progress != nil {
			s.Progress(done, total)
		}
	}
	tick := func() { done++; report() }
	report()
	if sn.m.Base != nil {
		record(-1, *sn.m.Base, 0, true)
		tick()
	}
	for k, name := range sn.runNames() {
		v := views[k]
		rd.sn, run = v, ""
		if name != MainRun {
			run = name
		}
		for i, ref := range v.m.Checkpoints {
			if refused != nil {
				break
			}
			record(i, ref, ref.Step, false)
			tick()
		}
	}
	if refused != nil {
		return nil, refused
	}
	return out, nil
}

// IsLocked reports whether err is the "another writer holds the lock" error.
func IsLocked(err error) bool {
	return errors.Is(err, syscall.EWOULDBLOCK) && strings.Contains(err.Error(), "another process is writing")
}
