package bundle

import (
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"unicode/utf8"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/par"
)

// Item is one tensor to add to a bundle.
type Item struct {
	Name  string
	DType dtype.DType
	Shape []uint64
	Data  []byte
	// Ref is the reference tensor (same dtype and shape) for a delta frame;
	// nil makes a keyframe. Ref2 is the older reference for prediction.
	Ref, Ref2 []byte
	// Delta holds the delta options (residual kind, threshold, quantizer,
	// context and position coding). Its ChunkElems, Threads, Effort and
	// Recon fields are ignored: the bundle sets them.
	Delta frame.DeltaOptions
	// Recon, if not nil, receives what a decoder will reconstruct (the
	// input itself unless the frame is lossy): the next reference of a
	// closed-loop chain.
	Recon []byte
}

// ItemResult reports how one item was coded.
type ItemResult struct {
	FrameLen uint64
	Keyframe bool
	// Delta describes a delta frame (zero for keyframes).
	Delta frame.DeltaResult
}

// Options tune encoding.
type Options struct {
	Threads int            // goroutines; 0: the process default
	Effort  entropy.Effort // stream coders tried
}

// smallItem is the raw size below which tensors are coded one per goroutine
// (many at once) instead of one at a time with their chunks in parallel: a
// small tensor has too few chunks to keep the cores busy, and a checkpoint
// has hundreds of them (biases, norms).
const smallItem = 1 << 20

// batchBytes caps the frame bounds of the small items coded at once, which
// is the writer's scratch memory for them.
const batchBytes = 32 << 20

// ItemBound is the largest frame Add can write for it.
func ItemBound(it *Item) (uint64, error) {
	if it.Ref == nil {
		return frame.Bound(uint64(len(it.Data)), it.DType, len(it.Shape), 0)
	}
	return frame.DeltaBound(uint64(len(it.Data)), it.DType, len(it.Shape), 0)
}

// IndexLen is the index size for these names and metaLen bytes of metadata
// (0 stands for the {} that Close stores).
func IndexLen(names []string, metaLen int) uint64 {
	if metaLen == 0 {
		metaLen = len(emptyMeta)
	}
	n := uint64(8 + metaLen)
	for _, s := range names {
		n += entryFixedLen + uint64(len(s))
	}
	return n
}

// Bound is the largest bundle Writer can make of items and metaLen bytes of
// metadata: the size of a buffer that always suffices.
func Bound(items []Item, metaLen int) (uint64, error) {
	total := uint64(PreambleLen + TrailerLen)
	names := make([]string, len(items))
	for i := range items {
		b, err := ItemBound(&items[i])
		if err != nil {
			return 0, fmt.Errorf("tensor %q: %w", items[i].Name, err)
		}
		total += b
		names[i] = items[i].Name
	}
	return total + IndexLen(names, metaLen), nil
}

// sink is where a Writer's bytes go: a caller's buffer or a stream.
type sink interface {
	// reserve returns space for up to n bytes of the next frame.
	reserve(n uint64) ([]byte, error)
	// commit appends b, which is a prefix of the last reserved space.
	commit(b []byte) error
	// write appends bytes that were not reserved.
	write(b []byte) error
}

// bufSink fills a caller's buffer. A frame is coded straight into the
// buffer when its bound fits, else into scratch and copied if the frame
// itself fits.
type bufSink struct {
	dst     []byte
	n       uint64
	scratch []byte
}

func (s *bufSink) reserve(n uint64) ([]byte, error) {
	if uint64(len(s.dst))-s.n >= n {
		return s.dst[s.n : s.n+n], nil
	}
	if uint64(cap(s.scratch)) < n {
		s.scratch = make([]byte, n)
	}
	return s.scratch[:n], nil
}

func (s *bufSink) commit(b []byte) error { return s.write(b) }

func (s *bufSink) write(b []byte) error {
	if uint64(len(s.dst))-s.n < uint64(len(b)) {
		return fmt.Errorf("%w: bundle needs more than the %d bytes given", errs.BufferTooSmall, len(s.dst))
	}
	if len(b) > 0 && &s.dst[s.n] != &b[0] { // coded in place: nothing to copy
		copy(s.dst[s.n:], b)
	}
	s.n += uint64(len(b))
	return nil
}

// streamSink writes to an io.Writer through one reused scratch buffer.
type streamSink struct {
	w       io.Writer
	scratch []byte
}

func (s *streamSink) reserve(n uint64) ([]byte, error) {
	if uint64(cap(s.scratch)) < n {
		s.scratch = make([]byte, n)
	}
	return s.scratch[:n], nil
}

func (s *streamSink) commit(b []byte) error { return s.write(b) }

func (s *streamSink) write(b []byte) error {
	if _, err := s.w.Write(b); err != nil {
		return fmt.Errorf("%w: bundle write: %v", errs.IO, err)
	}
	return nil
}

