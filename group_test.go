package multiconsumer

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// groupCfg is a group member's config with timeouts short enough for tests
// (Kafka's group.min.session.timeout.ms is 6s).
func groupCfg(topic, group string) Config {
	cfg := Config{
		Topic: topic, Group: group, JoinGroup: true,
		SessionTimeout: 6 * time.Second, RebalanceTimeout: 5 * time.Second, HeartbeatInterval: 100 * time.Millisecond,
		GroupProtocol: testGroupProtocol,
	}
	if os.Getenv("MULTICONSUMER_TEST_LOG") != "" {
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return cfg
}

// envGroupProtocol runs the group tests under a group protocol:
// "classic" (the default) or "consumer" (KIP-848). .ci/run runs them under
// both.
const envGroupProtocol = "MULTICONSUMER_GROUP_PROTOCOL"

var testGroupProtocol = os.Getenv(envGroupProtocol)

// heartbeatKey is the request by which a member of the tests' protocol
// heartbeats; joinKey, that by which it joins.
func heartbeatKey() kmsg.Key {
	if testGroupProtocol == GroupProtocolConsumer {
		return kmsg.ConsumerGroupHeartbeat
	}
	return kmsg.Heartbeat
}

func joinKey() kmsg.Key {
	if testGroupProtocol == GroupProtocolConsumer {
		return kmsg.ConsumerGroupHeartbeat
	}
	return kmsg.JoinGroup
}

// classicOnly skips a test of the classic protocol's own requests (JoinGroup,
// SyncGroup, its assignors) when the group tests run under "consumer".
func classicOnly(t *testing.T) {
	t.Helper()
	if testGroupProtocol == GroupProtocolConsumer {
		t.Skip("a test of the classic protocol's requests; the group tests run under " + envGroupProtocol + "=consumer")
	}
}

// assignedTo waits until the members' assignments are disjoint, cover the
// partitions 0..n-1, and are balanced, and returns them.
func assignedTo(t *testing.T, n int, members ...*MultiConsumer) [][]int {
	t.Helper()
	var got [][]int
	require.Eventually(t, func() bool {
		got = got[:0]
		var all []int
		for _, m := range members {
			a := m.Assignment()
			got = append(got, a)
			all = append(all, a...)
		}
		slices.Sort(all)
		if len(all) != n || len(slices.Compact(slices.Clone(all))) != n {
			return false
		}
		for _, a := range got {
			if len(a) < n/len(members) || len(a) > (n+len(members)-1)/len(members) {
				return false
			}
		}
		return true
	}, 30*time.Second, 20*time.Millisecond, "assignments %v", func() [][]int { return got })
	return got
}

func TestGroupConfigErrors(t *testing.T) {
	t.Parallel()
	base := Config{Brokers: []string{"127.0.0.1:1"}, Topic: "t"}
	for _, tc := range []struct {
		field string
		cfg   func(c *Config)
	}{
		{"Group", func(c *Config) { c.JoinGroup = true }},
		{"Partitions", func(c *Config) { c.JoinGroup, c.Group, c.Partitions = true, "g", []int{0} }},
		{"InstanceID", func(c *Config) { c.Group, c.InstanceID = "g", "i" }},
		{"HeartbeatInterval", func(c *Config) {
			c.JoinGroup, c.Group, c.SessionTimeout, c.HeartbeatInterval = true, "g", time.Second, time.Second
		}},
		{"SessionTimeout", func(c *Config) { c.JoinGroup, c.Group, c.SessionTimeout = true, "g", -1 }},
		{"Assignors", func(c *Config) { c.JoinGroup, c.Group, c.Assignors = true, "g", []string{"sticky"} }},
		// The floors: values no deployment wants, which the broker
		// accepts (RebalanceTimeout, HeartbeatInterval) or refuses only
		// at the first join (SessionTimeout).
		{"SessionTimeout", func(c *Config) { c.JoinGroup, c.Group, c.SessionTimeout = true, "g", time.Nanosecond }},
		{"SessionTimeout", func(c *Config) { c.JoinGroup, c.Group, c.SessionTimeout = true, "g", minSessionTimeout-1 }},
		{"SessionTimeout", func(c *Config) { c.JoinGroup, c.Group, c.SessionTimeout = true, "g", maxGroupTimeout+time.Millisecond }},
		{"RebalanceTimeout", func(c *Config) { c.JoinGroup, c.Group, c.RebalanceTimeout = true, "g", time.Nanosecond }},
		{"RebalanceTimeout", func(c *Config) { c.JoinGroup, c.Group, c.RebalanceTimeout = true, "g", minRebalanceTimeout-1 }},
		{"RebalanceTimeout", func(c *Config) { c.JoinGroup, c.Group, c.RebalanceTimeout = true, "g", 1<<62 }},
		{"HeartbeatInterval", func(c *Config) { c.JoinGroup, c.Group, c.HeartbeatInterval = true, "g", time.Nanosecond }},
		{"HeartbeatInterval", func(c *Config) { c.JoinGroup, c.Group, c.HeartbeatInterval = true, "g", minHeartbeatInterval-1 }},
	} {
		cfg := base
		tc.cfg(&cfg)
		_, err := New(testCtx(t), cfg)
		var cerr *ConfigError
		require.ErrorAs(t, err, &cerr, tc.field)
		assert.Equal(t, tc.field, cerr.Field)
	}
}

// The floors themselves are valid, and a SessionTimeout at its floor has a
// default HeartbeatInterval above its own.
func TestGroupConfigFloorsAccepted(t *testing.T) {
	t.Parallel()
	cfg, err := Config{
		Brokers: []string{"127.0.0.1:1"}, Topic: "t", Group: "g", JoinGroup: true,
		SessionTimeout: minSessionTimeout, RebalanceTimeout: minRebalanceTimeout,
	}.withDefaults()
	require.NoError(t, err)
	assert.GreaterOrEqual(t, cfg.HeartbeatInterval, minHeartbeatInterval)

	_, err = Config{
		Brokers: []string{"127.0.0.1:1"}, Topic: "t", Group: "g", JoinGroup: true,
		SessionTimeout: maxGroupTimeout, RebalanceTimeout: maxGroupTimeout, HeartbeatInterval: minHeartbeatInterval,
	}.withDefaults()
	require.NoError(t, err)
}

// Members of a group share the partitions: disjoint and complete after
// every join and leave, and only what moves is revoked (cooperative).
func TestGroupMembersShareThePartitions(t *testing.T) {
	t.Parallel()
	const n = 6
	topic := backlog(t, n, 0)
	g := group(t)
	var mu sync.Mutex
	revoked := map[string][]int{}
	cfgFor := func(name string) Config {
		cfg := groupCfg(topic, g)
		cfg.OnRevoked = func(ctx context.Context, parts []int) {
			mu.Lock()
			revoked[name] = append(revoked[name], parts...)
			mu.Unlock()
		}
		return cfg
	}
	a := open(t, cfgFor("a"))
	assignedTo(t, n, a)

	b := open(t, cfgFor("b"))
	got := assignedTo(t, n, a, b)
	mu.Lock()
	assert.ElementsMatch(t, got[1], revoked["a"], "a gives up exactly what b gets")
	mu.Unlock()
	kept := got[0]

	c := open(t, cfgFor("c"))
	got = assignedTo(t, n, a, b, c)
	for _, p := range got[0] {
		assert.Contains(t, kept, p, "cooperative-sticky: a keeps from what it had")
	}
	s := a.Stats()
	assert.NotEmpty(t, s.MemberID)
	assert.Positive(t, s.Generation)
	assert.GreaterOrEqual(t, s.Rebalances, int64(3))

	require.NoError(t, b.Close()) // leaves the group: the others take over at once
	assignedTo(t, n, a, c)
}

// Every message is delivered while members join and leave during a
// backlog; the committed offsets never go backwards, and after the last
// clean Close everything is committed.
func TestGroupChurnDeliversEverything(t *testing.T) {
	t.Parallel()
	const n, per = 4, 2000
	topic := backlog(t, n, per)
	g := group(t)

	// Sample the committed offsets: they never go backwards.
	sampling := make(chan struct{})
	var sampler sync.WaitGroup
	sampler.Go(func() {
		last := map[int]int64{}
		for {
			select {
			case <-sampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			offs, err := readCommitted(testCtx(t), topic, g, n)
			if !assert.NoError(t, err) {
				return
			}
			for p, off := range offs {
				assert.GreaterOrEqual(t, off, last[p], "partition %d's committed offset went back", p)
				last[p] = max(last[p], off)
			}
		}
	})

	var mu sync.Mutex
	seen := map[int]map[int64]int{}
	consume := func(c *MultiConsumer, stop <-chan struct{}) error {
		for {
			select {
			case <-stop:
				done, cancel := context.WithCancel(context.Background())
				cancel()
				_, _ = c.GetMessages(done, 1) // the clean end: consumes the last batch
				return nil
			default:
			}
			msgs, err := c.GetMessages(testCtx(t), 20, BlockFor(1), Timeout(100*time.Millisecond))
			if err != nil {
				return err
			}
			mu.Lock()
			for _, m := range msgs {
				if seen[m.Partition] == nil {
					seen[m.Partition] = map[int64]int{}
				}
				seen[m.Partition][m.Offset]++
			}
			mu.Unlock()
			time.Sleep(2 * time.Millisecond) // a handler
		}
	}
	total := func() int {
		mu.Lock()
		defer mu.Unlock()
		k := 0
		for _, offs := range seen {
			k += len(offs)
		}
		return k
	}
	// stop ends a member's loop with its clean end, and closes it.
	start := func(cfg Config) (stop func()) {
		c := open(t, cfg)
		quit := make(chan struct{})
		var wg sync.WaitGroup
		wg.Go(func() { assert.NoError(t, consume(c, quit)) })
		return func() {
			close(quit)
			wg.Wait()
			require.NoError(t, c.Close())
		}
	}
	cfg := groupCfg(topic, g)
	cfg.AutoCommitEveryN = 20
	stopA := start(cfg)
	require.Eventually(t, func() bool { return total() > 1000 }, 30*time.Second, 10*time.Millisecond)
	stopB := start(cfg)
	require.Eventually(t, func() bool { return total() > 2500 }, 30*time.Second, 10*time.Millisecond)
	stopC := start(cfg)
	require.Eventually(t, func() bool { return total() > 4000 }, 30*time.Second, 10*time.Millisecond)
	stopA() // leaves: b and c take its partitions
	require.Eventually(t, func() bool { return total() == n*per }, 60*time.Second, 10*time.Millisecond,
		"every message delivered")
	stopB()
	stopC()
	close(sampling)
	sampler.Wait()

	want := map[int]int64{}
	for p := range n {
		want[p] = per
	}
	assert.Equal(t, want, committed(t, topic, g, n), "everything committed after the last clean Close")
	dups := 0
	for _, offs := range seen {
		for _, k := range offs {
			dups += k - 1
		}
	}
	t.Logf("%d duplicates of %d messages", dups, n*per)
}

// A static member (InstanceID) that restarts within the session timeout
// gets its partitions back, and the other member keeps its own.
func TestGroupStaticMemberRestart(t *testing.T) {
	t.Parallel()
	const n = 4
	topic := backlog(t, n, 0)
	g := group(t)
	cfgA, cfgB := groupCfg(topic, g), groupCfg(topic, g)
	cfgA.InstanceID, cfgB.InstanceID = "a-"+g, "b-"+g
	cfgA.Brokers, cfgB.Brokers = cluster.Brokers(), cluster.Brokers()
	a, err := New(testCtx(t), cfgA)
	require.NoError(t, err)
	b := open(t, cfgB)
	got := assignedTo(t, n, a, b)
	genB := b.Stats().Generation
	require.NoError(t, a.Close()) // static: does not leave
	a2 := open(t, cfgA)
	got2 := assignedTo(t, n, a2, b)
	assert.Equal(t, got, got2, "same partitions back")
	if !cluster.Embedded() {
		// Kafka keeps the group stable when a static member rejoins with
		// the same protocols; kfake rebalances when the subscription's
		// bytes differ at all (here: the partitions it owned, which a
		// restarted member no longer knows).
		assert.Equal(t, genB, b.Stats().Generation, "the other member saw no rebalance")
	}
}

// A consumer outside the group (JoinGroup false) cannot commit while the
// group has members: a clear error, at once, not a retry loop.
func TestStaticCommitRejectedByLiveGroup(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 5)
	g := group(t)
	m := open(t, groupCfg(topic, g))
	assignedTo(t, 1, m)
	c := open(t, Config{Topic: topic, Group: g, ManualCommit: true})
	drain(t, c, 5, 5)
	start := time.Now()
	err := c.Commit(testCtx(t))
	require.Error(t, err)
	assert.ErrorContains(t, err, "has members")
	assert.Less(t, time.Since(start), 5*time.Second)
	assert.Positive(t, c.Stats().CommitErrors)
}

// A late member: its caller holds a batch of a partition that moves past
// the rebalance timeout, while the new owner consumes and commits further.
// When the caller comes back, the late member neither commits that
// partition nor delivers its messages.
func TestGroupLateMember(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 20)
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.RebalanceTimeout = 2 * time.Second
	cfg.AutoCommitEveryN, cfg.AutoCommitEveryT = 1, -1
	a := open(t, cfg)
	assignedTo(t, 2, a)
	held := drain(t, a, 40, 40) // both partitions, held: a does not come back yet
	require.Len(t, held, 40)

	b := open(t, cfg)
	got := assignedTo(t, 2, a, b)
	moved := got[1][0]
	msgs := drain(t, b, 20, 20)
	for _, m := range msgs {
		assert.Equal(t, moved, m.Partition)
	}
	require.NoError(t, b.Commit(testCtx(t)))

	// a comes back: it consumed its batch; only its own partition commits.
	more, err := a.GetMessages(testCtx(t), 10, Block(false))
	require.NoError(t, err)
	for _, m := range more {
		assert.NotEqual(t, moved, m.Partition, "a message of a partition a no longer owns")
	}
	require.NoError(t, a.Commit(testCtx(t)))
	if testGroupProtocol == GroupProtocolConsumer && !cluster.Embedded() {
		// Kafka fences a consumer-protocol member that does not revoke
		// within its rebalance timeout: a lost its other partition too,
		// and reads it again from its committed offset. The moved
		// partition's commit, b's, stands.
		assert.Equal(t, int64(20), committed(t, topic, g, 2)[moved])
	} else {
		assert.Equal(t, map[int]int64{0: 20, 1: 20}, committed(t, topic, g, 2))
	}
	assert.Equal(t, int64(20), b.Stats().Partitions[moved].Committed)
}

