//go:build amd64 && !purego

#include "textflag.h"

// SSE2 kernels for the 2- and 4-byte plane transforms (baseline amd64, no
// CPU feature check needed). Each handles whole blocks of 16 elements; the
// Go wrappers do the tail. Pointers are to the first byte; n counts
// elements and is a multiple of 16.

// func split2asm(src, p0, p1 *byte, n int, rot bool)
TEXT ·split2asm(SB), NOSPLIT, $0-33
	MOVQ src+0(FP), SI
	MOVQ p0+8(FP), DI
	MOVQ p1+16(FP), DX
	MOVQ n+24(FP), CX
	MOVBQZX rot+32(FP), AX
	SHRQ $4, CX
	JZ   split2done
	PCMPEQW X7, X7
	PSRLW   $8, X7 // 0x00ff in every word

split2loop:
	MOVOU (SI), X0
	MOVOU 16(SI), X1
	TESTQ AX, AX
	JZ    split2norot
	// rotate each 16-bit lane left by one
	MOVO  X0, X2
	PSLLW $1, X0
	PSRLW $15, X2
	POR   X2, X0
	MOVO  X1, X3
	PSLLW $1, X1
	PSRLW $15, X3
	POR   X3, X1

split2norot:
	MOVO     X0, X4
	PAND     X7, X4
	MOVO     X1, X5
	PAND     X7, X5
	PACKUSWB X5, X4 // low bytes
	PSRLW    $8, X0
	PSRLW    $8, X1
	PACKUSWB X1, X0 // high bytes
	MOVOU    X0, (DI)
	MOVOU    X4, (DX)
	ADDQ     $32, SI
	ADDQ     $16, DI
	ADDQ     $16, DX
	DECQ     CX
	JNZ      split2loop

split2done:
	RET

// func merge2asm(p0, p1, dst *byte, n int, rot bool)
TEXT ·merge2asm(SB), NOSPLIT, $0-33
	MOVQ p0+0(FP), SI
	MOVQ p1+8(FP), DI
	MOVQ dst+16(FP), DX
	MOVQ n+24(FP), CX
	MOVBQZX rot+32(FP), AX
	SHRQ $4, CX
	JZ   merge2done

merge2loop:
	MOVOU     (SI), X0 // high bytes
	MOVOU     (DI), X1 // low bytes
	MOVO      X1, X2
	PUNPCKLBW X0, X1   // elements 0..7: lo, hi pairs = little-endian words
	PUNPCKHBW X0, X2   // elements 8..15
	TESTQ     AX, AX
	JZ        merge2norot
	// rotate each 16-bit lane right by one
	MOVO      X1, X3
	PSRLW     $1, X1
	PSLLW     $15, X3
	POR       X3, X1
	MOVO      X2, X4
	PSRLW     $1, X2
	PSLLW     $15, X4
	POR       X4, X2

merge2norot:
	MOVOU X1, (DX)
	MOVOU X2, 16(DX)
	ADDQ  $16, SI
	ADDQ  $16, DI
	ADDQ  $32, DX
	DECQ  CX
	JNZ   merge2loop

merge2done:
	RET

// func split4asm(src, p0, p1, p2, p3 *byte, n int, rot bool)
TEXT ·split4asm(SB), NOSPLIT, $0-49
	MOVQ src+0(FP), SI
	MOVQ p0+8(FP), R8
	MOVQ p1+16(FP), R9
	MOVQ p2+24(FP), R10
	MOVQ p3+32(FP), R11
	MOVQ n+40(FP), CX
	MOVBQZX rot+48(FP), AX
	SHRQ $4, CX
	JZ   split4done
	PCMPEQW X14, X14
	PSRLW   $8, X14 // 0x00ff in every word

