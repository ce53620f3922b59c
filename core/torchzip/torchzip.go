// Package torchzip parses, defensively, the zip container that torch.save
// writes, so that tpde can find each tensor storage's bytes in the file
// without unpickling anything.
//
// torch.save writes STORED records in this order: <root>/data.pkl,
// <root>/.format_version, <root>/.storage_alignment, <root>/byteorder, one
// <root>/data/<k> per storage, <root>/version and <root>/.data/serialization_id.
// <root> is the file's stem (or "archive" for buffers and names torch cannot
// spell), so it is read from the file, never assumed. Local headers carry
// zero sizes and CRCs (flag 0x0808): the real ones are in the data
// descriptors and the central directory, which is what this package trusts.
//
// A file that is a well-formed zip but not a plain torch.save archive
// (TorchScript, deflated storages, several roots) is reported as
// errs.Unsupported so that callers can keep it as opaque bytes; a zip whose
// structure is broken or hostile (payloads past the end, overlapping
// payloads) is errs.Corrupt.
package torchzip

import (
	"archive/zip"
	"bytes"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/bits"
	"sort"
	"strings"

	"github.com/tpde/tpde/core/errs"
)

// MaxRecords caps the number of records, so that a small hostile central
// directory cannot make the parser allocate without bound.
const MaxRecords = 1 << 20

// localHeaderLen is the fixed part of a zip local file header; every
// payload is preceded by at least this many bytes of its own header.
const localHeaderLen = 30

// Record is one zip record. Offset is the byte offset of its payload in the
// file and Size the payload's length there (for a STORED record, the
// record's content; for another method, its compressed bytes). CRC32 is the
// central directory's checksum of the uncompressed content.
type Record struct {
	Name         string
	Offset, Size uint64
	CRC32        uint32
}

// Archive is a parsed torch.save zip.
type Archive struct {
	Root     string            // the folder every record lies in
	Pickle   Record            // <root>/data.pkl
	Storages map[string]Record // storage key k -> <root>/data/<k>
	Records  []Record          // every record, in file (payload offset) order

	// stored says, by name, which records are STORED, whose CRC32 therefore
	// covers the payload bytes themselves (see CheckCRC).
	stored map[string]bool
}

func corrupt(format string, a ...any) error {
	return fmt.Errorf("%w: torch zip: %s", errs.Corrupt, fmt.Sprintf(format, a...))
}

func unsupported(format string, a ...any) error {
	return fmt.Errorf("%w: not a plain torch.save zip: %s", errs.Unsupported, fmt.Sprintf(format, a...))
}

var (
	localSig   = []byte("PK\x03\x04")
	centralSig = []byte("PK\x01\x02")
	endSig     = []byte("PK\x05\x06")
)

// errTooManyRecords stops archive/zip while it is still reading the central
// directory: it builds a File for every entry before returning, so a cap
// checked afterwards would come too late to bound memory.
var errTooManyRecords = errors.New("too many central directory entries")

// sigCountingReader is the file as an io.ReaderAt that, while counting is
// on, counts central-directory signatures in what it hands out and fails
// once there are too many. The count is an upper bound of the entries
// archive/zip has read (it also sees the tail it searches for the end
// record, and names may contain the signature), give or take one per read
// for a signature split between two reads, which the slack in the limit
// absorbs.
type sigCountingReader struct {
	data     []byte
	counting bool
	sigs     int
}

// sigLimit leaves room above MaxRecords for signatures counted twice (the
// end-record search reads the last 65 KiB, which may hold the directory) or
// found inside names, so that the exact check after parsing decides.
const sigLimit = MaxRecords + 1<<15

