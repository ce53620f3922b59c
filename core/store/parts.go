package store

// Many writers, one commit (docs/FORMAT.md, "Parts"). The ranks of one job,
// or nodes that share a file system, each stage their files as a part:
// their objects are written beside each other, without the writer lock,
// while one process (the coordinator) commits every part as one
// checkpoint. Writing objects is independent of the commit, which is the
// shape an object-storage backend needs as well.
//
// What keeps a part's objects from cleanup until the commit names them:
//   - while it codes, the participant holds readers.lock shared, as a
//     reader does: no cleanup runs (it needs the lock exclusively);
//   - from Finish until Close, its folder tmp/part-<random>/ is flock(2)ed
//     and lists every object the part names (tmp/part-<random>/objects);
//     cleanup keeps what a locked part lists, and removes an unlocked part
//     folder (its participant closed it, or died).
//
// On a remote store (remote.go) each participant stages into its own cache,
// which may be on another machine than the coordinator's: its Finish
// uploads every object the part linked before it returns the descriptor,
// so the descriptor names only objects that are in the bucket, and the
// coordinator's CommitParts fetches into its own cache what it checks
// there. In the bucket, a part's objects are kept from removal by the
// grace period (an object uploaded after a removal note is never removed
// by that note, and one noted is removed only a grace period later): a
// part must be committed within the grace period of its Finish.

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/mapped"
)

const (
	partFormat   = "tpde-store-part"
	partPrefix   = "part-"
	partObjects  = "objects"
	maxPartBytes = maxCheckpointBytes
	// newStep is the step a part's delta refs name for the checkpoint its
	// commit creates (the part cannot know the step).
	newStep = -1
)

// Part is what one participant staged: its files, and the deltas it made
// of the previous newest checkpoint's keyframes against them.
type Part struct {
	Format     string `json:"format"`
	Version    int    `json:"version"`
	Generation uint64 `json:"generation"`
	// Previous is the newest checkpoint when the part was coded: its
	// Converted regions replace that record's regions only if it is still
	// the newest at the commit.
	Previous  *CheckpointRef    `json:"previous"`
	Files     []File            `json:"files"`
	Converted []ConvertedRegion `json:"converted"`
}

// ConvertedRegion is a region of the previous newest checkpoint, re-coded
// as a delta frame. A ref with step -1 names the checkpoint being committed.
type ConvertedRegion struct {
	File string `json:"file"`
	Region
}

// stagePart makes this participant's folder in tmp/ and locks it. The
// store's tmp is then that folder, so that the writer's tmp cleanup never
// takes a live participant's files.
func (s *Store) stagePart() error {
	tmp, err := s.root.MkdirAll("tmp")
	if err != nil {
		return hostile(err)
	}
	defer tmp.Close()
	part, name, err := lockedPart(tmp)
	if err != nil {
		return err
	}
	s.tmp, s.partName = part, name
	if s.objects, err = s.root.MkdirAll("objects"); err != nil {
		return hostile(err)
	}
	return nil
}

// lockedPart makes a new part folder in tmp and locks it. Until it is
// locked, a cleanup takes it for a dead participant's: that cleanup locks
// it first and removes it, holding the lock while it does (liveParts).
// So a folder this participant could lock and that is still at its name
// is its own for good; otherwise it makes another.
func lockedPart(tmp *dirfd.Dir) (*dirfd.Dir, string, error) {
	for try := 0; ; try++ {
		part, name, err := tmp.MkdirTemp(partPrefix)
		if err == nil {
			err = syscall.Flock(part.Fd(), syscall.LOCK_EX|syscall.LOCK_NB)
			if err == nil {
				var st syscall.Stat_t
				info, serr := tmp.Stat(name)
				if serr == nil && syscall.Fstat(part.Fd(), &st) == nil && info.SameFile(dirfd.Info{Dev: uint64(st.Dev), Ino: st.Ino}) {
					return part, name, nil
				}
				err = syscall.ENOENT // removed by a cleanup between its lock and ours
			}
			_ = part.Close()
			if err != nil && !errors.Is(err, syscall.EWOULDBLOCK) && !errors.Is(err, fs.ErrNotExist) {
				return nil, "", ioErr(tmp.Path(name), err)
			}
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", err
		}
		if try >= 100 {
			return nil, "", ioErr(tmp.Path(name), err)
		}
	}
}

