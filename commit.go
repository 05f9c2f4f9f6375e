package multiconsumer

import (
	"context"
	"errors"
	"fmt"
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
	select {
	case c.commitNow <- struct{}{}:
	default: // already woken, or no committer (it is never read then)
	}
}

// commit stores the consumed, uncommitted offsets of partitions (all when
// none is given). It reads them together with the lease they are committed
// under, and each attempt (a dropped connection is retried) goes out under
// that lease or not at all: once the lease has ended (a rebalance, or the
// member was lost) the commit is dropped with an error that wraps
// kafka.IllegalGeneration, and the partitions revoked meanwhile are left
// out of it (see sendable).
func (c *MultiConsumer) commit(ctx context.Context, partitions ...int) error {
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
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
	if err != nil {
		c.commitErrs++
	}
	c.mu.Unlock()
	if err != nil {
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
		if _, owned := c.book.parts[p]; !owned {
			dropped = append(dropped, &PartitionError{Topic: c.cfg.Topic, Partition: p,
				Err: fmt.Errorf("commit offset %d: revoked before the commit went out: %w", off, errLeaseEnded)})
			continue
		}
		send[p] = off
	}
	return send, dropped, nil
}

// runCommitter is the auto-commit goroutine: it commits when the count
// trigger wakes it or the time trigger fires. A failed commit is retried
// after a backoff (1s doubling up to MaxBackoff), whatever the triggers say;
// the retry commits the newest consumed offsets, so nothing is dropped. It
// ends when ctx is done, after finishing a commit in flight (bounded by
// c.commitLife, which Close ends at its deadline); Close then makes the
// final commit. A commit in flight is not cancelled at once: its request
// is on the wire, and a later commit could overtake it on another
// connection and be overwritten by its older offsets.
func (c *MultiConsumer) runCommitter(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var backoff time.Duration  // > 0: the last commit failed
	var retryAt time.Time      // and is retried then, not before
	var newGen <-chan struct{} // group mode: a refused commit is retried in the next generation
	for {
		now := time.Now()
		c.mu.Lock()
		wait := c.book.nextDue(now)
		c.mu.Unlock()
		if backoff > 0 {
			wait = max(0, retryAt.Sub(now))
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
		case <-c.commitNow:
		case <-fire:
		case <-newGen:
			gen, newGen = true, nil
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
		if err := c.commit(c.commitLife); err != nil {
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

// nextBackoff returns the wait after prev (0: the first failure): 1s,
// doubling, capped at maxBackoff.
func nextBackoff(prev, maxBackoff time.Duration) time.Duration {
	if prev == 0 {
		return min(initialBackoff, maxBackoff)
	}
	return min(2*prev, maxBackoff)
}
