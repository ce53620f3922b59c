package delta

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

// kernelGuard is how many bytes past each plane and past dst the
// differential test fills with a marker, to catch a kernel writing beyond
// the n elements it was given.
const kernelGuard = 32

// referenceResidualPlanes is the definition split2 and split4 implement,
// one element at a time: residual z = cur ^ ref or zigzag(cur - ref) in
// w-byte wrapping arithmetic, its bytes most significant first, plus the
// count of non-zero residuals and the mask of all-zero planes (bit p:
// plane p).
func referenceResidualPlanes(w int, diff bool, x, ref []byte) (planes []byte, nz int, zero uint8) {
	n := len(ref) / w
	planes = make([]byte, w*n)
	mask := uint64(1)<<(8*w) - 1
	var or uint64
	for j := 0; j < n; j++ {
		var c, r uint64
		for b := 0; b < w; b++ {
			c |= uint64(x[j*w+b]) << (8 * b)
			r |= uint64(ref[j*w+b]) << (8 * b)
		}
		z := c ^ r
		if diff {
			d := (c - r) & mask
			sign := d >> (8*w - 1)
			z = (d<<1)&mask ^ (mask * sign)
		}
		for p := 0; p < w; p++ {
			planes[p*n+j] = byte(z >> (8 * (w - 1 - p)))
		}
		if z != 0 {
			nz++
		}
		or |= z
	}
	for p := 0; p < w; p++ {
		if or>>(8*(w-1-p))&0xFF == 0 {
			zero |= 1 << p
		}
	}
	return planes, nz, zero
}

// guarded returns n bytes at offset o of a buffer that continues with
// kernelGuard marker bytes, which requireGuardIntact checks.
func guarded(o, n int) []byte {
	buf := make([]byte, o+n+kernelGuard)
	for i := o + n; i < len(buf); i++ {
		buf[i] = 0xA5
	}
	return buf[o : o+n]
}

func requireGuardIntact(t *testing.T, buf []byte, what string) {
	t.Helper()
	for i, b := range buf[len(buf):cap(buf)] {
		require.Equal(t, byte(0xA5), b, "%s: byte %d past the end was written", what, i)
	}
}

// residualPlanes splits x against ref with split2With or split4With into
// w guarded planes laid out back to back (as the encoder's scratch is).
func residualPlanes(t *testing.T, vector bool, w int, diff bool, x, ref []byte) ([]byte, int, uint8) {
	n := len(ref) / w
	pl := make([][]byte, w)
	for p := range pl {
		pl[p] = guarded(0, n)
	}
	var nz int
	var zero uint8
	if w == 2 {
		var or uint64
		nz, or = split2With(vector, diff, x, ref, pl[0], pl[1])
		zero = zeroPlanes2(or)
	} else {
		var or uint64
		nz, or = split4With(vector, diff, x, ref, pl[0], pl[1], pl[2], pl[3])
		zero = zeroPlanes4(or)
	}
	out := make([]byte, 0, w*n)
	for p := range pl {
		requireGuardIntact(t, pl[p], "split plane")
		out = append(out, pl[p]...)
	}
	return out, nz, zero
}