// Staging reports whether the store was opened for a participant
// (Options.Stage).
func (s *Store) Staging() bool { return s.stage }

// BeginPart starts staging this participant's files. The store must be
// opened with Options.Stage.
func (s *Store) BeginPart() (*Tx, error) {
	if !s.stage {
		return nil, fmt.Errorf("%w: a part is staged on a store opened for staging", errs.Invalid)
	}
	if s.partDone {
		return nil, fmt.Errorf("%w: this staging handle already staged its part; open another", errs.Invalid)
	}
	unlock, err := s.readLock()
	if err != nil {
		return nil, err
	}
	// Before any object is linked: a writer's next open then sweeps for
	// them if this part is never committed (cleanclose.go).
	if err := s.markStaged(); err != nil {
		unlock()
		return nil, err
	}
	sn, err := s.snapshot()
	if err != nil {
		unlock()
		return nil, err
	}
	tx := &Tx{s: s, sn: sn, prev: sn.latest(), part: true, unlock: unlock,
		cp:        &Checkpoint{Format: checkpointFormat, Version: Version, Step: newStep, Tags: []string{}, Files: []File{}},
		converted: map[string]Region{}, tails: map[*Region]int{}, keyframes: map[string]Object{},
		rawFiles: map[string]File{}, paths: map[string]bool{}}
	tx.index()
	return tx, nil
}

// Finish ends staging: it returns the part's descriptor (docs/FORMAT.md,
// "Parts"), for the coordinator's CommitParts. The objects it names stay
// protected until the store handle is closed.
func (tx *Tx) Finish() ([]byte, error) {
	if !tx.part {
		return nil, fmt.Errorf("%w: Finish is for parts; commit a checkpoint with Commit", errs.Invalid)
	}
	if tx.done {
		return nil, fmt.Errorf("%w: the part was already finished or aborted", errs.Invalid)
	}
	tx.done = true
	tx.freeBuffers()
	defer tx.release()
	if tx.s.remote != nil {
		// Ranks of one save stage in caches of their own, on machines of
		// their own: the bucket is what the coordinator commits from.
		if err := tx.s.pushPending(); err != nil {
			return nil, err
		}
	}
	p := Part{Format: partFormat, Version: Version, Generation: tx.sn.m.Generation, Files: tx.cp.Files, Converted: []ConvertedRegion{}}
	sort.Slice(p.Files, func(i, j int) bool { return p.Files[i].Path < p.Files[j].Path })
	if tx.prev >= 0 {
		ref := tx.sn.m.Checkpoints[tx.prev]
		p.Previous = &ref
		keys := make([]string, 0, len(tx.converted))
		for k := range tx.converted {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			file, _, _ := strings.Cut(k, "\x00")
			p.Converted = append(p.Converted, ConvertedRegion{File: file, Region: tx.converted[k]})
		}
	}
	b, err := json.Marshal(&p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errs.Internal, err)
	}
	if len(b) > maxPartBytes {
		return nil, fmt.Errorf("%w: the part's descriptor would be %d bytes (max %d)", errs.Invalid, len(b), maxPartBytes)
	}
	// The list is written while readers.lock is still held shared, so no
	// cleanup can run between the objects' links and the list that keeps
	// them. Unsynced on purpose: it protects against a live cleanup, and a
	// crash of the machine ends the participant (and so the protection).
	var list bytes.Buffer
	for _, name := range p.objects() {
		list.WriteString(name)
		list.WriteByte('\n')
	}
	f, err := tx.s.tmp.OpenFile(partObjects, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o666)
	if err != nil {
		return nil, err
	}
	werr := writeAll(f, list.Bytes())
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, ioErr(tx.s.tmp.Path(partObjects), werr)
	}
	tx.s.partDone = true
	return b, nil
}

// release ends a part's shared hold on readers.lock.
func (tx *Tx) release() {
	if tx.unlock != nil {
		tx.unlock()
		tx.unlock = nil
	}
}

