package bundle

import (
	"bytes"
	"errors"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

// FuzzOpen feeds arbitrary bytes to Open and, when they parse, decodes every
// tensor: only typed errors are allowed, never a panic. The seeds are real
// bundles, so the mutator starts from valid structure.
func FuzzOpen(f *testing.F) {
	rng := rand.New(rand.NewSource(9))
	for _, n := range []int{1, 3} {
		var items []Item
		for i := 0; i < n; i++ {
			c, r := randomWalk(rng, 40, 1e-3)
			items = append(items, Item{Name: string(rune('a' + i)), DType: dtype.F32, Shape: []uint64{40},
				Data: f32s(c), Ref: f32s(r), Delta: frame.DeltaOptions{Residual: delta.Auto}})
		}
		items = append(items, Item{Name: "key", DType: dtype.F32, Shape: []uint64{40}, Data: items[0].Data})
		var buf bytes.Buffer
		w, _ := NewWriter(&buf)
		_ = w.Add(items, Options{Threads: 1}, nil)
		_, _ = w.Close([]byte(`{"x":[1,2]}`))
		f.Add(buf.Bytes())
	}
	f.Fuzz(func(t *testing.T, blob []byte) {
		b, err := Open(blob)
		if err != nil {
			if !errors.Is(err, errs.Corrupt) && !errors.Is(err, errs.Unsupported) && !errors.Is(err, errs.Invalid) {
				t.Fatalf("untyped error: %v", err)
			}
			return
		}
		for i := range b.Entries {
			h, err := b.Header(i)
			if err != nil || h.RawSize > 1<<20 {
				continue
			}
			dst := make([]byte, h.RawSize)
			ref := make([]byte, h.RawSize)
			_ = b.Decode([]Out{{Index: i, Dst: dst, Ref: ref, Ref2: ref}}, 1)
		}
	})
}

// FuzzRoundTrip builds a bundle from fuzzed tensors and names and checks
// that every tensor comes back bit for bit, streamed or buffered.
func FuzzRoundTrip(f *testing.F) {
	f.Add([]byte("\x00\x01\x02\x03\x04\x05\x06\x07"), []byte("\x00\x01\x02\x03\x04\x05\x06\x08"), "w", uint8(3))
	f.Add([]byte{}, []byte{}, "empty", uint8(0))
	f.Fuzz(func(t *testing.T, cur, ref []byte, name string, pick uint8) {
		dts := []dtype.DType{dtype.U8, dtype.BF16, dtype.F16, dtype.F32, dtype.F64, dtype.I64}
		dt := dts[int(pick)%len(dts)]
		w := dt.Width()
		n := min(len(cur), len(ref)) / w
		cur, ref = cur[:n*w], ref[:n*w]
		if name == "" {
			name = "t"
		}
		items := []Item{
			{Name: name, DType: dt, Shape: []uint64{uint64(n)}, Data: cur, Ref: ref, Delta: frame.DeltaOptions{Residual: delta.Auto}},
			{Name: name + ".key", DType: dt, Shape: []uint64{uint64(n)}, Data: cur},
		}
		var buf bytes.Buffer
		wr, err := NewWriter(&buf)
		require.NoError(t, err)
		if err := wr.Add(items, Options{Threads: 2}, nil); err != nil {
			require.ErrorIs(t, err, errs.Invalid) // e.g. a name that is not UTF-8
			return
		}
		_, err = wr.Close(nil)
		require.NoError(t, err)
		b, err := Open(buf.Bytes())
		require.NoError(t, err)
		for i, it := range items {
			got := make([]byte, len(cur))
			require.NoError(t, b.Decode([]Out{{Index: i, Dst: got, Ref: it.Ref}}, 1))
			require.Equal(t, cur, got)
		}
	})
}
