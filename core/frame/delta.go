package frame

// Delta frames (kind 1): a tensor coded against a reference tensor of the
// same dtype and shape (and, for linear prediction, a second one). The
// header, dims and header CRC are those of a keyframe; the extension area
// carries the delta fields; the chunk table and the chunk payloads have
// their own layout. docs/FORMAT.md §6 is the normative description; the
// chunk payloads are coded by core/delta.

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"math"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// Delta extension area and chunk table layout.
const (
	deltaExtBase  = 8  // residual kind, flags, quant bits, reserved, ref CRC
	deltaExtRef2  = 4  // ref2 CRC (residual kind Pred)
	deltaExtLossy = 16 // bound, max error (lossy frames)
	deltaExtMax   = deltaExtBase + deltaExtRef2 + deltaExtLossy
	deltaEntryLen = 17 // raw CRC, stored CRC, mode, count, stored length

	// DeltaFlagIdentical: every residual is zero; the frame has no chunk
	// table and no payload.
	DeltaFlagIdentical = 1 << 0
	// DeltaFlagLossy: elements may be reconstructed within Bound of the
	// input instead of exactly.
	DeltaFlagLossy  = 1 << 1
	deltaFlagsKnown = DeltaFlagIdentical | DeltaFlagLossy
)

// DeltaInfo is what a delta frame records beyond a keyframe header.
type DeltaInfo struct {
	Residual  delta.Kind
	Flags     uint8
	Identical bool
	Lossy     bool
	QuantBits int
	RefCRC    uint32 // CRC32C of the reference's raw bytes
	Ref2CRC   uint32 // CRC32C of the second reference's (Residual == Pred)
	Bound     float64
	MaxErr    float64
	// Changed is the number of elements whose residual (or quantization
	// code) is not zero: the sum of the chunk table's counts.
	Changed uint64
	// Modes counts the chunks stored in each delta.Mode.
	Modes [delta.MaxMode + 1]int
}

// NeedsRef2 reports whether decoding needs a second reference.
func (d *DeltaInfo) NeedsRef2() bool { return d.Residual == delta.Pred }

// Sparsity is the percentage of a delta frame's elements whose residual is
// zero (100 for an identical or empty tensor); 0 for keyframes.
func (h *Header) Sparsity() float64 {
	if h.Delta == nil {
		return 0
	}
	nelem := h.RawSize / uint64(h.DType.Width())
	if nelem == 0 {
		return 100
	}
	return 100 * float64(nelem-h.Delta.Changed) / float64(nelem)
}

// DeltaChunk returns chunk i's mode and count of changed elements.
func (h *Header) DeltaChunk(i int) (delta.Mode, uint32) {
	c := &h.dchunks[i]
	return c.mode, c.count
}

type deltaChunk struct {
	crc, scrc uint32
	mode      delta.Mode
	count     uint32
	len       uint32
	off       uint64
}

func deltaExtLen(k delta.Kind, lossy bool) int {
	n := deltaExtBase
	if k == delta.Pred {
		n += deltaExtRef2
	}
	if lossy {
		n += deltaExtLossy
	}
	return n
}

