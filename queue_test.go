package multiconsumer

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"
	"testing/synctest"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// mkBatch returns n messages of partition p from offset from, in epoch.
func mkBatch(p int, epoch uint64, from int64, n int) batch {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Partition: p, Offset: from + int64(i)}
	}
	return batch{partition: p, epoch: epoch, msgs: msgs}
}

// flat lists batches as "partition/epoch:offset" per message, in order, and
// checks that every message is of its batch's partition.
func flat(t *testing.T, bs []batch) []string {
	t.Helper()
	var out []string
	for _, b := range bs {
		require.NotEmpty(t, b.msgs, "empty batch of partition %d", b.partition)
		for _, m := range b.msgs {
			require.Equal(t, b.partition, m.Partition)
			out = append(out, fmt.Sprintf("%d/%d:%d", b.partition, b.epoch, m.Offset))
		}
	}
	return out
}

func sizes(bs []batch) []int {
	var out []int
	for _, b := range bs {
		out = append(out, len(b.msgs))
	}
	return out
}

func count(bs []batch) int {
	n := 0
	for _, b := range bs {
		n += len(b.msgs)
	}
	return n
}

// returned reports whether a result arrived on ch, without waiting.
func returned(ch <-chan error) (error, bool) {
	select {
	case err := <-ch:
		return err, true
	default:
		return nil, false
	}
}

func TestQueuePutTake(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		puts      []batch
		takes     []int
		wantSizes [][]int // batch sizes of each take
	}{
		{
			name:      "whole batches in order",
			puts:      []batch{mkBatch(0, 0, 0, 3), mkBatch(1, 0, 0, 2), mkBatch(0, 0, 3, 1)},
			takes:     []int{100},
			wantSizes: [][]int{{3, 2, 1}},
		},
		{
			name:      "split at max",
			puts:      []batch{mkBatch(0, 0, 0, 5)},
			takes:     []int{2, 2, 2, 2},
			wantSizes: [][]int{{2}, {2}, {1}, nil},
		},
		{
			name:      "split across batches",
			puts:      []batch{mkBatch(0, 0, 0, 3), mkBatch(1, 2, 10, 4), mkBatch(2, 0, 0, 2)},
			takes:     []int{4, 4, 4},
			wantSizes: [][]int{{3, 1}, {3, 1}, {1}},
		},
		{
			name:      "exact fit",
			puts:      []batch{mkBatch(0, 0, 0, 2), mkBatch(1, 0, 0, 2)},
			takes:     []int{2, 2},
			wantSizes: [][]int{{2}, {2}},
		},
		{
			name:      "take nothing",
			puts:      []batch{mkBatch(0, 0, 0, 2)},
			takes:     []int{0, -1, 2},
			wantSizes: [][]int{nil, nil, {2}},
		},
		{
			name:      "empty queue",
			takes:     []int{5},
			wantSizes: [][]int{nil},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			q := newQueue(100)
			ctx := testCtx(t)
			gate := newEvent(true)
			var want []string
			for _, b := range tt.puts {
				require.NoError(t, q.put(ctx, b, gate))
				want = append(want, flat(t, []batch{b})...)
			}
			total := count(tt.puts)
			assert.Equal(t, total, q.len())

			var got []string
			for i, n := range tt.takes {
				bs := q.take(n)
				assert.Equal(t, tt.wantSizes[i], sizes(bs), "take %d of %d", i, n)
				got = append(got, flat(t, bs)...)
				assert.Equal(t, total-len(got), q.len(), "after take %d of %d", i, n)
			}
			assert.Equal(t, want[:len(got)], got, "order")
		})
	}
}

