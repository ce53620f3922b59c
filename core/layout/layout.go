// Package layout finds the typed regions of a checkpoint file: the tensors
// of a .safetensors file, the storages of a torch.save zip. Every byte
// outside the regions is kept verbatim by the callers (the container and
// the store), which is what makes a restored file byte-identical.
package layout

import (
	"fmt"
	"sort"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/safetensors"
	"github.com/tpde/tpde/core/torchzip"
)

// Kind is what a file was found to be.
type Kind string

const (
	Raw         Kind = "raw"
	Safetensors Kind = "safetensors"
	TorchZip    Kind = "torch-zip"
)

// Region is one tensor's bytes [Begin, End) in the file.
type Region struct {
	Name       string
	Begin, End uint64
	DType      dtype.DType
	Shape      []uint64
}

// Plan finds data's regions, in file order, none empty. torchDTypes, the
// dtype of each storage key of a torch zip (read from its data.pkl by the
// caller: only Python reads pickles), is nil for a file not known to be
// one. A file that looks like a container but does not check out is Raw,
// and why says what was wrong.
func Plan(data []byte, torchDTypes map[string]string) (kind Kind, regions []Region, why string) {
	switch {
	case safetensors.Sniff(data):
		st, err := safetensors.Parse(data)
		if err != nil {
			return Raw, nil, fmt.Sprintf("not a valid safetensors file, stored whole: %v", err)
		}
		for _, t := range st.Tensors {
			if t.End == t.Begin {
				continue
			}
			// Tensors of a dtype without its own codec (F4, C64, ...)
			// are coded as bytes. Shapes deeper than a frame allows are
			// flattened: the safetensors header keeps the real shape.
			r := Region{Name: t.Name, Begin: t.Begin, End: t.End, DType: dtype.U8, Shape: []uint64{t.End - t.Begin}}
			if d, ok := dtype.FromName(t.DType); ok && len(t.Shape) <= frame.MaxNDim {
				r.DType, r.Shape = d, t.Shape
			} else if ok {
				r.DType, r.Shape = d, []uint64{(t.End - t.Begin) / uint64(d.Width())}
			}
			regions = append(regions, r)
		}
		sort.Slice(regions, func(i, j int) bool { return regions[i].Begin < regions[j].Begin })
		return Safetensors, regions, ""
	case torchDTypes != nil:
		arc, err := torchzip.Parse(data)
		if err != nil {
			return Raw, nil, fmt.Sprintf("torch file stored whole: %v", err)
		}
		for key, name := range torchDTypes {
			rec, ok := arc.Storages[key]
			d, known := dtype.FromName(name)
			if !ok || !known || rec.Size == 0 || rec.Size%uint64(d.Width()) != 0 {
				continue // stays verbatim: still lossless, just not modelled
			}
			regions = append(regions, Region{Name: "data/" + key, Begin: rec.Offset, End: rec.Offset + rec.Size, DType: d, Shape: []uint64{rec.Size / uint64(d.Width())}})
		}
		sort.Slice(regions, func(i, j int) bool { return regions[i].Begin < regions[j].Begin })
		return TorchZip, regions, ""
	}
	return Raw, nil, ""
}
