package container

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/torchlegacy"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/ from the current encoder")

// tensor is one entry of a synthetic safetensors file. data is its bytes;
// gap is how many filler bytes precede it in the data buffer.
type tensor struct {
	name  string
	dtype string
	shape []uint64
	data  []byte
	gap   int
}

// safetensorsFile lays tensors out in order (with their gaps), pads the
// JSON header with pad spaces and appends trailer after the last tensor.
func safetensorsFile(meta map[string]string, ts []tensor, pad int, trailer []byte) []byte {
	hdr := map[string]any{}
	if meta != nil {
		hdr["__metadata__"] = meta
	}
	var buf []byte
	for _, t := range ts {
		buf = append(buf, bytes.Repeat([]byte{0xee}, t.gap)...)
		begin := len(buf)
		buf = append(buf, t.data...)
		shape := t.shape
		if shape == nil {
			shape = []uint64{}
		}
		hdr[t.name] = map[string]any{"dtype": t.dtype, "shape": shape, "data_offsets": []int{begin, len(buf)}}
	}
	buf = append(buf, trailer...)
	js, err := json.Marshal(hdr)
	if err != nil {
		panic(err)
	}
	js = append(js, bytes.Repeat([]byte{' '}, pad)...)
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(js)))
	out = append(out, js...)
	return append(out, buf...)
}

// rawSafetensors is a safetensors file with the given header text and buffer.
func rawSafetensors(header, buf string) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(out, header...), buf...)
}

func bf16Weights(r *rand.Rand, n int) []byte {
	b := make([]byte, 2*n)
	for i := 0; i < n; i++ {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(float32(r.NormFloat64()*0.02))>>16))
	}
	return b
}

func u32s(v ...uint32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, x)
	}
	return b
}

func randBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	r.Read(b)
	return b
}

func syntheticTensors() []tensor {
	r := rand.New(rand.NewSource(7))
	ids := make([]byte, 0, 96)
	for i := 0; i < 12; i++ {
		ids = binary.LittleEndian.AppendUint64(ids, uint64(i*1000+3))
	}
	deep := make([]uint64, 33)
	for i := range deep {
		deep[i] = 1
	}
	deep[32] = 3
	return []tensor{
		{name: "emb.weight", dtype: "BF16", shape: []uint64{16, 8}, data: bf16Weights(r, 128)},
		{name: "ln.bias", dtype: "F32", shape: []uint64{8},
			data: u32s(0, 0x8000_0000, 0x7fc0_0001, 0xff80_0000, 0x7f80_0000, 1, math.Float32bits(2.5), 0x7f7f_ffff)},
		{name: "pos_ids", dtype: "I64", shape: []uint64{1, 12}, data: ids},
		{name: "mask", dtype: "BOOL", shape: []uint64{10}, data: []byte{1, 0, 0, 1, 1, 1, 0, 1, 0, 0}},
		{name: "packed", dtype: "F4", shape: []uint64{2, 3}, data: []byte{0x12, 0x34, 0xf0}, gap: 5},
		{name: "cplx", dtype: "C64", shape: []uint64{2}, data: randBytes(r, 16)},
		{name: "empty", dtype: "F16", shape: []uint64{0, 4}, data: nil},
		{name: "deep", dtype: "F16", shape: deep, data: []byte{0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7f}},
		{name: "scalar", dtype: "F64", data: binary.LittleEndian.AppendUint64(nil, math.Float64bits(math.E))},
	}
}

// synthetic is a small safetensors file with every situation plan handles:
// several dtypes, dtypes without a codec, metadata, a space-padded header, a
// hole, an empty tensor, a tensor deeper than a frame allows and trailing
// bytes after the last tensor.
func synthetic() []byte {
	return safetensorsFile(map[string]string{"format": "pt", "producer": "tpde tests"},
		syntheticTensors(), 200, []byte("TRAILER!"))
}

func writeFile(t testing.TB, dir, name string, data []byte) string {
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, data, 0o644))
	return p
}

// roundTrip compresses data, decompresses it and checks identity. It returns
// the compressed bytes.
func roundTrip(t testing.TB, data []byte, opt Options) []byte {
	dir := t.TempDir()
	src := writeFile(t, dir, "in.bin", data)
	packed := filepath.Join(dir, "in.tpde")
	out := filepath.Join(dir, "out.bin")
	require.NoError(t, CompressFile(src, packed, opt))
	require.NoError(t, DecompressFile(packed, out, opt))
	got, err := os.ReadFile(out)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "decompressed bytes differ (%d vs %d bytes)", len(got), len(data))
	blob, err := os.ReadFile(packed)
	require.NoError(t, err)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 3, "temporary files left behind")
	return blob
}

