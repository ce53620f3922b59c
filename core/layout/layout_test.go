package layout

import (
	"encoding/binary"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/torchlegacy"
)

func TestPlanFindsSafetensorsTensorsInFileOrder(t *testing.T) {
	hdr := []byte(`{"b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},"a":{"dtype":"BF16","shape":[4],"data_offsets":[0,8]},"z":{"dtype":"F32","shape":[0],"data_offsets":[16,16]}}`)
	data := binary.LittleEndian.AppendUint64(nil, uint64(len(hdr)))
	data = append(append(data, hdr...), make([]byte, 16)...)
	kind, regs, why := Plan(data, nil)
	require.Equal(t, Safetensors, kind, why)
	require.Len(t, regs, 2, "the empty tensor has no region")
	start := uint64(8 + len(hdr))
	assert.Equal(t, Region{Name: "a", Begin: start, End: start + 8, DType: dtype.BF16, Shape: []uint64{4}}, regs[0])
	assert.Equal(t, "b", regs[1].Name)
}

func TestPlanTellsWhyABrokenContainerIsRaw(t *testing.T) {
	data := binary.LittleEndian.AppendUint64(nil, 10)
	data = append(data, []byte(`{"a": 1}  `)...)
	kind, regs, why := Plan(data, nil)
	assert.Equal(t, Raw, kind)
	assert.Empty(t, regs)
	assert.Contains(t, why, "not a valid safetensors file")

	kind, _, why = Plan([]byte("PK\x03\x04 but not a zip"), &Hints{TorchZip: map[string]string{"0": "F32"}})
	assert.Equal(t, Raw, kind)
	assert.Contains(t, why, "torch file stored whole")

	kind, _, why = Plan([]byte("plain text"), nil)
	assert.Equal(t, Raw, kind)
	assert.Empty(t, why)
}

func TestPlanTakesTheStoragesATorchZipsHintsType(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "torchzip", "testdata", "state.pt"))
	require.NoError(t, err)
	hints := map[string]string{"0": "F32", "1": "F64", "2": "NOPE", "99": "F32"}
	for k := 3; k < 15; k++ {
		hints[strconv.Itoa(k)] = "U8"
	}
	kind, regs, _ := Plan(data, &Hints{TorchZip: hints})
	require.Equal(t, TorchZip, kind)
	names := map[string]dtype.DType{}
	for i, r := range regs {
		names[r.Name] = r.DType
		if i > 0 {
			assert.GreaterOrEqual(t, r.Begin, regs[i-1].End, "in file order, not overlapping")
		}
		assert.Equal(t, (r.End-r.Begin)/uint64(r.DType.Width()), r.Shape[0])
	}
	assert.Equal(t, dtype.F32, names["data/0"])
	assert.Equal(t, dtype.F64, names["data/1"])
	assert.NotContains(t, names, "data/2", "an unknown dtype stays verbatim")
	assert.NotContains(t, names, "data/99", "a key the zip lacks is ignored")
}

// legacyGolden reads a golden legacy torch file and the layout its
// make.py found with an independent reader.
func legacyGolden(t *testing.T, name string) ([]byte, torchlegacy.Layout) {
	dir := filepath.Join("..", "torchlegacy", "testdata")
	data, err := os.ReadFile(filepath.Join(dir, name))
	require.NoError(t, err)
	raw, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	require.NoError(t, err)
	var g map[string]struct {
		Layout torchlegacy.Layout `json:"layout"`
	}
	require.NoError(t, json.Unmarshal(raw, &g))
	return data, g[name].Layout
}

