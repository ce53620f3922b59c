// Package outmem prepares a caller's output memory before a decoder writes
// it: fresh memory (a torch.empty tensor, a new memory file) is otherwise
// faulted in 4 KiB at a time by the decode's own writes, a trap and a page
// clear each, on the thread that should be decoding.
package outmem

import (
	"syscall"
	"unsafe"

	"github.com/tpde/tpde/core/par"
)

// HugePages asks the kernel to back the whole 2 MiB pages of an output
// buffer of at least hugeMin bytes with transparent huge pages, before the
// decoder's first write faults them in. Faulting a fresh tensor in 4 KiB at
// a time cost about a fifth of the single-thread decode of an fp32 tensor
// of 47 MB. Only a hint: memory already faulted in keeps its pages, and
// where THP is off ("never") or the range is not anonymous memory the call
// fails and nothing changes.
func HugePages(dst []byte) {
	const huge = 2 << 20
	if len(dst) < hugeMin {
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

// hugeMin: below a few huge pages the hint cannot pay.
const hugeMin = 8 << 20

// Prepare readies every buffer of dsts for a decode on threads threads:
// the huge-page hint for the large ones, then their pages faulted in ahead
// (MADV_POPULATE_WRITE, Linux 5.14), 4 MiB per call, on every thread. The
// kernel then allocates and clears pages in a loop instead of one trap per
// page taken in the middle of decoding, and a memory file's pages (which
// cannot be huge where shmem THP is off, the default) cost the same loop.
// Buffers under populateMin are left to their faults. Only advice: an
// older kernel refuses it (EINVAL) and nothing changes; the bytes are not
// touched.
func Prepare(dsts [][]byte, threads int) {
	const piece = 4 << 20
	var pieces [][]byte
	for _, d := range dsts {
		if len(d) < populateMin {
			continue
		}
		HugePages(d)
		p := uintptr(unsafe.Pointer(&d[0]))
		lo := (p + pageSize - 1) &^ (pageSize - 1)
		hi := (p + uintptr(len(d))) &^ (pageSize - 1)
		for a := lo; a < hi; a += piece {
			pieces = append(pieces, d[a-p:min(hi, a+piece)-p])
		}
	}
	if len(pieces) == 0 {
		return
	}
	_ = par.For(len(pieces), max(1, min(threads, len(pieces))), func(_, i int) error {
		_ = syscall.Madvise(pieces[i], 23 /* MADV_POPULATE_WRITE */)
		return nil
	})
}

const (
	pageSize = 4096
	// populateMin: a smaller buffer costs a call for few pages.
	populateMin = 1 << 20
)
