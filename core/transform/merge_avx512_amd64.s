//go:build amd64 && !purego

#include "textflag.h"

// AVX-512 VBMI merge kernels: VPERMB interleaves 64 bytes of planes into
// 64 bytes of elements in one instruction, where the SSE2 kernels need a
// ladder of unpacks per 16 bytes. Used where cpu.X86.HasAVX512VBMI.

// merge2idx: element j's low byte from p1[j] (bytes 0-31 of the source
// register), its high byte from p0[j] (bytes 32-63).
DATA merge2idx<>+0(SB)/8, $0x2303220221012000
DATA merge2idx<>+8(SB)/8, $0x2707260625052404
DATA merge2idx<>+16(SB)/8, $0x2b0b2a0a29092808
DATA merge2idx<>+24(SB)/8, $0x2f0f2e0e2d0d2c0c
DATA merge2idx<>+32(SB)/8, $0x3313321231113010
DATA merge2idx<>+40(SB)/8, $0x3717361635153414
DATA merge2idx<>+48(SB)/8, $0x3b1b3a1a39193818
DATA merge2idx<>+56(SB)/8, $0x3f1f3e1e3d1d3c1c
GLOBL merge2idx<>(SB), RODATA, $64

// merge4idx: element j's bytes, low to high, from p3[j], p2[j], p1[j],
// p0[j]; plane q fills bytes 16q to 16q+15 of the source register.
DATA merge4idx<>+0(SB)/8, $0x0111213100102030
DATA merge4idx<>+8(SB)/8, $0x0313233302122232
DATA merge4idx<>+16(SB)/8, $0x0515253504142434
DATA merge4idx<>+24(SB)/8, $0x0717273706162636
DATA merge4idx<>+32(SB)/8, $0x0919293908182838
DATA merge4idx<>+40(SB)/8, $0x0b1b2b3b0a1a2a3a
DATA merge4idx<>+48(SB)/8, $0x0d1d2d3d0c1c2c3c
DATA merge4idx<>+56(SB)/8, $0x0f1f2f3f0e1e2e3e
GLOBL merge4idx<>(SB), RODATA, $64

// func merge2avx512(p0, p1, dst *byte, n int, rot bool)
// n is a multiple of 32.
TEXT ·merge2avx512(SB), NOSPLIT, $0-33
	MOVQ    p0+0(FP), SI
	MOVQ    p1+8(FP), DI
	MOVQ    dst+16(FP), DX
	MOVQ    n+24(FP), CX
	MOVBQZX rot+32(FP), AX
	SHRQ    $5, CX
	JZ      merge2done
	VMOVDQU64 merge2idx<>(SB), Z7

merge2loop:
	VMOVDQU64    (DI), Y0                  // low bytes
	VINSERTI64X4 $1, (SI), Z0, Z0          // high bytes above them
	VPERMB       Z0, Z7, Z1
	TESTQ        AX, AX
	JZ           merge2store
	// rotate each 16-bit element right by one
	VPSRLW       $1, Z1, Z2
	VPSLLW       $15, Z1, Z1
	VPORQ        Z2, Z1, Z1

merge2store:
	VMOVDQU64 Z1, (DX)
	ADDQ      $32, SI
	ADDQ      $32, DI
	ADDQ      $64, DX
	DECQ      CX
	JNZ       merge2loop
	VZEROUPPER

merge2done:
	RET

// func merge4avx512(p0, p1, p2, p3, dst *byte, n int, rot bool)
// n is a multiple of 16.
TEXT ·merge4avx512(SB), NOSPLIT, $0-49
	MOVQ    p0+0(FP), R8
	MOVQ    p1+8(FP), R9
	MOVQ    p2+16(FP), R10
	MOVQ    p3+24(FP), R11
	MOVQ    dst+32(FP), DX
	MOVQ    n+40(FP), CX
	MOVBQZX rot+48(FP), AX
	SHRQ    $4, CX
	JZ      merge4done
	VMOVDQU64 merge4idx<>(SB), Z7

merge4loop:
	VMOVDQU      (R8), X0
	VINSERTI32X4 $1, (R9), Z0, Z0
	VINSERTI32X4 $2, (R10), Z0, Z0
	VINSERTI32X4 $3, (R11), Z0, Z0
	VPERMB       Z0, Z7, Z1
	TESTQ        AX, AX
	JZ           merge4store
	VPRORD       $1, Z1, Z1 // rotate each 32-bit element right by one

merge4store:
	VMOVDQU64 Z1, (DX)
	ADDQ      $16, R8
	ADDQ      $16, R9
	ADDQ      $16, R10
	ADDQ      $16, R11
	ADDQ      $64, DX
	DECQ      CX
	JNZ       merge4loop
	VZEROUPPER

merge4done:
	RET
