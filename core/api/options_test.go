package api

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/delta"
	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
	"github.com/tpde/tpde/core/store"
)

func TestStoreConfigAsPythonSendsIt(t *testing.T) {
	c, err := ParseStoreConfig([]byte(`{"positions": 2, "keyframe_interval": 4, "reference": "base",
		"lossy": [{"pattern": "*exp_avg*", "threshold": 1e-6}], "max_output": 1048576}`))
	require.NoError(t, err)
	opt, err := c.options(StoreWrite, 3)
	require.NoError(t, err)
	require.Equal(t, store.Options{Write: true, KeyframeInterval: 4, KeyframeIntervalSet: true, Reference: "base",
		Lossy: []store.LossyRule{{Pattern: "*exp_avg*", Threshold: 1e-6}}, LossySet: true, Threads: 3,
		Positions: delta.SparseAlways, Limits: store.Limits{Output: 1 << 20, Memory: 1 << 20},
		Recode: store.RecodeBackground}, opt)

	// Omitted keys are "as stored"; an empty lossy list is "lossless".
	c, err = ParseStoreConfig([]byte(`{"lossy": []}`))
	require.NoError(t, err)
	opt, err = c.options(StoreStage, 0)
	require.NoError(t, err)
	require.True(t, opt.Stage && !opt.Write && opt.LossySet && len(opt.Lossy) == 0 && !opt.KeyframeIntervalSet)
	c, err = ParseStoreConfig(nil)
	require.NoError(t, err)
	require.Equal(t, StoreConfig{}, c)
	for _, p := range []string{"normal", "low", "idle"} {
		c, err = ParseStoreConfig([]byte(`{"priority": "` + p + `"}`))
		require.NoError(t, err)
		require.Equal(t, p, c.Priority)
		opt, err = c.options(StoreWrite, 0)
		require.NoError(t, err)
		want, _ := par.ParsePriority(p)
		require.Equal(t, want, opt.Priority, "the background re-code runs at the session's priority")
	}
	for _, r := range []string{"inline", "background"} {
		c, err = ParseStoreConfig([]byte(`{"recode": "` + r + `"}`))
		require.NoError(t, err)
		opt, err = c.options(StoreWrite, 0)
		require.NoError(t, err)
		require.Equal(t, r, opt.Recode)
	}
}

func TestStoreConfigRefusesWhatItDoesNotKnow(t *testing.T) {
	for _, bad := range []string{
		`{"keyframe_intervall": 4}`,                        // misspelt: never the default in silence
		`{"keyframe_interval": 4, "keyframe_interval": 5}`, // repeated
		`{"positions": 3}`,
		`{"positions": -1}`,
		`{"priority": "realtime"}`, // a priority tpde cannot lower to
		`{"priority": 1}`,
		`{"recode": "later"}`,
		`{"recode": true}`,
		`{"lossy": [{"pattern": "*", "threshold": 1, "extra": 0}]}`,
		`{"reference": "base"} {}`,
		`[1]`,
		"{\"reference\": \"\xff\"}",
		`{`,
	} {
		_, err := ParseStoreConfig([]byte(bad))
		require.ErrorIs(t, err, errs.Invalid, "%s", bad)
	}
	_, err := StoreConfig{}.options(3, 0)
	require.ErrorIs(t, err, errs.Invalid)
}

func TestTagsAndParent(t *testing.T) {
	tags, err := parseTags([]byte(`["best", "epoch-3"]`))
	require.NoError(t, err)
	require.Equal(t, []string{"best", "epoch-3"}, tags)
	tags, err = parseTags(nil)
	require.NoError(t, err)
	require.Nil(t, tags)
	_, err = parseTags([]byte(`["a", 1]`))
	require.ErrorIs(t, err, errs.Invalid)

	p, err := parseParent([]byte(`{"run": "sweep-1", "step": 20}`))
	require.NoError(t, err)
	require.Equal(t, &store.RunParent{Run: "sweep-1", Step: 20}, p)
	p, err = parseParent([]byte(`{"base": true}`))
	require.NoError(t, err)
	require.Equal(t, &store.RunParent{Base: true}, p)
	_, err = parseParent([]byte(`{"run": "a", "stepp": 1}`))
	require.ErrorIs(t, err, errs.Invalid)
	_, err = parseParent(make([]byte, maxOptionDoc+1))
	require.ErrorIs(t, err, errs.Invalid)
}

