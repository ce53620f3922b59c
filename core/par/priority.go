package par

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/tpde/tpde/core/errs"
)

// Priority is how much CPU background work may take from the rest of the
// process (Linux; elsewhere it runs at the process's priority).
type Priority int

const (
	// Normal runs work at the process's priority.
	Normal Priority = iota
	// Low runs it at nice 19.
	Low
	// Idle runs it under SCHED_IDLE: only on a core nothing else wants.
	Idle
)

// ParsePriority reads "normal", "low" or "idle" ("" is normal).
func ParsePriority(s string) (Priority, error) {
	switch s {
	case "", "normal":
		return Normal, nil
	case "low":
		return Low, nil
	case "idle":
		return Idle, nil
	}
	return Normal, fmt.Errorf("%w: priority %q (must be \"normal\", \"low\" or \"idle\")", errs.Invalid, s)
}

// Run calls fn at priority p: at Normal on the calling goroutine, else on
// a goroutine of its own whose thread is lowered to p, as are the workers
// of every For that fn starts. Panics and faults are errors, as in Guard.
func Run(p Priority, fn func() error) error {
	if p == Normal {
		return Guard(fn)
	}
	done := make(chan error, 1)
	var start func(tries int, started chan struct{})
	start = func(tries int, started chan struct{}) {
		go func() {
			if started != nil {
				close(started)
			}
			if !lowerTo(p) && tries > 0 {
				handOff(func(next chan struct{}) { start(tries-1, next) })
				return
			}
			done <- Guard(fn)
		}()
	}
	start(8, nil)
	return <-done
}

// Start calls fn at priority p, as Run does, on a goroutine of its own, and
// returns at once; wait blocks until fn has returned and gives its error (a
// panic or fault of fn's included, as in Guard), and may be called again.
func Start(p Priority, fn func() error) (wait func() error) {
	done := make(chan struct{})
	var err error
	go func() {
		defer close(done)
		defer func() {
			// Run guards fn; this catches what could escape it (a panic
			// while formatting fn's panic), since a goroutine's panic
			// would end the process.
			if r := recover(); r != nil {
				err = &PanicError{Value: r, Stack: debug.Stack()}
			}
		}()
		err = Run(p, fn)
	}()
	return func() error {
		<-done
		return err
	}
}

// handOff is how a goroutine on the runtime's first thread (m0), which is
// never lowered (priority_linux.go), gives its work to another: it starts
// the replacement with spawn and keeps m0 pinned until the replacement
// runs, so that the replacement runs on another thread (a goroutine
// started from m0 would otherwise most likely run next on m0 itself).
func handOff(spawn func(started chan struct{})) {
	runtime.LockOSThread()
	started := make(chan struct{})
	spawn(started)
	<-started
	runtime.UnlockOSThread()
}
