package container

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync/atomic"

	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/atomicfile"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/mapped"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/safetensors"
)

// Options tune file compression.
type Options struct {
	Frame frame.Options
	// Progress, if set, receives the running count of bytes processed
	// (input bytes when compressing, output bytes when decompressing).
	// It may be called from several goroutines.
	Progress func(done uint64)
	// MaxOutput, if not 0, is the most bytes DecompressFile may write; a
	// file whose header promises more is refused (errs.Limit) before
	// anything is written.
	MaxOutput uint64
	// Cancelled, if set, is polled between chunks; once it returns true
	// the operation stops with errs.Cancelled and leaves no output.
	Cancelled func() bool
	// Torch, for a torch.save file (zip or legacy), is what the caller
	// read from its pickles (Go never reads pickles); nil for any other
	// file.
	Torch *layout.Hints
	// NoReplace and NoFollow are atomicfile's options of the same names,
	// for the output: refuse one that exists (checked by the publishing
	// step itself), or one that is a symlink.
	NoReplace, NoFollow bool
}

// checkOutput refuses, before the input is read (a stream is copied to
// its end first), an output that NoReplace or NoFollow rules out.
// Without them the checks stay where they were, at atomicfile.Create,
// after the input's own errors.
func (o *Options) checkOutput(dst string) error {
	if !o.NoReplace && !o.NoFollow {
		return nil
	}
	return atomicfile.Check(dst, atomicfile.Options{NoReplace: o.NoReplace, NoFollow: o.NoFollow})
}

// output is the atomicfile.Options of a file made from in.
func (o *Options) output(in *mapped.Input) atomicfile.Options {
	return atomicfile.Options{SourcePerm: in.Perm, HasSource: in.HasPerm, NoReplace: o.NoReplace, NoFollow: o.NoFollow}
}

// stopper is the frame.Options.Stop of a file operation.
func (o *Options) stopper() func() error {
	if o.Cancelled == nil {
		return nil
	}
	return func() error {
		if o.Cancelled() {
			return errCancelled
		}
		return nil
	}
}

var errCancelled = fmt.Errorf("%w: stopped at the caller's request; no output was written", errs.Cancelled)

// planned is one segment to write: a byte range of the source and how to
// store it.
type planned struct {
	kind       SegKind
	begin, end uint64
	dt         dtype.DType
	shape      []uint64
}

// plan splits a file into segments. A safetensors file becomes its header
// (zstd-coded if that is smaller), one frame per non-empty tensor, and any
// bytes between or after tensors verbatim. A torch zip (when the caller
// gives its storages' dtypes) becomes one frame per storage, with the zip
// structure and pickle between them zstd-coded. Any other file, or one
// whose structure does not check out, is byte frames: still lossless, just
// without per-dtype modelling.
func plan(data []byte, hints *layout.Hints) (Source, []planned) {
	n := uint64(len(data))
	kind, regions, _ := layout.Plan(data, hints)
	if kind != layout.Raw {
		var segs []planned
		pos := uint64(0)
		gapKind := SegStored
		if kind == layout.Safetensors {
			st, _ := safetensors.ParseHeader(data, n) // Plan has checked it
			segs = append(segs, planned{kind: SegZstd, begin: 0, end: st.DataStart})
			pos = st.DataStart
		} else {
			gapKind = SegZstd
		}
		for _, r := range regions {
			if r.Begin > pos {
				segs = append(segs, planned{kind: gapKind, begin: pos, end: r.Begin})
			}
			segs = append(segs, planned{kind: SegFrame, begin: r.Begin, end: r.End, dt: r.DType, shape: r.Shape})
			pos = r.End
		}
		if pos < n {
			segs = append(segs, planned{kind: gapKind, begin: pos, end: n})
		}
		switch kind {
		case layout.Safetensors:
			return SourceSafetensors, segs
		case layout.TorchLegacy:
			return SourceTorchLegacy, segs
		}
		return SourceTorchZip, segs
	}
	// Cut other files into pieces so that memory stays bounded and progress
	// moves on a large file.
	var segs []planned
	for b := uint64(0); b < n; b += bytesSegment {
		e := min(b+bytesSegment, n)
		segs = append(segs, planned{kind: SegFrame, begin: b, end: e, dt: dtype.U8, shape: []uint64{e - b}})
	}
	return SourceBytes, segs
}

