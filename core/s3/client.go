package s3

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/ratelimit"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	awss3 "github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go/logging"

	"github.com/tpde/tpde/core/errs"
)

// Defaults. Threads and PartSize are boto3's defaults (max_concurrency 10,
// multipart_chunksize and multipart_threshold 8 MiB), so that comparisons
// with it start from the same shape of traffic; the network, not the CPU
// count, bounds how many requests are worth having in flight.
const (
	DefaultThreads     = 10
	DefaultPartSize    = 8 << 20
	DefaultMaxAttempts = 5
	DefaultOpTimeout   = 120 * time.Second
	DefaultRegion      = "us-east-1"

	// MinPartSize and MaxPartSize are S3's limits on a multipart part
	// (except the last, which may be smaller); MaxParts the most parts of
	// one upload.
	MinPartSize = 5 << 20
	MaxPartSize = 5 << 30
	MaxParts    = 10000

	// maxBackoff caps the delay between two attempts, so that MaxAttempts
	// and OpTimeout bound a persistent failure to a known time.
	maxBackoff = 5 * time.Second
)

// Config is how to reach the server; credentials are not in it, since they
// come from the SDK's default chain (AWS_ACCESS_KEY_ID,
// AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, the shared config and
// credentials files, AWS_PROFILE), so that tpde never holds them where they
// could be written or printed.
type Config struct {
	// Endpoint is the server's URL ("http://127.0.0.1:9000"); empty for
	// AWS itself. Addressing is path-style when it is set, since
	// S3-compatible servers rarely have a wildcard DNS name per bucket.
	Endpoint string
	// Region signs requests; DefaultRegion when empty.
	Region string
	// Profile is a shared-config profile name; empty for the default
	// (or AWS_PROFILE, which the SDK reads itself).
	Profile string
	// Threads is how many requests of one Put or Download are in flight
	// at once; DefaultThreads when 0.
	Threads int
	// PartSize is the size of a multipart part and of a ranged GET, and the
	// largest object one PUT sends; DefaultPartSize when 0, else in
	// [MinPartSize, MaxPartSize].
	PartSize int64
	// MaxAttempts is how many times one request is tried (5xx, throttling,
	// a reset connection); DefaultMaxAttempts when 0.
	MaxAttempts int
	// OpTimeout bounds one operation with all its attempts and backoff:
	// a Get, a Head, a single PUT, and each part or range of a multipart
	// Put or a Download (each moves at most PartSize bytes).
	// DefaultOpTimeout when 0.
	OpTimeout time.Duration
}

// ConfigFromEnv reads the standard variables: AWS_ENDPOINT_URL_S3 or else
// AWS_ENDPOINT_URL, AWS_REGION or else AWS_DEFAULT_REGION (default
// us-east-1), AWS_PROFILE; and tpde's own TPDE_S3_MAX_ATTEMPTS (a count)
// and TPDE_S3_TIMEOUT (seconds). A variable that is set but malformed is
// refused (errs.Invalid naming it) rather than ignored, since a typo would
// otherwise silently change which server or limits apply.
func ConfigFromEnv() (Config, error) {
	var c Config
	c.Endpoint = os.Getenv("AWS_ENDPOINT_URL_S3")
	if c.Endpoint == "" {
		c.Endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	c.Region = os.Getenv("AWS_REGION")
	if c.Region == "" {
		c.Region = os.Getenv("AWS_DEFAULT_REGION")
	}
	c.Profile = os.Getenv("AWS_PROFILE")
	if v := os.Getenv("TPDE_S3_MAX_ATTEMPTS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return Config{}, fmt.Errorf("%w: TPDE_S3_MAX_ATTEMPTS=%q: want a count from 1 to 100", errs.Invalid, v)
		}
		c.MaxAttempts = n
	}
	if v := os.Getenv("TPDE_S3_TIMEOUT"); v != "" {
		s, err := strconv.ParseFloat(v, 64)
		if err != nil || !(s > 0) || s > 86400 {
			return Config{}, fmt.Errorf("%w: TPDE_S3_TIMEOUT=%q: want seconds, more than 0 and at most 86400", errs.Invalid, v)
		}
		c.OpTimeout = time.Duration(s * float64(time.Second))
	}
	return c, nil
}

