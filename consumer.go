package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// MultiConsumer consumes one topic with several worker goroutines, each
// fetching its own chunk of the partitions into one bounded queue, from which
// the caller takes messages with GetMessages, Messages or Iter (or hands
// them to Process).
//
// Its methods are safe for concurrent use; deliveries (GetMessages calls,
// Iter batches, Messages loops) are serialized so that each partition's
// messages reach the caller in order. But "consumed" is one mark for the
// whole consumer: any GetMessages call, Messages step or Iter receive
// counts everything delivered before as consumed, whoever it was delivered
// to. So let one goroutine take messages (and hand them to a pool if it
// likes), or use ManualCommit and Commit what your goroutines have
// finished.
type MultiConsumer struct {
	cfg     Config       // set once in New
	log     *slog.Logger // set once in New
	kc      *brokers     // set once in New: the transport, and the requests that are not fetches
	meta    *topicMeta   // set once in New: leaders, partitions, deletion; its own lock
	src     source       // set once in New: where the partitions come from (static list, group member)
	ho      *handover    // set once in New: applies the source's changes; its own lock
	sess    *session     // set once in New: the fetchers and their partitions; its own lock
	q       *queue       // set once in New: the fetched batches; its own lock
	led     *ledger      // set once in New: the offsets and the lease; its own lock
	out     *delivery    // set once in New: GetMessages, Messages, Iter, and the Process slot; its own lock
	commits *committer   // set once in New: the one sender of commits
	life    *lifecycle   // set once in New: closing, the stopping error, calls and helpers; its own lock
}

