package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestGroupProtocolMigration rolls a group of three classic members to
// KIP-848's consumer protocol one member at a time, then back, on a topic of
// six partitions that a producer keeps writing to. Each step closes one
// member (a dynamic member leaves: LeaveGroup, or ConsumerGroupHeartbeat
// with epoch -1) and starts one of the other protocol in its place, then
// waits until the three own disjoint, balanced parts of the topic and read
// further.
//
// Kafka converts the classic group when the first consumer member joins it
// (GroupMetadataManager.validateOnlineUpgrade, ConsumerGroup.fromClassicGroup:
// every member's subscription must decode as a ConsumerProtocolSubscription
// and its assignment as a ConsumerProtocolAssignment without user data, or
// the joining member gets GROUP_ID_NOT_FOUND and the group stays classic);
// the classic members that join the consumer group later must offer a
// protocol every classic member in it offers; and the group turns classic
// again when its last consumer member leaves. So the steps also prove that
// our classic members' subscriptions and assignments are standard, and that
// Close leaves for real.
//
// What it checks, throughout: the committed offsets never go back (read
// every 20 ms); no partition is owned by two members at once (sampled every
// few ms; during a hand-over a partition may be owned by none); no member
// stops. Before the upgrade and after the downgrade, DescribeGroups shows
// subscriptions and assignments Kafka can convert. After every step,
// ListGroups gives the group's type: consumer from the first consumer
// member on, until the last one left. ConsumerGroupCommand (--list --type,
// --describe --state) says the group is a classic one at first, a consumer
// one (server assignor "uniform") once all three speak "consumer", and a
// classic one (cooperative-sticky) at the end. At the end, every message
// produced was read at least once, and the committed offsets are the ends
// of the partitions.
//
// It needs a real Kafka (KAFKA_BROKERS): kfake converts only empty groups.
// ConsumerGroupCommand needs the Kafka jars and java, as
// TestGroupJavaInterop does; without them that check is skipped.
// MULTICONSUMER_TEST_LOG=1 shows the members' log (always shown when the
// test fails).
func TestGroupProtocolMigration(t *testing.T) {
	if cluster.Embedded() {
		t.Skip("needs a real Apache Kafka: set KAFKA_BROKERS (scripts/kafka.sh start); kfake converts only empty groups")
	}
	const n = 3 * 2 // three members, two partitions each
	t0 := time.Now()
	topic := backlog(t, n, 0)
	g := group(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var logs syncBuffer // every member's log, shown if the test fails
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("MULTICONSUMER_TEST_LOG") != "" {
			t.Logf("members' log:\n%s", tailLines(logs.String(), 400))
		}
	})
	describe := groupDescriber(t, g)
	kcl, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...))
	require.NoError(t, err)
	t.Cleanup(kcl.Close)

	// The producer: one message to every partition every 20 ms.
	var prodMu sync.Mutex
	produced := make([]int, n) // per partition, the log end
	stopProducing := make(chan struct{})
	var producer, bg sync.WaitGroup
	stopSampling := make(chan struct{})
	endProducer := sync.OnceFunc(func() { close(stopProducing) })
	endSamplers := sync.OnceFunc(func() { close(stopSampling) })
	defer func() { // also when a require ends the test early
		endProducer()
		producer.Wait()
		endSamplers()
		bg.Wait()
	}()
	producer.Go(func() {
		for {
			select {
			case <-stopProducing:
				return
			case <-time.After(20 * time.Millisecond):
			}
			for p := range n {
				prodMu.Lock()
				off := produced[p]
				prodMu.Unlock()
				err := cluster.Produce(ctx, topic, p, kafka.Message{Value: fmt.Appendf(nil, "%d-%d", p, off)})
				if !assert.NoError(t, err, "produce to partition %d", p) {
					return
				}
				prodMu.Lock()
				produced[p]++
				prodMu.Unlock()
			}
		}
	})
	logEnds := func() []int {
		prodMu.Lock()
		defer prodMu.Unlock()
		return slices.Clone(produced)
	}

	// What the members read, by partition and offset.
	var seenMu sync.Mutex
	seen := make([]map[int64]int, n)
	for p := range seen {
		seen[p] = map[int64]int{}
	}
	read := func() int {
		seenMu.Lock()
		defer seenMu.Unlock()
		k := 0
		for _, offs := range seen {
			k += len(offs)
		}
		return k
	}

	// The members, in the order they are sampled.
	var membersMu sync.Mutex
	var members []*migrationMember
	live := func() []*migrationMember {
		membersMu.Lock()
		defer membersMu.Unlock()
		return slices.Clone(members)
	}

	// The committed offsets never go back.
	var commitSamples, commitErrors, ownerSamples atomic.Int64
	bg.Go(func() {
		last := map[int]int64{}
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			offs, err := readCommitted(ctx, topic, g, n)
			if err != nil {
				// NOT_COORDINATOR while the group's coordinator loads;
				// the next sample tries again.
				if commitErrors.Add(1) <= 3 {
					t.Logf("read the committed offsets: %v", err)
				}
				continue
			}
			commitSamples.Add(1)
			for p, off := range offs {
				assert.GreaterOrEqual(t, off, last[p], "partition %d's committed offset went back", p)
				last[p] = max(last[p], off)
			}
		}
	})
	// No partition is owned by two members at once. The members are read
	// one after the other, then again in reverse order: of two members,
	// the one read first is read last too, and if it owns a partition at
	// both reads (so, in between: it cannot give it up and get it back
	// within microseconds) while the other owns it at either of its reads,
	// both owned it at that moment. A partition that moved between the
	// reads is not an overlap.
	overlaps := 0
	bg.Go(func() {
		for {
			select {
			case <-stopSampling:
				return
			case <-time.After(2 * time.Millisecond):
			}
			ms := live()
			fwd, rev := make([][]int, len(ms)), make([][]int, len(ms))
			for i, m := range ms {
				fwd[i] = m.owns()
			}
			for i := len(ms) - 1; i >= 0; i-- {
				rev[i] = ms[i].owns()
			}
			ownerSamples.Add(1)
			for i := range ms {
				for j := i + 1; j < len(ms); j++ {
					for _, p := range fwd[i] {
						if slices.Contains(rev[i], p) && (slices.Contains(fwd[j], p) || slices.Contains(rev[j], p)) && overlaps < 10 {
							overlaps++
							assert.Fail(t, "a partition owned by two members at once",
								"partition %d: %s (%v, then %v) and %s (%v, then %v)", p, ms[i], fwd[i], rev[i], ms[j], fwd[j], rev[j])
						}
					}
				}
			}
		}
	})

	start := func(name, protocol string) *migrationMember {
		m := &migrationMember{name: name, protocol: protocol, quit: make(chan struct{})}
		cfg := groupCfg(topic, g)
		cfg.GroupProtocol = protocol
		cfg.AutoCommitEveryN = 20
		cfg.Brokers = cluster.Brokers()
		cfg.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo})).With("m", name)
		cfg.OnRevoked = m.revoked
		c, err := New(ctx, cfg)
		require.NoError(t, err, "start %s", m)
		m.c = c
		m.end = sync.OnceFunc(func() { close(m.quit) })
		t.Cleanup(func() { // when a require ended the test early
			m.end()
			m.loop.Wait()
			_ = c.Close()
		})
		m.loop.Go(func() {
			for {
				select {
				case <-m.quit:
					done, cancel := context.WithCancel(ctx)
					cancel()
					_, _ = c.GetMessages(done, 1) // the clean end: consumes the last batch
					return
				default:
				}
				msgs, err := c.GetMessages(ctx, 20, BlockFor(1), Timeout(100*time.Millisecond))
				if err != nil {
					if ctx.Err() == nil {
						assert.NoError(t, err, "%s: GetMessages", m)
					}
					return
				}
				seenMu.Lock()
				for _, msg := range msgs {
					assert.Equal(t, fmt.Sprintf("%d-%d", msg.Partition, msg.Offset), string(msg.Value))
					seen[msg.Partition][msg.Offset]++
				}
				seenMu.Unlock()
				time.Sleep(time.Millisecond) // a handler
			}
		})
		membersMu.Lock()
		members = append(members, m)
		membersMu.Unlock()
		return m
	}
	stop := func(m *migrationMember) {
		m.end()
		m.loop.Wait()
		m.closing.Store(true)
		require.NoError(t, m.c.Close(), "close %s", m)
		membersMu.Lock()
		members = slices.DeleteFunc(members, func(x *migrationMember) bool { return x == m })
		membersMu.Unlock()
	}
	// stable waits until the members own disjoint, balanced parts that
	// cover the topic, and the group reads on; a member that stopped
	// fails the test at once.
	stable := func(what string, begin time.Time) {
		t.Helper()
		ms := live()
		deadline := time.Now().Add(60 * time.Second)
		var got [][]int
		for {
			for _, m := range ms {
				require.NoError(t, m.c.Err(), "%s: %s stopped (the broker's log says why: grep 'Cannot upgrade' in it)", what, m)
			}
			got = got[:0]
			var all []int
			for _, m := range ms {
				got = append(got, m.c.Assignment())
				all = append(all, got[len(got)-1]...)
			}
			slices.Sort(all)
			balanced := slices.Equal(slices.Compact(slices.Clone(all)), all) && len(all) == n
			for _, a := range got {
				balanced = balanced && len(a) == n/len(ms)
			}
			if balanced {
				break
			}
			require.True(t, time.Now().Before(deadline), "%s: not balanced within 60s: %v %v", what, ms, got)
			time.Sleep(20 * time.Millisecond)
		}
		settled := time.Since(begin)
		from := read()
		require.Eventually(t, func() bool { return read() >= from+10*n }, 30*time.Second, 10*time.Millisecond,
			"%s: the group reads on", what)
		t.Logf("%s: %v, %v after the step began (reading on: %v more)", what, got, settled.Round(time.Millisecond),
			(time.Since(begin) - settled).Round(time.Millisecond))
	}

	begin := time.Now()
	for i := range 3 {
		start(fmt.Sprintf("classic-%d", i), GroupProtocolClassic)
	}
	stable("three classic members", begin)
	convertible(t, kcl, topic, g, 3)
	assert.Equal(t, "classic", groupType(t, kcl, g))
	if k := describe("three classic members"); k != (groupKind{}) {
		assert.Equal(t, groupKind{"Classic", "cooperative-sticky", "Stable"}, k)
	}

	// Upgrade: one member at a time. members[0] is the oldest.
	for i := range 3 {
		begin := time.Now()
		stop(live()[0])
		start(fmt.Sprintf("consumer-%d", i), GroupProtocolConsumer)
		stable(fmt.Sprintf("%d of 3 speak consumer", i+1), begin)
		// Converted when the first consumer member joined.
		assert.Equal(t, "consumer", groupType(t, kcl, g), "after %d of 3 upgraded", i+1)
	}
	if k := describe("all speak consumer"); k != (groupKind{}) {
		assert.Equal(t, groupKind{"Consumer", "uniform", "Stable"}, k, "converted to a consumer group")
	}

	// Downgrade.
	for i := range 3 {
		begin := time.Now()
		stop(live()[0])
		start(fmt.Sprintf("classic-%d", 3+i), GroupProtocolClassic)
		stable(fmt.Sprintf("%d of 3 speak classic again", i+1), begin)
		// A consumer group while a consumer member is left in it.
		want := map[bool]string{false: "consumer", true: "classic"}[i == 2]
		assert.Equal(t, want, groupType(t, kcl, g), "after %d of 3 downgraded", i+1)
	}
	if k := describe("all speak classic again"); k != (groupKind{}) {
		assert.Equal(t, groupKind{"Classic", "cooperative-sticky", "Stable"}, k, "converted back to a classic group")
	}
	convertible(t, kcl, topic, g, 3) // our leader's assignments since the downgrade

	// The end: the producer stops, the members read the rest, close
	// (committing it), and the samplers stop.
	endProducer()
	producer.Wait()
	ends := logEnds()
	total := 0
	for _, e := range ends {
		total += e
	}
	require.Eventually(t, func() bool { return read() == total }, 60*time.Second, 10*time.Millisecond,
		"every message read: %d of %d", read(), total)
	for _, m := range live() {
		stop(m)
	}
	endSamplers()
	bg.Wait()

	want := map[int]int64{}
	for p, e := range ends {
		want[p] = int64(e)
		for off := range int64(e) {
			assert.Positive(t, seen[p][off], "partition %d offset %d never read", p, off)
		}
	}
	assert.Equal(t, want, committed(t, topic, g, n), "everything committed after the last Close")
	dups := 0
	for p, offs := range seen {
		var twice []int64
		for off, k := range offs {
			dups += k - 1
			if k > 1 {
				twice = append(twice, off)
			}
		}
		if len(twice) > 0 {
			slices.Sort(twice)
			t.Logf("partition %d: %d offsets read twice or more, from %d to %d", p, len(twice), twice[0], twice[len(twice)-1])
		}
	}
	assert.Greater(t, commitSamples.Load(), 10*commitErrors.Load(), "the committed offsets were sampled")
	t.Logf("%d messages, %d read twice or more; %d commit samples (%d failed reads), %d ownership samples; %v",
		total, dups, commitSamples.Load(), commitErrors.Load(), ownerSamples.Load(), time.Since(t0).Round(time.Millisecond))
}

