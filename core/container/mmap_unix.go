//go:build unix

package container

import (
	"fmt"
	"os"
	"syscall"

	"github.com/tpde/tpde/core/errs"
)

// mapFile maps a file read-only. Pages are read on demand and are clean, so
// the kernel can drop them under pressure instead of swapping.
func mapFile(f *os.File) ([]byte, func(), error) {
	st, err := f.Stat()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errs.IO, err)
	}
	size := st.Size()
	if size == 0 {
		return []byte{}, func() {}, nil
	}
	if int64(int(size)) != size {
		return nil, nil, fmt.Errorf("%w: %s is too large to map", errs.IO, f.Name())
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: mmap %s: %v", errs.IO, f.Name(), err)
	}
	return data, func() { _ = syscall.Munmap(data) }, nil
}

// openMapped opens and maps the file at path; release unmaps and closes it.
func openMapped(path string) (data []byte, release func(), err error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: %v", errs.IO, err)
	}
	data, unmap, err := mapFile(f)
	if err != nil {
		_ = f.Close()
		return nil, nil, err
	}
	return data, func() { unmap(); _ = f.Close() }, nil
}
