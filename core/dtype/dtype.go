// Package dtype is the table of element types tpde understands: their stable
// on-disk codes, safetensors names, widths and float bit layouts.
//
// The numeric codes are part of the frame format (docs/FORMAT.md) and of the
// C ABI (include/tpde.h); they never change meaning once released.
package dtype

import "fmt"

// DType is a stable one-byte element type code.
type DType uint8

// Codes. Keep in sync with include/tpde.h and docs/FORMAT.md §Dtypes.
const (
	Bool   DType = 0
	U8     DType = 1
	I8     DType = 2
	U16    DType = 3
	I16    DType = 4
	U32    DType = 5
	I32    DType = 6
	U64    DType = 7
	I64    DType = 8
	F16    DType = 9
	BF16   DType = 10
	F32    DType = 11
	F64    DType = 12
	F8E4M3 DType = 13
	F8E5M2 DType = 14
)

// Count is one past the largest defined code.
const Count = 15

// Layout describes an element type.
type Layout struct {
	Name     string // safetensors spelling, e.g. "BF16"
	Width    int    // bytes per element
	Float    bool   // IEEE-like sign/exponent/mantissa layout
	ExpBits  int    // exponent bits (floats only)
	MantBits int    // mantissa bits (floats only)
}

var layouts = [Count]Layout{
	Bool:   {Name: "BOOL", Width: 1},
	U8:     {Name: "U8", Width: 1},
	I8:     {Name: "I8", Width: 1},
	U16:    {Name: "U16", Width: 2},
	I16:    {Name: "I16", Width: 2},
	U32:    {Name: "U32", Width: 4},
	I32:    {Name: "I32", Width: 4},
	U64:    {Name: "U64", Width: 8},
	I64:    {Name: "I64", Width: 8},
	F16:    {Name: "F16", Width: 2, Float: true, ExpBits: 5, MantBits: 10},
	BF16:   {Name: "BF16", Width: 2, Float: true, ExpBits: 8, MantBits: 7},
	F32:    {Name: "F32", Width: 4, Float: true, ExpBits: 8, MantBits: 23},
	F64:    {Name: "F64", Width: 8, Float: true, ExpBits: 11, MantBits: 52},
	F8E4M3: {Name: "F8_E4M3", Width: 1, Float: true, ExpBits: 4, MantBits: 3},
	F8E5M2: {Name: "F8_E5M2", Width: 1, Float: true, ExpBits: 5, MantBits: 2},
}

// Valid reports whether d is a defined code.
func (d DType) Valid() bool { return d < Count }

// Layout returns d's layout. It panics on an invalid code; callers that take
// codes from untrusted input must check Valid first.
func (d DType) Layout() Layout {
	if !d.Valid() {
		panic(fmt.Sprintf("dtype: invalid code %d", d))
	}
	return layouts[d]
}

// Width is the element size in bytes.
func (d DType) Width() int { return d.Layout().Width }

// IsFloat reports whether d has a sign/exponent/mantissa layout.
func (d DType) IsFloat() bool { return d.Valid() && layouts[d].Float }

func (d DType) String() string {
	if !d.Valid() {
		return fmt.Sprintf("dtype(%d)", uint8(d))
	}
	return layouts[d].Name
}

// FromName maps a safetensors dtype name to a code. ok is false for names
// tpde has no typed codec for (F4, F6_*, C64, F8_E8M0, ...); such tensors are
// still stored losslessly, as bytes.
func FromName(name string) (DType, bool) {
	for i, l := range layouts {
		if l.Name == name {
			return DType(i), true
		}
	}
	return 0, false
}
