package multiconsumer

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
)

// a topic written by a transactional producer with small
// transactions (here one message each: every other offset is a commit
// marker) keeps Process's concurrency. The markers between the messages
// once were spans of their own in the window, and room() counted each
// against the commit metadata's bound (about 760 spans and handlers at
// these offsets): once feed held a few hundred messages, only the lowest
// incomplete one started. Counted, not timed: all n messages are handled
// at once, each handler waiting for the others. n handlers fit in the
// bound; n marker spans beside them do not (then 362 start).
func TestProcessTransactionalTopicKeepsConcurrency(t *testing.T) {
	const n = 400
	tx := cluster.Topic(t, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...), kgo.TransactionalID(kafkatest.UniqueName("tx")),
		kgo.DefaultProduceTopic(tx), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	require.NoError(t, err)
	ctx := testCtx(t)
	for i := range n {
		require.NoError(t, cl.BeginTransaction())
		require.NoError(t, cl.ProduceSync(ctx, &kgo.Record{Partition: 0, Key: fmt.Appendf(nil, "k%d", i), Value: fmt.Appendf(nil, "0-%d", i)}).FirstErr())
		require.NoError(t, cl.EndTransaction(ctx, kgo.TryCommit))
	}
	cl.Close()

	c := open(t, Config{Topic: tx, Group: group(t)})
	h := newHandled(n)
	// No handler returns before all n run: inFlight only grows.
	var inFlight atomic.Int64
	all := make(chan struct{}) // closed when the n handlers run at once
	stop := runProcess(t, c, ProcessConfig{Concurrency: n}, func(ctx context.Context, m kafka.Message) error {
		if inFlight.Add(1) == n {
			close(all)
		}
		select {
		case <-all:
		case <-ctx.Done():
			return ctx.Err()
		}
		h.add(m)
		return nil
	})
	select {
	case <-all:
	case <-time.After(30 * time.Second):
		s := c.Stats().Partitions[0]
		t.Fatalf("at most %d of %d handlers ran at once (taken up to offset %d, %d incomplete)", inFlight.Load(), n, s.Delivered, s.Incomplete)
	}
	waitDone(t, h.done, "every message handled")
	require.ErrorIs(t, stop(), context.Canceled)
}

// a message given up on (no OnGiveUp) stops Process, but its
// finish starts the next message of its key at once, before feed sees the
// error: under ByKey the key's later message is handled although the one
// before it failed, and it lands in the commit metadata, so that after a
// restart the later message is skipped while the earlier one is handled
// again: the key's order is broken, and something past the message given
// up on is committed (as a completed span).
func TestProcessGiveUpStartsNothingMoreOfItsKey(t *testing.T) {
	for round := range 10 {
		topic := cluster.Topic(t, 1)
		msgs := make([]kafka.Message, 20)
		for i := range msgs {
			msgs[i] = kafka.Message{Key: []byte("k"), Value: fmt.Appendf(nil, "0-%d", i)}
		}
		require.NoError(t, cluster.Produce(testCtx(t), topic, 0, msgs...))
		g := group(t)
		c := open(t, Config{Topic: topic, Group: g})
		var mu sync.Mutex
		var after []int64
		err := c.Process(testCtx(t), ProcessConfig{MaxAttempts: 1}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 0 {
				return errBoom
			}
			mu.Lock()
			after = append(after, m.Offset)
			mu.Unlock()
			return nil
		})
		var ge *GiveUpError
		require.ErrorAs(t, err, &ge)
		require.NoError(t, c.Close())
		res, ferr := cluster.Client().OffsetFetch(testCtx(t), &kafka.OffsetFetchRequest{GroupID: g, Topics: map[string][]int{topic: {0}}})
		require.NoError(t, ferr)
		md := ""
		for _, p := range res.Topics[topic] {
			md = p.Metadata
		}
		mu.Lock()
		if len(after) > 0 {
			t.Errorf("round %d: key k's messages %v were handled after its message 0 was given up on; committed metadata %q", round, after, md)
		}
		mu.Unlock()
	}
}

// the *GiveUpError handed to OnGiveUp says "(no OnGiveUp)": a
// dead-letter hook that logs it, or stores it in a header, records
// something false.
func TestProcessGiveUpErrorGivenToOnGiveUp(t *testing.T) {
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, 1, 1)
	c := open(t, Config{Topic: topic, Group: group(t)})
	seen := make(chan string, 1)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	go func() {
		_ = c.Process(ctx, ProcessConfig{MaxAttempts: 1, OnGiveUp: func(_ context.Context, _ kafka.Message, err error) error {
			seen <- err.Error()
			return nil
		}}, func(context.Context, kafka.Message) error { return errBoom })
	}()
	var msg string
	select {
	case msg = <-seen:
	case <-time.After(30 * time.Second):
		t.Fatal("OnGiveUp not called")
	}
	cancel()
	assert.NotContains(t, msg, "no OnGiveUp", "the error OnGiveUp gets")
}