func compressed(t testing.TB, data []byte) []byte {
	return roundTrip(t, data, Options{})
}

type segWant struct {
	kind  string
	name  string
	dtype string
	shape []uint64
}

func TestRoundTripSafetensors(t *testing.T) {
	data := synthetic()
	for _, opt := range []Options{{}, {Frame: frame.Options{ChunkElems: 3, Threads: 4}}, {Frame: frame.Options{Threads: 1}}} {
		blob := roundTrip(t, data, opt)
		h, err := Parse(blob)
		require.NoError(t, err)
		assert.Equal(t, SourceSafetensors, h.Source)
		assert.Equal(t, uint64(len(data)), h.OrigSize)
	}
}

func TestInfoNamesTensors(t *testing.T) {
	dir := t.TempDir()
	// synthetic() with a first tensor large enough to be worth a frame.
	ts := syntheticTensors()
	ts[0] = tensor{name: "emb.weight", dtype: "BF16", shape: []uint64{64, 64},
		data: bf16Weights(rand.New(rand.NewSource(8)), 4096)}
	data := safetensorsFile(map[string]string{"format": "pt", "producer": "tpde tests"}, ts, 200, []byte("TRAILER!"))
	src := writeFile(t, dir, "model.safetensors", data)
	packed := filepath.Join(dir, "model.tpde")
	require.NoError(t, CompressFile(src, packed, Options{}))
	fi, err := Info(packed, 0)
	require.NoError(t, err)
	st, err := os.Stat(packed)
	require.NoError(t, err)
	assert.Equal(t, "file", fi.Format)
	assert.Equal(t, "1.0", fi.Version)
	assert.Equal(t, "safetensors", fi.Source)
	assert.Equal(t, uint64(len(data)), fi.OriginalSize)
	assert.Equal(t, uint64(st.Size()), fi.CompressedSize)

	want := []segWant{
		// A 200-space pad makes zstd worth it for the header.
		{kind: "zstd", name: "safetensors header"},
		{"frame", "emb.weight", "BF16", []uint64{64, 64}},
		// Tensors whose frame would not be smaller than their bytes are
		// kept verbatim, still named from the header.
		{"stored", "ln.bias", "F32", []uint64{8}},
		{"stored", "pos_ids", "I64", []uint64{1, 12}},
		{"stored", "mask", "BOOL", []uint64{10}},
		{kind: "stored"}, // the hole
		{"stored", "packed", "F4", []uint64{2, 3}},
		{"stored", "cplx", "C64", []uint64{2}},
		{"stored", "deep", "F16", syntheticTensors()[7].shape},
		{"stored", "scalar", "F64", nil},
		{kind: "stored"}, // the trailer
	}
	require.Len(t, fi.Segments, len(want))
	var orig, stored uint64
	for i, w := range want {
		s := fi.Segments[i]
		assert.Equal(t, w.kind, s.Kind, "segment %d", i)
		assert.Equal(t, w.name, s.Name, "segment %d", i)
		assert.Equal(t, w.dtype, s.DType, "segment %d", i)
		assert.Equal(t, len(w.shape), len(s.Shape), "segment %d", i)
		if len(w.shape) > 0 {
			assert.Equal(t, w.shape, s.Shape, "segment %d", i)
		}
		if w.kind == "frame" {
			assert.Equal(t, 1, s.Chunks, "segment %d", i)
			n := 0
			for _, c := range s.Methods {
				n += c
			}
			d, ok := dtype.FromName(w.dtype)
			require.True(t, ok)
			assert.Equal(t, d.Width(), n, "segment %d: one method per stream", i)
		}
		orig += s.OriginalSize
		stored += s.StoredSize
	}
	assert.Equal(t, uint64(5), fi.Segments[5].OriginalSize)
	assert.Equal(t, uint64(8), fi.Segments[10].OriginalSize)
	assert.Equal(t, fi.OriginalSize, orig)
	h, err := Parse(mustRead(t, packed))
	require.NoError(t, err)
	assert.Equal(t, fi.CompressedSize, stored+uint64(headerLen+tableLen(len(h.Segments))))

	// The JSON tools see.
	js, err := json.Marshal(fi)
	require.NoError(t, err)
	assert.Contains(t, string(js), `"name":"emb.weight"`)
}

func mustRead(t testing.TB, p string) []byte {
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	return b
}

