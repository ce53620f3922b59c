package s3test

import (
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpde/tpde/core/par"
)

// Proxy is a fault-injecting reverse proxy on 127.0.0.1 in front of a
// server. It forwards requests unchanged (the Host header too, which the
// client signed), so a client pointed at Proxy.URL talks to the server
// with the faults a test arms:
//
//   - Fail503(n): the next n requests are answered 503 SlowDown, with
//     S3's XML error body (n < 0: every request until Fail503(0));
//   - ResetResponses(n, k): the next n responses are cut after k body
//     bytes by a TCP reset; CloseResponses(n, k) the same by a plain close
//     (FIN), as a server process that dies does;
//   - ResetRequests(n, k): the next n requests with a body are cut after
//     k body bytes by a TCP reset, before the server sees them;
//   - DropAnswers(n): the next n requests reach the server, and their
//     answers are lost: the connection is closed (FIN, not a reset) before
//     the response headers, as when the server's process dies after it
//     acted;
//   - RewriteAnswers(n, f): the next n answers reach the client with the
//     status and headers f makes of the server's (the body unchanged), as
//     a broken or hostile server or cache would answer;
//   - Delay(d): every response waits d before its headers;
//   - Bandwidth(b): bodies in both directions share b bytes per second.
//
// Faults apply to requests in arrival order, so a test with parallel
// requests knows how many fail, not which.
type Proxy struct {
	URL string

	target *url.URL
	srv    *http.Server
	tr     *http.Transport

	mu          sync.Mutex
	fail503     int
	resetResp   int
	resetRespAt int64
	closeResp   bool // cut responses with FIN, not RST
	resetReq    int
	resetReqAt  int64
	drop        int
	rewrite     int
	rewriteFn   func(status int, h http.Header) int
	delay       time.Duration
	rate        int64
	next        time.Time // bandwidth: when the link is free again
	counts      map[string]int
	injected    int
}

// NewProxy starts a proxy to target (an http:// URL) for the test, and
// stops it when the test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	u, err := url.Parse(target)
	if err != nil || u.Scheme != "http" || u.Host == "" {
		t.Fatalf("s3test: proxy target %q: want http://host:port", target)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("s3test: proxy: %v", err)
	}
	p := &Proxy{
		URL: "http://" + l.Addr().String(), target: u, counts: map[string]int{},
		tr: &http.Transport{Proxy: nil, DisableCompression: true, MaxIdleConnsPerHost: 64},
	}
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	par.Go(func() error { return p.srv.Serve(l) })
	t.Cleanup(func() {
		_ = p.srv.Close()
		p.tr.CloseIdleConnections()
	})
	return p
}

// Fail503 answers the next n requests 503 SlowDown; n < 0, every request.
func (p *Proxy) Fail503(n int) { p.mu.Lock(); p.fail503 = n; p.mu.Unlock() }

// ResetResponses cuts the next n responses after k bytes of their body.
func (p *Proxy) ResetResponses(n int, k int64) {
	p.mu.Lock()
	p.resetResp, p.resetRespAt, p.closeResp = n, k, false
	p.mu.Unlock()
}

// CloseResponses cuts the next n responses after k bytes of their body by
// closing the connection (FIN).
func (p *Proxy) CloseResponses(n int, k int64) {
	p.mu.Lock()
	p.resetResp, p.resetRespAt, p.closeResp = n, k, true
	p.mu.Unlock()
}

// ResetRequests cuts the next n requests that have a body after k bytes of
// it.
func (p *Proxy) ResetRequests(n int, k int64) {
	p.mu.Lock()
	p.resetReq, p.resetReqAt = n, k
	p.mu.Unlock()
}

// DropAnswers lets the next n requests reach the server and closes their
// connection before the answer.
func (p *Proxy) DropAnswers(n int) { p.mu.Lock(); p.drop = n; p.mu.Unlock() }

// RewriteAnswers hands the status and headers of the next n answers (n <
// 0: every answer until RewriteAnswers(0, nil)) to f, which may change
// the headers in place and returns the status to send.
func (p *Proxy) RewriteAnswers(n int, f func(status int, h http.Header) int) {
	p.mu.Lock()
	p.rewrite, p.rewriteFn = n, f
	p.mu.Unlock()
}

// Delay holds every response d before its headers.
func (p *Proxy) Delay(d time.Duration) { p.mu.Lock(); p.delay = d; p.mu.Unlock() }

// Bandwidth caps the bodies of both directions, together, at b bytes per
// second (0: no cap), as a shared link would.
func (p *Proxy) Bandwidth(b int64) { p.mu.Lock(); p.rate = b; p.mu.Unlock() }

// Count is the number of requests of method (GET, PUT, ...) seen so far,
// faulted ones included.
func (p *Proxy) Count(method string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[method]
}

