//go:build !linux

package api

func hugePageOut(dst []byte) {}