// parseDelta continues Parse for kind 1, after the checks shared with
// keyframes (docs/FORMAT.md §6.10).
func parseDelta(blob []byte, h *Header, nelem, nchunks uint64, extLen int) (*Header, error) {
	ndim := len(h.Shape)
	ext := blob[fixedHeaderLen+8*ndim : fixedHeaderLen+8*ndim+extLen]
	if len(ext) < deltaExtBase {
		return nil, corrupt("delta frame with a %d-byte extension area (at least %d)", len(ext), deltaExtBase)
	}
	di := &DeltaInfo{Residual: delta.Kind(ext[0]), Flags: ext[1], QuantBits: int(ext[2])}
	if di.Residual > delta.MaxKind {
		return nil, fmt.Errorf("%w: delta residual kind %d", errs.Unsupported, ext[0])
	}
	if di.Flags&^deltaFlagsKnown != 0 {
		return nil, fmt.Errorf("%w: delta flags %#x", errs.Unsupported, di.Flags)
	}
	if ext[3] != 0 {
		return nil, corrupt("reserved delta byte is not zero")
	}
	di.Identical = di.Flags&DeltaFlagIdentical != 0
	di.Lossy = di.Flags&DeltaFlagLossy != 0
	switch {
	case di.QuantBits != 0 && di.QuantBits != 4 && di.QuantBits != 8:
		return nil, fmt.Errorf("%w: quantization to %d bits", errs.Unsupported, di.QuantBits)
	case di.QuantBits != 0 && !di.Lossy:
		return nil, corrupt("quantization in a lossless delta frame")
	case di.Lossy && !h.DType.IsFloat():
		return nil, corrupt("lossy delta frame of %s", h.DType)
	case di.QuantBits != 0 && !delta.CanQuantize(h.DType):
		return nil, corrupt("quantized delta frame of %s", h.DType)
	}
	if need := deltaExtLen(di.Residual, di.Lossy); len(ext) < need {
		return nil, corrupt("delta extension area of %d bytes, %d needed", len(ext), need)
	}
	di.RefCRC = binary.LittleEndian.Uint32(ext[4:])
	off := deltaExtBase
	if di.Residual == delta.Pred {
		di.Ref2CRC = binary.LittleEndian.Uint32(ext[off:])
		off += deltaExtRef2
	}
	if di.Lossy {
		di.Bound = math.Float64frombits(binary.LittleEndian.Uint64(ext[off:]))
		di.MaxErr = math.Float64frombits(binary.LittleEndian.Uint64(ext[off+8:]))
		if !(di.Bound > 0) || math.IsInf(di.Bound, 0) || !(di.MaxErr >= 0) || !(di.MaxErr <= di.Bound) {
			return nil, corrupt("lossy bound %v with maximum error %v", di.Bound, di.MaxErr)
		}
	}
	want := nchunksFor(nelem, h.ChunkElems)
	if di.Identical {
		want = 0
	}
	if nchunks != want {
		return nil, corrupt("%d chunks recorded, %d expected", nchunks, want)
	}
	h.Delta = di
	h.NChunks = int(nchunks)
	hl := headerLen(ndim) + extLen
	h.HeaderLen = hl
	if di.Identical {
		h.FrameLen = uint64(hl)
		return h, nil
	}
	table, err := h.readChunkTable(blob, deltaEntryLen)
	if err != nil {
		return nil, err
	}
	w := uint64(h.DType.Width())
	ov := uint64(delta.ChunkOverhead(int(w)))
	h.dchunks = make([]deltaChunk, h.NChunks)
	pos := uint64(hl + h.TableLen)
	for i := range h.dchunks {
		e := table[i*deltaEntryLen:]
		c := &h.dchunks[i]
		c.crc = binary.LittleEndian.Uint32(e)
		c.scrc = binary.LittleEndian.Uint32(e[4:])
		c.mode = delta.Mode(e[8])
		c.count = binary.LittleEndian.Uint32(e[9:])
		c.len = binary.LittleEndian.Uint32(e[13:])
		c.off = pos
		_, raw := h.ChunkRaw(i)
		n := raw / w
		switch {
		case c.mode > delta.MaxMode:
			return nil, fmt.Errorf("%w: chunk %d: delta chunk mode %d", errs.Unsupported, i, e[8])
		case (c.mode == delta.DenseQ || c.mode == delta.SparseQ) && di.QuantBits == 0:
			return nil, corrupt("chunk %d: quantized chunk in a frame without quantization", i)
		case c.mode == delta.Copy && (c.count != 0 || c.len != 0):
			return nil, corrupt("chunk %d: copy chunk with %d changed elements and %d stored bytes", i, c.count, c.len)
		case c.mode != delta.Copy && (c.count == 0 || uint64(c.count) > n):
			return nil, corrupt("chunk %d: %d changed elements of %d", i, c.count, n)
		case uint64(c.len) > raw+ov:
			return nil, corrupt("chunk %d: %d stored bytes for %d raw bytes", i, c.len, raw)
		}
		di.Changed += uint64(c.count)
		di.Modes[c.mode]++
		pos += uint64(c.len)
	}
	h.FrameLen = pos
	if uint64(len(blob)) < pos {
		return nil, corrupt("truncated payload: frame is %d bytes, %d present", pos, len(blob))
	}
	return h, nil
}

