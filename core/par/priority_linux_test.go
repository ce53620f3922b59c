package par

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/klauspost/compress/zstd"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// prioritiesSeen runs For from a goroutine whose thread has been set up by
// lower, and returns the priority every job ran at.
func prioritiesSeen(t *testing.T, lower func()) []priority {
	var (
		mu   sync.Mutex
		seen []priority
		done = make(chan error)
	)
	var try func()
	try = func() {
		// Locked and never unlocked: the lowered thread ends with this
		// goroutine instead of going back to the runtime. Not on m0,
		// which tpde never lowers (the runtime parks it rather than end
		// it), so neither may the test.
		runtime.LockOSThread()
		if syscall.Gettid() == m0 {
			runtime.UnlockOSThread()
			go try()
			return
		}
		lower()
		done <- For(64, 4, func(_, _ int) error {
			if syscall.Gettid() == m0 {
				return nil // m0 is never lowered: a job it runs runs at normal priority
			}
			p := threadPriority()
			mu.Lock()
			seen = append(seen, p)
			mu.Unlock()
			return nil
		})
	}
	go try()
	require.NoError(t, <-done)
	return seen
}

func TestWorkersRunAtTheCallersLoweredPriority(t *testing.T) {
	cases := map[string]struct {
		lower func()
		want  priority
	}{
		"nice": {func() { require.NoError(t, syscall.Setpriority(syscall.PRIO_PROCESS, 0, normal.nice+7)) },
			priority{policy: normal.policy, nice: normal.nice + 7}},
		"idle": {func() {
			param := struct{ priority int32 }{0}
			_, _, e := syscall.RawSyscall(syscall.SYS_SCHED_SETSCHEDULER, 0, schedIdle, uintptr(unsafe.Pointer(&param)))
			require.Zero(t, e)
		}, priority{policy: schedIdle, nice: normal.nice}},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			// Jobs m0 ran are not in seen: it may run them all, as it
			// may any goroutine, and is never lowered.
			seen := prioritiesSeen(t, c.lower)
			for _, p := range seen {
				assert.Equal(t, c.want, p)
			}
			// Nothing lowered went back to the runtime: a caller at
			// normal priority gets workers at normal priority.
			for _, p := range prioritiesSeen(t, func() {}) {
				assert.Equal(t, normal, p)
			}
		})
	}
}

// Go's goroutine runs at its caller's lowered priority, as For's workers
// do: an add at idle priority hashes its files at idle priority too.
func TestGoRunsAtTheCallersLoweredPriority(t *testing.T) {
	got := make(chan priority, 1)
	var try func()
	try = func() {
		runtime.LockOSThread() // never unlocked: the lowered thread ends with this goroutine
		if syscall.Gettid() == m0 {
			runtime.UnlockOSThread()
			go try()
			return
		}
		require.NoError(t, syscall.Setpriority(syscall.PRIO_PROCESS, 0, normal.nice+5))
		var seen priority
		wait := Go(func() error {
			if syscall.Gettid() == m0 {
				return errors.New("ran on m0, which is never lowered")
			}
			seen = threadPriority()
			return nil
		})
		if err := wait(); err != nil {
			t.Error(err)
		}
		got <- seen
	}
	go try()
	assert.Equal(t, priority{policy: normal.policy, nice: normal.nice + 5}, <-got)
}

// idleThreads lists the process's threads under SCHED_IDLE.
func idleThreads(t *testing.T) []int {
	ents, err := os.ReadDir("/proc/self/task")
	require.NoError(t, err)
	var out []int
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		require.NoError(t, err)
		r, _, errno := syscall.RawSyscall(syscall.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
		if errno == 0 && int(r) == schedIdle {
			out = append(out, tid)
		}
	}
	return out
}

func TestRunLowersTheWorkAndLeavesNoLoweredThreadBehind(t *testing.T) {
	// Those of earlier tests end after their goroutines: slowly on a busy
	// machine, where an idle thread gets a core last (a bound on
	// liveness, not a timing).
	require.Eventually(t, func() bool { return len(idleThreads(t)) == 0 }, 2*time.Minute, 10*time.Millisecond)
	var (
		mu   sync.Mutex
		seen []priority
	)
	for round := 0; round < 5; round++ {
		require.NoError(t, Run(Idle, func() error {
			if syscall.Gettid() != m0 { // never lowered: see prioritiesSeen
				mu.Lock()
				seen = append(seen, threadPriority())
				mu.Unlock()
			}
			// Blocking work makes the runtime start threads while it
			// runs: none may be cloned from a lowered one.
			return For(32, 4, func(_, _ int) error {
				time.Sleep(100 * time.Microsecond)
				if syscall.Gettid() == m0 {
					return nil // never lowered (see prioritiesSeen)
				}
				mu.Lock()
				seen = append(seen, threadPriority())
				mu.Unlock()
				return nil
			})
		}))
	}
	for _, p := range seen {
		require.Equal(t, Idle.of(), p)
	}
	// The lowered threads end with their goroutines.
	require.Eventually(t, func() bool { return len(idleThreads(t)) == 0 }, 2*time.Minute, 10*time.Millisecond,
		"threads left under SCHED_IDLE: %v", idleThreads(t))
	for _, p := range prioritiesSeen(t, func() {}) {
		assert.Equal(t, normal, p)
	}
	assert.NoError(t, Run(Low, func() error {
		assert.Equal(t, priority{policy: normal.policy, nice: 19}, threadPriority())
		return nil
	}))
	p, err := ParsePriority("realtime")
	assert.Error(t, err)
	assert.Equal(t, Normal, p)
}

// A goroutine of Run may land on the runtime's first thread (m0), which the
// runtime parks instead of ending when a goroutine locked to it exits: it
// must never be lowered, or it would serve other work lowered for good.
// Blocking work (fsync, a zstd stream's goroutines) makes the scheduler
// move goroutines between threads, m0 among them.
func TestRunNeverLowersTheRuntimesFirstThread(t *testing.T) {
	require.Eventually(t, func() bool { return len(idleThreads(t)) == 0 }, 2*time.Minute, 10*time.Millisecond)
	dir := t.TempDir()
	for round := 0; round < 10; round++ {
		require.NoError(t, Run(Idle, func() error {
			var buf bytes.Buffer
			w, err := zstd.NewWriter(&buf)
			if err != nil {
				return err
			}
			if _, err := w.Write(make([]byte, 1<<20)); err != nil {
				return err
			}
			if err := w.Close(); err != nil {
				return err
			}
			return os.WriteFile(filepath.Join(dir, "x"), buf.Bytes(), 0o600)
		}))
	}
	assert.NotContains(t, idleThreads(t), m0)
	require.Eventually(t, func() bool { return len(idleThreads(t)) == 0 }, 2*time.Minute, 10*time.Millisecond,
		"threads left under SCHED_IDLE: %v", idleThreads(t))
}