// objects lists every object file a part names.
func (p *Part) objects() []string {
	var out []string
	for _, f := range p.Files {
		out = append(out, f.Skeleton.Object)
		for _, r := range f.Regions {
			out = append(out, r.Object.Object)
		}
	}
	for _, c := range p.Converted {
		out = append(out, c.Object.Object)
	}
	return out
}

// parsePart decodes a part's descriptor strictly, like a record.
func parsePart(b []byte, i int) (*Part, error) {
	what := fmt.Sprintf("part %d", i)
	if len(b) > maxPartBytes {
		return nil, fmt.Errorf("%w: %s: %d bytes (max %d)", errs.Invalid, what, len(b), maxPartBytes)
	}
	var p Part
	if err := decodeJSON(what, b, &p); err != nil {
		return nil, fmt.Errorf("%w: %v", errs.Invalid, err)
	}
	if p.Format != partFormat {
		return nil, fmt.Errorf("%w: %s: format %q (want %q)", errs.Invalid, what, p.Format, partFormat)
	}
	if p.Version != Version {
		return nil, fmt.Errorf("%w: %s: version %d (this tpde reads %d)", errs.Unsupported, what, p.Version, Version)
	}
	for k := range p.Files {
		f := &p.Files[k]
		if err := f.validate(); err != nil {
			return nil, fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
		}
		for _, r := range f.Regions {
			if r.Ref != nil || r.MaxError != 0 {
				return nil, fmt.Errorf("%w: %s: %s: tensor %q: a part's own tensors are exact keyframes", errs.Invalid, what, f.Path, r.Name)
			}
		}
	}
	return &p, nil
}

// CommitParts publishes one checkpoint made of every part's files (their
// paths must not repeat). step is the newest + 1 unless hasStep. With a
// holder (a folder beside the store), the folder's pointer file is written
// before the checkpoint is published, and the checkpoint lives as long as
// the folder holds it (Reclaim).
func (s *Store) CommitParts(parts [][]byte, step int64, hasStep bool, tags []string, holder string) (*Checkpoint, error) {
	if !s.write {
		return nil, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	if len(parts) == 0 {
		return nil, fmt.Errorf("%w: no parts to commit", errs.Invalid)
	}
	if holder != "" {
		if err := s.validHolder(holder); err != nil {
			return nil, err
		}
	}
	tx, err := s.Begin(step, hasStep, tags)
	if err != nil {
		return nil, err
	}
	tx.done = true // nothing is coded here: the parts were
	tx.parts = true
	sn := tx.sn
	var prevRef *CheckpointRef
	if tx.prev >= 0 {
		prevRef = &sn.m.Checkpoints[tx.prev]
	}
	names := map[string]bool{}
	for i, b := range parts {
		p, err := parsePart(b, i)
		if err != nil {
			return nil, err
		}
		for _, f := range p.Files {
			if names[f.Path] {
				return nil, fmt.Errorf("%w: %q is in two parts", errs.Invalid, f.Path)
			}
			names[f.Path] = true
			tx.cp.Files = append(tx.cp.Files, f)
		}
		// A part coded against another newest checkpoint than this one
		// made deltas of a record this commit does not replace: they are
		// left out (the keyframes stay; the store is only larger).
		if prevRef == nil || p.Previous == nil || *p.Previous != *prevRef {
			continue
		}
		for _, c := range p.Converted {
			key := regionKey(c.File, c.Name)
			if _, dup := tx.converted[key]; dup {
				return nil, fmt.Errorf("%w: tensor %q of %q converted by two parts", errs.Invalid, c.Name, c.File)
			}
			r := c.Region
			if r.Ref != nil && !r.Ref.Base && r.Ref.Step == newStep {
				ref := *r.Ref
				ref.Step = tx.cp.Step
				r.Ref = &ref
			}
			tx.converted[key] = r
		}
	}
	// Parts that all staged nothing would publish a checkpoint without a
	// file, which no add makes (a folder with no file is refused): a
	// coordinator that got only empty descriptors has lost its writers'.
	if len(tx.cp.Files) == 0 {
		return nil, fmt.Errorf("%w: the parts hold no file: nothing to commit", errs.Invalid)
	}
	// The record must be one every reader accepts: parsed as a reader
	// parses it (paths inside the folder, no file that is also another's
	// folder, the limits), or a commit would publish a newest checkpoint
	// that cannot be read.
	tx.cp.stamp()
	rec, err := json.Marshal(tx.cp)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errs.Internal, err)
	}
	if _, err := parseCheckpoint(rec, tx.cp.Step, false); err != nil {
		return nil, fmt.Errorf("%w: the parts' files: %v", errs.Invalid, err)
	}
	if err := s.checkParts(tx); err != nil {
		return nil, err
	}
	if holder != "" {
		if err := s.writePointer(holder, tx.cp.Step); err != nil {
			return nil, err
		}
	}
	if s.remote == nil {
		// A remote store's checkpoints are never reclaimed (Reclaim): its
		// holder folders are on machines it cannot see, so the manifest
		// names none, and the checkpoint lives until it is removed.
		tx.holder = holder
	}
	tx.done = false
	c, err := tx.commit()
	if err != nil {
		_, _ = s.cleanup()
	}
	return c, err
}

