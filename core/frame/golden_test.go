package frame

// Golden frames: small frames written by the encoder and frozen in
// testdata/, with the tensor bytes they must decode to. Any change to how a
// frame is read (field offsets, checksums, transforms, stream methods) makes
// TestGolden fail, so format changes cannot happen by accident.
//
// The files are also test vectors for independent decoders written from
// docs/FORMAT.md: NAME.tpdf is a frame, NAME.raw the bytes it decodes to; a
// NAME.tpdf without a .raw must be refused with the category in the table.
//
// To rewrite them deliberately (after a reviewed format change, or to add a
// case):
//
//	go test ./core/frame -run TestGolden -update
//
// then review `git diff --stat core/frame/testdata` and update the expected
// header fields below and the worked example in docs/FORMAT.md.

import (
	"encoding/binary"
	"encoding/hex"
	"flag"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/transform"
)

var update = flag.Bool("update", false, "rewrite the golden frames in testdata/ from the current encoder")

const (
	mRaw   = entropy.Raw
	mRLE   = entropy.RLE
	mHuff0 = entropy.Huff0
	mZstd  = entropy.Zstd
)

type goldenCase struct {
	name  string
	dt    dtype.DType
	shape []uint64
	opt   Options
	raw   func() []byte
	// edit, if set, rewrites the encoded frame (hand-made variants that the
	// encoder does not write, such as a newer minor version).
	edit func([]byte) []byte
	// unsupported: the frame must be refused with errs.Unsupported; no .raw.
	unsupported bool

	// Expected header fields. They are literals, not the encoder's current
	// defaults: a golden frame keeps the chunk size it was written with.
	chunkElems uint32
	minor      uint8
	extLen     int
	nchunks    int
	methods    [][]entropy.Method // per chunk, per stream
	size       int                // frame length in bytes
}

func f32s(v ...uint32) []byte {
	b := make([]byte, 4*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint32(b[4*i:], x)
	}
	return b
}

// docExample is the frame shown byte by byte in docs/FORMAT.md ("Worked
// example"): F32 [1.0, -0.0, NaN with payload 1, 2.5], default options.
const docExample = "" +
	"895450460100000b010401000040000010000000000000000100000000000000" +
	"0400000000000000af691c313757f7c1b80c1193000400000000040000000101" +
	"000000000400000003168ba57f00ff80000080400000010200"

// withHeaderEdit applies fn to the header of an encoded frame (fn may grow the
// header) and recomputes the header CRC.
func withHeaderEdit(fn func(hdr []byte) []byte) func([]byte) []byte {
	return func(blob []byte) []byte {
		h, err := ParseAny(blob)
		if err != nil {
			panic(err)
		}
		hdr := append([]byte(nil), blob[:h.HeaderLen-4]...)
		hdr = fn(hdr)
		hdr = binary.LittleEndian.AppendUint32(hdr, crc(hdr))
		return append(hdr, blob[h.HeaderLen:]...)
	}
}

