package store

import (
	"encoding/hex"
	"fmt"
	"math"
	"math/bits"
	"path"
	"sort"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tpde/tpde/core/chain"
	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/strictjson"
)

// Version is the store layout version (docs/FORMAT.md §11). A reader
// refuses any other: objects and manifests of a later layout may mean
// something this one cannot check.
const Version = 1

// ManifestVersionHolders is the manifest version of a store whose
// checkpoints may name holders (docs/FORMAT.md, "Holders"). A writer
// writes it only when some checkpoint has a holder, so stores that use
// none stay readable by earlier tpde; an earlier tpde refuses a version 2
// manifest as unsupported rather than misreading it.
const ManifestVersionHolders = 2

// RecordVersionCRC is the version of a checkpoint record whose regions may
// carry their CRC32C, and whose files may carry a regions digest
// (docs/FORMAT.md §11.4).
const RecordVersionCRC = 2

const (
	manifestFormat   = "tpde-store-manifest"
	checkpointFormat = "tpde-store-checkpoint"
	markerFormat     = "tpde-store"

	// Caps on what a reader accepts before it allocates for it. A store
	// of hundreds of checkpoints of a large model stays far below them.
	maxManifestBytes   = 64 << 20
	maxCheckpointBytes = 256 << 20
	maxCheckpoints     = 1 << 20
	maxFiles           = 1 << 20
	maxRegions         = 1 << 22
	maxPathBytes       = 4096
	maxNameBytes       = 1 << 16
	maxTags            = 256
	// MaxKeyframeInterval bounds K, and so the frames one region's decode
	// may walk; a chain longer than the manifest's K is refused.
	MaxKeyframeInterval = chain.MaxInterval
)

// Reference policies: what an older checkpoint's tensor is coded against.
const (
	// RefPrevious codes each checkpoint against its neighbour: the design
	// document's approach A. The chains run backwards from the newest
	// checkpoint (see Tx.convert).
	RefPrevious = chain.Previous
	// RefBase codes every checkpoint against one base (approach B), such
	// as the pretrained weights a run started from.
	RefBase = chain.Base
)

// Config is fixed when a store is created.
type Config struct {
	KeyframeInterval int         `json:"keyframe_interval"`
	Reference        string      `json:"reference"`
	Lossy            []LossyRule `json:"lossy"`
}

// LossyRule makes the tensors whose "file:region" or region name matches
// Pattern (a glob: * any run of characters, ? one) lossy within Threshold,
// an absolute bound on every element's error.
type LossyRule struct {
	Pattern   string  `json:"pattern"`
	Threshold float64 `json:"threshold"`
}

// Manifest is one generation of the store's table of contents. It is the
// only thing a commit publishes; every object it names is durable before
// it is.
type Manifest struct {
	Format     string         `json:"format"`
	Version    int            `json:"version"`
	Generation uint64         `json:"generation"`
	Config     Config         `json:"config"`
	Base       *CheckpointRef `json:"base"`
	// Checkpoints are the default run's ("main").
	Checkpoints []CheckpointRef `json:"checkpoints"`
	// Runs are the other named runs (layout version 2), by name.
	Runs []Run `json:"runs,omitempty"`
}

// MainRun is the default run's name: a store's top-level checkpoints.
const MainRun = "main"

// Run is a named series of checkpoints in a store, sharing its objects
// with the others. Its first checkpoint is coded against its parent.
type Run struct {
	Name        string          `json:"name"`
	Parent      *RunParent      `json:"parent"`
	Checkpoints []CheckpointRef `json:"checkpoints"`
}

// RunParent is where a run started: the store's base, or a checkpoint of
// another run (which may since have been removed: it is then history).
type RunParent struct {
	Base bool   `json:"base,omitempty"`
	Run  string `json:"run,omitempty"`
	Step int64  `json:"step"`
}

// maxRunName bounds a run's name; names are also limited in characters
// (validRunName) so that they are safe as CLI arguments and in messages.
const maxRunName = 128

func validRunName(name string) error {
	if name == "" || len(name) > maxRunName {
		return fmt.Errorf("run name of %d bytes (1 to %d)", len(name), maxRunName)
	}
	for _, c := range name {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return fmt.Errorf("run name %q: only letters, digits, '-', '_' and '.'", printable(name))
		}
	}
	if name == "." || name == ".." {
		return fmt.Errorf("run name %q", name)
	}
	return nil
}

