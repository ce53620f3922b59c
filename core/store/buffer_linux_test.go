package store

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// drop keeps the first residentBytes of a buffer mapped (the next tensor
// reuses those pages) and hands the rest back to the OS.
func TestDropKeepsOnlyTheFirstResidentBytes(t *testing.T) {
	var b buffer
	defer b.free()
	p, err := b.get(residentBytes + 1<<20)
	require.NoError(t, err)
	for i := range p {
		p[i] = 0x5A
	}
	b.drop()
	p, err = b.get(residentBytes + 1<<20)
	require.NoError(t, err)
	require.Equal(t, byte(0x5A), p[residentBytes-1], "kept")
	require.Equal(t, byte(0), p[residentBytes], "handed back: the kernel maps zeros again")
}
