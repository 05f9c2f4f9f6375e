// Package kafkatest starts a Kafka broker for tests: an in-process one
// (github.com/twmb/franz-go/pkg/kfake) by default, or an external cluster
// named by KAFKA_BROKERS, with helpers to create topics and produce messages.
//
// Programs that use multiconsumer import it in their own tests:
//
//	cluster := kafkatest.Run(t)          // kfake, or KAFKA_BROKERS when set
//	topic := cluster.Topic(t, 4)         // a fresh topic with 4 partitions
//	cluster.ProduceN(ctx, topic, 1000, 100)
package kafkatest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// TestBrokerConfigs are the broker configs of the embedded cluster Start
// starts: short group heartbeats and sessions, for tests.
var TestBrokerConfigs = map[string]string{
	"group.consumer.heartbeat.interval.ms": "100",
	"group.consumer.session.timeout.ms":    "6000",
	"group.share.heartbeat.interval.ms":    "100",
}

// EnvBrokers is the environment variable that, when set to a comma-separated
// list of host:port, makes Run use that cluster instead of an embedded one.
const EnvBrokers = "KAFKA_BROKERS"

// Cluster is a Kafka cluster to test against: embedded, or external.
// Its methods are safe for concurrent use.
type Cluster struct {
	brokers   []string
	embedded  *kfake.Cluster
	transport *kafka.Transport
	client    *kafka.Client

	closeOnce sync.Once
}

// Start starts an embedded single-broker cluster on a free loopback port.
// Stop it with Close. Its KIP-848 and share groups heartbeat every 100 ms
// (a member gets its assignment at once), and a KIP-848 member's session
// lasts 6 s (a killed member's partitions move soon), as
// scripts/kafka.sh sets a real test broker.
func Start() (*Cluster, error) {
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.BrokerConfigs(TestBrokerConfigs))
	if err != nil {
		return nil, fmt.Errorf("kafkatest: start embedded broker: %w", err)
	}
	c := newCluster(kf.ListenAddrs())
	c.embedded = kf
	return c, nil
}

// Connect returns a Cluster for brokers that are already running (for
// example a real Apache Kafka). Close releases its connections and leaves
// the brokers running.
func Connect(brokers ...string) (*Cluster, error) {
	if len(brokers) == 0 {
		return nil, errors.New("kafkatest: Connect needs at least one broker address")
	}
	return newCluster(brokers), nil
}

// FromEnv connects to the brokers in KAFKA_BROKERS when it is set, and
// starts an embedded broker otherwise.
func FromEnv() (*Cluster, error) {
	if env := strings.TrimSpace(os.Getenv(EnvBrokers)); env != "" {
		var brokers []string
		for b := range strings.SplitSeq(env, ",") {
			if b = strings.TrimSpace(b); b != "" {
				brokers = append(brokers, b)
			}
		}
		return Connect(brokers...)
	}
	return Start()
}

// Run is FromEnv for tests: it fails t when the cluster cannot be reached
// and closes the cluster when t ends.
func Run(t testing.TB) *Cluster {
	t.Helper()
	c, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func newCluster(brokers []string) *Cluster {
	tr := &kafka.Transport{
		Dial:        (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		DialTimeout: 5 * time.Second,
		MetadataTTL: time.Second,
		ClientID:    "kafkatest",
	}
	return &Cluster{
		brokers:   brokers,
		transport: tr,
		client:    &kafka.Client{Addr: kafka.TCP(brokers...), Timeout: 30 * time.Second, Transport: tr},
	}
}

// Brokers returns the seed broker addresses.
func (c *Cluster) Brokers() []string { return append([]string(nil), c.brokers...) }

// Embedded reports whether the cluster is the in-process kfake broker.
func (c *Cluster) Embedded() bool { return c.embedded != nil }

// Kfake returns the embedded broker, or nil for an external cluster. Tests
// use it to inject faults (kfake's Control functions).
func (c *Cluster) Kfake() *kfake.Cluster { return c.embedded }

// Client returns a kafka-go client bound to the cluster.
func (c *Cluster) Client() *kafka.Client { return c.client }

// Close releases the cluster's connections and stops an embedded broker.
// It is safe to call more than once.
func (c *Cluster) Close() {
	c.closeOnce.Do(func() {
		c.transport.CloseIdleConnections()
		if c.embedded != nil {
			c.embedded.Close()
		}
	})
}

// UniqueName returns prefix followed by a random suffix, for topics and
// groups that no other test shares.
func UniqueName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// CreateTopic creates topic with the given number of partitions (replication
// factor 1) and topic configs (such as max.message.bytes), and waits until
// every partition has a leader.
func (c *Cluster) CreateTopic(ctx context.Context, topic string, partitions int, configs ...kafka.ConfigEntry) error {
	res, err := c.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{
		Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: partitions, ReplicationFactor: 1, ConfigEntries: configs}},
	})
	if err != nil {
		return fmt.Errorf("kafkatest: create topic %q: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
		return fmt.Errorf("kafkatest: create topic %q: %w", topic, err)
	}
	return c.waitLeaders(ctx, topic, partitions)
}

