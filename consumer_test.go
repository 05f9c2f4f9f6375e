package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"go.uber.org/goleak"
)

func TestDeliversEveryMessageOnceInOrder(t *testing.T) {
	t.Parallel()
	const partitions, per = 8, 500
	topic := backlog(t, partitions, per)
	c := open(t, Config{Topic: topic, NumWorkers: 3, QueueSize: 100})
	assert.Equal(t, "<MultiConsumer group=, topic="+topic+", consumers=3>", c.String())

	msgs := drain(t, c, partitions*per, 64)
	counts := checkOrder(t, msgs, zeros(partitions))
	for p := range partitions {
		assert.Equal(t, per, counts[p], "partition %d", p)
		assert.Equal(t, int64(per), c.Offsets()[p], "offset of partition %d", p)
	}
	// Nothing more: a non-blocking call finds the queue empty.
	more, err := c.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	assert.Empty(t, more)
	require.NoError(t, c.Close())
}

// A call that asks for as many messages as the queue holds, or more, gets
// them: what it has taken does not block the workers that bring the rest.
func TestGetMessagesLargerThanQueue(t *testing.T) {
	t.Parallel()
	const partitions, per = 4, 500
	topic := backlog(t, partitions, per)
	c := open(t, Config{Topic: topic, NumWorkers: 2, QueueSize: 64})
	var all []kafka.Message
	for _, count := range []int{64, 200, 64, 1000, 672} {
		msgs, err := c.GetMessages(testCtx(t), count, Timeout(5*time.Second))
		require.NoError(t, err)
		require.Len(t, msgs, count, "a full call must not wait for its timeout")
		all = append(all, msgs...)
	}
	checkOrder(t, all, zeros(partitions))
}

func TestWorkersAndChunks(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 5, 0)
	for _, tc := range []struct {
		cfg  Config
		want int
	}{
		{Config{}, 1},
		{Config{NumWorkers: 3}, 3},
		{Config{NumWorkers: 9}, 5}, // never more than partitions
		{Config{PartitionsPerWorker: 2}, 3},
		{Config{PartitionsPerWorker: 2, NumWorkers: 1}, 3}, // overrides NumWorkers
		{Config{Partitions: []int{1, 3}, NumWorkers: 4}, 2},
	} {
		tc.cfg.Topic = topic
		c := open(t, tc.cfg)
		assert.Equal(t, tc.want, c.Stats().Workers, "%+v", tc.cfg)
		require.NoError(t, c.Close())
	}
	assert.Equal(t, [][]int{{0, 3}, {1, 4}, {2}}, chunks([]int{0, 1, 2, 3, 4}, 3))
}

func TestPartitionsSubset(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 4, 50)
	c := open(t, Config{Topic: topic, Partitions: []int{3, 1}, NumWorkers: 2})
	msgs := drain(t, c, 100, 30)
	counts := checkOrder(t, msgs, map[int]int64{1: 0, 3: 0})
	assert.Equal(t, map[int]int{1: 50, 3: 50}, counts)
	assert.Equal(t, map[int]int64{1: 50, 3: 50}, c.Offsets())
}

// What GetMessages returns stays the caller's: the queue gives the arrays
// it copied messages out of to the next runs, never the caller's slice,
// so slices kept until the end still hold what they held.
func TestGetMessagesKeepsWhatItReturned(t *testing.T) {
	t.Parallel()
	const partitions, per = 2, 3000
	topic := backlog(t, partitions, per)
	// Batches of 16 (QueueSize/4): a call for 16 may take one whole, most
	// others take several.
	c := open(t, Config{Topic: topic, NumWorkers: 2, QueueSize: 64})
	var kept [][]kafka.Message
	n := 0
	for i := 0; n < partitions*per; i++ {
		msgs, err := c.GetMessages(testCtx(t), []int{16, 1, 40, 16, 7, 33, 16}[i%7], BlockFor(1), Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "no message within 30s after %d", n)
		kept = append(kept, msgs)
		n += len(msgs)
	}
	var all []kafka.Message
	for _, msgs := range kept {
		all = append(all, msgs...)
	}
	counts := checkOrder(t, all, zeros(partitions))
	for p := range partitions {
		assert.Equal(t, per, counts[p], "partition %d", p)
	}
}

// oneQueuedPartition returns a ledger with partition 0 started (and its
// epoch) and a queue of 64 for it, for tests of the delivery without a
// broker.
func oneQueuedPartition() (*ledger, uint64, *queue) {
	led := newLedger("t", 0, 0, time.Now())
	led.start(0, 0, noOffset, "")
	led.mu.Lock()
	epoch := led.b.parts[0].epoch
	led.mu.Unlock()
	q := newQueue(64)
	q.setPartitions(1)
	return led, epoch, q
}

// TestGetMessagesKeepsMarkersWhenFailed: once the consumer failed for good,
// GetMessages returns the error; a marker it took without a message (a
// batch where the log skips ahead, a transaction's marker) goes back to
// the queue rather than being lost, as it does when ctx ends.
func TestGetMessagesKeepsMarkersWhenFailed(t *testing.T) {
	led, epoch, q := oneQueuedPartition()
	life := newLifecycle()
	d := newDelivery(q, led, alwaysAlive, life, func() {})
	require.NoError(t, q.put(testCtx(t), batch{partition: 0, epoch: epoch, advance: 5}, newEvent(true)))
	boom := errors.New("boom")
	life.fail(boom)

	msgs, err := d.get(testCtx(t), 10, BlockFor(1))
	require.ErrorIs(t, err, boom)
	assert.Empty(t, msgs)
	bs := q.lend()
	require.Len(t, bs, 1, "the marker is back in the queue")
	assert.Equal(t, int64(5), bs[0].advance)

	q.unshift(bs) // and without blocking
	msgs, err = d.get(testCtx(t), 10, Block(false))
	require.ErrorIs(t, err, boom)
	assert.Empty(t, msgs)
	require.Len(t, q.lend(), 1, "the marker is back in the queue")
}

