// Package container stores a whole file as a sequence of segments: verbatim
// byte ranges (such as a safetensors JSON header, kept exactly as written)
// and tensor frames. Concatenating the segments' original bytes rebuilds the
// file byte for byte. docs/FORMAT.md ("Files") specifies the layout.
package container

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tpde/tpde/core/crc32c"
	"github.com/tpde/tpde/core/errs"
)

// Magic opens every tpde file.
var Magic = [4]byte{0x89, 'T', 'P', 'C'}

const (
	VersionMajor = 1
	VersionMinor = 0

	headerLen = 28 // fixed header, including its CRC
	entryLen  = 24 // one segment table row
	// MaxSegments bounds the table a decoder allocates.
	MaxSegments = 1 << 24
)

// Source says what kind of file was stored, so tools can describe it.
type Source uint8

const (
	SourceBytes       Source = 0 // any file, stored as one byte frame
	SourceSafetensors Source = 1 // header verbatim, one frame per tensor
	SourceTorchZip    Source = 2 // torch.save zip: one frame per storage, the rest zstd
	SourceTorchLegacy Source = 3 // legacy torch.save file: one frame per storage, the rest zstd
)

func (s Source) String() string {
	switch s {
	case SourceBytes:
		return "bytes"
	case SourceSafetensors:
		return "safetensors"
	case SourceTorchZip:
		return "torch-zip"
	case SourceTorchLegacy:
		return "torch-legacy"
	}
	return fmt.Sprintf("source(%d)", uint8(s))
}

// SegKind is how a segment's bytes are stored.
type SegKind uint8

const (
	SegStored SegKind = 0 // the original bytes
	SegZstd   SegKind = 1 // one zstd frame of the original bytes
	SegFrame  SegKind = 2 // one tpde frame (docs/FORMAT.md "Frames")
)

// Segment is one parsed table row.
type Segment struct {
	Kind      SegKind
	CRC       uint32 // CRC32C of the stored bytes
	OrigLen   uint64
	StoredLen uint64
	OrigOff   uint64 // where the segment's bytes go in the original file (derived)
	StoredOff uint64 // where its stored bytes are in the tpde file (derived)
}

// Header is a parsed, validated file header and segment table.
type Header struct {
	VersionMajor, VersionMinor uint8
	Source                     Source
	OrigSize                   uint64
	Segments                   []Segment
	FileLen                    uint64
}

func crc(b []byte) uint32 { return crc32c.Checksum(b) }

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// named puts path in front of what a file's parse or decode found wrong
// in it, so that the error names the file.
func named(path string, err error) error {
	if errors.Is(err, errs.Corrupt) || errors.Is(err, errs.Unsupported) {
		return fmt.Errorf("%s: %w", path, err)
	}
	return err
}

// tableLen is the byte length of the segment table for n segments.
func tableLen(n int) int { return n*entryLen + 4 }

// putHeader writes the fixed header and table for segs into dst, which must
// be headerLen + tableLen(len(segs)) bytes.
func putHeader(dst []byte, src Source, origSize uint64, segs []Segment) {
	copy(dst, Magic[:])
	dst[4], dst[5], dst[6], dst[7] = VersionMajor, VersionMinor, byte(src), 0
	binary.LittleEndian.PutUint64(dst[8:], origSize)
	binary.LittleEndian.PutUint32(dst[16:], uint32(len(segs)))
	binary.LittleEndian.PutUint32(dst[20:], 0)
	binary.LittleEndian.PutUint32(dst[24:], crc(dst[:24]))
	t := dst[headerLen:]
	for i, s := range segs {
		e := t[i*entryLen:]
		e[0], e[1], e[2], e[3] = byte(s.Kind), 0, 0, 0
		binary.LittleEndian.PutUint32(e[4:], s.CRC)
		binary.LittleEndian.PutUint64(e[8:], s.OrigLen)
		binary.LittleEndian.PutUint64(e[16:], s.StoredLen)
	}
	tl := tableLen(len(segs))
	binary.LittleEndian.PutUint32(t[tl-4:], crc(t[:tl-4]))
}

