package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Commit counts everything delivered so far as consumed (the caller says it
// is done with it) and stores the consumed offsets of partitions (every
// partition when none is given) in the group, synchronously. It resets both
// auto-commit triggers. It returns ErrNoGroup when Config.Group is "", and
// works with ManualCommit too. A dropped connection or a temporary Kafka
// error is retried within the request timeout. A Commit in flight when
// Close begins finishes within Close's timeout, or returns ErrClosed; one
// called after returns ErrClosed. While Process runs, Commit marks nothing
// consumed: it stores what Process's handlers completed (see Process).
func (c *MultiConsumer) Commit(ctx context.Context, partitions ...int) error {
	if ctx == nil {
		return errNilContext
	}
	parts, err := c.owned(partitions)
	if err != nil {
		return err
	}
	if c.cfg.Group == "" {
		return ErrNoGroup
	}
	ctx, leave, err := c.enter(ctx, c.commitLife)
	if err != nil {
		return err
	}
	defer leave()
	c.consume()
	if len(partitions) == 0 {
		parts = nil
	}
	return closedErr(ctx, c.commit(ctx, parts...))
}

// finalCommit is Close's commit. In group mode, a commit refused because
// the group is rebalancing is made again once the member has joined the
// new generation (for the partitions it still owns), within ctx.
func (c *MultiConsumer) finalCommit(ctx context.Context) error {
	for {
		changed := c.generations.wait()
		err := c.commit(ctx)
		if err == nil || !c.cfg.JoinGroup || !(errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration)) {
			return err
		}
		c.log.Info("group: final commit waits for the rebalance under way", "err", err)
		select {
		case <-changed:
		case <-ctx.Done():
			return err
		}
	}
}

// consume records that the caller came back for more, and wakes the
// committer when the count trigger fires.
func (c *MultiConsumer) consume() {
	c.mu.Lock()
	due := c.book.consume(time.Now())
	if c.awaiting > 0 {
		c.consumed.notify() // a revoke waits for the caller
	}
	c.mu.Unlock()
	if due {
		c.wakeCommitter()
	}
}

// wakeCommitter tells the committer that the count trigger fired.
func (c *MultiConsumer) wakeCommitter() {
	if c.commits == nil {
		return // no group: nothing is committed
	}
	select {
	case c.commits.now <- struct{}{}:
	default: // already woken
	}
}

// committer is the one goroutine that sends commits (OffsetCommit
// requests): every commit, whoever wants it (Commit, Close, a revoke,
// Process as it stops, the auto-commit triggers), is a request to it,
// served one at a time, in order. So no commit overtakes another on
// another connection (a late one would store older offsets over newer
// ones), and each is built and sent under one lease (see sendCommit).
type committer struct {
	reqs    chan commitReq
	now     chan struct{} // cap 1: the count trigger fired
	stopped chan struct{} // closed when the goroutine has returned
	errs    atomic.Int64  // commits that failed
}

// commitReq asks the committer for a commit of parts (nil: every
// partition), bounded by ctx; the result goes to done.
type commitReq struct {
	ctx   context.Context
	parts []int
	done  chan error // cap 1
}

func newCommitter() *committer {
	return &committer{reqs: make(chan commitReq), now: make(chan struct{}, 1), stopped: make(chan struct{})}
}

