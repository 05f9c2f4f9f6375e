package multiconsumer

import (
	"context"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Partitions added to the topic while the consumer runs are consumed, from
// their first offset, and listed in Stats.
func TestPartitionsAddedWhileRunning(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 10)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, NumWorkers: 2, MetadataMaxAge: 100 * time.Millisecond,
		StartOffset: kafka.LastOffset /* new partitions start at their first offset all the same */})
	assert.Empty(t, drainFor(t, c, 200*time.Millisecond), "StartOffset last: nothing of the backlog")

	require.NoError(t, cluster.AddPartitions(testCtx(t), topic, 4))
	produce(t, topic, 2, 0, 5)
	produce(t, topic, 3, 0, 5)
	produce(t, topic, 0, 10, 5)
	got := drain(t, c, 15, 15)
	counts := checkOrder(t, got, map[int]int64{0: 10, 2: 0, 3: 0})
	assert.Equal(t, map[int]int{0: 5, 2: 5, 3: 5}, counts)
	s := c.Stats()
	assert.Equal(t, []int{2, 3}, s.AddedPartitions)
	assert.Len(t, s.Partitions, 4)
	assert.Equal(t, int64(5), s.Partitions[3].Delivered)

	// Commits cover them too.
	require.NoError(t, c.Commit(testCtx(t)))
	assert.Equal(t, map[int]int64{0: 15, 1: 10, 2: 5, 3: 5}, committed(t, topic, g, 4))
}

// With Partitions listed, the consumer reads those only, added ones or not.
func TestPartitionsListedIgnoreAdded(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 0)
	c := open(t, Config{Topic: topic, Partitions: []int{1}, MetadataMaxAge: 50 * time.Millisecond})
	require.NoError(t, cluster.AddPartitions(testCtx(t), topic, 3))
	produce(t, topic, 2, 0, 1)
	produce(t, topic, 1, 0, 1)
	got := drain(t, c, 1, 1)
	assert.Equal(t, 1, got[0].Partition)
	// A refresh after the add: nothing new is consumed.
	<-c.meta.request()
	<-c.meta.request()
	assert.Empty(t, c.Stats().AddedPartitions)
	assert.Len(t, c.Stats().Partitions, 1)
}

// drainFor takes every message that arrives within d.
func drainFor(t *testing.T, c *MultiConsumer, d time.Duration) []kafka.Message {
	t.Helper()
	msgs, err := c.GetMessages(testCtx(t), 1<<20, Timeout(d))
	require.NoError(t, err)
	return msgs
}

// A deleted topic is reported, once confirmed, by the delivery calls with
// ErrTopicDeleted; Pending and Commit fail at once, and Close is quick.
func TestTopicDeleted(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 2, 5)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g})
	drain(t, c, 10, 10)
	require.NoError(t, cluster.DeleteTopic(testCtx(t), topic))

	start := time.Now()
	var err error
	for err == nil {
		var msgs []kafka.Message
		msgs, err = c.GetMessages(testCtx(t), 10, Timeout(time.Second))
		assert.Empty(t, msgs)
		require.Less(t, time.Since(start), 30*time.Second, "the deletion was never reported")
	}
	assert.ErrorIs(t, err, ErrTopicDeleted)
	assert.ErrorContains(t, err, topic)
	t.Logf("deletion reported after %v", time.Since(start))
	assert.ErrorIs(t, c.Err(), ErrTopicDeleted)
	assert.ErrorIs(t, c.Stats().Err, ErrTopicDeleted)
	_, ok := <-c.Iter(testCtx(t))
	assert.False(t, ok, "Iter ends")

	start = time.Now()
	_, err = c.Pending(testCtx(t))
	assert.ErrorIs(t, err, ErrTopicDeleted)
	assert.ErrorIs(t, c.Commit(testCtx(t)), ErrTopicDeleted)
	// Close still tries its final commit (the broker may refuse it).
	if err := c.Close(); err != nil {
		assert.ErrorIs(t, err, kafka.UnknownTopicOrPartition)
	}
	assert.Less(t, time.Since(start), 2*time.Second)
}

