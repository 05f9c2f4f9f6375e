package mcotel_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/multiconsumer/multiconsumer/mcotel"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"go.opentelemetry.io/otel/sdk/metric/metricdata/metricdatatest"
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
		// Every consumer is closed by now, and Metrics starts no
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

// reader is an SDK MeterProvider with a manual reader, as an exporter would
// read it.
type reader struct {
	*sdkmetric.ManualReader
	mp *sdkmetric.MeterProvider
}

func newReader(t *testing.T) reader {
	r := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(r))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	return reader{r, mp}
}

// collect collects the metrics of mcotel's scope, by name.
func (r reader) collect(t *testing.T) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		if sm.Scope.Name == mcotel.ScopeName {
			for _, m := range sm.Metrics {
				out[m.Name] = m
			}
		}
	}
	return out
}

// attrs are the attributes of a consumer's metrics.
type attrs []attribute.KeyValue

func consumerAttrs(name, topic, group string) attrs {
	a := attrs{
		attribute.String("messaging.system", "kafka"),
		attribute.String("messaging.client.id", name),
		attribute.String("messaging.destination.name", topic),
	}
	if group != "" {
		a = append(a, attribute.String("messaging.consumer.group.name", group))
	}
	return a
}

// pt is a data point of value v with the consumer's attributes and more.
func pt[N int64 | float64](a attrs, v N, more ...attribute.KeyValue) metricdata.DataPoint[N] {
	return metricdata.DataPoint[N]{Attributes: attribute.NewSet(append(append(attrs(nil), a...), more...)...), Value: v}
}

func part(p int) attribute.KeyValue {
	return attribute.String("messaging.destination.partition.id", strconv.Itoa(p))
}

func counter[N int64 | float64](pts ...metricdata.DataPoint[N]) metricdata.Sum[N] {
	return metricdata.Sum[N]{Temporality: metricdata.CumulativeTemporality, IsMonotonic: true, DataPoints: pts}
}

func upDown[N int64 | float64](pts ...metricdata.DataPoint[N]) metricdata.Sum[N] {
	return metricdata.Sum[N]{Temporality: metricdata.CumulativeTemporality, DataPoints: pts}
}

func gauge[N int64 | float64](pts ...metricdata.DataPoint[N]) metricdata.Gauge[N] {
	return metricdata.Gauge[N]{DataPoints: pts}
}

// check asserts that the metric name has the data want (its points, in any
// order, and its kind).
func check(t *testing.T, got map[string]metricdata.Metrics, name string, want metricdata.Aggregation) {
	t.Helper()
	m, ok := got[name]
	if !assert.True(t, ok, "no metric %s", name) {
		return
	}
	metricdatatest.AssertAggregationsEqual(t, want, m.Data, metricdatatest.IgnoreTimestamp())
}

// value returns the value of the data point of metric name that has the
// attributes kvs (among others), and whether there is one.
func value(t *testing.T, got map[string]metricdata.Metrics, name string, kvs ...attribute.KeyValue) (float64, bool) {
	t.Helper()
	var (
		v     float64
		found bool
	)
	match := func(set attribute.Set) bool {
		for _, kv := range kvs {
			if have, ok := set.Value(kv.Key); !ok || have != kv.Value {
				return false
			}
		}
		require.False(t, found, "more than one %s with %v", name, kvs)
		found = true
		return true
	}
	switch d := got[name].Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				v = float64(p.Value)
			}
		}
	case metricdata.Sum[float64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				v = p.Value
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				v = float64(p.Value)
			}
		}
	case metricdata.Gauge[float64]:
		for _, p := range d.DataPoints {
			if match(p.Attributes) {
				v = p.Value
			}
		}
	}
	return v, found
}

