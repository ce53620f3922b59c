package api

// Options: the codes and JSON documents callers pass, checked here and
// turned into core options. The codes are include/tpde.h's (capi checks
// each against its C definition at compile time); a code or flag bit this
// library does not know is refused, never ignored, so that a caller
// asking for a guarantee never silently goes without it.

import (
	"encoding/json"
	"fmt"

	"github.com/tpde/tpde/core/container"
	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/entropy"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/layout"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/store"
	"github.com/tpde/tpde/core/strictjson"
)

// Residual kinds of delta frames (TPDE_RESIDUAL_*).
const (
	ResidualAuto = -1
	ResidualXOR  = 0
	ResidualDiff = 1
	ResidualPred = 2
)

// Flags of delta coding (TPDE_DELTA_*).
const (
	DeltaDenseOnly   = 1
	DeltaSparseOnly  = 2
	DeltaNoContext   = 4
	DeltaFullContext = 8
	deltaFlagsKnown  = DeltaDenseOnly | DeltaSparseOnly | DeltaNoContext | DeltaFullContext
)

// Flags of the file calls (TPDE_FILE_*).
const (
	FileNoReplace = 1
	FileNoFollow  = 2
)

// Modes of OpenStore (0 reads; TPDE_STORE_WRITE, TPDE_STORE_STAGE).
const (
	StoreRead  = 0
	StoreWrite = 1
	StoreStage = 2
)

// Which record a reader call names (TPDE_STORE_STEP, _LATEST, _BASE).
const (
	RecordStep   = 0
	RecordLatest = 1
	RecordBase   = 2
)

// RestoreForce: a restore replaces what exists at its destination
// (TPDE_RESTORE_FORCE).
const RestoreForce = 1

// maxOptionDoc caps the option documents (config, tags, parent): they
// are a few hundred bytes; a larger one is a caller's mistake.
const maxOptionDoc = 1 << 20

// Tensor is a tensor the caller lends for one call: its bytes in place
// (never copied, never kept), C-contiguous, and its element type as a
// TPDE_* code, checked here.
type Tensor struct {
	DType int32
	Shape []uint64
	Data  []byte
}

// dtypeOf checks a TPDE_* element type code.
func dtypeOf(code int32) (dtype.DType, error) {
	if code < 0 || code >= dtype.Count {
		return 0, fmt.Errorf("%w: dtype code %d", errs.Invalid, code)
	}
	return dtype.DType(code), nil
}

// effortOf checks a TPDE_EFFORT_* code.
func effortOf(code int32) (entropy.Effort, error) {
	if code < 0 || code > int32(entropy.Max) {
		return 0, fmt.Errorf("%w: effort %d", errs.Invalid, code)
	}
	return entropy.Effort(code), nil
}

// DeltaArgs are how one tensor is coded against its reference, as
// tpde_encode_delta takes them.
type DeltaArgs struct {
	Residual   int32   // TPDE_RESIDUAL_*
	Threshold  float64 // 0: lossless
	QuantBits  int32   // 0, 8 or 4 (lossy only)
	Flags      uint32  // TPDE_DELTA_*
	ChunkElems uint32  // 0: the default
	Effort     int32   // TPDE_EFFORT_*
	Threads    int32   // 0: the default
}

// options checks a and turns it into frame options. Values frame
// itself checks (threshold, quant_bits against the dtype) are left to it.
func (a DeltaArgs) options() (frame.DeltaOptions, error) {
	opt := frame.DeltaOptions{ChunkElems: a.ChunkElems, Threads: int(a.Threads), Threshold: a.Threshold,
		QuantBits: int(a.QuantBits)}
	switch {
	case a.Residual == ResidualAuto:
		opt.Residual = delta.Auto
	case a.Residual >= 0 && a.Residual <= int32(delta.MaxKind):
		opt.Residual = delta.Kind(a.Residual)
	default:
		return opt, fmt.Errorf("%w: residual kind %d", errs.Invalid, a.Residual)
	}
	var err error
	if opt.Effort, err = effortOf(a.Effort); err != nil {
		return opt, err
	}
	f := a.Flags
	if f&^deltaFlagsKnown != 0 || f&(DeltaDenseOnly|DeltaSparseOnly) == DeltaDenseOnly|DeltaSparseOnly ||
		f&(DeltaNoContext|DeltaFullContext) == DeltaNoContext|DeltaFullContext {
		return opt, fmt.Errorf("%w: delta flags %#x", errs.Invalid, f)
	}
	switch {
	case f&DeltaDenseOnly != 0:
		opt.Sparse = delta.SparseNever
	case f&DeltaSparseOnly != 0:
		opt.Sparse = delta.SparseAlways
	}
	switch {
	case f&DeltaNoContext != 0:
		opt.Context = delta.ContextOff
	case f&DeltaFullContext != 0:
		opt.Context = delta.ContextOn
	}
	return opt, nil
}

