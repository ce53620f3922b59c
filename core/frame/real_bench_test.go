package frame

import (
	"encoding/binary"
	"math"
	"os"
	"testing"

	"github.com/x448/float16"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
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

// BenchmarkRealDecodeDType is single-thread keyframe decode of every F32
// tensor of at least 64 Ki elements in TPDE_BENCH_SAFETENSORS, each its own
// frame, as stored (fp32) and converted to bf16 and fp16 (round to nearest
// even, as torch's .to() does): the per-dtype comparison with ZipNN that
// bench/decode_single.py makes from Python.
func BenchmarkRealDecodeDType(b *testing.B) {
	data, ts := realTensors(b)
	for _, dt := range []dtype.DType{dtype.F32, dtype.BF16, dtype.F16} {
		var tensors [][]byte
		var shapes [][]uint64
		for _, t := range ts {
			src := data[t.Begin:t.End]
			if t.DType != "F32" || len(src)/4 < 64<<10 {
				continue
			}
			tensors = append(tensors, convertF32(src, dt))
			shapes = append(shapes, t.Shape)
		}
		b.Run(dt.String(), func(b *testing.B) {
			if len(tensors) == 0 {
				b.Skip("no F32 tensor of 64 Ki elements or more")
			}
			var total, packed int64
			blobs := make([][]byte, len(tensors))
			outs := make([][]byte, len(tensors))
			for i, src := range tensors {
				bound, _ := Bound(uint64(len(src)), dt, len(shapes[i]), 0)
				blobs[i] = make([]byte, bound)
				n, err := Encode(blobs[i], src, dt, shapes[i], Options{Threads: 1})
				if err != nil {
					b.Fatal(err)
				}
				blobs[i] = blobs[i][:n]
				outs[i] = make([]byte, len(src))
				total += int64(len(src))
				packed += int64(n)
			}
			b.SetBytes(total)
			b.ResetTimer()
			for it := 0; it < b.N; it++ {
				for i := range blobs {
					if _, err := Decode(blobs[i], outs[i], 1); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(total)/float64(packed), "ratio")
		})
	}
}

// convertF32 returns little-endian F32 data as dt (F32: a copy).
func convertF32(src []byte, dt dtype.DType) []byte {
	n := len(src) / 4
	out := make([]byte, n*dt.Width())
	for i := 0; i < n; i++ {
		v := binary.LittleEndian.Uint32(src[4*i:])
		switch dt {
		case dtype.BF16:
			if math.IsNaN(float64(math.Float32frombits(v))) {
				v |= 1 << 22 // quiet, as torch makes it
			} else {
				v += 0x7fff + (v>>16)&1
			}
			binary.LittleEndian.PutUint16(out[2*i:], uint16(v>>16))
		case dtype.F16:
			binary.LittleEndian.PutUint16(out[2*i:], uint16(float16.Fromfloat32(math.Float32frombits(v))))
		default:
			binary.LittleEndian.PutUint32(out[4*i:], v)
		}
	}
	return out
}

// Delta benchmarks on two checkpoints of a real run: set
// TPDE_BENCH_DELTA_REF and TPDE_BENCH_DELTA_CUR to .safetensors files with
// the same tensors (bench/series.py makes such a series).
func realPair(b *testing.B) (ref, cur []byte, ts []safetensors.Tensor) {
	rp, cp := os.Getenv("TPDE_BENCH_DELTA_REF"), os.Getenv("TPDE_BENCH_DELTA_CUR")
	if rp == "" || cp == "" {
		b.Skip("set TPDE_BENCH_DELTA_REF and TPDE_BENCH_DELTA_CUR to .safetensors files")
	}
	ref, err := os.ReadFile(rp)
	if err != nil {
		b.Fatal(err)
	}
	cur, err = os.ReadFile(cp)
	if err != nil {
		b.Fatal(err)
	}
	f, err := safetensors.Parse(cur)
	if err != nil {
		b.Fatal(err)
	}
	return ref, cur, f.Tensors
}

func benchRealDelta(b *testing.B, decode, keyframe bool) {
	ref, cur, ts := realPair(b)
	effort := entropy.Balanced
	if os.Getenv("TPDE_BENCH_EFFORT") == "max" {
		effort = entropy.Max
	}
	ctx := delta.ContextAuto
	switch os.Getenv("TPDE_BENCH_CONTEXT") {
	case "on":
		ctx = delta.ContextOn
	case "off":
		ctx = delta.ContextOff
	}
	var total, packed int64
	blobs := make([][]byte, len(ts))
	outs := make([][]byte, len(ts))
	for i, t := range ts {
		d, _ := dtype.FromName(t.DType)
		src, r := cur[t.Begin:t.End], ref[t.Begin:t.End]
		bound, _ := DeltaBound(uint64(len(src)), d, len(t.Shape), 0)
		blobs[i] = make([]byte, bound)
		outs[i] = make([]byte, len(src))
		var n int
		if keyframe {
			var err error
			if n, err = Encode(blobs[i], src, d, t.Shape, Options{Threads: 1, Effort: effort}); err != nil {
				b.Fatal(err)
			}
		} else {
			res, err := EncodeDelta(blobs[i], src, r, nil, d, t.Shape, DeltaOptions{Threads: 1, Residual: delta.Auto, Effort: effort, Context: ctx})
			if err != nil {
				b.Fatal(err)
			}
			n = res.Len
		}
		if decode {
			blobs[i] = blobs[i][:n]
		}
		total += int64(len(src))
		packed += int64(n)
	}
	b.SetBytes(total)
	b.ResetTimer()
	defer func() { b.ReportMetric(float64(total)/float64(packed), "ratio") }()
	for k := 0; k < b.N; k++ {
		for i, t := range ts {
			d, _ := dtype.FromName(t.DType)
			src, r := cur[t.Begin:t.End], ref[t.Begin:t.End]
			var err error
			switch {
			case decode:
				_, err = DecodeDelta(blobs[i], r, nil, outs[i], 1)
			case keyframe:
				_, err = Encode(blobs[i], src, d, t.Shape, Options{Threads: 1, Effort: effort})
			default:
				_, err = EncodeDelta(blobs[i], src, r, nil, d, t.Shape, DeltaOptions{Threads: 1, Residual: delta.Auto, Effort: effort, Context: ctx})
			}
			if err != nil {
				b.Fatal(err)
			}
		}
	}
}

func BenchmarkRealDeltaEncode(b *testing.B)    { benchRealDelta(b, false, false) }
func BenchmarkRealDeltaDecode(b *testing.B)    { benchRealDelta(b, true, false) }
func BenchmarkRealKeyframeEncode(b *testing.B) { benchRealDelta(b, false, true) }
func BenchmarkRealKeyframeDecode(b *testing.B) { benchRealDelta(b, true, true) }
