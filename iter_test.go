package multiconsumer

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// rangeAll ranges over c.Messages(ctx) until it yields an error, and
// returns the messages and every error yielded.
func rangeAll(ctx context.Context, c *MultiConsumer, body func(m kafka.Message)) ([]kafka.Message, []error) {
	var msgs []kafka.Message
	var errs []error
	for m, err := range c.Messages(ctx) {
		if err != nil {
			errs = append(errs, err)
			continue // the iterator must end by itself after an error
		}
		msgs = append(msgs, m)
		if body != nil {
			body(m)
		}
	}
	return msgs, errs
}

// Every message once, in order, with a queue smaller than a batch; a ctx
// cancelled from the body ends the loop with one ctx error, after the
// message it handled was consumed.
func TestMessages(t *testing.T) {
	t.Parallel()
	const partitions, per = 4, 300
	topic := backlog(t, partitions, per)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, NumWorkers: 2, QueueSize: 50, AutoCommitEveryN: -1, AutoCommitEveryT: -1})

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	n := 0
	got, errs := rangeAll(ctx, c, func(m kafka.Message) {
		// Exact at every yield: what the loop took and has yet to yield
		// is not delivered (a revoke does not wait for it).
		require.Equal(t, m.Offset+1, c.Offsets()[m.Partition])
		if n++; n == partitions*per {
			cancel() // the clean end: the loop comes back for this one, then stops
		}
	})
	assert.Equal(t, []error{context.Canceled}, errs, "one error, then the loop ends")
	counts := checkOrder(t, got, zeros(partitions))
	want := map[int]int64{}
	for p := range partitions {
		assert.Equal(t, per, counts[p])
		want[p] = per
		s := c.Stats().Partitions[p]
		assert.Equal(t, int64(per), s.Consumed, "the clean end consumed partition %d", p)
	}
	require.NoError(t, c.Close())
	assert.Equal(t, want, committed(t, topic, g, partitions))
}

// A break leaves the last message yielded delivered but not consumed: Close
// does not commit it, and the next consumer gets it again. What the loop
// took and did not yield goes back to the queue, in order.
func TestMessagesBreakLeavesLastUnconsumed(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	cfg := Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1}
	c := open(t, cfg)
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 10 }, 10*time.Second, 5*time.Millisecond)

	var got []kafka.Message
	for m, err := range c.Messages(testCtx(t)) {
		require.NoError(t, err)
		got = append(got, m)
		if m.Offset == 4 {
			break
		}
	}
	checkOrder(t, got, zeros(1))
	s := c.Stats()
	assert.Equal(t, int64(5), s.Partitions[0].Delivered)
	assert.Equal(t, int64(4), s.Partitions[0].Consumed, "offset 4 is not consumed")
	assert.Equal(t, 5, s.QueueLen, "5..9 went back to the queue")
	// The count trigger (1) committed what was consumed, never offset 4.
	require.Eventually(t, func() bool { return committed(t, topic, g, 1)[0] == 4 }, 10*time.Second, 5*time.Millisecond)

	// A return from the loop body (here, from a function) is the same.
	rest := func() (last kafka.Message) {
		for m, err := range c.Messages(testCtx(t)) {
			require.NoError(t, err)
			got = append(got, m)
			if m.Offset == 6 {
				return m
			}
		}
		return kafka.Message{}
	}()
	assert.Equal(t, int64(6), rest.Offset)
	checkOrder(t, got, zeros(1))
	assert.Equal(t, int64(6), c.Stats().Partitions[0].Consumed, "the second loop came back for 4 and 5")

	require.NoError(t, c.Close())
	assert.Equal(t, map[int]int64{0: 6}, committed(t, topic, g, 1), "Close commits up to 6, not 6 itself")

	c2 := open(t, cfg)
	more := drain(t, c2, 4, 4)
	assert.Equal(t, int64(6), more[0].Offset, "6 is delivered again")
	checkOrder(t, more, map[int]int64{0: 6})
}

// A panic in the loop body ends the loop as a break does: nothing is lost,
// the loop no longer counts (Process may start).
func TestMessagesPanicInBody(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic})
	func() {
		defer func() { assert.Equal(t, "boom", recover()) }()
		for m, err := range c.Messages(testCtx(t)) {
			require.NoError(t, err)
			if m.Offset == 2 {
				panic("boom")
			}
		}
	}()
	assert.Equal(t, int64(3), c.Offsets()[0])
	msgs := drain(t, c, 7, 7)
	checkOrder(t, msgs, map[int]int64{0: 3})
	stop := runProcess(t, c, ProcessConfig{}, func(context.Context, kafka.Message) error { return nil })
	assert.ErrorIs(t, stop(), context.Canceled, "Process ran: the loop was uncounted")
}