func TestQueueStateSignals(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(4)
		gate := newEvent(true)
		ctx := context.Background()

		n, changed := q.state()
		assert.Equal(t, 0, n)
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 0, 2), gate))
		assert.True(t, isClosed(changed), "put signals")

		n, changed = q.state()
		assert.Equal(t, 2, n)
		bs := q.take(2)
		assert.False(t, isClosed(changed), "take with no put waiting does not signal")
		q.unshift(bs)
		assert.True(t, isClosed(changed), "unshift signals")

		_, changed = q.state()
		q.unshift(nil)
		assert.Empty(t, q.take(0))
		assert.Zero(t, q.drop(func(*batch) bool { return false }))
		assert.False(t, isClosed(changed), "no-ops do not signal")

		assert.Equal(t, 2, q.drop(func(*batch) bool { return true }))
		assert.True(t, isClosed(changed), "drop signals")

		// With a put waiting for room, take signals.
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 2, 4), gate))
		putDone := make(chan error, 1)
		go func() { putDone <- q.put(ctx, mkBatch(1, 0, 0, 1), gate) }()
		synctest.Wait()
		_, changed = q.state()
		require.Equal(t, []int{1}, sizes(q.take(1)))
		assert.True(t, isClosed(changed), "take with a put waiting signals")
		require.NoError(t, <-putDone)
	})
}

func TestQueueLimit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(5)
		gate := newEvent(true)
		ctx := context.Background()
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 0, 3), gate))
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 3, 2), gate))
		assert.Equal(t, 5, q.len())

		putDone := make(chan error, 1)
		go func() { putDone <- q.put(ctx, mkBatch(1, 0, 0, 2), gate) }()
		synctest.Wait()
		_, ok := returned(putDone)
		require.False(t, ok, "put into a full queue returned")

		// One place is not enough for two messages.
		require.Equal(t, []int{1}, sizes(q.take(1)))
		synctest.Wait()
		_, ok = returned(putDone)
		require.False(t, ok, "put of 2 returned with 1 place free")
		assert.Equal(t, 4, q.len())

		require.Equal(t, []int{2}, sizes(q.take(2)))
		synctest.Wait()
		err, ok := returned(putDone)
		require.True(t, ok, "take did not unblock put")
		require.NoError(t, err)
		assert.Equal(t, 4, q.len())
		assert.Equal(t, []string{"0/0:3", "0/0:4", "1/0:0", "1/0:1"}, flat(t, q.take(10)))
	})
}

func TestQueuePutWaitsForOpen(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(10)
		gate := newEvent(true)
		require.NoError(t, q.put(context.Background(), mkBatch(1, 0, 0, 1), gate))
		gate.Clear()
		putDone := make(chan error, 1)
		go func() { putDone <- q.put(context.Background(), mkBatch(0, 0, 0, 1), gate) }()
		synctest.Wait()
		_, ok := returned(putDone)
		require.False(t, ok, "put returned while open is cleared")
		assert.Equal(t, 1, q.len())

		// Changes to the queue do not let it through either.
		taken := q.take(1)
		require.Len(t, taken, 1)
		synctest.Wait()
		_, ok = returned(putDone)
		require.False(t, ok, "put returned while open is cleared")
		q.unshift(taken)
		synctest.Wait()
		_, ok = returned(putDone)
		require.False(t, ok, "put returned while open is cleared")
		assert.Equal(t, 1, q.len())

		gate.Set()
		synctest.Wait()
		err, ok := returned(putDone)
		require.True(t, ok, "Set did not unblock put")
		require.NoError(t, err)
		assert.Equal(t, []string{"1/0:0", "0/0:0"}, flat(t, q.take(10)))
	})
}

// TestQueueBarrier: once open is cleared and barrier has returned, no put
// completes, however many were in flight; after Set, puts go on.
func TestQueueBarrier(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(1000)
		gate := newEvent(true)
		ctx, stop := context.WithCancel(context.Background())
		putterDone := make(chan error, 1)
		go func() {
			b := mkBatch(0, 0, 0, 1)
			for {
				if err := q.put(ctx, b, gate); err != nil {
					putterDone <- err
					return
				}
			}
		}()

		waitQueued := func() {
			t.Helper()
			for {
				n, changed := q.state()
				if n > 0 {
					return
				}
				<-changed
			}
		}
		for round := range 50 {
			waitQueued()
			q.take(1000) // make room, so that puts are in flight when open is cleared
			gate.Clear()
			q.barrier()
			frozen := q.len()
			synctest.Wait() // the putter is blocked now
			require.Equal(t, frozen, q.len(), "round %d: a put completed after barrier", round)

			// Room made while paused does not let a put through.
			require.Equal(t, frozen, count(q.take(frozen)))
			synctest.Wait()
			require.Zero(t, q.len(), "round %d: a put completed after barrier and take", round)

			gate.Set()
			waitQueued()
		}
		stop()
		assert.ErrorIs(t, <-putterDone, context.Canceled)
	})
}