// withDefaults fills the zero fields and checks the others.
func (c Config) withDefaults() (Config, error) {
	if c.Region == "" {
		c.Region = DefaultRegion
	}
	if c.Threads == 0 {
		c.Threads = DefaultThreads
	}
	if c.PartSize == 0 {
		c.PartSize = DefaultPartSize
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.OpTimeout == 0 {
		c.OpTimeout = DefaultOpTimeout
	}
	switch {
	case c.Threads < 1 || c.Threads > 1024:
		return c, fmt.Errorf("%w: s3 threads %d: want 1 to 1024", errs.Invalid, c.Threads)
	case c.PartSize < MinPartSize || c.PartSize > MaxPartSize:
		return c, fmt.Errorf("%w: s3 part size %d: want %d (5 MiB) to %d (5 GiB), S3's limits", errs.Invalid, c.PartSize, MinPartSize, int64(MaxPartSize))
	case c.MaxAttempts < 1 || c.MaxAttempts > 100:
		return c, fmt.Errorf("%w: s3 max attempts %d: want 1 to 100", errs.Invalid, c.MaxAttempts)
	case c.OpTimeout < 0:
		return c, fmt.Errorf("%w: s3 timeout %v: want more than 0", errs.Invalid, c.OpTimeout)
	}
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" {
			shown := "(unparsable)"
			if err == nil {
				shown = u.Redacted() // no password of a user:password@ in it
			}
			return c, fmt.Errorf("%w: S3 endpoint %s: want http(s)://host[:port] (from AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL)", errs.Invalid, redact(shown))
		}
	}
	return c, nil
}

// Client is a configured S3 client. It is safe for concurrent use.
type Client struct {
	api    *awss3.Client
	cfg    Config
	counts counters
}

// New makes a client. It resolves configuration (the profile, the region)
// but sends nothing: credentials are looked up on the first request, and a
// missing or wrong one fails that request with an access error.
func New(ctx context.Context, cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &Client{cfg: cfg}
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(t *http.Transport) {
		// Keep a connection per request in flight, so that parallel
		// parts do not reconnect.
		t.MaxIdleConns = 2*cfg.Threads + 8
		t.MaxIdleConnsPerHost = 2*cfg.Threads + 8
	})
	opts := []func(*config.LoadOptions) error{
		config.WithRegion(cfg.Region),
		// Counting wraps it below, in the client's options: the loader
		// needs the BuildableClient itself to add a CA bundle
		// (AWS_CA_BUNDLE) to its transport.
		config.WithHTTPClient(httpClient),
		// The SDK's default logger writes to stderr (for example that a
		// ranged GET's checksum was not validated); tpde prints nothing
		// that it does not mean to.
		config.WithLogger(logging.Nop{}),
		config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = cfg.MaxAttempts
				o.MaxBackoff = maxBackoff
				// No client-side retry quota: with many parts in flight on a
				// flaky link it would fail parts that MaxAttempts allows,
				// and OpTimeout bounds the time anyway.
				o.RateLimiter = ratelimit.None
				o.Retryables = append(o.Retryables, retry.IsErrorRetryableFunc(retryableDrop))
			})
		}),
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: S3 configuration: %s", errs.Invalid, oneLine(redact(err.Error())))
	}
	if awsCfg.Credentials != nil {
		awsCfg.Credentials = &rememberingProvider{next: awsCfg.Credentials}
	}
	c.api = awss3.NewFromConfig(awsCfg, func(o *awss3.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
			o.UsePathStyle = true
		}
		o.DisableLogOutputChecksumValidationSkipped = true
		o.HTTPClient = &countingClient{next: o.HTTPClient, counts: &c.counts}
	})
	return c, nil
}

// Config is the client's configuration, defaults filled in.
func (c *Client) Config() Config { return c.cfg }

// rememberingProvider notes every credential it hands to the signer, so
// that error messages can redact it even when it came from a file or a
// process rather than the environment.
type rememberingProvider struct{ next aws.CredentialsProvider }

func (p *rememberingProvider) Retrieve(ctx context.Context) (aws.Credentials, error) {
	cr, err := p.next.Retrieve(ctx)
	if err == nil {
		remember(cr.AccessKeyID, cr.SecretAccessKey, cr.SessionToken)
	}
	return cr, err
}

