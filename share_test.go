package multiconsumer

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
)

// shareCfg is a share-group member's Config on topic and group g.
func shareCfg(topic, g string) Config {
	cfg := Config{Topic: topic, Group: g, ShareGroup: true, QueueSize: 64}
	if os.Getenv("MULTICONSUMER_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// seen counts the records of a share group's members, by partition and
// offset.
type seen struct {
	mu     sync.Mutex
	counts map[string]int
	by     map[string]int // record -> the member that got it last
}

func newSeen() *seen { return &seen{counts: map[string]int{}, by: map[string]int{}} }

func (s *seen) add(member int, msgs ...kafka.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		k := fmt.Sprintf("%d-%d", m.Partition, m.Offset)
		s.counts[k]++
		s.by[k] = member
	}
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.counts)
}

func (s *seen) twice() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, n := range s.counts {
		if n > 1 {
			out = append(out, k)
		}
	}
	return out
}

// Three members on one partition: each gets a real share, and a clean run
// hands out each record once.
func TestShareGroupMembersSplitOnePartition(t *testing.T) {
	t.Parallel()
	const n = 600
	topic := backlog(t, 1, n)
	g := group(t)
	ctx := testCtx(t)
	var members []*MultiConsumer
	for range 3 {
		members = append(members, open(t, shareCfg(topic, g)))
	}
	s := newSeen()
	per := make([]int, len(members))
	var wg sync.WaitGroup
	for i, c := range members {
		wg.Go(func() {
			for s.distinct() < n && ctx.Err() == nil {
				msgs, err := c.GetMessages(ctx, 5, Timeout(200*time.Millisecond))
				if err != nil {
					return
				}
				s.add(i, msgs...)
				per[i] += len(msgs)
				time.Sleep(time.Millisecond) // each takes its time, as a handler would
			}
		})
	}
	wg.Wait()
	require.Equal(t, n, s.distinct())
	assert.Empty(t, s.twice(), "records delivered twice")
	t.Logf("shares: %v", per)
	for i, k := range per {
		assert.Greater(t, k, n/20, "member %d got %d of %d", i, k, n)
	}
	// Coming back accepted what each took; Close releases nothing more.
	for _, c := range members {
		_, err := c.GetMessages(ctx, 0)
		require.NoError(t, err)
		require.NoError(t, c.Commit(ctx))
	}
	for i, c := range members {
		st := c.Stats()
		assert.Equal(t, int64(per[i]), st.Share.Accepted, "member %d", i)
		assert.Zero(t, st.Share.Held, "member %d", i)
		assert.NotEmpty(t, st.MemberID)
		assert.Positive(t, st.Generation)
	}
}

// Config errors of share groups.
func TestShareGroupConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{Topic: "t", ShareGroup: true}, "Group"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, JoinGroup: true}, "JoinGroup"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, Partitions: []int{0}}, "Partitions"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, InstanceID: "i"}, "InstanceID"},
	} {
		tc.cfg.Brokers = cluster.Brokers()
		_, err := New(context.Background(), tc.cfg)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, "%+v", tc.cfg)
		assert.Equal(t, tc.field, ce.Field)
	}
}

// shortLocks returns brokers on which share group g's acquisition lock is
// lock, and a topic of partitions partitions holding perPartition messages
// there: an embedded cluster of its own (kfake takes the lock from its
// broker config), or, on Kafka, the shared cluster with the group's
// share.record.lock.duration.ms set (scripts/kafka.sh lowers the broker's
// minimum).
func shortLocks(t *testing.T, g string, lock time.Duration, partitions, perPartition int) (brokers []string, tc *kafkatest.Cluster, topic string) {
	t.Helper()
	ms := strconv.Itoa(int(lock / time.Millisecond))
	if cluster.Embedded() {
		kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.BrokerConfigs(map[string]string{
			"group.share.record.lock.duration.ms": ms,
			"share.record.lock.sweep.interval.ms": "20",
		}))
		require.NoError(t, err)
		t.Cleanup(kf.Close)
		tc, err = kafkatest.Connect(kf.ListenAddrs()...)
		require.NoError(t, err)
		t.Cleanup(tc.Close)
	} else {
		tc = cluster
		require.NoError(t, tc.SetGroupConfig(testCtx(t), g, map[string]string{
			"share.record.lock.duration.ms": ms,
			"share.auto.offset.reset":       "earliest",
		}))
	}
	topic = kafkatest.UniqueName("share")
	require.NoError(t, tc.CreateTopic(testCtx(t), topic, partitions))
	if perPartition > 0 {
		require.NoError(t, tc.ProduceN(testCtx(t), topic, partitions, perPartition))
	}
	return tc.Brokers(), tc, topic
}

