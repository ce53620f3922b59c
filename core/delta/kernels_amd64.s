//go:build amd64 && !purego

#include "textflag.h"

// SSE2 kernels for the residual fast paths (baseline amd64). Each handles
// whole blocks of 16 elements; the Go code does the tail. Pointers are to
// the first byte; n counts elements and is a multiple of 16. Each returns
// the number of zero residuals among the n: PCMPEQ against zero gives 0xFF
// per zero element after packing to bytes, PSADBW sums those bytes into
// two 64-bit lanes, and the total divided by 255 is the count.

// func split2asm(x, ref, p0, p1 *byte, n int, diff bool) (zeros int, or uint64)
TEXT ·split2asm(SB), NOSPLIT, $0-64
	MOVQ    x+0(FP), SI
	MOVQ    ref+8(FP), BX
	MOVQ    p0+16(FP), DI
	MOVQ    p1+24(FP), DX
	MOVQ    n+32(FP), CX
	MOVBQZX diff+40(FP), AX
	PXOR    X15, X15 // zero
	PXOR    X14, X14 // zero-residual count, times 255
	PCMPEQW X13, X13
	PSRLW   $8, X13  // 0x00ff in every word
	PXOR    X11, X11 // OR of the residuals
	SHRQ    $4, CX
	JZ      s2done

s2loop:
	MOVOU (SI), X0
	MOVOU 16(SI), X1
	MOVOU (BX), X2
	MOVOU 16(BX), X3
	TESTQ AX, AX
	JZ    s2xor
	// zigzag(x - ref) = (d << 1) ^ (d >> 15, arithmetic)
	PSUBW X2, X0
	PSUBW X3, X1
	MOVO  X0, X2
	PSRAW $15, X2
	PSLLW $1, X0
	PXOR  X2, X0
	MOVO  X1, X3
	PSRAW $15, X3
	PSLLW $1, X1
	PXOR  X3, X1
	JMP   s2planes

s2xor:
	PXOR X2, X0
	PXOR X3, X1

s2planes:
	POR      X0, X11
	POR      X1, X11
	MOVO     X0, X4
	PCMPEQW  X15, X4
	MOVO     X1, X5
	PCMPEQW  X15, X5
	PACKSSWB X5, X4
	PSADBW   X15, X4
	PADDQ    X4, X14
	MOVO     X0, X4
	PAND     X13, X4
	MOVO     X1, X5
	PAND     X13, X5
	PACKUSWB X5, X4 // low bytes
	PSRLW    $8, X0
	PSRLW    $8, X1
	PACKUSWB X1, X0 // high bytes
	MOVOU    X0, (DI)
	MOVOU    X4, (DX)
	ADDQ     $32, SI
	ADDQ     $32, BX
	ADDQ     $16, DI
	ADDQ     $16, DX
	DECQ     CX
	JNZ      s2loop

s2done:
	PSHUFD $0x4e, X11, X0
	POR    X11, X0
	MOVQ   X0, AX
	MOVQ   AX, or+56(FP)
	PSHUFD $0x4e, X14, X0
	PADDQ  X14, X0
	MOVQ   X0, AX
	XORQ   DX, DX
	MOVQ   $255, CX
	DIVQ   CX
	MOVQ   AX, zeros+48(FP)
	RET

// func merge2asm(p0, p1, ref, dst *byte, n int, diff bool) int
TEXT ·merge2asm(SB), NOSPLIT, $0-56
	MOVQ    p0+0(FP), SI
	MOVQ    p1+8(FP), DI
	MOVQ    ref+16(FP), BX
	MOVQ    dst+24(FP), DX
	MOVQ    n+32(FP), CX
	MOVBQZX diff+40(FP), AX
	PXOR    X15, X15
	PXOR    X14, X14
	PCMPEQW X12, X12
	PSRLW   $15, X12 // 0x0001 in every word
	SHRQ    $4, CX
	JZ      m2done