// checkParts checks what the parts claim against the store: every object
// they name exists with its size, and every converted region is the
// previous checkpoint's keyframe of that tensor, re-coded against a tensor
// of the same dtype and size.
func (s *Store) checkParts(tx *Tx) error {
	exists := func(o Object, what string) error {
		if s.inBucketOnly(o) {
			_, err := s.remoteHead(o, 0, what)
			return err
		}
		info, err := s.objectInfo(o.Object)
		if errors.Is(err, fs.ErrNotExist) {
			// The usual cause: the part's participant closed it, or died,
			// before this commit, and a cleanup took its objects.
			return fmt.Errorf("%s: object %s: %w (a part's objects last only while its participant keeps the part open: was it closed, or its process killed, before this commit?)", what, o.Object, err)
		}
		if err != nil {
			return fmt.Errorf("%s: object %s: %w", what, o.Object, err)
		}
		if !info.IsRegular() || uint64(info.Size) != o.Stored {
			return fmt.Errorf("%w: %s: object %s is not the %d bytes its part says", errs.Invalid, what, o.Object, o.Stored)
		}
		return nil
	}
	// What an object holds must be what the part says, as far as its
	// header tells without decoding (a frame's dtype and size, a
	// skeleton's length): a reader sizes its buffers from the record.
	// What it decodes to is checked against the sha256 by every read.
	frameOf := func(r *Region, what string) error {
		if s.inBucketOnly(r.Object) {
			return s.checkRemoteFrame(r, what)
		}
		if err := exists(r.Object, what); err != nil {
			return err
		}
		if err := s.checkFrame(r); err != nil {
			return fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
		}
		return nil
	}
	byKey := map[string]*Region{}
	for i := range tx.cp.Files {
		f := &tx.cp.Files[i]
		if err := exists(f.Skeleton, f.Path); err != nil {
			return err
		}
		var regions uint64
		for j := range f.Regions {
			r := &f.Regions[j]
			byKey[regionKey(f.Path, r.Name)] = r
			if err := frameOf(r, f.Path+": "+r.Name); err != nil {
				return err
			}
			regions += r.Size
		}
		var ok bool
		if s.inBucketOnly(f.Skeleton) {
			b, err := s.remoteHead(f.Skeleton, 8, f.Path)
			if err != nil {
				return err
			}
			ok = len(b) >= 8 && binary.LittleEndian.Uint64(b) == f.Size-regions
		} else {
			o, err := s.mapObject(f.Skeleton.Object, f.Skeleton.Object, f.Skeleton.Stored, f.Path, false)
			if err != nil {
				return err
			}
			err = mapped.Reading(s.objectPath(f.Skeleton.Object), func() error {
				ok = len(o.Data) >= 8 && binary.LittleEndian.Uint64(o.Data) == f.Size-regions
				return nil
			})
			o.release()
			if err != nil {
				return err
			}
		}
		if !ok {
			return fmt.Errorf("%w: %s: its skeleton object does not hold the %d verbatim bytes its part says", errs.Invalid, f.Path, f.Size-regions)
		}
	}
	for key, nr := range tx.converted {
		file, name, _ := strings.Cut(key, "\x00")
		old := tx.sn.region(tx.prev, key)
		what := fmt.Sprintf("%s: tensor %q", file, name)
		if old == nil || old.Ref != nil || old.MaxError != 0 || old.Offset != nr.Offset || old.Size != nr.Size ||
			old.DType != nr.DType || old.SHA256 != nr.SHA256 || nr.Ref == nil {
			return fmt.Errorf("%w: %s: a part's delta does not match the previous checkpoint's keyframe", errs.Invalid, what)
		}
		if !nr.Ref.Base && nr.Ref.Step == tx.cp.Step {
			t := byKey[regionKey(nr.Ref.File, nr.Ref.Region)]
			if t == nil || t.DType != nr.DType || t.Size != nr.Size {
				return fmt.Errorf("%w: %s: its delta names a tensor this checkpoint lacks", errs.Invalid, what)
			}
		}
		if err := frameOf(&nr, what); err != nil {
			return err
		}
	}
	return nil
}