// openOn is open on brokers.
func openOn(t *testing.T, brokers []string, cfg Config) *MultiConsumer {
	t.Helper()
	cfg.Brokers = brokers
	c, err := New(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Process in a share group: a failed attempt is retried here, nothing is
// lost, and each record is accepted once.
func TestShareGroupProcessRetries(t *testing.T) {
	t.Parallel()
	const n = 200
	topic := backlog(t, 2, n/2)
	c := open(t, shareCfg(topic, group(t)))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := newSeen()
	var mu sync.Mutex
	attempts := map[string]int{}
	err := c.Process(ctx, ProcessConfig{Ordering: Unordered, Concurrency: 8, RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
		k := fmt.Sprintf("%d-%d", m.Partition, m.Offset)
		mu.Lock()
		attempts[k]++
		first := attempts[k] == 1
		mu.Unlock()
		if first {
			return fmt.Errorf("first attempt of %s fails", k)
		}
		assert.Equal(t, 1, DeliveryCount(m), "retried here, not redelivered")
		s.add(0, m)
		if s.distinct() == n {
			cancel()
		}
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	assert.Empty(t, s.twice())
	require.Equal(t, n, s.distinct())
	require.NoError(t, c.Commit(testCtx(t)))
	st := c.Stats()
	assert.Equal(t, int64(n), st.Share.Accepted)
	assert.Equal(t, int64(n), st.Process.Retries)
}

// A record given up on: rejected without OnGiveUp (Process goes on, and no
// member gets it again), accepted when OnGiveUp succeeds.
func TestShareGroupGiveUp(t *testing.T) {
	t.Parallel()
	for _, hook := range []bool{false, true} {
		name := "without-hook"
		if hook {
			name = "with-hook"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const n = 50
			topic := backlog(t, 1, n)
			g := group(t)
			c := open(t, shareCfg(topic, g))
			ctx, cancel := context.WithCancel(testCtx(t))
			defer cancel()
			var mu sync.Mutex
			done, gaveUp := 0, 0
			pc := ProcessConfig{Concurrency: 4, MaxAttempts: 2, RetryBackoff: time.Millisecond}
			if hook {
				pc.OnGiveUp = func(ctx context.Context, m kafka.Message, err error) error {
					mu.Lock()
					defer mu.Unlock()
					gaveUp++
					return nil
				}
			}
			errc := make(chan error, 1)
			go func() {
				errc <- c.Process(ctx, pc, func(ctx context.Context, m kafka.Message) error {
					if m.Offset%10 == 3 {
						return fmt.Errorf("poison %d", m.Offset)
					}
					mu.Lock()
					done++
					mu.Unlock()
					return nil
				})
			}()
			require.Eventually(t, func() bool {
				st := c.Stats()
				return st.Share.Accepted+st.Share.Rejected == n
			}, 10*time.Second, 5*time.Millisecond, "a poison record does not stop Process")
			cancel()
			require.ErrorIs(t, <-errc, context.Canceled)
			st := c.Stats()
			if hook {
				assert.Equal(t, 5, gaveUp)
				assert.Equal(t, int64(n), st.Share.Accepted)
			} else {
				assert.Equal(t, int64(5), st.Share.Rejected)
				assert.Equal(t, int64(n-5), st.Share.Accepted)
			}
			assert.Equal(t, int64(5), st.Process.GivenUp)
			// Nothing is left for another member.
			require.NoError(t, c.Close())
			other := open(t, shareCfg(topic, g))
			msgs, err := other.GetMessages(testCtx(t), 10, Timeout(500*time.Millisecond))
			require.NoError(t, err)
			assert.Empty(t, msgs)
		})
	}
}

// Close releases what the member acquired and did not accept, at once:
// another member gets it long before the 30s lock would run out.
func TestShareGroupCloseReleases(t *testing.T) {
	t.Parallel()
	const n = 40
	topic := backlog(t, 1, n)
	g := group(t)
	a := open(t, shareCfg(topic, g))
	ctx := testCtx(t)
	first := drain(t, a, 10, 10) // delivered, not consumed (no coming back)
	require.Eventually(t, func() bool { return a.Stats().Share.Held == n }, 10*time.Second, 5*time.Millisecond,
		"the rest waits in a's queue")
	start := time.Now()
	require.NoError(t, a.Close())
	b := open(t, shareCfg(topic, g))
	got := drain(t, b, n, 100)
	assert.Less(t, time.Since(start), 10*time.Second)
	s := newSeen()
	s.add(1, got...)
	assert.Equal(t, n, s.distinct())
	assert.Empty(t, s.twice())
	for _, m := range got {
		if m.Offset < first[len(first)-1].Offset+1 {
			assert.Equal(t, 2, DeliveryCount(m), "offset %d: a's delivery counts", m.Offset)
		}
	}
	require.NoError(t, b.Commit(ctx))
	assert.Equal(t, int64(n), b.Stats().Share.Accepted)
}

// Acknowledge settles records one by one: a release hands the record out
// again (delivery count 2), a reject never; a record not held is an error,
// and nothing of the call is settled.
func TestShareGroupAcknowledge(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 3)
	g := group(t)
	c := open(t, shareCfg(topic, g))
	ctx := testCtx(t)
	msgs := drain(t, c, 3, 3)
	err := c.Acknowledge(ctx, AckAccept, msgs[0], kafka.Message{Topic: topic, Partition: 0, Offset: 99})
	require.ErrorIs(t, err, ErrNotHeld)
	require.NoError(t, c.Acknowledge(ctx, AckReject, msgs[0]))
	require.NoError(t, c.Acknowledge(ctx, AckRelease, msgs[1]))
	require.NoError(t, c.Acknowledge(ctx, AckAccept, msgs[2]))
	require.ErrorIs(t, c.Acknowledge(ctx, AckAccept, msgs[2]), ErrNotHeld, "settled already")
	again := drain(t, c, 1, 1)
	assert.Equal(t, msgs[1].Offset, again[0].Offset)
	assert.Equal(t, 2, DeliveryCount(again[0]))
	require.NoError(t, c.Commit(ctx))
	more, err := c.GetMessages(ctx, 10, Timeout(300*time.Millisecond))
	require.NoError(t, err)
	assert.Empty(t, more, "the rejected record is not handed out again")
	st := c.Stats()
	assert.Equal(t, int64(1), st.Share.Rejected)
	assert.Equal(t, int64(1), st.Share.Released)
	assert.Equal(t, int64(2), st.Share.Accepted)
	var ae *ArgError
	assert.ErrorAs(t, c.Acknowledge(ctx, AckKind(9), msgs[0]), &ae)

	plain := open(t, Config{Topic: topic})
	assert.ErrorIs(t, plain.Acknowledge(ctx, AckAccept, msgs[0]), ErrNotShareGroup)
}

// Iter and Messages accept what was delivered when the caller comes back.
func TestShareGroupIterAndMessages(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 20)
	c := open(t, shareCfg(topic, group(t)))
	ctx, cancel := context.WithCancel(testCtx(t))
	n := 0
	for _, err := range c.Messages(ctx) {
		require.NoError(t, err)
		if n++; n == 10 {
			break
		}
	}
	ch := c.Iter(ctx)
	for range 10 {
		<-ch
	}
	cancel()
	for range ch {
	}
	require.NoError(t, c.Commit(testCtx(t)))
	assert.Equal(t, int64(20), c.Stats().Share.Accepted)
}

// A handler that runs longer than three acquisition locks keeps its
// record: the member renews the lock, and another member on the partition
// does not get it meanwhile.
func TestShareGroupRenewsLongHandlers(t *testing.T) {
	t.Parallel()
	g := kafkatest.UniqueName("g")
	const lock = time.Second
	brokers, _, topic := shortLocks(t, g, lock, 1, 4)
	a := openOn(t, brokers, shareCfg(topic, g))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := newSeen()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = a.Process(ctx, ProcessConfig{Concurrency: 4, Ordering: Unordered}, func(ctx context.Context, m kafka.Message) error {
			s.add(0, m)
			select {
			case <-time.After(3*lock + 500*time.Millisecond):
			case <-ctx.Done():
			}
			return nil
		})
	})
	// a holds every record, in its handlers, before b comes.
	require.Eventually(t, func() bool { return a.Stats().Process.InFlight == 4 }, 30*time.Second, 5*time.Millisecond)
	b := openOn(t, brokers, shareCfg(topic, g))
	wg.Go(func() {
		for ctx.Err() == nil {
			msgs, err := b.GetMessages(ctx, 10, Timeout(100*time.Millisecond))
			if err != nil {
				return
			}
			s.add(1, msgs...)
		}
	})
	require.Eventually(t, func() bool { return a.Stats().Share.Accepted == 4 }, 30*time.Second, 10*time.Millisecond,
		"a completes its four records")
	cancel()
	wg.Wait()
	assert.Empty(t, s.twice(), "a record handed to both members")
	assert.Zero(t, b.Stats().Share.Acquired, "b got none of a's records")
	st := a.Stats()
	t.Logf("a: %+v", st.Share)
	if st.Share.Renew {
		assert.Positive(t, st.Share.Renewed)
	}
	assert.Zero(t, st.Share.LockExpiries+b.Stats().Share.LockExpiries)
}