func goldenCases() []goldenCase {
	return []goldenCase{
		{
			// The worked example of docs/FORMAT.md.
			name: "f32_doc_example", dt: dtype.F32, shape: []uint64{4},
			raw: func() []byte {
				return f32s(math.Float32bits(1), 0x8000_0000, 0x7fc0_0001, math.Float32bits(2.5))
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRaw, mRaw, mRLE, mRaw}}, size: 89,
		},
		{
			// Every class of F32 bit pattern: zeros of both signs, NaNs with
			// payloads and sign, infinities, subnormals, extremes.
			name: "f32_special", dt: dtype.F32, shape: []uint64{4, 4},
			raw: func() []byte {
				return f32s(
					0x0000_0000, 0x8000_0000, 0x7fc0_0000, 0xffc0_0000,
					0x7f80_0001, 0x7fbf_ffff, 0xffff_ffff, 0x7f80_0000,
					0xff80_0000, 0x0000_0001, 0x8000_0001, 0x007f_ffff,
					0x0080_0000, 0x7f7f_ffff, 0xff7f_ffff, math.Float32bits(-1.5))
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRaw, mRaw, mRaw, mRaw}},
		},
		{
			// Weight-like BF16 in three chunks of 200 elements (the last one
			// of 50), default effort: the exponent plane is skewed.
			name: "bf16_weights", dt: dtype.BF16, shape: []uint64{15, 30},
			opt: Options{ChunkElems: 200},
			raw: func() []byte {
				r := rand.New(rand.NewSource(20))
				b := make([]byte, 2*450)
				for i := 0; i < 450; i++ {
					v := float32(r.NormFloat64() * 0.02)
					binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(v)>>16))
				}
				return b
			},
			chunkElems: 200, nchunks: 3, methods: [][]entropy.Method{{mHuff0, mRaw}, {mHuff0, mRaw}, {mRaw, mRaw}},
		},
		{
			// 16-bit integers: plain byte planes, no rotation.
			name: "u16_planes", dt: dtype.U16, shape: []uint64{3, 8},
			raw: func() []byte {
				b := make([]byte, 2*24)
				for i := 0; i < 24; i++ {
					binary.LittleEndian.PutUint16(b[2*i:], uint16(0x0100*i+7))
				}
				return b
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRaw, mRLE}},
		},
		{
			// A multi-chunk frame: 100 I32 in chunks of 16 (seven chunks,
			// the last of 4 elements).
			name: "i32_multichunk", dt: dtype.I32, shape: []uint64{100},
			opt: Options{ChunkElems: 16},
			raw: func() []byte {
				b := make([]byte, 4*100)
				for i := 0; i < 100; i++ {
					binary.LittleEndian.PutUint32(b[4*i:], uint32(int32(i*i-2000)))
				}
				return b
			},
			chunkElems: 16, nchunks: 7, methods: [][]entropy.Method{{mRLE, mRLE, mRaw, mRaw}, {mRLE, mRLE, mRaw, mRaw}, {mRaw, mRaw, mRaw, mRaw}, {mRLE, mRLE, mRaw, mRaw}, {mRLE, mRLE, mRaw, mRaw}, {mRLE, mRLE, mRaw, mRaw}, {mRLE, mRLE, mRaw, mRaw}},
		},
		{
			// One stream, four chunks, one per stream method, effort Max:
			// a run (rle), a skewed alphabet (huff0), a repeated phrase
			// (zstd) and noise (raw).
			name: "u8_methods", dt: dtype.U8, shape: []uint64{4, 256},
			opt: Options{ChunkElems: 256, Effort: entropy.Max},
			raw: func() []byte {
				r := rand.New(rand.NewSource(21))
				b := make([]byte, 1024)
				for i := range b[:256] {
					b[i] = 0x2a
				}
				for i := range b[256:512] {
					switch x := r.Intn(16); {
					case x < 10:
						b[256+i] = 'a'
					case x < 14:
						b[256+i] = 'b'
					default:
						b[256+i] = byte('c' + r.Intn(4))
					}
				}
				phrase := []byte("tpde frames! ")
				for i := range b[512:768] {
					b[512+i] = phrase[i%len(phrase)]
				}
				r.Read(b[768:])
				return b
			},
			chunkElems: 256, nchunks: 4,
			methods: [][]entropy.Method{{mRLE}, {mHuff0}, {mZstd}, {mRaw}},
		},
		{
			// A 0-d tensor (shape []) holds one element.
			name: "f64_scalar", dt: dtype.F64, shape: []uint64{},
			raw: func() []byte {
				return binary.LittleEndian.AppendUint64(nil, math.Float64bits(-math.Pi))
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRLE, mRLE, mRLE, mRLE, mRLE, mRLE, mRLE, mRLE}},
		},
		{
			// An empty tensor: no chunks, no payload.
			name: "f16_empty", dt: dtype.F16, shape: []uint64{2, 0, 3},
			raw:        func() []byte { return []byte{} },
			chunkElems: 16384, nchunks: 0, methods: [][]entropy.Method{}, size: 36 + 3*8 + 4,
		},
		{
			// One-byte float and bool: a single identity plane.
			name: "f8e4m3_vector", dt: dtype.F8E4M3, shape: []uint64{16},
			raw: func() []byte {
				return []byte{0x00, 0x80, 0x38, 0xb8, 0x7f, 0xff, 0x7e, 0x01, 0x38, 0x38, 0x38, 0x38, 0x40, 0x40, 0x30, 0x28}
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRaw}},
		},
		{
			name: "bool_mask", dt: dtype.Bool, shape: []uint64{5, 8},
			raw: func() []byte {
				b := make([]byte, 40)
				for i := range b {
					if i%3 == 0 || i%7 == 0 {
						b[i] = 1
					}
				}
				return b
			},
			chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mZstd}},
		},
		{
			// Forward compatibility: a frame of a later minor version (1.1)
			// with 5 bytes in the extension area. A 1.0 reader skips them.
			name: "i64_minor1_ext", dt: dtype.I64, shape: []uint64{2},
			raw: func() []byte {
				return append(binary.LittleEndian.AppendUint64(nil, 1<<40+5), binary.LittleEndian.AppendUint64(nil, uint64(0xffff_ffff_ffff_fff0))...)
			},
			edit: withHeaderEdit(func(hdr []byte) []byte {
				hdr[5] = 1
				binary.LittleEndian.PutUint16(hdr[28:], 5)
				return append(hdr, 'h', 'e', 'l', 'l', 'o')
			}),
			minor: 1, extLen: 5, chunkElems: 16384, nchunks: 1, methods: [][]entropy.Method{{mRaw, mRaw, mRaw, mRaw, mRaw, mRaw, mRaw, mRaw}},
		},
		{
			// A frame kind this version does not know (1 is planned for
			// delta frames): refused as unsupported, not as corrupt.
			name: "unsupported_kind1", dt: dtype.F32, shape: []uint64{2},
			raw: func() []byte { return f32s(math.Float32bits(1), math.Float32bits(2)) },
			edit: withHeaderEdit(func(hdr []byte) []byte {
				hdr[6] = 1
				return hdr
			}),
			unsupported: true,
		},
		{
			// A later major version: refused before anything else is read.
			name: "unsupported_major2", dt: dtype.F32, shape: []uint64{2},
			raw: func() []byte { return f32s(math.Float32bits(1), math.Float32bits(2)) },
			edit: withHeaderEdit(func(hdr []byte) []byte {
				hdr[4] = 2
				return hdr
			}),
			unsupported: true,
		},
	}
}

