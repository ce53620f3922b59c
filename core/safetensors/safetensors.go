// Package safetensors parses the header of a .safetensors file defensively:
// every size is capped, every offset is checked with overflow-safe
// arithmetic, and tensors may not overlap or run past the buffer. It never
// rewrites a header: tpde keeps the original header bytes verbatim, because
// writers order keys and pad in ways the format does not fix.
//
// Layout: an 8-byte little-endian length N, N bytes of JSON, then the data
// buffer. Each JSON entry other than "__metadata__" is
// {"dtype": s, "shape": [d...], "data_offsets": [begin, end]}, offsets
// relative to the buffer.
package safetensors

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"
	"sort"
	"unicode/utf8"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/strictjson"
)

// MaxHeaderLen is the largest JSON header accepted, as in the reference
// implementation.
const MaxHeaderLen = 100_000_000

// MaxTensors caps the entry count so that a small hostile header cannot make
// the parser allocate without bound.
const MaxTensors = 1 << 20

// elementBits gives the bits per element of every dtype the format defines.
var elementBits = map[string]uint64{
	"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
	"F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16,
	"BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64,
	"I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}

// Tensor is one entry of the header. Begin and End are absolute file offsets.
type Tensor struct {
	Name       string
	DType      string
	Shape      []uint64
	Begin, End uint64
}

// File is a parsed header.
type File struct {
	HeaderLen uint64            // N, the JSON length
	DataStart uint64            // 8 + N
	Metadata  map[string]string // the optional "__metadata__" map
	Tensors   []Tensor          // sorted by Begin
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: safetensors: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

type entry struct {
	DType       string   `json:"dtype"`
	Shape       []uint64 `json:"shape"`
	DataOffsets []uint64 `json:"data_offsets"`
}

// Sniff reports whether data starts like a safetensors file: a plausible
// header length followed by '{'.
func Sniff(data []byte) bool {
	if len(data) < 9 {
		return false
	}
	n := binary.LittleEndian.Uint64(data)
	return n >= 2 && n <= MaxHeaderLen && n <= uint64(len(data)-8) && data[8] == '{'
}

// Parse validates the header of the file held in data (the whole file, for
// example memory-mapped). Bytes of the data buffer not covered by any tensor
// (holes, trailing bytes) are allowed; callers keep them verbatim.
func Parse(data []byte) (*File, error) {
	return ParseHeader(data, uint64(len(data)))
}

// ParseHeader is Parse given only the file's first bytes (at least the
// 8-byte length and the JSON header) and its total size.
func ParseHeader(data []byte, fileSize uint64) (*File, error) {
	if len(data) < 8 || fileSize < 8 {
		return nil, corrupt("file of %d bytes has no header length", fileSize)
	}
	n := binary.LittleEndian.Uint64(data)
	if n > MaxHeaderLen {
		return nil, corrupt("header length %d exceeds %d", n, MaxHeaderLen)
	}
	if n > fileSize-8 || n > uint64(len(data)-8) {
		return nil, corrupt("header length %d runs past the end of a %d-byte file", n, fileSize)
	}
	hdr := data[8 : 8+n]
	if len(bytes.TrimLeft(hdr, " ")) == 0 || hdr[0] != '{' {
		return nil, corrupt("header does not start with '{'")
	}
	// The format's header is UTF-8 JSON. encoding/json would read invalid
	// bytes as U+FFFD and keep the last of a repeated name, where another
	// reader may refuse or keep the first: one header, two sets of tensors.
	if !utf8.Valid(hdr) {
		return nil, corrupt("header is not UTF-8")
	}
	if err := strictjson.CheckDuplicateKeys(hdr); err != nil {
		return nil, corrupt("header JSON: %v", err)
	}
	var raw map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(hdr))
	if err := dec.Decode(&raw); err != nil {
		return nil, corrupt("header JSON: %v", err)
	}
	if len(raw) > MaxTensors {
		return nil, corrupt("%d entries exceed %d", len(raw), MaxTensors)
	}
	f := &File{HeaderLen: n, DataStart: 8 + n}
	bufLen := fileSize - f.DataStart
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return nil, corrupt("__metadata__ is not a string map: %v", err)
			}
			continue
		}
		var e entry
		d := json.NewDecoder(bytes.NewReader(msg))
		d.DisallowUnknownFields()
		if err := d.Decode(&e); err != nil {
			return nil, corrupt("tensor %q: %v", name, err)
		}
		if len(e.DataOffsets) != 2 {
			return nil, corrupt("tensor %q: data_offsets has %d values, want 2", name, len(e.DataOffsets))
		}
		b, en := e.DataOffsets[0], e.DataOffsets[1]
		if b > en || en > bufLen {
			return nil, corrupt("tensor %q: data_offsets [%d, %d] outside the %d-byte buffer", name, b, en, bufLen)
		}
		bitsPer, known := elementBits[e.DType]
		if !known {
			return nil, corrupt("tensor %q: unknown dtype %q", name, e.DType)
		}
		nelem := uint64(1)
		for _, dim := range e.Shape {
			hi, lo := bits.Mul64(nelem, dim)
			if hi != 0 {
				return nil, corrupt("tensor %q: shape %v overflows", name, e.Shape)
			}
			nelem = lo
		}
		hi, nbits := bits.Mul64(nelem, bitsPer)
		if hi != 0 || nbits%8 != 0 || nbits/8 != en-b {
			return nil, corrupt("tensor %q: %s%v needs %d bits, data_offsets give %d bytes", name, e.DType, e.Shape, nbits, en-b)
		}
		f.Tensors = append(f.Tensors, Tensor{Name: name, DType: e.DType, Shape: e.Shape,
			Begin: f.DataStart + b, End: f.DataStart + en})
	}
	sort.Slice(f.Tensors, func(i, j int) bool {
		a, b := f.Tensors[i], f.Tensors[j]
		if a.Begin != b.Begin {
			return a.Begin < b.Begin
		}
		return a.End < b.End
	})
	for i := 1; i < len(f.Tensors); i++ {
		if p, c := f.Tensors[i-1], f.Tensors[i]; c.Begin < p.End {
			return nil, corrupt("tensors %q and %q overlap", p.Name, c.Name)
		}
	}
	return f, nil
}
