// Package s3 is tpde's client for object storage: the few S3 operations a
// store needs (GET, ranged parallel GET, PUT, multipart PUT, conditional
// PUT, HEAD, LIST, DELETE), on aws-sdk-go-v2.
//
// Go owns bytes, so the whole data path is here: signing, retries and the
// credential chain are the SDK's; part sizes, parallelism, size limits,
// error wording and request counting are ours. Every error is one line
// that names the operation and the s3:// URL, wraps a core/errs kind, and
// never carries a credential (errors.go).
package s3

import (
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/tpde/tpde/core/errs"
)

// Location is a store's place in object storage: a bucket and a key prefix
// (without a trailing "/"; empty for the bucket's root).
type Location struct {
	Bucket string
	Prefix string
}

// Scheme is the URL scheme of a store in object storage.
const Scheme = "s3://"

// MaxPrefixLen caps a prefix so that the store's longest key (a prefix,
// "/objects/hh/", a 64-digit hash and ".copy") stays within S3's 1024
// bytes.
const MaxPrefixLen = 900

// ParseURL reads "s3://bucket/some/prefix". It is strict, because what it
// accepts becomes object keys that every other S3 tool must read the same
// way: the bucket must be a valid DNS-style bucket name, and the prefix
// must be a clean relative path (no "." or ".." segment, no empty segment,
// no leading "/", no control character, valid UTF-8). One trailing "/" is
// dropped, so "s3://b/run/" and "s3://b/run" are the same store.
func ParseURL(u string) (Location, error) {
	bad := func(format string, a ...any) (Location, error) {
		return Location{}, fmt.Errorf("%w: %q: %s", errs.Invalid, u, fmt.Sprintf(format, a...))
	}
	rest, ok := strings.CutPrefix(u, Scheme)
	if !ok {
		return bad("not an s3:// URL")
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if err := checkBucket(bucket); err != "" {
		return bad("%s", err)
	}
	prefix = strings.TrimSuffix(prefix, "/")
	if len(prefix) > MaxPrefixLen {
		return bad("the prefix is %d bytes; at most %d fit in S3's 1024-byte keys", len(prefix), MaxPrefixLen)
	}
	if !utf8.ValidString(prefix) {
		return bad("the prefix is not valid UTF-8")
	}
	for _, r := range prefix {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return bad("the prefix has a control character (%U)", r)
		}
	}
	if prefix != "" {
		for _, seg := range strings.Split(prefix, "/") {
			switch seg {
			case "":
				if strings.HasPrefix(prefix, "/") {
					return bad("the prefix starts with \"/\" (write s3://bucket/prefix)")
				}
				return bad("the prefix has an empty segment (\"//\")")
			case ".", "..":
				return bad("the prefix has a %q segment", seg)
			}
		}
	}
	return Location{Bucket: bucket, Prefix: prefix}, nil
}

// checkBucket says what is wrong with a bucket name ("" when nothing is),
// by S3's rules for general-purpose buckets: 3 to 63 characters of
// lowercase letters, digits, '-' and '.', beginning and ending with a
// letter or digit, no "..", and not shaped like an IP address.
func checkBucket(b string) string {
	if b == "" {
		return "no bucket name"
	}
	if len(b) < 3 || len(b) > 63 {
		return fmt.Sprintf("bucket name %q is %d characters; S3 takes 3 to 63", b, len(b))
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return fmt.Sprintf("bucket name %q has %q; S3 takes lowercase letters, digits, '-' and '.'", b, string(rune(c)))
		}
	}
	if !alnum(b[0]) || !alnum(b[len(b)-1]) {
		return fmt.Sprintf("bucket name %q must begin and end with a letter or digit", b)
	}
	if strings.Contains(b, "..") {
		return fmt.Sprintf("bucket name %q has \"..\"", b)
	}
	if ipShaped(b) {
		return fmt.Sprintf("bucket name %q is shaped like an IP address", b)
	}
	return ""
}

func alnum(c byte) bool { return c >= 'a' && c <= 'z' || c >= '0' && c <= '9' }

// ipShaped reports four dot-separated groups of digits, which S3 refuses
// as a bucket name.
func ipShaped(b string) bool {
	parts := strings.Split(b, ".")
	if len(parts) != 4 {
		return false
	}
	for _, p := range parts {
		if p == "" || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// Key is the object key of rel (a store-relative path such as
// "manifests/00000000000000000001.json") under the prefix. The caller has
// validated rel: Key only joins.
func (l Location) Key(rel string) string {
	if l.Prefix == "" {
		return rel
	}
	return l.Prefix + "/" + rel
}

// String is the location as a URL, "s3://bucket/prefix", which ParseURL
// reads back to the same Location.
func (l Location) String() string {
	if l.Prefix == "" {
		return Scheme + l.Bucket
	}
	return Scheme + l.Bucket + "/" + l.Prefix
}

// URL is the s3:// URL of one key of the bucket, as errors name it.
func URL(bucket, key string) string { return Scheme + bucket + "/" + key }