// CheckpointRef names one checkpoint's record object.
type CheckpointRef struct {
	Step   int64  `json:"step"`
	Object string `json:"object"`
	// Holder is the folder beside the store whose pointer file keeps this
	// checkpoint (layout version 2); "" for a checkpoint added directly.
	Holder string `json:"holder,omitempty"`
}

// Checkpoint is a checkpoint's record: its files and how each byte of them
// is stored. It is itself a content-addressed object.
type Checkpoint struct {
	Format  string   `json:"format"`
	Version int      `json:"version"`
	Step    int64    `json:"step"`
	Tags    []string `json:"tags"`
	Created string   `json:"created"`
	// Source is the sha256 of what was added, for a base: the same base
	// given again is recognised and never stored twice.
	Source string `json:"source,omitempty"`
	Files  []File `json:"files"`
}

// Layouts of a stored file.
const (
	LayoutSafetensors = "safetensors"
	LayoutTorchZip    = "torch-zip"
	LayoutTorchLegacy = "torch-legacy"
	LayoutRaw         = "raw"
	LayoutStateDict   = "state-dict"
)

// File is one file of a checkpoint. Its bytes are the skeleton's bytes with
// each region's bytes inserted at the region's offset.
type File struct {
	Path   string `json:"path"`
	Mode   uint32 `json:"mode"`
	Size   uint64 `json:"size"`
	SHA256 string `json:"sha256"`
	// Digest says what SHA256 hashes: "" the file's bytes, DigestRegions
	// its verbatim bytes and its regions' sha256s (fileDigest), which an
	// add computes without a second pass over the regions' bytes.
	Digest string `json:"digest,omitempty"`
	Layout string `json:"layout"`
	// Note says why a file that looks like a container was stored whole.
	Note     string   `json:"note,omitempty"`
	Skeleton Object   `json:"skeleton"`
	Regions  []Region `json:"regions"`
}

// Object names one stored object and its size.
type Object struct {
	Object string `json:"object"`
	Stored uint64 `json:"stored"`
}

// Region is one tensor's bytes inside a file.
type Region struct {
	Name   string   `json:"name"`
	Offset uint64   `json:"offset"`
	Size   uint64   `json:"size"`
	DType  string   `json:"dtype"`
	Shape  []uint64 `json:"shape"`
	SHA256 string   `json:"sha256"`
	// CRC32C is the CRC32C of the bytes the region decodes to (record
	// version 2; absent in older records). A load compares it with the
	// CRC its frame's chunk table combines to, which decoding has checked
	// chunk by chunk, instead of hashing the decoded bytes again.
	CRC32C *uint32 `json:"crc32c,omitempty"`
	Object
	// Ref is nil for a keyframe (a whole frame), else the region the delta
	// frame is coded against.
	Ref *Ref `json:"ref"`
	// MaxError is the largest |original - stored| of a lossy delta; 0 when
	// the region decodes bit-exactly.
	MaxError float64 `json:"max_error"`
	// Changed is the fraction of elements a delta changes.
	Changed float64 `json:"changed"`
}

// Ref names a region of another checkpoint, or of the base.
type Ref struct {
	Base bool `json:"base,omitempty"`
	// Run names another run's checkpoint (layout version 2); "" is the
	// run of the record that holds the ref.
	Run    string `json:"run,omitempty"`
	Step   int64  `json:"step"`
	File   string `json:"file"`
	Region string `json:"region"`
}

func corrupt(what, format string, a ...any) error {
	return fmt.Errorf("%w: %s: %s", errs.Corrupt, what, fmt.Sprintf(format, a...))
}

// decodeJSON parses b strictly into v: unknown fields, trailing data and
// duplicate keys are refused, so that what a reader checks is what it uses.
func decodeJSON(what string, b []byte, v any) error {
	if err := strictjson.Decode(b, v); err != nil {
		return corrupt(what, "%v", err)
	}
	return nil
}

func validHash(h string) bool {
	if len(h) != 64 {
		return false
	}
	_, err := hex.DecodeString(h)
	return err == nil && strings.ToLower(h) == h
}

// validText accepts a name or tag that is safe to print and to create:
// UTF-8 without control characters (C0, DEL, C1), so that no record can
// draw a fake line or retitle a terminal, or make a file named so.
func validText(t string, limit int) error {
	if len(t) > limit {
		return fmt.Errorf("%d bytes (at most %d)", len(t), limit)
	}
	if !utf8.ValidString(t) {
		return fmt.Errorf("%q is not UTF-8", t)
	}
	for _, r := range t {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%q has a control character (U+%04X)", t, r)
		}
	}
	return nil
}

