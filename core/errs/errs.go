// Package errs holds the sentinel errors every tpde package wraps, so that the
// C ABI and the Python package can map any failure to one typed category.
//
// Wrap them with fmt.Errorf("%w: ...", errs.Corrupt) and add what failed.
package errs

import (
	"errors"
	"fmt"
	"syscall"
)

var (
	// Corrupt: input bytes that are not a valid tpde object (checksum
	// mismatch, truncation, impossible header values).
	Corrupt = errors.New("corrupt data")
	// Unsupported: a well-formed object that this build cannot read (a newer
	// major version, an unknown frame kind or dtype).
	Unsupported = errors.New("unsupported format")
	// Invalid: a caller error (bad dtype code, shape that does not match the
	// buffer, bad option).
	Invalid = errors.New("invalid argument")
	// BufferTooSmall: the caller's output buffer cannot hold the result.
	BufferTooSmall = errors.New("buffer too small")
	// IO: the operating system refused a file operation, or a file changed
	// under tpde while it was being read.
	IO = errors.New("i/o error")
	// Limit: decoding would produce more output than the caller allows
	// (a decode limit, like zstd's window limit).
	Limit = errors.New("output limit exceeded")
	// Cancelled: the caller asked an operation in progress to stop.
	Cancelled = errors.New("cancelled")
	// Internal: a bug in tpde (a recovered panic).
	Internal = errors.New("internal error")
	// ReferenceMismatch: a delta frame was given a reference tensor (or a
	// second reference) other than the one it was encoded against: wrong
	// length, or a checksum that differs from the one the frame records. It
	// is a caller error, so it also matches Invalid.
	ReferenceMismatch = fmt.Errorf("%w: reference mismatch", Invalid)
)

// OSError is an OS error number with tpde's own wording (say, "is a
// directory" for a destination). It unwraps to the syscall.Errno, so that
// the C ABI can report the number as it does for the OS's own errors.
type OSError struct {
	What  string
	Errno syscall.Errno
}

func (e OSError) Error() string { return e.What }
func (e OSError) Unwrap() error { return e.Errno }

// IOf is an IO error about path, with tpde's wording and an errno.
func IOf(path string, errno syscall.Errno, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %w", IO, path, OSError{fmt.Sprintf(format, a...), errno})
}