// Pointer is the file a holder folder keeps beside its content
// (docs/FORMAT.md, "Holders"): the store, relative to the folder, and the
// step of the checkpoint it holds.
type Pointer struct {
	Format  string `json:"format"`
	Version int    `json:"version"`
	Store   string `json:"store"`
	Step    int64  `json:"step"`
}

const (
	// PointerName is the pointer file's name inside its folder.
	PointerName     = ".tpde-checkpoint.json"
	pointerFormat   = "tpde-checkpoint-pointer"
	maxPointerBytes = 1 << 16
)

// validHolder: a holder is one folder name beside a local store; for a
// remote store, whose folder is a cache, it is the absolute path of a local
// folder.
func (s *Store) validHolder(h string) error {
	if s.remote != nil {
		if !filepath.IsAbs(h) || filepath.Clean(h) != h || strings.ContainsRune(h, 0) || len(h) > 4096 {
			return fmt.Errorf("%w: holder %q: for a remote store, must be the absolute path of a local folder", errs.Invalid, printable(h))
		}
		return nil
	}
	return validHolder(h)
}

func validHolder(h string) error {
	if err := validPath(h); err != nil || strings.Contains(h, "/") {
		return fmt.Errorf("%w: holder %q: must be one folder name beside the store", errs.Invalid, printable(h))
	}
	return nil
}

// inBucketOnly reports whether object o of a part is in a remote store's
// bucket and not in this cache: a part staged by another process. Its
// checks read its head from the bucket (remoteHead), never all of it: a
// coordinator must not download every participant's checkpoint.
func (s *Store) inBucketOnly(o Object) bool {
	return s.remote != nil && validHash(o.Object) && !s.inCache(o.Object, o.Object)
}

// remoteHead checks that part object o is in the bucket with the size its
// part gives, and returns its first min(n, size) bytes (n 0: none, one
// HEAD; else one ranged GET, whose answer also gives the object's size).
func (s *Store) remoteHead(o Object, n int64, what string) ([]byte, error) {
	r := s.remote.r
	rel := "objects/" + o.Object[:2] + "/" + o.Object
	if o.Stored > maxObjectBytes {
		return nil, fmt.Errorf("%w: %s: object %s: %d bytes", errs.Invalid, what, o.Object, o.Stored)
	}
	size := int64(o.Stored)
	var b []byte
	var err error
	if n = min(n, size); n > 0 {
		b, err = r.GetRange(s.remoteCtx(), rel, 0, n, size)
	} else {
		var got int64
		if got, err = r.Head(s.remoteCtx(), rel); err == nil && got != size {
			err = fmt.Errorf("%w: the object is %d bytes", errs.Corrupt, got)
		}
	}
	switch {
	case r.NotFound(err):
		return nil, fmt.Errorf("%w: %s: object %s is not in %s (a part's Finish uploads its objects: did it fail, or was the part committed after the grace period, TPDE_S3_GRACE, since its Finish?)", errs.Invalid, what, o.Object, r.URL(""))
	case errors.Is(err, errs.Corrupt):
		return nil, fmt.Errorf("%w: %s: object %s is not the %d bytes its part says: %v", errs.Invalid, what, o.Object, o.Stored, err)
	case err != nil:
		return nil, err
	}
	return b, nil
}

