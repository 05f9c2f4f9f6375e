package multiconsumer

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Tests of the parts alone: no broker, no MultiConsumer. The committer gets
// a fake sender; the static source a recording apply.

// fakeSender is a commitSender that records what it is asked to send, and
// answers with reply (nil: stores everything).
type fakeSender struct {
	mu    sync.Mutex
	sent  []sentCommit
	reply func(n int, l lease, offsets map[int]int64) error // n: the call's number, from 1
}

type sentCommit struct {
	lease   lease
	offsets map[int]int64
}

func (f *fakeSender) offsetCommit(_ context.Context, l lease, offsets map[int]int64, _ map[int]string) (map[int]int64, error) {
	f.mu.Lock()
	f.sent = append(f.sent, sentCommit{l, offsets})
	n := len(f.sent)
	f.mu.Unlock()
	if f.reply != nil {
		if err := f.reply(n, l, offsets); err != nil {
			return nil, err
		}
	}
	return offsets, nil
}

func (f *fakeSender) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, 5*time.Second)
}

func (f *fakeSender) retrying() bool { return true }

func (f *fakeSender) calls() []sentCommit {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentCommit(nil), f.sent...)
}

// deliverAndConsume has the ledger deliver n messages of partition p from
// its delivered offset on, then the caller come back for more.
func deliverAndConsume(l *ledger, p, n int) {
	l.mu.Lock()
	po := l.b.parts[p]
	from, epoch := po.delivered, po.epoch
	l.mu.Unlock()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Partition: p, Offset: from + int64(i)}
	}
	l.deliverBatches([]batch{{partition: p, epoch: epoch, msgs: msgs}}, n)
	l.consume(time.Now())
}

func testCommitter(cfg Config, l *ledger, s commitSender, applied *broadcast) *committer {
	return newCommitter(&cfg, l, s, slog.New(slog.DiscardHandler), applied.wait, context.Background())
}

// A commit goes out under the lease it was built under, or not at all: a
// rebalance during its first attempt (which fails on a dropped connection)
// ends the lease, and the retry is dropped rather than sent under the new
// one, where it would rewind the partition's new owner.
func TestCommitterRetryNotSentUnderALaterLease(t *testing.T) {
	l := newLedger("t", 0, 0, time.Now())
	l1 := lease{memberID: "m", generation: 1}
	l.setLease(l1)
	l.start(0, 100, noOffset, "")
	deliverAndConsume(l, 0, 10)
	f := &fakeSender{reply: func(n int, _ lease, _ map[int]int64) error {
		if n == 1 {
			l.setLease(lease{memberID: "m", generation: 2}) // the rebalance, meanwhile
			return &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
		}
		return nil
	}}
	cm := testCommitter(Config{Group: "g", Topic: "t", JoinGroup: true}, l, f, &broadcast{})
	err := cm.sendCommit(context.Background())
	require.ErrorIs(t, err, kafka.IllegalGeneration)
	require.ErrorIs(t, err, errLeaseEnded)
	calls := f.calls()
	require.Len(t, calls, 1, "the retry is not sent")
	assert.Equal(t, l1, calls[0].lease)
	assert.Equal(t, map[int]int64{0: 110}, calls[0].offsets)
	assert.Equal(t, int64(1), cm.errs.Load())
}

// A partition revoked between the commit's build and its send is left out
// of it, with an error naming it; the others go.
func TestCommitterLeavesOutRevokedPartitions(t *testing.T) {
	l := newLedger("t", 0, 0, time.Now())
	l.start(0, 0, noOffset, "")
	l.start(1, 0, noOffset, "")
	deliverAndConsume(l, 0, 5)
	deliverAndConsume(l, 1, 7)
	f := &fakeSender{reply: func(n int, _ lease, _ map[int]int64) error {
		if n == 1 {
			l.remove([]int{1})
			return &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
		}
		return nil
	}}
	cm := testCommitter(Config{Group: "g", Topic: "t"}, l, f, &broadcast{})
	err := cm.sendCommit(context.Background())
	var pe *PartitionError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, 1, pe.Partition)
	calls := f.calls()
	require.Len(t, calls, 2)
	assert.Equal(t, map[int]int64{0: 5}, calls[1].offsets)
}