func TestQueueUnshift(t *testing.T) {
	t.Parallel()
	q := newQueue(100)
	gate := newEvent(true)
	ctx := testCtx(t)
	puts := []batch{mkBatch(0, 0, 0, 3), mkBatch(1, 1, 0, 2), mkBatch(0, 0, 3, 2)}
	var want []string
	for _, b := range puts {
		require.NoError(t, q.put(ctx, b, gate))
		want = append(want, flat(t, []batch{b})...)
	}

	taken := q.take(4) // 0:0..2, then 1:0 split off its batch
	require.Equal(t, []int{3, 1}, sizes(taken))
	assert.Equal(t, 3, q.len())

	q.unshift(taken)
	assert.Equal(t, 7, q.len())
	assert.Equal(t, want, flat(t, q.take(100)), "unshifted batches come first, in order")
	assert.Zero(t, q.len())

	// A partial requeue, as Iter does: the rest of one batch, then the others.
	require.NoError(t, q.put(ctx, mkBatch(2, 0, 0, 1), gate))
	q.unshift([]batch{{partition: 0, epoch: 0, msgs: puts[0].msgs[1:]}, puts[2]})
	assert.Equal(t, 5, q.len())
	assert.Equal(t, []string{"0/0:1", "0/0:2", "0/0:3", "0/0:4", "2/0:0"}, flat(t, q.take(100)))
}

// TestQueueUnshiftPastLimit: what a cancelled call puts back goes in even
// past the bound; puts then wait until the queue drains below it.
func TestQueueUnshiftPastLimit(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(5)
		gate := newEvent(true)
		ctx := context.Background()
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 0, 5), gate))
		taken := q.take(5)
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 5, 3), gate))
		q.unshift(taken)
		assert.Equal(t, 8, q.len())

		putDone := make(chan error, 1)
		go func() { putDone <- q.put(ctx, mkBatch(1, 0, 0, 1), gate) }()
		synctest.Wait()
		_, ok := returned(putDone)
		require.False(t, ok, "put returned past the bound")

		require.Equal(t, 3, count(q.take(3)))
		synctest.Wait()
		_, ok = returned(putDone)
		require.False(t, ok, "put returned with the queue at its bound")

		require.Equal(t, 1, count(q.take(1)))
		synctest.Wait()
		err, ok := returned(putDone)
		require.True(t, ok, "draining below the bound did not unblock put")
		require.NoError(t, err)
		assert.Equal(t, []string{"0/0:4", "0/0:5", "0/0:6", "0/0:7", "1/0:0"}, flat(t, q.take(10)))
	})
}

func TestQueueDrop(t *testing.T) {
	t.Parallel()
	q := newQueue(100)
	gate := newEvent(true)
	ctx := testCtx(t)
	for _, b := range []batch{
		mkBatch(0, 0, 0, 2), mkBatch(1, 0, 0, 3), mkBatch(0, 1, 5, 1),
		mkBatch(0, 0, 2, 4), mkBatch(2, 0, 0, 1),
	} {
		require.NoError(t, q.put(ctx, b, gate))
	}
	taken := q.take(1) // 0/0:0, taken: not the queue's to drop
	assert.Equal(t, 10, q.len())

	// What Seek drops: partition 0's batches of an epoch before 1.
	n := q.drop(func(b *batch) bool { return b.partition == 0 && b.epoch < 1 })
	assert.Equal(t, 5, n)
	assert.Equal(t, 5, q.len())
	assert.Equal(t, []string{"1/0:0", "1/0:1", "1/0:2", "0/1:5", "2/0:0"}, flat(t, q.take(100)))
	assert.Equal(t, []string{"0/0:0"}, flat(t, taken))
	assert.Zero(t, q.drop(func(*batch) bool { return true }), "empty queue")
}

