package container

import (
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/mapped"
	"github.com/tpde/tpde/core/safetensors"
)

// SegmentInfo describes one segment for tools.
type SegmentInfo struct {
	Kind         string   `json:"kind"`
	OriginalSize uint64   `json:"original_size"`
	StoredSize   uint64   `json:"stored_size"`
	Name         string   `json:"name,omitempty"`
	DType        string   `json:"dtype,omitempty"`
	Shape        []uint64 `json:"shape"` // [] for a scalar; null for a verbatim segment
	Chunks       int      `json:"chunks,omitempty"`
	// Methods counts the streams coded by each method across the frame.
	Methods map[string]int `json:"methods,omitempty"`
}

// FileInfo describes a tpde file, or a single frame, for tools.
type FileInfo struct {
	Format         string `json:"format"` // "file" or "frame"
	Version        string `json:"version"`
	Source         string `json:"source,omitempty"`
	OriginalSize   uint64 `json:"original_size"`
	CompressedSize uint64 `json:"compressed_size"`
	// SegmentCount is the number of segments; Segments lists the first
	// of them, at most the maxSegments asked for.
	SegmentCount int           `json:"segment_count"`
	Segments     []SegmentInfo `json:"segments"`
}

// DefaultInfoSegments is how many segments Info lists when asked for 0: a
// file's segment count is the writer's choice (a hostile one can make
// millions), so describing every one would cost memory in proportion.
const DefaultInfoSegments = 10000

func frameInfo(fh *frame.Header) SegmentInfo {
	si := SegmentInfo{Kind: "frame", OriginalSize: fh.RawSize, StoredSize: fh.FrameLen,
		DType: fh.DType.String(), Shape: fh.Shape, Chunks: fh.NChunks, Methods: map[string]int{}}
	if si.Shape == nil {
		si.Shape = []uint64{}
	}
	for i := 0; i < fh.NChunks; i++ {
		for _, m := range fh.Methods(i) {
			si.Methods[m.String()]++
		}
	}
	return si
}

// Info validates and describes the tpde file or frame at path. It checks
// headers, tables and every segment's checksum (and the safetensors
// header, to name tensors) but does not decode tensor data. It lists at
// most maxSegments segments (0: DefaultInfoSegments); SegmentCount says
// how many there are.
func Info(path string, maxSegments int) (fi *FileInfo, err error) {
	if maxSegments <= 0 {
		maxSegments = DefaultInfoSegments
	}
	in, err := mapped.Open(path, "")
	if err != nil {
		return nil, err
	}
	defer in.Release()
	err = mapped.Reading(path, func() error {
		fi, err = info(in.Data, maxSegments)
		return err
	})
	return fi, named(path, err)
}

func info(data []byte, maxSegments int) (*FileInfo, error) {
	if len(data) >= 4 && [4]byte(data[:4]) == frame.Magic {
		fh, err := frame.Parse(data)
		if err != nil {
			return nil, err
		}
		if fh.FrameLen != uint64(len(data)) {
			return nil, fmt.Errorf("%w: frame: %d bytes after the end of the frame", errs.Corrupt, uint64(len(data))-fh.FrameLen)
		}
		return &FileInfo{Format: "frame", Version: fmt.Sprintf("%d.%d", fh.VersionMajor, fh.VersionMinor),
			OriginalSize: fh.RawSize, CompressedSize: fh.FrameLen, SegmentCount: 1, Segments: []SegmentInfo{frameInfo(fh)}}, nil
	}
	h, err := Parse(data)
	if err != nil {
		return nil, err
	}
	fi := &FileInfo{Format: "file", Version: fmt.Sprintf("%d.%d", h.VersionMajor, h.VersionMinor),
		Source: h.Source.String(), OriginalSize: h.OrigSize, CompressedSize: h.FileLen, SegmentCount: len(h.Segments),
		Segments: make([]SegmentInfo, 0, min(len(h.Segments), maxSegments))}
	var tensors map[uint64]safetensors.Tensor
	for i, s := range h.Segments {
		stored := data[s.StoredOff : s.StoredOff+s.StoredLen]
		if got := crc(stored); got != s.CRC {
			return nil, corrupt("segment %d checksum mismatch (stored %08x, computed %08x)", i, s.CRC, got)
		}
		if i >= maxSegments {
			// Past the listing every segment is still checked; the frames'
			// own headers and tables are what a decode would check next.
			if s.Kind == SegFrame {
				if _, err := frame.Parse(stored); err != nil {
					return nil, fmt.Errorf("segment %d: %w", i, err)
				}
			}
			continue
		}
		var si SegmentInfo
		switch s.Kind {
		case SegStored, SegZstd:
			si = SegmentInfo{Kind: map[SegKind]string{SegStored: "stored", SegZstd: "zstd"}[s.Kind]}
			if i == 0 && h.Source == SourceSafetensors {
				if tensors, err = tensorsByOffset(stored, s, h.OrigSize); err != nil {
					return nil, err
				}
				si.Name = "safetensors header"
			} else if t, ok := tensors[s.OrigOff]; ok {
				// A tensor kept verbatim (too small, or noise).
				si.Name, si.DType, si.Shape = t.Name, t.DType, t.Shape
			}
		case SegFrame:
			fh, err := frame.Parse(stored)
			if err != nil {
				return nil, fmt.Errorf("segment %d: %w", i, err)
			}
			si = frameInfo(fh)
			if t, ok := tensors[s.OrigOff]; ok {
				si.Name, si.DType, si.Shape = t.Name, t.DType, t.Shape
			}
		}
		si.OriginalSize, si.StoredSize = s.OrigLen, s.StoredLen
		fi.Segments = append(fi.Segments, si)
	}
	return fi, nil
}

// tensorsByOffset decodes a safetensors header segment and maps each
// non-empty tensor's file offset to its entry.
func tensorsByOffset(stored []byte, s Segment, fileSize uint64) (map[uint64]safetensors.Tensor, error) {
	hdr := stored
	if s.Kind == SegZstd {
		dec, err := zstd.NewReader(bytes.NewReader(stored), zstd.WithDecoderConcurrency(1),
			zstd.WithDecoderMaxMemory(maxZstdWindow))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %v", errs.Corrupt, err)
		}
		defer dec.Close()
		hdr, err = io.ReadAll(io.LimitReader(dec, int64(s.OrigLen)+1))
		if err != nil || uint64(len(hdr)) != s.OrigLen {
			return nil, corrupt("safetensors header segment does not decode to %d bytes", s.OrigLen)
		}
	}
	st, err := safetensors.ParseHeader(hdr, fileSize)
	if err != nil {
		return nil, err
	}
	byOff := make(map[uint64]safetensors.Tensor, len(st.Tensors))
	for _, t := range st.Tensors {
		if t.End > t.Begin {
			byOff[t.Begin] = t
		}
	}
	return byOff, nil
}
