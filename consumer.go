package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
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
	cfg  Config       // set once in New
	log  *slog.Logger // set once in New
	kc   *brokers     // set once in New: the transport, and the requests that are not fetches
	meta *topicMeta   // set once in New: leaders, partitions, deletion; its own lock
	sess *session     // set once in New: the workers and their partitions; its own lock

	q       *queue
	running *event        // set while not paused: workers fetch and queue
	closing *event        // set by Close
	deliver chan struct{} // a token: who holds it may take from the queue and deliver

	mu         sync.Mutex // guards the fields below
	book       *book
	addedParts []int         // partitions added to the topic while running (static mode)
	fatal      error         // the consumer cannot go on (its topic was deleted)
	grp        groupState    // group mode: the member's place in the group
	awaiting   int           // revokes waiting for the caller: consume notifies consumed
	closed     bool          // Close has begun
	closeDone  chan struct{} // closed when Close has returned
	interrupt  chan struct{} // closed and replaced by every Seek, and by Close
	proc       *processor    // the running Process, if any
	iters      int           // Iter goroutines and Messages loops running: Process waits
	holder     *holding      // the Messages loop holding messages it took, if any
	pstats     ProcessStats  // Process's counters

	// Close cancels life when it begins, which ends the requests of calls
	// in flight (Seek, Pending), and commitLife when its one timeout is
	// up, which ends commits in flight. It waits for calls to return
	// before it closes the transport's connections, so that none reopens
	// one.
	life, commitLife       context.Context
	endLife, endCommitLife context.CancelFunc
	calls                  sync.WaitGroup // public calls that make requests; Add under mu while !closed
	helpers                sync.WaitGroup // committer and Iter goroutines
	stopHelp               context.CancelFunc
	commits                *committer    // set once in New when Config.Group is set: the one sender of commits
	rejoin                 chan struct{} // group mode: the topic grew, rebalance
	consumed               broadcast     // the caller came back, while a revoke waits for it
	generations            broadcast     // group mode: an assignment was applied
	sending                sync.RWMutex  // held (read) by an Iter send; a revoke waits for it
	live                   *liveness     // set once in New: group mode: whether the coordinator answered within the session
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
		cfg:       cfg,
		log:       cfg.Logger.With("topic", cfg.Topic, "group", cfg.Group),
		kc:        newBrokers(&cfg),
		q:         newQueue(cfg.QueueSize),
		running:   newEvent(true),
		closing:   newEvent(false),
		deliver:   make(chan struct{}, 1),
		book:      newBook(cfg.AutoCommitEveryN, cfg.AutoCommitEveryT, time.Now()),
		interrupt: make(chan struct{}),
		closeDone: make(chan struct{}),
		rejoin:    make(chan struct{}, 1),
	}
	c.grp.lease = noLease
	c.meta = newTopicMeta(c.kc, c.log, cfg.MetadataMaxAge)
	c.meta.grew, c.meta.gone = c.topicGrew, c.stopForGood
	c.sess = newSession(&fetchEnv{
		topic: cfg.Topic, startOffset: cfg.StartOffset, maxBackoff: cfg.MaxBackoff,
		// A quarter of the queue: big enough to keep the per-batch costs
		// low, small enough that a worker finds room before the queue is
		// empty.
		batchSize: max(1, min(512, cfg.QueueSize/4)),
		log:       c.log, kc: c.kc, meta: c.meta, q: c.q, running: c.running,
		sync: c.syncPositions, highWatermark: c.setHighWatermark, fetchErrors: c.countFetchErrors,
	}, c.cfg.numWorkers)
	c.live = newLiveness(0)
	if cfg.JoinGroup {
		c.live = newLiveness(cfg.SessionTimeout)
	}
	c.life, c.endLife = context.WithCancel(context.Background())
	c.commitLife, c.endCommitLife = context.WithCancel(context.Background())
	parts, err := c.start(ctx)
	if err != nil {
		c.endLife()
		c.endCommitLife()
		// The connections in use too: one still negotiating (the
		// transport's reads are bounded only by the dial timeout) would
		// keep its kafka-go goroutine running after New returned.
		c.kc.close()
		return nil, err
	}
	c.kc.retryConns.Store(true) // the cluster was there: retry dropped connections

	helpCtx, stop := context.WithCancel(context.Background())
	c.stopHelp = stop
	if c.cfg.Group != "" {
		c.commits = newCommitter()
		c.helpers.Go(func() { c.runCommitter(helpCtx) })
	}
	c.assign(parts)
	// After the first assign: the refresher may assign too.
	c.helpers.Go(func() { c.meta.run(helpCtx) })
	if c.cfg.JoinGroup {
		c.helpers.Go(func() { c.runGroup(helpCtx) })
	}
	return c, nil
}