func TestQueueDropUnblocksPut(t *testing.T) {
	t.Parallel()
	synctest.Test(t, func(t *testing.T) {
		q := newQueue(4)
		gate := newEvent(true)
		ctx := context.Background()
		require.NoError(t, q.put(ctx, mkBatch(0, 0, 0, 2), gate))
		require.NoError(t, q.put(ctx, mkBatch(1, 0, 0, 2), gate))

		putDone := make(chan error, 1)
		go func() { putDone <- q.put(ctx, mkBatch(1, 0, 2, 2), gate) }()
		synctest.Wait()
		_, ok := returned(putDone)
		require.False(t, ok, "put into a full queue returned")

		require.Equal(t, 2, q.drop(func(b *batch) bool { return b.partition == 0 }))
		synctest.Wait()
		err, ok := returned(putDone)
		require.True(t, ok, "drop did not unblock put")
		require.NoError(t, err)
		assert.Equal(t, []string{"1/0:0", "1/0:1", "1/0:2", "1/0:3"}, flat(t, q.take(10)))
	})
}

func TestQueuePutCancel(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		full bool // else open is cleared
	}{{"full", true}, {"paused", false}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			synctest.Test(t, func(t *testing.T) {
				q := newQueue(2)
				gate := newEvent(true)
				if tc.full {
					require.NoError(t, q.put(context.Background(), mkBatch(0, 0, 0, 2), gate))
				} else {
					gate.Clear()
				}
				queued := q.len()

				ctx, cancel := context.WithCancel(context.Background())
				putDone := make(chan error, 1)
				go func() { putDone <- q.put(ctx, mkBatch(1, 0, 0, 1), gate) }()
				synctest.Wait()
				_, ok := returned(putDone)
				require.False(t, ok, "put returned while blocked")

				cancel()
				assert.ErrorIs(t, <-putDone, context.Canceled)
				assert.Equal(t, queued, q.len())

				// A deadline ends the wait at the deadline.
				ctx, cancel = context.WithTimeout(context.Background(), 3*time.Second)
				defer cancel()
				start := time.Now()
				assert.ErrorIs(t, q.put(ctx, mkBatch(1, 0, 0, 1), gate), context.DeadlineExceeded)
				assert.Equal(t, 3*time.Second, time.Since(start))
				assert.Equal(t, queued, q.len())

				// A put that gave up left no trace: with room, a put goes through.
				q.take(10)
				gate.Set()
				require.NoError(t, q.put(context.Background(), mkBatch(2, 0, 0, 2), gate))
				assert.Equal(t, []string{"2/0:0", "2/0:1"}, flat(t, q.take(10)))
			})
		})
	}
}

// While Process runs, each partition gets a share of the bound; what
// Process holds counts until released; a worker waiting for a partition
// to be hungry is woken when one falls to half its share.
// TestQueueFairOverflowOfAnIdlePartition: messages queued before Process
// made the queue fair can fill the bound with one partition's; another
// partition's put then goes to its overflow, while it has nothing queued
// or lent. As the first partition's messages are released, the other's
// overflow moves into the queue: no release of its own would ever come.
// (A benchmark of Process without a broker stalled so: half the
// partitions never delivered a message.)
func TestQueueFairOverflowOfAnIdlePartition(t *testing.T) {
	q := newQueue(8)
	q.setPartitions(2)
	open := newEvent(true)
	ctx := context.Background()
	require.NoError(t, q.put(ctx, mkBatch(0, 1, 0, 8), open)) // not fair yet: the whole bound
	q.setFair(true)
	require.NoError(t, q.put(ctx, mkBatch(1, 1, 0, 3), open)) // the bound is full: overflow
	assert.Equal(t, 8, q.len()-3, "partition 1's 3 wait in its overflow")
	assert.False(t, q.isHungry(1))

	held := q.lend()
	require.Len(t, held, 1)
	assert.Equal(t, 0, held[0].partition)
	q.release(0, 4)
	got := q.lend()
	require.Len(t, got, 1, "partition 1's overflow moved into the queue")
	assert.Equal(t, 1, got[0].partition)
	assert.Len(t, got[0].msgs, 3)
	assert.Zero(t, q.len(), "no overflow left")
}