// a message waiting out its retry backoff does not notice that its
// partition is revoked: the revoke waits for the backoff to end (up to
// MaxBackoff, 60s by default, capped only by RebalanceTimeout), then the
// handler runs once more on a partition the member no longer owns. With
// MaxAttempts 0 (the default) a poison message makes every rebalance of
// the group last about a backoff. Here the backoff and RebalanceTimeout
// are 20 s: a revoke that waited for the backoff would take them, one
// that does not takes a rebalance's round trips.
func TestProcessRevokeDoesNotWaitForABackoff(t *testing.T) {
	const n = 2
	const backoff = 20 * time.Second
	topic := cluster.Topic(t, n)
	for p := range n {
		keyed(t, topic, p, 0, 5, 5)
	}
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.RebalanceTimeout = backoff
	var mu sync.Mutex
	attempts := map[int][]time.Time{}
	a := open(t, cfg)
	stopA := runProcess(t, a, ProcessConfig{RetryBackoff: backoff}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 0 { // poison on every partition
			mu.Lock()
			attempts[m.Partition] = append(attempts[m.Partition], time.Now())
			mu.Unlock()
			return errBoom
		}
		return nil
	})
	require.Eventually(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(attempts[0]) == 1 && len(attempts[1]) == 1
	}, 10*time.Second, time.Millisecond)
	joined := time.Now()
	b := open(t, cfg)
	stopB := runProcess(t, b, ProcessConfig{RetryBackoff: backoff}, func(ctx context.Context, m kafka.Message) error { return errBoom })
	assigned := assignedTo(t, n, a, b)
	took := time.Since(joined)
	require.ErrorIs(t, stopA(), context.Canceled)
	require.ErrorIs(t, stopB(), context.Canceled)
	t.Logf("rebalance with a message in backoff took %v; assignments %v", took, assigned)
	mu.Lock()
	defer mu.Unlock()
	for _, p := range assigned[1] {
		for _, at := range attempts[p] {
			if at.After(joined) {
				t.Errorf("partition %d, revoked from a, handled by a again at +%v", p, at.Sub(joined))
			}
		}
	}
	assert.Less(t, took, backoff/2, "the revoke waited for the backoff")
}

// Close waits for Process's handlers for all of its one timeout,
// then makes the final commit with what is left of it: nothing. A single
// handler that ignores its ctx makes Close commit nothing at all, not even
// what completed long before Close (here, every message but one).
func TestProcessCloseCommitsWhatCompletedDespiteASlowHandler(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 100)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, Dialer: &kafka.Dialer{Timeout: 2 * time.Second},
		AutoCommitEveryN: 1 << 30, AutoCommitEveryT: time.Hour})
	h := newHandled(199)
	stuck := make(chan struct{})
	closed := make(chan struct{})
	release := sync.OnceFunc(func() { close(closed) })
	t.Cleanup(release)
	res := make(chan error, 1)
	go func() {
		res <- c.Process(context.Background(), ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 50 && m.Partition == 0 {
				close(stuck)
				<-closed // ignores ctx, until Close has returned
				return nil
			}
			h.add(m)
			return nil
		})
	}()
	waitDone(t, stuck, "the slow handler")
	waitDone(t, h.done, "the others handled")
	closeErr := c.Close()
	release()
	t.Logf("Close: %v", closeErr)
	<-res
	cm := committed(t, topic, g, 2)
	assert.Equal(t, map[int]int64{0: 50, 1: 100}, cm, "what completed before Close is committed")
}

// every message feed holds is released, whatever became of it
// (handled, skipped, stale after a Seek, dropped at the stop).
func TestProcessReleasesWhatItHeld(t *testing.T) {
	topic := cluster.Topic(t, 2)
	keyed(t, topic, 0, 0, 500, 3)
	keyed(t, topic, 1, 0, 500, 3)
	c := open(t, Config{Topic: topic, Group: group(t), QueueSize: 300})
	var n atomic.Int64
	stop := runProcess(t, c, ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
		switch n.Add(1) {
		case 100:
			require.NoError(t, c.Seek(ctx, 10, SeekAbsolute, 0))
		case 300:
			<-ctx.Done() // stuck until the stop, with messages waiting behind it
			return ctx.Err()
		}
		time.Sleep(100 * time.Microsecond)
		return nil
	})
	require.Eventually(t, func() bool { return n.Load() >= 300 }, 30*time.Second, time.Millisecond)
	time.Sleep(100 * time.Millisecond)
	require.ErrorIs(t, stop(), context.Canceled)
	c.q.mu.Lock()
	held := c.q.lent
	c.q.mu.Unlock()
	assert.Zero(t, held, "messages still counted in the bound after Process returned")
}
