package store

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/mapped"
)

// decodeKeyframe decodes a keyframe region into dst.
// decodeKeyframe decodes r's keyframe into dst and returns the CRC32C of
// what it decoded (checked chunk by chunk on the way).
func (s *Store) decodeKeyframe(r *Region, dst []byte, threads int) (uint32, error) {
	o, err := s.openFrame(r.Object.Object, r.Stored, fmt.Sprintf("tensor %q", r.Name))
	if err != nil {
		return 0, err
	}
	defer o.release()
	var crc uint32
	return crc, mapped.Reading(s.objectPath(r.Object.Object), func() error {
		h, err := frame.Decode(o.Data, dst, threads)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", r.Name, err)
		}
		if h.Delta != nil || h.DType.String() != r.DType || h.RawSize != r.Size {
			return fmt.Errorf("%w: tensor %q: its object holds a %s frame of %d bytes, not the %s keyframe of %d bytes the record says", errs.Corrupt, r.Name, h.DType, h.RawSize, r.DType, r.Size)
		}
		crc = h.RawCRC()
		return nil
	})
}

// checkFrame reads the header of r's keyframe (not the payload, and
// without hashing: decoding does that) and checks that it holds r's dtype
// and size, so that no buffer is sized from a record that lies.
func (s *Store) checkFrame(r *Region) error {
	o, err := s.openFrame(r.Object.Object, r.Stored, fmt.Sprintf("tensor %q", r.Name))
	if err != nil {
		return err
	}
	defer o.release()
	return mapped.Reading(s.objectPath(r.Object.Object), func() error {
		h, err := frame.ParseAny(o.Data)
		return frameIsRegion(h, err, r)
	})
}

// frameIsRegion checks a parsed frame header (or its parse error) against
// what the record says region r holds.
func frameIsRegion(h *frame.Header, err error, r *Region) error {
	if err != nil {
		return fmt.Errorf("tensor %q: %w", r.Name, err)
	}
	if h.DType.String() != r.DType || h.RawSize != r.Size {
		return fmt.Errorf("%w: tensor %q: its object holds a %s frame of %d bytes, not the %s of %d bytes the record says", errs.Corrupt, r.Name, h.DType, h.RawSize, r.DType, r.Size)
	}
	return nil
}

// memLimit is the most bytes one decode may hold in memory.
func (s *Store) memLimit() uint64 {
	if s.limits.Memory != 0 {
		return min(s.limits.Memory, machineMemory())
	}
	return machineMemory()
}

// fits refuses a decode of r that would hold buffers of r's size in
// memory beyond the limit, before anything is allocated: a record is
// untrusted, and a few bytes of run-length frame can claim gigabytes.
func (s *Store) fits(r *Region, buffers uint64) error {
	hi, need := bits.Mul64(r.Size, buffers)
	if limit := s.memLimit(); hi != 0 || need > limit {
		return fmt.Errorf("%w: tensor %q needs %d bytes of memory to decode (%d buffer(s) of %d), more than the limit of %d (max_output_bytes or TPDE_MAX_OUTPUT, else the memory this process may use)",
			errs.Limit, r.Name, need, buffers, r.Size, limit)
	}
	return nil
}

// decodeRegion decodes r into dst (r.Size bytes), walking its chain from
// the keyframe up, and checks that it decodes to the bytes that were
// added: a record that names the wrong object must not return wrong data.
// A region that records its CRC32C is checked against the CRC its last
// frame's chunk table combines to, which decoding verified chunk by chunk
// (no second pass over the bytes); an older record's region is hashed
// (sha256). Two buffers serve the whole chain: dst and *spare take turns
// as reference and output, so a chain of K frames needs no more memory
// than a chain of two.
func (s *Store) decodeRegion(sn *snapshot, r *Region, dst []byte, threads int, spare *buffer) error {
	crc, err := s.decodeChain(sn, r, dst, threads, spare)
	if err != nil {
		return err
	}
	switch {
	case r.CRC32C != nil:
		if crc != *r.CRC32C {
			return fmt.Errorf("%w: tensor %q decodes to bytes other than were added (CRC32C %08x, not %08x)", errs.Corrupt, r.Name, crc, *r.CRC32C)
		}
	case r.MaxError == 0:
		if got := hashHex(dst); got != r.SHA256 {
			return fmt.Errorf("%w: tensor %q decodes to bytes other than were added (sha256 %s, not %s)", errs.Corrupt, r.Name, got, r.SHA256)
		}
	}
	return nil
}

