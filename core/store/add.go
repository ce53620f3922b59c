package store

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"math"
	"sort"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/mapped"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/statedict"
)

// MinRegion is the smallest tensor that gets its own object; smaller ones
// (biases, norms) stay in their file's zstd-coded skeleton, where an object
// per tensor would cost more than it saves.
const MinRegion = 4096

// Tx adds one checkpoint. Nothing it writes is visible until Commit
// publishes the next manifest generation; Abort, or a crash, leaves the
// store as it was (the objects it wrote are removed by the next cleanup).
type Tx struct {
	s    *Store
	sn   *snapshot
	base bool
	cp   *Checkpoint
	// prev is the index of the checkpoint that was the newest; its
	// keyframes become deltas as this one's regions arrive (convert).
	prev      int
	converted map[string]Region
	// tails[r] is how many deltas already chain into keyframe r of prev.
	tails map[*Region]int
	// keyframes by raw content: the same bytes are stored once.
	keyframes map[string]Object
	// skeletons of raw files by the file's sha256.
	rawFiles map[string]File
	paths    map[string]bool
	bufA     buffer // frames being encoded
	bufB     buffer // the reference-side tensor decoded
	bufC     buffer // a third tensor: a base or keyframe reference
	done     bool
	// Progress, if set, is told the bytes of input done so far.
	Progress func(done uint64)
	Stop     func() error
	doneIn   uint64
	// part: staged by one participant of a multi-writer commit (parts.go);
	// unlock ends its shared hold on readers.lock.
	part   bool
	unlock func()
	// holder names the folder that keeps the checkpoint (CommitParts).
	holder string
	// parts: the checkpoint is CommitParts', whose participants re-coded
	// prev as they staged: no demotion follows it.
	parts bool
	// parent is the run's parent: its first checkpoint is coded against it.
	parent *RunParent
}

func contentKey(sha string, d string, shape []uint64) string {
	return fmt.Sprintf("%s/%s/%v", sha, d, shape)
}

// Begin starts adding a checkpoint at step (the newest step + 1 when
// hasStep is false). Steps only grow: the newest is the one a resume loads.
func (s *Store) Begin(step int64, hasStep bool, tags []string) (*Tx, error) {
	return s.begin(MainRun, nil, step, hasStep, tags, false)
}

// BeginRun starts adding a checkpoint to run (created with parent if it
// does not exist yet; parent must be nil or the run's own for one that
// does). A run's first checkpoint is coded against its parent.
func (s *Store) BeginRun(run string, parent *RunParent, step int64, hasStep bool, tags []string) (*Tx, error) {
	return s.begin(run, parent, step, hasStep, tags, false)
}

// BeginBase starts adding the base that reference="base" codes against.
func (s *Store) BeginBase() (*Tx, error) { return s.begin(MainRun, nil, 0, true, nil, true) }

