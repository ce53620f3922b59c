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

// regionSum is what a regions digest says of one region.
type regionSum struct {
	offset, size uint64
	sha256       string
}

func regionSums(f *File) []regionSum {
	out := make([]regionSum, len(f.Regions))
	for i := range f.Regions {
		r := &f.Regions[i]
		out[i] = regionSum{r.Offset, r.Size, r.SHA256}
	}
	return out
}

// fileDigest is the regions digest of a file of size bytes, given the
// sha256 of its verbatim bytes (those outside its regions, in file order)
// and its regions' sha256s.
func fileDigest(size uint64, verbatim []byte, regions []regionSum) string {
	h := sha256.New()
	fmt.Fprintf(h, "%ssize %d\nverbatim %s\n", digestHeader, size, hex.EncodeToString(verbatim))
	for _, r := range regions {
		fmt.Fprintf(h, "region %d %d %s\n", r.offset, r.size, r.sha256)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// fileCheck hashes a whole file's bytes, as a walk emits them in order,
// the way its record's sha256 was made: every byte (Digest ""), or, for a
// regions digest, the verbatim bytes and each region's bytes apart, the
// digest then made of what they hash to. Either way each byte is hashed
// once, with sha256: a restore and verify --deep check what they write
// as strongly as the whole-file sha256 does.
type fileCheck struct {
	f        *File
	h        hash.Hash // every byte, or the verbatim bytes
	next     int       // the next region a regions digest expects
	computed []regionSum
}

func newFileCheck(f *File) *fileCheck { return &fileCheck{f: f, h: sha256.New()} }

// write takes the bytes a whole-file walk emits at pos: a region whole
// (in order), verbatim bytes in pieces.
func (c *fileCheck) write(pos uint64, b []byte) {
	if c.f.Digest == DigestRegions && c.next < len(c.f.Regions) {
		if r := &c.f.Regions[c.next]; pos == r.Offset && uint64(len(b)) == r.Size {
			c.next++
			c.computed = append(c.computed, regionSum{r.Offset, r.Size, hashHex(b)})
			return
		}
	}
	c.h.Write(b)
}

// sum is what the walked bytes hash to, made as the record's sha256 is.
func (c *fileCheck) sum() string {
	if c.f.Digest == DigestRegions {
		return fileDigest(c.f.Size, c.h.Sum(nil), c.computed)
	}
	return hex.EncodeToString(c.h.Sum(nil))
}
