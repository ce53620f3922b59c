package api

// The checkpoint store (docs/FORMAT.md, stores): a store session holds an
// open store and at most one checkpoint (or part) being added.

import (
	"encoding/json"
	"fmt"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/statedict"
	"github.com/tpde/tpde/core/store"
)

// MaxStateDictTensors caps the tensors of one AddStateDict.
const MaxStateDictTensors = statedict.MaxTensors

// maxPartsBytes bounds a commit's descriptors (each at most a record's size).
const maxPartsBytes = 1 << 30

// OpenStore opens the store at path: mode StoreRead, StoreWrite (creating
// it if missing or empty, and taking the writer lock) or StoreStage (one
// participant of a multi-writer commit). config is a StoreConfig document
// (empty: none). Its document: the store's config.
func OpenStore(path string, mode int32, config []byte, threads int32) (uint64, error) {
	cfg, err := ParseStoreConfig(config)
	if err != nil {
		return 0, err
	}
	opt, err := cfg.options(mode, threads)
	if err != nil {
		return 0, err
	}
	s, err := openPath(path, opt)
	if err != nil {
		return 0, err
	}
	o := &storeSession{s: s}
	o.prio, _ = par.ParsePriority(cfg.Priority) // checked by ParseStoreConfig
	if err := o.keep(s.Config()); err != nil {
		s.Close()
		return 0, err
	}
	return stores.Put(o), nil
}

// CloseStore drops the checkpoint being added, if any, waits for a
// background re-code in flight, and closes the store (releasing its writer
// lock). It is closed either way; the error is the re-code's, if it failed
// (its checkpoint stays stored whole, which loses nothing).
func CloseStore(h uint64) error {
	o, err := stores.Take(h)
	if err != nil {
		return err
	}
	o.Lock()
	defer o.Unlock()
	o.abort()
	err = o.s.Settle()
	o.s.Close()
	return err
}

// WaitStore waits for the background re-code in flight on store session
// h, if any, and returns its error (once).
func WaitStore(h uint64) error {
	return with(stores, h, func(o *storeSession) error { return o.s.Settle() })
}

// idle refuses a call that needs no checkpoint being added on the session.
func (o *storeSession) idle() error {
	if o.tx != nil {
		return fmt.Errorf("%w: a checkpoint is already being added on this handle", errs.Invalid)
	}
	return nil
}

// current is the checkpoint being added.
func (o *storeSession) current() (*store.Tx, error) {
	if o.tx == nil {
		return nil, fmt.Errorf("%w: no checkpoint is being added (call tpde_store_begin)", errs.Invalid)
	}
	return o.tx, nil
}

// take hands over the checkpoint being added (the session no longer holds it).
func (o *storeSession) take() (*store.Tx, error) {
	tx, err := o.current()
	o.tx = nil
	return tx, err
}

func (o *storeSession) abort() {
	if o.tx != nil {
		o.tx.Abort()
		o.tx = nil
	}
}

// withStore runs fn on store session h at the session's priority.
func withStore(h uint64, fn func(*storeSession) error) error {
	return with(stores, h, func(o *storeSession) error {
		return par.Run(o.prio, func() error { return fn(o) })
	})
}

// withIdle runs fn on store session h when no checkpoint is being added.
func withIdle(h uint64, fn func(*storeSession) error) error {
	return withStore(h, func(o *storeSession) error {
		if err := o.idle(); err != nil {
			return err
		}
		return fn(o)
	})
}

// Begin starts adding a checkpoint at step (the newest + 1 without
// hasStep) with tags (a JSON list of strings; empty: none); with base, the
// store's base instead. On a staging session it starts a part (step, tags
// and base are the coordinator's).
func Begin(h uint64, step int64, hasStep bool, tags []byte, base bool) error {
	return withIdle(h, func(o *storeSession) error {
		t, err := parseTags(tags)
		if err != nil {
			return err
		}
		switch {
		case o.s.Staging():
			o.tx, err = o.s.BeginPart()
		case base:
			o.tx, err = o.s.BeginBase()
		default:
			o.tx, err = o.s.Begin(step, hasStep, t)
		}
		return err
	})
}