// Injected is the number of faults injected so far (503s, resets, dropped
// and rewritten answers).
func (p *Proxy) Injected() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.injected
}

// ResetCounts sets the request counts to zero.
func (p *Proxy) ResetCounts() {
	p.mu.Lock()
	p.counts = map[string]int{}
	p.injected = 0
	p.mu.Unlock()
}

// take decrements a fault counter (n < 0 never runs out) and says whether
// the fault applies.
func take(n *int) bool {
	if *n == 0 {
		return false
	}
	if *n > 0 {
		*n--
	}
	return true
}

const slowDown = `<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>tpde-proxy</RequestId></Error>`

var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Upgrade", "Expect"}

func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.counts[r.Method]++
	fail := take(&p.fail503)
	resetReq := r.ContentLength != 0 && !fail && take(&p.resetReq)
	reqAt := p.resetReqAt
	resetResp := !fail && !resetReq && take(&p.resetResp)
	drop := !fail && !resetReq && !resetResp && take(&p.drop)
	var rewrite func(int, http.Header) int
	if !fail && !resetReq && !drop && take(&p.rewrite) {
		rewrite = p.rewriteFn
	}
	respAt, closeResp := p.resetRespAt, p.closeResp
	delay := p.delay
	if fail || resetReq || resetResp || drop || rewrite != nil {
		p.injected++
	}
	p.mu.Unlock()

	if fail {
		w.Header().Set("Content-Type", "application/xml")
		w.Header().Set("Retry-After", "0")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, slowDown)
		return
	}
	if resetReq {
		_, _ = io.CopyN(io.Discard, p.throttled(r.Body), reqAt)
		p.reset(w)
		return
	}

	out, err := http.NewRequestWithContext(r.Context(), r.Method, p.target.Scheme+"://"+p.target.Host+r.URL.RequestURI(), nil)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	out.Header = r.Header.Clone()
	for _, h := range hopHeaders {
		out.Header.Del(h)
	}
	out.Host = r.Host // the client signed it
	if r.ContentLength != 0 {
		out.Body = io.NopCloser(p.throttled(r.Body))
		out.ContentLength = r.ContentLength
		out.TransferEncoding = r.TransferEncoding
	}
	resp, err := p.tr.RoundTrip(out)
	if err != nil {
		p.reset(w) // as the server's own failure would look
		return
	}
	defer resp.Body.Close()
	if drop {
		_, _ = io.Copy(io.Discard, resp.Body)
		p.close(w)
		return
	}
	if delay > 0 {
		time.Sleep(delay)
	}
	for k, v := range resp.Header {
		w.Header()[k] = v
	}
	status := resp.StatusCode
	if rewrite != nil {
		status = rewrite(status, w.Header())
	}
	w.WriteHeader(status)
	body := p.throttled(resp.Body)
	if resetResp {
		_, _ = io.CopyN(w, body, respAt)
		if closeResp {
			p.close(w)
		} else {
			p.reset(w)
		}
		return
	}
	_, _ = io.Copy(w, body)
}

// reset flushes what was written and closes the client's connection with
// a TCP reset (SO_LINGER 0), as a dropped link or a crashed server would.
func (p *Proxy) reset(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler) // closes the connection without a reply
	}
	_ = buf.Flush()
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// close closes the client's connection without an answer, as the exit of
// a server's process does (FIN).
func (p *Proxy) close(w http.ResponseWriter) {
	if f, ok := w.(http.Flusher); ok {
		f.Flush()
	}
	conn, buf, err := http.NewResponseController(w).Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = buf.Flush()
	_ = conn.Close()
}

// throttled reads r at the proxy's bandwidth cap, if any.
func (p *Proxy) throttled(r io.Reader) io.Reader { return &throttle{p: p, r: r} }

type throttle struct {
	p *Proxy
	r io.Reader
}

func (t *throttle) Read(b []byte) (int, error) {
	t.p.mu.Lock()
	rate := t.p.rate
	t.p.mu.Unlock()
	if rate <= 0 {
		return t.r.Read(b)
	}
	if len(b) > 32<<10 {
		b = b[:32<<10]
	}
	n, err := t.r.Read(b)
	if n > 0 {
		t.p.mu.Lock()
		now := time.Now()
		start := t.p.next
		if start.Before(now) {
			start = now
		}
		t.p.next = start.Add(time.Duration(float64(n) / float64(rate) * float64(time.Second)))
		wait := t.p.next.Sub(now)
		t.p.mu.Unlock()
		time.Sleep(wait)
	}
	return n, err
}

// Host is the proxy's host:port.
func (p *Proxy) Host() string { return strings.TrimPrefix(p.URL, "http://") }