func TestSmallHeaderIsStored(t *testing.T) {
	data := safetensorsFile(nil, []tensor{{name: "a", dtype: "U8", shape: []uint64{4}, data: []byte{1, 2, 3, 4}}}, 0, nil)
	blob := compressed(t, data)
	h, err := Parse(blob)
	require.NoError(t, err)
	require.Len(t, h.Segments, 2)
	assert.Equal(t, SegStored, h.Segments[0].Kind, "zstd cannot shrink a 60-byte header")
	assert.Equal(t, SegStored, h.Segments[1].Kind, "a frame cannot shrink a 4-byte tensor")
}

func TestOnlyEmptyTensors(t *testing.T) {
	data := safetensorsFile(nil, []tensor{{name: "a", dtype: "F32", shape: []uint64{0}}, {name: "b", dtype: "BF16", shape: []uint64{2, 0}}}, 3, nil)
	blob := compressed(t, data)
	h, err := Parse(blob)
	require.NoError(t, err)
	assert.Equal(t, SourceSafetensors, h.Source)
	require.Len(t, h.Segments, 1, "empty tensors have no segment")
}

func TestRoundTripEmptyFile(t *testing.T) {
	blob := compressed(t, nil)
	assert.Len(t, blob, headerLen+4)
	h, err := Parse(blob)
	require.NoError(t, err)
	assert.Equal(t, SourceBytes, h.Source)
	assert.Empty(t, h.Segments)
	assert.Zero(t, h.OrigSize)
}

func TestRoundTripOtherFiles(t *testing.T) {
	r := rand.New(rand.NewSource(8))
	cases := map[string][]byte{
		"random":   randBytes(r, 50_000),
		"one byte": {0x42},
		"text":     []byte(strings.Repeat("the quick brown fox jumps over the lazy dog\n", 500)),
		// Looks like safetensors (length, '{') but the header does not
		// parse: stored as bytes, still lossless.
		"bad json": append(binary.LittleEndian.AppendUint64(nil, 5), "{oops"...),
		// A well-formed header whose tensor runs past the end of the file.
		"bad offsets": rawSafetensors(`{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}`, "abc"),
		// Two tensors over the same bytes.
		"overlap":         rawSafetensors(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, "abc"),
		"header only":     safetensorsFile(nil, nil, 6, nil),
		"tpde file magic": append(Magic[:], randBytes(r, 100)...),
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			blob := compressed(t, data)
			h, err := Parse(blob)
			require.NoError(t, err)
			if name == "header only" {
				assert.Equal(t, SourceSafetensors, h.Source)
				return
			}
			assert.Equal(t, SourceBytes, h.Source)
			if len(data) > 0 {
				require.Len(t, h.Segments, 1)
				// Compressible bytes become a frame; noise and scraps
				// too small for a frame header stay verbatim.
				want := SegStored
				if name == "text" {
					want = SegFrame
				}
				assert.Equal(t, want, h.Segments[0].Kind)
				assert.LessOrEqual(t, h.FileLen, uint64(len(data)+headerLen+tableLen(1)))
			}
		})
	}
}

func TestRoundTripManyChunksParallel(t *testing.T) {
	r := rand.New(rand.NewSource(9))
	data := safetensorsFile(nil, []tensor{
		{name: "w", dtype: "BF16", shape: []uint64{300, 100}, data: bf16Weights(r, 30000)},
		{name: "b", dtype: "F32", shape: []uint64{1000}, data: randBytes(r, 4000), gap: 17},
	}, 0, randBytes(r, 33))
	var mu sync.Mutex
	var maxDone uint64
	progress := func(done uint64) {
		mu.Lock()
		defer mu.Unlock()
		maxDone = max(maxDone, done)
	}
	opt := Options{Frame: frame.Options{ChunkElems: 1000, Threads: 4}, Progress: progress}
	dir := t.TempDir()
	src := writeFile(t, dir, "in", data)
	require.NoError(t, CompressFile(src, filepath.Join(dir, "c"), opt))
	assert.Equal(t, uint64(len(data)), maxDone, "compress progress")
	maxDone = 0
	require.NoError(t, DecompressFile(filepath.Join(dir, "c"), filepath.Join(dir, "out"), opt))
	assert.Equal(t, uint64(len(data)), maxDone, "decompress progress")
	assert.Equal(t, data, mustRead(t, filepath.Join(dir, "out")))
}

