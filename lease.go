package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// This file is the hand-over of partitions: a source (source.go, group.go)
// gives partitions and takes them back, under a lease, and handover applies
// each change to the ledger, the session and the delivery path.

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

// handover applies what a source gives and takes back (an assignment) to
// the rest of the pipeline, as one step: it sets the lease in the ledger,
// enters the added partitions where startOffset says and gives them to the
// session, and takes the revoked ones back (retire, drain, commit,
// OnRevoked, remove). It is the one function through which a partition
// comes or goes, whatever its source.
type handover struct {
	cfg  *Config      // set once: a copy, read only
	log  *slog.Logger // set once
	kc   *brokers     // set once
	meta *topicMeta   // set once: which partitions were added to the topic
	led  *ledger      // set once
	sess *session     // set once
	q    *queue       // set once
	out  *delivery    // set once: what a hand-over interrupts and waits for
	live *liveness    // set once
	life *lifecycle   // set once
	// commit asks the committer for a commit of parts; set once.
	commit func(ctx context.Context, parts ...int) error

	applied broadcast // notified when an assignment was applied

	mu    sync.Mutex // guards owned and lost
	owned []int      // what the source gave, sorted
	lost  int64      // partitions lost without a commit
}

// apply applies a source's change (see assignment). Only a strict change
// (New's) returns an error: the others retry until ctx ends.
func (h *handover) apply(ctx context.Context, a assignment) error {
	if h.cfg.ShareGroup {
		return h.applyShare(a)
	}
	h.led.setLease(a.lease)
	h.live.news.notify() // what waits for the coordinator looks again
	if len(a.lost) > 0 {
		h.revoke(ctx, a.lost, true)
	}
	if len(a.revoked) > 0 {
		h.revoke(ctx, a.revoked, false)
	}
	h.mu.Lock()
	h.owned = slices.Clone(a.owned)
	h.mu.Unlock()
	h.applied.notify()
	if len(a.added) > 0 {
		return h.grant(ctx, a.added, a.strict)
	}
	return nil
}

// applyShare applies a share group's change: the member fetches from the
// partitions it is assigned, from where the group is (the broker keeps the
// share group's place); what it acquired of a partition that goes stays
// its own to settle, so nothing is drained or retired.
func (h *handover) applyShare(a assignment) error {
	h.led.setLease(a.lease)
	for _, p := range a.added {
		if _, ok := h.led.epochOf(p); !ok {
			h.led.start(p, 0, noOffset, "")
		}
	}
	h.mu.Lock()
	h.owned = slices.Clone(a.owned)
	h.mu.Unlock()
	h.applied.notify()
	h.sess.set(a.owned)
	return nil
}

// assignment returns what the source gave, sorted.
func (h *handover) assignment() []int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.owned)
}

