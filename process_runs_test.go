package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The hands claim runs of messages. These tests hold one message of a run
// back (a handler that does not return, a handler that fails) and check
// that nothing else waits for it: the rest of its run goes to other hands,
// and what completed before it is committed.

// TestProcessStuckHandlerHoldsBackNothingElse: under Unordered, one
// partition, a handler that does not return holds its message only. Every
// other message is handled, and the commit reaches the stuck message,
// while it is stuck.
func TestProcessStuckHandlerHoldsBackNothingElse(t *testing.T) {
	const n, stuckAt = 3000, 700
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, n, 1)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, AutoCommitEveryT: 20 * time.Millisecond})
	h := newHandled(n - 1)
	release := make(chan struct{})
	stop := runProcess(t, c, ProcessConfig{Ordering: Unordered, Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == stuckAt {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
			return nil
		}
		h.add(m)
		return nil
	})
	waitDone(t, h.done, "every message but the stuck one")
	require.Eventually(t, func() bool {
		return committed(t, topic, g, 1)[0] == stuckAt
	}, 10*time.Second, 10*time.Millisecond, "the commit reaches the stuck message")
	// The last handler to call h.add may not have returned yet: its run
	// settles when it does.
	var s Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return s.Process.InFlight == 1 && len(s.Process.Handling) == 1
	}, 10*time.Second, time.Millisecond, "only the stuck message in flight")
	assert.Zero(t, s.Process.Waiting)
	require.Len(t, s.Process.Handling, 1)
	assert.EqualValues(t, stuckAt, s.Process.Handling[0].Offset)
	close(release)
	require.Eventually(t, func() bool {
		return committed(t, topic, g, 1)[0] == n
	}, 10*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, stop(), context.Canceled)
	h.mu.Lock()
	defer h.mu.Unlock()
	for o := range int64(n) {
		if o != stuckAt {
			assert.Equal(t, 1, h.seen[[2]int64{0, o}], "offset %d handled once", o)
		}
	}
}

// TestProcessRetryHoldsBackOnlyItsKey: under ByKey, a message that fails
// until every other key's message was handled: they were, so none waited
// behind its retries, though runs put them after it. Its own key's
// messages wait, in order.
func TestProcessRetryHoldsBackOnlyItsKey(t *testing.T) {
	const n, keys, failAt = 3000, 1000, 500
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, n, keys)
	c := open(t, Config{Topic: topic})
	failKey := fmt.Sprintf("k%d", failAt%keys)
	others := newHandled(n - n/keys) // every message of the other keys
	all := newHandled(n)
	var failures atomic.Int64
	stop := runProcess(t, c, ProcessConfig{Concurrency: 4, RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == failAt {
			select {
			case <-others.done:
			default:
				failures.Add(1)
				return errBoom
			}
		}
		if string(m.Key) != failKey {
			others.add(m)
		}
		all.add(m)
		return nil
	})
	waitDone(t, all.done, "every message")
	require.ErrorIs(t, stop(), context.Canceled)
	assert.Positive(t, failures.Load())
	all.mu.Lock()
	defer all.mu.Unlock()
	assert.Equal(t, []int64{failAt, failAt + keys, failAt + 2*keys}, all.order["0/"+failKey], "its key in order")
	for k, offs := range all.order {
		for i := 1; i < len(offs); i++ {
			require.Less(t, offs[i-1], offs[i], "key %s in order", k)
		}
	}
}

