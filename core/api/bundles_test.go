package api

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// twoItems is a delta item ("w", against ref) and a keyframe ("key").
func twoItems(ref, cur, recon []byte) []BundleItem {
	return []BundleItem{
		{Name: "w", Tensor: Tensor{DType: f32, Shape: []uint64{50, 100}, Data: cur}, Ref: ref,
			Delta: DeltaArgs{Residual: ResidualAuto}, Recon: recon},
		{Name: "key", Tensor: Tensor{DType: f32, Shape: []uint64{5000}, Data: cur}},
	}
}

func TestBundleInMemoryThenOpened(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	ref := floats(5000, 1)
	cur, recon := nudged(ref), make([]byte, 20000)
	items := twoItems(ref, cur, recon)
	bound, err := BundleBound(items, 0)
	require.NoError(t, err)

	w := OpenBundlePieces()
	blob := make([]byte, bound+64)
	_, err = BundleWriterAdd(w, items, 0, 0, blob[:bound-1])
	require.ErrorIs(t, err, errs.BufferTooSmall, "below the bound: refused before anything is coded")
	n, err := BundleWriterAdd(w, items, 0, 0, blob)
	require.NoError(t, err)
	require.Equal(t, cur, recon)
	var added BundleAdded
	doc(t, w, &added)
	require.Len(t, added.Items.FrameSize, 2)
	require.GreaterOrEqual(t, added.Items.Residual[0], 0)
	require.Equal(t, uint64(1667), added.Items.ChangedElems[0]) // every third of 5000
	require.Equal(t, -1, added.Items.Residual[1])
	require.Positive(t, added.Items.FrameSize[1])
	require.Equal(t, []bool{false, false}, added.Items.Identical)

	meta := []byte(`{"epoch": 2, "note": "<a&b>"}`)
	total, err := BundleWriterClose(w, meta, true, blob[n:n+4])
	require.ErrorIs(t, err, errs.BufferTooSmall, "the tail does not fit: the writer stays open")
	require.Greater(t, total, n)
	total2, err := BundleWriterClose(w, meta, true, blob[n:])
	require.NoError(t, err)
	require.Equal(t, total, total2)
	_, err = BundleWriterClose(w, nil, false, nil)
	require.ErrorIs(t, err, errs.Invalid, "closed")
	blob = blob[:total]

	r, err := OpenBundle(blob)
	require.NoError(t, err)
	var index BundleIndex
	doc(t, r, &index)
	require.Equal(t, total, index.Size)
	e := index.Entries
	require.Equal(t, []string{"w", "key"}, e.Name)
	require.Equal(t, []int{1, 0}, e.Kind)
	require.Equal(t, []int{f32, f32}, e.DType)
	require.Equal(t, [][]uint64{{50, 100}, {5000}}, e.Shape)
	require.Equal(t, []uint64{20000, 20000}, e.RawSize)
	require.Equal(t, []uint64{8, 8 + e.FrameSize[0]}, e.Offset)
	require.Equal(t, -1, e.Residual[1])
	require.Equal(t, []uint64{1667, 0}, e.ChangedElems)
	require.Equal(t, []bool{false, false}, e.Lossy)
	require.JSONEq(t, string(meta), string(index.Meta))
	require.Contains(t, string(index.Meta), "<a&b>", "a document is not HTML-escaped")

	back, key := make([]byte, 20000), make([]byte, 20000)
	require.NoError(t, BundleDecode(r, []BundleOut{{Index: 0, Dst: back, Ref: ref}, {Index: 1, Dst: key}}, 0))
	require.Equal(t, cur, back)
	require.Equal(t, cur, key)
	err = BundleDecode(r, []BundleOut{{Index: 0, Dst: back, Ref: cur}}, 0)
	require.ErrorIs(t, err, errs.ReferenceMismatch)
	require.Contains(t, err.Error(), `"w"`)
	require.ErrorIs(t, BundleDecode(r, []BundleOut{{Index: 2, Dst: back}}, 0), errs.Invalid)
	require.NoError(t, BundleClose(r))
	require.ErrorIs(t, BundleClose(r), errs.Invalid)

	blob[len(blob)-20] ^= 1
	_, err = OpenBundle(blob)
	require.ErrorIs(t, err, errs.Corrupt)
}

