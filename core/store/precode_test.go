package store

import (
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// manySmallTensors is a file of small tensors (coded side by side), some
// equal to each other, one equal across steps, and one large tensor
// between them (coded alone, by chunks) that splits the batches.
func manySmallTensors(t testing.TB, r *rand.Rand, step int) []byte {
	tensors := map[string][]float32{}
	same := make([]float32, 3000)
	for i := range same {
		same[i] = float32(i)
	}
	for i := 0; i < 40; i++ {
		v := make([]float32, 500+r.Intn(20000))
		for j := range v {
			v[j] = float32(r.NormFloat64() * 0.02)
		}
		tensors[fmt.Sprintf("layer.%02d", i)] = v
	}
	for i := 0; i < 4; i++ {
		tensors[fmt.Sprintf("layer.%02d.same", i*9)] = same // equal within the file and across steps
	}
	big := make([]float32, (smallTensor/4)+1000)
	for j := range big {
		big[j] = float32(r.NormFloat64()) + float32(step)
	}
	tensors["layer.20.big"] = big
	return safetensorsFile(t, tensors)
}

func TestSmallTensorsCodedSideBySideStoreWhatOneThreadStores(t *testing.T) {
	src := t.TempDir()
	r := rand.New(rand.NewSource(7))
	var files []string
	for step := 0; step < 2; step++ {
		files = append(files, write(t, src, fmt.Sprintf("%d/m.safetensors", step), manySmallTensors(t, r, step)))
	}
	regions := map[int][]map[string]Region{}
	for _, threads := range []int{1, 4} {
		dir := filepath.Join(t.TempDir(), "s")
		s, err := Open(dir, Options{Write: true, Threads: threads, Recode: RecodeInline})
		require.NoError(t, err)
		for step, f := range files {
			addFiles(t, s, int64(step), map[string]string{"m.safetensors": f})
		}
		s.Close()
		ro, err := Open(dir, Options{})
		require.NoError(t, err)
		rd, err := ro.Reader()
		require.NoError(t, err)
		for _, c := range records(t, rd) {
			byName := map[string]Region{}
			for _, f := range c.Files {
				for _, reg := range f.Regions {
					byName[reg.Name] = reg
				}
			}
			regions[threads] = append(regions[threads], byName)
		}
		rd.Close()
		ro.Close()
		for step, f := range files {
			got := restoreAll(t, dir, int64(step))
			want, err := os.ReadFile(f)
			require.NoError(t, err)
			assert.Equal(t, want, got["m.safetensors"], "step %d restores byte for byte (threads %d)", step, threads)
		}
	}
	require.Len(t, regions[4], 2)
	assert.Equal(t, regions[1], regions[4], "the same objects, hashes and CRCs whatever the threads")
	last := regions[4][1]
	for _, name := range []string{"layer.09.same", "layer.18.same", "layer.27.same"} {
		assert.Equal(t, last["layer.00.same"].Object, last[name].Object, "equal tensors of a batch are one object")
	}
	assert.Equal(t, regions[4][0]["layer.00.same"].SHA256, last["layer.00.same"].SHA256)
}

func TestSmallBatchStopsAtLargeTensorsAndItsByteCap(t *testing.T) {
	s := &Store{threads: 2}
	tx := &Tx{s: s}
	plan := func(sizes ...uint64) []planned {
		var ps []planned
		off := uint64(0)
		for _, n := range sizes {
			ps = append(ps, planned{reg: &Region{}, begin: off, end: off + n})
			off += n
		}
		return ps
	}
	ps := plan(100, 200, smallTensor+1, 300, 400, 500)
	assert.Equal(t, 2, tx.smallBatch(ps, 0), "a batch ends before a large tensor")
	assert.Equal(t, 2, tx.smallBatch(ps, 2), "a large tensor is coded alone")
	assert.Equal(t, 6, tx.smallBatch(ps, 3))
	assert.Equal(t, 5, tx.smallBatch(ps, 5), "one small tensor is no batch")
	big := plan(smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor, smallTensor)
	assert.Equal(t, batchBytes/smallTensor, tx.smallBatch(big, 0), "a batch holds at most batchBytes")
	one := &Tx{s: &Store{threads: 1}}
	assert.Equal(t, 0, one.smallBatch(ps, 0), "one thread: no batches")
}