// decodeChain decodes r into dst and returns the CRC32C of the bytes it
// decoded, combined from its last frame's chunk table.
func (s *Store) decodeChain(sn *snapshot, r *Region, dst []byte, threads int, spare *buffer) (uint32, error) {
	ch, err := sn.chain(r)
	if err != nil {
		return 0, fmt.Errorf("%w: tensor %q: %v", errs.Corrupt, r.Name, err)
	}
	if uint64(len(dst)) != r.Size {
		return 0, fmt.Errorf("%w: tensor %q is %d bytes, %d given", errs.Invalid, r.Name, r.Size, len(dst))
	}
	if err := s.fits(r, uint64(min(len(ch), 2))); err != nil {
		return 0, err
	}
	if len(ch) == 1 {
		return s.decodeKeyframe(r, dst, threads)
	}
	if err := s.checkFrame(ch[len(ch)-1]); err != nil {
		return 0, err
	}
	other, err := spare.get(r.Size)
	if err != nil {
		return 0, err
	}
	defer spare.drop()
	// Pick the first buffer so that the last frame lands in dst.
	bufs := [2][]byte{dst, other}
	cur := (len(ch) - 1) % 2
	crc, err := s.decodeKeyframe(ch[len(ch)-1], bufs[cur], threads)
	if err != nil {
		return 0, err
	}
	for i := len(ch) - 2; i >= 0; i-- {
		d := ch[i]
		o, err := s.openFrame(d.Object.Object, d.Stored, fmt.Sprintf("tensor %q", d.Name))
		if err != nil {
			return 0, err
		}
		err = mapped.Reading(s.objectPath(d.Object.Object), func() error {
			h, err := frame.DecodeDelta(o.Data, bufs[cur], nil, bufs[1-cur], threads)
			if errors.Is(err, errs.ReferenceMismatch) {
				// The store chose the reference: a mismatch is damage.
				return fmt.Errorf("%w: the region it is coded against is not the one it was coded against (%v)", errs.Corrupt, err)
			}
			if err == nil && (h.DType.String() != d.DType || h.RawSize != d.Size) {
				err = fmt.Errorf("%w: its object holds a %s frame of %d bytes, not %s of %d", errs.Corrupt, h.DType, h.RawSize, d.DType, d.Size)
			}
			if err == nil {
				crc = h.RawCRC()
			}
			return err
		})
		o.release()
		if err != nil {
			return 0, fmt.Errorf("tensor %q: %w", d.Name, err)
		}
		cur = 1 - cur
	}
	return crc, nil
}

// Reader reads checkpoints of one snapshot: what a reader sees does not
// change while a writer commits beside it.
type Reader struct {
	s       *Store
	sn      *snapshot
	unlock  func()
	threads int
	spare   buffer
	tmp     buffer
	// wholeFile: the walk under way is checked against the file's sha256
	// (of every byte, or its regions digest made of each region's sha256),
	// so its regions need no check of their own.
	wholeFile bool
	// decoded: regions a ReadRange decoded before its walk.
	decoded map[*Region]bool
	// Progress, if set, is told how many bytes of how many Restore or
	// RestoreFile has written, as it writes them (from the calling
	// goroutine).
	Progress func(done, total uint64)
	written  uint64
	toWrite  uint64
	skel     struct {
		obj  string
		data []byte
	}
}

// Reader opens the newest committed state for reading. Close it when done:
// until then the writer keeps every object it uses.
func (s *Store) Reader() (*Reader, error) {
	unlock, err := s.readLock()
	if err != nil {
		return nil, err
	}
	sn, err := s.snapshot()
	if err != nil {
		unlock()
		return nil, err
	}
	return &Reader{s: s, sn: sn, unlock: unlock, threads: s.threads}, nil
}

// Close releases the snapshot.
func (rd *Reader) Close() {
	if rd.unlock != nil {
		rd.unlock()
		rd.unlock = nil
	}
	rd.spare.free()
	rd.tmp.free()
}

// Steps lists the checkpoints, oldest first.
func (rd *Reader) Steps() []int64 {
	out := make([]int64, len(rd.sn.m.Checkpoints))
	for i, c := range rd.sn.m.Checkpoints {
		out[i] = c.Step
	}
	return out
}

