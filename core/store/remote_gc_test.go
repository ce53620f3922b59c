package store

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// A removal note comes from the bucket: only object names of tpde's shape
// are accepted, and a note with anything else is refused whole, so that no
// crafted note can make a cleanup delete a manifest, a note or a key
// outside objects/.
func TestRemovalNotesNameOnlyObjects(t *testing.T) {
	h := strings.Repeat("ab", 32)
	good := `{"format": "tpde-store-gc", "objects": ["ab/` + h + `", "ab/` + h + `.copy"]}`
	names, err := parseGCNote("note", []byte(good))
	require.NoError(t, err)
	assert.Equal(t, []string{"ab/" + h, "ab/" + h + ".copy"}, names)

	for name, body := range map[string]string{
		"other format":   `{"format": "x", "objects": []}`,
		"wrong folder":   `{"format": "tpde-store-gc", "objects": ["cd/` + h + `"]}`,
		"a manifest":     `{"format": "tpde-store-gc", "objects": ["../manifests/00000000000000000001.json"]}`,
		"a path":         `{"format": "tpde-store-gc", "objects": ["ab/../../` + h[:58] + `"]}`,
		"upper case":     `{"format": "tpde-store-gc", "objects": ["AB/` + strings.ToUpper(h) + `"]}`,
		"another suffix": `{"format": "tpde-store-gc", "objects": ["ab/` + h + `.json"]}`,
		"unknown field":  `{"format": "tpde-store-gc", "objects": [], "delete": ["x"]}`,
		"not json":       `objects: all`,
		"one bad of two": `{"format": "tpde-store-gc", "objects": ["ab/` + h + `", "manifests/latest"]}`,
	} {
		_, err := parseGCNote("note", []byte(body))
		assert.ErrorIs(t, err, errs.Corrupt, name)
	}
}

func FuzzParseGCNote(f *testing.F) {
	h := strings.Repeat("0f", 32)
	f.Add([]byte(`{"format": "tpde-store-gc", "objects": ["0f/` + h + `"]}`))
	f.Add([]byte(`{"format": "tpde-store-gc", "objects": ["0f/` + h + `.copy", "0f/` + h + `"]}`))
	f.Add([]byte(`{}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		names, err := parseGCNote("note", b)
		if err != nil {
			return
		}
		for _, n := range names {
			base := strings.TrimSuffix(n, copySuffix)
			if len(base) != 67 || base[2] != '/' || !validHash(base[3:]) || base[:2] != base[3:5] {
				t.Fatalf("accepted %q", n)
			}
		}
	})
}
