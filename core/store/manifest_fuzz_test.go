package store

import (
	"encoding/json"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// A valid record and manifest to start from: the fuzzers mutate them.
func seedRecord() []byte {
	c := Checkpoint{Format: checkpointFormat, Version: Version, Step: 3, Tags: []string{"a"}, Created: "2026-01-01T00:00:00Z",
		Files: []File{{Path: "m/model.safetensors", Mode: 0o644, Size: 8200, SHA256: hashHex([]byte("f")), Layout: LayoutSafetensors,
			Skeleton: Object{Object: hashHex([]byte("s")), Stored: 10},
			Regions: []Region{{Name: "w", Offset: 8, Size: 8192, DType: "F32", Shape: []uint64{2048}, SHA256: hashHex([]byte("r")),
				Object: Object{Object: hashHex([]byte("o")), Stored: 100}, Ref: &Ref{Step: 4, File: "m/model.safetensors", Region: "w"}}}}}}
	b, _ := json.Marshal(c)
	return b
}

func seedManifest() []byte {
	m := Manifest{Format: manifestFormat, Version: Version, Generation: 7,
		Config:      Config{KeyframeInterval: 10, Reference: RefPrevious, Lossy: []LossyRule{{Pattern: "*exp_avg*", Threshold: 1e-3}}},
		Checkpoints: []CheckpointRef{{Step: 3, Object: hashHex([]byte("a"))}, {Step: 4, Object: hashHex([]byte("b"))}}}
	b, _ := json.Marshal(m)
	return b
}

// FuzzParseCheckpoint: a record either parses into one whose every check
// holds (re-encoding it parses again, to the same thing), or is refused
// with a typed error; never a panic.
func FuzzParseCheckpoint(f *testing.F) {
	f.Add(seedRecord())
	f.Add([]byte(`{"format":"tpde-store-checkpoint","version":1,"step":0,"tags":[],"created":"2026-01-01T00:00:00Z","files":[]}`))
	f.Add([]byte(`{"a":1,"a":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := parseCheckpoint(b, 3, false)
		if err != nil {
			require.True(t, isTyped(err), "untyped error %v", err)
			return
		}
		for _, fl := range c.Files {
			require.NoError(t, validPath(fl.Path))
			var pos uint64
			for _, r := range fl.Regions {
				require.GreaterOrEqual(t, r.Offset, pos)
				require.LessOrEqual(t, r.Offset+r.Size, fl.Size)
				pos = r.Offset + r.Size
			}
		}
		again, err := json.Marshal(c)
		require.NoError(t, err)
		c2, err := parseCheckpoint(again, 3, false)
		require.NoError(t, err)
		require.Equal(t, c, c2)
	})
}

// FuzzParseManifest, likewise for manifests.
func FuzzParseManifest(f *testing.F) {
	f.Add(seedManifest())
	f.Add([]byte(`{"format":"tpde-store-manifest","version":1,"generation":7,"config":{"keyframe_interval":1,"reference":"base","lossy":[]},"base":null,"checkpoints":[]}`))
	f.Add([]byte(`{"format":"tpde-store-manifest","version":2,"generation":7,"config":{"keyframe_interval":3,"reference":"previous","lossy":[]},"base":null,"checkpoints":[{"step":0,"object":"` + hex64 + `","holder":"step-0"}],"runs":[{"name":"ft","parent":{"run":"main","step":0},"checkpoints":[{"step":1,"object":"` + hex64 + `"}]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseManifest(b, 7)
		if err != nil {
			require.True(t, isTyped(err), "untyped error %v", err)
			return
		}
		require.NoError(t, m.Config.validate())
		for i := 1; i < len(m.Checkpoints); i++ {
			require.Greater(t, m.Checkpoints[i].Step, m.Checkpoints[i-1].Step)
		}
		again, err := json.Marshal(m)
		require.NoError(t, err)
		m2, err := parseManifest(again, 7)
		require.NoError(t, err)
		require.Equal(t, m, m2)
	})
}

const hex64 = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func isTyped(err error) bool {
	return errsIs(err, errs.Corrupt) || errsIs(err, errs.Unsupported)
}

func errsIs(err, target error) bool { return errors.Is(err, target) }
