package multiconsumer

import (
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// owners returns the session's workers and which fetches each partition.
func (s *session) owners() ([]*worker, map[int]*worker) {
	s.mu.Lock()
	defer s.mu.Unlock()
	owner := make(map[int]*worker, len(s.owner))
	for p, w := range s.owner {
		owner[p] = w
	}
	return slices.Clone(s.workers), owner
}

// A change of partitions moves only what changes: the workers keep running
// (no restart, no fetch of a staying partition cancelled), a removed
// partition leaves its worker, an added one goes to the worker with the
// fewest; and nothing is lost or delivered twice through the changes. The
// partition goes and comes back the way a group's revoke and grant move it.
func TestSessionChangesOnlyWhatChanges(t *testing.T) {
	t.Parallel()
	const n, per = 4, 200
	topic := backlog(t, n, per)
	ctx := testCtx(t)
	c := open(t, Config{Topic: topic, Group: group(t), NumWorkers: 2, QueueSize: 16})
	got := drain(t, c, 40, 10)
	_, err := c.GetMessages(ctx, 0) // consumes what was delivered
	require.NoError(t, err)

	workers, before := c.sess.owners()
	require.Len(t, workers, 2)
	c.ho.revoke(ctx, []int{3}, false) // commits what was consumed of it
	after, owner := c.sess.owners()
	assert.Equal(t, workers, after, "the same workers: none restarted")
	for _, p := range []int{0, 1, 2} {
		assert.Same(t, before[p], owner[p], "partition %d stays with its worker", p)
	}
	assert.NotContains(t, owner, 3)

	more := drain(t, c, 40, 10)
	for _, m := range more {
		assert.NotEqual(t, 3, m.Partition, "a message of a partition given up")
	}
	got = append(got, more...)
	_, err = c.GetMessages(ctx, 0)
	require.NoError(t, err)
	require.NoError(t, c.ho.grant(ctx, []int{3}, false)) // from its committed offset
	after, owner = c.sess.owners()
	assert.Equal(t, workers, after, "the same workers: none restarted")
	load := map[*worker]int{}
	for p, w := range owner {
		if p != 3 {
			load[w]++
		}
	}
	for _, w := range workers {
		assert.LessOrEqual(t, load[owner[3]], load[w], "partition 3 goes to the worker with the fewest")
	}

	got = append(got, drain(t, c, n*per-len(got), 100)...)
	counts := checkOrder(t, got, zeros(n))
	for p := range n {
		assert.Equal(t, per, counts[p], "partition %d", p)
	}
}

// When the number of workers must change, they all restart, and go on
// from where the last ones stopped.
func TestSessionRestartsForAnotherWorkerCount(t *testing.T) {
	t.Parallel()
	const n, per = 4, 100
	topic := backlog(t, n, per)
	c := open(t, Config{Topic: topic, PartitionsPerWorker: 1, QueueSize: 16})
	got := drain(t, c, 40, 10)
	workers, _ := c.sess.owners()
	require.Len(t, workers, 4)
	c.sess.set([]int{0, 1})
	after, _ := c.sess.owners()
	assert.Len(t, after, 2)
	c.sess.set([]int{0, 1, 2, 3})
	after, _ = c.sess.owners()
	assert.Len(t, after, 4)
	got = append(got, drain(t, c, n*per-len(got), 100)...)
	counts := checkOrder(t, got, zeros(n))
	for p := range n {
		assert.Equal(t, per, counts[p], "partition %d", p)
	}
}
