// Package store keeps a training run's checkpoints in one directory
// (docs/FORMAT.md §18): immutable content-addressed objects, and manifest
// generations that say which exist. A commit writes every object, makes
// them durable, and only then publishes the next manifest generation, so a
// writer killed at any moment leaves the last committed state intact.
//
// Layout:
//
//	tpde-store.json              what this directory is, and its layout version
//	manifests/<generation>.json  the newest generation that exists is the store
//	objects/<hh>/<sha256>        frames, zstd blobs and checkpoint records
//	tmp/                         a writer's unfinished objects (removed on open)
//	writer.lock, readers.lock    flock(2) locks: one writer, readers beside it
package store

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/errs"
)

// DefaultKeyframeInterval is K when a store is created without one: a
// random-access load decodes at most this many frames per tensor.
const DefaultKeyframeInterval = 10

// Options tune Open.
type Options struct {
	// Write opens the store for adding and removing (creating it if the
	// directory is missing or empty) and takes the writer lock.
	Write bool
	// Config for a new store. On an existing store, a zero field means
	// "as stored"; a field that differs from the store's is an error.
	KeyframeInterval int
	Reference        string
	Lossy            []LossyRule
	// LossySet says that Lossy was given (an empty list is "lossless").
	LossySet bool
	Threads  int
	// Positions is how delta frames code the positions of changed
	// elements (delta.SparseAuto picks per chunk). It is the writer's
	// choice, not the store's: any decoder reads every mode, so it is not
	// recorded in the config.
	Positions delta.SparseMode
}

// Store is an open store. It is not safe for concurrent use by several
// goroutines; separate Store values (or processes) may read at once.
type Store struct {
	dir     string
	write   bool
	wlock   *os.File
	threads int
	// positions is Options.Positions, for every delta frame this Store codes.
	positions delta.SparseMode
	cfg       Config // for a new store, until its first commit
	// gen is the generation the writer last committed or loaded.
	gen uint64
	// opened is what Open's cleanup removed, for Repair to report.
	opened Cleaned
}

func (s *Store) path(parts ...string) string {
	return filepath.Join(append([]string{s.dir}, parts...)...)
}

func ioErr(path string, err error) error {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errs.IOf(path, errno, "%v", err)
	}
	return fmt.Errorf("%w: %s: %w", errs.IO, path, err)
}

// Open opens the store in dir.
func Open(dir string, opt Options) (*Store, error) {
	s := &Store{dir: dir, write: opt.Write, threads: opt.Threads, positions: opt.Positions}
	marker := s.path("tpde-store.json")
	b, err := os.ReadFile(marker)
	switch {
	case err == nil:
		if err := checkMarker(marker, b); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist) && opt.Write:
		if err := s.create(); err != nil {
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		if _, serr := os.Stat(dir); serr != nil {
			return nil, ioErr(dir, serr)
		}
		return nil, fmt.Errorf("%w: %s is not a tpde store (no tpde-store.json)", errs.Invalid, dir)
	default:
		return nil, ioErr(marker, err)
	}
	if opt.Write {
		if err := s.lockWriter(); err != nil {
			return nil, err
		}
		// Empty folders do not survive every copy (git keeps none): a
		// store copied without them is still a store.
		for _, d := range []string{"manifests", "objects", "tmp"} {
			if err := os.MkdirAll(s.path(d), 0o777); err != nil {
				s.Close()
				return nil, ioErr(s.path(d), err)
			}
		}
	}
	m, err := s.newestManifest()
	if err != nil {
		s.Close()
		return nil, err
	}
	s.cfg = Config{KeyframeInterval: DefaultKeyframeInterval, Reference: RefPrevious, Lossy: []LossyRule{}}
	if m != nil {
		s.cfg, s.gen = m.Config, m.Generation
	}
	if err := s.applyOptions(m != nil, opt); err != nil {
		s.Close()
		return nil, err
	}
	if opt.Write {
		// Leftovers of a writer that died: its unfinished objects, and
		// committed objects no manifest names any more.
		if s.opened, err = s.cleanup(); err != nil {
			s.Close()
			return nil, err
		}
	}
	return s, nil
}