// Dropped connections: a share session ends with its connection, and the
// broker releases its records; the member opens a new one and goes on.
// Nothing is lost, and no record is accepted twice.
func TestShareGroupDroppedConnections(t *testing.T) {
	t.Parallel()
	const n = 1000
	topic := backlog(t, 2, n/2)
	g := group(t)
	f := &faults{}
	cfg := shareCfg(topic, g)
	cfg.Dialer = f.dialer(5 * time.Second)
	a := open(t, cfg)
	b := open(t, shareCfg(topic, g))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := newSeen()
	var wg sync.WaitGroup
	for i, c := range []*MultiConsumer{a, b} {
		wg.Go(func() {
			_ = c.Process(ctx, ProcessConfig{Concurrency: 2}, func(ctx context.Context, m kafka.Message) error {
				s.add(i, m)
				time.Sleep(2 * time.Millisecond)
				return nil
			})
		})
	}
	accepted := func() int64 { return a.Stats().Share.Accepted + b.Stats().Share.Accepted }
	require.Eventually(t, func() bool { return a.Stats().Share.Accepted > 0 }, 30*time.Second, time.Millisecond)
	for f.hits.Load() < 5 && accepted() < n {
		f.block(kmsg.ShareFetch, kmsg.ShareAcknowledge)
		time.Sleep(10 * time.Millisecond)
		f.allow(kmsg.ShareFetch, kmsg.ShareAcknowledge)
		time.Sleep(50 * time.Millisecond)
	}
	if !assert.Eventually(t, func() bool { return accepted() == n }, 30*time.Second, 10*time.Millisecond) {
		for i, c := range []*MultiConsumer{a, b} {
			st := c.Stats()
			t.Logf("member %d: share %+v queue %d process %+v", i, st.Share, st.QueueLen, st.Process)
		}
		t.FailNow()
	}
	cancel()
	wg.Wait()
	assert.Positive(t, f.hits.Load(), "no connection dropped")
	assert.Equal(t, n, s.distinct(), "nothing lost")
	require.NoError(t, a.Close())
	require.NoError(t, b.Close())
	assert.Equal(t, int64(n), accepted(), "no record accepted twice")
	t.Logf("handled twice: %d; a lost %d acknowledgements", len(s.twice()), a.Stats().Share.AckErrors)
}

