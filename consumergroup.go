package multiconsumer

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/multiconsumer/multiconsumer/internal/wire"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file is group mode under KIP-848's consumer protocol
// (Config.GroupProtocol "consumer", Kafka 4.0+): the member sends
// ConsumerGroupHeartbeat (API 68) and the broker computes the assignment,
// moving partitions one member at a time. kafka-go has no such request:
// it goes through internal/wire, on the consumer's own transport. The
// member hands its changes to the pipeline as the classic member does
// (assignment values, through handover.apply), and its commits carry its
// member epoch (OffsetCommit v9+).

// consumerMember is the source of a member speaking the consumer protocol.
type consumerMember struct {
	cfg  Config // a copy, defaults filled in
	log  *slog.Logger
	kc   *brokers
	live *liveness
	host groupHost

	memberID string // made by the member (ConsumerGroupHeartbeat v1+)

	// Owned by the goroutine (start, then run); read by leave after it
	// ended.
	topicID  [16]byte
	epoch    int32
	owned    []int // sorted: what the member reports it owns (reconciled)
	target   []int // sorted: the broker's last assignment
	applied  int32 // the epoch of the last lease applied
	interval time.Duration
	// applying is closed when the reconciliation in flight ends; nil when
	// none runs. A reconciliation drains and commits what it revokes
	// (up to RebalanceTimeout): it runs in a goroutine of its own, so
	// that the member keeps heartbeating (with what it owned before)
	// meanwhile.
	applying   chan struct{}
	reconciled []int // set by the reconciliation before it closes applying

	counts memberStats
}

func newConsumerMember(cfg Config, log *slog.Logger, kc *brokers, live *liveness, host groupHost) *consumerMember {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return &consumerMember{cfg: cfg, log: log, kc: kc, live: live, host: host,
		memberID: base64.RawURLEncoding.EncodeToString(id[:]), interval: time.Second}
}

// start checks that the broker speaks the consumer protocol, and reads the
// topic's id. The member joins in run.
func (m *consumerMember) start(ctx context.Context, _ []int) error {
	ctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	vs, err := m.kc.wire.Versions(ctx)
	if err != nil {
		return err
	}
	hb, ok := vs[kmsg.ConsumerGroupHeartbeat.Int16()]
	if !ok || hb.Max < 1 {
		return fmt.Errorf(`multiconsumer: group %q: GroupProtocol "consumer" needs ConsumerGroupHeartbeat v1+ (API 68, Kafka 4.0+); the broker offers %s; use "classic"`,
			m.cfg.Group, offered(vs, kmsg.ConsumerGroupHeartbeat))
	}
	if oc := vs[kmsg.OffsetCommit.Int16()]; oc.Max < 9 {
		return fmt.Errorf(`multiconsumer: group %q: GroupProtocol "consumer" needs OffsetCommit v9+; the broker offers %s`,
			m.cfg.Group, offered(vs, kmsg.OffsetCommit))
	}
	m.log.Info(`group: protocol "consumer": the broker's group.consumer.* settings apply; SessionTimeout, HeartbeatInterval and Assignors are not used`,
		"member", m.memberID, "serverAssignor", m.cfg.ServerAssignor)
	err = retry(ctx, true, func() (err error) {
		m.topicID, err = topicIDOf(ctx, m.kc, m.cfg.Topic)
		return err
	})
	m.kc.topicID = m.topicID
	return err
}

// offered says which versions of API k the broker offers.
func offered(vs map[int16]wire.VersionRange, k kmsg.Key) string {
	vr, ok := vs[k.Int16()]
	if !ok {
		return fmt.Sprintf("no %s (API %d)", k.Name(), k.Int16())
	}
	return fmt.Sprintf("%s v%d-v%d", k.Name(), vr.Min, vr.Max)
}