func TestQueueFairShares(t *testing.T) {
	q := newQueue(100)
	q.setPartitions(4)
	open := newEvent(true)
	ctx := context.Background()
	assert.Equal(t, -1, q.room(0), "not fair: the bound alone")
	assert.True(t, q.isHungry(0))

	q.setFair(true)
	assert.Equal(t, 25, q.room(0))
	require.NoError(t, q.put(ctx, mkBatch(0, 1, 0, 20), open))
	require.NoError(t, q.put(ctx, mkBatch(1, 1, 0, 5), open))
	assert.Equal(t, 5, q.room(0))
	assert.Equal(t, 20, q.room(1))
	assert.False(t, q.isHungry(0), "20 of 25: not worth a fetch")
	assert.True(t, q.isHungry(1))

	held := q.lend() // Process takes them all: they stay in the bound
	assert.Len(t, held, 2)
	assert.Zero(t, q.len())
	assert.Equal(t, 5, q.room(0))

	select {
	case <-func() <-chan struct{} { ch, done := q.waitRoom([]int{0, 1}); done(); return ch }():
	default:
		t.Fatal("partition 1 is hungry already: waitRoom does not wait")
	}
	room, done := q.waitRoom([]int{0})
	q.release(0, 5) // 15 of 25: still above half
	select {
	case <-room:
		t.Fatal("woken before partition 0 is hungry")
	default:
	}
	q.release(0, 3) // 12 of 25: hungry
	select {
	case <-room:
	default:
		t.Fatal("not woken when partition 0 became hungry")
	}
	done()
	assert.Equal(t, 13, q.room(0))
	assert.True(t, q.isHungry(0))

	// Dropped and taken messages leave the share too.
	require.NoError(t, q.put(ctx, mkBatch(2, 1, 0, 25), open))
	assert.Zero(t, q.room(2))
	q.drop(func(b *batch) bool { return b.partition == 2 })
	assert.Equal(t, 25, q.room(2))

	// Past its share, a partition's messages wait in its overflow, outside
	// the bound, and move in as Process takes the partition's messages.
	require.NoError(t, q.put(ctx, mkBatch(3, 1, 0, 30), open))
	assert.Zero(t, q.room(3))
	assert.False(t, q.isHungry(3))
	assert.Equal(t, 30, q.len(), "the overflow counts in len")
	got := q.lend()
	assert.Equal(t, []string{"3/1:0", "3/1:1"}, flat(t, got)[:2])
	assert.Len(t, flat(t, got), 25)
	q.release(3, 10) // 15 of 25: the overflow waits for half a share
	assert.Empty(t, q.lend())
	q.release(3, 3) // 12 of 25: it moves in
	got = q.lend()
	assert.Equal(t, []string{"3/1:25", "3/1:26", "3/1:27", "3/1:28", "3/1:29"}, flat(t, got))
	assert.False(t, q.isHungry(3), "17 of 25")
	q.release(3, 17)
	assert.True(t, q.isHungry(3), "none, no overflow: worth a fetch")

	q.setFair(false)
	assert.Equal(t, -1, q.room(0))
	q.release(0, 12)
	q.release(1, 5)
	for p, n := range q.parts {
		assert.Zero(t, n, "partition %d: every message counted out", p)
	}
	assert.Empty(t, q.overflowing)
	for p, bs := range q.over {
		assert.Empty(t, bs, "partition %d's overflow", p)
	}
	assert.Zero(t, q.lent)
}

