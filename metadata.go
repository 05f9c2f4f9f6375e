package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	metadataAPI "github.com/segmentio/kafka-go/protocol/metadata"
)

// This file keeps the topic's metadata current: partition leaders (after a
// leader moves), partitions added to the topic, and the topic's deletion.
// One goroutine, the refresher, owns it. It refreshes every MetadataMaxAge
// and whenever a worker asks, after a fetch error.
//
// The leaders come from kafka-go's transport, which routes every fetch by
// its own cached copy of the metadata: reading a second copy beside it would
// group partitions by leaders that the transport does not route by
// ("mismatching leaders"). So a refresh makes the transport refresh its
// cache, then reads the cache.

// goneConfirmAfter is how long the topic must be missing from every refresh
// (one a second), before the consumer reports it deleted: a broker that has
// just restarted can answer from metadata it has not caught up on yet, for
// a moment. Kafka calls UNKNOWN_TOPIC_OR_PARTITION retriable for that
// reason; a deleted topic stays missing.
const goneConfirmAfter = 5 * time.Second

// refreshTopic is a topic name that Kafka can never create (' ' and ':' are
// not legal in topic names). kafka-go v0.4 has no call that refreshes its
// transport's metadata cache; a metadata request that allows creating a
// topic missing from the cache is the one request that makes it refresh
// (and wait for the refresh). The topic is never created: the broker answers
// INVALID_TOPIC_EXCEPTION, or UNKNOWN_TOPIC_OR_PARTITION when creation is
// off.
const refreshTopic = "multiconsumer: refresh metadata"

// refreshTransport makes the transport reread the cluster's metadata, and
// returns once it has.
func (b *brokers) refreshTransport(ctx context.Context) error {
	_, err := b.transport.RoundTrip(ctx, b.client.Addr, &metadataAPI.Request{
		TopicNames:             []string{refreshTopic},
		AllowAutoTopicCreation: true,
	})
	return err
}

// topicMeta is the topic's metadata as the consumer knows it, kept current
// by its goroutine, the refresher (run). Its state has its own lock; the
// fetchers read the leaders through it, and ask it for a refresh after a
// fetch error. What a refresh finds reaches the rest of the consumer
// through the two functions it was made with: grew (the topic has more
// partitions than before: all of them, sorted) and gone (the topic was
// deleted).
type topicMeta struct {
	kc      *brokers
	log     *slog.Logger
	every   time.Duration // MetadataMaxAge
	grew    func(ctx context.Context, all []int) error
	gone    func(err error)
	started int // set once by set: the partitions the topic had at New; those above were added since

	now chan struct{} // cap 1: asks the refresher for a refresh

	mu           sync.Mutex  // guards the fields below
	leaders      map[int]int // partition -> leader broker id, as the transport routes
	count        int         // the topic's partitions at the last read
	missingSince time.Time   // the topic was missing from the last refresh
	refreshed    broadcast   // wakes, when a refresh ends, those that waited before it began
}

func newTopicMeta(kc *brokers, log *slog.Logger, every time.Duration) *topicMeta {
	return &topicMeta{kc: kc, log: log, every: every, now: make(chan struct{}, 1)}
}

// set records the metadata New read (all: the partitions, sorted), before
// the refresher runs.
func (tm *topicMeta) set(all []int, leaders map[int]int) {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	tm.started, tm.count, tm.leaders = len(all), len(all), leaders
}

// added reports whether partition p was added to the topic after New.
func (tm *topicMeta) added(p int) bool { return p >= tm.started }

// leaderMap returns the partitions' leaders (partition -> broker id) as
// the transport routes them now. The map is never changed: a refresh
// replaces it.
func (tm *topicMeta) leaderMap() map[int]int {
	tm.mu.Lock()
	defer tm.mu.Unlock()
	return tm.leaders
}

// request asks the refresher for a refresh and returns a channel closed
// once a refresh that started after the request has finished.
func (tm *topicMeta) request() <-chan struct{} {
	done := tm.refreshed.wait()
	select {
	case tm.now <- struct{}{}:
	default: // already asked
	}
	return done
}

// await asks for a refresh and waits for it, or for ctx.
func (tm *topicMeta) await(ctx context.Context) {
	select {
	case <-tm.request():
	case <-ctx.Done():
	}
}

// run refreshes the metadata every MetadataMaxAge and when asked, until ctx
// ends.
func (tm *topicMeta) run(ctx context.Context) {
	timer := time.NewTimer(tm.every)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-tm.now:
		}
		done := tm.refreshed.cut()
		next := tm.refresh(ctx)
		done()
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		timer.Reset(next)
	}
}

// refresh rereads the topic's metadata and applies it: new leaders, new
// partitions, or the topic's deletion. It returns when the next periodic
// refresh is due.
func (tm *topicMeta) refresh(ctx context.Context) time.Duration {
	rctx, cancel := tm.kc.withTimeout(ctx)
	defer cancel()
	if err := tm.kc.refreshTransport(rctx); err != nil {
		if ctx.Err() == nil {
			tm.log.Warn("metadata refresh failed", "err", err)
		}
		return min(initialBackoff, tm.every)
	}
	all, leaders, err := tm.kc.topicMetadataOnce(rctx)
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		return tm.missing()
	}
	if err != nil {
		tm.log.Warn("metadata refresh failed", "err", err)
		return min(initialBackoff, tm.every)
	}
	tm.mu.Lock()
	grew := len(all) > tm.count
	tm.count = len(all)
	tm.leaders = leaders
	tm.missingSince = time.Time{}
	tm.mu.Unlock()
	if grew {
		if err := tm.grew(rctx, all); err != nil {
			tm.log.Warn("new partitions: cannot start them yet", "err", err)
			tm.mu.Lock()
			tm.count = 0 // they are new again at the next refresh
			tm.mu.Unlock()
			return initialBackoff
		}
	}
	return tm.every
}

// missing handles a refresh that did not find the topic: missing from
// refreshes for goneConfirmAfter, the topic is deleted for good, and gone
// says so. It returns when to refresh next.
func (tm *topicMeta) missing() time.Duration {
	tm.mu.Lock()
	if tm.missingSince.IsZero() {
		tm.missingSince = time.Now()
		tm.log.Warn("topic missing from the metadata, checking again", "for", goneConfirmAfter)
	}
	wait := goneConfirmAfter - time.Since(tm.missingSince)
	tm.mu.Unlock()
	if wait > 0 {
		return min(wait, initialBackoff) // missing from every refresh until then
	}
	tm.gone(fmt.Errorf("%w: %q (%w)", ErrTopicDeleted, tm.kc.topic, kafka.UnknownTopicOrPartition))
	return tm.every
}

// sortedCopy returns a sorted copy of ps.
func sortedCopy(ps []int) []int { return slices.Sorted(slices.Values(ps)) }
