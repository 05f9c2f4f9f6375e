package multiconsumer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	heartbeatAPI "github.com/segmentio/kafka-go/protocol/heartbeat"
)

// This file is group mode (Config.JoinGroup): the consumer is a member of
// its group through Kafka's classic group protocol, built on kafka-go's
// protocol-level requests (JoinGroup, SyncGroup, Heartbeat, LeaveGroup),
// because kafka-go's ConsumerGroup rebalances eagerly only and has no
// static membership. One goroutine, the member, runs the protocol; it hands
// partitions to the controller (grant) and takes them back (revoke).

// consumerProtocol is the protocol type of consumer groups.
const consumerProtocol = "consumer"

// member runs the group protocol for one consumer, in its own goroutine
// (run). It is the consumer's source of partitions in group mode: it
// reaches the consumer only through host.
type member struct {
	cfg    Config // a copy, defaults filled in
	log    *slog.Logger
	kc     *brokers
	live   *liveness
	rejoin chan struct{} // cap 1: the topic grew: rebalance, so that the leader sees it
	host   groupHost

	// Owned by the goroutine (run); read by leave after it ended.
	instanceID string
	memberID   string
	generation int32
	owned      []int // sorted
	assignor   assignor
	coord      net.Addr // the group coordinator, for heartbeats

	counts memberStats
}

// memberStats are a group member's counts for Stats, whatever its protocol.
type memberStats struct {
	mu           sync.Mutex // guards the fields below
	rebalances   int64
	rebalancing  time.Duration
	joinFailures int64 // joins (or heartbeats) that failed
	joinErr      error // of the last one, when it failed
}

// joined records the outcome of a join or heartbeat: its error, or nil.
func (c *memberStats) joined(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.joinErr = err
	if err != nil {
		c.joinFailures++
	}
}

// rebalanced counts a rebalance that took d.
func (c *memberStats) rebalanced(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rebalances++
	c.rebalancing += d
}

// fill fills in s's group counts, and what live says.
func (c *memberStats) fill(s *Stats, live *liveness) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s.Rebalances, s.RebalanceTime = c.rebalances, c.rebalancing
	s.JoinFailures, s.JoinError = c.joinFailures, c.joinErr
	s.LastHeard, s.Suspended = live.lastHeard(), !live.alive()
}

// groupHost is what a member asks of the consumer it belongs to: apply a
// change of the partitions it owns, as one step, and stop for good.
type groupHost struct {
	apply func(ctx context.Context, a assignment) error
	stop  func(err error) // the member cannot go on: the consumer stops for good
}

func newMember(cfg Config, log *slog.Logger, kc *brokers, live *liveness, host groupHost) *member {
	return &member{cfg: cfg, log: log, kc: kc, live: live, rejoin: make(chan struct{}, 1), host: host,
		instanceID: cfg.InstanceID, generation: -1}
}

// start does nothing: the group assigns the partitions once the member runs.
func (m *member) start(context.Context, []int) error { return nil }

// grew makes the member rejoin, so that the group's leader assigns the
// partitions added to the topic.
func (m *member) grew(context.Context, []int) error {
	select {
	case m.rejoin <- struct{}{}:
	default:
	}
	return nil
}

func (m *member) joined(err error) { m.counts.joined(err) }

func (m *member) rebalanced(d time.Duration) { m.counts.rebalanced(d) }

func (m *member) stats(s *Stats) { m.counts.fill(s, m.live) }

// errLost marks a heartbeat that found the member out of the group.
var errLost = errors.New("member lost its partitions")

