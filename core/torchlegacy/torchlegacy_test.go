package torchlegacy

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// synthetic builds a file of a fake pickle area (starting with PROTO, as
// every pickle does) followed by one storage per spec, each filled with
// its index, and returns it with the layout that describes it.
func synthetic(specs ...Spec) ([]byte, Layout) {
	data := append([]byte{0x80, 0x02}, []byte("pickles go here.")...)
	l := Layout{DataStart: uint64(len(data)), Storages: specs}
	for i, s := range specs {
		data = binary.LittleEndian.AppendUint64(data, s.Count)
		for j := uint64(0); j < s.Count*s.ElementSize; j++ {
			data = append(data, byte(i))
		}
	}
	return data, l
}

func TestCheckFindsEachStorageAfterItsCount(t *testing.T) {
	data, l := synthetic(
		Spec{Key: "93", Name: "w", DType: "F32", Count: 3, ElementSize: 4},
		Spec{Key: "94", Name: "empty", DType: "F32", Count: 0, ElementSize: 4},
		Spec{Key: "95", Name: "c", DType: "", Count: 2, ElementSize: 16},
	)
	got, err := Check(data, l)
	require.NoError(t, err)
	require.Len(t, got, 3)
	start := l.DataStart
	assert.Equal(t, Storage{Spec: l.Storages[0], Offset: start + 8, Size: 12}, got[0])
	assert.Equal(t, Storage{Spec: l.Storages[1], Offset: start + 8 + 12 + 8, Size: 0}, got[1])
	assert.Equal(t, Storage{Spec: l.Storages[2], Offset: start + 8 + 12 + 8 + 8, Size: 32}, got[2])
	assert.Equal(t, uint64(len(data)), got[2].Offset+got[2].Size)

	none, err := Check([]byte{0x80, 0x02, '.'}, Layout{DataStart: 3})
	require.NoError(t, err, "a file without storages ends at its keys pickle")
	assert.Empty(t, none)
}

func TestCheckRefusesBytesThatDisagreeWithThePickle(t *testing.T) {
	spec := Spec{Key: "1", Name: "w", DType: "F32", Count: 4, ElementSize: 4}
	data, l := synthetic(spec)
	for _, tc := range []struct {
		name string
		data []byte
		l    Layout
		kind error
		msg  string
	}{
		{"count differs", data, Layout{DataStart: l.DataStart, Storages: []Spec{{Key: "1", Count: 5, ElementSize: 4}}}, errs.Corrupt, "the file counts 4 elements"},
		{"truncated inside the storage", data[:len(data)-1], l, errs.Corrupt, "run past the end"},
		{"truncated inside the count", data[:l.DataStart+3], l, errs.Corrupt, "its count at byte"},
		{"trailing data", append(append([]byte{}, data...), 0), l, errs.Corrupt, "1 bytes of trailing data"},
		{"data start past the end", data, Layout{DataStart: uint64(len(data)) + 1}, errs.Corrupt, "outside the file"},
		{"data start zero", data, Layout{DataStart: 0}, errs.Corrupt, "outside the file"},
		{"not a pickle", append([]byte{'P'}, data[1:]...), l, errs.Corrupt, "PROTO"},
		{"size overflows", data, Layout{DataStart: l.DataStart, Storages: []Spec{{Key: "1", Count: 4, ElementSize: 1 << 63}}}, errs.Corrupt, "run past the end"},
		{"duplicate key", data, Layout{DataStart: l.DataStart, Storages: []Spec{spec, spec}}, errs.Invalid, "listed twice"},
		{"zero element size", data, Layout{DataStart: l.DataStart, Storages: []Spec{{Key: "1", Count: 4}}}, errs.Invalid, "element size 0"},
		{"too many storages", data, Layout{DataStart: l.DataStart, Storages: make([]Spec, MaxStorages+1)}, errs.Invalid, "exceed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Check(tc.data, tc.l)
			require.Error(t, err)
			assert.Nil(t, got)
			assert.ErrorIs(t, err, tc.kind)
			assert.Contains(t, err.Error(), tc.msg)
		})
	}
}

// golden is what testdata/make.py found in each golden file with a trusted
// unpickler (torch's own persistent ids) rather than with tpde's scanner.
type golden struct {
	Layout   Layout   `json:"layout"`
	Storages []uint64 `json:"storage_offsets"`
	Size     uint64   `json:"size"`
}

func readGolden(t testing.TB) (map[string]golden, string) {
	dir := filepath.Join("testdata")
	raw, err := os.ReadFile(filepath.Join(dir, "golden.json"))
	require.NoError(t, err)
	var g map[string]golden
	require.NoError(t, json.Unmarshal(raw, &g))
	require.NotEmpty(t, g)
	return g, dir
}

func TestCheckAgreesWithTorchOnTheGoldenFiles(t *testing.T) {
	g, dir := readGolden(t)
	for name, want := range g {
		t.Run(name, func(t *testing.T) {
			data, err := os.ReadFile(filepath.Join(dir, name))
			require.NoError(t, err)
			require.Equal(t, want.Size, uint64(len(data)))
			got, err := Check(data, want.Layout)
			require.NoError(t, err)
			require.Len(t, got, len(want.Storages))
			for i, s := range got {
				assert.Equal(t, want.Storages[i], s.Offset, s.Key)
			}
		})
	}
}

func FuzzCheck(f *testing.F) {
	g, dir := readGolden(f)
	for name, want := range g {
		data, err := os.ReadFile(filepath.Join(dir, name))
		require.NoError(f, err)
		js, err := json.Marshal(want.Layout)
		require.NoError(f, err)
		f.Add(data, js)
	}
	data, l := synthetic(Spec{Key: "1", DType: "F32", Count: 2, ElementSize: 4})
	js, err := json.Marshal(l)
	require.NoError(f, err)
	f.Add(data, js)
	f.Fuzz(func(t *testing.T, data, layoutJSON []byte) {
		var l Layout
		if json.Unmarshal(layoutJSON, &l) != nil {
			return
		}
		got, err := Check(data, l)
		if err != nil {
			require.Nil(t, got)
			require.True(t, errors.Is(err, errs.Corrupt) || errors.Is(err, errs.Invalid), "error %v has no category", err)
			return
		}
		// A layout that checks out tiles the file from DataStart to its
		// end: each storage right after its own count, which the file holds.
		size := uint64(len(data))
		pos := l.DataStart
		require.Len(t, got, len(l.Storages))
		for i, s := range got {
			require.Equal(t, pos+countLen, s.Offset)
			require.Equal(t, l.Storages[i].Count, binary.LittleEndian.Uint64(data[pos:]))
			require.Equal(t, s.Count*s.ElementSize, s.Size)
			pos = s.Offset + s.Size
			require.LessOrEqual(t, pos, size)
		}
		require.Equal(t, size, pos)
	})
}
