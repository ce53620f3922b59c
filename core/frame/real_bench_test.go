package frame

import (
	"os"
	"testing"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/safetensors"
)

// Benchmarks on a real checkpoint: set TPDE_BENCH_SAFETENSORS to a
// .safetensors file (bench/run.py does the same measurements end to end).
func realTensors(b *testing.B) (data []byte, ts []safetensors.Tensor) {
	path := os.Getenv("TPDE_BENCH_SAFETENSORS")
	if path == "" {
		b.Skip("set TPDE_BENCH_SAFETENSORS to a .safetensors file")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	f, err := safetensors.Parse(data)
	if err != nil {
		b.Fatal(err)
	}
	return data, f.Tensors
}

func benchReal(b *testing.B, threads int, decode bool) {
	data, ts := realTensors(b)
	var total, packed int64
	blobs := make([][]byte, len(ts))
	for i, t := range ts {
		d, _ := dtype.FromName(t.DType)
		src := data[t.Begin:t.End]
		bound, _ := Bound(uint64(len(src)), d, len(t.Shape), 0)
		blobs[i] = make([]byte, bound)
		n, err := Encode(blobs[i], src, d, t.Shape, Options{Threads: threads})
		if err != nil {
			b.Fatal(err)
		}
		blobs[i] = blobs[i][:n]
		total += int64(len(src))
		packed += int64(n)
	}
	out := make([]byte, 0, 1<<26)
	b.SetBytes(total)
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i, t := range ts {
			d, _ := dtype.FromName(t.DType)
			src := data[t.Begin:t.End]
			if decode {
				if _, err := Decode(blobs[i], out[:len(src)], threads); err != nil {
					b.Fatal(err)
				}
			} else {
				if _, err := Encode(out[:cap(out)], src, d, t.Shape, Options{Threads: threads}); err != nil {
					b.Fatal(err)
				}
			}
		}
	}
	b.ReportMetric(float64(total)/float64(packed), "ratio")
	b.ReportMetric(float64(packed), "packed-bytes")
}

func BenchmarkRealEncode1(b *testing.B) { benchReal(b, 1, false) }
func BenchmarkRealDecode1(b *testing.B) { benchReal(b, 1, true) }
func BenchmarkRealEncode2(b *testing.B) { benchReal(b, 2, false) }
func BenchmarkRealDecode2(b *testing.B) { benchReal(b, 2, true) }
