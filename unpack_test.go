package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// unpackRig is an unpacker over a fair queue of two partitions, four
// messages' share each, fed by the test as a worker would; the test
// takes and releases as Process does, and gives whole batches' arrays
// back.
type unpackRig struct {
	t    *testing.T
	q    *queue
	open *event
	f    *unpacker
	done sync.WaitGroup
	got  []string // what the test took of the queue, in order
}

func newUnpackRig(t *testing.T, opts ...func(*fetchEnv)) *unpackRig {
	r := &unpackRig{t: t, q: newQueue(8), open: newEvent(true)}
	r.q.setPartitions(2)
	r.q.setFair(true)
	// Runs of the queue's batch size (2 here): they go into its arrays.
	env := &fetchEnv{topic: "t", batchSize: r.q.arrays.size, q: r.q, unpaused: r.open}
	for _, o := range opts {
		o(env)
	}
	r.f = newUnpacker(env)
	r.done.Go(func() { r.f.run(context.Background()) })
	return r
}

// records returns a feed of partition p in epoch with values at offsets
// from to to-1, in one record batch.
func records(p int, epoch uint64, from, to int64) feed {
	values := map[int32]string{}
	for o := from; o < to; o++ {
		values[int32(o-from)] = fmt.Sprint(o)
	}
	return feed{p: p, epoch: epoch, from: from, to: to, hwm: to, raw: recordBatch(from, int32(to-from-1), values)}
}

// take lends what is queued, releases it, and returns it as flat does;
// then it waits for the unpacker to be done with what that let in.
func (r *unpackRig) take() []string {
	bs := r.q.lend()
	out := flat(r.t, bs)
	for _, b := range bs {
		r.q.release(b.partition, len(b.msgs))
		if b.whole {
			r.q.arrays.put(b.msgs)
		}
	}
	r.got = append(r.got, out...)
	synctest.Wait()
	return out
}

func (r *unpackRig) stop() []rewind {
	close(r.f.in)
	r.done.Wait()
	return r.f.takeRewinds(nil)
}

func flatRange(p int, epoch uint64, from, to int64) []string {
	var out []string
	for o := from; o < to; o++ {
		out = append(out, fmt.Sprintf("%d/%d:%d", p, epoch, o))
	}
	return out
}

// While Process runs, a partition whose share is full waits in the
// unpacker as the bytes it came in, not decoded into the overflow; the
// other partitions go on meanwhile, its worker fetches one response ahead
// of what is parked and no more, and its later responses wait behind it,
// in order.
func TestUnpackerParksAFullPartition(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		r.f.in <- []feed{records(0, 1, 0, 10), records(1, 1, 0, 3)}
		r.f.in <- []feed{records(0, 1, 10, 14)}
		synctest.Wait()
		assert.Zero(t, r.q.overN, "nothing decoded past the shares")
		assert.False(t, r.q.isHungry(0), "partition 0 is parked with a response behind: no fetch of it")
		assert.Equal(t, uint64(1), r.q.parkedOf(0))
		assert.Zero(t, r.q.parkedOf(1), "partition 1's response fitted")
		assert.Equal(t, append(flatRange(0, 1, 0, 4), flatRange(1, 1, 0, 3)...), r.take())

		assert.Equal(t, flatRange(0, 1, 4, 8), r.take(), "its share again, and no more")
		assert.Zero(t, r.q.overN)
		assert.Equal(t, uint64(1), r.q.parkedOf(0), "parked in the second response")
		assert.True(t, r.q.isHungry(0), "nothing behind it: the next response may be fetched")
		r.f.in <- []feed{records(0, 1, 14, 15)}
		synctest.Wait()
		assert.False(t, r.q.isHungry(0), "one behind it: no more")
		assert.Equal(t, flatRange(0, 1, 8, 12), r.take(), "the rest of the response, then the next one")
		assert.Zero(t, r.q.parkedOf(0), "the last three queued as those were taken: unparked")
		assert.False(t, r.q.isHungry(0), "three of its share of four queued: more than half")
		assert.Equal(t, flatRange(0, 1, 12, 15), r.take())
		assert.True(t, r.q.isHungry(0))
		assert.Empty(t, r.take())

		assert.Empty(t, r.stop(), "no rewind: every feed was queued")
		assert.Equal(t, fedTo{epoch: 1, next: 15}, r.f.next[0])
	})
}

