package store

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"syscall"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/mapped"
)

// objectWriter streams one object into tmp/ while hashing it; commit links
// it under its hash. Linking, not renaming, is what makes objects write-once:
// if the name exists the content is the same (it is named by its hash), and
// the existing one is kept. Files are created 0666, so the kernel gives
// them the umask: objects are as private as the user's other files.
type objectWriter struct {
	s    *Store
	f    *os.File
	name string // in tmp/
	buf  *bufio.Writer
	h    hash.Hash
	n    uint64
	done bool
}

func (s *Store) newObject() (*objectWriter, error) {
	if s.tmp == nil {
		return nil, fmt.Errorf("%w: the store was opened read-only", errs.Invalid)
	}
	f, name, err := s.tmp.CreateTemp("obj-")
	if err != nil {
		return nil, err
	}
	w := &objectWriter{s: s, f: f, name: name, h: sha256.New()}
	w.buf = bufio.NewWriterSize(writerFunc(w.write), 1<<20)
	return w, nil
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(b []byte) (int, error) { return f(b) }

func (w *objectWriter) write(b []byte) (int, error) {
	if err := writeAll(w.f, b); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (w *objectWriter) Write(b []byte) (int, error) {
	w.h.Write(b)
	w.n += uint64(len(b))
	return w.buf.Write(b)
}

// commit publishes the object under its hash. Durability comes later, from
// one syncfs before the manifest that names it (Tx.Commit): an fsync per
// object would cost a disk flush per tensor.
func (w *objectWriter) commit() (Object, error) {
	name, err := w.finish()
	if err != nil {
		return Object{}, err
	}
	return Object{Object: name, Stored: w.n}, w.linkAs(name, name)
}

// finish flushes and closes the file and returns the object's name.
func (w *objectWriter) finish() (string, error) {
	if err := w.buf.Flush(); err != nil {
		w.abort()
		return "", ioErr(w.s.tmp.Path(w.name), err)
	}
	startWriteback(w.f)
	if err := w.f.Close(); err != nil {
		w.abort()
		return "", ioErr(w.s.tmp.Path(w.name), err)
	}
	return hex.EncodeToString(w.h.Sum(nil)), nil
}

// linkAs links the finished file as objects/<h[:2]>/<name> (name is h, or
// h + ".copy" for a record's second copy) and removes it from tmp/.
func (w *objectWriter) linkAs(h, name string) error {
	defer w.abort()
	sub, err := w.s.objects.MkdirAll(h[:2])
	if err != nil {
		return err
	}
	defer sub.Close()
	switch err := w.s.tmp.Link(w.name, sub, name); {
	case err == nil:
		w.s.objectBytes.Add(int64(w.n))
	case !errors.Is(err, syscall.EEXIST):
		return err
	}
	w.s.noteWritten(name)
	if w.s.remote != nil {
		// Linked or already there (an earlier add that did not commit may
		// have left it): either way the next commit uploads it.
		w.s.linked(h, name, w.n)
	}
	return nil
}

func (w *objectWriter) abort() {
	if !w.done {
		w.done = true
		_ = w.f.Close()
		_ = w.s.tmp.Remove(w.name)
	}
}

// putBytes stores b as an object.
func (s *Store) putBytes(b []byte) (Object, error) {
	w, err := s.newObject()
	if err != nil {
		return Object{}, err
	}
	if _, err := w.Write(b); err != nil {
		w.abort()
		return Object{}, ioErr(s.tmp.Path(w.name), err)
	}
	return w.commit()
}

// putAs stores b, whose hash is h, as objects/<h[:2]>/<name>: a record's
// second copy (name h.copy, docs/FORMAT.md §11.2), a separate file so that
// damage to one leaves the other. It is linked, never replacing (a file of
// that name holds the same bytes); with replace it is renamed over a
// damaged file of that name (repair).
func (s *Store) putAs(h, name string, b []byte, replace bool) error {
	w, err := s.newObject()
	if err != nil {
		return err
	}
	if _, err := w.Write(b); err != nil {
		w.abort()
		return ioErr(s.tmp.Path(w.name), err)
	}
	if _, err := w.finish(); err != nil {
		return err
	}
	if !replace {
		return w.linkAs(h, name)
	}
	defer w.abort()
	sub, err := s.objects.MkdirAll(h[:2])
	if err != nil {
		return err
	}
	defer sub.Close()
	if st, err := sub.Stat(name); err == nil && st.IsDir() {
		// A folder planted at the name: a rename cannot replace it.
		if err := sub.RemoveAll(name); err != nil {
			return err
		}
	}
	return s.tmp.Rename(w.name, sub, name)
}

// syncAll makes every object written so far durable: syncfs(2) flushes the
// file system the store is on, data and directory entries alike, and
// reports a write-back error of any of them.
func (s *Store) syncAll() error {
	if sysSyncfs == 0 {
		syscall.Sync() // flushes every file system; reports nothing
		return nil
	}
	if _, _, e := syscall.Syscall(sysSyncfs, uintptr(s.root.Fd()), 0, 0); e != 0 {
		return errs.IOf(s.dir, e, "syncfs: %v", e)
	}
	return nil
}

// object is a stored object mapped for reading.
type object struct {
	in   *mapped.Input
	Data []byte
}

func (o *object) release() {
	if o.in != nil {
		o.in.Release()
	}
}

// objectInfo describes the object file rel (h or h.copy) without
// following it.
func (s *Store) objectInfo(rel string) (dirfd.Info, error) {
	if s.objects == nil {
		return dirfd.Info{}, errs.IOf(s.path("objects"), syscall.ENOENT, "no such folder")
	}
	sub, err := s.objects.OpenDir(rel[:2])
	if err != nil {
		return dirfd.Info{}, err
	}
	defer sub.Close()
	return sub.Stat(rel)
}

// openObject maps object h and checks that its content has that hash:
// an object that lies about what it holds is refused before anything
// decodes it. want is the size the record gives.
func (s *Store) openObject(h string, want uint64, what string) (*object, error) {
	return s.mapObject(h, h, want, what, true)
}

// openFrame maps a frame object without hashing it: a frame checks its
// own bytes (CRC32C of every chunk, stored and decoded), and what a region
// decodes to is checked against the sha256 it was added with
// (decodeRegion), which also catches a record naming the wrong object.
// Hashing the object too would cost a pass over it on every load.
func (s *Store) openFrame(h string, want uint64, what string) (*object, error) {
	return s.mapObject(h, h, want, what, false)
}

// mapObject maps the object file name (h, or h.copy) below objects/,
// refusing anything but a regular file of the store's own (a symlink, a
// FIFO or a device planted there is never opened for reading). want is
// its size, or anySize.
func (s *Store) mapObject(h, name string, want uint64, what string, hashed bool) (*object, error) {
	if s.objects == nil {
		return nil, missingError{fmt.Errorf("%w: %s: object %s is missing (the store has no objects folder)", errs.Corrupt, what, h)}
	}
	f, err := s.objects.Open(h[:2] + "/" + name)
	if errors.Is(err, fs.ErrNotExist) && s.remote != nil && validHash(h) {
		// Not in the cache yet: fetched (and checked) from the remote.
		if err := s.fetchObject(h, name, want); err != nil {
			return nil, err
		}
		f, err = s.objects.Open(h[:2] + "/" + name)
	}
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, missingError{fmt.Errorf("%w: %s: object %s is missing", errs.Corrupt, what, name)}
		}
		if h := hostile(err); h != err {
			return nil, fmt.Errorf("%w: %s: object %s: %v", errs.Corrupt, what, name, err)
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return nil, ioErr(f.Name(), err)
	}
	if want != anySize && uint64(st.Size()) != want {
		_ = f.Close()
		return nil, fmt.Errorf("%w: %s: object %s is %d bytes, the record says %d", errs.Corrupt, what, name, st.Size(), want)
	}
	if st.Size() == 0 {
		_ = f.Close()
		return &object{Data: []byte{}}, checkHash(nil, h, what)
	}
	in, err := mapped.Map(f, st.Size())
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	o := &object{in: in, Data: in.Data}
	if !hashed {
		return o, nil
	}
	if err := mapped.Reading(f.Name(), func() error { return checkHash(o.Data, h, what) }); err != nil {
		o.release()
		return nil, err
	}
	return o, nil
}

// missingError is an object that is not there at all (rather than
// damaged): a record copy a store written before copies never had.
type missingError struct{ error }

func (e missingError) Unwrap() error { return e.error }

func isMissing(err error) bool {
	var m missingError
	return errors.As(err, &m)
}

// anySize: mapObject takes the object at whatever size it has (a record,
// whose size no manifest gives).
const anySize = ^uint64(0)

func checkHash(b []byte, h, what string) error {
	if got := hashHex(b); got != h {
		return fmt.Errorf("%w: %s: object %s is damaged (its content hashes to %s)", errs.Corrupt, what, h, got)
	}
	return nil
}
