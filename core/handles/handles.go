// Package handles maps the opaque integers a C caller holds to the Go
// objects they stand for: an object that outlives one call (a bundle being
// written, an opened bundle) cannot be handed across the ABI as a pointer,
// since Go may move or collect it.
//
// Handle numbers come from one counter for every table and are never
// reused, so a stale or mistyped handle is refused rather than reaching
// another object.
package handles

import (
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/tpde/tpde/core/errs"
)

var last atomic.Uint64

// Table holds objects of one kind behind handles. It is safe for
// concurrent use; what the objects allow concurrently is their own
// business.
type Table[T any] struct {
	what string // for errors: "bundle writer"
	mu   sync.Mutex
	m    map[uint64]T
}

// New returns an empty table whose errors call its objects what.
func New[T any](what string) *Table[T] {
	return &Table[T]{what: what, m: map[uint64]T{}}
}

// Put stores v and returns its handle (never 0).
func (t *Table[T]) Put(v T) uint64 {
	h := last.Add(1)
	t.mu.Lock()
	t.m[h] = v
	t.mu.Unlock()
	return h
}

// Get returns the object behind h, or an errs.Invalid error naming the
// handle when there is none.
func (t *Table[T]) Get(h uint64) (T, error) {
	t.mu.Lock()
	v, ok := t.m[h]
	t.mu.Unlock()
	if !ok {
		return v, t.notOpen(h)
	}
	return v, nil
}

// Take removes the object behind h and returns it, or an errs.Invalid
// error when there is none: of two callers taking the same handle, one
// gets the object.
func (t *Table[T]) Take(h uint64) (T, error) {
	t.mu.Lock()
	v, ok := t.m[h]
	delete(t.m, h)
	t.mu.Unlock()
	if !ok {
		return v, t.notOpen(h)
	}
	return v, nil
}

// Len is the number of open handles.
func (t *Table[T]) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.m)
}

func (t *Table[T]) notOpen(h uint64) error {
	return fmt.Errorf("%w: %s handle %d is not open", errs.Invalid, t.what, h)
}