// validPath accepts a relative, clean, slash-separated path that stays
// inside the folder it is restored into, and has no control character.
func validPath(p string) error {
	switch {
	case p == "" || len(p) > maxPathBytes:
		return fmt.Errorf("path of %d bytes", len(p))
	case validText(p, maxPathBytes) != nil:
		return fmt.Errorf("path %q has a control character or invalid UTF-8", p)
	case strings.ContainsAny(p, "\\"):
		return fmt.Errorf("path %q has a backslash", p)
	case strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q is absolute", p)
	case path.Clean(p) != p:
		return fmt.Errorf("path %q is not clean", p)
	}
	for _, part := range strings.Split(p, "/") {
		if part == ".." || part == "." {
			return fmt.Errorf("path %q leaves its folder", p)
		}
	}
	return nil
}

// Policy is the store's chain and keyframe policy, the one the bundle
// compressor shares (core/chain).
func (c *Config) Policy() chain.Policy {
	return chain.Policy{Interval: c.KeyframeInterval, Reference: c.Reference}
}

func (c *Config) validate() error {
	if err := c.Policy().Validate(); err != nil {
		return err
	}
	if len(c.Lossy) > 1024 {
		return fmt.Errorf("%d lossy rules", len(c.Lossy))
	}
	for _, r := range c.Lossy {
		if r.Pattern == "" || len(r.Pattern) > maxNameBytes {
			return fmt.Errorf("lossy pattern of %d bytes", len(r.Pattern))
		}
		if !(r.Threshold > 0) || math.IsInf(r.Threshold, 0) {
			return fmt.Errorf("lossy threshold %v for %q (must be finite and > 0)", r.Threshold, r.Pattern)
		}
	}
	return nil
}

// parseManifest decodes and checks a manifest generation.
func parseManifest(b []byte, generation uint64) (*Manifest, error) {
	what := fmt.Sprintf("manifest generation %d", generation)
	if len(b) > maxManifestBytes {
		return nil, corrupt(what, "%d bytes (max %d)", len(b), maxManifestBytes)
	}
	var m Manifest
	if err := decodeJSON(what, b, &m); err != nil {
		return nil, err
	}
	if m.Format != manifestFormat {
		return nil, corrupt(what, "format %q", m.Format)
	}
	if m.Version != Version && m.Version != ManifestVersionHolders {
		return nil, fmt.Errorf("%w: %s: layout version %d (this tpde reads %d and %d)", errs.Unsupported, what, m.Version, Version, ManifestVersionHolders)
	}
	if m.Generation != generation || generation > maxGeneration {
		return nil, corrupt(what, "says it is generation %d", m.Generation)
	}
	if err := m.Config.validate(); err != nil {
		return nil, corrupt(what, "%v", err)
	}
	if len(m.Checkpoints) > maxCheckpoints {
		return nil, corrupt(what, "%d checkpoints", len(m.Checkpoints))
	}
	if m.Base != nil && !validHash(m.Base.Object) {
		return nil, corrupt(what, "base object %q", m.Base.Object)
	}
	if m.Base == nil && m.Config.Reference == RefBase {
		return nil, corrupt(what, "reference policy %q without a base", RefBase)
	}
	if err := checkRefs(what, m.Version, m.Checkpoints); err != nil {
		return nil, err
	}
	if len(m.Runs) == 0 {
		m.Runs = nil // "runs": [] and no runs are the same manifest
	}
	if len(m.Runs) > 0 && m.Version < ManifestVersionHolders {
		return nil, corrupt(what, "runs in a version %d manifest", m.Version)
	}
	if len(m.Runs) > maxRuns {
		return nil, corrupt(what, "%d runs (max %d)", len(m.Runs), maxRuns)
	}
	total := len(m.Checkpoints)
	for i, r := range m.Runs {
		if err := validRunName(r.Name); err != nil || r.Name == MainRun {
			return nil, corrupt(what, "run %q", printable(r.Name))
		}
		if i > 0 && r.Name <= m.Runs[i-1].Name {
			return nil, corrupt(what, "runs out of order or repeated: %q after %q", r.Name, m.Runs[i-1].Name)
		}
		if p := r.Parent; p != nil {
			if p.Base == (p.Run != "") || (p.Run != "" && validRunName(p.Run) != nil) || p.Step < 0 {
				return nil, corrupt(what, "run %q: parent %+v", r.Name, *p)
			}
		}
		if r.Checkpoints == nil {
			return nil, corrupt(what, "run %q: no checkpoints list", r.Name)
		}
		if err := checkRefs(fmt.Sprintf("%s: run %q", what, r.Name), m.Version, r.Checkpoints); err != nil {
			return nil, err
		}
		total += len(r.Checkpoints)
	}
	if total > maxCheckpoints {
		return nil, corrupt(what, "%d checkpoints", total)
	}
	return &m, nil
}

