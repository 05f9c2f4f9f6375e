package mcprom_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/multiconsumer/multiconsumer/mcprom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// cluster is the broker every test runs against: the embedded kfake broker,
// or the cluster in KAFKA_BROKERS when it is set.
var cluster *kafkatest.Cluster

func TestMain(m *testing.M) {
	c, err := kafkatest.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	cluster = c
	code := m.Run()
	c.Close()
	if code == 0 {
		// Every consumer is closed by now, and a Collector starts no
		// goroutine: none may be left.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// open starts a consumer on cfg with the test cluster's brokers, closed when
// the test ends.
func open(t *testing.T, cfg multiconsumer.Config) *multiconsumer.MultiConsumer {
	t.Helper()
	cfg.Brokers = cluster.Brokers()
	c, err := multiconsumer.New(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// registry returns a registry holding col alone.
func registry(t *testing.T, col *mcprom.Collector) *prometheus.Registry {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	require.NoError(t, reg.Register(col))
	return reg
}

// compare checks the metrics named in want, lines of the text format
// without the HELP and TYPE lines, against what reg gathers: each metric
// named must have the series listed, no more.
func compare(t *testing.T, reg prometheus.Gatherer, want string) {
	t.Helper()
	byName := map[string][]string{}
	var names []string
	for line := range strings.Lines(strings.TrimSpace(want)) {
		line = sortLabels(strings.TrimSpace(line))
		name := line[:strings.IndexAny(line, "{ ")]
		if byName[name] == nil {
			names = append(names, name)
		}
		byName[name] = append(byName[name], line)
	}
	// GatherAndCompare wants HELP and TYPE lines too: take them from what
	// is gathered, so that the test states the values only.
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var text strings.Builder
	for _, mf := range mfs {
		if lines := byName[mf.GetName()]; lines != nil {
			fmt.Fprintf(&text, "# HELP %s %s\n# TYPE %s %s\n", mf.GetName(), mf.GetHelp(), mf.GetName(), strings.ToLower(mf.GetType().String()))
			text.WriteString(strings.Join(lines, "\n") + "\n")
			delete(byName, mf.GetName())
		}
	}
	for name := range byName {
		t.Errorf("no metric %s gathered", name)
	}
	assert.NoError(t, testutil.GatherAndCompare(reg, strings.NewReader(text.String()), names...))
}

var labelRE = regexp.MustCompile(`[a-zA-Z_]+="(?:[^"\\]|\\.)*"`)

// sortLabels sorts the labels of a line of the text format by name, as
// Gather does.
func sortLabels(line string) string {
	open, end := strings.Index(line, "{"), strings.LastIndex(line, "}")
	if open < 0 || end < open {
		return line
	}
	labels := labelRE.FindAllString(line[open+1:end], -1)
	slices.Sort(labels)
	return line[:open+1] + strings.Join(labels, ",") + line[end:]
}

// value returns the value of the one metric named name whose labels
// include labels, and whether there is one.
func value(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	m := find(t, reg, name, labels)
	switch {
	case m == nil:
		return 0, false
	case m.Gauge != nil:
		return m.Gauge.GetValue(), true
	case m.Counter != nil:
		return m.Counter.GetValue(), true
	}
	t.Fatalf("%s is neither a gauge nor a counter", name)
	return 0, false
}

func find(t *testing.T, reg prometheus.Gatherer, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var found *dto.Metric
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	metrics:
		for _, m := range mf.Metric {
			have := map[string]string{}
			for _, l := range m.Label {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue metrics
				}
			}
			require.Nil(t, found, "more than one %s with labels %v", name, labels)
			found = m
		}
	}
	return found
}

// keyed produces n messages to partition 0 of topic, keyed k0, k1, ...,
// kKeys-1 in turn, valued by their offsets ("0", "1", ...).
func keyed(t *testing.T, topic string, n, keys int) {
	t.Helper()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: fmt.Appendf(nil, "k%d", i%keys), Value: []byte(strconv.Itoa(i))}
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, 0, msgs...))
}

