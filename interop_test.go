package multiconsumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file proves that a group-mode member interoperates with Kafka's own
// Java consumer: both in one classic consumer group, with the Java client's
// CooperativeStickyAssignor, each leading in turn.

const (
	interopPartitions = 4
	interopEarly      = 200 // messages per partition produced before anyone joins
	interopBacklog    = 400 // with those produced once the first member read them, before the second joins
	interopLive       = 400 // messages per partition produced once the group is stable

	javaClientID = "java-interop"
	goClientID   = "multiconsumer-interop"
)

// TestGroupJavaInterop shares a group between our member and Kafka's Java
// console consumer (org.apache.kafka.tools.consumer.ConsoleConsumer, with
// partition.assignment.strategy=CooperativeStickyAssignor and
// group.protocol=classic), once with our member joining first (it leads the
// group, and its cooperative-sticky assignment must be one the Java member
// accepts) and once with the Java member first (the Java leader must accept
// our subscription: version 1, the generation as 4-byte user data).
//
// What it checks, in each order:
//
//   - The group becomes stable with both members (DescribeGroups: state
//     Stable, protocol cooperative-sticky, our member and the Java one, each
//     with a non-empty part of the 4 partitions, disjoint, covering all 4;
//     our part is what Assignment() says), and the member expected to lead
//     did (its own log says so).
//   - The first member, alone, owns every partition and reads the early
//     messages (200 a partition); then the rest of the backlog (200 more)
//     is produced and the second member joins (our member is then a slow
//     handler, so that it is in the middle of them). Each partition that
//     moves is read by its first owner from offset 0 (at least the early
//     messages), then by its second owner from where the first stopped, to
//     the end: no gap, no message read twice by one member, values as
//     produced.
//   - In the stable group, nothing is read twice and nothing by the wrong
//     member: every live message (400 a partition, produced once the group
//     is stable: they exist only then, so no timing decides which read is
//     "before") is read exactly once, by the member that owns its partition
//     in the stable assignment, and the group does not rebalance while they
//     are read (same generation, same members and assignments). A backlog
//     message read by both members would be a redelivery across the
//     hand-off: when our member hands partitions over (Go first) that is a
//     bug (its revocation commits what the caller came back from before the
//     partitions move), so it fails the test; when the Java member hands
//     over, it is the Java client's at-least-once, counted and logged.
//   - Neither member logs a warning or an error.
//   - Kafka's ConsumerGroupCommand --describe lists every partition with its
//     owner (our member id and client id for ours) and a LAG of 0 once both
//     members committed everything; --describe --members --verbose lists our
//     member with its partitions.
//
// It needs a real Kafka (KAFKA_BROKERS) and the Kafka jars scripts/kafka.sh
// fetches (KAFKA_LIB_DIR, else $KAFKA_HOME_DIR/lib, else .kafka/lib), and
// java on the PATH (or in JAVA_HOME). Not parallel: it starts JVMs.
func TestGroupJavaInterop(t *testing.T) {
	classicOnly(t) // the Java member speaks classic; TestConsumerGroupJavaInterop is the consumer protocol's
	java, lib := needJavaKafka(t, "kfake is not Kafka's group coordinator")
	t.Logf("kafka jars: %s, java: %s", lib, java)
	for _, javaFirst := range []bool{false, true} {
		name := "GoFirst"
		if javaFirst {
			name = "JavaFirst"
		}
		t.Run(name, func(t *testing.T) { runJavaInterop(t, java, lib, javaFirst) })
	}
}