// New connects to the cluster, reads the topic's partitions and the
// group's committed offsets, and starts the workers. It returns an error,
// never panics, for an invalid Config (a *ConfigError), a missing topic or
// partition, or a cluster that does not answer within ctx or the dialer's
// timeout.
func New(ctx context.Context, cfg Config) (*MultiConsumer, error) {
	if ctx == nil {
		return nil, errNilContext
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	c := &MultiConsumer{
		cfg:  cfg,
		log:  cfg.Logger.With("topic", cfg.Topic, "group", cfg.Group),
		kc:   newBrokers(&cfg),
		q:    newQueue(cfg.QueueSize),
		led:  newLedger(cfg.Topic, cfg.AutoCommitEveryN, cfg.AutoCommitEveryT, time.Now()),
		life: newLifecycle(),
	}
	live := newLiveness(0)
	if cfg.JoinGroup {
		live = newLiveness(cfg.SessionTimeout)
	}
	unpaused := newEvent(true) // set while not paused: workers fetch and queue
	c.meta = newTopicMeta(c.kc, c.log, cfg.MetadataMaxAge)
	c.sess = newSession(&fetchEnv{
		topic: cfg.Topic, startOffset: cfg.StartOffset, maxBackoff: cfg.MaxBackoff,
		batchSize: batchSizeOf(cfg.QueueSize), ahead: fetchAheadBytes, hold: holdAheadBytes,
		log: c.log, kc: c.kc, meta: c.meta, q: c.q, unpaused: unpaused, led: c.led,
	}, c.cfg.numWorkers)
	c.ho = &handover{cfg: &c.cfg, log: c.log, kc: c.kc, meta: c.meta, led: c.led, sess: c.sess, q: c.q,
		live: live, life: c.life}
	c.commits = newCommitter(&c.cfg, c.led, c.kc, c.log, c.ho.applied.wait, c.life.commits)
	c.ho.commit = c.commits.commit
	c.out = newDelivery(c.q, c.led, live, c.life, c.commits.wake)
	c.ho.out = c.out
	switch {
	case cfg.ShareGroup:
		m := newShareMember(&c.cfg, c.log, c.kc, c.kc.wire, c.ho.apply, c.stopForGood)
		c.led.acks = newAcker(cfg.Topic, c.log, func() {})
		c.led.implicit = cfg.implicitAccept()
		c.sess.share = newShareFetcher(c.sess.env, c.kc.share, cfg.Group, m.memberID, &m.topicID, c.led.acks, c.lostShare)
		c.led.acks.wake = c.sess.share.nudge.notify
		c.src = m
	case cfg.JoinGroup && cfg.GroupProtocol == GroupProtocolConsumer:
		c.src = newConsumerMember(cfg, c.log, c.kc, live, groupHost{apply: c.ho.apply, stop: c.stopForGood})
	case cfg.JoinGroup:
		c.src = newMember(cfg, c.log, c.kc, live, groupHost{apply: c.ho.apply, stop: c.stopForGood})
	default:
		c.src = newStaticList(cfg.Topic, cfg.Partitions, c.ho.apply)
	}
	c.meta.grew, c.meta.gone = c.src.grew, c.stopForGood

	if err := c.start(ctx); err != nil {
		if c.sess.share != nil {
			c.sess.share.close(ctx)
		}
		c.life.endReads()
		c.life.endCommits()
		c.life.stopHelpers()
		// The connections in use too: one still negotiating (the
		// transport's reads are bounded only by the dial timeout) would
		// keep its kafka-go goroutine running after New returned.
		c.kc.close()
		return nil, err
	}
	c.kc.retryConns.Store(true) // the cluster was there: retry dropped connections
	if c.cfg.Group != "" {
		c.life.goHelper(c.commits.run)
	}
	// After the first partitions: the refresher may add more.
	c.life.goHelper(c.meta.run)
	c.life.goHelper(c.src.run)
	return c, nil
}

// start reads the topic's partitions and leaders, and has the source give
// the consumer its first partitions.
func (c *MultiConsumer) start(ctx context.Context) error {
	all, leaders, err := c.kc.topicMetadata(ctx)
	if err != nil {
		return err
	}
	c.meta.set(all, leaders)
	if m, ok := c.src.(*shareMember); ok {
		reset := "earliest"
		if c.cfg.StartOffset == kafka.LastOffset {
			reset = "latest"
		}
		if err := m.setup(ctx, reset); err != nil {
			return err
		}
	}
	return c.src.start(ctx, all)
}

// lostShare drops what the queue and Process hold of parts, whose share
// session ended: the broker released their records, and another member
// may have them now.
func (c *MultiConsumer) lostShare(parts []int) {
	epochs := c.led.renew(parts)
	c.out.purge(parts)
	c.out.moved()
	c.q.drop(func(b *batch) bool {
		e, ok := epochs[b.partition]
		return ok && b.epoch < e
	})
	// What other sessions acquired of these partitions went with the
	// batches: back to the group.
	c.led.acks.releaseStale(epochs)
}

// stopForGood stops the consumer for err: deliveries report it.
func (c *MultiConsumer) stopForGood(err error) {
	if c.life.fail(err) {
		c.log.Error("stopping", "err", err)
	}
	c.q.signal()
	c.sess.halt()
}

// Err returns the error that stopped the consumer for good, such as a
// deleted topic (ErrTopicDeleted) or a group setting the broker refuses
// (*GroupSettingError), or nil. GetMessages returns it too, once
// the queued messages are delivered; Iter's channel closes.
func (c *MultiConsumer) Err() error { return c.life.err() }

// Assignment returns the partitions the consumer reads now, sorted: in
// group mode those the group assigned to it, otherwise every partition it
// was configured with (and those added to the topic since).
func (c *MultiConsumer) Assignment() []int { return c.ho.assignment() }

// Pause stops the workers from queueing: once Pause returns, no new message
// enters the queue, and workers stop fetching after their current request.
// Messages already queued are still delivered. Resume undoes it.
func (c *MultiConsumer) Pause() {
	c.sess.env.unpaused.Clear()
	c.q.barrier()
}

// Resume lets paused workers fetch and queue again. After Close it does
// nothing.
func (c *MultiConsumer) Resume() {
	// Close clears unpaused as it begins: no Set slips in after it.
	c.life.ifOpen(func() {
		c.sess.env.unpaused.Set()
		c.q.refill() // what waited in the overflow while Process ran
	})
}

// Offsets returns, per partition, the offset after the last message
// delivered to the caller (where consumption would resume if everything
// delivered were committed).
func (c *MultiConsumer) Offsets() map[int]int64 { return c.led.deliveredOffsets() }

// Pending returns how many messages of partitions (every partition when
// none is given) are in the log after Offsets: the sum of high watermark
// minus delivered offset.
func (c *MultiConsumer) Pending(ctx context.Context, partitions ...int) (int64, error) {
	if ctx == nil {
		return 0, errNilContext
	}
	if c.cfg.ShareGroup {
		return 0, fmt.Errorf("Pending: %w", errShareOffsets)
	}
	parts, err := c.owned(partitions)
	if err != nil {
		return 0, err
	}
	ctx, leave, err := c.life.enter(ctx, c.life.reads)
	if err != nil {
		return 0, err
	}
	defer leave()
	b, err := c.kc.logEnds(ctx, parts)
	if err != nil {
		return 0, closedErr(ctx, err)
	}
	var n int64
	delivered := c.led.deliveredOffsets()
	for _, p := range parts {
		if d, ok := delivered[p]; ok {
			n += max(0, b[p].last-d)
		}
	}
	return n, nil
}

// owned returns partitions, or every owned partition when none is given,
// with an error if the consumer is closed or does not own one of them.
func (c *MultiConsumer) owned(partitions []int) ([]int, error) {
	if c.life.isClosed() {
		return nil, ErrClosed
	}
	if err := c.life.err(); err != nil {
		return nil, err
	}
	if len(partitions) == 0 {
		return c.led.partitions(), nil
	}
	if missing := c.led.missing(partitions); len(missing) > 0 {
		return nil, &PartitionError{Topic: c.cfg.Topic, Partition: missing[0], Err: fmt.Errorf("%w: not consumed here (consuming %v)", ErrUnknownPartition, c.led.partitions())}
	}
	return slices.Compact(slices.Sorted(slices.Values(partitions))), nil
}

// Acknowledge settles msgs, records a share group delivered to this member
// (Config.ShareGroup), as kind, and waits for the broker's answers, within
// ctx: nil when every one took; *AckError values, joined, for those the
// broker refused (their acquisition lock had run out) or the member lost.
// A record not delivered by this member, or settled already, is an error
// wrapping ErrNotHeld, and nothing is settled. A settled record is not
// accepted again when the caller comes back for more. AckRenew renews the
// records' locks without waiting. Outside a share group it returns
// ErrNotShareGroup; after Close, ErrClosed.
func (c *MultiConsumer) Acknowledge(ctx context.Context, kind AckKind, msgs ...kafka.Message) error {
	if ctx == nil {
		return errNilContext
	}
	a := c.led.acks
	if a == nil {
		return ErrNotShareGroup
	}
	if kind < AckAccept || kind > AckRenew {
		return &ArgError{Method: "Acknowledge", Arg: "kind", Value: kind, Reason: "AckAccept, AckRelease, AckReject or AckRenew"}
	}
	ctx, leave, err := c.life.enter(ctx, c.life.commits)
	if err != nil {
		return err
	}
	defer leave()
	w, err := a.acknowledge(kind, msgs)
	if err != nil {
		return err
	}
	return closedErr(ctx, a.await(ctx, w))
}

// errShareOffsets is the error of calls about offsets in a share group,
// which has none of its own: the broker hands out records.
var errShareOffsets = fmt.Errorf("multiconsumer: a share group hands out records, not offsets: %w", errors.ErrUnsupported)

// Whence tells Seek what its offset is relative to.
type Whence int

// Whence values: io.Seeker's start, current and end, and SeekAbsolute.
const (
	SeekAbsolute Whence = iota - 1 // the offset itself
	SeekStart                      // from the earliest offset in the log
	SeekCurrent                    // from Offsets(), the next undelivered message
	SeekEnd                        // from the high watermark (the next message to be produced)
)

// String returns the constant's name.
func (w Whence) String() string {
	switch w {
	case SeekAbsolute:
		return "SeekAbsolute"
	case SeekStart:
		return "SeekStart"
	case SeekCurrent:
		return "SeekCurrent"
	case SeekEnd:
		return "SeekEnd"
	}
	return fmt.Sprintf("Whence(%d)", int(w))
}

// Seek moves each of partitions (every partition when none is given) to
// offset relative to whence; the same offset applies to each partition. A
// target outside the log is an *OffsetRangeError and moves nothing. Queued
// messages of the moved partitions are dropped; messages delivered before
// count as consumed, and the new position is committed by the next commit.
func (c *MultiConsumer) Seek(ctx context.Context, offset int64, whence Whence, partitions ...int) error {
	if ctx == nil {
		return errNilContext
	}
	if c.cfg.ShareGroup {
		return fmt.Errorf("Seek: %w", errShareOffsets)
	}
	if whence < SeekAbsolute || whence > SeekEnd {
		return &ArgError{Method: "Seek", Arg: "whence", Value: whence, Reason: "invalid whence: SeekAbsolute, SeekStart, SeekCurrent or SeekEnd"}
	}
	parts, err := c.owned(partitions)
	if err != nil {
		return err
	}
	ctx, leave, err := c.life.enter(ctx, c.life.reads)
	if err != nil {
		return err
	}
	defer leave()
	b, err := c.kc.logBounds(ctx, parts)
	if err != nil {
		return closedErr(ctx, err)
	}
	if c.life.isClosed() { // Close began during the request: move nothing
		return ErrClosed
	}
	targets, epochs, err := c.led.reposition(parts, func(p int, delivered int64) (int64, error) {
		t := offset
		switch whence {
		case SeekStart:
			t += b[p].first
		case SeekCurrent:
			t += delivered
		case SeekEnd:
			t += b[p].last
		}
		if t < b[p].first || t > b[p].last {
			return 0, &OffsetRangeError{Topic: c.cfg.Topic, Partition: p, Offset: t, First: b[p].first, Last: b[p].last}
		}
		return t, nil
	})
	if err != nil {
		return err
	}
	dropped := c.repositioned(targets, epochs)
	c.log.Info("seek", "offset", offset, "whence", whence, "targets", targets, "dropped", dropped)
	return nil
}

// repositioned finishes moving partitions to targets in the ledger (a
// Seek, or Process rewinding): what was taken or queued of them before is
// dropped, an Iter send and a Process retry look again, and their new
// positions are fetched at once, not after a backoff or the long poll in
// flight. It returns the count of queued messages dropped.
func (c *MultiConsumer) repositioned(targets map[int]int64, epochs map[int]uint64) int {
	if len(targets) == 0 {
		return 0
	}
	parts := slices.Collect(maps.Keys(targets))
	c.out.purge(parts)
	c.out.moved()
	c.sess.wake(parts)
	return c.q.drop(func(b *batch) bool {
		e, moved := epochs[b.partition]
		return moved && b.epoch < e
	})
}

// PartitionStats is the state of one partition.
type PartitionStats struct {
	Delivered     int64 // offset after the last message delivered
	Consumed      int64 // offset after the last message the caller came back from
	Committed     int64 // offset stored in the group; -1 if none is known
	HighWatermark int64 // from the last fetch; -1 before the first
	Lag           int64 // HighWatermark - Delivered (queued messages count): -1 if unknown; the group's lag is HighWatermark - Committed
	FetchErrors   int64
	Messages      int64 // messages delivered (or taken by Process), in all
	Bytes         int64 // the size of their keys and values
	// Process: the messages taken and not complete (waiting or being
	// handled), and how long ago the oldest of them was taken: a key
	// stuck on a message holds the partition's commit back that long.
	Incomplete       int
	OldestIncomplete time.Duration
}

// Stats is a snapshot of the consumer's state.
type Stats struct {
	Time     time.Time // when the snapshot was taken
	Topic    string
	Group    string // "" without offset storage
	ClientID string // the Dialer's
	// JoinGroup: the consumer is a group member (group mode).
	JoinGroup bool
	// ShareGroup: the consumer is a share-group member (see Share).
	ShareGroup bool
	// Closed: Close has begun; nothing changes any more.
	Closed bool

	Workers      int
	QueueLen     int // messages fetched and queued for delivery
	QueueSize    int // the bound of QueueLen (see Config.QueueSize)
	Paused       bool
	Commits      int64     // commit requests that stored offsets
	LastCommit   time.Time // the last of them; zero before the first
	CommitErrors int64     // commits that failed (each retry counts)
	// Messages, Bytes and FetchErrors are the partitions' counts summed
	// since New: they do not go back when a partition leaves (group mode).
	Messages    int64
	Bytes       int64
	FetchErrors int64
	// Fetches counts the fetch requests the brokers answered (each
	// worker sends one a round to each leader of its partitions), and
	// FetchedBytes the record batches' bytes they brought: FetchedBytes
	// over Fetches is the mean response size, small when a consumer
	// keeps up with a trickle and near the fetch limits through a backlog.
	Fetches      int64
	FetchedBytes int64
	Partitions   map[int]PartitionStats
	// AddedPartitions are the partitions added to the topic while the
	// consumer ran, which it consumes too, sorted.
	AddedPartitions []int
	// Group mode: the member id and generation of the last join (-1
	// before the first join, and outside group mode), the rebalances this
	// member went through and the time they took (join to assignment
	// applied), and the partitions lost without a commit. The counts of a
	// partition (PartitionStats) start again at 0 when it comes back.
	MemberID       string
	Generation     int32
	Rebalances     int64
	RebalanceTime  time.Duration
	LostPartitions int64
	// LastHeard is when the group coordinator last answered the member
	// (a heartbeat, a join), in group mode. Suspended reports that it has
	// not answered for SessionTimeout: the member is probably out of the
	// group, and delivers nothing new and starts no Process handler until
	// the coordinator answers again (or the partitions are taken away).
	LastHeard time.Time
	Suspended bool
	// JoinFailures counts the member's joins (JoinGroup, SyncGroup) that
	// failed, since New. Each is retried with backoff, unless its error is
	// about a setting (a *GroupSettingError, which stops the consumer: see
	// Err): the coordinator moving, loading or unreachable, the group at
	// the broker's group.max.size, or a sync that a new rebalance
	// interrupted, which is common while members come and go. JoinError is
	// the error of the last join when it failed, nil once a join succeeds.
	JoinFailures int64
	JoinError    error
	// Process is what Process did (totals since New) and is doing.
	Process ProcessStats
	// Share is what a share-group member (Config.ShareGroup) acquired,
	// settled and holds; zero otherwise. MemberID and Generation are its
	// member id and member epoch.
	Share ShareStats
	// Err is the error that stopped the consumer for good (see Err).
	Err error
}

// Stats returns a snapshot of the consumer's state.
func (c *MultiConsumer) Stats() Stats {
	s := Stats{
		Time: time.Now(), Topic: c.cfg.Topic, Group: c.cfg.Group, ClientID: clientID(c.cfg.Dialer),
		JoinGroup: c.cfg.JoinGroup, ShareGroup: c.cfg.ShareGroup, Closed: c.life.isClosed(), Err: c.life.err(),
		Workers: c.sess.count(), QueueLen: c.q.len(), QueueSize: c.cfg.QueueSize,
		Paused: !c.sess.env.unpaused.IsSet(), CommitErrors: c.commits.errs.Load(),
		Fetches: c.sess.env.fetches.Load(), FetchedBytes: c.sess.env.fetched.Load(),
		Process: c.out.totals.snapshot(),
	}
	proc := c.out.processing()
	c.led.stats(&s, proc != nil)
	if c.led.acks != nil {
		c.led.acks.statsInto(&s)
	}
	c.ho.stats(&s)
	c.src.stats(&s)
	if proc != nil {
		proc.stats(&s, s.Time)
	}
	return s
}

// String describes the consumer: <MultiConsumer group=G, topic=T,
// consumers=W>, W the number of workers.
func (c *MultiConsumer) String() string {
	return fmt.Sprintf("<MultiConsumer group=%s, topic=%s, consumers=%d>", c.cfg.Group, c.cfg.Topic, c.sess.count())
}

// Close stops the consumer, as http.Server.Shutdown does a server: it stops
// the workers and cancels their fetches, ends every Iter channel, makes
// pending GetMessages calls return ErrClosed (what they had taken is not
// delivered) and Seek and Pending calls in flight return ErrClosed (a Commit
// in flight finishes within Close's timeout, or returns ErrClosed),
// then, unless ManualCommit or Group is "", commits what the caller came
// back from (consumed, see the package doc): a batch the caller still holds
// is not committed, and will be delivered again. To commit everything
// handled, come back to GetMessages once more (with a cancelled ctx, for
// example) or call Commit before Close.
//
// All of Close, a commit in flight included, takes at most one request
// timeout (the Dialer's). It returns when every goroutine the consumer
// started has ended and every connection is closed, with the final commit's
// error if any. Close is safe to call concurrently and more than once: later
// calls wait for the first to finish and return ErrClosed, like every other
// call after Close.
func (c *MultiConsumer) Close() error {
	begun := c.life.beginClose(func() {
		c.sess.env.unpaused.Clear() // no put completes from now on; Resume cannot undo it
	})
	if !begun {
		<-c.life.closeDone
		return ErrClosed
	}
	defer close(c.life.closeDone)
	// Closed for good, not replaced: an Iter goroutine that reads it from
	// now on sees it closed and gives up its send.
	c.out.shutDown()

	ctx, cancel := c.kc.withTimeout(context.Background())
	defer cancel()
	stopCommits := context.AfterFunc(ctx, c.life.endCommits)
	defer stopCommits()
	c.life.endReads()
	c.q.barrier()
	c.sess.halt()
	c.out.awaitIdle() // any delivery in progress gives up
	if proc := c.out.processing(); proc != nil {
		// Process has stopped taking messages and cancelled its
		// handlers: what they complete within half the time left is
		// committed; the other half is the commit's.
		wait := time.Second
		if dl, ok := ctx.Deadline(); ok {
			wait = time.Until(dl) / 2
		}
		timer := time.NewTimer(wait)
		select {
		case <-proc.idle:
		case <-timer.C:
			c.log.Warn("close: Process handlers still running; what they complete from now on is not committed", "waited", wait)
		}
		timer.Stop()
	}
	c.life.calls.Wait()

	var err error
	if c.sess.share != nil {
		// What the member acquired and did not accept goes back to the
		// group at once, then the share sessions close.
		if rerr := c.led.acks.await(ctx, c.led.acks.releaseAll()); rerr != nil {
			c.log.Info("close: releasing what this member held", "err", rerr)
		}
		c.sess.share.close(ctx)
	}
	if c.cfg.autoCommit() {
		// Even when the topic is gone: a commit that fails costs a
		// round trip; one skipped by mistake redelivers what was done.
		// In group mode the member still runs: a rebalance under way
		// completes, and the commit goes in the new generation.
		err = c.commits.final(ctx)
	}
	c.life.stopHelpers()
	c.life.helpers.Wait() // the committer finishes a commit in flight, within ctx
	if owned := c.Assignment(); c.cfg.JoinGroup && len(owned) > 0 && c.cfg.OnRevoked != nil {
		c.cfg.OnRevoked(context.WithValue(ctx, lostKey{}, false), owned)
	}
	// After the commit: a dynamic member leaves, so that the others take
	// its partitions at once.
	err = errors.Join(err, c.src.leave(ctx))
	c.life.endCommits()
	// The connections in use too: a fetch cancelled by halting the workers still
	// has its kafka-go goroutine reading the response.
	c.kc.close()
	c.log.Info("closed")
	return err
}
