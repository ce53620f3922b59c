package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tpde/tpde/core/dirfd"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/mapped"
	"github.com/tpde/tpde/core/par"
)

// Remote is where a store lives when it is not a local folder: an object
// store (core/s3) holding the same files under the same names as a local
// store (docs/FORMAT.md §11.9). Every name is relative to the store's root
// ("manifests/<g>.json", "objects/ab/<sha256>").
//
// A remote store is served through a local cache folder that is itself a
// store: what a read needs (the newest manifest, the records and objects
// it decodes) is fetched into it on first use and checked there as any
// local store's files are; an add writes its objects into it as a local
// add does, then uploads them and commits the manifest generation on the
// remote with a conditional PUT, which exactly one of two racing writers
// wins. The commit protocol, the chain policy and every check are the
// local store's: there is no second format and no second engine.
type Remote interface {
	// URL names rel on the remote for messages ("s3://bucket/run/rel").
	URL(rel string) string
	// Get reads rel whole, refusing one over limit bytes before reading.
	Get(ctx context.Context, rel string, limit int64) ([]byte, error)
	// GetToFile writes rel, which must be size bytes, into f.
	GetToFile(ctx context.Context, rel string, f *os.File, size int64) error
	// GetRange reads bytes [off, off+n) of rel, which must be size bytes.
	GetRange(ctx context.Context, rel string, off, n, size int64) ([]byte, error)
	// Head is rel's size.
	Head(ctx context.Context, rel string) (int64, error)
	// Put writes rel (replacing it: objects are named by their content).
	Put(ctx context.Context, rel string, r io.ReaderAt, size int64) error
	// PutIfAbsent writes rel only if nothing is there: the commit.
	PutIfAbsent(ctx context.Context, rel string, body []byte) error
	// Delete removes rel (a missing rel is no error).
	Delete(ctx context.Context, rel string) error
	// List calls fn for every name below the folder prefix ("gc/").
	List(ctx context.Context, prefix string, fn func(rel string) error) error
	// Modified is when rel was last written, by the server's clock.
	Modified(ctx context.Context, rel string) (time.Time, error)
	// NotFound and Exists classify the errors of the calls above.
	NotFound(err error) bool
	Exists(err error) bool
}

// remoteState is a Store's link to its remote.
type remoteState struct {
	r Remote
	// fetch is the cache's folder for downloads in progress: never tmp/,
	// which a writer opening the cache empties under readers.
	fetch *dirfd.Dir
	// pending lists the objects (names below objects/) linked since the
	// last commit and not yet uploaded: the next commit uploads them
	// before its manifest. Each is also handed to the uploaders as soon as
	// it is linked, so that the network works while the add still codes.
	mu      sync.Mutex
	pending map[string]bool
	queue   chan string
	busy    sync.WaitGroup // uploads queued or running
	workers []func() error
	// dropped lists objects ("<hh>/<name>") that a commit's generation no
	// longer names and its predecessor did, for the next cleanup's note:
	// they may never have been in this cache (so its own listing would
	// not find them).
	dropped []string
	// grace is remoteGrace, read when the store was opened.
	grace time.Duration
	// uploads counts the objects handed to the uploaders and those the
	// bucket has taken, for a progress display (Store.Uploads).
	uploads uploadCounters
}

// Uploads are a remote store's object uploads since it was opened: the
// objects (and their bytes) handed to the uploaders, and those the bucket
// has taken. Queued grows as an add codes; Uploaded catches up as uploads
// finish, and equals Queued once a commit has uploaded what it needs (a
// failed upload that the commit retries is counted once, when it lands).
type Uploads struct {
	QueuedObjects, QueuedBytes     int64
	UploadedObjects, UploadedBytes int64
}

type uploadCounters struct {
	queuedObjects, queuedBytes, uploadedObjects, uploadedBytes atomic.Int64
}