// The give-back rule, without a broker: the messages of a whole array (a
// backlog's run) are copied into the caller's slice, of their size, and
// the array goes back for the next runs; a trickle's batch, in an array
// its own size, is handed over as it is; a batch split between two calls
// is not given back.
func TestGetMessagesGivesBackCopiedArrays(t *testing.T) {
	led, epoch, q := oneQueuedPartition()
	size := q.arrays.size
	d := newDelivery(q, led, alwaysAlive, newLifecycle(), func() {})
	open := newEvent(true)
	next := int64(0)
	put := func(k int, whole bool) []kafka.Message { // a run, as an unpacker decodes it
		var msgs []kafka.Message
		if whole {
			if msgs = q.arrays.get(); msgs == nil {
				msgs = make([]kafka.Message, 0, size)
			}
		} else {
			msgs = make([]kafka.Message, 0, k)
		}
		for range k {
			msgs = append(msgs, kafka.Message{Topic: "t", Offset: next, Value: fmt.Appendf(nil, "0-%d", next)})
			next++
		}
		require.NoError(t, q.put(testCtx(t), batch{partition: 0, epoch: epoch, msgs: msgs, whole: whole}, open))
		return msgs
	}
	free := func() int {
		q.arrays.mu.Lock()
		defer q.arrays.mu.Unlock()
		return len(q.arrays.free)
	}
	var all []kafka.Message
	get := func(count int) []kafka.Message {
		msgs, err := d.get(testCtx(t), count, BlockFor(1))
		require.NoError(t, err)
		all = append(all, msgs...)
		return msgs
	}

	trickle := put(3, false)
	got := get(size)
	assert.True(t, sameArray(got, trickle), "a trickle's batch is handed over as it is")
	assert.Zero(t, free(), "and is the caller's")

	first := put(size-2, true)
	got = get(size)
	assert.False(t, sameArray(got, first), "a whole array's messages are copied")
	assert.Equal(t, size-2, cap(got), "into a slice of their size")
	assert.Equal(t, 1, free(), "and the array goes back")
	assert.Equal(t, make([]kafka.Message, size), first[:size], "cleared")

	second := put(size, true)
	assert.True(t, sameArray(second, first), "the next run reuses it")
	third := put(size, true)
	get(2 * size)
	assert.Equal(t, 2, free(), "both arrays copied out of go back")
	assert.True(t, sameArray(put(size, true), third), "last in, first out")

	get(size / 2) // a split: half a batch
	assert.Equal(t, 1, free(), "a batch split is not given back")
	get(size)
	assert.Equal(t, 1, free(), "nor its rest")

	checkOrder(t, all, zeros(1))
	assert.Len(t, all, int(next))
}

// sameArray reports whether a and b start at the same element of one array.
func sameArray(a, b []kafka.Message) bool {
	return cap(a) > 0 && cap(b) > 0 && &a[:1][0] == &b[:1][0]
}

// Iter delivers every message once, in order. Its batches (12 messages
// at QueueSize 50) are whole arrays, given back once sent: the messages
// kept to the end hold what they held.
func TestIter(t *testing.T) {
	t.Parallel()
	const partitions, per = 4, 300
	topic := backlog(t, partitions, per)
	c := open(t, Config{Topic: topic, NumWorkers: 2, QueueSize: 50})

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var got []kafka.Message
	for m := range c.Iter(ctx) {
		got = append(got, m)
		if len(got) == partitions*per {
			cancel()
		}
	}
	counts := checkOrder(t, got, zeros(partitions))
	for p := range partitions {
		assert.Equal(t, per, counts[p])
	}
}

// After Seek returns, Iter hands over no message from before the seek, not
// even the one it was blocked sending.
func TestIterSeek(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 100)
	c := open(t, Config{Topic: topic})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	ch := c.Iter(ctx)
	assert.Equal(t, int64(0), (<-ch).Offset)
	require.NoError(t, c.Seek(ctx, 50, SeekAbsolute))
	assert.Equal(t, int64(50), (<-ch).Offset)
	assert.Equal(t, int64(51), (<-ch).Offset)
}

// Iter waits for messages however long it takes, and a message it took
// but that was never received is delivered by the next call.
func TestIterWaitsAndKeepsUnreceived(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic, Group: group(t), ManualCommit: true})

	ctx, cancel := context.WithCancel(testCtx(t))
	ch := c.Iter(ctx)
	produce(t, topic, 0, 0, 5) // after Iter started: it must wait, not end
	m := <-ch
	assert.Equal(t, int64(0), m.Offset)
	// Stop receiving: messages 1..4 were taken for the channel, not received,
	// and go back to the queue. (A receive racing with cancel may still get
	// one, as with any channel fed until a context ends: it is delivered.)
	cancel()
	var late []kafka.Message
	for m := range ch {
		late = append(late, m)
	}
	next := int64(1 + len(late))
	assert.Equal(t, next, c.Offsets()[0])
	assert.Equal(t, 4-len(late), c.Stats().QueueLen)

	msgs, err := c.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	require.Len(t, msgs, 4-len(late))
	if len(msgs) > 0 {
		assert.Equal(t, next, msgs[0].Offset)
	}
}

// A message is consumed, and may be committed, only once the caller comes
// back for more: commits never cover a message the caller still holds.
func TestCommitsNeverCoverHeldMessages(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 20)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1})

	first := drain(t, c, 5, 5)
	assert.Equal(t, int64(4), first[4].Offset)
	// The first five are delivered, not consumed: the count trigger (1) must
	// not commit them. Stats.Consumed says what commits may cover.
	assert.Equal(t, int64(0), c.Stats().Partitions[0].Consumed)
	assert.Empty(t, committed(t, topic, g, 1))

	drain(t, c, 5, 5) // coming back consumes the first five and commits them
	require.Eventually(t, func() bool { return c.Stats().Partitions[0].Committed == 5 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, map[int]int64{0: 5}, committed(t, topic, g, 1))
	assert.Equal(t, int64(10), c.Offsets()[0])

	// Close commits only what the caller came back from: the last five
	// are held.
	require.NoError(t, c.Close())
	assert.Equal(t, map[int]int64{0: 5}, committed(t, topic, g, 1))
}

