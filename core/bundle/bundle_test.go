package bundle

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

var update = flag.Bool("update", false, "rewrite the golden bundle in testdata/")

func f32s(v []float32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(x))
	}
	return b
}

func randomWalk(rng *rand.Rand, n int, step float64) (cur, ref []float32) {
	ref = make([]float32, n)
	cur = make([]float32, n)
	for i := range ref {
		ref[i] = float32(rng.NormFloat64() * 0.05)
		cur[i] = ref[i]
		if rng.Intn(4) != 0 {
			cur[i] += float32(rng.NormFloat64() * step)
		}
	}
	return cur, ref
}

// testItems is a checkpoint of assorted tensors: a large delta, small
// deltas, a keyframe, a 0-d tensor, an empty tensor and an unchanged one.
func testItems(rng *rand.Rand) (items []Item) {
	big, bigRef := randomWalk(rng, 600_000, 1e-4) // 2.4 MB: coded alone
	items = append(items, Item{Name: "encoder.big.weight", DType: dtype.F32, Shape: []uint64{600, 1000},
		Data: f32s(big), Ref: f32s(bigRef), Delta: frame.DeltaOptions{Residual: delta.Auto}})
	for i := 0; i < 12; i++ {
		c, r := randomWalk(rng, 384, 1e-3)
		items = append(items, Item{Name: "layer." + string(rune('a'+i)) + ".bias", DType: dtype.F32,
			Shape: []uint64{384}, Data: f32s(c), Ref: f32s(r), Delta: frame.DeltaOptions{Residual: delta.Auto}})
	}
	kf, _ := randomWalk(rng, 1000, 0)
	items = append(items, Item{Name: "new.keyframe", DType: dtype.F32, Shape: []uint64{10, 100}, Data: f32s(kf)})
	items = append(items, Item{Name: "step", DType: dtype.I64, Shape: []uint64{}, Data: []byte{7, 0, 0, 0, 0, 0, 0, 0}})
	items = append(items, Item{Name: "empty", DType: dtype.BF16, Shape: []uint64{0, 3}, Data: []byte{}})
	same, _ := randomWalk(rng, 2048, 0)
	items = append(items, Item{Name: "frozen/ünïcode", DType: dtype.F32, Shape: []uint64{32, 64},
		Data: f32s(same), Ref: f32s(same), Delta: frame.DeltaOptions{Residual: delta.Auto}})
	return items
}

func encodeBuffer(t *testing.T, items []Item, meta []byte, threads int) ([]byte, []ItemResult) {
	bound, err := Bound(items, len(meta))
	require.NoError(t, err)
	dst := make([]byte, bound)
	w, err := NewBufferWriter(dst)
	require.NoError(t, err)
	res := make([]ItemResult, len(items))
	require.NoError(t, w.Add(items, Options{Threads: threads}, res))
	n, err := w.Close(meta)
	require.NoError(t, err)
	return dst[:n], res
}

func decodeAll(t *testing.T, b *Bundle, items []Item, threads int) [][]byte {
	outs := make([]Out, len(items))
	got := make([][]byte, len(items))
	for i, it := range items {
		k, ok := b.Lookup(it.Name)
		require.True(t, ok, it.Name)
		got[i] = make([]byte, len(it.Data))
		outs[i] = Out{Index: k, Dst: got[i], Ref: it.Ref, Ref2: it.Ref2}
	}
	require.NoError(t, b.Decode(outs, threads))
	return got
}

