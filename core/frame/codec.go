package frame

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/transform"
)

// Options tune encoding. The zero value is the default.
type Options struct {
	ChunkElems uint32         // elements per chunk; 0 means DefaultChunkElems
	Threads    int            // goroutines; 0 means the process default
	Effort     entropy.Effort // which stream methods to try
	// Stop, if set, is called before each chunk; an error it returns ends
	// the encoding with that error (how file operations are cancelled).
	Stop func() error
}

// scratch is one goroutine's reusable state. Pooled so that encoding many
// small tensors does not allocate per call.
type scratch struct {
	enc    *entropy.Encoder
	dec    entropy.Decoder
	planes [maxStreams][]byte
}

var scratchPool = sync.Pool{New: func() any { return &scratch{enc: entropy.NewEncoder(entropy.Balanced)} }}

func (s *scratch) plane(i, n int) []byte {
	if cap(s.planes[i]) < n {
		s.planes[i] = make([]byte, n)
	}
	return s.planes[i][:n]
}

// scratches hands each worker of one call its own scratch.
type scratches []*scratch

func getScratches(n int) scratches {
	s := make(scratches, n)
	for i := range s {
		s[i] = scratchPool.Get().(*scratch)
	}
	return s
}

func (s scratches) release() {
	for _, x := range s {
		scratchPool.Put(x)
	}
}

