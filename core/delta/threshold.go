package delta

import (
	"fmt"
	"math"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
)

// PercentileThreshold returns the pct-th percentile (0 to 100, nearest
// rank) of |cur - ref| over the elements of a float tensor, as real numbers
// computed in binary64; elements whose difference is NaN or infinite are
// left out (0 if none is left). Used as a lossy threshold it drops about
// pct percent of the elements: an adaptive, per-tensor threshold.
//
// It is exact: a radix selection on the bit patterns of the differences
// (which order like the non-negative values), 16 bits per pass, with no
// allocation proportional to the tensor.
func PercentileThreshold(d dtype.DType, cur, ref []byte, pct float64) (float64, error) {
	if !d.IsFloat() {
		return 0, fmt.Errorf("%w: a lossy threshold is for float dtypes, not %s", errs.Invalid, d)
	}
	if len(cur) != len(ref) || len(cur)%d.Width() != 0 {
		return 0, fmt.Errorf("%w: tensor of %d bytes against a reference of %d", errs.Invalid, len(cur), len(ref))
	}
	if !(pct >= 0 && pct <= 100) {
		return 0, fmt.Errorf("%w: percentile %v (want 0 to 100)", errs.Invalid, pct)
	}
	f := formatOf(d)
	w := d.Width()
	n := len(cur) / w
	diff := func(j int) (uint64, bool) {
		var c, r uint64
		for b := 0; b < w; b++ {
			c |= uint64(cur[j*w+b]) << (8 * b)
			r |= uint64(ref[j*w+b]) << (8 * b)
		}
		x := math.Abs(f.value(c) - f.value(r))
		if !(x <= math.MaxFloat64) {
			return 0, false
		}
		return math.Float64bits(x), true
	}
	var hist [1 << 16]uint64
	var prefix, mask uint64 // bits fixed so far
	count := uint64(0)
	for j := 0; j < n; j++ {
		if _, ok := diff(j); ok {
			count++
		}
	}
	if count == 0 {
		return 0, nil
	}
	k := uint64(math.Ceil(pct / 100 * float64(count))) // 1-based rank
	k = min(max(k, 1), count)
	for shift := 48; shift >= 0; shift -= 16 {
		clear(hist[:])
		for j := 0; j < n; j++ {
			if v, ok := diff(j); ok && v&mask == prefix {
				hist[(v>>uint(shift))&0xFFFF]++
			}
		}
		for b, c := range hist {
			if k <= c {
				prefix |= uint64(b) << uint(shift)
				break
			}
			k -= c
		}
		mask |= 0xFFFF << uint(shift)
	}
	return math.Float64frombits(prefix), nil
}
