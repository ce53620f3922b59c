package atomicfile

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func write(t *testing.T, dst string, opt Options, data string) {
	t.Helper()
	f, err := Create(dst, opt)
	require.NoError(t, err)
	defer f.Abort()
	_, err = f.WriteString(data)
	require.NoError(t, err)
	require.NoError(t, f.Commit())
}

func perm(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	require.NoError(t, err)
	return st.Mode().Perm()
}

// entries lists dir, so tests can assert that no temporary file is left.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

func bothModes(t *testing.T, fn func(t *testing.T)) {
	for _, tmpfile := range []bool{true, false} {
		name := map[bool]string{true: "unnamed", false: "named"}[tmpfile]
		t.Run(name, func(t *testing.T) {
			defer func(v bool) { useTmpfile = v }(useTmpfile)
			useTmpfile = tmpfile
			fn(t)
		})
	}
}

func TestNewFilesGetTheModeTheUmaskGives(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir := t.TempDir()
		for umask, want := range map[int]os.FileMode{0o022: 0o644, 0o077: 0o600, 0o002: 0o664, 0o027: 0o640} {
			old := syscall.Umask(umask)
			dst := filepath.Join(dir, "new")
			_ = os.Remove(dst)
			write(t, dst, Options{}, "x")
			syscall.Umask(old)
			assert.Equal(t, want, perm(t, dst), "umask %03o", umask)
		}
	})
}

func TestASourceModeRemovesPermissionBits(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o022))
	dir := t.TempDir()
	dst := filepath.Join(dir, "out")
	write(t, dst, Options{SourcePerm: 0o600, HasSource: true}, "private")
	assert.Equal(t, os.FileMode(0o600), perm(t, dst))
	// Replacing keeps the old file's mode, still less what the source lacks.
	require.NoError(t, os.Chmod(dst, 0o664))
	write(t, dst, Options{SourcePerm: 0o640, HasSource: true}, "again")
	assert.Equal(t, os.FileMode(0o640), perm(t, dst))
	require.NoError(t, os.Chmod(dst, 0o604))
	write(t, dst, Options{}, "kept")
	assert.Equal(t, os.FileMode(0o604), perm(t, dst))
}

func TestSymlinkDestinationsAreWrittenThrough(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir := t.TempDir()
		sub := filepath.Join(dir, "real")
		require.NoError(t, os.Mkdir(sub, 0o755))
		target := filepath.Join(sub, "target")
		require.NoError(t, os.WriteFile(target, []byte("old"), 0o600))
		require.NoError(t, os.Chmod(target, 0o600))
		link := filepath.Join(dir, "link")
		require.NoError(t, os.Symlink("real/target", link)) // relative, resolved from the link's directory
		hop := filepath.Join(dir, "hop")
		require.NoError(t, os.Symlink(link, hop))

		write(t, hop, Options{}, "new")
		got, err := os.ReadFile(target)
		require.NoError(t, err)
		assert.Equal(t, "new", string(got))
		for _, l := range []string{link, hop} {
			st, err := os.Lstat(l)
			require.NoError(t, err)
			assert.Equal(t, os.ModeSymlink, st.Mode().Type(), "%s is still a symlink", l)
		}
		assert.Equal(t, os.FileMode(0o600), perm(t, target), "the target keeps its own mode")
		assert.ElementsMatch(t, []string{"target"}, entries(t, sub))

		dangling := filepath.Join(dir, "dangling")
		require.NoError(t, os.Symlink("real/made-by-tpde", dangling))
		write(t, dangling, Options{}, "created")
		got, err = os.ReadFile(filepath.Join(sub, "made-by-tpde"))
		require.NoError(t, err)
		assert.Equal(t, "created", string(got))

		loop := filepath.Join(dir, "loop")
		require.NoError(t, os.Symlink("loop", loop))
		_, err = Create(loop, Options{})
		assert.ErrorIs(t, err, errs.IO)
		assert.ErrorIs(t, err, syscall.ELOOP)
	})
}

func TestDirectoriesAndDevicesAreRefusedNotReplaced(t *testing.T) {
	dir := t.TempDir()
	_, err := Create(dir, Options{})
	assert.ErrorIs(t, err, errs.IO)
	assert.ErrorIs(t, err, syscall.EISDIR)
	assert.Contains(t, err.Error(), "is a directory")

	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	_, err = Create(fifo, Options{})
	assert.ErrorIs(t, err, syscall.EINVAL)
	assert.Contains(t, err.Error(), "not a regular file")
	st, err := os.Lstat(fifo)
	require.NoError(t, err)
	assert.Equal(t, os.ModeNamedPipe, st.Mode().Type(), "the FIFO is still there")

	_, err = Create("/dev/null", Options{})
	assert.ErrorIs(t, err, syscall.EINVAL)
	st, err = os.Stat("/dev/null")
	require.NoError(t, err)
	assert.Equal(t, os.ModeDevice|os.ModeCharDevice, st.Mode().Type())

	_, err = Create(filepath.Join(dir, "missing", "f"), Options{})
	assert.ErrorIs(t, err, syscall.ENOENT)
}

