package container

import (
	"bytes"
	"math/rand"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/mapped"
)

func dirEntries(t *testing.T, dir string) []string {
	t.Helper()
	es, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// A pipe has no size: Stat says 0. Compressing one must read it to the
// end, not store an empty file and succeed.
func TestCompressingAFIFOReadsAllOfIt(t *testing.T) {
	dir := t.TempDir()
	data := synthetic()
	fifo := filepath.Join(dir, "in.fifo")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	done := make(chan error, 1)
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err == nil {
			_, err = f.Write(data)
			_ = f.Close()
		}
		done <- err
	}()
	packed := filepath.Join(dir, "out.tpde")
	require.NoError(t, CompressFile(fifo, packed, Options{}))
	require.NoError(t, <-done)
	fi, err := Info(packed, 0)
	require.NoError(t, err)
	assert.Equal(t, uint64(len(data)), fi.OriginalSize)
	assert.Equal(t, "safetensors", fi.Source, "the stream's content is recognised, not just stored")

	restored := filepath.Join(dir, "restored")
	require.NoError(t, DecompressFile(packed, restored, Options{}))
	assert.Equal(t, data, mustRead(t, restored))
	assert.ElementsMatch(t, []string{"in.fifo", "out.tpde", "restored"}, dirEntries(t, dir), "the spool file is gone")
}

// /proc files are regular files whose size reads as 0.
func TestCompressingAProcFileReadsItsContent(t *testing.T) {
	want, err := os.ReadFile("/proc/version")
	require.NoError(t, err)
	require.NotEmpty(t, want)
	dir := t.TempDir()
	packed := filepath.Join(dir, "v.tpde")
	require.NoError(t, CompressFile("/proc/version", packed, Options{}))
	restored := filepath.Join(dir, "v")
	require.NoError(t, DecompressFile(packed, restored, Options{}))
	assert.Equal(t, want, mustRead(t, restored))
}

func TestAnEmptyFileStaysEmpty(t *testing.T) {
	dir := t.TempDir()
	src := writeFile(t, dir, "empty", nil)
	require.NoError(t, CompressFile(src, src+".tpde", Options{}))
	require.NoError(t, DecompressFile(src+".tpde", src+".back", Options{}))
	assert.Empty(t, mustRead(t, src+".back"))
}

func TestADirectoryIsNotAnInput(t *testing.T) {
	dir := t.TempDir()
	err := CompressFile(dir, filepath.Join(dir, "x.tpde"), Options{})
	require.ErrorIs(t, err, errs.IO)
	assert.ErrorIs(t, err, syscall.EISDIR)
	assert.Contains(t, err.Error(), "is a directory")
	err = DecompressFile(dir, filepath.Join(dir, "x"), Options{})
	assert.ErrorIs(t, err, syscall.EISDIR)
	_, err = Info(dir, 0)
	assert.ErrorIs(t, err, syscall.EISDIR)
	assert.Empty(t, dirEntries(t, dir))
}

// A file truncated by another process while it is mapped raises SIGBUS on
// the next read of a page past its new end; the Go runtime would die of
// it. The operation must fail with an I/O error naming the file, and leave
// no output.
func TestAnInputTruncatedWhileMappedIsAnIOErrorNotACrash(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewSource(3))
	data := bf16Weights(r, 4<<20)
	src := writeFile(t, dir, "weights.bin", data)
	packed := filepath.Join(dir, "weights.tpde")
	require.NoError(t, CompressFile(src, packed, Options{}))

	for _, tc := range []struct {
		name, path, out string
		run             func(*mapped.Input, string) error
	}{
		{"compress", src, filepath.Join(dir, "again.tpde"), func(in *mapped.Input, dst string) error { return compressMapped(in, dst, Options{}) }},
		{"decompress", packed, filepath.Join(dir, "restored"), func(in *mapped.Input, dst string) error { return decompressMapped(in, dst, Options{}) }},
		{"info", packed, "", func(in *mapped.Input, _ string) error { _, err := info(in.Data, 0); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keep := mustRead(t, tc.path)
			defer func() { require.NoError(t, os.WriteFile(tc.path, keep, 0o644)) }()
			in, err := mapped.Open(tc.path, dir)
			require.NoError(t, err)
			defer in.Release()
			require.NoError(t, os.Truncate(tc.path, 4096)) // a trainer rewriting the file
			err = mapped.Reading(tc.path, func() error { return tc.run(in, tc.out) })
			require.ErrorIs(t, err, errs.IO)
			assert.ErrorIs(t, err, syscall.EIO)
			assert.Contains(t, err.Error(), tc.path)
			assert.Contains(t, err.Error(), "changed while tpde was reading it")
			if tc.out != "" {
				assert.NoFileExists(t, tc.out)
			}
			assert.ElementsMatch(t, []string{"weights.bin", "weights.tpde"}, dirEntries(t, dir))
		})
	}
}