// headRead is how much of a frame object checkRemoteFrame reads first: a
// header with a shape of the most dimensions and no extension area fits.
const headRead = 4096

// checkRemoteFrame checks a part's frame object that only the bucket
// holds, as checkFrame checks a local one, from its header alone.
func (s *Store) checkRemoteFrame(reg *Region, what string) error {
	b, err := s.remoteHead(reg.Object, headRead, what)
	if err != nil {
		return err
	}
	if hl, ok := frame.HeadLen(b); ok && hl > len(b) && uint64(hl) <= reg.Stored {
		if b, err = s.remoteHead(reg.Object, int64(hl), what); err != nil {
			return err
		}
	}
	h, err := frame.ParseHead(b)
	if err := frameIsRegion(h, err, reg); err != nil {
		return fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
	}
	return nil
}

// parent opens the folder that holds the store (and its holders).
func (s *Store) parent() (*dirfd.Dir, error) {
	return dirfd.Open(parentOf(s.dir))
}

func parentOf(dir string) string { return filepath.Dir(filepath.Clean(dir)) }

func baseName(dir string) string { return filepath.Base(filepath.Clean(dir)) }

// writePointer writes holder/PointerName, naming step, durably, replacing
// what was there (a folder is reused for its newest checkpoint only).
func (s *Store) writePointer(holder string, step int64) error {
	if s.remote != nil {
		// The folder is local, the store is not: the pointer names it by
		// its URL (the endpoint and credentials come from the reader's
		// environment, never from a file).
		h, err := dirfd.Open(holder)
		if err != nil {
			return fmt.Errorf("holder folder: %w", err)
		}
		defer h.Close()
		b, err := json.Marshal(Pointer{Format: pointerFormat, Version: Version, Store: s.remote.r.URL(""), Step: step})
		if err != nil {
			return fmt.Errorf("%w: %v", errs.Internal, err)
		}
		return writeDurable(h, h, PointerName, append(b, '\n'), false)
	}
	par, err := s.parent()
	if err != nil {
		return err
	}
	defer par.Close()
	h, err := par.OpenDir(holder)
	if err != nil {
		return fmt.Errorf("holder folder: %w", err)
	}
	defer h.Close()
	b, err := json.Marshal(Pointer{Format: pointerFormat, Version: Version, Store: "../" + baseName(s.dir), Step: step})
	if err != nil {
		return fmt.Errorf("%w: %v", errs.Internal, err)
	}
	return writeDurable(h, h, PointerName, append(b, '\n'), false)
}

// ReadPointer reads the pointer file of folder: the store it names
// (joined to folder) and the step.
func ReadPointer(folder string) (string, int64, error) {
	d, err := dirfd.Open(folder)
	if err != nil {
		return "", 0, err
	}
	defer d.Close()
	p, err := readPointer(d)
	if err != nil {
		return "", 0, err
	}
	if SchemeOf(p.Store) != "" {
		// A remote store, named by its URL (opening it checks the URL).
		return p.Store, p.Step, nil
	}
	return filepath.Join(folder, p.Store), p.Step, nil
}

func readPointer(d *dirfd.Dir) (*Pointer, error) {
	b, err := d.ReadFile(PointerName, maxPointerBytes)
	if err != nil {
		return nil, hostile(err)
	}
	what := d.Path(PointerName)
	var p Pointer
	if err := decodeJSON(what, b, &p); err != nil {
		return nil, err
	}
	if p.Format != pointerFormat {
		return nil, corrupt(what, "format %q", p.Format)
	}
	if p.Version != Version {
		return nil, fmt.Errorf("%w: %s: version %d (this tpde reads %d)", errs.Unsupported, what, p.Version, Version)
	}
	if p.Step < 0 || p.Store == "" || strings.ContainsRune(p.Store, 0) || len(p.Store) > 4096 {
		return nil, corrupt(what, "step %d, store %q", p.Step, printable(p.Store))
	}
	return &p, nil
}