// Sniff reports whether data starts with the tpde file magic.
func Sniff(data []byte) bool { return len(data) >= 4 && [4]byte(data[:4]) == Magic }

// Parse validates the header and segment table of a tpde file held in data
// (the whole file). It checks that segment sizes add up to the stored
// original size and to the file's length; segment contents are checked when
// they are decoded.
func Parse(data []byte) (*Header, error) {
	if len(data) < headerLen {
		return nil, corrupt("truncated header: %d bytes", len(data))
	}
	if !Sniff(data) {
		return nil, corrupt("bad magic % x", data[:4])
	}
	h := &Header{VersionMajor: data[4], VersionMinor: data[5], Source: Source(data[6])}
	if h.VersionMajor != VersionMajor {
		return nil, fmt.Errorf("%w: file version %d.%d (this build reads %d.x)", errs.Unsupported, h.VersionMajor, h.VersionMinor, VersionMajor)
	}
	if got, want := crc(data[:24]), binary.LittleEndian.Uint32(data[24:]); got != want {
		return nil, corrupt("header checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	if data[7] != 0 || binary.LittleEndian.Uint32(data[20:]) != 0 {
		return nil, corrupt("reserved header bytes are not zero")
	}
	if h.Source > SourceTorchLegacy {
		return nil, fmt.Errorf("%w: source kind %d", errs.Unsupported, h.Source)
	}
	h.OrigSize = binary.LittleEndian.Uint64(data[8:])
	n := binary.LittleEndian.Uint32(data[16:])
	if n > MaxSegments {
		return nil, corrupt("%d segments exceed %d", n, MaxSegments)
	}
	tl := tableLen(int(n))
	if len(data)-headerLen < tl {
		return nil, corrupt("truncated segment table: %d of %d bytes", len(data)-headerLen, tl)
	}
	t := data[headerLen : headerLen+tl]
	if got, want := crc(t[:tl-4]), binary.LittleEndian.Uint32(t[tl-4:]); got != want {
		return nil, corrupt("segment table checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	h.Segments = make([]Segment, n)
	var orig uint64
	stored := uint64(headerLen + tl)
	for i := range h.Segments {
		e := t[i*entryLen:]
		s := &h.Segments[i]
		s.Kind = SegKind(e[0])
		if s.Kind > SegFrame {
			// The table CRC matched, so a newer writer put it there.
			return nil, fmt.Errorf("%w: segment %d: segment kind %d", errs.Unsupported, i, e[0])
		}
		if e[1] != 0 || e[2] != 0 || e[3] != 0 {
			return nil, corrupt("segment %d: reserved bytes are not zero", i)
		}
		s.CRC = binary.LittleEndian.Uint32(e[4:])
		s.OrigLen = binary.LittleEndian.Uint64(e[8:])
		s.StoredLen = binary.LittleEndian.Uint64(e[16:])
		if s.Kind == SegStored && s.StoredLen != s.OrigLen {
			return nil, corrupt("segment %d: stored segment of %d bytes holds %d", i, s.OrigLen, s.StoredLen)
		}
		s.OrigOff, s.StoredOff = orig, stored
		if orig+s.OrigLen < orig || stored+s.StoredLen < stored {
			return nil, corrupt("segment %d: sizes overflow", i)
		}
		orig += s.OrigLen
		stored += s.StoredLen
	}
	if orig != h.OrigSize {
		return nil, corrupt("segments add up to %d bytes, header says %d", orig, h.OrigSize)
	}
	if stored != uint64(len(data)) {
		return nil, corrupt("segments end at byte %d of a %d-byte file", stored, len(data))
	}
	h.FileLen = stored
	return h, nil
}
