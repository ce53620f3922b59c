package par

import (
	"runtime"
	"syscall"
	"unsafe"
)

// Background work (a training callback coding checkpoints while training
// goes on) runs at a lowered priority so that training keeps the cores:
// Run starts it on a goroutine locked to a thread it lowers, and For's
// workers take the priority of the thread that calls For. A lowered thread
// is never unlocked, and the runtime ends a thread whose locked goroutine
// exits, so no lowered thread goes back to serve other work. The runtime's
// new threads are started from its template thread while a locked
// goroutine runs (runtime.newm), never cloned from a lowered one.

const (
	schedOther = 0
	schedBatch = 3
	schedIdle  = 5
)

// priority is a thread's scheduling policy and nice value.
type priority struct {
	policy int
	nice   int
}

// normal is the priority of the thread that loaded the package: what the
// runtime's threads have.
var normal = threadPriority()

// m0 is the runtime's first thread, on which package initialisation runs
// (locked to it). It is never lowered: the runtime does not end it when a
// goroutine locked to it exits, but parks it, so a lowered m0 would serve
// other work lowered for good.
var m0 = syscall.Gettid()

func init() {
	// Start the runtime's template thread now, from a thread at normal
	// priority: every thread the runtime starts while a locked goroutine
	// runs is cloned from it.
	runtime.LockOSThread()
	runtime.UnlockOSThread()
}

func threadPriority() priority {
	tid := syscall.Gettid()
	p := priority{policy: schedOther}
	if r, _, e := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0); e == 0 {
		p.policy = int(r)
	}
	// The raw getpriority returns 20 - nice.
	if r, err := syscall.Getpriority(syscall.PRIO_PROCESS, tid); err == nil {
		p.nice = 20 - r
	}
	return p
}

// of is the thread priority for p, relative to normal.
func (p Priority) of() priority {
	switch p {
	case Idle:
		return priority{policy: schedIdle, nice: normal.nice}
	case Low:
		return priority{policy: normal.policy, nice: 19}
	}
	return normal
}

// lowered is the caller's priority when it is lower than normal, else nil.
func lowered() *priority {
	p := threadPriority()
	if p == normal || !(p.nice > normal.nice || p.policy == schedIdle || p.policy == schedBatch) {
		return nil
	}
	return &p
}

// apply pins the calling goroutine to its thread and lowers that thread to
// p for good (see above), and says whether it did: not on m0, which it
// leaves unpinned. Lowering needs no privilege; a failure leaves the thread
// as it was, which costs speed, never correctness.
func (p *priority) apply() bool {
	runtime.LockOSThread()
	if syscall.Gettid() == m0 {
		runtime.UnlockOSThread()
		return false
	}
	if p.policy == schedIdle || p.policy == schedBatch {
		param := struct{ priority int32 }{0}
		syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, 0, uintptr(p.policy), uintptr(unsafe.Pointer(&param)))
	}
	_ = syscall.Setpriority(syscall.PRIO_PROCESS, 0, p.nice)
	return true
}

// lowerTo lowers the calling goroutine's thread to p, pinned to it; false:
// it could not, the goroutine being on m0 (try another goroutine).
func lowerTo(p Priority) bool {
	q := p.of()
	return q.apply()
}
