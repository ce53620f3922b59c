package main

// The checkpoint store (docs/FORMAT.md section 11): ABI glue over
// core/store. A store handle holds an open store and at most one
// checkpoint being added; a reader handle holds one committed snapshot.
// Calls that produce JSON keep it in their handle for tpde_store_result.

/*
#include "tpde.h"
*/
import "C"

import (
	"encoding/json"
	"fmt"
	"runtime/debug"
	"sync"
	"unsafe"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/handles"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/statedict"
	"github.com/tpde/tpde/core/store"
)

type openStore struct {
	mu     sync.Mutex
	s      *store.Store
	tx     *store.Tx
	result []byte
}

type openReader struct {
	mu     sync.Mutex
	rd     *store.Reader
	result []byte
}

var (
	stores  = handles.New[*openStore]("store")
	readers = handles.New[*openReader]("store reader")
)

func storeAt(h C.uint64_t) (*openStore, func(), error) {
	o, err := stores.Get(uint64(h))
	if err != nil {
		return nil, nil, err
	}
	o.mu.Lock()
	return o, o.mu.Unlock, nil
}

func readerAt(h C.uint64_t) (*openReader, func(), error) {
	o, err := readers.Get(uint64(h))
	if err != nil {
		return nil, nil, err
	}
	o.mu.Lock()
	return o, o.mu.Unlock, nil
}

// withStore runs fn on the open store behind handle, holding its lock,
// and turns fn's error into a status.
func withStore(handle C.uint64_t, cerr *C.char, cerrLen C.size_t, fn func(*openStore) error) C.int {
	o, unlock, err := storeAt(handle)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	defer unlock()
	return status(fn(o), cerr, cerrLen)
}

// withReader is withStore for a reader handle.
func withReader(handle C.uint64_t, cerr *C.char, cerrLen C.size_t, fn func(*openReader) error) C.int {
	r, unlock, err := readerAt(handle)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	defer unlock()
	return status(fn(r), cerr, cerrLen)
}

func goString(p *C.char, what string) (string, error) {
	if p == nil {
		return "", fmt.Errorf("%w: %s is NULL", errs.Invalid, what)
	}
	return C.GoString(p), nil
}

func jsonArg(p *C.char, n C.uint64_t, what string, v any) error {
	if p == nil || n == 0 {
		return nil
	}
	b, err := bytesAt(unsafe.Pointer(p), n, what)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
	}
	return nil
}

func keep(dst *[]byte, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("%w: %v", errs.Internal, err)
	}
	*dst = b
	return nil
}

//export tpde_store_open
func tpde_store_open(path *C.char, write C.int32_t, config *C.char, configLen C.uint64_t, nthreads C.int32_t,
	handle *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	dir, err := goString(path, "path")
	if err != nil || handle == nil {
		return status(fmt.Errorf("%w: path or handle is NULL", errs.Invalid), cerr, cerrLen)
	}
	var cfg struct {
		KeyframeInterval *int               `json:"keyframe_interval"`
		Reference        string             `json:"reference"`
		Lossy            *[]store.LossyRule `json:"lossy"`
		// Positions: TPDE_DELTA_* position coding of this writer's delta
		// frames (0 auto, 1 dense, 2 sparse); not part of the store's config.
		Positions int `json:"positions"`
		// MaxOutput: the decode limit of this handle's reads (0: none
		// beyond the memory this process may use), as max_output elsewhere.
		MaxOutput uint64 `json:"max_output"`
	}
	if err := jsonArg(config, configLen, "config", &cfg); err != nil {
		return status(err, cerr, cerrLen)
	}
	if cfg.Positions < int(delta.SparseAuto) || cfg.Positions > int(delta.SparseAlways) {
		return status(fmt.Errorf("%w: config positions %d (must be 0, 1 or 2)", errs.Invalid, cfg.Positions), cerr, cerrLen)
	}
	if write < 0 || write > C.TPDE_STORE_STAGE {
		return status(fmt.Errorf("%w: write %d (must be 0, TPDE_STORE_WRITE or TPDE_STORE_STAGE)", errs.Invalid, int(write)), cerr, cerrLen)
	}
	opt := store.Options{Write: write == C.TPDE_STORE_WRITE, Stage: write == C.TPDE_STORE_STAGE, Reference: cfg.Reference, Threads: int(nthreads),
		Positions: delta.SparseMode(cfg.Positions), Limits: store.Limits{Output: cfg.MaxOutput, Memory: cfg.MaxOutput}}
	if cfg.KeyframeInterval != nil {
		opt.KeyframeInterval, opt.KeyframeIntervalSet = *cfg.KeyframeInterval, true
	}
	if cfg.Lossy != nil {
		opt.Lossy, opt.LossySet = *cfg.Lossy, true
	}
	s, err := store.Open(dir, opt)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	o := &openStore{s: s}
	if err := keep(&o.result, s.Config()); err != nil {
		s.Close()
		return status(err, cerr, cerrLen)
	}
	*handle = C.uint64_t(stores.Put(o))
	return C.TPDE_OK
}

