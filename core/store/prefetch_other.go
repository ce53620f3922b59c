//go:build !linux

package store

func adviseWillNeed(uintptr) {}
