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

// drop returns the pages to the OS; the next use sees zeros.
func (s *buffer) drop() {
	if len(s.b) > 0 {
		_ = syscall.Madvise(s.b, syscall.MADV_DONTNEED)
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