func TestTheDecodeLimitRefusesBeforeWriting(t *testing.T) {
	dir := t.TempDir()
	data := synthetic()
	src := writeFile(t, dir, "in", data)
	require.NoError(t, CompressFile(src, src+".tpde", Options{}))
	err := DecompressFile(src+".tpde", src+".out", Options{MaxOutput: uint64(len(data)) - 1})
	require.ErrorIs(t, err, errs.Limit)
	assert.Contains(t, err.Error(), "limit")
	assert.NoFileExists(t, src+".out")
	require.NoError(t, DecompressFile(src+".tpde", src+".out", Options{MaxOutput: uint64(len(data))}))
	assert.Equal(t, data, mustRead(t, src+".out"))
}

func TestCancellingStopsAndLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	r := rand.New(rand.NewSource(5))
	data := bf16Weights(r, 8<<20)
	src := writeFile(t, dir, "in", data)
	require.NoError(t, CompressFile(src, src+".tpde", Options{}))
	before := mustRead(t, src+".tpde")

	var polls atomic.Int32
	cancelAfter := func(n int32) func() bool { return func() bool { return polls.Add(1) > n } }
	err := CompressFile(src, src+".tpde", Options{Cancelled: cancelAfter(3)})
	require.ErrorIs(t, err, errs.Cancelled)
	assert.True(t, bytes.Equal(before, mustRead(t, src+".tpde")), "the old output is untouched")
	polls.Store(0)
	err = DecompressFile(src+".tpde", src+".out", Options{Cancelled: cancelAfter(3)})
	require.ErrorIs(t, err, errs.Cancelled)
	assert.NoFileExists(t, src+".out")
	assert.ElementsMatch(t, []string{"in", "in.tpde"}, dirEntries(t, dir))
}

// A file's segment count is its writer's choice. Describing one with a
// million segments must cost memory in proportion to the file (the parsed
// table), not a description per segment.
func TestInfoOfAMillionSegmentsListsFewAndChecksAll(t *testing.T) {
	const n = 1 << 20
	segs := make([]Segment, n)
	body := make([]byte, n)
	for i := range segs {
		body[i] = byte(i)
		segs[i] = Segment{Kind: SegStored, CRC: crc(body[i : i+1]), OrigLen: 1, StoredLen: 1}
	}
	prefix := headerLen + tableLen(n)
	file := make([]byte, prefix, prefix+n)
	putHeader(file, SourceBytes, n, segs)
	file = append(file, body...)
	path := writeFile(t, t.TempDir(), "many.tpde", file)
	segs, body = nil, nil

	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	fi, err := Info(path, 0)
	runtime.ReadMemStats(&after)
	require.NoError(t, err)
	assert.Equal(t, n, fi.SegmentCount)
	assert.Len(t, fi.Segments, DefaultInfoSegments)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("Info allocated %d bytes for a %d-byte file of %d segments", allocated, len(file), n)
	assert.Less(t, allocated, uint64(3*len(file)), "memory in proportion to the file, with a small factor")

	// Damage past the listing is still found.
	file[len(file)-1] ^= 1
	path = writeFile(t, t.TempDir(), "damaged.tpde", file)
	_, err = Info(path, 0)
	assert.ErrorIs(t, err, errs.Corrupt)
}