func TestNamesUpToNameMaxWork(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir := t.TempDir()
		for _, n := range []int{1, 200, 245, 250, 255} {
			name := strings.Repeat("n", n)
			write(t, filepath.Join(dir, name), Options{}, "x")
			assert.FileExists(t, filepath.Join(dir, name))
		}
		assert.Len(t, entries(t, dir), 5)
	})
}

func TestAbortLeavesNothingAndKeepsTheOldFile(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir := t.TempDir()
		dst := filepath.Join(dir, "ckpt")
		require.NoError(t, os.WriteFile(dst, []byte("committed"), 0o644))
		f, err := Create(dst, Options{})
		require.NoError(t, err)
		_, err = f.WriteString("half written")
		require.NoError(t, err)
		f.Abort()
		f.Abort() // idempotent
		assert.Equal(t, []string{"ckpt"}, entries(t, dir))
		got, err := os.ReadFile(dst)
		require.NoError(t, err)
		assert.Equal(t, "committed", string(got))
	})
}

// On Linux the file being written has no name: a writer killed at any
// point before Commit leaves nothing in the directory.
func TestAnUnnamedTemporaryFileIsInvisibleWhileWritten(t *testing.T) {
	dir := t.TempDir()
	f, err := Create(filepath.Join(dir, "out"), Options{})
	require.NoError(t, err)
	defer f.Abort()
	_, err = f.WriteString("data")
	require.NoError(t, err)
	if f.named != "" {
		t.Fatalf("O_TMPFILE was not used in %s (the named fallback was): this test needs a filesystem with O_TMPFILE", dir)
	}
	assert.Empty(t, entries(t, dir))
	require.NoError(t, f.Commit())
	assert.Equal(t, []string{"out"}, entries(t, dir))
}

// The named fallback: a writer killed with SIGKILL leaves its temporary
// file, and the next Create in that directory removes it, because nobody
// holds its lock any more. A live writer's file is left alone.
func TestStaleTemporaryFilesOfKilledWritersAreRemoved(t *testing.T) {
	defer func(v bool) { useTmpfile = v }(useTmpfile)
	useTmpfile = false
	dir := t.TempDir()

	start := func() (*exec.Cmd, string) {
		cmd := exec.Command(os.Args[0])
		cmd.Env = append(os.Environ(), "TPDE_ATOMICFILE_HELPER_DIR="+dir)
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		line, err := bufio.NewReader(out).ReadString('\n')
		require.NoError(t, err, "the writer process did not start")
		name := strings.TrimSpace(strings.TrimPrefix(line, "writing "))
		require.FileExists(t, name)
		return cmd, name
	}

	live, liveName := start()
	killed, staleName := start()
	require.NoError(t, killed.Process.Signal(syscall.SIGKILL))
	_ = killed.Wait()
	require.FileExists(t, staleName, "kill -9 leaves the named temporary file")

	write(t, filepath.Join(dir, "other"), Options{}, "x")
	assert.NoFileExists(t, staleName, "the dead writer's file is removed")
	assert.FileExists(t, liveName, "the live writer's file is kept")

	require.NoError(t, live.Process.Signal(syscall.SIGKILL))
	_ = live.Wait()
	write(t, filepath.Join(dir, "other"), Options{}, "y")
	assert.Equal(t, []string{"other"}, entries(t, dir))
}

// TestMain doubles as the writer process of the test above when started
// by it: it opens a named temporary file, says where, and waits to be
// killed.
func TestMain(m *testing.M) {
	if dir := os.Getenv("TPDE_ATOMICFILE_HELPER_DIR"); dir != "" {
		useTmpfile = false
		f, err := Create(filepath.Join(dir, "ckpt.bin"), Options{})
		if err != nil {
			os.Stdout.WriteString("error " + err.Error() + "\n")
			os.Exit(1)
		}
		_, _ = f.WriteString(strings.Repeat("w", 1<<16))
		os.Stdout.WriteString("writing " + f.named + "\n")
		time.Sleep(time.Minute)
		f.Abort()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// mustRead is the content of path.
func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func TestNoReplaceRefusesAnythingAtTheName(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir, elsewhere := t.TempDir(), t.TempDir()
		target := filepath.Join(elsewhere, "target")
		require.NoError(t, os.WriteFile(target, []byte("theirs"), 0o644))
		file := filepath.Join(dir, "file")
		require.NoError(t, os.WriteFile(file, []byte("old"), 0o644))
		link := filepath.Join(dir, "link")
		require.NoError(t, os.Symlink(target, link))
		dangling := filepath.Join(dir, "dangling")
		require.NoError(t, os.Symlink(filepath.Join(elsewhere, "nothing"), dangling))
		sub := filepath.Join(dir, "sub")
		require.NoError(t, os.Mkdir(sub, 0o755))
		fifo := filepath.Join(dir, "fifo")
		require.NoError(t, syscall.Mkfifo(fifo, 0o600))
		for _, dst := range []string{file, link, dangling, sub, fifo} {
			_, err := Create(dst, Options{NoReplace: true})
			assert.ErrorIs(t, err, errs.IO, dst)
			assert.ErrorIs(t, err, syscall.EEXIST, dst)
			assert.Contains(t, err.Error(), dst)
		}
		assert.Equal(t, "old", mustRead(t, file))
		assert.Equal(t, "theirs", mustRead(t, target))
		assert.NoFileExists(t, filepath.Join(elsewhere, "nothing"), "a dangling link is not followed")
		assert.ElementsMatch(t, []string{"file", "link", "dangling", "sub", "fifo"}, entries(t, dir))

		fresh := filepath.Join(dir, "fresh")
		write(t, fresh, Options{NoReplace: true}, "new")
		assert.Equal(t, "new", mustRead(t, fresh))
		assert.Equal(t, 6, len(entries(t, dir)), "no temporary file left: %v", entries(t, dir))
	})
}

