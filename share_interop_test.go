package multiconsumer

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// startJavaShareConsumer starts Kafka's console share consumer
// (org.apache.kafka.tools.consumer.ConsoleShareConsumer) in share group
// group on topic: it accepts each record it prints (implicit
// acknowledgement).
func startJavaShareConsumer(t *testing.T, java, lib, topic, group string) *javaConsumer {
	t.Helper()
	return startJavaTool(t, java, lib, "org.apache.kafka.tools.consumer.ConsoleShareConsumer", "--consumer-property",
		[]string{"--topic", topic, "--group", group},
		"client.id="+javaClientID,
		// Acquire a little at a time, as our member does: the two share
		// the partition's records.
		"max.poll.records=20",
	)
}

// TestShareGroupJavaInterop shares a share group between our member and
// Kafka's own ConsoleShareConsumer: both get records of the one
// partition, no record reaches both in a clean run, and Kafka's
// ShareGroupCommand --describe --members lists our member with its client
// id and partition. It needs a real Kafka (KAFKA_BROKERS), the Kafka jars
// and java, as TestGroupJavaInterop does.
func TestShareGroupJavaInterop(t *testing.T) {
	java, lib := needJavaKafka(t, "")
	const n = 3000
	topic := backlog(t, 1, 0)
	g := group(t)
	cfg := shareCfg(topic, g)
	cfg.QueueSize = 64 // acquire a little at a time: the Java member gets its share
	cfg.Dialer = &kafka.Dialer{ClientID: goClientID, Timeout: 10 * time.Second}
	c := open(t, cfg) // first: the new group reads from the earliest offset
	jv := startJavaShareConsumer(t, java, lib, topic, g)

	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	s := newSeen()
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = c.Process(ctx, ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
			s.add(0, m)
			time.Sleep(time.Millisecond)
			return nil
		})
	})
	// The Java member is in the group (it shows in the describe) before
	// the records come, so that both get some.
	var members map[string]map[string]string
	require.Eventually(t, func() bool {
		members = describeShareMembers(t, java, lib, g)
		return len(members) == 2
	}, 60*time.Second, 500*time.Millisecond, "both members in the share group: %v", members)
	mine, ok := members[c.Stats().MemberID]
	if assert.True(t, ok, "our member %s listed: %v", c.Stats().MemberID, members) {
		assert.Equal(t, goClientID, mine["CLIENT-ID"])
		assert.Equal(t, topic+":0", mine["ASSIGNMENT"])
	}
	for i := range 10 { // a stream, not one burst: both members fetch while it comes
		produce(t, topic, 0, i*n/10, n/10)
		time.Sleep(50 * time.Millisecond)
	}
	javaSeen := func() int { return jv.count() }
	require.Eventually(t, func() bool {
		both := s.distinct() + javaSeen()
		return both >= n
	}, 60*time.Second, 20*time.Millisecond, "ours %d + Java's %d of %d", s.distinct(), javaSeen(), n)
	cancel()
	wg.Wait()
	ours := map[int64]bool{}
	for k := range s.counts {
		var p int
		var off int64
		_, _ = fmt.Sscanf(k, "%d-%d", &p, &off)
		ours[off] = true
	}
	both := 0
	for _, r := range jv.reads() {
		if ours[r.offset] {
			both++
		}
	}
	t.Logf("ours %d, Java's %d, read by both %d", s.distinct(), javaSeen(), both)
	assert.Zero(t, both, "records read by both members")
	assert.Empty(t, s.twice())
	assert.Equal(t, n, s.distinct()+javaSeen()-both)
	assert.Positive(t, s.distinct())
	assert.Positive(t, javaSeen())
	assert.Empty(t, jv.malformed())
}

// describeShareMembers runs Kafka's ShareGroupCommand --describe --members
// and returns its rows by member id.
func describeShareMembers(t *testing.T, java, lib, group string) map[string]map[string]string {
	out := runKafkaTool(t, java, lib, "org.apache.kafka.tools.consumer.group.ShareGroupCommand",
		"--bootstrap-server", strings.Join(cluster.Brokers(), ","), "--describe", "--group", group, "--members")
	rows := map[string]map[string]string{}
	for _, row := range parseTable(out) {
		rows[row["CONSUMER-ID"]] = row
	}
	return rows
}
