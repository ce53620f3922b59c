//go:build linux

// Package dirfd reaches the entries of a directory tree only through
// directory descriptors, never following a symbolic link and never opening
// anything but a regular file or a directory for reading.
//
// A path checked with Lstat and then used by name can be swapped for a
// symlink in between; a directory that is itself a planted symlink takes
// every write, link and removal made "inside" it somewhere else. Here every
// component is opened relative to the descriptor of the one before it with
// O_NOFOLLOW, so what a Dir names can only be what was there when its
// descriptor was opened, and a link anywhere below the root is refused with
// ELOOP. Files are opened O_NONBLOCK, so a FIFO planted where a file should
// be is refused instead of hanging the open.
//
// The root itself is opened by path and may be reached through symlinks:
// that path is the caller's own choice, not something found on disk.
package dirfd

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"unsafe"

	"github.com/tpde/tpde/core/errs"
)

const (
	oPath        = 0x200000 // O_PATH: the same value on every Linux architecture Go supports
	atRemoveDir  = 0x200    // AT_REMOVEDIR
	openDirFlags = syscall.O_RDONLY | syscall.O_DIRECTORY | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
)

// Dir is an open directory. Its methods take names relative to it; a name
// with several components ("a/b/c") is walked one component at a time.
type Dir struct {
	fd   int
	name string // for messages: the path it was reached by
}

// Open opens the directory at path (following symlinks in path itself).
func Open(p string) (*Dir, error) {
	fd, err := syscall.Open(p, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return nil, wrap(p, err)
	}
	return &Dir{fd: fd, name: p}, nil
}

// Close releases the descriptor.
func (d *Dir) Close() error {
	if d == nil || d.fd < 0 {
		return nil
	}
	err := syscall.Close(d.fd)
	d.fd = -1
	return err
}

// Name is the path the directory was reached by (for messages).
func (d *Dir) Name() string { return d.name }

// Path is the path of rel inside d (for messages).
func (d *Dir) Path(rel string) string {
	if rel == "" || rel == "." {
		return d.name
	}
	return d.name + "/" + rel
}

// Fd is the directory's descriptor, valid until Close.
func (d *Dir) Fd() int { return d.fd }

// wrap turns an OS error into an errs.IO error naming p, with tpde's
// wording for the refusals this package makes on purpose.
func wrap(p string, err error) error {
	var en syscall.Errno
	if !errors.As(err, &en) {
		return fmt.Errorf("%w: %s: %w", errs.IO, p, err)
	}
	switch en {
	case syscall.ELOOP:
		return errs.IOf(p, en, "is a symbolic link; tpde never follows links here")
	case syscall.ENOTDIR:
		return errs.IOf(p, en, "is not a folder")
	case syscall.EACCES, syscall.EPERM:
		return errs.IOf(p, en, "permission denied")
	case syscall.ENOENT:
		return errs.IOf(p, en, "no such file or folder")
	}
	return errs.IOf(p, en, "%v", en)
}

func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: %q is not a single file name", errs.Invalid, name)
	}
	return nil
}

// split checks rel (relative, clean, no ".." or "." component) and returns
// its components.
func split(rel string) ([]string, error) {
	if rel == "" || strings.HasPrefix(rel, "/") || path.Clean(rel) != rel {
		return nil, fmt.Errorf("%w: %q is not a clean relative path", errs.Invalid, rel)
	}
	parts := strings.Split(rel, "/")
	for _, p := range parts {
		if err := checkName(p); err != nil {
			return nil, err
		}
	}
	return parts, nil
}

// OpenDir opens the folder rel below d. Every component must be a real
// folder: a symlink is refused (ELOOP).
func (d *Dir) OpenDir(rel string) (*Dir, error) {
	parts, err := split(rel)
	if err != nil {
		return nil, err
	}
	cur := d
	for i, p := range parts {
		fd, err := openat(cur.fd, p, openDirFlags, 0)
		if cur != d {
			_ = cur.Close()
		}
		if err != nil {
			return nil, wrap(d.Path(strings.Join(parts[:i+1], "/")), err)
		}
		cur = &Dir{fd: fd, name: d.Path(strings.Join(parts[:i+1], "/"))}
	}
	return cur, nil
}