// grant starts consuming parts, where startOffset says. OnAssigned runs
// before their first fetch. It retries until it has their offsets or ctx
// ends, unless strict: then it returns the first error.
func (h *handover) grant(ctx context.Context, parts []int, strict bool) error {
	if h.life.isClosed() || h.life.err() != nil {
		return nil // a member leaves: the others will take them
	}
	var committed map[int]int64
	var meta map[int]string
	var b map[int]bounds
	backoff := time.Duration(0)
	for {
		var err error
		committed, meta, err = h.kc.committedOffsets(ctx, parts)
		if err == nil {
			b, err = h.kc.logBounds(ctx, parts)
		}
		if err == nil {
			break
		}
		if strict {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
		backoff = nextBackoff(backoff, min(h.cfg.MaxBackoff, 5*time.Second))
		h.log.Warn("group: cannot start assigned partitions yet", "partitions", parts, "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
	}
	for _, p := range parts {
		start, from := h.startOffset(p, committed, b[p])
		cm, ok := committed[p]
		if !ok {
			cm = noOffset
		}
		h.led.start(p, start, cm, meta[p])
		h.log.Info("partition start", "partition", p, "offset", start, "from", from)
	}
	if h.cfg.OnAssigned != nil && h.cfg.JoinGroup {
		h.cfg.OnAssigned(ctx, slices.Clone(parts))
	}
	h.sess.set(h.led.partitions())
	return nil
}

// startOffset is the one rule for where partition p starts, on every path
// (New, a partition the group assigns, a partition added to the topic): at
// the group's committed offset when the log still has it; else, for a
// partition added to the topic since the consumer started, at its first
// offset, whatever StartOffset says, since everything in it is new and
// nothing produced to it may be missed; else at StartOffset. It returns
// the offset and where it came from, for the log.
func (h *handover) startOffset(p int, committed map[int]int64, b bounds) (int64, string) {
	if off, ok := committed[p]; ok {
		if off >= b.first && off <= b.last {
			return off, "committed"
		}
		h.log.Warn("committed offset outside the log, resetting", "partition", p,
			"committed", off, "first", b.first, "last", b.last)
	}
	if h.meta.added(p) {
		return b.first, "first (added to the topic)"
	}
	if h.cfg.StartOffset == kafka.LastOffset {
		return b.last, "last"
	}
	return b.first, "first"
}

// revoke gives partitions up: it stops fetching them, drops their queued
// messages, and, unless lost, waits (up to RebalanceTimeout) for the caller
// to come back for what it holds of them and commits what it consumed.
// Then OnRevoked runs; after it, nothing of them is delivered.
func (h *handover) revoke(ctx context.Context, parts []int, lost bool) {
	h.led.retire(parts) // nothing fetched so far is delivered from now on
	h.out.purge(parts)  // Process's waiting messages of them are stale
	h.out.moved()       // an Iter send in flight gives its message back, or hands it over
	// An Iter send that began before retire either hands its message over
	// now or gives it back: wait for it to finish.
	h.out.awaitSends()
	h.sess.set(without(h.led.partitions(), slices.Sorted(slices.Values(parts))))
	h.q.drop(func(b *batch) bool { return slices.Contains(parts, b.partition) })

	if !lost {
		h.awaitConsumed(ctx, parts)
		if h.cfg.autoCommit() { // with ManualCommit, OnRevoked may call Commit
			if err := h.commit(h.life.commits, parts...); err != nil {
				h.log.Warn("group: commit of revoked partitions failed", "partitions", parts, "err", err)
			}
		}
	} else {
		h.mu.Lock()
		h.lost += int64(len(parts))
		h.mu.Unlock()
	}
	if h.cfg.OnRevoked != nil && h.cfg.JoinGroup {
		h.cfg.OnRevoked(context.WithValue(ctx, lostKey{}, lost), slices.Clone(parts))
	}
	h.led.remove(parts)
}

// awaitConsumed waits until the caller has come back for every delivered
// message of parts, or RebalanceTimeout, or ctx.
func (h *handover) awaitConsumed(ctx context.Context, parts []int) {
	timer := time.NewTimer(h.cfg.RebalanceTimeout)
	defer timer.Stop()
	for {
		if h.life.isClosed() {
			return // the caller will not come back
		}
		held, wait := h.led.awaitHeld(parts)
		if !held {
			return
		}
		done := false
		select {
		case <-wait:
		case <-timer.C:
			h.log.Warn("group: the caller did not come back for messages of revoked partitions; they go uncommitted", "partitions", parts)
			done = true
		case <-ctx.Done():
			done = true
		}
		h.led.doneAwaiting()
		if done {
			return
		}
	}
}

// assignment is one change of what a source gives the consumer, applied
// by handover.apply as one step, in this order: the lease first (commits
// are built under it from now on), then the lost partitions are given up
// without a commit, the revoked ones after their caller's holdings drained
// and were committed, and the added ones start.
type assignment struct {
	lease          lease
	owned          []int // what the source gives after the change, sorted
	added, revoked []int
	lost           []int
	strict         bool // New's: an error reading where the added partitions start is returned, not retried
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

// alwaysAlive is the liveness of a member whose session has no such view
// (a share-group member: its records' locks bound what it holds).
var alwaysAlive = newLiveness(0)

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

func (h *handover) stats(s *Stats) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s.LostPartitions = h.lost
}
