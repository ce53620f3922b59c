package frame

// The coding and decoding steps that keyframes and delta frames share:
// checking a tensor before coding it, writing the common header, coding the
// chunks in parallel into worst-case slots of dst and compacting them,
// handing each worker its pooled scratch, and checking a frame and its
// chunks before and after decoding. codec.go and delta.go keep only what is
// specific to their kind: header fields and the per-chunk coder.

import (
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/transform"
)

// scratchPool is a sync.Pool of one kind of per-goroutine scratch, so that
// coding many small tensors does not allocate per call.
type scratchPool[T any] struct{ sync.Pool }

func newScratchPool[T any](alloc func() T) *scratchPool[T] {
	return &scratchPool[T]{sync.Pool{New: func() any { return alloc() }}}
}

func (p *scratchPool[T]) get() T  { return p.Get().(T) }
func (p *scratchPool[T]) put(s T) { p.Put(s) }

// workers is the scratch of one call's goroutines, one each. The thread
// count is read once, in hireWorkers, and run fans out over exactly as many
// goroutines as there is scratch: the process default may change between
// two reads of it, from another thread, and a worker would then index past
// the scratch.
type workers[T any] struct {
	pool    *scratchPool[T]
	scratch []T
}

// hireWorkers takes scratch from pool for the goroutines that par.For will
// use for jobs jobs at the requested thread count. Give it back with
// release.
func hireWorkers[T any](pool *scratchPool[T], requested, jobs int) workers[T] {
	w := workers[T]{pool: pool, scratch: make([]T, par.Workers(requested, jobs))}
	for i := range w.scratch {
		w.scratch[i] = pool.get()
	}
	return w
}

func (w workers[T]) release() {
	for _, s := range w.scratch {
		w.pool.put(s)
	}
}

// run calls fn for every job in [0, jobs) with the scratch of the worker
// that runs it, with par.For's guarantees (panics and memory faults become
// errors; the error of the lowest failing job wins).
func (w workers[T]) run(jobs int, fn func(s T, i int) error) error {
	return par.For(jobs, len(w.scratch), func(wk, i int) error { return fn(w.scratch[wk], i) })
}

// checkTensor validates what every encoder is given, a tensor of dtype d
// and the given shape in src, and returns its element count.
func checkTensor(src []byte, d dtype.DType, shape []uint64) (uint64, error) {
	if !d.Valid() {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, uint8(d))
	}
	if len(shape) > MaxNDim {
		return 0, fmt.Errorf("%w: ndim %d (max %d)", errs.Invalid, len(shape), MaxNDim)
	}
	nelem, ok := elems(shape)
	if !ok || nelem > uint64(len(src)) || nelem*uint64(d.Width()) != uint64(len(src)) {
		return 0, fmt.Errorf("%w: shape %v of %s needs a different size than the %d bytes given", errs.Invalid, shape, d, len(src))
	}
	return nelem, nil
}

// chunkElemsFor is the chunk size of a frame of nelem elements of d when
// the caller asked for requested (0: KeyframeChunkElems for a keyframe,
// AutoChunkElems for a delta frame).
func chunkElemsFor(requested uint32, nelem uint64, d dtype.DType, keyframe bool) uint32 {
	switch {
	case requested != 0:
		return requested
	case keyframe:
		return KeyframeChunkElems(nelem, d)
	}
	return AutoChunkElems(nelem)
}

// checkRoom refuses a dst shorter than the bound of the frame to be coded
// into it: chunks are coded straight into their worst-case slots there.
func checkRoom(dst []byte, bound uint64) error {
	if uint64(len(dst)) < bound {
		return fmt.Errorf("%w: %d bytes given, up to %d needed", errs.BufferTooSmall, len(dst), bound)
	}
	return nil
}

