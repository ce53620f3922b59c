package dtype

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNamesRoundTrip(t *testing.T) {
	for d := DType(0); d < Count; d++ {
		got, ok := FromName(d.String())
		require.True(t, ok, d.String())
		assert.Equal(t, d, got)
		assert.Contains(t, []int{1, 2, 4, 8}, d.Width())
	}
}

func TestFloatLayoutsFillTheWidth(t *testing.T) {
	for d := DType(0); d < Count; d++ {
		l := d.Layout()
		if l.Float {
			assert.Equal(t, l.Width*8, 1+l.ExpBits+l.MantBits, d.String())
		}
	}
}

func TestUnknown(t *testing.T) {
	_, ok := FromName("C64")
	assert.False(t, ok)
	assert.False(t, DType(Count).Valid())
	assert.Equal(t, "dtype(200)", DType(200).String())
	assert.Panics(t, func() { DType(Count).Layout() })
}
