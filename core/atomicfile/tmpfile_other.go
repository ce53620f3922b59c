//go:build !linux

package atomicfile

import (
	"errors"
	"os"
	"syscall"
)

// Without O_TMPFILE every temporary file is a named, locked one.
func openUnnamed(dir, dst string) (*os.File, error) { return nil, errors.ErrUnsupported }

func linkUnnamed(f *os.File, dir, base string) (string, error) {
	return "", errors.ErrUnsupported
}

func linkUnnamedAt(f *os.File, dst string) error { return errors.ErrUnsupported }

// renameNoReplace: without renameat2, the caller checks before renaming.
func renameNoReplace(oldpath, newpath string) error { return syscall.ENOSYS }