// Stopping for good stops the workers: no fetch is retried.
func TestTopicDeletedStopsWorkers(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})
	require.NoError(t, cluster.DeleteTopic(testCtx(t), topic))
	require.Eventually(t, func() bool { return c.Err() != nil }, 30*time.Second, 10*time.Millisecond)
	done := make(chan struct{})
	go func() {
		c.sess.goroutines.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("workers still running after the topic was deleted")
	}
	_, err := c.GetMessages(context.Background(), 1, Block(false))
	assert.ErrorIs(t, err, ErrTopicDeleted)
}

// A broker that answers UNKNOWN_TOPIC_OR_PARTITION for a moment (one that
// has just restarted, before it caught up on metadata) does not stop the
// consumer: only a topic missing for goneConfirmAfter is deleted.
func TestTopicMissingForAMomentIsNotDeleted(t *testing.T) {
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})
	h := kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Metadata}, Topic: topic, Err: kerr.UnknownTopicOrPartition, Count: -1})
	start := time.Now()
	for time.Since(start) < 1500*time.Millisecond {
		<-c.meta.request() // missing from every refresh for 1.5 s
	}
	h.Remove()
	<-c.meta.request()
	// A producer whose metadata cache the fault did not fill.
	tc, err := kafkatest.Connect(cluster.Brokers()...)
	require.NoError(t, err)
	defer tc.Close()
	require.NoError(t, tc.Produce(testCtx(t), topic, 0, kafka.Message{Value: []byte("0-0")}))
	msgs, err := c.GetMessages(testCtx(t), 1, Timeout(10*time.Second))
	require.NoError(t, err, "the topic was never deleted")
	assert.Len(t, msgs, 1)
	assert.NoError(t, c.Err())
}

// A partition without a leader (offline) does not hold back the partitions
// fetched with it: kafka-go reads its leader -1 as broker 0, whose fetches
// it would fail altogether.
func TestLeaderlessPartitionDoesNotStallOthers(t *testing.T) {
	t.Parallel()
	if !cluster.Embedded() {
		t.Skip("needs the embedded broker to answer metadata")
	}
	kf, tc, topic := ownCluster(t, 1, 2)
	require.Equal(t, int32(0), kf.LeaderFor(topic, 0))
	host, port, err := net.SplitHostPort(kf.ListenAddrs()[0])
	require.NoError(t, err)
	portN, err := strconv.Atoi(port)
	require.NoError(t, err)

	var offline atomic.Bool
	kf.ControlKey(kmsg.Metadata.Int16(), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		kf.KeepControl()
		req := kreq.(*kmsg.MetadataRequest)
		if !offline.Load() || len(req.Topics) != 1 || req.Topics[0].Topic == nil || *req.Topics[0].Topic != topic {
			return nil, nil, false
		}
		res := req.ResponseKind().(*kmsg.MetadataResponse)
		b := kmsg.NewMetadataResponseBroker()
		b.NodeID, b.Host, b.Port = 0, host, int32(portN)
		res.Brokers = append(res.Brokers, b)
		rt := kmsg.NewMetadataResponseTopic()
		rt.Topic = kmsg.StringPtr(topic)
		p0 := kmsg.NewMetadataResponseTopicPartition()
		p0.Partition, p0.Leader, p0.Replicas, p0.ISR = 0, 0, []int32{0}, []int32{0}
		p1 := kmsg.NewMetadataResponseTopicPartition()
		p1.Partition, p1.Leader, p1.ErrorCode, p1.Replicas = 1, -1, kerr.LeaderNotAvailable.Code, []int32{0}
		rt.Partitions = append(rt.Partitions, p0, p1)
		res.Topics = append(res.Topics, rt)
		return res, nil, true
	})

	c, err := New(testCtx(t), Config{Brokers: kf.ListenAddrs(), Topic: topic})
	require.NoError(t, err)
	defer c.Close()
	offline.Store(true)
	<-c.meta.request()
	<-c.meta.request()
	require.NoError(t, tc.Produce(testCtx(t), topic, 0, kafka.Message{Value: []byte("healthy")}))
	msgs, err := c.GetMessages(testCtx(t), 1, Timeout(10*time.Second))
	require.NoError(t, err)
	assert.Len(t, msgs, 1, "partition 0 is healthy")
	// At most the one fetch in flight when the leader went away, if the
	// transport's metadata saw it first (seen under load).
	assert.LessOrEqual(t, c.Stats().Partitions[0].FetchErrors, int64(1))
}