// DeltaOptions tune delta encoding.
type DeltaOptions struct {
	ChunkElems uint32         // elements per chunk; 0: AutoChunkElems
	Threads    int            // goroutines; 0: the process default
	Effort     entropy.Effort // stream coders tried
	// Residual is delta.XOR, delta.Diff, delta.Pred (needs ref2) or
	// delta.Auto (picked from a sample; Pred only when ref2 is given).
	Residual delta.Kind
	// Threshold > 0 makes the frame lossy (float dtypes only): every
	// element is reconstructed within Threshold of its input. 0 is
	// lossless.
	Threshold float64
	// QuantBits 8 or 4 quantizes what the threshold keeps (lossy only).
	QuantBits int
	Context   delta.ContextMode
	Sparse    delta.SparseMode
	// Recon, if not nil, must have the tensor's length and receives the
	// reconstruction a decoder will produce: the input itself when
	// lossless. A chain of lossy frames uses it as the next reference
	// (closed loop), so errors never accumulate. It may be src itself.
	Recon []byte
}

// DeltaResult describes an encoded delta frame.
type DeltaResult struct {
	Len       int        // frame bytes written to dst
	Residual  delta.Kind // the residual kind used
	Identical bool       // every residual is zero: a header-only frame
	MaxErr    float64    // largest |input - reconstruction| (lossy)
	Changed   uint64     // elements with a non-zero residual or code
	Modes     [delta.MaxMode + 1]int
	// Contexts counts the changed chunks coded with each bucket count.
	Contexts [delta.MaxContexts + 1]int
}

// DeltaBound is the largest delta frame EncodeDelta can produce for rawSize
// bytes of d with ndim dimensions; chunkElems 0 means the default.
func DeltaBound(rawSize uint64, d dtype.DType, ndim int, chunkElems uint32) (uint64, error) {
	nchunks, err := boundChunks(rawSize, d, ndim, chunkElems, false)
	if err != nil {
		return 0, err
	}
	per := uint64(deltaEntryLen + delta.ChunkOverhead(d.Width()))
	return uint64(headerLen(ndim)+deltaExtMax) + 4 + nchunks*per + rawSize, nil
}

var deltaPool = newScratchPool(delta.NewScratch)

