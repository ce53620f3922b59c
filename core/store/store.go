// Package store keeps a training run's checkpoints in one directory
// (docs/FORMAT.md §11): immutable content-addressed objects, and manifest
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
//
// Everything inside the directory is reached through descriptors
// (core/dirfd): a store is untrusted input, and a symlink, FIFO or device
// planted in it is refused, never followed, read or removed through.
//
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
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tpde/tpde/core/chain"
	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// DefaultKeyframeInterval is K when a store is created without one: a
// random-access load decodes at most this many frames per tensor.
const DefaultKeyframeInterval = chain.DefaultInterval

// Options tune Open.
type Options struct {
	// Write opens the store for adding and removing (creating it if the
	// directory is missing or empty) and takes the writer lock.
	Write bool
	// Stage opens the store for one participant of a multi-writer commit
	// (parts.go): it may write objects beside other participants and the
	// writer, and never takes the writer lock or removes anything. It
	// creates the store if the directory is missing or empty.
	Stage bool
	// Config for a new store. On an existing store, a zero field means
	// "as stored"; a field that differs from the store's is an error.
	KeyframeInterval int
	// KeyframeIntervalSet says that KeyframeInterval was given, so that a
	// given 0 is refused rather than read as "as stored".
	KeyframeIntervalSet bool
	Reference           string
	Lossy               []LossyRule
	// LossySet says that Lossy was given (an empty list is "lossless").
	LossySet bool
	Threads  int
	// Positions is how delta frames code the positions of changed
	// elements (delta.SparseAuto picks per chunk). It is the writer's
	// choice, not the store's: any decoder reads every mode, so it is not
	// recorded in the config.
	Positions delta.SparseMode
	// Limits bound what a read decodes.
	Limits Limits
	// Remote, if not nil, is where the store lives; the directory given to
	// Open is then its local cache (remote.go).
	Remote Remote
	// Recode is when an add re-codes the previous newest checkpoint as
	// reverse deltas (demote.go): RecodeInline ("" too), inside the add;
	// RecodeBackground, after its commit, on a goroutine of its own.
	Recode string
	// Priority is the priority of background re-codes (core/par).
	Priority par.Priority
}

// Limits bound what one read of a store may decode, as every other tpde
// decoder is bounded: a record is untrusted, and a run-length frame of a
// few bytes can claim gigabytes.
type Limits struct {
	// Output is the most bytes one restore writes, or one read returns
	// (0: no bound; the disk bounds a restore).
	Output uint64
	// Memory is the most bytes one decode holds in memory: a tensor and,
	// for a chain of frames, its second buffer (0: the memory this
	// process may use, see machineMemory).
	Memory uint64
}

