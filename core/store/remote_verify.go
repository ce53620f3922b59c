package store

// Verify on a remote store (docs/FORMAT.md §11.12). What verify answers
// there is whether the bucket still holds every object the checkpoints
// need: each object is looked up with one HEAD (present, of the size its
// record gives), never listed and never downloaded for that alone. A copy
// the local cache holds is hashed as on a local store; one it does not
// hold is hashed only by a deep verify, whose decode fetches it, checked
// against its name before the cache keeps it (fetchObject).

import (
	"fmt"

	"github.com/tpde/tpde/core/errs"
)

// checkInRemote reports whether object file name (h, or h.copy) is in the
// remote, of size want (or any size, for anySize). Nil on a local store.
func (s *Store) checkInRemote(h, name string, want uint64, what string) error {
	if s.remote == nil {
		return nil
	}
	r := s.remote.r
	rel := "objects/" + h[:2] + "/" + name
	n, err := r.Head(s.remoteCtx(), rel)
	if r.NotFound(err) {
		return missingError{fmt.Errorf("%w: %s: object %s is missing from %s", errs.Corrupt, what, name, r.URL(""))}
	}
	if err != nil {
		return err
	}
	if want != anySize && (n < 0 || uint64(n) != want) {
		return fmt.Errorf("%w: %s: object %s is %d bytes in %s, the record says %d", errs.Corrupt, what, name, n, r.URL(""), want)
	}
	return nil
}

// inCache reports whether the cache of a remote store has an entry for
// object file name (whatever it is: mapObject judges it). Always true on a
// local store, whose objects folder is the store.
func (s *Store) inCache(h, name string) bool {
	if s.remote == nil {
		return true
	}
	if s.objects == nil {
		return false
	}
	_, err := s.objects.Stat(h[:2] + "/" + name)
	return err == nil
}