// TestProcessLaneChains: lanes are found by their key's hash; lanes of
// other partitions whose buckets collide share the bucket, each its own
// lane, and dropping one keeps the others. Idle lanes stay until there are
// twice keepLanes.
func TestProcessLaneChains(t *testing.T) {
	out := &delivery{led: &ledger{}}
	p := newProcessor(ProcessConfig{Ordering: ByKey, Concurrency: 1}, func(context.Context, kafka.Message) error { return nil },
		out, slog.New(slog.DiscardHandler), time.Second)
	a := p.keyLane(0, []byte("a"))
	require.Same(t, a, p.keyLane(0, []byte("a")))
	require.NotSame(t, a, p.keyLane(0, []byte("b")), "another key")
	require.NotSame(t, a, p.keyLane(1, []byte("a")), "another partition")
	require.NotSame(t, a, p.keyLane(0, nil), "a nil key is not a key")
	require.NotSame(t, p.keyLane(0, []byte{}), p.keyLane(0, nil), "nor is an empty one")
	require.Same(t, p.keyLane(0, nil), p.keyLane(0, nil))
	part := p.partLane(0)
	require.Same(t, part, p.partLane(0))
	require.True(t, part.keyed && !part.exclusive, "ByKey: a partition's lane is keyed, its keys' lanes exclusive")
	require.True(t, a.exclusive && !a.keyed)
	require.NotSame(t, part, p.keyLane(0, nil))

	// A lane of partition 1 in a's bucket: the bucket chains them.
	chain := func(id uint64) (parts []int) {
		for l := p.lanes.get(id); l != nil; l = l.collide {
			parts = append(parts, l.partition)
		}
		return parts
	}
	id := a.bucket // a dropped lane forgets it
	b := &lane{partition: 1, kind: keyLane, bucket: id, collide: a, live: true, exclusive: true}
	p.lanes.set(id, b)
	require.Same(t, a, p.keyLane(0, []byte("a")), "a is found past b")
	p.dropLane(a)
	require.Equal(t, []int{1}, chain(id), "b stays when a goes")
	a2 := p.keyLane(0, []byte("a"))
	require.NotSame(t, b, a2)
	require.Equal(t, []int{0, 1}, chain(id), "a's new lane goes first")
	p.dropLane(b)
	p.dropLane(b) // dropped already: nothing
	require.Equal(t, []int{0}, chain(id))
	require.Same(t, a2, p.keyLane(0, []byte("a")))

	// Idle lanes are pruned once there are twice keepLanes (a lane
	// settled idle goes at once past keepLanes); busy ones stay.
	a2.pushRange(&taking{msgs: make([]kafka.Message, 1)}, 0, 1)
	for i := range 2*keepLanes + 1 {
		p.keyLane(0, fmt.Appendf(nil, "key-%d", i))
	}
	assert.Less(t, p.lanes.len(), keepLanes)
	require.Same(t, a2, p.keyLane(0, []byte("a")), "a lane with a message waiting stays")
}

// runsRig is a processor over partitions of a ledger and a queue, with no
// broker, for tests that claim, sweep and settle its hands' runs by hand.
// Its hands' messages began long ago: a sweep takes them.
type runsRig struct {
	t   *testing.T
	p   *processor
	led *ledger
	q   *queue
}

func newRunsRig(t *testing.T, pc ProcessConfig, partitions int) *runsRig {
	led := newLedger("t", 0, 0, time.Now())
	for part := range partitions {
		led.start(part, 0, noOffset, "")
	}
	q := newQueue(64)
	q.setPartitions(partitions)
	d := newDelivery(q, led, alwaysAlive, newLifecycle(), func() {})
	pc, err := pc.withDefaults()
	require.NoError(t, err)
	p := newProcessor(pc, func(context.Context, kafka.Message) error { return nil }, d, slog.New(slog.DiscardHandler), time.Second)
	p.born = time.Now().Add(-time.Second)
	return &runsRig{t: t, p: p, led: led, q: q}
}

// batch is a batch of partition part in its current epoch: a message at
// offsets 0, 1, ... for each key.
func (r *runsRig) batch(part int, keys ...string) batch {
	r.led.mu.Lock()
	epoch := r.led.b.parts[part].epoch
	r.led.mu.Unlock()
	b := batch{partition: part, epoch: epoch}
	for i, k := range keys {
		b.msgs = append(b.msgs, kafka.Message{Partition: part, Offset: int64(i), Key: []byte(k)})
	}
	return b
}