//export tpde_store_close
func tpde_store_close(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	o, err := stores.Take(uint64(handle))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.tx != nil {
		o.tx.Abort()
		o.tx = nil
	}
	o.s.Close()
	return C.TPDE_OK
}

//export tpde_store_begin
func tpde_store_begin(handle C.uint64_t, step C.int64_t, hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t,
	base C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		var tagList []string
		if err := jsonArg(tags, tagsLen, "tags", &tagList); err != nil {
			return err
		}
		var err error
		if o.s.Staging() {
			o.tx, err = o.s.BeginPart()
		} else if base != 0 {
			o.tx, err = o.s.BeginBase()
		} else {
			o.tx, err = o.s.Begin(int64(step), hasStep != 0, tagList)
		}
		return err
	})
}

// take hands over the checkpoint being added (the handle no longer holds it).
func (o *openStore) take() (*store.Tx, error) {
	tx, err := o.current()
	o.tx = nil
	return tx, err
}

// idle refuses a call that needs no checkpoint being added on the handle.
func (o *openStore) idle() error {
	if o.tx != nil {
		return fmt.Errorf("%w: a checkpoint is already being added on this handle", errs.Invalid)
	}
	return nil
}

func (o *openStore) current() (*store.Tx, error) {
	if o.tx == nil {
		return nil, fmt.Errorf("%w: no checkpoint is being added (call tpde_store_begin)", errs.Invalid)
	}
	return o.tx, nil
}

// withFile is withStore for a call that adds file rel to the checkpoint
// being added on the handle.
func withFile(handle C.uint64_t, rel *C.char, cerr *C.char, cerrLen C.size_t, fn func(*openStore, *store.Tx, string) error) C.int {
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		tx, err := o.current()
		if err != nil {
			return err
		}
		r, err := goString(rel, "rel")
		if err != nil {
			return err
		}
		return fn(o, tx, r)
	})
}

//export tpde_store_add_file
func tpde_store_add_file(handle C.uint64_t, rel, src *C.char, hints *C.char, hintsLen C.uint64_t, note *C.char,
	progress *C.uint64_t, cancel *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withFile(handle, rel, cerr, cerrLen, func(_ *openStore, tx *store.Tx, r string) error {
		p, err := goString(src, "src")
		if err != nil {
			return err
		}
		var h *layout.Hints
		if err := jsonArg(hints, hintsLen, "hints", &h); err != nil {
			return err
		}
		n := ""
		if note != nil {
			n = C.GoString(note)
		}
		tx.Progress, tx.Stop = progressTo(progress), stopFrom(cancel)
		defer func() { tx.Progress, tx.Stop = nil, nil }()
		return tx.AddFile(r, p, h, n)
	})
}

func stopFrom(cancel *C.int32_t) func() error {
	c := cancelFrom(cancel)
	if c == nil {
		return nil
	}
	return func() error {
		if c() {
			return errs.Cancelled
		}
		return nil
	}
}

