package store

import (
	"syscall"
)

// adviseWillNeed starts the kernel reading all of f into the page cache
// and returns at once (posix_fadvise POSIX_FADV_WILLNEED).
func adviseWillNeed(fd uintptr) {
	const willNeed = 3
	_, _, _ = syscall.Syscall6(syscall.SYS_FADVISE64, fd, 0, 0, willNeed, 0, 0)
}
