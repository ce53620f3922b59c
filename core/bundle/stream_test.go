package bundle

import (
	"errors"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// pieces writes items with a memory Stream, in the given add calls, each
// piece into a buffer of its own (as a caller across the ABI may), and
// returns the concatenation.
func pieces(t *testing.T, items []Item, splits []int, meta []byte) []byte {
	s := NewPieces()
	var blob []byte
	from := 0
	for _, to := range append(splits, len(items)) {
		part := items[from:to]
		bound, err := Bound(part, 0)
		require.NoError(t, err)
		dst := make([]byte, bound)
		n, err := s.Add(dst, part, Options{Threads: 2}, nil)
		require.NoError(t, err)
		blob = append(blob, dst[:n]...)
		from = to
	}
	tail := make([]byte, s.CloseLen(len(meta)))
	total, err := s.Close(tail, meta, true)
	require.NoError(t, err)
	require.True(t, s.Ended())
	blob = append(blob, tail...)
	require.Equal(t, uint64(len(blob)), total)
	return blob
}

func TestStreamsMakeTheBufferWritersBytes(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(3)))
	meta := []byte(`{"epoch": 1}`)
	want, _ := encodeBuffer(t, items, meta, 2)
	assert.Equal(t, want, pieces(t, items, nil, meta))
	assert.Equal(t, want, pieces(t, items, []int{1, 7}, meta))

	path := filepath.Join(t.TempDir(), "b.tpdb")
	s, err := CreateFile(path)
	require.NoError(t, err)
	_, err = s.Add(nil, items[:4], Options{}, nil)
	require.NoError(t, err)
	_, err = s.Add(nil, items[4:], Options{}, nil)
	require.NoError(t, err)
	total, err := s.Close(nil, meta, true)
	require.NoError(t, err)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, want, got)
	assert.Equal(t, uint64(len(want)), total)
}

func TestEmptyMemoryStreamIsPreambleIndexTrailer(t *testing.T) {
	want, _ := encodeBuffer(t, nil, nil, 1)
	assert.Equal(t, want, pieces(t, nil, nil, nil))
}

func TestMemoryStreamRefusesSmallBuffersAndStaysUsable(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(4)))[:3]
	meta := []byte(`{"a": 1}`)
	want, _ := encodeBuffer(t, items, meta, 1)
	s := NewPieces()
	bound, err := Bound(items, 0)
	require.NoError(t, err)
	_, err = s.Add(make([]byte, bound-1), items, Options{}, nil)
	require.True(t, errors.Is(err, errs.BufferTooSmall), "%v", err)

	dst := make([]byte, bound)
	n, err := s.Add(dst, items, Options{}, nil)
	require.NoError(t, err)
	total, err := s.Close(make([]byte, 5), meta, true)
	require.True(t, errors.Is(err, errs.BufferTooSmall), "%v", err)
	require.False(t, s.Ended())
	assert.Equal(t, uint64(len(want)), total, "the total is reported with the refusal")
	tail := make([]byte, total-n)
	_, err = s.Close(tail, meta, true)
	require.NoError(t, err)
	assert.Equal(t, want, append(dst[:n:n], tail...))
	_, err = s.Add(dst, items, Options{}, nil)
	require.True(t, errors.Is(err, errs.Invalid), "an ended stream refuses: %v", err)
}

func TestAbandonedFileStreamLeavesNothing(t *testing.T) {
	dir := t.TempDir()
	s, err := CreateFile(filepath.Join(dir, "b.tpdb"))
	require.NoError(t, err)
	_, err = s.Add(nil, testItems(rand.New(rand.NewSource(5)))[:2], Options{}, nil)
	require.NoError(t, err)
	_, err = s.Close(nil, nil, false)
	require.NoError(t, err)
	names, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, names)
	// A failed commit (bad metadata) abandons it too.
	s, err = CreateFile(filepath.Join(dir, "c.tpdb"))
	require.NoError(t, err)
	_, err = s.Close(nil, []byte(`[1]`), true)
	require.True(t, errors.Is(err, errs.Invalid), "%v", err)
	require.True(t, s.Ended())
	names, err = os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, names)
}

func TestReaderDescribesAndDecodesWithoutReparsing(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(6)))
	blob, res := encodeBuffer(t, items, []byte(`{}`), 2)
	r, err := OpenReader(blob)
	require.NoError(t, err)
	require.Len(t, r.Infos, len(items))
	for i, it := range items {
		in := r.Infos[i]
		assert.Equal(t, it.DType, in.DType, it.Name)
		assert.Equal(t, it.Shape, in.Shape, it.Name)
		assert.Equal(t, uint64(len(it.Data)), in.RawSize, it.Name)
		assert.Equal(t, !res[i].Keyframe, in.Delta, it.Name)
		if in.Delta {
			assert.Equal(t, res[i].Delta.Changed, in.Changed, it.Name)
			assert.Equal(t, res[i].Delta.Identical, in.Identical, it.Name)
		} else {
			assert.Equal(t, -1, in.Residual, it.Name)
		}
	}
	outs := make([]Out, len(items))
	for i, it := range items {
		outs[i] = Out{Index: i, Dst: make([]byte, len(it.Data)), Ref: it.Ref}
	}
	require.NoError(t, r.Decode(outs, 2))
	for i, it := range items {
		require.Equal(t, it.Data, outs[i].Dst, it.Name)
	}
	outs[0].Dst = outs[0].Dst[:1]
	err = r.Decode(outs[:1], 1)
	require.True(t, errors.Is(err, errs.BufferTooSmall), "%v", err)

	// A damaged frame header is found when the bundle is opened.
	bad := append([]byte(nil), blob...)
	bad[r.Entries[1].Offset+5] ^= 0x40
	_, err = OpenReader(bad)
	require.Error(t, err)
	assert.Contains(t, err.Error(), items[1].Name)
}

func TestThresholdsAreEachTensorsPercentile(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(7)))[:5]
	got, err := Thresholds(items, 90, 3)
	require.NoError(t, err)
	for i, it := range items {
		want, err := delta.PercentileThreshold(it.DType, it.Data, it.Ref, 90)
		require.NoError(t, err)
		assert.Equal(t, want, got[i], it.Name)
	}
	_, err = Thresholds([]Item{{Name: "k", DType: dtype.F32, Data: make([]byte, 8)}}, 90, 1)
	require.True(t, errors.Is(err, errs.Invalid), "%v", err)
	assert.Contains(t, err.Error(), `"k"`)
	ints := Item{Name: "i", DType: dtype.I32, Data: make([]byte, 8), Ref: make([]byte, 8)}
	_, err = Thresholds([]Item{ints}, 90, 1)
	require.True(t, errors.Is(err, errs.Invalid), "%v", err)
	assert.Contains(t, err.Error(), `"i"`)
}
