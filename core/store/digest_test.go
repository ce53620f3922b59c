package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/statedict"
)

// A state dict added from memory is stored with a regions digest
// (docs/FORMAT.md §11.4): each tensor byte is hashed once, by its region's
// sha256, and every way of reading the file back still catches bytes that
// are not the ones added.

func f32Bytes(v []float32) []byte {
	b := make([]byte, 0, 4*len(v))
	for _, x := range v {
		b = binary.LittleEndian.AppendUint32(b, math.Float32bits(x))
	}
	return b
}

// stateDict is a toy training state: two tensors big enough for objects
// of their own (same dtype and size, different content), one small one
// that stays in the skeleton. step moves a quarter of a's elements a
// little, as training does.
type stateDict struct {
	r    *rand.Rand
	a, b []float32
}

func newStateDict(seed int64) *stateDict {
	sd := &stateDict{r: rand.New(rand.NewSource(seed)), a: make([]float32, 4096), b: make([]float32, 4096)}
	for i := range sd.a {
		sd.a[i] = float32(sd.r.NormFloat64() * 0.02)
		sd.b[i] = float32(sd.r.NormFloat64() * 10)
	}
	return sd
}

func (sd *stateDict) step() []Tensor {
	for i := range sd.a {
		if sd.r.Intn(4) == 0 {
			sd.a[i] += float32(sd.r.NormFloat64() * 1e-4)
		}
	}
	return []Tensor{
		{Name: "a", DType: dtype.F32, Shape: []uint64{64, 64}, Data: f32Bytes(sd.a)},
		{Name: "b", DType: dtype.F32, Shape: []uint64{4096}, Data: f32Bytes(sd.b)},
		{Name: "bias", DType: dtype.F32, Shape: []uint64{3}, Data: f32Bytes([]float32{1, float32(math.NaN()), -0})},
	}
}

func addStateDict(t testing.TB, s *Store, step int64, tensors []Tensor) *Checkpoint {
	tx, err := s.Begin(step, true, nil)
	require.NoError(t, err)
	meta := statedict.Meta{Skeleton: json.RawMessage(`{"t":"dict"}`), Aliases: json.RawMessage(`{}`), StateDictMetadata: json.RawMessage(`null`)}
	require.NoError(t, tx.AddStateDict("sd.tpde", meta, tensors))
	c, err := tx.Commit()
	require.NoError(t, err)
	return c
}

// republish commits a new generation in which step's record is edited.
func republish(t *testing.T, dir string, step int64, edit func(c *Checkpoint)) {
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	sn, err := s.snapshot()
	require.NoError(t, err)
	i := sn.byStep[step]
	c, err := sn.record(i)
	require.NoError(t, err)
	cp := *c
	cp.Files = append([]File{}, c.Files...)
	for k := range cp.Files {
		cp.Files[k].Regions = append([]Region{}, c.Files[k].Regions...)
	}
	edit(&cp)
	b, err := json.MarshalIndent(&cp, "", " ")
	require.NoError(t, err)
	obj, err := s.putBytes(b)
	require.NoError(t, err)
	require.NoError(t, s.putAs(obj.Object, obj.Object+copySuffix, b, false))
	m := *sn.m
	m.Checkpoints = append([]CheckpointRef{}, sn.m.Checkpoints...)
	m.Checkpoints[i].Object = obj.Object
	require.NoError(t, s.publish(&m))
}

func readTensor(dir string, step int64, name string) ([]byte, error) {
	var out []byte
	err := withCheckpoint(dir, step, func(_ *Store, rd *Reader, c *Checkpoint) error {
		ft, err := rd.Tensors(c, "sd.tpde")
		if err != nil {
			return err
		}
		for _, te := range ft.Tensors {
			if te.Name == name {
				out = make([]byte, te.NBytes)
				return rd.ReadTensors(c, "sd.tpde", []Span{{Offset: te.Offset, Dst: out}})
			}
		}
		return os.ErrNotExist
	})
	return out, err
}