// Checkpoint returns a checkpoint's record; the newest when latest.
func (rd *Reader) Checkpoint(step int64, latest bool) (*Checkpoint, error) {
	if latest {
		i := rd.sn.latest()
		if i < 0 {
			return nil, fmt.Errorf("%w: the store holds no checkpoint", errs.Invalid)
		}
		return rd.sn.record(i)
	}
	c, _, err := rd.sn.checkpoint(step)
	return c, err
}

// Manifest is the snapshot's manifest.
func (rd *Reader) Manifest() *Manifest { return rd.sn.m }

// Base is the base's record, nil if the store has none.
func (rd *Reader) Base() (*Checkpoint, error) {
	if rd.sn.m.Base == nil {
		return nil, nil
	}
	return rd.sn.record(-1)
}

// RecordObject is the name of the object that holds c's record (the base's
// when base).
func (rd *Reader) RecordObject(c *Checkpoint, base bool) string {
	if base {
		if rd.sn.m.Base != nil {
			return rd.sn.m.Base.Object
		}
		return ""
	}
	if i, ok := rd.sn.byStep[c.Step]; ok {
		return rd.sn.m.Checkpoints[i].Object
	}
	return ""
}

// Chains is, for each file of c and each of its regions, how many frames
// the region's decode walks, 0 where its chain cannot be followed; and the
// first reason one cannot ("" if every chain resolves). A record this user
// may not read is no reason to call c damaged: that is the error.
func (rd *Reader) Chains(c *Checkpoint) ([][]int, string, error) {
	out := make([][]int, len(c.Files))
	problem := ""
	for i := range c.Files {
		f := &c.Files[i]
		out[i] = make([]int, len(f.Regions))
		for j := range f.Regions {
			ch, err := rd.sn.chain(&f.Regions[j])
			if denied(err) {
				return nil, "", err
			}
			if err != nil {
				if problem == "" {
					problem = fmt.Sprintf("file %q tensor %q %v", f.Path, f.Regions[j].Name, err)
				}
				continue
			}
			out[i][j] = len(ch)
		}
	}
	return out, problem, nil
}

// Lossy says whether some region of f decodes only within a bound, so
// that f restores to other bytes than were added (each exact region, and
// the verbatim bytes, are still checked).
func (f *File) Lossy() bool {
	for i := range f.Regions {
		if f.Regions[i].MaxError != 0 {
			return true
		}
	}
	return false
}

// File is the file rel of the checkpoint; one it does not hold is
// errs.Invalid, naming it.
func (c *Checkpoint) File(rel string) (*File, error) {
	for i := range c.Files {
		if c.Files[i].Path == rel {
			return &c.Files[i], nil
		}
	}
	return nil, fmt.Errorf("%w: checkpoint %d has no file %q", errs.Invalid, c.Step, rel)
}

// skeletonCache is the most verbatim bytes of one file a Reader keeps
// decoded for the next read of the same file (a load reads many ranges of
// one file); a larger skeleton, such as a big file stored whole, is
// streamed instead.
const skeletonCache = 64 << 20

// skeleton streams a file's verbatim bytes in order.
type skeleton struct {
	data []byte // a cached skeleton, or nil when streaming
	pos  uint64
	obj  *object
	dec  *zstd.Decoder
	path string
	buf  []byte
}

func (rd *Reader) openSkeleton(f *File) (*skeleton, error) {
	var total uint64
	for _, r := range f.Regions {
		total += r.Size
	}
	want := f.Size - total
	if rd.skel.obj == f.Skeleton.Object && rd.skel.data != nil && uint64(len(rd.skel.data)) == want {
		return &skeleton{data: rd.skel.data, path: f.Path}, nil
	}
	o, err := rd.s.openObject(f.Skeleton.Object, f.Skeleton.Stored, fmt.Sprintf("file %q", f.Path))
	if err != nil {
		return nil, err
	}
	if len(o.Data) < 8 || binary.LittleEndian.Uint64(o.Data) != want {
		o.release()
		return nil, fmt.Errorf("%w: file %q: its verbatim bytes do not agree with its record (%d bytes)", errs.Corrupt, f.Path, want)
	}
	dec, err := zstd.NewReader(bytes.NewReader(o.Data[8:]), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<62), zstd.WithDecoderMaxWindow(skeletonWindow))
	if err != nil {
		o.release()
		return nil, fmt.Errorf("%w: zstd: %v", errs.Internal, err)
	}
	sk := &skeleton{obj: o, dec: dec, path: f.Path}
	if want <= skeletonCache {
		data := make([]byte, want)
		if err := sk.stream(want, func(b []byte) error { copy(data[sk.pos:], b); return nil }); err != nil {
			sk.close()
			return nil, err
		}
		if err := sk.end(); err != nil {
			sk.close()
			return nil, err
		}
		sk.close()
		rd.skel.obj, rd.skel.data = f.Skeleton.Object, data
		return &skeleton{data: data, path: f.Path}, nil
	}
	return sk, nil
}

