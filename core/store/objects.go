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
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/mapped"
)

var umaskOnce = sync.OnceValue(func() fs.FileMode {
	// /proc/self/status reads the umask without changing it; umask(2)
	// would have to set it, and another thread could create a file in the
	// moment between.
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return fs.FileMode(m)
				}
			}
		}
	}
	old := syscall.Umask(0o022)
	syscall.Umask(old)
	return fs.FileMode(old)
})

func umask() fs.FileMode { return umaskOnce() }

// objectWriter streams one object into tmp/ while hashing it; commit links
// it under its hash. Linking, not renaming, is what makes objects write-once:
// if the name exists the content is the same (it is named by its hash), and
// the existing one is kept.
type objectWriter struct {
	s    *Store
	f    *os.File
	buf  *bufio.Writer
	h    hash.Hash
	n    uint64
	done bool
}

func (s *Store) newObject() (*objectWriter, error) {
	f, err := os.CreateTemp(s.path("tmp"), "obj-*")
	if err != nil {
		return nil, ioErr(s.path("tmp"), err)
	}
	w := &objectWriter{s: s, f: f, h: sha256.New()}
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
	defer w.abort()
	if err := w.buf.Flush(); err != nil {
		return Object{}, ioErr(w.f.Name(), err)
	}
	if err := w.f.Close(); err != nil {
		return Object{}, ioErr(w.f.Name(), err)
	}
	name := hex.EncodeToString(w.h.Sum(nil))
	if err := fixMode(w.f.Name()); err != nil {
		return Object{}, err
	}
	dst := w.s.objectPath(name)
	if err := os.Mkdir(filepath.Dir(dst), 0o777); err != nil && !errors.Is(err, fs.ErrExist) {
		return Object{}, ioErr(filepath.Dir(dst), err)
	}
	if err := os.Link(w.f.Name(), dst); err != nil && !errors.Is(err, fs.ErrExist) {
		return Object{}, ioErr(dst, err)
	}
	return Object{Object: name, Stored: w.n}, nil
}

func (w *objectWriter) abort() {
	if !w.done {
		w.done = true
		_ = w.f.Close()
		_ = os.Remove(w.f.Name())
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
		return Object{}, ioErr(w.f.Name(), err)
	}
	return w.commit()
}

// syncAll makes every object written so far durable: syncfs(2) flushes the
// file system the store is on, data and directory entries alike, and
// reports a write-back error of any of them.
func (s *Store) syncAll() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return ioErr(s.dir, err)
	}
	defer d.Close()
	if sysSyncfs == 0 {
		syscall.Sync() // flushes every file system; reports nothing
		return nil
	}
	if _, _, e := syscall.Syscall(sysSyncfs, d.Fd(), 0, 0); e != 0 {
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

// openObject maps object h and checks that its content has that hash:
// an object that lies about what it holds is refused before anything
// decodes it. want is the size the record gives.
func (s *Store) openObject(h string, want uint64, what string) (*object, error) {
	return s.mapObject(h, want, what, true)
}

// openFrame maps a frame object without hashing it: a frame checks its
// own bytes (CRC32C of every chunk, stored and decoded), and what a region
// decodes to is checked against the sha256 it was added with
// (decodeRegion), which also catches a record naming the wrong object.
// Hashing the object too would cost a pass over it on every load.
func (s *Store) openFrame(h string, want uint64, what string) (*object, error) {
	return s.mapObject(h, want, what, false)
}

func (s *Store) mapObject(h string, want uint64, what string, hashed bool) (*object, error) {
	p := s.objectPath(h)
	st, err := os.Lstat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%w: %s: object %s is missing", errs.Corrupt, what, h)
		}
		return nil, ioErr(p, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%w: %s: object %s is not a regular file", errs.Corrupt, what, h)
	}
	if uint64(st.Size()) != want {
		return nil, fmt.Errorf("%w: %s: object %s is %d bytes, the record says %d", errs.Corrupt, what, h, st.Size(), want)
	}
	if want == 0 {
		return &object{Data: []byte{}}, checkHash(nil, h, what)
	}
	in, err := mapped.Open(p, "")
	if err != nil {
		return nil, err
	}
	o := &object{in: in, Data: in.Data}
	if !hashed {
		return o, nil
	}
	if err := mapped.Reading(p, func() error { return checkHash(o.Data, h, what) }); err != nil {
		o.release()
		return nil, err
	}
	return o, nil
}

func checkHash(b []byte, h, what string) error {
	if got := hashHex(b); got != h {
		return fmt.Errorf("%w: %s: object %s is damaged (its content hashes to %s)", errs.Corrupt, what, h, got)
	}
	return nil
}
