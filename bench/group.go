package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// This file is the group members of the drain suite's mc-group, franz
// ?members=N and kafkago-group ?members=N contenders and of the rebalance
// suite: each member is a consumer of its own, in a goroutine of its own, in
// one consumer group shared by the members of one child process.

// recvFunc is what a member calls for each message it receives: member is
// its index (0 for the first), partition and offset say which message.
type recvFunc func(member, partition int, offset int64, key, value []byte)

// memberStop stops a member: it stops receiving, then closes the consumer
// (which commits and leaves the group), and returns the error that stopped
// it, if any.
type memberStop func() error

// startMember starts one group member of contender s and returns at once;
// the member joins and receives in the background. hooks, if not nil, is
// told the partitions assigned and revoked, where the client tells.
type startMember func(ctx context.Context, brokers []string, topic, group string, member int, recv recvFunc, hooks hookFunc) (memberStop, error)

// hookFunc is told the partitions a member got or gave up, when the client
// has hooks for that: MultiConsumer both, franz-go the assigned ones (see
// startFranzMember), kafka-go's Reader none. Only logged: the measurements
// do not use them.
type hookFunc func(member int, event string, partitions []int)

// groupTimings are the group settings of the members started by
// startMember: HeartbeatInterval, SessionTimeout and RebalanceTimeout,
// 1s/10s/10s unless the spec says hb=, session=, rebalance=. Alike for every
// client.
func groupTimings(s spec) (hb, session, rebalance time.Duration) {
	return s.dur("hb", time.Second), s.dur("session", 10*time.Second), s.dur("rebalance", 10*time.Second)
}

// memberFor returns the member starter of contender s, for contenders that
// can run as group members.
func memberFor(s spec) (startMember, bool) {
	switch s.name {
	case "mc-group":
		return startMCMember(s), true
	case "franz":
		return startFranzMember(s), true
	case "kafkago-group":
		return startKafkaGoMember(s), true
	}
	return nil, false
}

// protocolOf names the assignment protocol contender s uses in a group.
func protocolOf(s spec) string {
	switch s.name {
	case "mc-group":
		if s.str("protocol", "") == multiconsumer.GroupProtocolConsumer {
			return "consumer (KIP-848)"
		}
		return s.str("assignor", multiconsumer.DefaultAssignors[0])
	case "franz":
		if s.str("protocol", "") == "consumer" {
			return "consumer (KIP-848)"
		}
		return s.str("balancer", "cooperative-sticky")
	case "kafkago-group":
		return "range (eager)"
	}
	return "?"
}

// startMCMember: MultiConsumer with JoinGroup, GetMessages(count) with
// BlockFor(1) and a 1s timeout in a loop, as mc-get. assignor= sets
// Config.Assignors (default cooperative-sticky), w= NumWorkers (default 1),
// protocol= Config.GroupProtocol (classic, the default, or consumer:
// KIP-848, where the broker's group.consumer.* settings replace the
// heartbeat and session timings and the broker assigns; server= sets
// Config.ServerAssignor).
func startMCMember(s spec) startMember {
	return func(ctx context.Context, brokers []string, topic, group string, member int, recv recvFunc, hooks hookFunc) (memberStop, error) {
		hb, session, rebalance := groupTimings(s)
		cfg := multiconsumer.Config{
			Brokers: brokers, Topic: topic, Group: group, JoinGroup: true,
			NumWorkers: s.int("w", 1), QueueSize: s.int("q", 4096),
			HeartbeatInterval: hb, SessionTimeout: session, RebalanceTimeout: rebalance,
			GroupProtocol: s.str("protocol", ""), ServerAssignor: s.str("server", ""),
		}
		if a := s.str("assignor", ""); a != "" {
			cfg.Assignors = []string{a}
		}
		if os.Getenv("BENCH_GROUP_LOG") == "lib" {
			// The library's own log, on stderr: its group events.
			cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil)).With("member", member)
		}
		if hooks != nil {
			cfg.OnAssigned = func(_ context.Context, p []int) { hooks(member, "assigned", p) }
			cfg.OnRevoked = func(ctx context.Context, p []int) {
				ev := "revoked"
				if multiconsumer.Lost(ctx) {
					ev = "lost"
				}
				hooks(member, ev, p)
			}
		}
		c, err := multiconsumer.New(ctx, cfg)
		if err != nil {
			return nil, err
		}
		mctx, cancel := context.WithCancel(ctx)
		count := s.int("count", 1000)
		var runErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				msgs, err := c.GetMessages(mctx, count, multiconsumer.BlockFor(1), multiconsumer.Timeout(time.Second))
				if err != nil {
					if mctx.Err() == nil {
						runErr = err
					}
					return
				}
				for i := range msgs {
					m := &msgs[i]
					recv(member, m.Partition, m.Offset, m.Key, m.Value)
				}
			}
		})
		return func() error {
			cancel() // GetMessages returns: what it delivered before is consumed
			wg.Wait()
			return errors.Join(runErr, c.Close())
		}, nil
	}
}

