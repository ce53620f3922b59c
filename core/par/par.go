// Package par runs indexed jobs on a bounded number of goroutines.
package par

import (
	"runtime"
	"sync"
	"sync/atomic"
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
// the process default.
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

// For calls fn(worker, i) for every i in [0, n) on at most threads
// goroutines; worker is in [0, threads) and identifies the goroutine, so fn
// can index per-worker scratch. It returns the error of the lowest i that
// failed, so the result does not depend on scheduling; after a failure no
// new jobs start.
func For(n, threads int, fn func(worker, i int) error) error {
	if threads > n {
		threads = n
	}
	if threads <= 1 {
		for i := 0; i < n; i++ {
			if err := fn(0, i); err != nil {
				return err
			}
		}
		return nil
	}
	var (
		next    atomic.Int64
		failed  atomic.Bool
		mu      sync.Mutex
		firstI  = n
		firstEr error
		wg      sync.WaitGroup
	)
	for w := 0; w < threads; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for !failed.Load() {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(w, i); err != nil {
					mu.Lock()
					if i < firstI {
						firstI, firstEr = i, err
					}
					mu.Unlock()
					failed.Store(true)
				}
			}
		}(w)
	}
	wg.Wait()
	return firstEr
}