func runJavaInterop(t *testing.T, java, lib string, javaFirst bool) {
	t0 := time.Now()
	phase := func(what string) { t.Logf("[%6.2fs] %s", time.Since(t0).Seconds(), what) }
	topic := cluster.Topic(t, interopPartitions)
	g := group(t)
	require.NoError(t, cluster.ProduceN(testCtx(t), topic, interopPartitions, interopEarly))
	phase(fmt.Sprintf("topic %s: %d x %d messages produced; group %s", topic, interopPartitions, interopEarly, g))

	kcl, err := kgo.NewClient(kgo.SeedBrokers(cluster.Brokers()...))
	require.NoError(t, err)
	t.Cleanup(kcl.Close)

	var (
		goc  *MultiConsumer
		gor  *goReader
		goLg = &syncBuffer{}
		jv   *javaConsumer
	)
	startGo := func() {
		cfg := groupCfg(topic, g)
		cfg.Dialer = &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, ClientID: goClientID}
		cfg.Logger = slog.New(slog.NewTextHandler(goLg, &slog.HandlerOptions{Level: slog.LevelInfo}))
		goc = open(t, cfg)
		gor = startGoReader(t, goc)
	}
	startJava := func() { jv = startJavaConsumer(t, java, lib, topic, g) }
	// On a failure, the logs of both members tell what happened.
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("our member's log:\n%s", goLg.String())
			if jv != nil {
				t.Logf("Java consumer's stderr:\n%s", jv.stderr.String())
			}
		}
	})

	// The first member alone gets every partition and reads the early
	// messages; then the rest of the backlog is produced and the second
	// member joins: the partitions that move are handed over at a committed
	// offset of at least interopEarly, possibly in the middle of the rest.
	if javaFirst {
		startJava()
		waitGroup(t, kcl, jv, g, "the Java member alone with every partition", func(v groupView) bool {
			return len(v.members) == 1 && v.members[0].clientID == javaClientID && len(v.members[0].parts) == interopPartitions
		})
		jv.await(t, func() bool { return jv.count() >= interopPartitions*interopEarly }, func() string {
			return fmt.Sprintf("the Java member reads the %d early messages: it read %d", interopPartitions*interopEarly, jv.count())
		})
		phase(fmt.Sprintf("the Java member alone owns every partition and read the %d early messages", jv.count()))
		require.NoError(t, produceRange(testCtx(t), topic, interopEarly, interopBacklog))
		startGo()
	} else {
		startGo()
		assignedTo(t, interopPartitions, goc) // alone: every partition
		require.Eventually(t, func() bool { return gor.count() >= interopPartitions*interopEarly }, 60*time.Second, 10*time.Millisecond,
			"our member reads the %d early messages", interopPartitions*interopEarly)
		phase(fmt.Sprintf("our member alone owns every partition and read the %d early messages", gor.count()))
		// A slow handler from now on, so that the Java member joins while
		// our member is in the middle of the rest.
		gor.setSlow(true)
		require.NoError(t, produceRange(testCtx(t), topic, interopEarly, interopBacklog))
		startJava()
	}
	phase(fmt.Sprintf("the backlog is complete (%d x %d); the second member starts", interopPartitions, interopBacklog))

	// Stable with both members: each owns a non-empty part, disjoint,
	// covering all; ours as the coordinator has it and as Assignment() has
	// it. A cooperative rebalance takes two generations (give up, then
	// take): only the second one satisfies this.
	var goParts, javaParts []int
	var javaID string
	view := waitGroup(t, kcl, jv, g, "both members with a disjoint, complete, non-empty share", func(v groupView) bool {
		if len(v.members) != 2 {
			return false
		}
		me := goc.Stats().MemberID
		var mine, theirs *viewMember
		for i := range v.members {
			if v.members[i].id == me {
				mine = &v.members[i]
			} else if v.members[i].clientID == javaClientID {
				theirs = &v.members[i]
			}
		}
		if mine == nil || theirs == nil || len(mine.parts) == 0 || len(theirs.parts) == 0 {
			return false
		}
		if !slices.Equal(mine.parts, goc.Assignment()) {
			return false
		}
		all := slices.Sorted(slices.Values(append(slices.Clone(mine.parts), theirs.parts...)))
		if !slices.Equal(all, []int{0, 1, 2, 3}) {
			return false // overlapping, or not every partition
		}
		goParts, javaParts, javaID = mine.parts, theirs.parts, theirs.id
		return true
	})
	stable := goc.Stats()
	stableAt := time.Now()
	gor.setSlow(false)
	phase(fmt.Sprintf("group stable: ours %v (member %s, generation %d), Java's %v (member %s, subscription v%d, user data %x)",
		goParts, stable.MemberID, stable.Generation, javaParts, javaID, view.member(javaID).subVersion, view.member(javaID).userData))
	assert.Equal(t, "cooperative-sticky", view.protocol)

	// The member that joined first leads the group (classic protocol).
	led := strings.Contains(goLg.String(), "group: leading")
	javaLed := jv.ledGroup()
	if javaFirst {
		assert.True(t, javaLed, "the Java member joined first: it leads (its log says \"Finished assignment for group\")")
		assert.False(t, led, "our member never led while the Java member was in the group")
	} else {
		assert.True(t, led, "our member joined first: it leads")
		assert.False(t, javaLed, "the Java member never led")
	}

	// The live messages: produced now, so only the stable owners read them.
	require.NoError(t, produceRange(testCtx(t), topic, interopBacklog, interopBacklog+interopLive))
	phase(fmt.Sprintf("%d x %d live messages produced", interopPartitions, interopLive))
	total := interopPartitions * (interopBacklog + interopLive)
	jv.await(t, func() bool { return len(union(gor.reads(), jv.reads())) == total }, func() string {
		return fmt.Sprintf("every message read by one member or the other: %d of %d (ours %d, Java's %d)",
			len(union(gor.reads(), jv.reads())), total, gor.count(), jv.count())
	})
	phase(fmt.Sprintf("every message read: ours %d, Java's %d", gor.count(), jv.count()))

	// Our member's loop stops; its last batch is consumed; commit it.
	gor.stop()
	require.NoError(t, goc.Commit(testCtx(t)))
	// No rebalance meanwhile: the same generation (every rebalance makes a
	// new one, for every member), the same members and assignments.
	// (Stats().Rebalances is not compared: it is counted once the assigned
	// partitions have started, a moment after Assignment() shows them.)
	assert.Equal(t, stable.Generation, goc.Stats().Generation, "no rebalance while the live messages were read")
	assert.Equal(t, goParts, goc.Assignment())
	if now, err := describeGroup(testCtx(t), kcl, g); assert.NoError(t, err) {
		assert.Equal(t, view.members, now.members, "the group as DescribeGroups has it, while the live messages were read")
	}

	goReads, javaReads := gor.reads(), jv.reads()
	checkValues(t, "ours", goReads)
	checkValues(t, "Java's", javaReads)
	assert.Empty(t, jv.malformed(), "Java output lines that look like records but do not parse")
	t.Logf("read: ours %d (backlog %d), Java's %d (backlog %d)", len(goReads), below(goReads, interopBacklog), len(javaReads), below(javaReads, interopBacklog))

	// The stable group: every live message read once, by its partition's owner.
	for _, side := range []struct {
		name  string
		reads []interopRead
		owns  []int
	}{{"ours", goReads, goParts}, {"Java's", javaReads, javaParts}} {
		for _, r := range side.reads {
			if r.offset >= interopBacklog && !slices.Contains(side.owns, r.partition) {
				t.Errorf("%s member read live message %d@%d of a partition it does not own (it owns %v)", side.name, r.partition, r.offset, side.owns)
			}
		}
	}
	// Each partition, message by message: read by its first owner from 0,
	// then (if it moved) by its second owner from where the first stopped,
	// up to the end; no member reads a message twice or skips one.
	dupes := 0
	for p := range interopPartitions {
		first, second := "ours", "Java's"
		firstReads, secondReads := offsetsOf(goReads, p), offsetsOf(javaReads, p)
		if javaFirst {
			first, second = second, first
			firstReads, secondReads = secondReads, firstReads
		}
		h := handoff{p: p, first: first, second: second, firstReads: firstReads, secondReads: secondReads}
		t.Log(h.String())
		n, err := h.check(interopBacklog + interopLive)
		if err != nil {
			t.Error(err)
			continue
		}
		dupes += n
		if len(h.secondReads) > 0 && len(h.firstReads) < interopEarly {
			t.Errorf("partition %d moved after its first owner read %d messages, fewer than the %d early ones it had read", p, len(h.firstReads), interopEarly)
		}
		if n > 0 && !javaFirst {
			t.Errorf("partition %d: the Java member read again %d messages our member had read before it handed the partition over: our member commits what the caller came back from before it gives a partition up", p, n)
		}
	}
	if javaFirst {
		t.Logf("%d messages read by both members across the Java member's hand-off (the Java client's at-least-once)", dupes)
	}
	phase(fmt.Sprintf("checked: stable since %.2fs", stableAt.Sub(t0).Seconds()))

	// Kafka's view: everything committed, by both members.
	want := map[int]int64{}
	for p := range interopPartitions {
		want[p] = interopBacklog + interopLive
	}
	var got map[int]int64
	jv.await(t, func() bool {
		got = committed(t, topic, g, interopPartitions)
		return fmt.Sprint(got) == fmt.Sprint(want)
	}, func() string { return fmt.Sprintf("both members commit everything: committed %v", got) })
	phase("everything committed")

	out := runKafkaTool(t, java, lib, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
		"--bootstrap-server", strings.Join(cluster.Brokers(), ","), "--describe", "--group", g)
	t.Logf("ConsumerGroupCommand --describe --group %s:\n%s", g, out)
	rows := parseTable(out)
	seen := map[int]bool{}
	for _, row := range rows {
		if row["TOPIC"] != topic {
			continue
		}
		p, err := strconv.Atoi(row["PARTITION"])
		require.NoError(t, err, "row %v", row)
		seen[p] = true
		lag, err := strconv.ParseInt(row["LAG"], 10, 64)
		require.NoError(t, err, "partition %d: LAG %q is not a number", p, row["LAG"])
		assert.Zero(t, lag, "partition %d: lag", p)
		assert.Equal(t, strconv.Itoa(interopBacklog+interopLive), row["CURRENT-OFFSET"], "partition %d: committed offset", p)
		if slices.Contains(goParts, p) {
			assert.Equal(t, stable.MemberID, row["CONSUMER-ID"], "partition %d is ours", p)
			assert.Equal(t, goClientID, row["CLIENT-ID"], "partition %d is ours", p)
		} else {
			assert.Equal(t, javaID, row["CONSUMER-ID"], "partition %d is the Java member's", p)
			assert.Equal(t, javaClientID, row["CLIENT-ID"], "partition %d is the Java member's", p)
		}
	}
	assert.Len(t, seen, interopPartitions, "--describe lists every partition")

	out = runKafkaTool(t, java, lib, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
		"--bootstrap-server", strings.Join(cluster.Brokers(), ","), "--describe", "--group", g, "--members", "--verbose")
	t.Logf("ConsumerGroupCommand --describe --group %s --members --verbose:\n%s", g, out)
	members := map[string]map[string]string{}
	for _, row := range parseTable(out) {
		members[row["CONSUMER-ID"]] = row
	}
	if assert.Contains(t, members, stable.MemberID, "--members lists our member") {
		row := members[stable.MemberID]
		assert.Equal(t, goClientID, row["CLIENT-ID"])
		assert.Equal(t, strconv.Itoa(len(goParts)), row["#PARTITIONS"])
		assert.Equal(t, topic+":"+joinInts(goParts), row["CURRENT-ASSIGNMENT"])
	}
	if assert.Contains(t, members, javaID, "--members lists the Java member") {
		assert.Equal(t, javaClientID, members[javaID]["CLIENT-ID"])
		assert.Equal(t, topic+":"+joinInts(javaParts), members[javaID]["CURRENT-ASSIGNMENT"])
	}
	phase("ConsumerGroupCommand done")

	// Neither member complained: no failed join or sync, no heartbeat
	// error, no assignment or subscription it could not read.
	assert.Empty(t, grepLines(goLg.String(), "level=WARN")+grepLines(goLg.String(), "level=ERROR"), "our member's warnings and errors")
	assert.Empty(t, grepLines(jv.stderr.String(), "] WARN ")+grepLines(jv.stderr.String(), "] ERROR "), "the Java member's warnings and errors")

	// The Java member leaves; our member takes every partition; then it
	// closes (and leaves).
	took := jv.stop(t)
	phase(fmt.Sprintf("Java consumer stopped in %v (%v)", took.Round(time.Millisecond), jv.exitErr()))
	assignedTo(t, interopPartitions, goc)
	phase("our member owns every partition again")
	require.NoError(t, goc.Close())
	phase("our member closed")
	t.Logf("our member's group log:\n%s", grepLines(goLg.String(), "group:"))
	t.Logf("the Java member's group log:\n%s", jv.coordinatorLog())
}

