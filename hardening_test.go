package multiconsumer

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// An empty key or value arrives empty, not nil: only a null one is nil, so
// an empty value is never mistaken for a tombstone.
func TestEmptyAndNullKeyValue(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	require.NoError(t, cluster.Produce(testCtx(t), topic, 0,
		kafka.Message{Key: []byte{}, Value: []byte{}},
		kafka.Message{Key: nil, Value: nil},
		kafka.Message{Key: []byte("k"), Value: []byte{}},
		kafka.Message{Key: []byte{}, Value: []byte("v")},
	))
	c := open(t, Config{Topic: topic})
	msgs := drain(t, c, 4, 4)

	assert.NotNil(t, msgs[0].Key, "empty key")
	assert.NotNil(t, msgs[0].Value, "empty value")
	assert.Empty(t, msgs[0].Key)
	assert.Empty(t, msgs[0].Value)
	assert.Nil(t, msgs[1].Key, "null key")
	assert.Nil(t, msgs[1].Value, "null value (tombstone)")
	assert.Equal(t, []byte("k"), msgs[2].Key)
	assert.NotNil(t, msgs[2].Value)
	assert.Empty(t, msgs[2].Value)
	assert.NotNil(t, msgs[3].Key)
	assert.Empty(t, msgs[3].Key)
	assert.Equal(t, []byte("v"), msgs[3].Value)
}

// A context that is already done gets no message, whatever the blocking
// mode, and the messages stay queued.
func TestGetMessagesDoneContextDeliversNothing(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 50)
	c := open(t, Config{Topic: topic})
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 50 }, 10*time.Second, 5*time.Millisecond)

	done, cancel := context.WithCancel(testCtx(t))
	cancel()
	for i := range 40 {
		opts := []GetOption{Block(false)}
		if i%2 == 1 {
			opts = []GetOption{Block(true), Timeout(time.Second)}
		}
		msgs, err := c.GetMessages(done, 10, opts...)
		require.ErrorIs(t, err, context.Canceled, "call %d", i)
		require.Empty(t, msgs, "call %d", i)
	}
	assert.Equal(t, int64(0), c.Offsets()[0])
	checkOrder(t, drain(t, c, 50, 50), zeros(1))
}

// Close commits only what the caller came back from: a batch it still
// holds (its handler failed, or panicked, and a deferred Close ran) is
// delivered again to the next consumer of the group.
func TestCloseDoesNotCommitHeldBatch(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 30)
	g := group(t)
	cfg := Config{Topic: topic, Group: g, AutoCommitEveryN: -1, AutoCommitEveryT: -1}
	c := open(t, cfg)
	drain(t, c, 10, 10)
	held := drain(t, c, 10, 10) // consumes the first ten; these ten are held
	require.NoError(t, c.Close())
	assert.Equal(t, map[int]int64{0: 10}, committed(t, topic, g, 1))

	c2 := open(t, cfg)
	again := drain(t, c2, 10, 10)
	assert.Equal(t, held, again, "the held batch is delivered again")
}

// The clean shutdown: the loop comes back to GetMessages with a cancelled
// context, which consumes what it had, and Close commits it.
func TestCleanShutdownCommitsEverything(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 20)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: -1, AutoCommitEveryT: -1})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	n := 0
	for {
		msgs, err := c.GetMessages(ctx, 7, BlockFor(1), Timeout(30*time.Second))
		if err != nil {
			require.ErrorIs(t, err, context.Canceled)
			assert.Empty(t, msgs)
			break
		}
		if n += len(msgs); n >= 40 {
			cancel() // handled everything: the next call ends the loop
		}
	}
	require.NoError(t, c.Close())
	assert.Equal(t, map[int]int64{0: 20, 1: 20}, committed(t, topic, g, 2))
}

// One dropped connection does not fail Commit or Close: connection errors
// are retried within the request timeout.
func TestCommitSurvivesDroppedConnection(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 20)
	g := group(t)
	failed := injectFailures(t, kmsg.OffsetCommit, 1, func(req kmsg.Request) bool { return req.(*kmsg.OffsetCommitRequest).Group == g })
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true})
	drain(t, c, 10, 10)
	require.NoError(t, c.Commit(testCtx(t)))
	assert.Equal(t, int64(1), failed.Load())
	assert.Equal(t, map[int]int64{0: 10}, committed(t, topic, g, 1))

	failed = injectFailures(t, kmsg.OffsetCommit, 1, func(req kmsg.Request) bool { return req.(*kmsg.OffsetCommitRequest).Group == g })
	c2 := open(t, Config{Topic: topic, Group: g})
	drain(t, c2, 10, 10)
	_, err := c2.GetMessages(testCtx(t), 1, Block(false)) // consumes the ten
	require.NoError(t, err)
	require.NoError(t, c2.Close())
	assert.Equal(t, int64(1), failed.Load())
	assert.Equal(t, map[int]int64{0: 20}, committed(t, topic, g, 1))
}

