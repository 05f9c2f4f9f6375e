package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
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

// TestProcessLaneChains: lanes are found by their key's hash; keys whose
// hashes collide share the bucket, each with its own lane, and dropping
// one keeps the others. Idle lanes stay until there are keepLanes.
func TestProcessLaneChains(t *testing.T) {
	out := &delivery{led: &ledger{}}
	p := newProcessor(ProcessConfig{Ordering: ByKey, Concurrency: 1}, func(context.Context, kafka.Message) error { return nil },
		out, slog.New(slog.DiscardHandler), time.Second)
	a := p.lane(0, []byte("a"))
	require.Same(t, a, p.lane(0, []byte("a")))
	require.NotSame(t, a, p.lane(1, []byte("a")), "another partition")
	require.NotSame(t, a, p.lane(0, nil), "a nil key is not a key")
	require.Same(t, p.lane(0, nil), p.lane(0, nil))

	// A key b whose hash collides with a's: the bucket chains them.
	chain := func(id uint64) (keys []string) {
		for l := p.lanes[id]; l != nil; l = l.collide {
			keys = append(keys, string(l.key))
		}
		return keys
	}
	id := a.bucket // a dropped lane forgets it
	b := &lane{partition: 0, key: []byte("b"), bucket: id, collide: a, live: true, exclusive: true}
	p.lanes[id] = b
	require.Same(t, a, p.lane(0, []byte("a")), "a is found past b")
	p.dropLane(a)
	require.Equal(t, []string{"b"}, chain(id), "b stays when a goes")
	a2 := p.lane(0, []byte("a"))
	require.NotSame(t, b, a2)
	require.Equal(t, []string{"a", "b"}, chain(id), "a's new lane goes first")
	p.dropLane(b)
	p.dropLane(b) // dropped already: nothing
	require.Equal(t, []string{"a"}, chain(id))
	require.Same(t, a2, p.lane(0, []byte("a")))

	// Idle lanes are pruned once there are keepLanes; busy ones stay.
	a2.msgs.push(task{})
	for i := range keepLanes + 1 {
		p.lane(0, fmt.Appendf(nil, "key-%d", i))
	}
	assert.Less(t, len(p.lanes), keepLanes)
	require.Same(t, a2, p.lane(0, []byte("a")), "a lane with a message waiting stays")
}