// add queues bs and adds them to the lanes, in order. p.mu is held.
func (r *runsRig) add(bs ...batch) {
	open := newEvent(true)
	for _, b := range bs {
		require.NoError(r.t, r.q.put(context.Background(), b, open))
	}
	for _, b := range r.q.lend() {
		r.p.add(&b)
	}
}

// runOffsets returns the offsets of hd's run, in order.
func runOffsets(hd *hand) (offs []int64) {
	for _, t := range hd.run {
		offs = append(offs, t.off)
	}
	return offs
}

// complete settles hd's run (what of it is still the hand's: a sweep may
// have cut it) as completed. p.mu is held.
func (r *runsRig) complete(hd *hand) {
	_, limit := positions(hd.pos.Load())
	hd.ends = hd.ends[:0]
	for range limit {
		hd.ends = append(hd.ends, completed)
	}
	hd.pos.Store(position(limit, limit))
	r.p.settle(hd)
}

// TestProcessGiveBackUnblocksTheLane: a message a sweep gives back (its
// hand is held up by a message of another partition before it) to a lane
// that found no room in its partition's commit metadata must start again.
// Here it is its partition's lowest incomplete message, which always
// starts, and nothing else of its partition is in flight: had its lane
// stayed blocked, waiting for a completion of the partition, none would
// ever come, and the partition would stall for good. (Found by reading
// the code after a benchmark drain of 8M messages ByKey stalled near its
// end, once in about 35 runs; not reproduced since, so not proven to be
// that stall.)
func TestProcessGiveBackUnblocksTheLane(t *testing.T) {
	r := newRunsRig(t, ProcessConfig{Ordering: ByKey, Concurrency: 1}, 2)
	p, led := r.p, r.led
	p.mu.Lock()
	defer p.mu.Unlock()
	r.add(r.batch(1, "x"), r.batch(0, "k", "k"))
	// Partition 0's metadata is full for a second message in flight:
	// sparse completions far past what was taken.
	led.mu.Lock()
	w := led.b.parts[0].win
	w.add(40000, 40001)
	for o := int64(100); ; o += 2 {
		w.inflight = 1
		full := !w.room()
		w.inflight = 0
		if full {
			break
		}
		w.add(o, o+1)
	}
	led.mu.Unlock()

	// The run: x (partition 1), then k's first (partition 0's lowest
	// incomplete: it begins); k's second finds no room, and its lane is
	// blocked.
	p.perMsg = time.Microsecond
	hd := p.hands[0]
	require.True(t, p.claim(hd))
	require.Len(t, hd.run, 2)
	require.Equal(t, 1, hd.run[0].from.partition)
	require.Equal(t, 0, hd.run[1].from.partition)
	require.Len(t, p.blocked[0], 1, "k's second message waits for room")

	// The hand starts x and is held up: a sweep gives k's first back.
	hd.pos.Store(position(1, 2))
	hd.began.Store(1)
	p.sweep(false)
	require.Equal(t, 2, p.waiting, "k's first is back in its lane, before its second")
	hd.ends = append(hd.ends, completed)
	p.settle(hd) // x completes: a completion of partition 1 only

	require.True(t, p.claim(hd), "k's first starts again")
	assert.Equal(t, int64(0), hd.run[0].off)
	assert.Equal(t, 0, hd.run[0].from.partition)
}