// Encode writes the frame of src (a tensor of dtype d and the given shape)
// into dst and returns its length. dst must hold at least Bound bytes: chunks
// are coded in parallel straight into their worst-case slots in dst and then
// compacted, so no intermediate copy of the tensor is made.
func Encode(dst, src []byte, d dtype.DType, shape []uint64, opt Options) (int, error) {
	if !d.Valid() {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, uint8(d))
	}
	if len(shape) > MaxNDim {
		return 0, fmt.Errorf("%w: ndim %d (max %d)", errs.Invalid, len(shape), MaxNDim)
	}
	w := d.Width()
	nelem, ok := elems(shape)
	if !ok || nelem > uint64(len(src)) || nelem*uint64(w) != uint64(len(src)) {
		return 0, fmt.Errorf("%w: shape %v of %s needs a different size than the %d bytes given", errs.Invalid, shape, d, len(src))
	}
	if opt.Effort > entropy.Max {
		return 0, fmt.Errorf("%w: effort %d", errs.Invalid, opt.Effort)
	}
	ce := opt.ChunkElems
	if ce == 0 {
		ce = AutoChunkElems(nelem)
	}
	bound, err := Bound(uint64(len(src)), d, len(shape), ce)
	if err != nil {
		return 0, err
	}
	if uint64(len(dst)) < bound {
		return 0, fmt.Errorf("%w: %d bytes given, up to %d needed", errs.BufferTooSmall, len(dst), bound)
	}
	tk, ns := transform.For(d)
	nchunks := int(nchunksFor(nelem, ce))
	hl := headerLen(len(shape))
	el := entryLen(ns)
	tl := nchunks*el + 4
	p0 := hl + tl
	chunkBytes := int(ce) * w

	// Header.
	hdr := dst[:hl]
	copy(hdr, Magic[:])
	hdr[4], hdr[5], hdr[6], hdr[7] = VersionMajor, VersionMinor, KindKeyframe, byte(d)
	hdr[8], hdr[9], hdr[10], hdr[11] = byte(tk), byte(ns), byte(len(shape)), 0
	binary.LittleEndian.PutUint32(hdr[12:], ce)
	binary.LittleEndian.PutUint64(hdr[16:], uint64(len(src)))
	binary.LittleEndian.PutUint32(hdr[24:], uint32(nchunks))
	binary.LittleEndian.PutUint32(hdr[28:], 0) // ext_len and reserved
	for i, dim := range shape {
		binary.LittleEndian.PutUint64(hdr[fixedHeaderLen+8*i:], dim)
	}
	binary.LittleEndian.PutUint32(hdr[hl-4:], crc(hdr[:hl-4]))

	table := dst[hl : hl+tl]
	threads := par.Workers(opt.Threads, nchunks)
	sc := getScratches(threads)
	defer sc.release()
	err = par.For(nchunks, threads, func(wk, i int) error {
		if opt.Stop != nil {
			if err := opt.Stop(); err != nil {
				return err
			}
		}
		s := sc[wk]
		s.enc.Effort = opt.Effort
		lo := i * chunkBytes
		hi := min(lo+chunkBytes, len(src))
		raw := src[lo:hi]
		n := len(raw) / w
		e := table[i*el : (i+1)*el]
		binary.LittleEndian.PutUint32(e, crc(raw))
		pos := p0 + lo // the chunk's worst-case slot
		limit := p0 + hi
		var planes [maxStreams][]byte
		if ns == 1 {
			planes[0] = raw
		} else {
			for p := 0; p < ns; p++ {
				planes[p] = s.plane(p, n)
			}
			transform.Split(tk, w, raw, planes[:ns])
		}
		for p := 0; p < ns; p++ {
			m, out := s.enc.Encode(dst[pos:pos:limit], planes[p])
			if len(out) > 0 && &out[0] != &dst[pos] {
				copy(dst[pos:limit], out) // cannot happen: no method exceeds raw
			}
			e[8+5*p] = byte(m)
			binary.LittleEndian.PutUint32(e[9+5*p:], uint32(len(out)))
			pos += len(out)
		}
		binary.LittleEndian.PutUint32(e[4:], crc(dst[p0+lo:pos]))
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Compact: slot i starts at or after the end of the packed chunks before
	// it, so a forward copy never overwrites unread bytes.
	cur := p0
	for i := 0; i < nchunks; i++ {
		e := table[i*el:]
		n := 0
		for p := 0; p < ns; p++ {
			n += int(binary.LittleEndian.Uint32(e[9+5*p:]))
		}
		slot := p0 + i*chunkBytes
		copy(dst[cur:cur+n], dst[slot:slot+n])
		cur += n
	}
	binary.LittleEndian.PutUint32(table[tl-4:], crc(table[:tl-4]))
	return cur, nil
}

// Decode decodes the frame in blob, which must be exactly one frame, into
// dst (at least RawSize bytes) and returns the header. On error dst holds
// unspecified bytes and must not be used.
func Decode(blob, dst []byte, threads int) (*Header, error) {
	h, err := Parse(blob)
	if err != nil {
		return nil, err
	}
	if h.FrameLen != uint64(len(blob)) {
		return nil, corrupt("%d bytes after the end of the frame", uint64(len(blob))-h.FrameLen)
	}
	if uint64(len(dst)) < h.RawSize {
		return nil, fmt.Errorf("%w: %d bytes given, %d needed", errs.BufferTooSmall, len(dst), h.RawSize)
	}
	return h, h.DecodeChunks(blob, dst[:h.RawSize], threads)
}

// DecodeChunks decodes every chunk of a parsed frame into dst (RawSize bytes).
func (h *Header) DecodeChunks(blob, dst []byte, threads int) error {
	threads = par.Workers(threads, h.NChunks)
	sc := getScratches(threads)
	defer sc.release()
	return par.For(h.NChunks, threads, func(wk, i int) error {
		off, n := h.ChunkRaw(i)
		return h.DecodeChunk(blob, i, dst[off:off+n], sc[wk])
	})
}

// DecodeChunkInto decodes chunk i into dst (exactly its raw length) using
// pooled scratch; for callers that stream chunks, such as file decoders.
func (h *Header) DecodeChunkInto(blob []byte, i int, dst []byte) error {
	s := scratchPool.Get().(*scratch)
	defer scratchPool.Put(s)
	return h.DecodeChunk(blob, i, dst, s)
}

// DecodeChunk decodes chunk i of the frame in blob into dst, which must be
// exactly the chunk's raw length, and verifies its checksum.
func (h *Header) DecodeChunk(blob []byte, i int, dst []byte, s *scratch) error {
	if h.Kind != KindKeyframe {
		return fmt.Errorf("%w: frame kind %d: decode it with DecodeDelta and its reference", errs.Unsupported, h.Kind)
	}
	c := &h.chunks[i]
	w := h.DType.Width()
	n := len(dst) / w
	pos := c.off
	stored := blob[pos : pos+h.PayloadLen(i)]
	if got := crc(stored); got != c.scrc {
		return corrupt("chunk %d stored-bytes checksum mismatch (stored %08x, computed %08x)", i, c.scrc, got)
	}
	var planes [maxStreams][]byte
	for p := 0; p < h.NStreams; p++ {
		end := pos + uint64(c.lens[p])
		src := blob[pos:end]
		pos = end
		out := dst
		if h.NStreams > 1 {
			if c.methods[p] == entropy.Raw && len(src) == n {
				// Merge reads a raw plane where it lies in the frame:
				// copying it to scratch first was a pass over the
				// mantissa half of every float chunk.
				planes[p] = src
				continue
			}
			out = s.plane(p, n)
			planes[p] = out
		}
		if err := s.dec.Decode(c.methods[p], src, out); err != nil {
			return fmt.Errorf("frame chunk %d stream %d: %w", i, p, err)
		}
	}
	if h.NStreams > 1 {
		transform.Merge(h.Transform, w, planes[:h.NStreams], dst)
	}
	if got := crc(dst); got != c.crc {
		return corrupt("chunk %d checksum mismatch (stored %08x, computed %08x)", i, c.crc, got)
	}
	return nil
}
