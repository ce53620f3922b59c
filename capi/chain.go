package main

// The chain and keyframe policy (core/chain), shared by the store and the
// bundle compressor: Python asks it rather than keeping a copy.

/*
#include "tpde.h"
*/
import "C"

import (
	"fmt"
	"runtime/debug"
	"unsafe"

	"github.com/tpde/tpde/core/chain"
	"github.com/tpde/tpde/core/errs"
)

//export tpde_chain_forward
func tpde_chain_forward(policy *C.char, policyLen C.uint64_t, sinceKeyframe C.int64_t, keyframe *C.int32_t,
	interval *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	p := chain.Default()
	if policy != nil && policyLen > 0 {
		b, err := bytesAt(unsafe.Pointer(policy), policyLen, "policy")
		if err != nil {
			return status(err, cerr, cerrLen)
		}
		if p, err = chain.Parse(b); err != nil {
			return status(fmt.Errorf("%w: %v", errs.Invalid, err), cerr, cerrLen)
		}
	}
	if keyframe != nil {
		*keyframe = 0
		if p.Forward(int(sinceKeyframe)) {
			*keyframe = 1
		}
	}
	if interval != nil {
		*interval = C.int32_t(p.Interval)
	}
	return C.TPDE_OK
}
