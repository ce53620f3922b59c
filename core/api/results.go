package api

// Results: the JSON documents calls leave (see the package comment for
// where they are kept). Field names are the ABI's: include/tpde.h
// describes each document beside the call that leaves it. Numbers that
// count bytes or elements are integers; bounds and errors are numbers
// that are always finite (frame.Parse refuses a header whose bound or
// error is not).

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/tpde/tpde/core/bundle"
	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/store"
)

// encode marshals a document: compact, with <, > and & as themselves
// (a document is not HTML).
func encode(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, fmt.Errorf("%w: result document: %v", errs.Internal, err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// FrameInfo is what tpde_inspect reports about a frame without decoding it.
type FrameInfo struct {
	VersionMajor uint8    `json:"version_major"`
	VersionMinor uint8    `json:"version_minor"`
	Kind         uint8    `json:"kind"`  // 0: keyframe, 1: delta frame
	DType        uint8    `json:"dtype"` // TPDE_* code
	Shape        []uint64 `json:"shape"`
	RawSize      uint64   `json:"raw_size"`   // bytes of the decoded tensor
	FrameSize    uint64   `json:"frame_size"` // bytes of the frame itself
	ChunkElems   uint32   `json:"chunk_elems"`
	NChunks      int      `json:"nchunks"`
}

func frameInfo(h *frame.Header) FrameInfo {
	shape := h.Shape
	if shape == nil {
		shape = []uint64{}
	}
	return FrameInfo{VersionMajor: h.VersionMajor, VersionMinor: h.VersionMinor, Kind: h.Kind, DType: uint8(h.DType),
		Shape: shape, RawSize: h.RawSize, FrameSize: h.FrameLen, ChunkElems: h.ChunkElems, NChunks: h.NChunks}
}

// DeltaInfo is what tpde_inspect_delta reports about a frame of either
// kind: FrameInfo's fields, and the delta fields (a keyframe's are zero,
// residual -1).
type DeltaInfo struct {
	FrameInfo
	Residual        int     `json:"residual"` // TPDE_RESIDUAL_XOR/DIFF/PRED; -1 for a keyframe
	Identical       bool    `json:"identical"`
	Lossy           bool    `json:"lossy"`
	QuantBits       int     `json:"quant_bits"`
	RefCRC          uint32  `json:"ref_crc"`
	Ref2CRC         uint32  `json:"ref2_crc"`
	NeedsRef2       bool    `json:"needs_ref2"`
	Bound           float64 `json:"bound"`
	MaxError        float64 `json:"max_error"`
	ChangedElems    uint64  `json:"changed_elems"`
	Sparsity        float64 `json:"sparsity"` // percent of elements whose residual is zero
	ChunksCopy      int     `json:"chunks_copy"`
	ChunksDense     int     `json:"chunks_dense"`
	ChunksSparse    int     `json:"chunks_sparse"`
	ChunksQuantized int     `json:"chunks_quantized"`
}

func deltaInfo(h *frame.Header) DeltaInfo {
	out := DeltaInfo{FrameInfo: frameInfo(h), Residual: -1}
	di := h.Delta
	if di == nil {
		return out
	}
	out.Residual, out.Identical, out.QuantBits = int(di.Residual), di.Identical, di.QuantBits
	if di.Lossy {
		out.Lossy, out.Bound, out.MaxError = true, di.Bound, di.MaxErr
	}
	out.RefCRC, out.Ref2CRC, out.NeedsRef2 = di.RefCRC, di.Ref2CRC, di.NeedsRef2()
	out.ChangedElems, out.Sparsity = di.Changed, h.Sparsity()
	out.ChunksCopy = di.Modes[delta.Copy]
	out.ChunksDense = di.Modes[delta.Dense] + di.Modes[delta.DenseQ]
	out.ChunksSparse = di.Modes[delta.Sparse] + di.Modes[delta.SparseQ]
	out.ChunksQuantized = di.Modes[delta.DenseQ] + di.Modes[delta.SparseQ]
	return out
}

// BundleAdded is tpde_bundle_writer_add's document: how each item was
// coded, as columns (item i at index i of each): a checkpoint has
// thousands of tensors, and columns parse several times faster than as
// many objects (docs/ARCHITECTURE.md, "The C ABI").
type BundleAdded struct {
	Items BundleItemColumns `json:"items"`
}

// BundleItemColumns are the columns of BundleAdded.
type BundleItemColumns struct {
	FrameSize    []uint64  `json:"frame_size"`
	Residual     []int     `json:"residual"` // the TPDE_RESIDUAL_* kind used; -1 for a keyframe
	Identical    []bool    `json:"identical"`
	MaxError     []float64 `json:"max_error"`
	ChangedElems []uint64  `json:"changed_elems"`
}

func bundleAdded(res []bundle.ItemResult) BundleAdded {
	n := len(res)
	c := BundleItemColumns{FrameSize: make([]uint64, n), Residual: make([]int, n), Identical: make([]bool, n),
		MaxError: make([]float64, n), ChangedElems: make([]uint64, n)}
	for i, r := range res {
		c.FrameSize[i], c.Residual[i] = r.FrameLen, -1
		if !r.Keyframe {
			c.Residual[i], c.Identical[i] = int(r.Delta.Residual), r.Delta.Identical
			c.MaxError[i], c.ChangedElems[i] = r.Delta.MaxErr, r.Delta.Changed
		}
	}
	return BundleAdded{c}
}

// BundleIndex is tpde_bundle_open's document: the bundle, its entries in
// index order (the numbers tpde_bundle_decode takes) as columns, as
// BundleAdded's items are, and its metadata object, verbatim.
type BundleIndex struct {
	Size         uint64          `json:"size"`
	VersionMinor uint8           `json:"version_minor"`
	Entries      BundleEntries   `json:"entries"`
	Meta         json.RawMessage `json:"meta"`
}

// BundleEntries are the columns of BundleIndex: what each tensor's
// validated frame header says.
type BundleEntries struct {
	Name         []string   `json:"name"`
	Kind         []int      `json:"kind"`  // 0: keyframe, 1: delta frame (not []uint8: base64 in JSON)
	DType        []int      `json:"dtype"` // TPDE_* code
	Shape        [][]uint64 `json:"shape"`
	RawSize      []uint64   `json:"raw_size"`
	FrameSize    []uint64   `json:"frame_size"`
	Offset       []uint64   `json:"offset"` // of the frame, from the start of the bundle
	Residual     []int      `json:"residual"`
	Identical    []bool     `json:"identical"`
	Lossy        []bool     `json:"lossy"`
	Bound        []float64  `json:"bound"`
	MaxError     []float64  `json:"max_error"`
	ChangedElems []uint64   `json:"changed_elems"`
	NeedsRef2    []bool     `json:"needs_ref2"`
}

func bundleIndex(r *bundle.Reader) BundleIndex {
	n := len(r.Entries)
	e := BundleEntries{Name: make([]string, n), Kind: make([]int, n), DType: make([]int, n),
		Shape: make([][]uint64, n), RawSize: make([]uint64, n), FrameSize: make([]uint64, n), Offset: make([]uint64, n),
		Residual: make([]int, n), Identical: make([]bool, n), Lossy: make([]bool, n), Bound: make([]float64, n),
		MaxError: make([]float64, n), ChangedElems: make([]uint64, n), NeedsRef2: make([]bool, n)}
	for i, en := range r.Entries {
		in := &r.Infos[i]
		e.Name[i], e.DType[i], e.Shape[i], e.RawSize[i] = en.Name, int(in.DType), in.Shape, in.RawSize
		if e.Shape[i] == nil {
			e.Shape[i] = []uint64{}
		}
		e.FrameSize[i], e.Offset[i], e.Residual[i] = en.Length, en.Offset, in.Residual
		e.Identical[i], e.Lossy[i], e.Bound[i], e.MaxError[i] = in.Identical, in.Lossy, in.Bound, in.MaxErr
		e.ChangedElems[i], e.NeedsRef2[i] = in.Changed, in.NeedsRef2
		if in.Delta {
			e.Kind[i] = 1
		}
	}
	return BundleIndex{Size: r.Size, VersionMinor: r.VersionMinor, Entries: e, Meta: json.RawMessage(r.Meta)}
}

// StateDictAdded is tpde_store_add_state_dict's document: where the
// layout put each tensor's bytes in the file, so that a caller naming its
// tensors by offset (DCP) never lays the file out itself.
type StateDictAdded struct {
	Tensors []LaidTensor `json:"tensors"`
}

// LaidTensor is one tensor's place in a state-dict file.
type LaidTensor struct {
	Name   string `json:"name"`
	Offset uint64 `json:"offset"`
	NBytes uint64 `json:"nbytes"`
}

// Reclaimed is tpde_store_reclaim's document.
type Reclaimed struct {
	Removed []int64 `json:"removed"`
}

// Pointer is tpde_store_read_pointer's document.
type Pointer struct {
	Store string `json:"store"`
	Step  int64  `json:"step"`
}

// Verified is tpde_store_verify's document.
type Verified struct {
	Problems []store.Problem `json:"problems"`
	Cleaned  *store.Cleaned  `json:"cleaned"`
}

// ReaderHead is tpde_store_reader_open's document: what the manifest
// says, none of it growing with the history (records are read one at a
// time, when asked for), so that reading the newest checkpoint costs the
// same however long the run.
type ReaderHead struct {
	Generation uint64       `json:"generation"`
	Config     store.Config `json:"config"`
	Base       bool         `json:"base"`
	Count      int          `json:"count"`
}

// Steps is tpde_store_reader_steps' document.
type Steps struct {
	Steps []int64 `json:"steps"`
}

// RunCount is tpde_store_reader_use's document: the run's checkpoints.
type RunCount struct {
	Count int `json:"count"`
}

// Runs is tpde_store_reader_runs' document, main first.
type Runs struct {
	Runs []store.RunInfo `json:"runs"`
}

// RecordEntry is tpde_store_reader_record's document.
type RecordEntry struct {
	Record *store.Checkpoint `json:"record"`
	Object string            `json:"object"` // the object that holds the record
	// Chains: per file, per region, how many frames its decode walks (0
	// where its chain cannot be followed, and Problem says why).
	Chains  [][]int `json:"chains"`
	Problem string  `json:"problem"`
}

// CheckpointTensors is tpde_store_reader_tensors' document.
type CheckpointTensors struct {
	Step  int64                `json:"step"`
	Files []*store.FileTensors `json:"files"`
}