// Uploads is a snapshot of the store's upload counts; all zero for a local
// store. It takes no lock, so a progress display may read it while an add
// or a commit runs on another goroutine.
func (s *Store) Uploads() Uploads {
	if s.remote == nil {
		return Uploads{}
	}
	u := &s.remote.uploads
	// Uploaded first: a reader never sees more uploaded than queued.
	up, upBytes := u.uploadedObjects.Load(), u.uploadedBytes.Load()
	return Uploads{QueuedObjects: u.queuedObjects.Load(), QueuedBytes: u.queuedBytes.Load(),
		UploadedObjects: up, UploadedBytes: upBytes}
}

// Remote is where the store lives, or nil for a local store.
func (s *Store) Remote() Remote {
	if s.remote == nil {
		return nil
	}
	return s.remote.r
}

// liveNow is what the cache's newest generation names (nil if that cannot
// be told: then nothing is noted for removal).
func (s *Store) liveNow() map[string]bool {
	sn, err := s.snapshot()
	if err != nil || sn.m.Generation == 0 {
		return nil
	}
	live, err := sn.live()
	if err != nil {
		return nil
	}
	return live
}

// noteDropped records for removal what before named and the newest
// generation does not.
func (s *Store) noteDropped(before map[string]bool) {
	if before == nil {
		return
	}
	after := s.liveNow()
	if after == nil {
		return
	}
	for n := range before {
		if !after[n] && len(n) >= 2 {
			s.remote.dropped = append(s.remote.dropped, n[:2]+"/"+n)
		}
	}
}

// latestHint names the remote file that says which generation was
// committed last. It is advice, written after each commit: a reader starts
// probing for newer generations there instead of at the cache's newest,
// so that a fresh cache does not cost a request per generation in the
// store's history. A stale or missing hint costs a few more probes, and a
// wrong one is ignored: the generations are what is true.
const latestHint = "manifests/latest"

func (s *Store) remoteCtx() context.Context { return context.Background() }

// openRemote prepares the cache folder s.root for the remote store: the
// marker (created on the remote by a writer of a new store), the folders,
// and the newest committed manifest generation.
func (s *Store) openRemote(opt Options) error {
	rm := s.remote
	ctx := s.remoteCtx()
	var err error
	if rm.grace, err = remoteGrace(); err != nil {
		return err
	}
	if _, err := s.root.Stat("tpde-store.json"); err == nil && !opt.Write && !opt.Stage {
		// A reader whose cache has the marker saw it on the remote before:
		// one request fewer. A writer asks every time, since it must never
		// commit into a prefix whose marker is gone.
		return s.openCacheFolders()
	}
	body, err := rm.r.Get(ctx, "tpde-store.json", 1<<16)
	switch {
	case err == nil:
		if err := checkMarker(rm.r.URL("tpde-store.json"), body); err != nil {
			return err
		}
	case rm.r.NotFound(err) && (opt.Write || opt.Stage):
		body = []byte(fmt.Sprintf("{\"format\": %q, \"version\": %d}\n", markerFormat, Version))
		if err := rm.r.PutIfAbsent(ctx, "tpde-store.json", body); err != nil && !rm.r.Exists(err) {
			return err
		}
	case rm.r.NotFound(err):
		return errs.IOf(rm.r.URL(""), syscall.ENOENT, "is not a tpde store (no tpde-store.json)")
	default:
		return err
	}
	if _, err := s.root.Stat("tpde-store.json"); errors.Is(err, fs.ErrNotExist) {
		if err := s.create(); err != nil {
			return err
		}
	} else if err != nil {
		return hostile(err)
	}
	return s.openCacheFolders()
}

// openCacheFolders makes the cache's folders and brings its manifests up
// to date.
func (s *Store) openCacheFolders() error {
	rm := s.remote
	for _, d := range []string{"manifests", "objects", "fetch"} {
		sub, err := s.root.MkdirAll(d)
		if err != nil {
			return err
		}
		if d == "fetch" {
			rm.fetch = sub
		} else {
			_ = sub.Close()
		}
	}
	return s.pullManifests()
}

