package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
)

// DigestRegions is File.Digest for a file whose sha256 is its regions
// digest (docs/FORMAT.md §11.4): the sha256 of a short text naming the
// sha256 of its verbatim bytes and each region's offset, size and sha256.
//
// Why: a region's sha256 is what the store addresses its content by (a
// keyframe is stored once per content) and what every read checks a
// decoded tensor against, so an add must compute it. A whole-file sha256
// is a second pass over the same bytes, the largest cost of an add after
// the coding itself. The digest pins the same bytes (sha256 composed with
// sha256) at the cost of hashing the verbatim bytes only.
//
// The store uses it for the files it lays out itself from memory (a state
// dict, layout state-dict), whose bytes no user holds; a file added from
// disk keeps the sha256 of its bytes, which a user can compare with
// sha256sum.
const DigestRegions = "regions"

const digestHeader = "tpde-file-digest/1\n"

// fileDigest is the regions digest of f, given the sha256 of its verbatim
// bytes (those outside its regions, in file order).
func fileDigest(f *File, verbatim []byte) string {
	h := sha256.New()
	fmt.Fprintf(h, "%ssize %d\nverbatim %s\n", digestHeader, f.Size, hex.EncodeToString(verbatim))
	for i := range f.Regions {
		r := &f.Regions[i]
		fmt.Fprintf(h, "region %d %d %s\n", r.Offset, r.Size, r.SHA256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fileCheck checks a whole file's bytes, as a walk emits them in order,
// against the sha256 its record gives: of every byte (Digest ""), or,
// for a regions digest, of its verbatim bytes, each region being checked
// against its own sha256 as it decodes (regionsChecked).
type fileCheck struct {
	f    *File
	h    hash.Hash
	next int // the next region a regions digest expects
}

func newFileCheck(f *File) *fileCheck { return &fileCheck{f: f, h: sha256.New()} }

// regionsChecked says whether the walk must check each region's sha256:
// a regions digest counts on it, a whole-file sha256 does not need it
// (it would be a second pass over the same bytes).
func (c *fileCheck) regionsChecked() bool { return c.f.Digest == DigestRegions }

// write takes the bytes a whole-file walk emits at pos.
func (c *fileCheck) write(pos uint64, b []byte) {
	if c.f.Digest == DigestRegions && c.next < len(c.f.Regions) && pos == c.f.Regions[c.next].Offset && uint64(len(b)) == c.f.Regions[c.next].Size {
		c.next++ // a region: a whole-file walk emits it whole, checked by its decode
		return
	}
	c.h.Write(b)
}

// sum is what the file's bytes hash to, as its record's sha256 is made.
func (c *fileCheck) sum() string {
	if c.f.Digest == DigestRegions {
		return fileDigest(c.f, c.h.Sum(nil))
	}
	return hex.EncodeToString(c.h.Sum(nil))
}
