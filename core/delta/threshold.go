package delta

import (
	"encoding/binary"
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
		switch w {
		case 2:
			c, r = uint64(binary.LittleEndian.Uint16(cur[2*j:])), uint64(binary.LittleEndian.Uint16(ref[2*j:]))
		case 4:
			c, r = uint64(binary.LittleEndian.Uint32(cur[4*j:])), uint64(binary.LittleEndian.Uint32(ref[4*j:]))
		default:
			for b := 0; b < w; b++ {
				c |= uint64(cur[j*w+b]) << (8 * b)
				r |= uint64(ref[j*w+b]) << (8 * b)
			}
		}
		x := math.Abs(f.value(c) - f.value(r))
		if !(x <= math.MaxFloat64) {
			return 0, false
		}
		return math.Float64bits(x), true
	}
	// Radix select on the float64 bit patterns of |cur - ref| (ordered like
	// the values, since they are non-negative), 16 bits at a time: one pass
	// counts the top 16 bits, a second collects the elements of the chosen
	// bucket, and the remaining digits are selected among those alone.
	var hist [1 << 16]uint64
	count := uint64(0)
	for j := 0; j < n; j++ {
		if v, ok := diff(j); ok {
			count++
			hist[v>>48]++
		}
	}
	if count == 0 {
		return 0, nil
	}
	k := uint64(math.Ceil(pct / 100 * float64(count))) // 1-based rank
	k = min(max(k, 1), count)
	pick := func() uint64 {
		for b, c := range hist {
			if k <= c {
				return uint64(b)
			}
			k -= c
		}
		return 1<<16 - 1 // unreachable: the counts sum to at least k
	}
	top := pick()
	bucket := make([]uint64, 0, hist[top])
	for j := 0; j < n; j++ {
		if v, ok := diff(j); ok && v>>48 == top {
			bucket = append(bucket, v)
		}
	}
	prefix := top << 48
	for shift := 32; shift >= 0; shift -= 16 {
		clear(hist[:])
		for _, v := range bucket {
			hist[(v>>uint(shift))&0xFFFF]++
		}
		digit := pick()
		prefix |= digit << uint(shift)
		kept := bucket[:0]
		for _, v := range bucket {
			if (v>>uint(shift))&0xFFFF == digit {
				kept = append(kept, v)
			}
		}
		bucket = kept
	}
	return math.Float64frombits(prefix), nil
}
