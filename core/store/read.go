package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/atomicfile"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/mapped"
)

// decodeKeyframe decodes a keyframe region into dst.
func (s *Store) decodeKeyframe(r *Region, dst []byte, threads int) error {
	o, err := s.openObject(r.Object.Object, r.Stored, fmt.Sprintf("tensor %q", r.Name))
	if err != nil {
		return err
	}
	defer o.release()
	return mapped.Reading(s.objectPath(r.Object.Object), func() error {
		h, err := frame.Decode(o.Data, dst, threads)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", r.Name, err)
		}
		if h.Delta != nil || h.DType.String() != r.DType || h.RawSize != r.Size {
			return fmt.Errorf("%w: tensor %q: its object holds a %s frame of %d bytes, not the %s keyframe of %d bytes the record says", errs.Corrupt, r.Name, h.DType, h.RawSize, r.DType, r.Size)
		}
		return nil
	})
}

// decodeRegion decodes r into dst (r.Size bytes), walking its chain from
// the keyframe up. Two buffers serve the whole chain: dst and *spare take
// turns as reference and output, so a chain of K frames needs no more
// memory than a chain of two.
func (s *Store) decodeRegion(sn *snapshot, r *Region, dst []byte, threads int, spare *buffer) error {
	ch, err := sn.chain(r)
	if err != nil {
		return fmt.Errorf("%w: tensor %q: %v", errs.Corrupt, r.Name, err)
	}
	if len(ch) == 1 {
		return s.decodeKeyframe(r, dst, threads)
	}
	other := spare.get(r.Size)
	defer spare.drop()
	// Pick the first buffer so that the last frame lands in dst.
	bufs := [2][]byte{dst, other}
	cur := (len(ch) - 1) % 2
	if err := s.decodeKeyframe(ch[len(ch)-1], bufs[cur], threads); err != nil {
		return err
	}
	for i := len(ch) - 2; i >= 0; i-- {
		d := ch[i]
		o, err := s.openObject(d.Object.Object, d.Stored, fmt.Sprintf("tensor %q", d.Name))
		if err != nil {
			return err
		}
		err = mapped.Reading(s.objectPath(d.Object.Object), func() error {
			h, err := frame.DecodeDelta(o.Data, bufs[cur], nil, bufs[1-cur], threads)
			if err == nil && (h.DType.String() != d.DType || h.RawSize != d.Size) {
				err = fmt.Errorf("%w: its object holds a %s frame of %d bytes, not %s of %d", errs.Corrupt, h.DType, h.RawSize, d.DType, d.Size)
			}
			return err
		})
		o.release()
		if err != nil {
			return fmt.Errorf("tensor %q: %w", d.Name, err)
		}
		cur = 1 - cur
	}
	return nil
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
	skel    struct {
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
		return rd.sn.cps[i], nil
	}
	c, _, err := rd.sn.checkpoint(step)
	return c, err
}

// Manifest is the snapshot's manifest.
func (rd *Reader) Manifest() *Manifest { return rd.sn.m }

// Base is the base's record, nil if none.
func (rd *Reader) Base() *Checkpoint { return rd.sn.base }

func (c *Checkpoint) file(rel string) (*File, error) {
	for i := range c.Files {
		if c.Files[i].Path == rel {
			return &c.Files[i], nil
		}
	}
	return nil, fmt.Errorf("%w: checkpoint %d has no file %q", errs.Invalid, c.Step, rel)
}

// skeleton returns a file's verbatim bytes, decoded once and kept for the
// next read of the same file (a load reads many ranges of one file).
func (rd *Reader) skeleton(f *File) ([]byte, error) {
	if rd.skel.obj == f.Skeleton.Object && rd.skel.data != nil {
		return rd.skel.data, nil
	}
	var total uint64
	for _, r := range f.Regions {
		total += r.Size
	}
	want := f.Size - total
	o, err := rd.s.openObject(f.Skeleton.Object, f.Skeleton.Stored, fmt.Sprintf("file %q", f.Path))
	if err != nil {
		return nil, err
	}
	defer o.release()
	dec, err := zstd.NewReader(bytes.NewReader(o.Data), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(max(want, skeletonWindow)+1), zstd.WithDecoderMaxWindow(skeletonWindow))
	if err != nil {
		return nil, fmt.Errorf("%w: zstd: %v", errs.Internal, err)
	}
	defer dec.Close()
	data := make([]byte, want)
	if _, err := io.ReadFull(dec, data); err != nil {
		return nil, fmt.Errorf("%w: file %q: its verbatim bytes do not decode: %v", errs.Corrupt, f.Path, err)
	}
	if n, _ := dec.Read(make([]byte, 1)); n != 0 {
		return nil, fmt.Errorf("%w: file %q: its verbatim bytes are longer than the record says", errs.Corrupt, f.Path)
	}
	rd.skel.obj, rd.skel.data = f.Skeleton.Object, data
	return data, nil
}

