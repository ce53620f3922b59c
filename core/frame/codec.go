package frame

import (
	"encoding/binary"
	"fmt"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/transform"
)

// Options tune encoding. The zero value is the default.
type Options struct {
	ChunkElems uint32         // elements per chunk; 0: KeyframeChunkElems
	Threads    int            // goroutines; 0 means the process default
	Effort     entropy.Effort // which stream methods to try
	// Stop, if set, is called before each chunk; an error it returns ends
	// the encoding with that error (how file operations are cancelled).
	Stop func() error
}

// scratch is one goroutine's reusable keyframe state.
type scratch struct {
	enc    *entropy.Encoder
	dec    entropy.Decoder
	planes [maxStreams][]byte
}

var keyframePool = newScratchPool(func() *scratch { return &scratch{enc: entropy.NewEncoder(entropy.Balanced)} })

func (s *scratch) plane(i, n int) []byte {
	if cap(s.planes[i]) < n {
		s.planes[i] = make([]byte, n)
	}
	return s.planes[i][:n]
}

// Encode writes the frame of src (a tensor of dtype d and the given shape)
// into dst and returns its length. dst must hold at least Bound bytes: chunks
// are coded in parallel straight into their worst-case slots in dst and then
// compacted, so no intermediate copy of the tensor is made.
func Encode(dst, src []byte, d dtype.DType, shape []uint64, opt Options) (int, error) {
	nelem, err := checkTensor(src, d, shape)
	if err != nil {
		return 0, err
	}
	if opt.Effort > entropy.Max {
		return 0, fmt.Errorf("%w: effort %d", errs.Invalid, opt.Effort)
	}
	ce := chunkElemsFor(opt.ChunkElems, nelem, d, true)
	bound, err := Bound(uint64(len(src)), d, len(shape), ce)
	if err == nil {
		err = checkRoom(dst, bound)
	}
	if err != nil {
		return 0, err
	}
	tk, ns := transform.For(d)
	w := d.Width()
	// Every stream method is chosen only when it is no larger than its
	// plane, so a chunk never needs more than its raw bytes.
	l := chunkLayout{headerLen: headerLen(len(shape)), entryLen: entryLen(ns), rawSize: len(src), chunkBytes: int(ce) * w}
	hdr, _ := putHeader(dst, KindKeyframe, d, shape, ce, uint64(len(src)), l.nchunks(), 0)
	sealHeader(hdr)
	crew := hireWorkers(keyframePool, opt.Threads, l.nchunks())
	defer crew.release()
	return encodeChunks(dst, l, crew, opt.Stop, func(s *scratch, i, lo, hi int, e, slot []byte) ([]byte, uint32, error) {
		s.enc.Effort = opt.Effort
		// The keyframe streams zstd wins on are mostly runs of zeros
		// (optimizer state of embedding rows a fine-tune never touches),
		// where its fastest level loses little (bench/PROFILE.md,
		// "Trainer callback"). Max keeps the default level.
		s.enc.FastZstd = opt.Effort != entropy.Max
		raw := src[lo:hi]
		var planes [maxStreams][]byte
		if ns == 1 {
			planes[0] = raw
		} else {
			n := len(raw) / w
			for p := 0; p < ns; p++ {
				planes[p] = s.plane(p, n)
			}
			transform.Split(tk, w, raw, planes[:ns])
		}
		for p := 0; p < ns; p++ {
			m, out := s.enc.Encode(slot[len(slot):], planes[p])
			slot = appendCoded(slot, out)
			e[8+5*p] = byte(m)
			binary.LittleEndian.PutUint32(e[9+5*p:], uint32(len(out)))
		}
		return slot, crc(raw), nil
	})
}

// Decode decodes the frame in blob, which must be exactly one frame, into
// dst (at least RawSize bytes) and returns the header. On error dst holds
// unspecified bytes and must not be used.
func Decode(blob, dst []byte, threads int) (*Header, error) {
	h, dst, err := wholeFrame(blob, dst, Parse)
	if err != nil {
		return nil, err
	}
	return h, h.DecodeChunks(blob, dst, threads)
}

// DecodeChunks decodes every chunk of a parsed frame into dst (RawSize bytes).
func (h *Header) DecodeChunks(blob, dst []byte, threads int) error {
	crew := hireWorkers(keyframePool, threads, h.NChunks)
	defer crew.release()
	return crew.run(h.NChunks, func(s *scratch, i int) error {
		off, n := h.ChunkRaw(i)
		return h.DecodeChunk(blob, i, dst[off:off+n], s)
	})
}

// DecodeChunkInto decodes chunk i into dst (exactly its raw length) using
// pooled scratch; for callers that stream chunks, such as file decoders.
func (h *Header) DecodeChunkInto(blob []byte, i int, dst []byte) error {
	s := keyframePool.get()
	defer keyframePool.put(s)
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
	if err := checkStored(i, blob[pos:pos+h.PayloadLen(i)], c.scrc); err != nil {
		return err
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
	return checkDecoded(i, dst, c.crc)
}