// pullManifests brings the cache's manifests to the remote's newest
// generation: the remote is the truth. A generation the cache has and the
// remote does not (a cache of a bucket since emptied) is removed from the
// cache; the newest the remote has is fetched with its copy.
func (s *Store) pullManifests() error {
	rm := s.remote
	ctx := s.remoteCtx()
	manifests, err := s.root.OpenDir("manifests")
	if err != nil {
		return err
	}
	defer manifests.Close()
	local, err := generationsIn(manifests)
	if err != nil {
		return err
	}
	exists := func(g uint64) (bool, error) {
		_, err := rm.r.Head(ctx, "manifests/"+manifestName(g))
		if err == nil {
			return true, nil
		}
		if rm.r.NotFound(err) {
			return false, nil
		}
		return false, err
	}
	start := uint64(0)
	if len(local) > 0 {
		start = local[0]
	}
	if b, err := rm.r.Get(ctx, latestHint, 64); err == nil {
		if g, perr := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); perr == nil && g > start && g <= maxGeneration {
			if ok, err := exists(g); err != nil {
				return err
			} else if ok {
				start = g
			}
		}
	} else if !rm.r.NotFound(err) {
		return err
	}
	if start > 0 {
		ok, err := exists(start)
		if err != nil {
			return err
		}
		for !ok && start > 0 {
			// The cache is ahead of the remote: walk back to what the
			// remote has (the cache's own generations bound the walk).
			start = 0
			for _, g := range local {
				if ok, err = exists(g); err != nil {
					return err
				} else if ok {
					start = g
					break
				}
			}
		}
	}
	newest := start
	for newest < maxGeneration {
		ok, err := exists(newest + 1)
		if err != nil {
			return err
		}
		if !ok {
			break
		}
		newest++
	}
	for _, g := range local {
		if g > newest {
			_ = manifests.Remove(manifestName(g))
			_ = manifests.Remove(manifestName(g) + copySuffix)
		}
	}
	if newest == 0 || (len(local) > 0 && local[0] == newest) {
		return nil
	}
	// The generation, and its copy only if the generation cannot be read
	// or parsed (then a reader takes the copy, as from a local store).
	got := 0
	var firstErr error
	for _, name := range []string{manifestName(newest), manifestName(newest) + copySuffix} {
		b, err := rm.r.Get(ctx, "manifests/"+name, maxManifestBytes)
		if err != nil {
			if firstErr == nil && !rm.r.NotFound(err) {
				firstErr = err
			}
			continue
		}
		if err := writeDurable(rm.fetch, manifests, name, b, true); err != nil && !errors.Is(err, syscall.EEXIST) {
			return err
		}
		got++
		if _, err := parseManifest(b, newest); err == nil {
			break
		}
	}
	if got == 0 {
		if firstErr != nil {
			return firstErr
		}
		return corrupt(rm.r.URL("manifests/"+manifestName(newest)), "the generation vanished while it was read")
	}
	return nil
}

