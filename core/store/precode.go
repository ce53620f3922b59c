package store

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"

	"github.com/tpde/tpde/core/par"
)

// Small tensors are coded side by side. A large tensor's frame is split
// into chunks that encode in parallel, but most of a checkpoint's tensors
// are one or two chunks, and coded one after another they kept an add on
// about one core (bench/PROFILE.md, "Add"). A run of consecutive small
// tensors of a file is therefore hashed, coded and written as objects by
// the store's threads at once; what depends on order (the skeleton, the
// record's regions, deduplication, re-codes, progress) then runs as
// before, in file order, with those results.
const (
	// smallTensor is the largest tensor coded beside others: below it a
	// frame has too few chunks to keep the threads busy on its own.
	smallTensor = 4 << 20
	// batchBytes caps a batch's raw bytes: its tensors' source pages (a
	// mapped file's) stay resident until the batch is recorded, so this
	// bounds what a batch adds to an add's memory.
	batchBytes = 64 << 20
)

// precoded is what a worker computed for one tensor of a batch.
type precoded struct {
	sha   string
	crc   *uint32
	coded bool // obj holds its keyframe (false: it was already stored)
	obj   Object
}

// smallBatch returns the end of the batch of small tensors that starts at
// ps[i], or i when there is none worth coding side by side.
func (tx *Tx) smallBatch(ps []planned, i int) int {
	if par.Threads(tx.s.threads) < 2 {
		return i
	}
	j, sum := i, uint64(0)
	for j < len(ps) {
		n := ps[j].end - ps[j].begin
		if n > smallTensor || sum+n > batchBytes {
			break
		}
		sum += n
		j++
	}
	if j-i < 2 {
		return i
	}
	return j
}

// precode hashes and codes the tensors of ps on the store's threads, one
// tensor per worker at a time, each frame on one thread, and writes their
// keyframes as objects. A tensor whose content this add stored already is
// only hashed. Objects are content addressed, so two equal tensors of one
// batch write the same object twice, harmlessly.
func (tx *Tx) precode(data source, ps []planned, out []precoded) ([]precoded, error) {
	out = append(out[:0], make([]precoded, len(ps))...)
	threads := min(par.Threads(tx.s.threads), len(ps))
	bufs := make([]buffer, threads)
	defer func() {
		for i := range bufs {
			bufs[i].free()
		}
	}()
	err := par.For(len(ps), threads, func(w, i int) error {
		if tx.Stop != nil {
			if err := tx.Stop(); err != nil {
				return err
			}
		}
		p := ps[i]
		raw := data.bytes(p.begin, p.end)
		sum := sha256.Sum256(raw)
		pc := &out[i]
		pc.sha, pc.crc = hex.EncodeToString(sum[:]), crcOf(raw)
		if _, ok := tx.keyframes[contentKey(pc.sha, p.reg.DType, p.reg.Shape)]; ok {
			return nil // tx.keyframes is only read while the batch runs
		}
		buf := &bufs[w]
		defer buf.drop()
		coded, err := tx.s.encodeKeyframe(buf, raw, p.dt, p.reg.Shape, 1, tx.Stop)
		if err != nil {
			return fmt.Errorf("tensor %q: %w", p.reg.Name, err)
		}
		if pc.obj, err = tx.s.putBytes(coded); err != nil {
			return fmt.Errorf("tensor %q: %w", p.reg.Name, err)
		}
		pc.coded = true
		return nil
	})
	return out, err
}