func TestIterCommitsOnlyReceivedAndCameBack(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	ch := c.Iter(ctx)
	<-ch // offset 0: delivered, not consumed
	assert.Equal(t, int64(0), c.Stats().Partitions[0].Consumed)
	<-ch // offset 1: receiving it consumes 0, and the count trigger commits 1
	require.Eventually(t, func() bool { return committed(t, topic, g, 1)[0] == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, int64(2), c.Offsets()[0])
}

// Close commits what was consumed; a second consumer of the group resumes
// exactly after it: nothing lost, nothing twice, although the first had
// fetched more than it delivered.
func TestCommitOnCloseAndResume(t *testing.T) {
	t.Parallel()
	const partitions, per = 4, 250
	topic := backlog(t, partitions, per)
	g := group(t)
	cfg := Config{Topic: topic, Group: g, NumWorkers: 2, AutoCommitEveryN: -1, AutoCommitEveryT: -1}

	c1 := open(t, cfg)
	first := drain(t, c1, 400, 100)
	require.Eventually(t, func() bool { return c1.Stats().QueueLen > 0 }, 10*time.Second, 5*time.Millisecond,
		"the workers should have fetched ahead")
	done, cancel := context.WithCancel(testCtx(t))
	cancel()
	_, err := c1.GetMessages(done, 1) // the clean end: comes back, consumes all
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, c1.Close())
	assert.ErrorIs(t, c1.Close(), ErrClosed)
	want := c1.Offsets()
	assert.Equal(t, want, committed(t, topic, g, partitions))

	c2 := open(t, cfg)
	assert.Equal(t, want, c2.Offsets())
	rest := drain(t, c2, partitions*per-400, 100)
	counts := checkOrder(t, append(first, rest...), zeros(partitions))
	for p := range partitions {
		assert.Equal(t, per, counts[p])
	}
}

func TestManualCommit(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true, AutoCommitEveryN: 1})
	drain(t, c, 20, 20)
	_, err := c.GetMessages(testCtx(t), 1, Block(false)) // comes back: consumed, but manual
	require.NoError(t, err)
	assert.Empty(t, committed(t, topic, g, 2))

	require.NoError(t, c.Commit(testCtx(t), 1))
	assert.Equal(t, map[int]int64{1: 10}, committed(t, topic, g, 2))
	require.NoError(t, c.Commit(testCtx(t)))
	assert.Equal(t, map[int]int64{0: 10, 1: 10}, committed(t, topic, g, 2))

	var perr *PartitionError
	require.ErrorAs(t, c.Commit(testCtx(t), 7), &perr)
	assert.Equal(t, 7, perr.Partition)
	assert.ErrorIs(t, perr, ErrUnknownPartition)
}

func TestManualCommitCloseDoesNotCommit(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true})
	drain(t, c, 10, 10)
	require.NoError(t, c.Close())
	assert.Empty(t, committed(t, topic, g, 1))
}

func TestAutoCommitEveryT(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: -1, AutoCommitEveryT: 50 * time.Millisecond})
	drain(t, c, 10, 10)
	_, err := c.GetMessages(testCtx(t), 1, Block(false))
	require.NoError(t, err)
	require.Eventually(t, func() bool { return committed(t, topic, g, 1)[0] == 10 }, 10*time.Second, 10*time.Millisecond)
}

func TestAutoCommitEveryN(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 30)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 10, AutoCommitEveryT: -1})
	drain(t, c, 9, 9)
	drain(t, c, 1, 1) // 9 consumed: below the trigger
	assert.Equal(t, int64(-1), c.Stats().Partitions[0].Committed)
	drain(t, c, 1, 1) // 10 consumed: commits
	require.Eventually(t, func() bool { return committed(t, topic, g, 1)[0] == 10 }, 10*time.Second, 10*time.Millisecond)
}

func TestCommitWithoutGroup(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 1)
	c := open(t, Config{Topic: topic})
	assert.ErrorIs(t, c.Commit(testCtx(t)), ErrNoGroup)
}

func TestGetMessagesBlocking(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 5)
	c := open(t, Config{Topic: topic})
	ctx := testCtx(t)
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 5 }, 10*time.Second, 5*time.Millisecond)

	// Block(true) waits for count, then returns what it has at the timeout.
	start := time.Now()
	msgs, err := c.GetMessages(ctx, 8, Timeout(200*time.Millisecond))
	require.NoError(t, err)
	assert.Len(t, msgs, 5)
	assert.GreaterOrEqual(t, time.Since(start), 200*time.Millisecond)

	// Block(false) takes what is queued, even nothing.
	msgs, err = c.GetMessages(ctx, 8, Block(false))
	require.NoError(t, err)
	assert.Empty(t, msgs)

	// BlockFor(n) returns once n arrived, taking up to count.
	done := make(chan []kafka.Message)
	go func() {
		msgs, err := c.GetMessages(ctx, 10, BlockFor(3), Timeout(0))
		assert.NoError(t, err)
		done <- msgs
	}()
	produce(t, topic, 0, 5, 2)
	select {
	case <-done:
		t.Fatal("BlockFor(3) returned with 2 messages produced")
	case <-time.After(300 * time.Millisecond): // the absence of an event: a bounded wait
	}
	produce(t, topic, 0, 7, 4)
	msgs = <-done
	assert.GreaterOrEqual(t, len(msgs), 3)
	assert.Equal(t, int64(5), msgs[0].Offset)

	// count 0 returns nothing; a negative count is an error.
	msgs, err = c.GetMessages(ctx, 0)
	assert.NoError(t, err)
	assert.Empty(t, msgs)
	_, err = c.GetMessages(ctx, -1)
	assert.ErrorContains(t, err, "negative count")
	var aerr *ArgError
	assert.ErrorAs(t, err, &aerr)
	_, err = c.GetMessages(ctx, 1, Timeout(-time.Second))
	assert.ErrorContains(t, err, "negative timeout")
}