// start resolves the partitions to consume and where each starts.
func (c *MultiConsumer) start(ctx context.Context) ([]int, error) {
	all, leaders, err := c.kc.topicMetadata(ctx)
	if err != nil {
		return nil, err
	}
	parts := all
	c.meta.set(all, leaders)
	if c.cfg.JoinGroup {
		return nil, nil // the group assigns them
	}
	if c.cfg.Partitions != nil {
		var missing []int
		for _, p := range c.cfg.Partitions {
			if _, ok := slices.BinarySearch(all, p); !ok {
				missing = append(missing, p)
			}
		}
		if len(missing) > 0 {
			return nil, fmt.Errorf("%w: topic %q has partitions 0..%d, not %v",
				ErrUnknownPartition, c.cfg.Topic, len(all)-1, missing)
		}
		parts = slices.Sorted(slices.Values(c.cfg.Partitions))
	}
	committed, meta, err := c.kc.committedOffsets(ctx, parts)
	if err != nil {
		return nil, err
	}
	bounds, err := c.kc.logBounds(ctx, parts)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, p := range parts {
		start, from := c.startLocked(p, committed, meta, bounds[p])
		c.log.Info("partition start", "partition", p, "offset", start, "from", from)
	}
	return parts, nil
}

// startOffset is the one rule for where partition p starts, on every path
// (New, a partition the group assigns, a partition added to the topic): at
// the group's committed offset when the log still has it; else, for a
// partition added to the topic since the consumer started, at its first
// offset, whatever StartOffset says, since everything in it is new and
// nothing produced to it may be missed; else at StartOffset. It returns
// the offset and where it came from, for the log.
func (c *MultiConsumer) startOffset(p int, committed map[int]int64, b bounds) (int64, string) {
	if off, ok := committed[p]; ok {
		if off >= b.first && off <= b.last {
			return off, "committed"
		}
		c.log.Warn("committed offset outside the log, resetting", "partition", p,
			"committed", off, "first", b.first, "last", b.last)
	}
	if c.meta.added(p) {
		return b.first, "first (added to the topic)"
	}
	if c.cfg.StartOffset == kafka.LastOffset {
		return b.last, "last"
	}
	return b.first, "first"
}

// startLocked enters partition p in the book where startOffset says, with
// the commit metadata that restores what Process completed past it (the
// last owner's, in group mode). c.mu is held.
func (c *MultiConsumer) startLocked(p int, committed map[int]int64, meta map[int]string, b bounds) (int64, string) {
	start, from := c.startOffset(p, committed, b)
	cm, ok := committed[p]
	if !ok {
		cm = noOffset
	}
	c.book.add(p, start, cm)
	c.book.restore(p, meta[p])
	return start, from
}

func (c *MultiConsumer) autoCommit() bool { return c.cfg.Group != "" && !c.cfg.ManualCommit }

// assign makes the workers fetch parts (sorted), and nothing else: see
// session. After Close has begun, or once the consumer has stopped for
// good, it starts nothing.
func (c *MultiConsumer) assign(parts []int) { c.sess.set(parts) }

// syncPositions brings a worker's fetch positions up to date with seeks and
// puts its partitions that may be fetched at now in pl, grouped by leader,
// in the order of parts. When every one is backing off, it returns how long
// until the first may retry. Partitions without a leader are left out, and
// reported: the metadata should be read again. So are partitions that have
// their share of the queue while Process runs (full): they wait for room.
func (c *MultiConsumer) syncPositions(parts []int, pos map[int]*fetchPos, now time.Time, pl *plan) (idle time.Duration, leaderless, full bool) {
	leaders := c.meta.leaderMap()
	c.mu.Lock()
	defer c.mu.Unlock()
	pl.reset()
	idle = -1
	for _, p := range parts {
		delivered, epoch, ok := c.book.fetchable(p)
		if !ok {
			continue // its worker lets it go at its next round
		}
		fp := pos[p]
		if !fp.synced || fp.epoch != epoch {
			// A new position (a Seek) is tried at once, backoff or not.
			*fp = fetchPos{offset: delivered, epoch: epoch, synced: true}
		}
		if wait := fp.retryAt.Sub(now); wait > 0 {
			if idle < 0 || wait < idle {
				idle = wait
			}
			continue
		}
		l, ok := leaders[p]
		if !ok || l == noLeader {
			leaderless = true
			continue
		}
		if !c.q.isHungry(p) {
			full = true // it waits for room (queue.waitRoom)
			continue
		}
		pl.add(l, p)
	}
	if idle < 0 {
		idle = time.Hour // no partition at all: the worker waits to be stopped
	}
	return idle, leaderless, full
}

func (c *MultiConsumer) setHighWatermark(p int, hwm int64) {
	c.mu.Lock()
	c.book.setHighWatermark(p, hwm)
	c.mu.Unlock()
}

