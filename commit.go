package multiconsumer

import (
	"context"
	"errors"
	"log/slog"
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
//
// In a share group (Config.ShareGroup) Commit accepts every record of
// partitions delivered and not settled yet, and waits for the broker's
// answers (and for those of the acknowledgements made before and not sent
// yet): the records it refused come back as *AckError values, joined.
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
	ctx, leave, err := c.life.enter(ctx, c.life.commits)
	if err != nil {
		return err
	}
	defer leave()
	if a := c.led.acks; a != nil {
		return closedErr(ctx, a.await(ctx, a.commit(partitions)))
	}
	c.out.consume()
	if len(partitions) == 0 {
		parts = nil
	}
	return closedErr(ctx, c.commits.commit(ctx, parts...))
}

// committer is the one goroutine that sends commits (OffsetCommit
// requests): every commit, whoever wants it (Commit, Close, a revoke,
// Process as it stops, the auto-commit triggers), is a request to it,
// served one at a time, in order. So no commit overtakes another on
// another connection (a late one would store older offsets over newer
// ones), and each is built and sent under one lease (see sendCommit).
//
// A committer without a group (Config.Group "") commits nothing: commit
// returns ErrNoGroup, and run is not started.
type committer struct {
	group, topic string        // set once
	member       bool          // set once: a group member (JoinGroup): its commits are fenced by its lease
	auto         bool          // set once: auto-commit (the triggers)
	maxBackoff   time.Duration // set once
	led          *ledger       // set once: the offsets, and the lease they are committed under
	kc           commitSender  // set once: sends the OffsetCommit
	log          *slog.Logger  // set once
	// applied returns a channel closed when the group member next applies
	// an assignment (a new generation); set once.
	applied func() <-chan struct{}
	life    context.Context // set once: the commits' life; Close ends it at its deadline

	reqs    chan commitReq // unguarded channels
	now     chan struct{}  // cap 1: the count trigger fired
	stopped chan struct{}  // closed when the goroutine has returned
	errs    atomic.Int64   // commits that failed
}

// commitReq asks the committer for a commit of parts (nil: every
// partition), bounded by ctx; the result goes to done.
type commitReq struct {
	ctx   context.Context
	parts []int
	done  chan error // cap 1
}

// commitSender sends OffsetCommit requests for a committer: the consumer's
// brokers, or a fake in a test of the committer alone.
type commitSender interface {
	// offsetCommit stores offsets (with their metadata) under l, and
	// returns those stored.
	offsetCommit(ctx context.Context, l lease, offsets map[int]int64, meta map[int]string) (map[int]int64, error)
	// withTimeout bounds ctx by one request timeout.
	withTimeout(ctx context.Context) (context.Context, context.CancelFunc)
	// retrying reports whether a dropped connection is worth a retry.
	retrying() bool
}

func newCommitter(cfg *Config, led *ledger, kc commitSender, log *slog.Logger, applied func() <-chan struct{}, life context.Context) *committer {
	return &committer{
		group: cfg.Group, topic: cfg.Topic, member: cfg.JoinGroup, auto: cfg.autoCommit(), maxBackoff: cfg.MaxBackoff,
		led: led, kc: kc, log: log, applied: applied, life: life,
		reqs: make(chan commitReq), now: make(chan struct{}, 1), stopped: make(chan struct{}),
	}
}

// commit has the committer store the consumed, uncommitted offsets of
// partitions (all when none is given), and returns its result. A commit
// made after the committer stopped (Close) returns ErrClosed.
func (cm *committer) commit(ctx context.Context, partitions ...int) error {
	if cm.group == "" {
		return ErrNoGroup
	}
	req := commitReq{ctx: ctx, parts: partitions, done: make(chan error, 1)}
	select {
	case cm.reqs <- req:
	case <-cm.stopped:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-req.done // the committer's attempts end with ctx
}

// wake tells the committer that the count trigger fired.
func (cm *committer) wake() {
	select {
	case cm.now <- struct{}{}:
	default: // already woken, or no group: nothing is committed
	}
}

// final is Close's commit. In group mode, a commit refused because the
// group is rebalancing is made again once the member has joined the new
// generation (for the partitions it still owns), within ctx.
func (cm *committer) final(ctx context.Context) error {
	for {
		changed := cm.applied()
		err := cm.commit(ctx)
		if err == nil || !cm.member || !(errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration)) {
			return err
		}
		cm.log.Info("group: final commit waits for the rebalance under way", "err", err)
		select {
		case <-changed:
		case <-ctx.Done():
			return err
		}
	}
}

