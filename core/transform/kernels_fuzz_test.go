package transform

import (
	"math/bits"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

// planeGuard is how many bytes past each plane and past dst the
// differential test fills with a marker, to catch a kernel writing beyond
// the n elements it was given.
const planeGuard = 32

// referencePlanes is the definition Split implements, one element at a
// time: the (rotated) little-endian element's bytes, most significant
// first.
func referencePlanes(k Kind, w int, src []byte) [][]byte {
	n := len(src) / w
	pl := planesFor(w, n)
	for i := 0; i < n; i++ {
		var v uint64
		for j := 0; j < w; j++ {
			v |= uint64(src[i*w+j]) << (8 * j)
		}
		if k == RotatedPlanes {
			switch w {
			case 2:
				v = uint64(bits.RotateLeft16(uint16(v), 1))
			case 4:
				v = uint64(bits.RotateLeft32(uint32(v), 1))
			case 8:
				v = bits.RotateLeft64(v, 1)
			}
		}
		for p := 0; p < w; p++ {
			pl[p][i] = byte(v >> (8 * (w - 1 - p)))
		}
	}
	return pl
}

// guardedPlanes returns w planes of n bytes, each followed (in its backing
// array) by planeGuard marker bytes that checkGuards verifies.
func guardedPlanes(w, n int) [][]byte {
	pl := make([][]byte, w)
	for p := range pl {
		buf := make([]byte, n+planeGuard)
		for i := n; i < len(buf); i++ {
			buf[i] = 0xA5
		}
		pl[p] = buf[:n]
	}
	return pl
}

func requireGuardIntact(t *testing.T, buf []byte, what string) {
	t.Helper()
	tail := buf[len(buf):cap(buf)]
	for i, b := range tail {
		require.Equal(t, byte(0xA5), b, "%s: byte %d past the end was written", what, i)
	}
}

// FuzzSplitMergeKernels runs Split and Merge with the SSE2 kernels
// (split/merge with vector set) and with the scalar loops alone on the same
// input, for every width and both kinds, and requires byte-identical
// planes and elements from both, equal to the one-element-at-a-time
// definition, with nothing written past the buffers. off shifts src within
// its buffer, since the kernels use unaligned loads and stores.
func FuzzSplitMergeKernels(f *testing.F) {
	r := rand.New(rand.NewSource(21))
	// Lengths around the kernels' 16-element block for 2- and 4-byte
	// elements, plus odd byte counts (a partial trailing element).
	for _, w := range []int{2, 4} {
		for _, n := range []int{0, 1, 3, 15, 16, 17, 31, 32, 33, 47, 48, 49, 64, 100} {
			for _, extra := range []int{0, 1} {
				src := make([]byte, n*w+extra)
				r.Read(src)
				f.Add(src, uint8(n%16))
			}
		}
	}
	// Bit patterns where rotation matters: all ones, sign bits only, zeros.
	ones, signs := make([]byte, 136), make([]byte, 136)
	for i := range ones {
		ones[i] = 0xFF
		if i%2 == 1 {
			signs[i] = 0x80
		}
	}
	f.Add(ones, uint8(0))
	f.Add(signs, uint8(3))
	f.Add(make([]byte, 136), uint8(5))

	f.Fuzz(func(t *testing.T, in []byte, off uint8) {
		o := int(off % 16)
		for _, w := range []int{1, 2, 4, 8} {
			n := len(in) / w
			src := make([]byte, o+n*w)[o:]
			copy(src, in)
			for _, k := range []Kind{Planes, RotatedPlanes} {
				vec, sca := guardedPlanes(w, n), guardedPlanes(w, n)
				split(true, k, w, src, vec)
				split(false, k, w, src, sca)
				require.Equal(t, sca, vec, "split w=%d k=%d n=%d: vector and scalar planes differ", w, k, n)
				require.Equal(t, referencePlanes(k, w, src), sca, "split w=%d k=%d n=%d: scalar planes", w, k, n)
				for p := range vec {
					requireGuardIntact(t, vec[p], "split vector plane")
					requireGuardIntact(t, sca[p], "split scalar plane")
				}

				for _, vector := range []bool{true, false} {
					dst := guardedPlanes(1, o+n*w)[0][o:]
					merge(vector, k, w, vec, dst)
					require.Equal(t, src, dst, "merge w=%d k=%d n=%d vector=%v", w, k, n, vector)
					requireGuardIntact(t, dst, "merge dst")
				}
			}
			// The kernels, called directly, must handle every whole block of
			// 16 where this build has them, and exactly as the definition
			// says: this holds even if split or merge stopped calling them,
			// which the comparison above would not notice (it would compare
			// the scalar code with itself).
			want := 0
			if vectorKernels {
				want = n &^ 15
			}
			for _, k := range []Kind{Planes, RotatedPlanes} {
				rot := k == RotatedPlanes
				def := referencePlanes(k, w, src)
				p := planesFor(w, n)
				dst := make([]byte, w*n)
				var split, merge int
				switch w {
				case 2:
					split = vectorSplit2(rot, src, p[0], p[1])
					merge = vectorMerge2(rot, def[0], def[1], dst)
				case 4:
					split = vectorSplit4(rot, src, p[0], p[1], p[2], p[3])
					merge = vectorMerge4(rot, def[0], def[1], def[2], def[3], dst)
				default:
					continue // no kernels for this width
				}
				require.Equal(t, want, split, "elements the w=%d split kernel handled of %d", w, n)
				require.Equal(t, want, merge, "elements the w=%d merge kernel handled of %d", w, n)
				for q := range p {
					require.Equal(t, def[q][:want], p[q][:want], "w=%d k=%d split kernel, plane %d", w, k, q)
				}
				require.Equal(t, src[:w*want], dst[:w*want], "w=%d k=%d merge kernel", w, k)
			}
		}
	})
}