// TestProcessGiveBackKeepsOffsetOrder: under Unordered, two hands give back
// messages of one partition, the later first (in sweep order): its lane
// must still start with the partition's lowest incomplete message. With the
// commit metadata full and nothing of the partition in flight, a lane
// headed by a higher offset would find no room, and no completion would
// ever unblock it.
func TestProcessGiveBackKeepsOffsetOrder(t *testing.T) {
	r := newRunsRig(t, ProcessConfig{Ordering: Unordered, Concurrency: 2}, 3)
	p, led := r.p, r.led
	p.mu.Lock()
	defer p.mu.Unlock()
	r.add(r.batch(1, ""), r.batch(0, "", "", "", "", "", "", "", "", "", ""), r.batch(2, ""))

	// Runs of 2: A takes partition 1's message and partition 0's
	// offset 0, B partition 2's and partition 0's offset 1.
	p.perMsg = runBudget / 2
	a, b := p.hands[0], p.hands[1]
	require.True(t, p.claim(a))
	require.True(t, p.claim(b))
	require.Equal(t, []int64{0, 0}, []int64{a.run[0].off, a.run[1].off})
	require.Equal(t, []int{1, 0}, []int{a.run[0].from.partition, a.run[1].from.partition})
	require.Equal(t, []int{2, 0}, []int{b.run[0].from.partition, b.run[1].from.partition})
	require.Equal(t, int64(1), b.run[1].off)

	// Both start their first message and are held up: the sweep gives
	// back A's offset 0, then B's offset 1.
	for _, hd := range []*hand{a, b} {
		hd.pos.Store(position(1, 2))
		hd.began.Store(1)
	}
	p.sweep(false)

	// Partition 0's metadata is now full for any message but its lowest
	// incomplete one, and nothing of it is in flight.
	led.mu.Lock()
	w := led.b.parts[0].win
	require.Zero(t, w.inflight)
	w.add(40000, 40001)
	for o := int64(100); w.room(); o += 2 {
		w.add(o, o+1)
	}
	led.mu.Unlock()

	for _, hd := range []*hand{a, b} {
		hd.ends = append(hd.ends, completed)
		p.settle(hd) // completions of partitions 1 and 2 only
	}
	require.True(t, p.claim(a), "partition 0's offset 0 starts")
	assert.Equal(t, 0, a.run[0].from.partition)
	assert.Equal(t, int64(0), a.run[0].off)
}

// TestLanePutBackOrder: messages put back one by one, in any order, into a
// partition's lane under Unordered end up in offset order, ahead of and
// among what waits there.
func TestLanePutBackOrder(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	batchAt := func(from, n int) *taking {
		tk := &taking{}
		for i := range n {
			tk.msgs = append(tk.msgs, kafka.Message{Offset: int64(from + i)})
		}
		return tk
	}
	for range 300 {
		a, b := batchAt(0, 10), batchAt(10, 10)
		l := &lane{}
		// Waiting: a[7:], b[4:]; given back: a[:7] and b[:4].
		l.pushRange(a, 7, 10)
		l.pushRange(b, 4, 10)
		var back []task
		for i := range 7 {
			back = append(back, task{m: &a.msgs[i], off: int64(i), from: a, lane: l, i: int32(i)})
		}
		for i := range 4 {
			back = append(back, task{m: &b.msgs[i], off: int64(10 + i), from: b, lane: l, i: int32(i)})
		}
		for _, k := range rng.Perm(len(back)) {
			l.putBack(&back[k])
		}
		require.Equal(t, 20, l.n)
		var got []int64
		l.drain(func(m *kafka.Message) { got = append(got, m.Offset) })
		want := make([]int64, 20)
		for i := range want {
			want[i] = int64(i)
		}
		require.Equal(t, want, got)
	}
}