// EncodeDelta writes the delta frame of src (dtype d, the given shape)
// against ref (and ref2, for prediction; may be nil otherwise) into dst,
// which must hold DeltaBound bytes. ref and ref2 must have src's length:
// the caller vouches that they have its dtype and shape too.
func EncodeDelta(dst, src, ref, ref2 []byte, d dtype.DType, shape []uint64, opt DeltaOptions) (DeltaResult, error) {
	var res DeltaResult
	nelem, err := checkTensor(src, d, shape)
	if err != nil {
		return res, err
	}
	if len(ref) != len(src) {
		return res, fmt.Errorf("%w: the reference is %d bytes, the tensor %d: a delta needs a reference of the same dtype and shape", errs.Invalid, len(ref), len(src))
	}
	if ref2 != nil && len(ref2) != len(src) {
		return res, fmt.Errorf("%w: the second reference is %d bytes, the tensor %d", errs.Invalid, len(ref2), len(src))
	}
	if opt.Recon != nil && len(opt.Recon) != len(src) {
		return res, fmt.Errorf("%w: reconstruction buffer of %d bytes for a %d-byte tensor", errs.Invalid, len(opt.Recon), len(src))
	}
	p := delta.Params{DType: d, Kind: opt.Residual, Threshold: opt.Threshold, QuantBits: opt.QuantBits,
		Context: opt.Context, Sparse: opt.Sparse, Effort: opt.Effort}
	if p.Kind == delta.Pred && ref2 == nil {
		return res, fmt.Errorf("%w: residual kind pred needs a second reference", errs.Invalid)
	}
	// Validate everything but the kind before looking at the data (Auto
	// is resolved by Prepare below).
	pv := p
	if pv.Kind == delta.Auto {
		pv.Kind = delta.Diff
	}
	if err := pv.Validate(); err != nil {
		return res, err
	}
	ce := chunkElemsFor(opt.ChunkElems, nelem, d, false)
	bound, err := DeltaBound(uint64(len(src)), d, len(shape), ce)
	if err == nil {
		err = checkRoom(dst, bound)
	}
	if err != nil {
		return res, err
	}
	lossy := p.Lossy()
	if !lossy && bytes.Equal(src, ref) {
		// Nothing changed: a header-only frame that needs no second
		// reference.
		if p.Kind == delta.Pred || p.Kind == delta.Auto {
			p.Kind = delta.Diff
		}
		if opt.Recon != nil {
			copy(opt.Recon, src)
		}
		res.Len = putDeltaHeader(dst, d, shape, ce, uint64(len(src)), 0, &p, DeltaFlagIdentical,
			parallelCRC(ref, crcPiece, par.Threads(opt.Threads)), 0, 0)
		res.Residual, res.Identical = p.Kind, true
		return res, nil
	}
	w := d.Width()
	l := chunkLayout{entryLen: deltaEntryLen, rawSize: len(src), chunkBytes: int(ce) * w, overhead: delta.ChunkOverhead(w)}
	nchunks := l.nchunks()
	crew := hireWorkers(deltaPool, opt.Threads, nchunks)
	defer crew.release()
	delta.Prepare(&p, crew.scratch[0], src, ref, ref2)
	if p.Kind != delta.Pred {
		ref2 = nil
	}
	// The extension area's length depends on the kind Prepare resolved.
	l.headerLen = headerLen(len(shape)) + deltaExtLen(p.Kind, lossy)
	type chunkStat struct {
		maxErr        float64
		mode          delta.Mode
		contexts      int
		count         uint32
		refCRC, r2CRC uint32 // of the references' chunk, combined below
	}
	stats := make([]chunkStat, nchunks)
	n, err := encodeChunks(dst, l, crew, nil, func(s *delta.Scratch, i, lo, hi int, e, slot []byte) ([]byte, uint32, error) {
		r2 := chunkOf(ref2, lo, hi)
		r, err := s.EncodeInto(slot, src[lo:hi], ref[lo:hi], r2, &p)
		if err != nil {
			return nil, 0, err
		}
		e[8] = byte(r.Mode)
		binary.LittleEndian.PutUint32(e[9:], r.Count)
		binary.LittleEndian.PutUint32(e[13:], uint32(len(r.Payload)))
		if opt.Recon != nil && (len(r.Recon) == 0 || &opt.Recon[lo] != &r.Recon[0]) {
			copy(opt.Recon[lo:hi], r.Recon)
		}
		stats[i] = chunkStat{maxErr: r.MaxErr, mode: r.Mode, contexts: r.Contexts, count: r.Count, refCRC: crc(ref[lo:hi])}
		if ref2 != nil {
			stats[i].r2CRC = crc(r2)
		}
		return r.Payload, crc(r.Recon), nil
	})
	if err != nil {
		return res, err
	}
	// The references' checksums, from their chunks' (which the workers
	// read anyway: no separate pass over the references).
	crcs := make([]uint32, 2*nchunks)
	for i, st := range stats {
		crcs[i], crcs[nchunks+i] = st.refCRC, st.r2CRC
	}
	refCRC := combineTensorChunks(crcs[:nchunks], uint64(l.chunkBytes), uint64(l.rawSize))
	var ref2CRC uint32
	if ref2 != nil {
		ref2CRC = combineTensorChunks(crcs[nchunks:], uint64(l.chunkBytes), uint64(l.rawSize))
	}
	res.Residual = p.Kind
	allCopy := true
	for _, st := range stats {
		res.MaxErr = max(res.MaxErr, st.maxErr)
		res.Modes[st.mode]++
		if st.mode != delta.Copy {
			allCopy = false
			res.Contexts[st.contexts]++
		}
		res.Changed += uint64(st.count)
	}
	if allCopy {
		// Every chunk matched its base: the table and the (empty)
		// payloads encodeChunks wrote give way to a header-only frame.
		res.Identical = true
		res.Len = putDeltaHeader(dst, d, shape, ce, uint64(len(src)), 0, &p, DeltaFlagIdentical, refCRC, ref2CRC, res.MaxErr)
		return res, nil
	}
	putDeltaHeader(dst, d, shape, ce, uint64(len(src)), nchunks, &p, 0, refCRC, ref2CRC, res.MaxErr)
	res.Len = n
	return res, nil
}

