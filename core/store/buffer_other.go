//go:build !linux

package store

// buffer holds one tensor at a time (see buffer_linux.go); here it is a
// plain reused slice.
type buffer struct{ b []byte }

func (s *buffer) get(n uint64) ([]byte, error) {
	if uint64(cap(s.b)) < n {
		s.b = make([]byte, n)
	}
	return s.b[:n], nil
}

func (s *buffer) drop() {}
func (s *buffer) free() { s.b = nil }

func release([]byte) {}
