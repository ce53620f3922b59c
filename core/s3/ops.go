package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/tpde/tpde/core/errs"
	"github.com/tpde/tpde/core/par"
)

// Get reads a whole object into memory. limit is the most bytes the caller
// accepts: a larger object is refused (errs.Limit) from its Content-Length,
// before anything is allocated or read, since the length comes from the
// server and is untrusted. A body that ends early or runs past its length
// is retried (a reset connection), and after MaxAttempts is an I/O error.
func (c *Client) Get(ctx context.Context, bucket, key string, limit int64) ([]byte, error) {
	u := URL(bucket, key)
	if limit < 0 {
		return nil, newError(u, "GET", errs.Invalid, "negative limit %d", limit)
	}
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	var out []byte
	err := c.bodyRetries(octx, u, "GET", func() error {
		resp, err := c.api.GetObject(octx, &awss3.GetObjectInput{Bucket: &bucket, Key: &key})
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		n := int64(-1)
		if resp.ContentLength != nil {
			n = *resp.ContentLength
		}
		if n > limit {
			return newError(u, "GET", errs.Limit, "the object is %d bytes, more than the %d allowed", n, limit)
		}
		if n < 0 {
			// No length announced: read one byte past the limit to see it.
			b, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
			if err != nil {
				return &bodyError{err}
			}
			if int64(len(b)) > limit {
				return newError(u, "GET", errs.Limit, "the object is more than the %d bytes allowed", limit)
			}
			out = b
			return nil
		}
		buf := make([]byte, n)
		if k, err := io.ReadFull(resp.Body, buf); err != nil {
			return &bodyError{fmt.Errorf("the body ended after %d of its %d bytes: %w", k, n, err)}
		}
		if err := c.expectEOF(resp.Body, u, "GET", n); err != nil {
			return err
		}
		out = buf
		return nil
	})
	if err != nil {
		return nil, fail(ctx, c.cfg.OpTimeout, u, "GET", err)
	}
	return out, nil
}

// expectEOF reads past the announced end of a body: the SDK checks a
// response checksum only at the end, and a server that sends more than it
// announced is not to be trusted with the rest.
func (c *Client) expectEOF(body io.Reader, u, op string, n int64) error {
	var one [1]byte
	k, err := io.ReadFull(body, one[:])
	switch {
	case k > 0:
		return newError(u, op, errs.Corrupt, "the body is longer than its announced %d bytes", n)
	case errors.Is(err, io.EOF):
		return nil
	default:
		return &bodyError{err}
	}
}

// bodyError is a failure while reading a response body (a reset, a short
// body, a checksum that did not match): the SDK retries only until the
// headers arrive, so bodyRetries retries these.
type bodyError struct{ err error }