// Partitions added to the topic are picked up by the group: a metadata
// refresh sees them, the member rejoins, the leader assigns them.
func TestGroupPicksUpAddedPartitions(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 0)
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.MetadataMaxAge = 100 * time.Millisecond
	a := open(t, cfg)
	b := open(t, cfg)
	assignedTo(t, 2, a, b)
	require.NoError(t, cluster.AddPartitions(testCtx(t), topic, 4))
	assignedTo(t, 4, a, b)
	produce(t, topic, 3, 0, 1)
	produce(t, topic, 2, 0, 1)
	got := map[int]bool{}
	require.Eventually(t, func() bool {
		for _, c := range []*MultiConsumer{a, b} {
			msgs, err := c.GetMessages(testCtx(t), 10, Block(false))
			require.NoError(t, err)
			for _, m := range msgs {
				got[m.Partition] = true
			}
		}
		return got[2] && got[3]
	}, 30*time.Second, 20*time.Millisecond)
}

// envGroupChild runs TestGroupChildMember as a group member in a child
// process: "topic,group,broker,...".
const envGroupChild = "MULTICONSUMER_GROUP_CHILD"

// TestGroupChildMember is the child process of TestGroupKilledMember: a
// member that prints what it delivered ("partition offset" per message)
// until it is killed.
func TestGroupChildMember(t *testing.T) {
	spec := os.Getenv(envGroupChild)
	if spec == "" {
		t.Skip("runs as the child of TestGroupKilledMember")
	}
	parts := strings.Split(spec, ",")
	cfg := groupCfg(parts[0], parts[1])
	cfg.Brokers = parts[2:]
	cfg.AutoCommitEveryN = 10
	c, err := New(context.Background(), cfg)
	require.NoError(t, err)
	for {
		msgs, err := c.GetMessages(context.Background(), 10, BlockFor(1), Timeout(time.Second))
		require.NoError(t, err)
		for _, m := range msgs {
			fmt.Printf("%d %d\n", m.Partition, m.Offset)
		}
		time.Sleep(5 * time.Millisecond) // a handler
	}
}