// sendCommit stores the consumed, uncommitted offsets of partitions (all when
// none is given); only the committer calls it. It reads them together with
// the lease they are committed under, and each attempt (a dropped
// connection is retried) goes out under that lease or not at all: once the
// lease has ended (a rebalance, or the member was lost) the commit is
// dropped with an error that wraps kafka.IllegalGeneration, and the
// partitions revoked meanwhile are left out of it (see sendable).
func (cm *committer) sendCommit(ctx context.Context, partitions ...int) error {
	l, offsets, meta := cm.led.toCommit(time.Now(), partitions...)
	if len(offsets) == 0 {
		return nil
	}

	var ok map[int]int64
	var dropped error // partitions left out: revoked before the commit went out
	rctx, cancel := cm.kc.withTimeout(ctx)
	err := retry(rctx, cm.kc.retrying(), func() (err error) {
		var send map[int]int64
		var left []error
		send, left, err = cm.led.sendable(l, cm.group, cm.member, offsets)
		dropped = errors.Join(left...)
		if err != nil {
			return permanent{err}
		}
		if len(send) == 0 {
			return nil
		}
		ok, err = cm.kc.offsetCommit(rctx, l, send, meta)
		if errors.Is(err, kafka.OffsetMetadataTooLarge) && len(meta) > 0 {
			// The broker's offset.metadata.max.bytes is below Kafka's
			// default: never hold the offsets back for the metadata.
			// Process's completed offsets above them are no longer
			// kept (handled again after a restart).
			cm.log.Warn("the broker refuses the commit metadata; committing offsets without it from now on", "err", err)
			cm.led.dropMetadata()
			meta = nil
			ok, err = cm.kc.offsetCommit(rctx, l, send, nil)
		}
		return err
	})
	cancel()
	err = errors.Join(err, dropped)
	cm.led.stored(ok, meta, time.Now())
	if err != nil {
		cm.errs.Add(1)
	}
	switch {
	case err != nil && cm.member && stale(err):
		// A rebalance under way, or the lease ended: expected in group
		// mode, and what the member still owns is committed again in
		// its next generation.
		cm.log.Info("commit refused for the generation it was built under", "offsets", offsets, "generation", l.generation, "err", err)
		return err
	case err != nil:
		cm.log.Error("commit failed", "offsets", offsets, "generation", l.generation, "err", err)
		return err
	}
	cm.log.Debug("committed", "offsets", offsets)
	return nil
}

// autoCommitGap is the least time between the starts of two auto-commits:
// at high rates the count trigger (AutoCommitEveryN) would fire again as
// soon as each commit returned, a request to the group coordinator and a
// write to __consumer_offsets every round trip (Process committed 650
// times a second on Apache Kafka on one machine, which took the broker
// 0.35 s of CPU in a 1.9 s drain of 8M messages). Paced, a commit covers
// every message consumed meanwhile; at rates under AutoCommitEveryN a
// gap, nothing changes. Commit, Close's commit and a revoke's are not
// paced.
const autoCommitGap = 10 * time.Millisecond

// run is the committer's goroutine (see committer). It serves
// commit requests, and, with auto-commit, commits when the count trigger
// wakes it or the time trigger fires. A failed auto-commit is retried
// after a backoff (1s doubling up to MaxBackoff), whatever the triggers
// say; the retry commits the newest consumed offsets, so nothing is
// dropped. It ends when ctx is done, after finishing a commit in flight
// (bounded by cm.life, which Close ends at its deadline). A commit in
// flight is not cancelled at once: its request is on the wire.
func (cm *committer) run(ctx context.Context) {
	defer close(cm.stopped)
	auto := cm.auto
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	var backoff time.Duration  // > 0: the last auto-commit failed
	var retryAt time.Time      // and is retried then, not before
	var newGen <-chan struct{} // group mode: a refused commit is retried in the next generation
	var paced time.Time        // no auto-commit goes out before then (autoCommitGap)
	var pending bool           // a trigger came before paced: commit then
	for {
		now := time.Now()
		wait := time.Duration(-1)
		if auto {
			wait = cm.led.nextDue(now)
			if backoff > 0 {
				wait = max(0, retryAt.Sub(now))
			} else if pending {
				if w := max(0, paced.Sub(now)); wait < 0 || w < wait {
					wait = w
				}
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
		case req := <-cm.reqs:
			req.done <- cm.sendCommit(req.ctx, req.parts...)
			continue
		case <-cm.now:
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
		if backoff == 0 && now.Before(paced) && !gen {
			pending = true // too soon after the last: it goes out at paced
			continue
		}
		pending = false
		due := cm.led.poll(now)
		if !due && backoff == 0 {
			continue
		}
		paced = now.Add(autoCommitGap)
		changed := cm.applied()
		if err := cm.sendCommit(cm.life); err != nil {
			backoff = nextBackoff(backoff, cm.maxBackoff)
			retryAt = time.Now().Add(backoff)
			if cm.member && stale(err) {
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