func TestAStateDictIsHashedOnceAndRestoresToItsDigest(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	sd := newStateDict(5)
	steps := [][]Tensor{sd.step(), sd.step()}
	for i, ts := range steps {
		addStateDict(t, s, int64(i+1), ts)
	}
	s.Close()

	for i, ts := range steps {
		step := int64(i + 1)
		files := restoreAll(t, dir, step)
		got := files["sd.tpde"]
		require.NotNil(t, got)
		require.NoError(t, withCheckpoint(dir, step, func(_ *Store, rd *Reader, c *Checkpoint) error {
			rec, err := rd.sn.record(rd.sn.byStep[step])
			require.NoError(t, err)
			assert.Equal(t, RecordVersionCRC, rec.Version)
			f := &c.Files[0]
			assert.Equal(t, DigestRegions, f.Digest)
			require.Len(t, f.Regions, 2, "a and b have objects, bias stays verbatim")
			// The digest, recomputed from the restored bytes alone.
			vh := sha256.New()
			pos := uint64(0)
			for k := range f.Regions {
				reg := &f.Regions[k]
				vh.Write(got[pos:reg.Offset])
				sum := sha256.Sum256(got[reg.Offset : reg.Offset+reg.Size])
				assert.Equal(t, hex.EncodeToString(sum[:]), reg.SHA256)
				pos = reg.Offset + reg.Size
			}
			vh.Write(got[pos:])
			assert.Equal(t, fileDigest(f.Size, vh.Sum(nil), regionSums(f)), f.SHA256)
			for _, tn := range ts[:2] {
				var reg *Region
				for k := range f.Regions {
					if f.Regions[k].Name == tn.Name {
						reg = &f.Regions[k]
					}
				}
				require.NotNil(t, reg)
				assert.True(t, bytes.Equal(tn.Data, got[reg.Offset:reg.Offset+reg.Size]), "step %d tensor %s", step, tn.Name)
			}
			return nil
		}))
		b, err := readTensor(dir, step, "a")
		require.NoError(t, err)
		assert.Equal(t, ts[0].Data, b)
	}
	// Checkpoint 1 decodes through a reverse delta against checkpoint 2.
	require.NoError(t, withCheckpoint(dir, 1, func(_ *Store, _ *Reader, c *Checkpoint) error {
		assert.NotNil(t, c.Files[0].Regions[0].Ref)
		return nil
	}))
	s, err = Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	problems, err := s.Verify(true)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

func TestAWrongObjectOrAWrongDigestOfAStateDictIsCaught(t *testing.T) {
	build := func(t *testing.T) string {
		dir := t.TempDir()
		s, err := Open(dir, Options{Write: true})
		require.NoError(t, err)
		defer s.Close()
		sd := newStateDict(9)
		addStateDict(t, s, 1, sd.step())
		addStateDict(t, s, 2, sd.step())
		return dir
	}
	regionOf := func(c *Checkpoint, name string) *Region {
		for k := range c.Files[0].Regions {
			if c.Files[0].Regions[k].Name == name {
				return &c.Files[0].Regions[k]
			}
		}
		t.Fatalf("no region %s", name)
		return nil
	}

	t.Run("a region naming another tensor's keyframe", func(t *testing.T) {
		// a and b are both 16 KiB of f32, so b's frame decodes cleanly
		// into a's buffer, every CRC of its own intact: only the region's
		// sha256 tells the bytes are not a's.
		dir := build(t)
		republish(t, dir, 2, func(c *Checkpoint) {
			a, b := regionOf(c, "a"), regionOf(c, "b")
			a.Object = b.Object
		})
		_, err := readTensor(dir, 2, "a")
		assert.ErrorIs(t, err, errs.Corrupt)
		assert.ErrorContains(t, err, "decodes to bytes other than were added")
		err = restoreErr(dir, 2, filepath.Join(t.TempDir(), "out"))
		assert.ErrorIs(t, err, errs.Corrupt)
		b, err := readTensor(dir, 2, "b")
		require.NoError(t, err, "the other tensor still reads")
		assert.Len(t, b, 4*4096)
	})

	t.Run("another tensor's keyframe, without the region's CRC", func(t *testing.T) {
		// A region without crc32c (as a version 1 writer left it) is
		// checked by its sha256: on a load alone, and within the digest
		// on a restore, which hashes each region's bytes once.
		dir := build(t)
		republish(t, dir, 2, func(c *Checkpoint) {
			a, b := regionOf(c, "a"), regionOf(c, "b")
			a.Object, a.CRC32C = b.Object, nil
		})
		_, err := readTensor(dir, 2, "a")
		assert.ErrorIs(t, err, errs.Corrupt)
		err = restoreErr(dir, 2, filepath.Join(t.TempDir(), "out"))
		assert.ErrorIs(t, err, errs.Corrupt)
		assert.ErrorContains(t, err, "restores to bytes that hash to")
	})

	t.Run("a delta naming the wrong reference", func(t *testing.T) {
		dir := build(t)
		republish(t, dir, 1, func(c *Checkpoint) {
			a := regionOf(c, "a")
			require.NotNil(t, a.Ref)
			a.Ref.Region = "b"
		})
		_, err := readTensor(dir, 1, "a")
		assert.ErrorIs(t, err, errs.Corrupt)
		assert.ErrorIs(t, restoreErr(dir, 1, filepath.Join(t.TempDir(), "out")), errs.Corrupt)
	})

	t.Run("a digest that is not the file's", func(t *testing.T) {
		dir := build(t)
		republish(t, dir, 2, func(c *Checkpoint) { c.Files[0].SHA256 = hashHex([]byte("other")) })
		err := restoreErr(dir, 2, filepath.Join(t.TempDir(), "out"))
		assert.ErrorIs(t, err, errs.Corrupt)
		assert.ErrorContains(t, err, "restores to bytes that hash to")
		s, err := Open(dir, Options{Write: true})
		require.NoError(t, err)
		defer s.Close()
		problems, err := s.Verify(true)
		require.NoError(t, err)
		require.NotEmpty(t, problems)
		assert.Equal(t, int64(2), problems[0].Step)
	})

	t.Run("verbatim bytes that are not the file's", func(t *testing.T) {
		// The skeleton of checkpoint 1 holds the same number of verbatim
		// bytes, and other ones (bias differs): every object checks out,
		// and only the digest tells.
		dir := t.TempDir()
		s, err := Open(dir, Options{Write: true})
		require.NoError(t, err)
		sd := newStateDict(9)
		one := sd.step()
		two := sd.step()
		two[2].Data = f32Bytes([]float32{7, 8, 9})
		c1 := addStateDict(t, s, 1, one)
		addStateDict(t, s, 2, two)
		s.Close()
		republish(t, dir, 2, func(c *Checkpoint) { c.Files[0].Skeleton = c1.Files[0].Skeleton })
		err = restoreErr(dir, 2, filepath.Join(t.TempDir(), "out"))
		assert.ErrorIs(t, err, errs.Corrupt)
	})

	t.Run("a digest in a version 1 record, or one of no known kind", func(t *testing.T) {
		dir := build(t)
		republish(t, dir, 2, func(c *Checkpoint) {
			c.Version = Version
			for k := range c.Files[0].Regions {
				c.Files[0].Regions[k].CRC32C = nil // what else version 1 lacks
			}
		})
		_, err := readTensor(dir, 2, "a")
		assert.ErrorIs(t, err, errs.Corrupt)
		assert.ErrorContains(t, err, "a digest in a version 1 record")

		dir = build(t)
		republish(t, dir, 2, func(c *Checkpoint) { c.Files[0].Digest = "crc32" })
		_, err = readTensor(dir, 2, "a")
		assert.ErrorIs(t, err, errs.Corrupt)
	})
}

func TestFilesFromDiskKeepTheSHA256OfTheirBytes(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true})
	require.NoError(t, err)
	defer s.Close()
	b := newSeries(3).step(t)
	c := addFiles(t, s, 1, map[string]string{"m.safetensors": write(t, src, "m.st", b)})
	sum := sha256.Sum256(b)
	assert.Equal(t, hex.EncodeToString(sum[:]), c.Files[0].SHA256, "a user compares it with sha256sum")
	assert.Empty(t, c.Files[0].Digest)
}

