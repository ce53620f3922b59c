package store

// Loading a checkpoint's tensors: the seam Python loads through. One call
// describes every tensor file of a checkpoint (its tensors' names, dtypes,
// shapes and where their bytes lie), parsed and checked here; then one call
// per file decodes all its tensors into buffers the caller allocated.

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/safetensors"
	"github.com/tpde/tpde/core/statedict"
)

// TensorEntry is one tensor of a file, where its bytes lie in the file.
type TensorEntry struct {
	Name   string   `json:"name"`
	DType  string   `json:"dtype"`
	Shape  []uint64 `json:"shape"`
	Offset uint64   `json:"offset"`
	NBytes uint64   `json:"nbytes"`
}

// FileTensors is what a file's header says: its tensors, and for a state
// dict the structure to rebuild it with, for safetensors its metadata.
type FileTensors struct {
	Path    string          `json:"path"`
	Layout  string          `json:"layout"`
	Tensors []TensorEntry   `json:"tensors"`
	Meta    json.RawMessage `json:"meta"`
}

// Tensors describes file rel of c, a safetensors or state-dict file,
// reading only its header.
func (rd *Reader) Tensors(c *Checkpoint, rel string) (*FileTensors, error) {
	f, err := c.File(rel)
	if err != nil {
		return nil, err
	}
	what := fmt.Sprintf("checkpoint %d: %s", c.Step, rel)
	if !Loadable(f) {
		return nil, fmt.Errorf("%w: %s is a %s file, not a safetensors or state-dict file", errs.Invalid, what, f.Layout)
	}
	// Both layouts start with a u64 header length; each checks it against
	// its own cap before anything that size is read.
	var first [8]byte
	if f.Size < 8 {
		return nil, fmt.Errorf("%w: %s: %d bytes, too short for a header", errs.Corrupt, what, f.Size)
	}
	if err := rd.ReadRange(c, rel, 0, first[:]); err != nil {
		return nil, err
	}
	limit := uint64(statedict.MaxHeader)
	if f.Layout == LayoutSafetensors {
		limit = safetensors.MaxHeaderLen
	}
	n := binary.LittleEndian.Uint64(first[:])
	if n > limit || n > f.Size-8 {
		return nil, fmt.Errorf("%w: %s: a header of %d bytes in a file of %d", errs.Corrupt, what, n, f.Size)
	}
	head := make([]byte, 8+n)
	if err := rd.ReadRange(c, rel, 0, head); err != nil {
		return nil, err
	}
	out := &FileTensors{Path: rel, Layout: f.Layout, Tensors: []TensorEntry{}, Meta: json.RawMessage("null")}
	switch f.Layout {
	case LayoutStateDict:
		h, err := statedict.Parse(head, f.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for _, t := range h.Tensors {
			out.Tensors = append(out.Tensors, TensorEntry{t.Name, t.DType, t.Shape, h.DataStart + t.Offset, t.NBytes})
		}
		if out.Meta, err = json.Marshal(h.Meta); err != nil {
			return nil, fmt.Errorf("%w: %v", errs.Internal, err)
		}
	case LayoutSafetensors:
		// The writer planned the file's regions from this header; the
		// bytes are still untrusted here, and ParseHeader refuses a name
		// twice or not UTF-8, as the writer's Plan did.
		sf, err := safetensors.ParseHeader(head, f.Size)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		for _, t := range sf.Tensors {
			out.Tensors = append(out.Tensors, TensorEntry{t.Name, t.DType, t.Shape, t.Begin, t.End - t.Begin})
		}
		if out.Meta, err = json.Marshal(sf.Metadata); err != nil {
			return nil, fmt.Errorf("%w: %v", errs.Internal, err)
		}
	}
	return out, nil
}

// Span is where one tensor's bytes go: file bytes [Offset, Offset+len(Dst)).
type Span struct {
	Offset uint64
	Dst    []byte
}

// ReadTensors decodes every span of file rel of c into its buffer: one
// call per file, however many tensors. Spans are checked against the file
// (and the reader's output limit, in total) before anything is decoded.
//
// A span that is exactly one region (a tensor the store coded as a frame:
// the common case) decodes straight into its buffer (decodeRegions).
// Anything else (a tensor kept in the skeleton, a span across regions) is
// read through ReadRange.
func (rd *Reader) ReadTensors(c *Checkpoint, rel string, spans []Span) error {
	f, err := c.File(rel)
	if err != nil {
		return err
	}
	total := uint64(0)
	for _, sp := range spans {
		end := sp.Offset + uint64(len(sp.Dst))
		if end < sp.Offset || end > f.Size {
			return fmt.Errorf("%w: bytes [%d, %d) of %q, which is %d bytes", errs.Invalid, sp.Offset, end, rel, f.Size)
		}
		total += uint64(len(sp.Dst))
	}
	if err := rd.checkOutput(total); err != nil {
		return err
	}
	var jobs []regionJob
	for _, sp := range spans {
		if len(sp.Dst) == 0 {
			continue
		}
		if r := f.regionAt(sp.Offset, uint64(len(sp.Dst))); r != nil {
			jobs = append(jobs, regionJob{r, sp.Dst})
		} else if err := rd.ReadRange(c, rel, sp.Offset, sp.Dst); err != nil {
			return fmt.Errorf("tensor at byte %d of %s: %w", sp.Offset, rel, err)
		}
	}
	return rd.decodeRegions(rel, jobs)
}

// regionJob is a region to decode into dst (exactly its size).
type regionJob struct {
	r   *Region
	dst []byte
}

// decodeRegions decodes each job's region into its buffer. Large regions
// go one after another, each with its chunks on every thread; the others,
// most of a model's tensors, are too small to split into chunks on every
// thread, so they are spread over the threads one region each, each
// worker with its own chain buffers.
func (rd *Reader) decodeRegions(rel string, jobs []regionJob) error {
	defer rd.prefetch(jobs)()
	threads := par.Threads(rd.threads)
	var small []regionJob
	for _, j := range jobs {
		if threads > 1 && j.r.Size < uint64(threads)*parallelRegionBytes {
			small = append(small, j)
		} else if err := rd.s.decodeRegion(rd.sn, j.r, j.dst, threads, &rd.spare); err != nil {
			return fmt.Errorf("tensor at byte %d of %s: %w", j.r.Offset, rel, err)
		}
	}
	if len(small) == 0 {
		return nil
	}
	spares := make([]buffer, min(threads, len(small)))
	defer func() {
		for i := range spares {
			spares[i].free()
		}
	}()
	return par.For(len(small), len(spares), func(w, k int) error {
		j := small[k]
		if err := rd.s.decodeRegion(rd.sn, j.r, j.dst, 1, &spares[w]); err != nil {
			return fmt.Errorf("tensor at byte %d of %s: %w", j.r.Offset, rel, err)
		}
		return nil
	})
}

// parallelRegionBytes is how many bytes of a region one thread should
// have before a region's decode is split over threads by chunks rather
// than regions spread over threads (a chunk is 512 KiB of F32 or so).
const parallelRegionBytes = 4 << 20

// regionAt is f's region of exactly bytes [off, off+n), or nil. Regions are
// in file order (parseCheckpoint checks it).
func (f *File) regionAt(off, n uint64) *Region {
	i := sort.Search(len(f.Regions), func(i int) bool { return f.Regions[i].Offset >= off })
	if i < len(f.Regions) && f.Regions[i].Offset == off && f.Regions[i].Size == n {
		return &f.Regions[i]
	}
	return nil
}

// Loadable says whether Tensors describes file f (the others are loaded
// whole: torch files through torch.load, the rest not at all).
func Loadable(f *File) bool {
	return f.Layout == LayoutStateDict || f.Layout == LayoutSafetensors
}
