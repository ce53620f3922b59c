package bundle

import (
	"fmt"

	"github.com/tpde/tpde/core/atomicfile"
	"github.com/tpde/tpde/core/errs"
)

// Stream is a bundle written across several calls, as the C ABI's writer
// handles write one: to a file (CreateFile), published atomically at
// Close, or into the caller's memory (NewPieces), piece by piece. A memory
// stream writes each call's bytes into the buffer that call is given and
// keeps no reference to it afterwards, so a caller across the ABI may hand
// it any memory it likes, call by call; the bundle is the concatenation of
// the pieces. A Stream is used by one goroutine at a time.
type Stream struct {
	w      *Writer
	file   *atomicfile.File // nil for a memory stream
	pieces *pieceSink       // nil for a file stream
	ended  bool
}

// CreateFile starts a bundle in a temporary file beside path.
func CreateFile(path string) (*Stream, error) {
	f, err := atomicfile.Create(path, atomicfile.Options{})
	if err != nil {
		return nil, err
	}
	w, err := NewWriter(f)
	if err != nil {
		f.Abort()
		return nil, err
	}
	return &Stream{w: w, file: f}, nil
}

// NewPieces starts a bundle in caller memory.
func NewPieces() *Stream {
	s := &pieceSink{}
	w, err := newWriter(s)
	if err != nil {
		// The preamble waits in s.pending: writing it cannot fail.
		panic(err)
	}
	return &Stream{w: w, pieces: s}
}

// InMemory reports whether the stream writes into caller memory.
func (s *Stream) InMemory() bool { return s.pieces != nil }

// Ended reports whether the stream is finished (committed or abandoned);
// an ended stream refuses every call.
func (s *Stream) Ended() bool { return s.ended }

func (s *Stream) usable() error {
	if s.ended {
		return fmt.Errorf("%w: bundle writer is closed", errs.Invalid)
	}
	return nil
}

// Add codes items and appends their frames, and returns how many bytes it
// appended. A file stream takes no dst. A memory stream writes into dst
// from its start (the first call's bytes begin with the preamble) and
// needs len(dst) >= Bound(items, 0); a smaller dst is refused before
// anything is coded, and the stream stays usable.
func (s *Stream) Add(dst []byte, items []Item, opt Options, results []ItemResult) (uint64, error) {
	if err := s.usable(); err != nil {
		return 0, err
	}
	if s.pieces == nil {
		if len(dst) != 0 {
			return 0, fmt.Errorf("%w: a bundle writer to a file takes no output buffer", errs.Invalid)
		}
		before := s.w.off
		err := s.w.Add(items, opt, results)
		return s.w.off - before, err
	}
	need, err := Bound(items, 0)
	if err != nil {
		return 0, err
	}
	if uint64(len(dst)) < need {
		return 0, fmt.Errorf("%w: %d bytes given for %d tensors, %d needed (their bound)", errs.BufferTooSmall, len(dst), len(items), need)
	}
	s.pieces.begin(dst)
	err = s.w.Add(items, opt, results)
	return s.pieces.end(), err
}

// CloseLen is the length of the last piece Close writes with metaLen bytes
// of metadata (0 is {}): the index, the trailer, and the preamble if no
// Add wrote it.
func (s *Stream) CloseLen(metaLen int) uint64 {
	n := uint64(TrailerLen) + s.w.indexLen(metaLen)
	if s.pieces != nil {
		n += uint64(len(s.pieces.pending))
	}
	return n
}

// Close ends the stream and returns the bundle's total length. With
// commit, it appends meta (a JSON object; empty is {}), the index and the
// trailer, and a file stream fsyncs and renames its file into place;
// without commit, or on any error, a file stream removes its temporary
// file. A memory stream writes its last piece (CloseLen bytes) into dst; a
// dst too small for it fails with errs.BufferTooSmall and leaves the
// stream open, so that the caller may call again with more room.
func (s *Stream) Close(dst, meta []byte, commit bool) (uint64, error) {
	if err := s.usable(); err != nil {
		return 0, err
	}
	if !commit {
		s.end()
		return 0, nil
	}
	if s.pieces == nil {
		defer s.end()
		if len(dst) != 0 {
			return 0, fmt.Errorf("%w: a bundle writer to a file takes no output buffer", errs.Invalid)
		}
		total, err := s.w.Close(meta)
		if err != nil {
			return 0, err
		}
		if err := s.file.Commit(); err != nil {
			return 0, err
		}
		return total, nil
	}
	need := s.CloseLen(len(meta))
	if uint64(len(dst)) < need {
		return s.w.off + need - uint64(len(s.pieces.pending)), fmt.Errorf("%w: the bundle's last %d bytes do not fit in %d", errs.BufferTooSmall, need, len(dst))
	}
	defer s.end()
	s.pieces.begin(dst)
	total, err := s.w.Close(meta)
	s.pieces.end()
	return total, err
}

func (s *Stream) end() {
	s.ended = true
	if s.file != nil {
		s.file.Abort() // a no-op once committed
	}
}

// pieceSink is a bufSink over whatever buffer the current call gave;
// between calls it holds none. Bytes written between calls (the preamble,
// written when the Writer starts) wait in pending for the next buffer.
type pieceSink struct {
	bufSink
	pending []byte
}

func (s *pieceSink) begin(dst []byte) {
	s.dst, s.n = dst, 0
	if len(s.pending) > 0 {
		// The callers checked that dst holds the pending bytes.
		copy(dst, s.pending)
		s.n = uint64(len(s.pending))
		s.pending = nil
	}
}

// end forgets the call's buffer and returns the bytes written into it.
func (s *pieceSink) end() uint64 {
	n := s.n
	s.dst, s.n = nil, 0
	return n
}

func (s *pieceSink) write(b []byte) error {
	if s.dst == nil {
		s.pending = append(s.pending, b...)
		return nil
	}
	return s.bufSink.write(b)
}

func (s *pieceSink) commit(b []byte) error { return s.write(b) }
