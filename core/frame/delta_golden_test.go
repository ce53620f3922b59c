package frame

// Golden delta frames (kind 1): frames written by the encoder and frozen in
// testdata/ with the reference(s) they apply to and the tensor they decode
// to: NAME.tpdf, NAME.ref.raw, NAME.ref2.raw (prediction only) and
// NAME.raw. They are test vectors for docs/FORMAT.md §6; a NAME.tpdf
// without .raw must be refused with the category the case names. Rewrite
// them deliberately with
//
//	go test ./core/frame -run TestGolden -update
//
// (which rewrites the keyframe goldens too; those must come out unchanged).

import (
	"encoding/binary"
	"encoding/hex"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

type deltaGolden struct {
	name  string
	dt    dtype.DType
	shape []uint64
	opt   DeltaOptions
	// data returns cur, ref and ref2 (nil unless prediction).
	data func() (cur, ref, ref2 []byte)
	edit func([]byte) []byte
	// err: the frame must be refused with this category; no .raw.
	err error

	// Expected fields.
	residual  delta.Kind
	flags     uint8
	quant     int
	minor     uint8
	extLen    int
	modes     []delta.Mode
	contexts  []int  // K of each stored chunk (0 for copy chunks)
	positions []int  // position coding of each sparse chunk, in order (0 Elias-delta, 1 bitmap)
	size      int    // frame length, when fixed by the case
	hex       string // the whole frame, when shown in docs/FORMAT.md
}

func bf16s(v ...float32) []byte {
	b := make([]byte, 2*len(v))
	for i, x := range v {
		binary.LittleEndian.PutUint16(b[2*i:], uint16(math.Float32bits(x)>>16))
	}
	return b
}

// deltaDocExample is the frame shown byte by byte in docs/FORMAT.md §6.11.
const deltaDocExample = "" +
	"895450460100010b010401000040000010000000000000000100000008000000" +
	"0400000000000000010000003757f7c19f47923c8ffdb21ce4da02dc01010000" +
	"001f000000fcb33bf101000000010100000000010100000000010100000000000400000000000002"

func deltaGoldenCases() []deltaGolden {
	return []deltaGolden{
		{
			// The worked example of docs/FORMAT.md: F32 [1.0, -0.0,
			// NaN(1), 2.5] moves its last element up by one ulp.
			name: "delta_f32_doc_example", dt: dtype.F32, shape: []uint64{4},
			opt: DeltaOptions{Residual: delta.Diff},
			data: func() ([]byte, []byte, []byte) {
				ref := f32s(math.Float32bits(1), 0x8000_0000, 0x7fc0_0001, math.Float32bits(2.5))
				cur := f32s(math.Float32bits(1), 0x8000_0000, 0x7fc0_0001, math.Float32bits(2.5)+1)
				return cur, ref, nil
			},
			residual: delta.Diff, extLen: 8, modes: []delta.Mode{delta.Dense}, contexts: []int{1},
			hex: deltaDocExample,
		},
		{
			// BF16 in three chunks: half the elements move by an ulp or two
			// (dense), none move (copy), 2% flip a low bit (sparse).
			name: "delta_bf16_modes", dt: dtype.BF16, shape: []uint64{30, 100},
			opt: DeltaOptions{Residual: delta.Diff, ChunkElems: 1000},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(30))
				ref := weights(r, dtype.BF16, 3000)
				cur := append([]byte(nil), ref...)
				for j := 0; j < 3000; j++ {
					switch {
					case j < 1000 && r.Intn(2) == 0:
						cur[2*j] += byte(r.Intn(5) - 2)
					case j >= 2000 && r.Intn(50) == 0:
						cur[2*j] ^= 1
					}
				}
				return cur, ref, nil
			},
			residual: delta.Diff, extLen: 8, modes: []delta.Mode{delta.Dense, delta.Copy, delta.Sparse},
			contexts: []int{1, 0, 1}, positions: []int{0},
		},
		{
			// F32 with 16 exponent contexts (an update of one size for all
			// weights: small weights move by many ulps), XOR residuals.
			name: "delta_f32_xor_contexts", dt: dtype.F32, shape: []uint64{2, 1000},
			opt: DeltaOptions{Residual: delta.XOR, ChunkElems: 1000, Context: delta.ContextOn},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(31))
				ref := weights(r, dtype.F32, 2000)
				cur := make([]byte, len(ref))
				for j := 0; j < 2000; j++ {
					v := math.Float32frombits(binary.LittleEndian.Uint32(ref[4*j:]))
					binary.LittleEndian.PutUint32(cur[4*j:], math.Float32bits(v+float32(r.NormFloat64()*1e-4)))
				}
				return cur, ref, nil
			},
			residual: delta.XOR, extLen: 8, modes: []delta.Mode{delta.Dense, delta.Dense}, contexts: []int{16, 16},
		},
		{
			// I16 predicted from two references: the tensor continues the
			// step ref2 -> ref by half a step, except 5 elements.
			name: "delta_i16_pred", dt: dtype.I16, shape: []uint64{500},
			opt: DeltaOptions{Residual: delta.Pred},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(32))
				ref, ref2, cur := make([]byte, 1000), make([]byte, 1000), make([]byte, 1000)
				for j := 0; j < 500; j++ {
					a := int16(r.Intn(2000) - 1000)
					step := int16(2 * (r.Intn(21) - 10))
					binary.LittleEndian.PutUint16(ref2[2*j:], uint16(a))
					binary.LittleEndian.PutUint16(ref[2*j:], uint16(a+step))
					c := a + step + step/2
					if j%100 == 7 {
						c += int16(r.Intn(9) - 4)
					}
					binary.LittleEndian.PutUint16(cur[2*j:], uint16(c))
				}
				return cur, ref, ref2
			},
			residual: delta.Pred, extLen: 12, modes: []delta.Mode{delta.Sparse}, contexts: []int{1}, positions: []int{0},
		},
		{
			// U8 where a quarter of the bytes change: positions as a bitmap.
			name: "delta_u8_bitmap", dt: dtype.U8, shape: []uint64{64, 64},
			opt: DeltaOptions{Residual: delta.XOR, Sparse: delta.SparseAlways},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(33))
				ref := make([]byte, 4096)
				r.Read(ref)
				cur := append([]byte(nil), ref...)
				for j := range cur {
					if r.Intn(4) == 0 {
						cur[j] ^= byte(1 + r.Intn(3))
					}
				}
				return cur, ref, nil
			},
			residual: delta.XOR, extLen: 8, modes: []delta.Mode{delta.Sparse}, contexts: []int{1}, positions: []int{1},
		},
		{
			// An unchanged tensor: a header-only frame of 60 bytes.
			name: "delta_bf16_identical", dt: dtype.BF16, shape: []uint64{64, 64},
			opt: DeltaOptions{Residual: delta.Auto},
			data: func() ([]byte, []byte, []byte) {
				ref := weights(rand.New(rand.NewSource(34)), dtype.BF16, 4096)
				return ref, ref, nil
			},
			residual: delta.Diff, flags: DeltaFlagIdentical, extLen: 8, modes: []delta.Mode{}, size: 60,
		},
		{
			// Lossy F32 with int8 quantization: small changes are dropped,
			// the others quantized; a NaN, an infinity and a large jump
			// escape to exact residuals.
			name: "delta_f32_lossy_q8", dt: dtype.F32, shape: []uint64{600},
			opt: DeltaOptions{Residual: delta.Diff, Threshold: 1e-4, QuantBits: 8, ChunkElems: 300},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(35))
				ref := weights(r, dtype.F32, 600)
				cur := make([]byte, len(ref))
				for j := 0; j < 600; j++ {
					v := math.Float32frombits(binary.LittleEndian.Uint32(ref[4*j:]))
					if j < 300 || j%20 == 0 {
						v += float32(r.NormFloat64() * 1e-3)
					}
					binary.LittleEndian.PutUint32(cur[4*j:], math.Float32bits(v))
				}
				binary.LittleEndian.PutUint32(cur[4*10:], 0x7fc0_0001)
				binary.LittleEndian.PutUint32(cur[4*11:], 0x7f80_0000)
				binary.LittleEndian.PutUint32(cur[4*12:], math.Float32bits(3))
				return cur, ref, nil
			},
			residual: delta.Diff, flags: DeltaFlagLossy, quant: 8, extLen: 24,
			modes: []delta.Mode{delta.DenseQ, delta.SparseQ}, contexts: []int{1, 1}, positions: []int{0},
		},
		{
			// Lossy F16, threshold only: what the threshold keeps is exact.
			// Effort max weighs contexts and sparse chunks.
			name: "delta_f16_lossy", dt: dtype.F16, shape: []uint64{800},
			opt: DeltaOptions{Residual: delta.Diff, Threshold: 2e-3, Effort: entropy.Max},
			data: func() ([]byte, []byte, []byte) {
				r := rand.New(rand.NewSource(36))
				ref, cur := make([]byte, 1600), make([]byte, 1600)
				for j := 0; j < 800; j++ {
					v := r.NormFloat64() * 0.5
					binary.LittleEndian.PutUint16(ref[2*j:], uint16(delta.FromFloat64(dtype.F16, v)))
					binary.LittleEndian.PutUint16(cur[2*j:], uint16(delta.FromFloat64(dtype.F16, v+r.NormFloat64()*3e-3)))
				}
				return cur, ref, nil
			},
			residual: delta.Diff, flags: DeltaFlagLossy, extLen: 24, modes: []delta.Mode{delta.Sparse}, contexts: []int{4},
			positions: []int{1},
		},
		{
			// Forward compatibility: a later minor version with 3 more
			// bytes in the extension area, which a reader skips.
			name: "delta_minor1_ext", dt: dtype.I32, shape: []uint64{3},
			opt: DeltaOptions{Residual: delta.Diff},
			data: func() ([]byte, []byte, []byte) {
				return f32s(5, 0xffff_fff0, 1<<30), f32s(4, 0xffff_fff0, 1<<30+3), nil
			},
			edit: withHeaderEdit(func(hdr []byte) []byte {
				hdr[5] = 1
				binary.LittleEndian.PutUint16(hdr[28:], 8+3)
				return append(hdr, 'a', 'b', 'c')
			}),
			residual: delta.Diff, minor: 1, extLen: 11, modes: []delta.Mode{delta.Dense}, contexts: []int{1},
		},
		{
			// A residual kind this version does not know: unsupported.
			name: "unsupported_delta_residual3", dt: dtype.F32, shape: []uint64{2},
			opt: DeltaOptions{Residual: delta.Diff},
			data: func() ([]byte, []byte, []byte) {
				return f32s(math.Float32bits(1), math.Float32bits(3)), f32s(math.Float32bits(1), math.Float32bits(2)), nil
			},
			edit: withHeaderEdit(func(hdr []byte) []byte {
				hdr[32+8] = 3
				return hdr
			}),
			err: errs.Unsupported,
		},
	}
}