//export tpde_store_add_state_dict
func tpde_store_add_state_dict(handle C.uint64_t, rel *C.char, meta *C.char, metaLen C.uint64_t,
	tensors *C.tpde_store_tensor, n C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withFile(handle, rel, cerr, cerrLen, func(o *openStore, tx *store.Tx, r string) error {
		var m statedict.Meta
		if err := jsonArg(meta, metaLen, "meta", &m); err != nil {
			return err
		}
		if n > 0 && tensors == nil || uint64(n) > statedict.MaxTensors {
			return fmt.Errorf("%w: %d tensors at NULL or too many", errs.Invalid, uint64(n))
		}
		var cs []C.tpde_store_tensor
		if n > 0 {
			cs = unsafe.Slice(tensors, int(n))
		}
		ts := make([]store.Tensor, len(cs))
		for i := range cs {
			c := &cs[i]
			d, err := dtypeArg(c.dtype)
			if err != nil {
				return err
			}
			if c.name == nil || c.ndim < 0 || c.ndim > 64 || (c.ndim > 0 && c.shape == nil) {
				return fmt.Errorf("%w: tensor %d: NULL name or bad shape", errs.Invalid, i)
			}
			shape := make([]uint64, int(c.ndim))
			if c.ndim > 0 {
				copy(shape, unsafe.Slice((*uint64)(unsafe.Pointer(c.shape)), int(c.ndim)))
			}
			data, err := bytesAt(c.data, c.nbytes, "tensor data")
			if err != nil {
				return err
			}
			ts[i] = store.Tensor{Name: C.GoString(c.name), DType: dtype.DType(d), Shape: shape, Data: data}
		}
		if err := tx.AddStateDict(r, m, ts); err != nil {
			return err
		}
		// Where the layout put each tensor: a DCP rank names its items by
		// byte offset in the file, and must not lay the file out itself.
		type laid struct {
			Name   string `json:"name"`
			Offset uint64 `json:"offset"`
			NBytes uint64 `json:"nbytes"`
		}
		out := make([]laid, len(ts))
		for i := range ts {
			out[i] = laid{ts[i].Name, ts[i].Offset, uint64(len(ts[i].Data))}
		}
		return keep(&o.result, struct {
			Tensors []laid `json:"tensors"`
		}{out})
	})
}

//export tpde_store_commit
func tpde_store_commit(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		tx, err := o.take()
		if err != nil {
			return err
		}
		c, err := tx.Commit()
		if err != nil {
			tx.Abort()
			return err
		}
		return keep(&o.result, c)
	})
}

//export tpde_store_finish_part
func tpde_store_finish_part(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		tx, err := o.take()
		if err != nil {
			return err
		}
		desc, err := tx.Finish()
		if err != nil {
			tx.Abort()
			return err
		}
		o.result = desc
		return nil
	})
}

// maxParts bounds a commit's descriptors (each is at most a record's size).
const maxPartsBytes = 1 << 30

//export tpde_store_commit_parts
func tpde_store_commit_parts(handle C.uint64_t, step C.int64_t, hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t,
	holder *C.char, parts *C.char, partsLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		var tagList []string
		if err := jsonArg(tags, tagsLen, "tags", &tagList); err != nil {
			return err
		}
		if parts == nil || partsLen == 0 || uint64(partsLen) > maxPartsBytes {
			return fmt.Errorf("%w: parts: NULL, empty or over %d bytes", errs.Invalid, maxPartsBytes)
		}
		var descs []json.RawMessage
		if err := jsonArg(parts, partsLen, "parts", &descs); err != nil {
			return err
		}
		raw := make([][]byte, len(descs))
		for i, d := range descs {
			raw[i] = d
		}
		h := ""
		if holder != nil {
			h = C.GoString(holder)
		}
		c, err := o.s.CommitParts(raw, int64(step), hasStep != 0, tagList, h)
		if err != nil {
			return err
		}
		return keep(&o.result, c)
	})
}

//export tpde_store_reclaim
func tpde_store_reclaim(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		removed, err := o.s.Reclaim()
		if err != nil {
			return err
		}
		if removed == nil {
			removed = []int64{}
		}
		return keep(&o.result, map[string]any{"removed": removed})
	})
}

//export tpde_store_read_pointer
func tpde_store_read_pointer(folder *C.char, out *C.char, capacity C.uint64_t, needed *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	dir, err := goString(folder, "folder")
	if err != nil || needed == nil {
		return status(fmt.Errorf("%w: folder or needed is NULL", errs.Invalid), cerr, cerrLen)
	}
	st, step, err := store.ReadPointer(dir)
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	b, err := json.Marshal(map[string]any{"store": st, "step": step})
	if err != nil {
		return status(fmt.Errorf("%w: %v", errs.Internal, err), cerr, cerrLen)
	}
	return status(writeRaw(b, out, capacity, needed), cerr, cerrLen)
}

//export tpde_store_abort
func tpde_store_abort(handle C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if o.tx != nil {
			o.tx.Abort()
			o.tx = nil
		}
		return nil
	})
}

//export tpde_store_remove
func tpde_store_remove(handle C.uint64_t, step C.int64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		return o.s.Remove(int64(step))
	})
}

// runArg is a run name argument: NULL or "" is the main run.
func runArg(run *C.char) string {
	if run == nil {
		return store.MainRun
	}
	if r := C.GoString(run); r != "" {
		return r
	}
	return store.MainRun
}

