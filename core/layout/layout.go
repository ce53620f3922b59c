// Package layout finds the typed regions of a checkpoint file: the tensors
// of a .safetensors file, the storages of a torch.save zip or of a legacy
// (pre-zip) torch.save file. Every byte
// outside the regions is kept verbatim by the callers (the container and
// the store), which is what makes a restored file byte-identical.
package layout

import (
	"fmt"
	"sort"
	"unicode/utf8"

	"github.com/tpde/tpde/core/dtype"
	"github.com/tpde/tpde/core/frame"
	"github.com/tpde/tpde/core/safetensors"
	"github.com/tpde/tpde/core/torchlegacy"
	"github.com/tpde/tpde/core/torchzip"
)

// Kind is what a file was found to be.
type Kind string

const (
	Raw         Kind = "raw"
	Safetensors Kind = "safetensors"
	TorchZip    Kind = "torch-zip"
	TorchLegacy Kind = "torch-legacy"
)

// Hints is what the caller read from a torch file's pickles (only Python
// reads pickles; see python/tpde/_torchfile.py). At most one field is set;
// a nil *Hints is a file not known to be a torch file. It is the JSON the
// C ABI takes (include/tpde.h, "hints").
type Hints struct {
	// TorchZip: the dtype name of each storage key of a torch.save zip.
	TorchZip map[string]string `json:"torch_zip,omitempty"`
	// TorchZipNames: the region name of each storage key of a torch.save
	// zip (the state-dict path of its first tensor), with TorchZip. A key
	// without one is named "data/<key>", as are all of a zip's keys when
	// any name is empty, overlong, not UTF-8 or repeated.
	TorchZipNames map[string]string `json:"torch_zip_names,omitempty"`
	// TorchLegacy: where a legacy file's storages lie and what they hold.
	TorchLegacy *torchlegacy.Layout `json:"torch_legacy,omitempty"`
}

// MaxNameBytes is the longest region name Plan gives (as the store allows).
const MaxNameBytes = 1 << 16

// Region is one tensor's bytes [Begin, End) in the file.
type Region struct {
	Name       string
	Begin, End uint64
	DType      dtype.DType
	Shape      []uint64
}

// Plan finds data's regions, in file order, none empty. hints is nil for
// a file not known to be a torch file. A file that looks like a container
// but does not check out is Raw, and why says what was wrong.
func Plan(data []byte, hints *Hints) (kind Kind, regions []Region, why string) {
	var torchDTypes, torchNames map[string]string
	if hints != nil {
		if hints.TorchZip != nil && hints.TorchLegacy != nil {
			return Raw, nil, "torch file stored whole: hints name both a zip and a legacy layout"
		}
		if hints.TorchLegacy != nil {
			return planLegacy(data, *hints.TorchLegacy)
		}
		torchDTypes, torchNames = hints.TorchZip, hints.TorchZipNames
	}
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
			regions = append(regions, Region{Name: key, Begin: rec.Offset, End: rec.Offset + rec.Size, DType: d, Shape: []uint64{rec.Size / uint64(d.Width())}})
		}
		nameZipRegions(regions, torchNames)
		sort.Slice(regions, func(i, j int) bool { return regions[i].Begin < regions[j].Begin })
		return TorchZip, regions, ""
	}
	return Raw, nil, ""
}

// nameZipRegions renames regions, named by storage key, by the names the
// caller read from the pickle; by their records' names, data/<key>, when
// it gave none for a key, or when any name would be unusable (empty,
// overlong, not UTF-8) or given twice: a name is what pairs a region with
// the previous checkpoint's, so two regions may never share one.
func nameZipRegions(regions []Region, names map[string]string) {
	out := make([]string, len(regions))
	used := make(map[string]bool, len(regions))
	for i, r := range regions {
		n, ok := names[r.Name]
		if !ok {
			n = "data/" + r.Name
		}
		if n == "" || len(n) > MaxNameBytes || !utf8.ValidString(n) || used[n] {
			for i := range regions {
				regions[i].Name = "data/" + regions[i].Name
			}
			return
		}
		used[n], out[i] = true, n
	}
	for i := range regions {
		regions[i].Name = out[i]
	}
}

// planLegacy types a legacy torch file's storages: each becomes a region
// named by the state-dict path Python found for it, of its dtype, flat;
// a storage of a dtype tpde has no codec for stays verbatim.
func planLegacy(data []byte, l torchlegacy.Layout) (Kind, []Region, string) {
	storages, err := torchlegacy.Check(data, l)
	if err != nil {
		return Raw, nil, fmt.Sprintf("legacy torch file stored whole: %v", err)
	}
	var regions []Region
	names := make(map[string]bool, len(storages))
	for _, s := range storages {
		d, known := dtype.FromName(s.DType)
		if !known || s.Size == 0 || s.Size%uint64(d.Width()) != 0 {
			continue
		}
		if s.Name == "" || len(s.Name) > MaxNameBytes || !utf8.ValidString(s.Name) || names[s.Name] {
			return Raw, nil, fmt.Sprintf("legacy torch file stored whole: storage %q has an empty, overlong, non-UTF-8 or repeated name", s.Key)
		}
		names[s.Name] = true
		regions = append(regions, Region{Name: s.Name, Begin: s.Offset, End: s.Offset + s.Size, DType: d, Shape: []uint64{s.Size / uint64(d.Width())}})
	}
	return TorchLegacy, regions, ""
}