func TestProgressIsMonotonicWithOneThread(t *testing.T) {
	data := synthetic()
	dir := t.TempDir()
	src := writeFile(t, dir, "in", data)
	var seen []uint64
	opt := Options{Frame: frame.Options{Threads: 1, ChunkElems: 4}, Progress: func(d uint64) { seen = append(seen, d) }}
	require.NoError(t, CompressFile(src, filepath.Join(dir, "c"), opt))
	require.NotEmpty(t, seen)
	assert.True(t, sort.SliceIsSorted(seen, func(i, j int) bool { return seen[i] < seen[j] }))
	assert.Equal(t, uint64(len(data)), seen[len(seen)-1])
	seen = nil
	require.NoError(t, DecompressFile(filepath.Join(dir, "c"), filepath.Join(dir, "out"), opt))
	require.NotEmpty(t, seen)
	assert.True(t, sort.SliceIsSorted(seen, func(i, j int) bool { return seen[i] < seen[j] }))
	assert.Equal(t, uint64(len(data)), seen[len(seen)-1])
}

// expectRefused decompresses blob and checks that it fails with want, and
// that neither the destination nor a temporary file was created in outDir.
func expectRefused(t *testing.T, blob []byte, srcPath, outDir string, want error, what string) {
	t.Helper()
	require.NoError(t, os.WriteFile(srcPath, blob, 0o644))
	err := DecompressFile(srcPath, filepath.Join(outDir, "restored"), Options{})
	require.Error(t, err, what)
	require.ErrorIs(t, err, want, what)
	entries, err := os.ReadDir(outDir)
	require.NoError(t, err)
	require.Empty(t, entries, "%s: files left in the output directory", what)
}

// Every single-byte change and every truncation of a compressed file is
// refused, and refused before anything appears at the destination.
func TestEveryFlipAndTruncationIsRefused(t *testing.T) {
	blob := compressed(t, synthetic())
	require.Less(t, len(blob), 4096, "keep the exhaustive loop fast")
	dir, outDir := t.TempDir(), t.TempDir()
	srcPath := filepath.Join(dir, "bad.tpde")
	for i := range blob {
		bad := append([]byte(nil), blob...)
		bad[i] ^= []byte{0x01, 0x80, 0xff}[i%3]
		want := errs.Corrupt
		if i == 4 {
			want = errs.Unsupported // the major version
		}
		expectRefused(t, bad, srcPath, outDir, want, "flip at byte "+strconv.Itoa(i))
	}
	for n := 0; n < len(blob); n++ {
		expectRefused(t, blob[:n], srcPath, outDir, errs.Corrupt, "truncated to "+strconv.Itoa(n))
	}
	expectRefused(t, append(append([]byte(nil), blob...), 0), srcPath, outDir, errs.Corrupt, "trailing byte")
}

// A failed decompression leaves an existing destination as it was.
func TestFailedDecompressionKeepsDestination(t *testing.T) {
	blob := compressed(t, synthetic())
	dir := t.TempDir()
	dst := writeFile(t, dir, "model.safetensors", []byte("precious old contents"))
	// Damage the last segment, so that decoding fails only after the
	// earlier segments were written to the temporary file.
	bad := append([]byte(nil), blob...)
	bad[len(bad)-1] ^= 0x40
	src := writeFile(t, dir, "bad.tpde", bad)
	err := DecompressFile(src, dst, Options{})
	require.ErrorIs(t, err, errs.Corrupt)
	assert.Equal(t, "precious old contents", string(mustRead(t, dst)))
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Len(t, entries, 2, "a temporary file was left behind")

	// A missing source is an i/o error and touches nothing either.
	err = DecompressFile(filepath.Join(dir, "missing.tpde"), dst, Options{})
	require.ErrorIs(t, err, errs.IO)
	err = CompressFile(filepath.Join(dir, "missing"), dst, Options{})
	require.ErrorIs(t, err, errs.IO)
	assert.Equal(t, "precious old contents", string(mustRead(t, dst)))

	// And a successful one replaces it.
	good := writeFile(t, dir, "good.tpde", blob)
	require.NoError(t, DecompressFile(good, dst, Options{}))
	assert.Equal(t, synthetic(), mustRead(t, dst))
}

