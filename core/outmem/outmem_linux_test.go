package outmem

import (
	"errors"
	"os"
	"runtime"
	"syscall"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The hints cover only whole pages inside each buffer, at any alignment
// and length, and leave its bytes as they were.
func TestHintsKeepBytes(t *testing.T) {
	buf := make([]byte, 11<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	cuts := [][2]int{{0, len(buf)}, {1, len(buf) - 3}, {4095, 4095 + hugeMin}, {5, 5 + hugeMin - 1}, {0, 0}, {7, 7 + populateMin - 1}}
	for _, cut := range cuts {
		HugePages(buf[cut[0]:cut[1]])
	}
	var dsts [][]byte
	for _, cut := range cuts {
		dsts = append(dsts, buf[cut[0]:cut[1]])
	}
	Prepare(dsts, 2)
	Prepare(nil, 0)
	for i := range buf {
		if buf[i] != byte(i*7) {
			require.Failf(t, "byte changed", "offset %d", i)
		}
	}
}

// resident counts the pages of b (page-aligned) that are in memory.
func resident(t *testing.T, b []byte) int {
	vec := make([]byte, (len(b)+pageSize-1)/pageSize)
	_, _, e := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)), uintptr(unsafe.Pointer(&vec[0])))
	require.Zero(t, e, "mincore")
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n
}

// Prepare faults in the pages of fresh memory, anonymous (a tensor) and a
// memory file's mapping (a torch file decoded for torch.load), before any
// write; the memory reads as zeros, as it did.
func TestPrepareFaultsFreshMemoryIn(t *testing.T) {
	const n = 16 << 20
	probe, err := syscall.Mmap(-1, 0, pageSize, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	require.NoError(t, err)
	if err := syscall.Madvise(probe, 23); errors.Is(err, syscall.EINVAL) {
		t.Skip("this kernel has no MADV_POPULATE_WRITE (Linux 5.14)")
	}
	require.NoError(t, syscall.Munmap(probe))

	anon, err := syscall.Mmap(-1, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_PRIVATE|syscall.MAP_ANON)
	require.NoError(t, err)
	defer syscall.Munmap(anon)
	fd := memfd(t)
	f := os.NewFile(uintptr(fd), "memfd")
	defer f.Close()
	require.NoError(t, f.Truncate(n))
	shared, err := syscall.Mmap(fd, 0, n, syscall.PROT_READ|syscall.PROT_WRITE, syscall.MAP_SHARED)
	require.NoError(t, err)
	defer syscall.Munmap(shared)

	for name, b := range map[string][]byte{"anonymous": anon, "memory file": shared} {
		assert.Zero(t, resident(t, b), name)
		Prepare([][]byte{b[:n/2], b[n/2:]}, 2)
		assert.Equal(t, n/pageSize, resident(t, b), name)
		for i := 0; i < n; i += 4093 {
			require.Zero(t, b[i], "%s byte %d", name, i)
		}
	}
}

// memfd is memfd_create(2), as Python's os.memfd_create (the store's
// torch-file loads) calls it; Go's syscall package lacks it on amd64.
func memfd(t *testing.T) int {
	nr, ok := map[string]uintptr{"amd64": 319, "arm64": 279}[runtime.GOARCH]
	if !ok {
		t.Skipf("memfd_create's number on %s is not known here", runtime.GOARCH)
	}
	name := []byte("outmem-test\x00")
	fd, _, e := syscall.Syscall(nr, uintptr(unsafe.Pointer(&name[0])), 1 /* MFD_CLOEXEC */, 0)
	require.Zero(t, e, "memfd_create")
	return int(fd)
}
