// Package chain is tpde's one chain and keyframe policy: what an older
// tensor is coded against, and when a run of deltas must end in a
// keyframe. The store (reverse chains: the newest checkpoint whole, older
// ones deltas against their successor) and the bundle compressor (forward
// chains: the seed's in-memory API, each checkpoint a delta against the one
// before) both ask this package, so that one K means the same bound
// everywhere: no decode of one tensor walks more than MaxFrames frames.
package chain

import (
	"fmt"

	"github.com/tpde/tpde/core/strictjson"
)

// Reference policies.
const (
	// Previous codes each checkpoint against its neighbour (the design
	// document's approach A).
	Previous = "previous"
	// Base codes every checkpoint against one base checkpoint (approach
	// B): each decodes with the base alone.
	Base = "base"
)

const (
	// DefaultInterval is K when none is given.
	DefaultInterval = 10
	// MaxInterval bounds K, and so the frames one decode may walk.
	MaxInterval = 1000
	// maxPolicyBytes caps a policy document before it is parsed.
	maxPolicyBytes = 4096
)

// Policy is K and the reference. Its JSON form is the store manifest's
// config fields of the same names (docs/FORMAT.md, the store's config).
type Policy struct {
	// Interval is K: a decode walks at most MaxFrames frames.
	Interval int `json:"keyframe_interval"`
	// Reference is Previous or Base.
	Reference string `json:"reference"`
}

// Default is K = DefaultInterval against the previous checkpoint.
func Default() Policy { return Policy{Interval: DefaultInterval, Reference: Previous} }

// Validate refuses a K outside 1..MaxInterval and an unknown reference.
func (p Policy) Validate() error {
	if p.Interval < 1 || p.Interval > MaxInterval {
		return fmt.Errorf("keyframe_interval %d (must be 1..%d)", p.Interval, MaxInterval)
	}
	if p.Reference != Previous && p.Reference != Base {
		return fmt.Errorf("reference %q (must be %q or %q)", p.Reference, Previous, Base)
	}
	return nil
}

// Parse reads a policy document, {"keyframe_interval": K, "reference":
// R}, strictly; an absent field takes its default.
func Parse(b []byte) (Policy, error) {
	p := Default()
	if len(b) > maxPolicyBytes {
		return p, fmt.Errorf("chain policy of %d bytes (max %d)", len(b), maxPolicyBytes)
	}
	if err := strictjson.Decode(b, &p); err != nil {
		return p, fmt.Errorf("chain policy: %v", err)
	}
	return p, p.Validate()
}

// MaxFrames is the most frames one tensor's decode may walk: K, and at
// least 2, so that a delta against a base is always allowed.
func (p Policy) MaxFrames() int { return max(p.Interval, 2) }

// Allows reports whether a chain of deltas against previous checkpoints
// may grow until its longest decode walks frames frames: K bounds it. (A
// delta against a base always walks two frames; MaxFrames lets a reader
// accept that even when K is 1.)
func (p Policy) Allows(frames int) bool { return frames >= 1 && frames <= p.Interval }

// Forward is the decision for the next checkpoint of a forward chain,
// sinceKeyframe checkpoints after the last keyframe (0: there is none, or
// the next one is the first after a reset). It is a keyframe when the
// chain would otherwise walk more than K frames: every K-th checkpoint.
// With Base every delta walks two frames, and K still refreshes the base
// every K checkpoints, so that a base never drifts far from what it
// serves.
func (p Policy) Forward(sinceKeyframe int) (keyframe bool) {
	if sinceKeyframe <= 0 {
		return true
	}
	return sinceKeyframe >= p.Interval
}

// Demote reports whether the store may turn the previous newest
// checkpoint's keyframe into a reverse delta against the new newest one,
// when below decodes already chain into it: afterwards they walk
// below + 2 frames (themselves, it, and the new keyframe).
func (p Policy) Demote(below int) bool { return p.Allows(below + 2) }