// NoReplace refuses an existing output before the input is even opened
// (a stream would otherwise be read to its end first), and NoFollow a
// symlink; the existing files stay as they were.
func TestNoReplaceAndNoFollowRefuseTheOutputFirst(t *testing.T) {
	blob := compressed(t, synthetic())
	dir := t.TempDir()
	src := writeFile(t, dir, "m.tpde", blob)
	dst := writeFile(t, dir, "m.safetensors", []byte("precious old contents"))
	err := DecompressFile(src, dst, Options{NoReplace: true})
	require.ErrorIs(t, err, syscall.EEXIST)
	err = CompressFile(filepath.Join(dir, "missing"), src, Options{NoReplace: true})
	require.ErrorIs(t, err, syscall.EEXIST, "the output is checked before the input is opened")
	assert.Equal(t, "precious old contents", string(mustRead(t, dst)))
	assert.Equal(t, blob, mustRead(t, src))

	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(dst, link))
	require.ErrorIs(t, DecompressFile(src, link, Options{NoFollow: true}), syscall.ELOOP)
	assert.Equal(t, "precious old contents", string(mustRead(t, dst)))

	require.NoError(t, DecompressFile(src, dst, Options{NoFollow: true}), "a regular file is replaced")
	assert.Equal(t, synthetic(), mustRead(t, dst))
	fresh := filepath.Join(dir, "fresh")
	require.NoError(t, DecompressFile(src, fresh, Options{NoReplace: true}))
	assert.Equal(t, synthetic(), mustRead(t, fresh))
}

func TestInfoRefusesCorruptFiles(t *testing.T) {
	blob := compressed(t, synthetic())
	dir := t.TempDir()
	for _, i := range []int{0, 10, 30, len(blob) / 2, len(blob) - 1} {
		bad := append([]byte(nil), blob...)
		bad[i] ^= 0x10
		_, err := Info(writeFile(t, dir, "bad", bad), 0)
		require.ErrorIs(t, err, errs.Corrupt, "byte %d", i)
	}
	_, err := Info(filepath.Join(dir, "missing"), 0)
	require.ErrorIs(t, err, errs.IO)
}

func TestInfoOfAFrame(t *testing.T) {
	src := u32s(1, 2, 3, 4, 5, 6)
	bound, err := frame.Bound(uint64(len(src)), dtype.U32, 2, 0)
	require.NoError(t, err)
	buf := make([]byte, bound)
	n, err := frame.Encode(buf, src, dtype.U32, []uint64{2, 3}, frame.Options{})
	require.NoError(t, err)
	dir := t.TempDir()
	fi, err := Info(writeFile(t, dir, "t.tpdf", buf[:n]), 0)
	require.NoError(t, err)
	assert.Equal(t, "frame", fi.Format)
	assert.Equal(t, "1.0", fi.Version)
	assert.Equal(t, uint64(24), fi.OriginalSize)
	assert.Equal(t, uint64(n), fi.CompressedSize)
	require.Len(t, fi.Segments, 1)
	assert.Equal(t, "U32", fi.Segments[0].DType)
	assert.Equal(t, []uint64{2, 3}, fi.Segments[0].Shape)
	_, err = Info(writeFile(t, dir, "t2.tpdf", append(buf[:n:n], 0)), 0)
	require.ErrorIs(t, err, errs.Corrupt)
}

// container builds a tpde file by hand, with correct checksums, so that the
// checks behind the checksums can be reached.
type hostileSeg struct {
	kind   SegKind
	orig   uint64
	stored []byte
}

func container(src Source, origSize uint64, segs []hostileSeg) []byte {
	rows := make([]Segment, len(segs))
	var payload []byte
	for i, s := range segs {
		rows[i] = Segment{Kind: s.kind, CRC: crc(s.stored), OrigLen: s.orig, StoredLen: uint64(len(s.stored))}
		payload = append(payload, s.stored...)
	}
	out := make([]byte, headerLen+tableLen(len(segs)))
	putHeader(out, src, origSize, rows)
	return append(out, payload...)
}

// rehash recomputes the header checksum after an edit, and the table's
// where the table fits in b.
func rehash(b []byte) []byte {
	binary.LittleEndian.PutUint32(b[24:], crc(b[:24]))
	tl := tableLen(int(binary.LittleEndian.Uint32(b[16:])))
	if headerLen+tl > len(b) {
		return b
	}
	t := b[headerLen : headerLen+tl]
	binary.LittleEndian.PutUint32(t[tl-4:], crc(t[:tl-4]))
	return b
}