// grepLines returns the lines of s that contain substr.
func grepLines(s, substr string) string {
	var out []string
	for line := range strings.SplitSeq(s, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// produceRange appends the messages of offsets from..to-1 to each
// partition (whose log ends at from), valued "p-offset" as ProduceN values
// them.
func produceRange(ctx context.Context, topic string, from, to int) error {
	errs := make([]error, interopPartitions)
	var wg sync.WaitGroup
	for p := range interopPartitions {
		wg.Go(func() {
			msgs := make([]kafka.Message, to-from)
			for i := range msgs {
				msgs[i] = kafka.Message{Value: fmt.Appendf(nil, "%d-%d", p, from+i)}
			}
			errs[p] = cluster.Produce(ctx, topic, p, msgs...)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// interopRead is one message a member read.
type interopRead struct {
	partition int
	offset    int64
	value     string
	at        time.Time
}

type readKey struct {
	partition int
	offset    int64
}

func union(a, b []interopRead) map[readKey]bool {
	out := make(map[readKey]bool, len(a)+len(b))
	for _, r := range a {
		out[readKey{r.partition, r.offset}] = true
	}
	for _, r := range b {
		out[readKey{r.partition, r.offset}] = true
	}
	return out
}

// offsetsOf returns the offsets of partition p in reads, in the order read.
func offsetsOf(reads []interopRead, p int) []int64 {
	var out []int64
	for _, r := range reads {
		if r.partition == p {
			out = append(out, r.offset)
		}
	}
	return out
}

// handoff is what the members read of one partition: its first owner,
// and, if it moved, its second.
type handoff struct {
	p                       int
	first, second           string
	firstReads, secondReads []int64
}

func (h handoff) String() string {
	span := func(who string, offs []int64) string {
		if len(offs) == 0 {
			return who + " none"
		}
		return fmt.Sprintf("%s %d messages [%d..%d]", who, len(offs), offs[0], offs[len(offs)-1])
	}
	return fmt.Sprintf("partition %d: %s, then %s", h.p, span(h.first, h.firstReads), span(h.second, h.secondReads))
}

// check verifies that the first owner read offsets 0, 1, 2... in order,
// each once, and the second owner from where the first stopped (or
// earlier: the messages read by both, which it returns) to end-1, in order,
// each once; together, every offset below end.
func (h handoff) check(end int64) (both int, err error) {
	consecutive := func(who string, offs []int64, from int64) error {
		for i, o := range offs {
			if o != from+int64(i) {
				return fmt.Errorf("partition %d: %s member read offset %d where %d was next (read %d from %d): a gap, a repeat, or out of order", h.p, who, o, from+int64(i), i, from)
			}
		}
		return nil
	}
	if err := consecutive(h.first, h.firstReads, 0); err != nil {
		return 0, err
	}
	next := int64(len(h.firstReads))
	if len(h.secondReads) == 0 {
		if next != end {
			return 0, fmt.Errorf("partition %d: read up to %d, not %d", h.p, next, end)
		}
		return 0, nil
	}
	start := h.secondReads[0]
	if start > next {
		return 0, fmt.Errorf("partition %d: %s member stopped before %d and %s member started at %d: messages %d..%d read by neither", h.p, h.first, next, h.second, start, next, start-1)
	}
	if err := consecutive(h.second, h.secondReads, start); err != nil {
		return 0, err
	}
	if last := start + int64(len(h.secondReads)); last != end {
		return 0, fmt.Errorf("partition %d: read up to %d, not %d", h.p, last, end)
	}
	return int(next - start), nil
}

func below(reads []interopRead, limit int64) int {
	n := 0
	for _, r := range reads {
		if r.offset < limit {
			n++
		}
	}
	return n
}

func checkValues(t *testing.T, who string, reads []interopRead) {
	t.Helper()
	bad := 0
	for _, r := range reads {
		if want := fmt.Sprintf("%d-%d", r.partition, r.offset); r.value != want {
			if bad++; bad <= 5 {
				t.Errorf("%s read %d@%d with value %q, want %q", who, r.partition, r.offset, r.value, want)
			}
		}
	}
}

func joinInts(xs []int) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, ",")
}

// goReader reads from our member with GetMessages until stopped; slow, it
// is a slow handler (20 messages every 40 ms).
type goReader struct {
	slow atomic.Bool
	mu   sync.Mutex
	got  []interopRead
	quit chan struct{}
	once sync.Once
	wg   sync.WaitGroup
}

func startGoReader(t *testing.T, c *MultiConsumer) *goReader {
	r := &goReader{quit: make(chan struct{})}
	r.wg.Go(func() {
		for {
			select {
			case <-r.quit:
				// The clean end: coming back consumes the last batch.
				done, cancel := context.WithCancel(context.Background())
				cancel()
				_, _ = c.GetMessages(done, 1)
				return
			default:
			}
			slow := r.slow.Load()
			count := 200
			if slow {
				count = 20
			}
			msgs, err := c.GetMessages(context.Background(), count, BlockFor(1), Timeout(100*time.Millisecond))
			if err != nil {
				assert.NoError(t, err, "GetMessages")
				return
			}
			now := time.Now()
			r.mu.Lock()
			for _, m := range msgs {
				r.got = append(r.got, interopRead{m.Partition, m.Offset, string(m.Value), now})
			}
			r.mu.Unlock()
			if slow && len(msgs) > 0 {
				time.Sleep(40 * time.Millisecond) // the handler
			}
		}
	})
	t.Cleanup(r.stop) // before the consumer's Close (cleanups run last first)
	return r
}

func (r *goReader) setSlow(slow bool) { r.slow.Store(slow) }

func (r *goReader) stop() {
	r.once.Do(func() { close(r.quit) })
	r.wg.Wait()
}

func (r *goReader) reads() []interopRead {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func (r *goReader) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

// javaConsumer is Kafka's ConsoleConsumer in a child JVM; it learns what the
// consumer read from its stdout ("Partition:P\tOffset:O\tVALUE").
type javaConsumer struct {
	cmd     *exec.Cmd
	stderr  syncBuffer
	done    chan struct{} // closed when the process has exited
	waitErr error         // set before done is closed

	mu      sync.Mutex
	partial []byte
	got     []interopRead
	bad     []string
	other   []string
}

var consoleRecord = regexp.MustCompile(`^Partition:(\d+)\tOffset:(\d+)\t(.*)$`)

// startJavaConsumer starts Kafka's console consumer in classic group group
// on topic, with the cooperative-sticky assignor.
func startJavaConsumer(t *testing.T, java, lib, topic, group string) *javaConsumer {
	t.Helper()
	return startJavaTool(t, java, lib, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--command-property",
		[]string{"--topic", topic, "--group", group, "--from-beginning"},
		"partition.assignment.strategy=org.apache.kafka.clients.consumer.CooperativeStickyAssignor",
		"group.protocol=classic",
		"client.id="+javaClientID,
		"session.timeout.ms=6000",
		"heartbeat.interval.ms=500",
		"max.poll.interval.ms=20000", // the group's rebalance timeout is the longest of its members'
		"auto.commit.interval.ms=500",
	)
}

// startJavaTool starts one of Kafka's console consumers (class) on the test
// cluster with args, printing each record's partition and offset, and its
// client properties props (each after the tool's flag for them, propFlag).
// It is stopped when the test ends.
func startJavaTool(t *testing.T, java, lib, class, propFlag string, args []string, props ...string) *javaConsumer {
	t.Helper()
	j := &javaConsumer{done: make(chan struct{})}
	all := append(javaArgs(t, lib), class, "--bootstrap-server", strings.Join(cluster.Brokers(), ","))
	all = append(all, args...)
	all = append(all, "--formatter-property", "print.partition=true", "--formatter-property", "print.offset=true")
	for _, p := range props {
		all = append(all, propFlag, p)
	}
	j.cmd = exec.Command(java, all...)
	j.cmd.Stdout = j
	j.cmd.Stderr = &j.stderr
	require.NoError(t, j.cmd.Start())
	go func() {
		j.waitErr = j.cmd.Wait()
		close(j.done)
	}()
	t.Cleanup(func() { j.stop(t) })
	return j
}

// Write takes the consumer's stdout, line by line.
func (j *javaConsumer) Write(p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	now := time.Now()
	j.partial = append(j.partial, p...)
	for {
		i := bytes.IndexByte(j.partial, '\n')
		if i < 0 {
			break
		}
		line := string(bytes.TrimSuffix(j.partial[:i], []byte("\r")))
		j.partial = j.partial[i+1:]
		if m := consoleRecord.FindStringSubmatch(line); m != nil {
			part, err1 := strconv.Atoi(m[1])
			off, err2 := strconv.ParseInt(m[2], 10, 64)
			if err1 == nil && err2 == nil {
				j.got = append(j.got, interopRead{part, off, m[3], now})
				continue
			}
		}
		if strings.HasPrefix(line, "Partition:") {
			j.bad = append(j.bad, line)
		} else {
			j.other = append(j.other, line)
		}
	}
	return len(p), nil
}

func (j *javaConsumer) reads() []interopRead {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.got)
}

func (j *javaConsumer) count() int {
	j.mu.Lock()
	defer j.mu.Unlock()
	return len(j.got)
}

func (j *javaConsumer) malformed() []string {
	j.mu.Lock()
	defer j.mu.Unlock()
	return slices.Clone(j.bad)
}

// ledGroup reports whether the Java member computed an assignment, as the
// group's leader: its ConsumerCoordinator logs it.
func (j *javaConsumer) ledGroup() bool {
	return strings.Contains(j.stderr.String(), "Finished assignment for group")
}

// coordinatorLog returns the group-related lines of the consumer's log.
func (j *javaConsumer) coordinatorLog() string {
	var out []string
	for line := range strings.SplitSeq(j.stderr.String(), "\n") {
		if strings.Contains(line, "(ConsumerCoordinator)") || strings.Contains(line, "(AbstractStickyAssignor)") ||
			strings.Contains(line, "] ERROR ") || strings.Contains(line, "] WARN ") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// stop ends the JVM: SIGTERM (the console consumer's shutdown hook closes
// the consumer, which leaves the group), SIGKILL after 20 s. It returns how
// long it took.
func (j *javaConsumer) stop(t *testing.T) time.Duration {
	start := time.Now()
	select {
	case <-j.done:
		return 0
	default:
	}
	_ = j.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-j.done:
	case <-time.After(20 * time.Second):
		t.Errorf("the Java consumer did not stop within 20s of SIGTERM: killed")
		_ = j.cmd.Process.Kill()
		<-j.done
	}
	return time.Since(start)
}

// await waits until cond holds, checking every 10 ms for up to 60 s; it
// fails t at once, with the consumer's log, if the Java consumer exits
// meanwhile. what says what was awaited, on a failure.
func (j *javaConsumer) await(t *testing.T, cond func() bool, what func() string) {
	t.Helper()
	deadline := time.NewTimer(60 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-j.done:
			if cond() {
				return
			}
			t.Fatalf("the Java consumer exited (%v) before this: %s", j.waitErr, what())
		case <-deadline.C:
			t.Fatalf("not within 60s: %s", what())
		case <-tick.C:
		}
	}
}

func (j *javaConsumer) exitErr() error {
	<-j.done
	return j.waitErr
}

// javaArgs are the JVM's options: small and quick to start (2 cores), a
// log configuration that shows the consumer's group protocol at INFO on
// stderr, and the classpath.
func javaArgs(t *testing.T, lib string) []string {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "log4j2.properties")
	require.NoError(t, os.WriteFile(conf, []byte(strings.Join([]string{
		"status = warn",
		"appender.err.type = Console",
		"appender.err.name = STDERR",
		"appender.err.target = SYSTEM_ERR",
		"appender.err.layout.type = PatternLayout",
		// One line per event: the coordinator's multi-line messages joined.
		`appender.err.layout.pattern = [%d{HH:mm:ss.SSS}] %p %replace{%m}{[\\r\\n]+\\s*}{ } (%c{1})%n`,
		"rootLogger.level = WARN",
		"rootLogger.appenderRef.err.ref = STDERR",
		"logger.coordinator.name = org.apache.kafka.clients.consumer.internals",
		"logger.coordinator.level = INFO",
		"",
	}, "\n")), 0o644))
	return []string{
		"-Xms64m", "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
		"-Dlog4j2.configurationFile=" + conf,
		"-cp", filepath.Join(lib, "*"),
	}
}

// runKafkaTool runs one of Kafka's command-line tools to completion and
// returns its stdout; it fails t if the tool fails.
func runKafkaTool(t *testing.T, java, lib, class string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, java, append(append(javaArgs(t, lib), class), args...)...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	require.NoError(t, err, "%s %v: %s", class, args, stderr.String())
	t.Logf("%s took %v", class[strings.LastIndexByte(class, '.')+1:], time.Since(start).Round(time.Millisecond))
	return stdout.String()
}

// parseTable parses the tables ConsumerGroupCommand prints: a header line
// starting with GROUP, then one row per line, columns separated by spaces.
func parseTable(out string) []map[string]string {
	var rows []map[string]string
	var header []string
	for line := range strings.SplitSeq(out, "\n") {
		fields := strings.Fields(line)
		switch {
		case len(fields) == 0:
			header = nil
		case fields[0] == "GROUP":
			header = fields
		case header != nil && len(fields) == len(header):
			row := map[string]string{}
			for i, h := range header {
				row[h] = fields[i]
			}
			rows = append(rows, row)
		}
	}
	return rows
}

// groupView is a group as DescribeGroups has it, with the members'
// subscriptions and assignments decoded.
type groupView struct {
	state, protocol string
	members         []viewMember
}

type viewMember struct {
	id, clientID string
	parts        []int // assigned partitions of the topic, sorted
	subVersion   int16 // version of the member's subscription
	userData     []byte
}

func (v groupView) member(id string) viewMember {
	for _, m := range v.members {
		if m.id == id {
			return m
		}
	}
	return viewMember{}
}

// describeGroup describes the group through franz-go: kafka-go's
// DescribeGroups cannot decode subscriptions newer than version 1, which
// the Java client sends (version 3).
func describeGroup(ctx context.Context, cl *kgo.Client, group string) (groupView, error) {
	req := kmsg.NewPtrDescribeGroupsRequest()
	req.Groups = []string{group}
	res, err := req.RequestWith(ctx, cl)
	if err != nil {
		return groupView{}, err
	}
	if len(res.Groups) != 1 {
		return groupView{}, fmt.Errorf("describe group %q: %d groups in the answer", group, len(res.Groups))
	}
	rg := res.Groups[0]
	if rg.ErrorCode != 0 {
		return groupView{}, fmt.Errorf("describe group %q: error code %d", group, rg.ErrorCode)
	}
	v := groupView{state: rg.State, protocol: rg.Protocol}
	for _, m := range rg.Members {
		vm := viewMember{id: m.MemberID, clientID: m.ClientID}
		var meta kmsg.ConsumerMemberMetadata
		if len(m.ProtocolMetadata) > 0 {
			if err := meta.ReadFrom(m.ProtocolMetadata); err != nil {
				return groupView{}, fmt.Errorf("member %s: subscription: %w", m.MemberID, err)
			}
			vm.subVersion, vm.userData = meta.Version, meta.UserData
		}
		var asg kmsg.ConsumerMemberAssignment
		if len(m.MemberAssignment) > 0 {
			if err := asg.ReadFrom(m.MemberAssignment); err != nil {
				return groupView{}, fmt.Errorf("member %s: assignment: %w", m.MemberID, err)
			}
		}
		for _, tp := range asg.Topics {
			for _, p := range tp.Partitions {
				vm.parts = append(vm.parts, int(p))
			}
		}
		slices.Sort(vm.parts)
		v.members = append(v.members, vm)
	}
	slices.SortFunc(v.members, func(a, b viewMember) int { return strings.Compare(a.id, b.id) })
	return v, nil
}

// waitGroup waits until the group is Stable, with protocol
// cooperative-sticky, and ok holds; it returns that view.
func waitGroup(t *testing.T, cl *kgo.Client, j *javaConsumer, group, what string, ok func(groupView) bool) groupView {
	t.Helper()
	var last groupView
	var lastErr error
	j.await(t, func() bool {
		v, err := describeGroup(testCtx(t), cl, group)
		last, lastErr = v, err
		return err == nil && v.state == "Stable" && v.protocol == "cooperative-sticky" && ok(v)
	}, func() string { return fmt.Sprintf("group %s: %s; last seen: %+v (err %v)", group, what, last, lastErr) })
	return last
}

// kafkaLibDir finds the Kafka jars scripts/kafka.sh fetches: KAFKA_LIB_DIR,
// else $KAFKA_HOME_DIR/lib (relative to the repository root, where tests
// run), else .kafka/lib.
// needJavaKafka skips t unless it runs against a real Kafka (KAFKA_BROKERS)
// with Kafka's jars (scripts/kafka.sh fetches them) and java at hand, and
// returns java's path and the jars' folder. why says what kfake lacks, if
// more than the jars.
func needJavaKafka(t *testing.T, why string) (java, lib string) {
	t.Helper()
	if cluster.Embedded() {
		msg := "needs a real Apache Kafka and its jars: set KAFKA_BROKERS (scripts/kafka.sh start)"
		if why != "" {
			msg += "; " + why
		}
		t.Skip(msg)
	}
	lib, err := kafkaLibDir()
	if err != nil {
		t.Skipf("needs the Kafka jars (scripts/kafka.sh fetch): %v", err)
	}
	java, err = javaBinary()
	if err != nil {
		t.Skipf("needs java: %v", err)
	}
	return java, lib
}

func kafkaLibDir() (string, error) {
	dir, from := filepath.Join(".kafka", "lib"), "default"
	if d := os.Getenv("KAFKA_LIB_DIR"); d != "" {
		dir, from = d, "KAFKA_LIB_DIR"
	} else if h := os.Getenv("KAFKA_HOME_DIR"); h != "" {
		dir, from = filepath.Join(h, "lib"), "KAFKA_HOME_DIR"
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", err
	}
	for _, jar := range []string{"kafka-clients-*.jar", "kafka-tools-*.jar"} {
		if m, _ := filepath.Glob(filepath.Join(abs, jar)); len(m) == 0 {
			return "", fmt.Errorf("no %s in %s (%s; set KAFKA_LIB_DIR to the jars' directory)", jar, abs, from)
		}
	}
	return abs, nil
}

// javaBinary returns $JAVA_HOME/bin/java, else java on the PATH.
func javaBinary() (string, error) {
	if h := os.Getenv("JAVA_HOME"); h != "" {
		if j := filepath.Join(h, "bin", "java"); fileExists(j) {
			return j, nil
		}
	}
	return exec.LookPath("java")
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
