package api

// Store readers: a reader session holds one committed snapshot of a
// store, so that what it reads does not change while a writer commits
// beside it.

import (
	"fmt"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/store"
)

// MaxSpans caps the spans of one ReadTensors.
const MaxSpans = 1 << 24

// OpenReader opens a reader on the newest committed state of store
// session h. Its document (in the new reader): ReaderHead.
func OpenReader(h uint64) (uint64, error) {
	var r uint64
	return r, with(stores, h, func(o *storeSession) error {
		rd, err := o.s.Reader()
		if err != nil {
			return err
		}
		m := rd.Manifest()
		rs := &readerSession{rd: rd}
		if err := rs.keep(ReaderHead{m.Generation, m.Config, m.Base != nil, len(m.Checkpoints)}); err != nil {
			rd.Close()
			return err
		}
		r = readers.Put(rs)
		return nil
	})
}

// CloseReader releases a reader.
func CloseReader(r uint64) error {
	rs, err := readers.Take(r)
	if err != nil {
		return err
	}
	rs.Lock()
	defer rs.Unlock()
	rs.rd.Close()
	return nil
}

// ReaderSteps: its document, Steps, lists the steps of the reader's run.
func ReaderSteps(r uint64) error {
	return with(readers, r, func(rs *readerSession) error { return rs.keep(Steps{rs.rd.Steps()}) })
}

// ReaderUse makes the reader read run ("": main) of the same snapshot.
// Its document: RunCount.
func ReaderUse(r uint64, run string) error {
	return with(readers, r, func(rs *readerSession) error {
		if err := rs.rd.Use(runName(run)); err != nil {
			return err
		}
		return rs.keep(RunCount{len(rs.rd.Steps())})
	})
}

// ReaderRuns: its document, Runs, lists the store's runs.
func ReaderRuns(r uint64) error {
	return with(readers, r, func(rs *readerSession) error { return rs.keep(Runs{rs.rd.Runs()}) })
}

// checkpoint is the record which (RecordStep, RecordLatest, RecordBase) names.
func (rs *readerSession) checkpoint(step int64, which int32) (*store.Checkpoint, error) {
	switch which {
	case RecordStep:
		return rs.rd.Checkpoint(step, false)
	case RecordLatest:
		return rs.rd.Checkpoint(0, true)
	case RecordBase:
		c, err := rs.rd.Base()
		if err == nil && c == nil {
			err = fmt.Errorf("%w: the store has no base", errs.Invalid)
		}
		return c, err
	}
	return nil, fmt.Errorf("%w: which %d (must be TPDE_STORE_STEP, _LATEST or _BASE)", errs.Invalid, which)
}

// ReaderRecord reads one checkpoint's record. Its document: RecordEntry.
func ReaderRecord(r uint64, step int64, which int32) error {
	return with(readers, r, func(rs *readerSession) error {
		c, err := rs.checkpoint(step, which)
		if err != nil {
			return err
		}
		chains, problem, err := rs.rd.Chains(c)
		if err != nil {
			return err
		}
		return rs.keep(RecordEntry{c, rs.rd.RecordObject(c, which == RecordBase), chains, problem})
	})
}

// ReaderTensors describes every safetensors and state-dict file of a
// checkpoint (rel "": all; else that file only) from its header, parsed
// and checked. Its document: CheckpointTensors.
func ReaderTensors(r uint64, step int64, which int32, rel string) error {
	return with(readers, r, func(rs *readerSession) error {
		c, err := rs.checkpoint(step, which)
		if err != nil {
			return err
		}
		files := []*store.FileTensors{}
		for i := range c.Files {
			f := &c.Files[i]
			if !store.Loadable(f) || (rel != "" && f.Path != rel) {
				continue
			}
			ft, err := rs.rd.Tensors(c, f.Path)
			if err != nil {
				return err
			}
			files = append(files, ft)
		}
		return rs.keep(CheckpointTensors{c.Step, files})
	})
}

// Span is where ReadTensors puts one tensor: the file's bytes [Offset,
// Offset + len(Dst)) into Dst, which the caller allocated.
type Span = store.Span

// ReadTensors decodes spans of file rel of checkpoint step into the
// caller's buffers: one call loads every tensor of a file.
func ReadTensors(r uint64, step int64, rel string, spans []Span) error {
	if len(spans) > MaxSpans {
		return fmt.Errorf("%w: %d spans (max %d)", errs.Invalid, len(spans), MaxSpans)
	}
	return with(readers, r, func(rs *readerSession) error {
		c, err := rs.rd.Checkpoint(step, false)
		if err != nil {
			return err
		}
		return rs.rd.ReadTensors(c, rel, spans)
	})
}

// ReadRange reads bytes [offset, offset+len(dst)) of file rel of
// checkpoint step.
func ReadRange(r uint64, step int64, rel string, offset uint64, dst []byte) error {
	return with(readers, r, func(rs *readerSession) error {
		c, err := rs.rd.Checkpoint(step, false)
		if err != nil {
			return err
		}
		return rs.rd.ReadRange(c, rel, offset, dst)
	})
}

// Restore writes checkpoint step, all or nothing: every file into the
// folder dest (rel ""), or the one file rel to the path dest. flags:
// RestoreForce replaces what exists there.
func Restore(r uint64, step int64, rel, dest string, flags int32, progress func(done, total uint64)) error {
	if flags&^RestoreForce != 0 {
		return fmt.Errorf("%w: restore flags %#x", errs.Invalid, flags)
	}
	force := flags&RestoreForce != 0
	return with(readers, r, func(rs *readerSession) error {
		c, err := rs.rd.Checkpoint(step, false)
		if err != nil {
			return err
		}
		rs.rd.Progress = progress
		defer func() { rs.rd.Progress = nil }()
		if rel == "" {
			return rs.rd.Restore(c, dest, force)
		}
		f, err := c.File(rel)
		if err != nil {
			return err
		}
		return rs.rd.RestoreFile(f, dest, force)
	})
}
