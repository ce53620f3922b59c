package statedict

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func sample(t testing.TB) ([]byte, []Tensor, uint64) {
	meta := Meta{Skeleton: json.RawMessage(`{"t":"dict","k":["a","b"]}`), Aliases: json.RawMessage(`{"c":"a"}`)}
	head, ts, err := Build(meta, []Tensor{{Name: "a", DType: "F32", Shape: []uint64{3, 5}}, {Name: "b", DType: "BF16", Shape: []uint64{7}}})
	require.NoError(t, err)
	size := uint64(len(head)) + ts[1].Offset + ts[1].NBytes
	return head, ts, size
}

func TestBuildLaysOutAlignedTensorsAndParseReadsThemBack(t *testing.T) {
	head, ts, size := sample(t)
	assert.Zero(t, len(head)%Align)
	assert.Equal(t, []Tensor{{Name: "a", DType: "F32", Shape: []uint64{3, 5}, Offset: 0, NBytes: 60},
		{Name: "b", DType: "BF16", Shape: []uint64{7}, Offset: 64, NBytes: 14}}, ts)
	h, err := Parse(head, size)
	require.NoError(t, err)
	assert.Equal(t, ts, h.Tensors)
	assert.Equal(t, uint64(len(head)), h.DataStart)
	assert.JSONEq(t, `{"c":"a"}`, string(h.Aliases))
	assert.Equal(t, "null", string(h.StateDictMetadata))
}

// withHeader is a file head whose JSON is js.
func withHeader(js string) []byte {
	for (8+len(js))%Align != 0 {
		js += " "
	}
	return append(binary.LittleEndian.AppendUint64(nil, uint64(len(js))), js...)
}

func TestHostileHeadersAreCorrupt(t *testing.T) {
	ok := `{"format":"tpde-state-dict","version":1,"skeleton":null,"aliases":null,"state_dict_metadata":null,"tensors":[%s]}`
	entry := func(e string) string { return strings.Replace(ok, "%s", e, 1) }
	for name, js := range map[string]string{
		"not an object":  `[1,2]`,
		"repeated key":   `{"format":"tpde-state-dict","format":"x","version":1,"tensors":[]}`,
		"unknown field":  `{"format":"tpde-state-dict","version":1,"tensors":[],"x":1}`,
		"other format":   `{"format":"other","version":1,"tensors":[]}`,
		"version 2":      `{"format":"tpde-state-dict","version":2,"tensors":[]}`,
		"unknown dtype":  entry(`{"name":"a","dtype":"C64","shape":[1],"offset":0,"nbytes":8}`),
		"shape lies":     entry(`{"name":"a","dtype":"F32","shape":[2],"offset":0,"nbytes":4}`),
		"outside":        entry(`{"name":"a","dtype":"F32","shape":[1000],"offset":0,"nbytes":4000}`),
		"offset wraps":   entry(`{"name":"a","dtype":"U8","shape":[2],"offset":18446744073709551615,"nbytes":2}`),
		"negative shape": entry(`{"name":"a","dtype":"U8","shape":[-1],"offset":0,"nbytes":2}`),
		"name twice":     entry(`{"name":"a","dtype":"U8","shape":[1],"offset":0,"nbytes":1},{"name":"a","dtype":"U8","shape":[1],"offset":1,"nbytes":1}`),
		"shape overflow": entry(`{"name":"a","dtype":"F64","shape":[4294967296,4294967296],"offset":0,"nbytes":0}`),
		"alias to none":  strings.Replace(entry(""), `"aliases":null`, `"aliases":{"x":"nope"}`, 1),
		"NaN":            `{"format":"tpde-state-dict","version":NaN,"tensors":[]}`,
		"trailing":       `{"format":"tpde-state-dict","version":1,"tensors":[]} {}`,
	} {
		head := withHeader(js)
		_, err := Parse(head, uint64(len(head))+64)
		require.ErrorIs(t, err, errs.Corrupt, name)
	}
	huge := binary.LittleEndian.AppendUint64(nil, MaxHeader+1)
	_, err := Parse(huge, 1<<40)
	require.ErrorIs(t, err, errs.Corrupt)
	_, err = Parse(withHeader(`{}`)[:20], 1000)
	require.ErrorIs(t, err, errs.Corrupt)
}

func TestBuildRefusesWhatItCannotLayOut(t *testing.T) {
	for _, ts := range [][]Tensor{
		{{Name: "a", DType: "C64", Shape: []uint64{1}}},
		{{Name: "a", DType: "U8", Shape: []uint64{1}}, {Name: "a", DType: "U8", Shape: []uint64{1}}},
		{{Name: "a", DType: "F64", Shape: []uint64{1 << 32, 1 << 32}}},
	} {
		_, _, err := Build(Meta{}, ts)
		require.ErrorIs(t, err, errs.Invalid)
	}
}

// FuzzParse: a header parses into tensors that lie inside the file, or is
// refused as corrupt; never a panic.
func FuzzParse(f *testing.F) {
	head, _, size := sample(f)
	f.Add(head, size)
	f.Add(withHeader(`{"format":"tpde-state-dict","version":1,"tensors":[]}`), uint64(200))
	f.Fuzz(func(t *testing.T, b []byte, size uint64) {
		h, err := Parse(b, size)
		if err != nil {
			require.ErrorIs(t, err, errs.Corrupt)
			return
		}
		for _, ts := range h.Tensors {
			require.LessOrEqual(t, h.DataStart+ts.Offset+ts.NBytes, size)
		}
	})
}
