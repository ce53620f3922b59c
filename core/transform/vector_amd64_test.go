//go:build amd64 && !purego

package transform

import (
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/cpu"
)

// vectorKernels says whether this build has the SSE2 kernels, so that the
// differential tests can require that the vector path really ran (and was
// not the scalar code compared with itself).
const vectorKernels = true

// The AVX-512 VBMI merge kernels, called directly at lengths of many
// blocks and at odd offsets, rebuild the elements the planes came from.
func TestMergeAVX512Kernels(t *testing.T) {
	if !cpu.X86.HasAVX512VBMI {
		t.Skip("this CPU has no AVX-512 VBMI: merges use the SSE2 kernels")
	}
	r := rand.New(rand.NewSource(31))
	for _, n := range []int{32, 64, 96, 1024, 4096 + 32} {
		for _, off := range []int{0, 1, 13} {
			for _, k := range []Kind{Planes, RotatedPlanes} {
				rot := k == RotatedPlanes
				src2 := make([]byte, off+2*n)[off:]
				r.Read(src2)
				p := referencePlanes(k, 2, src2)
				dst := make([]byte, off+2*n)[off:]
				merge2avx512(&p[0][0], &p[1][0], &dst[0], n, rot)
				require.Equal(t, src2, dst, "merge2 n=%d off=%d rot=%v", n, off, rot)

				src4 := make([]byte, off+4*n)[off:]
				r.Read(src4)
				q := referencePlanes(k, 4, src4)
				dst4 := make([]byte, off+4*n)[off:]
				merge4avx512(&q[0][0], &q[1][0], &q[2][0], &q[3][0], &dst4[0], n, rot)
				require.Equal(t, src4, dst4, "merge4 n=%d off=%d rot=%v", n, off, rot)
			}
		}
	}
}

// In-cache merge throughput of each kernel (128 Ki elements, a typical
// chunk's planes).
func BenchmarkMergeKernels(b *testing.B) {
	const n = 128 << 10
	p := [4][]byte{make([]byte, n), make([]byte, n), make([]byte, n), make([]byte, n)}
	dst := make([]byte, 4*n)
	b.Run("merge2/sse2", func(b *testing.B) {
		b.SetBytes(2 * n)
		for i := 0; i < b.N; i++ {
			merge2asm(&p[0][0], &p[1][0], &dst[0], n, true)
		}
	})
	b.Run("merge4/sse2", func(b *testing.B) {
		b.SetBytes(4 * n)
		for i := 0; i < b.N; i++ {
			merge4asm(&p[0][0], &p[1][0], &p[2][0], &p[3][0], &dst[0], n, true)
		}
	})
	if !cpu.X86.HasAVX512VBMI {
		return
	}
	b.Run("merge2/avx512", func(b *testing.B) {
		b.SetBytes(2 * n)
		for i := 0; i < b.N; i++ {
			merge2avx512(&p[0][0], &p[1][0], &dst[0], n, true)
		}
	})
	b.Run("merge4/avx512", func(b *testing.B) {
		b.SetBytes(4 * n)
		for i := 0; i < b.N; i++ {
			merge4avx512(&p[0][0], &p[1][0], &p[2][0], &p[3][0], &dst[0], n, true)
		}
	})
}