// A member killed with SIGKILL while a backlog drains: its partitions go to
// the other member after the session timeout; every message is delivered
// by one or the other, the committed offsets never go backwards, and the
// messages delivered twice are at most what the killed member delivered
// since its last commit (about AutoCommitEveryN, plus the batch it held).
func TestGroupKilledMember(t *testing.T) {
	if testing.Short() {
		t.Skip("waits out a session timeout")
	}
	t.Parallel()
	const n, per = 4, 300
	topic := backlog(t, n, per)
	g := group(t)

	cmd := exec.Command(os.Args[0], "-test.run=^TestGroupChildMember$", "-test.count=1")
	cmd.Env = append(os.Environ(), envGroupChild+"="+strings.Join(append([]string{topic, g}, cluster.Brokers()...), ","))
	out, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	var mu sync.Mutex
	seen := map[[2]int64]int{}
	childSeen := 0
	var reader sync.WaitGroup
	reader.Go(func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			var p, o int64
			if _, err := fmt.Sscanf(sc.Text(), "%d %d", &p, &o); err == nil {
				mu.Lock()
				seen[[2]int64{p, o}]++
				childSeen++
				mu.Unlock()
			}
		}
	})
	count := func() (int, int) {
		mu.Lock()
		defer mu.Unlock()
		return len(seen), childSeen
	}
	require.Eventually(t, func() bool { _, k := count(); return k >= 100 }, 30*time.Second, 10*time.Millisecond)

	// The parent joins: the child gives it half the partitions.
	c := open(t, groupCfg(topic, g))
	take := func(count int) {
		msgs, err := c.GetMessages(testCtx(t), count, BlockFor(1), Timeout(100*time.Millisecond))
		require.NoError(t, err)
		mu.Lock()
		for _, m := range msgs {
			seen[[2]int64{int64(m.Partition), m.Offset}]++
		}
		mu.Unlock()
	}
	for len(c.Assignment()) == 0 || len(c.Assignment()) == n {
		take(10)
	}
	parentOwned := c.Assignment()
	atKill := committed(t, topic, g, n)
	require.NoError(t, cmd.Process.Kill()) // SIGKILL: no commit, no leave
	// Read to the end before Wait, which closes the pipe: what the child
	// printed (and committed) but the reader had not read yet would be
	// lost to the count.
	reader.Wait()
	_ = cmd.Wait()
	killedAt := time.Now()
	// Until the parent has taken the killed member's partitions over and
	// delivered them to their end: on a loaded machine the child may have
	// delivered all of them before the kill, and not committed the last.
	takenOver := func() bool {
		s := c.Stats()
		for p := range n {
			if ps, ok := s.Partitions[p]; !ok || ps.Delivered < per {
				return false
			}
		}
		return true
	}
	for {
		total, _ := count()
		if total == n*per && takenOver() {
			break
		}
		if time.Since(killedAt) >= 45*time.Second {
			mu.Lock()
			var missing []string
			for p := range n {
				for o := range per {
					if seen[[2]int64{int64(p), int64(o)}] == 0 {
						missing = append(missing, fmt.Sprintf("%d/%d", p, o))
					}
				}
			}
			mu.Unlock()
			s := c.Stats()
			require.Failf(t, "not taken over", "not everything delivered (%d of %d; missing %v), or not by the parent (it owns %v; "+
				"committed at the kill %v, now %v; the parent's partitions %+v; queued %d)",
				total, n*per, missing, c.Assignment(), atKill, committed(t, topic, g, n), s.Partitions, s.QueueLen)
		}
		take(50)
	}
	t.Logf("the killed member's partitions were taken over %v after the kill", time.Since(killedAt).Round(time.Millisecond))
	done, cancel := context.WithCancel(testCtx(t))
	cancel()
	_, _ = c.GetMessages(done, 1) // the clean end
	require.NoError(t, c.Close())
	want := map[int]int64{}
	for p := range n {
		want[p] = per
	}
	assert.Equal(t, want, committed(t, topic, g, n))
	dups, perPart := 0, map[int64]int{}
	for po, k := range seen {
		dups += k - 1
		perPart[po[0]] += k - 1
	}
	t.Logf("%d messages delivered twice of %d (per partition %v; committed at the kill %v; the parent owned %v)", dups, n*per, perPart, atKill, parentOwned)
	assert.LessOrEqual(t, dups, n*(10+10), "duplicates: at most AutoCommitEveryN and a batch per partition")
}

// A member whose Dialer has no client id shows DefaultClientID in the
// group's description (Kafka's tools list it as CLIENT-ID).
func TestGroupDefaultClientID(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	g := group(t)
	a := open(t, groupCfg(topic, g))
	assignedTo(t, 1, a)
	assert.Equal(t, DefaultClientID, a.Stats().ClientID)
	ids, err := cluster.GroupMemberClientIDs(testCtx(t), g)
	require.NoError(t, err)
	assert.Equal(t, []string{DefaultClientID}, ids)
}