// Reclaim removes every checkpoint whose holder no longer holds it: the
// folder is gone, or its pointer names another checkpoint or store. A
// folder renamed beside the store still holds its checkpoint (found by
// its pointer). Checkpoints added without a holder are never reclaimed,
// nor is any checkpoint when a holder cannot be checked (a permission
// error, a damaged pointer): a reclaim only removes what is certainly
// no longer named. It returns the steps removed.
//
// A remote store is never reclaimed: its holder folders lie on the
// machines that saved, and a folder this machine cannot see may well be
// held on another, so no process can tell that a checkpoint is unheld.
// Its checkpoints are removed by step (Remove).
func (s *Store) Reclaim() ([]int64, error) {
	if !s.write {
		return nil, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	if s.remote != nil {
		return nil, fmt.Errorf("%w: %s: a remote store's checkpoints are not reclaimed by their folders (those lie on the machines that saved, which this one cannot see); remove checkpoints by step", errs.Unsupported, s.remote.r.URL(""))
	}
	if err := s.Settle(); err != nil {
		return nil, err
	}
	sn, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	var unheld []CheckpointRef
	for _, ref := range sn.m.Checkpoints {
		if ref.Holder != "" {
			unheld = append(unheld, ref)
		}
	}
	if len(unheld) == 0 {
		return nil, nil
	}
	par, err := s.parent()
	if err != nil {
		return nil, err
	}
	defer par.Close()
	self := "../" + baseName(s.dir)
	// Folders beside the store, read once: what each pointer holds.
	held := map[int64]bool{}
	uncertain := false
	look := func(name string) {
		d, err := par.OpenDir(name)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) && !errors.Is(err, syscall.ELOOP) {
				uncertain = true
			}
			return
		}
		defer d.Close()
		p, err := readPointer(d)
		switch {
		case err == nil:
			if p.Store == self {
				held[p.Step] = true
			}
		case errors.Is(err, fs.ErrNotExist):
		default:
			uncertain = true // a pointer we cannot read may hold anything
		}
	}
	for _, ref := range unheld {
		look(ref.Holder)
	}
	missing := false
	for _, ref := range unheld {
		missing = missing || !held[ref.Step]
	}
	if missing && !uncertain {
		ents, err := par.ReadDir()
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			if e.Type == fs.ModeDir && e.Name != baseName(s.dir) {
				look(e.Name)
			}
		}
	}
	if uncertain {
		return nil, nil
	}
	var removed []int64
	for _, ref := range unheld {
		if held[ref.Step] {
			continue
		}
		if err := s.Remove(ref.Step); err != nil {
			return removed, err
		}
		removed = append(removed, ref.Step)
	}
	return removed, nil
}

// liveParts adds what every live (locked) part in tmp/ lists to live, and
// removes the folders of parts no participant holds any more. It runs
// under readers.lock held exclusively: no participant is coding, so each
// live part's list is complete.
func (s *Store) liveParts(live map[string]bool, c *Cleaned) error {
	return s.livePartsIn(s.tmp, live, c)
}

// livePartsIn is liveParts over the part folders in tmp (a participant's
// own s.tmp is its part's folder, not the store's tmp/).
func (s *Store) livePartsIn(tmp *dirfd.Dir, live map[string]bool, c *Cleaned) error {
	ents, err := tmp.ReadDir()
	if err != nil {
		return err
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name, partPrefix) || e.Type != fs.ModeDir {
			continue
		}
		d, err := tmp.OpenDir(e.Name)
		if err != nil {
			continue
		}
		if syscall.Flock(d.Fd(), syscall.LOCK_EX|syscall.LOCK_NB) == nil {
			// Unlocked: its participant closed it or died, or has just
			// made it and not locked it yet. The lock is held while the
			// folder goes, so that such a participant cannot lock it
			// meanwhile and believe it kept (lockedPart makes another).
			if tmp.RemoveAll(e.Name) == nil {
				c.Temporary++
			}
			_ = d.Close()
			continue
		}
		b, err := d.ReadFile(partObjects, math.MaxInt32)
		_ = d.Close()
		if err != nil {
			continue // still coding (no list yet): it holds readers.lock, so this does not run
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if name := sc.Text(); validHash(name) {
				live[name] = true
			}
		}
	}
	return nil
}
