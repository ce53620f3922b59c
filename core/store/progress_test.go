package store

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// progressLog records what a Progress callback is told.
type progressLog struct{ done, total []uint64 }

func (l *progressLog) report(done, total uint64) {
	l.done, l.total = append(l.done, done), append(l.total, total)
}

// check: from 0 to the total, never backwards, one total throughout.
func (l *progressLog) check(t *testing.T, total uint64) {
	t.Helper()
	require.NotEmpty(t, l.done)
	assert.Equal(t, uint64(0), l.done[0])
	assert.Equal(t, total, l.done[len(l.done)-1])
	for i := range l.done {
		assert.Equal(t, total, l.total[i])
		if i > 0 {
			assert.GreaterOrEqual(t, l.done[i], l.done[i-1])
		}
	}
}

func TestRestoreAndVerifyTellTheirProgress(t *testing.T) {
	dir, src := t.TempDir(), t.TempDir()
	s, err := Open(dir, Options{Write: true, KeyframeInterval: 3})
	require.NoError(t, err)
	ser := newSeries(2)
	for step := int64(1); step <= 4; step++ {
		addFiles(t, s, step, map[string]string{
			"model.safetensors": write(t, src, fmt.Sprintf("%d/model.safetensors", step), ser.step(t)),
			"config.json":       write(t, src, fmt.Sprintf("%d/config.json", step), []byte(`{"a": 1}`)),
		})
	}
	s.Close()

	require.NoError(t, withCheckpoint(dir, 2, func(_ *Store, rd *Reader, c *Checkpoint) error {
		var total uint64
		for _, f := range c.Files {
			total += f.Size
		}
		var folder progressLog
		rd.Progress = folder.report
		require.NoError(t, rd.Restore(c, filepath.Join(t.TempDir(), "out"), false))
		folder.check(t, total)
		assert.Greater(t, len(folder.done), 2, "told as it writes, not only at the end")

		var one progressLog
		rd.Progress = one.report
		f, err := c.File("model.safetensors")
		require.NoError(t, err)
		require.NoError(t, rd.RestoreFile(f, filepath.Join(t.TempDir(), "m"), false))
		one.check(t, f.Size)
		return nil
	}))

	for _, deep := range []bool{false, true} {
		s, err := Open(dir, Options{})
		require.NoError(t, err)
		var log progressLog
		s.Progress = log.report
		problems, err := s.Verify(deep)
		require.NoError(t, err)
		assert.Empty(t, problems)
		log.check(t, 4)
		assert.Equal(t, []uint64{0, 1, 2, 3, 4}, log.done, "one checkpoint at a time")
		s.Close()
	}
}