// The auto-commit triggers, on a fake clock: every N consumed messages
// (the count trigger wakes the committer), every T since the last commit,
// and a failed auto-commit retried after its backoff, with the newest
// offsets.
func TestCommitterTriggers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLedger("t", 3, time.Minute, time.Now())
		l.start(0, 0, noOffset, "")
		fail := true
		var mu sync.Mutex
		f := &fakeSender{reply: func(n int, _ lease, _ map[int]int64) error {
			mu.Lock()
			defer mu.Unlock()
			if fail && n == 3 {
				return kafka.UnknownTopicOrPartition // not retried within the commit
			}
			return nil
		}}
		cm := testCommitter(Config{Group: "g", Topic: "t", MaxBackoff: 4 * time.Second}, l, f, &broadcast{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cm.run(ctx); close(done) }()

		// Count: 2 consumed is not enough, 3 is.
		deliverAndConsume(l, 0, 2)
		cm.wake()
		synctest.Wait()
		assert.Empty(t, f.calls())
		deliverAndConsume(l, 0, 1)
		cm.wake()
		synctest.Wait()
		require.Len(t, f.calls(), 1)
		assert.Equal(t, map[int]int64{0: 3}, f.calls()[0].offsets)

		// Time: one message, then a minute.
		deliverAndConsume(l, 0, 1)
		synctest.Wait()
		assert.Len(t, f.calls(), 1)
		time.Sleep(time.Minute)
		synctest.Wait()
		require.Len(t, f.calls(), 2)
		assert.Equal(t, map[int]int64{0: 4}, f.calls()[1].offsets)

		// A failure: retried after 1s, with what was consumed meanwhile.
		deliverAndConsume(l, 0, 3)
		time.Sleep(autoCommitGap) // since the last (TestCommitterPacesTheCountTrigger)
		cm.wake()
		synctest.Wait()
		require.Len(t, f.calls(), 3, "the failed attempt")
		mu.Lock()
		fail = false
		mu.Unlock()
		deliverAndConsume(l, 0, 1)
		time.Sleep(999 * time.Millisecond)
		synctest.Wait()
		assert.Len(t, f.calls(), 3, "not before the backoff")
		time.Sleep(time.Millisecond)
		synctest.Wait()
		require.Len(t, f.calls(), 4)
		assert.Equal(t, map[int]int64{0: 8}, f.calls()[3].offsets)
		assert.Equal(t, int64(1), cm.errs.Load())

		cancel()
		<-done
		assert.ErrorIs(t, cm.commit(context.Background()), ErrClosed, "after the committer stopped")
	})
}

// The count trigger fires no auto-commit within autoCommitGap of the last
// one's start: at high rates it would fire again as each commit returned.
// What comes meanwhile goes out with the paced commit; Commit is not
// paced.
func TestCommitterPacesTheCountTrigger(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := newLedger("t", 1, time.Minute, time.Now())
		l.start(0, 0, noOffset, "")
		f := &fakeSender{}
		cm := testCommitter(Config{Group: "g", Topic: "t"}, l, f, &broadcast{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { cm.run(ctx); close(done) }()

		deliverAndConsume(l, 0, 1)
		cm.wake()
		synctest.Wait()
		require.Len(t, f.calls(), 1, "the first at once")
		for range 3 {
			deliverAndConsume(l, 0, 1)
			cm.wake()
			synctest.Wait()
		}
		time.Sleep(autoCommitGap - time.Millisecond)
		synctest.Wait()
		assert.Len(t, f.calls(), 1, "none within the gap")
		time.Sleep(time.Millisecond)
		synctest.Wait()
		require.Len(t, f.calls(), 2, "one at the gap's end")
		assert.Equal(t, map[int]int64{0: 4}, f.calls()[1].offsets, "with all three")

		// Commit goes out at once, and the count trigger after it waits
		// for the gap since the last auto-commit only.
		deliverAndConsume(l, 0, 1)
		require.NoError(t, cm.commit(context.Background()))
		require.Len(t, f.calls(), 3)
		time.Sleep(autoCommitGap)
		deliverAndConsume(l, 0, 1)
		cm.wake()
		synctest.Wait()
		require.Len(t, f.calls(), 4)
		assert.Equal(t, map[int]int64{0: 6}, f.calls()[3].offsets)

		cancel()
		<-done
	})
}