// Writer makes a bundle front to back: Add tensors, then Close with the
// metadata. After any error the Writer is unusable and the output is
// incomplete (a file destination is then discarded by its owner).
type Writer struct {
	out      sink
	off      uint64
	entries  []Entry
	names    map[string]struct{}
	batch    []byte
	err      error
	closed   bool
	preamble [PreambleLen]byte
}

// NewWriter starts a bundle on w.
func NewWriter(w io.Writer) (*Writer, error) {
	return newWriter(&streamSink{w: w})
}

// NewBufferWriter starts a bundle in dst; Close returns its length. A dst of
// Bound bytes always suffices.
func NewBufferWriter(dst []byte) (*Writer, error) {
	return newWriter(&bufSink{dst: dst})
}

func newWriter(s sink) (*Writer, error) {
	w := &Writer{out: s, names: map[string]struct{}{}}
	pre := w.preamble[:]
	copy(pre, Magic[:])
	pre[4], pre[5] = VersionMajor, VersionMinor
	if err := s.write(pre); err != nil {
		return nil, err
	}
	w.off = PreambleLen
	return w, nil
}

func (w *Writer) check(it *Item) error {
	switch {
	case it.Name == "":
		return fmt.Errorf("%w: a tensor name is empty", errs.Invalid)
	case len(it.Name) > MaxNameLen:
		return fmt.Errorf("%w: tensor name of %d bytes (max %d)", errs.Invalid, len(it.Name), MaxNameLen)
	case !utf8.ValidString(it.Name):
		return fmt.Errorf("%w: tensor name %q is not valid UTF-8", errs.Invalid, it.Name)
	case len(w.entries) >= MaxEntries:
		return fmt.Errorf("%w: more than %d tensors in one bundle", errs.Invalid, MaxEntries)
	}
	if _, dup := w.names[it.Name]; dup {
		return fmt.Errorf("%w: tensor %q is added twice", errs.Invalid, it.Name)
	}
	if it.Recon != nil && len(it.Recon) != len(it.Data) {
		return fmt.Errorf("%w: tensor %q: reconstruction buffer of %d bytes for %d", errs.Invalid, it.Name, len(it.Recon), len(it.Data))
	}
	w.names[it.Name] = struct{}{}
	return nil
}

// Add codes items in order and appends their frames. results, if not nil,
// must have len(items) entries and receives how each was coded.
func (w *Writer) Add(items []Item, opt Options, results []ItemResult) error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return fmt.Errorf("%w: bundle writer is closed", errs.Invalid)
	}
	if results != nil && len(results) != len(items) {
		return fmt.Errorf("%w: %d results for %d items", errs.Invalid, len(results), len(items))
	}
	if results == nil {
		results = make([]ItemResult, len(items))
	}
	w.err = w.add(items, opt, results)
	return w.err
}

func (w *Writer) add(items []Item, opt Options, results []ItemResult) error {
	bounds := make([]uint64, len(items))
	for i := range items {
		if err := w.check(&items[i]); err != nil {
			return err
		}
		b, err := ItemBound(&items[i])
		if err != nil {
			return fmt.Errorf("tensor %q: %w", items[i].Name, err)
		}
		bounds[i] = b
	}
	threads := par.Threads(opt.Threads)
	for i := 0; i < len(items); {
		if len(items[i].Data) >= smallItem || threads == 1 {
			buf, err := w.out.reserve(bounds[i])
			if err != nil {
				return err
			}
			n, err := encodeItem(buf, &items[i], threads, opt.Effort, &results[i])
			if err != nil {
				return err
			}
			if err := w.emit(items[i].Name, buf[:n]); err != nil {
				return err
			}
			i++
			continue
		}
		// A run of small items: code them concurrently into slots of
		// one scratch buffer, then append them in order.
		j, total := i, uint64(0)
		for j < len(items) && len(items[j].Data) < smallItem && (j == i || total+bounds[j] <= batchBytes) {
			total += bounds[j]
			j++
		}
		if uint64(cap(w.batch)) < total {
			w.batch = make([]byte, total)
		}
		slots := make([][]byte, j-i)
		lens := make([]int, j-i)
		at := uint64(0)
		for k := range slots {
			slots[k] = w.batch[at : at+bounds[i+k]]
			at += bounds[i+k]
		}
		err := par.For(j-i, threads, func(_, k int) error {
			n, err := encodeItem(slots[k], &items[i+k], 1, opt.Effort, &results[i+k])
			lens[k] = n
			return err
		})
		if err != nil {
			return err
		}
		for k := range slots {
			dst, err := w.out.reserve(uint64(lens[k]))
			if err != nil {
				return err
			}
			copy(dst, slots[k][:lens[k]])
			if err := w.emit(items[i+k].Name, dst[:lens[k]]); err != nil {
				return err
			}
		}
		i = j
	}
	return nil
}

func (w *Writer) emit(name string, f []byte) error {
	if err := w.out.commit(f); err != nil {
		return err
	}
	w.entries = append(w.entries, Entry{Name: name, Offset: w.off, Length: uint64(len(f))})
	w.off += uint64(len(f))
	return nil
}