// TestGetMessages reads the metrics of a consumer that took a backlog with
// GetMessages, committed part of it, and has more queued.
func TestGetMessages(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 2)
	require.NoError(t, cluster.ProduceN(testCtx(t), topic, 2, 10)) // keys and values "p-i": 6 bytes
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, ManualCommit: true, QueueSize: 64})
	r := newReader(t)
	m, err := mcotel.New(r.mp)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	require.NoError(t, m.Add("billing-1", c))

	got := 0
	for got < 20 {
		msgs, err := c.GetMessages(testCtx(t), 20-got, multiconsumer.BlockFor(1), multiconsumer.Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs)
		got += len(msgs)
	}
	// Coming back marks the 20 consumed.
	_, err = c.GetMessages(testCtx(t), 1, multiconsumer.Block(false))
	require.NoError(t, err)
	require.NoError(t, c.Commit(testCtx(t), 0))
	require.Eventually(t, func() bool {
		s := c.Stats()
		return s.Partitions[0].HighWatermark == 10 && s.Partitions[1].HighWatermark == 10
	}, 10*time.Second, 5*time.Millisecond)

	a := consumerAttrs("billing-1", topic, g)
	ms := r.collect(t)
	check(t, ms, "multiconsumer.workers", upDown(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.partitions", upDown(pt[int64](a, 2)))
	check(t, ms, "multiconsumer.queue.messages", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.queue.capacity", upDown(pt[int64](a, 64)))
	check(t, ms, "multiconsumer.paused", gauge(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.stopped", gauge(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.commit.errors", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.commits", counter(pt[int64](a, 1)))
	fetches, ok := value(t, ms, "multiconsumer.fetches")
	require.True(t, ok)
	assert.GreaterOrEqual(t, fetches, 1.0)
	fetched, ok := value(t, ms, "multiconsumer.fetched.bytes")
	require.True(t, ok)
	assert.Greater(t, fetched, 120.0, "more than the 20 messages' keys and values")
	check(t, ms, "multiconsumer.lag", upDown(pt[int64](a, 0, part(0)), pt[int64](a, 0, part(1))))
	check(t, ms, "multiconsumer.offset.delivered", gauge(pt[int64](a, 10, part(0)), pt[int64](a, 10, part(1))))
	check(t, ms, "multiconsumer.offset.consumed", gauge(pt[int64](a, 10, part(0)), pt[int64](a, 10, part(1))))
	// Partition 1 has no commit: no point rather than -1.
	check(t, ms, "multiconsumer.offset.committed", gauge(pt[int64](a, 10, part(0))))
	check(t, ms, "multiconsumer.offset.high_watermark", gauge(pt[int64](a, 10, part(0)), pt[int64](a, 10, part(1))))
	check(t, ms, "multiconsumer.delivered.messages", counter(pt[int64](a, 10, part(0)), pt[int64](a, 10, part(1))))
	check(t, ms, "multiconsumer.delivered.bytes", counter(pt[int64](a, 60, part(0)), pt[int64](a, 60, part(1))))
	check(t, ms, "multiconsumer.fetch.errors", counter(pt[int64](a, 0, part(0)), pt[int64](a, 0, part(1))))
	check(t, ms, "multiconsumer.process.running", gauge(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.handled", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.handler.duration.count", counter(pt[int64](a, 0)))
	assert.Equal(t, "{message}", ms["multiconsumer.lag"].Unit)
	assert.Equal(t, "By", ms["multiconsumer.delivered.bytes"].Unit)
	// Not in a group: no group metrics. No Process: none of its
	// per-partition ones.
	for _, name := range []string{"multiconsumer.group.generation", "multiconsumer.group.member",
		"multiconsumer.share.acquired", "multiconsumer.share.held",
		"multiconsumer.process.incomplete", "multiconsumer.process.longest_handling"} {
		_, ok := value(t, ms, name)
		assert.False(t, ok, name)
	}

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
	ms = r.collect(t)
	check(t, ms, "multiconsumer.queue.messages", upDown(pt[int64](a, 5)))
	check(t, ms, "multiconsumer.paused", gauge(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.lag", upDown(pt[int64](a, 0, part(0)), pt[int64](a, 5, part(1))))
	check(t, ms, "multiconsumer.offset.high_watermark", gauge(pt[int64](a, 10, part(0)), pt[int64](a, 15, part(1))))

	// Delivered, they count.
	delivered, err := c.GetMessages(testCtx(t), 5, multiconsumer.Timeout(30*time.Second))
	require.NoError(t, err)
	require.Len(t, delivered, 5)
	ms = r.collect(t)
	check(t, ms, "multiconsumer.queue.messages", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.lag", upDown(pt[int64](a, 0, part(0)), pt[int64](a, 0, part(1))))
	check(t, ms, "multiconsumer.delivered.messages", counter(pt[int64](a, 10, part(0)), pt[int64](a, 15, part(1))))
	check(t, ms, "multiconsumer.delivered.bytes", counter(pt[int64](a, 60, part(0)), pt[int64](a, 65, part(1))))
}

// TestProcess reads the Process metrics while a handler is stuck on one
// message, and after Process stops.
func TestProcess(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	// k0 at even offsets, k1 at odd, valued by their offsets.
	msgs := make([]kafka.Message, 10)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: fmt.Appendf(nil, "k%d", i%2), Value: []byte(strconv.Itoa(i))}
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, 0, msgs...))
	c := open(t, multiconsumer.Config{Topic: topic})
	r := newReader(t)
	m, err := mcotel.New(r.mp, mcotel.StuckAfter(time.Nanosecond))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	require.NoError(t, m.Add("orders", c))
	lenient, err := mcotel.New(r.mp, mcotel.Namespace("app"))
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, lenient.Close()) })
	require.NoError(t, lenient.Add("orders", c))

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

	a := consumerAttrs("orders", topic, "")
	ms := r.collect(t)
	check(t, ms, "multiconsumer.process.running", gauge(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.process.inflight", upDown(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.process.waiting", upDown(pt[int64](a, 3)))
	check(t, ms, "multiconsumer.process.stuck", upDown(pt[int64](a, 1)))
	check(t, ms, "app.process.stuck", upDown(pt[int64](a, 0))) // stuck after 1m
	check(t, ms, "multiconsumer.process.handled", counter(pt[int64](a, 6)))
	check(t, ms, "multiconsumer.process.retries", counter(pt[int64](a, 3)))
	check(t, ms, "multiconsumer.process.given_up", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.panics", counter(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.process.skipped", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.incomplete", upDown(pt[int64](a, 4, part(0))))
	check(t, ms, "multiconsumer.offset.consumed", gauge(pt[int64](a, 2, part(0))))
	check(t, ms, "multiconsumer.offset.delivered", gauge(pt[int64](a, 10, part(0))))
	check(t, ms, "multiconsumer.delivered.messages", counter(pt[int64](a, 10, part(0))))
	check(t, ms, "multiconsumer.delivered.bytes", counter(pt[int64](a, 30, part(0))))

	// The ages grow; the stuck handler has run at least since the
	// snapshot above was taken.
	longest, ok := value(t, ms, "multiconsumer.process.longest_handling")
	require.True(t, ok)
	assert.Positive(t, longest)
	assert.Equal(t, "s", ms["multiconsumer.process.longest_handling"].Unit)
	oldest, ok := value(t, ms, "multiconsumer.process.oldest_incomplete", part(0))
	require.True(t, ok)
	assert.GreaterOrEqual(t, oldest, s.Partitions[0].OldestIncomplete.Seconds())

	// Nine attempts ended: six successes, a panic, two failures. The
	// buckets are cumulative, each the sum of Stats' counts up to it.
	hs := c.Stats().Process.HandlerDurations
	check(t, ms, "multiconsumer.process.handler.duration.count", counter(pt[int64](a, 9)))
	check(t, ms, "multiconsumer.process.handler.duration.sum", counter(pt(a, hs.Sum.Seconds())))
	var buckets []metricdata.DataPoint[int64]
	var cum int64
	for i, b := range hs.Bounds {
		cum += hs.Counts[i]
		buckets = append(buckets, pt(a, cum, mcotel.LeKey.String(strconv.FormatFloat(b.Seconds(), 'g', -1, 64))))
	}
	buckets = append(buckets, pt[int64](a, 9, mcotel.LeKey.String("+Inf")))
	check(t, ms, "multiconsumer.process.handler.duration.bucket", counter(buckets...))
	le10ms, ok := value(t, ms, "multiconsumer.process.handler.duration.bucket", mcotel.LeKey.String("0.01"))
	require.True(t, ok)
	assert.LessOrEqual(t, le10ms, 9.0)

	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	ms = r.collect(t)
	check(t, ms, "multiconsumer.process.running", gauge(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.inflight", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.waiting", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.stuck", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.process.handled", counter(pt[int64](a, 6)))
	for _, name := range []string{"multiconsumer.process.longest_handling",
		"multiconsumer.process.incomplete", "multiconsumer.process.oldest_incomplete"} {
		_, ok := value(t, ms, name)
		assert.False(t, ok, name)
	}
}

// TestGroup reads the group metrics of a member that joined.
func TestGroup(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 2)
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, JoinGroup: true})
	r := newReader(t)
	m, err := mcotel.New(r.mp)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	require.NoError(t, m.Add("member", c))
	var s multiconsumer.Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return s.MemberID != "" && s.Generation >= 1 && s.Rebalances >= 1 && len(s.Partitions) == 2
	}, 30*time.Second, 5*time.Millisecond)

	a := consumerAttrs("member", topic, g)
	ms := r.collect(t)
	check(t, ms, "multiconsumer.group.member", gauge(pt[int64](a, 1, mcotel.MemberIDKey.String(s.MemberID))))
	check(t, ms, "multiconsumer.group.generation", gauge(pt(a, int64(s.Generation))))
	check(t, ms, "multiconsumer.group.rebalances", counter(pt(a, s.Rebalances)))
	check(t, ms, "multiconsumer.group.rebalance.time", counter(pt(a, s.RebalanceTime.Seconds())))
	check(t, ms, "multiconsumer.group.lost_partitions", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.group.join_failures", counter(pt(a, s.JoinFailures)))
	check(t, ms, "multiconsumer.partitions", upDown(pt[int64](a, 2)))
	assert.Positive(t, s.RebalanceTime)
}

// TestShareGroup reads the metrics of a share-group member that took four
// records, accepted two, rejected one and holds one, renewing its lock
// when the broker takes renewals; Close releases it.
func TestShareGroup(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	require.NoError(t, cluster.ProduceN(testCtx(t), topic, 1, 4))
	g := kafkatest.UniqueName("g")
	c := open(t, multiconsumer.Config{Topic: topic, Group: g, ShareGroup: true, ManualCommit: true})
	r := newReader(t)
	m, err := mcotel.New(r.mp)
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, m.Close()) })
	require.NoError(t, m.Add("share", c))

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
	renew, renewals := int64(0), int64(0)
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

	a := consumerAttrs("share", topic, g)
	ms := r.collect(t)
	check(t, ms, "multiconsumer.share.acquired", counter(pt[int64](a, 4)))
	check(t, ms, "multiconsumer.share.accepted", counter(pt[int64](a, 2)))
	check(t, ms, "multiconsumer.share.released", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.share.rejected", counter(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.share.lock.renewals", counter(pt(a, renewals)))
	check(t, ms, "multiconsumer.share.lock.expiries", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.share.ack.errors", counter(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.share.held", upDown(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.share.lock.duration", gauge(pt(a, s.Share.AcquisitionLock.Seconds())))
	check(t, ms, "multiconsumer.share.lock.renewable", gauge(pt(a, renew)))
	check(t, ms, "multiconsumer.group.member", gauge(pt[int64](a, 1, mcotel.MemberIDKey.String(s.MemberID))))
	check(t, ms, "multiconsumer.group.generation", gauge(pt(a, int64(s.Generation))))
	check(t, ms, "multiconsumer.group.rebalances", counter(pt(a, s.Rebalances)))
	check(t, ms, "multiconsumer.group.join_failures", counter(pt(a, s.JoinFailures)))
	assert.Equal(t, "s", ms["multiconsumer.share.lock.duration"].Unit)
	assert.Equal(t, "{record}", ms["multiconsumer.share.acquired"].Unit)
	// Of the group instruments, a share-group member has those four only.
	for _, name := range []string{"multiconsumer.group.rebalance.time", "multiconsumer.group.lost_partitions",
		"multiconsumer.group.suspended"} {
		_, ok := value(t, ms, name)
		assert.False(t, ok, name)
	}

	// Close gives the record held back; Metrics observes the final state.
	require.NoError(t, c.Close())
	ms = r.collect(t)
	check(t, ms, "multiconsumer.share.released", counter(pt[int64](a, 1)))
	check(t, ms, "multiconsumer.share.held", upDown(pt[int64](a, 0)))
	check(t, ms, "multiconsumer.share.accepted", counter(pt[int64](a, 2)))
}

// TestAddRemoveClose checks the names, the attributes read from the
// consumer, and that a removed consumer, and all after Close, are gone
// from the next collection.
func TestAddRemoveClose(t *testing.T) {
	t.Parallel()
	topic := cluster.Topic(t, 1)
	// A group name that looks like the rest of MultiConsumer.String.
	odd := "a, topic=b, consumers=3>"
	c1 := open(t, multiconsumer.Config{Topic: topic, Group: odd, ManualCommit: true})
	c2 := open(t, multiconsumer.Config{Topic: topic})
	r := newReader(t)
	m, err := mcotel.New(r.mp)
	require.NoError(t, err)
	require.NoError(t, m.Add("one", c1))
	require.NoError(t, m.Add("two", c2))
	assert.ErrorContains(t, m.Add("one", c2), `"one" is already added`)
	assert.Error(t, m.Add("three", nil))
	_, err = mcotel.New(nil)
	assert.Error(t, err)

	check(t, r.collect(t), "multiconsumer.workers",
		upDown(pt[int64](consumerAttrs("one", topic, odd), 1), pt[int64](consumerAttrs("two", topic, ""), 1)))
	assert.True(t, m.Remove("one"))
	assert.False(t, m.Remove("one"))
	check(t, r.collect(t), "multiconsumer.workers", upDown(pt[int64](consumerAttrs("two", topic, ""), 1)))

	require.NoError(t, m.Close())
	assert.NoError(t, m.Close())
	assert.Error(t, m.Add("one", c1))
	_, ok := value(t, r.collect(t), "multiconsumer.workers")
	assert.False(t, ok)
}