// envShareMember makes the test binary run TestShareMemberProcess, a
// member process of TestShareGroupKilledMember: "topic,group,broker,...".
const envShareMember = "MULTICONSUMER_SHARE_MEMBER"

// TestShareMemberProcess is a share-group member process: Process, whose
// handler prints "got partition offset" and then waits forever, until the
// process is killed.
func TestShareMemberProcess(t *testing.T) {
	spec := os.Getenv(envShareMember)
	if spec == "" {
		t.Skip("runs as a member process of TestShareGroupKilledMember")
	}
	parts := strings.Split(spec, ",")
	cfg := shareCfg(parts[0], parts[1])
	cfg.Brokers = parts[2:]
	c, err := New(context.Background(), cfg)
	require.NoError(t, err)
	var mu sync.Mutex
	_ = c.Process(context.Background(), ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
		mu.Lock()
		fmt.Printf("got %d %d\n", m.Partition, m.Offset)
		mu.Unlock()
		select {}
	})
}

// A member killed with SIGKILL (no release, no leave): the records it held
// come back (when its connection drops, or at the latest when their locks
// run out), and the other member completes them.
func TestShareGroupKilledMember(t *testing.T) {
	t.Parallel()
	g := kafkatest.UniqueName("g")
	const n = 20
	brokers, _, topic := shortLocks(t, g, 2*time.Second, 1, n)
	cmd := exec.Command(os.Args[0], "-test.run=^TestShareMemberProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), envShareMember+"="+strings.Join(append([]string{topic, g}, brokers...), ","))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	held := map[int64]bool{}
	sc := bufio.NewScanner(out)
	for len(held) < 4 && sc.Scan() { // its four handlers run
		var p int
		var off int64
		if _, err := fmt.Sscanf(sc.Text(), "got %d %d", &p, &off); err == nil {
			held[off] = true
		}
	}
	require.Len(t, held, 4, "the member process did not start its handlers")
	require.NoError(t, cmd.Process.Kill())
	_ = cmd.Wait()

	b := openOn(t, brokers, shareCfg(topic, g))
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := newSeen()
	errc := make(chan error, 1)
	go func() {
		errc <- b.Process(ctx, ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
			if held[m.Offset] {
				assert.GreaterOrEqual(t, DeliveryCount(m), 2, "offset %d was the killed member's", m.Offset)
			}
			s.add(1, m)
			return nil
		})
	}()
	require.Eventually(t, func() bool { return b.Stats().Share.Accepted == n }, 30*time.Second, 10*time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	assert.Equal(t, n, s.distinct())
	assert.Empty(t, s.twice())
}

// A new share group starts where StartOffset says (share.auto.offset.reset
// latest: the backlog is not read); a group that exists keeps its setting.
func TestShareGroupStartOffset(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 10)
	g := group(t)
	cfg := shareCfg(topic, g)
	cfg.StartOffset = kafka.LastOffset
	c := open(t, cfg)
	// The group's place in the partition is set at its first fetch: wait
	// for it (the broker's first answer says the lock), then produce.
	require.Eventually(t, func() bool { return c.Stats().Share.AcquisitionLock > 0 }, 30*time.Second, 5*time.Millisecond)
	msgs, err := c.GetMessages(testCtx(t), 10, Timeout(300*time.Millisecond))
	require.NoError(t, err)
	assert.Empty(t, msgs, "latest: the backlog is not read")
	produce(t, topic, 0, 10, 5)
	msgs = drain(t, c, 5, 5)
	assert.EqualValues(t, 10, msgs[0].Offset)

	// An earliest group keeps reading from the start, whatever a new
	// member's StartOffset says.
	g2 := group(t)
	early := open(t, shareCfg(topic, g2))
	require.Len(t, drain(t, early, 15, 15), 15)
	require.NoError(t, early.Commit(testCtx(t)))
	require.NoError(t, early.Close())
	cfg.Group = g2
	again := open(t, cfg)
	produce(t, topic, 0, 15, 1)
	got := drain(t, again, 1, 1)
	assert.EqualValues(t, 15, got[0].Offset, "the group's place, after what was accepted")
}

