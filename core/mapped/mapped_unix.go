//go:build unix

// Package mapped reads input files in place: regular files are memory-mapped,
// streams are spooled to an unlinked temporary file first, and faults from a
// file truncated while mapped become I/O errors instead of crashes.
package mapped

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
	"time"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// Input is a source file's bytes, read in place.
type Input struct {
	Data []byte
	// perm is the source's permission bits; hasPerm is false for a stream
	// (a pipe, /dev/stdin, /proc/...), whose mode says nothing about how
	// private its content is.
	Perm    fs.FileMode
	HasPerm bool
	release func()
}

// Open maps the file at path. A regular file is mapped read-only in
// place: pages are read on demand and are clean, so the kernel can drop
// them under pressure instead of swapping. Anything else that can be read
// (a pipe, /dev/stdin, a FIFO, a /proc file whose size reads as 0) is first
// copied to an unnamed temporary file in spoolDir and that is mapped: its
// size is not known in advance, and taking Stat's 0 for it would silently
// compress nothing.
func Open(path, spoolDir string) (*Input, error) {
	return OpenWith(path, Options{SpoolDir: spoolDir})
}

// Options tune OpenWith.
type Options struct {
	// SpoolDir is where a stream is spooled (the system's temporary
	// folder if empty).
	SpoolDir string
	// Stop, if set, is asked between pieces of a stream being spooled: a
	// stream may never end, and the caller must still be able to stop.
	Stop func() error
	// NoDevices refuses a character or block device (/dev/zero would be
	// spooled until the disk is full).
	NoDevices bool
}

// OpenWith is Open with options.
func OpenWith(path string, opt Options) (*Input, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errs.IO, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %w", errs.IO, err)
	}
	if st.IsDir() {
		_ = f.Close()
		return nil, errs.IOf(path, syscall.EISDIR, "is a directory")
	}
	if opt.NoDevices && st.Mode()&fs.ModeDevice != 0 {
		_ = f.Close()
		return nil, errs.IOf(path, syscall.ENODEV, "is a device; tpde reads files and streams (a pipe, a FIFO), not devices")
	}
	if st.Mode().IsRegular() && st.Size() > 0 {
		data, unmap, err := mapFile(f, st.Size())
		if err != nil {
			_ = f.Close()
			return nil, err
		}
		return &Input{Data: data, Perm: st.Mode().Perm(), HasPerm: true,
			release: func() { unmap(); _ = f.Close() }}, nil
	}
	in, err := spool(f, path, opt.SpoolDir, opt.Stop)
	_ = f.Close()
	if err != nil {
		return nil, err
	}
	if st.Mode().IsRegular() {
		in.Perm, in.HasPerm = st.Mode().Perm(), true
	}
	return in, nil
}

// Map maps size bytes of the regular file f, which it takes over: the
// Input's Release closes it. For callers that opened f themselves (without
// following links, say).
func Map(f *os.File, size int64) (*Input, error) {
	data, unmap, err := mapFile(f, size)
	if err != nil {
		return nil, err
	}
	return &Input{Data: data, release: func() { unmap(); _ = f.Close() }}, nil
}

// spool copies a stream to an unlinked temporary file and maps that.
func spool(src *os.File, path, dir string, stop func() error) (*Input, error) {
	if dir == "" {
		dir = os.TempDir()
	}
	tmp, err := os.CreateTemp(dir, ".tpde-spool-*")
	if err != nil {
		return nil, fmt.Errorf("%w: a temporary file to hold %s (a stream): %w", errs.IO, path, err)
	}
	// Unlinked at once: it lives as long as the descriptor, and nothing is
	// left behind whatever happens to this process.
	_ = os.Remove(tmp.Name())
	n, err := copyStopping(tmp, src, stop)
	var stopped stopError
	if errors.As(err, &stopped) {
		_ = tmp.Close()
		return nil, stopped.err
	}
	if err != nil {
		_ = tmp.Close()
		var pe *fs.PathError
		if errors.As(err, &pe) && pe.Path == tmp.Name() {
			return nil, fmt.Errorf("%w: copying %s to a temporary file in %s: %w", errs.IO, path, dir, err)
		}
		return nil, fmt.Errorf("%w: read %s: %w", errs.IO, path, err)
	}
	if n == 0 {
		_ = tmp.Close()
		return &Input{Data: []byte{}, release: func() {}}, nil
	}
	data, unmap, err := mapFile(tmp, n)
	if err != nil {
		_ = tmp.Close()
		return nil, err
	}
	return &Input{Data: data, release: func() { unmap(); _ = tmp.Close() }}, nil
}

// stopError is the error stop returned, ending a copy.
type stopError struct{ err error }

func (e stopError) Error() string { return e.err.Error() }

// copyStopping is io.Copy that asks stop before each piece, and, while a
// stream sends nothing, every quarter of a second: a FIFO whose writer
// neither writes nor closes must not hold the caller forever. (Go polls a
// pipe or FIFO, so a read deadline wakes the read; where it cannot, reads
// block as io.Copy's would.)
func copyStopping(dst *os.File, src *os.File, stop func() error) (int64, error) {
	if stop == nil {
		return io.Copy(dst, src)
	}
	buf := make([]byte, 1<<20)
	var n int64
	for {
		if err := stop(); err != nil {
			return n, stopError{err}
		}
		_ = src.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
		k, err := src.Read(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			err = nil // nothing yet: ask stop again
		}
		if k > 0 {
			if _, werr := dst.Write(buf[:k]); werr != nil {
				return n, werr // *fs.PathError naming dst, as io.Copy gives
			}
			n += int64(k)
		}
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
	}
}

// mapFile maps size bytes of f read-only.
func mapFile(f *os.File, size int64) ([]byte, func(), error) {
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("%w: %s is too large to map", errs.IO, f.Name())
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: mmap %s: %w", errs.IO, f.Name(), err)
	}
	return data, func() { _ = syscall.Munmap(data) }, nil
}

// Reading runs fn, which reads the mapping of path, and reports a
// memory fault in it (the file was truncated by another process while it
// was mapped: reading past its new end raises SIGBUS) as an I/O error
// naming the file, instead of the crash it would otherwise be. fn's own
// deferred cleanup (removing a temporary output) runs as the fault
// unwinds.
func Reading(path string, fn func() error) error {
	err := par.Guard(fn)
	var pe *par.PanicError
	if errors.As(err, &pe) && pe.Fault() {
		return errs.IOf(path, syscall.EIO, "the file changed while tpde was reading it (truncated by another process?): %v", pe.Value)
	}
	return err
}

// Release unmaps the input and closes its file.
func (in *Input) Release() { in.release() }
