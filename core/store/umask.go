package store

import (
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

var umaskOnce = sync.OnceValue(func() fs.FileMode {
	// /proc/self/status reads the umask without changing it; umask(2)
	// would have to set it, and another thread could create a file in the
	// moment between.
	b, err := os.ReadFile("/proc/self/status")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "Umask:"); ok {
				if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
					return fs.FileMode(m)
				}
			}
		}
	}
	old := syscall.Umask(0o022)
	syscall.Umask(old)
	return fs.FileMode(old)
})

// umask is the process's umask, for a mode set with chmod (which, unlike
// creating a file, does not apply it).
func umask() fs.FileMode { return umaskOnce() }
