// Package atomicfile writes a file so that readers, and a crash, see either
// the old file or the complete new one: the data goes to a temporary file in
// the destination's directory, is fsynced, and is renamed over the
// destination.
//
// What a user of a command-line tool expects, and this package does:
//
//   - Nothing is left behind by a crash. On Linux the temporary file is
//     made with O_TMPFILE: it has no name until Commit links it under a
//     temporary name and renames it over the destination a few
//     microseconds later, so kill -9, SIGBUS or a power cut during the
//     write leave no file. Where O_TMPFILE is not available the file gets
//     a recognisable name (see TempPattern) and is locked with flock for
//     as long as its writer lives; Create removes such files whose lock is
//     free, that is, whose writer is gone.
//   - New files get the usual mode: created with 0666, so the kernel
//     applies the umask (and any default ACL) as for any other tool. A
//     replaced file keeps its mode. Options.SourcePerm, when set, removes
//     every permission bit the source file lacks: compressing a private
//     0600 checkpoint never makes a world-readable output.
//   - A destination that is a symlink is written through: the file it
//     points to is replaced, and the link stays.
//   - A destination that is a directory, a device or a FIFO is refused
//     with a clear error instead of being replaced by a renamed file.
//   - Destination names up to NAME_MAX work: the temporary name is cut to
//     fit.
package atomicfile

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/errs"
)

// TempPattern is the marker in every temporary file name this package
// gives: ".<destination name, cut to fit>" + TempPattern + "<pid>-<random>".
const TempPattern = ".tpde-tmp-"

// nameMax is NAME_MAX on Linux and the BSDs.
const nameMax = 255

// Options tune Create.
type Options struct {
	// SourcePerm, if HasSource, is the permission bits of the file the
	// output is made from; the output gets none that it lacks.
	SourcePerm fs.FileMode
	HasSource  bool
}

// File is written under a temporary name in the destination's directory and
// renamed over the destination only after an fsync, so a crash or an error
// leaves either the old file or the complete new one, never a torn one.
type File struct {
	*os.File
	dst   string // the resolved destination (symlinks followed)
	named string // the temporary name; "" while an O_TMPFILE file has none
	done  bool
}

// useTmpfile is switched off by tests of the named fallback.
var useTmpfile = true

// Create opens a temporary file for dst. Call Commit to publish it and defer
// Abort to remove it on any other path.
func Create(dst string, opt Options) (*File, error) {
	final, err := resolve(dst)
	if err != nil {
		return nil, err
	}
	dir, base := filepath.Split(final)
	if dir == "" {
		dir = "."
	}
	perm, replacing := fs.FileMode(0), false
	if st, err := os.Stat(final); err == nil {
		if st.IsDir() {
			return nil, errs.IOf(dst, syscall.EISDIR, "is a directory")
		}
		if !st.Mode().IsRegular() {
			return nil, errs.IOf(dst, syscall.EINVAL, "is not a regular file (a device, FIFO or socket): tpde writes its output to a temporary file and renames it into place, which would replace it")
		}
		perm, replacing = st.Mode().Perm(), true
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %w", errs.IO, err)
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: destination directory: %w", errs.IO, err)
	} else if !st.IsDir() {
		return nil, errs.IOf(dir, syscall.ENOTDIR, "is not a directory")
	}
	removeStale(dir)
	a := &File{dst: final}
	if useTmpfile {
		// Any failure (no O_TMPFILE in this kernel or filesystem) falls
		// back to a named file, which reports a real problem itself.
		if f, err := openUnnamed(dir, final); err == nil {
			a.File = f
		}
	}
	if a.File == nil {
		if a.File, a.named, err = createNamed(dir, base); err != nil {
			return nil, err
		}
	}
	if err := a.setPerm(perm, replacing, opt); err != nil {
		a.Abort()
		return nil, err
	}
	return a, nil
}

// setPerm gives the temporary file the destination's final mode: the
// replaced file's perm, or for a new file what the kernel gave it (0666
// less the umask), less the bits the source lacks.
func (a *File) setPerm(perm fs.FileMode, replacing bool, opt Options) error {
	st, err := a.Stat()
	if err != nil {
		return fmt.Errorf("%w: stat %s: %w", errs.IO, a.Name(), err)
	}
	if !replacing {
		perm = st.Mode().Perm()
	}
	want := perm
	if opt.HasSource {
		want &= opt.SourcePerm.Perm()
	}
	if st.Mode().Perm() == want {
		return nil
	}
	if err := a.Chmod(want); err != nil {
		return fmt.Errorf("%w: chmod %s: %w", errs.IO, a.Name(), err)
	}
	return nil
}