// fetchObject downloads object file name (h, or h.copy) into the cache,
// after checking that its content hashes to h: the cache never holds an
// object other than its name says, whatever the remote answered. want is
// its size, or anySize (a record, read whole up to its cap).
func (s *Store) fetchObject(h, name string, want uint64) error {
	rm := s.remote
	ctx := s.remoteCtx()
	rel := "objects/" + h[:2] + "/" + name
	f, tname, err := rm.fetch.CreateTemp("obj-")
	if err != nil {
		return err
	}
	defer rm.fetch.Remove(tname) //nolint:errcheck // gone once linked
	fail := func(err error) error {
		_ = f.Close()
		if rm.r.NotFound(err) {
			return missingError{fmt.Errorf("%w: object %s is missing from %s", errs.Corrupt, name, rm.r.URL(""))}
		}
		return err
	}
	if want == anySize {
		b, err := rm.r.Get(ctx, rel, maxCheckpointBytes)
		if err != nil {
			return fail(err)
		}
		if err := writeAll(f, b); err != nil {
			return fail(ioErr(rm.fetch.Path(tname), err))
		}
	} else {
		if want > maxObjectBytes {
			return fail(fmt.Errorf("%w: %s: object of %d bytes", errs.Limit, rm.r.URL(rel), want))
		}
		if err := rm.r.GetToFile(ctx, rel, f, int64(want)); err != nil {
			return fail(err)
		}
	}
	if err := f.Close(); err != nil {
		return ioErr(rm.fetch.Path(tname), err)
	}
	if err := s.checkFetched(tname, h, "a download from "+rm.r.URL(rel)); err != nil {
		return err
	}
	sub, err := s.root.MkdirAll("objects/" + h[:2])
	if err != nil {
		return err
	}
	defer sub.Close()
	if err := rm.fetch.Link(tname, sub, name); err != nil && !errors.Is(err, syscall.EEXIST) {
		return err
	}
	return nil
}

// checkFetched checks that the downloaded file tname hashes to h.
func (s *Store) checkFetched(tname, h, what string) error {
	f, err := s.remote.fetch.Open(tname)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return ioErr(f.Name(), err)
	}
	if st.Size() == 0 {
		_ = f.Close()
		return checkHash(nil, h, what)
	}
	in, err := mapped.Map(f, st.Size())
	if err != nil {
		_ = f.Close()
		return err
	}
	defer in.Release()
	return mapped.Reading(f.Name(), func() error { return checkHash(in.Data, h, what) })
}

// maxObjectBytes caps an object a record may make a reader download.
const maxObjectBytes = 1 << 46

// linked notes that object file name (below objects/), of size bytes, was
// linked since the last commit, and hands it to the uploaders; the commit
// waits for them and uploads whatever they could not. An object already
// pending (the same content linked twice in one add) is not queued again:
// its upload is in flight, or failed and is the commit's to retry.
func (s *Store) linked(h, name string, size uint64) {
	rm := s.remote
	n := h[:2] + "/" + name
	rm.mu.Lock()
	if rm.pending == nil {
		rm.pending = map[string]bool{}
	}
	if rm.pending[n] {
		rm.mu.Unlock()
		return
	}
	rm.pending[n] = true
	rm.uploads.queuedObjects.Add(1)
	rm.uploads.queuedBytes.Add(int64(size))
	if rm.queue == nil {
		q := make(chan string)
		rm.queue = q
		for i := 0; i < uploadStreams; i++ {
			// par.Go: at the writer's priority, and a panic is an error
			// (returned to closeUploaders), never a crash.
			rm.workers = append(rm.workers, par.Go(func() error {
				for n := range q {
					// Guarded one by one: a worker that stopped at a panic
					// would leave the queue with no one to take from it.
					if par.Guard(func() error { return s.uploadObject(n) }) == nil {
						rm.mu.Lock()
						delete(rm.pending, n)
						rm.mu.Unlock()
					}
					rm.busy.Done()
				}
				return nil
			}))
		}
	}
	rm.busy.Add(1)
	q := rm.queue
	rm.mu.Unlock()
	q <- n
}

// uploadObject uploads cache object n (a name below objects/).
func (s *Store) uploadObject(n string) error {
	f, err := s.objects.Open(n)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return ioErr(f.Name(), err)
	}
	if err := s.remote.r.Put(s.remoteCtx(), "objects/"+n, f, st.Size()); err != nil {
		return err
	}
	s.remote.uploads.uploadedBytes.Add(st.Size())
	s.remote.uploads.uploadedObjects.Add(1)
	return nil
}

// closeUploaders stops the uploaders (Close).
func (rm *remoteState) closeUploaders() {
	rm.mu.Lock()
	q := rm.queue
	rm.queue = nil
	ws := rm.workers
	rm.workers = nil
	rm.mu.Unlock()
	if q != nil {
		close(q)
	}
	for _, w := range ws {
		_ = w() // an upload that failed is a commit's to retry, and none comes now
	}
}