func writeGolden(t *testing.T, c goldenCase) {
	raw := c.raw()
	blob := encode(t, raw, c.dt, c.shape, c.opt)
	if c.edit != nil {
		blob = c.edit(blob)
	}
	require.NoError(t, os.WriteFile(filepath.Join("testdata", c.name+".tpdf"), blob, 0o644))
	rawPath := filepath.Join("testdata", c.name+".raw")
	if c.unsupported {
		_ = os.Remove(rawPath)
		return
	}
	require.NoError(t, os.WriteFile(rawPath, raw, 0o644))
}

func TestGolden(t *testing.T) {
	cases := goldenCases()
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		for _, c := range cases {
			writeGolden(t, c)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			blob, err := os.ReadFile(filepath.Join("testdata", c.name+".tpdf"))
			require.NoError(t, err, "run `go test ./core/frame -run TestGolden -update` to create it")
			if c.unsupported {
				_, err := Parse(blob)
				require.ErrorIs(t, err, errs.Unsupported)
				_, err = Decode(blob, make([]byte, 64), 1)
				require.ErrorIs(t, err, errs.Unsupported)
				return
			}
			want, err := os.ReadFile(filepath.Join("testdata", c.name+".raw"))
			require.NoError(t, err)
			// The frozen raw bytes are still what the case describes.
			require.Equal(t, c.raw(), want, "testdata/%s.raw", c.name)

			for _, threads := range []int{1, 3} {
				dst := make([]byte, len(want))
				h, err := Decode(blob, dst, threads)
				require.NoError(t, err)
				assert.Equal(t, want, dst)

				tk, ns := transform.For(c.dt)
				assert.Equal(t, uint8(1), h.VersionMajor)
				assert.Equal(t, c.minor, h.VersionMinor)
				assert.Equal(t, uint8(KindKeyframe), h.Kind)
				assert.Equal(t, c.dt, h.DType)
				assert.Equal(t, tk, h.Transform)
				assert.Equal(t, ns, h.NStreams)
				assert.Equal(t, c.shape, h.Shape)
				assert.Equal(t, c.chunkElems, h.ChunkElems)
				assert.Equal(t, uint64(len(want)), h.RawSize)
				assert.Equal(t, c.nchunks, h.NChunks)
				assert.Equal(t, 36+8*len(c.shape)+c.extLen, h.HeaderLen)
				assert.Equal(t, h.NChunks*(8+5*ns)+4, h.TableLen)
				assert.Equal(t, uint64(len(blob)), h.FrameLen)
				if c.size != 0 {
					assert.Equal(t, c.size, len(blob))
				}
				if c.methods != nil {
					got := make([][]entropy.Method, h.NChunks)
					for i := range got {
						got[i] = h.Methods(i)
					}
					assert.Equal(t, c.methods, got)
				}
			}
		})
	}
}

// The worked example in docs/FORMAT.md shows exactly these bytes.
func TestGoldenDocExample(t *testing.T) {
	blob, err := os.ReadFile(filepath.Join("testdata", "f32_doc_example.tpdf"))
	require.NoError(t, err)
	assert.Equal(t, docExample, hex.EncodeToString(blob))
}

// Together the golden frames use every stream method and both transforms.
func TestGoldenCoverage(t *testing.T) {
	used := map[entropy.Method]bool{}
	transforms := map[transform.Kind]bool{}
	for _, c := range goldenCases() {
		if c.unsupported {
			continue
		}
		blob, err := os.ReadFile(filepath.Join("testdata", c.name+".tpdf"))
		require.NoError(t, err)
		h, err := Parse(blob)
		require.NoError(t, err)
		transforms[h.Transform] = true
		for i := 0; i < h.NChunks; i++ {
			for _, m := range h.Methods(i) {
				used[m] = true
			}
		}
	}
	for m := entropy.Method(0); m <= entropy.MaxMethod; m++ {
		assert.True(t, used[m], "no golden frame uses %s", m)
	}
	assert.True(t, transforms[transform.Planes])
	assert.True(t, transforms[transform.RotatedPlanes])
}