// stream hands the next n verbatim bytes to emit (nil emit: skip them).
func (sk *skeleton) stream(n uint64, emit func([]byte) error) error {
	if sk.data != nil {
		if sk.pos+n > uint64(len(sk.data)) {
			return fmt.Errorf("%w: file %q: its verbatim bytes are shorter than the record says", errs.Corrupt, sk.path)
		}
		var err error
		if emit != nil {
			err = emit(sk.data[sk.pos : sk.pos+n])
		}
		sk.pos += n
		return err
	}
	if sk.buf == nil {
		sk.buf = make([]byte, 1<<20)
	}
	for n > 0 {
		b := sk.buf[:min(n, uint64(len(sk.buf)))]
		if _, err := io.ReadFull(sk.dec, b); err != nil {
			return fmt.Errorf("%w: file %q: its verbatim bytes do not decode: %v", errs.Corrupt, sk.path, err)
		}
		if emit != nil {
			if err := emit(b); err != nil {
				return err
			}
		}
		sk.pos += uint64(len(b))
		n -= uint64(len(b))
	}
	return nil
}

// end checks that the verbatim bytes end where the record says.
func (sk *skeleton) end() error {
	if sk.data != nil {
		if sk.pos != uint64(len(sk.data)) {
			return fmt.Errorf("%w: file %q: its verbatim bytes are longer than the record says", errs.Corrupt, sk.path)
		}
		return nil
	}
	if n, _ := sk.dec.Read(make([]byte, 1)); n != 0 {
		return fmt.Errorf("%w: file %q: its verbatim bytes are longer than the record says", errs.Corrupt, sk.path)
	}
	return nil
}

func (sk *skeleton) close() {
	if sk.dec != nil {
		sk.dec.Close()
		sk.dec = nil
	}
	if sk.obj != nil {
		sk.obj.release()
		sk.obj = nil
	}
}

// ReadRange reads bytes [off, off+len(dst)) of a stored file into dst.
func (rd *Reader) ReadRange(c *Checkpoint, rel string, off uint64, dst []byte) error {
	f, err := c.File(rel)
	if err != nil {
		return err
	}
	end := off + uint64(len(dst))
	if end < off || end > f.Size {
		return fmt.Errorf("%w: bytes [%d, %d) of %q, which is %d bytes", errs.Invalid, off, end, rel, f.Size)
	}
	// The regions wholly inside dst decode first, spread over the threads
	// (a torch file's storages, most of them small); the walk then fills
	// in the bytes between them.
	var jobs []regionJob
	for i := range f.Regions {
		r := &f.Regions[i]
		if r.Offset >= off && r.Offset+r.Size <= end {
			jobs = append(jobs, regionJob{r, dst[r.Offset-off : r.Offset+r.Size-off]})
		}
	}
	if len(jobs) > 1 {
		if err := rd.decodeRegions(rel, jobs); err != nil {
			return err
		}
		rd.decoded = make(map[*Region]bool, len(jobs))
		for _, j := range jobs {
			rd.decoded[j.r] = true
		}
		defer func() { rd.decoded = nil }()
	}
	return rd.walk(f, off, end, func(pos uint64, b []byte) error {
		copy(dst[pos-off:], b)
		return nil
	}, dst, off)
}