// migrationMember is one member of TestGroupProtocolMigration: its
// consumer, and the loop that reads with GetMessages.
type migrationMember struct {
	name, protocol string
	c              *MultiConsumer
	quit           chan struct{} // closed (by end): the loop ends cleanly
	end            func()
	loop           sync.WaitGroup
	closing        atomic.Bool

	mu       sync.Mutex
	released []int // what Close gave up (OnRevoked while closing), before it left
}

func (m *migrationMember) String() string { return m.name }

// revoked is the member's OnRevoked. Close calls it with everything the
// member owns, after its last commit and before it leaves the group: from
// then on those partitions may go to another member, though Assignment()
// still lists them until Close returns.
func (m *migrationMember) revoked(_ context.Context, parts []int) {
	if m.closing.Load() {
		m.mu.Lock()
		m.released = append(m.released, parts...)
		m.mu.Unlock()
	}
}

// owns returns what the member owns now.
func (m *migrationMember) owns() []int {
	a := m.c.Assignment()
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.DeleteFunc(a, func(p int) bool { return slices.Contains(m.released, p) })
}

// groupKind is what Kafka's ConsumerGroupCommand says of a group: its
// type (--list --type: "Classic" or "Consumer"), and its assignment
// strategy (--describe --state: a classic group's protocol, such as
// "cooperative-sticky", or a consumer group's server assignor, such as
// "uniform") and state.
type groupKind struct{ typ, strategy, state string }