// run joins, reconciles assignments and heartbeats until ctx ends. Close
// then commits and leaves.
func (m *consumerMember) run(ctx context.Context) {
	defer m.awaitApply()
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		res, err := m.heartbeat(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			backoff = 0
			m.live.answered()
			m.counts.joined(nil)
			m.answered(res)
			m.maybeReconcile(ctx)
		} else {
			m.counts.joined(err)
			switch {
			case errors.Is(err, kerr.FencedMemberEpoch) || errors.Is(err, kerr.UnknownMemberID) ||
				m.epoch > 0 && errors.Is(err, kerr.GroupIDNotFound):
				// GROUP_ID_NOT_FOUND to a member already in the group: it
				// was removed, and the group turned classic meanwhile
				// (a rolling migration back); its join upgrades it again.
				// Out of the group: what it owned is someone else's now.
				m.awaitApply()
				m.lose(ctx, err)
				continue
			case consumerFinal(err):
				m.host.stop(&GroupSettingError{Field: "GroupProtocol", Value: m.cfg.GroupProtocol, Err: err})
				return
			}
			backoff = nextBackoff(backoff, min(m.cfg.MaxBackoff, 5*time.Second))
			m.log.Warn("group: heartbeat failed", "err", err, "backoff", backoff)
		}
		wait := m.interval
		if backoff > 0 {
			wait = backoff
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-m.applying:
			// Reconciled: report what the member owns now, at once.
			timer.Stop()
			m.owned, m.applying = m.reconciled, nil
		}
	}
}

// answered takes a heartbeat's answer: the epoch, the interval, the
// assignment when it changed.
func (m *consumerMember) answered(res *kmsg.ConsumerGroupHeartbeatResponse) {
	if res.HeartbeatIntervalMillis > 0 {
		m.interval = time.Duration(res.HeartbeatIntervalMillis) * time.Millisecond
	}
	m.epoch = res.MemberEpoch
	if res.Assignment == nil {
		return
	}
	m.target = assignedPartitions(m.topicID, res.Assignment.Topics)
}

// assignedPartitions returns, sorted, the partitions of the topic with id
// among the topics of a KIP-848 or a share-group assignment (the two
// heartbeats answer with the same shape under two names).
func assignedPartitions[T kmsg.ConsumerGroupHeartbeatResponseAssignmentTopic | kmsg.ShareGroupHeartbeatResponseAssignmentTopicPartition](id [16]byte, topics []T) []int {
	var out []int
	for _, t := range topics {
		if t := kmsg.ConsumerGroupHeartbeatResponseAssignmentTopic(t); t.TopicID == id {
			for _, p := range t.Partitions {
				out = append(out, int(p))
			}
		}
	}
	slices.Sort(out)
	return out
}

// maybeReconcile starts applying the broker's assignment, unless a
// reconciliation runs (the next one starts when it ends) or nothing
// changed. A new epoch alone is applied too: commits go under it.
func (m *consumerMember) maybeReconcile(ctx context.Context) {
	if m.applying != nil {
		select {
		case <-m.applying:
			m.owned, m.applying = m.reconciled, nil
		default:
			return
		}
	}
	if slices.Equal(m.target, m.owned) && m.applied == m.epoch {
		return
	}
	a := assignment{lease: m.lease(), owned: slices.Clone(m.target),
		added: without(m.target, m.owned), revoked: without(m.owned, m.target)}
	m.applied = m.epoch
	if len(a.added)+len(a.revoked) > 0 {
		m.log.Info("group: assigned", "epoch", m.epoch, "member", m.memberID, "partitions", a.owned, "added", a.added, "revoked", a.revoked)
	}
	done := make(chan struct{})
	m.applying = done
	start := time.Now()
	go func() {
		defer close(done)
		m.host.apply(ctx, a)
		m.reconciled = a.owned
		if len(a.added)+len(a.revoked) > 0 {
			m.counts.rebalanced(time.Since(start)) // a rebalance of this member: from the assignment to applied
		}
	}()
}

// awaitApply waits for the reconciliation in flight, if any.
func (m *consumerMember) awaitApply() {
	if m.applying != nil {
		<-m.applying
		m.owned, m.applying = m.reconciled, nil
	}
}