func (c *MultiConsumer) countFetchErrors(parts []int) {
	c.mu.Lock()
	c.book.fetchFailed(parts)
	c.mu.Unlock()
}

// interruptLocked wakes Iter goroutines blocked on a send, so they
// recheck what they hold; c.mu is held. After Close, which closed the
// channel for good, it does nothing.
func (c *MultiConsumer) interruptLocked() {
	if c.closed {
		return
	}
	close(c.interrupt)
	c.interrupt = make(chan struct{})
}

// isClosed reports whether Close has begun.
func (c *MultiConsumer) isClosed() bool { return c.closing.IsSet() }

// Pause stops the workers from queueing: once Pause returns, no new message
// enters the queue, and workers stop fetching after their current request.
// Messages already queued are still delivered. Resume undoes it.
func (c *MultiConsumer) Pause() {
	c.running.Clear()
	c.q.barrier()
}

// Resume lets paused workers fetch and queue again. After Close it does
// nothing.
func (c *MultiConsumer) Resume() {
	c.mu.Lock()
	defer c.mu.Unlock() // Close clears running under mu: no Set slips in after it
	if !c.closed {
		c.running.Set()
		c.q.refill() // what waited in the overflow while Process ran
	}
}

// enter registers a call that makes requests to the cluster, and returns
// ctx bounded by parent as well (c.life for reads, c.commitLife for
// commits). It returns ErrClosed once Close has begun. The caller calls
// leave when its requests are done.
func (c *MultiConsumer) enter(ctx, parent context.Context) (context.Context, func(), error) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, ErrClosed
	}
	c.calls.Add(1)
	c.mu.Unlock()
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(parent, func() { cancel(ErrClosed) })
	return ctx, func() {
		stop()
		cancel(nil)
		c.calls.Done()
	}, nil
}

// closedErr returns ErrClosed for err when ctx (from enter) ended because
// the consumer closed, and err otherwise.
func closedErr(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), ErrClosed) {
		return ErrClosed
	}
	return err
}

// Offsets returns, per partition, the offset after the last message
// delivered to the caller (where consumption would resume if everything
// delivered were committed).
func (c *MultiConsumer) Offsets() map[int]int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.book.deliveredOffsets()
}