// MkdirAll creates the folders of rel below d that are missing (mode 0777
// less the umask) and opens the last. An existing component that is not a
// real folder is refused.
func (d *Dir) MkdirAll(rel string) (*Dir, error) {
	parts, err := split(rel)
	if err != nil {
		return nil, err
	}
	cur := d
	for i, p := range parts {
		where := d.Path(strings.Join(parts[:i+1], "/"))
		if err := syscall.Mkdirat(cur.fd, p, 0o777); err != nil && !errors.Is(err, syscall.EEXIST) {
			if cur != d {
				_ = cur.Close()
			}
			return nil, wrap(where, err)
		}
		fd, err := openat(cur.fd, p, openDirFlags, 0)
		if cur != d {
			_ = cur.Close()
		}
		if err != nil {
			return nil, wrap(where, err)
		}
		cur = &Dir{fd: fd, name: where}
	}
	return cur, nil
}

// Mkdir creates the folder name in d (0777 less the umask); an existing
// one is fine if it is a real folder.
func (d *Dir) Mkdir(name string) error {
	sub, err := d.MkdirAll(name)
	if err != nil {
		return err
	}
	return sub.Close()
}

// Open opens the regular file rel below d for reading. Anything else
// there (a symlink, a FIFO, a device, a folder) is refused without being
// read, and without blocking.
func (d *Dir) Open(rel string) (*os.File, error) {
	return d.OpenFile(rel, os.O_RDONLY, 0)
}

