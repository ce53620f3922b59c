package frame

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// The driver's side of the chunk-coder contract, with a coder that is
// neither kind's: each slot's capacity is the chunk's worst case, payloads
// coded elsewhere are moved into their slot, the slots are packed in chunk
// order, and the two CRCs that open every entry are the driver's.
func TestEncodeChunksPacksSlotsAndWritesTheCRCs(t *testing.T) {
	const hl, el, overhead = 8, 10, 3
	l := chunkLayout{headerLen: hl, entryLen: el, rawSize: 23, chunkBytes: 5, overhead: overhead}
	require.Equal(t, 5, l.nchunks())
	// Chunk i stores i+1 bytes of value i; odd chunks are coded in scratch.
	payload := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, i+1) }
	dst := make([]byte, hl+l.nchunks()*el+4+l.nchunks()*(l.chunkBytes+overhead))
	for _, threads := range []int{1, 3} {
		crew := hireWorkers(newScratchPool(func() []byte { return nil }), threads, l.nchunks())
		n, err := encodeChunks(dst, l, crew, nil, func(_ []byte, i, lo, hi int, e, slot []byte) ([]byte, uint32, error) {
			assert.Zero(t, len(slot))
			assert.Equal(t, hi-lo+overhead, cap(slot), "chunk %d", i)
			e[8] = byte(lo)
			if i%2 == 1 {
				return payload(i), uint32(100 + i), nil
			}
			return append(slot, payload(i)...), uint32(100 + i), nil
		})
		crew.release()
		require.NoError(t, err)
		p0 := hl + l.nchunks()*el + 4
		var want []byte
		for i := range l.nchunks() {
			want = append(want, payload(i)...)
			e := dst[hl+i*el:]
			assert.Equal(t, uint32(100+i), binary.LittleEndian.Uint32(e))
			assert.Equal(t, crc(payload(i)), binary.LittleEndian.Uint32(e[4:]))
			assert.Equal(t, byte(i*l.chunkBytes), e[8])
		}
		assert.Equal(t, p0+len(want), n)
		assert.Equal(t, want, dst[p0:n])
		table := dst[hl : p0-4]
		assert.Equal(t, crc(table), binary.LittleEndian.Uint32(dst[p0-4:]))
	}
}

func TestEncodeChunksRefusesAPayloadBeyondItsSlotAndHonoursStop(t *testing.T) {
	l := chunkLayout{headerLen: 4, entryLen: 8, rawSize: 8, chunkBytes: 4}
	dst := make([]byte, 4+2*8+4+8)
	pool := newScratchPool(func() int { return 0 })
	crew := hireWorkers(pool, 1, l.nchunks())
	defer crew.release()
	_, err := encodeChunks(dst, l, crew, nil, func(_ int, i, lo, hi int, _, _ []byte) ([]byte, uint32, error) {
		return make([]byte, hi-lo+1), 0, nil
	})
	require.ErrorIs(t, err, errs.Internal)
	assert.Contains(t, err.Error(), "chunk 0 payload of 5 bytes exceeds its slot")

	stop := errors.New("stopped")
	calls := 0
	_, err = encodeChunks(dst, l, crew, func() error {
		if calls++; calls == 2 {
			return stop
		}
		return nil
	}, func(_ int, i, lo, hi int, _, slot []byte) ([]byte, uint32, error) {
		return slot, 0, nil
	})
	require.ErrorIs(t, err, stop)
}

func TestAppendCodedKeepsInPlaceOutputAndCopiesTheRest(t *testing.T) {
	buf := make([]byte, 2, 6)
	coded := append(buf[2:], 7, 8)
	got := appendCoded(buf, coded)
	assert.Equal(t, []byte{0, 0, 7, 8}, got)
	assert.Same(t, &buf[0], &got[0])
	got = appendCoded(got, []byte{9})
	assert.Equal(t, []byte{0, 0, 7, 8, 9}, got)
	assert.Same(t, &buf[0], &got[0])
}
