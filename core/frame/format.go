// Package frame reads and writes tpde frames: one tensor's bytes, split into
// fixed-size chunks that are transformed, entropy coded and checksummed, and
// coded or decoded in parallel. docs/FORMAT.md is the normative description of
// every byte here; change both together.
package frame

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/tpde/tpde/core/crc32c"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/transform"
)

// Magic opens every frame. The high first byte makes a text or 7-bit
// transfer mangle it visibly, as in PNG.
var Magic = [4]byte{0x89, 'T', 'P', 'F'}

const (
	// VersionMajor changes when a reader of the previous major version could
	// misread a new frame. Readers refuse majors they do not know.
	VersionMajor = 1
	// VersionMinor changes for additions an older reader of the same major
	// may ignore (it skips the extension area).
	VersionMinor = 0

	// KindKeyframe is a self-contained frame.
	KindKeyframe = 0
	// KindDelta is a delta frame: a tensor coded against one or two
	// reference tensors (delta.go). Parse and Decode refuse it; ParseAny
	// and DecodeDelta read it.
	KindDelta = 1

	fixedHeaderLen = 32
	// MaxNDim caps the shape rank.
	MaxNDim = 32
	// DefaultChunkElems keeps every plane of a chunk within one huff0 block
	// (BlockSizeMax is 256 KiB - 1) while giving a 22M-parameter model
	// ~170 chunks to share among cores.
	DefaultChunkElems = 1 << 17
	// MinAutoChunkElems is the smallest chunk AutoChunkElems picks.
	MinAutoChunkElems = 1 << 14
	// autoChunks is how many chunks AutoChunkElems aims for in a
	// mid-sized tensor.
	autoChunks = 8
	// autoChunks2 is autoChunks for keyframes of 2-byte dtypes
	// (KeyframeChunkElems).
	autoChunks2 = 2
	// maxKeyframeChunkElems2 is the largest chunk of a keyframe of a
	// 2-byte dtype: its planes (one byte per element) stay within one huff0
	// block, as DefaultChunkElems keeps those of every dtype.
	maxKeyframeChunkElems2 = 3 << 16
	// MaxChunkElems bounds the scratch a decoder allocates per chunk.
	MaxChunkElems = entropy.MaxStreamLen
	maxStreams    = 8
)

func crc(b []byte) uint32 { return crc32c.Checksum(b) }

// chunk is one row of the chunk table.
type chunk struct {
	crc     uint32 // CRC32C of the decoded raw bytes
	scrc    uint32 // CRC32C of the stored (encoded) bytes
	methods [maxStreams]entropy.Method
	lens    [maxStreams]uint32
	off     uint64 // payload offset from the frame start (derived)
}

// Header is a parsed, validated frame header and chunk table.
type Header struct {
	VersionMajor, VersionMinor uint8
	Kind                       uint8
	DType                      dtype.DType
	Transform                  transform.Kind
	NStreams                   int
	Shape                      []uint64
	ChunkElems                 uint32
	RawSize                    uint64
	NChunks                    int
	HeaderLen                  int    // bytes up to and including the header CRC
	TableLen                   int    // chunk table bytes, including the table CRC
	FrameLen                   uint64 // total frame bytes
	// Delta holds the delta fields of a kind 1 frame (nil for keyframes).
	Delta   *DeltaInfo
	chunks  []chunk
	dchunks []deltaChunk
}

func entryLen(nstreams int) int { return 8 + 5*nstreams }

func headerLen(ndim int) int { return fixedHeaderLen + 8*ndim + 4 }

// ChunkRaw returns the raw byte offset and length of chunk i.
func (h *Header) ChunkRaw(i int) (off, n uint64) {
	w := uint64(h.DType.Width())
	per := uint64(h.ChunkElems) * w
	off = uint64(i) * per
	n = per
	if off+n > h.RawSize {
		n = h.RawSize - off
	}
	return off, n
}

// Methods returns the stream methods chosen for chunk i.
// It returns nil for a delta frame, whose chunks are not stored as streams
// of the table (see DeltaChunk).
func (h *Header) Methods(i int) []entropy.Method {
	if h.Kind != KindKeyframe {
		return nil
	}
	return h.chunks[i].methods[:h.NStreams]
}

// PayloadLen returns the stored bytes of chunk i.
func (h *Header) PayloadLen(i int) uint64 {
	if h.Kind == KindDelta {
		return uint64(h.dchunks[i].len)
	}
	var n uint64
	for s := 0; s < h.NStreams; s++ {
		n += uint64(h.chunks[i].lens[s])
	}
	return n
}

// elems returns the element count of a shape and whether it overflowed.
func elems(shape []uint64) (uint64, bool) {
	n := uint64(1)
	for _, d := range shape {
		hi, lo := bits.Mul64(n, d)
		if hi != 0 {
			return 0, false
		}
		n = lo
	}
	return n, true
}