func (s *Store) applyOptions(exists bool, opt Options) error {
	want := s.cfg
	if opt.KeyframeInterval != 0 {
		want.KeyframeInterval = opt.KeyframeInterval
	}
	if opt.Reference != "" {
		want.Reference = opt.Reference
	}
	if opt.LossySet {
		want.Lossy = append([]LossyRule{}, opt.Lossy...)
	}
	if err := want.validate(); err != nil {
		return fmt.Errorf("%w: %v", errs.Invalid, err)
	}
	if exists {
		a, _ := json.Marshal(want)
		b, _ := json.Marshal(s.cfg)
		if string(a) != string(b) {
			return fmt.Errorf("%w: %s was created with %s; it cannot be reopened with %s", errs.Invalid, s.dir, b, a)
		}
		return nil
	}
	s.cfg = want
	return nil
}

func checkMarker(path string, b []byte) error {
	var mk struct {
		Format  string `json:"format"`
		Version int    `json:"version"`
	}
	if err := decodeJSON(path, b, &mk); err != nil {
		return err
	}
	if mk.Format != markerFormat {
		return corrupt(path, "format %q", mk.Format)
	}
	if mk.Version != Version {
		return fmt.Errorf("%w: %s: store layout version %d (this tpde reads %d)", errs.Unsupported, path, mk.Version, Version)
	}
	return nil
}

// create lays out a new store in dir, which must be missing or empty.
func (s *Store) create() error {
	if err := os.MkdirAll(s.dir, 0o777); err != nil {
		return ioErr(s.dir, err)
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return ioErr(s.dir, err)
	}
	for _, e := range ents {
		// Another writer may be creating this store at the same moment;
		// what it has made so far is not foreign content.
		switch e.Name() {
		case "manifests", "objects", "tmp", "writer.lock", "readers.lock":
			continue
		}
		if strings.HasPrefix(e.Name(), ".tpde-store.json") {
			continue
		}
		return fmt.Errorf("%w: %s is not empty and is not a tpde store; tpde will not mix a store into it", errs.Invalid, s.dir)
	}
	for _, d := range []string{"manifests", "objects", "tmp"} {
		if err := os.MkdirAll(s.path(d), 0o777); err != nil {
			return ioErr(s.path(d), err)
		}
	}
	for _, l := range []string{"writer.lock", "readers.lock"} {
		f, err := os.OpenFile(s.path(l), os.O_CREATE|os.O_RDONLY, 0o666)
		if err != nil {
			return ioErr(s.path(l), err)
		}
		_ = f.Close()
	}
	body := []byte(fmt.Sprintf("{\"format\": %q, \"version\": %d}\n", markerFormat, Version))
	// The marker goes last: a directory that has it has every folder.
	return writeDurable(s.path("tmp"), s.path("tpde-store.json"), body, true)
}

// lockWriter takes the writer lock. flock(2) is released by the kernel
// when its holder dies, so a killed writer never blocks the next one.
func (s *Store) lockWriter() error {
	p := s.path("writer.lock")
	f, err := os.OpenFile(p, os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return ioErr(p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		if b, rerr := os.ReadFile(p); rerr == nil && len(b) > 0 && len(b) < 64 {
			holder = " (pid " + strings.TrimSpace(string(b)) + ")"
		}
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return errs.IOf(s.dir, syscall.EWOULDBLOCK, "another process is writing this store%s; one writer at a time", holder)
		}
		return ioErr(p, err)
	}
	// The pid is for the message above only; the lock is the flock.
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	s.wlock = f
	return nil
}