func TestRoundTripBufferAndStream(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(1)))
	meta := []byte(`{"epoch": 3, "kind": "delta"}`)
	for _, threads := range []int{1, 2, 4} {
		blob, res := encodeBuffer(t, items, meta, threads)

		var stream bytes.Buffer
		w, err := NewWriter(&stream)
		require.NoError(t, err)
		// Added in two calls, as stream_compress_to_file does.
		require.NoError(t, w.Add(items[:5], Options{Threads: threads}, nil))
		require.NoError(t, w.Add(items[5:], Options{Threads: threads}, nil))
		n, err := w.Close(meta)
		require.NoError(t, err)
		require.Equal(t, uint64(stream.Len()), n)
		// Output depends on the input alone: not on threads, not on
		// how the tensors were handed over.
		require.Equal(t, blob, stream.Bytes(), "threads %d", threads)

		b, err := Open(blob)
		require.NoError(t, err)
		assert.Equal(t, meta, b.Meta)
		require.Len(t, b.Entries, len(items))
		for i, it := range items {
			assert.Equal(t, it.Name, b.Entries[i].Name)
			assert.Equal(t, res[i].FrameLen, b.Entries[i].Length)
			assert.Equal(t, it.Ref == nil, res[i].Keyframe)
		}
		assert.True(t, res[len(items)-1].Delta.Identical)
		assert.LessOrEqual(t, res[len(items)-1].FrameLen, uint64(64))
		for i, g := range decodeAll(t, b, items, threads) {
			require.Equal(t, items[i].Data, g, items[i].Name)
		}
	}
}

func TestReconIsWhatDecodes(t *testing.T) {
	rng := rand.New(rand.NewSource(2))
	items := testItems(rng)
	for i := range items {
		items[i].Recon = make([]byte, len(items[i].Data))
		if items[i].Ref != nil && items[i].DType.IsFloat() {
			items[i].Delta.Threshold = 1e-4
			items[i].Delta.QuantBits = 8
		}
	}
	blob, res := encodeBuffer(t, items, nil, 2)
	b, err := Open(blob)
	require.NoError(t, err)
	assert.Equal(t, []byte("{}"), b.Meta)
	for i, g := range decodeAll(t, b, items, 2) {
		require.Equal(t, items[i].Recon, g, items[i].Name)
		if items[i].Delta.Threshold > 0 {
			assert.LessOrEqual(t, res[i].Delta.MaxErr, 1e-4, items[i].Name)
		}
	}
}

// A tensor that changed wholesale is stored as a keyframe when that is
// smaller than its delta; it still decodes, with or without the reference.
func TestWholesaleChangeFallsBackToKeyframe(t *testing.T) {
	rng := rand.New(rand.NewSource(6))
	a, _ := randomWalk(rng, 20000, 0)
	b, _ := randomWalk(rng, 20000, 0)
	items := []Item{{Name: "reinit", DType: dtype.F32, Shape: []uint64{20000}, Data: f32s(b), Ref: f32s(a),
		Delta: frame.DeltaOptions{Residual: delta.Auto}, Recon: make([]byte, 80000)}}
	blob, res := encodeBuffer(t, items, nil, 1)
	require.True(t, res[0].Keyframe)
	require.Equal(t, items[0].Data, items[0].Recon)
	bd, err := Open(blob)
	require.NoError(t, err)
	require.Equal(t, items[0].Data, decodeAll(t, bd, items, 1)[0])
	kf, err := frame.Bound(80000, dtype.F32, 1, 0)
	require.NoError(t, err)
	require.Less(t, res[0].FrameLen, kf)
}

func TestWrongReferenceNamesTheTensor(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(3)))
	blob, _ := encodeBuffer(t, items, nil, 2)
	b, err := Open(blob)
	require.NoError(t, err)
	k, _ := b.Lookup("layer.c.bias")
	bad := append([]byte(nil), items[k].Ref...)
	bad[5] ^= 1
	err = b.Decode([]Out{{Index: k, Dst: make([]byte, len(bad)), Ref: bad}}, 1)
	require.ErrorIs(t, err, errs.ReferenceMismatch)
	assert.Contains(t, err.Error(), `"layer.c.bias"`)
	err = b.Decode([]Out{{Index: k, Dst: make([]byte, len(bad))}}, 1)
	require.ErrorIs(t, err, errs.ReferenceMismatch)
	err = b.Decode([]Out{{Index: k, Dst: make([]byte, 3), Ref: items[k].Ref}}, 1)
	require.ErrorIs(t, err, errs.BufferTooSmall)
	err = b.Decode([]Out{{Index: len(items)}}, 1)
	require.ErrorIs(t, err, errs.Invalid)
}