// The committer of a consumer without a group commits nothing.
func TestCommitterWithoutGroup(t *testing.T) {
	cm := testCommitter(Config{Topic: "t"}, newLedger("t", 0, 0, time.Now()), &fakeSender{}, &broadcast{})
	assert.ErrorIs(t, cm.commit(context.Background()), ErrNoGroup)
	cm.wake() // does not block
}

// The static source: Config.Partitions checked against the topic, one
// assignment at start (strict: New reports its error), and only the
// partitions added to the topic at growth, unless the list is fixed.
func TestStaticListSource(t *testing.T) {
	ctx := context.Background()
	var got []assignment
	fail := error(nil)
	apply := func(_ context.Context, a assignment) error {
		got = append(got, a)
		return fail
	}

	s := newStaticList("t", []int{3, 1, 1}, apply)
	err := s.start(ctx, []int{0, 1, 2})
	require.ErrorIs(t, err, ErrUnknownPartition)
	assert.Contains(t, err.Error(), "[3]")
	assert.Empty(t, got)

	s = newStaticList("t", []int{2, 0}, apply)
	require.NoError(t, s.start(ctx, []int{0, 1, 2}))
	require.Len(t, got, 1)
	assert.Equal(t, assignment{lease: noLease, owned: []int{0, 2}, added: []int{0, 2}, strict: true}, got[0])
	require.NoError(t, s.grew(ctx, []int{0, 1, 2, 3}))
	assert.Len(t, got, 1, "a fixed list ignores the topic's growth")

	got = nil
	s = newStaticList("t", nil, apply)
	require.NoError(t, s.start(ctx, []int{0, 1}))
	require.NoError(t, s.grew(ctx, []int{0, 1, 2, 3}))
	require.Len(t, got, 2)
	assert.Equal(t, []int{2, 3}, got[1].added)
	assert.Equal(t, []int{0, 1, 2, 3}, got[1].owned)

	fail = errors.New("offsets not readable yet")
	require.Error(t, s.grew(ctx, []int{0, 1, 2, 3, 4}))
	fail = nil
	require.NoError(t, s.grew(ctx, []int{0, 1, 2, 3, 4}), "tried again at the next refresh")
	assert.Equal(t, []int{4}, got[len(got)-1].added)
	var st Stats
	s.stats(&st)
	assert.Equal(t, []int{2, 3, 4}, st.AddedPartitions)
	require.NoError(t, s.leave(ctx))
}

// The ledger's reposition moves every partition or none.
func TestLedgerRepositionAllOrNothing(t *testing.T) {
	l := newLedger("t", 0, 0, time.Now())
	l.start(0, 10, noOffset, "")
	l.start(1, 20, noOffset, "")
	bad := errors.New("out of range")
	_, _, err := l.reposition([]int{0, 1}, func(p int, d int64) (int64, error) {
		if p == 1 {
			return 0, bad
		}
		return d + 5, nil
	})
	require.ErrorIs(t, err, bad)
	assert.Equal(t, map[int]int64{0: 10, 1: 20}, l.deliveredOffsets(), "nothing moved")

	targets, epochs, err := l.reposition([]int{0, 1}, func(p int, d int64) (int64, error) { return d + 5, nil })
	require.NoError(t, err)
	assert.Equal(t, map[int]int64{0: 15, 1: 25}, targets)
	assert.Len(t, epochs, 2)
	assert.Equal(t, map[int]int64{0: 15, 1: 25}, l.deliveredOffsets())

	_, _, err = l.reposition([]int{7}, func(p int, d int64) (int64, error) { return d, nil })
	assert.ErrorIs(t, err, ErrUnknownPartition)
}