// Timeout and Block(false) bound the wait for a delivery in progress too:
// a call blocked without a timeout, or an idle Iter, does not hold others.
func TestGetMessagesWaitsBoundedBehindOtherCalls(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	_ = c.Iter(ctx) // idle: nothing to send
	blocked := make(chan error, 1)
	go func() {
		_, err := c.GetMessages(ctx, 10, Timeout(0))
		blocked <- err
	}()

	msgs, err := c.GetMessages(testCtx(t), 10, Timeout(200*time.Millisecond))
	assert.NoError(t, err, "a timeout is not an error")
	assert.Empty(t, msgs)
	msgs, err = c.GetMessages(testCtx(t), 10, Block(false))
	assert.NoError(t, err)
	assert.Empty(t, msgs)
	cancel()
	assert.ErrorIs(t, <-blocked, context.Canceled)
}

// A call that ends with ctx's error delivers nothing: what it had taken is
// kept for the next call.
func TestGetMessagesCancelledKeepsMessages(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 3)
	c := open(t, Config{Topic: topic})
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 3 }, 10*time.Second, 5*time.Millisecond)

	ctx, cancel := context.WithTimeout(testCtx(t), 100*time.Millisecond)
	defer cancel()
	msgs, err := c.GetMessages(ctx, 10, Timeout(0)) // takes 3, waits for 10
	require.ErrorIs(t, err, context.DeadlineExceeded)
	assert.Nil(t, msgs)
	assert.Equal(t, int64(0), c.Offsets()[0])

	msgs, err = c.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	require.Len(t, msgs, 3)
	checkOrder(t, msgs, zeros(1))
}

func TestPauseResume(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 10)
	c := open(t, Config{Topic: topic, NumWorkers: 2})
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 20 }, 10*time.Second, 5*time.Millisecond)

	c.Pause()
	assert.True(t, c.Stats().Paused)
	produce(t, topic, 0, 10, 10)
	produce(t, topic, 1, 10, 10)
	// Queued messages are still delivered...
	drain(t, c, 20, 20)
	// ...and nothing new enters the queue while paused. Absence has no
	// event to wait on: give the workers several fetch rounds.
	time.Sleep(3 * fetchMaxWait)
	assert.Equal(t, 0, c.Stats().QueueLen)
	msgs, err := c.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	assert.Empty(t, msgs)

	c.Resume()
	assert.False(t, c.Stats().Paused)
	got := drain(t, c, 20, 20)
	assert.Equal(t, map[int]int{0: 10, 1: 10}, checkOrder(t, got, map[int]int64{0: 10, 1: 10}))
}

func TestPending(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 4, 100)
	c := open(t, Config{Topic: topic, NumWorkers: 2})
	n, err := c.Pending(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, int64(400), n)

	drain(t, c, 150, 50)
	n, err = c.Pending(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, int64(250), n)

	one, err := c.Pending(testCtx(t), 2)
	require.NoError(t, err)
	assert.Equal(t, 100-c.Offsets()[2], one)

	_, err = c.Pending(testCtx(t), 9)
	assert.ErrorIs(t, err, ErrUnknownPartition)
}

func TestSeek(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 100)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true, QueueSize: 40})
	ctx := testCtx(t)
	next := func(p int) int64 {
		t.Helper()
		for {
			msgs, err := c.GetMessages(ctx, 1, Timeout(30*time.Second))
			require.NoError(t, err)
			require.Len(t, msgs, 1)
			if msgs[0].Partition == p {
				return msgs[0].Offset
			}
		}
	}
	drain(t, c, 10, 10)
	require.Eventually(t, func() bool { return c.Stats().QueueLen == 40 }, 10*time.Second, 5*time.Millisecond)

	// Absolute, on one partition: queued messages of partition 0 are dropped.
	require.NoError(t, c.Seek(ctx, 50, SeekAbsolute, 0))
	assert.Equal(t, int64(50), c.Offsets()[0])
	assert.Equal(t, int64(50), next(0))

	// From the start, the same offset for each partition (not divided).
	require.NoError(t, c.Seek(ctx, 7, SeekStart))
	assert.Equal(t, map[int]int64{0: 7, 1: 7}, c.Offsets())
	assert.Equal(t, int64(7), next(1))

	// From the current position.
	cur := c.Offsets()[1]
	require.NoError(t, c.Seek(ctx, -3, SeekCurrent, 1))
	assert.Equal(t, cur-3, next(1))

	// From the end.
	require.NoError(t, c.Seek(ctx, -1, SeekEnd, 0))
	assert.Equal(t, int64(99), next(0))

	// Outside the log: an error, and nothing moves.
	before := c.Offsets()
	var rerr *OffsetRangeError
	require.ErrorAs(t, c.Seek(ctx, 101, SeekAbsolute), &rerr)
	assert.Equal(t, OffsetRangeError{Topic: topic, Partition: 0, Offset: 101, First: 0, Last: 100}, *rerr)
	assert.ErrorIs(t, rerr, kafka.OffsetOutOfRange)
	require.ErrorAs(t, c.Seek(ctx, -1, SeekStart, 1), &rerr)
	assert.Equal(t, before, c.Offsets())
	var aerr *ArgError
	require.ErrorAs(t, c.Seek(ctx, 0, Whence(7)), &aerr)
	assert.Equal(t, "whence", aerr.Arg)
	assert.ErrorContains(t, aerr, "invalid whence")
	assert.ErrorIs(t, c.Seek(ctx, 0, SeekStart, 5), ErrUnknownPartition)

	// The position a seek sets is what the next commit stores.
	require.NoError(t, c.Seek(ctx, 20, SeekAbsolute))
	require.NoError(t, c.Commit(ctx))
	assert.Equal(t, map[int]int64{0: 20, 1: 20}, committed(t, topic, g, 2))
}