// fileOptions checks the TPDE_FILE_* flags of the file calls.
func fileOptions(flags uint32) (container.Options, error) {
	const known = FileNoReplace | FileNoFollow
	if flags&^known != 0 {
		return container.Options{}, fmt.Errorf("%w: unknown file flags %#x", errs.Invalid, flags&^known)
	}
	return container.Options{NoReplace: flags&FileNoReplace != 0, NoFollow: flags&FileNoFollow != 0}, nil
}

// StoreConfig is the config document of OpenStore: any key omitted means
// "as stored" (or the default for a new store).
type StoreConfig struct {
	KeyframeInterval *int               `json:"keyframe_interval"`
	Reference        string             `json:"reference"`
	Lossy            *[]store.LossyRule `json:"lossy"`
	// Positions: TPDE_DELTA_DENSE_ONLY or _SPARSE_ONLY for this writer's
	// delta frames (0: per chunk); the writer's choice, not the store's.
	Positions int `json:"positions"`
	// MaxOutput: the decode limit of this session's reads (0: none beyond
	// the memory this process may use), as max_output elsewhere.
	MaxOutput uint64 `json:"max_output"`
	// Priority: "normal" (or absent), "low" (nice 19) or "idle"
	// (SCHED_IDLE) for this session's writes, which then run on threads
	// lowered to it (par.Run): a training callback's, coding while
	// training runs.
	Priority string `json:"priority"`
	// Recode: "background" (or absent) commits an add's checkpoint at once
	// and re-codes the one before it as reverse deltas on a goroutine of
	// its own, which the next write and the close wait for; "inline" does
	// it inside the add (store.RecodeInline).
	Recode string `json:"recode"`
}

// ParseStoreConfig reads a config document strictly: an unknown or
// repeated key is refused, not ignored (a misspelt option must not pass
// for the default). Empty is no config.
func ParseStoreConfig(b []byte) (StoreConfig, error) {
	var c StoreConfig
	if len(b) == 0 {
		return c, nil
	}
	if err := strictOption(b, "config", &c); err != nil {
		return c, err
	}
	if c.Positions < int(delta.SparseAuto) || c.Positions > int(delta.SparseAlways) {
		return c, fmt.Errorf("%w: config positions %d (must be 0, 1 or 2)", errs.Invalid, c.Positions)
	}
	if _, err := par.ParsePriority(c.Priority); err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	switch c.Recode {
	case "", store.RecodeBackground, store.RecodeInline:
	default:
		return c, fmt.Errorf("%w: config recode %q (must be %q or %q)", errs.Invalid, c.Recode, store.RecodeBackground, store.RecodeInline)
	}
	return c, nil
}

// options turns the config into store.Options for a session of mode.
func (c StoreConfig) options(mode int32, threads int32) (store.Options, error) {
	if mode < StoreRead || mode > StoreStage {
		return store.Options{}, fmt.Errorf("%w: write %d (must be 0, TPDE_STORE_WRITE or TPDE_STORE_STAGE)", errs.Invalid, mode)
	}
	opt := store.Options{Write: mode == StoreWrite, Stage: mode == StoreStage, Reference: c.Reference,
		Threads: int(threads), Positions: delta.SparseMode(c.Positions),
		Limits: store.Limits{Output: c.MaxOutput, Memory: c.MaxOutput}, Recode: c.Recode}
	if opt.Recode == "" {
		opt.Recode = store.RecodeBackground
	}
	opt.Priority, _ = par.ParsePriority(c.Priority) // checked by ParseStoreConfig
	if c.KeyframeInterval != nil {
		opt.KeyframeInterval, opt.KeyframeIntervalSet = *c.KeyframeInterval, true
	}
	if c.Lossy != nil {
		opt.Lossy, opt.LossySet = *c.Lossy, true
	}
	return opt, nil
}

// parseTags reads a checkpoint's tags: a JSON list of strings (empty: none).
func parseTags(b []byte) ([]string, error) {
	var tags []string
	if len(b) == 0 {
		return nil, nil
	}
	return tags, strictOption(b, "tags", &tags)
}

// parseParent reads a run's parent: {"run", "step"} or {"base": true}
// (empty: none).
func parseParent(b []byte) (*store.RunParent, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var p *store.RunParent
	return p, strictOption(b, "parent", &p)
}

func strictOption(b []byte, what string, v any) error {
	if len(b) > maxOptionDoc {
		return fmt.Errorf("%w: %s of %d bytes (max %d)", errs.Invalid, what, len(b), maxOptionDoc)
	}
	if err := strictjson.Decode(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
	}
	return nil
}

// parseHints reads what the caller read from a torch file's pickles
// (include/tpde.h, TPDE_TORCH_HINTS). It is advice the library checks
// against the file's bytes, not a promise: a file that disagrees is
// stored as bytes.
func parseHints(b []byte) (*layout.Hints, error) {
	var h *layout.Hints
	return h, lenient(b, "hints", &h)
}

// lenient decodes a document that core checks itself (hints, a state
// dict's meta, part descriptors) with encoding/json's rules.
func lenient(b []byte, what string, v any) error {
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%w: %s: %v", errs.Invalid, what, err)
	}
	return nil
}
