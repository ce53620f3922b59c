package s3

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/aws/smithy-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/errs"
)

// Messages never carry a credential, even when a server echoes one: the
// environment's, the ones the SDK resolved (from a profile or a process),
// and anything shaped like a signature are redacted.
func TestErrorsRedactCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIAENVENVENVENV1234")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "envSecretenvSecretenvSecret")
	t.Setenv("AWS_SESSION_TOKEN", "envTokenenvTokenenvToken")
	remember("AKIAFROMPROFILE12345", "profileSecretprofileSecret")
	echo := &smithy.GenericAPIError{Code: "InvalidArgument", Message: "the request by AKIAENVENVENVENV1234 " +
		"with envSecretenvSecretenvSecret and envTokenenvTokenenvToken, AKIAFROMPROFILE12345 and profileSecretprofileSecret;\n" +
		"Authorization: AWS4-HMAC-SHA256 Credential=AKIAX/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=0123abcd"}
	err := fail(context.Background(), time.Second, "s3://b/k", "GET", echo)
	require.ErrorIs(t, err, errs.IO)
	msg := err.Error()
	for _, secret := range []string{"AKIAENVENVENVENV1234", "envSecret", "envToken", "AKIAFROMPROFILE12345", "profileSecret", "AKIAX", "0123abcd"} {
		assert.NotContains(t, msg, secret)
	}
	assert.NotContains(t, msg, "\n")
	assert.Contains(t, msg, "s3://b/k: GET: HTTP 0 InvalidArgument")
}

func TestErrorKinds(t *testing.T) {
	for _, tc := range []struct {
		code string
		kind error
	}{
		{"NoSuchKey", ErrNotFound}, {"NoSuchBucket", ErrNotFound}, {"AccessDenied", ErrAccess},
		{"InvalidAccessKeyId", ErrAccess}, {"SignatureDoesNotMatch", ErrAccess}, {"ExpiredToken", ErrAccess},
		{"PreconditionFailed", ErrExists}, {"InternalError", errs.IO},
	} {
		err := fail(context.Background(), time.Second, "s3://b/k", "GET", &smithy.GenericAPIError{Code: tc.code})
		require.ErrorIs(t, err, tc.kind, tc.code)
		require.ErrorIs(t, err, errs.IO, tc.code)
		if tc.kind == ErrAccess {
			assert.Contains(t, err.Error(), "access")
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, fail(ctx, time.Second, "s3://b/k", "GET", context.Canceled), errs.Cancelled)
	require.ErrorIs(t, fail(context.Background(), time.Second, "s3://b/k", "GET", errors.New("failed to refresh cached credentials, no EC2 IMDS role found")), ErrAccess)
}
