package atomicfile

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/tpde/tpde/core/errs"
)

// O_TMPFILE (__O_TMPFILE | O_DIRECTORY) on the architectures Go's linux
// ports use, alpha, parisc and sparc aside.
const oTmpfile = 0o20000000 | syscall.O_DIRECTORY

const atSymlinkFollow = 0x400

// openUnnamed makes a file with no name in dir (O_TMPFILE), or returns nil
// where the kernel or filesystem cannot, so that Create falls back to a
// named temporary file. It is locked like a named one: Commit gives it a
// name for a moment, and a concurrent stale-file sweep must not take it.
func openUnnamed(dir, dst string) (*os.File, error) {
	fd, err := syscall.Open(dir, oTmpfile|syscall.O_RDWR|syscall.O_CLOEXEC, 0o666)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(fd, syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		_ = syscall.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), dst+" (temporary file)"), nil
}

// linkUnnamed gives an O_TMPFILE file a temporary name in dir, for the
// rename over the destination (link(2) cannot replace a file).
func linkUnnamed(f *os.File, dir, base string) (string, error) {
	src := "/proc/self/fd/" + strconv.Itoa(int(f.Fd()))
	for attempt := 0; ; attempt++ {
		name := filepath.Join(dir, tempName(base))
		err := linkat(src, name)
		if err == nil {
			return name, nil
		}
		if !errors.Is(err, syscall.EEXIST) || attempt >= 10 {
			return "", fmt.Errorf("%w: link the temporary file for %s: %w", errs.IO, filepath.Join(dir, base), err)
		}
	}
}

// linkUnnamedAt gives an O_TMPFILE file the name dst itself, failing with
// EEXIST if dst exists (Options.NoReplace).
func linkUnnamedAt(f *os.File, dst string) error {
	return linkat("/proc/self/fd/"+strconv.Itoa(int(f.Fd())), dst)
}

func linkat(oldpath, newpath string) error {
	o, err := syscall.BytePtrFromString(oldpath)
	if err != nil {
		return err
	}
	n, err := syscall.BytePtrFromString(newpath)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall6(syscall.SYS_LINKAT, uintptr(_atFDCWD), uintptr(unsafe.Pointer(o)),
		uintptr(_atFDCWD), uintptr(unsafe.Pointer(n)), atSymlinkFollow, 0)
	if e != 0 {
		return e
	}
	return nil
}

var _atFDCWD = -0x64 // a variable: converting the negative constant to uintptr is a compile error

// sysRenameat2 is renameat2(2)'s number on the architectures listed (Go's
// syscall package lacks it for some, amd64 among them); 0 elsewhere.
var sysRenameat2 = map[string]uintptr{
	"amd64": 316, "386": 353, "arm": 382, "arm64": 276, "riscv64": 276, "loong64": 276,
	"ppc64": 357, "ppc64le": 357, "s390x": 347,
}[runtime.GOARCH]

const renameNoreplace = 1 // RENAME_NOREPLACE

// renameNoReplace renames oldpath to newpath, failing with EEXIST if
// newpath exists; ENOSYS or EINVAL where the kernel or filesystem cannot.
func renameNoReplace(oldpath, newpath string) error {
	if sysRenameat2 == 0 {
		return syscall.ENOSYS
	}
	o, err := syscall.BytePtrFromString(oldpath)
	if err != nil {
		return err
	}
	n, err := syscall.BytePtrFromString(newpath)
	if err != nil {
		return err
	}
	_, _, e := syscall.Syscall6(sysRenameat2, uintptr(_atFDCWD), uintptr(unsafe.Pointer(o)),
		uintptr(_atFDCWD), uintptr(unsafe.Pointer(n)), renameNoreplace, 0)
	if e != 0 {
		return e
	}
	return nil
}