m2loop:
	MOVOU     (SI), X0 // high bytes
	MOVOU     (DI), X1 // low bytes
	MOVO      X1, X2
	PUNPCKLBW X0, X1   // residuals 0..7
	PUNPCKHBW X0, X2   // residuals 8..15
	MOVO      X1, X4
	PCMPEQW   X15, X4
	MOVO      X2, X5
	PCMPEQW   X15, X5
	PACKSSWB  X5, X4
	PSADBW    X15, X4
	PADDQ     X4, X14
	MOVOU     (BX), X3
	MOVOU     16(BX), X4
	TESTQ     AX, AX
	JZ        m2xor
	// ref + ((z >> 1) ^ -(z & 1))
	MOVO      X1, X5
	PAND      X12, X5
	MOVO      X15, X6
	PSUBW     X5, X6
	PSRLW     $1, X1
	PXOR      X6, X1
	MOVO      X2, X5
	PAND      X12, X5
	MOVO      X15, X6
	PSUBW     X5, X6
	PSRLW     $1, X2
	PXOR      X6, X2
	PADDW     X3, X1
	PADDW     X4, X2
	JMP       m2store

m2xor:
	PXOR X3, X1
	PXOR X4, X2

m2store:
	MOVOU X1, (DX)
	MOVOU X2, 16(DX)
	ADDQ  $16, SI
	ADDQ  $16, DI
	ADDQ  $32, BX
	ADDQ  $32, DX
	DECQ  CX
	JNZ   m2loop

m2done:
	PSHUFD $0x4e, X14, X0
	PADDQ  X14, X0
	MOVQ   X0, AX
	XORQ   DX, DX
	MOVQ   $255, CX
	DIVQ   CX
	MOVQ   AX, ret+48(FP)
	RET

// func split4asm(x, ref, p0, p1, p2, p3 *byte, n int, diff bool) (zeros int, or uint64)
TEXT ·split4asm(SB), NOSPLIT, $0-80
	MOVQ    x+0(FP), SI
	MOVQ    ref+8(FP), BX
	MOVQ    p0+16(FP), R8
	MOVQ    p1+24(FP), R9
	MOVQ    p2+32(FP), R10
	MOVQ    p3+40(FP), R11
	MOVQ    n+48(FP), CX
	MOVBQZX diff+56(FP), AX
	PXOR    X15, X15
	PXOR    X14, X14
	PCMPEQW X13, X13
	PSRLW   $8, X13 // 0x00ff in every word
	PXOR    X12, X12 // OR of the residuals
	SHRQ    $4, CX
	JZ      s4done

s4loop:
	MOVOU (SI), X0
	MOVOU 16(SI), X1
	MOVOU 32(SI), X2
	MOVOU 48(SI), X3
	MOVOU (BX), X4
	MOVOU 16(BX), X5
	MOVOU 32(BX), X6
	MOVOU 48(BX), X7
	TESTQ AX, AX
	JZ    s4xor
	PSUBL X4, X0
	PSUBL X5, X1
	PSUBL X6, X2
	PSUBL X7, X3
	MOVO  X0, X4
	PSRAL $31, X4
	PSLLL $1, X0
	PXOR  X4, X0
	MOVO  X1, X5
	PSRAL $31, X5
	PSLLL $1, X1
	PXOR  X5, X1
	MOVO  X2, X6
	PSRAL $31, X6
	PSLLL $1, X2
	PXOR  X6, X2
	MOVO  X3, X7
	PSRAL $31, X7
	PSLLL $1, X3
	PXOR  X7, X3
	JMP   s4planes

s4xor:
	PXOR X4, X0
	PXOR X5, X1
	PXOR X6, X2
	PXOR X7, X3

s4planes:
	POR      X0, X12
	POR      X1, X12
	POR      X2, X12
	POR      X3, X12
	MOVO     X0, X8
	PCMPEQL  X15, X8
	MOVO     X1, X9
	PCMPEQL  X15, X9
	PACKSSLW X9, X8
	MOVO     X2, X10
	PCMPEQL  X15, X10
	MOVO     X3, X11
	PCMPEQL  X15, X11
	PACKSSLW X11, X10
	PACKSSWB X10, X8
	PSADBW   X15, X8
	PADDQ    X8, X14

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
	PAND     X13, X0
	PAND     X13, X2
	PACKUSWB X2, X0
	MOVOU    X0, (R9)
	// plane 2: high byte of the low half; plane 3: its low byte
	MOVO     X4, X8
	PSRLW    $8, X8
	MOVO     X6, X9
	PSRLW    $8, X9
	PACKUSWB X9, X8
	MOVOU    X8, (R10)
	PAND     X13, X4
	PAND     X13, X6
	PACKUSWB X6, X4
	MOVOU    X4, (R11)

	ADDQ $64, SI
	ADDQ $64, BX
	ADDQ $16, R8
	ADDQ $16, R9
	ADDQ $16, R10
	ADDQ $16, R11
	DECQ CX
	JNZ  s4loop

