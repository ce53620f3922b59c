package store

import (
	"sync/atomic"
)

// prefetch asks the kernel to read the objects that jobs decode from,
// in the order they decode, and returns a function that stops it early.
//
// Objects are mapped and decoded one at a time, and a mapping read from a
// cold page cache waits on the disk a readahead window at a time, with no
// decoding meanwhile: a cold resume then cost the disk's time plus the
// decode's. Asked ahead, the reads overlap the decode. On a warm cache it
// costs an open and a lookup per object.
//
// It opens objects as mapObject does (never through a link, never a FIFO
// or a device) and ignores every error: the decode that follows reports
// it, with the tensor it concerns.
func (rd *Reader) prefetch(jobs []regionJob) (stop func()) {
	if len(jobs) < 2 || rd.s.objects == nil {
		return func() {}
	}
	var quit atomic.Bool
	done := make(chan struct{})
	go func() {
		defer close(done)
		seen := map[string]bool{}
		for _, j := range jobs {
			ch, err := rd.sn.chain(j.r)
			if err != nil {
				continue
			}
			for i := len(ch) - 1; i >= 0; i-- { // the keyframe decodes first
				h := ch[i].Object.Object
				if quit.Load() {
					return
				}
				if seen[h] || !validHash(h) {
					continue
				}
				seen[h] = true
				f, err := rd.s.objects.Open(h[:2] + "/" + h)
				if err != nil {
					continue
				}
				adviseWillNeed(f.Fd())
				_ = f.Close()
			}
		}
	}()
	return func() {
		quit.Store(true)
		<-done
	}
}