// run joins, syncs, applies assignments and heartbeats until ctx ends.
// Close then commits and leaves.
func (m *member) run(ctx context.Context) {
	backoff := time.Duration(0)
	failures := 0
	for ctx.Err() == nil {
		if backoff > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
		}
		start := time.Now()
		if m.assignor != nil && !m.assignor.cooperative() && len(m.owned) > 0 {
			// Eager: give everything up before joining again.
			m.host.apply(ctx, assignment{lease: m.lease(), revoked: m.owned})
			m.owned = nil
		}
		assigned, err := m.joinAndSync(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			m.joined(err)
			serr := m.settingError(ctx, err) // every join would fail alike
			fenced := errors.Is(err, kafka.FencedInstanceID)
			if len(m.owned) > 0 && (serr != nil || fenced ||
				errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration)) {
				// Out of the group while rejoining (cooperative: it kept
				// its partitions through the rebalance): they are
				// someone else's now.
				m.lose(ctx, fmt.Errorf("%w: %w", errLost, err))
			}
			switch {
			case serr != nil:
				m.host.stop(serr)
				return
			case fenced:
				m.host.stop(fmt.Errorf("multiconsumer: group %q: instance %q: %w", m.cfg.Group, m.instanceID, err))
				return
			}
			// A rebalance that began between JoinGroup and SyncGroup
			// fails the sync (kafka-go v0.4.51 reports SyncGroup's
			// REBALANCE_IN_PROGRESS as "unexpected EOF": it decodes the
			// empty assignment of an error response): join again at
			// once, twice, before backing off.
			if failures++; failures > 2 {
				backoff = nextBackoff(backoff, min(m.cfg.MaxBackoff, 5*time.Second))
			}
			m.log.Warn("group: join failed, retrying", "backoff", backoff, "err", err)
			continue
		}
		backoff, failures = 0, 0
		m.joined(nil)

		// The heartbeats run while the assignment is applied: giving
		// partitions up waits for the caller, up to RebalanceTimeout.
		hbCtx, stopHB := context.WithCancel(ctx)
		events := make(chan error, 1)
		var hb sync.WaitGroup
		hb.Go(func() { events <- m.heartbeat(hbCtx) })

		revoked := without(m.owned, assigned)
		added := without(assigned, m.owned)
		m.owned = assigned
		m.host.apply(ctx, assignment{lease: m.lease(), owned: assigned, revoked: revoked, added: added})
		m.rebalanced(time.Since(start))
		m.log.Info("group: assigned", "generation", m.generation, "member", m.memberID,
			"partitions", assigned, "added", added, "revoked", revoked, "protocol", m.assignor.protocol())

		var ev error
		if len(revoked) > 0 && m.assignor.cooperative() {
			// Rejoin at once, so that what this member gave up goes to
			// its new owner in the next generation.
			ev = kafka.RebalanceInProgress
		} else {
			select {
			case ev = <-events:
			case <-m.rejoin:
				ev = kafka.RebalanceInProgress
			case <-ctx.Done():
			}
		}
		stopHB()
		hb.Wait()
		if ctx.Err() != nil {
			return
		}
		if errors.Is(ev, errLost) {
			m.lose(ctx, ev)
			if errors.Is(ev, kafka.FencedInstanceID) {
				m.host.stop(fmt.Errorf("multiconsumer: group %q: instance %q: %w", m.cfg.Group, m.instanceID, ev))
				return
			}
		}
	}
}

// lose gives up the member's partitions without a commit: the member is out
// of the group (why says how), and they are someone else's now.
func (m *member) lose(ctx context.Context, why error) {
	m.generation = -1
	if errors.Is(why, kafka.UnknownMemberId) {
		m.memberID = ""
	}
	// The lease ends before anything else (apply sets it first): a commit
	// in flight is not sent again, under this lease nor under the next.
	m.log.Warn("group: partitions lost", "partitions", m.owned, "err", why)
	m.host.apply(ctx, assignment{lease: m.lease(), lost: m.owned})
	m.owned = nil
}

// lease returns the member's lease: its id and generation now.
func (m *member) lease() lease {
	return lease{memberID: m.memberID, instanceID: m.instanceID, generation: m.generation}
}

