package api

import (
	"syscall"
	"unsafe"
)

// hugePageOut asks the kernel to back the whole 2 MiB pages of an output
// buffer of at least hugeOutMin bytes with transparent huge pages, before
// the decoder's first write faults them in. A fresh tensor from the caller
// (torch.empty) is untouched anonymous memory, and faulting it in 4 KiB at
// a time (a fault and a page clear each) cost about a fifth of the
// single-thread decode of an fp32 tensor of 47 MB. Only a hint: memory
// already faulted in keeps its pages, and where THP is off ("never") or
// the range is not anonymous memory the call fails and nothing changes.
func hugePageOut(dst []byte) {
	const huge = 2 << 20
	if len(dst) < hugeOutMin {
		return
	}
	p := uintptr(unsafe.Pointer(&dst[0]))
	lo := (p + huge - 1) &^ (huge - 1)
	hi := (p + uintptr(len(dst))) &^ (huge - 1)
	if hi <= lo {
		return
	}
	_ = syscall.Madvise(dst[lo-p:hi-p], 14 /* MADV_HUGEPAGE */)
}

// hugeOutMin: below a few huge pages the hint cannot pay.
const hugeOutMin = 8 << 20