// walk produces the bytes [off, end) of f in order, as pieces handed to
// emit. A region that lies wholly inside direct (whose first byte is file
// offset directOff) is decoded straight into it. A walk of the whole file
// also checks that the verbatim bytes end where the record says.
func (rd *Reader) walk(f *File, off, end uint64, emit func(pos uint64, b []byte) error, direct []byte, directOff uint64) error {
	var sk *skeleton
	pos := uint64(0) // file position
	// gap produces the verbatim bytes [pos, to): those inside [off, end)
	// are emitted, those before off skipped, and none after end read.
	gap := func(to uint64) error {
		if to <= pos || pos >= end {
			return nil
		}
		if sk == nil {
			var err error
			if sk, err = rd.openSkeleton(f); err != nil {
				return err
			}
		}
		lo, hi := max(pos, off), min(to, end)
		if lo >= hi { // wholly before off
			err := sk.stream(to-pos, nil)
			pos = to
			return err
		}
		if err := sk.stream(lo-pos, nil); err != nil {
			return err
		}
		at := lo
		err := sk.stream(hi-lo, func(b []byte) error {
			err := emit(at, b)
			at += uint64(len(b))
			return err
		})
		pos = to
		return err
	}
	defer func() {
		if sk != nil {
			sk.close()
		}
	}()
	for i := range f.Regions {
		r := &f.Regions[i]
		if pos >= end {
			return nil
		}
		if err := gap(r.Offset); err != nil {
			return err
		}
		pos = r.Offset
		rEnd := r.Offset + r.Size
		if rEnd > off && r.Offset < end {
			if rd.decoded[r] {
				// ReadRange decoded it already.
			} else if direct != nil && r.Offset >= directOff && rEnd <= directOff+uint64(len(direct)) {
				if err := rd.decode(r, direct[r.Offset-directOff:rEnd-directOff]); err != nil {
					return err
				}
			} else {
				if err := rd.s.fits(r, 2); err != nil {
					return err
				}
				if err := rd.s.checkFrame(rd.keyOf(r)); err != nil {
					return err
				}
				buf, err := rd.tmp.get(r.Size)
				if err != nil {
					return err
				}
				if err := rd.decode(r, buf); err != nil {
					return err
				}
				lo, hi := max(r.Offset, off), min(rEnd, end)
				if err := emit(lo, buf[lo-r.Offset:hi-r.Offset]); err != nil {
					return err
				}
			}
		}
		pos = rEnd
	}
	if pos >= end {
		return nil
	}
	if err := gap(f.Size); err != nil {
		return err
	}
	if off == 0 && end == f.Size && sk != nil {
		return sk.end()
	}
	return nil
}

// decode decodes one region for a walk. Where the walk's caller checks the
// whole file's hash (wholeFile), the region's own hash would be a second
// pass over the same bytes (its CRC costs nothing: it is still checked).
func (rd *Reader) decode(r *Region, dst []byte) error {
	if rd.wholeFile && r.CRC32C == nil {
		_, err := rd.s.decodeChain(rd.sn, r, dst, rd.threads, &rd.spare)
		return err
	}
	return rd.s.decodeRegion(rd.sn, r, dst, rd.threads, &rd.spare)
}

// keyOf is the keyframe r's decode starts from (r itself if the chain
// does not resolve: decodeRegion then reports why).
func (rd *Reader) keyOf(r *Region) *Region {
	ch, err := rd.sn.chain(r)
	if err != nil {
		return r
	}
	return ch[len(ch)-1]
}

// restoreInto writes file f as f.Path below dir, which only this restore
// writes into (its staging folder): created exclusively, with f's mode less
// the umask (the kernel applies it, as for any new file), fsynced, and
// checked against the hash it was added with.
func (rd *Reader) restoreInto(dir *dirfd.Dir, f *File) error {
	sub, name, err := dir.CreateParents(f.Path)
	if err != nil {
		return err
	}
	if sub != dir {
		defer sub.Close()
	}
	out, err := sub.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, fs.FileMode(f.Mode))
	if err != nil {
		return err
	}
	defer out.Close()
	return rd.writeFile(f, out)
}

// writeFile writes f's bytes to out, checks them against f's sha256 and
// fsyncs out.
func (rd *Reader) writeFile(f *File, out *os.File) error {
	check := newFileCheck(f)
	bw := bufio.NewWriterSize(out, 1<<20)
	rd.wholeFile = !f.Lossy()
	defer func() { rd.wholeFile = false }()
	err := rd.walk(f, 0, f.Size, func(pos uint64, b []byte) error {
		check.write(pos, b)
		if _, err := bw.Write(b); err != nil {
			return ioErr(out.Name(), err)
		}
		rd.wrote(uint64(len(b)))
		return nil
	}, nil, 0)
	if err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return ioErr(out.Name(), err)
	}
	if got := check.sum(); got != f.SHA256 && !f.Lossy() {
		return fmt.Errorf("%w: file %q restores to bytes that hash to %s, not the %s it was added with", errs.Corrupt, f.Path, got, f.SHA256)
	}
	if err := out.Sync(); err != nil {
		return ioErr(out.Name(), err)
	}
	return nil
}