// groupDescriber returns a function that asks Kafka's ConsumerGroupCommand
// what the group is now; it returns the zero groupKind, and logs why, when
// the Kafka jars or java are missing.
func groupDescriber(t *testing.T, group string) func(when string) groupKind {
	lib, err := kafkaLibDir()
	if err != nil {
		t.Logf("no ConsumerGroupCommand: needs the Kafka jars (scripts/kafka.sh fetch): %v", err)
		return func(string) groupKind { return groupKind{} }
	}
	java, err := javaBinary()
	if err != nil {
		t.Logf("no ConsumerGroupCommand: needs java: %v", err)
		return func(string) groupKind { return groupKind{} }
	}
	tool := func(args ...string) []map[string]string {
		return parseTable(runKafkaTool(t, java, lib, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
			append([]string{"--bootstrap-server", strings.Join(cluster.Brokers(), ",")}, args...)...))
	}
	return func(when string) groupKind {
		t.Helper()
		var k groupKind
		for _, row := range tool("--describe", "--group", group, "--state") {
			k.strategy, k.state = row["ASSIGNMENT-STRATEGY"], row["STATE"]
		}
		for _, row := range tool("--list", "--type") {
			if row["GROUP"] == group {
				k.typ = row["TYPE"]
			}
		}
		t.Logf("%s: ConsumerGroupCommand: type %s, assignment strategy %s, state %s", when, k.typ, k.strategy, k.state)
		return k
	}
}

