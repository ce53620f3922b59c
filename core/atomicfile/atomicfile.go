// Package atomicfile writes a file so that readers, and a crash, see either
// the old file or the complete new one: the data goes to a temporary file in
// the destination's directory, is fsynced, and is renamed over the
// destination.
package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/tpde/tpde/core/errs"
)

// File is written under a temporary name in the destination's directory and
// renamed over the destination only after an fsync, so a crash or an error
// leaves either the old file or the complete new one, never a torn one.
type File struct {
	*os.File
	dst  string
	done bool
}

// Create opens a temporary file for dst. Call Commit to publish it and defer
// Abort to remove it on any other path.
func Create(dst string) (*File, error) {
	dir, base := filepath.Split(dst)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("%w: create temporary file for %s: %v", errs.IO, dst, err)
	}
	// CreateTemp makes 0600 files. Keep the mode of a file being replaced;
	// give a new one the usual 0644.
	mode := os.FileMode(0o644)
	if st, err := os.Stat(dst); err == nil {
		mode = st.Mode().Perm()
	}
	if err := f.Chmod(mode); err != nil {
		_ = f.Close()
		_ = os.Remove(f.Name())
		return nil, fmt.Errorf("%w: chmod %s: %v", errs.IO, f.Name(), err)
	}
	return &File{File: f, dst: dst}, nil
}

// Commit fsyncs, renames over the destination and fsyncs the directory.
func (a *File) Commit() error {
	if err := a.Sync(); err != nil {
		return fmt.Errorf("%w: fsync %s: %v", errs.IO, a.Name(), err)
	}
	if err := a.Close(); err != nil {
		return fmt.Errorf("%w: close %s: %v", errs.IO, a.Name(), err)
	}
	if err := os.Rename(a.Name(), a.dst); err != nil {
		return fmt.Errorf("%w: rename to %s: %v", errs.IO, a.dst, err)
	}
	a.done = true
	if d, err := os.Open(filepath.Dir(a.dst)); err == nil {
		// Best effort: some filesystems refuse fsync on directories, and
		// the data itself is already durable.
		_ = d.Sync()
		_ = d.Close()
	}
	return nil
}

// Abort removes the temporary file unless Commit succeeded.
func (a *File) Abort() {
	if !a.done {
		_ = a.Close()
		_ = os.Remove(a.Name())
	}
}