func TestWriterRefusesBadItems(t *testing.T) {
	one := Item{Name: "x", DType: dtype.F32, Shape: []uint64{1}, Data: make([]byte, 4)}
	cases := map[string]func(*Item){
		"empty name":     func(it *Item) { it.Name = "" },
		"bad utf8":       func(it *Item) { it.Name = "\xff" },
		"long name":      func(it *Item) { it.Name = string(make([]byte, MaxNameLen+1)) },
		"shape mismatch": func(it *Item) { it.Shape = []uint64{2} },
		"ref length":     func(it *Item) { it.Ref = make([]byte, 8) },
		"lossy integer": func(it *Item) {
			it.DType, it.Ref, it.Delta.Threshold = dtype.I32, make([]byte, 4), 1
		},
		"recon length": func(it *Item) { it.Recon = make([]byte, 1) },
	}
	for name, edit := range cases {
		t.Run(name, func(t *testing.T) {
			it := one
			edit(&it)
			w, err := NewWriter(&bytes.Buffer{})
			require.NoError(t, err)
			err = w.Add([]Item{it}, Options{}, nil)
			require.ErrorIs(t, err, errs.Invalid)
			// A failed writer stays failed.
			require.Error(t, w.Add([]Item{one}, Options{}, nil))
			_, err = w.Close(nil)
			require.Error(t, err)
		})
	}
	w, err := NewWriter(&bytes.Buffer{})
	require.NoError(t, err)
	require.NoError(t, w.Add([]Item{one}, Options{}, nil))
	require.ErrorIs(t, w.Add([]Item{one}, Options{}, nil), errs.Invalid, "duplicate name")

	for what, c := range badMeta() {
		w, err = NewWriter(&bytes.Buffer{})
		require.NoError(t, err)
		_, err = w.Close([]byte(c.meta))
		require.ErrorIs(t, err, errs.Invalid, what)
		assert.Contains(t, err.Error(), c.says, what)
	}
}

// nestedMeta is a metadata object whose arrays and objects nest depth deep.
func nestedMeta(depth int) string {
	return `{"a": ` + strings.Repeat("[", depth-1) + strings.Repeat("]", depth-1) + `}`
}

// badMeta is metadata that neither Open nor Writer.Close accepts, with
// what the error says.
func badMeta() map[string]struct{ meta, says string } {
	return map[string]struct{ meta, says string }{
		"not an object":       {`[1, 2]`, "not a JSON object"},
		"a string":            {`"{}"`, "not a JSON object"},
		"not JSON":            {`{"a":}`, "not valid JSON"},
		"invalid UTF-8":       {"{\"a\":\"\xff\"}", "not valid UTF-8"},
		"UTF-8 surrogate":     {"{\"a\":\"\xed\xa0\x80\"}", "not valid UTF-8"},
		"nested 5000 deep":    {nestedMeta(5000), "more than 100 levels"},
		"nested one too deep": {nestedMeta(MaxMetaDepth + 1), "more than 100 levels"},
	}
}

func TestMetaChecks(t *testing.T) {
	ok := map[string]string{
		"empty object":        `{}`,
		"padded":              " \n{\"a\": 1}\t",
		"non-ASCII":           `{"ünïcode": "名前"}`,
		"escaped surrogate":   `{"a": "\ud800"}`, // valid UTF-8 text: JSON's own business
		"brackets in strings": `{"a": "` + strings.Repeat("[{", 500) + `\"]"}`,
		"nested at the cap":   nestedMeta(MaxMetaDepth),
	}
	for what, meta := range ok {
		assert.NoError(t, checkMeta([]byte(meta)), what)
	}
	for what, c := range badMeta() {
		err := checkMeta([]byte(c.meta))
		if assert.Error(t, err, what) {
			assert.Contains(t, err.Error(), c.says, what)
		}
	}
	assert.Equal(t, 0, jsonDepth([]byte(`1`), 10))
	assert.Equal(t, 3, jsonDepth([]byte(`{"a":[{}],"b":[]}`), 10))
	assert.Equal(t, 1, jsonDepth([]byte(`{"a":"]}}[[["}`), 10))
	assert.Equal(t, 1, jsonDepth([]byte(`{"a\"[":1}`), 10))
	assert.Equal(t, 4, jsonDepth([]byte(strings.Repeat("[", 1000)), 3), "stops past the limit")
}

