//go:build unix

package par

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Reading a mapped page past the end of a file that another process
// shortened raises SIGBUS. Without SetPanicOnFault the Go runtime dies with
// "fatal error: fault"; under For and Guard it must be an error whose
// Fault() says what happened.
func TestForReportsReadsOfATruncatedMappingAsFaults(t *testing.T) {
	const size = 1 << 20
	path := filepath.Join(t.TempDir(), "shrinks")
	require.NoError(t, os.WriteFile(path, make([]byte, size), 0o600))
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	data, err := syscall.Mmap(int(f.Fd()), 0, size, syscall.PROT_READ, syscall.MAP_SHARED)
	require.NoError(t, err)
	defer syscall.Munmap(data)
	require.NoError(t, os.Truncate(path, 0))

	for _, threads := range []int{1, 4} {
		var sum byte
		err := For(16, threads, func(_, i int) error {
			sum += data[i*(size/16)]
			return nil
		})
		var pe *PanicError
		require.ErrorAs(t, err, &pe, "threads %d", threads)
		assert.True(t, pe.Fault(), "threads %d: %v", threads, err)
	}
	var last byte
	err = Guard(func() error { last = data[size-1]; return nil })
	assert.Zero(t, last)
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	assert.True(t, pe.Fault())
}
