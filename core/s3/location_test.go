package s3_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/s3"
)

func TestParseURL(t *testing.T) {
	ok := map[string]s3.Location{
		"s3://tpde-test-1":                {Bucket: "tpde-test-1"},
		"s3://tpde-test-1/":               {Bucket: "tpde-test-1"},
		"s3://abc/run":                    {Bucket: "abc", Prefix: "run"},
		"s3://abc/run/":                   {Bucket: "abc", Prefix: "run"},
		"s3://a.b-c/runs/exp 1/seed=2":    {Bucket: "a.b-c", Prefix: "runs/exp 1/seed=2"},
		"s3://" + strings.Repeat("a", 63): {Bucket: strings.Repeat("a", 63)},
		"s3://abc/ünïcode/..x/x..":        {Bucket: "abc", Prefix: "ünïcode/..x/x.."},
	}
	for u, want := range ok {
		got, err := s3.ParseURL(u)
		require.NoError(t, err, u)
		assert.Equal(t, want, got, u)
		again, err := s3.ParseURL(got.String())
		require.NoError(t, err)
		assert.Equal(t, got, again, "String() reads back")
	}
	bad := map[string]string{
		"":                                "not an s3:// URL",
		"/local/path":                     "not an s3:// URL",
		"S3://abc/x":                      "not an s3:// URL",
		"s3:/abc/x":                       "not an s3:// URL",
		"s3://":                           "no bucket",
		"s3:///x":                         "no bucket",
		"s3://ab":                         "3 to 63",
		"s3://" + strings.Repeat("a", 64): "3 to 63",
		"s3://ABC/x":                      "lowercase",
		"s3://a_b/x":                      "lowercase",
		"s3://user@abc/x":                 "lowercase",
		"s3://abc:9000/x":                 "lowercase",
		"s3://-abc/x":                     "begin and end",
		"s3://abc./x":                     "begin and end",
		"s3://a..b/x":                     `".."`,
		"s3://192.168.1.1/x":              "IP address",
		"s3://abc//x":                     `starts with "/"`,
		"s3://abc/x//y":                   "empty segment",
		"s3://abc/x//":                    "empty segment",
		"s3://abc/../x":                   `".." segment`,
		"s3://abc/x/..":                   `".." segment`,
		"s3://abc/x/./y":                  `"." segment`,
		"s3://abc/x\ny":                   "control character",
		"s3://abc/x\x00":                  "control character",
		"s3://abc/x\x7f":                  "control character",
		"s3://abc/x\xff":                  "UTF-8",
		"s3://abc/" + strings.Repeat("p", s3.MaxPrefixLen+1): "1024-byte keys",
	}
	for u, want := range bad {
		_, err := s3.ParseURL(u)
		require.ErrorIs(t, err, errs.Invalid, "%q", u)
		assert.Contains(t, err.Error(), want, "%q", u)
		assert.NotContains(t, err.Error(), "\n")
	}
}

func TestLocationKey(t *testing.T) {
	assert.Equal(t, "manifests/1.json", s3.Location{Bucket: "abc"}.Key("manifests/1.json"))
	assert.Equal(t, "run/x/manifests/1.json", s3.Location{Bucket: "abc", Prefix: "run/x"}.Key("manifests/1.json"))
}

// FuzzParseURL: whatever ParseURL accepts is a valid bucket and a clean
// prefix that reads back the same; whatever it refuses is errs.Invalid.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{"s3://abc/run", "s3://abc", "s3://a.b/x//y", "s3://abc/../x", "s3://1.2.3.4/x", "s3://abc/x\x00", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, u string) {
		loc, err := s3.ParseURL(u)
		if err != nil {
			require.ErrorIs(t, err, errs.Invalid)
			require.NotContains(t, err.Error(), "\n")
			return
		}
		b := loc.Bucket
		require.True(t, len(b) >= 3 && len(b) <= 63, b)
		require.Equal(t, "", strings.Trim(b, "abcdefghijklmnopqrstuvwxyz0123456789.-"), b)
		require.NotContains(t, b, "..")
		p := loc.Prefix
		require.True(t, utf8.ValidString(p))
		require.LessOrEqual(t, len(p), s3.MaxPrefixLen)
		if p != "" {
			for _, seg := range strings.Split(p, "/") {
				require.NotContains(t, []string{"", ".", ".."}, seg, p)
			}
		}
		for _, r := range p {
			require.False(t, r < 0x20 || r == 0x7f, "%q", p)
		}
		again, err := s3.ParseURL(loc.String())
		require.NoError(t, err)
		require.Equal(t, loc, again)
	})
}
