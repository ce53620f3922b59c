package par

import (
	"fmt"

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
	// A goroutine that lands on the runtime's first thread cannot lower
	// it (priority_linux.go): it hands over to another goroutine, a few
	// times, then runs the work as it is.
	done := make(chan error, 1)
	var start func(tries int)
	start = func(tries int) {
		go func() {
			if !lowerTo(p) && tries > 0 {
				start(tries - 1)
				return
			}
			done <- Guard(fn)
		}()
	}
	start(8)
	return <-done
}