// pushPending waits for the uploaders, then uploads every object linked
// since the last commit that they did not (a failed upload is tried again
// here, and its error is the commit's), several at once (the client splits
// a large one into parts of its own).
func (s *Store) pushPending() error {
	rm := s.remote
	rm.busy.Wait()
	rm.mu.Lock()
	names := make([]string, 0, len(rm.pending))
	for n := range rm.pending {
		names = append(names, n)
	}
	rm.mu.Unlock()
	err := par.For(len(names), min(len(names), uploadStreams), func(_, i int) error {
		return s.uploadObject(names[i])
	})
	if err != nil {
		return err
	}
	rm.mu.Lock()
	for _, n := range names {
		delete(rm.pending, n)
	}
	rm.mu.Unlock()
	return nil
}

// uploadStreams is how many objects a commit uploads at once.
const uploadStreams = 8

// commitRemote uploads the commit's objects, then writes manifest
// generation name on the remote only if no writer has written it: the
// commit. Losing that race is an error that says so; nothing of the add is
// committed, and its objects on the remote are unreferenced (cleanup's to
// remove).
func (s *Store) commitRemote(name string, body []byte) error {
	if err := s.pushPending(); err != nil {
		return err
	}
	rm := s.remote
	ctx := s.remoteCtx()
	rel := "manifests/" + name
	if err := rm.r.PutIfAbsent(ctx, rel, body); err != nil {
		if rm.r.Exists(err) {
			return errs.IOf(rm.r.URL(rel), syscall.EEXIST, "another writer committed this generation first; nothing of this change was committed (open the store again to add onto the newer state)")
		}
		return err
	}
	return nil
}

// afterCommitRemote writes what follows a committed generation: its copy
// and the hint. A failure here costs nothing committed.
func (s *Store) afterCommitRemote(name string, body []byte, g uint64) {
	rm := s.remote
	ctx := s.remoteCtx()
	_ = rm.r.Put(ctx, "manifests/"+name+copySuffix, strings.NewReader(string(body)), int64(len(body)))
	hint := strconv.FormatUint(g, 10) + "\n"
	_ = rm.r.Put(ctx, latestHint, strings.NewReader(hint), int64(len(hint)))
}

// refuseRemote refuses an operation a remote store does not support yet.
func (s *Store) refuseRemote(what string) error {
	if s.remote == nil {
		return nil
	}
	return fmt.Errorf("%w: %s: %s is not supported on a remote store yet", errs.Unsupported, s.remote.r.URL(""), what)
}

// Removal on a remote store (docs/FORMAT.md §11.12). A remote store has no
// readers' lock, so an object that a commit leaves unreferenced is not
// removed at once: the writer's cleanup writes a note, gc/<time>-<pid>.json,
// naming the objects its cache found unreferenced, and a later cleanup
// removes each object of a note at least the grace period old, unless the
// newest generation names it again or it was written after the note (a
// writer that uploaded the same content anew). A reader still decoding a
// generation older than the grace period may find an object gone: it gets
// a "missing object" error, never other bytes.

// gcNote is a note's content.
type gcNote struct {
	Format  string   `json:"format"`
	Objects []string `json:"objects"`
}

const gcFormat = "tpde-store-gc"

// maxGCNoteBytes caps a note a cleanup reads.
const maxGCNoteBytes = 64 << 20