func goldenPath(name, suffix string) string { return filepath.Join("testdata", name+suffix) }

func writeDeltaGolden(t *testing.T, c deltaGolden) {
	cur, ref, ref2 := c.data()
	blob, _ := encodeDelta(t, cur, ref, ref2, c.dt, c.shape, c.opt)
	if c.edit != nil {
		blob = c.edit(blob)
	}
	require.NoError(t, os.WriteFile(goldenPath(c.name, ".tpdf"), blob, 0o644))
	require.NoError(t, os.WriteFile(goldenPath(c.name, ".ref.raw"), ref, 0o644))
	if ref2 != nil {
		require.NoError(t, os.WriteFile(goldenPath(c.name, ".ref2.raw"), ref2, 0o644))
	}
	if c.err != nil {
		_ = os.Remove(goldenPath(c.name, ".raw"))
		return
	}
	recon := make([]byte, len(cur))
	o := c.opt
	o.Recon = recon
	encodeDelta(t, cur, ref, ref2, c.dt, c.shape, o)
	require.NoError(t, os.WriteFile(goldenPath(c.name, ".raw"), recon, 0o644))
}

// payloadInfo reads a stored chunk's context count and, for a sparse one,
// its position coding, from the chunk payload (docs/FORMAT.md §6.5).
func payloadInfo(blob []byte, h *Header, i int) (k, coding int) {
	c := &h.dchunks[i]
	p := blob[c.off : c.off+uint64(c.len)]
	k, coding = int(p[0]), -1
	off := 4
	if c.mode == delta.DenseQ || c.mode == delta.SparseQ {
		off += 12
	}
	if c.mode == delta.Sparse || c.mode == delta.SparseQ {
		coding = int(p[off])
	}
	return k, coding
}