// joinAndSync joins the group (as leader, it computes the assignment) and
// returns this member's partitions in the new generation.
func (m *member) joinAndSync(ctx context.Context) ([]int, error) {
	protocols := make([]kafka.GroupProtocol, 0, len(m.cfg.Assignors))
	for _, name := range m.cfg.Assignors {
		var userData []byte
		if name == "cooperative-sticky" {
			// The generation in which the owned partitions were owned,
			// where the Java client's CooperativeStickyAssignor looks
			// for it in subscriptions of version 1.
			userData = binary.BigEndian.AppendUint32(nil, uint32(m.generation))
		}
		protocols = append(protocols, kafka.GroupProtocol{Name: name, Metadata: kafka.GroupProtocolSubscription{
			Topics:          []string{m.cfg.Topic},
			UserData:        userData,
			OwnedPartitions: map[string][]int{m.cfg.Topic: m.owned},
		}})
	}
	var join *kafka.JoinGroupResponse
	for {
		// The coordinator answers a JoinGroup when every member has
		// joined, up to RebalanceTimeout.
		jctx, cancel := context.WithTimeout(ctx, m.cfg.RebalanceTimeout+m.kc.requestTimeout())
		m.live.joining.Store(true)
		res, err := m.kc.client.JoinGroup(jctx, &kafka.JoinGroupRequest{
			GroupID:          m.cfg.Group,
			SessionTimeout:   m.cfg.SessionTimeout,
			RebalanceTimeout: m.cfg.RebalanceTimeout,
			MemberID:         m.memberID,
			GroupInstanceID:  m.instanceID,
			ProtocolType:     consumerProtocol,
			Protocols:        protocols,
		})
		cancel()
		m.live.joining.Store(false)
		if err != nil {
			return nil, fmt.Errorf("join group %q: %w", m.cfg.Group, err)
		}
		if res.Error == nil || errors.Is(res.Error, kafka.MemberIDRequired) {
			m.live.answered()
		}
		switch {
		case errors.Is(res.Error, kafka.MemberIDRequired):
			m.memberID = res.MemberID // KIP-394: join again with it
			continue
		case errors.Is(res.Error, kafka.UnknownMemberId):
			m.memberID = ""
			return nil, fmt.Errorf("join group %q: %w", m.cfg.Group, res.Error)
		case res.Error != nil:
			return nil, fmt.Errorf("join group %q: %w", m.cfg.Group, res.Error)
		}
		join = res
		break
	}
	m.memberID, m.generation = join.MemberID, int32(join.GenerationID)
	a, ok := assignorFor(join.ProtocolName)
	if !ok {
		return nil, fmt.Errorf("join group %q: the group chose protocol %q, which this member did not offer", m.cfg.Group, join.ProtocolName)
	}
	m.assignor = a
	// The new lease reaches the consumer with the assignment, after the
	// sync: a commit sent before it completes would be refused
	// (REBALANCE_IN_PROGRESS) while the group waits for the sync.

	var assignments []kafka.SyncGroupRequestAssignment
	if join.LeaderID == join.MemberID {
		var err error
		if assignments, err = m.lead(ctx, join); err != nil {
			return nil, err
		}
	}
	sctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	res, err := m.kc.client.SyncGroup(sctx, &kafka.SyncGroupRequest{
		GroupID:         m.cfg.Group,
		GenerationID:    join.GenerationID,
		MemberID:        m.memberID,
		GroupInstanceID: m.instanceID,
		ProtocolType:    consumerProtocol,
		ProtocolName:    join.ProtocolName,
		Assignments:     assignments,
	})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		if errors.Is(err, kafka.UnknownMemberId) {
			m.memberID = ""
		}
		return nil, fmt.Errorf("sync group %q: %w", m.cfg.Group, err)
	}
	m.live.answered()
	assigned := slices.Sorted(slices.Values(res.Assignment.AssignedPartitions[m.cfg.Topic]))
	return slices.Compact(assigned), nil
}

// lead computes the group's assignment: this member is the leader.
func (m *member) lead(ctx context.Context, join *kafka.JoinGroupResponse) ([]kafka.SyncGroupRequestAssignment, error) {
	// The partitions as the cluster has them now, not as cached: the
	// rebalance may be for partitions added to the topic.
	rctx, cancel := m.kc.withTimeout(ctx)
	_ = m.kc.refreshTransport(rctx)
	cancel()
	all, _, err := m.kc.topicMetadata(ctx)
	if err != nil {
		return nil, fmt.Errorf("lead group %q: %w", m.cfg.Group, err)
	}
	members := make([]groupMember, 0, len(join.Members))
	var others []string // members not subscribed to our topic: they get none of it
	for _, jm := range join.Members {
		if !slices.Contains(jm.Metadata.Topics, m.cfg.Topic) {
			others = append(others, jm.ID)
			continue
		}
		gen := int32(-1)
		if len(jm.Metadata.UserData) == 4 {
			gen = int32(binary.BigEndian.Uint32(jm.Metadata.UserData))
		}
		members = append(members, groupMember{
			ID: jm.ID, InstanceID: jm.GroupInstanceID, Generation: gen,
			Owned: slices.Sorted(slices.Values(jm.Metadata.OwnedPartitions[m.cfg.Topic])),
		})
	}
	plan := m.assignor.assign(all, members)
	out := make([]kafka.SyncGroupRequestAssignment, 0, len(members)+len(others))
	for _, gm := range members {
		out = append(out, kafka.SyncGroupRequestAssignment{
			MemberID:   gm.ID,
			Assignment: kafka.GroupProtocolAssignment{AssignedPartitions: map[string][]int{m.cfg.Topic: plan[gm.ID]}},
		})
	}
	for _, id := range others {
		out = append(out, kafka.SyncGroupRequestAssignment{MemberID: id, Assignment: kafka.GroupProtocolAssignment{AssignedPartitions: map[string][]int{}}})
	}
	m.log.Info("group: leading", "generation", join.GenerationID, "members", len(members), "plan", plan)
	return out, nil
}

