//go:build !linux

package atomicfile

import (
	"errors"
	"os"
)

// Without O_TMPFILE every temporary file is a named, locked one.
func openUnnamed(dir, dst string) (*os.File, error) { return nil, errors.ErrUnsupported }

func linkUnnamed(f *os.File, dir, base string) (string, error) {
	return "", errors.ErrUnsupported
}
