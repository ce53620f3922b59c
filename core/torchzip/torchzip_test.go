package torchzip

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// golden is testdata/golden.json: what Python's zipfile found in each file
// that testdata/make.py wrote with torch.
type golden struct {
	Root     string            `json:"root"`
	Records  []string          `json:"records"`
	Storages map[string]uint64 `json:"storages"`
}

func readGolden(t testing.TB) map[string]golden {
	b, err := os.ReadFile(filepath.Join("testdata", "golden.json"))
	require.NoError(t, err)
	var g map[string]golden
	require.NoError(t, json.Unmarshal(b, &g))
	return g
}

func readTestdata(t testing.TB, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	return b
}

func TestGoldenTorchFiles(t *testing.T) {
	for name, want := range readGolden(t) {
		t.Run(name, func(t *testing.T) {
			data := readTestdata(t, name)
			a, err := Parse(data)
			require.NoError(t, err)
			require.Equal(t, want.Root, a.Root)
			var names []string
			for _, r := range a.Records {
				names = append(names, r.Name)
				require.NoError(t, a.CheckCRC(data, r))
			}
			require.Equal(t, want.Records, names, "records in file order")
			require.Equal(t, want.Root+"/data.pkl", a.Pickle.Name)
			require.Equal(t, a.Records[0], a.Pickle, "torch.save writes data.pkl first")
			require.True(t, bytes.HasPrefix(data[a.Pickle.Offset:], []byte{0x80, 0x02}), "pickle protocol 2")
			require.Len(t, a.Storages, len(want.Storages))
			for k, size := range want.Storages {
				r, ok := a.Storages[k]
				require.True(t, ok, "storage %s", k)
				require.Equal(t, want.Root+"/data/"+k, r.Name)
				require.Equal(t, size, r.Size, "storage %s", k)
				require.Zero(t, r.Offset%64, "torch aligns payloads to 64 bytes")
			}
		})
	}
}

func TestGoldenStateHasEveryStorage(t *testing.T) {
	// 16 tensors, one of them a view sharing f32's storage: 16 storages.
	g := readGolden(t)["state.pt"]
	require.Equal(t, "state", g.Root)
	require.Len(t, g.Storages, 16)
}

func TestCheckCRCCatchesFlippedByte(t *testing.T) {
	data := bytes.Clone(readTestdata(t, "state.pt"))
	a, err := Parse(data)
	require.NoError(t, err)
	r := a.Storages["0"]
	require.NotZero(t, r.Size)
	data[r.Offset] ^= 0x40
	err = a.CheckCRC(data, r)
	require.ErrorIs(t, err, errs.Corrupt)
	require.Contains(t, err.Error(), r.Name)

	require.ErrorIs(t, a.CheckCRC(data, Record{Name: "state/nope"}), errs.Invalid)
	bad := r
	bad.Offset = uint64(len(data))
	require.ErrorIs(t, a.CheckCRC(data, bad), errs.Corrupt)
}

func requireUnsupported(t *testing.T, data []byte, reason string) {
	t.Helper()
	a, err := Parse(data)
	require.Nil(t, a)
	require.ErrorIs(t, err, errs.Unsupported)
	require.NotErrorIs(t, err, errs.Corrupt)
	require.Contains(t, err.Error(), reason)
}

func requireCorrupt(t *testing.T, data []byte, reason string) {
	t.Helper()
	a, err := Parse(data)
	require.Nil(t, a)
	require.ErrorIs(t, err, errs.Corrupt)
	require.Contains(t, err.Error(), reason)
}

func TestNotTorchZips(t *testing.T) {
	requireUnsupported(t, readTestdata(t, "script.pt"), "TorchScript archive")
	requireUnsupported(t, readTestdata(t, "legacy.pt"), "not a zip")
	requireUnsupported(t, nil, "not a zip")
	requireUnsupported(t, []byte("{\"a\": 1}"), "not a zip")
	requireUnsupported(t, bytes.Repeat([]byte{0}, 100_000), "not a zip")
}

func TestTruncatedTorchZipIsCorrupt(t *testing.T) {
	data := readTestdata(t, "state.pt")
	for _, cut := range []int{1, 10, 100, len(data) / 2, len(data) - 4} {
		requireCorrupt(t, data[:len(data)-cut], "")
	}
}

// entry is one record of a hand-built zip; the override fields, when
// non-nil, replace what its central directory entry would truthfully say.
type entry struct {
	name    string
	method  uint16
	flags   uint16
	payload []byte
	usize   *uint32 // uncompressed size
	csize   *uint32 // compressed size
	offset  *uint32 // local header offset
}

func u32(v uint32) *uint32 { return &v }

