package main

// Chains (include/tpde.h, "Chains"): the chain and keyframe policy
// (core/chain), shared by the store and the bundle compressor; Python asks
// it rather than keeping a copy.

/*
#define TPDE_NO_PROTOTYPES
#include "tpde.h"
*/
import "C"

import (
	"runtime/debug"

	"github.com/tpde/tpde/core/api"
)

//export tpde_chain_forward
func tpde_chain_forward(policy *C.char, policyLen C.uint64_t, sinceKeyframe C.int64_t, keyframe *C.int32_t,
	interval *C.int32_t, cerr *C.char, cerrLen C.size_t) (rc C.int) {
	defer guard(&rc, cerr, cerrLen, debug.SetPanicOnFault(true))
	var a args
	p := a.document(policy, policyLen, "policy")
	if a.err != nil {
		return status(a.err, cerr, cerrLen)
	}
	kf, k, err := api.ChainForward(p, int64(sinceKeyframe))
	if err != nil {
		return status(err, cerr, cerrLen)
	}
	put(interval, k, nil, cerr, cerrLen)
	return put(keyframe, boolInt(kf), nil, cerr, cerrLen)
}

func boolInt(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