// boundChunks validates the arguments of Bound and DeltaBound and returns
// the chunk count of such a frame.
func boundChunks(rawSize uint64, d dtype.DType, ndim int, chunkElems uint32, keyframe bool) (uint64, error) {
	if !d.Valid() {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, uint8(d))
	}
	if ndim < 0 || ndim > MaxNDim {
		return 0, fmt.Errorf("%w: ndim %d (max %d)", errs.Invalid, ndim, MaxNDim)
	}
	w := uint64(d.Width())
	chunkElems = chunkElemsFor(chunkElems, rawSize/w, d, keyframe)
	if chunkElems > MaxChunkElems {
		return 0, fmt.Errorf("%w: chunk size %d elements (max %d)", errs.Invalid, chunkElems, MaxChunkElems)
	}
	nchunks := nchunksFor(rawSize/w, chunkElems)
	if nchunks > 1<<32-1 || rawSize > 1<<56 {
		return 0, fmt.Errorf("%w: tensor of %d bytes is too large", errs.Invalid, rawSize)
	}
	return nchunks, nil
}

// putHeader writes the header fields of docs/FORMAT.md §5.2, which both
// kinds share, at the start of dst and returns the header (with room for
// extLen bytes of extension area and the header CRC) and its extension
// area, for the caller to fill before sealHeader.
func putHeader(dst []byte, kind uint8, d dtype.DType, shape []uint64, ce uint32, rawSize uint64, nchunks, extLen int) (hdr, ext []byte) {
	hdr = dst[:headerLen(len(shape))+extLen]
	tk, ns := transform.For(d)
	copy(hdr, Magic[:])
	hdr[4], hdr[5], hdr[6], hdr[7] = VersionMajor, VersionMinor, kind, byte(d)
	hdr[8], hdr[9], hdr[10], hdr[11] = byte(tk), byte(ns), byte(len(shape)), 0
	binary.LittleEndian.PutUint32(hdr[12:], ce)
	binary.LittleEndian.PutUint64(hdr[16:], rawSize)
	binary.LittleEndian.PutUint32(hdr[24:], uint32(nchunks))
	binary.LittleEndian.PutUint16(hdr[28:], uint16(extLen))
	hdr[30], hdr[31] = 0, 0 // reserved
	for i, dim := range shape {
		binary.LittleEndian.PutUint64(hdr[fixedHeaderLen+8*i:], dim)
	}
	return hdr, hdr[fixedHeaderLen+8*len(shape) : len(hdr)-4]
}

// sealHeader writes the header CRC, the last 4 bytes of hdr.
func sealHeader(hdr []byte) {
	binary.LittleEndian.PutUint32(hdr[len(hdr)-4:], crc(hdr[:len(hdr)-4]))
}

// chunkLayout is where encodeChunks puts a frame's chunks in dst.
type chunkLayout struct {
	headerLen  int // bytes before the chunk table
	entryLen   int // bytes per chunk-table entry
	rawSize    int // bytes of the tensor
	chunkBytes int // raw bytes per chunk; the last chunk may be shorter
	// overhead is the most a chunk's payload may exceed its raw bytes by:
	// each chunk's slot is its raw length plus overhead.
	overhead int
}

func (l chunkLayout) nchunks() int {
	return (l.rawSize + l.chunkBytes - 1) / l.chunkBytes
}

// chunkEncoder codes raw bytes [lo, hi) of the tensor, chunk i, with scratch
// s. It appends the payload to slot (empty, with the chunk's worst case as
// capacity) and returns it with the CRC32C of the raw bytes a decoder will
// reconstruct, and fills the kind's fields of the chunk-table entry, from
// offset 8 on (the driver writes the two CRCs that open every entry).
type chunkEncoder[S any] func(s S, i, lo, hi int, entry, slot []byte) (payload []byte, rawCRC uint32, err error)