// Store is an open store. Its methods are not for concurrent use by several
// goroutines, except that Readers may be used beside each other; separate
// Store values (or processes) may read at once.
type Store struct {
	dir string
	// root, manifests and objects are the store's folders, reached through
	// descriptors (core/dirfd): nothing inside a store is followed through
	// a symlink. objects is nil for a store copied without its (empty)
	// objects folder; tmp is opened for writers only.
	root      *dirfd.Dir
	manifests *dirfd.Dir
	objects   *dirfd.Dir
	tmp       *dirfd.Dir
	write     bool
	wlock     *os.File
	// stage: opened for a participant (Options.Stage); tmp is then its own
	// locked folder tmp/<partName>, and partDone says its part is finished.
	stage    bool
	partName string
	partDone bool
	threads  int
	// positions is Options.Positions, for every delta frame this Store codes.
	positions delta.SparseMode
	limits    Limits
	cfg       Config // for a new store, until its first commit
	// gen is the generation the writer last committed or loaded.
	gen uint64
	// opened is what Open's cleanup removed, for Repair to report.
	opened Cleaned
	// replaced lists store entries Open removed because they were not
	// what tpde makes there (a symlinked tmp/).
	replaced []string
	// Progress, if set, is told how many checkpoints (the base counted as
	// one) of how many Verify has checked, as it goes (from the calling
	// goroutine).
	Progress func(done, total uint64)
	// records caches parsed checkpoint records by object name: an object
	// never changes, so a record read once serves every later snapshot.
	records recordCache
	// index counts what the newest generation names, for a writer's
	// cleanup after its own commits (tidy); nil until a full cleanup has
	// built it. sweeps counts full cleanups (tests: a commit's cleanup
	// must not be one).
	index atomic.Pointer[liveIndex]
	// building is the index being counted beside the writer's work after
	// an open that skipped the sweep (cleanclose.go); written is what the
	// writer linked since its last tidy or sweep.
	buildMu  sync.Mutex
	building *indexBuild
	written  writtenSet
	// closedClean and closedGen are what writer.lock said when this
	// writer locked it: the last writer closed cleanly at closedGen.
	// openGen is the generation this writer opened at; swept, that
	// objects/ held nothing unnamed when it opened or since its last
	// sweep.
	closedClean bool
	closedGen   uint64
	openGen     uint64
	swept       bool
	// objectBytes is the bytes of the objects this handle linked into
	// objects/, less those its cleanups removed (ObjectBytes).
	objectBytes atomic.Int64
	sweeps      int
	// lastManifest is the newest generation parsed, shared (read-only) by
	// the snapshots of that generation.
	lastManifest atomic.Pointer[Manifest]
	// recode and prio are Options.Recode and Options.Priority; demoting is
	// the background re-code in flight (nil: none), which every write
	// waits for (Settle); caughtUp lists the runs whose demotion has
	// already looked back K checkpoints in this session.
	recode   string
	prio     par.Priority
	demoting *demotion
	caughtUp map[string]bool
	// remote, for a store on object storage (remote.go): dir is then its
	// local cache.
	remote *remoteState
}

func (s *Store) path(parts ...string) string {
	return filepath.Join(append([]string{s.dir}, parts...)...)
}

func ioErr(path string, err error) error {
	if errors.Is(err, errs.IO) {
		return err
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errs.IOf(path, errno, "%v", err)
	}
	return fmt.Errorf("%w: %s: %w", errs.IO, path, err)
}

// hostile turns dirfd's refusal of what it found where a store's file
// should be (a symlink, a FIFO, a device, a folder) into corruption of the
// store: the store is damaged or crafted, which no retry will mend. Other
// errors (permission denied, a missing file) stay what they are.
func hostile(err error) error {
	if err != nil && (errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOTDIR)) {
		return fmt.Errorf("%w: %v", errs.Corrupt, err)
	}
	return err
}

// denied reports whether err is the OS refusing this user access (EACCES,
// EPERM). That says nothing about the store's bytes: a reader serves from
// an intact copy where it can, but nothing that checks the store (verify,
// repair, listing) may call a file it was not allowed to read damaged or
// missing, and the error reaches the caller as it is.
func denied(err error) bool {
	return err != nil && (errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM))
}

// SchemeOf is the URL scheme of a store path ("s3" for "s3://bucket/run"),
// or "" for a local path. A path with a scheme is never taken for a local
// folder: "s3://b/run" would otherwise become a folder named "s3:".
func SchemeOf(dir string) string {
	i := strings.Index(dir, "://")
	if i <= 0 {
		return ""
	}
	for _, c := range dir[:i] {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') {
			return ""
		}
	}
	return dir[:i]
}

// Open opens the store in dir.
// ObjectBytes is the bytes of the objects this handle has added to
// objects/ since it was opened (after its open's own cleanup), less the bytes of those its cleanups have
// removed: the store's growth from this handle's adds, removes and
// re-codes, without a walk of the store (manifests, a few kilobytes, are
// not counted). On a remote store it is what the cache took; the bucket
// loses its dropped objects later, after the grace period. It takes no
// lock: a caller may read it while an add runs.
func (s *Store) ObjectBytes() int64 { return s.objectBytes.Load() }

