package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
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

// requestRefresh asks the refresher for a refresh and returns a channel
// closed once a refresh that started after the request has finished.
func (c *MultiConsumer) requestRefresh() <-chan struct{} {
	c.mu.Lock()
	done := c.refreshed
	c.mu.Unlock()
	select {
	case c.refreshNow <- struct{}{}:
	default: // already asked
	}
	return done
}

// awaitRefresh asks for a refresh and waits for it, or for ctx.
func (c *MultiConsumer) awaitRefresh(ctx context.Context) {
	select {
	case <-c.requestRefresh():
	case <-ctx.Done():
	}
}

// runRefresher refreshes the metadata every MetadataMaxAge and when asked,
// until ctx ends.
func (c *MultiConsumer) runRefresher(ctx context.Context) {
	timer := time.NewTimer(c.cfg.MetadataMaxAge)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		case <-c.refreshNow:
		}
		c.mu.Lock()
		done := c.refreshed
		c.refreshed = make(chan struct{})
		c.mu.Unlock()
		next := c.refresh(ctx)
		close(done)
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
func (c *MultiConsumer) refresh(ctx context.Context) time.Duration {
	rctx, cancel := c.kc.withTimeout(ctx)
	defer cancel()
	if err := c.kc.refreshTransport(rctx); err != nil {
		if ctx.Err() == nil {
			c.log.Warn("metadata refresh failed", "err", err)
		}
		return min(initialBackoff, c.cfg.MetadataMaxAge)
	}
	all, leaders, err := c.kc.topicMetadataOnce(rctx)
	if errors.Is(err, kafka.UnknownTopicOrPartition) {
		return c.topicMissing(ctx)
	}
	if err != nil {
		c.log.Warn("metadata refresh failed", "err", err)
		return min(initialBackoff, c.cfg.MetadataMaxAge)
	}
	c.mu.Lock()
	grew := len(all) > c.partitionCount
	c.partitionCount = len(all)
	c.leaders = leaders
	c.missingSince = time.Time{}
	c.mu.Unlock()
	if c.cfg.JoinGroup {
		if grew {
			// The group assigns partitions: make it rebalance, so that
			// its leader sees the new ones.
			select {
			case c.rejoin <- struct{}{}:
			default:
			}
		}
		return c.cfg.MetadataMaxAge
	}
	c.mu.Lock()
	var added []int
	if c.cfg.Partitions == nil {
		for _, p := range all {
			if _, ok := c.book.parts[p]; !ok {
				added = append(added, p)
			}
		}
	}
	c.mu.Unlock()
	if len(added) > 0 {
		if err := c.addPartitions(rctx, added); err != nil {
			c.log.Warn("new partitions: cannot start them yet", "partitions", added, "err", err)
			return initialBackoff
		}
	}
	return c.cfg.MetadataMaxAge
}

// topicMissing handles a refresh that did not find the topic: missing from
// refreshes for goneConfirmAfter, the topic is deleted for good: the
// workers stop and deliveries report it. It returns when to refresh next.
func (c *MultiConsumer) topicMissing(ctx context.Context) time.Duration {
	c.mu.Lock()
	if c.missingSince.IsZero() {
		c.missingSince = time.Now()
		c.log.Warn("topic missing from the metadata, checking again", "for", goneConfirmAfter)
	}
	wait := goneConfirmAfter - time.Since(c.missingSince)
	c.mu.Unlock()
	if wait > 0 {
		return min(wait, initialBackoff) // missing from every refresh until then
	}
	err := fmt.Errorf("%w: %q (%w)", ErrTopicDeleted, c.cfg.Topic, kafka.UnknownTopicOrPartition)
	c.mu.Lock()
	if c.fatal == nil {
		c.fatal = err
		c.log.Error("topic deleted, stopping", "err", err)
	}
	c.mu.Unlock()
	c.q.signal() // deliveries waiting for messages see it
	c.stopWorkers()
	return c.cfg.MetadataMaxAge
}

// addPartitions starts consuming partitions added to the topic while the
// consumer runs, where startOffset says: at the group's committed offset
// when it has one, else at the partition's first offset.
func (c *MultiConsumer) addPartitions(ctx context.Context, added []int) error {
	committed, meta, err := c.kc.committedOffsets(ctx, added)
	if err != nil {
		return err
	}
	b, err := c.kc.logBounds(ctx, added)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed || c.fatal != nil {
		c.mu.Unlock()
		return nil
	}
	for _, p := range added {
		start, _ := c.startLocked(p, committed, meta, b[p])
		c.added = append(c.added, p)
		c.log.Info("partition added to the topic, consuming it", "partition", p, "offset", start)
	}
	parts := c.book.partitions()
	c.mu.Unlock()
	c.assign(parts)
	return nil
}

// Err returns the error that stopped the consumer for good, such as a
// deleted topic (ErrTopicDeleted) or a group setting the broker refuses
// (*GroupSettingError), or nil. GetMessages returns it too, once
// the queued messages are delivered; Iter's channel closes.
func (c *MultiConsumer) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.fatal
}

// sortedCopy returns a sorted copy of ps.
func sortedCopy(ps []int) []int { return slices.Sorted(slices.Values(ps)) }
