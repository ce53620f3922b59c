package crc32c

import (
	"hash/crc32"
	"math/bits"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Every length around the folding thresholds and block sizes, at every
// alignment, with and without a running CRC, equals hash/crc32.
func TestUpdateMatchesHashCRC32(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	buf := make([]byte, 70000)
	rng.Read(buf)
	lengths := []int{0, 1, 15, 16, 63, 64, 255, 256, 257, 511, 512, 1000, 1023, 1024, 1025, 1087, 1088, 1279, 1280, 1281, 4096, 4097, 65536, 69000}
	for n := 1000; n < 1400; n++ {
		lengths = append(lengths, n)
	}
	for _, n := range lengths {
		for _, off := range []int{0, 1, 7, 8, 63} {
			b := buf[off : off+n]
			require.Equal(t, crc32.Checksum(b, castagnoli), Checksum(b), "len %d off %d", n, off)
			require.Equal(t, crc32.Update(0xdeadbeef, castagnoli, b), Update(0xdeadbeef, b), "len %d off %d", n, off)
		}
	}
}

// Zero and all-ones buffers exercise the carry-less products' extremes.
func TestUpdateUniformBuffers(t *testing.T) {
	for _, v := range []byte{0, 0xff} {
		b := make([]byte, 5000)
		for i := range b {
			b[i] = v
		}
		require.Equal(t, crc32.Checksum(b, castagnoli), Checksum(b))
	}
}

// The constants in fold_amd64.s are bitrev32(x^n mod P) << 1 for the
// Castagnoli polynomial.
func TestFoldConstants(t *testing.T) {
	xnmod := func(n int) uint64 {
		r := uint32(1)
		for i := 0; i < n; i++ {
			top := r & 0x80000000
			r <<= 1
			if top != 0 {
				r ^= 0x1EDC6F41
			}
		}
		return uint64(bits.Reverse32(r)) << 1
	}
	want := map[int]uint64{2080: 0xdcb17aa4, 2016: 0xb9e02b86, 544: 0x740eef02, 480: 0x9e4addf8, 160: 0xf20c0dfe, 96: 0x14cd00bd6}
	for n, k := range want {
		require.Equal(t, k, xnmod(n), "x^%d", n)
	}
}

func FuzzUpdate(f *testing.F) {
	f.Add(uint32(0), make([]byte, 1500), 0)
	f.Add(uint32(7), make([]byte, 3000), 5)
	f.Fuzz(func(t *testing.T, crc uint32, b []byte, cut int) {
		if len(b) > 0 {
			cut = int(uint(cut) % uint(len(b)+1))
		} else {
			cut = 0
		}
		want := crc32.Update(crc, castagnoli, b)
		require.Equal(t, want, Update(crc, b))
		require.Equal(t, want, Update(Update(crc, b[:cut]), b[cut:]))
	})
}

func BenchmarkChecksum(b *testing.B) {
	buf := make([]byte, 512<<10)
	b.Run("crc32c", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; i < b.N; i++ {
			Checksum(buf)
		}
	})
	b.Run("hash-crc32", func(b *testing.B) {
		b.SetBytes(int64(len(buf)))
		for i := 0; i < b.N; i++ {
			crc32.Checksum(buf, castagnoli)
		}
	})
}

// The folding kernel itself, on every multiple of 64 it accepts up to 4 KiB
// (Update only hands it buffers of foldMin bytes or more).
func TestFoldKernel(t *testing.T) {
	if !haveFold {
		t.Skip("this CPU has no AVX-512 VPCLMULQDQ: Update uses hash/crc32 alone")
	}
	rng := rand.New(rand.NewSource(2))
	buf := make([]byte, 4096)
	rng.Read(buf)
	for n := 256; n <= len(buf); n += 64 {
		require.Equal(t, ^crc32.Update(0x12345678, castagnoli, buf[:n]), fold(^uint32(0x12345678), buf[:n]), "len %d", n)
	}
}
