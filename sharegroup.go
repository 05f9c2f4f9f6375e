package multiconsumer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer/internal/wire"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file is a share-group member's membership (Config.ShareGroup): the
// source of its partitions, through ShareGroupHeartbeat (KIP-932). The
// broker assigns partitions to share-group members so that several members
// may fetch from one partition; it hands out records under acquisition
// locks (sharefetch.go, acks.go).

// shareMember is the source of a share-group member: it heartbeats, and
// hands the partitions the group assigns to the pipeline.
type shareMember struct {
	group, topic string
	topicID      [16]byte // set once by start
	memberID     string   // set once: made by the member (KIP-932)
	log          *slog.Logger
	kc           *brokers
	cl           *wire.Client
	apply        func(ctx context.Context, a assignment) error
	stop         func(err error) // the member cannot go on

	// Owned by the goroutine (start, then run); read by leave after it
	// ended.
	epoch    int32
	owned    []int
	interval time.Duration

	counts    memberStats
	lastEpoch atomic.Int32 // the epoch of the last answer, for Stats
}

func newShareMember(cfg *Config, log *slog.Logger, kc *brokers, cl *wire.Client, apply func(context.Context, assignment) error, stop func(error)) *shareMember {
	var id [16]byte
	_, _ = rand.Read(id[:])
	m := &shareMember{group: cfg.Group, topic: cfg.Topic, memberID: base64.RawURLEncoding.EncodeToString(id[:]),
		log: log, kc: kc, cl: cl, apply: apply, stop: stop, interval: time.Second}
	m.lastEpoch.Store(-1) // before the first join
	return m
}

// setup reads the topic's id and, for a share group that does not exist
// yet, sets its share.auto.offset.reset from StartOffset (earliest or
// latest) before the first member joins. It returns a clear error for a
// broker without share groups.
func (m *shareMember) setup(ctx context.Context, reset string) error {
	ctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	vs, err := m.cl.Versions(ctx)
	if err != nil {
		return err
	}
	for _, k := range []kmsg.Key{kmsg.ShareGroupHeartbeat, kmsg.ShareFetch, kmsg.ShareAcknowledge} {
		if _, ok := vs[k.Int16()]; !ok {
			return fmt.Errorf("multiconsumer: share group %q: the broker does not offer %s (API %d), which share groups need (Kafka 4.2+, with share groups enabled: share.version=1); it offers %d APIs up to key %d",
				m.group, k.Name(), k.Int16(), len(vs), maxKey(vs))
		}
	}
	if err := retry(ctx, true, func() (err error) { m.topicID, err = topicIDOf(ctx, m.kc, m.topic); return err }); err != nil {
		return err
	}
	return retry(ctx, true, func() error { return m.initGroupConfig(ctx, reset) })
}

func maxKey(vs map[int16]wire.VersionRange) int16 {
	var k int16
	for key := range vs {
		k = max(k, key)
	}
	return k
}

// initGroupConfig sets share.auto.offset.reset of a share group that does
// not exist yet (ShareGroupDescribe says GROUP_ID_NOT_FOUND).
func (m *shareMember) initGroupConfig(ctx context.Context, reset string) error {
	rctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	dreq := kmsg.NewPtrShareGroupDescribeRequest()
	dreq.GroupIDs = []string{m.group}
	kres, err := m.cl.DoGroup(rctx, m.group, dreq)
	if err != nil {
		return fmt.Errorf("multiconsumer: share group %q: describe: %w", m.group, err)
	}
	groups := kres.(*kmsg.ShareGroupDescribeResponse).Groups
	if len(groups) != 1 {
		return fmt.Errorf("multiconsumer: share group %q: describe: %d groups in the answer", m.group, len(groups))
	}
	switch err := wire.ErrorForCode(groups[0].ErrorCode); {
	case errors.Is(err, kerr.GroupIDNotFound):
	case err != nil:
		return fmt.Errorf("multiconsumer: share group %q: describe: %w", m.group, err)
	default:
		if groups[0].GroupState != "Dead" {
			return nil // it exists: its own setting stays
		}
	}
	areq := kmsg.NewPtrIncrementalAlterConfigsRequest()
	r := kmsg.NewIncrementalAlterConfigsRequestResource()
	r.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	r.ResourceName = m.group
	c := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	c.Name = "share.auto.offset.reset"
	c.Op = kmsg.IncrementalAlterConfigOpSet
	c.Value = &reset
	r.Configs = append(r.Configs, c)
	areq.Resources = append(areq.Resources, r)
	kres, err = m.cl.Do(rctx, areq)
	if err != nil {
		return fmt.Errorf("multiconsumer: share group %q: set share.auto.offset.reset=%s: %w", m.group, reset, err)
	}
	for _, rr := range kres.(*kmsg.IncrementalAlterConfigsResponse).Resources {
		if err := wire.ErrorForCode(rr.ErrorCode); err != nil {
			return fmt.Errorf("multiconsumer: share group %q: set share.auto.offset.reset=%s: %w", m.group, reset, err)
		}
	}
	m.log.Info("share: new group", "share.auto.offset.reset", reset)
	return nil
}

