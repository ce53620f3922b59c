package api

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func TestFileRoundTripAndInfo(t *testing.T) {
	dir := t.TempDir()
	src, packed, out := filepath.Join(dir, "in"), filepath.Join(dir, "in.tpde"), filepath.Join(dir, "out")
	data := floats(50000, 3)
	require.NoError(t, os.WriteFile(src, data, 0o644))
	var seen uint64
	require.NoError(t, CompressFile(src, packed, nil, FileArgs{Progress: func(n uint64) { seen = max(seen, n) }}))
	require.Equal(t, uint64(len(data)), seen)

	require.NoError(t, FileInfo(caller, packed, 0))
	var info struct {
		Format       string `json:"format"`
		OriginalSize uint64 `json:"original_size"`
		SegmentCount int    `json:"segment_count"`
	}
	doc(t, 0, &info)
	require.Equal(t, uint64(len(data)), info.OriginalSize)
	require.Equal(t, 1, info.SegmentCount)

	require.ErrorIs(t, DecompressFile(packed, out, uint64(len(data)-1), FileArgs{}), errs.Limit)
	require.ErrorIs(t, DecompressFile(packed, out, 0, FileArgs{Cancelled: func() bool { return true }}), errs.Cancelled)
	require.NoFileExists(t, out)
	require.NoError(t, DecompressFile(packed, out, 0, FileArgs{}))
	back, err := os.ReadFile(out)
	require.NoError(t, err)
	require.Equal(t, data, back)

	require.ErrorIs(t, DecompressFile(packed, out, 0, FileArgs{Flags: FileNoReplace}), errs.IO)
	require.ErrorIs(t, DecompressFile(packed, out, 0, FileArgs{Flags: 0x80}), errs.Invalid)
	require.ErrorIs(t, CompressFile(src, packed, []byte(`{"torch_zip": `), FileArgs{}), errs.Invalid)
}