// encodeChunks codes every chunk of a frame laid out as l with code, in
// parallel on w, calling stop (if not nil) before each chunk; writes the
// chunk table and its CRC; and returns the frame's length. Chunks are coded
// straight into their worst-case slots in dst and then compacted, so no
// intermediate copy of the tensor is made; dst must hold the frame's bound.
// The header is the caller's.
func encodeChunks[S any](dst []byte, l chunkLayout, w workers[S], stop func() error, code chunkEncoder[S]) (int, error) {
	nchunks := l.nchunks()
	tl := nchunks*l.entryLen + 4
	table := dst[l.headerLen : l.headerLen+tl]
	p0 := l.headerLen + tl
	slotLen := l.chunkBytes + l.overhead
	stored := make([]int, nchunks)
	err := w.run(nchunks, func(s S, i int) error {
		if stop != nil {
			if err := stop(); err != nil {
				return err
			}
		}
		lo := i * l.chunkBytes
		hi := min(lo+l.chunkBytes, l.rawSize)
		start := p0 + i*slotLen
		room := hi - lo + l.overhead
		slot := dst[start : start+room : start+room]
		e := table[i*l.entryLen : (i+1)*l.entryLen]
		payload, rawCRC, err := code(s, i, lo, hi, e, slot[:0])
		if err != nil {
			return err
		}
		if len(payload) > room {
			return fmt.Errorf("%w: chunk %d payload of %d bytes exceeds its slot", errs.Internal, i, len(payload))
		}
		if len(payload) > 0 && &payload[0] != &slot[0] {
			copy(slot, payload) // coded in scratch, not in place
		}
		binary.LittleEndian.PutUint32(e, rawCRC)
		binary.LittleEndian.PutUint32(e[4:], crc(slot[:len(payload)]))
		stored[i] = len(payload)
		return nil
	})
	if err != nil {
		return 0, err
	}
	// Compact: slot i starts at or after the end of the packed chunks before
	// it, so a forward copy never overwrites unread bytes.
	cur := p0
	for i, n := range stored {
		slot := p0 + i*slotLen
		copy(dst[cur:cur+n], dst[slot:slot+n])
		cur += n
	}
	binary.LittleEndian.PutUint32(table[tl-4:], crc(table[:tl-4]))
	return cur, nil
}

// appendCoded extends buf by coded, the output of a coder that was handed
// buf's spare capacity to write into: in place unless the coder could not.
func appendCoded(buf, coded []byte) []byte {
	n := len(buf)
	if len(coded) > 0 && len(coded) <= cap(buf)-n && &buf[n : n+1][0] == &coded[0] {
		return buf[:n+len(coded)]
	}
	return append(buf, coded...)
}

// wholeFrame parses blob with parse, checks that it is exactly one frame
// and that dst can hold its tensor, and returns the header and dst cut to
// the tensor's length.
func wholeFrame(blob, dst []byte, parse func([]byte) (*Header, error)) (*Header, []byte, error) {
	h, err := parse(blob)
	if err != nil {
		return nil, nil, err
	}
	if h.FrameLen != uint64(len(blob)) {
		return nil, nil, corrupt("%d bytes after the end of the frame", uint64(len(blob))-h.FrameLen)
	}
	if uint64(len(dst)) < h.RawSize {
		return nil, nil, fmt.Errorf("%w: %d bytes given, %d needed", errs.BufferTooSmall, len(dst), h.RawSize)
	}
	return h, dst[:h.RawSize], nil
}

// readChunkTable returns the chunk table of h.NChunks entries of entryLen
// bytes, with its CRC, that follows the header in blob, once it checked that
// CRC, and sets h.TableLen.
func (h *Header) readChunkTable(blob []byte, entryLen int) ([]byte, error) {
	hl := h.HeaderLen
	// nchunks < 2^32 and entryLen <= 48, so this cannot overflow.
	tl := uint64(h.NChunks)*uint64(entryLen) + 4
	if uint64(len(blob)-hl) < tl {
		return nil, corrupt("truncated chunk table: %d of %d bytes", len(blob)-hl, tl)
	}
	table := blob[hl : hl+int(tl)]
	if got, want := crc(table[:len(table)-4]), binary.LittleEndian.Uint32(table[len(table)-4:]); got != want {
		return nil, corrupt("chunk table checksum mismatch (stored %08x, computed %08x)", want, got)
	}
	h.TableLen = len(table)
	return table, nil
}

// checkStored verifies chunk i's stored bytes against the CRC its entry
// records, before anything decodes them.
func checkStored(i int, stored []byte, want uint32) error {
	if got := crc(stored); got != want {
		return corrupt("chunk %d stored-bytes checksum mismatch (stored %08x, computed %08x)", i, want, got)
	}
	return nil
}

// checkDecoded verifies chunk i's decoded bytes against the CRC its entry
// records.
func checkDecoded(i int, raw []byte, want uint32) error {
	if got := crc(raw); got != want {
		return corrupt("chunk %d checksum mismatch (stored %08x, computed %08x)", i, want, got)
	}
	return nil
}