// commit has the committer store the consumed, uncommitted offsets of
// partitions (all when none is given), and returns its result. A commit
// made after the committer stopped (Close) returns ErrClosed.
func (c *MultiConsumer) commit(ctx context.Context, partitions ...int) error {
	if c.commits == nil {
		return ErrNoGroup
	}
	req := commitReq{ctx: ctx, parts: partitions, done: make(chan error, 1)}
	select {
	case c.commits.reqs <- req:
	case <-c.commits.stopped:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-req.done // the committer's attempts end with ctx
}

// sendCommit stores the consumed, uncommitted offsets of partitions (all when
// none is given); only the committer calls it. It reads them together with
// the lease they are committed under, and each attempt (a dropped
// connection is retried) goes out under that lease or not at all: once the
// lease has ended (a rebalance, or the member was lost) the commit is
// dropped with an error that wraps kafka.IllegalGeneration, and the
// partitions revoked meanwhile are left out of it (see sendable).
func (c *MultiConsumer) sendCommit(ctx context.Context, partitions ...int) error {
	c.mu.Lock()
	l := c.grp.lease
	offsets, meta := c.book.uncommittedMeta(partitions...)
	if len(offsets) == 0 {
		c.book.committed(nil, time.Now())
		c.mu.Unlock()
		return nil
	}
	c.mu.Unlock()

	var ok map[int]int64
	var dropped error // partitions left out: revoked before the commit went out
	rctx, cancel := c.kc.withTimeout(ctx)
	err := retry(rctx, c.kc.retryConns.Load(), func() (err error) {
		var send map[int]int64
		var left []error
		send, left, err = c.sendable(l, offsets)
		dropped = errors.Join(left...)
		if err != nil {
			return permanent{err}
		}
		if len(send) == 0 {
			return nil
		}
		ok, err = c.kc.offsetCommit(rctx, l, send, meta)
		if errors.Is(err, kafka.OffsetMetadataTooLarge) && len(meta) > 0 {
			// The broker's offset.metadata.max.bytes is below Kafka's
			// default: never hold the offsets back for the metadata.
			// Process's completed offsets above them are no longer
			// kept (handled again after a restart).
			c.log.Warn("the broker refuses the commit metadata; committing offsets without it from now on", "err", err)
			c.mu.Lock()
			c.book.noMetadata = true
			c.mu.Unlock()
			meta = nil
			ok, err = c.kc.offsetCommit(rctx, l, send, nil)
		}
		return err
	})
	cancel()
	err = errors.Join(err, dropped)
	c.mu.Lock()
	if len(ok) > 0 {
		c.book.committedMeta(ok, meta, time.Now())
	}
	c.mu.Unlock()
	if err != nil {
		c.commits.errs.Add(1)
	}
	switch {
	case err != nil && c.cfg.JoinGroup && stale(err):
		// A rebalance under way, or the lease ended: expected in group
		// mode, and what the member still owns is committed again in
		// its next generation.
		c.log.Info("commit refused for the generation it was built under", "offsets", offsets, "generation", l.generation, "err", err)
		return err
	case err != nil:
		c.log.Error("commit failed", "offsets", offsets, "generation", l.generation, "err", err)
		return err
	}
	c.log.Debug("committed", "offsets", offsets)
	return nil
}

// sendable returns the offsets that a commit built under l may send now: an
// error if l is no longer the member's lease, and otherwise the offsets of
// the partitions the consumer still owns, with an error naming each one
// that it no longer does.
func (c *MultiConsumer) sendable(l lease, offsets map[int]int64) (send map[int]int64, dropped []error, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cur := c.grp.lease; cur != l || c.cfg.JoinGroup && l.generation < 0 {
		return nil, nil, fmt.Errorf("multiconsumer: commit offsets of group %q under generation %d (now %d): %w",
			c.cfg.Group, l.generation, cur.generation, errLeaseEnded)
	}
	send = make(map[int]int64, len(offsets))
	for p, off := range offsets {
		if !c.book.has(p) {
			dropped = append(dropped, &PartitionError{Topic: c.cfg.Topic, Partition: p,
				Err: fmt.Errorf("commit offset %d: revoked before the commit went out: %w", off, errLeaseEnded)})
			continue
		}
		send[p] = off
	}
	return send, dropped, nil
}

// runCommitter is the committer's goroutine (see committer). It serves
// commit requests, and, with auto-commit, commits when the count trigger
// wakes it or the time trigger fires. A failed auto-commit is retried
// after a backoff (1s doubling up to MaxBackoff), whatever the triggers
// say; the retry commits the newest consumed offsets, so nothing is
// dropped. It ends when ctx is done, after finishing a commit in flight
// (bounded by c.commitLife, which Close ends at its deadline). A commit in
// flight is not cancelled at once: its request is on the wire.
func (c *MultiConsumer) runCommitter(ctx context.Context) {
	defer close(c.commits.stopped)
	auto := c.autoCommit()
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var backoff time.Duration  // > 0: the last auto-commit failed
	var retryAt time.Time      // and is retried then, not before
	var newGen <-chan struct{} // group mode: a refused commit is retried in the next generation
	for {
		now := time.Now()
		wait := time.Duration(-1)
		if auto {
			c.mu.Lock()
			wait = c.book.nextDue(now)
			c.mu.Unlock()
			if backoff > 0 {
				wait = max(0, retryAt.Sub(now))
			}
		}
		var fire <-chan time.Time
		if wait >= 0 {
			timer.Reset(wait)
			fire = timer.C
		}
		gen := false
		select {
		case <-ctx.Done():
			return
		case req := <-c.commits.reqs:
			req.done <- c.sendCommit(req.ctx, req.parts...)
			continue
		case <-c.commits.now:
		case <-fire:
		case <-newGen:
			gen, newGen = true, nil
		}
		if !auto {
			continue
		}
		now = time.Now()
		if backoff > 0 && now.Before(retryAt) && !gen {
			continue // a trigger during the backoff: the retry will cover it
		}
		c.mu.Lock()
		due := c.book.poll(now)
		c.mu.Unlock()
		if !due && backoff == 0 {
			continue
		}
		changed := c.generations.wait()
		if err := c.sendCommit(c.commitLife); err != nil {
			backoff = nextBackoff(backoff, c.cfg.MaxBackoff)
			retryAt = time.Now().Add(backoff)
			if c.cfg.JoinGroup && stale(err) {
				// Refused during a rebalance: what the member still owns
				// is committed as soon as it is in the new generation,
				// not a backoff later (what it delivers meanwhile would
				// be delivered again if it died).
				newGen = changed
			}
		} else {
			backoff, newGen = 0, nil
		}
	}
}

// commitErrors returns the count of commits that failed.
func (c *MultiConsumer) commitErrors() int64 {
	if c.commits == nil {
		return 0
	}
	return c.commits.errs.Load()
}

// nextBackoff returns the wait after prev (0: the first failure): 1s,
// doubling, capped at maxBackoff.
func nextBackoff(prev, maxBackoff time.Duration) time.Duration {
	if prev == 0 {
		return min(initialBackoff, maxBackoff)
	}
	return min(2*prev, maxBackoff)
}