// An idle loop (nothing to take) ends with one error when its ctx ends or
// the consumer closes; a loop started after Close yields ErrClosed at once.
func TestMessagesErrorOnce(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})

	ctx, cancel := context.WithCancel(testCtx(t))
	time.AfterFunc(50*time.Millisecond, cancel)
	got, errs := rangeAll(ctx, c, nil)
	assert.Empty(t, got)
	assert.Equal(t, []error{context.Canceled}, errs)

	// A done ctx: the error at once.
	got, errs = rangeAll(ctx, c, nil)
	assert.Empty(t, got)
	assert.Equal(t, []error{context.Canceled}, errs)

	got, errs = rangeAll(nil, c, nil) //nolint:staticcheck // a nil ctx is the point
	assert.Empty(t, got)
	assert.Equal(t, []error{errNilContext}, errs)

	// Close from another goroutine while the loop waits.
	time.AfterFunc(50*time.Millisecond, func() { _ = c.Close() })
	got, errs = rangeAll(testCtx(t), c, nil)
	assert.Empty(t, got)
	assert.Equal(t, []error{ErrClosed}, errs)

	got, errs = rangeAll(testCtx(t), c, nil)
	assert.Empty(t, got)
	assert.Equal(t, []error{ErrClosed}, errs)
}

// Close from the loop body: the next step yields ErrClosed once, and the
// message the body was handling is not committed.
func TestMessagesCloseFromBody(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g})
	got, errs := rangeAll(testCtx(t), c, func(m kafka.Message) {
		if m.Offset == 2 {
			assert.NoError(t, c.Close())
		}
	})
	assert.Len(t, got, 3)
	assert.Equal(t, []error{ErrClosed}, errs)
	assert.Equal(t, map[int]int64{0: 2}, committed(t, topic, g, 1))
}

// Process and a Messages loop exclude each other, both ways.
func TestMessagesBusyWithProcess(t *testing.T) {
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic})
	ok := func(context.Context, kafka.Message) error { return nil }

	started := make(chan struct{})
	var once sync.Once
	stop := runProcess(t, c, ProcessConfig{}, func(ctx context.Context, m kafka.Message) error {
		once.Do(func() { close(started) })
		return nil
	})
	waitDone(t, started, "Process to start")
	got, errs := rangeAll(testCtx(t), c, nil)
	assert.Empty(t, got)
	assert.Equal(t, []error{ErrBusy}, errs)
	require.ErrorIs(t, stop(), context.Canceled)

	// Process handled the backlog; new messages for the loop.
	produce(t, topic, 0, 10, 5)
	n := 0
	for _, err := range c.Messages(testCtx(t)) {
		require.NoError(t, err)
		assert.ErrorIs(t, c.Process(testCtx(t), ProcessConfig{}, ok), ErrBusy, "while the loop runs")
		if n++; n == 2 {
			break
		}
	}
	// The loop ended by break: Process may run again.
	stop = runProcess(t, c, ProcessConfig{}, ok)
	require.ErrorIs(t, stop(), context.Canceled)
}

// A Seek from the loop body (or while the loop runs) is respected: nothing
// fetched before it is yielded after it, even what the loop had taken.
func TestMessagesSeek(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 100)
	c := open(t, Config{Topic: topic})
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 200 }, 10*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var seeked bool
	byPart := map[int][]int64{}
	for m, err := range c.Messages(ctx) {
		require.NoError(t, err)
		byPart[m.Partition] = append(byPart[m.Partition], m.Offset)
		if !seeked {
			seeked = true
			require.NoError(t, c.Seek(ctx, 50, SeekAbsolute, 0))
		}
		if len(byPart[1]) == 100 && len(byPart[0]) > 0 && byPart[0][len(byPart[0])-1] == 99 {
			break
		}
	}
	// The first message may be of either partition.
	p0 := byPart[0]
	if len(p0) > 0 && p0[0] == 0 {
		p0 = p0[1:]
	}
	want := make([]int64, 0, 50)
	for o := int64(50); o < 100; o++ {
		want = append(want, o)
	}
	assert.Equal(t, want, p0, "partition 0 from the seek on, nothing from before")
	for i, o := range byPart[1] {
		require.Equal(t, int64(i), o, "partition 1 is untouched")
	}
}

// GetMessages (or another loop) called while a loop holds messages it took
// gets them first: each partition's messages reach the callers in order.
func TestMessagesReclaimedInOrder(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 100)
	c := open(t, Config{Topic: topic})
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 100 }, 10*time.Second, 5*time.Millisecond)
	var all []kafka.Message
	for m, err := range c.Messages(testCtx(t)) {
		require.NoError(t, err)
		all = append(all, m)
		switch m.Offset {
		case 10:
			msgs, err := c.GetMessages(testCtx(t), 5, Block(false))
			require.NoError(t, err)
			require.Len(t, msgs, 5)
			assert.Equal(t, int64(11), msgs[0].Offset, "the loop's next message")
			all = append(all, msgs...)
		case 20:
			// A nested loop takes the rest from the outer one.
			for m, err := range c.Messages(testCtx(t)) {
				require.NoError(t, err)
				all = append(all, m)
				if m.Offset == 30 {
					break
				}
			}
		}
		if len(all) == 100 {
			break
		}
	}
	checkOrder(t, all, zeros(1))
	assert.Len(t, all, 100)
}