// putDeltaHeader writes a kind 1 header with its extension area and CRC and
// returns its length.
func putDeltaHeader(dst []byte, d dtype.DType, shape []uint64, ce uint32, rawSize uint64, nchunks int, p *delta.Params, flags uint8, refCRC, ref2CRC uint32, maxErr float64) int {
	lossy := p.Lossy()
	if lossy {
		flags |= DeltaFlagLossy
	}
	hdr, ext := putHeader(dst, KindDelta, d, shape, ce, rawSize, nchunks, deltaExtLen(p.Kind, lossy))
	ext[0], ext[1], ext[2], ext[3] = byte(p.Kind), flags, byte(p.QuantBits), 0
	binary.LittleEndian.PutUint32(ext[4:], refCRC)
	off := deltaExtBase
	if p.Kind == delta.Pred {
		binary.LittleEndian.PutUint32(ext[off:], ref2CRC)
		off += deltaExtRef2
	}
	if lossy {
		binary.LittleEndian.PutUint64(ext[off:], math.Float64bits(p.Threshold))
		binary.LittleEndian.PutUint64(ext[off+8:], math.Float64bits(maxErr))
	}
	sealHeader(hdr)
	return len(hdr)
}

// DecodeDelta decodes the frame in blob (exactly one frame) into dst (at
// least RawSize bytes, not overlapping the references) and returns its
// header. A delta frame needs the reference it was encoded against, and the
// second reference too when its residual kind is Pred (ref2 is ignored
// otherwise); a missing reference or one of another length is refused with
// errs.ReferenceMismatch before anything is written, and one of another
// checksum with errs.ReferenceMismatch too (checked chunk by chunk, in
// parallel with decoding, and reported in preference to any chunk error).
// A keyframe decodes as with Decode; the references are then ignored. On
// error dst holds unspecified bytes and must not be used.
func DecodeDelta(blob, ref, ref2, dst []byte, threads int) (*Header, error) {
	h, dst, err := wholeFrame(blob, dst, ParseAny)
	if err != nil {
		return nil, err
	}
	if h.Kind == KindKeyframe {
		return h, h.DecodeChunks(blob, dst, threads)
	}
	di := h.Delta
	if err := checkRefLen("reference", ref, h.RawSize); err != nil {
		return nil, err
	}
	if di.NeedsRef2() {
		if err := checkRefLen("second reference", ref2, h.RawSize); err != nil {
			return nil, err
		}
	} else {
		ref2 = nil
	}
	p := delta.Params{DType: h.DType, Kind: di.Residual, QuantBits: di.QuantBits}
	if di.Identical || h.NChunks == 0 {
		if err := checkRefCRC("reference", parallelCRC(ref, crcPiece, par.Threads(threads)), di.RefCRC); err != nil {
			return nil, err
		}
		if ref2 != nil {
			if err := checkRefCRC("second reference", parallelCRC(ref2, crcPiece, par.Threads(threads)), di.Ref2CRC); err != nil {
				return nil, err
			}
		}
		delta.FillBase(h.DType, di.Residual, ref, ref2, dst)
		return h, nil
	}
	crew := hireWorkers(deltaPool, threads, h.NChunks)
	defer crew.release()
	// Each worker checksums its chunk of the references before decoding
	// it (which then finds the bytes in cache); the combined checksums are
	// compared at the end, and a mismatch is reported as such whatever the
	// chunks reported.
	refCRCs := make([]uint32, 2*h.NChunks)
	refDone := make([]bool, h.NChunks)
	chunkRefCRC := func(i int) {
		off, n := h.ChunkRaw(i)
		refCRCs[i] = crc(ref[off : off+n])
		if ref2 != nil {
			refCRCs[h.NChunks+i] = crc(ref2[off : off+n])
		}
		refDone[i] = true
	}
	err = crew.run(h.NChunks, func(s *delta.Scratch, i int) error {
		chunkRefCRC(i)
		c := &h.dchunks[i]
		off, n := h.ChunkRaw(i)
		stored := blob[c.off : c.off+uint64(c.len)]
		if err := checkStored(i, stored, c.scrc); err != nil {
			return err
		}
		out := dst[off : off+n]
		if err := s.Decode(c.mode, c.count, stored, ref[off:off+n], chunkOf(ref2, off, off+n), out, &p); err != nil {
			return fmt.Errorf("frame chunk %d: %w", i, err)
		}
		return checkDecoded(i, out, c.crc)
	})
	// After a failure the workers stop early: checksum what they left.
	for i := 0; i < h.NChunks; i++ {
		if !refDone[i] {
			chunkRefCRC(i)
		}
	}
	per := uint64(h.ChunkElems) * uint64(h.DType.Width())
	if e := checkRefCRC("reference", combineTensorChunks(refCRCs[:h.NChunks], per, h.RawSize), di.RefCRC); e != nil {
		return nil, e
	}
	if ref2 != nil {
		if e := checkRefCRC("second reference", combineTensorChunks(refCRCs[h.NChunks:], per, h.RawSize), di.Ref2CRC); e != nil {
			return nil, e
		}
	}
	if err != nil {
		return nil, err
	}
	return h, nil
}

// chunkOf is bytes [lo, hi) of an optional reference: nil when it is.
func chunkOf[I int | uint64](ref []byte, lo, hi I) []byte {
	if ref == nil {
		return nil
	}
	return ref[lo:hi]
}

// crcPiece is the piece size in which reference checksums are computed in
// parallel.
const crcPiece = 1 << 20

func checkRefLen(what string, ref []byte, rawSize uint64) error {
	if ref == nil && rawSize != 0 {
		return fmt.Errorf("%w: this delta frame needs its %s, none was given", errs.ReferenceMismatch, what)
	}
	if uint64(len(ref)) != rawSize {
		return fmt.Errorf("%w: the %s is %d bytes, the frame was encoded against %d bytes", errs.ReferenceMismatch, what, len(ref), rawSize)
	}
	return nil
}

func checkRefCRC(what string, got, want uint32) error {
	if got != want {
		return fmt.Errorf("%w: the %s's checksum is %08x, the frame was encoded against %08x: not the tensor this delta applies to", errs.ReferenceMismatch, what, got, want)
	}
	return nil
}