s4done:
	PSHUFD $0x4e, X12, X0
	POR    X12, X0
	MOVQ   X0, AX
	MOVQ   AX, or+72(FP)
	PSHUFD $0x4e, X14, X0
	PADDQ  X14, X0
	MOVQ   X0, AX
	XORQ   DX, DX
	MOVQ   $255, CX
	DIVQ   CX
	MOVQ   AX, zeros+64(FP)
	RET

// func merge4asm(p0, p1, p2, p3, ref, dst *byte, n int, diff bool) int
TEXT ·merge4asm(SB), NOSPLIT, $0-72
	MOVQ    p0+0(FP), R8
	MOVQ    p1+8(FP), R9
	MOVQ    p2+16(FP), R10
	MOVQ    p3+24(FP), R11
	MOVQ    ref+32(FP), BX
	MOVQ    dst+40(FP), DX
	MOVQ    n+48(FP), CX
	MOVBQZX diff+56(FP), AX
	PXOR    X15, X15
	PXOR    X14, X14
	PCMPEQL X12, X12
	PSRLL   $31, X12 // 0x00000001 in every doubleword
	SHRQ    $4, CX
	JZ      m4done

m4loop:
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
	PUNPCKLWL X4, X6 // residuals 0..3
	PUNPCKHWL X4, X5 // residuals 4..7
	MOVO      X3, X7
	PUNPCKLWL X1, X7 // residuals 8..11
	PUNPCKHWL X1, X3 // residuals 12..15

	MOVO     X6, X8
	PCMPEQL  X15, X8
	MOVO     X5, X9
	PCMPEQL  X15, X9
	PACKSSLW X9, X8
	MOVO     X7, X10
	PCMPEQL  X15, X10
	MOVO     X3, X11
	PCMPEQL  X15, X11
	PACKSSLW X11, X10
	PACKSSWB X10, X8
	PSADBW   X15, X8
	PADDQ    X8, X14

	MOVOU (BX), X0
	MOVOU 16(BX), X1
	MOVOU 32(BX), X2
	MOVOU 48(BX), X4
	TESTQ AX, AX
	JZ    m4xor
	// ref + ((z >> 1) ^ -(z & 1))
	MOVO  X6, X8
	PAND  X12, X8
	MOVO  X15, X9
	PSUBL X8, X9
	PSRLL $1, X6
	PXOR  X9, X6
	MOVO  X5, X8
	PAND  X12, X8
	MOVO  X15, X9
	PSUBL X8, X9
	PSRLL $1, X5
	PXOR  X9, X5
	MOVO  X7, X8
	PAND  X12, X8
	MOVO  X15, X9
	PSUBL X8, X9
	PSRLL $1, X7
	PXOR  X9, X7
	MOVO  X3, X8
	PAND  X12, X8
	MOVO  X15, X9
	PSUBL X8, X9
	PSRLL $1, X3
	PXOR  X9, X3
	PADDL X0, X6
	PADDL X1, X5
	PADDL X2, X7
	PADDL X4, X3
	JMP   m4store

m4xor:
	PXOR X0, X6
	PXOR X1, X5
	PXOR X2, X7
	PXOR X4, X3

m4store:
	MOVOU X6, (DX)
	MOVOU X5, 16(DX)
	MOVOU X7, 32(DX)
	MOVOU X3, 48(DX)
	ADDQ  $16, R8
	ADDQ  $16, R9
	ADDQ  $16, R10
	ADDQ  $16, R11
	ADDQ  $64, BX
	ADDQ  $64, DX
	DECQ  CX
	JNZ   m4loop

m4done:
	PSHUFD $0x4e, X14, X0
	PADDQ  X14, X0
	MOVQ   X0, AX
	XORQ   DX, DX
	MOVQ   $255, CX
	DIVQ   CX
	MOVQ   AX, ret+64(FP)
	RET
