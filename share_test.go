package multiconsumer

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// shareCfg is a share-group member's Config on topic and group g.
func shareCfg(topic, g string) Config {
	return Config{Topic: topic, Group: g, ShareGroup: true, QueueSize: 64}
}

// seen counts the records of a share group's members, by partition and
// offset.
type seen struct {
	mu     sync.Mutex
	counts map[string]int
	by     map[string]int // record -> the member that got it last
}

func newSeen() *seen { return &seen{counts: map[string]int{}, by: map[string]int{}} }

func (s *seen) add(member int, msgs ...kafka.Message) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range msgs {
		k := fmt.Sprintf("%d-%d", m.Partition, m.Offset)
		s.counts[k]++
		s.by[k] = member
	}
}

func (s *seen) distinct() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.counts)
}

func (s *seen) twice() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for k, n := range s.counts {
		if n > 1 {
			out = append(out, k)
		}
	}
	return out
}

// Three members on one partition: each gets a real share, and a clean run
// hands out each record once.
func TestShareGroupMembersSplitOnePartition(t *testing.T) {
	t.Parallel()
	const n = 600
	topic := backlog(t, 1, n)
	g := group(t)
	ctx := testCtx(t)
	var members []*MultiConsumer
	for range 3 {
		members = append(members, open(t, shareCfg(topic, g)))
	}
	s := newSeen()
	per := make([]int, len(members))
	var wg sync.WaitGroup
	for i, c := range members {
		wg.Go(func() {
			for s.distinct() < n && ctx.Err() == nil {
				msgs, err := c.GetMessages(ctx, 5, Timeout(200*time.Millisecond))
				if err != nil {
					return
				}
				s.add(i, msgs...)
				per[i] += len(msgs)
				time.Sleep(time.Millisecond) // each takes its time, as a handler would
			}
		})
	}
	wg.Wait()
	require.Equal(t, n, s.distinct())
	assert.Empty(t, s.twice(), "records delivered twice")
	t.Logf("shares: %v", per)
	for i, k := range per {
		assert.Greater(t, k, n/20, "member %d got %d of %d", i, k, n)
	}
	// Coming back accepted what each took; Close releases nothing more.
	for _, c := range members {
		_, err := c.GetMessages(ctx, 0)
		require.NoError(t, err)
		require.NoError(t, c.Commit(ctx))
	}
	for i, c := range members {
		st := c.Stats()
		assert.Equal(t, int64(per[i]), st.Share.Accepted, "member %d", i)
		assert.Zero(t, st.Share.Held, "member %d", i)
		assert.NotEmpty(t, st.MemberID)
		assert.Positive(t, st.Generation)
	}
}

// Config errors of share groups.
func TestShareGroupConfigErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		cfg   Config
		field string
	}{
		{Config{Topic: "t", ShareGroup: true}, "Group"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, JoinGroup: true}, "JoinGroup"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, Partitions: []int{0}}, "Partitions"},
		{Config{Topic: "t", Group: "g", ShareGroup: true, InstanceID: "i"}, "InstanceID"},
	} {
		tc.cfg.Brokers = cluster.Brokers()
		_, err := New(context.Background(), tc.cfg)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce, "%+v", tc.cfg)
		assert.Equal(t, tc.field, ce.Field)
	}
}
