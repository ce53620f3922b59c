//go:build linux

package store

import (
	"bufio"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// machineMemory is the most memory this process can use: the least of the
// machine's RAM, its memory cgroup's limit (v2 memory.max or v1
// memory.limit_in_bytes) and RLIMIT_AS. It is the default bound on one
// decode's buffers: a record claiming a larger tensor cannot be decoded
// here anyway, and allocating it would have the process killed rather than
// refused (a cgroup kills; it does not fail an allocation).
var machineMemory = sync.OnceValue(func() uint64 {
	limit := uint64(math.MaxUint64)
	take := func(v uint64) {
		if v > 0 && v < limit {
			limit = v
		}
	}
	take(memTotal())
	for _, p := range cgroupMemoryFiles() {
		if b, err := os.ReadFile(p); err == nil {
			if v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64); err == nil {
				take(v)
			}
		}
	}
	var rl syscall.Rlimit
	if syscall.Getrlimit(syscall.RLIMIT_AS, &rl) == nil && rl.Cur != ^uint64(0) {
		take(rl.Cur)
	}
	return limit
})

func memTotal() uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err == nil {
				return kb << 10
			}
		}
	}
	return 0
}

// cgroupMemoryFiles are the limit files of this process's memory cgroup
// and its ancestors (a limit anywhere up the tree applies).
func cgroupMemoryFiles() []string {
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return nil
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		var base, file string
		switch {
		case parts[0] == "0" && parts[1] == "":
			base, file = "/sys/fs/cgroup", "memory.max"
		case strings.Contains(","+parts[1]+",", ",memory,"):
			base, file = "/sys/fs/cgroup/memory", "memory.limit_in_bytes"
		default:
			continue
		}
		for p := parts[2]; ; {
			out = append(out, base+strings.TrimSuffix(p, "/")+"/"+file)
			if p == "/" || p == "" {
				break
			}
			p = p[:strings.LastIndex(p, "/")]
			if p == "" {
				p = "/"
			}
		}
	}
	return out
}