// Metadata that is not a UTF-8 JSON object nested at most MaxMetaDepth
// deep is refused by Open as corrupt, even behind a valid index checksum.
func TestOpenRefusesBadMeta(t *testing.T) {
	items := []Item{{Name: "a", DType: dtype.F32, Shape: []uint64{16}, Data: make([]byte, 64)}}
	good, _ := encodeBuffer(t, items, []byte(`{}`), 1)
	for what, c := range badMeta() {
		t.Run(what, func(t *testing.T) {
			_, err := Open(withMeta(t, good, []byte(c.meta)))
			require.ErrorIs(t, err, errs.Corrupt)
			assert.Contains(t, err.Error(), c.says)
		})
	}
	b, err := Open(withMeta(t, good, []byte(`{"x": [1, {"y": null}]}`)))
	require.NoError(t, err, "withMeta itself makes valid bundles")
	assert.Equal(t, `{"x": [1, {"y": null}]}`, string(b.Meta))
}

// withMeta is blob (a valid bundle) with its metadata replaced by meta and
// the index checksum recomputed.
func withMeta(t *testing.T, blob, meta []byte) []byte {
	b, err := Open(blob)
	require.NoError(t, err)
	metaAt := uint64(len(blob)) - TrailerLen - uint64(len(b.Meta))
	out := append([]byte(nil), blob[:metaAt-4]...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(meta)))
	out = append(out, meta...)
	index := out[b.indexAt:]
	out = binary.LittleEndian.AppendUint64(out, uint64(len(index)))
	out = binary.LittleEndian.AppendUint32(out, indexCRC(out[:PreambleLen], index))
	return append(out, TrailerMagic[:]...)
}

func TestBufferTooSmall(t *testing.T) {
	items := testItems(rand.New(rand.NewSource(4)))
	blob, _ := encodeBuffer(t, items, nil, 2)
	// Exactly the bundle's size suffices even though it is far below
	// the bound; one byte less does not.
	for _, size := range []int{len(blob), len(blob) - 1} {
		dst := make([]byte, size)
		w, err := NewBufferWriter(dst)
		require.NoError(t, err)
		err = w.Add(items, Options{Threads: 2}, nil)
		var n uint64
		if err == nil {
			n, err = w.Close(nil)
		}
		if size == len(blob) {
			require.NoError(t, err)
			require.Equal(t, blob, dst[:n])
		} else {
			require.ErrorIs(t, err, errs.BufferTooSmall)
		}
	}
}

// Every truncation and every single-byte change of a bundle is refused with
// a typed error or, for a change inside a frame payload, when that frame is
// decoded; never a panic, never wrong data.
func TestDamageIsDetected(t *testing.T) {
	rng := rand.New(rand.NewSource(5))
	var items []Item
	for i := 0; i < 3; i++ {
		c, r := randomWalk(rng, 64, 1e-3)
		items = append(items, Item{Name: "t" + string(rune('0'+i)), DType: dtype.F32, Shape: []uint64{8, 8},
			Data: f32s(c), Ref: f32s(r), Delta: frame.DeltaOptions{Residual: delta.Auto}})
	}
	items = append(items, Item{Name: "k", DType: dtype.F32, Shape: []uint64{64}, Data: items[0].Data})
	blob, _ := encodeBuffer(t, items, []byte(`{"a":1}`), 1)
	for n := 0; n < len(blob); n++ {
		_, err := Open(blob[:n])
		require.ErrorIs(t, err, errs.Corrupt, "truncated to %d", n)
	}
	for i := range blob {
		for _, x := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), blob...)
			bad[i] ^= x
			b, err := Open(bad)
			if err != nil {
				if !errors.Is(err, errs.Corrupt) && !errors.Is(err, errs.Unsupported) {
					t.Fatalf("byte %d ^ %#x: untyped error %v", i, x, err)
				}
				continue
			}
			outs := make([]Out, len(items))
			for k := range items {
				outs[k] = Out{Index: k, Dst: make([]byte, len(items[k].Data)), Ref: items[k].Ref}
			}
			err = b.Decode(outs, 1)
			require.Error(t, err, "byte %d ^ %#x decoded without complaint", i, x)
			if !errors.Is(err, errs.Corrupt) && !errors.Is(err, errs.Unsupported) && !errors.Is(err, errs.ReferenceMismatch) {
				t.Fatalf("byte %d ^ %#x: untyped error %v", i, x, err)
			}
		}
	}
}

