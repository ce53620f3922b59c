package s3

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/smithy-go"

	"github.com/tpde/tpde/core/errs"
)

// kind is a sentinel that matches core/errs kinds and an errno, so that a
// store on S3 fails the way a local store fails: the C ABI and Python map
// errs.IO with ENOENT, EEXIST or EACCES to FileNotFoundError,
// FileExistsError and PermissionError there as here.
type kind struct {
	name  string
	kinds []error
}

func (k *kind) Error() string   { return k.name }
func (k *kind) Unwrap() []error { return k.kinds }

var (
	// ErrNotFound: no such key (or no such bucket). It matches errs.IO and
	// syscall.ENOENT, as a missing file of a local store does.
	ErrNotFound error = &kind{"not found", []error{errs.IO, syscall.ENOENT}}
	// ErrExists: a conditional PUT found the key already there. It matches
	// errs.IO and syscall.EEXIST, as atomicfile's no-replace write of a
	// local store does, so that the store's commit loses a race the same
	// way on both; it is not errs.Invalid, since losing a race is no
	// caller mistake.
	ErrExists error = &kind{"exists", []error{errs.IO, syscall.EEXIST}}
	// ErrAccess: the server refused the credentials or the request
	// (403, a bad key id or signature, an expired token), or none were
	// found. It matches errs.IO and syscall.EACCES.
	ErrAccess error = &kind{"access denied", []error{errs.IO, syscall.EACCES}}
)

// Error is every error of this package: one line naming the operation and
// the object. It matches its kinds (errors.Is) and, through Cause, the
// SDK's error (errors.As), whose own text is never shown: it can be
// several lines and name request internals.
type Error struct {
	URL    string // s3://bucket/key (or s3://bucket/ for the bucket)
	Op     string // GET, PUT, HEAD, ...
	Status int    // the HTTP status, 0 when none came back
	Code   string // the S3 error code ("NoSuchKey"), "" when none came back
	msg    string
	kinds  []error
	Cause  error
}

func (e *Error) Error() string { return e.msg }

func (e *Error) Unwrap() []error {
	if e.Cause == nil {
		return e.kinds
	}
	return append(append([]error(nil), e.kinds...), e.Cause)
}

// newError builds an Error whose text is "<kind>: <url>: <op>: <what>",
// the order core/errs.IOf writes for files, on one line and with every
// credential the process knows of redacted.
func newError(url, op string, k error, format string, a ...any) *Error {
	what := fmt.Sprintf(format, a...)
	lead := k
	var kk *kind
	if errors.As(k, &kk) {
		lead = kk.kinds[0]
	}
	msg := oneLine(redact(fmt.Sprintf("%v: %s: %s: %s", lead, url, op, what)))
	return &Error{URL: url, Op: op, msg: msg, kinds: []error{k}}
}

func oneLine(s string) string {
	return strings.Join(strings.Fields(strings.ReplaceAll(s, "\r", " ")), " ")
}

// secretish matches what would be a credential in text that came from the
// SDK or a server: an Authorization header's Credential= and Signature=,
// presigned-URL parameters, and the token headers.
var secretish = regexp.MustCompile(`(?i)(Credential=|Signature=|X-Amz-Credential=|X-Amz-Signature=|X-Amz-Security-Token[=:]\s*|AWSAccessKeyId=|Authorization:\s*)[^\s,&"']*`)

// redact removes credentials from s: the values of the credential
// variables of the environment, the ones New resolved (rememberSecrets),
// and anything shaped like a signature. It is the last step of every
// message, so that no path leaks one even if a server echoes it.
func redact(s string) string {
	s = secretish.ReplaceAllString(s, "${1}[redacted]")
	for _, v := range secrets() {
		// Shorter values ("test", as local setups use) would mangle
		// ordinary words and protect nothing.
		if len(v) >= 8 {
			s = strings.ReplaceAll(s, v, "[redacted]")
		}
	}
	return s
}

// secrets are the credential strings to redact.
func secrets() []string {
	out := make([]string, 0, 6)
	for _, name := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"} {
		if v := os.Getenv(name); v != "" {
			out = append(out, v)
		}
	}
	knownMu.Lock()
	out = append(out, known...)
	knownMu.Unlock()
	return out
}

// accessHint is what to check when the server refuses access.
const accessHint = "check the credentials in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or the profile in AWS_PROFILE, and the bucket's permissions"