func TestStartOffsetLast(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic, StartOffset: kafka.LastOffset})
	assert.Equal(t, map[int]int64{0: 10}, c.Offsets())
	produce(t, topic, 0, 10, 1)
	msgs := drain(t, c, 1, 1)
	assert.Equal(t, int64(10), msgs[0].Offset)
}

// A committed offset the log no longer has (here: beyond its end) is reset
// by StartOffset, not fatal.
func TestCommittedOffsetOutOfRange(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 10)
	g := group(t)
	_, err := cluster.Client().OffsetCommit(testCtx(t), &kafka.OffsetCommitRequest{
		GroupID: g, GenerationID: -1,
		Topics: map[string][]kafka.OffsetCommit{topic: {{Partition: 0, Offset: 1000}, {Partition: 1, Offset: 4}}},
	})
	require.NoError(t, err)
	c := open(t, Config{Topic: topic, Group: g})
	assert.Equal(t, map[int]int64{0: 0, 1: 4}, c.Offsets())
}

// An offset that retention deletes before the consumer reads it is reset by
// StartOffset, logged, not fatal.
func TestOffsetOutOfRangeWhileConsuming(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic})
	drain(t, c, 10, 10)
	c.Pause()
	// Let the worker's last long poll (empty: nothing new yet) come back,
	// so that its next fetch starts after the deletion. There is no event
	// for "not fetching": wait several fetch rounds.
	time.Sleep(4 * fetchMaxWait)
	produce(t, topic, 0, 10, 90)
	require.NoError(t, cluster.DeleteRecords(testCtx(t), topic, 0, 50))
	c.Resume()

	got := drain(t, c, 50, 50)
	assert.Equal(t, int64(50), got[0].Offset, "restarted at the log's new start")
	checkOrder(t, got, map[int]int64{0: 50})
	assert.Equal(t, int64(100), c.Offsets()[0])
}

// A reset to the end of the log (StartOffset LastOffset) shows in Offsets
// and Pending before any new message arrives.
func TestOffsetOutOfRangeResetToLast(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic, StartOffset: kafka.LastOffset, Partitions: []int{0}})
	require.NoError(t, c.Seek(testCtx(t), 0, SeekStart))
	c.Pause()
	time.Sleep(4 * fetchMaxWait) // as in TestOffsetOutOfRangeWhileConsuming
	produce(t, topic, 0, 10, 90)
	require.NoError(t, cluster.DeleteRecords(testCtx(t), topic, 0, 50))
	_, err := c.GetMessages(testCtx(t), 100, Block(false)) // drop what was fetched before
	require.NoError(t, err)
	c.Resume()
	require.Eventually(t, func() bool {
		_, err := c.GetMessages(testCtx(t), 100, Block(false))
		require.NoError(t, err)
		return c.Offsets()[0] == 100
	}, 10*time.Second, 10*time.Millisecond)
	pending, err := c.Pending(testCtx(t))
	require.NoError(t, err)
	assert.Equal(t, int64(0), pending)
}

// A transaction marker takes an offset but is no message: the worker reads
// past it instead of fetching it again and again, and the next message
// after it arrives.
func TestTransactionMarkers(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	ctx := testCtx(t)
	produceTransaction(t, topic, 3) // the marker: offset 3

	var fetches atomic.Int64
	if kf := cluster.Kfake(); kf != nil {
		kf.ControlKey(kmsg.Fetch.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
			kf.KeepControl()
			if fetchesTopic(req.(*kmsg.FetchRequest), topic) {
				fetches.Add(1)
			}
			return nil, nil, false
		})
		t.Cleanup(func() { kf.DropControl() })
	}
	c := open(t, Config{Topic: topic})
	got := drain(t, c, 3, 3)
	checkOrder(t, got, zeros(1))
	// The marker is skipped in the bookkeeping too, once the caller comes
	// back: nothing pending, no lag.
	require.Eventually(t, func() bool {
		_, err := c.GetMessages(ctx, 10, Block(false))
		require.NoError(t, err)
		return c.Offsets()[0] == 4
	}, 10*time.Second, 10*time.Millisecond)
	pending, err := c.Pending(ctx)
	require.NoError(t, err)
	assert.Equal(t, int64(0), pending)
	assert.Equal(t, int64(0), c.Stats().Partitions[0].Lag)

	if cluster.Kfake() != nil {
		// Idle at the marker: long polls of 250ms, not a hot loop.
		before := fetches.Load()
		time.Sleep(time.Second)
		assert.Less(t, fetches.Load()-before, int64(20), "fetches in an idle second")
	}
	produce(t, topic, 0, 4, 1)
	got = drain(t, c, 1, 1)
	assert.Equal(t, "0-4", string(got[0].Value))
	// Kafka writes the marker after EndTransaction returns: the message may
	// land before it (offset 3) or after it (offset 4).
	assert.Contains(t, []int64{3, 4}, got[0].Offset)
}

