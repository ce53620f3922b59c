package api

// Sessions: what a caller holds between calls, behind handle numbers
// (core/handles: one counter for every table, never reused, so a stale
// handle is refused rather than reaching another object). Each session
// keeps the document its last call left (results.go); a call on no
// session keeps it for its Caller.

import (
	"fmt"
	"sync"

	"github.com/tpde/tpde/core/bundle"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/handles"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/store"
)

// session is what every session has: a lock, held for the whole of a
// call on it (a handle is for one thread at a time; the lock makes a
// second thread wait rather than race), and the last call's document.
type session struct {
	sync.Mutex
	doc []byte
}

// keep makes v the session's document; the caller holds the lock.
func (s *session) keep(v any) error {
	b, err := encode(v)
	if err == nil {
		s.doc = b
	}
	return err
}

func (s *session) result() []byte {
	s.Lock()
	defer s.Unlock()
	return s.doc
}

// storeSession is an open store: read, write (holding the writer lock)
// or stage (one participant of a multi-writer commit), with at most one
// checkpoint (or part) being added.
type storeSession struct {
	session
	s  *store.Store
	tx *store.Tx
	// prio is the priority of the session's work (StoreConfig.Priority).
	prio par.Priority
}

// readerSession reads one committed snapshot of a store.
type readerSession struct {
	session
	rd *store.Reader
}

// bundleWriter is a bundle being written, to a file or into the
// caller's memory piece by piece.
type bundleWriter struct {
	session
	s *bundle.Stream
}

// bundleReader is an opened bundle. Its document (the index) is made
// once, at open, and decodes do not take the lock: many threads may
// decode from one opened bundle at once.
type bundleReader struct {
	session
	r *bundle.Reader
}

var (
	stores        = handles.New[*storeSession]("store")
	readers       = handles.New[*readerSession]("store reader")
	bundleWriters = handles.New[*bundleWriter]("bundle writer")
	bundleReaders = handles.New[*bundleReader]("bundle")
)

// locker is what every session is.
type locker interface {
	Lock()
	Unlock()
}

// with runs fn on the session behind h, holding its lock.
func with[T locker](t *handles.Table[T], h uint64, fn func(T) error) error {
	s, err := t.Get(h)
	if err != nil {
		return err
	}
	s.Lock()
	defer s.Unlock()
	return fn(s)
}

// Caller names who keeps the document of a call that acts on no session
// (tpde_inspect, tpde_file_info, ...). In the C ABI it is the calling
// thread, as errno is: the document stays until that thread's next such
// call replaces it.
type Caller uint64

var callers = struct {
	sync.Mutex
	docs map[Caller][]byte
}{docs: map[Caller][]byte{}}

// keepFor makes v the document of caller c.
func keepFor(c Caller, v any) error {
	b, err := encode(v)
	if err != nil {
		return err
	}
	callers.Lock()
	callers.docs[c] = b
	callers.Unlock()
	return nil
}

// Result is the document the last call on handle h left, or, for h 0,
// the one caller c's last call on no session left. The bytes are never
// changed afterwards (a later call replaces them), so the caller may keep
// them.
func Result(h uint64, c Caller) ([]byte, error) {
	if h == 0 {
		callers.Lock()
		doc, ok := callers.docs[c]
		callers.Unlock()
		if !ok {
			return nil, fmt.Errorf("%w: no call on no handle has left a result for this caller (thread)", errs.Invalid)
		}
		return doc, nil
	}
	if s, err := stores.Get(h); err == nil {
		return s.result(), nil
	}
	if s, err := readers.Get(h); err == nil {
		return s.result(), nil
	}
	if s, err := bundleWriters.Get(h); err == nil {
		return s.result(), nil
	}
	if s, err := bundleReaders.Get(h); err == nil {
		return s.result(), nil
	}
	return nil, fmt.Errorf("%w: handle %d is not open", errs.Invalid, h)
}

// CopyResult copies Result(h, c) into out and returns its length: when
// out is shorter, it copies nothing and returns the length with an
// errs.BufferTooSmall error, for the caller to call again with room for
// it (the document stays where it is).
func CopyResult(h uint64, c Caller, out []byte) (uint64, error) {
	doc, err := Result(h, c)
	if err != nil {
		return 0, err
	}
	if len(doc) > len(out) {
		return uint64(len(doc)), fmt.Errorf("%w: the result is %d bytes, %d given", errs.BufferTooSmall, len(doc), len(out))
	}
	copy(out, doc)
	return uint64(len(doc)), nil
}

// open is how many sessions of each kind are open, for tests.
func open() [4]int {
	return [4]int{stores.Len(), readers.Len(), bundleWriters.Len(), bundleReaders.Len()}
}
