package delta

import (
	"fmt"
	"math"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
)

// Mode is how one chunk is stored: the chunk table's mode byte. The values
// are part of the frame format.
type Mode uint8

const (
	// Copy: every residual of the chunk is zero (every element equals its
	// base, see Base); no payload.
	Copy Mode = 0
	// Dense: the residual of every element.
	Dense Mode = 1
	// Sparse: the positions of the elements whose residual is not zero
	// (Elias-delta gaps, entropy coded), then those residuals.
	Sparse Mode = 2
	// DenseQ: a quantization code for every element (quantized frames).
	DenseQ Mode = 3
	// SparseQ: the positions of the non-zero codes, then those codes.
	SparseQ Mode = 4
	// MaxMode is the largest defined mode.
	MaxMode = SparseQ
)

func (m Mode) String() string {
	switch m {
	case Copy:
		return "copy"
	case Dense:
		return "dense"
	case Sparse:
		return "sparse"
	case DenseQ:
		return "dense-quantized"
	case SparseQ:
		return "sparse-quantized"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// SparseMode chooses between the dense and the sparse coding of chunks.
type SparseMode uint8

const (
	// SparseAuto codes each chunk whichever way is smallest.
	SparseAuto SparseMode = 0
	// SparseNever codes every changed chunk densely.
	SparseNever SparseMode = 1
	// SparseAlways codes every changed chunk sparsely (SparseMethodName),
	// unless that does not fit the chunk's worst-case size.
	SparseAlways SparseMode = 2
)

// SparseMethodName is the name of the sparse coding: positions as
// Elias-delta coded gaps, then zstd.
const SparseMethodName = "elias_delta_zstd"

// SparseModeFromName maps "auto", "dense" and SparseMethodName to a mode.
func SparseModeFromName(s string) (SparseMode, bool) {
	switch s {
	case "", "auto":
		return SparseAuto, true
	case "dense", "never":
		return SparseNever, true
	case SparseMethodName:
		return SparseAlways, true
	}
	return 0, false
}

// Params are the settings every chunk of one frame is coded with.
type Params struct {
	DType dtype.DType
	Kind  Kind // XOR, Diff or Pred; never Auto here
	// Threshold > 0 makes the frame lossy: an element whose real value is
	// within Threshold of its base is reconstructed as the base. It is the
	// frame's error bound.
	Threshold float64
	// QuantBits 8 or 4 quantizes the residuals of the elements that are
	// not dropped to int8 / int4 codes of a per-chunk scale (lossy frames
	// only); 0 keeps them exact.
	QuantBits int
	Context   ContextMode
	Sparse    SparseMode
	Effort    entropy.Effort

	// Set by Prepare: the context map every chunk uses.
	prepared bool
	ctx      ctxCfg
}

// Lossy reports whether the frame may reconstruct elements inexactly.
func (p *Params) Lossy() bool { return p.Threshold > 0 }

// Validate checks the parameters for an encoder.
func (p *Params) Validate() error {
	if !p.DType.Valid() {
		return fmt.Errorf("%w: dtype code %d", errs.Invalid, uint8(p.DType))
	}
	if p.Kind > MaxKind {
		return fmt.Errorf("%w: residual kind %d", errs.Invalid, uint8(p.Kind))
	}
	if p.Threshold < 0 || math.IsNaN(p.Threshold) || math.IsInf(p.Threshold, 0) {
		return fmt.Errorf("%w: lossy threshold %v (want a finite value >= 0; 0 is lossless)", errs.Invalid, p.Threshold)
	}
	if p.Threshold > 0 && !p.DType.IsFloat() {
		return fmt.Errorf("%w: lossy coding is for float dtypes only, not %s", errs.Invalid, p.DType)
	}
	switch p.QuantBits {
	case 0:
	case 4, 8:
		if p.Threshold == 0 {
			return fmt.Errorf("%w: quantization needs a threshold > 0 (the error bound it must keep)", errs.Invalid)
		}
		if !CanQuantize(p.DType) {
			return fmt.Errorf("%w: quantization is defined for F16, BF16, F32 and F64, not %s", errs.Invalid, p.DType)
		}
	default:
		return fmt.Errorf("%w: quantization to %d bits (want 0, 4 or 8)", errs.Invalid, p.QuantBits)
	}
	if p.Context > ContextOn {
		return fmt.Errorf("%w: context mode %d", errs.Invalid, p.Context)
	}
	if p.Sparse > SparseAlways {
		return fmt.Errorf("%w: sparse mode %d", errs.Invalid, p.Sparse)
	}
	if p.Effort > entropy.Max {
		return fmt.Errorf("%w: effort %d", errs.Invalid, p.Effort)
	}
	return nil
}

// escCode is the quantization code that marks an exactly coded element.
func escCode(quantBits int) int8 {
	if quantBits == 4 {
		return -8
	}
	return -128
}

// qMax is the largest quantization code magnitude.
func qMax(quantBits int) int {
	if quantBits == 4 {
		return 7
	}
	return 127
}

// Payload layout constants (docs/FORMAT.md §6.5).
const (
	ctxHdrLen   = 4  // u8 K, u8 reserved, u16 lo
	quantHdrLen = 12 // f64 scale, u32 nesc
	posHdrLen   = 10 // u8 coding, u8 method, u32 stored_len, u32 decoded_len
	streamHdr   = 5  // u8 method, u32 stored_len
	maxPosBytes = 33<<24/8 + 1
)

// ChunkOverhead is the most bytes by which the payload the encoder writes
// for a chunk of w-byte elements can exceed the chunk's raw length.
func ChunkOverhead(w int) int {
	return ctxHdrLen + quantHdrLen + posHdrLen + streamHdr*(MaxContexts*w+w)
}