// Compressed batches arrive whole, with keys, values and headers; a seek
// into the middle of one skips the records before the target.
func TestCompressedBatches(t *testing.T) {
	t.Parallel()
	codecs := []kafka.Compression{kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd}
	topic := backlog(t, len(codecs), 0)
	for p, codec := range codecs {
		msgs := make([]kafka.Message, 100)
		for i := range msgs {
			msgs[i] = kafka.Message{
				Key:     fmt.Appendf(nil, "k%d", i),
				Value:   fmt.Appendf(nil, "%d-%d", p, i),
				Headers: []kafka.Header{{Key: "codec", Value: []byte(codec.String())}},
			}
		}
		require.NoError(t, cluster.ProduceCompressed(testCtx(t), topic, p, codec, msgs...))
	}
	c := open(t, Config{Topic: topic, NumWorkers: 2})
	got := drain(t, c, 4*100, 64)
	checkOrder(t, got, zeros(len(codecs)))
	for _, m := range got {
		assert.Equal(t, fmt.Sprintf("k%d", m.Offset), string(m.Key))
		require.Len(t, m.Headers, 1)
		assert.Equal(t, codecs[m.Partition].String(), string(m.Headers[0].Value))
	}

	require.NoError(t, c.Seek(testCtx(t), 50, SeekAbsolute))
	got = drain(t, c, 4*50, 64)
	checkOrder(t, got, map[int]int64{0: 50, 1: 50, 2: 50, 3: 50})
}

// An aborted transaction's records are delivered, as kafka-go's Reader
// (read uncommitted, its default) delivers them, and its abort marker is
// not: the messages after it follow.
func TestAbortedTransaction(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	endTransaction(t, topic, 3, kgo.TryAbort) // offsets 0-2, the marker at 3
	c := open(t, Config{Topic: topic})
	got := drain(t, c, 3, 3)
	for i, m := range got {
		assert.Equal(t, int64(i), m.Offset)
		assert.Equal(t, fmt.Sprintf("0-%d", i), string(m.Value))
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, 0, kafka.Message{Value: []byte("after")}))
	got = drain(t, c, 1, 1)
	assert.Equal(t, "after", string(got[0].Value))
	// Kafka writes the marker after EndTransaction returns: the message may
	// land before it (offset 3) or after it (offset 4).
	assert.Contains(t, []int64{3, 4}, got[0].Offset)
}

// A transaction marker right behind a full Iter batch, or alone in a fetch,
// is applied without waiting for another message.
func TestIterTransactionMarker(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	ctx := testCtx(t)
	produceTransaction(t, topic, iterBatch)

	c := open(t, Config{Topic: topic})
	ch := c.Iter(ctx)
	for i := range iterBatch {
		assert.Equal(t, int64(i), (<-ch).Offset)
	}
	require.Eventually(t, func() bool { return c.Offsets()[0] == iterBatch+1 }, 10*time.Second, 5*time.Millisecond)
	assert.Equal(t, int64(0), c.Stats().Partitions[0].Lag)
}

func TestStats(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true, QueueSize: 64})
	drain(t, c, 20, 20)
	require.NoError(t, c.Commit(testCtx(t), 0))
	require.Eventually(t, func() bool { return c.Stats().Partitions[1].HighWatermark == 10 }, 10*time.Second, 5*time.Millisecond)
	s := c.Stats()
	assert.Equal(t, 1, s.Workers)
	assert.Equal(t, 64, s.QueueSize)
	assert.Equal(t, 0, s.QueueLen)
	assert.Equal(t, PartitionStats{Delivered: 10, Consumed: 10, Committed: 10, HighWatermark: 10, Lag: 0, Messages: 10, Bytes: 60}, s.Partitions[0])
	assert.Equal(t, PartitionStats{Delivered: 10, Consumed: 10, Committed: -1, HighWatermark: 10, Lag: 0, Messages: 10, Bytes: 60}, s.Partitions[1])
	assert.Equal(t, topic, s.Topic)
	assert.Equal(t, g, s.Group)
	assert.False(t, s.JoinGroup)
	assert.EqualValues(t, 1, s.Commits)
	assert.False(t, s.LastCommit.IsZero())
	assert.False(t, s.Time.Before(s.LastCommit))
	assert.EqualValues(t, 20, s.Messages)
	assert.EqualValues(t, 120, s.Bytes)
	// At least a response a partition; each record batch is bigger than
	// its records' keys and values.
	assert.GreaterOrEqual(t, s.Fetches, int64(1))
	assert.Greater(t, s.FetchedBytes, s.Bytes)
	assert.EqualValues(t, -1, s.Generation, "outside group mode")
	assert.False(t, s.Closed)
	require.NoError(t, c.Close())
	assert.True(t, c.Stats().Closed)
}

func TestBadConfig(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 0)
	brokers := cluster.Brokers()
	for _, tc := range []struct {
		name  string
		cfg   Config
		field string
	}{
		{"no brokers", Config{Topic: topic}, "Brokers"},
		{"empty broker", Config{Brokers: []string{""}, Topic: topic}, "Brokers"},
		{"no topic", Config{Brokers: brokers}, "Topic"},
		{"negative partition", Config{Brokers: brokers, Topic: topic, Partitions: []int{-1}}, "Partitions"},
		{"duplicate partition", Config{Brokers: brokers, Topic: topic, Partitions: []int{1, 1}}, "Partitions"},
		{"empty partitions", Config{Brokers: brokers, Topic: topic, Partitions: []int{}}, "Partitions"},
		{"negative workers", Config{Brokers: brokers, Topic: topic, NumWorkers: -1}, "NumWorkers"},
		{"negative per worker", Config{Brokers: brokers, Topic: topic, PartitionsPerWorker: -2}, "PartitionsPerWorker"},
		{"negative queue", Config{Brokers: brokers, Topic: topic, QueueSize: -5}, "QueueSize"},
		{"negative backoff", Config{Brokers: brokers, Topic: topic, MaxBackoff: -time.Second}, "MaxBackoff"},
		{"bad start offset", Config{Brokers: brokers, Topic: topic, StartOffset: 42}, "StartOffset"},
		{"negative dial timeout", Config{Brokers: brokers, Topic: topic, Dialer: &kafka.Dialer{Timeout: -1}}, "Dialer.Timeout"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(testCtx(t), tc.cfg)
			assert.Nil(t, c)
			var cerr *ConfigError
			require.ErrorAs(t, err, &cerr)
			assert.Equal(t, tc.field, cerr.Field)
			assert.Contains(t, err.Error(), "Config."+tc.field)
		})
	}
}