// maxRuns bounds a manifest's runs.
const maxRuns = 1 << 16

// checkRefs checks one run's checkpoint list.
func checkRefs(what string, version int, refs []CheckpointRef) error {
	for i, c := range refs {
		if !validHash(c.Object) {
			return corrupt(what, "checkpoint %d: object %q", c.Step, c.Object)
		}
		if c.Holder != "" && (version < ManifestVersionHolders || validHolder(c.Holder) != nil) {
			return corrupt(what, "checkpoint %d: holder %q", c.Step, printable(c.Holder))
		}
		if c.Step < 0 {
			return corrupt(what, "checkpoint step %d", c.Step)
		}
		if i > 0 && c.Step <= refs[i-1].Step {
			return corrupt(what, "steps out of order: %d after %d", c.Step, refs[i-1].Step)
		}
	}
	return nil
}

// parseCheckpoint decodes and checks a checkpoint record on its own; refs
// between checkpoints are checked by snapshot.link.
func parseCheckpoint(b []byte, step int64, base bool) (*Checkpoint, error) {
	what := fmt.Sprintf("checkpoint %d", step)
	if base {
		what = "the base"
	}
	if len(b) > maxCheckpointBytes {
		return nil, corrupt(what, "record of %d bytes (max %d)", len(b), maxCheckpointBytes)
	}
	var c Checkpoint
	if err := decodeJSON(what, b, &c); err != nil {
		return nil, err
	}
	if c.Format != checkpointFormat {
		return nil, corrupt(what, "format %q", c.Format)
	}
	if c.Version != Version && c.Version != RecordVersionCRC {
		return nil, fmt.Errorf("%w: %s: record version %d (this tpde reads %d and %d)", errs.Unsupported, what, c.Version, Version, RecordVersionCRC)
	}
	if c.Version == Version && c.hasCRC() {
		return nil, corrupt(what, "a version %d record with region CRCs", Version)
	}
	if !base && c.Step != step {
		return nil, corrupt(what, "record says step %d", c.Step)
	}
	if len(c.Tags) > maxTags {
		return nil, corrupt(what, "%d tags", len(c.Tags))
	}
	for _, t := range c.Tags {
		if err := validText(t, maxNameBytes); err != nil {
			return nil, corrupt(what, "tag %v", err)
		}
	}
	// created is printed by ls and info like a tag: it must be the time a
	// writer put there, never free text (an escape sequence that retitles
	// a terminal, a newline that draws a fake line).
	if len(c.Created) > 64 {
		return nil, corrupt(what, "created is %d bytes, not an RFC 3339 time", len(c.Created))
	}
	if _, err := time.Parse(time.RFC3339Nano, c.Created); err != nil {
		return nil, corrupt(what, "created %q is not an RFC 3339 time", c.Created)
	}
	if len(c.Files) > maxFiles {
		return nil, corrupt(what, "%d files", len(c.Files))
	}
	if c.Source != "" && !validHash(c.Source) {
		return nil, corrupt(what, "source hash %q", c.Source)
	}
	paths := make(map[string]bool, len(c.Files))
	regions := 0
	for i := range c.Files {
		f := &c.Files[i]
		if err := validPath(f.Path); err != nil {
			return nil, corrupt(what, "%v", err)
		}
		if paths[f.Path] {
			return nil, corrupt(what, "file %q listed twice", f.Path)
		}
		paths[f.Path] = true
		regions += len(f.Regions)
		if regions > maxRegions {
			return nil, corrupt(what, "more than %d regions", maxRegions)
		}
		if err := f.validate(); err != nil {
			return nil, corrupt(what, "file %q: %v", f.Path, err)
		}
		if f.Digest != "" && c.Version < RecordVersionCRC {
			return nil, corrupt(what, "file %q: a digest in a version %d record", f.Path, c.Version)
		}
	}
	// A file may not also be a folder of another ("a" and "a/b"):
	// restoring both would have to replace one with the other.
	sorted := make([]string, 0, len(paths))
	for p := range paths {
		sorted = append(sorted, p)
	}
	sort.Strings(sorted)
	for i := 1; i < len(sorted); i++ {
		if strings.HasPrefix(sorted[i], sorted[i-1]+"/") {
			return nil, corrupt(what, "%q is a file and also a folder of %q", sorted[i-1], sorted[i])
		}
	}
	return &c, nil
}