// TestGetMessages reads the metrics of a consumer that took a backlog with
// GetMessages, committed part of it, and has more queued.
func TestGetMessages(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 2)
	require.NoError(t, cluster.ProduceN(testCtx(t), topic, 2, 10)) // keys and values "p-i": 6 bytes
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, ManualCommit: true, QueueSize: 64})
	col := mcprom.NewCollector()
	require.NoError(t, col.Add("billing-1", c))
	reg := registry(t, col)

	got := 0
	for got < 20 {
		msgs, err := c.GetMessages(testCtx(t), 20-got, multiconsumer.BlockFor(1), multiconsumer.Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs)
		got += len(msgs)
	}
	// Coming back marks the 20 consumed.
	_, err := c.GetMessages(testCtx(t), 1, multiconsumer.Block(false))
	require.NoError(t, err)
	require.NoError(t, c.Commit(testCtx(t), 0))
	require.Eventually(t, func() bool {
		s := c.Stats()
		return s.Partitions[0].HighWatermark == 10 && s.Partitions[1].HighWatermark == 10
	}, 10*time.Second, 5*time.Millisecond)

	l := fmt.Sprintf(`client_id="billing-1",group=%q,topic=%q`, g, topic)
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_workers{L} 1
		multiconsumer_assigned_partitions{L} 2
		multiconsumer_queue_messages{L} 0
		multiconsumer_queue_capacity_messages{L} 64
		multiconsumer_paused{L} 0
		multiconsumer_stopped{L} 0
		multiconsumer_commit_errors_total{L} 0
		multiconsumer_commits_total{L} 1
		multiconsumer_lag{L,partition="0"} 0
		multiconsumer_lag{L,partition="1"} 0
		multiconsumer_delivered_offset{L,partition="0"} 10
		multiconsumer_delivered_offset{L,partition="1"} 10
		multiconsumer_consumed_offset{L,partition="0"} 10
		multiconsumer_consumed_offset{L,partition="1"} 10
		multiconsumer_committed_offset{L,partition="0"} 10
		multiconsumer_high_watermark_offset{L,partition="0"} 10
		multiconsumer_high_watermark_offset{L,partition="1"} 10
		multiconsumer_delivered_messages_total{L,partition="0"} 10
		multiconsumer_delivered_messages_total{L,partition="1"} 10
		multiconsumer_delivered_bytes_total{L,partition="0"} 60
		multiconsumer_delivered_bytes_total{L,partition="1"} 60
		multiconsumer_fetch_errors_total{L,partition="0"} 0
		multiconsumer_fetch_errors_total{L,partition="1"} 0
		multiconsumer_process_running{L} 0
		multiconsumer_process_inflight_messages{L} 0
		multiconsumer_process_handled_messages_total{L} 0
	`))
	// Partition 1 has no commit: no committed offset rather than -1. Not
	// in a group: no group metrics. No Process: none of its per-partition
	// ones.
	for _, name := range []string{"multiconsumer_group_generation", "multiconsumer_group_member_info",
		"multiconsumer_share_acquired_records_total", "multiconsumer_share_held_records",
		"multiconsumer_process_incomplete_messages", "multiconsumer_process_longest_handling_seconds"} {
		_, ok := value(t, reg, name, nil)
		assert.False(t, ok, name)
	}
	_, ok := value(t, reg, "multiconsumer_committed_offset", map[string]string{"partition": "1"})
	assert.False(t, ok, "committed offset of partition 1")
	fetches, ok := value(t, reg, "multiconsumer_fetches_total", nil)
	require.True(t, ok)
	assert.GreaterOrEqual(t, fetches, 1.0)
	fetched, ok := value(t, reg, "multiconsumer_fetched_bytes_total", nil)
	require.True(t, ok)
	assert.Greater(t, fetched, 120.0, "more than the 20 messages' keys and values")
	last, ok := value(t, reg, "multiconsumer_last_commit_timestamp_seconds", nil)
	require.True(t, ok)
	assert.InDelta(t, float64(c.Stats().LastCommit.UnixNano())/1e9, last, 0.001)

	// Five more on partition 1: fetched and queued, not delivered.
	msgs := make([]kafka.Message, 5)
	for i := range msgs {
		msgs[i] = kafka.Message{Value: []byte("x")}
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, 1, msgs...))
	require.Eventually(t, func() bool {
		s := c.Stats()
		return s.Partitions[1].HighWatermark == 15 && s.QueueLen == 5
	}, 10*time.Second, 5*time.Millisecond)
	c.Pause()
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_queue_messages{L} 5
		multiconsumer_paused{L} 1
		multiconsumer_lag{L,partition="0"} 0
		multiconsumer_lag{L,partition="1"} 5
		multiconsumer_high_watermark_offset{L,partition="0"} 10
		multiconsumer_high_watermark_offset{L,partition="1"} 15
	`))

	// Delivered, they count.
	delivered, err := c.GetMessages(testCtx(t), 5, multiconsumer.Timeout(30*time.Second))
	require.NoError(t, err)
	require.Len(t, delivered, 5)
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_queue_messages{L} 0
		multiconsumer_lag{L,partition="0"} 0
		multiconsumer_lag{L,partition="1"} 0
		multiconsumer_delivered_offset{L,partition="0"} 10
		multiconsumer_delivered_offset{L,partition="1"} 15
		multiconsumer_delivered_messages_total{L,partition="0"} 10
		multiconsumer_delivered_messages_total{L,partition="1"} 15
		multiconsumer_delivered_bytes_total{L,partition="0"} 60
		multiconsumer_delivered_bytes_total{L,partition="1"} 65
	`))

	// The histogram is there, empty: no handler ran.
	h := find(t, reg, "multiconsumer_process_handler_duration_seconds", nil)
	require.NotNil(t, h)
	assert.Zero(t, h.Histogram.GetSampleCount())
	assert.NotEmpty(t, h.Histogram.Bucket)

	problems, err := testutil.CollectAndLint(col)
	require.NoError(t, err)
	assert.Empty(t, problems)
}

// TestProcess reads the Process metrics while a handler is stuck on one
// message, and after Process stops.
func TestProcess(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 10, 2) // k0 at even offsets, k1 at odd
	c := open(t, multiconsumer.Config{Topic: topic})
	col := mcprom.NewCollector(mcprom.StuckAfter(time.Nanosecond))
	require.NoError(t, col.Add("orders", c))
	lenient := mcprom.NewCollector(mcprom.Namespace("app"))
	require.NoError(t, lenient.Add("orders", c))
	reg := registry(t, col)
	require.NoError(t, reg.Register(lenient))

	ctx, cancel := context.WithCancel(testCtx(t))
	var attempts sync.Map
	done := make(chan error, 1)
	go func() {
		done <- c.Process(ctx, multiconsumer.ProcessConfig{RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
			n, _ := attempts.LoadOrStore(m.Offset, new(int))
			*n.(*int)++
			switch {
			case m.Offset == 1 && *n.(*int) == 1:
				panic("boom") // k1 at 1: a panic, then a success
			case m.Offset == 2 && *n.(*int) <= 2:
				return errors.New("boom") // k0 at 2: two failures, then stuck
			case m.Offset == 2:
				<-ctx.Done()
				return ctx.Err()
			}
			// Process may start a handler after ctx ended, before it
			// notices: a handler that ignores ctx would complete it.
			return ctx.Err()
		})
	}()
	var s multiconsumer.Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return s.Process.Handled == 6 && len(s.Process.Handling) == 1 && s.Process.Handling[0].Attempts == 2 &&
			s.Process.Waiting == 3
	}, 10*time.Second, time.Millisecond)

	l := fmt.Sprintf(`client_id="orders",group="",topic=%q`, topic)
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_process_running{L} 1
		multiconsumer_process_inflight_messages{L} 1
		multiconsumer_process_waiting_messages{L} 3
		multiconsumer_process_stuck_messages{L} 1
		multiconsumer_process_handled_messages_total{L} 6
		multiconsumer_process_retries_total{L} 3
		multiconsumer_process_given_up_messages_total{L} 0
		multiconsumer_process_panics_total{L} 1
		multiconsumer_process_skipped_messages_total{L} 0
		multiconsumer_process_incomplete_messages{L,partition="0"} 4
		multiconsumer_consumed_offset{L,partition="0"} 2
		multiconsumer_delivered_offset{L,partition="0"} 10
		multiconsumer_delivered_messages_total{L,partition="0"} 10
		multiconsumer_delivered_bytes_total{L,partition="0"} 30
		app_process_stuck_messages{L} 0
		app_process_running{L} 1
	`))
	// The ages grow; the stuck handler has run at least since the
	// snapshot above was taken.
	longest, ok := value(t, reg, "multiconsumer_process_longest_handling_seconds", nil)
	require.True(t, ok)
	assert.GreaterOrEqual(t, longest, time.Since(s.Process.Handling[0].Started).Seconds()-1)
	assert.Positive(t, longest)
	oldest, ok := value(t, reg, "multiconsumer_process_oldest_incomplete_seconds", map[string]string{"partition": "0"})
	require.True(t, ok)
	assert.GreaterOrEqual(t, oldest, s.Partitions[0].OldestIncomplete.Seconds())

	// Nine attempts ended: six successes, a panic, two failures. The
	// buckets are cumulative, each the sum of Stats' counts up to it.
	h := find(t, reg, "multiconsumer_process_handler_duration_seconds", map[string]string{"client_id": "orders"})
	require.NotNil(t, h)
	hs := c.Stats().Process.HandlerDurations
	assert.EqualValues(t, 9, h.Histogram.GetSampleCount())
	assert.InDelta(t, hs.Sum.Seconds(), h.Histogram.GetSampleSum(), 1e-9)
	require.Len(t, h.Histogram.Bucket, len(hs.Bounds))
	var cum int64
	for i, b := range h.Histogram.Bucket {
		cum += hs.Counts[i]
		assert.InDelta(t, hs.Bounds[i].Seconds(), b.GetUpperBound(), 1e-12)
		assert.EqualValues(t, cum, b.GetCumulativeCount(), "bucket %v", b.GetUpperBound())
	}
	assert.EqualValues(t, 9, cum+hs.Counts[len(hs.Bounds)])

	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_process_running{L} 0
		multiconsumer_process_inflight_messages{L} 0
		multiconsumer_process_waiting_messages{L} 0
		multiconsumer_process_stuck_messages{L} 0
		multiconsumer_process_handled_messages_total{L} 6
	`))
	for _, name := range []string{"multiconsumer_process_longest_handling_seconds",
		"multiconsumer_process_incomplete_messages", "multiconsumer_process_oldest_incomplete_seconds"} {
		_, ok := value(t, reg, name, nil)
		assert.False(t, ok, name)
	}
}

// TestGroup reads the group metrics of a member that joined.
func TestGroup(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 2)
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, JoinGroup: true})
	col := mcprom.NewCollector()
	require.NoError(t, col.Add("member", c))
	reg := registry(t, col)
	var s multiconsumer.Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return s.MemberID != "" && s.Generation >= 1 && s.Rebalances >= 1 && len(s.Partitions) == 2
	}, 30*time.Second, 5*time.Millisecond)

	l := fmt.Sprintf(`client_id="member",group=%q,topic=%q`, g, topic)
	compare(t, reg, strings.NewReplacer("L", l, "ID", s.MemberID).Replace(fmt.Sprintf(`
		multiconsumer_group_member_info{L,member_id="ID"} 1
		multiconsumer_group_generation{L} %d
		multiconsumer_group_rebalances_total{L} %d
		multiconsumer_group_lost_partitions_total{L} 0
		multiconsumer_group_join_failures_total{L} %d
		multiconsumer_assigned_partitions{L} 2
	`, s.Generation, s.Rebalances, s.JoinFailures)))
	secs, ok := value(t, reg, "multiconsumer_group_rebalance_seconds_total", nil)
	require.True(t, ok)
	assert.Positive(t, secs)
	assert.InDelta(t, s.RebalanceTime.Seconds(), secs, 1e-9)
}

// TestShareGroup reads the metrics of a share-group member that took four
// records, accepted two, rejected one and holds one, renewing its lock
// when the broker takes renewals; Close releases it.
func TestShareGroup(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 4, 4)
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, ShareGroup: true, ManualCommit: true})
	col := mcprom.NewCollector()
	require.NoError(t, col.Add("share", c))
	reg := registry(t, col)

	var msgs []kafka.Message
	for len(msgs) < 4 {
		got, err := c.GetMessages(testCtx(t), 4-len(msgs), multiconsumer.Timeout(30*time.Second))
		require.NoError(t, err)
		msgs = append(msgs, got...)
	}
	slices.SortFunc(msgs, func(a, b kafka.Message) int { return int(a.Offset - b.Offset) })
	require.NoError(t, c.Acknowledge(testCtx(t), multiconsumer.AckAccept, msgs[0], msgs[1]))
	require.NoError(t, c.Acknowledge(testCtx(t), multiconsumer.AckReject, msgs[2]))
	// The lock and whether the broker takes renewals come with the
	// answer that brought the records.
	renew, renewals := 0, int64(0)
	if c.Stats().Share.Renew {
		renew, renewals = 1, 1
		require.NoError(t, c.Acknowledge(testCtx(t), multiconsumer.AckRenew, msgs[3]))
	}
	var s multiconsumer.Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return s.Share.Acquired == 4 && s.Share.Accepted == 2 && s.Share.Rejected == 1 && s.Share.Held == 1 &&
			s.Share.Renewed == renewals && s.MemberID != "" && s.Generation >= 1
	}, 10*time.Second, 5*time.Millisecond)
	require.Positive(t, s.Share.AcquisitionLock)

	l := fmt.Sprintf(`client_id="share",group=%q,topic=%q`, g, topic)
	compare(t, reg, strings.NewReplacer("L", l, "ID", s.MemberID).Replace(fmt.Sprintf(`
		multiconsumer_share_acquired_records_total{L} 4
		multiconsumer_share_accepted_records_total{L} 2
		multiconsumer_share_released_records_total{L} 0
		multiconsumer_share_rejected_records_total{L} 1
		multiconsumer_share_lock_renewals_total{L} %d
		multiconsumer_share_lock_expiries_total{L} 0
		multiconsumer_share_ack_errors_total{L} 0
		multiconsumer_share_held_records{L} 1
		multiconsumer_share_lock_duration_seconds{L} %g
		multiconsumer_share_lock_renewable{L} %d
		multiconsumer_group_member_info{L,member_id="ID"} 1
		multiconsumer_group_generation{L} %d
		multiconsumer_group_rebalances_total{L} %d
		multiconsumer_group_join_failures_total{L} %d
	`, renewals, s.Share.AcquisitionLock.Seconds(), renew, s.Generation, s.Rebalances, s.JoinFailures)))
	// Of the group metrics, a share-group member has those four only.
	for _, name := range []string{"multiconsumer_group_rebalance_seconds_total", "multiconsumer_group_lost_partitions_total",
		"multiconsumer_group_suspended", "multiconsumer_group_last_heard_timestamp_seconds"} {
		_, ok := value(t, reg, name, nil)
		assert.False(t, ok, name)
	}
	problems, err := testutil.CollectAndLint(col)
	require.NoError(t, err)
	assert.Empty(t, problems)

	// Close gives the record held back; the Collector reports the final
	// state.
	require.NoError(t, c.Close())
	compare(t, reg, strings.NewReplacer("L", l).Replace(`
		multiconsumer_share_released_records_total{L} 1
		multiconsumer_share_held_records{L} 0
		multiconsumer_share_accepted_records_total{L} 2
	`))
}

// TestAddRemove checks the names, the labels read from the consumer, and
// that a removed consumer is gone from the next scrape.
func TestAddRemove(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	// A group name that looks like the rest of MultiConsumer.String.
	odd := "a, topic=b, consumers=3>"
	c1 := open(t, multiconsumer.Config{Topic: topic, Group: odd, ManualCommit: true})
	c2 := open(t, multiconsumer.Config{Topic: topic})
	col := mcprom.NewCollector()
	require.NoError(t, col.Add("one", c1))
	require.NoError(t, col.Add("two", c2))
	assert.ErrorContains(t, col.Add("one", c2), `"one" is already added`)
	assert.Error(t, col.Add("three", nil))
	reg := registry(t, col)

	assert.Equal(t, 2, testutil.CollectAndCount(col, "multiconsumer_workers"))
	w, ok := value(t, reg, "multiconsumer_workers", map[string]string{"client_id": "one", "group": odd, "topic": topic})
	require.True(t, ok)
	assert.EqualValues(t, 1, w)
	_, ok = value(t, reg, "multiconsumer_workers", map[string]string{"client_id": "two", "group": "", "topic": topic})
	assert.True(t, ok)

	assert.True(t, col.Remove("one"))
	assert.False(t, col.Remove("one"))
	assert.Equal(t, 1, testutil.CollectAndCount(col, "multiconsumer_workers"))
	assert.True(t, col.Remove("two"))
	assert.Zero(t, testutil.CollectAndCount(col))
}
