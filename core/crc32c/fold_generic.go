//go:build !amd64 || purego

package crc32c

const haveFold = false

func fold(crc uint32, b []byte) uint32 { panic("crc32c: no folding kernel") }
