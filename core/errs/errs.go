// Package errs holds the sentinel errors every tpde package wraps, so that the
// C ABI and the Python package can map any failure to one typed category.
//
// Wrap them with fmt.Errorf("%w: ...", errs.Corrupt) and add what failed.
package errs

import (
	"errors"
	"fmt"
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
	// IO: the operating system refused a file operation.
	IO = errors.New("i/o error")
	// ReferenceMismatch: a delta frame was given a reference tensor (or a
	// second reference) other than the one it was encoded against: wrong
	// length, or a checksum that differs from the one the frame records. It
	// is a caller error, so it also matches Invalid.
	ReferenceMismatch = fmt.Errorf("%w: reference mismatch", Invalid)
)
