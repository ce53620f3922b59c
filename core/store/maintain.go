package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// Cleaned says what cleanup removed.
type Cleaned struct {
	Temporary   int  `json:"temporary"`
	Objects     int  `json:"objects"`
	Manifests   int  `json:"manifests"`
	ReadersBusy bool `json:"readers_busy"`
}

// cleanup removes what no committed state needs: a dead writer's unfinished
// files in tmp/, objects the newest manifest does not name, and older
// manifest generations. Objects and old generations go only while no reader
// holds a snapshot (readers.lock); otherwise they wait for the next time.
func (s *Store) cleanup() (Cleaned, error) {
	var c Cleaned
	if !s.write {
		return c, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	ents, err := os.ReadDir(s.path("tmp"))
	if err != nil {
		return c, ioErr(s.path("tmp"), err)
	}
	for _, e := range ents {
		if os.Remove(s.path("tmp", e.Name())) == nil {
			c.Temporary++
		}
	}
	lp := s.path("readers.lock")
	lf, err := os.Open(lp)
	if err != nil {
		return c, ioErr(lp, err)
	}
	defer lf.Close()
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		c.ReadersBusy = true
		return c, nil
	}
	sn, err := s.snapshot()
	if err != nil {
		return c, err
	}
	live := sn.live()
	dirs, err := os.ReadDir(s.path("objects"))
	if err != nil {
		return c, ioErr(s.path("objects"), err)
	}
	for _, d := range dirs {
		sub := s.path("objects", d.Name())
		objs, err := os.ReadDir(sub)
		if err != nil {
			continue
		}
		for _, o := range objs {
			if !live[o.Name()] && os.Remove(filepath.Join(sub, o.Name())) == nil {
				c.Objects++
			}
		}
	}
	gens, err := s.generations()
	if err != nil {
		return c, err
	}
	for i, g := range gens {
		if i > 0 && os.Remove(s.path("manifests", manifestName(g))) == nil {
			c.Manifests++
		}
	}
	return c, nil
}

// Repair removes leftovers and reports them, with what Open for writing
// already removed.
func (s *Store) Repair() (Cleaned, error) {
	c, err := s.cleanup()
	c.Temporary += s.opened.Temporary
	c.Objects += s.opened.Objects
	c.Manifests += s.opened.Manifests
	s.opened = Cleaned{}
	return c, err
}

