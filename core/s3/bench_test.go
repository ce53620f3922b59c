package s3_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/s3"
	"github.com/tpde/tpde/core/s3/s3test"
)

// BenchmarkPutGet puts a 64 MiB object (multipart, 8 MiB parts) and
// downloads it (ranged, parallel) through loopback to VersityGW: the
// client's own overhead, since loopback is far faster than a network.
func BenchmarkPutGet(b *testing.B) {
	srv := s3test.Start(b)
	srv.SetEnv(b)
	cfg, err := s3.ConfigFromEnv()
	require.NoError(b, err)
	c, err := s3.New(context.Background(), cfg)
	require.NoError(b, err)
	ctx := context.Background()
	require.NoError(b, c.CreateBucket(ctx, bucket))
	data := random(b, 64<<20)
	f, err := os.Create(filepath.Join(b.TempDir(), "f"))
	require.NoError(b, err)
	defer f.Close()
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for b.Loop() {
		require.NoError(b, c.Put(ctx, bucket, "bench", bytes.NewReader(data), int64(len(data))))
		require.NoError(b, c.GetToFile(ctx, bucket, "bench", f, int64(len(data))))
	}
}