// The fair queue under random puts, lends, releases, drops, pauses and
// changes of the partition count: its counts stay those of what it holds,
// the list of overflowing partitions is exactly those with overflow, a
// partition with overflow and nothing queued or lent is never left
// waiting (nothing of its own would ever move it), and every message put
// is lent once, in each partition's order, or dropped.
func TestQueueFairRandomOperations(t *testing.T) {
	brokerFree(t)
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		q := newQueue(1 + rng.IntN(64))
		nparts := 1 + rng.IntN(6)
		q.setPartitions(nparts)
		open := newEvent(true)
		q.setFair(true)
		next := make([]int64, 8)   // per partition: the next offset put
		lentTo := make([]int64, 8) // per partition: the next offset expected out
		lentN := make([]int, 8)    // per partition: lent and not released
		epoch := make([]uint64, 8) // per partition: batches of older epochs are dropped
		check := func(step int, op string) {
			t.Helper()
			q.mu.Lock()
			defer q.mu.Unlock()
			over, listed := 0, map[int]bool{}
			for _, p := range q.overflowing {
				require.False(t, listed[p], "seed %d step %d (%s): partition %d listed twice", seed, step, op, p)
				listed[p] = true
			}
			for p := range q.over {
				require.Equal(t, len(q.over[p]) > 0, listed[p], "seed %d step %d (%s): partition %d's overflow and the list", seed, step, op, p)
				for _, b := range q.over[p] {
					over += len(b.msgs)
				}
			}
			for p := range listed {
				require.Less(t, p, len(q.over))
			}
			require.Equal(t, over, q.overN, "seed %d step %d (%s): overN", seed, step, op)
			queued := map[int]int{}
			n := 0
			for _, b := range q.batches {
				queued[b.partition] += len(b.msgs)
				n += len(b.msgs)
			}
			require.Equal(t, n, q.queued, "seed %d step %d (%s): queued", seed, step, op)
			lent := 0
			for p := range lentN {
				lent += lentN[p]
				require.Equal(t, queued[p]+lentN[p], q.partOf(p), "seed %d step %d (%s): partition %d's count", seed, step, op, p)
			}
			require.Equal(t, lent, q.lent, "seed %d step %d (%s): lent", seed, step, op)
			if q.fair && open.IsSet() {
				// After a release, a drop or a refill, a partition with
				// overflow has something of its own queued or lent; and
				// at any time, if it has not, something else is (a
				// release to come will move it).
				strict := op == "release" || op == "drop" || op == "partitions" || op == "resume"
				for p := range q.over {
					if len(q.over[p]) > 0 && q.partOf(p) == 0 {
						require.False(t, strict, "seed %d step %d (%s): partition %d waits in its overflow with nothing of its own to release", seed, step, op, p)
						require.Positive(t, q.queued+q.lent, "seed %d step %d (%s): partition %d waits in its overflow, and nothing will move it", seed, step, op, p)
					}
				}
			}
		}
		for step := range 300 {
			p := rng.IntN(nparts)
			var op string
			switch r := rng.IntN(100); {
			case r < 40:
				op = "put"
				n := rng.IntN(2 * q.limit)
				b := mkBatch(p, epoch[p], next[p], n)
				next[p] += int64(n)
				q.mu.Lock()
				q.open = open
				q.putFairLocked(b)
				q.mu.Unlock()
			case r < 60:
				op = "lend"
				for _, b := range q.lend() {
					require.Equal(t, epoch[b.partition], b.epoch, "seed %d step %d: a dropped batch lent", seed, step)
					for _, m := range b.msgs {
						require.Equal(t, lentTo[b.partition], m.Offset, "seed %d step %d: partition %d out of order", seed, step, b.partition)
						lentTo[b.partition]++
					}
					lentN[b.partition] += len(b.msgs)
				}
			case r < 90:
				op = "nothing to release"
				if lentN[p] > 0 {
					op = "release"
					n := 1 + rng.IntN(lentN[p])
					lentN[p] -= n
					q.release(p, n)
				}
			case r < 94:
				op = "nothing to drop"
				epoch[p]++
				if q.drop(func(b *batch) bool { return b.partition == p && b.epoch < epoch[p] }) > 0 {
					op = "drop"
				}
				lentTo[p] = next[p] // what was dropped is not expected
			case r < 97:
				op = "pause"
				if open.IsSet() {
					open.Clear()
				} else {
					op = "resume"
					open.Set()
					q.refill()
				}
			default:
				op = "partitions"
				nparts = max(nparts, 1+rng.IntN(6))
				q.setPartitions(nparts)
			}
			check(step, op)
		}
	}
}