func (r *sigCountingReader) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if off >= int64(len(r.data)) {
		return 0, io.EOF
	}
	n := copy(p, r.data[off:])
	if r.counting {
		r.sigs += bytes.Count(p[:n], centralSig)
		if r.sigs > sigLimit {
			return 0, errTooManyRecords
		}
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// looksLikeZip tells a broken zip (Corrupt) from something that is no zip
// at all (Unsupported): a torch zip starts with a local header, and any zip
// ends with an end-of-central-directory record within its last 64 KiB.
func looksLikeZip(data []byte) bool {
	if bytes.HasPrefix(data, localSig) || bytes.HasPrefix(data, endSig) {
		return true
	}
	const tail = 22 + 0xffff // end record plus the longest comment
	start := 0
	if len(data) > tail {
		start = len(data) - tail
	}
	return bytes.Contains(data[start:], endSig)
}

// splitRoot returns name's first folder and the rest; ok is false when name
// is not "<root>/<rest>" with both parts non-empty.
func splitRoot(name string) (root, rest string, ok bool) {
	i := strings.IndexByte(name, '/')
	if i <= 0 || i == len(name)-1 {
		return "", "", false
	}
	return name[:i], name[i+1:], true
}

// isTorchScript reports whether rest (a name below the root) is one that
// only torch.jit.save writes.
func isTorchScript(rest string) bool {
	return strings.HasPrefix(rest, "code/") || rest == "constants.pkl"
}

// storageKey returns k for a name below the root of the form data/<k>.
func storageKey(rest string) (string, bool) {
	k, ok := strings.CutPrefix(rest, "data/")
	if !ok || k == "" || strings.Contains(k, "/") {
		return "", false
	}
	return k, true
}

// Parse validates the torch.save zip held in data (the whole file, for
// example memory-mapped) and returns where its records lie. It returns an
// error wrapping errs.Unsupported, with a reason a user can read, when data
// is not a plain torch.save zip, and errs.Corrupt when it is a broken zip.
func Parse(data []byte) (*Archive, error) {
	ra := &sigCountingReader{data: data, counting: true}
	zr, err := zip.NewReader(ra, int64(len(data)))
	ra.counting = false
	switch {
	case errors.Is(err, errTooManyRecords):
		return nil, unsupported("more than %d records", MaxRecords)
	case errors.Is(err, zip.ErrInsecurePath):
		// Only reported under GODEBUG=zipinsecurepath=0. Nothing is ever
		// extracted, so a name is only a string here; the root checks below
		// still apply.
	case err != nil:
		if !looksLikeZip(data) {
			return nil, unsupported("not a zip")
		}
		return nil, corrupt("%v", err)
	}
	if len(zr.File) > MaxRecords {
		return nil, unsupported("%d records exceed %d", len(zr.File), MaxRecords)
	}
	if len(zr.File) == 0 {
		return nil, unsupported("no data.pkl (empty zip)")
	}

	// Names first: a TorchScript archive also deflates its code records, and
	// "TorchScript archive" is the reason a user needs to read.
	root, _, ok := splitRoot(zr.File[0].Name)
	if !ok {
		return nil, unsupported("record %q is not inside a root folder", zr.File[0].Name)
	}
	seen := make(map[string]bool, len(zr.File))
	for _, f := range zr.File {
		r, rest, ok := splitRoot(f.Name)
		if !ok {
			return nil, unsupported("record %q is not inside a root folder", f.Name)
		}
		if r != root {
			return nil, unsupported("mixed roots %q and %q", root, r)
		}
		if seen[f.Name] {
			return nil, unsupported("duplicate record %q", f.Name)
		}
		seen[f.Name] = true
		if isTorchScript(rest) {
			return nil, unsupported("TorchScript archive (has %q)", f.Name)
		}
	}
	pickleName := root + "/data.pkl"
	if !seen[pickleName] {
		return nil, unsupported("no data.pkl")
	}

	a := &Archive{
		Root:     root,
		Storages: make(map[string]Record),
		Records:  make([]Record, 0, len(zr.File)),
		stored:   make(map[string]bool, len(zr.File)),
	}
	size := uint64(len(data))
	for _, f := range zr.File {
		_, rest, _ := splitRoot(f.Name)
		key, isStorage := storageKey(rest)
		stored := f.Method == zip.Store
		if f.Flags&0x1 != 0 {
			return nil, unsupported("encrypted record %q", f.Name)
		}
		// tpde reads data.pkl and the storages straight from the file, so
		// their bytes must be the content itself; other records (version
		// strings) stay opaque whatever their method.
		if (isStorage || f.Name == pickleName) && !stored {
			return nil, unsupported("deflated record %q (method %d)", f.Name, f.Method)
		}
		if stored && f.CompressedSize64 != f.UncompressedSize64 {
			return nil, corrupt("stored record %q: compressed size %d != uncompressed size %d",
				f.Name, f.CompressedSize64, f.UncompressedSize64)
		}
		off, err := f.DataOffset()
		if err != nil {
			return nil, corrupt("record %q: local header: %v", f.Name, err)
		}
		if off < localHeaderLen {
			return nil, corrupt("record %q: payload offset %d leaves no room for its header", f.Name, off)
		}
		start := uint64(off)
		end, carry := bits.Add64(start, f.CompressedSize64, 0)
		if carry != 0 || end > size {
			return nil, corrupt("record %q: payload [%d, +%d) runs past the end of a %d-byte file",
				f.Name, start, f.CompressedSize64, size)
		}
		rec := Record{Name: f.Name, Offset: start, Size: f.CompressedSize64, CRC32: f.CRC32}
		a.Records = append(a.Records, rec)
		a.stored[f.Name] = stored
		switch {
		case f.Name == pickleName:
			a.Pickle = rec
		case isStorage:
			a.Storages[key] = rec
		}
	}

	sort.Slice(a.Records, func(i, j int) bool { return a.Records[i].Offset < a.Records[j].Offset })
	for i := 1; i < len(a.Records); i++ {
		p, c := a.Records[i-1], a.Records[i]
		// Each payload is preceded by its own local header, so the next
		// payload starts at least a header's length after this one ends.
		// This also rejects two directory entries sharing one local header
		// (a zip-bomb trick), even when both are empty.
		if c.Offset < p.Offset+p.Size+localHeaderLen {
			return nil, corrupt("records %q [%d, +%d) and %q [%d, +%d) overlap",
				p.Name, p.Offset, p.Size, c.Name, c.Offset, c.Size)
		}
	}
	return a, nil
}

// CheckCRC verifies record r's payload in data (the bytes Parse was given)
// against the CRC32 (IEEE) of the central directory. It returns errs.Corrupt
// naming the record on a mismatch, and errs.Invalid for a record that is not
// a STORED record of a, whose CRC covers bytes that are not in the file.
func (a *Archive) CheckCRC(data []byte, r Record) error {
	stored, known := a.stored[r.Name]
	if !known {
		return fmt.Errorf("%w: torch zip: no record %q", errs.Invalid, r.Name)
	}
	if !stored {
		return fmt.Errorf("%w: torch zip: record %q is compressed; its CRC32 is of the inflated bytes", errs.Invalid, r.Name)
	}
	end, carry := bits.Add64(r.Offset, r.Size, 0)
	if carry != 0 || end > uint64(len(data)) {
		return corrupt("record %q: payload [%d, +%d) runs past the end of a %d-byte file",
			r.Name, r.Offset, r.Size, len(data))
	}
	if got := crc32.ChecksumIEEE(data[r.Offset:end]); got != r.CRC32 {
		return corrupt("record %q: CRC32 %08x, central directory says %08x", r.Name, got, r.CRC32)
	}
	return nil
}