// runName is a run argument: "" is the main run.
func runName(run string) string {
	if run == "" {
		return store.MainRun
	}
	return run
}

// BeginRun is Begin on run, which is created with parent ({"run",
// "step"} or {"base": true}; empty: none) when it does not exist.
func BeginRun(h uint64, run string, parent []byte, step int64, hasStep bool, tags []byte) error {
	return withIdle(h, func(o *storeSession) error {
		t, err := parseTags(tags)
		if err != nil {
			return err
		}
		p, err := parseParent(parent)
		if err != nil {
			return err
		}
		o.tx, err = o.s.BeginRun(runName(run), p, step, hasStep, t)
		return err
	})
}

// withTx runs fn on the checkpoint being added on store session h.
func withTx(h uint64, fn func(*storeSession, *store.Tx) error) error {
	return withStore(h, func(o *storeSession) error {
		tx, err := o.current()
		if err != nil {
			return err
		}
		return fn(o, tx)
	})
}

// AddFile adds the file at src as rel (a relative path with '/'
// separators). hints: TPDE_TORCH_HINTS of a torch.save file (empty:
// none); note: why a container-like file is stored whole ("": none).
func AddFile(h uint64, rel, src string, hints []byte, note string, progress func(uint64), cancelled func() bool) error {
	return withTx(h, func(_ *storeSession, tx *store.Tx) error {
		hs, err := parseHints(hints)
		if err != nil {
			return err
		}
		tx.Progress, tx.Stop = progress, stopOn(cancelled)
		defer func() { tx.Progress, tx.Stop = nil, nil }()
		return tx.AddFile(rel, src, hs, note)
	})
}

// stopOn turns a cancel poll into the store's stop check.
func stopOn(cancelled func() bool) func() error {
	if cancelled == nil {
		return nil
	}
	return func() error {
		if cancelled() {
			return errs.Cancelled
		}
		return nil
	}
}

// NamedTensor is one tensor of a state dict.
type NamedTensor struct {
	Name string
	Tensor
}

// AddStateDict adds a state dict from memory as the file rel, in the
// state-dict layout, which the library lays out: meta is {"skeleton",
// "aliases", "state_dict_metadata"} (empty: all null), the tensors in file
// order. Its document: StateDictAdded.
func AddStateDict(h uint64, rel string, meta []byte, tensors []NamedTensor) error {
	return withTx(h, func(o *storeSession, tx *store.Tx) error {
		var m statedict.Meta
		if err := lenient(meta, "meta", &m); err != nil {
			return err
		}
		if len(tensors) > MaxStateDictTensors {
			return fmt.Errorf("%w: %d tensors (max %d)", errs.Invalid, len(tensors), MaxStateDictTensors)
		}
		ts := make([]store.Tensor, len(tensors))
		for i := range tensors {
			t := &tensors[i]
			d, err := dtypeOf(t.DType)
			if err != nil {
				return fmt.Errorf("tensor %q: %w", t.Name, err)
			}
			ts[i] = store.Tensor{Name: t.Name, DType: d, Shape: t.Shape, Data: t.Data}
		}
		if err := tx.AddStateDict(rel, m, ts); err != nil {
			return err
		}
		out := StateDictAdded{Tensors: make([]LaidTensor, len(ts))}
		for i := range ts {
			out.Tensors[i] = LaidTensor{ts[i].Name, ts[i].Offset, uint64(len(ts[i].Data))}
		}
		return o.keep(out)
	})
}