// Named attacks on the index: each is a bundle whose index checksum is
// valid (recomputed), so only the structural checks stand in the way.
func TestIndexAttacks(t *testing.T) {
	items := []Item{
		{Name: "a", DType: dtype.F32, Shape: []uint64{16}, Data: make([]byte, 64)},
		{Name: "b", DType: dtype.F32, Shape: []uint64{16}, Data: make([]byte, 64)},
	}
	// Room for the metadata attacks, which rewrite it in place.
	meta := []byte(`{"pad": "` + strings.Repeat("x", 300) + `"}`)
	blob, _ := encodeBuffer(t, items, meta, 1)
	b, err := Open(blob)
	require.NoError(t, err)
	indexAt := b.indexAt
	index := func(bl []byte) []byte { return bl[indexAt : len(bl)-TrailerLen] }
	reseal := func(bl []byte) []byte {
		idx := bl[indexAt : len(bl)-TrailerLen]
		binary.LittleEndian.PutUint64(bl[len(bl)-16:], uint64(len(idx)))
		binary.LittleEndian.PutUint32(bl[len(bl)-8:], indexCRC(bl[:PreambleLen], idx))
		return bl
	}
	// setMeta overwrites the metadata with text, padded with spaces.
	setMeta := func(bl []byte, text string) []byte {
		m := bl[len(bl)-TrailerLen-len(meta) : len(bl)-TrailerLen]
		require.LessOrEqual(t, len(text), len(m))
		copy(m, text+strings.Repeat(" ", len(m)-len(text)))
		return reseal(bl)
	}
	tooDeep := nestedMeta(MaxMetaDepth + 1)
	// Entry layout: count(4) | 2+1+8+8 per entry | meta_len(4) | meta.
	e0, e1 := 4, 4+19
	attacks := map[string]func([]byte) []byte{
		"huge count": func(bl []byte) []byte {
			binary.LittleEndian.PutUint32(index(bl), MaxEntries+1)
			return reseal(bl)
		},
		"count beyond index": func(bl []byte) []byte {
			binary.LittleEndian.PutUint32(index(bl), 3)
			return reseal(bl)
		},
		"duplicate names": func(bl []byte) []byte { index(bl)[e1+2] = 'a'; return reseal(bl) },
		"empty name": func(bl []byte) []byte {
			binary.LittleEndian.PutUint16(index(bl)[e0:], 0)
			return reseal(bl)
		},
		"name not utf8": func(bl []byte) []byte { index(bl)[e0+2] = 0xff; return reseal(bl) },
		"overlapping frames": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(index(bl)[e1+3:], 9)
			return reseal(bl)
		},
		"gap before index": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(index(bl)[e1+11:], binary.LittleEndian.Uint64(index(bl)[e1+11:])-1)
			return reseal(bl)
		},
		"length past index": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(index(bl)[e1+11:], 1<<62)
			return reseal(bl)
		},
		"offset wraps": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(index(bl)[e0+3:], math.MaxUint64-3)
			return reseal(bl)
		},
		"meta length lies": func(bl []byte) []byte {
			binary.LittleEndian.PutUint32(index(bl)[2*19+4:], 1000)
			return reseal(bl)
		},
		"meta not json":        func(bl []byte) []byte { index(bl)[2*19+8] = '['; return reseal(bl) },
		"meta an array":        func(bl []byte) []byte { return setMeta(bl, `[1, 2]`) },
		"meta a string":        func(bl []byte) []byte { return setMeta(bl, `"{}"`) },
		"meta not utf8":        func(bl []byte) []byte { return setMeta(bl, "{\"a\": \"\xff\"}") },
		"meta a surrogate":     func(bl []byte) []byte { return setMeta(bl, "{\"a\": \"\xed\xb0\x80\"}") },
		"meta nested too deep": func(bl []byte) []byte { return setMeta(bl, tooDeep) },
		"index length huge": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(bl[len(bl)-16:], 1<<63)
			return bl
		},
		"index length small": func(bl []byte) []byte {
			binary.LittleEndian.PutUint64(bl[len(bl)-16:], 3)
			return bl
		},
		"index checksum":   func(bl []byte) []byte { bl[len(bl)-6] ^= 1; return bl },
		"no trailer magic": func(bl []byte) []byte { bl[len(bl)-1] = 0; return bl },
		"bad magic":        func(bl []byte) []byte { bl[0] = 0; return bl },
	}
	for name, attack := range attacks {
		t.Run(name, func(t *testing.T) {
			_, err := Open(attack(append([]byte(nil), blob...)))
			require.ErrorIs(t, err, errs.Corrupt)
		})
	}
	newer := append([]byte(nil), blob...)
	newer[4] = VersionMajor + 1
	_, err = Open(newer)
	require.ErrorIs(t, err, errs.Unsupported)
	flagged := append([]byte(nil), blob...)
	flagged[6] = 1
	_, err = Open(flagged)
	require.ErrorIs(t, err, errs.Unsupported)
	minor := append([]byte(nil), blob...)
	minor[5] = VersionMinor + 1
	b, err = Open(reseal(minor))
	require.NoError(t, err, "a newer minor version is readable")
	assert.Equal(t, uint8(VersionMinor+1), b.VersionMinor)
	// A frame where a bundle is expected says so.
	fr := blob[b.Entries[0].Offset : b.Entries[0].Offset+b.Entries[0].Length]
	_, err = Open(append(append([]byte(nil), fr...), make([]byte, 16)...))
	require.ErrorIs(t, err, errs.Invalid)
}