// AddPartitions grows topic to total partitions, and waits until every
// partition has a leader.
func (c *Cluster) AddPartitions(ctx context.Context, topic string, total int) error {
	res, err := c.client.CreatePartitions(ctx, &kafka.CreatePartitionsRequest{
		Topics: []kafka.TopicPartitionsConfig{{Name: topic, Count: int32(total)}},
	})
	if err != nil {
		return fmt.Errorf("kafkatest: add partitions to topic %q: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		return fmt.Errorf("kafkatest: add partitions to topic %q: %w", topic, err)
	}
	return c.waitLeaders(ctx, topic, total)
}

// waitLeaders waits until topic has partitions partitions, each with a
// leader that answers: a real broker answers CreateTopics before every
// partition has a leader.
func (c *Cluster) waitLeaders(ctx context.Context, topic string, partitions int) error {
	for {
		md, err := c.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
		if err == nil && len(md.Topics) == 1 && md.Topics[0].Error == nil && len(md.Topics[0].Partitions) == partitions {
			ready := true
			for _, p := range md.Topics[0].Partitions {
				ready = ready && p.Error == nil && p.Leader.Host != ""
			}
			if ready && c.leadersReady(ctx, topic, partitions) {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafkatest: topic %q has no leaders yet: %w", topic, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// leadersReady reports whether every partition's leader answers a
// ListOffsets request: a real broker lists leaders in its metadata a moment
// before they serve requests.
func (c *Cluster) leadersReady(ctx context.Context, topic string, partitions int) bool {
	reqs := make([]kafka.OffsetRequest, partitions)
	for p := range reqs {
		reqs[p] = kafka.LastOffsetOf(p)
	}
	res, err := c.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil || len(res.Topics[topic]) != partitions {
		return false
	}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			return false
		}
	}
	return true
}

// DeleteTopic deletes topic.
func (c *Cluster) DeleteTopic(ctx context.Context, topic string) error {
	res, err := c.client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{topic}})
	if err != nil {
		return fmt.Errorf("kafkatest: delete topic %q: %w", topic, err)
	}
	if err := res.Errors[topic]; err != nil {
		return fmt.Errorf("kafkatest: delete topic %q: %w", topic, err)
	}
	return nil
}

// Topic creates a uniquely named topic with the given number of partitions
// for the test t, and deletes it when t ends.
func (c *Cluster) Topic(t testing.TB, partitions int) string {
	t.Helper()
	topic := UniqueName(strings.NewReplacer("/", "-", " ", "-").Replace(t.Name()))
	if len(topic) > 200 {
		topic = topic[len(topic)-200:]
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := c.CreateTopic(ctx, topic, partitions); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = c.DeleteTopic(ctx, topic)
	})
	return topic
}

// Produce appends msgs to partition of topic, in order, with acks from all
// in-sync replicas. Only Key, Value, Headers and Time of msgs are used.
func (c *Cluster) Produce(ctx context.Context, topic string, partition int, msgs ...kafka.Message) error {
	return c.ProduceCompressed(ctx, topic, partition, 0, msgs...)
}

// ProduceCompressed is Produce with record batches compressed by codec
// (kafka.Gzip, kafka.Snappy, kafka.Lz4, kafka.Zstd; 0 for none).
func (c *Cluster) ProduceCompressed(ctx context.Context, topic string, partition int, codec kafka.Compression, msgs ...kafka.Message) error {
	const maxBatch = 4096
	for len(msgs) > 0 {
		n := min(len(msgs), maxBatch)
		if err := c.produce(ctx, topic, partition, codec, msgs[:n]); err != nil {
			return err
		}
		msgs = msgs[n:]
	}
	return nil
}

// DeleteRecords deletes the records of partition before offset, as
// retention does: the partition's log then starts at offset.
func (c *Cluster) DeleteRecords(ctx context.Context, topic string, partition int, before int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		return fmt.Errorf("kafkatest: delete records: %w", err)
	}
	defer cl.Close()
	req := kmsg.NewPtrDeleteRecordsRequest()
	req.TimeoutMillis = 30_000
	req.Topics = []kmsg.DeleteRecordsRequestTopic{{
		Topic:      topic,
		Partitions: []kmsg.DeleteRecordsRequestTopicPartition{{Partition: int32(partition), Offset: before}},
	}}
	res, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("kafkatest: delete records of %s[%d] before %d: %w", topic, partition, before, err)
	}
	for _, t := range res.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return fmt.Errorf("kafkatest: delete records of %s[%d] before %d: %w", topic, partition, before, err)
			}
		}
	}
	return nil
}