func (f *File) validate() error {
	if f.Mode&^0o777 != 0 {
		return fmt.Errorf("mode %o has bits beyond the permissions", f.Mode)
	}
	if !validHash(f.SHA256) || !validHash(f.Skeleton.Object) {
		return fmt.Errorf("bad hash")
	}
	if f.Digest != "" && f.Digest != DigestRegions {
		return fmt.Errorf("digest %q", printable(f.Digest))
	}
	switch f.Layout {
	case LayoutSafetensors, LayoutTorchZip, LayoutTorchLegacy, LayoutRaw, LayoutStateDict:
	default:
		return fmt.Errorf("layout %q", f.Layout)
	}
	var pos uint64
	names := make(map[string]bool, len(f.Regions))
	for i := range f.Regions {
		r := &f.Regions[i]
		if r.Name == "" || len(r.Name) > maxNameBytes || !utf8.ValidString(r.Name) {
			return fmt.Errorf("region %d: name of %d bytes", i, len(r.Name))
		}
		if names[r.Name] {
			return fmt.Errorf("region %q listed twice", r.Name)
		}
		names[r.Name] = true
		if r.Offset < pos {
			return fmt.Errorf("region %q at %d overlaps the one before it or is out of order", r.Name, r.Offset)
		}
		end := r.Offset + r.Size
		if end < r.Offset || end > f.Size || r.Size == 0 {
			return fmt.Errorf("region %q [%d, +%d) does not lie in the file's %d bytes", r.Name, r.Offset, r.Size, f.Size)
		}
		pos = end
		d, ok := dtype.FromName(r.DType)
		if !ok {
			return fmt.Errorf("region %q: dtype %q", r.Name, r.DType)
		}
		if len(r.Shape) > frame.MaxNDim {
			return fmt.Errorf("region %q: %d dimensions", r.Name, len(r.Shape))
		}
		n := uint64(d.Width())
		for _, s := range r.Shape {
			hi, lo := bits.Mul64(n, s)
			if hi != 0 {
				return fmt.Errorf("region %q: shape overflows", r.Name)
			}
			n = lo
		}
		if n != r.Size {
			return fmt.Errorf("region %q: shape %v of %s is not %d bytes", r.Name, r.Shape, r.DType, r.Size)
		}
		if !validHash(r.SHA256) || !validHash(r.Object.Object) {
			return fmt.Errorf("region %q: bad hash", r.Name)
		}
		if r.MaxError < 0 || math.IsNaN(r.MaxError) || math.IsInf(r.MaxError, 0) || r.Changed < 0 || r.Changed > 1 {
			return fmt.Errorf("region %q: max_error %v, changed %v", r.Name, r.MaxError, r.Changed)
		}
		if r.Ref != nil {
			if err := validPath(r.Ref.File); err != nil {
				return fmt.Errorf("region %q: reference: %v", r.Name, err)
			}
			if r.Ref.Run != "" && (r.Ref.Base || validRunName(r.Ref.Run) != nil) {
				return fmt.Errorf("region %q: reference to run %q", r.Name, printable(r.Ref.Run))
			}
		}
	}
	return nil
}

func (c *Checkpoint) hasCRC() bool {
	for i := range c.Files {
		for j := range c.Files[i].Regions {
			if c.Files[i].Regions[j].CRC32C != nil {
				return true
			}
		}
	}
	return false
}

// stamp sets the record version its contents need: 2 once a region
// carries a CRC or a file a regions digest, so that a reader that predates
// them refuses the record as unsupported rather than as corrupt.
func (c *Checkpoint) stamp() {
	c.Version = Version
	if c.hasCRC() || c.hasDigest() {
		c.Version = RecordVersionCRC
	}
}

func (c *Checkpoint) hasDigest() bool {
	for i := range c.Files {
		if c.Files[i].Digest != "" {
			return true
		}
	}
	return false
}