// A broker without share groups (Kafka before 4.2): New says what is
// missing.
func TestShareGroupUnsupportedBroker(t *testing.T) {
	t.Parallel()
	brokers, topic := oldBroker(t)
	cfg := shareCfg(topic, "g")
	cfg.Brokers = brokers
	_, err := New(testCtx(t), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ShareGroupHeartbeat (API 76)")
}

// oldBroker starts an embedded Kafka 3.9 (no KIP-848, no share groups) with
// a topic of one partition, closed when the test ends.
func oldBroker(t *testing.T) (brokers []string, topic string) {
	t.Helper()
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.MaxVersions(kversion.V3_9_0()))
	require.NoError(t, err)
	t.Cleanup(kf.Close)
	tc, err := kafkatest.Connect(kf.ListenAddrs()...)
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	topic = kafkatest.UniqueName("old")
	require.NoError(t, tc.CreateTopic(testCtx(t), topic, 1))
	return kf.ListenAddrs(), topic
}

// rawBatch is an uncompressed record batch (v2) of the offsets base+deltas,
// each record's value its offset in decimal.
func rawBatch(base int64, deltas ...int64) []byte {
	var recs []byte
	for _, d := range deltas {
		var r []byte
		r = append(r, 0)               // attributes
		r = binary.AppendVarint(r, 0)  // timestamp delta
		r = binary.AppendVarint(r, d)  // offset delta
		r = binary.AppendVarint(r, -1) // no key
		v := strconv.AppendInt(nil, base+d, 10)
		r = binary.AppendVarint(r, int64(len(v)))
		r = append(r, v...)
		r = binary.AppendVarint(r, 0) // no headers
		recs = binary.AppendVarint(recs, int64(len(r)))
		recs = append(recs, r...)
	}
	b := make([]byte, 61, 61+len(recs))
	binary.BigEndian.PutUint64(b, uint64(base))
	binary.BigEndian.PutUint32(b[8:], uint32(49+len(recs)))
	b[16] = 2
	binary.BigEndian.PutUint32(b[23:], uint32(deltas[len(deltas)-1]))
	binary.BigEndian.PutUint32(b[57:], uint32(len(deltas)))
	b = append(b, recs...)
	binary.BigEndian.PutUint32(b[17:], crc32.Checksum(b[21:], castagnoli))
	return b
}