// A parked partition with many of its records left undecoded is not
// fetched: its next response would wait in memory while they are worked
// through. Once few are left (fetchEnv.ahead), it is, one response ahead.
func TestUnpackerFetchesAheadWhenFewAreLeft(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const ahead = 60 // bytes: a few of these records
		r := newUnpackRig(t, func(env *fetchEnv) { env.ahead = ahead })
		r.f.in <- []feed{records(0, 1, 0, 40)}
		synctest.Wait()
		require.Equal(t, uint64(1), r.q.parkedOf(0))
		assert.False(t, r.q.isHungry(0), "36 records left undecoded: no fetch yet")
		for r.q.parkedOf(0) != 0 && !r.q.isHungry(0) {
			r.take()
		}
		require.Equal(t, uint64(1), r.q.parkedOf(0), "hungry while still parked")
		left := 40 - len(r.got) - r.q.len()
		assert.Positive(t, left)
		assert.Less(t, left, 20, "few left when it is fetched")
		pk := r.f.parked[0]
		assert.LessOrEqual(t, len(pk.cur.it.raw)+len(pk.cur.it.recs), ahead)

		r.f.in <- []feed{records(0, 1, 40, 80)}
		synctest.Wait()
		assert.False(t, r.q.isHungry(0), "one behind it: no more")
		for r.q.parkedOf(0) != 0 && len(r.got) < 40 {
			r.take()
		}
		assert.False(t, r.q.isHungry(0), "the next response is parked, many of it left")
		for len(r.got) < 80 && r.q.len()+len(r.got) > 0 {
			if r.take() == nil {
				break
			}
		}
		assert.Equal(t, flatRange(0, 1, 0, 80), r.got, "in order, none missed")
		assert.Empty(t, r.stop())
	})
}

// While GetMessages' queue (not fair) is full, a partition whose response
// the unpacker is queueing, many of its records left, is held ahead: its
// worker does not fetch it again (worker.holdAhead) until few are left,
// when the unpacker wakes the worker.
func TestUnpackerHoldsAheadWhileTheQueueIsFull(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const hold = 60 // bytes: a few of these records
		r := newUnpackRig(t, func(env *fetchEnv) { env.hold = hold })
		r.q.setFair(false)
		var woken atomic.Int32
		r.f.onLow = func() { woken.Add(1) }
		r.f.in <- []feed{records(0, 1, 0, 40)}
		synctest.Wait()
		require.True(t, r.q.waitingToPut(), "the queue (8) is full")
		assert.True(t, r.f.isAhead(0, 1), "32 records left: held")
		assert.False(t, r.f.isAhead(0, 2), "another epoch (a Seek): not held")
		assert.False(t, r.f.isAhead(1, 1))
		assert.Zero(t, woken.Load())
		for r.f.isAhead(0, 1) {
			r.take()
		}
		notTaken := 40 - len(r.got) // queued, or not decoded yet
		assert.Positive(t, notTaken, "let go before the end")
		assert.Less(t, notTaken, 20, "few left when it is let go")
		assert.Equal(t, int32(1), woken.Load(), "the worker woken once")
		for len(r.got) < 40 {
			if r.take() == nil {
				break
			}
		}
		assert.Equal(t, flatRange(0, 1, 0, 40), r.got, "in order, none missed")
		assert.False(t, r.f.isAhead(0, 1))
		assert.Empty(t, r.stop())
	})
}

