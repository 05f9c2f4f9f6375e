package multiconsumer

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// This file is the controller's side of group mode: the member (group.go)
// grants partitions, and takes them back, here, under a lease.

// lease is what the coordinator granted the member for one generation: its
// member id and the generation. A commit is built under one lease, read
// together with its offsets, and sent under that lease or not at all: a
// retry sent under a later lease would be accepted by the broker (neither
// Kafka nor kfake checks that the committer owns the partition) and could
// rewind the offset that the partition's new owner committed meanwhile.
// Outside group mode the lease is the zero-generation one, noLease.
type lease struct {
	memberID, instanceID string
	generation           int32 // -1: none (not in the group, or the member was lost)
}

// noLease is the lease of a consumer that is not (or no longer) a member.
var noLease = lease{generation: -1}

// errLeaseEnded is wrapped by the error of a commit whose lease ended (a
// rebalance, or the member was lost) before its request went out: it is
// dropped, not sent under the new lease. It wraps kafka.IllegalGeneration,
// as a broker would answer it, so that a caller or the committer treats it
// like a commit the broker refused as stale.
var errLeaseEnded = fmt.Errorf("the member's generation ended before the commit went out; not sent: %w", kafka.IllegalGeneration)

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

// grant starts consuming partitions the group assigned to this member,
// where startOffset says. OnAssigned runs
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
		committed, meta, err = c.kc.committedOffsets(ctx, parts)
		if err == nil {
			b, err = c.kc.logBounds(ctx, parts)
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
		start, from := c.startLocked(p, committed, meta, b[p])
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

// assignment is one change of what a group member owns, applied by apply
// as one step, in this order: the lease first (commits are built under it
// from now on), then the lost partitions are given up without a commit,
// the revoked ones after their caller's holdings drained and were
// committed, and the added ones start.
type assignment struct {
	lease          lease
	owned          []int // what the member owns after the change, sorted
	added, revoked []int
	lost           []int
}

// apply applies a group member's change (see assignment).
func (c *MultiConsumer) apply(ctx context.Context, a assignment) {
	c.setLease(a.lease)
	if len(a.lost) > 0 {
		c.revoke(ctx, a.lost, true)
	}
	if len(a.revoked) > 0 {
		c.revoke(ctx, a.revoked, false)
	}
	c.setAssignment(a.owned)
	if len(a.added) > 0 {
		c.grant(ctx, a.added)
	}
}

// setLease records the lease that commits are built under from now on.
// Commits built under an earlier one are dropped before they go out.
func (c *MultiConsumer) setLease(l lease) {
	c.mu.Lock()
	c.grp.lease = l
	c.mu.Unlock()
	c.live.news.notify() // what waits for the coordinator looks again
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
	c.sess.halt()
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

// liveness is the member's own view of its session. The coordinator drops
// a member it has not heard from for SessionTimeout and gives its
// partitions to others, so a member that has not heard back from the
// coordinator for that long (its process was paused, its network cut) is
// probably out of the group already. Until the coordinator answers again,
// or the partitions are taken away, it delivers nothing new and starts no
// handler: otherwise it would, in the moments before its next heartbeat
// tells it, handle messages that their new owner handles too.
type liveness struct {
	born    time.Time     // set once; the times below are since born (monotonic)
	timeout time.Duration // SessionTimeout; 0 outside group mode: always alive
	heard   atomic.Int64  // when the coordinator last answered
	joining atomic.Bool   // a JoinGroup is in flight: the coordinator keeps a joining member alive
	news    broadcast     // notified when the coordinator answers
}

func newLiveness(timeout time.Duration) *liveness {
	return &liveness{born: time.Now(), timeout: timeout}
}

// answered records that the coordinator answered the member just now.
func (l *liveness) answered() {
	l.heard.Store(int64(time.Since(l.born)))
	l.news.notify()
}

// alive reports whether the member heard from the coordinator within its
// session timeout (or is joining, or is not a group member).
func (l *liveness) alive() bool {
	return l.timeout == 0 || l.joining.Load() || time.Since(l.born)-time.Duration(l.heard.Load()) <= l.timeout
}

// lastHeard returns when the coordinator last answered (zero outside group mode).
func (l *liveness) lastHeard() time.Time {
	if l.timeout == 0 {
		return time.Time{}
	}
	return l.born.Add(time.Duration(l.heard.Load()))
}

// changed returns a channel closed at the coordinator's next answer.
func (l *liveness) changed() <-chan struct{} { return l.news.wait() }

// awaitAlive waits until the member is alive (see liveness), ctx ends, the
// consumer closes, or interrupt is closed (a Seek or a revoke: the caller
// looks again at what it was about to deliver). It reports whether the
// member is alive.
func (c *MultiConsumer) awaitAlive(ctx context.Context, interrupt <-chan struct{}) bool {
	for {
		if c.live.alive() {
			return true
		}
		changed := c.live.changed()
		if c.live.alive() {
			return true // it answered meanwhile
		}
		select {
		case <-changed:
		case <-interrupt:
			return c.live.alive()
		case <-ctx.Done():
			return false
		case <-c.closing.Done():
			return false
		}
	}
}
