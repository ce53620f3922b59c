//go:build !linux

package store

import "math"

// machineMemory: see memory_linux.go; elsewhere no bound is known.
func machineMemory() uint64 { return math.MaxUint64 }