// holdAhead drops the leaders all of whose partitions are held ahead, and
// keeps the others' whole, the held among them.
func TestWorkerHoldAhead(t *testing.T) {
	env := &fetchEnv{topic: "t", q: newQueue(8), log: slog.New(slog.DiscardHandler)}
	pos := map[int]*fetchPos{0: {epoch: 1}, 1: {epoch: 1}, 2: {epoch: 1}, 3: {epoch: 2}}
	w := newWorker(env, 0, []int{0, 1, 2, 3}, pos, newWakeup())
	w.plan.add(10, 0)
	w.plan.add(20, 1)
	w.plan.add(20, 2)
	w.plan.add(30, 3)
	w.unpacker.ahead[0] = 1
	w.unpacker.ahead[1] = 1
	w.unpacker.ahead[3] = 1 // an older epoch than its position's: a Seek since
	w.holdAhead()
	assert.Equal(t, []int{20, 30}, w.plan.leaders)
	assert.Equal(t, [][]int{{1, 2}, {3}}, w.plan.groups)
	w.plan.reset()
	w.plan.add(10, 0)
	w.plan.add(20, 1)
	w.plan.add(30, 3)
	assert.Equal(t, [][]int{{0}, {1}, {3}}, w.plan.groups, "the arrays reused empty")
}

// Records parked while paused go on after Resume, in order.
func TestUnpackerParksWhilePaused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		r.open.Clear()
		r.f.in <- []feed{records(0, 1, 0, 3)}
		synctest.Wait()
		assert.Zero(t, r.q.len(), "paused: nothing queued")
		assert.Equal(t, uint64(1), r.q.parkedOf(0))

		r.open.Set()
		r.q.refill() // as Resume does
		synctest.Wait()
		assert.Equal(t, flatRange(0, 1, 0, 3), r.take())
		assert.True(t, r.q.isHungry(0))
		assert.Empty(t, r.stop())
	})
}

// A Seek or a revoke drops a parked partition's records with its queued
// ones: the unpacker lets them go, and the partition is hungry again at
// once, so that its worker fetches its new position. A feed in a new
// epoch goes ahead of what was parked in the old.
func TestUnpackerLetsStaleParkedRecordsGo(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		r.f.in <- []feed{records(0, 1, 0, 10), records(1, 1, 0, 10)}
		synctest.Wait()
		require.Equal(t, uint64(1), r.q.parkedOf(0))
		require.Equal(t, uint64(1), r.q.parkedOf(1))

		r.q.drop(func(b *batch) bool { return b.partition == 0 && b.epoch < 2 })
		assert.True(t, r.q.isHungry(0), "its mark went with the drop")
		synctest.Wait()
		r.f.in <- []feed{records(1, 2, 50, 52)}
		synctest.Wait()
		assert.Equal(t, flatRange(1, 1, 0, 4), r.take(), "partition 0's stale records are gone")
		assert.Equal(t, flatRange(1, 2, 50, 52), r.take(), "partition 1's new epoch replaced its old")
		assert.True(t, r.q.isHungry(1))
		assert.Empty(t, r.take())
		assert.Empty(t, r.stop())
	})
}

// When the worker stops, what is parked goes back: the worker's position
// ends where the queue does, and the partition is no longer parked.
func TestUnpackerStopRewindsParked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		r.f.in <- []feed{records(0, 1, 0, 10)}
		r.f.in <- []feed{records(0, 1, 10, 12)}
		synctest.Wait()
		assert.Equal(t, flatRange(0, 1, 0, 4), r.take())
		assert.Equal(t, []rewind{{p: 0, epoch: 1, to: 8}}, r.stop())
		assert.Zero(t, r.q.parkedOf(0))
		assert.Equal(t, flatRange(0, 1, 4, 8), flat(t, r.q.lend()), "what was queued stays")
	})
}