//export tpde_store_begin_run
func tpde_store_begin_run(handle C.uint64_t, run *C.char, parent *C.char, parentLen C.uint64_t, step C.int64_t,
	hasStep C.int32_t, tags *C.char, tagsLen C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		var tagList []string
		if err := jsonArg(tags, tagsLen, "tags", &tagList); err != nil {
			return err
		}
		var p *store.RunParent
		if err := jsonArg(parent, parentLen, "parent", &p); err != nil {
			return err
		}
		var err error
		o.tx, err = o.s.BeginRun(runArg(run), p, int64(step), hasStep != 0, tagList)
		return err
	})
}

//export tpde_store_remove_from
func tpde_store_remove_from(handle C.uint64_t, run *C.char, step C.int64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		return o.s.RemoveFrom(runArg(run), int64(step))
	})
}

//export tpde_store_remove_run
func tpde_store_remove_run(handle C.uint64_t, run *C.char, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if err := o.idle(); err != nil {
			return err
		}
		if run == nil {
			return fmt.Errorf("%w: run is NULL", errs.Invalid)
		}
		return o.s.RemoveRun(C.GoString(run))
	})
}

//export tpde_store_reader_tensors
func tpde_store_reader_tensors(reader C.uint64_t, step C.int64_t, which C.int32_t, rel *C.char, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		c, err := r.checkpoint(step, which)
		if err != nil {
			return err
		}
		only := ""
		if rel != nil {
			only = C.GoString(rel)
		}
		files := []*store.FileTensors{}
		for i := range c.Files {
			if !store.Loadable(&c.Files[i]) || (only != "" && c.Files[i].Path != only) {
				continue
			}
			ft, err := r.rd.Tensors(c, c.Files[i].Path)
			if err != nil {
				return err
			}
			files = append(files, ft)
		}
		return keep(&r.result, struct {
			Step  int64                `json:"step"`
			Files []*store.FileTensors `json:"files"`
		}{c.Step, files})
	})
}

// maxSpans bounds one tpde_store_read_tensors call.
const maxSpans = 1 << 24

//export tpde_store_read_tensors
func tpde_store_read_tensors(reader C.uint64_t, step C.int64_t, rel *C.char, spans *C.tpde_store_span, n C.uint64_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		path, err := goString(rel, "rel")
		if err != nil {
			return err
		}
		if n > 0 && spans == nil || uint64(n) > maxSpans {
			return fmt.Errorf("%w: %d spans at NULL or too many", errs.Invalid, uint64(n))
		}
		var cs []C.tpde_store_span
		if n > 0 {
			cs = unsafe.Slice(spans, int(n))
		}
		out := make([]store.Span, len(cs))
		for i := range cs {
			if out[i].Dst, err = bytesAt(cs[i].dst, cs[i].nbytes, "span dst"); err != nil {
				return err
			}
			out[i].Offset = uint64(cs[i].offset)
		}
		c, err := r.rd.Checkpoint(int64(step), false)
		if err != nil {
			return err
		}
		return r.rd.ReadTensors(c, path, out)
	})
}

//export tpde_store_reader_use
func tpde_store_reader_use(reader C.uint64_t, run *C.char, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		if err := r.rd.Use(runArg(run)); err != nil {
			return err
		}
		return keep(&r.result, struct {
			Count int `json:"count"`
		}{len(r.rd.Steps())})
	})
}

//export tpde_store_reader_runs
func tpde_store_reader_runs(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		return keep(&r.result, struct {
			Runs []store.RunInfo `json:"runs"`
		}{r.rd.Runs()})
	})
}

//export tpde_store_verify
func tpde_store_verify(handle C.uint64_t, deep C.int32_t, repair C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		var out struct {
			Problems []store.Problem `json:"problems"`
			Cleaned  *store.Cleaned  `json:"cleaned"`
		}
		if repair != 0 {
			c, err := o.s.Repair()
			if err != nil {
				return err
			}
			out.Cleaned = &c
		}
		var err error
		if out.Problems, err = o.s.Verify(deep != 0); err != nil {
			return err
		}
		if out.Problems == nil {
			out.Problems = []store.Problem{}
		}
		return keep(&o.result, out)
	})
}

//export tpde_store_reader_open
func tpde_store_reader_open(handle C.uint64_t, reader *C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withStore(handle, cerr, cerrLen, func(o *openStore) error {
		if reader == nil {
			return fmt.Errorf("%w: reader is NULL", errs.Invalid)
		}
		rd, err := o.s.Reader()
		if err != nil {
			return err
		}
		r := &openReader{rd: rd}
		// What the manifest says, without the records' objects: records
		// are read one at a time when asked for (tpde_store_reader_record),
		// so that opening a reader costs the same whatever the store's
		// history.
		m := rd.Manifest()
		if err := keep(&r.result, struct {
			Generation uint64       `json:"generation"`
			Config     store.Config `json:"config"`
			Base       bool         `json:"base"`
			Count      int          `json:"count"`
		}{m.Generation, m.Config, m.Base != nil, len(m.Checkpoints)}); err != nil {
			rd.Close()
			return err
		}
		*reader = C.uint64_t(readers.Put(r))
		return nil
	})
}