// Remove drops checkpoint step. Every region that was coded against it is
// re-coded first, against what step's own region was coded against (or as
// a keyframe), so every other checkpoint still decodes exactly as before.
func (s *Store) Remove(step int64) error {
	if !s.write {
		return fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	sn, err := s.snapshot()
	if err != nil {
		return err
	}
	_, gone, err := sn.checkpoint(step)
	if err != nil {
		return err
	}
	m := *sn.m
	m.Checkpoints = nil
	var spare, rawB, refB, bufB buffer
	defer func() { spare.free(); rawB.free(); refB.free(); bufB.free() }()
	for ci, c := range sn.cps {
		if ci == gone {
			continue
		}
		// When the newest goes, the one before it becomes the newest and
		// must decode in one frame per tensor: all its deltas become
		// keyframes.
		mustWhole := gone == len(sn.cps)-1 && ci == gone-1
		changed := false
		nc := *c
		nc.Files = append([]File{}, c.Files...)
		for fi := range nc.Files {
			f := &nc.Files[fi]
			f.Regions = append([]Region{}, f.Regions...)
			for ri := range f.Regions {
				r := &f.Regions[ri]
				if r.Ref == nil || (!mustWhole && (r.Ref.Base || r.Ref.Step != step)) {
					continue
				}
				target, _, err := sn.resolve(r.Ref)
				if err != nil {
					return corrupt(fmt.Sprintf("checkpoint %d", c.Step), "%v", err)
				}
				raw, err := rawB.get(r.Size)
				if err != nil {
					return err
				}
				if err := s.decodeRegion(sn, &c.Files[fi].Regions[ri], raw, s.threads, &spare); err != nil {
					return err
				}
				d, _ := dtype.FromName(r.DType)
				nr := *r
				if !mustWhole && target.Ref != nil && r.MaxError == 0 && target.MaxError == 0 {
					// Skip over the removed checkpoint.
					next, _, err := sn.resolve(target.Ref)
					if err != nil {
						return err
					}
					refRaw, err := refB.get(next.Size)
					if err != nil {
						return err
					}
					if err := s.decodeRegion(sn, next, refRaw, s.threads, &spare); err != nil {
						return err
					}
					coded, _, err := s.encodeDelta(&bufB, raw, refRaw, d, r.Shape, 0)
					if err != nil {
						return err
					}
					if nr.Object, err = s.putBytes(coded); err != nil {
						return err
					}
					ref := *target.Ref
					nr.Ref = &ref
				} else {
					// A keyframe of what the region decodes to: exact for a
					// lossless region, the same reconstruction (and bound)
					// for a lossy one.
					coded, err := s.encodeKeyframe(&bufB, raw, d, r.Shape, nil)
					if err != nil {
						return err
					}
					if nr.Object, err = s.putBytes(coded); err != nil {
						return err
					}
					nr.Ref = nil
					if nr.MaxError == 0 {
						sum := sha256.Sum256(raw)
						nr.SHA256 = hex.EncodeToString(sum[:])
					}
				}
				*r = nr
				changed = true
			}
		}
		ref := sn.m.Checkpoints[ci]
		if changed {
			tx := &Tx{s: s}
			obj, err := tx.putRecord(&nc)
			if err != nil {
				return err
			}
			ref.Object = obj
		}
		m.Checkpoints = append(m.Checkpoints, ref)
	}
	if m.Checkpoints == nil {
		m.Checkpoints = []CheckpointRef{}
	}
	if err := s.publish(&m); err != nil {
		return err
	}
	_, _ = s.cleanup()
	return nil
}

// Problem is one thing Verify found wrong.
type Problem struct {
	Step    int64  `json:"step"`
	Base    bool   `json:"base,omitempty"`
	File    string `json:"file"`
	Region  string `json:"region,omitempty"`
	Object  string `json:"object,omitempty"`
	Message string `json:"message"`
}

// Verify checks every object of every checkpoint: present, of its size,
// hashing to its name. deep also decodes every region along its chain and
// every file, and checks them against the hashes they were added with.
// A damaged object is reported once for each checkpoint and tensor whose
// decode needs it.
func (s *Store) Verify(deep bool) ([]Problem, error) {
	unlock, err := s.readLock()
	if err != nil {
		return nil, err
	}
	defer unlock()
	sn, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	bad := map[string]string{} // object -> why
	checked := map[string]bool{}
	checkObj := func(o Object, what string) string {
		if !checked[o.Object] {
			checked[o.Object] = true
			ob, err := s.openObject(o.Object, o.Stored, what)
			if err != nil {
				bad[o.Object] = err.Error()
			} else {
				ob.release()
			}
		}
		return bad[o.Object]
	}
	var out []Problem
	rd := &Reader{s: s, sn: sn, threads: s.threads}
	defer rd.Close() // its buffers; the read lock is this function's
	visit := func(c *Checkpoint, step int64, base bool) {
		for fi := range c.Files {
			f := &c.Files[fi]
			fileBad := false
			if why := checkObj(f.Skeleton, fmt.Sprintf("file %q", f.Path)); why != "" {
				out = append(out, Problem{Step: step, Base: base, File: f.Path, Object: f.Skeleton.Object, Message: why})
				fileBad = true
			}
			for ri := range f.Regions {
				r := &f.Regions[ri]
				ch, err := sn.chain(r)
				if err != nil {
					out = append(out, Problem{Step: step, Base: base, File: f.Path, Region: r.Name, Message: err.Error()})
					fileBad = true
					continue
				}
				for _, link := range ch {
					if why := checkObj(link.Object, fmt.Sprintf("tensor %q", link.Name)); why != "" {
						out = append(out, Problem{Step: step, Base: base, File: f.Path, Region: r.Name, Object: link.Object.Object, Message: why})
						fileBad = true
						break
					}
				}
			}
			if deep && !fileBad {
				h := sha256.New()
				rd.wholeFile = !f.Lossy()
				err := rd.walk(f, 0, f.Size, func(_ uint64, b []byte) error { h.Write(b); return nil }, nil, 0)
				rd.wholeFile = false
				if err == nil {
					if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 && !f.Lossy() {
						err = fmt.Errorf("%w: restores to bytes that hash to %s, not %s", errs.Corrupt, got, f.SHA256)
					}
				}
				if err != nil {
					out = append(out, Problem{Step: step, Base: base, File: f.Path, Message: err.Error()})
				}
			}
		}
	}
	if sn.base != nil {
		visit(sn.base, 0, true)
	}
	for i, c := range sn.cps {
		visit(c, sn.m.Checkpoints[i].Step, false)
	}
	return out, nil
}

// IsLocked reports whether err is the "another writer holds the lock" error.
func IsLocked(err error) bool {
	return errors.Is(err, syscall.EWOULDBLOCK) && strings.Contains(err.Error(), "another process is writing")
}