// Epochs only grow: an unpacker's response of an older epoch of a
// partition (its worker had the partition before a revoke and a grant to
// another worker) neither overwrites the newer epoch's parked mark nor is
// queued; the newer epoch's parked records all go on, in order.
func TestUnpackerKeepsANewerEpochsMark(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t) // the unpacker of the worker that has partition 0 now
		old := newUnpacker(&fetchEnv{topic: "t", batchSize: r.q.arrays.size, q: r.q, unpaused: r.open})
		r.done.Go(func() { old.run(context.Background()) })

		r.f.in <- []feed{records(0, 2, 0, 10)}
		synctest.Wait()
		require.Equal(t, uint64(2), r.q.parkedOf(0))
		old.in <- []feed{records(0, 1, 100, 104)}
		synctest.Wait()
		assert.Equal(t, uint64(2), r.q.parkedOf(0), "the older epoch's share is full too, but the mark stays the newer's")

		r.take()
		r.take()
		r.take()
		close(old.in)
		assert.Empty(t, r.stop())
		assert.Equal(t, flatRange(0, 2, 0, 10), r.got, "epoch 2's records, in order, and none of epoch 1")
	})
}

// A response of an older epoch that comes after the newer epoch's records
// were parked is stale: the unpacker drops it and keeps what is parked.
func TestUnpackerIgnoresAnOlderEpoch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		r.f.in <- []feed{records(0, 2, 0, 10)}
		synctest.Wait()
		r.f.in <- []feed{records(0, 1, 100, 102)}
		synctest.Wait()
		assert.Equal(t, uint64(2), r.q.parkedOf(0))
		r.take()
		r.take()
		r.take()
		assert.Empty(t, r.stop())
		assert.Equal(t, flatRange(0, 2, 0, 10), r.got)
	})
}

// Once a run is queued, Process may take it, be done with it and give its
// array to another run at once: the unpacker reads nothing of it after
// the put. Here Process takes each run as it is queued, and another run
// overwrites the array it gave back, before the unpacker goes on; the
// unpacker must still know where its run ended.
func TestUnpackerReadsNoRunAfterQueueing(t *testing.T) {
	q := newQueue(64)
	q.setPartitions(2)
	q.setFair(true)
	f := newUnpacker(&fetchEnv{topic: "t", batchSize: 16, q: q, unpaused: newEvent(true)})
	var got []int64
	testHookQueued = func() {
		for _, b := range q.lend() {
			for _, m := range b.msgs {
				got = append(got, m.Offset)
			}
			q.release(b.partition, len(b.msgs))
			if !b.whole {
				continue
			}
			q.arrays.put(b.msgs)
			if ms := q.arrays.get(); ms != nil { // another run, of another partition
				ms = ms[:16]
				for i := range ms {
					ms[i] = kafka.Message{Partition: 1, Offset: 5000 + int64(i)}
				}
			}
		}
	}
	defer func() { testHookQueued = nil }()
	u := f.begin(records(0, 1, 0, 64))
	f.busy.Lock()
	require.True(t, f.carry(context.Background(), &u))
	f.busy.Unlock()
	want := make([]int64, 64)
	for i := range want {
		want[i] = int64(i)
	}
	assert.Equal(t, want, got)
	assert.Equal(t, fedTo{epoch: 1, next: 64}, f.next[0])
	assert.Empty(t, f.takeRewinds(nil))
}

// A record decoded and not kept (before the position asked for) leaves
// nothing in the array: an array given back holds no message past its
// length, which would keep its response in memory.
func TestUnpackerLeavesNothingPastARun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		r := newUnpackRig(t)
		// A batch over offsets 0-4 with records at 0 and 1 only, fetched
		// from 2: both are decoded and dropped, and the run is empty.
		fd := feed{p: 0, epoch: 1, from: 2, to: 5, hwm: 100, raw: recordBatch(0, 4, map[int32]string{0: "a", 1: "b"})}
		r.f.in <- []feed{fd}
		synctest.Wait()
		for _, b := range r.q.lend() {
			assert.Empty(t, b.msgs, "only a move past the batch is queued")
		}
		r.q.arrays.mu.Lock()
		require.NotEmpty(t, r.q.arrays.free, "the empty run's array is kept")
		for _, ms := range r.q.arrays.free {
			for _, m := range ms[:cap(ms)] {
				assert.Zero(t, m, "a message left in an array given back")
			}
		}
		r.q.arrays.mu.Unlock()
		assert.Empty(t, r.stop())
	})
}