// hangRequests makes the embedded broker leave every request of kind key
// that matches unanswered (the client times out), and counts them.
func hangRequests(t *testing.T, key kmsg.Key, match func(kmsg.Request) bool) *atomic.Int64 {
	t.Helper()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	var hung atomic.Int64
	var off atomic.Bool
	t.Cleanup(func() { off.Store(true) })
	kf.ControlKey(key.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if off.Load() {
			kf.DropControl()
			return nil, nil, false
		}
		kf.KeepControl()
		if !match(req) {
			return nil, nil, false
		}
		hung.Add(1)
		return nil, nil, true // handled, no answer
	})
	return &hung
}

// Close takes one request timeout at most, even with a commit in flight
// that will not be answered; a second Close waits for the first and returns
// ErrClosed; Resume after Close does nothing.
func TestCloseBoundedByOneTimeout(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	hung := hangRequests(t, kmsg.OffsetCommit, func(req kmsg.Request) bool { return req.(*kmsg.OffsetCommitRequest).Group == g })
	const timeout = 2 * time.Second
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1,
		Dialer: &kafka.Dialer{Timeout: timeout}})
	drain(t, c, 5, 5)
	_, err := c.GetMessages(testCtx(t), 1, Block(false)) // consumes: the committer's commit hangs
	require.NoError(t, err)
	require.Eventually(t, func() bool { return hung.Load() >= 1 }, 10*time.Second, 5*time.Millisecond)

	start := time.Now()
	second := make(chan error, 1)
	secondAt := make(chan time.Duration, 1)
	go func() {
		// Close is running (or about to): this one waits for it.
		for !c.life.isClosed() {
			time.Sleep(time.Millisecond)
		}
		err := c.Close()
		secondAt <- time.Since(start)
		second <- err
	}()
	err = c.Close()
	took := time.Since(start)
	assert.Error(t, err, "the final commit timed out")
	assert.Less(t, took, timeout+timeout/2, "Close is bounded by one request timeout")
	assert.ErrorIs(t, <-second, ErrClosed)
	// The first Close waited for the hung commit, about one timeout: the
	// second waited with it.
	assert.Greater(t, <-secondAt, timeout/2, "the second Close returns when the first is done")

	c.Resume()
	assert.True(t, c.Stats().Paused, "Resume after Close does nothing")
}

// A Seek or Pending that overlaps Close ends with ErrClosed, and Close
// waits for it: no request, and no connection, outlives Close. (What the
// test sees is the call's result, which its goroutine sends after the call
// returned: after Close returned, possibly. A call Close neither ended nor
// waited for would end at its request timeout, 10 s, with another error.)
func TestCallsOverlappingCloseEndClosed(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic})
	hung := hangRequests(t, kmsg.ListOffsets, func(req kmsg.Request) bool {
		for _, rt := range req.(*kmsg.ListOffsetsRequest).Topics {
			if rt.Topic == topic {
				return true
			}
		}
		return false
	})
	seekErr, pendErr := make(chan error, 1), make(chan error, 1)
	before := hung.Load()
	go func() { seekErr <- c.Seek(testCtx(t), 0, SeekStart) }()
	go func() { _, err := c.Pending(testCtx(t)); pendErr <- err }()
	require.Eventually(t, func() bool { return hung.Load() >= before+2 }, 10*time.Second, 5*time.Millisecond)

	start := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(start), 5*time.Second)
	for _, call := range []struct {
		name string
		err  <-chan error
	}{{"Seek", seekErr}, {"Pending", pendErr}} {
		select {
		case err := <-call.err:
			assert.ErrorIs(t, err, ErrClosed, call.name)
		case <-time.After(30 * time.Second):
			t.Fatalf("%s still running 30s after Close returned", call.name)
		}
	}
	_, err := c.Pending(testCtx(t))
	assert.ErrorIs(t, err, ErrClosed)
}