func TestBundleStreamedToAFileIsTheSameBundle(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	ref := floats(5000, 1)
	cur := nudged(ref)
	items := twoItems(ref, cur, nil)
	meta := []byte(`{"epoch": 2}`)

	w := OpenBundlePieces()
	bound, err := BundleBound(items, uint64(len(meta)))
	require.NoError(t, err)
	mem := make([]byte, bound)
	n, err := BundleWriterAdd(w, items, 0, 0, mem)
	require.NoError(t, err)
	total, err := BundleWriterClose(w, meta, true, mem[n:])
	require.NoError(t, err)

	path := filepath.Join(t.TempDir(), "b.tpdb")
	f, err := OpenBundleFile(path)
	require.NoError(t, err)
	for i := range items {
		_, err = BundleWriterAdd(f, items[i:i+1], 0, 1, nil)
		require.NoError(t, err)
	}
	flen, err := BundleWriterClose(f, meta, true, nil)
	require.NoError(t, err)
	require.Equal(t, total, flen)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, mem[:total], got)

	// A writer closed without commit leaves nothing.
	path2 := filepath.Join(t.TempDir(), "dropped.tpdb")
	f, err = OpenBundleFile(path2)
	require.NoError(t, err)
	_, err = BundleWriterAdd(f, items, 0, 0, nil)
	require.NoError(t, err)
	_, err = BundleWriterClose(f, nil, false, nil)
	require.NoError(t, err)
	require.NoFileExists(t, path2)
}

func TestBundleItemsAreChecked(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	ref := floats(100, 1)
	good := BundleItem{Name: "w", Tensor: Tensor{DType: f32, Shape: []uint64{100}, Data: nudged(ref)}, Ref: ref}
	for name, bad := range map[string]func(*BundleItem){
		"dtype":               func(it *BundleItem) { it.DType = 42 },
		"residual":            func(it *BundleItem) { it.Delta.Residual = 9 },
		"the bundle's effort": func(it *BundleItem) { it.Delta.Effort = 1 },
		"lossy keyframe":      func(it *BundleItem) { it.Ref, it.Delta.Threshold = nil, 0.1 },
		"keyframe with ref2":  func(it *BundleItem) { it.Ref, it.Ref2 = nil, ref },
	} {
		it := good
		bad(&it)
		_, err := BundleBound([]BundleItem{it}, 0)
		require.ErrorIs(t, err, errs.Invalid, name)
		require.Contains(t, err.Error(), `"w"`, name)
	}
	it := good
	it.Recon = make([]byte, 399)
	_, err := BundleBound([]BundleItem{it}, 0)
	require.ErrorIs(t, err, errs.BufferTooSmall)
	_, err = BundleBound([]BundleItem{good}, 1<<40)
	require.ErrorIs(t, err, errs.Invalid, "metadata over the cap")

	out := make([]float64, 1)
	require.NoError(t, BundleThresholds([]BundleItem{good}, 90, 0, out))
	one, err := DeltaThreshold(good.Data, ref, f32, 90)
	require.NoError(t, err)
	require.Equal(t, one, out[0])
	require.ErrorIs(t, BundleThresholds([]BundleItem{good}, 90, 0, nil), errs.BufferTooSmall)

	// A writer whose close has bad arguments is released all the same.
	w := OpenBundlePieces()
	_, err = BundleWriterClose(w, make([]byte, 1<<28+1), true, nil)
	require.ErrorIs(t, err, errs.Invalid)
	_, err = Result(w, caller)
	require.ErrorIs(t, err, errs.Invalid)
}