func TestHostileContainers(t *testing.T) {
	u8frame := func(data []byte) []byte {
		bound, err := frame.Bound(uint64(len(data)), dtype.U8, 1, 0)
		require.NoError(t, err)
		buf := make([]byte, bound)
		n, err := frame.Encode(buf, data, dtype.U8, []uint64{uint64(len(data))}, frame.Options{})
		require.NoError(t, err)
		return buf[:n]
	}
	zenc, err := zstd.NewWriter(nil)
	require.NoError(t, err)
	z := func(data []byte) []byte { return zenc.EncodeAll(data, nil) }
	abc := []byte("abcdefgh")

	good := container(SourceBytes, 16, []hostileSeg{{SegStored, 8, abc}, {SegFrame, 8, u8frame(abc)}})
	dir, outDir := t.TempDir(), t.TempDir()
	src := filepath.Join(dir, "x.tpde")
	require.NoError(t, os.WriteFile(src, good, 0o644))
	require.NoError(t, DecompressFile(src, filepath.Join(dir, "ok"), Options{}))
	assert.Equal(t, "abcdefghabcdefgh", string(mustRead(t, filepath.Join(dir, "ok"))))

	edit := func(fn func(b []byte)) []byte {
		b := append([]byte(nil), good...)
		fn(b)
		return rehash(b)
	}
	cases := []struct {
		name string
		blob []byte
		want error
	}{
		{"major version 2", edit(func(b []byte) { b[4] = 2 }), errs.Unsupported},
		{"major version 0", edit(func(b []byte) { b[4] = 0 }), errs.Unsupported},
		{"unknown source", edit(func(b []byte) { b[6] = 4 }), errs.Unsupported},
		{"reserved header byte", edit(func(b []byte) { b[7] = 1 }), errs.Corrupt},
		{"reserved header word", edit(func(b []byte) { b[22] = 1 }), errs.Corrupt},
		{"unknown segment kind", edit(func(b []byte) { b[headerLen] = 3 }), errs.Unsupported},
		{"reserved segment byte", edit(func(b []byte) { b[headerLen+2] = 1 }), errs.Corrupt},
		{"sizes do not add up", container(SourceBytes, 17, []hostileSeg{{SegStored, 8, abc}, {SegFrame, 8, u8frame(abc)}}), errs.Corrupt},
		{"stored lengths differ", container(SourceBytes, 9, []hostileSeg{{SegStored, 9, abc}}), errs.Corrupt},
		{"frame larger than segment", container(SourceBytes, 7, []hostileSeg{{SegFrame, 7, u8frame(abc)}}), errs.Corrupt},
		{"frame with trailing byte", container(SourceBytes, 8, []hostileSeg{{SegFrame, 8, append(u8frame(abc), 0)}}), errs.Corrupt},
		{"empty frame segment", container(SourceBytes, 0, []hostileSeg{{SegFrame, 0, nil}}), errs.Corrupt},
		{"not a frame", container(SourceBytes, 8, []hostileSeg{{SegFrame, 8, abc}}), errs.Corrupt},
		{"zstd too short", container(SourceBytes, 9, []hostileSeg{{SegZstd, 9, z(abc)}}), errs.Corrupt},
		{"zstd too long", container(SourceBytes, 7, []hostileSeg{{SegZstd, 7, z(abc)}}), errs.Corrupt},
		{"not zstd", container(SourceBytes, 8, []hostileSeg{{SegZstd, 8, abc}}), errs.Corrupt},
		{"segment count past the cap", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[16:], MaxSegments+1) }), errs.Corrupt},
		{"segment count past the file", edit(func(b []byte) { binary.LittleEndian.PutUint32(b[16:], 1000) }), errs.Corrupt},
		{"original sizes overflow", container(SourceBytes, 8, []hostileSeg{{SegZstd, math.MaxUint64, z(nil)}, {SegZstd, 9, z(nil)}}), errs.Corrupt},
	}
	for _, c := range cases {
		expectRefused(t, c.blob, src, outDir, c.want, c.name)
	}

	// A zstd segment decoding to exactly its length is fine, and so is a
	// zero-length one.
	ok := container(SourceBytes, 8, []hostileSeg{{SegZstd, 8, z(abc)}, {SegZstd, 0, z(nil)}, {SegStored, 0, nil}})
	require.NoError(t, os.WriteFile(src, ok, 0o644))
	require.NoError(t, DecompressFile(src, filepath.Join(dir, "ok2"), Options{}))
	assert.Equal(t, abc, mustRead(t, filepath.Join(dir, "ok2")))
}

// Golden: a compressed file frozen in testdata/ must still decompress to the
// original. Rewrite deliberately with
//
//	go test ./core/container -run TestGolden -update
func TestGolden(t *testing.T) {
	orig := filepath.Join("testdata", "synthetic.safetensors")
	packed := filepath.Join("testdata", "synthetic.tpde")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(orig, synthetic(), 0o644))
		require.NoError(t, CompressFile(orig, packed, Options{}))
		require.NoError(t, os.Chmod(packed, 0o644))
	}
	want := mustRead(t, orig)
	assert.Equal(t, synthetic(), want, "testdata/synthetic.safetensors is what synthetic() builds")
	out := filepath.Join(t.TempDir(), "restored")
	require.NoError(t, DecompressFile(packed, out, Options{}))
	assert.Equal(t, want, mustRead(t, out))
	fi, err := Info(packed, 0)
	require.NoError(t, err)
	assert.Equal(t, "safetensors", fi.Source)
	var names []string
	for _, s := range fi.Segments {
		if s.Name != "" {
			names = append(names, s.Name)
		}
	}
	assert.Equal(t, []string{"safetensors header", "emb.weight", "ln.bias", "pos_ids", "mask", "packed", "cplx", "deep", "scalar"}, names)
}