// A file that another process creates at the destination after Create's
// check is refused by the publishing step itself, not replaced.
func TestNoReplaceRefusesAFileCreatedWhileWriting(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir := t.TempDir()
		dst := filepath.Join(dir, "out")
		f, err := Create(dst, Options{NoReplace: true})
		require.NoError(t, err)
		defer f.Abort()
		_, err = f.WriteString("ours")
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(dst, []byte("theirs"), 0o644))
		err = f.Commit()
		assert.ErrorIs(t, err, errs.IO)
		assert.ErrorIs(t, err, syscall.EEXIST)
		assert.Contains(t, err.Error(), "not replaced")
		f.Abort()
		assert.Equal(t, "theirs", mustRead(t, dst))
		assert.Equal(t, []string{"out"}, entries(t, dir))
	})
}

// Without hard links (vfat, many FUSE filesystems) NoReplace still holds:
// by rename with RENAME_NOREPLACE, else by a check just before the rename.
func TestNoReplaceWithoutHardLinks(t *testing.T) {
	defer func(v bool) { useTmpfile = v }(useTmpfile)
	useTmpfile = false // a filesystem without hard links has no O_TMPFILE either
	defer func(l func(string, string) error) { link = l }(link)
	link = func(string, string) error { return &os.LinkError{Op: "link", Err: syscall.EPERM} }
	defer func(r func(string, string) error) { renameExcl = r }(renameExcl)
	for _, name := range []string{"renameat2", "check before rename"} {
		t.Run(name, func(t *testing.T) {
			if name != "renameat2" {
				renameExcl = func(string, string) error { return syscall.EINVAL }
			}
			dir := t.TempDir()
			dst := filepath.Join(dir, "out")
			write(t, dst, Options{NoReplace: true}, "new")
			assert.Equal(t, "new", mustRead(t, dst))
			assert.Equal(t, []string{"out"}, entries(t, dir))

			raced := filepath.Join(dir, "raced")
			f, err := Create(raced, Options{NoReplace: true})
			require.NoError(t, err)
			defer f.Abort()
			require.NoError(t, os.WriteFile(raced, []byte("theirs"), 0o644))
			assert.ErrorIs(t, f.Commit(), syscall.EEXIST)
			f.Abort()
			assert.Equal(t, "theirs", mustRead(t, raced))
			assert.ElementsMatch(t, []string{"out", "raced"}, entries(t, dir))
		})
	}
}

func TestNoFollowRefusesSymlinksAndReplacesTheNameItself(t *testing.T) {
	bothModes(t, func(t *testing.T) {
		dir, elsewhere := t.TempDir(), t.TempDir()
		target := filepath.Join(elsewhere, "target")
		require.NoError(t, os.WriteFile(target, []byte("theirs"), 0o644))
		link := filepath.Join(dir, "link")
		require.NoError(t, os.Symlink(target, link))
		_, err := Create(link, Options{NoFollow: true})
		assert.ErrorIs(t, err, errs.IO)
		assert.ErrorIs(t, err, syscall.ELOOP)
		assert.Contains(t, err.Error(), "symbolic link")

		file := filepath.Join(dir, "file")
		require.NoError(t, os.WriteFile(file, []byte("old"), 0o600))
		write(t, file, Options{NoFollow: true}, "new")
		assert.Equal(t, "new", mustRead(t, file))
		assert.Equal(t, os.FileMode(0o600), perm(t, file), "a replaced file keeps its mode")

		// A link that appears after Create is replaced by the rename, as
		// a name: the file it points to is untouched.
		late := filepath.Join(dir, "late")
		f, err := Create(late, Options{NoFollow: true})
		require.NoError(t, err)
		defer f.Abort()
		_, err = f.WriteString("ours")
		require.NoError(t, err)
		require.NoError(t, os.Symlink(target, late))
		require.NoError(t, f.Commit())
		st, err := os.Lstat(late)
		require.NoError(t, err)
		assert.True(t, st.Mode().IsRegular())
		assert.Equal(t, "ours", mustRead(t, late))
		assert.Equal(t, "theirs", mustRead(t, target))
	})
}