// The example of docs/FORMAT.md §11.4.
func TestTheRegionsDigestOfFormatsExample(t *testing.T) {
	sha := func(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
	v := sha256.Sum256([]byte("abcdef"))
	h := sha([]byte{0, 1, 2, 3})
	assert.Equal(t, "bef57ec7f53a6d40beb640a780a639c83bc29ac8a9816f1fc6c5c6dcd93c4721", hex.EncodeToString(v[:]))
	assert.Equal(t, "054edec1d0211f624fed0cbca9d4f9400b0e491c43742af2c5b0abebf0c990d8", h)
	assert.Equal(t, "00ad95fe50dce8bf077d5674a0fba0f056ddd88023a79ac1746293ef7cd75809",
		fileDigest(10, v[:], []regionSum{{offset: 2, size: 4, sha256: h}}))
	f := &File{Size: 10, Digest: DigestRegions, Regions: []Region{{Offset: 2, Size: 4, SHA256: h}}}
	c := newFileCheck(f)
	c.write(0, []byte("ab"))
	c.write(2, []byte{0, 1, 2, 3})
	c.write(6, []byte("cd"))
	c.write(8, []byte("ef"))
	assert.Equal(t, "00ad95fe50dce8bf077d5674a0fba0f056ddd88023a79ac1746293ef7cd75809", c.sum())
}