// TestGolden freezes one bundle (docs/FORMAT.md §9): a keyframe, a delta
// frame against a stored reference and metadata. Rewrite it deliberately
// with go test ./core/bundle -run TestGolden -update.
func TestGolden(t *testing.T) {
	ref := f32s([]float32{0.5, -0.25, 1, 0, -0.0, float32(math.Inf(1)), 3e-39, 2})
	cur := f32s([]float32{0.5, -0.25, 1.0000001, 0, -0.0, float32(math.Inf(1)), 3e-39, 2.5})
	nan := f32s([]float32{float32(math.NaN()), 1})
	binary.LittleEndian.PutUint32(nan, 0x7fc00abc) // a NaN payload
	items := []Item{
		{Name: "w", DType: dtype.F32, Shape: []uint64{2, 4}, Data: cur, Ref: ref, Delta: frame.DeltaOptions{Residual: delta.XOR}},
		{Name: "b", DType: dtype.F32, Shape: []uint64{2}, Data: nan},
	}
	meta := []byte(`{"tpde":{"checkpoint_type":"delta"}}`)
	blob, _ := encodeBuffer(t, items, meta, 1)
	dir := "testdata"
	if *update {
		require.NoError(t, os.MkdirAll(dir, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "golden.tpdb"), blob, 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "golden.w.ref.raw"), ref, 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "golden.w.raw"), cur, 0o644))
		require.NoError(t, os.WriteFile(filepath.Join(dir, "golden.b.raw"), nan, 0o644))
	}
	want, err := os.ReadFile(filepath.Join(dir, "golden.tpdb"))
	require.NoError(t, err)
	assert.Equal(t, want, blob, "the encoder's output changed; if deliberate, rerun with -update")
	b, err := Open(want)
	require.NoError(t, err)
	assert.Equal(t, meta, b.Meta)
	for i, name := range []string{"w", "b"} {
		raw, err := os.ReadFile(filepath.Join(dir, "golden."+name+".raw"))
		require.NoError(t, err)
		var r []byte
		if name == "w" {
			r, err = os.ReadFile(filepath.Join(dir, "golden.w.ref.raw"))
			require.NoError(t, err)
		}
		got := make([]byte, len(raw))
		require.NoError(t, b.Decode([]Out{{Index: i, Dst: got, Ref: r}}, 1))
		require.Equal(t, raw, got, name)
	}
}