// startWriting begins counting the total bytes a restore writes, for Progress.
func (rd *Reader) startWriting(total uint64) {
	rd.written, rd.toWrite = 0, total
	if rd.Progress != nil {
		rd.Progress(0, total)
	}
}

func (rd *Reader) wrote(n uint64) {
	rd.written += n
	if rd.Progress != nil {
		rd.Progress(rd.written, rd.toWrite)
	}
}

// RestoreFile writes one stored file to the path dst, whole or not at all:
// through a temporary file beside it, renamed into place. An existing dst
// is refused unless force (then it is replaced; a symlink at dst is
// replaced itself, never written through).
func (rd *Reader) RestoreFile(f *File, dst string, force bool) error {
	if err := rd.checkOutput(f.Size); err != nil {
		return err
	}
	if err := rd.s.refuseOverlap(dst, nil); err != nil {
		return err
	}
	rd.startWriting(f.Size)
	parent, base, err := openParent(dst)
	if err != nil {
		return err
	}
	defer parent.Close()
	if st, err := parent.Stat(base); err == nil {
		if !force {
			return errs.IOf(dst, syscall.EEXIST, "exists; pass force (--force) to replace it")
		}
		if st.IsDir() {
			return errs.IOf(dst, syscall.EISDIR, "is a folder")
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	out, tmp, err := parent.CreateTemp(tempName(base))
	if err != nil {
		return besideErr(dst, parent, err)
	}
	committed := false
	defer func() {
		_ = out.Close()
		if !committed {
			_ = parent.Remove(tmp)
		}
	}()
	if err := out.Chmod(fs.FileMode(f.Mode) &^ umask()); err != nil {
		return ioErr(dst, err)
	}
	if err := rd.writeFile(f, out); err != nil {
		return err
	}
	if force {
		err = parent.Rename(tmp, parent, base)
	} else {
		err = parent.Link(tmp, parent, base)
		if err == nil {
			_ = parent.Remove(tmp)
		}
	}
	if err != nil {
		return err
	}
	committed = true
	return parent.Sync()
}

func (rd *Reader) checkOutput(total uint64) error {
	if limit := rd.s.limits.Output; limit != 0 && total > limit {
		return fmt.Errorf("%w: restoring it writes %d bytes, more than the limit of %d (max_output_bytes or TPDE_MAX_OUTPUT)", errs.Limit, total, limit)
	}
	return nil
}

// refuseOverlap refuses a restore into the store itself or a folder inside
// it, and one into a folder that holds the store where a file of c would
// land inside the store: a restore never writes into a store.
func (s *Store) refuseOverlap(dest string, c *Checkpoint) error {
	if dest == "" {
		return fmt.Errorf("%w: no destination given", errs.Invalid)
	}
	store, err := filepath.EvalSymlinks(s.dir)
	if err != nil {
		return ioErr(s.dir, err)
	}
	d, err := resolvePath(dest)
	if err != nil {
		return err
	}
	refuse := func() error {
		return fmt.Errorf("%w: %s is (or holds) the store %s: a restore never writes into a store", errs.Invalid, dest, s.dir)
	}
	if within(d, store) {
		return refuse()
	}
	if c != nil && within(store, d) {
		rel, err := filepath.Rel(d, store)
		if err != nil {
			return refuse()
		}
		rel = filepath.ToSlash(rel)
		for i := range c.Files {
			if p := c.Files[i].Path; p == rel || strings.HasPrefix(p, rel+"/") || strings.HasPrefix(rel, p+"/") {
				return refuse()
			}
		}
	}
	return nil
}

// within says whether path p is folder or lies below it (both resolved).
func within(p, folder string) bool {
	return p == folder || strings.HasPrefix(p, strings.TrimSuffix(folder, "/")+"/")
}

// resolvePath is p made absolute with its symlinks resolved, as far as it
// exists (the rest appended as given).
func resolvePath(p string) (string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return "", ioErr(p, err)
	}
	rest := ""
	for cur := abs; ; {
		real, err := filepath.EvalSymlinks(cur)
		if err == nil {
			return filepath.Join(real, rest), nil
		}
		parent := filepath.Dir(cur)
		if parent == cur {
			return abs, nil
		}
		rest = filepath.Join(filepath.Base(cur), rest)
		cur = parent
	}
}

// openParent opens the folder that holds path (the caller's own path: a
// symlink in it is followed, as the caller named it) and returns path's
// last name.
func openParent(p string) (*dirfd.Dir, string, error) {
	abs, err := filepath.Abs(p)
	if err != nil {
		return nil, "", ioErr(p, err)
	}
	dir, base := filepath.Dir(abs), filepath.Base(abs) // Dir, not Split: no trailing "/" to double in messages
	if abs == dir {
		return nil, "", fmt.Errorf("%w: %s: cannot restore onto the root folder", errs.Invalid, p)
	}
	d, err := dirfd.Open(dir)
	if err != nil {
		return nil, "", err
	}
	return d, base, nil
}

// besideErr is the error of making the temporary file or folder beside
// dest in parent, about dest: the caller named dest, and has never heard
// of ".dest.tpde-restore-1234". Its errno stays (EACCES for a parent this
// user may not write).
func besideErr(dest string, parent *dirfd.Dir, err error) error {
	var en syscall.Errno
	if !errors.As(err, &en) {
		return err
	}
	return errs.IOf(dest, en, "%v (a restore writes it beside itself first, in %s)", en, parent.Name())
}

// tempName is the prefix of a temporary name beside base: hidden, marked
// as tpde's, and short enough that the random tail still fits NAME_MAX.
func tempName(base string) string {
	if len(base) > 200 {
		base = base[:200]
	}
	return "." + base + ".tpde-restore-"
}

// Restore writes every file of checkpoint c into the folder dest, all or
// nothing: the files are written into a new hidden folder, checked against
// the hashes they were added with, and only then moved into place. That
// folder is made beside dest when dest is missing (and renamed to dest),
// inside dest when it exists (and its files moved out of it), so dest's
// parent need not be writable, and an existing dest keeps its own mode.
// Everything is created relative to folder descriptors, so a symlink
// planted inside dest (even while the restore runs) is never followed. A
// dest that exists and is not empty is refused unless force; then the
// checkpoint's files replace those of the same names, and the rest of dest
// is kept.
func (rd *Reader) Restore(c *Checkpoint, dest string, force bool) error {
	var total uint64
	for i := range c.Files {
		if err := validPath(c.Files[i].Path); err != nil {
			return fmt.Errorf("%w: checkpoint %d: %v", errs.Corrupt, c.Step, err)
		}
		total += c.Files[i].Size
		if total < c.Files[i].Size {
			return fmt.Errorf("%w: checkpoint %d: file sizes overflow", errs.Corrupt, c.Step)
		}
	}
	if err := rd.checkOutput(total); err != nil {
		return err
	}
	if err := rd.s.refuseOverlap(dest, c); err != nil {
		return err
	}
	rd.startWriting(total)
	parent, base, err := openParent(dest)
	if err != nil {
		return err
	}
	defer parent.Close()
	var existing *dirfd.Dir // dest, when it exists
	wasEmpty := false
	switch st, err := parent.Stat(base); {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return err
	case st.IsSymlink():
		// dest itself is the caller's path: follow it once, by path.
		real, err := filepath.EvalSymlinks(dest)
		if err != nil {
			return ioErr(dest, err)
		}
		return rd.Restore(c, real, force)
	case !st.IsDir():
		return errs.IOf(dest, syscall.ENOTDIR, "exists and is not a folder")
	default:
		if existing, err = parent.OpenDir(base); err != nil {
			return err
		}
		defer existing.Close()
		ents, err := existing.ReadDir()
		if err != nil {
			return err
		}
		wasEmpty = len(ents) == 0
		if !wasEmpty && !force {
			return errs.IOf(dest, syscall.EEXIST, "is not empty; restore into a new or empty folder, or pass force (--force) to replace the files of the same names")
		}
	}
	holder, prefix := parent, tempName(base)
	if existing != nil {
		holder, prefix = existing, ".tpde-restore-"
	}
	stage, name, err := holder.MkdirTemp(prefix)
	if err != nil {
		if existing == nil {
			return besideErr(dest, parent, err)
		}
		return err
	}
	done := false
	defer func() {
		_ = stage.Close()
		if !done {
			_ = holder.RemoveAll(name)
		}
	}()
	for i := range c.Files {
		if err := rd.restoreInto(stage, &c.Files[i]); err != nil {
			return err
		}
	}
	if existing == nil {
		// A rename fails if dest appeared in the meantime: nothing of the
		// user's is replaced unasked.
		if err := parent.Rename(name, parent, base); err != nil {
			return err
		}
		done = true
		return parent.Sync()
	}
	if stagedHook != nil {
		stagedHook()
	}
	// Into a dest that was empty, files are linked in, never replacing
	// what appeared meanwhile, and a failure takes back what went in: all
	// or nothing. Forced, they replace the files of their names.
	undo, err := moveInto(stage, existing, c, !wasEmpty)
	if err != nil {
		if wasEmpty {
			undo()
		}
		return err
	}
	return existing.Sync() // the deferred RemoveAll takes the staging folder
}

// stagedHook, when a test sets it, runs between staging a restore into an
// existing destination and moving it into place: where another process
// may write into the destination.
var stagedHook func()

// moveInto moves every file of c from the staging folder into dest: with
// replace (force), each is renamed over the file of its name, never a
// folder; without, each is linked in and an entry that appeared meanwhile
// is refused, never replaced. No symlinked folder of dest is entered, and
// every target is checked before the first file moves. undo (for a dest
// that was empty) takes back the files it linked, and the folders it left
// empty: only what this restore put there.
func moveInto(stage, dest *dirfd.Dir, c *Checkpoint, replace bool) (undo func(), err error) {
	type move struct {
		from, to *dirfd.Dir
		name     string
		path     string
	}
	var moves []move
	moved := 0
	undo = func() {
		for _, m := range moves[:moved] {
			ours, err1 := m.from.Stat(m.name)
			there, err2 := m.to.Stat(m.name)
			if err1 == nil && err2 == nil && ours.SameFile(there) {
				_ = m.to.Remove(m.name)
			}
		}
		// Folders, deepest first: a Remove of a folder that is not empty
		// fails, and leaves it.
		dirs := map[string]bool{}
		for _, m := range moves[:moved] {
			for d := path.Dir(m.path); d != "."; d = path.Dir(d) {
				dirs[d] = true
			}
		}
		sorted := make([]string, 0, len(dirs))
		for d := range dirs {
			sorted = append(sorted, d)
		}
		sort.Slice(sorted, func(i, j int) bool { return strings.Count(sorted[i], "/") > strings.Count(sorted[j], "/") })
		for _, d := range sorted {
			parent, base := dest, d
			if i := strings.LastIndex(d, "/"); i >= 0 {
				if parent, err = dest.OpenDir(d[:i]); err != nil {
					continue
				}
				base = d[i+1:]
			}
			_ = parent.Remove(base)
			if parent != dest {
				_ = parent.Close()
			}
		}
	}
	defer func() {
		for _, m := range moves {
			if m.from != stage {
				_ = m.from.Close()
			}
			if m.to != dest {
				_ = m.to.Close()
			}
		}
	}()
	for i := range c.Files {
		p := c.Files[i].Path
		to, name, err := dest.CreateParents(p)
		if err != nil {
			return undo, err
		}
		from, _, err := stage.CreateParents(p)
		if err != nil {
			if to != dest {
				_ = to.Close()
			}
			return undo, err
		}
		moves = append(moves, move{from, to, name, p})
		if st, err := to.Stat(name); err == nil && (st.IsDir() || !replace) {
			if st.IsDir() {
				return undo, errs.IOf(dest.Path(p), syscall.EISDIR, "is a folder; the checkpoint has a file there")
			}
			return undo, errs.IOf(dest.Path(p), syscall.EEXIST, "appeared in the destination while tpde restored into it; it was not replaced")
		}
	}
	for _, m := range moves {
		var err error
		if replace {
			err = m.from.Rename(m.name, m.to, m.name)
		} else if err = m.from.Link(m.name, m.to, m.name); errors.Is(err, syscall.EEXIST) {
			err = errs.IOf(dest.Path(m.path), syscall.EEXIST, "appeared in the destination while tpde restored into it; it was not replaced")
		}
		if err != nil {
			return undo, err
		}
		moved++
	}
	return undo, nil
}
