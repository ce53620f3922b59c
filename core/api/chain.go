package api

// Chains (docs/FORMAT.md §6.14): the one chain and keyframe policy
// (core/chain) that bounds every series, asked by the bundle compressor.

import (
	"fmt"

	"github.com/tpde/tpde/core/chain"
	"github.com/tpde/tpde/core/errs"
)

// ChainForward reads a policy document (empty: the default) and says
// whether the next checkpoint of a forward chain, sinceKeyframe
// checkpoints after its last keyframe (0: none yet), must be a keyframe,
// and the K in effect.
func ChainForward(policy []byte, sinceKeyframe int64) (keyframe bool, interval int32, err error) {
	p := chain.Default()
	if len(policy) > 0 {
		if p, err = chain.Parse(policy); err != nil {
			return false, 0, fmt.Errorf("%w: %v", errs.Invalid, err)
		}
	}
	return p.Forward(int(sinceKeyframe)), int32(p.Interval), nil
}