var accessCodes = map[string]bool{
	"AccessDenied": true, "InvalidAccessKeyId": true, "SignatureDoesNotMatch": true,
	"ExpiredToken": true, "InvalidToken": true, "TokenRefreshRequired": true,
	"Forbidden": true, "AccountProblem": true, "AllAccessDisabled": true,
	// VersityGW's answer (HTTP 404) to an access key id it does not know.
	"XAdminUserNotFound": true,
}

// fail turns an SDK error of op on url into an *Error. parent is the
// caller's context (cancelled: errs.Cancelled), timeout the OpTimeout that
// bounded the operation (exceeded: an I/O error saying so).
func fail(parent context.Context, timeout time.Duration, url, op string, err error) error {
	var own *Error
	if errors.As(err, &own) {
		return err
	}
	attempts := ""
	var ma *retry.MaxAttemptsError
	if errors.As(err, &ma) {
		attempts = " (gave up after " + plural(ma.Attempt, "attempt") + ")"
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	code, srvMsg := "", ""
	var ae smithy.APIError
	if errors.As(err, &ae) {
		code, srvMsg = ae.ErrorCode(), ae.ErrorMessage()
	}
	var e *Error
	switch {
	case parent.Err() != nil && errors.Is(err, context.Canceled):
		e = newError(url, op, errs.Cancelled, "cancelled")
	case errors.Is(err, context.DeadlineExceeded) && parent.Err() != nil:
		e = newError(url, op, errs.IO, "the caller's deadline passed%s", attempts)
		e.kinds = []error{errs.IO, syscall.ETIMEDOUT}
	case errors.Is(err, context.DeadlineExceeded):
		e = newError(url, op, errs.IO, "timed out after %v (TPDE_S3_TIMEOUT sets the limit, in seconds)%s", timeout, attempts)
		e.kinds = []error{errs.IO, syscall.ETIMEDOUT}
	case accessCodes[code]: // before 404: VersityGW answers an unknown key id 404
		e = newError(url, op, ErrAccess, "access denied (%s): %s", code, accessHint)
	case status == 404 || code == "NoSuchKey" || code == "NotFound" || code == "NoSuchBucket" || code == "NoSuchUpload":
		what := "no such key"
		switch code {
		case "NoSuchBucket":
			what = "no such bucket"
		case "NoSuchUpload":
			what = "no such multipart upload (aborted or completed meanwhile)"
		}
		e = newError(url, op, ErrNotFound, "%s", what)
	case status == 403:
		c := code
		if c == "" {
			c = "HTTP 403"
		}
		e = newError(url, op, ErrAccess, "access denied (%s): %s", c, accessHint)
	case status == 412 || code == "PreconditionFailed":
		e = newError(url, op, ErrExists, "exists (the conditional PUT found the key already there)")
	case isCredentialsError(err):
		e = newError(url, op, ErrAccess, "access: no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
	case status >= 300 || code != "":
		// (A transport error after a 2xx answer began, a body cut short,
		// carries the 2xx status: it is the transport's failure below.)
		text := fmt.Sprintf("HTTP %d", status)
		if code != "" {
			text += " " + code
		}
		if srvMsg != "" {
			text += ": " + srvMsg
		}
		e = newError(url, op, errs.IO, "%s%s", text, attempts)
	default:
		e = newError(url, op, errs.IO, "%s%s", transportText(err), attempts)
		var en syscall.Errno
		if errors.As(err, &en) {
			e.kinds = append(e.kinds, en)
		}
	}
	e.Status, e.Code, e.Cause = status, code, err
	return e
}

// isCredentialsError reports a failure to find or refresh credentials,
// which the SDK reports as text only.
func isCredentialsError(err error) bool {
	s := err.Error()
	return strings.Contains(s, "failed to retrieve credentials") ||
		strings.Contains(s, "failed to refresh cached credentials") ||
		strings.Contains(s, "no EC2 IMDS role found") ||
		strings.Contains(s, "get identity")
}

// transportText is a network failure in a few words: the innermost
// operation error ("read: connection reset by peer"), never the request's
// URL or the SDK's framing.
func transportText(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		return ue.Err.Error()
	}
	var oe *smithy.OperationError
	if errors.As(err, &oe) && oe.Err != nil {
		err = oe.Err
	}
	return err.Error()
}

// plural is "1 attempt", "3 attempts".
func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