split4loop:
	MOVOU (SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	TESTQ AX, AX
	JZ    split4norot
	// rotate each 32-bit lane left by one
	MOVO  X0, X8
	PSLLL $1, X0
	PSRLL $31, X8
	POR   X8, X0
	MOVO  X1, X8
	PSLLL $1, X1
	PSRLL $31, X8
	POR   X8, X1
	MOVO  X2, X8
	PSLLL $1, X2
	PSRLL $31, X8
	POR   X8, X2
	MOVO  X3, X8
	PSLLL $1, X3
	PSRLL $31, X8
	POR   X8, X3

split4norot:
	// Low and high 16-bit halves, sign-extended so that the signed pack
	// below never saturates.
	MOVO     X0, X4
	PSLLL    $16, X4
	PSRAL    $16, X4
	MOVO     X1, X5
	PSLLL    $16, X5
	PSRAL    $16, X5
	PACKSSLW X5, X4 // low halves of elements 0..7
	MOVO     X2, X6
	PSLLL    $16, X6
	PSRAL    $16, X6
	MOVO     X3, X7
	PSLLL    $16, X7
	PSRAL    $16, X7
	PACKSSLW X7, X6 // low halves of elements 8..15
	PSRAL    $16, X0
	PSRAL    $16, X1
	PACKSSLW X1, X0 // high halves of elements 0..7
	PSRAL    $16, X2
	PSRAL    $16, X3
	PACKSSLW X3, X2 // high halves of elements 8..15

	// plane 0: high byte of the high half; plane 1: its low byte
	MOVO     X0, X8
	PSRLW    $8, X8
	MOVO     X2, X9
	PSRLW    $8, X9
	PACKUSWB X9, X8
	MOVOU    X8, (R8)
	PAND     X14, X0
	PAND     X14, X2
	PACKUSWB X2, X0
	MOVOU    X0, (R9)
	// plane 2: high byte of the low half; plane 3: its low byte
	MOVO     X4, X8
	PSRLW    $8, X8
	MOVO     X6, X9
	PSRLW    $8, X9
	PACKUSWB X9, X8
	MOVOU    X8, (R10)
	PAND     X14, X4
	PAND     X14, X6
	PACKUSWB X6, X4
	MOVOU    X4, (R11)

	ADDQ $64, SI
	ADDQ $16, R8
	ADDQ $16, R9
	ADDQ $16, R10
	ADDQ $16, R11
	DECQ CX
	JNZ  split4loop

split4done:
	RET

// func merge4asm(p0, p1, p2, p3, dst *byte, n int, rot bool)
TEXT ·merge4asm(SB), NOSPLIT, $0-49
	MOVQ p0+0(FP), R8
	MOVQ p1+8(FP), R9
	MOVQ p2+16(FP), R10
	MOVQ p3+24(FP), R11
	MOVQ dst+32(FP), DX
	MOVQ n+40(FP), CX
	MOVBQZX rot+48(FP), AX
	SHRQ $4, CX
	JZ   merge4done

merge4loop:
	MOVOU     (R8), X0
	MOVOU     (R9), X1
	MOVOU     (R10), X2
	MOVOU     (R11), X3
	MOVO      X1, X4
	PUNPCKLBW X0, X4 // high halves, elements 0..7
	PUNPCKHBW X0, X1 // high halves, elements 8..15
	MOVO      X3, X5
	PUNPCKLBW X2, X5 // low halves, elements 0..7
	PUNPCKHBW X2, X3 // low halves, elements 8..15
	MOVO      X5, X6
	PUNPCKLWL X4, X6 // elements 0..3
	PUNPCKHWL X4, X5 // elements 4..7
	MOVO      X3, X7
	PUNPCKLWL X1, X7 // elements 8..11
	PUNPCKHWL X1, X3 // elements 12..15
	TESTQ     AX, AX
	JZ        merge4norot
	// rotate each 32-bit lane right by one
	MOVO      X6, X8
	PSRLL     $1, X6
	PSLLL     $31, X8
	POR       X8, X6
	MOVO      X5, X8
	PSRLL     $1, X5
	PSLLL     $31, X8
	POR       X8, X5
	MOVO      X7, X8
	PSRLL     $1, X7
	PSLLL     $31, X8
	POR       X8, X7
	MOVO      X3, X8
	PSRLL     $1, X3
	PSLLL     $31, X8
	POR       X8, X3

merge4norot:
	MOVOU X6, (DX)
	MOVOU X5, 16(DX)
	MOVOU X7, 32(DX)
	MOVOU X3, 48(DX)
	ADDQ  $16, R8
	ADDQ  $16, R9
	ADDQ  $16, R10
	ADDQ  $16, R11
	ADDQ  $64, DX
	DECQ  CX
	JNZ   merge4loop

merge4done:
	RET