// buildZip writes a classic (non-zip64) zip of entries in order, without
// data descriptors.
func buildZip(entries ...entry) []byte {
	var out, cd bytes.Buffer
	le := func(b *bytes.Buffer, vs ...any) {
		for _, v := range vs {
			_ = binary.Write(b, binary.LittleEndian, v)
		}
	}
	for _, e := range entries {
		off := uint32(out.Len())
		crc := crc32.ChecksumIEEE(e.payload)
		n := uint32(len(e.payload))
		le(&out, []byte("PK\x03\x04"), uint16(20), e.flags, e.method, uint16(0), uint16(0),
			crc, n, n, uint16(len(e.name)), uint16(0))
		out.WriteString(e.name)
		out.Write(e.payload)
		cs, us := n, n
		if e.csize != nil {
			cs = *e.csize
		}
		if e.usize != nil {
			us = *e.usize
		}
		if e.offset != nil {
			off = *e.offset
		}
		le(&cd, []byte("PK\x01\x02"), uint16(20), uint16(20), e.flags, e.method, uint16(0), uint16(0),
			crc, cs, us, uint16(len(e.name)), uint16(0), uint16(0), uint16(0), uint16(0), uint32(0), off)
		cd.WriteString(e.name)
	}
	cdOff := uint32(out.Len())
	out.Write(cd.Bytes())
	le(&out, []byte("PK\x05\x06"), uint16(0), uint16(0), uint16(len(entries)), uint16(len(entries)),
		uint32(cd.Len()), cdOff, uint16(0))
	return out.Bytes()
}

// plain returns the records of a minimal torch.save archive under root.
func plain(root string) []entry {
	return []entry{
		{name: root + "/data.pkl", payload: []byte("\x80\x02}q\x00.")},
		{name: root + "/byteorder", payload: []byte("little")},
		{name: root + "/data/0", payload: bytes.Repeat([]byte{1, 2, 3, 4}, 8)},
		{name: root + "/data/1", payload: nil},
		{name: root + "/version", payload: []byte("3\n")},
	}
}

func TestHandBuiltPlainArchive(t *testing.T) {
	data := buildZip(plain("m")...)
	a, err := Parse(data)
	require.NoError(t, err)
	require.Equal(t, "m", a.Root)
	require.Equal(t, "m/data.pkl", a.Pickle.Name)
	require.Equal(t, uint64(32), a.Storages["0"].Size)
	require.Equal(t, uint64(0), a.Storages["1"].Size)
	require.Equal(t, bytes.Repeat([]byte{1, 2, 3, 4}, 8), data[a.Storages["0"].Offset:][:32])
	for _, r := range a.Records {
		require.NoError(t, a.CheckCRC(data, r))
	}

	// A root torch can write for a file named "..pt".
	_, err = Parse(buildZip(plain(".")...))
	require.NoError(t, err)
}

func TestHandBuiltHostileArchives(t *testing.T) {
	with := func(change func([]entry) []entry) []byte { return buildZip(change(plain("m"))...) }

	t.Run("overlapping payloads", func(t *testing.T) {
		// data/0 (32 bytes) claims to run on over data/1's local header.
		requireCorrupt(t, with(func(es []entry) []entry {
			es[2].csize, es[2].usize = u32(60), u32(60)
			return es
		}), "overlap")
	})
	t.Run("two names for one local header", func(t *testing.T) {
		data := with(func(es []entry) []entry {
			es[3].offset = u32(0) // data/1 points at data.pkl's header
			return es
		})
		_, err := Parse(data)
		require.ErrorIs(t, err, errs.Corrupt)
	})
	t.Run("payload past EOF", func(t *testing.T) {
		requireCorrupt(t, with(func(es []entry) []entry {
			es[4].csize, es[4].usize = u32(1<<31), u32(1<<31)
			return es
		}), "past the end")
	})
	t.Run("payload size near 4 GiB", func(t *testing.T) {
		requireCorrupt(t, with(func(es []entry) []entry {
			es[2].csize, es[2].usize = u32(0xfffffffe), u32(0xfffffffe)
			return es
		}), "past the end")
	})
	t.Run("local header past EOF", func(t *testing.T) {
		requireCorrupt(t, with(func(es []entry) []entry {
			es[1].offset = u32(1 << 30)
			return es
		}), "local header")
	})
	t.Run("stored sizes disagree", func(t *testing.T) {
		requireCorrupt(t, with(func(es []entry) []entry {
			es[2].usize = u32(64)
			return es
		}), "uncompressed size")
	})
	t.Run("deflated data record", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			es[2].method = 8
			return es
		}), `deflated record "m/data/0"`)
	})
	t.Run("deflated data.pkl", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			es[0].method = 8
			return es
		}), `deflated record "m/data.pkl"`)
	})
	t.Run("deflated version record is fine", func(t *testing.T) {
		data := with(func(es []entry) []entry {
			es[4].method = 8
			return es
		})
		a, err := Parse(data)
		require.NoError(t, err)
		require.ErrorIs(t, a.CheckCRC(data, a.Records[4]), errs.Invalid)
	})
	t.Run("encrypted", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			es[2].flags |= 1
			return es
		}), "encrypted")
	})
	t.Run("TorchScript code", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "m/code/__torch__/m.py", method: 8, payload: []byte("x")})
		}), "TorchScript archive")
	})
	t.Run("TorchScript constants", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "m/constants.pkl", payload: []byte("\x80\x02).")})
		}), "TorchScript archive")
	})
	t.Run("duplicate names", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "m/data/0", payload: []byte("abcd")})
		}), `duplicate record "m/data/0"`)
	})
	t.Run("mixed roots", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "other/data/7", payload: []byte("abcd")})
		}), "mixed roots")
	})
	t.Run("record outside a root", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "loose", payload: []byte("abcd")})
		}), "not inside a root folder")
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "m/", payload: nil})
		}), "not inside a root folder")
		requireUnsupported(t, with(func(es []entry) []entry {
			return append(es, entry{name: "/m/x", payload: nil})
		}), "not inside a root folder")
	})
	t.Run("no data.pkl", func(t *testing.T) {
		requireUnsupported(t, with(func(es []entry) []entry { return es[1:] }), "no data.pkl")
		requireUnsupported(t, buildZip(), "no data.pkl")
	})
	t.Run("nested data names are plain records", func(t *testing.T) {
		a, err := Parse(with(func(es []entry) []entry {
			return append(es, entry{name: "m/data/x/y", payload: []byte("ab")})
		}))
		require.NoError(t, err)
		require.Len(t, a.Storages, 2)
		require.Len(t, a.Records, 6)
	})
}