// heartbeat sends heartbeats until ctx ends or the coordinator says the
// group rebalances (kafka.RebalanceInProgress) or the member is out of it
// (errLost, wrapping the reason). The session expires when no heartbeat got
// through for SessionTimeout: that is errLost too.
func (m *member) heartbeat(ctx context.Context) error {
	last := time.Now()
	// Cooperative: right after an assignment another member may be giving
	// up partitions for this one, and rejoin; the follow-up rebalance is
	// learnt from a heartbeat. Heartbeat soon, then less often, up to
	// HeartbeatInterval (franz-go sends one early heartbeat too).
	every := m.cfg.HeartbeatInterval
	if m.assignor.cooperative() {
		every = min(every, 50*time.Millisecond)
	}
	t := time.NewTimer(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		every = min(2*every, m.cfg.HeartbeatInterval)
		t.Reset(every)
		err := m.heartbeatOnce(ctx)
		if err == nil || errors.Is(err, kafka.RebalanceInProgress) {
			m.live.answered() // the member is still in the group
		}
		switch {
		case err == nil:
			last = time.Now()
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, kafka.RebalanceInProgress):
			return err
		case errors.Is(err, kafka.IllegalGeneration), errors.Is(err, kafka.UnknownMemberId), errors.Is(err, kafka.FencedInstanceID):
			return fmt.Errorf("%w: %w", errLost, err)
		default:
			m.coord = nil // find the coordinator again
			if time.Since(last) > m.cfg.SessionTimeout {
				return fmt.Errorf("%w: no heartbeat for %v: %w", errLost, time.Since(last).Round(time.Millisecond), err)
			}
			m.log.Warn("group: heartbeat failed", "err", err)
		}
	}
}

// heartbeatOnce sends one heartbeat to the group coordinator. kafka-go
// routes JoinGroup, SyncGroup and commits to the coordinator, but not
// Heartbeat requests: they are sent to the coordinator's address here.
func (m *member) heartbeatOnce(ctx context.Context) error {
	ctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	if m.coord == nil {
		res, err := m.kc.client.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{Key: m.cfg.Group, KeyType: kafka.CoordinatorKeyTypeConsumer})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			return fmt.Errorf("find coordinator of group %q: %w", m.cfg.Group, err)
		}
		m.coord = kafka.TCP(net.JoinHostPort(res.Coordinator.Host, strconv.Itoa(res.Coordinator.Port)))
	}
	res, err := m.kc.transport.RoundTrip(ctx, m.coord, &heartbeatAPI.Request{
		GroupID: m.cfg.Group, GenerationID: m.generation, MemberID: m.memberID, GroupInstanceID: m.instanceID,
	})
	if err != nil {
		return err
	}
	if code := heartbeatError(res.(*heartbeatAPI.Response)); code != 0 {
		if errors.Is(kafka.Error(code), kafka.NotCoordinatorForGroup) {
			m.coord = nil
		}
		return kafka.Error(code)
	}
	return nil
}

// heartbeatError returns the error code of a heartbeat response. kafka-go
// v0.4.51 declares the fields of HeartbeatResponse v1+ in the wrong order
// (the error code before the throttle time, where Kafka sends the throttle
// time first), so it reads the error code into the low 16 bits of
// ThrottleTimeMs and the throttle time's high 16 bits (zero for a throttle
// under a minute) as the error code. TestGroupMembersShareThePartitions
// fails if this ever stops being true.
func heartbeatError(r *heartbeatAPI.Response) int16 {
	if r.ErrorCode != 0 {
		return r.ErrorCode // v0, or a throttle of a minute or more
	}
	return int16(uint32(r.ThrottleTimeMs) & 0xffff)
}

// leave makes a dynamic member leave its group, so that the others
// take its partitions at once rather than after the session timeout. A
// static member stays: restarted within the session timeout, it gets its
// partitions back without a rebalance.
// Close calls it after the member's goroutine has ended.
func (m *member) leave(ctx context.Context) error {
	id := m.memberID
	if id == "" || m.cfg.InstanceID != "" {
		return nil
	}
	res, err := m.kc.client.LeaveGroup(ctx, &kafka.LeaveGroupRequest{
		GroupID: m.cfg.Group,
		Members: []kafka.LeaveGroupRequestMember{{ID: id}},
	})
	if err == nil {
		err = res.Error
	}
	if err == nil {
		for _, lm := range res.Members {
			err = errors.Join(err, lm.Error)
		}
	}
	if err != nil && !errors.Is(err, kafka.UnknownMemberId) {
		return fmt.Errorf("multiconsumer: leave group %q: %w", m.cfg.Group, err)
	}
	return nil
}

// without returns the partitions of a that are not in b (both sorted).
func without(a, b []int) []int {
	var out []int
	for _, p := range a {
		if _, ok := slices.BinarySearch(b, p); !ok {
			out = append(out, p)
		}
	}
	return out
}
