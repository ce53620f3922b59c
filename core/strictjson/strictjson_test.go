package strictjson

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
)

func TestDuplicateKeysAreFoundWhereverTheyAre(t *testing.T) {
	many := make([]string, 40)
	for i := range many {
		many[i] = fmt.Sprintf(`"k%d": %d`, i, i)
	}
	for _, c := range []struct {
		json string
		dup  bool
	}{
		{`{"a": 1, "b": 2}`, false},
		{`{"a": 1, "a": 2}`, true},
		{`{"a": 1, "\u0061": 2}`, true},
		{`{"a": {"b": 1}, "b": {"a": 1}}`, false},
		{`{"x": [{"a": 1}, {"a": 2}]}`, false},
		{`{"x": [{"a": 1, "b": [1, {"c": 2, "c": 3}]}]}`, true},
		{`{"a": "a", "b": "\"a\": 1"}`, false},
		{`{"a\"": 1, "a": 2}`, false},
		{`[{"a": 1}, {"a": 1}]`, false},
		{"{" + strings.Join(many, ", ") + "}", false},
		{"{" + strings.Join(many, ", ") + `, "k7": 1}`, true},
	} {
		err := CheckDuplicateKeys([]byte(c.json))
		assert.Equal(t, c.dup, err != nil, "%s: %v", c.json, err)
		assert.Equal(t, c.dup, referenceDuplicateKeys([]byte(c.json)) != nil, c.json)
	}
	assert.Error(t, CheckDuplicateKeys([]byte(strings.Repeat("[", 65)+strings.Repeat("]", 65))))
	assert.Error(t, CheckDuplicateKeys([]byte(`{"a": "unterminated`)))
	// Two invalid bytes both read as U+FFFD: one key to encoding/json.
	assert.ErrorContains(t, CheckDuplicateKeys([]byte("{\"0\":{\"\xff\":0,\"\xef\":[]}}")), "not UTF-8")
}

// FuzzDuplicateKeys checks the one-pass scanner against the token-by-token
// reference on every valid JSON document.
func FuzzDuplicateKeys(f *testing.F) {
	f.Add([]byte(`{"a": 1, "\u0061": [ {"b": 2, "b": 3} ]}`))
	// A store manifest's shape: nested objects, lists of objects, escapes.
	f.Add([]byte(`{"format":"tpde-store-manifest","version":1,"generation":7,"config":{"keyframe_interval":10,"reference":"previous","lossy":[{"pattern":"*exp_avg*","threshold":0.001}]},"base":null,"checkpoints":[{"step":3,"object":"ca978112"},{"step":4,"object":"3e23e816"}]}`))
	dup := func(err error) bool { return err != nil && strings.Contains(err.Error(), "appears twice") }
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) {
			_ = CheckDuplicateKeys(b) // must not panic
			return
		}
		if !utf8.Valid(b) {
			// Decode refuses it before the scan; the scan alone must not
			// call two keys the decoder reads as one (both U+FFFD) distinct.
			if dup(referenceDuplicateKeys(b)) {
				assert.Error(t, CheckDuplicateKeys(b), "%q", b)
			}
			return
		}
		got, want := CheckDuplicateKeys(b), referenceDuplicateKeys(b)
		if want != nil && !dup(want) {
			return // the reference refused something else (a number float64 cannot hold)
		}
		if dup(got) != dup(want) {
			t.Fatalf("%q: scanner %v, reference %v", b, got, want)
		}
	})
}

// referenceDuplicateKeys is the token-by-token check the scanner replaced.
func referenceDuplicateKeys(b []byte) error {
	dec := json.NewDecoder(strings.NewReader(string(b)))
	type frameT struct {
		obj  bool
		keys map[string]bool
		key  bool // the next token is a key
	}
	var stack []*frameT
	for depth := 0; ; {
		tok, err := dec.Token()
		if err != nil {
			if err.Error() == "EOF" {
				return nil
			}
			return err
		}
		var top *frameT
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		switch t := tok.(type) {
		case json.Delim:
			switch t {
			case '{', '[':
				depth++
				if depth > 64 {
					return fmt.Errorf("nested deeper than 64")
				}
				if top != nil && top.obj {
					top.key = true
				}
				stack = append(stack, &frameT{obj: t == '{', keys: map[string]bool{}, key: t == '{'})
				continue
			default:
				depth--
				stack = stack[:len(stack)-1]
				if len(stack) > 0 && stack[len(stack)-1].obj {
					stack[len(stack)-1].key = true
				}
				continue
			}
		case string:
			if top != nil && top.obj && top.key {
				if top.keys[t] {
					return fmt.Errorf("key %q appears twice", t)
				}
				top.keys[t] = true
				top.key = false
				continue
			}
		}
		if top != nil && top.obj {
			top.key = true
		}
	}
}
