//go:build !linux

package par

// Outside Linux, priorities are not applied: work runs at the process's
// priority.
type priority struct{}

func lowered() *priority { return nil }

func (p *priority) apply() bool { return false }

func lowerTo(Priority) bool { return true }
