package api

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// keyframe codes t and returns the frame.
func keyframe(t *testing.T, x Tensor) []byte {
	t.Helper()
	bound, err := EncodeBound(uint64(len(x.Data)), x.DType, int32(len(x.Shape)), 0)
	require.NoError(t, err)
	dst := make([]byte, bound)
	n, err := Encode(x, 0, 0, 0, dst)
	require.NoError(t, err)
	return dst[:n]
}

func TestFrameRoundTripAndInspect(t *testing.T) {
	x := Tensor{DType: f32, Shape: []uint64{10, 100}, Data: floats(1000, 1)}
	frame := keyframe(t, x)
	back := make([]byte, len(x.Data))
	n, err := Decode(frame, back, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(len(x.Data)), n)
	require.Equal(t, x.Data, back)

	require.NoError(t, Inspect(caller, frame))
	var info FrameInfo
	doc(t, 0, &info)
	require.Equal(t, FrameInfo{VersionMajor: 1, Kind: 0, DType: f32, Shape: []uint64{10, 100}, RawSize: 4000,
		FrameSize: uint64(len(frame)), ChunkElems: info.ChunkElems, NChunks: info.NChunks}, info)
	require.Positive(t, info.NChunks)

	bits, err := EntropyBound(x)
	require.NoError(t, err)
	require.Positive(t, bits)
}

func TestFrameArgumentsAreChecked(t *testing.T) {
	x := Tensor{DType: f32, Shape: []uint64{4}, Data: floats(4, 1)}
	_, err := Encode(Tensor{DType: 99, Shape: x.Shape, Data: x.Data}, 0, 0, 0, make([]byte, 1024))
	require.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(x, 0, 7, 0, make([]byte, 1024))
	require.ErrorIs(t, err, errs.Invalid)
	_, err = Encode(Tensor{DType: f32, Shape: []uint64{5}, Data: x.Data}, 0, 0, 0, make([]byte, 1024))
	require.ErrorIs(t, err, errs.Invalid)
	_, err = EncodeBound(16, 99, 1, 0)
	require.ErrorIs(t, err, errs.Invalid)

	frame := keyframe(t, x)
	_, err = Decode(frame, make([]byte, 15), 0)
	require.ErrorIs(t, err, errs.BufferTooSmall)
	bad := append([]byte{}, frame...)
	bad[len(bad)/2] ^= 0x40
	_, err = Decode(bad, make([]byte, 16), 0)
	require.ErrorIs(t, err, errs.Corrupt)
	require.ErrorIs(t, Inspect(caller, frame[:10]), errs.Corrupt)
}

func TestDeltaRoundTripAndInspect(t *testing.T) {
	ref := floats(3000, 1)
	x := Tensor{DType: f32, Shape: []uint64{30, 100}, Data: nudged(ref)}
	bound, err := EncodeDeltaBound(uint64(len(x.Data)), f32, 2, 0)
	require.NoError(t, err)
	dst, recon := make([]byte, bound), make([]byte, len(x.Data))
	n, err := EncodeDelta(x, ref, nil, DeltaArgs{Residual: ResidualDiff}, dst, recon)
	require.NoError(t, err)
	frame := dst[:n]
	require.Equal(t, x.Data, recon, "lossless: recon is the input")

	back := make([]byte, len(x.Data))
	_, err = DecodeDelta(frame, ref, nil, back, 0)
	require.NoError(t, err)
	require.Equal(t, x.Data, back)
	_, err = DecodeDelta(frame, x.Data, nil, back, 0)
	require.ErrorIs(t, err, errs.ReferenceMismatch)
	require.Equal(t, Reference, StatusOf(err))

	require.NoError(t, InspectDelta(caller, frame))
	var info DeltaInfo
	doc(t, 0, &info)
	require.Equal(t, uint8(1), info.Kind)
	require.Equal(t, []uint64{30, 100}, info.Shape)
	require.Equal(t, ResidualDiff, info.Residual)
	require.False(t, info.Lossy || info.Identical || info.NeedsRef2)
	require.Equal(t, uint64(1000), info.ChangedElems)
	require.InDelta(t, 100*2.0/3, info.Sparsity, 0.1)
	// The keyframe-only inspect refuses a delta frame.
	require.ErrorIs(t, Inspect(caller, frame), errs.Unsupported)

	// A keyframe through InspectDelta: the delta fields are zero.
	require.NoError(t, InspectDelta(caller, keyframe(t, x)))
	doc(t, 0, &info)
	require.Equal(t, uint8(0), info.Kind)
	require.Equal(t, -1, info.Residual)
	require.Zero(t, info.Sparsity)
}

func TestLossyDeltaAndThreshold(t *testing.T) {
	ref := floats(3000, 1)
	x := Tensor{DType: f32, Shape: []uint64{3000}, Data: nudged(ref)}
	thr, err := DeltaThreshold(x.Data, ref, f32, 90)
	require.NoError(t, err)
	require.Positive(t, thr)
	bound, err := EncodeDeltaBound(uint64(len(x.Data)), f32, 1, 0)
	require.NoError(t, err)
	dst, recon := make([]byte, bound), make([]byte, len(x.Data))
	n, err := EncodeDelta(x, ref, nil, DeltaArgs{Residual: ResidualAuto, Threshold: thr, QuantBits: 8}, dst, recon)
	require.NoError(t, err)
	require.NoError(t, InspectDelta(caller, dst[:n]))
	var info DeltaInfo
	doc(t, 0, &info)
	require.True(t, info.Lossy)
	require.Equal(t, thr, info.Bound)
	require.LessOrEqual(t, info.MaxError, thr)
	require.Equal(t, 8, info.QuantBits)

	_, err = EncodeDelta(x, ref, nil, DeltaArgs{}, dst, make([]byte, len(x.Data)-1))
	require.ErrorIs(t, err, errs.BufferTooSmall)
	_, err = DeltaThreshold(x.Data, ref, 6, 50) // I32: not a float
	require.ErrorIs(t, err, errs.Invalid)
}
