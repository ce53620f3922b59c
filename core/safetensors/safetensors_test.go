package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/bits"
	"sort"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// file assembles a safetensors file: the 8-byte little-endian header length,
// the header text, then the data buffer.
func file(header string, buf []byte) []byte {
	out := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	out = append(out, header...)
	return append(out, buf...)
}

type spec struct {
	name  string
	dtype string
	shape []uint64
	begin uint64
	end   uint64
}

// headerJSON writes a header the way the reference writer does: one JSON
// object, then spaces up to a multiple of 8 bytes (with the length prefix).
func headerJSON(meta map[string]string, specs ...spec) string {
	m := map[string]any{}
	if meta != nil {
		m["__metadata__"] = meta
	}
	for _, s := range specs {
		shape := s.shape
		if shape == nil {
			shape = []uint64{}
		}
		m[s.name] = map[string]any{"dtype": s.dtype, "shape": shape, "data_offsets": []uint64{s.begin, s.end}}
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	for (8+len(b))%8 != 0 {
		b = append(b, ' ')
	}
	return string(b)
}

func parse(t *testing.T, data []byte) *File {
	t.Helper()
	f, err := Parse(data)
	require.NoError(t, err)
	return f
}

func requireCorrupt(t *testing.T, data []byte) {
	t.Helper()
	f, err := Parse(data)
	require.Error(t, err)
	assert.Nil(t, f)
	assert.ErrorIs(t, err, errs.Corrupt)
}

func corruptHeader(t *testing.T, header string, bufLen int) {
	t.Helper()
	requireCorrupt(t, file(header, make([]byte, bufLen)))
}

func TestParseValid(t *testing.T) {
	hdr := headerJSON(map[string]string{"format": "pt", "note": "ünïcode"},
		spec{"b.weight", "F32", []uint64{2, 3}, 8, 32},
		spec{"a.bias", "BF16", []uint64{4}, 0, 8},
		spec{"c.idx", "I64", []uint64{1}, 32, 40},
	)
	data := file(hdr, bytes.Repeat([]byte{7}, 40))
	f := parse(t, data)
	n := uint64(len(hdr))
	assert.Equal(t, n, f.HeaderLen)
	assert.Equal(t, 8+n, f.DataStart)
	assert.Equal(t, map[string]string{"format": "pt", "note": "ünïcode"}, f.Metadata)
	require.Len(t, f.Tensors, 3)
	// Sorted by offset, offsets made absolute.
	assert.Equal(t, Tensor{Name: "a.bias", DType: "BF16", Shape: []uint64{4}, Begin: 8 + n, End: 16 + n}, f.Tensors[0])
	assert.Equal(t, Tensor{Name: "b.weight", DType: "F32", Shape: []uint64{2, 3}, Begin: 16 + n, End: 40 + n}, f.Tensors[1])
	assert.Equal(t, Tensor{Name: "c.idx", DType: "I64", Shape: []uint64{1}, Begin: 40 + n, End: 48 + n}, f.Tensors[2])
	assert.True(t, Sniff(data))
}

func TestParseSpacePaddedHeader(t *testing.T) {
	hdr := `{"x":{"dtype":"U8","shape":[3],"data_offsets":[0,3]}}` + strings.Repeat(" ", 13)
	f := parse(t, file(hdr, []byte{1, 2, 3}))
	require.Len(t, f.Tensors, 1)
	assert.Equal(t, uint64(len(hdr)), f.HeaderLen)
	assert.Equal(t, f.DataStart, f.Tensors[0].Begin)
}

func TestParseEmptyHeaderObject(t *testing.T) {
	f := parse(t, file("{}", nil))
	assert.Empty(t, f.Tensors)
	assert.Nil(t, f.Metadata)
	assert.Equal(t, uint64(10), f.DataStart)
}

// tpde keeps bytes no tensor covers, so holes and trailing bytes are
// allowed (the reference implementation requires a dense buffer).
func TestParseHolesAndTrailingBytes(t *testing.T) {
	hdr := headerJSON(nil,
		spec{"a", "U8", []uint64{4}, 2, 6},
		spec{"b", "U16", []uint64{2}, 10, 14},
	)
	f := parse(t, file(hdr, make([]byte, 20)))
	require.Len(t, f.Tensors, 2)
	assert.Equal(t, f.DataStart+2, f.Tensors[0].Begin)
	assert.Equal(t, f.DataStart+14, f.Tensors[1].End)
}

func TestParseZeroSizeTensors(t *testing.T) {
	hdr := headerJSON(nil,
		spec{"empty", "F32", []uint64{0, 5}, 4, 4},
		spec{"a", "F32", []uint64{1}, 0, 4},
		spec{"b", "F32", []uint64{1}, 4, 8},
		spec{"empty2", "BF16", []uint64{3, 0}, 8, 8},
	)
	f := parse(t, file(hdr, make([]byte, 8)))
	require.Len(t, f.Tensors, 4)
	var names []string
	for _, x := range f.Tensors {
		names = append(names, x.Name)
	}
	assert.Equal(t, []string{"a", "empty", "b", "empty2"}, names)
}

func TestParseScalar(t *testing.T) {
	hdr := headerJSON(nil, spec{"s", "F64", nil, 0, 8})
	f := parse(t, file(hdr, make([]byte, 8)))
	require.Len(t, f.Tensors, 1)
	assert.Empty(t, f.Tensors[0].Shape)
	assert.Equal(t, uint64(8), f.Tensors[0].End-f.Tensors[0].Begin)
}

func TestParseEveryDtype(t *testing.T) {
	for name, b := range elementBits {
		// 8 elements is a whole number of bytes for every width.
		size := 8 * b / 8
		hdr := headerJSON(nil, spec{"t", name, []uint64{2, 4}, 0, size})
		f := parse(t, file(hdr, make([]byte, size)))
		require.Len(t, f.Tensors, 1, name)
		assert.Equal(t, name, f.Tensors[0].DType)
	}
	for _, c := range []struct {
		dtype string
		n     uint64
		size  uint64
	}{{"F4", 2, 1}, {"F4", 6, 3}, {"F6_E2M3", 4, 3}, {"F6_E3M2", 8, 6}, {"C64", 3, 24}, {"F8_E8M0", 5, 5}} {
		hdr := headerJSON(nil, spec{"t", c.dtype, []uint64{c.n}, 0, c.size})
		parse(t, file(hdr, make([]byte, c.size)))
	}
}

func TestParseHeaderFromPrefix(t *testing.T) {
	hdr := headerJSON(nil, spec{"w", "F16", []uint64{1000}, 0, 2000})
	data := file(hdr, make([]byte, 2000))
	full := parse(t, data)
	f, err := ParseHeader(data[:8+len(hdr)], uint64(len(data)))
	require.NoError(t, err)
	assert.Equal(t, full, f)
	// A prefix that stops inside the header is not enough.
	_, err = ParseHeader(data[:8+len(hdr)-1], uint64(len(data)))
	assert.ErrorIs(t, err, errs.Corrupt)
	// The file size bounds the tensors, not the prefix length.
	_, err = ParseHeader(data[:8+len(hdr)], uint64(len(data)-1))
	assert.ErrorIs(t, err, errs.Corrupt)
}

func TestSniff(t *testing.T) {
	good := file("{}", nil)
	assert.True(t, Sniff(good))
	assert.True(t, Sniff(file(`{"a":1}`, nil)), "sniffing does not parse")
	assert.False(t, Sniff(nil))
	assert.False(t, Sniff(good[:9]))
	assert.False(t, Sniff(file("[]", nil)))
	assert.False(t, Sniff(file(" {}", nil)))
	assert.False(t, Sniff(append(binary.LittleEndian.AppendUint64(nil, 1), '{')))
	assert.False(t, Sniff(append(binary.LittleEndian.AppendUint64(nil, MaxHeaderLen+1), '{', '}')))
	assert.False(t, Sniff(append(binary.LittleEndian.AppendUint64(nil, 3), '{', '}')), "length past EOF")
	assert.False(t, Sniff([]byte("PK\x03\x04 not safetensors")))
}

// Attack tests, after the safetensors project's: every malformed header is
// refused as corrupt, without panicking or allocating by what it claims.

func TestAttackFileTooShort(t *testing.T) {
	for n := 0; n < 8; n++ {
		requireCorrupt(t, make([]byte, n))
	}
	_, err := ParseHeader(make([]byte, 8), 7)
	assert.ErrorIs(t, err, errs.Corrupt)
}

func TestAttackHeaderLengthHuge(t *testing.T) {
	for _, n := range []uint64{math.MaxUint64, 1 << 63, MaxHeaderLen + 1} {
		data := append(binary.LittleEndian.AppendUint64(nil, n), "{}"...)
		requireCorrupt(t, data)
		// Even when the file claims to be that large.
		_, err := ParseHeader(data, math.MaxUint64)
		assert.ErrorIs(t, err, errs.Corrupt)
	}
}

func TestAttackHeaderPastEOF(t *testing.T) {
	data := file(`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}`, []byte{1})
	binary.LittleEndian.PutUint64(data, uint64(len(data)-8+1))
	requireCorrupt(t, data)
	for n := 8; n < len(data)-1; n++ {
		requireCorrupt(t, data[:n])
	}
}

func TestAttackHeaderLengthZero(t *testing.T) {
	corruptHeader(t, "", 0)
	corruptHeader(t, "", 16)
	corruptHeader(t, "    ", 0)
}

func TestAttackNotJSON(t *testing.T) {
	for _, h := range []string{
		"{",
		"{]",
		`{"a":}`,
		`{"a" 1}`,
		`{'a':1}`,
		"{\x00}",
		`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}`, // truncated
		`{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},}`,
	} {
		corruptHeader(t, h, 1)
	}
}

// A name twice, or a name whose bytes are not UTF-8 (which encoding/json
// reads as U+FFFD, so "\xff" and "\xfe" would be one name), is refused:
// one header must not list one set of tensors to us and another to torch.
func TestAttackNameReadTwoWays(t *testing.T) {
	e := `{"dtype":"U8","shape":[1],"data_offsets":[0,1]}`
	f := `{"dtype":"U8","shape":[1],"data_offsets":[1,2]}`
	for _, h := range []string{
		`{"a":` + e + `,"a":` + f + `}`,
		`{"a":` + e + `,"\u0061":` + f + `}`,
		`{"__metadata__":{"k":"1","k":"2"},"a":` + e + `}`,
		"{\"\xff\":" + e + ",\"\xfe\":" + f + "}",
		"{\"a\xff\":" + e + "}",
		`{"__metadata__":{"k":"\xff"},"a":` + e + `}`,
	} {
		corruptHeader(t, h, 2)
	}
}

func TestAttackHeaderNotObject(t *testing.T) {
	for _, h := range []string{"[]", `"x"`, "1", "null", " {}", "\n{}", "\xef\xbb\xbf{}"} {
		corruptHeader(t, h, 0)
	}
}

func TestAttackEntryNotObject(t *testing.T) {
	for _, h := range []string{`{"a":1}`, `{"a":"x"}`, `{"a":[0,1]}`, `{"a":null}`, `{"a":{}}`} {
		corruptHeader(t, h, 8)
	}
}

func TestAttackMissingFields(t *testing.T) {
	corruptHeader(t, `{"a":{"shape":[1],"data_offsets":[0,1]}}`, 1)
	corruptHeader(t, `{"a":{"dtype":"U8","shape":[1]}}`, 1)
}

func TestAttackUnknownField(t *testing.T) {
	corruptHeader(t, `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1],"offset":0}}`, 1)
}

func TestAttackUnknownDtype(t *testing.T) {
	for _, d := range []string{"F128", "bf16", "", "U8 ", "Q4_0", "I128"} {
		corruptHeader(t, headerJSON(nil, spec{"a", d, []uint64{1}, 0, 1}), 16)
	}
	corruptHeader(t, `{"a":{"dtype":8,"shape":[1],"data_offsets":[0,1]}}`, 1)
}

func TestAttackOffsetsOverflow(t *testing.T) {
	const max = uint64(math.MaxUint64)
	for _, o := range [][2]uint64{
		{max, max},
		{max - 3, max},
		{0, max},
		{1 << 63, 1<<63 + 4},
		{0, 5}, // one past a 4-byte buffer
		{4, 5},
	} {
		corruptHeader(t, headerJSON(nil, spec{"a", "U8", []uint64{o[1] - o[0]}, o[0], o[1]}), 4)
	}
	// Past the end of the data even though inside the file's bytes counted
	// from the start of the header.
	corruptHeader(t, headerJSON(nil, spec{"a", "U8", []uint64{10}, 0, 10}), 9)
	// Numbers JSON cannot put in a uint64.
	corruptHeader(t, `{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,18446744073709551616]}}`, 1)
}

func TestAttackOffsetsReversed(t *testing.T) {
	corruptHeader(t, `{"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}}`, 8)
	corruptHeader(t, `{"a":{"dtype":"U8","shape":[2],"data_offsets":[3,1]}}`, 8)
}

func TestAttackOffsetsWrongArity(t *testing.T) {
	for _, o := range []string{"[]", "[0]", "[0,1,2]", "null", "0", `{"begin":0}`} {
		corruptHeader(t, `{"a":{"dtype":"U8","shape":[1],"data_offsets":`+o+`}}`, 4)
	}
}

func TestAttackNegativeOrFractionalNumbers(t *testing.T) {
	for _, e := range []string{
		`{"dtype":"U8","shape":[1],"data_offsets":[-1,0]}`,
		`{"dtype":"U8","shape":[1],"data_offsets":[0.5,1.5]}`,
		`{"dtype":"U8","shape":[1],"data_offsets":["0","1"]}`,
		`{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}`,
		`{"dtype":"U8","shape":[1.0],"data_offsets":[0,1]}`,
		`{"dtype":"U8","shape":1,"data_offsets":[0,1]}`,
		`{"dtype":"U8","shape":[1e3],"data_offsets":[0,1000]}`,
	} {
		corruptHeader(t, `{"a":`+e+`}`, 1000)
	}
}

func TestAttackOverlappingTensors(t *testing.T) {
	for _, pair := range [][2]spec{
		{{"a", "U8", []uint64{4}, 0, 4}, {"b", "U8", []uint64{4}, 2, 6}},  // partial
		{{"a", "U8", []uint64{4}, 0, 4}, {"b", "U8", []uint64{4}, 0, 4}},  // identical
		{{"a", "U8", []uint64{8}, 0, 8}, {"b", "U8", []uint64{2}, 3, 5}},  // contained
		{{"a", "U8", []uint64{8}, 0, 8}, {"b", "U8", []uint64{0}, 3, 3}},  // empty, inside
		{{"a", "U8", []uint64{8}, 0, 8}, {"b", "U16", []uint64{4}, 0, 8}}, // same range, other dtype
	} {
		corruptHeader(t, headerJSON(nil, pair[0], pair[1]), 8)
	}
}

func TestAttackShapeOverflow(t *testing.T) {
	// The element count overflows 64 bits.
	corruptHeader(t, headerJSON(nil, spec{"a", "U8", []uint64{1 << 32, 1 << 32, 1 << 32}, 0, 0}), 0)
	corruptHeader(t, headerJSON(nil, spec{"a", "U8", []uint64{math.MaxUint64, 2}, 0, 0}), 0)
	// The element count fits, but the bit count wraps around to exactly
	// the two bytes the offsets give: (2^61 + 1) * 16 = 2^65 + 16.
	corruptHeader(t, headerJSON(nil, spec{"a", "BF16", []uint64{1<<61 + 1}, 0, 2}), 2)
	// A product that wraps to zero must not pass as an empty tensor.
	corruptHeader(t, headerJSON(nil, spec{"a", "F32", []uint64{1 << 32, 1 << 32}, 0, 0}), 0)
	corruptHeader(t, headerJSON(nil, spec{"a", "F32", []uint64{1 << 62}, 0, 0}), 0)
}

func TestAttackSizeMismatch(t *testing.T) {
	corruptHeader(t, headerJSON(nil, spec{"a", "F32", []uint64{2}, 0, 4}), 8)
	corruptHeader(t, headerJSON(nil, spec{"a", "F32", []uint64{2}, 0, 12}), 12)
	corruptHeader(t, headerJSON(nil, spec{"a", "BF16", []uint64{}, 0, 4}), 4)
	corruptHeader(t, headerJSON(nil, spec{"a", "U8", []uint64{0}, 0, 1}), 4)
	// Sub-byte dtypes must fill whole bytes.
	corruptHeader(t, headerJSON(nil, spec{"a", "F4", []uint64{3}, 0, 1}), 4)
	corruptHeader(t, headerJSON(nil, spec{"a", "F4", []uint64{3}, 0, 2}), 4)
	corruptHeader(t, headerJSON(nil, spec{"a", "F6_E2M3", []uint64{3}, 0, 3}), 4)
}

func TestAttackMetadataNotStringMap(t *testing.T) {
	for _, m := range []string{`{"a":1}`, `{"a":{"b":"c"}}`, `["a"]`, `"x"`, `{"a":true}`} {
		corruptHeader(t, `{"__metadata__":`+m+`}`, 0)
	}
}

func TestAttackDeepNesting(t *testing.T) {
	deep := strings.Repeat("[", 100000) + strings.Repeat("]", 100000)
	corruptHeader(t, `{"__metadata__":`+deep+`}`, 0)
	corruptHeader(t, `{"a":{"dtype":"U8","shape":`+deep+`,"data_offsets":[0,0]}}`, 0)
}

func TestAttackManyEntries(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a 13 MB header")
	}
	var b strings.Builder
	b.WriteString("{")
	for i := 0; i <= MaxTensors; i++ {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"%x":0`, i)
	}
	b.WriteString("}")
	corruptHeader(t, b.String(), 0)
}

// FuzzParse: no input panics, and whatever is accepted describes tensors
// that lie inside the file's data buffer, sorted, without overlap, each
// exactly as large as its dtype and shape say.
func FuzzParse(f *testing.F) {
	f.Add(file("{}", nil))
	f.Add(file(headerJSON(map[string]string{"format": "pt"},
		spec{"a", "BF16", []uint64{2, 2}, 0, 8},
		spec{"b", "F32", []uint64{1}, 8, 12},
		spec{"c", "I64", nil, 16, 24},
		spec{"d", "F4", []uint64{4}, 24, 26},
		spec{"e", "U8", []uint64{0}, 26, 26},
	), make([]byte, 30)))
	f.Add(file(headerJSON(nil, spec{"x", "C64", []uint64{1, 1}, 0, 8}), make([]byte, 8)))
	f.Add(file(`{"a":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"b":{"dtype":"U8","shape":[2],"data_offsets":[1,3]}}`, make([]byte, 4)))
	f.Add(file(`{"a":{"dtype":"BF16","shape":[2305843009213693953],"data_offsets":[0,2]}}`, make([]byte, 2)))
	f.Add([]byte{2, 0, 0, 0, 0, 0, 0, 0, '{', '}'})
	f.Fuzz(func(t *testing.T, data []byte) {
		f, err := Parse(data)
		if err != nil {
			require.ErrorIs(t, err, errs.Corrupt)
			return
		}
		size := uint64(len(data))
		require.LessOrEqual(t, f.HeaderLen, uint64(MaxHeaderLen))
		require.Equal(t, 8+f.HeaderLen, f.DataStart)
		require.LessOrEqual(t, f.DataStart, size)
		require.True(t, Sniff(data))
		require.True(t, sort.SliceIsSorted(f.Tensors, func(i, j int) bool { return f.Tensors[i].Begin < f.Tensors[j].Begin }))
		for i, x := range f.Tensors {
			require.LessOrEqual(t, f.DataStart, x.Begin, x.Name)
			require.LessOrEqual(t, x.Begin, x.End, x.Name)
			require.LessOrEqual(t, x.End, size, x.Name)
			if i > 0 {
				require.LessOrEqual(t, f.Tensors[i-1].End, x.Begin, "%s overlaps %s", f.Tensors[i-1].Name, x.Name)
			}
			n := elementBits[x.DType]
			require.NotZero(t, n, x.DType)
			for _, d := range x.Shape {
				hi, lo := bits.Mul64(n, d)
				require.Zero(t, hi)
				n = lo
			}
			require.Equal(t, 8*(x.End-x.Begin), n, x.Name)
		}
		// Parsing only the header gives the same answer.
		g, err := ParseHeader(data[:f.DataStart], size)
		require.NoError(t, err)
		require.Equal(t, f, g)
	})
}
