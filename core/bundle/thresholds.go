package bundle

import (
	"fmt"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// Thresholds returns, for each delta item, the adaptive lossy threshold
// delta.PercentileThreshold gives for pct: the pct percentile of
// |Data - Ref|. The items of a checkpoint are done in one call, several at a
// time on threads goroutines (0: the default), so that a caller asks once
// per checkpoint rather than once per tensor. Every item needs a reference
// and a float dtype; an error names the tensor.
func Thresholds(items []Item, pct float64, threads int) ([]float64, error) {
	out := make([]float64, len(items))
	err := par.For(len(items), par.Threads(threads), func(_, i int) error {
		it := &items[i]
		if it.Ref == nil {
			return fmt.Errorf("%w: tensor %q has no reference: a threshold is for a delta frame", errs.Invalid, it.Name)
		}
		t, err := delta.PercentileThreshold(it.DType, it.Data, it.Ref, pct)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", it.Name, err)
		}
		out[i] = t
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}
