// Package par runs indexed jobs on a bounded number of goroutines.
//
// It is the only place in tpde that starts goroutines, so it carries the
// two promises of include/tpde.h that goroutines could break:
//
//   - No panic escapes. A panic in a job, on whichever goroutine it runs,
//     is recovered and returned as a *PanicError (which matches
//     errs.Internal), so it reaches the caller as an error instead of
//     aborting the process: a recover in the C ABI glue only covers the
//     goroutine that entered the library.
//   - Memory faults are errors. Jobs run with debug.SetPanicOnFault, so a
//     fault reading memory that went away (a memory-mapped file truncated
//     by another process while tpde reads it) becomes a *PanicError whose
//     Fault() is true, which callers report as an I/O error, instead of
//     the runtime's fatal "unexpected fault address".
//
// It also keeps a third: workers run at the priority of the thread that
// called For (priority_linux.go), so a caller that lowered its thread to
// stay out of training's way is not undone by the runtime's threads.
//
// Callers size per-worker scratch with the count that Workers returns and
// pass that same count to For: the process default (SetDefaultThreads) can
// change between two reads of it, from another thread.
package par

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/tpde/tpde/core/errs"
)

var defaultThreads atomic.Int32

// MaxThreads caps any requested thread count.
const MaxThreads = 1024

// SetDefaultThreads sets the thread count used when a caller passes 0.
// n <= 0 restores the default, the number of CPUs.
func SetDefaultThreads(n int) {
	n = max(0, min(n, MaxThreads))
	defaultThreads.Store(int32(n))
}

// Threads resolves a requested thread count: n > 0 is taken as is, 0 means
// the process default. Read it once per operation (see Workers).
func Threads(n int) int {
	if n > 0 {
		// More goroutines than this only costs memory (one scratch each).
		return min(n, MaxThreads)
	}
	if d := int(defaultThreads.Load()); d > 0 {
		return d
	}
	return runtime.NumCPU()
}

// Workers is the number of goroutines For will use for jobs jobs at the
// requested thread count: at least 1, at most jobs. Size per-worker scratch
// with it and hand the same value to For.
func Workers(requested, jobs int) int {
	return max(1, min(Threads(requested), jobs))
}

// PanicError is a panic recovered from a job.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	if e.Fault() {
		return fmt.Sprintf("%v: memory tpde was reading became unreadable (a memory-mapped file truncated by another process?): %v", errs.IO, e.Value)
	}
	stack := e.Stack
	if len(stack) > 400 {
		stack = stack[:400]
	}
	return fmt.Sprintf("%v (please report): panic: %v: %s", errs.Internal, e.Value, stack)
}

// Unwrap makes a fault match errs.IO and syscall.EIO, anything else
// errs.Internal.
func (e *PanicError) Unwrap() []error {
	if e.Fault() {
		return []error{errs.IO, syscall.EIO}
	}
	return []error{errs.Internal}
}

// Fault reports whether the panic was a memory fault (SIGBUS or SIGSEGV at a
// non-nil address), such as reading a mapped file that was truncated.
func (e *PanicError) Fault() bool {
	re, ok := e.Value.(runtime.Error)
	if !ok {
		return false
	}
	_, hasAddr := re.(interface{ Addr() uintptr })
	return hasAddr
}

// Guard runs fn on the calling goroutine with the protections of For: a
// panic becomes a *PanicError, a memory fault a *PanicError with Fault().
func Guard(fn func() error) (err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = &PanicError{Value: r, Stack: debug.Stack()}
		}
	}()
	return fn()
}

// For calls fn(worker, i) for every i in [0, n) on at most threads
// goroutines; worker is in [0, threads) and identifies the goroutine, so fn
// can index per-worker scratch sized by threads. It returns the error of
// the lowest i that failed, so the result does not depend on scheduling;
// after a failure no new jobs start. A panicking job fails like one that
// returned a *PanicError.
func For(n, threads int, fn func(worker, i int) error) error {
	if threads > n {
		threads = n
	}
	if threads <= 1 {
		return Guard(func() error {
			for i := 0; i < n; i++ {
				if err := fn(0, i); err != nil {
					return err
				}
			}
			return nil
		})
	}
	var (
		next    atomic.Int64
		failed  atomic.Bool
		mu      sync.Mutex
		firstI  = n
		firstEr error
		wg      sync.WaitGroup
	)
	fail := func(i int, err error) {
		mu.Lock()
		if i < firstI {
			firstI, firstEr = i, err
		}
		mu.Unlock()
		failed.Store(true)
	}
	prio := lowered()
	// A worker that must run lowered but landed on the runtime's first
	// thread, which is never lowered, hands its place to another goroutine
	// (handOff), a few times, then works as it is.
	var start func(w, tries int, started chan struct{})
	start = func(w, tries int, started chan struct{}) {
		go func() {
			if started != nil {
				close(started)
			}
			if prio != nil && !prio.apply() && tries > 0 {
				handOff(func(next chan struct{}) { start(w, tries-1, next) })
				return
			}
			defer wg.Done()
			i := -1
			err := Guard(func() error {
				for !failed.Load() {
					i = int(next.Add(1) - 1)
					if i >= n {
						return nil
					}
					if err := fn(w, i); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				fail(i, err)
			}
		}()
	}
	for w := 0; w < threads; w++ {
		wg.Add(1)
		start(w, 8, nil)
	}
	wg.Wait()
	return firstEr
}

// Go calls fn on a goroutine of its own, with Guard's protections (a
// panic or memory fault becomes an error) and at the caller's thread
// priority, as For's workers run, and returns at once; wait blocks until
// fn has returned and gives its error, and may be called again.
func Go(fn func() error) (wait func() error) {
	prio := lowered()
	done := make(chan struct{})
	var err error
	var start func(tries int, started chan struct{})
	start = func(tries int, started chan struct{}) {
		go func() {
			if started != nil {
				close(started)
			}
			if prio != nil && !prio.apply() && tries > 0 {
				handOff(func(next chan struct{}) { start(tries-1, next) })
				return
			}
			defer close(done)
			err = Guard(fn)
		}()
	}
	start(8, nil)
	return func() error {
		<-done
		return err
	}
}
