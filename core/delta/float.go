package delta

import (
	"math"

	"github.com/tpde/tpde/core/dtype"
)

// Real values of float bit patterns, and the rounding of real values back to
// a dtype, for the lossy modes. Both are exact functions of the bits, defined
// in docs/FORMAT.md §6.9, so an encoder and a decoder compute the same
// reconstruction on any machine.

// floatFormat is an IEEE 754-like binary format.
type floatFormat struct {
	ebits, mbits uint
	// fn: no infinities; only the all-ones exponent with the all-ones
	// mantissa is NaN (F8_E4M3, "FN").
	fn bool
}

func formatOf(d dtype.DType) floatFormat {
	l := d.Layout()
	return floatFormat{ebits: uint(l.ExpBits), mbits: uint(l.MantBits), fn: d == dtype.F8E4M3}
}

// value returns the real value of bit pattern v (NaN for NaNs).
func (f floatFormat) value(v uint64) float64 {
	switch {
	case f.ebits == 8 && f.mbits == 23:
		return float64(math.Float32frombits(uint32(v)))
	case f.ebits == 8 && f.mbits == 7:
		return float64(math.Float32frombits(uint32(v) << 16))
	case f.ebits == 11:
		return math.Float64frombits(v)
	}
	emax := uint64(1)<<f.ebits - 1
	e := (v >> f.mbits) & emax
	m := v & (1<<f.mbits - 1)
	neg := v>>(f.ebits+f.mbits)&1 != 0
	bias := int(1)<<(f.ebits-1) - 1
	var x float64
	switch {
	case f.fn && e == emax && m == 1<<f.mbits-1:
		return math.NaN()
	case !f.fn && e == emax && m != 0:
		return math.NaN()
	case !f.fn && e == emax:
		x = math.Inf(1)
	case e == 0:
		x = math.Ldexp(float64(m), 1-bias-int(f.mbits))
	default:
		x = math.Ldexp(float64(m|1<<f.mbits), int(e)-bias-int(f.mbits))
	}
	if neg {
		x = -x
	}
	return x
}

// round returns the bit pattern of the format nearest to x, ties to even
// (IEEE roundTiesToEven from the exact binary64 value, never via another
// format). Magnitudes that round beyond the largest finite value give
// infinity; NaN gives the positive quiet NaN with only the top mantissa bit
// set. It is defined for formats with infinities (F16, BF16, F32, F64).
func (f floatFormat) round(x float64) uint64 {
	emax := uint64(1)<<f.ebits - 1
	if x != x {
		return emax<<f.mbits | 1<<(f.mbits-1)
	}
	switch {
	case f.ebits == 11:
		return math.Float64bits(x)
	case f.ebits == 8 && f.mbits == 23:
		// Go's conversion rounds to nearest even, overflowing to infinity
		// (TestFloatRound checks it against roundFinite).
		return uint64(math.Float32bits(float32(x)))
	}
	return f.roundFinite(x)
}

// roundFinite is round for a non-NaN x and a format narrower than F64.
func (f floatFormat) roundFinite(x float64) uint64 {
	emax := uint64(1)<<f.ebits - 1
	b := math.Float64bits(x)
	sign := (b >> 63) << (f.ebits + f.mbits)
	if math.IsInf(x, 0) {
		return sign | emax<<f.mbits
	}
	e64 := int(b>>52) & 0x7ff
	if e64 == 0 { // zero or a binary64 subnormal: far below half the smallest subnormal
		return sign
	}
	mant := b&(1<<52-1) | 1<<52 // value = mant * 2^(e64 - 1075)
	bias := int(1)<<(f.ebits-1) - 1
	te := e64 - 1023 + bias // biased target exponent if normal
	shift := uint(52 - f.mbits)
	if te < 1 {
		shift += uint(1 - te)
		te = 0
	}
	if shift > 54 {
		return sign
	}
	q := mant >> shift
	rem := mant & (1<<shift - 1)
	half := uint64(1) << (shift - 1)
	if rem > half || (rem == half && q&1 != 0) {
		q++
	}
	var out uint64
	if te == 0 {
		// Subnormal (or rounded up to the smallest normal: q == 1<<mbits
		// carries into the exponent field by itself).
		out = q
	} else {
		if q == 1<<(f.mbits+1) {
			q >>= 1
			te++
		}
		if uint64(te) >= emax {
			return sign | emax<<f.mbits
		}
		out = uint64(te)<<f.mbits | q&(1<<f.mbits-1)
	}
	return sign | out
}

// finite reports whether v is neither NaN nor infinite.
func finite(x float64) bool { return x-x == 0 }

// quantRecon is the reconstruction of a quantized element: the dtype value
// nearest to base + q*scale, each operation rounded to binary64 (the
// conversions stop the compiler from fusing them into one FMA).
func quantRecon(f floatFormat, base float64, q int, scale float64) uint64 {
	return f.round(float64(base + float64(float64(q)*scale)))
}

// CanQuantize reports whether the quantized lossy mode is defined for d: the
// float dtypes of 2 bytes or more (F16, BF16, F32, F64).
func CanQuantize(d dtype.DType) bool { return d.IsFloat() && d.Width() >= 2 }

// ToFloat64 returns the real value of the bit pattern v of float dtype d
// (NaN for NaNs).
func ToFloat64(d dtype.DType, v uint64) float64 { return formatOf(d).value(v) }

// FromFloat64 rounds x to the nearest value of d, ties to even, for F16,
// BF16, F32 and F64 (see floatFormat.round).
func FromFloat64(d dtype.DType, x float64) uint64 { return formatOf(d).round(x) }
