// Package statedict is the state-dict file layout (docs/FORMAT.md §10): a
// state dict given from Python (nested dicts and lists of tensors and
// plain values) laid out as one file, so that a store can hold it like any
// other container. The file is a u64 little-endian N, N bytes of JSON
// (space-padded so that 8 + N is a multiple of 64), then each tensor's
// bytes at its offset (counted from 8 + N, each a multiple of 64,
// ascending), zeros between, and nothing after the last.
//
// Python walks the dict (the structure needs torch); Go lays out and
// checks the bytes, here, for the writer and the reader alike.
package statedict

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math/bits"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/strictjson"
)

const (
	// Format and Version are the header's "format" and "version".
	Format  = "tpde-state-dict"
	Version = 1
	// Align is the alignment of 8 + N and of every tensor's offset.
	Align = 64
	// MaxHeader bounds N, as safetensors bounds its header.
	MaxHeader = 100_000_000
	// MaxTensors bounds a header's tensors.
	MaxTensors = 1 << 24
)

// Meta is what the header says besides the tensors, kept as the JSON it
// is: the structure Python rebuilds the dict from (§9.6's skeleton), the
// aliases (a name -> the tensor it shares storage with), and torch's
// _metadata of a state dict. Each is null when absent.
type Meta struct {
	Skeleton          json.RawMessage `json:"skeleton"`
	Aliases           json.RawMessage `json:"aliases"`
	StateDictMetadata json.RawMessage `json:"state_dict_metadata"`
}

// Tensor is one tensor of the file. Offset counts from the end of the
// header (8 + N).
type Tensor struct {
	Name   string   `json:"name"`
	DType  string   `json:"dtype"`
	Shape  []uint64 `json:"shape"`
	Offset uint64   `json:"offset"`
	NBytes uint64   `json:"nbytes"`
}

// Header is a parsed header.
type Header struct {
	Meta
	Tensors []Tensor
	// DataStart is 8 + N: where offsets count from.
	DataStart uint64
}