func (e *bodyError) Error() string { return e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// bodyRetries runs fn up to MaxAttempts times while it fails with a
// bodyError, with capped, jittered exponential backoff; any other error
// (the SDK's, already retried, or our own refusal) ends it at once.
func (c *Client) bodyRetries(ctx context.Context, u, op string, fn func() error) error {
	for attempt := 1; ; attempt++ {
		err := fn()
		var be *bodyError
		if err == nil || !errors.As(err, &be) {
			return err
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if attempt >= c.cfg.MaxAttempts {
			k := errs.IO
			if strings.Contains(be.Error(), "checksum did not match") {
				k = errs.Corrupt
			}
			return newError(u, op, k, "reading the body: %s (gave up after %s)", transportText(be.err), plural(attempt, "attempt"))
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return err
		}
	}
}

// backoff is the delay before attempt+1: exponential from 100 ms, capped
// at maxBackoff, with full jitter so that parallel parts do not retry in
// step.
func backoff(attempt int) time.Duration {
	d := 100 * time.Millisecond << min(attempt-1, 10)
	d = min(d, maxBackoff)
	return d/2 + rand.N(d/2+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// GetToFile downloads an object into f with Download (ranged GETs in
// parallel, each written with WriteAt at its offset). f is written, not
// truncated or synced: the caller owns its file's life (a temporary name,
// fsync, rename).
func (c *Client) GetToFile(ctx context.Context, bucket, key string, f *os.File, size int64) error {
	return c.Download(ctx, bucket, key, f, size)
}

// Download reads an object of size bytes into w, in ranges of PartSize,
// Threads at once, each written with w.WriteAt at its offset (w must
// accept parallel WriteAt calls at distinct offsets, as a file and a
// memory buffer do). The caller knows the size (from a manifest), so a
// download is only GETs: an object of another size is errs.Corrupt naming
// both, and one that changes between two ranges (its ETag) an I/O error.
func (c *Client) Download(ctx context.Context, bucket, key string, w io.WriterAt, size int64) error {
	u := URL(bucket, key)
	if size < 0 {
		return newError(u, "GET", errs.Invalid, "negative size %d", size)
	}
	if size == 0 {
		// S3 refuses a range of an empty object, so ask for its length.
		n, err := c.Head(ctx, bucket, key)
		if err != nil {
			return err
		}
		if n != 0 {
			return newError(u, "GET", errs.Corrupt, "the object is %d bytes, expected 0", n)
		}
		return nil
	}
	ps := c.cfg.PartSize
	parts := int((size-1)/ps + 1)
	var (
		mu   sync.Mutex
		etag string
	)
	return par.For(parts, min(c.cfg.Threads, parts), func(_, i int) error {
		off := int64(i) * ps
		end := min(size, off+ps) - 1
		op := "GET"
		if parts > 1 {
			op = fmt.Sprintf("GET (range %d of %d, bytes %d-%d)", i+1, parts, off, end)
		}
		return c.getRange(ctx, bucket, key, off, end, size, op, w, func(tag string) bool {
			mu.Lock()
			defer mu.Unlock()
			if etag == "" {
				etag = tag
			}
			return etag == tag
		})
	})
}

// GetRange reads bytes [off, off+n) of an object that must be size bytes
// (Content-Range says how long the object is, so a wrong size is caught by
// this one request): a check of an object's head that should not fetch
// all of it. n must be at least 1 and off+n at most size.
func (c *Client) GetRange(ctx context.Context, bucket, key string, off, n, size int64) ([]byte, error) {
	u := URL(bucket, key)
	if off < 0 || n < 1 || size < 0 || off > size-n {
		return nil, newError(u, "GET", errs.Invalid, "range of %d bytes at %d of a %d-byte object", n, off, size)
	}
	buf := make([]byte, n)
	op := fmt.Sprintf("GET (bytes %d-%d)", off, off+n-1)
	if err := c.getRange(ctx, bucket, key, off, off+n-1, size, op, window{buf, off}, func(string) bool { return true }); err != nil {
		return nil, err
	}
	return buf, nil
}

// window is GetRange's buffer: the object's bytes from base on.
type window struct {
	b    []byte
	base int64
}

func (w window) WriteAt(p []byte, off int64) (int, error) {
	off -= w.base
	if off < 0 || off > int64(len(w.b)) || int64(len(p)) > int64(len(w.b))-off {
		return 0, io.ErrShortWrite
	}
	return copy(w.b[off:], p), nil
}

// getRange is one ranged GET, bytes first..last of an object of size
// bytes, written to w at offset first (io.WriterAt offsets are the
// object's), with retries. sameETag reports whether an answer's ETag is
// the object's that the other ranges read.
func (c *Client) getRange(ctx context.Context, bucket, key string, off, end, size int64, op string, w io.WriterAt,
	sameETag func(string) bool) error {
	u := URL(bucket, key)
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	err := c.bodyRetries(octx, u, op, func() error {
		resp, err := c.api.GetObject(octx, &awss3.GetObjectInput{
			Bucket: &bucket, Key: &key, Range: aws.String(fmt.Sprintf("bytes=%d-%d", off, end)),
		})
		if err != nil {
			var re *awshttp.ResponseError
			if errors.As(err, &re) && re.HTTPStatusCode() == 416 {
				return newError(u, op, errs.Corrupt, "the object is shorter than the %d bytes expected (the server refused the range)", size)
			}
			return err
		}
		defer resp.Body.Close()
		first, last, total, ok := parseContentRange(aws.ToString(resp.ContentRange))
		if !ok {
			return newError(u, op, errs.IO, "the server did not answer with the range asked for (Content-Range %q)", aws.ToString(resp.ContentRange))
		}
		if total != size {
			return newError(u, op, errs.Corrupt, "the object is %d bytes, expected %d", total, size)
		}
		if first != off || last != end {
			return newError(u, op, errs.IO, "the server answered bytes %d-%d for a range of %d-%d", first, last, off, end)
		}
		if !sameETag(aws.ToString(resp.ETag)) {
			return newError(u, op, errs.IO, "the object changed while it was read (its ETag changed)")
		}
		body := &readErr{r: resp.Body}
		n := end - off + 1
		if k, err := io.CopyN(io.NewOffsetWriter(w, off), body, n); err != nil {
			if body.err == nil {
				return newError(u, op, errs.IO, "writing at offset %d: %v", off+k, err)
			}
			return &bodyError{fmt.Errorf("the body ended after %d of its %d bytes: %w", k, n, err)}
		}
		return c.expectEOF(resp.Body, u, op, n)
	})
	if err != nil {
		return fail(ctx, c.cfg.OpTimeout, u, op, err)
	}
	return nil
}

// readErr remembers a read error, to tell it from a write error in a copy.
type readErr struct {
	r   io.Reader
	err error
}

func (r *readErr) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF {
		r.err = err
	}
	return n, err
}

// parseContentRange reads "bytes FIRST-LAST/TOTAL".
func parseContentRange(s string) (first, last, total int64, ok bool) {
	rest, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, 0, false
	}
	rng, tot, found := strings.Cut(rest, "/")
	if !found {
		return 0, 0, 0, false
	}
	a, b, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, 0, false
	}
	var err1, err2, err3 error
	first, err1 = strconv.ParseInt(a, 10, 64)
	last, err2 = strconv.ParseInt(b, 10, 64)
	total, err3 = strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || first < 0 || last < first || total <= last {
		return 0, 0, 0, false
	}
	return first, last, total, true
}

// Head is the size of an object.
func (c *Client) Head(ctx context.Context, bucket, key string) (int64, error) {
	u := URL(bucket, key)
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	resp, err := c.api.HeadObject(octx, &awss3.HeadObjectInput{Bucket: &bucket, Key: &key})
	if err != nil {
		return 0, fail(ctx, c.cfg.OpTimeout, u, "HEAD", err)
	}
	n := aws.ToInt64(resp.ContentLength)
	if resp.ContentLength == nil || n < 0 {
		return 0, newError(u, "HEAD", errs.IO, "the server sent no Content-Length")
	}
	return n, nil
}

// Put writes an object of size bytes read from r: one PUT up to PartSize,
// else a multipart upload whose parts (PartSize each, larger when the
// object would need more than MaxParts) go up Threads at once. r is read
// with parallel ReadAt calls at distinct offsets, and re-read when a part
// is retried, so it must stay unchanged until Put returns. A failed
// multipart upload is aborted, so that no invisible parts stay billed.
func (c *Client) Put(ctx context.Context, bucket, key string, r io.ReaderAt, size int64) error {
	u := URL(bucket, key)
	if size < 0 {
		return newError(u, "PUT", errs.Invalid, "negative size %d", size)
	}
	if size <= c.cfg.PartSize {
		octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
		defer cancel()
		_, err := c.api.PutObject(octx, &awss3.PutObjectInput{
			Bucket: &bucket, Key: &key, Body: io.NewSectionReader(r, 0, size), ContentLength: aws.Int64(size),
		})
		if err != nil {
			return fail(ctx, c.cfg.OpTimeout, u, "PUT", err)
		}
		return nil
	}
	return c.putMultipart(ctx, bucket, key, r, size)
}

// partSize is the part size for an object of size bytes: PartSize, or the
// smallest whole MiB that keeps it within MaxParts parts.
func (c *Client) partSize(size int64) int64 {
	ps := c.cfg.PartSize
	if (size-1)/ps+1 > MaxParts {
		ps = ((size-1)/MaxParts + 1 + 1<<20 - 1) &^ (1<<20 - 1)
	}
	return ps
}

func (c *Client) putMultipart(ctx context.Context, bucket, key string, r io.ReaderAt, size int64) error {
	u := URL(bucket, key)
	ps := c.partSize(size)
	parts := int((size-1)/ps + 1)
	if ps > MaxPartSize {
		return newError(u, "PUT", errs.Limit, "the object is %d bytes, more than S3 takes in %d parts of at most 5 GiB", size, MaxParts)
	}
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	created, err := c.api.CreateMultipartUpload(octx, &awss3.CreateMultipartUploadInput{
		Bucket: &bucket, Key: &key, ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
	})
	cancel()
	if err != nil {
		return fail(ctx, c.cfg.OpTimeout, u, "PUT (create multipart upload)", err)
	}
	id := created.UploadId
	done := make([]types.CompletedPart, parts)
	err = par.For(parts, min(c.cfg.Threads, parts), func(_, i int) error {
		off := int64(i) * ps
		n := min(ps, size-off)
		num := aws.Int32(int32(i + 1))
		octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
		defer cancel()
		out, err := c.api.UploadPart(octx, &awss3.UploadPartInput{
			Bucket: &bucket, Key: &key, UploadId: id, PartNumber: num,
			Body: io.NewSectionReader(r, off, n), ContentLength: aws.Int64(n),
			ChecksumAlgorithm: types.ChecksumAlgorithmCrc32,
		})
		if err != nil {
			return fail(ctx, c.cfg.OpTimeout, u, fmt.Sprintf("PUT (part %d of %d)", i+1, parts), err)
		}
		done[i] = types.CompletedPart{ETag: out.ETag, PartNumber: num, ChecksumCRC32: out.ChecksumCRC32}
		return nil
	})
	if err == nil {
		octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
		_, err = c.api.CompleteMultipartUpload(octx, &awss3.CompleteMultipartUploadInput{
			Bucket: &bucket, Key: &key, UploadId: id,
			MultipartUpload: &types.CompletedMultipartUpload{Parts: done},
		})
		cancel()
		if err != nil {
			err = fail(ctx, c.cfg.OpTimeout, u, "PUT (complete multipart upload)", err)
		}
	}
	if err != nil {
		// Abort even when the caller cancelled, on a context of its own,
		// briefly: a failed abort leaves parts that a bucket lifecycle rule
		// for incomplete uploads removes, so it is not worth waiting on.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), min(c.cfg.OpTimeout, 30*time.Second))
		_, _ = c.api.AbortMultipartUpload(actx, &awss3.AbortMultipartUploadInput{Bucket: &bucket, Key: &key, UploadId: id})
		cancel()
		return err
	}
	return nil
}

// PutIfAbsent writes body to key only if no object is there
// (If-None-Match: "*"): the store's commit, where of two writers exactly
// one wins. The loser gets an error matching ErrExists. A 409
// ConditionalRequestConflict (a concurrent conditional write in flight) is
// retried with backoff until one of them is decided.
//
// When the key exists, PutIfAbsent reads it back: if it holds exactly
// body, this call wins. That happens when an attempt of ours was stored
// but its answer was lost (a reset) and the SDK's retry then found our own
// object; without the check the committed writer would believe it lost.
// (Another writer storing the very same bytes is the same commit.)
func (c *Client) PutIfAbsent(ctx context.Context, bucket, key string, body []byte) error {
	u := URL(bucket, key)
	const op = "PUT (if absent)"
	for attempt := 1; ; attempt++ {
		octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
		_, err := c.api.PutObject(octx, &awss3.PutObjectInput{
			Bucket: &bucket, Key: &key, Body: bytes.NewReader(body), ContentLength: aws.Int64(int64(len(body))),
			IfNoneMatch: aws.String("*"),
		})
		cancel()
		if err == nil {
			return nil
		}
		err = fail(ctx, c.cfg.OpTimeout, u, op, err)
		var e *Error
		if errors.As(err, &e) && (e.Status == 409 || e.Code == "ConditionalRequestConflict") && attempt < c.cfg.MaxAttempts {
			if serr := sleep(ctx, backoff(attempt)); serr != nil {
				return err
			}
			continue
		}
		if errors.Is(err, ErrExists) {
			if got, gerr := c.Get(ctx, bucket, key, int64(len(body))); gerr == nil && bytes.Equal(got, body) {
				return nil
			}
		}
		return err
	}
}

// Delete removes an object; a missing one is no error (S3 answers 204
// either way).
func (c *Client) Delete(ctx context.Context, bucket, key string) error {
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	if _, err := c.api.DeleteObject(octx, &awss3.DeleteObjectInput{Bucket: &bucket, Key: &key}); err != nil {
		return fail(ctx, c.cfg.OpTimeout, URL(bucket, key), "DELETE", err)
	}
	return nil
}

// List calls fn for every object whose key begins with prefix, in key
// order, a page (up to 1000 keys) per request; fn's error stops it and is
// returned as is. Each page is bounded by OpTimeout.
func (c *Client) List(ctx context.Context, bucket, prefix string, fn func(key string, size int64) error) error {
	u := URL(bucket, prefix)
	in := &awss3.ListObjectsV2Input{Bucket: &bucket, Prefix: &prefix}
	for {
		octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
		out, err := c.api.ListObjectsV2(octx, in)
		cancel()
		if err != nil {
			return fail(ctx, c.cfg.OpTimeout, u, "LIST", err)
		}
		for _, o := range out.Contents {
			if err := fn(aws.ToString(o.Key), aws.ToInt64(o.Size)); err != nil {
				return err
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return nil
		}
		if aws.ToString(out.NextContinuationToken) == "" {
			return newError(u, "LIST", errs.IO, "the server said the listing goes on but gave no continuation token")
		}
		in.ContinuationToken = out.NextContinuationToken
	}
}

// CreateBucket makes a bucket, for tests and tooling (`tpde` can make the
// bucket of a new store); one that already exists and is ours is no error.
func (c *Client) CreateBucket(ctx context.Context, bucket string) error {
	u := Scheme + bucket + "/"
	if msg := checkBucket(bucket); msg != "" {
		return newError(u, "CREATE BUCKET", errs.Invalid, "%s", msg)
	}
	in := &awss3.CreateBucketInput{Bucket: &bucket}
	if c.cfg.Region != DefaultRegion {
		in.CreateBucketConfiguration = &types.CreateBucketConfiguration{
			LocationConstraint: types.BucketLocationConstraint(c.cfg.Region),
		}
	}
	octx, cancel := context.WithTimeout(ctx, c.cfg.OpTimeout)
	defer cancel()
	if _, err := c.api.CreateBucket(octx, in); err != nil {
		var owned *types.BucketAlreadyOwnedByYou
		if errors.As(err, &owned) {
			return nil
		}
		return fail(ctx, c.cfg.OpTimeout, u, "CREATE BUCKET", err)
	}
	return nil
}