func Open(dir string, opt Options) (*Store, error) {
	if sc := SchemeOf(dir); sc != "" {
		return nil, fmt.Errorf("%w: %s: tpde cannot serve %s:// stores; a store is a local folder", errs.Unsupported, dir, sc)
	}
	if opt.Write && opt.Stage {
		return nil, fmt.Errorf("%w: a store is opened for writing or for staging, not both", errs.Invalid)
	}
	if opt.Recode == "" {
		opt.Recode = defaultRecode
	}
	switch opt.Recode {
	case RecodeInline, RecodeBackground:
	default:
		return nil, fmt.Errorf("%w: recode %q (must be %q or %q)", errs.Invalid, printable(opt.Recode), RecodeInline, RecodeBackground)
	}
	s := &Store{dir: dir, write: opt.Write, stage: opt.Stage, threads: opt.Threads, positions: opt.Positions, limits: opt.Limits,
		recode: opt.Recode, prio: opt.Priority, caughtUp: map[string]bool{}}
	if opt.Remote != nil {
		s.remote = &remoteState{r: opt.Remote}
	}
	if opt.Write || opt.Stage || s.remote != nil {
		if err := os.MkdirAll(dir, 0o777); err != nil {
			return nil, ioErr(dir, err)
		}
	}
	root, err := dirfd.Open(dir)
	if err != nil {
		return nil, err
	}
	s.root = root
	if s.remote != nil {
		if err := s.openRemote(opt); err != nil {
			s.Close()
			return nil, err
		}
	}
	b, err := root.ReadFile("tpde-store.json", 1<<16)
	err = hostile(err)
	switch {
	case err == nil:
		if err := checkMarker(s.path("tpde-store.json"), b); err != nil {
			s.Close()
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist) && (opt.Write || opt.Stage):
		if err := s.create(); err != nil {
			s.Close()
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		s.Close()
		return nil, errs.IOf(dir, syscall.ENOENT, "is not a tpde store (no tpde-store.json)")
	default:
		s.Close()
		return nil, err
	}
	if err := s.openFolders(); err != nil {
		s.Close()
		return nil, err
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
		s.openGen = s.gen
		if s.needsSweep() {
			// Leftovers of a writer that died: its unfinished objects, and
			// committed objects no manifest names any more.
			if s.opened, err = s.cleanup(); err != nil {
				s.Close()
				return nil, err
			}
		} else {
			// The last writer closed cleanly: nothing to sweep. The count
			// that tidy needs is made beside this writer's work.
			s.swept = true
			if err := s.removeTemporary(&s.opened); err != nil {
				s.Close()
				return nil, err
			}
			sn, err := s.snapshot()
			if err != nil {
				s.Close()
				return nil, err
			}
			s.startIndexBuild(sn)
		}
		s.opened.Foreign = append(s.opened.Foreign, s.replaced...)
	}
	if opt.Stage {
		s.trimStageCache()
	}
	s.objectBytes.Store(0) // the growth from here: what open's cleanup removed is not this handle's work
	return s, nil
}

// openFolders opens the store's folders (a writer first takes its lock and
// makes the ones a copy may have lost: git keeps no empty folder).
func (s *Store) openFolders() error {
	var err error
	if s.write {
		if err := s.lockWriter(); err != nil {
			return err
		}
		if s.tmp, err = s.root.MkdirAll("tmp"); errors.Is(err, syscall.ELOOP) || errors.Is(err, syscall.ENOTDIR) {
			// tmp/ is tpde's scratch, holding nothing of value: whatever
			// stands there instead of a folder (a planted link) is removed
			// itself, never followed, and a real folder made.
			if err := s.root.Remove("tmp"); err != nil {
				return err
			}
			s.replaced = append(s.replaced, "tmp (was not a folder; replaced by one)")
			s.tmp, err = s.root.MkdirAll("tmp")
		}
		if err != nil {
			return err
		}
		if s.objects, err = s.root.MkdirAll("objects"); err != nil {
			return err
		}
		if s.manifests, err = s.root.MkdirAll("manifests"); err != nil {
			return err
		}
		f, err := s.root.OpenFile("readers.lock", os.O_RDONLY|os.O_CREATE, 0o666)
		if hostile(err) != err {
			// Not a regular file (a planted link, FIFO or folder): no
			// reader can hold a lock on it, so it is replaced, itself.
			if err := s.root.RemoveAll("readers.lock"); err != nil {
				return err
			}
			s.replaced = append(s.replaced, "readers.lock (was not a regular file; replaced by one)")
			f, err = s.root.OpenFile("readers.lock", os.O_RDONLY|os.O_CREATE, 0o666)
		}
		if err != nil {
			return err
		}
		return f.Close()
	}
	if s.stage {
		if err := s.stagePart(); err != nil {
			return err
		}
	}
	if s.manifests, err = s.root.OpenDir("manifests"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	if s.objects, err = s.root.OpenDir("objects"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (s *Store) applyOptions(exists bool, opt Options) error {
	want := s.cfg
	if opt.KeyframeInterval != 0 || opt.KeyframeIntervalSet {
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

// create lays out a new store in dir, which must be empty.
func (s *Store) create() error {
	ents, err := s.root.ReadDir()
	if err != nil {
		return err
	}
	for _, e := range ents {
		// Another writer may be creating this store at the same moment;
		// what it has made so far is not foreign content.
		switch e.Name {
		case "manifests", "objects", "tmp", "writer.lock", "readers.lock":
			continue
		case "tpde-store.json":
			// That creator finished between our look for the marker and
			// this listing: its store stands (a marker is linked last,
			// whole), if the marker is one.
			b, err := s.root.ReadFile("tpde-store.json", 1<<16)
			if err != nil {
				return err
			}
			return checkMarker(s.path("tpde-store.json"), b)
		}
		return fmt.Errorf("%w: %s is not empty and is not a tpde store; tpde will not mix a store into it", errs.Invalid, s.dir)
	}
	for _, d := range []string{"manifests", "objects", "tmp"} {
		if err := s.root.Mkdir(d); err != nil {
			return err
		}
	}
	for _, l := range []string{"writer.lock", "readers.lock"} {
		f, err := s.root.OpenFile(l, os.O_CREATE|os.O_RDONLY, 0o666)
		if err != nil {
			return err
		}
		_ = f.Close()
	}
	tmp, err := s.root.OpenDir("tmp")
	if err != nil {
		return err
	}
	defer tmp.Close()
	body := []byte(fmt.Sprintf("{\"format\": %q, \"version\": %d}\n", markerFormat, Version))
	// The marker goes last: a directory that has it has every folder. If
	// another creator linked its marker first, that one stands. A writer
	// that opened the store that creator made may clean tmp/ under this
	// one's temporary file: then the link fails, and the marker that is
	// there stands too.
	err = writeDurable(tmp, s.root, "tpde-store.json", body, true)
	if err == nil || errors.Is(err, syscall.EEXIST) {
		return nil
	}
	if b, rerr := s.root.ReadFile("tpde-store.json", 1<<16); rerr == nil && checkMarker(s.path("tpde-store.json"), b) == nil {
		return nil
	}
	return err
}

// lockWriter takes the writer lock. flock(2) is released by the kernel
// when its holder dies, so a killed writer never blocks the next one.
func (s *Store) lockWriter() error {
	p := s.path("writer.lock")
	f, err := s.root.OpenFile("writer.lock", os.O_CREATE|os.O_RDWR, 0o666)
	if err != nil {
		return err
	}
	// The lock file gets the writer's pid: a hard link would make that a
	// write into some other file that shares its inode.
	if st, err := f.Stat(); err != nil || st.Sys().(*syscall.Stat_t).Nlink != 1 {
		_ = f.Close()
		return errs.IOf(p, syscall.EMLINK, "has other names (hard links); tpde writes only to a lock file of its own")
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder := ""
		b := make([]byte, 32)
		if n, rerr := f.ReadAt(b, 0); n > 0 && (rerr == nil || errors.Is(rerr, io.EOF)) && !strings.HasPrefix(string(b[:n]), closedPrefix) {
			holder = " (pid " + strings.TrimSpace(printable(string(b[:n]))) + ")"
		}
		_ = f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return errs.IOf(s.dir, syscall.EWOULDBLOCK, "another process is writing this store%s; one writer at a time", holder)
		}
		return ioErr(p, err)
	}
	// The pid is for the message above only; the lock is the flock. It
	// replaces a clean close's line, which says whether this open may
	// skip the sweep (cleanclose.go).
	s.closedGen, s.closedClean = readClosed(f)
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	// Durable before this writer links any object: after a power loss, a
	// clean close's line left on disk would let the next writer skip the
	// sweep that removes what this one left.
	if s.closedClean {
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return ioErr(p, err)
		}
	}
	s.wlock = f
	return nil
}

// printable keeps what a message may show of untrusted text.
func printable(t string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, t)
}

// Close waits for a background re-code in flight (Settle reports its
// error; Close cannot), then releases the writer lock and the store's
// folders.
func (s *Store) Close() {
	_ = s.Settle()
	s.closeClean()
	s.stopIndexBuild()
	if s.wlock != nil {
		_ = s.wlock.Close()
		s.wlock = nil
	}
	if s.partName != "" && s.tmp != nil {
		// The part's lock goes with its folder's descriptor; the folder
		// itself is this participant's to remove (a writer's cleanup
		// removes it too, once no lock holds it).
		_ = s.tmp.Close()
		s.tmp = nil
		if tmp, err := s.root.OpenDir("tmp"); err == nil {
			_ = tmp.RemoveAll(s.partName)
			_ = tmp.Close()
		}
		s.partName = ""
	}
	if s.remote != nil {
		s.remote.closeUploaders()
		if s.remote.fetch != nil {
			_ = s.remote.fetch.Close()
			s.remote.fetch = nil
		}
	}
	for _, d := range []**dirfd.Dir{&s.tmp, &s.objects, &s.manifests, &s.root} {
		if *d != nil {
			_ = (*d).Close()
			*d = nil
		}
	}
}

// Dir is the store's directory.
func (s *Store) Dir() string { return s.dir }

// Config is the store's configuration.
func (s *Store) Config() Config { return s.cfg }

// readLock holds readers.lock shared while a reader uses a snapshot: the
// writer removes unreferenced objects only while it can hold it
// exclusively, so a reader never loses an object it is about to read. A
// store without the file (copied without it) has never had a writer here.
func (s *Store) readLock() (func(), error) {
	f, err := s.root.Open("readers.lock")
	if errors.Is(err, fs.ErrNotExist) {
		return func() {}, nil
	}
	if h := hostile(err); h != err {
		return nil, fmt.Errorf("%w (tpde verify --repair replaces it)", h)
	}
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH); err != nil {
		_ = f.Close()
		return nil, ioErr(s.path("readers.lock"), err)
	}
	return func() { _ = f.Close() }, nil
}

// A manifest generation g is the file manifests/<g>.json; its copy, written
// just after it, is manifests/<g>.json.copy (docs/FORMAT.md §11.3).
const copySuffix = ".copy"

func manifestName(g uint64) string { return fmt.Sprintf("%020d.json", g) }

// maxGeneration is the largest generation number: a planted name near
// 2^64 must not make the next commit wrap to generation 0.
const maxGeneration = math.MaxInt64

// generations lists the manifest generations present (by either name),
// newest first.
func (s *Store) generations() ([]uint64, error) {
	return generationsIn(s.manifests)
}

// generationsIn lists the generations of a manifests folder (nil: none),
// newest first.
func generationsIn(manifests *dirfd.Dir) ([]uint64, error) {
	if manifests == nil {
		return nil, nil
	}
	ents, err := manifests.ReadDir()
	if err != nil {
		return nil, err
	}
	seen := map[uint64]bool{}
	var gens []uint64
	for _, e := range ents {
		name, ok := strings.CutSuffix(e.Name, copySuffix)
		name, ok2 := strings.CutSuffix(name, ".json")
		if !ok2 || len(name) != 20 || (ok && name+".json"+copySuffix != e.Name) {
			continue
		}
		g, err := strconv.ParseUint(name, 10, 64)
		if err != nil || g == 0 || g > maxGeneration || seen[g] {
			continue // not a generation tpde writes: never the store's state
		}
		seen[g] = true
		gens = append(gens, g)
	}
	sort.Slice(gens, func(i, j int) bool { return gens[i] > gens[j] })
	return gens, nil
}

// newestManifest reads the newest generation; nil for a store without
// any commit. A damaged newest generation falls back to its copy, never
// silently to an older generation: that would hide committed work.
func (s *Store) newestManifest() (*Manifest, error) {
	// A reader lists the generations without a lock; a writer may commit
	// and remove the one it listed before it opens it. Then the newer one
	// is there: list again.
	for try := 0; ; try++ {
		gens, err := s.generations()
		if err != nil || len(gens) == 0 {
			return nil, err
		}
		// A generation never changes once written: the one parsed last
		// serves again while it is the newest (a reader opened per call
		// then costs a directory listing, not a parse of the history).
		if c := s.lastManifest.Load(); c != nil && c.Generation == gens[0] {
			return c, nil
		}
		m, _, err := s.readGeneration(gens[0])
		if errors.Is(err, fs.ErrNotExist) && try < 100 {
			continue
		}
		if err == nil {
			s.lastManifest.Store(m)
		}
		return m, err
	}
}

// generationState says how the two copies of a generation were found,
// for verify.
type generationState struct {
	// Damaged names a copy that could not be used, and why ("" if both
	// were read and agree, or the copy was never written).
	Damaged string
	// CopyMissing: the generation has no second copy (a store written
	// before copies existed, or a commit whose copy could not be written).
	CopyMissing bool
	// Denied: one copy could not be read for lack of permission (the
	// other served). Verify and repair refuse with it: they cannot tell
	// whether that copy is intact.
	Denied error
}

// readGeneration reads generation g from its file and its copy. Either one
// that reads and parses serves; when both parse but differ (a flipped digit
// can leave valid JSON), the one whose records all exist is used.
func (s *Store) readGeneration(g uint64) (*Manifest, generationState, error) {
	var st generationState
	name := manifestName(g)
	parse := func(b []byte, err error) (*Manifest, []byte, error) {
		if err != nil {
			return nil, nil, hostile(err)
		}
		m, err := parseManifest(b, g)
		return m, b, err
	}
	b1, rerr1 := s.manifests.ReadFile(name, maxManifestBytes)
	b2, rerr2 := s.manifests.ReadFile(name+copySuffix, maxManifestBytes)
	if rerr1 == nil && rerr2 == nil && string(b1) == string(b2) {
		m, err := parseManifest(b1, g) // the usual case: one parse
		return m, st, err
	}
	m1, b1, err1 := parse(b1, rerr1)
	m2, b2, err2 := parse(b2, rerr2)
	missing1, missing2 := errors.Is(err1, fs.ErrNotExist), errors.Is(err2, fs.ErrNotExist)
	switch {
	case err1 == nil && err2 == nil:
		if string(b1) == string(b2) {
			return m1, st, nil
		}
		ok1, ok2 := s.recordsPresent(m1), s.recordsPresent(m2)
		if ok1 == ok2 {
			return nil, st, corrupt(s.manifests.Path(name), "it and its copy differ, and neither can be told the intact one")
		}
		if ok1 {
			st.Damaged = name + copySuffix + ": differs from " + name + ", and names records that are missing"
			return m1, st, nil
		}
		st.Damaged = name + ": differs from its copy, and names records that are missing"
		return m2, st, nil
	case err1 == nil && denied(err2):
		st.Denied = err2
		return m1, st, nil
	case err2 == nil && denied(err1):
		st.Denied = err1
		return m2, st, nil
	case err1 == nil:
		if !missing2 {
			st.Damaged = fmt.Sprintf("%s: %v", name+copySuffix, err2)
		}
		st.CopyMissing = missing2
		return m1, st, nil
	case err2 == nil:
		if !missing1 {
			st.Damaged = fmt.Sprintf("%s: %v", name, err1)
		} else {
			st.Damaged = name + ": missing (its copy serves)"
		}
		return m2, st, nil
	case denied(err1):
		return nil, st, err1
	case denied(err2):
		return nil, st, err2
	case missing1 && missing2:
		return nil, st, err1
	case missing2 || errors.Is(err1, errs.Unsupported):
		return nil, st, err1
	case missing1:
		return nil, st, err2
	}
	return nil, st, fmt.Errorf("%w: manifest generation %d and its copy are both damaged: %v; %v", errs.Corrupt, g, err1, err2)
}

// recordsPresent says whether every record object m names is in the store.
func (s *Store) recordsPresent(m *Manifest) bool {
	refs := append([]CheckpointRef{}, m.Checkpoints...)
	if m.Base != nil {
		refs = append(refs, *m.Base)
	}
	for _, r := range refs {
		if _, err := s.objectInfo(r.Object); err != nil {
			if _, err := s.objectInfo(r.Object + copySuffix); err != nil {
				return false
			}
		}
	}
	return true
}

// writeDurable writes body to name in dir through a temporary file in
// tmp: written, fsynced, then linked (noReplace) or renamed into place,
// and dir fsynced. link(2) fails if name exists, which is how a manifest
// generation is published at most once.
func writeDurable(tmp, dir *dirfd.Dir, name string, body []byte, noReplace bool) error {
	f, tname, err := tmp.CreateTemp("put-")
	if err != nil {
		return err
	}
	defer tmp.Remove(tname) //nolint:errcheck // gone already once linked or renamed
	dst := dir.Path(name)
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
	if noReplace {
		err = tmp.Link(tname, dir, name)
	} else {
		err = tmp.Rename(tname, dir, name)
	}
	if err != nil {
		return err
	}
	return dir.Sync()
}

// writeAll is f.Write with the fault-injection hook tests use to stand
// in for a full disk at any byte.
func writeAll(f *os.File, b []byte) error {
	if faultHook != nil {
		if err := faultHook(len(b)); err != nil {
			return err
		}
	}
	// In pieces: one write(2) of tens of MiB from a buffer mapped with
	// mmap (buffer_linux.go) copied many times slower than the same bytes
	// written 1 MiB at a time on this VM's kernel (6.18, ext4), and an
	// add's writes of its large objects ran on one core meanwhile
	// (bench/PROFILE.md, "Add and resume").
	for len(b) > 0 {
		n := min(len(b), writePiece)
		if _, err := f.Write(b[:n]); err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// writePiece is the most bytes writeAll hands to one write(2).
const writePiece = 1 << 20

// faultHook, when set by a test, runs before every write of store data.
var faultHook func(n int) error

// hashHex is the sha256 of b in lower-case hex: how objects are named.
func hashHex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func (s *Store) objectPath(h string) string { return s.path("objects", h[:2], h) }
