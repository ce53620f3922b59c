package store

import (
	"os"
	"syscall"
)

// syncFileRangeWrite is SYNC_FILE_RANGE_WRITE: start writing the range's
// dirty pages, without waiting for them.
const syncFileRangeWrite = 2

// startWriteback starts writing f's dirty pages to the disk and returns
// without waiting. An object is finished when this runs, so the disk
// writes it while the writer codes the next one: the syncfs(2) of the
// commit, which runs on one process after every participant has coded,
// then waits for the last few objects only, not for all of them. Failure
// is ignored: it only loses the head start (syncfs reports write errors).
func startWriteback(f *os.File) {
	_, _, _ = syscall.Syscall6(syscall.SYS_SYNC_FILE_RANGE, f.Fd(), 0, 0, syncFileRangeWrite, 0, 0)
}