var (
	knownMu sync.Mutex
	known   []string
)

func remember(vals ...string) {
	knownMu.Lock()
	defer knownMu.Unlock()
next:
	for _, v := range vals {
		if v == "" {
			continue
		}
		for _, k := range known {
			if k == v {
				continue next
			}
		}
		if len(known) < 64 {
			known = append(known, v)
		}
	}
}

// Counts are the requests a client sent, by kind, and the body bytes it
// sent and received, for `tpde stats --json` and for tests that check a
// load's request budget. Every attempt counts (a retried request is two),
// since every attempt is billed.
type Counts struct {
	Get    int64 `json:"get"`
	Put    int64 `json:"put"`
	Head   int64 `json:"head"`
	List   int64 `json:"list"`
	Delete int64 `json:"delete"`
	// Parts are multipart UploadPart requests; Multipart the create,
	// complete and abort requests around them.
	Parts     int64 `json:"parts"`
	Multipart int64 `json:"multipart"`
	Other     int64 `json:"other"`
	// Body bytes only (headers are not counted).
	BytesSent     int64 `json:"bytes_sent"`
	BytesReceived int64 `json:"bytes_received"`
}

// Requests is the total count of requests.
func (n Counts) Requests() int64 {
	return n.Get + n.Put + n.Head + n.List + n.Delete + n.Parts + n.Multipart + n.Other
}

type counters struct {
	get, put, head, list, del, parts, multipart, other, sent, received atomic.Int64
}

// Counts is a snapshot of the counts since New or ResetCounts.
func (c *Client) Counts() Counts {
	n := &c.counts
	return Counts{
		Get: n.get.Load(), Put: n.put.Load(), Head: n.head.Load(), List: n.list.Load(),
		Delete: n.del.Load(), Parts: n.parts.Load(), Multipart: n.multipart.Load(),
		Other: n.other.Load(), BytesSent: n.sent.Load(), BytesReceived: n.received.Load(),
	}
}

// ResetCounts sets every count to zero, at the start of an operation whose
// cost is to be reported.
func (c *Client) ResetCounts() {
	n := &c.counts
	for _, v := range []*atomic.Int64{&n.get, &n.put, &n.head, &n.list, &n.del, &n.parts, &n.multipart, &n.other, &n.sent, &n.received} {
		v.Store(0)
	}
}

// countingClient counts at the HTTP layer, below the retryer, so that
// each attempt is seen.
type countingClient struct {
	next   aws.HTTPClient
	counts *counters
}

func (h *countingClient) Do(req *http.Request) (*http.Response, error) {
	n := h.counts
	q := req.URL.Query()
	switch req.Method {
	case http.MethodGet:
		if q.Has("list-type") || q.Has("uploads") || q.Has("uploadId") {
			n.list.Add(1)
		} else {
			n.get.Add(1)
		}
	case http.MethodPut:
		if q.Has("partNumber") {
			n.parts.Add(1)
		} else {
			n.put.Add(1) // PutObject, and CreateBucket (rare: tooling and tests)
		}
	case http.MethodHead:
		n.head.Add(1)
	case http.MethodDelete:
		if q.Has("uploadId") {
			n.multipart.Add(1)
		} else {
			n.del.Add(1)
		}
	case http.MethodPost:
		if q.Has("uploads") || q.Has("uploadId") {
			n.multipart.Add(1)
		} else {
			n.other.Add(1)
		}
	default:
		n.other.Add(1)
	}
	if req.ContentLength > 0 {
		n.sent.Add(req.ContentLength)
	}
	resp, err := h.next.Do(req)
	if resp != nil && resp.Body != nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: &n.received}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	k, err := b.ReadCloser.Read(p)
	b.n.Add(int64(k))
	return k, err
}

// retryableDrop retries a connection that dropped mid-request: the SDK
// retries a reset read, but not a write into a reset connection (EPIPE) or
// a response cut before its headers (EOF), which a restarted server or a
// proxy dropping a connection causes just as well. Request bodies are
// seekable (io.SectionReader, bytes.Reader), so a retry resends them.
func retryableDrop(err error) aws.Ternary {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return aws.UnknownTernary
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNABORTED) {
		return aws.TrueTernary
	}
	return aws.UnknownTernary
}
