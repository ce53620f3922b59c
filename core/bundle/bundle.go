// Package bundle is the checkpoint bundle (docs/FORMAT.md §9): the frames
// of a checkpoint's named tensors, keyframes or delta frames, back to back,
// then an index of names and frame extents with the caller's JSON metadata,
// then a fixed trailer that locates the index.
//
// The index comes last so a bundle is written front to back in one pass:
// a checkpoint streams to disk with memory bounded by the tensors in flight,
// not by the checkpoint. A reader finds the index from the end.
//
// A delta frame in a bundle is coded against the tensor of the same name in
// the reference checkpoint; which checkpoint that is, is the metadata's
// business (the Python layer records it). Each delta frame records its
// reference's checksum, so decoding against the wrong one fails.
package bundle

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"unicode/utf8"

	"github.com/tpde/tpde/core/crc32c"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
)

// Magic opens every bundle. Like a frame's, its first byte has the high bit
// set so that text-mode transfers mangle it visibly.
var Magic = [4]byte{0x89, 'T', 'P', 'B'}

// TrailerMagic ends every bundle; a truncated bundle lacks it.
var TrailerMagic = [4]byte{'T', 'P', 'B', 'E'}

const (
	// VersionMajor changes when a reader of the previous major could
	// misread a bundle; readers refuse majors they do not know.
	VersionMajor = 1
	// VersionMinor changes for additions an older reader may ignore.
	VersionMinor = 0

	// PreambleLen is magic, major, minor and a 16-bit flags field.
	PreambleLen = 8
	// TrailerLen is the index length (u64), the CRC32C of preamble and
	// index (u32) and TrailerMagic.
	TrailerLen = 16

	// MaxEntries caps the tensors in one bundle. Reading the index costs a
	// reader time and memory per entry (a parsed frame header, its entry
	// in the ABI's index document, Python objects): a kilobyte or more for
	// an entry of 73 bytes with its frame, so the cap bounds what a bundle
	// of tiny frames can make a reader spend. Checkpoints of the largest public
	// models hold around 10^5 tensors, a few times that with optimizer
	// state.
	MaxEntries = 1 << 20
	// MaxNameLen is the longest tensor name (it is stored in a u16).
	MaxNameLen = 1<<16 - 1
	// MaxMetaLen caps the metadata JSON.
	MaxMetaLen = 1 << 28
	// MaxMetaDepth caps how deeply the metadata's arrays and objects nest.
	// JSON parsers that recurse (Python's, and tpde's own rebuild of a
	// checkpoint's structure) would otherwise exhaust their stack on a few
	// kilobytes of brackets. tpde's checkpoint metadata nests about three
	// levels per level of the checkpoint's structure (docs/FORMAT.md §9.6).
	MaxMetaDepth = 100
	// minFrameLen is the smallest frame: a 0-d keyframe header.
	minFrameLen = 36

	entryFixedLen = 2 + 8 + 8
)

