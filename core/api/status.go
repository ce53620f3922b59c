package api

import (
	"errors"
	"fmt"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// Status is a TPDE_* status code of include/tpde.h; capi checks at
// compile time that each equals its C definition.
type Status int32

const (
	OK             Status = 0
	Invalid        Status = 1
	Corrupt        Status = 2
	Unsupported    Status = 3
	BufferTooSmall Status = 4
	IO             Status = 5
	Internal       Status = 6
	Reference      Status = 7
	Limit          Status = 8
	Cancelled      Status = 9
)

// StatusOf maps an error to its status code (nil is OK). The order
// matters: errs.ReferenceMismatch also matches errs.Invalid, and an error
// of no known category is a bug, Internal.
func StatusOf(err error) Status {
	switch {
	case err == nil:
		return OK
	case errors.Is(err, errs.ReferenceMismatch):
		return Reference
	case errors.Is(err, errs.Invalid):
		return Invalid
	case errors.Is(err, errs.Corrupt):
		return Corrupt
	case errors.Is(err, errs.Unsupported):
		return Unsupported
	case errors.Is(err, errs.BufferTooSmall):
		return BufferTooSmall
	case errors.Is(err, errs.IO):
		return IO
	case errors.Is(err, errs.Limit):
		return Limit
	case errors.Is(err, errs.Cancelled):
		return Cancelled
	}
	return Internal
}

// Message is err's message as the ABI reports it: one line, and for an
// I/O error that carries an operating-system error number, ending with
// " [errno N]" so that bindings can raise their OSError equivalents.
func Message(err error) string {
	if err == nil {
		return ""
	}
	msg := strings.ReplaceAll(err.Error(), "\n", " ")
	var en syscall.Errno
	if StatusOf(err) == IO && errors.As(err, &en) && en != 0 {
		msg += fmt.Sprintf(" [errno %d]", int(en))
	}
	return msg
}

// Panicked is the error a recovered panic (value v, at stack) stands for:
// errs.Internal, or errs.IO for a memory fault (memory the library was
// reading became unreadable, as a memory-mapped file truncated by another
// process).
func Panicked(v any, stack []byte) error {
	return &par.PanicError{Value: v, Stack: stack}
}