// FuzzParse: container.Parse never panics, refuses with a typed error, and
// whatever it accepts has segments that tile the file and the original.
func FuzzParse(f *testing.F) {
	f.Add(compressed(f, synthetic()))
	f.Add(compressed(f, nil))
	f.Add(compressed(f, []byte("hello, world")))
	f.Add(container(SourceBytes, 8, []hostileSeg{{SegZstd, 8, []byte("12345678")}, {SegStored, 0, nil}}))
	f.Fuzz(func(t *testing.T, data []byte) {
		h, err := Parse(data)
		if err != nil {
			require.True(t, errors.Is(err, errs.Corrupt) || errors.Is(err, errs.Unsupported), "%v", err)
			return
		}
		require.Equal(t, uint64(len(data)), h.FileLen)
		require.LessOrEqual(t, h.Source, SourceSafetensors)
		var orig uint64
		stored := uint64(headerLen + tableLen(len(h.Segments)))
		for i, s := range h.Segments {
			require.LessOrEqual(t, s.Kind, SegFrame)
			require.Equal(t, orig, s.OrigOff, "segment %d", i)
			require.Equal(t, stored, s.StoredOff, "segment %d", i)
			if s.Kind == SegStored {
				require.Equal(t, s.OrigLen, s.StoredLen)
			}
			orig += s.OrigLen
			stored += s.StoredLen
			require.LessOrEqual(t, stored, uint64(len(data)))
		}
		require.Equal(t, h.OrigSize, orig)
		require.Equal(t, uint64(len(data)), stored)
	})
}

// FuzzRoundTrip: any file survives compression and decompression.
func FuzzRoundTrip(f *testing.F) {
	f.Add(synthetic())
	f.Add([]byte{})
	f.Add([]byte("not a model"))
	f.Add(safetensorsFile(nil, []tensor{{name: "x", dtype: "BF16", shape: []uint64{3}, data: []byte{1, 2, 3, 4, 5, 6}, gap: 1}}, 2, []byte{9}))
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 1<<16 {
			return
		}
		roundTrip(t, data, Options{Frame: frame.Options{Threads: 2}})
	})
}

// A replaced destination keeps its permissions; a new one gets 0644 rather
// than CreateTemp's 0600.
// A compressed or restored file never gets a permission bit its source
// lacks: a private checkpoint stays private whatever the umask. (The umask
// and symlink rules themselves are tested in core/atomicfile.)
func TestOutputPermissionsNeverExceedTheSource(t *testing.T) {
	defer syscall.Umask(syscall.Umask(0o022))
	dir := t.TempDir()
	src := filepath.Join(dir, "in.bin")
	require.NoError(t, os.WriteFile(src, []byte("some bytes to keep"), 0o600))
	require.NoError(t, os.Chmod(src, 0o600))
	packed := filepath.Join(dir, "in.tpde")
	require.NoError(t, CompressFile(src, packed, Options{}))
	st, err := os.Stat(packed)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm())

	restored := filepath.Join(dir, "out.bin")
	require.NoError(t, os.WriteFile(restored, nil, 0o640))
	require.NoError(t, os.Chmod(restored, 0o640))
	require.NoError(t, DecompressFile(packed, restored, Options{}))
	st, err = os.Stat(restored)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), st.Mode().Perm(), "the replaced file's 0640, less what the 0600 source lacks")

	require.NoError(t, os.Chmod(src, 0o644))
	fresh := filepath.Join(dir, "fresh.tpde")
	require.NoError(t, CompressFile(src, fresh, Options{}))
	st, err = os.Stat(fresh)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o644), st.Mode().Perm(), "0666 less the umask 022")
}

