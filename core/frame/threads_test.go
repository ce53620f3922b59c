package frame

import (
	"math/rand"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/par"
)

// tpde_set_num_threads may run on one thread while another is inside a
// call that uses the default thread count (threads = 0). Every operation
// must read the default once: sizing per-worker scratch from one read and
// fanning out with another indexed past the scratch, in a worker
// goroutine, and aborted the process.
func TestCodingWhileAnotherThreadChangesTheDefaultThreadCount(t *testing.T) {
	defer par.SetDefaultThreads(0)
	rng := rand.New(rand.NewSource(7))
	const n = 64 * 1024 // 64 chunks of 1024 elements
	src, ref := make([]byte, 4*n), make([]byte, 4*n)
	rng.Read(ref)
	copy(src, ref)
	for i := 0; i < len(src); i += 13 {
		src[i] ^= byte(rng.Intn(255) + 1)
	}
	shape := []uint64{n}
	var stop atomic.Bool
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for k := 0; !stop.Load(); k++ {
			par.SetDefaultThreads([]int{1, 16, 2, 7}[k%4])
		}
	}()
	defer func() { stop.Store(true); wg.Wait() }()

	kb, err := Bound(uint64(len(src)), dtype.F32, 1, 1024)
	require.NoError(t, err)
	db, err := DeltaBound(uint64(len(src)), dtype.F32, 1, 1024)
	require.NoError(t, err)
	kdst, ddst, out := make([]byte, kb), make([]byte, db), make([]byte, len(src))
	for iter := 0; iter < 300; iter++ {
		res, err := EncodeDelta(ddst, src, ref, nil, dtype.F32, shape, DeltaOptions{ChunkElems: 1024})
		require.NoError(t, err)
		_, err = DecodeDelta(ddst[:res.Len], ref, nil, out, 0)
		require.NoError(t, err)
		require.Equal(t, src, out)
		kn, err := Encode(kdst, src, dtype.F32, shape, Options{ChunkElems: 1024})
		require.NoError(t, err)
		_, err = Decode(kdst[:kn], out, 0)
		require.NoError(t, err)
		require.Equal(t, src, out)
	}
}
