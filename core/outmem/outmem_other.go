//go:build !linux

package outmem

// HugePages is a Linux hint; elsewhere nothing.
func HugePages(dst []byte) {}

// Prepare is a Linux hint; elsewhere nothing.
func Prepare(dsts [][]byte, threads int) {}