// resolve follows dst while it is a symlink (dangling ones too), so that
// the file it names is the one replaced.
func resolve(dst string) (string, error) {
	p := dst
	for range 40 { // Linux's own limit on symlinks followed
		target, err := os.Readlink(p)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) && (errors.Is(err, syscall.EINVAL) || errors.Is(err, fs.ErrNotExist)) {
				return p, nil // not a symlink, or nothing there yet
			}
			return "", fmt.Errorf("%w: %w", errs.IO, err)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		p = target
	}
	return "", errs.IOf(dst, syscall.ELOOP, "too many levels of symbolic links")
}

// tempName is a temporary name for base that fits in NAME_MAX.
func tempName(base string) string {
	var r [4]byte
	_, _ = rand.Read(r[:])
	suffix := TempPattern + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(r[:])
	if room := nameMax - 1 - len(suffix); len(base) > room {
		base = base[:room]
	}
	return "." + base + suffix
}

// createNamed makes a temporary file with a name, locked for the life of
// this process so that a later Create can tell it from a stale one.
func createNamed(dir, base string) (*os.File, string, error) {
	for attempt := 0; ; attempt++ {
		name := filepath.Join(dir, tempName(base))
		f, err := os.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if err != nil {
			if errors.Is(err, fs.ErrExist) && attempt < 10 {
				continue
			}
			return nil, "", fmt.Errorf("%w: create temporary file for %s: %w", errs.IO, filepath.Join(dir, base), err)
		}
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil && sameFile(f, name) {
			return f, name, nil
		}
		// Between our create and our lock another process's stale-file
		// sweep took it for abandoned (and may have removed it): try again
		// under a new name.
		_ = f.Close()
		if attempt >= 10 {
			return nil, "", fmt.Errorf("%w: cannot lock a temporary file in %s", errs.IO, dir)
		}
	}
}

func sameFile(f *os.File, name string) bool {
	a, err1 := f.Stat()
	b, err2 := os.Stat(name)
	return err1 == nil && err2 == nil && os.SameFile(a, b)
}

// removeStale removes temporary files in dir left by writers that are gone
// (killed, or crashed): their flock is free. Best effort: a file it cannot
// open or lock is left alone.
func removeStale(dir string) {
	d, err := os.Open(dir)
	if err != nil {
		return
	}
	defer d.Close()
	for {
		names, err := d.Readdirnames(1024)
		for _, name := range names {
			if strings.HasPrefix(name, ".") && strings.Contains(name, TempPattern) {
				removeIfAbandoned(filepath.Join(dir, name))
			}
		}
		if err != nil {
			return
		}
	}
}

func removeIfAbandoned(path string) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0)
	if err != nil {
		return
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		return
	}
	if syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		return // its writer still holds it
	}
	if sameFile(f, path) {
		_ = os.Remove(path)
	}
}

// Commit fsyncs, renames over the destination and fsyncs the directory.
func (a *File) Commit() error {
	if err := a.Sync(); err != nil {
		return fmt.Errorf("%w: fsync %s: %w", errs.IO, a.Name(), err)
	}
	if a.named == "" {
		name, err := linkUnnamed(a.File, filepath.Dir(a.dst), filepath.Base(a.dst))
		if err != nil {
			return err
		}
		a.named = name
	}
	if err := os.Rename(a.named, a.dst); err != nil {
		return fmt.Errorf("%w: rename to %s: %w", errs.IO, a.dst, err)
	}
	a.done = true
	// Closed only now: the flock (named files) must outlive the rename.
	if err := a.Close(); err != nil {
		return fmt.Errorf("%w: close %s: %w", errs.IO, a.dst, err)
	}
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
	if a.done {
		return
	}
	a.done = true
	if a.named != "" {
		_ = os.Remove(a.named)
	}
	_ = a.Close()
}

// Dst is the file Commit replaces (dst with symlinks followed).
func (a *File) Dst() string { return a.dst }