// parseGCNote reads a removal note (untrusted: the bucket's) and returns
// the object names it holds, each "<hh>/<sha256>" or "<hh>/<sha256>.copy"
// with hh its first two digits; a note with anything else is refused
// whole.
func parseGCNote(what string, b []byte) ([]string, error) {
	if len(b) > maxGCNoteBytes {
		return nil, corrupt(what, "%d bytes (max %d)", len(b), maxGCNoteBytes)
	}
	var note gcNote
	if err := decodeJSON(what, b, &note); err != nil {
		return nil, err
	}
	if note.Format != gcFormat {
		return nil, corrupt(what, "format %q", printable(note.Format))
	}
	for _, n := range note.Objects {
		base := strings.TrimSuffix(n, copySuffix)
		if len(base) != 3+64 || base[2] != '/' || !validHash(base[3:]) || base[:2] != base[3:5] {
			return nil, corrupt(what, "names %q, not an object", printable(n))
		}
	}
	return note.Objects, nil
}

// remoteGrace is how long an unreferenced object stays on a remote store:
// TPDE_S3_GRACE seconds, else an hour (longer than any load should take).
// A value that is set but malformed is refused, never taken for the
// default: a typo must not change when objects are deleted.
func remoteGrace() (time.Duration, error) {
	v := os.Getenv("TPDE_S3_GRACE")
	if v == "" {
		return time.Hour, nil
	}
	n, err := strconv.ParseFloat(v, 64)
	if err != nil || !(n >= 0) || n > 30*86400 {
		return 0, fmt.Errorf("%w: TPDE_S3_GRACE=%q: want seconds, from 0 to 2592000", errs.Invalid, printable(v))
	}
	return time.Duration(n * float64(time.Second)), nil
}

// remoteCleanup notes the objects the cache's cleanup found unreferenced
// (removed, the local names below objects/), then removes what older notes
// name and no one needs any more. live is the newest generation's objects.
// It never fails a commit: what it could not do, it says.
func (s *Store) remoteCleanup(named func(string) bool, removed []string) error {
	rm := s.remote
	ctx := s.remoteCtx()
	seen := map[string]bool{}
	var names []string
	for _, n := range append(append([]string{}, removed...), rm.dropped...) {
		if !seen[n] {
			seen[n] = true
			names = append(names, n)
		}
	}
	if len(names) > 0 {
		note := gcNote{Format: gcFormat}
		for _, n := range names {
			note.Objects = append(note.Objects, n)
			if !strings.HasSuffix(n, copySuffix) {
				// A record's copy is never read, so never in a cache: its
				// record's removal takes it along.
				note.Objects = append(note.Objects, n+copySuffix)
			}
		}
		b, err := json.Marshal(note)
		if err != nil {
			return fmt.Errorf("%w: %v", errs.Internal, err)
		}
		name := fmt.Sprintf("gc/%020d-%d.json", time.Now().UnixNano(), os.Getpid())
		if err := rm.r.Put(ctx, name, strings.NewReader(string(b)), int64(len(b))); err != nil {
			return err
		}
		rm.dropped = nil
	}
	var notes []string
	if err := rm.r.List(ctx, "gc/", func(rel string) error {
		notes = append(notes, rel)
		return nil
	}); err != nil {
		return err
	}
	for _, rel := range notes {
		written, err := rm.r.Modified(ctx, rel)
		if rm.r.NotFound(err) {
			continue // another writer's cleanup took it
		}
		if err != nil {
			return err
		}
		if time.Since(written) < rm.grace {
			continue
		}
		b, err := rm.r.Get(ctx, rel, maxGCNoteBytes)
		if rm.r.NotFound(err) {
			continue
		}
		if err != nil {
			return err
		}
		names, err := parseGCNote(rm.r.URL(rel), b)
		if err != nil {
			continue // not a note tpde wrote: left alone, never acted on
		}
		for _, n := range names {
			if named(n[3:]) {
				continue
			}
			obj := "objects/" + n
			mod, err := rm.r.Modified(ctx, obj)
			if rm.r.NotFound(err) {
				continue
			}
			if err != nil {
				return err
			}
			if mod.After(written) {
				continue // uploaded anew since the note: someone needs it
			}
			if err := rm.r.Delete(ctx, obj); err != nil {
				return err
			}
		}
		if err := rm.r.Delete(ctx, rel); err != nil {
			return err
		}
	}
	return nil
}