// What eachAcquiredBatch hands to decode holds what was acquired, never
// less, and no batch without an acquired record.
func TestEachAcquiredBatch(t *testing.T) {
	seq := func(n int) []int64 {
		out := make([]int64, n)
		for i := range out {
			out[i] = int64(i)
		}
		return out
	}
	for _, tc := range []struct {
		name   string
		raw    [][]byte
		ranges []offsetRange
	}{
		{"whole", [][]byte{rawBatch(0, seq(10)...)}, []offsetRange{{0, 9}}},
		{"middle", [][]byte{rawBatch(0, seq(100)...)}, []offsetRange{{40, 59}}},
		{"head", [][]byte{rawBatch(0, seq(100)...)}, []offsetRange{{0, 10}}},
		{"near the head", [][]byte{rawBatch(0, seq(100)...)}, []offsetRange{{2, 10}}},
		{"tail", [][]byte{rawBatch(0, seq(100)...)}, []offsetRange{{90, 99}}},
		{"two ranges", [][]byte{rawBatch(0, seq(100)...)}, []offsetRange{{20, 29}, {70, 79}}},
		{"across batches", [][]byte{rawBatch(0, seq(50)...), rawBatch(50, seq(50)...), rawBatch(100, seq(50)...)}, []offsetRange{{30, 120}}},
		{"second batch only", [][]byte{rawBatch(0, seq(50)...), rawBatch(50, seq(50)...)}, []offsetRange{{60, 70}}},
		{"gaps in the batch", [][]byte{rawBatch(0, 0, 5, 10, 50, 51, 90)}, []offsetRange{{5, 51}}},
		{"none", [][]byte{rawBatch(0, seq(50)...)}, []offsetRange{{60, 70}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := bytes.Join(tc.raw, nil)
			var want []int64
			require.NoError(t, decodeBatches("t", 0, slices.Clone(raw), func(o int64) bool {
				return slices.ContainsFunc(tc.ranges, func(r offsetRange) bool { return o >= r.first && o <= r.last })
			}, func(m kafka.Message) { want = append(want, m.Offset) }))
			var got, decoded []int64
			eachAcquiredBatch(raw, tc.ranges, func(b []byte) bool {
				require.NoError(t, decodeBatches("t", 0, b, func(int64) bool { return true }, func(m kafka.Message) {
					decoded = append(decoded, m.Offset)
					assert.Equal(t, strconv.FormatInt(m.Offset, 10), string(m.Value))
					if slices.ContainsFunc(tc.ranges, func(r offsetRange) bool { return m.Offset >= r.first && m.Offset <= r.last }) {
						got = append(got, m.Offset)
					}
				}))
				return true
			})
			assert.Equal(t, want, got)
			t.Logf("decoded %d records for %d acquired", len(decoded), len(want))
		})
	}
}