// OpenFile opens rel below d with flag (os.O_RDWR, os.O_CREATE, ...) and,
// if it creates the file, perm less the umask. Whatever it opens must be a
// regular file: a symlink at any component is refused, and so is a FIFO,
// a device or a folder.
func (d *Dir) OpenFile(rel string, flag int, perm fs.FileMode) (*os.File, error) {
	parent, base, err := d.parent(rel, false)
	if err != nil {
		return nil, err
	}
	if parent != d {
		defer parent.Close()
	}
	fd, err := openat(parent.fd, base, flag|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, uint32(perm.Perm()))
	if err != nil {
		return nil, wrap(d.Path(rel), err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		_ = syscall.Close(fd)
		return nil, wrap(d.Path(rel), err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		_ = syscall.Close(fd)
		return nil, errs.IOf(d.Path(rel), syscall.EINVAL, "is not a regular file (%s)", kind(st.Mode))
	}
	// A regular file ignores O_NONBLOCK for reads and writes, but clear it
	// anyway so that nothing downstream depends on that.
	if err := setNonblock(fd, false); err != nil {
		_ = syscall.Close(fd)
		return nil, wrap(d.Path(rel), err)
	}
	return os.NewFile(uintptr(fd), d.Path(rel)), nil
}

// ReadFile reads the whole regular file rel below d, refusing one larger
// than limit bytes before reading it.
func (d *Dir) ReadFile(rel string, limit int64) ([]byte, error) {
	f, err := d.Open(rel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, wrap(d.Path(rel), err)
	}
	if st.Size() > limit {
		return nil, fmt.Errorf("%w: %s: %d bytes (at most %d expected)", errs.Corrupt, d.Path(rel), st.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, wrap(d.Path(rel), err)
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%w: %s: more than %d bytes", errs.Corrupt, d.Path(rel), limit)
	}
	return b, nil
}

// parent opens the folder holding rel's last component (d itself for a
// single name), creating missing folders when create is set.
func (d *Dir) parent(rel string, create bool) (*Dir, string, error) {
	parts, err := split(rel)
	if err != nil {
		return nil, "", err
	}
	if len(parts) == 1 {
		return d, parts[0], nil
	}
	dir := strings.Join(parts[:len(parts)-1], "/")
	var p *Dir
	if create {
		p, err = d.MkdirAll(dir)
	} else {
		p, err = d.OpenDir(dir)
	}
	if err != nil {
		return nil, "", err
	}
	return p, parts[len(parts)-1], nil
}

// CreateParents creates the folders of rel's parent below d (as MkdirAll)
// and returns that folder with rel's last name. For a single name it
// returns d itself, which the caller must not close.
func (d *Dir) CreateParents(rel string) (*Dir, string, error) { return d.parent(rel, true) }

// MkdirTemp creates a new folder in d named prefix + random hex (0777 less
// the umask) and opens it.
func (d *Dir) MkdirTemp(prefix string) (*Dir, string, error) {
	for try := 0; ; try++ {
		var r [8]byte
		_, _ = rand.Read(r[:])
		name := prefix + hex.EncodeToString(r[:])
		err := syscall.Mkdirat(d.fd, name, 0o777)
		if err == nil {
			sub, err := d.OpenDir(name)
			return sub, name, err
		}
		if !errors.Is(err, syscall.EEXIST) || try > 100 {
			return nil, "", wrap(d.Path(name), err)
		}
	}
}

// CreateTemp creates a new regular file in d named prefix + random hex
// (0666 less the umask), for writing.
func (d *Dir) CreateTemp(prefix string) (*os.File, string, error) {
	for try := 0; ; try++ {
		var r [8]byte
		_, _ = rand.Read(r[:])
		name := prefix + hex.EncodeToString(r[:])
		f, err := d.OpenFile(name, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o666)
		if err == nil {
			return f, name, nil
		}
		if !errors.Is(err, syscall.EEXIST) || try > 100 {
			return nil, "", err
		}
	}
}

// Stat describes the entry name in d without following it. It reports
// fs.ErrNotExist (wrapped) for a missing entry.
func (d *Dir) Stat(name string) (Info, error) {
	if err := checkName(name); err != nil {
		return Info{}, err
	}
	fd, err := openat(d.fd, name, oPath|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return Info{}, wrap(d.Path(name), err)
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return Info{}, wrap(d.Path(name), err)
	}
	return Info{Mode: st.Mode, Size: st.Size, Nlink: uint64(st.Nlink), Dev: uint64(st.Dev), Ino: st.Ino}, nil
}

// Info is what Stat reports.
type Info struct {
	Mode  uint32 // st_mode
	Size  int64
	Nlink uint64
	// Dev and Ino name the file itself: two names with the same are one file.
	Dev, Ino uint64
}

// SameFile reports whether i and o describe one file.
func (i Info) SameFile(o Info) bool { return i.Dev == o.Dev && i.Ino == o.Ino }

// IsDir, IsRegular and IsSymlink tell the entry's type.
func (i Info) IsDir() bool     { return i.Mode&syscall.S_IFMT == syscall.S_IFDIR }
func (i Info) IsRegular() bool { return i.Mode&syscall.S_IFMT == syscall.S_IFREG }
func (i Info) IsSymlink() bool { return i.Mode&syscall.S_IFMT == syscall.S_IFLNK }

// Kind names the entry's type for messages.
func (i Info) Kind() string { return kind(i.Mode) }

func kind(mode uint32) string {
	switch mode & syscall.S_IFMT {
	case syscall.S_IFREG:
		return "a regular file"
	case syscall.S_IFDIR:
		return "a folder"
	case syscall.S_IFLNK:
		return "a symbolic link"
	case syscall.S_IFIFO:
		return "a FIFO"
	case syscall.S_IFSOCK:
		return "a socket"
	case syscall.S_IFCHR:
		return "a character device"
	case syscall.S_IFBLK:
		return "a block device"
	}
	return "of unknown type"
}

// Entry is one name in a folder and its type (from the directory entry,
// not from following it).
type Entry struct {
	Name string
	Type fs.FileMode // fs.ModeDir, fs.ModeSymlink, 0 for a regular file, ...
}

// ReadDir lists d's entries (without "." and ".."), in no particular order.
func (d *Dir) ReadDir() ([]Entry, error) {
	// A second descriptor of the same folder: the listing's offset then
	// belongs to it alone, and closing it leaves d open.
	fd, err := openat(d.fd, ".", openDirFlags, 0)
	if err != nil {
		return nil, wrap(d.name, err)
	}
	f := os.NewFile(uintptr(fd), d.name)
	defer f.Close()
	ents, err := f.ReadDir(-1)
	if err != nil {
		return nil, wrap(d.name, err)
	}
	out := make([]Entry, len(ents))
	for i, e := range ents {
		out[i] = Entry{Name: e.Name(), Type: e.Type()}
	}
	return out, nil
}

// Remove removes the entry name from d: a file, a symlink (the link
// itself, never what it points to) or an empty folder.
func (d *Dir) Remove(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	err := unlinkat(d.fd, name, 0)
	if errors.Is(err, syscall.EISDIR) {
		err = unlinkat(d.fd, name, atRemoveDir)
	}
	if err != nil {
		return wrap(d.Path(name), err)
	}
	return nil
}

// RemoveAll removes name from d and, if it is a real folder, everything
// below it, through descriptors: a symlink inside is removed itself and
// never entered. A missing name is not an error.
func (d *Dir) RemoveAll(name string) error {
	if err := checkName(name); err != nil {
		return err
	}
	err := unlinkat(d.fd, name, 0)
	if err == nil || errors.Is(err, syscall.ENOENT) {
		return nil
	}
	if !errors.Is(err, syscall.EISDIR) && !errors.Is(err, syscall.EPERM) {
		return wrap(d.Path(name), err)
	}
	sub, err := d.OpenDir(name)
	if err != nil {
		return err
	}
	ents, err := sub.ReadDir()
	if err == nil {
		for _, e := range ents {
			if err = sub.RemoveAll(e.Name); err != nil {
				break
			}
		}
	}
	_ = sub.Close()
	if err != nil {
		return err
	}
	if err := unlinkat(d.fd, name, atRemoveDir); err != nil && !errors.Is(err, syscall.ENOENT) {
		return wrap(d.Path(name), err)
	}
	return nil
}

// Link gives the file oldname in d the new name newname in to, without
// replacing anything: an existing newname is EEXIST.
func (d *Dir) Link(oldname string, to *Dir, newname string) error {
	if err := checkName(oldname); err != nil {
		return err
	}
	if err := checkName(newname); err != nil {
		return err
	}
	if err := linkat(d.fd, oldname, to.fd, newname); err != nil {
		return wrap(to.Path(newname), err)
	}
	return nil
}

// Rename renames oldname in d to newname in to, replacing a file there
// (an entry that is a symlink is replaced itself, never followed).
func (d *Dir) Rename(oldname string, to *Dir, newname string) error {
	if err := checkName(oldname); err != nil {
		return err
	}
	if err := checkName(newname); err != nil {
		return err
	}
	if err := syscall.Renameat(d.fd, oldname, to.fd, newname); err != nil {
		return wrap(to.Path(newname), err)
	}
	return nil
}

// Sync flushes the folder's entries to disk.
func (d *Dir) Sync() error {
	if err := syscall.Fsync(d.fd); err != nil && !errors.Is(err, syscall.EINVAL) {
		return wrap(d.name, err)
	}
	return nil
}

// IsLoop reports whether err is this package's refusal of a symlink.
func IsLoop(err error) bool { return errors.Is(err, syscall.ELOOP) }

func openat(dirfd int, name string, flags int, mode uint32) (int, error) {
	for {
		fd, err := syscall.Openat(dirfd, name, flags, mode)
		if err == syscall.ENOTDIR && flags&syscall.O_DIRECTORY != 0 && isSymlink(dirfd, name) {
			// O_DIRECTORY|O_NOFOLLOW on a symlink says ENOTDIR; say what it is.
			err = syscall.ELOOP
		}
		if err != syscall.EINTR {
			return fd, err
		}
	}
}

func isSymlink(dirfd int, name string) bool {
	fd, err := syscall.Openat(dirfd, name, oPath|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer syscall.Close(fd)
	var st syscall.Stat_t
	return syscall.Fstat(fd, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFLNK
}

func unlinkat(dirfd int, name string, flags int) error {
	p, err := syscall.BytePtrFromString(name)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall(syscall.SYS_UNLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(p)), uintptr(flags))
	if e != 0 {
		return e
	}
	return nil
}

func linkat(olddirfd int, oldname string, newdirfd int, newname string) error {
	op, err := syscall.BytePtrFromString(oldname)
	if err != nil {
		return err
	}
	np, err := syscall.BytePtrFromString(newname)
	if err != nil {
		return err
	}
	// flags 0: a symlink at oldname would be linked itself, not followed.
	_, _, e := syscall.Syscall6(syscall.SYS_LINKAT, uintptr(olddirfd), uintptr(unsafe.Pointer(op)),
		uintptr(newdirfd), uintptr(unsafe.Pointer(np)), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

func setNonblock(fd int, on bool) error { return syscall.SetNonblock(fd, on) }
