package store

import (
	"fmt"
	"syscall"
	"unsafe"

	"github.com/tpde/tpde/core/errs"
)

// buffer holds one tensor at a time. It is mapped from the OS, not taken
// from the Go heap, so that drop can hand its pages back between tensors:
// a frame written into a worst-case-sized buffer then keeps resident only
// the pages it touched, which is what keeps an add's peak memory near two
// tensors' worth (docs/FORMAT.md §11.7) whatever the checkpoint's size.
type buffer struct{ b []byte }

func (s *buffer) get(n uint64) ([]byte, error) {
	if uint64(len(s.b)) < n {
		s.free()
		size := max(n, 1<<16)
		if size > 1<<47 {
			return nil, fmt.Errorf("%w: a tensor of %d bytes", errs.Limit, n)
		}
		b, err := syscall.Mmap(-1, 0, int(size), syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
		if err != nil {
			// Never the Go heap: a failed allocation there kills the
			// process instead of reporting an error.
			return nil, errs.IOf("memory", syscall.ENOMEM, "cannot allocate %d bytes for a tensor: %v", n, err)
		}
		s.b = b
	}
	return s.b[:n], nil
}

// residentBytes is how much of a buffer drop keeps mapped. Most tensors
// fit in it, and the next tensor reuses its pages instead of faulting in
// fresh zeroed ones, 4 KiB at a time (bench/PROFILE.md, "Add and resume":
// about a sixth of an add's CPU went to those faults). Only the pages past
// it go back, so a buffer's resident size stays bounded by this, not by
// the largest tensor it ever held.
const residentBytes = 32 << 20

// drop returns the pages past residentBytes to the OS. The bytes kept are
// whatever the last use left there: every user of a buffer writes each
// byte it then reads (encoders and decoders fill exactly what they return).
func (s *buffer) drop() {
	if len(s.b) > residentBytes {
		_ = syscall.Madvise(s.b[residentBytes:], syscall.MADV_DONTNEED)
	}
}

func (s *buffer) free() {
	if len(s.b) > 0 {
		_ = syscall.Munmap(s.b) // EINVAL for a heap fallback: the GC has it
		s.b = nil
	}
}

// release drops the pages of a read-only file mapping that are wholly
// inside b: they stay in the page cache, but leave this process's memory.
func release(b []byte) {
	const page = 4096
	if len(b) < 2*page {
		return
	}
	p := uintptr(unsafe.Pointer(&b[0]))
	lo := (page - p%page) % page
	hi := uintptr(len(b)) - (p+uintptr(len(b)))%page
	if lo < hi {
		_ = syscall.Madvise(b[lo:hi], syscall.MADV_DONTNEED)
	}
}