// A transaction marker behind a full batch is applied when the loop asks
// for the next message, not after another message.
func TestMessagesTransactionMarker(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	produceTransaction(t, topic, messagesBatch)
	c := open(t, Config{Topic: topic})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var wg sync.WaitGroup
	var n int
	wg.Go(func() {
		for m, err := range c.Messages(ctx) {
			if err != nil {
				return
			}
			assert.Equal(t, int64(n), m.Offset)
			n++
		}
	})
	require.Eventually(t, func() bool { return c.Offsets()[0] == messagesBatch+1 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, int64(0), c.Stats().Partitions[0].Lag)
	cancel()
	wg.Wait()
	assert.Equal(t, messagesBatch, n)
}

// The count trigger commits what the loop came back from, as it goes.
func TestMessagesAutoCommitsAsItGoes(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1})
	for m, err := range c.Messages(testCtx(t)) {
		require.NoError(t, err)
		if m.Offset == 0 {
			assert.Equal(t, int64(0), c.Stats().Partitions[0].Consumed, "offset 0: delivered, not consumed")
		}
		if m.Offset == 1 {
			// Asking for 1 consumed 0, and the trigger commits it.
			require.Eventually(t, func() bool { return committed(t, topic, g, 1)[0] == 1 }, 10*time.Second, 10*time.Millisecond)
			assert.NoError(t, c.Commit(testCtx(t)), "Commit from the body")
			assert.Equal(t, map[int]int64{0: 2}, committed(t, topic, g, 1), "Commit covers the message in hand")
			break
		}
	}
}

// A member ranging over Messages gives partitions up quickly in a
// rebalance: the revoke waits for the message in the loop's hands, not for
// those the loop took and has yet to yield, and nothing of a revoked
// partition is yielded after OnRevoked.
func TestMessagesRevoke(t *testing.T) {
	t.Parallel()
	const n, per = 2, 2000
	topic := backlog(t, n, per)
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.RebalanceTimeout = 20 * time.Second // a revoke that waited for it would fail the test

	var mu sync.Mutex
	revokedAt := map[int]time.Time{}
	var late []kafka.Message
	cfgA := cfg
	cfgA.OnRevoked = func(_ context.Context, parts []int) {
		mu.Lock()
		defer mu.Unlock()
		for _, p := range parts {
			revokedAt[p] = time.Now()
		}
	}
	a := open(t, cfgA)
	assignedTo(t, n, a)

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var wg sync.WaitGroup
	yielded := make(chan struct{}, 1)
	wg.Go(func() {
		for m, err := range a.Messages(ctx) {
			if err != nil {
				return
			}
			mu.Lock()
			if _, ok := revokedAt[m.Partition]; ok {
				late = append(late, m)
			}
			mu.Unlock()
			select {
			case yielded <- struct{}{}:
			default:
			}
			time.Sleep(time.Millisecond) // a handler, slow enough to hold a batch throughout
		}
	})
	<-yielded

	start := time.Now()
	b := open(t, cfg)
	got := assignedTo(t, n, a, b)
	took := time.Since(start)
	t.Logf("rebalance took %v", took)
	assert.Less(t, took, 10*time.Second, "the revoke waited for messages the loop had not yielded")
	moved := got[1][0]
	msgs := drain(t, b, 1, 1)
	assert.Equal(t, moved, msgs[0].Partition)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	assert.Empty(t, late, "messages of a revoked partition yielded after OnRevoked")
	assert.Contains(t, revokedAt, moved)
}

// Loops in several goroutines, and GetMessages beside them, share the
// messages: each once, and each caller sees a partition's messages in
// order. (Mostly for the race detector: a take reclaims what another loop
// holds.)
func TestMessagesConcurrentLoops(t *testing.T) {
	t.Parallel()
	const partitions, per = 4, 500
	topic := backlog(t, partitions, per)
	c := open(t, Config{Topic: topic, NumWorkers: 2, QueueSize: 64})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()

	var mu sync.Mutex
	seen := map[[2]int64]int{}
	record := func(last map[int]int64, m kafka.Message) {
		if prev, ok := last[m.Partition]; ok {
			assert.Greater(t, m.Offset, prev, "partition %d out of order for one caller", m.Partition)
		}
		last[m.Partition] = m.Offset
		mu.Lock()
		defer mu.Unlock()
		seen[[2]int64{int64(m.Partition), m.Offset}]++
		if len(seen) == partitions*per {
			cancel()
		}
	}
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			last := map[int]int64{}
			for m, err := range c.Messages(ctx) {
				if err != nil {
					assert.ErrorIs(t, err, context.Canceled)
					return
				}
				record(last, m)
			}
		})
	}
	wg.Go(func() {
		last := map[int]int64{}
		for {
			msgs, err := c.GetMessages(ctx, 7, BlockFor(1), Timeout(100*time.Millisecond))
			if err != nil {
				assert.ErrorIs(t, err, context.Canceled)
				return
			}
			for _, m := range msgs {
				record(last, m)
			}
		}
	})
	wg.Wait()
	assert.Len(t, seen, partitions*per)
	for k, n := range seen {
		assert.Equal(t, 1, n, "message %v delivered %d times", k, n)
	}
}