// downDialer dials brokers until down makes one unreachable: its
// connections close, and dialing it is refused, as when its machine dies.
type downDialer struct {
	mu    sync.Mutex
	down  map[string]bool
	conns map[string][]net.Conn
}

func (d *downDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down[addr] {
		return nil, &net.OpError{Op: "dial", Net: network, Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	}
	c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err == nil {
		d.conns[addr] = append(d.conns[addr], c)
	}
	return c, err
}

func (d *downDialer) kill(addr string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.down[addr] = true
	for _, c := range d.conns[addr] {
		_ = c.Close()
	}
}

// leaderCluster is a 3-broker embedded cluster whose one partition is led
// by a broker other than the group's coordinator, with n records on it,
// and a share member whose connections to any broker down can cut.
type leaderCluster struct {
	kf           *kfake.Cluster
	tc           *kafkatest.Cluster
	topic        string
	addrs        []string
	leader, next int // the partition's leader, and the broker it can move to
	down         *downDialer
	c            *MultiConsumer
}

func newLeaderCluster(t *testing.T, n int) *leaderCluster {
	t.Helper()
	kf, tc, topic := ownCluster(t, 3, 1)
	g := group(t)
	lc := &leaderCluster{kf: kf, tc: tc, topic: topic, addrs: kf.ListenAddrs(),
		down: &downDialer{down: map[string]bool{}, conns: map[string][]net.Conn{}}}
	coord := int(kf.CoordinatorFor(g))
	lc.leader, lc.next = (coord+1)%3, (coord+2)%3
	require.NoError(t, kf.MoveTopicPartition(topic, 0, int32(lc.leader)))
	require.NoError(t, tc.ProduceN(testCtx(t), topic, 1, n))
	cfg := shareCfg(topic, g)
	cfg.Dialer = &kafka.Dialer{DialFunc: lc.down.dial, Timeout: 5 * time.Second}
	lc.c = openOn(t, []string{lc.addrs[coord], lc.addrs[lc.next], lc.addrs[lc.leader]}, cfg)
	return lc
}

// moveAndKill moves the partition to the other broker and cuts the old
// leader off.
func (lc *leaderCluster) moveAndKill(t *testing.T) {
	t.Helper()
	require.NoError(t, lc.kf.MoveTopicPartition(lc.topic, 0, int32(lc.next)))
	lc.down.kill(lc.addrs[lc.leader])
}

// The leader of a share member's partition dies and the partition moves to
// another broker: the member's session with the dead one ends, its close
// cannot get through, and the member goes on with the new leader at once
// (it does not wait on the dead broker), and Close does not wait on it.
func TestShareGroupLeaderDies(t *testing.T) {
	t.Parallel()
	lc := newLeaderCluster(t, 50)
	ctx, c := testCtx(t), lc.c
	var handled atomic.Int64
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = c.Process(pctx, ProcessConfig{Concurrency: 2}, func(ctx context.Context, m kafka.Message) error {
			handled.Add(1)
			return nil
		})
	})
	require.Eventually(t, func() bool { return handled.Load() == 50 }, 20*time.Second, 5*time.Millisecond)

	lc.moveAndKill(t)
	require.NoError(t, lc.tc.ProduceN(ctx, lc.topic, 1, 50))
	require.Eventually(t, func() bool { return handled.Load() >= 100 }, 15*time.Second, 5*time.Millisecond,
		"the member waited on the dead leader")
	cancel()
	wg.Wait()
	start := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(start), 3*time.Second, "Close waited on the dead leader")
}

