package s3

import (
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"time"

	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/tpde/tpde/core/errs"
)

// Remote is a store's view of its bucket and prefix (core/store.Remote):
// every name is relative to the store's root, as a local store's files
// are to its folder.
type Remote struct {
	c   *Client
	loc Location
}

// NewRemote is the store at loc, reached through c.
func NewRemote(c *Client, loc Location) *Remote { return &Remote{c: c, loc: loc} }

// Client is the client the store's requests go through (its counts).
func (r *Remote) Client() *Client { return r.c }

// URL names rel on the remote ("" names the store itself).
func (r *Remote) URL(rel string) string {
	if rel == "" {
		return r.loc.String()
	}
	return URL(r.loc.Bucket, r.loc.Key(rel))
}

func (r *Remote) Get(ctx context.Context, rel string, limit int64) ([]byte, error) {
	return r.c.Get(ctx, r.loc.Bucket, r.loc.Key(rel), limit)
}

func (r *Remote) GetToFile(ctx context.Context, rel string, f *os.File, size int64) error {
	return r.c.GetToFile(ctx, r.loc.Bucket, r.loc.Key(rel), f, size)
}

func (r *Remote) GetRange(ctx context.Context, rel string, off, n, size int64) ([]byte, error) {
	return r.c.GetRange(ctx, r.loc.Bucket, r.loc.Key(rel), off, n, size)
}

func (r *Remote) Head(ctx context.Context, rel string) (int64, error) {
	return r.c.Head(ctx, r.loc.Bucket, r.loc.Key(rel))
}

func (r *Remote) Put(ctx context.Context, rel string, rd io.ReaderAt, size int64) error {
	return r.c.Put(ctx, r.loc.Bucket, r.loc.Key(rel), rd, size)
}

func (r *Remote) PutIfAbsent(ctx context.Context, rel string, body []byte) error {
	return r.c.PutIfAbsent(ctx, r.loc.Bucket, r.loc.Key(rel), body)
}

func (r *Remote) NotFound(err error) bool { return errors.Is(err, ErrNotFound) }
func (r *Remote) Exists(err error) bool   { return errors.Is(err, ErrExists) }

func (r *Remote) Delete(ctx context.Context, rel string) error {
	err := r.c.Delete(ctx, r.loc.Bucket, r.loc.Key(rel))
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	return err
}

// List calls fn with every name below prefix, relative to the store.
func (r *Remote) List(ctx context.Context, prefix string, fn func(rel string) error) error {
	root := r.loc.Key("")
	return r.c.List(ctx, r.loc.Bucket, r.loc.Key(prefix), func(key string, _ int64) error {
		return fn(strings.TrimPrefix(key, root))
	})
}

// Modified is when rel was last written, by the server's clock.
func (r *Remote) Modified(ctx context.Context, rel string) (time.Time, error) {
	return r.c.Modified(ctx, r.loc.Bucket, r.loc.Key(rel))
}

// Modified is when key was last written (HEAD's Last-Modified).
func (c *Client) Modified(ctx context.Context, bucket, key string) (time.Time, error) {
	u := URL(bucket, key)
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	resp, err := c.api.HeadObject(octx, &awss3.HeadObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return time.Time{}, fail(ctx, c.cfg.OpTimeout, u, "HEAD", err)
	}
	if resp.LastModified == nil {
		return time.Time{}, newError(u, "HEAD", errs.IO, "the server sent no Last-Modified")
	}
	return *resp.LastModified, nil
}
