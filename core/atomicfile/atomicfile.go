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
//     points to is replaced, and the link stays. Options.NoFollow refuses
//     one instead, and Options.NoReplace refuses any existing destination
//     at the moment the file is published (see Options).
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
	// NoReplace: the destination must not exist, whatever it is (a file, a
	// symlink even dangling, a directory): Create refuses one that does,
	// and Commit publishes the file with link(2), which never replaces a
	// name, instead of rename(2). So a file another process creates at
	// the destination while this one is written is refused too (errno
	// EEXIST), not replaced: the check and the write are one step.
	NoReplace bool
	// NoFollow: a destination that is a symlink is refused (errno ELOOP)
	// instead of written through. If one appears after Create, Commit's
	// rename replaces the link itself, never the file it points to.
	NoFollow bool
}

// File is written under a temporary name in the destination's directory and
// renamed over the destination only after an fsync, so a crash or an error
// leaves either the old file or the complete new one, never a torn one.
type File struct {
	*os.File
	dst       string // the resolved destination (symlinks followed unless NoReplace or NoFollow)
	named     string // the temporary name; "" while an O_TMPFILE file has none
	noReplace bool
	done      bool
}

// useTmpfile is switched off by tests of the named fallback.
var useTmpfile = true

// Create opens a temporary file for dst. Call Commit to publish it and defer
// Abort to remove it on any other path.
func Create(dst string, opt Options) (*File, error) {
	final, perm, replacing, err := check(dst, opt)
	if err != nil {
		return nil, err
	}
	dir, base := filepath.Split(final)
	if dir == "" {
		dir = "."
	}
	if st, err := os.Stat(dir); err != nil {
		return nil, fmt.Errorf("%w: destination directory: %w", errs.IO, err)
	} else if !st.IsDir() {
		return nil, errs.IOf(dir, syscall.ENOTDIR, "is not a directory")
	}
	removeStale(dir)
	a := &File{dst: final, noReplace: opt.NoReplace}
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

// Check refuses, without creating anything, a destination that Create
// would refuse: a caller about to do long work (read a stream to its end)
// before Create can fail first. Create checks again; with NoReplace,
// Commit does too.
func Check(dst string, opt Options) error {
	_, _, _, err := check(dst, opt)
	return err
}

// check refuses a destination Create must not write and says what it
// finds there: the name to publish under (symlinks followed unless
// opt.NoReplace or opt.NoFollow), and the mode of a file being replaced.
func check(dst string, opt Options) (final string, perm fs.FileMode, replacing bool, err error) {
	var st fs.FileInfo
	if opt.NoReplace || opt.NoFollow {
		// The name itself is what gets published, so Lstat: a symlink
		// there is an entry of its own, never a way to somewhere else.
		final = dst
		st, err = os.Lstat(final)
		if err == nil && opt.NoReplace {
			return "", 0, false, errs.IOf(dst, syscall.EEXIST, "already exists; not replaced")
		}
		if err == nil && st.Mode()&fs.ModeSymlink != 0 {
			return "", 0, false, errs.IOf(dst, syscall.ELOOP, "is a symbolic link; not written through")
		}
	} else {
		if final, err = resolve(dst); err != nil {
			return "", 0, false, err
		}
		st, err = os.Stat(final)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return final, 0, false, nil
		}
		return "", 0, false, fmt.Errorf("%w: %w", errs.IO, err)
	}
	if st.IsDir() {
		return "", 0, false, errs.IOf(dst, syscall.EISDIR, "is a directory")
	}
	if !st.Mode().IsRegular() {
		return "", 0, false, errs.IOf(dst, syscall.EINVAL, "is not a regular file (a device, FIFO or socket): tpde writes its output to a temporary file and renames it into place, which would replace it")
	}
	return final, st.Mode().Perm(), true, nil
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
	if a.noReplace {
		if err := a.publishNew(); err != nil {
			return err
		}
		return a.finish()
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
	return a.finish()
}

// publishNew gives the file the destination's name without replacing
// anything there: link(2), which fails with EEXIST, so that the NoReplace
// check and the write are one step with no window between them.
func (a *File) publishNew() error {
	var err error
	if a.named == "" {
		// A filesystem with O_TMPFILE has hard links.
		err = linkUnnamedAt(a.File, a.dst)
	} else if err = link(a.named, a.dst); err == nil {
		// The data is published under dst; the temporary name is a second
		// link to it. Should removing it fail, a later Create's sweep
		// removes it once our lock is released.
		_ = os.Remove(a.named)
		a.named = ""
	} else if unsupported(err) {
		// No hard links here (vfat, exfat, many FUSE filesystems): rename
		// with RENAME_NOREPLACE, one step too, where the kernel and the
		// filesystem have it; else check just before renaming, the one
		// case where a file created in between would be replaced.
		if err = renameExcl(a.named, a.dst); unsupported(err) {
			if _, e := os.Lstat(a.dst); e == nil {
				err = syscall.EEXIST
			} else if errors.Is(e, fs.ErrNotExist) {
				err = os.Rename(a.named, a.dst)
			} else {
				err = e
			}
		}
		if err == nil {
			a.named = ""
		}
	}
	if errors.Is(err, syscall.EEXIST) {
		return errs.IOf(a.dst, syscall.EEXIST, "already exists (created while tpde was writing it); not replaced")
	}
	if err != nil {
		return fmt.Errorf("%w: create %s without replacing: %w", errs.IO, a.dst, err)
	}
	return nil
}

// link and renameExcl are os.Link and renameNoReplace; tests replace
// them to stand for filesystems without hard links or the rename flag.
var (
	link       = os.Link
	renameExcl = renameNoReplace
)

// unsupported says whether err means the filesystem or kernel lacks the
// operation (hard links, a rename flag), rather than that it failed.
func unsupported(err error) bool {
	for _, e := range []syscall.Errno{syscall.EPERM, syscall.ENOTSUP, syscall.EOPNOTSUPP, syscall.ENOSYS, syscall.EINVAL} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// finish ends a successful Commit: the file is in place.
func (a *File) finish() error {
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

// Dst is the file Commit replaces or creates (dst with symlinks followed
// unless NoReplace or NoFollow).
func (a *File) Dst() string { return a.dst }
