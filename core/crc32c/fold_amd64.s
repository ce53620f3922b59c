//go:build amd64 && !purego

#include "textflag.h"

// Folding constants for the reflected Castagnoli polynomial (0x1EDC6F41):
// to move 128 bits forward by D bits, the low quadword is multiplied by
// bitrev32(x^(D+32) mod P) << 1 and the high one by bitrev32(x^(D-32) mod P) << 1
// (Intel, "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ";
// the same formula gives hash/crc32's IEEE constants). fold_test.go
// recomputes them.

// D = 2048 (four ZMM registers, 256 bytes), in every 128-bit lane.
DATA k2048<>+0(SB)/8, $0xdcb17aa4
DATA k2048<>+8(SB)/8, $0xb9e02b86
DATA k2048<>+16(SB)/8, $0xdcb17aa4
DATA k2048<>+24(SB)/8, $0xb9e02b86
DATA k2048<>+32(SB)/8, $0xdcb17aa4
DATA k2048<>+40(SB)/8, $0xb9e02b86
DATA k2048<>+48(SB)/8, $0xdcb17aa4
DATA k2048<>+56(SB)/8, $0xb9e02b86
GLOBL k2048<>(SB), RODATA, $64

// D = 512 (one ZMM register, 64 bytes).
DATA k512<>+0(SB)/8, $0x740eef02
DATA k512<>+8(SB)/8, $0x9e4addf8
DATA k512<>+16(SB)/8, $0x740eef02
DATA k512<>+24(SB)/8, $0x9e4addf8
DATA k512<>+32(SB)/8, $0x740eef02
DATA k512<>+40(SB)/8, $0x9e4addf8
DATA k512<>+48(SB)/8, $0x740eef02
DATA k512<>+56(SB)/8, $0x9e4addf8
GLOBL k512<>(SB), RODATA, $64

// D = 128 (one lane).
DATA k128<>+0(SB)/8, $0xf20c0dfe
DATA k128<>+8(SB)/8, $0x14cd00bd6
GLOBL k128<>(SB), RODATA, $16

// func fold512(crc uint32, b *byte, n int) uint32
// Four independent 64-byte accumulators hide the multiply latency; they are
// folded into one, its four lanes into one, and the last 128 bits, which are
// congruent to the whole input, are reduced with the CRC32 instruction.
TEXT ·fold512(SB), NOSPLIT, $0-28
	MOVL crc+0(FP), AX
	MOVQ b+8(FP), SI
	MOVQ n+16(FP), CX

	VMOVDQU64 (SI), Z1
	VMOVDQU64 64(SI), Z2
	VMOVDQU64 128(SI), Z3
	VMOVDQU64 192(SI), Z4
	VMOVD     AX, X10                // zeroes the rest of Z10
	VPXORQ    Z10, Z1, Z1            // the initial CRC enters the first 4 bytes
	ADDQ      $256, SI
	SUBQ      $256, CX

	VMOVDQU64 k2048<>(SB), Z0
	CMPQ      CX, $256
	JB        fold64

loop256:
	VMOVDQU64  (SI), Z11
	VMOVDQU64  64(SI), Z12
	VMOVDQU64  128(SI), Z13
	VMOVDQU64  192(SI), Z14
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPCLMULQDQ $0x11, Z0, Z2, Z6
	VPCLMULQDQ $0x00, Z0, Z2, Z2
	VPCLMULQDQ $0x11, Z0, Z3, Z7
	VPCLMULQDQ $0x00, Z0, Z3, Z3
	VPCLMULQDQ $0x11, Z0, Z4, Z8
	VPCLMULQDQ $0x00, Z0, Z4, Z4
	VPTERNLOGD $0x96, Z11, Z5, Z1
	VPTERNLOGD $0x96, Z12, Z6, Z2
	VPTERNLOGD $0x96, Z13, Z7, Z3
	VPTERNLOGD $0x96, Z14, Z8, Z4
	ADDQ       $256, SI
	SUBQ       $256, CX
	CMPQ       CX, $256
	JAE        loop256

fold64:
	VMOVDQU64  k512<>(SB), Z0
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPTERNLOGD $0x96, Z2, Z5, Z1
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPTERNLOGD $0x96, Z3, Z5, Z1
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPTERNLOGD $0x96, Z4, Z5, Z1
	CMPQ       CX, $64
	JB         lanes

loop64:
	VMOVDQU64  (SI), Z11
	VPCLMULQDQ $0x11, Z0, Z1, Z5
	VPCLMULQDQ $0x00, Z0, Z1, Z1
	VPTERNLOGD $0x96, Z11, Z5, Z1
	ADDQ       $64, SI
	SUBQ       $64, CX
	CMPQ       CX, $64
	JAE        loop64

lanes:
	VEXTRACTI64X2 $1, Z1, X2
	VEXTRACTI64X2 $2, Z1, X3
	VEXTRACTI64X2 $3, Z1, X4
	VMOVDQU       k128<>(SB), X0
	VPCLMULQDQ    $0x11, X0, X1, X5
	VPCLMULQDQ    $0x00, X0, X1, X1
	VPTERNLOGD    $0x96, X2, X5, X1
	VPCLMULQDQ    $0x11, X0, X1, X5
	VPCLMULQDQ    $0x00, X0, X1, X1
	VPTERNLOGD    $0x96, X3, X5, X1
	VPCLMULQDQ    $0x11, X0, X1, X5
	VPCLMULQDQ    $0x00, X0, X1, X1
	VPTERNLOGD    $0x96, X4, X5, X1

	VMOVQ   X1, AX
	VPEXTRQ $1, X1, BX
	VZEROUPPER
	XORL    DX, DX
	CRC32Q  AX, DX
	CRC32Q  BX, DX
	MOVL    DX, ret+24(FP)
	RET
