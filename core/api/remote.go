package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"syscall"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/s3"
	"github.com/tpde/tpde/core/store"
)

// openPath opens the store at path: a local folder, or "s3://bucket/prefix"
// (served through a local cache folder, core/store/remote.go). Any other
// URL is refused by store.Open, never taken for a folder.
func openPath(path string, opt store.Options) (*store.Store, error) {
	if store.SchemeOf(path) != "s3" {
		return store.Open(path, opt)
	}
	loc, err := s3.ParseURL(path)
	if err != nil {
		return nil, err
	}
	cfg, err := s3.ConfigFromEnv()
	if err != nil {
		return nil, err
	}
	c, err := s3.New(context.Background(), cfg)
	if err != nil {
		return nil, err
	}
	cache, err := cacheDir(cfg.Endpoint, loc)
	if err != nil {
		return nil, err
	}
	opt.Remote = s3.NewRemote(c, loc)
	return store.Open(cache, opt)
}

// cacheDir is the local folder that caches the remote store at loc:
// $TPDE_S3_CACHE, else the user's cache folder, then tpde/s3/ and a name
// made from the endpoint, bucket and prefix (so two stores never share a
// cache, and the same store always finds its own).
func cacheDir(endpoint string, loc s3.Location) (string, error) {
	root := os.Getenv("TPDE_S3_CACHE")
	if root == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return "", errs.IOf("cache", syscall.ENOENT, "no folder to cache s3:// stores in (set TPDE_S3_CACHE): %v", err)
		}
		root = filepath.Join(base, "tpde", "s3")
	}
	sum := sha256.Sum256([]byte(endpoint + "\x00" + loc.Bucket + "\x00" + loc.Prefix))
	return filepath.Join(root, loc.Bucket+"-"+hex.EncodeToString(sum[:12])), nil
}

// Transfer is a store session's traffic with its bucket since it was
// opened: the requests its client sent, by kind, with the body bytes sent
// and received (every attempt counts, as every attempt is billed), and
// the objects its adds uploaded.
type Transfer struct {
	Requests s3.Counts
	Uploads  store.Uploads
}

// The order of Transfer.Values, which the C ABI copies out as is
// (include/tpde.h, TPDE_TRANSFER_*): counts are only ever appended, so a
// caller that knows fewer reads a prefix.
const (
	TransferGet = iota
	TransferPut
	TransferHead
	TransferList
	TransferDelete
	TransferParts
	TransferMultipart
	TransferOther
	TransferBytesSent
	TransferBytesReceived
	TransferQueuedObjects
	TransferQueuedBytes
	TransferUploadedObjects
	TransferUploadedBytes
	TransferCount
)

// Values are t's counts in the order above.
func (t Transfer) Values() []uint64 {
	r, u := t.Requests, t.Uploads
	v := []int64{r.Get, r.Put, r.Head, r.List, r.Delete, r.Parts, r.Multipart, r.Other, r.BytesSent,
		r.BytesReceived, u.QueuedObjects, u.QueuedBytes, u.UploadedObjects, u.UploadedBytes}
	out := make([]uint64, len(v))
	for i, x := range v {
		out[i] = uint64(max(x, 0))
	}
	return out
}

// StoreObjectBytes is store session h's store.ObjectBytes: the bytes of
// the objects it added less those its cleanups removed. Like
// StoreTransfer it takes no lock.
func StoreObjectBytes(h uint64) (int64, error) {
	o, err := stores.Get(h)
	if err != nil {
		return 0, err
	}
	return o.s.ObjectBytes(), nil
}

// StoreTransfer is store session h's Transfer, and false for a local
// store (which has no bucket). It takes no lock, since it reads atomic
// counters only: a progress display polls it while another thread adds
// or commits on the same session.
func StoreTransfer(h uint64) (Transfer, bool, error) {
	o, err := stores.Get(h)
	if err != nil {
		return Transfer{}, false, err
	}
	// o.s is set once, when the session is made, and never changes.
	r, ok := o.s.Remote().(interface{ Client() *s3.Client })
	if !ok {
		return Transfer{}, false, nil
	}
	return Transfer{Requests: r.Client().Counts(), Uploads: o.s.Uploads()}, true, nil
}