// encodeItem codes one item into dst (at least its bound).
func encodeItem(dst []byte, it *Item, threads int, effort entropy.Effort, res *ItemResult) (int, error) {
	if it.Ref == nil {
		n, err := frame.Encode(dst, it.Data, it.DType, it.Shape, frame.Options{Threads: threads, Effort: effort})
		if err != nil {
			return 0, fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		if it.Recon != nil {
			copy(it.Recon, it.Data)
		}
		*res = ItemResult{FrameLen: uint64(n), Keyframe: true}
		return n, nil
	}
	opt := it.Delta
	opt.ChunkElems, opt.Threads, opt.Effort, opt.Recon = 0, threads, effort, it.Recon
	r, err := frame.EncodeDelta(dst, it.Data, it.Ref, it.Ref2, it.DType, it.Shape, opt)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", it.Name, err)
	}
	*res = ItemResult{FrameLen: uint64(r.Len), Delta: r}
	if len(it.Data) >= keyframeTryMin && uint64(r.Len)*keyframeTryDen > uint64(len(it.Data))*keyframeTryNum {
		return tryKeyframe(dst, it, threads, effort, res)
	}
	return r.Len, nil
}

// A delta frame above keyframeTryNum/keyframeTryDen of the raw size is
// compared with a keyframe, and the smaller is kept: a tensor that changed
// wholesale (re-initialised, or a large step in a wide float) codes better
// alone, and a delta checkpoint should never cost more than a full one.
// Real fine-tuning deltas stay well below the mark, so the second encode is
// rare. Tensors under keyframeTryMin bytes are left alone: their frames are
// mostly header either way.
const (
	keyframeTryNum = 3
	keyframeTryDen = 4
	keyframeTryMin = 4096
)

var keyframeScratch = sync.Pool{New: func() any { return new([]byte) }}

func tryKeyframe(dst []byte, it *Item, threads int, effort entropy.Effort, res *ItemResult) (int, error) {
	bound, err := frame.Bound(uint64(len(it.Data)), it.DType, len(it.Shape), 0)
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", it.Name, err)
	}
	sp := keyframeScratch.Get().(*[]byte)
	defer keyframeScratch.Put(sp)
	if uint64(cap(*sp)) < bound {
		*sp = make([]byte, bound)
	}
	buf := (*sp)[:bound]
	n, err := frame.Encode(buf, it.Data, it.DType, it.Shape, frame.Options{Threads: threads, Effort: effort})
	if err != nil {
		return 0, fmt.Errorf("tensor %q: %w", it.Name, err)
	}
	if uint64(n) >= res.FrameLen {
		return int(res.FrameLen), nil
	}
	copy(dst, buf[:n])
	if it.Recon != nil {
		copy(it.Recon, it.Data) // a keyframe is lossless
	}
	*res = ItemResult{FrameLen: uint64(n), Keyframe: true}
	return n, nil
}

// Close appends the index with meta (a JSON object; nil or empty is {})
// and the trailer, and returns the bundle's total length.
func (w *Writer) Close(meta []byte) (uint64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, fmt.Errorf("%w: bundle writer is closed", errs.Invalid)
	}
	w.closed = true
	if len(meta) == 0 {
		meta = emptyMeta
	}
	if err := checkMeta(meta); err != nil {
		w.err = fmt.Errorf("%w: bundle: %v", errs.Invalid, err)
		return 0, w.err
	}
	index := make([]byte, 0, w.indexLen(len(meta)))
	index = binary.LittleEndian.AppendUint32(index, uint32(len(w.entries)))
	for _, e := range w.entries {
		index = binary.LittleEndian.AppendUint16(index, uint16(len(e.Name)))
		index = append(index, e.Name...)
		index = binary.LittleEndian.AppendUint64(index, e.Offset)
		index = binary.LittleEndian.AppendUint64(index, e.Length)
	}
	index = binary.LittleEndian.AppendUint32(index, uint32(len(meta)))
	index = append(index, meta...)
	var tr [TrailerLen]byte
	binary.LittleEndian.PutUint64(tr[0:8], uint64(len(index)))
	binary.LittleEndian.PutUint32(tr[8:12], indexCRC(w.preamble[:], index))
	copy(tr[12:], TrailerMagic[:])
	if err := w.out.write(index); err != nil {
		w.err = err
		return 0, err
	}
	if err := w.out.write(tr[:]); err != nil {
		w.err = err
		return 0, err
	}
	return w.off + uint64(len(index)) + TrailerLen, nil
}

// emptyMeta is what Close stores for empty metadata.
var emptyMeta = []byte("{}")

// indexLen is the length of the index Close writes for the tensors added
// so far and metaLen bytes of metadata (0 stands for {}).
func (w *Writer) indexLen(metaLen int) uint64 {
	if metaLen == 0 {
		metaLen = len(emptyMeta)
	}
	n := uint64(8 + metaLen)
	for _, e := range w.entries {
		n += entryFixedLen + uint64(len(e.Name))
	}
	return n
}

// Len is the number of tensors added so far.
func (w *Writer) Len() int { return len(w.entries) }