// startFranzMember: a franz-go group consumer, PollFetches in a loop,
// autocommit at its defaults; balancer= range or cooperative-sticky (the
// default, franz-go's own default too). protocol=consumer opts into KIP-848
// (kgo.ServerSideBalancer, which needs the sticky or range balancer: sticky
// unless balancer=range); the broker then assigns and its group.consumer.*
// settings replace the heartbeat and session timings.
func startFranzMember(s spec) startMember {
	return func(ctx context.Context, brokers []string, topic, group string, member int, recv recvFunc, hooks hookFunc) (memberStop, error) {
		hb, session, rebalance := groupTimings(s)
		bal := kgo.CooperativeStickyBalancer()
		if s.str("balancer", "") == "range" {
			bal = kgo.RangeBalancer()
		}
		if s.str("protocol", "") == "consumer" && s.str("balancer", "") != "range" {
			bal = kgo.StickyBalancer()
		}
		opts := []kgo.Opt{
			kgo.SeedBrokers(brokers...),
			kgo.ConsumerGroup(group),
			kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchMaxWait(s.dur("maxwait", 5*time.Second)),
			kgo.Balancers(bal),
			kgo.HeartbeatInterval(hb), kgo.SessionTimeout(session), kgo.RebalanceTimeout(rebalance),
		}
		if s.str("protocol", "") == "consumer" {
			opts = append(opts, kgo.ServerSideBalancer())
		}
		if hooks != nil {
			// OnPartitionsAssigned only: setting OnPartitionsRevoked (or
			// OnPartitionsLost) would replace franz-go's default revoke,
			// which commits what was polled before the last poll.
			opts = append(opts, kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
				var p []int
				for _, v := range m[topic] {
					p = append(p, int(v))
				}
				hooks(member, "assigned", p)
			}))
		}
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return nil, err
		}
		mctx, cancel := context.WithCancel(ctx)
		var runErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			for mctx.Err() == nil {
				fs := cl.PollFetches(mctx)
				if mctx.Err() != nil {
					return
				}
				if errs := fs.Errors(); len(errs) > 0 {
					runErr = fmt.Errorf("franz: %v", errs[0].Err)
					return
				}
				fs.EachRecord(func(r *kgo.Record) { recv(member, int(r.Partition), r.Offset, r.Key, r.Value) })
			}
		})
		return func() error {
			cancel()
			wg.Wait()
			cl.Close() // commits and leaves the group
			return runErr
		}, nil
	}
}

