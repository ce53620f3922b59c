package par

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

func TestForVisitsEveryIndexOnce(t *testing.T) {
	for _, threads := range []int{1, 2, 7} {
		seen := make([]atomic.Int32, 1000)
		assert.NoError(t, For(len(seen), threads, func(w, i int) error {
			assert.Less(t, w, threads)
			seen[i].Add(1)
			return nil
		}))
		for i := range seen {
			assert.Equal(t, int32(1), seen[i].Load(), "index %d threads %d", i, threads)
		}
	}
}

func TestForReportsAnError(t *testing.T) {
	boom := errors.New("boom")
	err := For(100, 4, func(w, i int) error {
		if i%10 == 3 {
			return fmt.Errorf("job %d: %w", i, boom)
		}
		return nil
	})
	assert.ErrorIs(t, err, boom)
	assert.NoError(t, For(0, 4, func(w, i int) error { return boom }))
}

func TestThreads(t *testing.T) {
	SetDefaultThreads(3)
	assert.Equal(t, 3, Threads(0))
	assert.Equal(t, 5, Threads(5))
	SetDefaultThreads(0)
	assert.Greater(t, Threads(0), 0)
}

func TestWorkersIsAtLeastOneAndAtMostJobs(t *testing.T) {
	assert.Equal(t, 1, Workers(8, 0))
	assert.Equal(t, 3, Workers(8, 3))
	assert.Equal(t, 2, Workers(2, 100))
	SetDefaultThreads(5)
	defer SetDefaultThreads(0)
	assert.Equal(t, 5, Workers(0, 100))
}

// A panic in a job must come back as an error from every goroutine For
// uses, not only from the caller's: a recover in the C ABI glue does not
// cover goroutines For starts, and an unrecovered panic there aborts the
// whole process.
func TestForTurnsPanicsIntoInternalErrors(t *testing.T) {
	for _, threads := range []int{1, 2, 8} {
		err := For(64, threads, func(w, i int) error {
			if i == 37 {
				var s []int
				_ = s[i] // index out of range, as a real bug would be
			}
			return nil
		})
		var pe *PanicError
		require.ErrorAs(t, err, &pe, "threads %d", threads)
		assert.ErrorIs(t, err, errs.Internal)
		assert.False(t, pe.Fault())
		assert.Contains(t, err.Error(), "index out of range")
	}
}

func TestGuardRecoversOnTheCallingGoroutine(t *testing.T) {
	err := Guard(func() error { panic("boom") })
	assert.ErrorIs(t, err, errs.Internal)
	assert.Contains(t, err.Error(), "boom")
	assert.NoError(t, Guard(func() error { return nil }))
}

// Start runs its work on a goroutine of its own: the caller goes on at
// once, and a panic there is an error for wait, never the end of the
// process.
func TestStartReturnsAtOnceAndItsPanicIsAnError(t *testing.T) {
	for _, p := range []Priority{Normal, Low} {
		release := make(chan struct{})
		wait := Start(p, func() error {
			<-release
			panic("background work broke")
		})
		close(release) // had Start run fn on this goroutine, it would never get here
		err := wait()
		require.ErrorIs(t, err, errs.Internal)
		require.ErrorContains(t, err, "background work broke")
		require.Equal(t, err, wait(), "wait gives the same error again")
	}
	wait := Start(Normal, func() error { return nil })
	require.NoError(t, wait())
}

// Go runs its work beside the caller: the caller goes on at once, a panic
// there is an error for wait, and wait gives the same result again.
func TestGoReturnsAtOnceAndItsPanicIsAnError(t *testing.T) {
	release := make(chan struct{})
	wait := Go(func() error {
		<-release
		panic("hashing broke")
	})
	close(release) // had Go run fn on this goroutine, it would never get here
	err := wait()
	require.ErrorIs(t, err, errs.Internal)
	require.ErrorContains(t, err, "hashing broke")
	require.Equal(t, err, wait())
	require.NoError(t, Go(func() error { return nil })())
}