// endTx ends the checkpoint being added on store session h with fn,
// which aborts it when it fails: the session no longer holds it either way.
func endTx(h uint64, fn func(*storeSession, *store.Tx) error) error {
	return withStore(h, func(o *storeSession) error {
		tx, err := o.take()
		if err != nil {
			return err
		}
		if err := fn(o, tx); err != nil {
			tx.Abort()
			return err
		}
		return nil
	})
}

// Commit makes the checkpoint being added durable and visible. Its
// document: the checkpoint's record.
func Commit(h uint64) error {
	return endTx(h, func(o *storeSession, tx *store.Tx) error {
		c, err := tx.Commit()
		if err != nil {
			return err
		}
		return o.keep(c)
	})
}

// Abort drops the checkpoint being added, if any.
func Abort(h uint64) error {
	return withStore(h, func(o *storeSession) error {
		o.abort()
		return nil
	})
}

// FinishPart ends the part begun on a staging session. Its document: the
// part's descriptor, for the coordinator's CommitParts.
func FinishPart(h uint64) error {
	return endTx(h, func(o *storeSession, tx *store.Tx) error {
		desc, err := tx.Finish()
		if err == nil {
			o.doc = desc
		}
		return err
	})
}

// CommitParts publishes one checkpoint made of every part's files. parts
// is a JSON array of descriptors; holder ("" for none) is the folder
// beside the store whose pointer file is written first. Its document: the
// checkpoint's record.
func CommitParts(h uint64, step int64, hasStep bool, tags []byte, holder string, parts []byte) error {
	return withIdle(h, func(o *storeSession) error {
		t, err := parseTags(tags)
		if err != nil {
			return err
		}
		if len(parts) == 0 || len(parts) > maxPartsBytes {
			return fmt.Errorf("%w: parts: empty or over %d bytes", errs.Invalid, maxPartsBytes)
		}
		var descs []json.RawMessage
		if err := lenient(parts, "parts", &descs); err != nil {
			return err
		}
		raw := make([][]byte, len(descs))
		for i, d := range descs {
			raw[i] = d
		}
		c, err := o.s.CommitParts(raw, step, hasStep, t, holder)
		if err != nil {
			return err
		}
		return o.keep(c)
	})
}

// Reclaim removes every checkpoint whose holder folder no longer holds
// it. Its document: Reclaimed.
func Reclaim(h uint64) error {
	return withStore(h, func(o *storeSession) error {
		removed, err := o.s.Reclaim()
		if err != nil {
			return err
		}
		if removed == nil {
			removed = []int64{}
		}
		return o.keep(Reclaimed{removed})
	})
}

// ReadPointer reads the pointer file a holder folder keeps and leaves its
// Pointer for caller c.
func ReadPointer(c Caller, folder string) error {
	st, step, err := store.ReadPointer(folder)
	if err != nil {
		return err
	}
	return keepFor(c, Pointer{st, step})
}

// Remove removes checkpoint step of run ("": main); what any run coded
// against it is re-coded first.
func Remove(h uint64, run string, step int64) error {
	return withIdle(h, func(o *storeSession) error { return o.s.RemoveFrom(runName(run), step) })
}

// RemoveRun removes a run and its checkpoints; other runs' deltas against
// it become keyframes first.
func RemoveRun(h uint64, run string) error {
	return withIdle(h, func(o *storeSession) error { return o.s.RemoveRun(run) })
}

// Verify checks every object (deep: decodes everything too); repair
// first removes leftovers of dead writers. Its document: Verified.
func Verify(h uint64, deep, repair bool, progress func(done, total uint64)) error {
	return withStore(h, func(o *storeSession) error {
		o.s.Progress = progress
		defer func() { o.s.Progress = nil }()
		var out Verified
		if repair {
			c, err := o.s.Repair()
			if err != nil {
				return err
			}
			out.Cleaned = &c
		}
		var err error
		if out.Problems, err = o.s.Verify(deep); err != nil {
			return err
		}
		if out.Problems == nil {
			out.Problems = []store.Problem{}
		}
		return o.keep(out)
	})
}