func TestDeltaArgs(t *testing.T) {
	opt, err := DeltaArgs{Residual: ResidualAuto, Flags: DeltaSparseOnly | DeltaNoContext, Effort: 2, Threshold: 0.5,
		QuantBits: 8, ChunkElems: 1024, Threads: 2}.options()
	require.NoError(t, err)
	require.Equal(t, delta.Auto, opt.Residual)
	require.Equal(t, delta.SparseAlways, opt.Sparse)
	require.Equal(t, delta.ContextOff, opt.Context)
	require.Equal(t, 0.5, opt.Threshold)
	require.Equal(t, 8, opt.QuantBits)
	require.Equal(t, uint32(1024), opt.ChunkElems)
	opt, err = DeltaArgs{Residual: ResidualPred, Flags: DeltaDenseOnly | DeltaFullContext}.options()
	require.NoError(t, err)
	require.Equal(t, delta.Pred, opt.Residual)
	require.Equal(t, delta.SparseNever, opt.Sparse)
	require.Equal(t, delta.ContextOn, opt.Context)
	for _, bad := range []DeltaArgs{
		{Residual: 3}, {Residual: -2}, {Effort: 3}, {Effort: -1}, {Flags: 16},
		{Flags: DeltaDenseOnly | DeltaSparseOnly}, {Flags: DeltaNoContext | DeltaFullContext},
	} {
		_, err := bad.options()
		require.ErrorIs(t, err, errs.Invalid, "%+v", bad)
	}
}

func TestCodesAreChecked(t *testing.T) {
	_, err := dtypeOf(15)
	require.ErrorIs(t, err, errs.Invalid)
	_, err = dtypeOf(-1)
	require.ErrorIs(t, err, errs.Invalid)
	d, err := dtypeOf(f32)
	require.NoError(t, err)
	require.Equal(t, "F32", d.String())
	opt, err := fileOptions(FileNoReplace | FileNoFollow)
	require.NoError(t, err)
	require.True(t, opt.NoReplace && opt.NoFollow)
	_, err = fileOptions(4)
	require.ErrorIs(t, err, errs.Invalid)
}

// FuzzParseStoreConfig: the option documents are the caller's, so any
// bytes are a config (tags, a parent) or errs.Invalid, never a panic, and
// a config that parses gives options for every mode.
func FuzzParseStoreConfig(f *testing.F) {
	for _, s := range []string{
		`{"positions": 2, "keyframe_interval": 4, "reference": "base", "lossy": [{"pattern": "*", "threshold": 1e-6}], "max_output": 1}`,
		`{"lossy": []}`, `{}`, `{"keyframe_interval": 4, "keyframe_interval": 5}`, `{"positions": 3}`, ``, `null`,
		`["best", "epoch-3"]`, `{"run": "sweep-1", "step": 20}`, `{"base": true}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if _, err := parseTags(b); err != nil {
			require.ErrorIs(t, err, errs.Invalid)
		}
		if _, err := parseParent(b); err != nil {
			require.ErrorIs(t, err, errs.Invalid)
		}
		c, err := ParseStoreConfig(b)
		if err != nil {
			require.ErrorIs(t, err, errs.Invalid)
			return
		}
		for mode := int32(StoreRead); mode <= StoreStage; mode++ {
			_, err = c.options(mode, 0)
			require.NoError(t, err)
		}
	})
}
