// Package s3test runs a real S3 server (VersityGW) for tests, and a
// fault-injecting proxy in front of it for the faults a server does not
// make by itself (503 SlowDown, a reset mid-body, slowness, a bandwidth
// cap). It is a non-test package so that every package's tests can use it;
// it imports only core/par of tpde, so core/s3's own tests can too.
//
// A test that needs the server and cannot find it fails (never skips),
// naming .ci/versitygw.sh, so that `./build.sh test` always exercises S3.
package s3test

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpde/tpde/core/par"
)

// Version is the VersityGW release the tests run, built by .ci/versitygw.sh.
const Version = "v1.8.0"

// Binary is the versitygw executable: $TPDE_VERSITYGW, else
// versitygw-<Version>/bin/versitygw in build.sh's cache,
// ${TPDE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tpde}, where
// .ci/versitygw.sh builds it.
func Binary() string {
	if p := os.Getenv("TPDE_VERSITYGW"); p != "" {
		return p
	}
	cache := os.Getenv("TPDE_CACHE")
	if cache == "" {
		base := os.Getenv("XDG_CACHE_HOME")
		if base == "" {
			home, _ := os.UserHomeDir()
			base = filepath.Join(home, ".cache")
		}
		cache = filepath.Join(base, "tpde")
	}
	return filepath.Join(cache, "versitygw-"+Version, "bin", "versitygw")
}

// Server is a running VersityGW on 127.0.0.1 with a data folder of its own
// and random root credentials.
type Server struct {
	Endpoint  string // http://127.0.0.1:<port>
	AccessKey string
	Secret    string
	Region    string
	Pid       int

	t       testing.TB
	bin     string
	dir     string // the server's working folder; data/ below it
	port    int
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	log     *lockedBuffer
	stopped bool
}

// Start starts a server for the test and stops it when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	bin := Binary()
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("the S3 test server (VersityGW %s) is not at %s: build it with .ci/versitygw.sh (or set TPDE_VERSITYGW to its path)", Version, bin)
	}
	s := &Server{
		t: t, bin: bin, dir: t.TempDir(), Region: "us-east-1",
		AccessKey: "TPDE" + strings.ToUpper(randomHex(8)),
		Secret:    randomHex(20),
	}
	if err := os.Mkdir(filepath.Join(s.dir, "data"), 0o700); err != nil {
		t.Fatalf("s3test: %v", err)
	}
	var err error
	// A free port can be taken between our probe and the server's
	// listen, so try a few.
	for try := 0; try < 5; try++ {
		if s.port, err = freePort(); err != nil {
			t.Fatalf("s3test: no free port on 127.0.0.1: %v", err)
		}
		if err = s.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("s3test: %v", err)
	}
	t.Cleanup(s.Stop)
	return s
}

func randomHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// start launches the server on s.port and waits until it answers HTTP.
func (s *Server) start() error {
	s.Endpoint = fmt.Sprintf("http://127.0.0.1:%d", s.port)
	// Without --keep-alive (tests/s3server.py, for the benchmarks, passes
	// it): a server with idle kept-alive connections waits for them on
	// SIGTERM, and each test's Stop would then take the 10 s timeout.
	cmd := exec.Command(s.bin, "--port", fmt.Sprintf("127.0.0.1:%d", s.port), "--quiet",
		"posix", filepath.Join(s.dir, "data"))
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY="+s.AccessKey, "ROOT_SECRET_KEY="+s.Secret)
	s.log = &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = s.log, s.log
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %v", s.bin, err)
	}
	exited := make(chan struct{})
	par.Go(func() error { // par: the only place tpde starts goroutines
		defer close(exited)
		return cmd.Wait()
	})
	s.mu.Lock()
	s.cmd, s.exited, s.Pid, s.stopped = cmd, exited, cmd.Process.Pid, false
	s.mu.Unlock()
	client := &http.Client{Timeout: time.Second, Transport: &http.Transport{Proxy: nil}}
	deadline := time.Now().Add(60 * time.Second) // a cold 84 MB binary on a loaded machine
	for time.Now().Before(deadline) {
		select {
		case <-exited:
			return fmt.Errorf("versitygw exited at start on port %d: %s", s.port, s.Log())
		default:
		}
		resp, err := client.Get(s.Endpoint + "/")
		if err == nil {
			resp.Body.Close()
			return nil // any HTTP answer (403 for an unsigned request) means it is up
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.kill(syscall.SIGKILL)
	return fmt.Errorf("versitygw did not answer on port %d within 60 s: %s", s.port, s.Log())
}

// kill sends sig to the server by its pid and waits until it has exited.
func (s *Server) kill(sig syscall.Signal) {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.stopped = true
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-exited:
		return
	default:
	}
	_ = syscall.Kill(cmd.Process.Pid, sig)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(cmd.Process.Pid, syscall.SIGKILL)
		<-exited
	}
}

// Stop stops the server (SIGTERM, then SIGKILL after 10 s) and waits for
// it; stopping a stopped server does nothing.
func (s *Server) Stop() { s.kill(syscall.SIGTERM) }

// Kill9 kills the server with SIGKILL, as a crash would, and waits for it.
func (s *Server) Kill9() { s.kill(syscall.SIGKILL) }

// Restart stops the server if it runs and starts it again on the same
// port, data and credentials, so that clients need not change.
func (s *Server) Restart() {
	s.t.Helper()
	s.Stop()
	var err error
	for try := 0; try < 20; try++ { // the port may linger a moment
		if err = s.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.t.Fatalf("s3test: restarting versitygw: %v", err)
}

// Log is what the server printed (its last few KiB), for failure messages.
func (s *Server) Log() string {
	return strings.NewReplacer(s.Secret, "[secret]", s.AccessKey, "[key id]").Replace(s.log.tail())
}

// Env is the environment a client needs to reach the server: endpoint,
// region and credentials, with the variables that could point the SDK's
// credential chain elsewhere (a profile, a session token, EC2 metadata)
// cleared.
func (s *Server) Env() []string {
	return []string{
		"AWS_ENDPOINT_URL=" + s.Endpoint,
		"AWS_ENDPOINT_URL_S3=",
		"AWS_REGION=" + s.Region,
		"AWS_DEFAULT_REGION=",
		"AWS_ACCESS_KEY_ID=" + s.AccessKey,
		"AWS_SECRET_ACCESS_KEY=" + s.Secret,
		"AWS_SESSION_TOKEN=",
		"AWS_PROFILE=",
		"AWS_EC2_METADATA_DISABLED=true",
	}
}

// SetEnv sets Env for the rest of the test (t.Setenv: not in parallel
// tests).
func (s *Server) SetEnv(t testing.TB) {
	t.Helper()
	for _, kv := range s.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
}

// Port is the server's port.
func (s *Server) Port() int { return s.port }

// String names the server in failure messages.
func (s *Server) String() string {
	return "versitygw " + Version + " at " + s.Endpoint + " (pid " + strconv.Itoa(s.Pid) + ")"
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() > 1<<20 {
		l.b.Reset()
	}
	return l.b.Write(p)
}

func (l *lockedBuffer) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.b.Bytes()
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return strings.TrimSpace(string(b))
}
