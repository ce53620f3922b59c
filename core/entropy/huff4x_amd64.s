//go:build amd64 && !purego

#include "textflag.h"

// huffCtx offsets (huff4x.go).
#define TBL 0
#define IP 8
#define LO 40
#define OP 72
#define LIM 104
#define USED 136

// One lookup for one stream: V is the container (unread bits at the top,
// a sentinel bit below them), OP the output pointer. The table entry (BX)
// holds up to four symbols (bits 0-31), the bits consumed (byte 6) and the
// symbol count (byte 7). All 8 bytes are stored: the bytes past the count
// are rewritten by the next lookup or by the Go tail. RORX brings the
// bits consumed to the bottom for SHLX (which reads its count mod 64)
// without a mask or a second table.
#define LOOKUP(V, OP) \
	MOVQ    V, BX          \
	SHRQ    $53, BX        \
	MOVQ    (DI)(BX*8), BX \
	RORXQ   $48, BX, CX    \
	SHLXQ   CX, V, V       \
	MOVQ    BX, (OP)       \
	SHRQ    $56, BX        \
	ADDQ    BX, OP

// Reload: the sentinel's trailing-zero count is the bits used of the window
// at the stream's input pointer (kept in the context); move the pointer
// back by the whole bytes and reload with the sentinel over the window's
// lowest bit, which a round (at most 55 bits) never reaches.
#define RELOAD(V, K) \
	TZCNTQ V, CX             \
	MOVQ   CX, DX            \
	SHRQ   $3, DX            \
	MOVQ   (IP+8*K)(AX), SI  \
	SUBQ   DX, SI            \
	MOVQ   SI, (IP+8*K)(AX)  \
	ANDQ   $7, CX            \
	MOVQ   (SI), V           \
	ORQ    $1, V             \
	SHLXQ  CX, V, V

#define ENTER(V, K) \
	MOVQ  (USED+8*K)(AX), CX \
	MOVQ  (IP+8*K)(AX), SI   \
	MOVQ  (SI), V            \
	ORQ   $1, V              \
	SHLXQ CX, V, V

#define CHECK(OP, K) \
	MOVQ (IP+8*K)(AX), SI    \
	CMPQ SI, (LO+8*K)(AX)    \
	JB   done                \
	CMPQ OP, (LIM+8*K)(AX)   \
	JA   done

// func huff4x(ctx *huffCtx)
// Decodes four huff0 streams in lockstep, five lookups per stream between
// reloads, while every input pointer is at or above its lo and every
// output pointer at or below its lim. Four streams keep four independent
// lookup chains in flight, as klauspost's loop does. Needs BMI1 and BMI2.
// R14 and R15 are free here: this is ABI0 code without global accesses.
TEXT ·huff4x(SB), NOSPLIT, $0-8
	MOVQ ctx+0(FP), AX
	MOVQ TBL(AX), DI
	MOVQ (OP+0)(AX), R8
	MOVQ (OP+8)(AX), R9
	MOVQ (OP+16)(AX), R10
	MOVQ (OP+24)(AX), R11
	ENTER(R12, 0)
	ENTER(R13, 1)
	ENTER(R14, 2)
	ENTER(R15, 3)

loop:
	CHECK(R8, 0)
	CHECK(R9, 1)
	CHECK(R10, 2)
	CHECK(R11, 3)
	RELOAD(R12, 0)
	RELOAD(R13, 1)
	RELOAD(R14, 2)
	RELOAD(R15, 3)
	LOOKUP(R12, R8)
	LOOKUP(R13, R9)
	LOOKUP(R14, R10)
	LOOKUP(R15, R11)
	LOOKUP(R12, R8)
	LOOKUP(R13, R9)
	LOOKUP(R14, R10)
	LOOKUP(R15, R11)
	LOOKUP(R12, R8)
	LOOKUP(R13, R9)
	LOOKUP(R14, R10)
	LOOKUP(R15, R11)
	LOOKUP(R12, R8)
	LOOKUP(R13, R9)
	LOOKUP(R14, R10)
	LOOKUP(R15, R11)
	LOOKUP(R12, R8)
	LOOKUP(R13, R9)
	LOOKUP(R14, R10)
	LOOKUP(R15, R11)
	JMP  loop

done:
	MOVQ   R8, (OP+0)(AX)
	MOVQ   R9, (OP+8)(AX)
	MOVQ   R10, (OP+16)(AX)
	MOVQ   R11, (OP+24)(AX)
	TZCNTQ R12, CX
	MOVQ   CX, (USED+0)(AX)
	TZCNTQ R13, CX
	MOVQ   CX, (USED+8)(AX)
	TZCNTQ R14, CX
	MOVQ   CX, (USED+16)(AX)
	TZCNTQ R15, CX
	MOVQ   CX, (USED+24)(AX)
	RET