// Close releases the writer lock.
func (s *Store) Close() {
	if s.wlock != nil {
		_ = s.wlock.Close()
		s.wlock = nil
	}
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Config is the store's configuration.
func (s *Store) Config() Config { return s.cfg }

// readLock holds readers.lock shared while a reader uses a snapshot: the
// writer removes unreferenced objects only while it can hold it
// exclusively, so a reader never loses an object it is about to read.
func (s *Store) readLock() (func(), error) {
	p := s.path("readers.lock")
	f, err := os.Open(p)
	if err != nil {
		return nil, ioErr(p, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		_ = f.Close()
		return nil, ioErr(p, err)
	}
	return func() { _ = f.Close() }, nil
}

// generations lists the manifest generations present, newest first.
func (s *Store) generations() ([]uint64, error) {
	ents, err := os.ReadDir(s.path("manifests"))
	if err != nil {
		return nil, ioErr(s.path("manifests"), err)
	}
	var gens []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || len(name) != 20 {
			continue
		}
		g, err := strconv.ParseUint(name, 10, 64)
		if err != nil || g == 0 {
			continue
		}
		gens = append(gens, g)
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i] > gens[j] })
	return gens, nil
}

func manifestName(g uint64) string { return fmt.Sprintf("%020d.json", g) }

// newestManifest reads the newest generation; nil for a store without
// any commit. A damaged newest generation is an error, not a reason to
// fall back silently to an older one: that would hide committed work.
func (s *Store) newestManifest() (*Manifest, error) {
	// A reader lists the generations without a lock; a writer may commit
	// and remove the one it listed before it opens it. Then the newer one
	// is there: list again.
	for try := 0; ; try++ {
		gens, err := s.generations()
		if err != nil || len(gens) == 0 {
			return nil, err
		}
		p := s.path("manifests", manifestName(gens[0]))
		b, err := readCapped(p, maxManifestBytes)
		if errors.Is(err, fs.ErrNotExist) && try < 100 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return parseManifest(b, gens[0])
	}
}

// readCapped reads a whole file of at most limit bytes.
func readCapped(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, ioErr(p, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, ioErr(p, err)
	}
	if !st.Mode().IsRegular() {
		return nil, corrupt(p, "not a regular file")
	}
	if st.Size() > limit {
		return nil, corrupt(p, "%d bytes (max %d)", st.Size(), limit)
	}
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, ioErr(p, err)
	}
	if int64(len(b)) > limit {
		return nil, corrupt(p, "more than %d bytes", limit)
	}
	return b, nil
}

// writeDurable writes body to dst through a temporary file in tmpDir:
// written, fsynced, then linked (noReplace) or renamed into place, and the
// directory fsynced. link(2) fails if dst exists, which is how a manifest
// generation is published at most once.
func writeDurable(tmpDir, dst string, body []byte, noReplace bool) error {
	f, err := os.CreateTemp(tmpDir, "put-*")
	if err != nil {
		return ioErr(tmpDir, err)
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := writeAll(f, body); err != nil {
		_ = f.Close()
		return ioErr(dst, err)
	}
	if err := f.Sync(); err != nil {
		_ = f.Close()
		return ioErr(dst, err)
	}
	if err := f.Close(); err != nil {
		return ioErr(dst, err)
	}
	if err := fixMode(tmp); err != nil {
		return err
	}
	if noReplace {
		err = os.Link(tmp, dst)
	} else {
		err = os.Rename(tmp, dst)
	}
	if err != nil {
		return ioErr(dst, err)
	}
	return syncDir(filepath.Dir(dst))
}

// writeAll is f.Write with the fault-injection hook tests use to stand
// in for a full disk at any byte.
func writeAll(f *os.File, b []byte) error {
	if faultHook != nil {
		if err := faultHook(len(b)); err != nil {
			return err
		}
	}
	_, err := f.Write(b)
	return err
}

// faultHook, when set by a test, runs before every write of store data.
var faultHook func(n int) error

// fixMode gives a file the mode the umask gives (CreateTemp makes 0600):
// objects are as private as the user's other files, no more, no less.
func fixMode(p string) error {
	if err := os.Chmod(p, 0o666&^umask()); err != nil {
		return ioErr(p, err)
	}
	return nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return ioErr(dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, syscall.EINVAL) {
		return ioErr(dir, err)
	}
	return nil
}

// hashHex is the sha256 of b in lower-case hex: how objects are named.
func hashHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (s *Store) objectPath(h string) string { return s.path("objects", h[:2], h) }