// TestProcessByKeySortsOutAtClaim: under ByKey a batch goes into its
// partition's lane as it is; its messages go to their keys as a hand
// claims them. A message joins the run being claimed when nothing of its
// key waits and nothing of it runs but in that run; otherwise it waits in
// its key's lane, behind the rest of its key, and that lane starts once
// its key's run settles.
func TestProcessByKeySortsOutAtClaim(t *testing.T) {
	r := newRunsRig(t, ProcessConfig{Ordering: ByKey, Concurrency: 2}, 1)
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.perMsg = runBudget / 3 // runs of at most 3, and of half what waits
	r.add(r.batch(0, "a", "b", "a", "c", "a", "e", "f"))
	a, b := p.hands[0], p.hands[1]

	require.True(t, p.claim(a))
	require.Equal(t, []int64{0, 1, 2}, runOffsets(a), "a's second joins the run of its first")
	require.True(t, p.claim(b))
	require.Equal(t, []int64{3, 5}, runOffsets(b), "a's third waits: a runs in another run")
	require.Equal(t, 2, p.waiting, "a's third, and f")

	// More of partition 0: a at 7 (behind a's third), d at 8.
	more := r.batch(0, "a", "d")
	for i := range more.msgs {
		more.msgs[i].Offset += 7
	}
	r.add(more)
	r.complete(a) // a's lane may start: its third waits, behind the partition's
	require.True(t, p.claim(a))
	require.Equal(t, []int64{6, 8}, runOffsets(a), "a at 7 waits behind a's third, in a's lane")
	r.complete(b)
	require.True(t, p.claim(b))
	require.Equal(t, []int64{4}, runOffsets(b), "a's lane, in order")
	r.complete(b)
	require.True(t, p.claim(b))
	require.Equal(t, []int64{7}, runOffsets(b))

	r.complete(a)
	r.complete(b)
	assert.False(t, p.claim(a))
	assert.Zero(t, p.waiting)
	assert.Equal(t, 7, p.lanes.len(), "the partition's lane, and its 6 keys' (idle: kept)")
	assert.Equal(t, int64(9), r.led.b.parts[0].win.commit, "all of it complete")
}

// TestProcessByKeyClaimsLaneWhole: under ByKey, while handlers are
// near-empty, a partition's lane with nothing of it in its keys' lanes is
// claimed whole, as under ByPartition (no key looked at); a message of it
// that runs long (a sweep) or waits for a retry sends the lane back to
// sorting out keys, its key's lane counting it running: the other keys go
// on, its own waits for it.
func TestProcessByKeyClaimsLaneWhole(t *testing.T) {
	r := newRunsRig(t, ProcessConfig{Ordering: ByKey, Concurrency: 2}, 1)
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.procs = 1
	p.perMsg = fastHandler // near-empty: runs of 20
	batchAt := func(from int64, keys ...string) batch {
		b := r.batch(0, keys...)
		for i := range b.msgs {
			b.msgs[i].Offset += from
		}
		return b
	}
	a, b := p.hands[0], p.hands[1]

	// Whole: the run takes the lane's messages in order, and no other
	// run claims from the lane until it settles.
	r.add(batchAt(0, "a", "b", "a"))
	require.True(t, p.claim(a))
	require.Equal(t, []int64{0, 1, 2}, runOffsets(a))
	assert.Equal(t, 1, p.lanes.len(), "no key's lane made")
	r.add(batchAt(3, "c", "d"))
	assert.False(t, p.claim(b), "the lane is a's run's until it settles")
	r.complete(a)
	require.True(t, p.claim(b))
	require.Equal(t, []int64{3, 4}, runOffsets(b))
	r.complete(b)

	// A sweep finds a's handler held up on a at 5: what followed it
	// goes back, and the lane sorts out keys again. b takes the other
	// keys; a at 7 waits for a at 5.
	r.add(batchAt(5, "a", "e", "a", "f"))
	require.True(t, p.claim(a))
	require.Equal(t, []int64{5, 6, 7, 8}, runOffsets(a))
	a.pos.Store(position(1, len(a.run)))
	a.began.Store(1)
	p.sweep(false)
	require.True(t, p.claim(b))
	assert.Equal(t, []int64{6, 8}, runOffsets(b), "a at 7 waits for a at 5")
	r.complete(b)
	assert.False(t, p.claim(b), "a at 7 waits")
	r.complete(a)
	require.True(t, p.claim(b))
	assert.Equal(t, []int64{7}, runOffsets(b))
	r.complete(b)
	assert.Equal(t, int64(9), r.led.b.parts[0].win.commit)
	assert.Zero(t, p.sorted[0], "nothing of the partition sorted out")

	// Whole again; a's handler fails on g at 10, which waits for its
	// retry: the same.
	r.add(batchAt(9, "h", "g", "g", "i"))
	require.True(t, p.claim(a))
	require.Equal(t, []int64{9, 10, 11, 12}, runOffsets(a), "whole again")
	a.ends = append(a.ends[:0], completed)
	a.pos.Store(position(2, len(a.run)))
	p.mu.Unlock()
	p.park(a, true)
	p.mu.Lock()
	require.True(t, p.claim(b))
	assert.Equal(t, []int64{12}, runOffsets(b), "g at 11 waits for g at 10")
	r.complete(b)
	a.ends = append(a.ends[:0], completed)
	a.pos.Store(position(1, 1))
	p.settle(a)
	require.True(t, p.claim(b))
	assert.Equal(t, []int64{11}, runOffsets(b))
	r.complete(b)
	assert.False(t, p.claim(a))
	assert.Zero(t, p.waiting)
	assert.Zero(t, p.sorted[0])
	assert.Equal(t, int64(13), r.led.b.parts[0].win.commit, "all of it complete")
}