// ReadRange reads bytes [off, off+len(dst)) of a stored file into dst.
func (rd *Reader) ReadRange(c *Checkpoint, rel string, off uint64, dst []byte) error {
	f, err := c.file(rel)
	if err != nil {
		return err
	}
	end := off + uint64(len(dst))
	if end < off || end > f.Size {
		return fmt.Errorf("%w: bytes [%d, %d) of %q, which is %d bytes", errs.Invalid, off, end, rel, f.Size)
	}
	return rd.walk(f, off, end, func(pos uint64, b []byte) error {
		copy(dst[pos-off:], b)
		return nil
	}, dst, off)
}

// walk produces the bytes [off, end) of f in order, as pieces handed to
// emit. A region that lies wholly inside direct (whose first byte is file
// offset directOff) is decoded straight into it.
func (rd *Reader) walk(f *File, off, end uint64, emit func(pos uint64, b []byte) error, direct []byte, directOff uint64) error {
	var skel []byte
	needSkel := false
	pos := uint64(0)
	for _, r := range f.Regions {
		if r.Offset > pos && r.Offset > off && pos < end {
			needSkel = true
		}
		pos = r.Offset + r.Size
	}
	if pos < end {
		needSkel = true
	}
	if needSkel {
		var err error
		if skel, err = rd.skeleton(f); err != nil {
			return err
		}
	}
	pos, spos := uint64(0), uint64(0) // file position, skeleton position
	gap := func(to uint64) error {
		if to > pos {
			lo, hi := max(pos, off), min(to, end)
			if lo < hi {
				if err := emit(lo, skel[spos+(lo-pos):spos+(hi-pos)]); err != nil {
					return err
				}
			}
			spos += to - pos
			pos = to
		}
		return nil
	}
	for i := range f.Regions {
		r := &f.Regions[i]
		if pos >= end {
			break
		}
		if err := gap(r.Offset); err != nil {
			return err
		}
		rEnd := r.Offset + r.Size
		if rEnd > off && r.Offset < end {
			if direct != nil && r.Offset >= directOff && rEnd <= directOff+uint64(len(direct)) {
				if err := rd.s.decodeRegion(rd.sn, r, direct[r.Offset-directOff:rEnd-directOff], rd.threads, &rd.spare); err != nil {
					return err
				}
			} else {
				buf := rd.tmp.get(r.Size)
				if err := rd.s.decodeRegion(rd.sn, r, buf, rd.threads, &rd.spare); err != nil {
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
	return gap(max(pos, min(end, f.Size)))
}

// RestoreFile writes one stored file to dst, atomically, with its mode,
// and checks that its bytes hash to what was added.
func (rd *Reader) RestoreFile(f *File, dst string) error {
	out, err := atomicfile.Create(dst, atomicfile.Options{})
	if err != nil {
		return err
	}
	defer out.Abort()
	h := sha256.New()
	err = rd.walk(f, 0, f.Size, func(pos uint64, b []byte) error {
		h.Write(b)
		if _, err := out.Write(b); err != nil {
			return ioErr(dst, err)
		}
		return nil
	}, nil, 0)
	if err != nil {
		return err
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != f.SHA256 {
		return fmt.Errorf("%w: file %q restores to bytes that hash to %s, not the %s it was added with", errs.Corrupt, f.Path, got, f.SHA256)
	}
	if err := out.Chmod(os.FileMode(f.Mode)); err != nil {
		return ioErr(dst, err)
	}
	return out.Commit()
}

// Restore writes every file of a checkpoint under dest, which is created if
// missing. Nothing is written outside dest: paths were checked when the
// record was read, and no existing symlink inside dest is followed.
func (rd *Reader) Restore(c *Checkpoint, dest string) error {
	if err := os.MkdirAll(dest, 0o777); err != nil {
		return ioErr(dest, err)
	}
	for i := range c.Files {
		f := &c.Files[i]
		if err := validPath(f.Path); err != nil {
			return fmt.Errorf("%w: %v", errs.Corrupt, err)
		}
		target, err := safeTarget(dest, f.Path)
		if err != nil {
			return err
		}
		if err := rd.RestoreFile(f, target); err != nil {
			return err
		}
	}
	return nil
}

// safeTarget creates rel's parent folders under dest and returns the path
// to write, refusing any symlink on the way: a symlink planted in dest must
// not turn a restore into a write elsewhere.
func safeTarget(dest, rel string) (string, error) {
	parts := strings.Split(rel, "/")
	cur := dest
	for i, part := range parts {
		cur = filepath.Join(cur, part)
		st, err := os.Lstat(cur)
		last := i == len(parts)-1
		switch {
		case err == nil && st.Mode()&fs.ModeSymlink != 0:
			return "", errs.IOf(cur, syscall.ELOOP, "is a symlink; tpde restores only into real folders")
		case err == nil && !last && !st.IsDir():
			return "", errs.IOf(cur, syscall.ENOTDIR, "is not a folder")
		case err == nil && last && !st.Mode().IsRegular():
			return "", errs.IOf(cur, syscall.EEXIST, "exists and is not a regular file")
		case errors.Is(err, fs.ErrNotExist) && !last:
			if err := os.Mkdir(cur, 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
				return "", ioErr(cur, err)
			}
		case err != nil && !errors.Is(err, fs.ErrNotExist):
			return "", ioErr(cur, err)
		}
	}
	return cur, nil
}