// centralFlood is a zip with one local header and n central directory
// entries all naming it.
func centralFlood(n int) []byte {
	one := buildZip(entry{name: "m/data.pkl", payload: []byte("\x80\x02N.")})
	// one = local header (30+10+4 bytes) | central entry (46+10) | end record (22)
	local, central := one[:44], one[44:100]
	var b bytes.Buffer
	b.Write(local)
	for range n {
		b.Write(central)
	}
	end := bytes.Clone(one[100:])
	binary.LittleEndian.PutUint16(end[8:], uint16(n))
	binary.LittleEndian.PutUint16(end[10:], uint16(n))
	binary.LittleEndian.PutUint32(end[12:], uint32(n*len(central)))
	binary.LittleEndian.PutUint32(end[16:], 44)
	b.Write(end)
	return b.Bytes()
}

func TestRecordCountCapped(t *testing.T) {
	if testing.Short() {
		t.Skip("builds central directories of a million entries")
	}
	// Just over the cap: archive/zip reads them all, the count check refuses.
	requireUnsupported(t, centralFlood(MaxRecords+1), "records exceed")
	// Far over it: the reader stops archive/zip while it is still reading.
	requireUnsupported(t, centralFlood(sigLimit+10), "more than")
}

func TestCentralFloodBuilder(t *testing.T) {
	// Two entries for one local header: a duplicate name, which Parse names
	// before it would find the shared header.
	requireUnsupported(t, centralFlood(2), "duplicate record")
	_, err := Parse(centralFlood(1))
	require.NoError(t, err)
}

func FuzzParse(f *testing.F) {
	for _, name := range []string{"state.pt", "buffer.pt", "script.pt", "legacy.pt"} {
		f.Add(readTestdata(f, name))
	}
	f.Add(buildZip(plain("m")...))
	f.Add(buildZip(plain("archive")[:2]...))
	f.Add(centralFlood(3))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, err := Parse(data)
		if err != nil {
			require.Nil(t, a)
			require.True(t, errorsIsAny(err, errs.Corrupt, errs.Unsupported), "error %v has no category", err)
			return
		}
		size := uint64(len(data))
		require.NotEmpty(t, a.Root)
		require.LessOrEqual(t, len(a.Records), MaxRecords)
		require.True(t, sort.SliceIsSorted(a.Records, func(i, j int) bool { return a.Records[i].Offset < a.Records[j].Offset }))
		byName := map[string]Record{}
		for i, r := range a.Records {
			require.LessOrEqual(t, r.Offset, size, r.Name)
			require.LessOrEqual(t, r.Size, size-r.Offset, r.Name)
			if i > 0 {
				p := a.Records[i-1]
				require.LessOrEqual(t, p.Offset+p.Size, r.Offset, "%s overlaps %s", p.Name, r.Name)
			}
			require.NotContains(t, byName, r.Name)
			byName[r.Name] = r
			_ = a.CheckCRC(data, r) // must not panic
		}
		require.Equal(t, byName[a.Root+"/data.pkl"], a.Pickle)
		for k, r := range a.Storages {
			require.Equal(t, a.Root+"/data/"+k, r.Name)
			require.Equal(t, byName[r.Name], r)
		}
	})
}

func errorsIsAny(err error, targets ...error) bool {
	for _, t := range targets {
		if errors.Is(err, t) {
			return true
		}
	}
	return false
}
