package delta

import (
	"math"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
)

// Prepare makes the choices that hold for every chunk of a frame, from a
// sample of the whole tensor (runs spread over it): the residual kind, when
// p.Kind is Auto (the one whose residual planes have the smallest order-0
// entropy; Pred only when ref2 is given; ties keep the lower code), and the
// context map. s is any scratch. Chunks coded without Prepare plan from
// their own sample.
func Prepare(p *Params, s *Scratch, cur, ref, ref2 []byte) {
	switch p.DType.Width() {
	case 1:
		prepareT[uint8](p, s, cur, ref, ref2)
	case 2:
		prepareT[uint16](p, s, cur, ref, ref2)
	case 4:
		prepareT[uint32](p, s, cur, ref, ref2)
	default:
		prepareT[uint64](p, s, cur, ref, ref2)
	}
}

// prepareScale: Prepare samples this many times a chunk's sample.
const prepareScale = 4

func prepareT[T word](p *Params, s *Scratch, cur, ref, ref2 []byte) {
	if p.Kind == Auto {
		kinds := []Kind{XOR, Diff}
		if len(ref2) == len(cur) && len(cur) > 0 {
			kinds = append(kinds, Pred)
		}
		best, bestBits := Diff, -1.0
		for _, k := range kinds {
			ns := sampleExact[T](s, cur, ref, ref2, k, prepareScale)
			if bits := planeBits[T](s.sv[:ns*size[T]()]); bestBits < 0 || bits < bestBits {
				best, bestBits = k, bits
			}
		}
		p.Kind = best
	}
	if oneBucket(p) {
		// The plan can only be one bucket: nothing to estimate.
		p.ctx = ctxCfg{k: 1}
		p.prepared = true
		return
	}
	n := len(cur) / size[T]()
	ns := sampleExact[T](s, cur, ref, ref2, p.Kind, prepareScale)
	if p.Lossy() {
		// What the chunks will code: the residuals left after the
		// threshold (quantization codes are planned per chunk).
		dropSampled[T](s, ns, p)
	}
	p.ctx = makePlan[T, T](s, ns, n, p, contextField(p)).dense
	p.prepared = true
}

// planeBits is the sum of the order-0 entropies of the byte planes of the
// values (T each) in vals.
func planeBits[T word](vals []byte) float64 {
	w := size[T]()
	var hist [maxPlanes][256]uint32
	for j := 0; j < len(vals)/w; j++ {
		v := uint64(load[T](vals, j))
		for p := 0; p < w; p++ {
			hist[p][byte(v>>(8*(w-1-p)))]++
		}
	}
	bits := 0.0
	for p := 0; p < w; p++ {
		bits += entropy.EntropyBits(&hist[p])
	}
	return bits
}

// FillBase writes every element's base (what a zero residual reconstructs:
// the reference element, or for Pred the prediction from both references)
// into dst.
func FillBase(d dtype.DType, k Kind, ref, ref2, dst []byte) {
	switch d.Width() {
	case 1:
		fillBase[uint8](k, ref, ref2, dst)
	case 2:
		fillBase[uint16](k, ref, ref2, dst)
	case 4:
		fillBase[uint32](k, ref, ref2, dst)
	default:
		fillBase[uint64](k, ref, ref2, dst)
	}
}

// dropSampled zeroes the sampled residuals that the threshold drops: those
// of elements within the threshold of their base. The sample holds each
// element's residual and reference; the element and its base are rebuilt
// from them.
func dropSampled[T word](s *Scratch, ns int, p *Params) {
	f := formatOf(p.DType)
	for i := 0; i < ns; i++ {
		v := load[T](s.sv, i)
		if v == 0 {
			continue
		}
		r := load[T](s.sr, i)
		var c, b T
		switch p.Kind {
		case XOR:
			c, b = v^r, r
		case Diff:
			c, b = apply(Diff, v, r, 0), r
		default:
			// The prediction needs the second reference, which the
			// sample does not keep: judge against the reference.
			c, b = r+unzigzag(v), r
		}
		if math.Abs(f.value(uint64(c))-f.value(uint64(b))) <= p.Threshold {
			store(s.sv, i, T(0))
		}
	}
}

// oneBucket reports whether makePlan's dense plan is sure to be one bucket
// (as e.candidates decides), so that Prepare need not sample for it.
func oneBucket(p *Params) bool {
	return oneBucketMode(effectiveContext(p), expFieldOf(p.DType))
}