// consumerFinal reports whether a heartbeat error stops the member for
// good: a retry would fail alike.
func consumerFinal(err error) bool {
	return errors.Is(err, kerr.GroupAuthorizationFailed) || errors.Is(err, kerr.TopicAuthorizationFailed) ||
		errors.Is(err, kerr.InvalidRequest) || errors.Is(err, kerr.UnsupportedAssignor) ||
		errors.Is(err, kerr.GroupIDNotFound) || errors.Is(err, kerr.UnsupportedVersion) ||
		errors.Is(err, kerr.InvalidGroupID)
}

// heartbeat sends one ConsumerGroupHeartbeat: a join (epoch 0) with the
// subscription, or a heartbeat with the partitions the member owns.
func (m *consumerMember) heartbeat(ctx context.Context) (*kmsg.ConsumerGroupHeartbeatResponse, error) {
	req := kmsg.NewPtrConsumerGroupHeartbeatRequest()
	req.Group, req.MemberID, req.MemberEpoch = m.cfg.Group, m.memberID, m.epoch
	if m.cfg.InstanceID != "" {
		req.InstanceID = &m.cfg.InstanceID
	}
	req.RebalanceTimeoutMillis = int32(m.cfg.RebalanceTimeout / time.Millisecond)
	if m.epoch == 0 {
		req.SubscribedTopicNames = []string{m.cfg.Topic}
		if m.cfg.ServerAssignor != "" {
			req.ServerAssignor = &m.cfg.ServerAssignor
		}
		req.Topics = []kmsg.ConsumerGroupHeartbeatRequestTopic{} // empty, not null, on a join
	} else {
		t := kmsg.NewConsumerGroupHeartbeatRequestTopic()
		t.TopicID = m.topicID
		for _, p := range m.owned {
			t.Partitions = append(t.Partitions, int32(p))
		}
		req.Topics = []kmsg.ConsumerGroupHeartbeatRequestTopic{t}
	}
	rctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	kres, err := m.kc.wire.DoGroup(rctx, m.cfg.Group, req)
	if err != nil {
		return nil, fmt.Errorf("multiconsumer: group %q: heartbeat: %w", m.cfg.Group, err)
	}
	res := kres.(*kmsg.ConsumerGroupHeartbeatResponse)
	if err := wire.ErrorForCode(res.ErrorCode); err != nil {
		if res.ErrorMessage != nil {
			err = fmt.Errorf("%w: %s", err, *res.ErrorMessage)
		}
		return nil, fmt.Errorf("multiconsumer: group %q: heartbeat (epoch %d): %w", m.cfg.Group, m.epoch, err)
	}
	return res, nil
}

// lose gives every owned partition up without a commit (the member is out
// of the group), and makes it join again, with the same member id.
func (m *consumerMember) lose(ctx context.Context, why error) {
	m.log.Warn("group: out of the group, joining again", "err", why, "partitions", m.owned)
	m.epoch, m.applied = 0, 0
	m.host.apply(ctx, assignment{lease: m.lease(), lost: m.owned})
	m.owned, m.target = nil, nil
}

// lease is the member's lease now: its member id and epoch (-1 when out of
// the group: no commit goes under it).
func (m *consumerMember) lease() lease {
	e := m.epoch
	if e == 0 {
		e = -1
	}
	return lease{memberID: m.memberID, instanceID: m.cfg.InstanceID, generation: e}
}

// grew does nothing: the broker assigns the partitions added to the topic.
func (m *consumerMember) grew(context.Context, []int) error { return nil }

// leave leaves the group, after Close's final commit: a dynamic member
// with epoch -1, so that the others take its partitions at once; a static
// one with -2, so that its partitions wait for it (within the session).
func (m *consumerMember) leave(ctx context.Context) error {
	if m.epoch <= 0 {
		return nil
	}
	epoch := int32(-1)
	if m.cfg.InstanceID != "" {
		epoch = -2
	}
	req := kmsg.NewPtrConsumerGroupHeartbeatRequest()
	req.Group, req.MemberID, req.MemberEpoch = m.cfg.Group, m.memberID, epoch
	if m.cfg.InstanceID != "" {
		req.InstanceID = &m.cfg.InstanceID
	}
	rctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	kres, err := m.kc.wire.DoGroup(rctx, m.cfg.Group, req)
	if err == nil {
		err = wire.ErrorForCode(kres.(*kmsg.ConsumerGroupHeartbeatResponse).ErrorCode)
	}
	if err != nil && !errors.Is(err, kerr.UnknownMemberID) {
		return fmt.Errorf("multiconsumer: leave group %q: %w", m.cfg.Group, err)
	}
	return nil
}