func (s *Store) begin(run string, parent *RunParent, step int64, hasStep bool, tags []string, base bool) (*Tx, error) {
	if !s.write {
		return nil, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	if err := s.Settle(); err != nil {
		return nil, err
	}
	root, err := s.snapshot()
	if err != nil {
		return nil, err
	}
	sn, parent, err := root.runForAdd(run, parent)
	if err != nil {
		return nil, err
	}
	if sn.m.Generation == 0 {
		if err := s.refuseOrphans(); err != nil {
			return nil, err
		}
	}
	if len(tags) > maxTags {
		return nil, fmt.Errorf("%w: %d tags (max %d)", errs.Invalid, len(tags), maxTags)
	}
	for _, t := range tags {
		if err := validText(t, maxNameBytes); err != nil {
			return nil, fmt.Errorf("%w: tag: %v", errs.Invalid, err)
		}
	}
	if base {
		if s.cfg.Reference != RefBase {
			return nil, fmt.Errorf("%w: a base is only used with reference=%q", errs.Invalid, RefBase)
		}
	} else {
		if s.cfg.Reference == RefBase && sn.m.Base == nil {
			return nil, fmt.Errorf("%w: reference=%q needs the base added first", errs.Invalid, RefBase)
		}
		last := sn.latest()
		if !hasStep {
			step = 0
			if last >= 0 {
				if sn.m.Checkpoints[last].Step == math.MaxInt64 {
					return nil, fmt.Errorf("%w: the newest checkpoint is step %d, and no step comes after it", errs.Invalid, int64(math.MaxInt64))
				}
				step = sn.m.Checkpoints[last].Step + 1
			}
		} else if last >= 0 && step <= sn.m.Checkpoints[last].Step {
			return nil, fmt.Errorf("%w: step %d is not after the newest checkpoint, %d", errs.Invalid, step, sn.m.Checkpoints[last].Step)
		}
		if step < 0 {
			return nil, fmt.Errorf("%w: step %d is negative", errs.Invalid, step)
		}
	}
	if tags == nil {
		tags = []string{}
	}
	tx := &Tx{s: s, sn: sn, base: base, prev: -1, parent: parent,
		cp:        &Checkpoint{Format: checkpointFormat, Version: Version, Step: step, Tags: tags, Created: time.Now().UTC().Format(time.RFC3339Nano), Files: []File{}},
		converted: map[string]Region{}, tails: map[*Region]int{}, keyframes: map[string]Object{},
		rawFiles: map[string]File{}, paths: map[string]bool{}}
	if !base {
		tx.prev = sn.latest()
	}
	tx.index()
	return tx, nil
}

// index builds the lookups Add needs from the committed records near the
// newest: the base, and the checkpoints a chain into the newest can come
// from (within K of it). Reading only those keeps an add's cost
// independent of the store's history. A record that cannot be read is
// left out: nothing is coded against what it holds.
func (tx *Tx) index() {
	visit := func(c *Checkpoint) {
		for _, f := range c.Files {
			if f.Layout == LayoutRaw && len(f.Regions) == 0 && f.Digest == "" {
				tx.rawFiles[f.SHA256] = f
			}
			for i := range f.Regions {
				r := &f.Regions[i]
				if r.Ref == nil && r.MaxError == 0 {
					tx.keyframes[contentKey(r.SHA256, r.DType, r.Shape)] = r.Object
				}
			}
		}
	}
	if tx.sn.m.Base != nil {
		if c, err := tx.sn.record(-1); err == nil {
			visit(c)
		}
	}
	if pv, ci := tx.parentCheckpoint(); pv != nil {
		if c, err := pv.record(ci); err == nil {
			visit(c) // a fine-tune's frozen tensors are its parent's
		}
	}
	last := tx.sn.latest()
	for ci := max(0, last-tx.sn.m.Config.KeyframeInterval-1); ci <= last; ci++ {
		if c, err := tx.sn.record(ci); err == nil {
			visit(c)
		}
	}
	tx.countTails(last - tx.sn.m.Config.KeyframeInterval - 1)
}

// countTails counts, into tails, the deltas that chain into each keyframe
// of this run from checkpoint from on, and from other runs (childTails).
// A chain is at most K frames, so checkpoints from K before the one being
// re-coded are all that can reach it.
func (tx *Tx) countTails(from int) {
	tx.childTails()
	for ci := max(0, from); ci <= tx.sn.latest(); ci++ {
		c, err := tx.sn.record(ci)
		if err != nil {
			continue
		}
		for _, f := range c.Files {
			for j := range f.Regions {
				r := &f.Regions[j]
				if r.Ref == nil || r.MaxError != 0 {
					continue
				}
				ch, err := tx.sn.chain(r)
				if err != nil {
					continue // damage: decoding it fails, and verify names it
				}
				if key := ch[len(ch)-1]; key != nil {
					tx.tails[key] = max(tx.tails[key], len(ch)-1)
				}
			}
		}
	}
}

func (tx *Tx) claim(rel string) error {
	if tx.done {
		return fmt.Errorf("%w: the checkpoint was already committed or aborted", errs.Invalid)
	}
	if err := validPath(rel); err != nil {
		return fmt.Errorf("%w: %v", errs.Invalid, err)
	}
	if tx.paths[rel] {
		return fmt.Errorf("%w: %q added twice", errs.Invalid, rel)
	}
	tx.paths[rel] = true
	return nil
}

// span is a piece of a file: a region (reg != nil) or verbatim bytes.
type planned struct {
	reg   *Region
	dt    dtype.DType
	begin uint64
	end   uint64
}

// AddFile adds the file at src as rel. hints, for a torch file, say what
// its pickles hold (which only Python reads; see layout.Hints); note says
// why a file that looks like a container is stored whole.
func (tx *Tx) AddFile(rel, src string, hints *layout.Hints, note string) error {
	if err := tx.claim(rel); err != nil {
		return err
	}
	// A stream (a pipe, a FIFO) is spooled first; the caller's stop is
	// asked while it is, since a stream need not end. A device is refused:
	// /dev/zero would be spooled until the disk is full.
	in, err := mapped.OpenWith(src, mapped.Options{SpoolDir: tx.s.path("tmp"), Stop: tx.Stop, NoDevices: true})
	if err != nil {
		return err
	}
	defer in.Release()
	mode := uint32(0o644)
	if in.HasPerm {
		mode = uint32(in.Perm & 0o777)
	}
	return mapped.Reading(src, func() error { return tx.addMapped(rel, in.Data, mode, hints, note) })
}

func (tx *Tx) addMapped(rel string, data []byte, mode uint32, hints *layout.Hints, note string) error {
	f := File{Path: rel, Mode: mode, Size: uint64(len(data)), Layout: LayoutRaw, Note: note, Regions: []Region{}}
	layout, regions, why := planFile(data, hints)
	if why != "" && f.Note == "" {
		f.Note = why
	}
	if layout == LayoutRaw {
		f.SHA256 = hashMapped(data, nil)
		if old, ok := tx.rawFiles[f.SHA256]; ok && old.Size == f.Size {
			f.Skeleton = old.Skeleton
			tx.cp.Files = append(tx.cp.Files, f)
			tx.advance(f.Size)
			return nil
		}
		return tx.store(&f, mappedFile(data), regions, nil)
	}
	f.Layout = layout
	if par.Threads(tx.s.threads) < 2 {
		f.SHA256 = hashMapped(data, nil)
		return tx.store(&f, mappedFile(data), regions, nil)
	}
	// The file's sha256 is one sequential pass that nothing needs before
	// the file's record: it runs beside the coding, on the core that the
	// coding's serial parts (a large tensor's own hashes, the skeleton's
	// zstd, the writes) leave idle (bench/PROFILE.md, "Add and resume").
	var quit atomic.Bool
	hashed := par.Go(func() error {
		f.SHA256 = hashMapped(data, &quit)
		return nil
	})
	err := tx.store(&f, mappedFile(data), regions, hashed)
	if err != nil {
		quit.Store(true) // the record will not be written: stop hashing
	}
	if herr := hashed(); err == nil {
		err = herr
	}
	return err
}

// hashMapped is the sha256 of a mapped file, read in pieces whose pages are
// released as it goes: hashing a file must not make all of it resident.
// quit, if not nil, stops it early (its result is then of no use).
func hashMapped(data []byte, quit *atomic.Bool) string {
	h := sha256.New()
	const piece = 16 << 20
	for b := 0; b < len(data) && (quit == nil || !quit.Load()); b += piece {
		e := min(b+piece, len(data))
		h.Write(data[b:e])
		release(data[b:e])
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Tensor is a tensor of a state dict given from memory.
type Tensor struct {
	Name   string
	DType  dtype.DType
	Shape  []uint64
	Offset uint64 // where it lies in the state dict's file (see AddStateDict)
	Data   []byte
}

// AddStateDict adds a state dict given from memory as file rel, laid out
// in the state-dict layout (core/statedict, docs/FORMAT.md §10): meta and
// the tensors' names, dtypes and shapes make the header; each tensor's
// bytes are its Data, read in place (never copied). Offset is ignored.
func (tx *Tx) AddStateDict(rel string, meta statedict.Meta, tensors []Tensor) error {
	if err := tx.claim(rel); err != nil {
		return err
	}
	entries := make([]statedict.Tensor, len(tensors))
	for i := range tensors {
		t := &tensors[i]
		if !t.DType.Valid() || len(t.Shape) > frame.MaxNDim {
			return fmt.Errorf("%w: tensor %q: dtype code %d, %d dims", errs.Invalid, t.Name, uint8(t.DType), len(t.Shape))
		}
		entries[i] = statedict.Tensor{Name: t.Name, DType: t.DType.String(), Shape: t.Shape}
	}
	header, laid, err := statedict.Build(meta, entries)
	if err != nil {
		return err
	}
	base := uint64(len(header))
	pos := base
	regions := make([]planned, 0, len(tensors))
	for i := range tensors {
		t, e := &tensors[i], laid[i]
		if e.NBytes != uint64(len(t.Data)) {
			return fmt.Errorf("%w: tensor %q: shape %v of %s is not %d bytes", errs.Invalid, t.Name, t.Shape, t.DType, len(t.Data))
		}
		t.Offset = base + e.Offset
		pos = t.Offset + e.NBytes
		regions = append(regions, planned{
			reg: &Region{Name: t.Name, Offset: t.Offset, Size: e.NBytes, DType: e.DType, Shape: append([]uint64{}, t.Shape...)},
			dt:  t.DType, begin: t.Offset, end: pos})
	}
	v := &virtualFile{size: pos, pieces: make([]piece, 0, len(tensors)+1)}
	v.add(0, header)
	for i := range tensors {
		v.add(tensors[i].Offset, tensors[i].Data)
	}
	// Its bytes exist only as the store lays them out: its sha256 is the
	// regions digest, so each tensor byte is hashed once (its region's).
	f := File{Path: rel, Mode: 0o644, Size: pos, Layout: LayoutStateDict, Regions: []Region{}, Digest: DigestRegions}
	return tx.store(&f, v, keepLarge(regions), nil)
}

// source is a file's bytes as store reads them: a mapped file, or a state
// dict's virtual file. bytes(begin, end) of a region is its tensor's own
// memory, never a copy.
type source interface {
	bytes(begin, end uint64) []byte
	done(begin, end uint64)
}

type mappedFile []byte

func (m mappedFile) bytes(begin, end uint64) []byte { return m[begin:end] }

// done: the pages of a region already stored leave this process's memory
// (they stay in the page cache), so a file larger than RAM is fine.
func (m mappedFile) done(begin, end uint64) { release(m[begin:end]) }

// virtualFile is a state dict's file without building it: the header and
// each tensor where they lie, zeros between. Only the gaps (the header,
// padding and tensors too small for an object) are ever copied.
type virtualFile struct {
	size   uint64
	pieces []piece // ascending
}

type piece struct {
	off uint64
	b   []byte
}

func (v *virtualFile) add(off uint64, b []byte) {
	if len(b) > 0 {
		v.pieces = append(v.pieces, piece{off, b})
	}
}

func (v *virtualFile) bytes(begin, end uint64) []byte {
	for _, p := range v.pieces {
		off, b := p.off, p.b
		if off <= begin && end <= off+uint64(len(b)) {
			return b[begin-off : end-off]
		}
	}
	out := make([]byte, end-begin)
	for _, p := range v.pieces {
		off, b := p.off, p.b
		lo, hi := max(off, begin), min(off+uint64(len(b)), end)
		if lo < hi {
			copy(out[lo-begin:], b[lo-off:hi-off])
		}
	}
	return out
}

func (v *virtualFile) done(begin, end uint64) {}

func keepLarge(ps []planned) []planned {
	out := ps[:0]
	for _, p := range ps {
		if p.end-p.begin >= MinRegion {
			out = append(out, p)
		}
	}
	return out
}

// planFile finds the typed regions of a file (core/layout), keeping those
// large enough for an object of their own.
func planFile(data []byte, hints *layout.Hints) (string, []planned, string) {
	kind, regs, why := layout.Plan(data, hints)
	ps := make([]planned, 0, len(regs))
	for _, r := range regs {
		ps = append(ps, planned{reg: &Region{Name: r.Name, Offset: r.Begin, Size: r.End - r.Begin, DType: r.DType.String(), Shape: r.Shape},
			dt: r.DType, begin: r.Begin, end: r.End})
	}
	return string(kind), keepLarge(ps), why
}

func (tx *Tx) advance(n uint64) {
	tx.doneIn += n
	if tx.Progress != nil {
		tx.Progress(tx.doneIn)
	}
}

// store codes a file's regions and skeleton. hashed, if not nil, waits for
// f.SHA256, which a goroutine beside store is computing: store reads it
// only after hashed returns.
func (tx *Tx) store(f *File, data source, ps []planned, hashed func() error) error {
	skel, err := tx.s.newObject()
	if err != nil {
		return err
	}
	defer skel.abort()
	// The object starts with the verbatim length, so that a reader can
	// check a record's file size against it before it reads anything.
	verbatim := f.Size
	for _, p := range ps {
		verbatim -= p.end - p.begin
	}
	if _, err := skel.Write(binary.LittleEndian.AppendUint64(nil, verbatim)); err != nil {
		return ioErr(tx.s.dir, err)
	}
	zw, err := zstd.NewWriter(skel, zstd.WithEncoderConcurrency(1), zstd.WithEncoderCRC(true), zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(skeletonWindow))
	if err != nil {
		return fmt.Errorf("%w: zstd: %v", errs.Internal, err)
	}
	// A regions digest hashes the verbatim bytes as they are stored.
	var vh hash.Hash
	if f.Digest == DigestRegions {
		vh = sha256.New()
	}
	stored := func(b []byte) error {
		if vh != nil {
			vh.Write(b)
		}
		_, err := zw.Write(b)
		return err
	}

	pos := uint64(0)
	var pre []precoded // the batch of small tensors coded side by side, from ps[batch]
	batch, batchEnd := 0, 0
	for i, p := range ps {
		if tx.Stop != nil {
			if err := tx.Stop(); err != nil {
				return err
			}
		}
		if i >= batchEnd {
			batch, batchEnd = i, tx.smallBatch(ps, i)
			pre = pre[:0]
			if batchEnd > i {
				if pre, err = tx.precode(data, ps[i:batchEnd], pre); err != nil {
					return fmt.Errorf("%s: %w", f.Path, err)
				}
			}
		}
		var pr *precoded
		if i < batchEnd {
			pr = &pre[i-batch]
		}
		if err := stored(data.bytes(pos, p.begin)); err != nil {
			return ioErr(tx.s.dir, err)
		}
		r := *p.reg
		if err := tx.region(f.Path, &r, p.dt, data.bytes(p.begin, p.end), pr); err != nil {
			return fmt.Errorf("%s: tensor %q: %w", f.Path, r.Name, err)
		}
		data.done(p.begin, p.end)
		f.Regions = append(f.Regions, r)
		tx.advance(p.begin - pos + r.Size)
		pos = p.end
	}
	if err := stored(data.bytes(pos, f.Size)); err != nil {
		return ioErr(tx.s.dir, err)
	}
	if err := zw.Close(); err != nil {
		return ioErr(tx.s.dir, err)
	}
	tx.advance(f.Size - pos)
	f.Skeleton, err = skel.commit()
	if err != nil {
		return err
	}
	if vh != nil {
		f.SHA256 = fileDigest(f.Size, vh.Sum(nil), regionSums(f))
	}
	if hashed != nil {
		if err := hashed(); err != nil {
			return err
		}
	}
	if f.Layout == LayoutRaw {
		tx.rawFiles[f.SHA256] = *f
	}
	tx.cp.Files = append(tx.cp.Files, *f)
	return nil
}

// region stores one tensor as a keyframe, then turns the previous newest
// checkpoint's keyframe of the same tensor into a delta (convert).
func (tx *Tx) region(file string, r *Region, d dtype.DType, raw []byte, pre *precoded) error {
	if pre != nil {
		r.SHA256, r.CRC32C = pre.sha, pre.crc
	} else {
		sum := sha256.Sum256(raw)
		r.SHA256 = hex.EncodeToString(sum[:])
		r.CRC32C = crcOf(raw)
	}
	key := contentKey(r.SHA256, r.DType, r.Shape)
	if obj, ok := tx.keyframes[key]; ok {
		r.Object = obj
	} else if pre != nil && pre.coded {
		r.Object = pre.obj
		tx.keyframes[key] = pre.obj
	} else {
		obj, err := tx.keyframe(raw, d, r.Shape)
		if err != nil {
			return err
		}
		r.Object = obj
		tx.keyframes[key] = obj
	}
	if tx.prev < 0 {
		if tx.parent != nil && !tx.base {
			return tx.againstParent(file, r, d, raw)
		}
		return nil
	}
	if tx.s.recode == RecodeBackground && !tx.part {
		return nil // the demotion after the commit re-codes prev (demote.go)
	}
	return tx.convert(file, r, d, raw)
}

func (tx *Tx) keyframe(raw []byte, d dtype.DType, shape []uint64) (Object, error) {
	defer tx.bufA.drop()
	coded, err := tx.s.encodeKeyframe(&tx.bufA, raw, d, shape, tx.s.threads, tx.Stop)
	if err != nil {
		return Object{}, err
	}
	return tx.s.putBytes(coded)
}

// lossyThreshold is the bound the store's lossy rules give a tensor; 0 for
// lossless (the default, and always for non-float dtypes).
func lossyThreshold(cfg *Config, file, region string, d dtype.DType) float64 {
	if !delta.CanQuantize(d) {
		return 0
	}
	for _, rule := range cfg.Lossy {
		if glob(rule.Pattern, file+":"+region) || glob(rule.Pattern, region) {
			return rule.Threshold
		}
	}
	return 0
}

// convert re-codes the previous newest checkpoint's keyframe of this
// tensor as a delta, so that the store keeps the newest checkpoint whole
// (a resume decodes one frame per tensor) and older ones as reverse
// deltas, as git packs do.
//
//   - reference "previous", lossless: against this checkpoint's tensor, if
//     the chains through it stay within K frames;
//   - reference "base": against the base's tensor;
//   - lossy: against the nearest older keyframe within K checkpoints, never
//     against another lossy frame, so errors never add up along a chain.
func (tx *Tx) convert(file string, r *Region, d dtype.DType, raw []byte) error {
	key := regionKey(file, r.Name)
	old := tx.sn.region(tx.prev, key)
	if old == nil || old.Ref != nil || old.MaxError != 0 || old.DType != r.DType || old.Size != r.Size || old.SHA256 == r.SHA256 {
		return nil
	}
	cfg := &tx.sn.m.Config
	threshold := lossyThreshold(cfg, file, r.Name, d)
	var ref *Ref
	var refRaw []byte
	switch {
	case tx.tails[old] > 0 && (cfg.Reference == RefBase || threshold > 0):
		return nil // others decode through it: it stays an exact keyframe
	case cfg.Reference == RefBase:
		br := tx.sn.region(-1, key)
		if br == nil {
			br = tx.baseByName(r.Name)
		}
		if br == nil || br.DType != r.DType || br.Size != r.Size || br.Ref != nil {
			return nil
		}
		ref = &Ref{Base: true, File: tx.baseFile(br), Region: br.Name}
	case threshold > 0:
		ci, kr := tx.olderKeyframe(key, old)
		if kr == nil {
			return nil
		}
		ref = &Ref{Step: tx.sn.m.Checkpoints[ci].Step, File: file, Region: kr.Name}
	default:
		// Demote assumes r is a keyframe; a demotion that catches up on an
		// older checkpoint may find r already a delta, whose own frames
		// the chains through old then walk too.
		below := tx.tails[old]
		if r.Ref != nil {
			ch, err := tx.sn.chain(r)
			if err != nil {
				return nil // damage: old stays a keyframe, and verify names r
			}
			below += len(ch) - 1
		}
		if !cfg.Policy().Demote(below) {
			return nil // old stays a keyframe: the chains below it are K long
		}
		ref = &Ref{Step: tx.cp.Step, File: file, Region: r.Name}
		refRaw = raw
	}
	if refRaw == nil {
		target, _, err := tx.sn.resolve(ref)
		if err != nil {
			return err
		}
		if refRaw, err = tx.bufC.get(target.Size); err != nil {
			return err
		}
		defer tx.bufC.drop()
		if err := tx.s.decodeRegion(tx.sn, target, refRaw, tx.s.threads, &tx.bufB); err != nil {
			return err
		}
	}
	oldRaw, err := tx.bufB.get(old.Size)
	if err != nil {
		return err
	}
	defer tx.bufB.drop()
	// Checked against its sha256: a damaged copy must not be baked into
	// the delta that replaces it.
	if err := tx.s.decodeRegion(tx.sn, old, oldRaw, tx.s.threads, &tx.bufC); err != nil {
		return fmt.Errorf("the previous checkpoint's copy: %w", err)
	}
	defer tx.bufA.drop()
	coded, res, err := tx.s.encodeDelta(&tx.bufA, oldRaw, refRaw, d, old.Shape, threshold)
	if err != nil {
		return err
	}
	if uint64(res.Len) >= old.Stored {
		return nil // the keyframe is smaller: keep it
	}
	obj, err := tx.s.putBytes(coded)
	if err != nil {
		return err
	}
	nr := *old
	nr.Object, nr.Ref, nr.MaxError = obj, ref, res.MaxErr
	if nr.CRC32C, err = frameCRC(coded); err != nil { // the reconstruction's, when lossy
		return err
	}
	nr.Changed = 0
	if n := old.Size / uint64(d.Width()); n > 0 {
		nr.Changed = float64(res.Changed) / float64(n)
	}
	tx.converted[key] = nr
	return nil
}

func (tx *Tx) baseByName(name string) *Region {
	base, err := tx.sn.record(-1)
	if err != nil {
		return nil
	}
	for _, f := range base.Files {
		for i := range f.Regions {
			if f.Regions[i].Name == name {
				return &f.Regions[i]
			}
		}
	}
	return nil
}

func (tx *Tx) baseFile(r *Region) string {
	base, err := tx.sn.record(-1)
	if err != nil {
		return ""
	}
	for _, f := range base.Files {
		for i := range f.Regions {
			if &f.Regions[i] == r {
				return f.Path
			}
		}
	}
	return ""
}

// olderKeyframe is the newest exact keyframe of key before prev, within K
// checkpoints of it.
func (tx *Tx) olderKeyframe(key string, like *Region) (int, *Region) {
	k := tx.sn.m.Config.KeyframeInterval
	for ci := tx.prev - 1; ci >= 0 && tx.prev-ci < k; ci-- {
		r := tx.sn.region(ci, key)
		if r == nil || r.DType != like.DType || r.Size != like.Size {
			return 0, nil
		}
		if r.Ref == nil && r.MaxError == 0 {
			return ci, r
		}
	}
	return 0, nil
}

// Commit makes the checkpoint durable and visible. A refused or failed
// commit removes the objects it wrote (when no reader holds the store;
// otherwise the next writer does).
func (tx *Tx) Commit() (*Checkpoint, error) {
	c, err := tx.commit()
	if err != nil {
		_, _ = tx.s.cleanup()
	}
	return c, err
}

func (tx *Tx) commit() (*Checkpoint, error) {
	if tx.part {
		return nil, fmt.Errorf("%w: a part is finished (Finish), and committed by the coordinator (CommitParts)", errs.Invalid)
	}
	if tx.done {
		return nil, fmt.Errorf("%w: the checkpoint was already committed or aborted", errs.Invalid)
	}
	tx.done = true
	tx.freeBuffers()
	s, sn := tx.s, tx.sn
	m := sn.merged(append([]CheckpointRef{}, sn.m.Checkpoints...), tx.parent)
	m.Config = s.cfg
	if tx.base {
		src := tx.sourceHash()
		if sn.m.Base != nil {
			old, err := sn.record(-1)
			if err != nil {
				return nil, err
			}
			if old.Source == src {
				return old, nil // the same base again: stored once
			}
			return nil, fmt.Errorf("%w: the store already has a different base", errs.Invalid)
		}
		if len(sn.m.Checkpoints) > 0 {
			return nil, fmt.Errorf("%w: a base must be added before the first checkpoint", errs.Invalid)
		}
		tx.cp.Source = src
		obj, err := tx.putRecord(tx.cp)
		if err != nil {
			return nil, err
		}
		m.Base = &CheckpointRef{Object: obj}
	} else {
		if err := tx.replacePrev(&m); err != nil {
			return nil, err
		}
		sort.Slice(tx.cp.Files, func(i, j int) bool { return tx.cp.Files[i].Path < tx.cp.Files[j].Path })
		obj, err := tx.putRecord(tx.cp)
		if err != nil {
			return nil, err
		}
		m = sn.merged(append(runCheckpoints(&m, sn.run), CheckpointRef{Step: tx.cp.Step, Object: obj, Holder: tx.holder}), tx.parent)
		m.Config = s.cfg
	}
	if err := s.publish(&m); err != nil {
		return nil, err
	}
	_, _ = s.tidy() // best effort: a reader may hold old objects; the next commit or open retries
	if !tx.base && !tx.parts && s.recode == RecodeBackground {
		s.startDemotion(sn.run)
	}
	return tx.cp, nil
}

// replacePrev puts into m, whose run is tx's, a new record of checkpoint
// prev with its converted regions, if any. The record is a new object, so
// the generation that names it replaces the old one atomically.
func (tx *Tx) replacePrev(m *Manifest) error {
	if len(tx.converted) == 0 {
		return nil
	}
	old, err := tx.sn.record(tx.prev)
	if err != nil {
		return err
	}
	prev := *old
	prev.Files = append([]File{}, prev.Files...)
	for i := range prev.Files {
		f := &prev.Files[i]
		f.Regions = append([]Region{}, f.Regions...)
		for j := range f.Regions {
			if nr, ok := tx.converted[regionKey(f.Path, f.Regions[j].Name)]; ok {
				f.Regions[j] = nr
			}
		}
	}
	obj, err := tx.putRecord(&prev)
	if err != nil {
		return err
	}
	cps := runCheckpoints(m, tx.sn.run)
	cps[tx.prev] = CheckpointRef{Step: prev.Step, Object: obj, Holder: cps[tx.prev].Holder}
	return nil
}

func (tx *Tx) sourceHash() string {
	h := sha256.New()
	files := append([]File{}, tx.cp.Files...)
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	for _, f := range files {
		fmt.Fprintf(h, "%s\x00%s\n", f.Path, f.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func (tx *Tx) putRecord(c *Checkpoint) (string, error) {
	c.stamp()
	b, err := json.MarshalIndent(c, "", " ")
	if err != nil {
		return "", fmt.Errorf("%w: %v", errs.Internal, err)
	}
	if len(b) > maxCheckpointBytes {
		return "", fmt.Errorf("%w: the checkpoint's record would be %d bytes (max %d)", errs.Invalid, len(b), maxCheckpointBytes)
	}
	obj, err := tx.s.putBytes(b)
	if err != nil {
		return "", err
	}
	// Every checkpoint decodes through its record, and older ones through
	// their neighbours' too: a second copy keeps one damaged file from
	// costing any checkpoint (docs/FORMAT.md §11.2).
	return obj.Object, tx.s.putAs(obj.Object, obj.Object+copySuffix, b, false)
}

// publish makes every object durable, then writes the next generation.
func (s *Store) publish(m *Manifest) error {
	if err := s.syncAll(); err != nil {
		return err
	}
	m.Version = Version
	if len(m.Runs) > 0 {
		m.Version = ManifestVersionHolders
	}
	for _, c := range m.Checkpoints {
		if c.Holder != "" {
			m.Version = ManifestVersionHolders
		}
	}
	m.Generation = s.gen + 1
	if gens, err := s.generations(); err != nil {
		return err
	} else if len(gens) > 0 && gens[0] >= m.Generation {
		m.Generation = gens[0] + 1
	}
	if m.Generation > maxGeneration || m.Generation == 0 {
		return fmt.Errorf("%w: %s: no manifest generation comes after %d", errs.Invalid, s.dir, m.Generation-1)
	}
	b, err := json.MarshalIndent(m, "", " ")
	if err != nil {
		return fmt.Errorf("%w: %v", errs.Internal, err)
	}
	b = append(b, '\n')
	name := manifestName(m.Generation)
	if s.remote != nil {
		// On a remote store the commit is the remote's conditional PUT;
		// the cache follows it (a cache that misses a generation is
		// brought up to date at the next open: the remote is the truth).
		// Without an index (tidy then sweeps), what this commit drops is
		// told from the whole generation before and after it.
		var before map[string]bool
		if s.index.Load() == nil {
			before = s.liveNow()
		}
		if err := s.commitRemote(name, b); err != nil {
			return err
		}
		s.gen = m.Generation
		_ = writeDurable(s.tmp, s.manifests, name, b, true)
		_ = writeDurable(s.tmp, s.manifests, name+copySuffix, b, true)
		s.afterCommitRemote(name, b, m.Generation)
		s.noteDropped(before)
		return nil
	}
	// The link of the first copy is the commit; the second, a file of its
	// own, only follows a committed generation (so a reader may take
	// either), and serves when the first is damaged.
	if err := writeDurable(s.tmp, s.manifests, name, b, true); err != nil {
		return err
	}
	s.gen = m.Generation
	// Committed: a copy that cannot be written now (a full disk) is not a
	// failed commit. Verify --repair writes it.
	_ = writeDurable(s.tmp, s.manifests, name+copySuffix, b, true)
	return nil
}

// Abort drops the checkpoint; its objects go at the next cleanup.
func (tx *Tx) Abort() {
	if !tx.done {
		tx.done = true
		tx.freeBuffers()
		tx.release()
		if !tx.part {
			_, _ = tx.s.cleanup()
		}
	}
}

func (tx *Tx) freeBuffers() {
	tx.bufA.free()
	tx.bufB.free()
	tx.bufC.free()
}

// glob matches * (any run of characters, dots and slashes included) and ?
// (one character), as fnmatch does on tensor names.
func glob(pattern, s string) bool {
	p, n := []rune(pattern), []rune(s)
	var pi, ni, star, mark = 0, 0, -1, 0
	for ni < len(n) {
		switch {
		case pi < len(p) && (p[pi] == '?' || p[pi] == n[ni]):
			pi, ni = pi+1, ni+1
		case pi < len(p) && p[pi] == '*':
			star, mark = pi, ni
			pi++
		case star >= 0:
			pi, mark = star+1, mark+1
			ni = mark
		default:
			return false
		}
	}
	for pi < len(p) && p[pi] == '*' {
		pi++
	}
	return pi == len(p)
}

// skeletonWindow is the zstd window of skeleton objects: a decoder needs no
// more memory than this, whatever a file's size.
const skeletonWindow = 8 << 20
