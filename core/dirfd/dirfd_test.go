//go:build linux

package dirfd

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func setup(t *testing.T) (root string, outside string, d *Dir) {
	t.Helper()
	base := t.TempDir()
	root = filepath.Join(base, "root")
	outside = filepath.Join(base, "outside")
	require.NoError(t, os.MkdirAll(filepath.Join(root, "sub"), 0o755))
	require.NoError(t, os.MkdirAll(outside, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "precious"), []byte("keep me"), 0o644))
	d, err := Open(root)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Close() })
	return root, outside, d
}

func TestSymlinkedFolderIsRefusedEverywhere(t *testing.T) {
	root, outside, d := setup(t)
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "link")))

	_, err := d.OpenDir("link")
	assert.True(t, IsLoop(err), "%v", err)
	_, err = d.Open("link/precious")
	assert.True(t, IsLoop(err), "%v", err)
	_, err = d.MkdirAll("link/new")
	assert.True(t, IsLoop(err), "%v", err)
	_, err = d.OpenFile("link/new-file", os.O_RDWR|os.O_CREATE, 0o666)
	assert.True(t, IsLoop(err), "%v", err)
	assert.True(t, errorsIsIO(err))

	// RemoveAll removes the link itself and nothing it points to.
	require.NoError(t, d.RemoveAll("link"))
	b, err := os.ReadFile(filepath.Join(outside, "precious"))
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))
	_, err = os.Lstat(filepath.Join(root, "link"))
	assert.True(t, os.IsNotExist(err))
}

func errorsIsIO(err error) bool { return errors.Is(err, errs.IO) }

func TestSymlinkedFileIsRefused(t *testing.T) {
	root, outside, d := setup(t)
	require.NoError(t, os.Symlink(filepath.Join(outside, "precious"), filepath.Join(root, "f")))
	_, err := d.Open("f")
	assert.True(t, IsLoop(err), "%v", err)
	_, err = d.OpenFile("f", os.O_RDWR|os.O_TRUNC, 0)
	assert.True(t, IsLoop(err), "%v", err)
	b, _ := os.ReadFile(filepath.Join(outside, "precious"))
	assert.Equal(t, "keep me", string(b), "the target was not truncated")
	st, err := d.Stat("f")
	require.NoError(t, err)
	assert.True(t, st.IsSymlink())
}

func TestFIFOIsRefusedWithoutBlocking(t *testing.T) {
	root, _, d := setup(t)
	require.NoError(t, syscall.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	done := make(chan error, 1)
	go func() {
		_, err := d.Open("fifo")
		done <- err
	}()
	select {
	case err := <-done:
		require.Error(t, err)
		assert.Contains(t, err.Error(), "FIFO")
	case <-time.After(10 * time.Second):
		t.Fatal("opening a FIFO blocked")
	}
	_, err := d.ReadFile("fifo", 100)
	require.Error(t, err)
	_, err = d.OpenFile("fifo", os.O_RDWR|os.O_CREATE, 0o666)
	require.Error(t, err)
}

func TestDeviceIsRefused(t *testing.T) {
	d, err := Open("/dev")
	require.NoError(t, err)
	defer d.Close()
	_, err = d.Open("zero")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "character device")
}

func TestCreateTempAppliesUmaskAndLinkNeverReplaces(t *testing.T) {
	root, _, d := setup(t)
	old := syscall.Umask(0o027)
	defer syscall.Umask(old)
	f, name, err := d.CreateTemp("t-")
	require.NoError(t, err)
	_, err = f.Write([]byte("new"))
	require.NoError(t, err)
	require.NoError(t, f.Close())
	st, err := os.Stat(filepath.Join(root, name))
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), st.Mode().Perm())

	require.NoError(t, os.WriteFile(filepath.Join(root, "sub", "taken"), []byte("old"), 0o644))
	sub, err := d.OpenDir("sub")
	require.NoError(t, err)
	defer sub.Close()
	err = d.Link(name, sub, "taken")
	assert.ErrorIs(t, err, syscall.EEXIST)
	b, _ := os.ReadFile(filepath.Join(root, "sub", "taken"))
	assert.Equal(t, "old", string(b))
	require.NoError(t, d.Link(name, sub, "free"))
	b, _ = os.ReadFile(filepath.Join(root, "sub", "free"))
	assert.Equal(t, "new", string(b))
}

func TestReadFileCapsBeforeReading(t *testing.T) {
	root, _, d := setup(t)
	require.NoError(t, os.WriteFile(filepath.Join(root, "big"), make([]byte, 1000), 0o644))
	_, err := d.ReadFile("big", 999)
	assert.ErrorIs(t, err, errs.Corrupt)
	b, err := d.ReadFile("big", 1000)
	require.NoError(t, err)
	assert.Len(t, b, 1000)
}

func TestNamesThatLeaveTheFolderAreRefused(t *testing.T) {
	_, _, d := setup(t)
	for _, bad := range []string{"", ".", "..", "../x", "/etc/passwd", "a/../b", "a//b", "a/"} {
		_, err := d.Open(bad)
		assert.ErrorIs(t, err, errs.Invalid, bad)
		_, err = d.MkdirAll(bad)
		assert.ErrorIs(t, err, errs.Invalid, bad)
	}
	for _, bad := range []string{"a/b", "..", ""} {
		assert.ErrorIs(t, d.Remove(bad), errs.Invalid, bad)
	}
}

func TestRemoveAllThroughDescriptors(t *testing.T) {
	root, outside, d := setup(t)
	require.NoError(t, os.MkdirAll(filepath.Join(root, "tree", "a", "b"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "tree", "a", "b", "f"), nil, 0o644))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "tree", "a", "out")))
	require.NoError(t, syscall.Mkfifo(filepath.Join(root, "tree", "fifo"), 0o644))
	require.NoError(t, d.RemoveAll("tree"))
	_, err := os.Lstat(filepath.Join(root, "tree"))
	assert.True(t, os.IsNotExist(err))
	b, _ := os.ReadFile(filepath.Join(outside, "precious"))
	assert.Equal(t, "keep me", string(b))
	require.NoError(t, d.RemoveAll("missing"))
}