func (m *consumerMember) stats(s *Stats) { m.counts.fill(s, m.live) }

// topicIDOf returns the topic's id (Metadata v10+), which the consumer and
// share protocols carry instead of its name.
func topicIDOf(ctx context.Context, kc *brokers, topic string) ([16]byte, error) {
	req := kmsg.NewPtrMetadataRequest()
	t := kmsg.NewMetadataRequestTopic()
	t.Topic = &topic
	req.Topics = append(req.Topics, t)
	rctx, cancel := kc.withTimeout(ctx)
	defer cancel()
	kres, err := kc.wire.Do(rctx, req)
	if err != nil {
		return [16]byte{}, fmt.Errorf("multiconsumer: topic %q: read its id: %w", topic, err)
	}
	for _, rt := range kres.(*kmsg.MetadataResponse).Topics {
		if rt.Topic != nil && *rt.Topic == topic {
			if err := wire.ErrorForCode(rt.ErrorCode); err != nil {
				return [16]byte{}, fmt.Errorf("multiconsumer: topic %q: %w", topic, err)
			}
			if rt.TopicID == ([16]byte{}) {
				return [16]byte{}, fmt.Errorf("multiconsumer: topic %q has no topic id (the broker is too old)", topic)
			}
			return rt.TopicID, nil
		}
	}
	return [16]byte{}, fmt.Errorf("multiconsumer: topic %q not in the metadata", topic)
}

// offsetCommitV9 is offsetCommit for a member of the consumer protocol:
// OffsetCommit v9+, with the member id and the member epoch (in the
// generation field), which the broker checks.
func (b *brokers) offsetCommitV9(ctx context.Context, l lease, offsets map[int]int64, meta map[int]string) (map[int]int64, error) {
	req := kmsg.NewPtrOffsetCommitRequest()
	req.Group = b.group
	req.Generation, req.MemberID = l.generation, l.memberID
	if l.instanceID != "" {
		req.InstanceID = &l.instanceID
	}
	t := kmsg.NewOffsetCommitRequestTopic()
	t.Topic, t.TopicID = b.topic, b.topicID // v10+ names it by id
	for _, p := range slices.Sorted(maps.Keys(offsets)) {
		rp := kmsg.NewOffsetCommitRequestTopicPartition()
		rp.Partition, rp.Offset, rp.LeaderEpoch = int32(p), offsets[p], -1
		if md, ok := meta[p]; ok {
			rp.Metadata = &md
		}
		t.Partitions = append(t.Partitions, rp)
	}
	req.Topics = append(req.Topics, t)
	kres, err := b.wire.DoGroup(ctx, b.group, req)
	if err != nil {
		return nil, fmt.Errorf("multiconsumer: commit offsets of group %q: %w", b.group, err)
	}
	ok := make(map[int]int64, len(offsets))
	var errs []error
	for _, rt := range kres.(*kmsg.OffsetCommitResponse).Topics {
		for _, rp := range rt.Partitions {
			p := int(rp.Partition)
			if err := wire.ErrorForCode(rp.ErrorCode); err != nil {
				errs = append(errs, &PartitionError{Topic: b.topic, Partition: p, Err: fmt.Errorf("commit offset %d: %w", offsets[p], err)})
				continue
			}
			if off, asked := offsets[p]; asked {
				ok[p] = off
			}
		}
	}
	if len(ok)+len(errs) < len(offsets) {
		errs = append(errs, fmt.Errorf("multiconsumer: commit offsets of group %q: %d partitions missing from the response", b.group, len(offsets)-len(ok)-len(errs)))
	}
	return ok, errors.Join(errs...)
}