func TestPlanTypesALegacyTorchFilesStoragesByName(t *testing.T) {
	data, l := legacyGolden(t, "state.pt")
	kind, regs, why := Plan(data, &Hints{TorchLegacy: &l})
	require.Equal(t, TorchLegacy, kind, why)
	byName := map[string]Region{}
	for i, r := range regs {
		byName[r.Name] = r
		if i > 0 {
			assert.GreaterOrEqual(t, r.Begin, regs[i-1].End+8, "in file order, each after its count")
		}
	}
	assert.Equal(t, dtype.BF16, byName["bf16"].DType)
	assert.Equal(t, []uint64{6}, byName["f64"].Shape)
	assert.Equal(t, dtype.Bool, byName["bool"].DType)
	assert.NotContains(t, byName, "c64", "complex stays verbatim")
	assert.NotContains(t, byName, "empty", "an empty storage has no region")
	assert.NotContains(t, byName, "f32_view", "a view is its storage's, named by the first path")
}

func TestPlanStoresALegacyFileWholeWhenItsBytesDisagree(t *testing.T) {
	data, l := legacyGolden(t, "nested.pt")
	wrong := l
	wrong.Storages = append([]torchlegacy.Spec{}, l.Storages...)
	wrong.Storages[0].Count++
	kind, regs, why := Plan(data, &Hints{TorchLegacy: &wrong})
	assert.Equal(t, Raw, kind)
	assert.Empty(t, regs)
	assert.Contains(t, why, "legacy torch file stored whole")
	assert.Contains(t, why, "the file counts")

	kind, _, why = Plan(append(append([]byte{}, data...), 0), &Hints{TorchLegacy: &l})
	assert.Equal(t, Raw, kind)
	assert.Contains(t, why, "trailing data")

	same := l
	same.Storages = append([]torchlegacy.Spec{}, l.Storages...)
	same.Storages[1].Name = same.Storages[0].Name
	kind, _, why = Plan(data, &Hints{TorchLegacy: &same})
	assert.Equal(t, Raw, kind)
	assert.Contains(t, why, "repeated name")

	kind, _, why = Plan(data, &Hints{TorchLegacy: &l, TorchZip: map[string]string{}})
	assert.Equal(t, Raw, kind)
	assert.Contains(t, why, "both")
}

func TestPlanNamesATorchZipsStoragesByTheNamesGiven(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "torchzip", "testdata", "state.pt"))
	require.NoError(t, err)
	dtypes := map[string]string{"0": "F32", "1": "F64"}
	names := func(regs []Region) []string {
		var out []string
		for _, r := range regs {
			out = append(out, r.Name)
		}
		return out
	}
	for _, tc := range []struct {
		what  string
		given map[string]string
		want  []string
	}{
		{"every key named", map[string]string{"0": "model/w", "1": "state/0/exp_avg"}, []string{"model/w", "state/0/exp_avg"}},
		{"a key without a name keeps its record's", map[string]string{"1": "state/0/exp_avg"}, []string{"data/0", "state/0/exp_avg"}},
		{"no names at all", nil, []string{"data/0", "data/1"}},
		{"a name given twice: none used", map[string]string{"0": "w", "1": "w"}, []string{"data/0", "data/1"}},
		{"a name that is another key's record name: none used", map[string]string{"1": "data/0"}, []string{"data/0", "data/1"}},
		{"an empty name: none used", map[string]string{"0": "", "1": "b"}, []string{"data/0", "data/1"}},
		{"a name that is not UTF-8: none used", map[string]string{"0": "\xff", "1": "b"}, []string{"data/0", "data/1"}},
		{"an overlong name: none used", map[string]string{"0": string(make([]byte, MaxNameBytes+1)), "1": "b"}, []string{"data/0", "data/1"}},
	} {
		kind, regs, why := Plan(data, &Hints{TorchZip: dtypes, TorchZipNames: tc.given})
		require.Equal(t, TorchZip, kind, why)
		assert.ElementsMatch(t, tc.want, names(regs), tc.what)
	}
	var h Hints
	require.NoError(t, json.Unmarshal([]byte(`{"torch_zip": {"0": "F32"}, "torch_zip_names": {"0": "w"}}`), &h))
	assert.Equal(t, map[string]string{"0": "w"}, h.TorchZipNames, "the C ABI's JSON spelling")
}