// A single frame on disk (what compress_tensor returns) decompresses to its
// raw bytes; a noise file is stored verbatim rather than grown by a frame.
func TestFrameFileAndNoise(t *testing.T) {
	dir := t.TempDir()
	raw := make([]byte, 4000)
	for i := range raw {
		raw[i] = byte(i % 7)
	}
	bound, err := frame.Bound(uint64(len(raw)), dtype.F32, 1, 0)
	require.NoError(t, err)
	blob := make([]byte, bound)
	n, err := frame.Encode(blob, raw, dtype.F32, []uint64{1000}, frame.Options{})
	require.NoError(t, err)
	fp := filepath.Join(dir, "t.tpdf")
	require.NoError(t, os.WriteFile(fp, blob[:n], 0o644))
	require.NoError(t, DecompressFile(fp, filepath.Join(dir, "t.raw"), Options{}))
	got, err := os.ReadFile(filepath.Join(dir, "t.raw"))
	require.NoError(t, err)
	assert.Equal(t, raw, got)

	noise := make([]byte, 100000)
	rand.New(rand.NewSource(9)).Read(noise)
	np := filepath.Join(dir, "noise.bin")
	require.NoError(t, os.WriteFile(np, noise, 0o644))
	require.NoError(t, CompressFile(np, np+".tpde", Options{}))
	st, err := os.Stat(np + ".tpde")
	require.NoError(t, err)
	assert.LessOrEqual(t, st.Size(), int64(len(noise)+headerLen+tableLen(1)))
}

// A torch.save zip with its storages' dtypes (here all U8: any dtype whose
// width divides the payload is a valid hint) becomes frames for the
// storages and zstd for the rest, and restores byte for byte; without
// hints, or for a file that is not a torch zip, it is bytes.
func TestRoundTripTorchZip(t *testing.T) {
	src := filepath.Join("..", "torchzip", "testdata", "state.pt")
	orig, err := os.ReadFile(src)
	require.NoError(t, err)
	hints := &layout.Hints{TorchZip: map[string]string{}}
	for k := 0; k < 15; k++ {
		hints.TorchZip[strconv.Itoa(k)] = "U8"
	}
	dir := t.TempDir()
	for _, tc := range []struct {
		name   string
		hints  *layout.Hints
		source string
	}{{"hints", hints, "torch-zip"}, {"no hints", nil, "bytes"}} {
		t.Run(tc.name, func(t *testing.T) {
			packed, back := filepath.Join(dir, tc.name+".tpde"), filepath.Join(dir, tc.name+".pt")
			require.NoError(t, CompressFile(src, packed, Options{Torch: tc.hints}))
			require.NoError(t, DecompressFile(packed, back, Options{}))
			got, err := os.ReadFile(back)
			require.NoError(t, err)
			assert.Equal(t, orig, got)
			fi, err := Info(packed, 0)
			require.NoError(t, err)
			assert.Equal(t, tc.source, fi.Source)
		})
	}
	// Hints for a file that is not a torch zip change nothing.
	other := filepath.Join(dir, "notes.txt")
	require.NoError(t, os.WriteFile(other, bytes.Repeat([]byte("not a zip "), 100), 0o644))
	require.NoError(t, CompressFile(other, other+".tpde", Options{Torch: hints}))
	fi, err := Info(other+".tpde", 0)
	require.NoError(t, err)
	assert.Equal(t, "bytes", fi.Source)
}

// A legacy torch file with the layout its pickles give (here the golden
// one, found by an independent reader) becomes a frame per storage and
// restores byte for byte; with a layout its bytes disagree with, it is
// bytes, and still restores.
func TestRoundTripTorchLegacy(t *testing.T) {
	dir := filepath.Join("..", "torchlegacy", "testdata")
	raw, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	require.NoError(t, err)
	var golden map[string]struct {
		Layout torchlegacy.Layout `json:"layout"`
	}
	require.NoError(t, json.Unmarshal(raw, &golden))
	require.NotEmpty(t, golden)
	out := t.TempDir()
	for name, g := range golden {
		src := filepath.Join(dir, name)
		orig, err := os.ReadFile(src)
		require.NoError(t, err)
		wrong := g.Layout
		wrong.DataStart++
		for _, tc := range []struct {
			what   string
			layout torchlegacy.Layout
			source string
		}{{"layout", g.Layout, "torch-legacy"}, {"wrong layout", wrong, "bytes"}} {
			t.Run(name+"/"+tc.what, func(t *testing.T) {
				l := tc.layout
				packed, back := filepath.Join(out, name+tc.what+".tpde"), filepath.Join(out, name+tc.what)
				require.NoError(t, CompressFile(src, packed, Options{Torch: &layout.Hints{TorchLegacy: &l}}))
				require.NoError(t, DecompressFile(packed, back, Options{}))
				got, err := os.ReadFile(back)
				require.NoError(t, err)
				assert.Equal(t, orig, got)
				fi, err := Info(packed, 0)
				require.NoError(t, err)
				assert.Equal(t, tc.source, fi.Source)
			})
		}
	}
}