// FuzzResidualKernels runs the residual fast paths (split2/merge2 for
// 2-byte elements, split4/merge4 for 4-byte ones, XOR and Diff) with the
// SSE2 kernels and with the SWAR and scalar loops alone on the same input,
// and requires byte-identical planes and decoded elements, equal
// non-zero counts and all-zero-plane masks from both, all equal to the
// one-element-at-a-time definition, with nothing written past the
// buffers. The current tensor is ref with the bytes of change XORed onto
// its first len(change) bytes, so runs of zero residuals (which the
// kernels count) are the common case; off shifts the buffers, since the
// kernels use unaligned loads and stores.
func FuzzResidualKernels(f *testing.F) {
	r := rand.New(rand.NewSource(22))
	for _, w := range []int{2, 4} {
		for _, n := range []int{0, 1, 3, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 100} {
			ref := make([]byte, n*w+n%2)
			r.Read(ref)
			dense := make([]byte, len(ref))
			r.Read(dense)
			// Small changes in a few elements' low byte: mostly zero
			// residuals, and for Diff both signs.
			sparse := make([]byte, len(ref))
			for j := 0; j < n; j += 3 {
				sparse[j*w] = byte(r.Intn(3))
			}
			f.Add(ref, dense, uint8(n%16))
			f.Add(ref, sparse, uint8(0))
			f.Add(ref, []byte{}, uint8(1))
		}
	}
	f.Fuzz(func(t *testing.T, refIn, change []byte, off uint8) {
		o := int(off % 16)
		for _, w := range []int{2, 4} {
			n := len(refIn) / w
			ref := make([]byte, o+n*w)[o:]
			copy(ref, refIn)
			x := make([]byte, o+n*w)[o:]
			copy(x, ref)
			for i := 0; i < min(len(change), len(x)); i++ {
				x[i] ^= change[i]
			}
			for _, diff := range []bool{false, true} {
				vec, nzVec, zeroVec := residualPlanes(t, true, w, diff, x, ref)
				sca, nzSca, zeroSca := residualPlanes(t, false, w, diff, x, ref)
				require.Equal(t, sca, vec, "split w=%d diff=%v n=%d: vector and scalar planes differ", w, diff, n)
				require.Equal(t, nzSca, nzVec, "split w=%d diff=%v n=%d: non-zero counts differ", w, diff, n)
				require.Equal(t, zeroSca, zeroVec, "split w=%d diff=%v n=%d: zero-plane masks differ", w, diff, n)
				want, nzWant, zeroWant := referenceResidualPlanes(w, diff, x, ref)
				require.Equal(t, want, sca, "split w=%d diff=%v n=%d: planes", w, diff, n)
				require.Equal(t, nzWant, nzSca, "split w=%d diff=%v n=%d: non-zero count", w, diff, n)
				require.Equal(t, zeroWant, zeroSca, "split w=%d diff=%v n=%d: zero-plane mask", w, diff, n)

				// The kernels, called directly, must handle every whole block
				// of 16 where this build has them, and exactly as the
				// definition says: this holds even if split2 and the others
				// stopped calling them, which the comparison above would not
				// notice (it would compare the SWAR code with itself).
				blocks := 0
				if vectorKernels {
					blocks = n &^ 15
				}
				p, back := make([]byte, 4*n), make([]byte, w*n)
				var split, zeros, merge, mergeZeros int
				if w == 2 {
					split, zeros, _ = vectorSplit2(diff, x, ref, p[:n], p[n:2*n])
					merge, mergeZeros = vectorMerge2(diff, want[:n], want[n:2*n], ref, back)
				} else {
					split, zeros, _ = vectorSplit4(diff, x, ref, p[:n], p[n:2*n], p[2*n:3*n], p[3*n:4*n])
					merge, mergeZeros = vectorMerge4(diff, want[:n], want[n:2*n], want[2*n:3*n], want[3*n:], ref, back)
				}
				require.Equal(t, blocks, split, "elements the w=%d split kernel handled of %d", w, n)
				require.Equal(t, blocks, merge, "elements the w=%d merge kernel handled of %d", w, n)
				blockWant, blockNZ, _ := referenceResidualPlanes(w, diff, x[:w*blocks], ref[:w*blocks])
				for q := 0; q < w; q++ {
					require.Equal(t, blockWant[q*blocks:(q+1)*blocks], p[q*n:q*n+blocks], "w=%d diff=%v split kernel, plane %d", w, diff, q)
				}
				require.Equal(t, blocks-blockNZ, zeros, "w=%d diff=%v split kernel: zero residuals", w, diff)
				require.Equal(t, blocks-blockNZ, mergeZeros, "w=%d diff=%v merge kernel: zero residuals", w, diff)
				require.Equal(t, x[:w*blocks], back[:w*blocks], "w=%d diff=%v merge kernel", w, diff)

				for _, vector := range []bool{true, false} {
					pl := make([][]byte, w)
					for p := range pl {
						pl[p] = vec[p*n : (p+1)*n : (p+1)*n]
					}
					dst := guarded(o, n*w)
					var nz int
					if w == 2 {
						nz = merge2With(vector, diff, pl[0], pl[1], ref, dst)
					} else {
						nz = merge4With(vector, diff, pl[0], pl[1], pl[2], pl[3], ref, dst)
					}
					require.Equal(t, x, dst, "merge w=%d diff=%v n=%d vector=%v", w, diff, n, vector)
					require.Equal(t, nzWant, nz, "merge w=%d diff=%v n=%d vector=%v: non-zero count", w, diff, n, vector)
					requireGuardIntact(t, dst, "merge dst")
				}
			}
		}
	})
}