func TestBadCluster(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 0)
	brokers := cluster.Brokers()

	_, err := New(testCtx(t), Config{Brokers: brokers, Topic: topic + "-missing"})
	assert.ErrorIs(t, err, kafka.UnknownTopicOrPartition)
	assert.ErrorContains(t, err, topic+"-missing")

	_, err = New(testCtx(t), Config{Brokers: brokers, Topic: topic, Partitions: []int{0, 2, 5}})
	assert.ErrorIs(t, err, ErrUnknownPartition)
	assert.ErrorContains(t, err, "[2 5]")

	// Nothing listens: refused at once.
	free := freeAddr(t)
	_, err = New(testCtx(t), Config{Brokers: []string{free}, Topic: topic})
	assert.ErrorContains(t, err, free)

	// A broker that accepts connections and never answers: bounded by the
	// dialer's timeout, not a hang.
	silent := silentBroker(t)
	start := time.Now()
	_, err = New(testCtx(t), Config{Brokers: []string{silent}, Topic: topic, Dialer: &kafka.Dialer{Timeout: 300 * time.Millisecond}})
	assert.Error(t, err)
	assert.Less(t, time.Since(start), 10*time.Second)

	// ... or by ctx.
	ctx, cancel := context.WithTimeout(testCtx(t), 200*time.Millisecond)
	defer cancel()
	_, err = New(ctx, Config{Brokers: []string{silent}, Topic: topic})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// A nil context or option is an error, not a panic.
func TestNilArguments(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 1)
	_, err := New(nil, Config{Brokers: cluster.Brokers(), Topic: topic}) //nolint:staticcheck // the point of the test
	assert.ErrorContains(t, err, "nil context")
	c := open(t, Config{Topic: topic, Group: group(t)})
	_, err = c.GetMessages(nil, 1) //nolint:staticcheck
	assert.ErrorContains(t, err, "nil context")
	_, err = c.Pending(nil) //nolint:staticcheck
	assert.ErrorContains(t, err, "nil context")
	assert.ErrorContains(t, c.Seek(nil, 0, SeekStart), "nil context") //nolint:staticcheck
	assert.ErrorContains(t, c.Commit(nil), "nil context")             //nolint:staticcheck
	_, ok := <-c.Iter(nil)                                            //nolint:staticcheck
	assert.False(t, ok)
	msgs, err := c.GetMessages(testCtx(t), 1, nil, Timeout(10*time.Second))
	require.NoError(t, err)
	assert.Len(t, msgs, 1)
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	return addr
}

// silentBroker accepts connections and never answers.
func silentBroker(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Go(func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, conn)
			mu.Unlock()
		}
	})
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	return l.Addr().String()
}

// Close from the goroutine that receives from Iter, while the Iter goroutine
// is blocked sending the next message, returns.
func TestCloseWhileIterSends(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 100)
	c := open(t, Config{Topic: topic})
	ch := c.Iter(testCtx(t))
	// Let the Iter goroutine block on its first send (no event tells), so
	// that the receive below hands it over and Close races its bookkeeping.
	time.Sleep(100 * time.Millisecond)
	<-ch
	closed := make(chan error, 1)
	go func() { closed <- c.Close() }()
	select {
	case err := <-closed:
		assert.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Close hung")
	}
	for range ch {
	}
}

// Close stops every goroutine the consumer started, including in-flight
// fetches, Iter feeders and blocked GetMessages, and later calls fail with
// ErrClosed. Not parallel: it counts goroutines.
func TestCloseLeavesNothing(t *testing.T) {
	tc, topic := cluster, ""
	if cluster.Embedded() {
		// A broker of its own, closed before the check. The shared kfake
		// still starts a reader goroutine per request on the shared
		// client's connections (its metadata refreshes): not ours.
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent(),
			goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*clientConn).read.func1"))
		own, err := kafkatest.Start()
		require.NoError(t, err)
		defer own.Close()
		tc, topic = own, kafkatest.UniqueName("close")
		require.NoError(t, own.CreateTopic(testCtx(t), topic, 4))
		require.NoError(t, own.ProduceN(testCtx(t), topic, 4, 2000))
	} else {
		topic = backlog(t, 4, 2000)
		// After the backlog: the test cluster's own connections are not ours.
		defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	}
	cfg := Config{Topic: topic, Group: group(t), NumWorkers: 4, QueueSize: 16, Brokers: tc.Brokers()}
	c, err := New(testCtx(t), cfg)
	require.NoError(t, err)

	ctx := testCtx(t)
	iter := c.Iter(ctx)
	<-iter
	blocked := make(chan error)
	go func() {
		_, err := c.GetMessages(ctx, 100000, Timeout(0))
		blocked <- err
	}()
	// Workers put in quarters of the queue: near full, they block.
	require.Eventually(t, func() bool { return c.Stats().QueueLen > 12 }, 10*time.Second, 5*time.Millisecond)

	start := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(start), 2*time.Second, "Close must not wait on fetches")
	assert.ErrorIs(t, <-blocked, ErrClosed)
	for range iter {
	}

	assert.ErrorIs(t, c.Close(), ErrClosed)
	_, err = c.GetMessages(ctx, 1)
	assert.ErrorIs(t, err, ErrClosed)
	assert.ErrorIs(t, c.Commit(ctx), ErrClosed)
	assert.ErrorIs(t, c.Seek(ctx, 0, SeekStart), ErrClosed)
	_, err = c.Pending(ctx)
	assert.ErrorIs(t, err, ErrClosed)
	_, ok := <-c.Iter(ctx)
	assert.False(t, ok)
	c.Pause()
	c.Resume()
	assert.True(t, c.Stats().Paused, "Resume after Close does nothing")
	runtime.Gosched()
}

