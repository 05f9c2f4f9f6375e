package multiconsumer

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestConsumerGroupJavaInterop shares a KIP-848 consumer group between our
// member (GroupProtocol "consumer") and Kafka's Java ConsoleConsumer with
// group.protocol=consumer: Kafka's ConsumerGroupCommand --describe
// --members lists both, with disjoint partitions that cover the topic, and
// every message produced once the assignment is stable is read exactly
// once, by the member that owns its partition. It needs a real Kafka
// (KAFKA_BROKERS), the Kafka jars and java, as TestGroupJavaInterop does.
func TestConsumerGroupJavaInterop(t *testing.T) {
	java, lib := needJavaKafka(t, "")
	const n = interopPartitions
	topic := backlog(t, n, 0)
	g := group(t)
	cfg := groupCfg(topic, g)
	cfg.GroupProtocol = GroupProtocolConsumer
	cfg.Dialer = &kafka.Dialer{ClientID: goClientID, Timeout: 10 * time.Second}
	c := open(t, cfg)
	assignedTo(t, n, c)

	j := startJavaTool(t, java, lib, "org.apache.kafka.tools.consumer.ConsoleConsumer", "--command-property",
		[]string{"--topic", topic, "--group", g, "--from-beginning"},
		"group.protocol=consumer", "client.id="+javaClientID, "auto.commit.interval.ms=500")

	// Both in the group, with disjoint partitions that cover the topic.
	var members map[string]map[string]string
	j.await(t, func() bool {
		out := runKafkaTool(t, java, lib, "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
			"--bootstrap-server", strings.Join(cluster.Brokers(), ","), "--describe", "--group", g, "--members", "--verbose")
		members = map[string]map[string]string{}
		for _, row := range parseTable(out) {
			members[row["CONSUMER-ID"]] = row
		}
		if len(members) != 2 {
			return false
		}
		var all []int
		for _, row := range members {
			a := row["ASSIGNMENT"]
			if a == "" {
				a = row["CURRENT-ASSIGNMENT"]
			}
			parts := strings.TrimPrefix(a, topic+":")
			if parts == a || parts == "" || parts == "-" {
				return false
			}
			for _, s := range strings.Split(parts, ",") {
				p, err := strconv.Atoi(s)
				if err != nil {
					return false
				}
				all = append(all, p)
			}
		}
		slices.Sort(all)
		return slices.Equal(all, []int{0, 1, 2, 3})
	}, func() string { return "both members with disjoint partitions covering the topic" })
	mine, ok := members[c.Stats().MemberID]
	require.True(t, ok, "our member %s listed: %v", c.Stats().MemberID, members)
	assert.Equal(t, goClientID, mine["CLIENT-ID"])
	ours := c.Assignment()
	require.NotEmpty(t, ours)
	require.Less(t, len(ours), n)

	// Messages produced now are each read once, by their partition's owner.
	const per = 100
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	var mu sync.Mutex
	got := map[[2]int64]int{}
	var wg sync.WaitGroup
	wg.Go(func() {
		for m, err := range c.Messages(ctx) {
			if err != nil {
				return
			}
			mu.Lock()
			got[[2]int64{int64(m.Partition), m.Offset}]++
			mu.Unlock()
		}
	})
	for p := range n {
		produce(t, topic, p, 0, per)
	}
	j.await(t, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(got)+j.count() >= n*per
	}, func() string { return "every message read" })
	cancel()
	wg.Wait()
	for _, r := range j.reads() {
		assert.NotContains(t, ours, r.partition, "the Java member read a partition of ours")
		got[[2]int64{int64(r.partition), r.offset}]++
	}
	assert.Len(t, got, n*per)
	for k, v := range got {
		assert.Equal(t, 1, v, "partition %d offset %d read %d times", k[0], k[1], v)
	}
	assert.Empty(t, j.malformed())
}
