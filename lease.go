package multiconsumer

import (
	"context"
	"slices"
	"time"
)

// This file is the controller's side of group mode: the member (group.go)
// grants partitions, and takes them back, here.

// lostKey marks the context of an OnRevoked call for partitions lost
// without a commit.
type lostKey struct{}

// Lost reports whether ctx is that of an OnRevoked call for partitions the
// member lost without a chance to commit (its session expired, or it was
// fenced): their new owner may already be consuming them. Otherwise what
// the caller had consumed of them was committed first.
func Lost(ctx context.Context) bool {
	lost, _ := ctx.Value(lostKey{}).(bool)
	return lost
}

// grant starts consuming partitions the group assigned to this member: at
// the group's committed offset, else at StartOffset. OnAssigned runs
// before their first fetch. It retries until it has their offsets or ctx
// ends.
func (c *MultiConsumer) grant(ctx context.Context, parts []int) {
	if c.isClosed() {
		return // the member leaves: the others will take them
	}
	var committed map[int]int64
	var meta map[int]string
	var b map[int]bounds
	backoff := time.Duration(0)
	for {
		var err error
		committed, meta, err = c.committedOffsets(ctx, parts)
		if err == nil {
			b, err = c.logBounds(ctx, parts)
		}
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return
		}
		backoff = nextBackoff(backoff, min(c.cfg.MaxBackoff, 5*time.Second))
		c.log.Warn("group: cannot start assigned partitions yet", "partitions", parts, "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
	c.mu.Lock()
	for _, p := range parts {
		start, from := c.startOffset(p, committed, b[p])
		cm, ok := committed[p]
		if !ok {
			cm = noOffset
		}
		c.book.add(p, start, cm)
		c.book.restore(p, meta[p]) // Process skips what the last owner completed
		delete(c.positions, p)     // fetched afresh from start
		c.log.Info("partition assigned", "partition", p, "offset", start, "from", from)
	}
	owned := c.book.partitions()
	c.mu.Unlock()
	if c.cfg.OnAssigned != nil {
		c.cfg.OnAssigned(ctx, slices.Clone(parts))
	}
	c.assign(owned)
}

// revoke gives partitions up: it stops fetching them, drops their queued
// messages, and, unless lost, waits (up to RebalanceTimeout) for the caller
// to come back for what it holds of them and commits what it consumed.
// Then OnRevoked runs; after it, nothing of them is delivered.
func (c *MultiConsumer) revoke(ctx context.Context, parts []int, lost bool) {
	c.mu.Lock()
	for _, p := range parts {
		c.book.retire(p) // nothing fetched so far is delivered from now on
		if c.proc != nil {
			c.proc.purge(p) // its waiting messages are stale
		}
	}
	c.interruptLocked() // an Iter send in flight gives its message back, or hands it over
	var keep []int
	for _, p := range c.book.partitions() {
		if !slices.Contains(parts, p) {
			keep = append(keep, p)
		}
	}
	c.mu.Unlock()
	// An Iter send that began before retire either hands its message over
	// now or gives it back: wait for it to finish.
	c.sending.Lock()
	c.sending.Unlock() //nolint:staticcheck // an empty critical section is the point
	c.assign(keep)
	c.q.drop(func(b *batch) bool { return slices.Contains(parts, b.partition) })

	if !lost {
		c.awaitConsumed(ctx, parts)
		if c.autoCommit() { // with ManualCommit, OnRevoked may call Commit
			if err := c.commit(c.commitLife, parts...); err != nil {
				c.log.Warn("group: commit of revoked partitions failed", "partitions", parts, "err", err)
			}
		}
	} else {
		c.mu.Lock()
		c.grp.lost += int64(len(parts))
		c.mu.Unlock()
	}
	if c.cfg.OnRevoked != nil {
		c.cfg.OnRevoked(context.WithValue(ctx, lostKey{}, lost), slices.Clone(parts))
	}
	c.mu.Lock()
	for _, p := range parts {
		c.book.remove(p)
		delete(c.positions, p)
	}
	c.mu.Unlock()
}

// awaitConsumed waits until the caller has come back for every delivered
// message of parts, or RebalanceTimeout, or ctx.
func (c *MultiConsumer) awaitConsumed(ctx context.Context, parts []int) {
	timer := time.NewTimer(c.cfg.RebalanceTimeout)
	defer timer.Stop()
	for {
		if c.isClosed() {
			return // the caller will not come back
		}
		c.mu.Lock()
		held := c.book.held(parts)
		var wait <-chan struct{}
		if held {
			c.awaiting++
			wait = c.consumed.wait()
		}
		c.mu.Unlock()
		if !held {
			return
		}
		done := false
		select {
		case <-wait:
		case <-timer.C:
			c.log.Warn("group: the caller did not come back for messages of revoked partitions; they go uncommitted", "partitions", parts)
			done = true
		case <-ctx.Done():
			done = true
		}
		c.mu.Lock()
		c.awaiting--
		c.mu.Unlock()
		if done {
			return
		}
	}
}

// setMember records the member id and generation commits carry.
func (c *MultiConsumer) setMember(id string, generation int32) {
	c.mu.Lock()
	c.grp.memberID, c.grp.generation = id, generation
	c.mu.Unlock()
}

// setAssignment records the partitions the member owns.
func (c *MultiConsumer) setAssignment(parts []int) {
	c.mu.Lock()
	c.grp.assignment = slices.Clone(parts)
	c.mu.Unlock()
	c.generations.notify()
}

// rebalanced counts a rebalance that took d.
func (c *MultiConsumer) rebalanced(d time.Duration) {
	c.mu.Lock()
	c.grp.rebalances++
	c.grp.rebalancing += d
	c.mu.Unlock()
}

// joined records the outcome of a join: its error, or nil when it
// succeeded.
func (c *MultiConsumer) joined(err error) {
	c.mu.Lock()
	c.grp.joinErr = err
	if err != nil {
		c.grp.joinFailures++
	}
	c.mu.Unlock()
}

// stopForGood stops the consumer for err: deliveries report it.
func (c *MultiConsumer) stopForGood(err error) {
	c.mu.Lock()
	if c.fatal == nil {
		c.fatal = err
		c.log.Error("stopping", "err", err)
	}
	c.mu.Unlock()
	c.q.signal()
	c.stopWorkers()
}

// Assignment returns the partitions the consumer reads now, sorted: in
// group mode those the group assigned to it, otherwise every partition it
// was configured with (and those added to the topic since).
func (c *MultiConsumer) Assignment() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.cfg.JoinGroup {
		return slices.Clone(c.grp.assignment)
	}
	return c.book.partitions()
}
