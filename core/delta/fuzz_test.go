package delta

import (
	"math/rand"
	"testing"

	"github.com/tpde/tpde/core/dtype"
)

// FuzzDecodeChunk feeds arbitrary payloads, modes and counts straight to the
// chunk decoder (no checksum in the way): it must never panic or write
// outside dst, whatever it accepts.
func FuzzDecodeChunk(f *testing.F) {
	r := rand.New(rand.NewSource(50))
	s := NewScratch()
	for _, d := range []dtype.DType{dtype.BF16, dtype.F32, dtype.U8} {
		ref := weightsOf(r, d, 64)
		cur := perturb(r, d, ref, 0.3, 3)
		for _, p := range []*Params{
			{DType: d, Kind: Diff},
			{DType: d, Kind: XOR, Sparse: SparseAlways},
			{DType: d, Kind: Diff, Context: ContextOn},
		} {
			res, err := s.Encode(cur, ref, nil, p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(append([]byte(nil), res.Payload...), uint8(res.Mode), res.Count, uint8(d), uint8(p.Kind), uint8(0))
		}
		if CanQuantize(d) {
			p := &Params{DType: d, Kind: Diff, Threshold: 1e-3, QuantBits: 8}
			res, err := s.Encode(cur, ref, nil, p)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(append([]byte(nil), res.Payload...), uint8(res.Mode), res.Count, uint8(d), uint8(p.Kind), uint8(8))
		}
	}
	f.Fuzz(func(t *testing.T, payload []byte, mode uint8, count uint32, code, kind, qb uint8) {
		d := dtype.DType(code % dtype.Count)
		p := &Params{DType: d, Kind: Kind(kind % 3)}
		switch {
		case qb%3 == 1 && CanQuantize(d):
			p.QuantBits = 8
		case qb%3 == 2 && CanQuantize(d):
			p.QuantBits = 4
		}
		n := 64
		ref := make([]byte, n*d.Width())
		ref2 := make([]byte, n*d.Width())
		for i := range ref {
			ref[i] = byte(i * 7)
			ref2[i] = byte(i * 13)
		}
		dst := make([]byte, n*d.Width()+8)
		guard := append([]byte(nil), dst[n*d.Width():]...)
		_ = NewScratch().Decode(Mode(mode%6), count%80, payload, ref, ref2, dst[:n*d.Width()], p)
		if string(dst[n*d.Width():]) != string(guard) {
			t.Fatal("wrote past dst")
		}
	})
}
