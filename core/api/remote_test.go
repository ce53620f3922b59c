package api

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/tpde/tpde/core/s3"
	"github.com/tpde/tpde/core/s3/s3test"
)

// StoreTransfer reports a store in a bucket's requests and uploads, none
// for a local store, and answers while another call holds the session (a
// progress display polls it during an add).
func TestStoreTransferCountsABucketsTrafficWithoutWaitingForTheSession(t *testing.T) {
	before := open()
	defer noSessionsLeft(t, before)
	dir, notes := storeAndNotes(t, "epoch 3, loss 0.25\n")

	local, err := OpenStore(dir, StoreWrite, nil, 0)
	require.NoError(t, err)
	addCheckpoint(t, local, 0, notes)
	_, remote, err := StoreTransfer(local)
	require.NoError(t, err)
	assert.False(t, remote, "a local store has no bucket")
	require.NoError(t, CloseStore(local))
	_, _, err = StoreTransfer(local)
	require.Error(t, err, "a closed handle")

	srv := s3test.Start(t)
	srv.SetEnv(t)
	t.Setenv("TPDE_S3_CACHE", t.TempDir())
	cfg, err := s3.ConfigFromEnv()
	require.NoError(t, err)
	c, err := s3.New(context.Background(), cfg)
	require.NoError(t, err)
	require.NoError(t, c.CreateBucket(context.Background(), "tpde-api-transfer"))

	h, err := OpenStore("s3://tpde-api-transfer/run", StoreWrite, nil, 0)
	require.NoError(t, err)
	defer func() { require.NoError(t, CloseStore(h)) }()
	opened, remote, err := StoreTransfer(h)
	require.NoError(t, err)
	require.True(t, remote)
	assert.Positive(t, opened.Requests.Get, "opening reads the marker: %+v", opened)
	assert.Zero(t, opened.Uploads.QueuedObjects)

	addCheckpoint(t, h, 0, notes)
	after, _, err := StoreTransfer(h)
	require.NoError(t, err)
	u := after.Uploads
	assert.Positive(t, u.QueuedObjects)
	assert.Equal(t, u.QueuedObjects, u.UploadedObjects, "the commit waited for every upload: %+v", u)
	assert.Equal(t, u.QueuedBytes, u.UploadedBytes)
	assert.GreaterOrEqual(t, after.Requests.Put, u.UploadedObjects+1, "the objects and the manifest: %+v", after)
	assert.GreaterOrEqual(t, after.Requests.BytesSent, u.UploadedBytes)

	v := after.Values()
	require.Len(t, v, TransferCount)
	assert.Equal(t, uint64(after.Requests.Put), v[TransferPut])
	assert.Equal(t, uint64(after.Requests.BytesSent), v[TransferBytesSent])
	assert.Equal(t, uint64(u.UploadedBytes), v[TransferUploadedBytes])

	// Another call holding the session: the counts still come.
	o, err := stores.Get(h)
	require.NoError(t, err)
	o.Lock()
	done := make(chan error, 1)
	go func() {
		_, _, err := StoreTransfer(h)
		done <- err
	}()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(time.Minute):
		t.Error("StoreTransfer waited for the session's lock")
	}
	o.Unlock()
}