// Pending returns how many messages of partitions (every partition when
// none is given) are in the log after Offsets: the sum of high watermark
// minus delivered offset.
func (c *MultiConsumer) Pending(ctx context.Context, partitions ...int) (int64, error) {
	if ctx == nil {
		return 0, errNilContext
	}
	parts, err := c.owned(partitions)
	if err != nil {
		return 0, err
	}
	ctx, leave, err := c.enter(ctx, c.life)
	if err != nil {
		return 0, err
	}
	defer leave()
	b, err := c.kc.logEnds(ctx, parts)
	if err != nil {
		return 0, closedErr(ctx, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var n int64
	delivered := c.book.deliveredOffsets()
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
	if c.isClosed() {
		return nil, ErrClosed
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fatal != nil {
		return nil, c.fatal
	}
	if len(partitions) == 0 {
		return c.book.partitions(), nil
	}
	for _, p := range partitions {
		if !c.book.has(p) {
			return nil, &PartitionError{Topic: c.cfg.Topic, Partition: p, Err: fmt.Errorf("%w: not consumed here (consuming %v)", ErrUnknownPartition, c.book.partitions())}
		}
	}
	return slices.Compact(slices.Sorted(slices.Values(partitions))), nil
}

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
	if whence < SeekAbsolute || whence > SeekEnd {
		return &ArgError{Method: "Seek", Arg: "whence", Value: whence, Reason: "invalid whence: SeekAbsolute, SeekStart, SeekCurrent or SeekEnd"}
	}
	parts, err := c.owned(partitions)
	if err != nil {
		return err
	}
	ctx, leave, err := c.enter(ctx, c.life)
	if err != nil {
		return err
	}
	defer leave()
	b, err := c.kc.logBounds(ctx, parts)
	if err != nil {
		return closedErr(ctx, err)
	}
	c.mu.Lock()
	if c.closed { // Close began during the request: move nothing
		c.mu.Unlock()
		return ErrClosed
	}
	targets := make(map[int]int64, len(parts))
	for _, p := range parts {
		delivered, ok := c.book.deliveredOf(p)
		if !ok { // taken away since owned() looked
			c.mu.Unlock()
			return &PartitionError{Topic: c.cfg.Topic, Partition: p, Err: ErrUnknownPartition}
		}
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
			c.mu.Unlock()
			return &OffsetRangeError{Topic: c.cfg.Topic, Partition: p, Offset: t, First: b[p].first, Last: b[p].last}
		}
		targets[p] = t
	}
	for p := range targets {
		c.book.dropWindow(p) // Process starts afresh there
	}
	epochs := c.repositionLocked(targets)
	c.mu.Unlock()

	dropped := c.q.drop(func(b *batch) bool {
		e, moved := epochs[b.partition]
		return moved && b.epoch < e
	})
	c.log.Info("seek", "offset", offset, "whence", whence, "targets", targets, "dropped", dropped)
	return nil
}

// repositionLocked moves partitions to targets (every one in the book):
// new epochs, fetched from there at once. It returns the new epochs, so
// that the caller drops what was queued before. c.mu is held.
func (c *MultiConsumer) repositionLocked(targets map[int]int64) map[int]uint64 {
	epochs := make(map[int]uint64, len(targets))
	for p, t := range targets {
		epochs[p], _ = c.book.seek(p, t)
		if c.proc != nil {
			c.proc.purge(p) // its waiting messages are stale
		}
	}
	c.interruptLocked() // an Iter goroutine blocked on a send gives its message back
	// Fetch the new positions now, not after a backoff or the long poll
	// in flight.
	c.sess.wake(slices.Collect(maps.Keys(targets)))
	return epochs
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
	Partitions  map[int]PartitionStats
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
	// Err is the error that stopped the consumer for good (see Err).
	Err error
}

// Stats returns a snapshot of the consumer's state.
func (c *MultiConsumer) Stats() Stats {
	queued := c.q.len()
	c.mu.Lock()
	defer c.mu.Unlock()
	s := Stats{
		Time: time.Now(), Topic: c.cfg.Topic, Group: c.cfg.Group, ClientID: clientID(c.cfg.Dialer),
		JoinGroup: c.cfg.JoinGroup, Closed: c.closed,
		Workers: c.sess.count(), QueueLen: queued, QueueSize: c.cfg.QueueSize,
		Paused: !c.running.IsSet(), CommitErrors: c.commitErrors(),
		Commits: c.book.commits, LastCommit: c.book.lastStored,
		Messages: c.book.messages, Bytes: c.book.bytes, FetchErrors: c.book.fetchErrors,
		Partitions:      make(map[int]PartitionStats, c.book.size()),
		AddedPartitions: sortedCopy(c.addedParts),
		Err:             c.fatal,
		MemberID:        c.grp.lease.memberID, Generation: c.grp.lease.generation,
		Rebalances: c.grp.rebalances, RebalanceTime: c.grp.rebalancing, LostPartitions: c.grp.lost,
		LastHeard: c.live.lastHeard(), Suspended: !c.live.alive(),
		JoinFailures: c.grp.joinFailures, JoinError: c.grp.joinErr,
		Process: c.pstats,
	}
	s.Process.HandlerDurations = c.pstats.HandlerDurations.clone()
	c.book.partitionStats(s.Partitions, c.proc != nil)
	if c.proc != nil {
		c.proc.stats(&s, s.Time)
	}
	return s
}

// String describes the consumer: <MultiConsumer group=G, topic=T,
// consumers=W>, W the number of workers.
func (c *MultiConsumer) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
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
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		<-c.closeDone
		return ErrClosed
	}
	c.closed = true
	// Closed for good, not replaced: an Iter goroutine that reads it
	// from now on sees it closed and gives up its send.
	close(c.interrupt)
	c.running.Clear() // no put completes from now on; Resume cannot undo it
	c.mu.Unlock()
	defer close(c.closeDone)

	ctx, cancel := c.kc.withTimeout(context.Background())
	defer cancel()
	stopCommits := context.AfterFunc(ctx, c.endCommitLife)
	defer stopCommits()
	c.closing.Set()
	c.endLife()
	c.q.barrier()
	c.sess.halt()
	c.deliver <- struct{}{} // wait for any delivery in progress to give up
	c.mu.Lock()
	proc := c.proc
	c.mu.Unlock()
	if proc != nil {
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
	c.calls.Wait()

	var err error
	if c.autoCommit() {
		// Even when the topic is gone: a commit that fails costs a
		// round trip; one skipped by mistake redelivers what was done.
		// In group mode the member still runs: a rebalance under way
		// completes, and the commit goes in the new generation.
		err = c.finalCommit(ctx)
	}
	c.stopHelp()
	c.helpers.Wait() // the committer finishes a commit in flight, within ctx
	if owned := c.Assignment(); c.cfg.JoinGroup && len(owned) > 0 && c.cfg.OnRevoked != nil {
		c.cfg.OnRevoked(context.WithValue(ctx, lostKey{}, false), owned)
	}
	if c.cfg.JoinGroup {
		// After the commit: a dynamic member leaves, so that the others
		// take its partitions at once.
		err = errors.Join(err, c.leaveGroup(ctx))
	}
	c.endCommitLife()
	// The connections in use too: a fetch cancelled by halting the workers still
	// has its kafka-go goroutine reading the response.
	c.kc.close()
	c.log.Info("closed")
	return err
}
