package api

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func TestStatusOfEveryCategory(t *testing.T) {
	for err, want := range map[error]Status{
		nil:                 OK,
		errs.Invalid:        Invalid,
		errs.Corrupt:        Corrupt,
		errs.Unsupported:    Unsupported,
		errs.BufferTooSmall: BufferTooSmall,
		errs.IO:             IO,
		errs.Limit:          Limit,
		errs.Cancelled:      Cancelled,
		errs.Internal:       Internal,
		errors.New("a bug"): Internal,
	} {
		require.Equal(t, want, StatusOf(err), "%v", err)
		if err != nil {
			require.Equal(t, want, StatusOf(fmt.Errorf("wrapped: %w", err)), "%v", err)
		}
	}
	// A reference mismatch is also invalid; the more precise code wins.
	require.Equal(t, Reference, StatusOf(fmt.Errorf("%w: tensor %q", errs.ReferenceMismatch, "w")))
}

func TestMessageIsOneLineAndEndsWithTheErrno(t *testing.T) {
	err := fmt.Errorf("%w: open x: %w", errs.IO, &fs.PathError{Op: "open", Path: "x", Err: syscall.ENOENT})
	require.Equal(t, IO, StatusOf(err))
	require.Regexp(t, ` \[errno 2\]$`, Message(err))
	require.Equal(t, "invalid argument: a b", Message(fmt.Errorf("%w: a\nb", errs.Invalid)))
	// An errno outside an I/O error is not reported as one.
	require.NotContains(t, Message(fmt.Errorf("%w: %w", errs.Invalid, syscall.ENOENT)), "[errno")
	require.Empty(t, Message(nil))
}

func TestAPanicIsInternal(t *testing.T) {
	err := Panicked("boom", []byte("stack"))
	require.Equal(t, Internal, StatusOf(err))
	require.Contains(t, Message(err), "boom")
}