type header struct {
	Format            string          `json:"format"`
	Version           int             `json:"version"`
	Skeleton          json.RawMessage `json:"skeleton"`
	Aliases           json.RawMessage `json:"aliases"`
	StateDictMetadata json.RawMessage `json:"state_dict_metadata"`
	Tensors           []Tensor        `json:"tensors"`
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: state dict: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// nbytes is prod(shape) x width, or false on overflow.
func nbytes(d dtype.DType, shape []uint64) (uint64, bool) {
	n := uint64(d.Width())
	for _, s := range shape {
		hi, lo := bits.Mul64(n, s)
		if hi != 0 {
			return 0, false
		}
		n = lo
	}
	return n, true
}

// Build lays out a state dict: it returns the header bytes (8 + N, a
// multiple of Align) and tensors with their Offset and NBytes filled in,
// in the order given. Each tensor's dtype must be one tpde codes.
func Build(meta Meta, tensors []Tensor) ([]byte, []Tensor, error) {
	if len(tensors) > MaxTensors {
		return nil, nil, fmt.Errorf("%w: %d tensors (max %d)", errs.Invalid, len(tensors), MaxTensors)
	}
	out := make([]Tensor, len(tensors))
	names := make(map[string]bool, len(tensors))
	off := uint64(0)
	for i, t := range tensors {
		d, ok := dtype.FromName(t.DType)
		if !ok {
			return nil, nil, fmt.Errorf("%w: tensor %q: dtype %q", errs.Invalid, t.Name, t.DType)
		}
		if names[t.Name] {
			return nil, nil, fmt.Errorf("%w: tensor %q twice", errs.Invalid, t.Name)
		}
		names[t.Name] = true
		n, ok := nbytes(d, t.Shape)
		if !ok {
			return nil, nil, fmt.Errorf("%w: tensor %q: shape %v overflows", errs.Invalid, t.Name, t.Shape)
		}
		off = (off + Align - 1) / Align * Align
		out[i] = Tensor{Name: t.Name, DType: t.DType, Shape: append([]uint64{}, t.Shape...), Offset: off, NBytes: n}
		if off+n < off {
			return nil, nil, fmt.Errorf("%w: the state dict overflows", errs.Invalid)
		}
		off += n
	}
	h := header{Format: Format, Version: Version, Skeleton: orNull(meta.Skeleton), Aliases: orNull(meta.Aliases),
		StateDictMetadata: orNull(meta.StateDictMetadata), Tensors: out}
	if h.Tensors == nil {
		h.Tensors = []Tensor{}
	}
	js, err := json.Marshal(h)
	if err != nil {
		return nil, nil, fmt.Errorf("%w: the state dict's header: %v", errs.Invalid, err)
	}
	pad := (Align - (8+len(js))%Align) % Align
	if len(js)+pad > MaxHeader {
		return nil, nil, fmt.Errorf("%w: a header of %d bytes (max %d)", errs.Invalid, len(js)+pad, MaxHeader)
	}
	b := binary.LittleEndian.AppendUint64(make([]byte, 0, 8+len(js)+pad), uint64(len(js)+pad))
	b = append(b, js...)
	b = append(b, bytes.Repeat([]byte{' '}, pad)...)
	return b, out, nil
}

func orNull(m json.RawMessage) json.RawMessage {
	if len(m) == 0 {
		return json.RawMessage("null")
	}
	return m
}

// HeaderLen is 8 + N from a file's first 8 bytes, checked against the
// file's size: how many bytes Parse needs.
func HeaderLen(first8 []byte, fileSize uint64) (uint64, error) {
	if len(first8) < 8 || fileSize < 8 {
		return 0, corrupt("%d bytes, too short for a header", fileSize)
	}
	n := binary.LittleEndian.Uint64(first8)
	if n > MaxHeader || n > fileSize-8 {
		return 0, corrupt("a header of %d bytes in a file of %d", n, fileSize)
	}
	return 8 + n, nil
}

// Parse checks a header (the file's first HeaderLen bytes) against the
// file's size: the JSON is an object with no repeated key and no unknown
// field; every tensor has a unique name, a dtype tpde codes, a shape whose
// size is its nbytes, and lies inside the file; aliases name tensors.
func Parse(head []byte, fileSize uint64) (*Header, error) {
	hl, err := HeaderLen(head, fileSize)
	if err != nil {
		return nil, err
	}
	if uint64(len(head)) < hl {
		return nil, corrupt("header cut short: %d of %d bytes", len(head), hl)
	}
	js := bytes.TrimRight(head[8:hl], " ")
	if len(js) == 0 || js[0] != '{' {
		return nil, corrupt("header is not a JSON object")
	}
	var h header
	if err := strictjson.Decode(js, &h); err != nil {
		return nil, corrupt("header: %v", err)
	}
	if h.Format != Format || h.Version != Version {
		return nil, corrupt("format %q version %d (want %q %d)", h.Format, h.Version, Format, Version)
	}
	if len(h.Tensors) > MaxTensors {
		return nil, corrupt("%d tensors", len(h.Tensors))
	}
	data := fileSize - hl
	names := make(map[string]bool, len(h.Tensors))
	for _, t := range h.Tensors {
		d, ok := dtype.FromName(t.DType)
		if !ok {
			return nil, corrupt("tensor %q: dtype %q is not one tpde knows", t.Name, t.DType)
		}
		if names[t.Name] {
			return nil, corrupt("tensor %q twice", t.Name)
		}
		names[t.Name] = true
		n, ok := nbytes(d, t.Shape)
		if !ok || n != t.NBytes {
			return nil, corrupt("tensor %q: a %s tensor of shape %v in %d bytes", t.Name, t.DType, t.Shape, t.NBytes)
		}
		if t.Offset > data || t.NBytes > data-t.Offset {
			return nil, corrupt("tensor %q: bytes [%d, %d) outside the %d bytes of data", t.Name, t.Offset, t.Offset+t.NBytes, data)
		}
	}
	if len(h.Aliases) > 0 && string(h.Aliases) != "null" {
		var al map[string]string
		if err := json.Unmarshal(h.Aliases, &al); err != nil {
			return nil, corrupt("aliases: %v", err)
		}
		for a, name := range al {
			if !names[name] {
				return nil, corrupt("alias %q names %q, which it does not hold", a, name)
			}
		}
	}
	return &Header{Meta: Meta{Skeleton: h.Skeleton, Aliases: h.Aliases, StateDictMetadata: h.StateDictMetadata},
		Tensors: h.Tensors, DataStart: hl}, nil
}
