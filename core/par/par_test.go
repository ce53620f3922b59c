package par

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
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