// start joins the group, and applies the first assignment if it comes
// with the answer.
func (m *shareMember) start(ctx context.Context, _ []int) error {
	ctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	return retry(ctx, true, func() error { return m.heartbeat(ctx) })
}

// run heartbeats until ctx ends.
func (m *shareMember) run(ctx context.Context) {
	backoff := time.Duration(0)
	for {
		wait := m.interval
		if backoff > 0 {
			wait = backoff
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		err := m.heartbeat(ctx)
		switch {
		case err == nil:
			backoff = 0
		case ctx.Err() != nil:
			return
		case final(err):
			m.stop(err)
			return
		default:
			backoff = nextBackoff(backoff, 5*time.Second)
			m.log.Warn("share: heartbeat failed", "err", err, "backoff", backoff)
		}
	}
}

// final reports whether a heartbeat error stops the member for good.
func final(err error) bool {
	return errors.Is(err, kerr.GroupAuthorizationFailed) || errors.Is(err, kerr.TopicAuthorizationFailed) ||
		errors.Is(err, kerr.InvalidRequest) || errors.Is(err, kerr.GroupIDNotFound) ||
		errors.Is(err, kerr.InconsistentGroupProtocol) || errors.Is(err, kerr.UnsupportedVersion)
}

// heartbeat sends one ShareGroupHeartbeat, and applies the assignment it
// brings.
func (m *shareMember) heartbeat(ctx context.Context) error {
	req := kmsg.NewPtrShareGroupHeartbeatRequest()
	req.GroupID, req.MemberID, req.MemberEpoch = m.group, m.memberID, m.epoch
	if m.epoch == 0 {
		req.SubscribedTopicNames = []string{m.topic}
	}
	rctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	kres, err := m.cl.DoGroup(rctx, m.group, req)
	if err == nil {
		res := kres.(*kmsg.ShareGroupHeartbeatResponse)
		err = wire.ErrorForCode(res.ErrorCode)
		if err == nil {
			m.answered(ctx, res)
			return nil
		}
		if errors.Is(err, kerr.UnknownMemberID) || errors.Is(err, kerr.FencedMemberEpoch) {
			// Out of the group: join again. Its records stay its own
			// until their locks run out; its assignment comes anew.
			m.log.Warn("share: out of the group, joining again", "err", err)
			m.epoch = 0
		}
	}
	err = fmt.Errorf("multiconsumer: share group %q: heartbeat: %w", m.group, err)
	m.counts.joined(err)
	return err
}

// answered takes a heartbeat's answer: the epoch, the interval, and the
// assignment when it changed.
func (m *shareMember) answered(ctx context.Context, res *kmsg.ShareGroupHeartbeatResponse) {
	m.epoch = res.MemberEpoch
	if res.HeartbeatIntervalMillis > 0 {
		m.interval = time.Duration(res.HeartbeatIntervalMillis) * time.Millisecond
	}
	m.lastEpoch.Store(m.epoch)
	m.counts.joined(nil)
	if res.Assignment == nil {
		return
	}
	owned := assignedPartitions(m.topicID, res.Assignment.TopicPartitions)
	if slices.Equal(owned, m.owned) {
		return
	}
	a := assignment{lease: lease{memberID: m.memberID, generation: m.epoch}, owned: owned,
		added: without(owned, m.owned), revoked: without(m.owned, owned)}
	m.owned = owned
	m.log.Info("share: assigned", "epoch", m.epoch, "partitions", owned)
	_ = m.apply(ctx, a)
	m.counts.rebalanced(0) // the broker assigns at once: nothing to drain
}

// grew does nothing: the group's coordinator assigns the partitions added
// to the topic.
func (m *shareMember) grew(context.Context, []int) error { return nil }

// leave leaves the group (epoch -1), after Close released the member's
// records.
func (m *shareMember) leave(ctx context.Context) error {
	if m.epoch <= 0 {
		return nil
	}
	req := kmsg.NewPtrShareGroupHeartbeatRequest()
	req.GroupID, req.MemberID, req.MemberEpoch = m.group, m.memberID, -1
	rctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	kres, err := m.cl.DoGroup(rctx, m.group, req)
	if err == nil {
		err = wire.ErrorForCode(kres.(*kmsg.ShareGroupHeartbeatResponse).ErrorCode)
	}
	if err != nil && !errors.Is(err, kerr.UnknownMemberID) {
		return fmt.Errorf("multiconsumer: leave share group %q: %w", m.group, err)
	}
	return nil
}

func (m *shareMember) stats(s *Stats) {
	s.MemberID, s.Generation = m.memberID, m.lastEpoch.Load()
	m.counts.fill(s, alwaysAlive)
}