// SetGroupConfig sets configs of group (a GROUP config resource, such as a
// share group's share.auto.offset.reset or share.record.lock.duration.ms),
// as kafka-configs.sh --entity-type groups does. On the embedded broker,
// the share lock duration is the broker's (see kfake.BrokerConfigs).
func (c *Cluster) SetGroupConfig(ctx context.Context, group string, configs map[string]string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		return fmt.Errorf("kafkatest: set group config: %w", err)
	}
	defer cl.Close()
	req := kmsg.NewPtrIncrementalAlterConfigsRequest()
	r := kmsg.NewIncrementalAlterConfigsRequestResource()
	r.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	r.ResourceName = group
	for k, v := range configs {
		cfg := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
		cfg.Name, cfg.Value, cfg.Op = k, &v, kmsg.IncrementalAlterConfigOpSet
		r.Configs = append(r.Configs, cfg)
	}
	req.Resources = append(req.Resources, r)
	res, err := req.RequestWith(ctx, cl)
	if err != nil {
		return fmt.Errorf("kafkatest: set config of group %s: %w", group, err)
	}
	for _, rr := range res.Resources {
		if err := kerr.ErrorForCode(rr.ErrorCode); err != nil {
			msg := ""
			if rr.ErrorMessage != nil {
				msg = ": " + *rr.ErrorMessage
			}
			return fmt.Errorf("kafkatest: set config of group %s: %w%s", group, err, msg)
		}
	}
	return nil
}

// GroupMemberClientIDs returns the client ids of the members of group, a
// classic group or a KIP-848 consumer group (ConsumerGroupDescribe), as
// Kafka's tools list them.
func (c *Cluster) GroupMemberClientIDs(ctx context.Context, group string) ([]string, error) {
	res, err := c.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{group}})
	if err != nil {
		return nil, fmt.Errorf("kafkatest: describe group %s: %w", group, err)
	}
	var ids []string
	for _, g := range res.Groups {
		for _, m := range g.Members {
			ids = append(ids, m.ClientID)
		}
	}
	if len(ids) > 0 {
		return ids, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(c.brokers...))
	if err != nil {
		return nil, fmt.Errorf("kafkatest: describe group %s: %w", group, err)
	}
	defer cl.Close()
	req := kmsg.NewPtrConsumerGroupDescribeRequest()
	req.Groups = []string{group}
	cres, err := req.RequestWith(ctx, cl)
	if err != nil {
		return nil, fmt.Errorf("kafkatest: describe consumer group %s: %w", group, err)
	}
	for _, g := range cres.Groups {
		if err := kerr.ErrorForCode(g.ErrorCode); err != nil && !errors.Is(err, kerr.GroupIDNotFound) {
			return nil, fmt.Errorf("kafkatest: describe consumer group %s: %w", group, err)
		}
		for _, m := range g.Members {
			ids = append(ids, m.ClientID)
		}
	}
	return ids, nil
}

// produce sends one batch, retrying while the error is temporary: a real
// broker answers NOT_LEADER for a while after a topic is created, until the
// partition's leader is ready.
func (c *Cluster) produce(ctx context.Context, topic string, partition int, codec kafka.Compression, msgs []kafka.Message) error {
	for {
		// Records read their keys and values: each attempt needs its own.
		records := make([]kafka.Record, len(msgs))
		for i, m := range msgs {
			records[i] = kafka.Record{Time: m.Time, Headers: m.Headers}
			if m.Key != nil {
				records[i].Key = kafka.NewBytes(m.Key)
			}
			if m.Value != nil {
				records[i].Value = kafka.NewBytes(m.Value)
			}
		}
		res, err := c.client.Produce(ctx, &kafka.ProduceRequest{
			Topic:        topic,
			Partition:    partition,
			RequiredAcks: kafka.RequireAll,
			Records:      kafka.NewRecordReader(records...),
			Compression:  codec,
		})
		if err == nil {
			err = res.Error
		}
		if err == nil {
			return nil
		}
		var kerr kafka.Error
		if !errors.As(err, &kerr) || !kerr.Temporary() {
			return fmt.Errorf("kafkatest: produce to %s[%d]: %w", topic, partition, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafkatest: produce to %s[%d]: %w (last error: %w)", topic, partition, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ProduceN appends perPartition messages to each of the first partitions
// partitions of topic, concurrently. Message i of partition p has key
// "p-i" and value "p-i" (so tests can check order and completeness).
func (c *Cluster) ProduceN(ctx context.Context, topic string, partitions, perPartition int) error {
	errs := make([]error, partitions)
	var wg sync.WaitGroup
	for p := range partitions {
		wg.Go(func() {
			msgs := make([]kafka.Message, perPartition)
			for i := range msgs {
				k := []byte(fmt.Sprintf("%d-%d", p, i))
				msgs[i] = kafka.Message{Key: k, Value: k}
			}
			errs[p] = c.Produce(ctx, topic, p, msgs...)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