// TestProcessUnorderedClaimsLaneWhole: under Unordered too, while handlers
// are near-empty, a partition's lane goes to one run at a time (its
// completions in order: one span); a message that runs long lets the rest
// go to other hands at once.
func TestProcessUnorderedClaimsLaneWhole(t *testing.T) {
	r := newRunsRig(t, ProcessConfig{Ordering: Unordered, Concurrency: 2}, 1)
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.procs = 1
	p.perMsg = fastHandler / 2 // near-empty: runs of up to 64, all that waits (one P)
	a, b := p.hands[0], p.hands[1]
	r.add(r.batch(0, make([]string, 8)...))
	require.True(t, p.claim(a))
	require.Len(t, a.run, 8)
	more := r.batch(0, make([]string, 4)...)
	for i := range more.msgs {
		more.msgs[i].Offset += 8
	}
	r.add(more)
	assert.False(t, p.claim(b), "the lane is a's run's until it settles")

	// a is held up on its first message: the rest goes to b.
	a.pos.Store(position(1, len(a.run)))
	a.began.Store(1)
	p.sweep(false)
	require.True(t, p.claim(b))
	assert.Equal(t, int64(1), b.run[0].off)
	assert.Len(t, b.run, 11, "the rest of what a claimed, and what came after")
}

// TestProcessHeldHandsDoNotCount: near-empty handlers run on no more hands
// at once than fastHands a P; a hand a sweep finds held up by its handler
// does not count, so another may run, until its run ends.
func TestProcessHeldHandsDoNotCount(t *testing.T) {
	require.Equal(t, 2, fastHands, "one P: two hands")
	r := newRunsRig(t, ProcessConfig{Ordering: Unordered, Concurrency: 4}, 2)
	p := r.p
	p.mu.Lock()
	defer p.mu.Unlock()
	p.procs = 1
	p.perMsg = fastHandler // near-empty still; runs of 20 (runBudget)
	r.add(r.batch(0, make([]string, 30)...), r.batch(1, make([]string, 30)...))
	a, b := p.hands[0], p.hands[1]
	require.True(t, p.claim(a))
	require.False(t, p.enoughRun(), "one hand runs")
	require.True(t, p.claim(b))
	require.True(t, p.enoughRun(), "two hands run")

	// Both start their first message and are held up (they began long
	// ago): neither counts.
	for _, hd := range []*hand{a, b} {
		hd.pos.Store(position(1, len(hd.run)))
		hd.began.Store(1)
	}
	p.sweep(false)
	assert.Equal(t, 2, p.held)
	assert.False(t, p.enoughRun(), "both held up: others may run")
	p.sweep(false)
	assert.Equal(t, 2, p.held, "counted once")

	// a's message completes, and its run ends: a counts again, and is
	// not held up any more.
	a.ends = append(a.ends[:0], completed)
	p.settle(a)
	assert.False(t, a.held)
	assert.Equal(t, 1, p.held)
	require.True(t, p.claim(a))
	assert.False(t, p.enoughRun(), "a runs, b is held up")

	// Slow handlers: no limit.
	p.held = 0
	p.perMsg = time.Millisecond
	assert.False(t, p.enoughRun())
}