//export tpde_store_reader_steps
func tpde_store_reader_steps(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		return keep(&r.result, struct {
			Steps []int64 `json:"steps"`
		}{r.rd.Steps()})
	})
}

// checkpoint is the record which (TPDE_STORE_STEP, _LATEST, _BASE) names.
func (r *openReader) checkpoint(step C.int64_t, which C.int32_t) (*store.Checkpoint, error) {
	switch which {
	case C.TPDE_STORE_STEP:
		return r.rd.Checkpoint(int64(step), false)
	case C.TPDE_STORE_LATEST:
		return r.rd.Checkpoint(0, true)
	case C.TPDE_STORE_BASE:
		c, err := r.rd.Base()
		if err == nil && c == nil {
			err = fmt.Errorf("%w: the store has no base", errs.Invalid)
		}
		return c, err
	}
	return nil, fmt.Errorf("%w: which %d (must be TPDE_STORE_STEP, _LATEST or _BASE)", errs.Invalid, int32(which))
}

//export tpde_store_reader_record
func tpde_store_reader_record(reader C.uint64_t, step C.int64_t, which C.int32_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		c, err := r.checkpoint(step, which)
		if err != nil {
			return err
		}
		chains, problem, err := r.rd.Chains(c)
		if err != nil {
			return err
		}
		obj := r.rd.RecordObject(c, which == C.TPDE_STORE_BASE)
		return keep(&r.result, struct {
			Record  *store.Checkpoint `json:"record"`
			Object  string            `json:"object"`
			Chains  [][]int           `json:"chains"`
			Problem string            `json:"problem"`
		}{c, obj, chains, problem})
	})
}

//export tpde_store_reader_close
func tpde_store_reader_close(reader C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	r, err := readers.Take(uint64(reader))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rd.Close()
	return C.TPDE_OK
}

//export tpde_store_read_range
func tpde_store_read_range(reader C.uint64_t, step C.int64_t, rel *C.char, offset C.uint64_t, dst unsafe.Pointer,
	n C.uint64_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		path, err := goString(rel, "rel")
		if err != nil {
			return err
		}
		buf, err := bytesAt(dst, n, "dst")
		if err != nil {
			return err
		}
		c, err := r.rd.Checkpoint(int64(step), false)
		if err != nil {
			return err
		}
		return r.rd.ReadRange(c, path, uint64(offset), buf)
	})
}

//export tpde_store_restore
func tpde_store_restore(reader C.uint64_t, step C.int64_t, rel *C.char, dest *C.char, flags C.int32_t,
	cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	return withReader(reader, cerr, cerrLen, func(r *openReader) error {
		d, err := goString(dest, "dest")
		if err != nil {
			return err
		}
		c, err := r.rd.Checkpoint(int64(step), false)
		if err != nil {
			return err
		}
		if flags&^C.TPDE_RESTORE_FORCE != 0 {
			return fmt.Errorf("%w: restore flags %#x", errs.Invalid, int32(flags))
		}
		force := flags&C.TPDE_RESTORE_FORCE != 0
		if rel == nil {
			return r.rd.Restore(c, d, force)
		}
		for i := range c.Files {
			if c.Files[i].Path == C.GoString(rel) {
				return r.rd.RestoreFile(&c.Files[i], d, force)
			}
		}
		return fmt.Errorf("%w: checkpoint %d has no file %q", errs.Invalid, int64(step), C.GoString(rel))
	})
}

//export tpde_store_result
func tpde_store_result(handle C.uint64_t, out *C.char, capacity C.uint64_t, needed *C.uint64_t, cerr *C.char,
	cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	if needed == nil {
		return status(fmt.Errorf("%w: needed is NULL", errs.Invalid), cerr, cerrLen)
	}
	var res []byte
	if o, unlock, err := storeAt(handle); err == nil {
		res = o.result
		unlock()
	} else if r, unlock, err2 := readerAt(handle); err2 == nil {
		res = r.result
		unlock()
	} else {
		return status(err, cerr, cerrLen)
	}
	return status(writeRaw(res, out, capacity, needed), cerr, cerrLen)
}