// startKafkaGoMember: a kafka-go group Reader (eager: range, then
// roundrobin, its defaults), with the drain suite's kafkago-group
// parameters (maxwait=, queue=, commit=, read=fetch).
func startKafkaGoMember(s spec) startMember {
	return func(ctx context.Context, brokers []string, topic, group string, member int, recv recvFunc, _ hookFunc) (memberStop, error) {
		hb, session, rebalance := groupTimings(s)
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:           brokers,
			GroupID:           group,
			Topic:             topic,
			MaxWait:           s.dur("maxwait", 0),
			MinBytes:          s.int("minbytes", 0),
			MaxBytes:          s.int("maxbytes", 0),
			QueueCapacity:     s.int("queue", 0),
			CommitInterval:    s.dur("commit", 0),
			StartOffset:       kafka.FirstOffset,
			HeartbeatInterval: hb,
			SessionTimeout:    session,
			RebalanceTimeout:  rebalance,
		})
		read := r.ReadMessage
		if s.str("read", "read") == "fetch" {
			read = r.FetchMessage
		}
		mctx, cancel := context.WithCancel(ctx)
		var runErr error
		var wg sync.WaitGroup
		wg.Go(func() {
			for {
				m, err := read(mctx)
				if err != nil {
					if mctx.Err() == nil {
						runErr = err
					}
					return
				}
				recv(member, m.Partition, m.Offset, m.Key, m.Value)
			}
		})
		return func() error {
			cancel()
			wg.Wait()
			return errors.Join(runErr, r.Close()) // commits and leaves the group
		}, nil
	}
}

// dedup tells redeliveries apart: a message whose offset is not above the
// highest delivered before in its partition (by any member) was delivered
// before. Safe for concurrent use.
type dedup struct {
	next []atomic.Int64 // per partition: highest offset delivered + 1
	dups atomic.Int64
}

func newDedup(partitions int) *dedup { return &dedup{next: make([]atomic.Int64, partitions)} }

// seen records the delivery of partition's offset and reports whether it
// was delivered before.
func (d *dedup) seen(partition int, offset int64) bool {
	if partition < 0 || partition >= len(d.next) {
		return false // a partition added since the start: not tracked
	}
	n := &d.next[partition]
	for {
		cur := n.Load()
		if offset < cur {
			d.dups.Add(1)
			return true
		}
		if n.CompareAndSwap(cur, offset+1) {
			return false
		}
	}
}

// duplicates counts the messages the group runners received twice, for
// the child's result (one contender per process).
var duplicates atomic.Int64

// runGroupMembers is the drain runner of the group contenders with
// members=N: N members of one group in this process, each in its own
// goroutine, started together, sharing the handler. A redelivered message
// (see dedup) is counted in duplicates and not handed to h, so that the
// sink counts distinct messages.
func runGroupMembers(s spec, start startMember) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		parts, err := kafka.LookupPartitions(ctx, "tcp", brokers[0], topic)
		if err != nil {
			return err
		}
		dd := newDedup(len(parts))
		recv := func(_, partition int, offset int64, key, value []byte) {
			if !dd.seen(partition, offset) {
				h(key, value)
			}
		}
		var hooks hookFunc
		if os.Getenv("BENCH_GROUP_LOG") != "" {
			t0 := time.Now()
			hooks = func(member int, ev string, p []int) {
				fmt.Fprintf(os.Stderr, "%7.3fs member %d %s %v\n", time.Since(t0).Seconds(), member, ev, p)
			}
		}
		g := group()
		n := max(1, s.int("members", 1))
		stops := make([]memberStop, 0, n)
		var errs []error
		for i := range n {
			stop, err := start(ctx, brokers, topic, g, i, recv, hooks)
			if err != nil {
				errs = append(errs, err)
				break
			}
			stops = append(stops, stop)
		}
		if len(errs) == 0 {
			<-ctx.Done()
		}
		// Stopped together: one leaving alone would hand its partitions
		// to the others first.
		var wg sync.WaitGroup
		stopErrs := make([]error, len(stops))
		for i, stop := range stops {
			wg.Go(func() { stopErrs[i] = stop() })
		}
		wg.Wait()
		duplicates.Add(dd.dups.Load())
		return errors.Join(append(errs, stopErrs...)...)
	}
}