// bytesSegment is the piece size for files without tensor structure.
const bytesSegment = 64 << 20

// CompressFile compresses the file at src into a tpde file at dst, written
// atomically. The source is memory-mapped, never read into memory whole (a
// stream, such as a pipe, is first copied to an unnamed temporary file
// beside dst). If another process truncates the source meanwhile, the
// result is an errs.IO error naming it, and dst is left as it was.
func CompressFile(src, dst string, opt Options) error {
	if err := opt.checkOutput(dst); err != nil {
		return err
	}
	in, err := mapped.Open(src, filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer in.Release()
	return mapped.Reading(src, func() error { return compressMapped(in, dst, opt) })
}

func compressMapped(in *mapped.Input, dst string, opt Options) error {
	data := in.Data
	out, err := atomicfile.Create(dst, opt.output(in))
	if err != nil {
		return err
	}
	defer out.Abort()
	opt.Frame.Stop = opt.stopper()

	source, plans := plan(data, opt.Torch)
	segs := make([]Segment, len(plans))
	prefix := headerLen + tableLen(len(segs))
	// The table's size is known up front, so it is written last into the
	// space reserved here and readers still find it at the start.
	if _, err := out.Write(make([]byte, prefix)); err != nil {
		return fmt.Errorf("%w: write %s: %w", errs.IO, out.Name(), err)
	}
	var done uint64
	write := func(i int, kind SegKind, stored []byte) error {
		p := plans[i]
		segs[i] = Segment{Kind: kind, CRC: crc(stored), OrigLen: p.end - p.begin, StoredLen: uint64(len(stored))}
		if _, err := out.Write(stored); err != nil {
			return fmt.Errorf("%w: write %s: %w", errs.IO, out.Name(), err)
		}
		done += p.end - p.begin
		if opt.Progress != nil {
			opt.Progress(done)
		}
		return nil
	}
	threads := par.Threads(opt.Frame.Threads)
	var big []byte // reused by large segments, which are coded one at a time
	for i := 0; i < len(plans); {
		if opt.Cancelled != nil && opt.Cancelled() {
			return errCancelled
		}
		if plans[i].end-plans[i].begin >= smallSegment {
			kind, stored, err := encodeSegment(data, plans[i], opt.Frame, &big)
			if err != nil {
				return fmt.Errorf("segment %d: %w", i, err)
			}
			if err := write(i, kind, stored); err != nil {
				return err
			}
			i++
			continue
		}
		// A run of small segments (biases, norms, small matrices) has too
		// few chunks to keep cores busy one segment at a time, so the run
		// is coded segment-parallel, one thread each, and written in order.
		j, window := i, uint64(0)
		for j < len(plans) && plans[j].end-plans[j].begin < smallSegment && window < smallWindow {
			window += plans[j].end - plans[j].begin
			j++
		}
		kinds := make([]SegKind, j-i)
		stored := make([][]byte, j-i)
		one := opt.Frame
		one.Threads = 1
		err := par.For(j-i, threads, func(_, k int) error {
			var own []byte
			var err error
			kinds[k], stored[k], err = encodeSegment(data, plans[i+k], one, &own)
			if err != nil {
				return fmt.Errorf("segment %d: %w", i+k, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for k := range stored {
			if err := write(i+k, kinds[k], stored[k]); err != nil {
				return err
			}
		}
		i = j
	}
	hdr := make([]byte, prefix)
	putHeader(hdr, source, uint64(len(data)), segs)
	if _, err := out.WriteAt(hdr, 0); err != nil {
		return fmt.Errorf("%w: write %s: %w", errs.IO, out.Name(), err)
	}
	if opt.Cancelled != nil && opt.Cancelled() {
		return errCancelled
	}
	return out.Commit()
}

// Segments under smallSegment bytes are coded several at a time, in runs of
// up to smallWindow input bytes, which bounds the memory held for them.
const (
	smallSegment = 4 << 20
	smallWindow  = 64 << 20
)

// encodeSegment stores one planned segment, using *buf for coded output
// (grown as needed). A segment that coding cannot shrink is stored verbatim.
func encodeSegment(data []byte, p planned, fopt frame.Options, buf *[]byte) (SegKind, []byte, error) {
	orig := data[p.begin:p.end]
	switch p.kind {
	case SegZstd:
		*buf = zstdEncoder.EncodeAll(orig, (*buf)[:0])
		if len(*buf) < len(orig) {
			return SegZstd, *buf, nil
		}
	case SegFrame:
		bound, err := frame.Bound(uint64(len(orig)), p.dt, len(p.shape), fopt.ChunkElems)
		if err != nil {
			return 0, nil, err
		}
		if uint64(cap(*buf)) < bound {
			*buf = make([]byte, bound)
		}
		n, err := frame.Encode((*buf)[:bound], orig, p.dt, p.shape, fopt)
		if err != nil {
			return 0, nil, fmt.Errorf("bytes %d-%d: %w", p.begin, p.end, err)
		}
		// Noise, or a tensor too small to carry a frame header, is kept
		// verbatim instead.
		if n < len(orig) {
			return SegFrame, (*buf)[:n], nil
		}
	}
	return SegStored, orig, nil
}

var zstdEncoder, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithEncoderConcurrency(1))

// maxZstdWindow bounds the memory a zstd segment may make the decoder use.
const maxZstdWindow = 1 << 27

// DecompressFile rebuilds the original file from the tpde file at src into
// dst, written atomically. Every segment is checksummed before its bytes are
// used and every frame chunk after decoding; on any error dst is untouched.
// Memory stays bounded: chunks are decoded into per-worker buffers and
// written at their offsets, so the output is never held in memory.
func DecompressFile(src, dst string, opt Options) error {
	if err := opt.checkOutput(dst); err != nil {
		return err
	}
	in, err := mapped.Open(src, filepath.Dir(dst))
	if err != nil {
		return err
	}
	defer in.Release()
	return named(src, mapped.Reading(src, func() error { return decompressMapped(in, dst, opt) }))
}

func decompressMapped(in *mapped.Input, dst string, opt Options) error {
	data := in.Data
	h, err := parseFileOrFrame(data)
	if err != nil {
		return err
	}
	if opt.MaxOutput != 0 && h.OrigSize > opt.MaxOutput {
		return fmt.Errorf("%w: the file decodes to %d bytes, more than the limit of %d", errs.Limit, h.OrigSize, opt.MaxOutput)
	}
	out, err := atomicfile.Create(dst, opt.output(in))
	if err != nil {
		return err
	}
	defer out.Abort()
	stop := opt.stopper()
	// No up-front Truncate to OrigSize: a hostile header could then make a
	// huge sparse file before any segment was checked. WriteAt grows the
	// file as verified bytes arrive, and the segments tile it exactly.
	var done atomic.Uint64
	report := func(n uint64) {
		v := done.Add(n)
		if opt.Progress != nil {
			opt.Progress(v)
		}
	}
	// One segment: verify its checksum, then write its original bytes.
	restore := func(i, threads int) error {
		if stop != nil {
			if err := stop(); err != nil {
				return err
			}
		}
		s := h.Segments[i]
		stored := data[s.StoredOff : s.StoredOff+s.StoredLen]
		if got := crc(stored); got != s.CRC {
			return corrupt("segment %d checksum mismatch (stored %08x, computed %08x)", i, s.CRC, got)
		}
		var err error
		switch s.Kind {
		case SegStored:
			if _, err = out.WriteAt(stored, int64(s.OrigOff)); err != nil {
				err = fmt.Errorf("%w: write %s: %w", errs.IO, out.Name(), err)
			}
		case SegZstd:
			err = unzstdTo(stored, s, out.File)
		case SegFrame:
			if err = unframeTo(stored, s, out.File, threads, report, stop); err == nil {
				return nil // progress reported per chunk
			}
		}
		if err != nil {
			return fmt.Errorf("segment %d: %w", i, err)
		}
		report(s.OrigLen)
		return nil
	}
	threads := par.Threads(opt.Frame.Threads)
	for i := 0; i < len(h.Segments); {
		if h.Segments[i].OrigLen >= smallSegment {
			if err := restore(i, threads); err != nil {
				return err
			}
			i++
			continue
		}
		// As in CompressFile: runs of small segments go segment-parallel.
		j, window := i, uint64(0)
		for j < len(h.Segments) && h.Segments[j].OrigLen < smallSegment && window < smallWindow {
			window += h.Segments[j].OrigLen
			j++
		}
		if err := par.For(j-i, threads, func(_, k int) error { return restore(i+k, 1) }); err != nil {
			return err
		}
		i = j
	}
	if stop != nil {
		if err := stop(); err != nil {
			return err
		}
	}
	return out.Commit()
}

// parseFileOrFrame accepts a tpde file, or a single frame (what
// compress_tensor returns, saved to disk), which decodes to its raw bytes.
func parseFileOrFrame(data []byte) (*Header, error) {
	if len(data) < 4 || [4]byte(data[:4]) != frame.Magic {
		return Parse(data)
	}
	fh, err := frame.Parse(data)
	if err != nil {
		return nil, err
	}
	if fh.FrameLen != uint64(len(data)) {
		return nil, corrupt("%d bytes after the end of the frame", uint64(len(data))-fh.FrameLen)
	}
	return &Header{VersionMajor: fh.VersionMajor, VersionMinor: fh.VersionMinor, Source: SourceBytes,
		OrigSize: fh.RawSize, FileLen: fh.FrameLen,
		Segments: []Segment{{Kind: SegFrame, CRC: crc(data), OrigLen: fh.RawSize, StoredLen: fh.FrameLen}}}, nil
}

func unzstdTo(stored []byte, s Segment, out *os.File) error {
	dec, err := zstd.NewReader(bytes.NewReader(stored), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderMaxWindow(maxZstdWindow), zstd.WithDecoderMaxMemory(maxZstdWindow))
	if err != nil {
		return fmt.Errorf("%w: zstd: %v", errs.Corrupt, err)
	}
	defer dec.Close()
	w := io.NewOffsetWriter(out, int64(s.OrigOff))
	n, err := io.Copy(w, io.LimitReader(dec, int64(s.OrigLen)+1))
	if err != nil {
		var pe *os.PathError
		if errors.As(err, &pe) {
			return fmt.Errorf("%w: %w", errs.IO, err)
		}
		return fmt.Errorf("%w: zstd: %v", errs.Corrupt, err)
	}
	if uint64(n) != s.OrigLen {
		return corrupt("zstd segment decodes to %d bytes, want %d", n, s.OrigLen)
	}
	return nil
}

func unframeTo(stored []byte, s Segment, out *os.File, threads int, report func(uint64), stop func() error) error {
	fh, err := frame.Parse(stored)
	if err != nil {
		return err
	}
	if fh.FrameLen != s.StoredLen || fh.RawSize != s.OrigLen {
		return corrupt("frame of %d bytes decoding to %d does not fill a segment of %d stored, %d original bytes",
			fh.FrameLen, fh.RawSize, s.StoredLen, s.OrigLen)
	}
	threads = par.Workers(threads, fh.NChunks)
	bufs := make([][]byte, threads)
	return par.For(fh.NChunks, threads, func(wk, i int) error {
		if stop != nil {
			if err := stop(); err != nil {
				return err
			}
		}
		off, n := fh.ChunkRaw(i)
		if uint64(cap(bufs[wk])) < n {
			bufs[wk] = make([]byte, n)
		}
		b := bufs[wk][:n]
		if err := fh.DecodeChunkInto(stored, i, b); err != nil {
			return err
		}
		if _, err := out.WriteAt(b, int64(s.OrigOff+off)); err != nil {
			return fmt.Errorf("%w: write %s: %w", errs.IO, out.Name(), err)
		}
		report(n)
		return nil
	})
}
