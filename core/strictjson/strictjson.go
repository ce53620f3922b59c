// Package strictjson parses untrusted JSON strictly: a key twice in one
// object, unknown fields and trailing data are refused, so that what a
// reader checks is what it uses (encoding/json keeps the last of a repeated
// key; another reader may keep the first).
package strictjson

import (
	"bytes"
	"encoding/json"
	"fmt"
	"unicode/utf8"
)

// Decode parses b into v strictly: UTF-8, no repeated key, no unknown
// field (for structs), nothing after the value.
func Decode(b []byte, v any) error {
	if !utf8.Valid(b) {
		return fmt.Errorf("not UTF-8")
	}
	if err := CheckDuplicateKeys(b); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(b)) // no copy: a manifest may be 64 MiB
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// CheckDuplicateKeys refuses an object with a key twice, or a key that is
// not UTF-8 (which cannot be compared as the decoder will read it): encoding/json
// keeps the last, another reader might keep the first. It scans the bytes
// once, tracking the keys of each open object (json.Decoder.Token, which
// did this before, cost more than the decode itself). It does not validate
// the JSON: the decode that follows does, and refuses what this lets pass.
func CheckDuplicateKeys(b []byte) error {
	type object struct {
		keys      []string // few keys: a slice beats a map
		set       map[string]bool
		expectKey bool
		isObject  bool
	}
	var stack []object
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{', '[':
			if len(stack) >= 64 {
				return fmt.Errorf("nested deeper than 64")
			}
			stack = append(stack, object{isObject: c == '{', expectKey: c == '{'})
		case '}', ']':
			if len(stack) == 0 {
				return fmt.Errorf("unbalanced %q", c)
			}
			stack = stack[:len(stack)-1]
		case ',':
			if n := len(stack); n > 0 && stack[n-1].isObject {
				stack[n-1].expectKey = true
			}
		case '"':
			start, escaped := i+1, false
			for i++; i < len(b) && b[i] != '"'; i++ {
				if b[i] == '\\' {
					escaped = true
					i++
				}
			}
			if i >= len(b) {
				return fmt.Errorf("unterminated string")
			}
			n := len(stack)
			if n == 0 || !stack[n-1].isObject || !stack[n-1].expectKey {
				continue
			}
			top := &stack[n-1]
			top.expectKey = false
			key := string(b[start:i])
			if !utf8.ValidString(key) {
				// encoding/json reads every invalid byte as U+FFFD, so
				// "\xff" and "\xef" would be one key to it and two here.
				return fmt.Errorf("key %q is not UTF-8", key)
			}
			if escaped {
				// "a" and "\u0061" are the same key.
				if err := json.Unmarshal(b[start-1:i+1], &key); err != nil {
					return err
				}
			}
			if top.set == nil && len(top.keys) >= 16 {
				top.set = make(map[string]bool, 2*len(top.keys))
				for _, k := range top.keys {
					top.set[k] = true
				}
			}
			dup := false
			if top.set != nil {
				dup = top.set[key]
				top.set[key] = true
			} else {
				for _, k := range top.keys {
					if k == key {
						dup = true
					}
				}
				top.keys = append(top.keys, key)
			}
			if dup {
				return fmt.Errorf("key %q appears twice", key)
			}
		}
	}
	return nil
}
