//go:build amd64 && !purego

package entropy

import "github.com/tpde/tpde/core/cpu"

// huff4x is the four-stream multi-symbol loop (huff4x_amd64.s).
//
//go:noescape
func huff4x(ctx *huffCtx)

var haveMulti = cpu.X86.HasBMI2
