package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
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
		// Every consumer is closed by now: none may have left a goroutine.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goroutines left after the tests:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// brokerFree skips a long test that needs no broker and no group protocol
// when the suite runs again against a real Kafka (KAFKA_BROKERS) or under
// the consumer protocol: the embedded broker's run covers it, and its CPU
// would only slow the tests that run beside it.
func brokerFree(t *testing.T) {
	t.Helper()
	if os.Getenv("KAFKA_BROKERS") != "" || testGroupProtocol == GroupProtocolConsumer {
		t.Skip("needs no broker: the embedded broker's run covers it")
	}
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// backlog creates a topic with partitions partitions holding perPartition
// messages each (see kafkatest.ProduceN for their keys).
func backlog(t *testing.T, partitions, perPartition int) string {
	t.Helper()
	topic := cluster.Topic(t, partitions)
	if perPartition > 0 {
		require.NoError(t, cluster.ProduceN(testCtx(t), topic, partitions, perPartition))
	}
	return topic
}

// produce appends n messages to partition p, whose log ends at offset from,
// valued as kafkatest.ProduceN values them ("p-offset").
func produce(t *testing.T, topic string, p, from, n int) {
	t.Helper()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Value: []byte(fmt.Sprintf("%d-%d", p, from+i))}
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, p, msgs...))
}

// open starts a consumer on cfg with the test cluster's brokers, closed when
// the test ends.
func open(t *testing.T, cfg Config) *MultiConsumer {
	t.Helper()
	cfg.Brokers = cluster.Brokers()
	c, err := New(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// ownCluster starts an embedded cluster of its own for t, with brokers
// brokers (to move leaders, or answer requests in ways the shared one must
// not), and a topic of partitions partitions on it.
func ownCluster(t *testing.T, brokers, partitions int) (*kfake.Cluster, *kafkatest.Cluster, string) {
	t.Helper()
	kf, err := kfake.NewCluster(kfake.NumBrokers(brokers))
	require.NoError(t, err)
	t.Cleanup(kf.Close)
	tc, err := kafkatest.Connect(kf.ListenAddrs()...)
	require.NoError(t, err)
	t.Cleanup(tc.Close)
	topic := kafkatest.UniqueName("own")
	require.NoError(t, tc.CreateTopic(testCtx(t), topic, partitions))
	return kf, tc, topic
}

func group(t *testing.T) string { return kafkatest.UniqueName("g") }

// committed reads the group's committed offsets from the broker, as a new
// process would; partitions without a commit are left out.
func committed(t *testing.T, topic, group string, partitions int) map[int]int64 {
	t.Helper()
	out, err := readCommitted(testCtx(t), topic, group, partitions)
	require.NoError(t, err)
	return out
}

// readCommitted is committed for a goroutine other than the test's, where
// require must not stop the test.
func readCommitted(ctx context.Context, topic, group string, partitions int) (map[int]int64, error) {
	parts := make([]int, partitions)
	for i := range parts {
		parts[i] = i
	}
	res, err := cluster.Client().OffsetFetch(ctx, &kafka.OffsetFetchRequest{
		GroupID: group, Topics: map[string][]int{topic: parts},
	})
	if err != nil {
		return nil, err
	}
	out := map[int]int64{}
	if errors.Is(res.Error, kafka.GroupIdNotFound) {
		return out, nil // kfake: a group without commits does not exist
	}
	if res.Error != nil {
		return nil, res.Error
	}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			return nil, p.Error
		}
		if p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// drain takes n messages with GetMessages(batch) and fails on a timeout.
func drain(t *testing.T, c *MultiConsumer, n, batch int) []kafka.Message {
	t.Helper()
	var out []kafka.Message
	for len(out) < n {
		msgs, err := c.GetMessages(testCtx(t), min(batch, n-len(out)), Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "no message within 30s after %d of %d", len(out), n)
		out = append(out, msgs...)
	}
	return out
}

// checkOrder asserts that msgs hold each partition's offsets from first[p]
// on, consecutive, each once, and returns the count per partition.
func checkOrder(t *testing.T, msgs []kafka.Message, first map[int]int64) map[int]int {
	t.Helper()
	next := map[int]int64{}
	for p, o := range first {
		next[p] = o
	}
	counts := map[int]int{}
	for _, m := range msgs {
		want, ok := next[m.Partition]
		require.True(t, ok, "message of unexpected partition %d", m.Partition)
		require.Equal(t, want, m.Offset, "partition %d out of order or duplicated", m.Partition)
		require.Equal(t, fmt.Sprintf("%d-%d", m.Partition, m.Offset), string(m.Value))
		next[m.Partition]++
		counts[m.Partition]++
	}
	return counts
}

func zeros(partitions int) map[int]int64 {
	out := map[int]int64{}
	for p := range partitions {
		out[p] = 0
	}
	return out
}