// A worker whose fetches fail retries with backoff, counts the errors, and
// recovers: here the embedded broker refuses fetches for a while.
func TestFetchErrorsRetried(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 5)
	injectFailures(t, kmsg.Fetch, 2, func(req kmsg.Request) bool { return fetchesTopic(req.(*kmsg.FetchRequest), topic) })
	c := open(t, Config{Topic: topic, MaxBackoff: 100 * time.Millisecond})
	msgs := drain(t, c, 5, 5)
	checkOrder(t, msgs, zeros(1))
	assert.GreaterOrEqual(t, c.Stats().Partitions[0].FetchErrors, int64(2))
}

// A failing auto-commit waits out its backoff: no storm of retries when the
// time trigger is long overdue. The broker times the attempts: the second
// comes a backoff (1 s) after the first, where the trigger would send one
// every 20 ms; a loaded machine can only make the gap longer.
func TestAutoCommitBackoff(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 1)
	g := group(t)
	failed := rejectCommits(t, g, 1000)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: -1, AutoCommitEveryT: 20 * time.Millisecond, MaxBackoff: time.Second})
	drain(t, c, 1, 1)
	_, err := c.GetMessages(testCtx(t), 1, Block(false)) // consumes: the time trigger commits, and fails
	require.NoError(t, err)
	require.Eventually(t, func() bool { return failed.Hits() >= 2 }, 10*time.Second, 5*time.Millisecond)
	at := failed.times()
	require.GreaterOrEqual(t, len(at), 2, "commits seen")
	gap := at[1].Sub(at[0])
	t.Logf("the second commit attempt came %v after the first", gap)
	assert.GreaterOrEqual(t, gap, 500*time.Millisecond, "the retry did not wait out its backoff")
}

// A failed auto-commit is retried after its backoff, even when no trigger
// fires again (here: count trigger only, and the caller waits for messages
// that do not come).
func TestAutoCommitRetried(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 1)
	g := group(t)
	failed := rejectCommits(t, g, 1)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryN: 1, AutoCommitEveryT: -1, MaxBackoff: 50 * time.Millisecond})
	drain(t, c, 1, 1)
	// Coming back consumes the message, and the commit fails; then the call
	// waits for a message that never comes.
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	go func() { _, _ = c.GetMessages(ctx, 1, Timeout(0)) }()
	require.Eventually(t, func() bool { return c.Stats().Partitions[0].Committed == 1 }, 10*time.Second, 10*time.Millisecond)
	assert.Equal(t, 1, failed.Hits())
	assert.GreaterOrEqual(t, c.Stats().CommitErrors, int64(1))
	assert.Equal(t, map[int]int64{0: 1}, committed(t, topic, g, 1))
}

// produceTransaction commits a transaction of n messages ("0-i") to
// partition 0 of topic; its commit marker takes the offset after them.
func produceTransaction(t *testing.T, topic string, n int) {
	t.Helper()
	endTransaction(t, topic, n, kgo.TryCommit)
}

// endTransaction produces a transaction of n messages ("0-i") to partition
// 0 of topic and ends it with how (kgo.TryCommit or kgo.TryAbort).
func endTransaction(t *testing.T, topic string, n int, how kgo.TransactionEndTry) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...), kgo.TransactionalID(kafkatest.UniqueName("tx")),
		kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	require.NoError(t, err)
	defer cl.Close()
	ctx := testCtx(t)
	require.NoError(t, cl.BeginTransaction())
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Partition: 0, Value: fmt.Appendf(nil, "0-%d", i)}
	}
	require.NoError(t, cl.ProduceSync(ctx, recs...).FirstErr())
	require.NoError(t, cl.EndTransaction(ctx, how))
}

// injectFailures makes the embedded broker close the connection on the
// first n requests of kind key that match, and counts them. On a real broker
// it skips the test.
func injectFailures(t *testing.T, key kmsg.Key, n int64, match func(kmsg.Request) bool) *atomic.Int64 {
	t.Helper()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	var failed atomic.Int64
	kf.ControlKey(key.Int16(), func(req kmsg.Request) (kmsg.Response, error, bool) {
		kf.KeepControl()
		if failed.Load() >= n {
			kf.DropControl()
			return nil, nil, false
		}
		if !match(req) {
			return nil, nil, false
		}
		failed.Add(1)
		return nil, errors.New("injected"), true
	})
	return &failed
}

// rejectCommits makes the embedded broker answer the first n commits of
// group with GROUP_AUTHORIZATION_FAILED, an error no retry mends; Hits
// counts them. On a real broker it skips the test.
//
// A kfake fault, not a control: a control that drops itself shifts the
// ones added after it, and the next misses that request (maybePopControl
// edits the slice tryControlKey ranges over), so a rejection could let a
// commit through.
func rejectCommits(t *testing.T, group string, n int) *rejections {
	t.Helper()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	r := &rejections{}
	r.FaultHandle = kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Group: group, Err: kerr.GroupAuthorizationFailed, Count: n,
		When: func(req kmsg.Request) bool {
			r.mu.Lock()
			defer r.mu.Unlock()
			if req != r.last { // asked once for each partition
				r.last = req
				r.at = append(r.at, time.Now())
			}
			return true
		}})
	t.Cleanup(r.Remove)
	return r
}

// rejections is the fault of rejectCommits, and when the commits it
// looked at came.
type rejections struct {
	*kfake.FaultHandle
	mu   sync.Mutex
	last kmsg.Request
	at   []time.Time
}

func (r *rejections) times() []time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.at)
}

func fetchesTopic(req *kmsg.FetchRequest, topic string) bool {
	for _, t := range req.Topics {
		if t.Topic == topic {
			return true
		}
	}
	return false
}
