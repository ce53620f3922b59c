//go:build !linux

// Package dirfd: see dirfd_linux.go. Reaching a tree only through
// descriptors needs the *at system calls as Linux has them; elsewhere every
// call is refused rather than done by path, which would follow links.
package dirfd

import (
	"fmt"
	"io/fs"
	"os"

	"github.com/tpde/tpde/core/errs"
)

var errUnsupported = fmt.Errorf("%w: stores need Linux (openat with O_NOFOLLOW, linkat)", errs.Unsupported)

type Dir struct{ name string }

type Info struct {
	Mode     uint32
	Size     int64
	Nlink    uint64
	Dev, Ino uint64
}

func (i Info) SameFile(o Info) bool { return false }

type Entry struct {
	Name string
	Type fs.FileMode
}

func Open(p string) (*Dir, error)                               { return nil, errUnsupported }
func (d *Dir) Close() error                                     { return nil }
func (d *Dir) Name() string                                     { return d.name }
func (d *Dir) Path(rel string) string                           { return d.name + "/" + rel }
func (d *Dir) Fd() int                                          { return -1 }
func (d *Dir) OpenDir(rel string) (*Dir, error)                 { return nil, errUnsupported }
func (d *Dir) MkdirAll(rel string) (*Dir, error)                { return nil, errUnsupported }
func (d *Dir) Mkdir(name string) error                          { return errUnsupported }
func (d *Dir) Open(rel string) (*os.File, error)                { return nil, errUnsupported }
func (d *Dir) ReadFile(rel string, limit int64) ([]byte, error) { return nil, errUnsupported }
func (d *Dir) OpenFile(rel string, flag int, perm fs.FileMode) (*os.File, error) {
	return nil, errUnsupported
}
func (d *Dir) CreateParents(rel string) (*Dir, string, error)     { return nil, "", errUnsupported }
func (d *Dir) MkdirTemp(prefix string) (*Dir, string, error)      { return nil, "", errUnsupported }
func (d *Dir) CreateTemp(prefix string) (*os.File, string, error) { return nil, "", errUnsupported }
func (d *Dir) Stat(name string) (Info, error)                     { return Info{}, errUnsupported }
func (i Info) IsDir() bool                                        { return false }
func (i Info) IsRegular() bool                                    { return false }
func (i Info) IsSymlink() bool                                    { return false }
func (i Info) Kind() string                                       { return "?" }
func (d *Dir) ReadDir() ([]Entry, error)                          { return nil, errUnsupported }
func (d *Dir) Remove(name string) error                           { return errUnsupported }
func (d *Dir) RemoveAll(name string) error                        { return errUnsupported }
func (d *Dir) Link(oldname string, to *Dir, newname string) error { return errUnsupported }
func (d *Dir) Rename(oldname string, to *Dir, newname string) error {
	return errUnsupported
}
func (d *Dir) Sync() error  { return errUnsupported }
func IsLoop(err error) bool { return false }