func TestGoldenDelta(t *testing.T) {
	cases := deltaGoldenCases()
	if *update {
		for _, c := range cases {
			writeDeltaGolden(t, c)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			blob, err := os.ReadFile(goldenPath(c.name, ".tpdf"))
			require.NoError(t, err, "run `go test ./core/frame -run TestGolden -update` to create it")
			ref, err := os.ReadFile(goldenPath(c.name, ".ref.raw"))
			require.NoError(t, err)
			ref2, err := os.ReadFile(goldenPath(c.name, ".ref2.raw"))
			if err != nil {
				ref2 = nil
			}
			cur, wantRef, wantRef2 := c.data()
			// The frozen references are still what the case describes.
			require.Equal(t, wantRef, ref)
			require.Equal(t, wantRef2, ref2)
			if c.err != nil {
				_, err := ParseAny(blob)
				require.ErrorIs(t, err, c.err)
				_, err = DecodeDelta(blob, ref, ref2, make([]byte, len(cur)), 1)
				require.ErrorIs(t, err, c.err)
				return
			}
			want, err := os.ReadFile(goldenPath(c.name, ".raw"))
			require.NoError(t, err)
			if c.flags&DeltaFlagLossy == 0 {
				require.Equal(t, cur, want, "a lossless golden decodes to its input")
			}
			// Keyframe readers refuse it as unsupported.
			_, err = Decode(blob, make([]byte, len(want)), 1)
			require.ErrorIs(t, err, errs.Unsupported)
			for _, threads := range []int{1, 3} {
				dst := make([]byte, len(want))
				h, err := DecodeDelta(blob, ref, ref2, dst, threads)
				require.NoError(t, err)
				assert.Equal(t, want, dst)
				assert.Equal(t, uint8(KindDelta), h.Kind)
				assert.Equal(t, c.minor, h.VersionMinor)
				assert.Equal(t, c.dt, h.DType)
				assert.Equal(t, c.shape, h.Shape)
				assert.Equal(t, 36+8*len(c.shape)+c.extLen, h.HeaderLen)
				assert.Equal(t, uint64(len(blob)), h.FrameLen)
				di := h.Delta
				assert.Equal(t, c.residual, di.Residual)
				assert.Equal(t, c.flags, di.Flags)
				assert.Equal(t, c.quant, di.QuantBits)
				assert.Equal(t, crc(ref), di.RefCRC)
				if ref2 != nil {
					assert.Equal(t, crc(ref2), di.Ref2CRC)
				}
				if c.flags&DeltaFlagLossy != 0 {
					assert.Equal(t, c.opt.Threshold, di.Bound)
					assert.LessOrEqual(t, di.MaxErr, di.Bound)
				}
				if c.size != 0 {
					assert.Equal(t, c.size, len(blob))
				}
				modes := make([]delta.Mode, h.NChunks)
				var ks, pos []int
				for i := range modes {
					modes[i], _ = h.DeltaChunk(i)
					k, coding := 0, -1
					if modes[i] != delta.Copy {
						k, coding = payloadInfo(blob, h, i)
					}
					ks = append(ks, k)
					if coding >= 0 {
						pos = append(pos, coding)
					}
				}
				assert.Equal(t, c.modes, modes)
				assert.Equal(t, c.contexts, ks)
				assert.Equal(t, c.positions, pos)
			}
			if c.hex != "" {
				assert.Equal(t, c.hex, hex.EncodeToString(blob))
			}
		})
	}
}