// A share member's partition moves to another broker while the member still
// holds records it acquired from the old leader; then the old leader dies.
// The old session ends (its acceptances cannot go), the member drops the
// partition's queued messages, and every record is handled all the same.
// (On kfake the old leader's connection closing releases all the member's
// records of the partition, the new session's too, so this does not show
// that the new session's are released by the member itself:
// TestAckerReleasesStaleRecords does.)
func TestShareGroupOldLeaderDiesAfterAMove(t *testing.T) {
	t.Parallel()
	lc := newLeaderCluster(t, 20)
	ctx, c := testCtx(t), lc.c
	hold := make(chan struct{})
	var held atomic.Int64
	s := newSeen()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = c.Process(pctx, ProcessConfig{Concurrency: 2}, func(ctx context.Context, m kafka.Message) error {
			if held.Add(1) <= 2 {
				<-hold // the old leader's records wait in the handlers
			}
			s.add(0, m)
			return nil
		})
	})
	require.Eventually(t, func() bool { return held.Load() >= 2 && c.Stats().Share.Acquired >= 20 }, 20*time.Second, 5*time.Millisecond)

	require.NoError(t, lc.kf.MoveTopicPartition(lc.topic, 0, int32(lc.next)))
	require.NoError(t, lc.tc.ProduceN(ctx, lc.topic, 1, 20))
	require.Eventually(t, func() bool { return c.Stats().Share.Acquired >= 40 }, 20*time.Second, 5*time.Millisecond,
		"the new leader's session acquired the new records")
	lc.down.kill(lc.addrs[lc.leader])
	close(hold) // their acceptances cannot reach the old leader: its session ends
	require.Eventually(t, func() bool { return s.distinct() == 40 }, 15*time.Second, 5*time.Millisecond,
		"records held and never handled: %+v", c.Stats().Share)
	cancel()
	wg.Wait()
}

// When a share session ends, lostShare renews its partitions' epochs and
// drops their batches, other sessions' records among them: the acker
// releases the records that waited in a batch of an older epoch (not those
// delivered or being handled), and those acquired from now on for one.
func TestAckerReleasesStaleRecords(t *testing.T) {
	woken := 0
	a := newAcker("t", slog.New(slog.DiscardHandler), func() { woken++ })
	now := time.Now()
	a.acquired(0, 1, []offsetRange{{0, 3}}, now, 5) // partition 0, session 1, epoch 5
	a.acquired(1, 1, []offsetRange{{0, 1}}, now, 5) // partition 1: not renewed
	a.handling(0, 0)                                // being handled
	a.deliverOne(0, 1, false)                       // delivered to the caller
	a.releaseStale(map[int]uint64{0: 6})
	assert.Equal(t, 1, woken, "the session sends the releases")
	kinds := func(session uint64) map[recKey]AckKind {
		out := map[recKey]AckKind{}
		for p, its := range a.take(session, now, false) {
			for _, it := range its {
				out[recKey{p, it.off}] = it.kind
			}
		}
		return out
	}
	assert.Equal(t, map[recKey]AckKind{{0, 2}: AckRelease, {0, 3}: AckRelease}, kinds(1),
		"queued in a stale batch: released; handled or delivered: not; another partition: not")

	a.acquired(0, 2, []offsetRange{{10, 11}}, now, 5) // for a batch of the stale epoch
	a.acquired(0, 2, []offsetRange{{12, 12}}, now, 6) // for one of the new epoch
	assert.Equal(t, 2, woken)
	assert.Equal(t, map[recKey]AckKind{{0, 10}: AckRelease, {0, 11}: AckRelease}, kinds(2))
}