// convertible checks what Kafka checks before it converts the classic group
// to a consumer group (ConsumerGroup.fromClassicGroup): that every member's
// subscription decodes as a ConsumerProtocolSubscription and its assignment
// as a ConsumerProtocolAssignment without user data (KAFKA-18134: a custom
// assignor's user data would be lost). The subscription's user data (our
// cooperative-sticky's generation, as the Java CooperativeStickyAssignor
// sends it) is allowed.
func convertible(t *testing.T, cl *kgo.Client, topic, group string, members int) {
	t.Helper()
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	res, err := req.RequestWith(testCtx(t), cl)
	require.NoError(t, err)
	require.Len(t, res.Groups, 1)
	rg := res.Groups[0]
	require.Zero(t, rg.ErrorCode, "describe group %s", group)
	assert.Equal(t, consumerProtocol, rg.ProtocolType)
	require.Len(t, rg.Members, members)
	for _, m := range rg.Members {
		var sub kmsg.ConsumerMemberMetadata
		if assert.NoError(t, sub.ReadFrom(m.ProtocolMetadata), "member %s: subscription", m.MemberID) {
			assert.Equal(t, []string{topic}, sub.Topics)
		}
		var asg kmsg.ConsumerMemberAssignment
		if assert.NoError(t, asg.ReadFrom(m.MemberAssignment), "member %s: assignment", m.MemberID) {
			assert.Empty(t, asg.UserData, "member %s: assignment user data (Kafka refuses to convert: KAFKA-18134)", m.MemberID)
		}
		t.Logf("member %s: subscription v%d, %d bytes of user data; assignment v%d, %d bytes of user data",
			m.MemberID, sub.Version, len(sub.UserData), asg.Version, len(asg.UserData))
	}
}

// groupType returns the group's type as ListGroups (v5+) says it:
// "classic" or "consumer".
func groupType(t *testing.T, cl *kgo.Client, group string) string {
	t.Helper()
	res, err := kmsg.NewPtrListGroupsRequest().RequestWith(testCtx(t), cl)
	require.NoError(t, err)
	require.Zero(t, res.ErrorCode)
	for _, g := range res.Groups {
		if g.Group == group {
			return g.GroupType
		}
	}
	return ""
}

// tailLines returns the last n lines of s.
func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// A broker without KIP-848's consumer protocol (Kafka before 4.0): New with
// GroupProtocol "consumer" says what is missing.
func TestConsumerProtocolUnsupportedBroker(t *testing.T) {
	t.Parallel()
	brokers, topic := oldBroker(t)
	cfg := groupCfg(topic, "g")
	cfg.GroupProtocol = GroupProtocolConsumer
	cfg.Brokers = brokers
	_, err := New(testCtx(t), cfg)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "ConsumerGroupHeartbeat")
	assert.Contains(t, err.Error(), `use "classic"`)
}
