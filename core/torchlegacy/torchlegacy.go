// Package torchlegacy checks, defensively, the storage area of a legacy
// (pre-zip) torch.save file, so that tpde can code each storage's bytes as
// a typed region without unpickling anything.
//
// A legacy file is five pickles back to back (the magic number, the
// protocol version, a system-info dict, the saved object, the sorted list
// of storage keys) and then, for each key in that list's order, a u64
// little-endian element count followed by count × element size raw bytes,
// up to the end of the file. Reading the pickles is Python's job
// (python/tpde/_torchfile.py walks their opcodes); it hands this package
// where the storage area starts and what each storage should hold. This
// package trusts none of it: every count in the file must equal the one
// the pickle gave, every size is computed with checked arithmetic, and
// the storages must tile the rest of the file exactly.
package torchlegacy

import (
	"encoding/binary"
	"fmt"
	"math/bits"

	"github.com/tpde/tpde/core/errs"
)

// MaxStorages caps the storages one file may list, so that a small hint
// cannot make the checker allocate without bound (as torchzip.MaxRecords).
const MaxStorages = 1 << 20

// countLen is the size of the element count before each storage's bytes.
const countLen = 8

// Spec is what the pickle says of one storage, in the keys list's order.
type Spec struct {
	Key         string `json:"key"`          // the storage key, as in the pickle
	Name        string `json:"name"`         // the region name to give it (a state-dict path)
	DType       string `json:"dtype"`        // a dtype name, or "" for bytes tpde does not model
	Count       uint64 `json:"count"`        // elements, as the u64 before its bytes must say
	ElementSize uint64 `json:"element_size"` // bytes per counted element
}

// Layout is Python's reading of a legacy file: DataStart is the offset
// just past the keys pickle, where the first storage's count lies.
type Layout struct {
	DataStart uint64 `json:"data_start"`
	Storages  []Spec `json:"storages"`
}

// Storage is one storage's bytes [Offset, Offset+Size) in the file.
type Storage struct {
	Spec
	Offset, Size uint64
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: legacy torch file: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

// Check returns every storage of l, in file order, after checking that the
// file's bytes agree with it. Errors are errs.Corrupt (the bytes disagree
// with the pickle: a count that differs, a storage past the end, bytes
// after the last storage) or errs.Invalid (a layout no pickle could give:
// a zero element size, a duplicate key, too many storages).
func Check(data []byte, l Layout) ([]Storage, error) {
	size := uint64(len(data))
	if len(l.Storages) > MaxStorages {
		return nil, fmt.Errorf("%w: legacy torch file: %d storages exceed %d", errs.Invalid, len(l.Storages), MaxStorages)
	}
	if l.DataStart == 0 || l.DataStart > size {
		return nil, corrupt("storage area at byte %d is outside the file's %d bytes", l.DataStart, size)
	}
	// Every pickle starts with PROTO (0x80): a cheap check that the
	// offsets are about this file at all.
	if data[0] != 0x80 {
		return nil, corrupt("byte 0 is %#x, not a pickle's PROTO opcode", data[0])
	}
	keys := make(map[string]bool, len(l.Storages))
	out := make([]Storage, 0, len(l.Storages))
	pos := l.DataStart
	for i, s := range l.Storages {
		if keys[s.Key] {
			return nil, fmt.Errorf("%w: legacy torch file: storage key %q listed twice", errs.Invalid, s.Key)
		}
		keys[s.Key] = true
		if s.ElementSize == 0 {
			return nil, fmt.Errorf("%w: legacy torch file: storage %q has element size 0", errs.Invalid, s.Key)
		}
		if size-pos < countLen {
			return nil, corrupt("storage %d (key %q): its count at byte %d is past the end (%d bytes)", i, s.Key, pos, size)
		}
		count := binary.LittleEndian.Uint64(data[pos:])
		if count != s.Count {
			return nil, corrupt("storage %d (key %q): the file counts %d elements at byte %d, the pickle %d", i, s.Key, count, pos, s.Count)
		}
		pos += countLen
		hi, n := bits.Mul64(count, s.ElementSize)
		if hi != 0 || n > size-pos {
			return nil, corrupt("storage %d (key %q): %d elements of %d bytes at byte %d run past the end (%d bytes)", i, s.Key, count, s.ElementSize, pos, size)
		}
		out = append(out, Storage{Spec: s, Offset: pos, Size: n})
		pos += n
	}
	if pos != size {
		return nil, corrupt("%d bytes of trailing data after the last storage, at byte %d", size-pos, pos)
	}
	return out, nil
}