func nchunksFor(nelem uint64, chunkElems uint32) uint64 {
	if nelem == 0 {
		return 0
	}
	return (nelem-1)/uint64(chunkElems) + 1
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: frame: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// Parse validates a keyframe's header and chunk table. blob must hold the
// whole frame; bytes after it are ignored (see FrameLen). Nothing in blob is
// trusted: every count is capped and every offset is computed with overflow
// checks before it is used. A delta frame (kind 1) is refused as
// unsupported, since it cannot be decoded without its reference; ParseAny
// accepts both kinds.
func Parse(blob []byte) (*Header, error) { return parse(blob, false) }

// ParseAny is Parse that also accepts delta frames (kind 1), whose delta
// fields and chunk table it validates (docs/FORMAT.md §6). Decode them with
// DecodeDelta.
func ParseAny(blob []byte) (*Header, error) { return parse(blob, true) }

// HeadLen is the length of the header of the frame that starts with
// prefix (its fixed fields, shape, extension area and header CRC), from
// its first 32 bytes; ok is false when prefix is shorter than that.
// ParseHead needs this many bytes.
func HeadLen(prefix []byte) (n int, ok bool) {
	if len(prefix) < fixedHeaderLen {
		return 0, false
	}
	return headerLen(min(int(prefix[10]), MaxNDim+1)) + int(binary.LittleEndian.Uint16(prefix[28:])), true
}

// ParseHead validates a frame's header alone (every check of ParseAny up to
// the chunk table: magic, version, header CRC, kind, dtype, transform,
// reserved bytes, chunk size, shape against raw size) from the frame's
// first HeadLen bytes, for a caller that checks what an object holds
// without fetching all of it. The chunk table, delta fields and payload
// are not read: ParseAny before a decode still checks them.
func ParseHead(prefix []byte) (*Header, error) {
	h, _, _, _, err := parseHead(prefix, true)
	return h, err
}

func parse(blob []byte, acceptDelta bool) (*Header, error) {
	h, nelem, nchunks, extLen, err := parseHead(blob, acceptDelta)
	if err != nil {
		return nil, err
	}
	if h.Kind == KindDelta {
		return parseDelta(blob, h, nelem, nchunks, extLen)
	}
	return parseKeyframe(blob, h, nelem, nchunks)
}

// parseHead checks the header of the frame in blob (at least its header's
// bytes) and returns it with its element and chunk counts and its
// extension length.
func parseHead(blob []byte, acceptDelta bool) (*Header, uint64, uint64, int, error) {
	fail := func(err error) (*Header, uint64, uint64, int, error) { return nil, 0, 0, 0, err }
	if len(blob) < fixedHeaderLen+4 {
		return fail(corrupt("truncated header: %d bytes", len(blob)))
	}
	if [4]byte(blob[0:4]) != Magic {
		return fail(corrupt("bad magic % x", blob[0:4]))
	}
	h := &Header{VersionMajor: blob[4], VersionMinor: blob[5], Kind: blob[6]}
	if h.VersionMajor != VersionMajor {
		return fail(fmt.Errorf("%w: frame version %d.%d (this build reads %d.x)",
			errs.Unsupported, h.VersionMajor, h.VersionMinor, VersionMajor))
	}
	ndim := int(blob[10])
	extLen := int(binary.LittleEndian.Uint16(blob[28:]))
	if ndim > MaxNDim {
		return fail(corrupt("ndim %d exceeds %d", ndim, MaxNDim))
	}
	hl := headerLen(ndim) + extLen
	if len(blob) < hl {
		return fail(corrupt("truncated header: %d of %d bytes", len(blob), hl))
	}
	if got, want := crc(blob[:hl-4]), binary.LittleEndian.Uint32(blob[hl-4:]); got != want {
		return fail(corrupt("header checksum mismatch (stored %08x, computed %08x)", want, got))
	}
	// From here the header bytes are what the writer wrote; values are still
	// checked because a buggy or hostile writer can compute a CRC too.
	if h.Kind == KindDelta && !acceptDelta {
		return fail(fmt.Errorf("%w: frame kind 1 is a delta frame: it decodes only against its reference tensor (DecodeDelta, tpde_decode_delta)", errs.Unsupported))
	}
	if h.Kind != KindKeyframe && h.Kind != KindDelta {
		return fail(fmt.Errorf("%w: frame kind %d", errs.Unsupported, h.Kind))
	}
	h.DType = dtype.DType(blob[7])
	if !h.DType.Valid() {
		return fail(fmt.Errorf("%w: dtype code %d", errs.Unsupported, blob[7]))
	}
	tk, ns := transform.For(h.DType)
	h.Transform = transform.Kind(blob[8])
	h.NStreams = int(blob[9])
	if h.Transform != tk || h.NStreams != ns {
		return fail(corrupt("transform %d with %d streams does not match dtype %s", h.Transform, h.NStreams, h.DType))
	}
	if blob[11] != 0 || blob[30] != 0 || blob[31] != 0 {
		return fail(corrupt("reserved header bytes are not zero"))
	}
	h.ChunkElems = binary.LittleEndian.Uint32(blob[12:])
	if h.ChunkElems == 0 || h.ChunkElems > MaxChunkElems {
		return fail(corrupt("chunk size %d elements is out of range", h.ChunkElems))
	}
	h.RawSize = binary.LittleEndian.Uint64(blob[16:])
	nchunks := uint64(binary.LittleEndian.Uint32(blob[24:]))
	h.Shape = make([]uint64, ndim)
	for i := range h.Shape {
		h.Shape[i] = binary.LittleEndian.Uint64(blob[fixedHeaderLen+8*i:])
	}
	nelem, ok := elems(h.Shape)
	w := uint64(h.DType.Width())
	if !ok || nelem > (1<<62)/w || nelem*w != h.RawSize {
		return fail(corrupt("shape %v of %s does not match %d raw bytes", h.Shape, h.DType, h.RawSize))
	}
	h.HeaderLen = hl
	return h, nelem, nchunks, extLen, nil
}

// parseKeyframe reads a keyframe's chunk table after its header.
func parseKeyframe(blob []byte, h *Header, nelem, nchunks uint64) (*Header, error) {
	if nchunksFor(nelem, h.ChunkElems) != nchunks {
		return nil, corrupt("%d chunks recorded, %d expected", nchunks, nchunksFor(nelem, h.ChunkElems))
	}
	h.NChunks = int(nchunks)
	hl, w := h.HeaderLen, uint64(h.DType.Width())
	el := entryLen(h.NStreams)
	table, err := h.readChunkTable(blob, el)
	if err != nil {
		return nil, err
	}
	h.chunks = make([]chunk, h.NChunks)
	off := uint64(hl + h.TableLen)
	for i := range h.chunks {
		e := table[i*el:]
		c := &h.chunks[i]
		c.crc = binary.LittleEndian.Uint32(e)
		c.scrc = binary.LittleEndian.Uint32(e[4:])
		c.off = off
		_, raw := h.ChunkRaw(i)
		streamLen := raw / w
		for s := 0; s < h.NStreams; s++ {
			c.methods[s] = entropy.Method(e[8+5*s])
			c.lens[s] = binary.LittleEndian.Uint32(e[9+5*s:])
			if c.methods[s] > entropy.MaxMethod {
				// The table CRC matched, so a newer writer put it there.
				return nil, fmt.Errorf("%w: chunk %d stream %d: stream method %d", errs.Unsupported, i, s, c.methods[s])
			}
			// Every method is chosen only when it is no larger than raw.
			if uint64(c.lens[s]) > streamLen {
				return nil, corrupt("chunk %d stream %d: %d stored bytes for a %d-byte stream", i, s, c.lens[s], streamLen)
			}
			off += uint64(c.lens[s])
		}
	}
	h.FrameLen = off
	if uint64(len(blob)) < off {
		return nil, corrupt("truncated payload: frame is %d bytes, %d present", off, len(blob))
	}
	return h, nil
}

// AutoChunkElems is the chunk size used when the caller sets none. Typical
// weight matrices (384x384 to 4096x4096) would otherwise fall into one to a
// handful of default chunks that cores cannot share evenly, so mid-sized
// tensors are cut into about autoChunks chunks, never smaller than
// MinAutoChunkElems (where huff0 tables start to cost) and never larger
// than DefaultChunkElems. It depends on the tensor alone, never on the
// thread count, so the same tensor always gives the same frame.
func AutoChunkElems(nelem uint64) uint32 {
	ce := (nelem + autoChunks - 1) / autoChunks
	return uint32(min(max(ce, MinAutoChunkElems), DefaultChunkElems))
}

// KeyframeChunkElems is the chunk size of a keyframe when the caller sets
// none: AutoChunkElems, but for a 2-byte dtype at least autoChunks2
// chunks of at most maxKeyframeChunkElems2 elements, all of about the same
// size. Their exponent planes code at 2.5 (bf16) to 5.5 (fp16) bits a byte
// with tables that barely differ along a weight matrix, so every chunk's
// table costs more bytes than its local statistics save, and building a
// decode table per chunk costs a visible share of decoding an fp16 tensor;
// two chunks still let two cores share one tensor (bench/PROFILE.md,
// "Keyframe decode of one fp16 tensor"). Equal chunks because a short last
// chunk pays a whole table for few elements. fp32 keyframes gain from
// local tables and keep AutoChunkElems, as do delta frames.
func KeyframeChunkElems(nelem uint64, d dtype.DType) uint32 {
	if d.Width() != 2 {
		return AutoChunkElems(nelem)
	}
	n := max((nelem+maxKeyframeChunkElems2-1)/maxKeyframeChunkElems2, autoChunks2)
	ce := (nelem + n - 1) / n
	return uint32(min(max(ce, MinAutoChunkElems), maxKeyframeChunkElems2))
}

// Bound is the largest frame Encode can produce for rawSize bytes of d with
// ndim dimensions. chunkElems 0 means the default.
func Bound(rawSize uint64, d dtype.DType, ndim int, chunkElems uint32) (uint64, error) {
	nchunks, err := boundChunks(rawSize, d, ndim, chunkElems, true)
	if err != nil {
		return 0, err
	}
	_, ns := transform.For(d)
	return uint64(headerLen(ndim)) + nchunks*uint64(entryLen(ns)) + 4 + rawSize, nil
}