// Together the delta goldens use every residual kind, chunk mode and
// position coding, one and several contexts, and both lossy modes.
func TestGoldenDeltaCoverage(t *testing.T) {
	kinds := map[delta.Kind]bool{}
	modes := map[delta.Mode]bool{}
	coding := map[int]bool{}
	ks := map[bool]bool{}
	flags := 0
	for _, c := range deltaGoldenCases() {
		if c.err != nil {
			continue
		}
		kinds[c.residual] = true
		for _, m := range c.modes {
			modes[m] = true
		}
		for _, p := range c.positions {
			coding[p] = true
		}
		for _, k := range c.contexts {
			if k > 0 {
				ks[k > 1] = true
			}
		}
		flags |= int(c.flags)
	}
	assert.Len(t, kinds, int(delta.MaxKind)+1)
	assert.Len(t, modes, int(delta.MaxMode)+1)
	assert.Len(t, coding, 2)
	assert.Len(t, ks, 2)
	assert.Equal(t, int(DeltaFlagIdentical|DeltaFlagLossy), flags)
}

// ParseAny reads every keyframe golden exactly as Parse does, and the
// keyframe relabelled as kind 1 (no delta fields) is corrupt to a
// delta-capable reader while unsupported to keyframe readers.
func TestGoldenKeyframesThroughParseAny(t *testing.T) {
	for _, c := range goldenCases() {
		blob, err := os.ReadFile(filepath.Join("testdata", c.name+".tpdf"))
		require.NoError(t, err)
		h1, err1 := Parse(blob)
		h2, err2 := ParseAny(blob)
		if c.name == "unsupported_kind1" {
			require.ErrorIs(t, err1, errs.Unsupported)
			require.ErrorIs(t, err2, errs.Corrupt)
			continue
		}
		require.Equal(t, err1 == nil, err2 == nil, c.name)
		if err1 != nil {
			require.ErrorIs(t, err2, errs.Unsupported, c.name)
			continue
		}
		require.Equal(t, h1, h2, c.name)
		if raw, err := os.ReadFile(filepath.Join("testdata", c.name+".raw")); err == nil {
			dst := make([]byte, len(raw))
			_, err := DecodeDelta(blob, nil, nil, dst, 2)
			require.NoError(t, err, c.name)
			require.Equal(t, raw, dst, c.name)
		}
	}
}