// indexCRC is the CRC32C of the preamble followed by the index: the
// preamble's version and flags are covered too, so no byte outside the
// frames (which carry their own checksums) changes unnoticed.
func indexCRC(preamble, index []byte) uint32 {
	return crc32c.Update(crc32c.Checksum(preamble), index)
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: bundle: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// Entry is one tensor of a bundle: its name and where its frame lies.
type Entry struct {
	Name   string
	Offset uint64 // from the start of the bundle
	Length uint64 // frame bytes
}

// Bundle is a parsed, validated bundle. It keeps blob; frames are decoded
// from it in place.
type Bundle struct {
	VersionMinor uint8
	Entries      []Entry
	// Meta is the metadata JSON object, verbatim.
	Meta    []byte
	Size    uint64 // total bundle bytes
	blob    []byte
	indexAt uint64
	byName  map[string]int
}

// Open validates a bundle's preamble, trailer and index. Nothing in blob is
// trusted: every count is capped and every extent is checked against the
// bytes present before it is used. Frames are validated when they are read
// (Header, Decode). Bytes after the trailer are refused: a bundle is a
// whole file or buffer.
func Open(blob []byte) (*Bundle, error) {
	n := uint64(len(blob))
	if n < PreambleLen+TrailerLen {
		return nil, corrupt("%d bytes is too short for a bundle (at least %d)", n, PreambleLen+TrailerLen)
	}
	if [4]byte(blob[:4]) != Magic {
		if [4]byte(blob[:4]) == frame.Magic {
			return nil, fmt.Errorf("%w: bundle: this is a single tensor frame, not a checkpoint bundle", errs.Invalid)
		}
		return nil, corrupt("bad magic % x (want % x)", blob[:4], Magic[:])
	}
	if blob[4] != VersionMajor {
		return nil, fmt.Errorf("%w: bundle major version %d (this build reads %d)", errs.Unsupported, blob[4], VersionMajor)
	}
	if flags := binary.LittleEndian.Uint16(blob[6:8]); flags != 0 {
		return nil, fmt.Errorf("%w: bundle flags %#04x (this build knows none)", errs.Unsupported, flags)
	}
	tr := blob[n-TrailerLen:]
	if [4]byte(tr[12:16]) != TrailerMagic {
		return nil, corrupt("no trailer magic at the end (truncated?): found % x", tr[12:16])
	}
	indexLen := binary.LittleEndian.Uint64(tr[0:8])
	if indexLen < 8 || indexLen > n-PreambleLen-TrailerLen {
		return nil, corrupt("index length %d does not fit in %d bytes", indexLen, n)
	}
	indexAt := n - TrailerLen - indexLen
	index := blob[indexAt : n-TrailerLen]
	if got, want := indexCRC(blob[:PreambleLen], index), binary.LittleEndian.Uint32(tr[8:12]); got != want {
		return nil, corrupt("index checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	b := &Bundle{VersionMinor: blob[5], Size: n, blob: blob, indexAt: indexAt}
	if err := b.parseIndex(index); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *Bundle) parseIndex(index []byte) error {
	// The index is checksummed, so a failure below means a writer bug or
	// a forged checksum; it is still reported, never trusted.
	count := binary.LittleEndian.Uint32(index[0:4])
	if count > MaxEntries {
		return corrupt("%d entries (max %d)", count, MaxEntries)
	}
	// Each entry needs at least entryFixedLen+1 bytes: cap the allocation
	// by what the index can hold.
	if uint64(count)*(entryFixedLen+1) > uint64(len(index))-8 {
		return corrupt("%d entries cannot fit in a %d-byte index", count, len(index))
	}
	b.Entries = make([]Entry, count)
	b.byName = make(map[string]int, count)
	pos := uint64(4)
	next := uint64(PreambleLen)
	rest := func() uint64 { return uint64(len(index)) - pos }
	for i := range b.Entries {
		if rest() < 2 {
			return corrupt("index entry %d truncated", i)
		}
		nl := uint64(binary.LittleEndian.Uint16(index[pos:]))
		pos += 2
		if nl == 0 {
			return corrupt("index entry %d has an empty name", i)
		}
		if rest() < nl+16 {
			return corrupt("index entry %d truncated", i)
		}
		name := string(index[pos : pos+nl])
		pos += nl
		if !utf8.ValidString(name) {
			return corrupt("index entry %d: name is not valid UTF-8", i)
		}
		if j, dup := b.byName[name]; dup {
			return corrupt("index entries %d and %d are both named %q", j, i, name)
		}
		off := binary.LittleEndian.Uint64(index[pos:])
		ln := binary.LittleEndian.Uint64(index[pos+8:])
		pos += 16
		// Frames are contiguous and in index order, so each extent is
		// pinned down exactly: no overlaps, no gaps, nothing outside the
		// frame area.
		if off != next {
			return corrupt("tensor %q starts at %d, expected %d", name, off, next)
		}
		if ln < minFrameLen || ln > b.indexAt-off {
			return corrupt("tensor %q: frame of %d bytes at %d does not fit before the index at %d", name, ln, off, b.indexAt)
		}
		next = off + ln
		b.Entries[i] = Entry{Name: name, Offset: off, Length: ln}
		b.byName[name] = i
	}
	if next != b.indexAt {
		return corrupt("%d bytes between the last frame and the index", b.indexAt-next)
	}
	if rest() < 4 {
		return corrupt("index truncated before the metadata length")
	}
	ml := uint64(binary.LittleEndian.Uint32(index[pos:]))
	pos += 4
	if ml != rest() {
		return corrupt("metadata of %d bytes, %d left in the index", ml, rest())
	}
	meta := index[pos:]
	if err := checkMeta(meta); err != nil {
		return fmt.Errorf("%w: bundle: %v", errs.Corrupt, err)
	}
	b.Meta = meta
	return nil
}

// checkMeta accepts a UTF-8 JSON object nested at most MaxMetaDepth deep
// (empty metadata is written as {}). Open and Writer.Close both use it, so
// a bundle this package writes is one it reads.
func checkMeta(meta []byte) error {
	if len(meta) > MaxMetaLen {
		return fmt.Errorf("metadata of %d bytes (max %d)", len(meta), MaxMetaLen)
	}
	// encoding/json accepts invalid UTF-8 inside strings (it would
	// substitute U+FFFD when decoding); RFC 8259 text is UTF-8, and other
	// readers reject it.
	if !utf8.Valid(meta) {
		return fmt.Errorf("metadata is not valid UTF-8")
	}
	if depth := jsonDepth(meta, MaxMetaDepth); depth > MaxMetaDepth {
		return fmt.Errorf("metadata nests more than %d levels deep", MaxMetaDepth)
	}
	if !json.Valid(meta) {
		return fmt.Errorf("metadata is not valid JSON")
	}
	if t := bytes.TrimLeft(meta, " \t\r\n"); len(t) > 0 && t[0] == '{' {
		return nil
	}
	return fmt.Errorf("metadata is not a JSON object")
}

// jsonDepth is how deeply the arrays and objects of the JSON text b nest
// ({} is 1), scanning no further once the depth passes limit. Brackets
// inside strings do not count; b need not be valid JSON (json.Valid judges
// that), the count is then meaningless but finite.
func jsonDepth(b []byte, limit int) int {
	depth, deepest := 0, 0
	inString, escaped := false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '[' || c == '{':
			depth++
			if depth > deepest {
				deepest = depth
				if deepest > limit {
					return deepest
				}
			}
		case c == ']' || c == '}':
			depth--
		}
	}
	return deepest
}

// Lookup returns the index of the entry named name.
func (b *Bundle) Lookup(name string) (int, bool) {
	i, ok := b.byName[name]
	return i, ok
}

// Frame returns entry i's frame bytes (a view into the bundle).
func (b *Bundle) Frame(i int) []byte {
	e := b.Entries[i]
	return b.blob[e.Offset : e.Offset+e.Length]
}

// Header parses and validates entry i's frame header and chunk table, and
// checks that the frame fills its extent exactly.
func (b *Bundle) Header(i int) (*frame.Header, error) {
	if i < 0 || i >= len(b.Entries) {
		return nil, fmt.Errorf("%w: bundle entry %d of %d", errs.Invalid, i, len(b.Entries))
	}
	f := b.Frame(i)
	h, err := frame.ParseAny(f)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", b.Entries[i].Name, err)
	}
	if h.FrameLen != uint64(len(f)) {
		return nil, corrupt("tensor %q: the frame is %d bytes, the index says %d", b.Entries[i].Name, h.FrameLen, len(f))
	}
	return h, nil
}
