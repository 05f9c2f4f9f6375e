package multiconsumer

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// A commit that keeps losing its connection while its member is dropped
// from the group and rejoins under a new member id is never sent under the
// new lease: it would rewind the offset the partition's new owner committed
// meanwhile (neither Kafka nor kfake checks that the committer owns the
// partition). Commit reports it dropped.
func TestGroupCommitNotSentUnderALaterLease(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 300)
	g := group(t)
	var f faults
	cfgA := groupCfg(topic, g)
	cfgA.ManualCommit = true
	cfgA.MaxBackoff = 200 * time.Millisecond // rejoin soon once the faults end
	// A request timeout long enough for the commit's retries to span the
	// whole hand-over: the session expiry, b's commit, a's rejoin.
	cfgA.Dialer = f.dialer(40 * time.Second)
	a := open(t, cfgA)
	assignedTo(t, 1, a)
	drain(t, a, 100, 100)

	cfgB := groupCfg(topic, g)
	cfgB.ManualCommit = true
	b := open(t, cfgB)
	require.Eventually(t, func() bool {
		return b.Stats().Generation > 0 && b.Stats().Generation == a.Stats().Generation
	}, 30*time.Second, 10*time.Millisecond, "b joins a's group")
	first, firstGen := a.Stats().MemberID, a.Stats().Generation

	// a's requests to the coordinator fail from now on: its session
	// expires, b takes the partition and commits past a's offset.
	f.block(kmsg.OffsetCommit, heartbeatKey(), joinKey(), kmsg.SyncGroup, kmsg.LeaveGroup)
	res := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() { res <- a.Commit(testCtx(t)) })
	t.Cleanup(wg.Wait)
	require.Eventually(t, func() bool { return slices.Equal(b.Assignment(), []int{0}) }, 40*time.Second, 10*time.Millisecond,
		"b takes the partition once a's session expired")
	drain(t, b, 200, 200)
	require.NoError(t, b.Commit(testCtx(t)))
	require.Equal(t, map[int]int64{0: 200}, committed(t, topic, g, 1))

	// a gets through to the coordinator again, and rejoins under a new
	// member id; then its commits get through too.
	f.allow(heartbeatKey(), joinKey(), kmsg.SyncGroup, kmsg.LeaveGroup)
	require.Eventually(t, func() bool {
		s := a.Stats()
		// Classic: a new member id; consumer protocol: the same member id
		// (the member makes it), a new epoch.
		return s.MemberID != "" && (s.MemberID != first || s.Generation != firstGen) && s.Generation > 0
	}, 40*time.Second, 10*time.Millisecond, "a rejoins")
	f.clear()
	err := <-res
	require.Error(t, err, "a's commit was for a lease that ended: it must not succeed")
	assert.ErrorIs(t, err, kafka.IllegalGeneration)
	assert.Equal(t, map[int]int64{0: 200}, committed(t, topic, g, 1), "b's commit stands")
	assert.Empty(t, a.Assignment())
}

// Partitions added to the topic while a member runs with StartOffset last
// start at their first offset: the messages produced to them before the
// group assigned them are read, as on the static path.
func TestGroupAddedPartitionsStartAtFirstOffset(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 3)
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.StartOffset = kafka.LastOffset
	cfg.MetadataMaxAge = time.Hour // the refresh below is the one that sees the new partition
	a := open(t, cfg)
	assignedTo(t, 1, a)
	require.NoError(t, cluster.AddPartitions(testCtx(t), topic, 2))
	produce(t, topic, 1, 0, 5) // before the group knows of partition 1
	a.meta.await(testCtx(t))
	require.Eventually(t, func() bool { return slices.Equal(a.Assignment(), []int{0, 1}) }, 30*time.Second, 10*time.Millisecond)
	produce(t, topic, 1, 5, 1)
	msgs := drain(t, a, 6, 6)
	checkOrder(t, msgs, map[int]int64{1: 0})
	assert.Equal(t, int64(0), a.Stats().Partitions[0].Lag, "partition 0 still starts at its end")
}

// A member that has not heard from its coordinator for its session timeout
// (its heartbeats stall: a paused process, a cut network) is probably out
// of the group, its partitions someone else's: it starts no handler until
// the coordinator answers again. Then it rejoins and goes on.
func TestGroupSilentMemberStartsNoHandler(t *testing.T) {
	t.Parallel()
	const n, per = 2, 3000
	topic := backlog(t, n, per)
	g := group(t)
	var f faults
	cfg := groupCfg(topic, g)
	cfg.Dialer = f.dialer(20 * time.Second) // a held heartbeat waits past the session timeout
	a := open(t, cfg)
	assignedTo(t, n, a)

	var mu sync.Mutex
	var starts []time.Time
	started := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(starts)
	}
	ctx, cancel := context.WithCancel(testCtx(t))
	var wg sync.WaitGroup
	wg.Go(func() {
		err := a.Process(ctx, ProcessConfig{Ordering: Unordered, Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
			mu.Lock()
			starts = append(starts, time.Now())
			mu.Unlock()
			select { // a handler that takes a while: the backlog lasts
			case <-time.After(10 * time.Millisecond):
			case <-ctx.Done():
			}
			return nil
		})
		assert.ErrorIs(t, err, context.Canceled)
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	require.Eventually(t, func() bool { return started() >= 20 }, 30*time.Second, 10*time.Millisecond)

	held := time.Now()
	f.hold(heartbeatKey()) // the coordinator hears nothing from a
	require.Eventually(t, func() bool { return a.Stats().Suspended }, 30*time.Second, 10*time.Millisecond)
	s := a.Stats()
	require.False(t, s.LastHeard.After(held), "a heard from the coordinator after its heartbeats stalled")
	silentAt := s.LastHeard.Add(cfg.SessionTimeout)
	before := started()
	// Nothing to wait for: a's handlers must not start. Give them a
	// second to break the rule.
	time.Sleep(time.Second)
	mu.Lock()
	late := 0
	for _, at := range starts {
		// A handler that passed its check just as the session ran out
		// may start a moment after.
		if at.After(silentAt.Add(50 * time.Millisecond)) {
			late++
		}
	}
	mu.Unlock()
	assert.Zero(t, late, "handlers started after the member's session ran out")
	assert.Equal(t, before, started(), "handlers started while suspended")

	// The heartbeat goes out: the coordinator dropped a (or, on a slow
	// broker, not yet); either way a goes on in the group.
	f.clear()
	require.Eventually(t, func() bool { return started() > before+20 }, 60*time.Second, 10*time.Millisecond,
		"a handles again once its coordinator answers")
	assert.False(t, a.Stats().Suspended)
}

// GetMessages, likewise, delivers nothing new while the member has not
// heard from its coordinator for its session timeout.
func TestGroupSilentMemberDeliversNothing(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 2000)
	g := group(t)
	var f faults
	cfg := groupCfg(topic, g)
	cfg.Dialer = f.dialer(20 * time.Second)
	a := open(t, cfg)
	assignedTo(t, 1, a)
	drain(t, a, 10, 10)

	f.hold(heartbeatKey())
	require.Eventually(t, func() bool { return a.Stats().Suspended }, 30*time.Second, 10*time.Millisecond)
	msgs, err := a.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	assert.Empty(t, msgs, "Block(false) while suspended")
	msgs, err = a.GetMessages(testCtx(t), 10, Timeout(200*time.Millisecond))
	require.NoError(t, err)
	assert.Empty(t, msgs, "a blocking call while suspended times out with nothing")

	f.clear()
	got := drain(t, a, 10, 10) // a rejoins (or was never dropped) and goes on
	assert.Len(t, got, 10)
}
