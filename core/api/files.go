package api

// Files (docs/FORMAT.md, files): a whole file compressed into a tpde file
// and restored byte for byte.

import (
	"github.com/tpde/tpde/core/container"
	"github.com/tpde/tpde/core/frame"
)

// FileArgs are the arguments the file calls share besides their paths.
type FileArgs struct {
	Threads int32
	Flags   uint32 // TPDE_FILE_*
	// Progress, if set, receives the running count of bytes processed,
	// from several goroutines; Cancelled, if set, is polled between
	// chunks.
	Progress  func(done uint64)
	Cancelled func() bool
}

func (a FileArgs) options() (container.Options, error) {
	opt, err := fileOptions(a.Flags)
	opt.Frame, opt.Progress, opt.Cancelled = frame.Options{Threads: int(a.Threads)}, a.Progress, a.Cancelled
	return opt, err
}

// CompressFile compresses the file src into the tpde file dst. hints is
// the TPDE_TORCH_HINTS document of a torch.save file (empty: none).
func CompressFile(src, dst string, hints []byte, a FileArgs) error {
	opt, err := a.options()
	if err != nil {
		return err
	}
	if opt.Torch, err = parseHints(hints); err != nil {
		return err
	}
	return container.CompressFile(src, dst, opt)
}

// DecompressFile restores the original of the tpde file src to dst,
// refusing one larger than maxOutput bytes (0: no limit).
func DecompressFile(src, dst string, maxOutput uint64, a FileArgs) error {
	opt, err := a.options()
	if err != nil {
		return err
	}
	opt.MaxOutput = maxOutput
	return container.DecompressFile(src, dst, opt)
}

// FileInfo describes the tpde file (or raw frame file) at path, verifying
// every segment, and leaves the description for caller c: its first
// maxSegments segments (0: 10000).
func FileInfo(c Caller, path string, maxSegments uint32) error {
	fi, err := container.Info(path, int(min(maxSegments, 1<<30)))
	if err != nil {
		return err
	}
	return keepFor(c, fi)
}
