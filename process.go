package multiconsumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
)

// Handler handles one message for Process. It returns nil when it is done
// with the message; an error makes the attempt fail (see
// ProcessConfig.MaxAttempts). ctx ends when Process stops: a handler should
// give up then.
type Handler func(ctx context.Context, m kafka.Message) error

// Ordering says which messages Process may handle at the same time.
type Ordering int

// Orderings.
const (
	// ByKey handles messages with the same key in a partition one at a
	// time, in offset order, and different keys in parallel. Messages
	// with a nil key are ordered by partition (among themselves).
	//
	// While handlers take under 10µs a message on average and at least
	// as many partitions have messages as GOMAXPROCS, a partition's
	// waiting messages go to one goroutine at a time, as under
	// ByPartition (a stronger order; no key is looked at). A handler that
	// runs for 2ms or more, or waits for a retry, sends its partition
	// back to keys: its own key waits for it, the others go on.
	ByKey Ordering = iota
	// ByPartition handles the messages of a partition one at a time, in
	// offset order; partitions in parallel.
	ByPartition
	// Unordered handles any message at any time. While handlers take
	// under 10µs, as under ByKey, a partition's waiting messages go to
	// one goroutine at a time until one of them runs for 2ms or fails.
	Unordered
)

// String returns the constant's name.
func (o Ordering) String() string {
	switch o {
	case ByKey:
		return "ByKey"
	case ByPartition:
		return "ByPartition"
	case Unordered:
		return "Unordered"
	}
	return fmt.Sprintf("Ordering(%d)", int(o))
}

// Defaults of the optional ProcessConfig fields.
const (
	DefaultConcurrency  = 16
	DefaultRetryBackoff = 100 * time.Millisecond
)

// ProcessConfig configures Process. The zero value is ByKey, 16 handlers at
// once, retries until success.
type ProcessConfig struct {
	// Ordering of the handlers. Default ByKey.
	Ordering Ordering
	// Concurrency is how many handlers run at once. Default 16; it may be
	// far above the number of partitions. Handlers that take under 10µs a
	// message on average run on at most two goroutines a GOMAXPROCS at once
	// (more would only take turns on the CPUs); one held up for 2ms or
	// more does not count.
	Concurrency int
	// MaxAttempts bounds the attempts at a message: 0 retries until it
	// succeeds or ctx ends; n gives up after n failed attempts (see
	// OnGiveUp).
	MaxAttempts int
	// RetryBackoff is the wait before the first retry, doubling at each
	// retry, capped by Config.MaxBackoff. Default 100ms. Under ByKey and
	// ByPartition the message's key (partition) waits with it: order is
	// kept.
	RetryBackoff time.Duration
	// OnGiveUp is called (the dead-letter hook) with a message that failed
	// MaxAttempts times and a *GiveUpError wrapping the last error. If it
	// returns nil, the message counts as complete. If it is nil or returns
	// an error, Process stops and returns a *GiveUpError, and nothing at
	// or past the message is committed for its partition.
	OnGiveUp func(ctx context.Context, m kafka.Message, err error) error
}

func (pc ProcessConfig) withDefaults() (ProcessConfig, error) {
	bad := func(field string, value any, reason string) (ProcessConfig, error) {
		return ProcessConfig{}, &ConfigError{Struct: "ProcessConfig", Field: field, Value: value, Reason: reason}
	}
	switch {
	case pc.Ordering < ByKey || pc.Ordering > Unordered:
		return bad("Ordering", pc.Ordering, "must be ByKey, ByPartition or Unordered")
	case pc.Concurrency < 0:
		return bad("Concurrency", pc.Concurrency, "must not be negative")
	case pc.MaxAttempts < 0:
		return bad("MaxAttempts", pc.MaxAttempts, "must not be negative (0: retry until success)")
	case pc.RetryBackoff < 0:
		return bad("RetryBackoff", pc.RetryBackoff, "must not be negative")
	}
	if pc.Concurrency == 0 {
		pc.Concurrency = DefaultConcurrency
	}
	if pc.RetryBackoff == 0 {
		pc.RetryBackoff = DefaultRetryBackoff
	}
	return pc, nil
}

// GiveUpError reports a message Process gave up on: the handler failed
// MaxAttempts times. errors.Is and errors.As find the handler's last
// error, and OnGiveUp's.
type GiveUpError struct {
	Topic     string
	Partition int
	Offset    int64
	Attempts  int
	Err       error // the handler's last error
	HookErr   error // OnGiveUp's error; nil if OnGiveUp is nil or was not called yet
}

// Error names the message, then the errors.
func (e *GiveUpError) Error() string {
	s := fmt.Sprintf("multiconsumer: topic %q partition %d offset %d: gave up after %d attempts: %v",
		e.Topic, e.Partition, e.Offset, e.Attempts, e.Err)
	if e.HookErr != nil {
		s += fmt.Sprintf("; OnGiveUp failed: %v", e.HookErr)
	}
	return s
}

// Unwrap returns the handler's error and OnGiveUp's.
func (e *GiveUpError) Unwrap() []error {
	if e.HookErr != nil {
		return []error{e.Err, e.HookErr}
	}
	return []error{e.Err}
}

// PanicError is the error of a handler attempt that panicked.
type PanicError struct {
	Value any    // what the handler panicked with
	Stack []byte // the handler's stack when it panicked
}

// Error gives the panic value; the stack is in Stack (and in the log).
func (e *PanicError) Error() string {
	return fmt.Sprintf("multiconsumer: handler panicked: %v", e.Value)
}

// Unwrap returns the panic value if it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// ProcessStats counts what Process did; its counters are totals since New.
type ProcessStats struct {
	Running  bool  // Process is running
	InFlight int   // handlers running (a message being retried included)
	Waiting  int   // messages taken from the queue, waiting for their turn
	Handled  int64 // messages completed by a handler
	Retries  int64 // failed attempts followed by another
	GivenUp  int64 // messages OnGiveUp took
	Panics   int64 // attempts that panicked
	Skipped  int64 // messages completed before (commit metadata), not handled again
	// HandlerDurations are the durations of the handler attempts. Fast
	// handlers (under 10µs on average) are timed 8 at a time, one clock
	// read for them all: each counts at their mean. Sum stays exact.
	HandlerDurations Histogram
	// Handling lists the messages whose handlers run now, oldest first:
	// a key stuck on one shows here, with its attempts.
	Handling []Handling
}

// Handling is a message whose handler runs.
type Handling struct {
	Partition int
	Offset    int64
	Key       []byte
	Taken     time.Time // when Process took it from the queue
	Started   time.Time // when its first attempt started
	Attempts  int       // attempts that ended (failed) so far
}

// Histogram counts durations in buckets.
type Histogram struct {
	// Bounds are the buckets' upper bounds, ascending. Counts[i] counts
	// the durations d with Bounds[i-1] < d <= Bounds[i]; the last count,
	// Counts[len(Bounds)], those above every bound.
	Bounds []time.Duration
	Counts []int64
	Count  int64         // durations counted
	Sum    time.Duration // their sum
}

// handlerBounds are the bounds of ProcessStats.HandlerDurations: from 100µs
// to 30s, about 2.5x apart.
var handlerBounds = []time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second, 30 * time.Second,
}

// observe counts d.
func (h *Histogram) observe(d time.Duration) { h.observeN(d, 1) }

// observeN counts n durations of sum d, each at their mean.
func (h *Histogram) observeN(d time.Duration, n int) {
	if h.Counts == nil {
		h.Bounds, h.Counts = handlerBounds, make([]int64, len(handlerBounds)+1)
	}
	i := 0
	if mean := d / time.Duration(n); mean > h.Bounds[0] { // most handlers of a fast stream take less
		i, _ = slices.BinarySearch(h.Bounds, mean)
	}
	h.Counts[i] += int64(n)
	h.Count += int64(n)
	h.Sum += d
}

// reset counts nothing again, and keeps the buckets.
func (h *Histogram) reset() {
	clear(h.Counts)
	h.Count, h.Sum = 0, 0
}

// clone returns a copy that shares nothing with h.
func (h Histogram) clone() Histogram {
	if h.Counts == nil {
		h.Bounds, h.Counts = handlerBounds, make([]int64, len(handlerBounds)+1)
	}
	h.Bounds, h.Counts = slices.Clone(h.Bounds), slices.Clone(h.Counts)
	return h
}

// Process takes messages from the consumer and runs h on each, up to
// pc.Concurrency at once, in the order pc.Ordering asks for. A message is
// consumed when its handler completes (returns nil), not when it is taken:
// the committed offset of a partition is its lowest incomplete offset, and
// the offsets completed above it are stored in the commit's metadata, so
// that a restart (or the partition's next owner) does not handle them
// again. Auto-commit counts completed messages. Committing is as
// GetMessages's otherwise (Commit, ManualCommit, Close).
//
// A failed attempt is retried after a backoff (see ProcessConfig); a
// handler that panics fails its attempt with a *PanicError. An attempt that
// fails because ctx ended is not retried, nor given up: the message stays
// incomplete.
//
// Process runs until ctx ends (it returns ctx.Err()), Close (ErrClosed),
// the consumer stops for good (its error), or it gives up on a message (a
// *GiveUpError). Then it stops taking messages, cancels the handlers' ctx,
// waits for them, and commits what completed (unless ManualCommit, or
// Close, which commits). Messages it took and did not complete are
// fetched again, for the next call.
//
// While it runs, GetMessages and a second Process return ErrBusy, Messages
// yields it, and Iter returns a closed channel; while an Iter channel is
// open or a Messages loop runs, Process returns ErrBusy.
//
// At most Config.QueueSize messages wait beside the handlers running, and
// each partition gets its share of them (QueueSize / partitions): a key
// whose message is retried holds back its own messages only, until they
// fill its partition's share, and one partition's backlog never keeps the
// others' messages from the handlers. What a fetch brings past a
// partition's share waits outside that bound, and the partition is not
// fetched again until it has been handed over: at most one fetch response
// per partition (as a worker holds its response while GetMessages's queue
// is full). A partition whose completed offsets would no longer fit in the
// commit metadata (4096 bytes) starts no more handlers until its lowest
// incomplete message completes.
//
// In group mode, a partition revoked while Process runs starts no more
// handlers; those running finish (up to RebalanceTimeout), what completed
// is committed, then the partition goes.
//
// Close stops Process as ctx would, and waits for its handlers for half
// its one timeout before the final commit: what they complete later is not
// committed, and a handler that ignores its ctx outlives Close. (A Close
// called from a handler waits that half for its own handler.) A retry's
// backoff ends early when its partition moves (Seek) or goes (revoke).
func (c *MultiConsumer) Process(ctx context.Context, pc ProcessConfig, h Handler) error {
	if ctx == nil {
		return errNilContext
	}
	if h == nil {
		return &ArgError{Method: "Process", Arg: "h", Value: h, Reason: "nil Handler"}
	}
	pc, err := pc.withDefaults()
	if err != nil {
		return err
	}
	p := newProcessor(pc, h, c.out, c.log, c.cfg.MaxBackoff)
	ran, err := c.out.process(ctx, p)
	if ran && !c.life.isClosed() { // else Close commits
		c.repositioned(c.led.rewind())
		if c.cfg.autoCommit() {
			cctx, cancel := c.kc.withTimeout(c.life.commits)
			if cerr := c.commits.commit(cctx); cerr != nil {
				err = errors.Join(err, cerr)
			}
			cancel()
		}
	}
	return err
}

// process runs p, unless the consumer is closed or busy (a Process, an
// Iter, a Messages loop): it reports whether p ran, and its error.
func (d *delivery) process(ctx context.Context, p *processor) (bool, error) {
	if d.life.isClosed() {
		return false, ErrClosed
	}
	d.mu.Lock()
	switch {
	case d.shut:
		d.mu.Unlock()
		return false, ErrClosed
	case d.proc != nil || d.iters > 0:
		d.mu.Unlock()
		return false, ErrBusy
	}
	d.proc = p
	d.mu.Unlock()
	d.led.setProcessing(true)
	defer func() {
		d.led.setProcessing(false)
		d.mu.Lock()
		d.proc = nil
		d.mu.Unlock()
	}()
	if _, err := d.acquire(ctx, nil, p); err != nil { // a GetMessages call in flight ends first
		close(p.idle)
		return false, err
	}
	d.consume() // what GetMessages delivered before: the caller came back
	d.q.setFair(true)
	return true, p.run(ctx)
}

// procTotals are Process's counters since New.
type procTotals struct {
	mu sync.Mutex // guards s
	s  ProcessStats
}

// merge adds the counts of a Process that stops.
func (t *procTotals) merge(l *ProcessStats) {
	t.mu.Lock()
	defer t.mu.Unlock()
	addCounts(&t.s, l)
}

// addCounts adds l's counters and histogram to s.
func addCounts(s, l *ProcessStats) {
	s.Handled += l.Handled
	s.Retries += l.Retries
	s.GivenUp += l.GivenUp
	s.Panics += l.Panics
	s.Skipped += l.Skipped
	if l.HandlerDurations.Counts != nil {
		if s.HandlerDurations.Counts == nil {
			s.HandlerDurations = l.HandlerDurations.clone()
		} else {
			for i, n := range l.HandlerDurations.Counts {
				s.HandlerDurations.Counts[i] += n
			}
			s.HandlerDurations.Count += l.HandlerDurations.Count
			s.HandlerDurations.Sum += l.HandlerDurations.Sum
		}
	}
}

// snapshot returns the counters, with a copy of the histogram.
func (t *procTotals) snapshot() ProcessStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.s
	s.HandlerDurations = t.s.HandlerDurations.clone()
	return s
}

// processor is a running Process: the dispatcher. The feeder (the Process
// call's goroutine, holding the delivery token) takes batches from the
// queue and puts their messages in lanes; Concurrency hands (the handler
// goroutines) each claim a run of messages from the ready lanes, begun in
// the ledger, handle them one after another, and settle them: a hand takes
// the dispatcher's lock, and the ledger's, once per run, not once per
// message. A run is as long as its handlers take about runBudget, and no
// longer than its share of the waiting messages: with slow handlers it is
// one message, as if each message had a hand of its own.
//
// Each message's window (its partition's offsets under Process) is the
// ledger's: the processor takes, begins and finishes messages through the
// ledger's methods.
type processor struct {
	pc         ProcessConfig // set once
	h          Handler       // set once
	out        *delivery     // set once: the queue, the ledger, the token, liveness, the lifecycle
	log        *slog.Logger  // set once
	maxBackoff time.Duration // set once
	totals     *procTotals   // the consumer's, since New; its own lock
	acks       *acker        // set once: a share group's, which settles each message; nil otherwise
	seed       maphash.Seed  // set once: hashes keys to lanes
	procs      int           // set once: GOMAXPROCS when Process began
	born       time.Time     // set once: what the hands' start times count from
	hands      []*hand       // set once: Concurrency of them
	stop       chan struct{}
	kick       chan struct{} // the feeder sweeps from now on
	idle       chan struct{} // closed when every handler has returned

	stopped  atomic.Bool
	mu       sync.Mutex // guards the fields below, and the hands' runs (see hand); held while it calls the ledger or the queue
	work     sync.Cond  // on mu: an idle hand waits for a ready lane, or the stop
	err      error      // why Process stops: a message given up on
	local    ProcessStats
	lanes    laneTable       // by bucket: the lanes of a bucket chain
	ready    ring[*lane]     // lanes with a message that may start now
	blocked  map[int][]*lane // lanes waiting for room in their partition's metadata
	waiting  int             // messages in lanes
	running  int             // hands with a run
	held     int             // of them, held up by a handler (hand.held)
	idlers   int             // hands waiting for work
	perMsg   time.Duration   // a run's time per message, averaged over runs; 0 before the first
	sweeping bool            // the feeder sweeps every sweepEvery
	spare    []*lane         // lanes dropped, for new keys (each with its buffers)
	pruneAt  int             // how many lanes prune the idle ones
	spans    [][2]int        // add's scratch: the stretches of a batch taken
	claims   uint64          // claims so far: tells a lane put in the run being claimed (lane.claimed)
	joins    []stretchOf     // sortOut's scratch: the messages of a keyed lane that join the run
	pruning  []*lane         // prune's scratch
	// sorted: ByKey, per partition, its messages sorted out to their
	// keys' lanes (sortOut), waiting there or in a run, not settled yet.
	// While there are any, the partition's lane is not claimed whole.
	sorted []int
}

// Runs: a hand claims at most maxRun messages at once, and about as many as
// its handlers take runBudget for. A run's messages complete (and move the
// commit) when it ends; a retried message ends its run at once.
const (
	maxRun    = 64
	runBudget = 200 * time.Microsecond
	// slowHandler is how long a handler runs before its hand is swept,
	// every sweepEvery.
	slowHandler = 2 * time.Millisecond
	sweepEvery  = time.Millisecond
	// keepLanes is how many lanes (keys) may stay idle: about 250 B each.
	// Past it a key's lane goes as its run settles it idle (dropIdle); a
	// prune scans them all only when twice as many are (most of them busy).
	keepLanes = 16384
	// aliveEvery is how often a run asks liveness again.
	aliveEvery = time.Millisecond
	// Handlers that take under fastHandler on average (the runs' time
	// per message) are timed clockEvery at a time: each counts at their
	// mean, in HandlerDurations' first bucket (100µs) unless one of
	// them took longer. A clock read costs about as much as the rest of
	// a near-empty message's handling.
	fastHandler = 10 * time.Microsecond
	clockEvery  = 8
)

// lane is a FIFO of messages taken and waiting to start. An exclusive lane
// (a key, or a partition) runs one at a time; under Unordered a partition's
// lane starts its messages as fast as there is room.
//
// Under ByKey a partition's lane is keyed: its messages go to their keys
// only as a hand claims them (sortOut), and most go straight into the
// hand's run; a key's lane holds those that must wait for their key.
type lane struct {
	partition int
	kind      laneKind
	bucket    uint64 // in processor.lanes: a hash of the partition and the key
	collide   *lane  // the next lane of the bucket
	live      bool   // in lanes
	exclusive bool
	keyed     bool          // ByKey: a partition's lane, whose messages go to their keys' lanes as they are claimed
	mayWhole  bool          // ByKey, Unordered: a partition's lane, claimed whole at times (processor.whole)
	msgs      ring[stretch] // the messages waiting, in order
	n         int           // how many
	running   int           // its messages in a hand's run (exclusive: of one run)
	claimed   uint64        // exclusive: the claim that last put its messages in a run (processor.claims)
	inReady   bool
	blocked   bool
	stuck     bool // exclusive: a message was left incomplete; nothing more starts
}

// laneKind tells apart the lanes a bucket may chain.
type laneKind uint8

const (
	partLane   laneKind = iota // a partition's: ByPartition, Unordered, and ByKey's keyed lanes
	keyLane                    // ByKey: a key's
	nilKeyLane                 // ByKey: the messages without a key
)

// taking is what the messages of one batch that Process took share: the
// batch's messages (the queue lent them to Process: nothing else uses
// them), the partition's epoch and window when they were taken, which tell
// whether they are still ours, and when.
type taking struct {
	msgs      []kafka.Message
	partition int
	epoch     uint64
	win       *window
	at        time.Time
	// left counts the messages in lanes or runs not settled yet, while
	// msgs is a whole array of the queue's (batch.whole); the last to
	// settle gives the array back (letGo). 0 otherwise. Guarded by p.mu.
	left int
}

// stretch is messages of one batch waiting in a lane: from.msgs[lo:hi].
// A lane holds the messages of a batch as one stretch (ByKey: each
// message, unless the next is of the same key), not one entry each: a
// batch is added, and a run claimed, without a push and a pop a message.
type stretch struct {
	from   *taking
	lo, hi int32
}

// task is a message to handle: m is from.msgs[i]. off is m's offset, kept
// beside it: settling a run reads the tasks only, not the messages.
type task struct {
	m    *kafka.Message
	off  int64
	from *taking
	lane *lane
	i    int32
}

// pushRange puts from.msgs[lo:hi] at l's tail, in the tail's stretch if it
// ends where they begin.
func (l *lane) pushRange(from *taking, lo, hi int) {
	l.n += hi - lo
	if r := &l.msgs; r.n > 0 {
		if s := &r.buf[r.at(r.n-1)]; s.from == from && int(s.hi) == lo {
			s.hi = int32(hi)
			return
		}
	}
	l.msgs.push(stretch{from: from, lo: int32(lo), hi: int32(hi)})
}

// pushFront puts t's message back at l's head.
func (l *lane) pushFront(t *task) {
	l.n++
	if r := &l.msgs; r.n > 0 {
		if s := &r.buf[r.head]; s.from == t.from && s.lo == t.i+1 {
			s.lo--
			return
		}
	}
	l.msgs.pushFront(stretch{from: t.from, lo: t.i, hi: t.i + 1})
}

// putBack puts t's message, which was claimed and did not start, back in
// l: at its head when l is exclusive (one run at a time holds its
// messages, given back in order), and in offset order in a partition's
// lane under Unordered, whose messages several runs may give back, the
// later first. Either way l's head stays its lowest message: the one that
// may be its partition's lowest incomplete, which always begins (see
// giveBackLocked).
func (l *lane) putBack(t *task) {
	if l.exclusive {
		l.pushFront(t)
		return
	}
	l.n++
	r := &l.msgs
	first := func(j int) int64 { s := &r.buf[r.at(j)]; return s.from.msgs[s.lo].Offset }
	for j := range r.n {
		s := &r.buf[r.at(j)]
		if first(j) > t.off {
			if s.from == t.from && s.lo == t.i+1 {
				s.lo-- // just before s
			} else {
				r.insert(j, stretch{from: t.from, lo: t.i, hi: t.i + 1})
			}
			return
		}
		if s.from == t.from && s.hi == t.i && (j+1 == r.n || first(j+1) > t.off) {
			s.hi++ // just after s
			return
		}
	}
	r.push(stretch{from: t.from, lo: t.i, hi: t.i + 1})
}

// head returns l's first stretch; l has messages.
func (l *lane) head() *stretch { return &l.msgs.buf[l.msgs.head] }

// popN drops the first k messages of l's first stretch.
func (l *lane) popN(k int) {
	l.n -= k
	if s := l.head(); int(s.hi-s.lo) > k {
		s.lo += int32(k)
	} else {
		l.msgs.pop()
	}
}

// drain drops l's messages, calling each (if not nil) on each, in order.
func (l *lane) drain(each func(m *kafka.Message)) {
	for l.msgs.len() > 0 {
		s := l.msgs.pop()
		if each != nil {
			for i := s.lo; i < s.hi; i++ {
				each(&s.from.msgs[i])
			}
		}
	}
	l.n = 0
}

// hand is one of the handler goroutines, and its run: the messages it
// claimed (begun in the ledger), which it handles in order. run[0] left the
// queue's bound when it was claimed (it starts at once), the others leave
// it when they are settled, or go back to their lanes.
//
// A hand held up by a handler (slowHandler) is swept: what it completed
// is settled and what it did not start goes back to the lanes, by whoever
// sweeps, so that one slow or stuck handler holds back neither the commit
// nor other messages. pos keeps the hand and a sweep apart: the hand starts
// run[next] only if it moves next past it below limit, a sweep takes
// run[next:limit] only if it moves limit down to next, each with one
// compare-and-swap.
type hand struct {
	run     []task        // guarded by p.mu; its slice changed only by the hand
	settled int           // guarded by p.mu: run[:settled] are settled
	pos     atomic.Uint64 // next<<32 | limit: run[next] starts next; run[limit:] are not the hand's any more
	// counted is how many of stats.Handled a sweep counted already;
	// guarded by p.mu.
	counted int64
	ends    []outcome // the hand's own: how run[:len(ends)] ended
	// stats counts the run's completions, the hand's own until they are
	// settled (under p.mu, at once with the ledger).
	stats ProcessStats
	// For Stats, while the hand handles run[next-1]: when its first
	// attempt began (since p.born, 0: not yet), its failed attempts.
	began     atomic.Int64
	beganAt   int64 // the hand's own copy of began
	attempts  atomic.Int32
	interrupt <-chan struct{} // read before the run was claimed: a Seek or a revoke since closes it
	claimed   time.Time       // when the run was claimed, the hand's own
	// timeEach: the hand reads the clock after each message it handles;
	// if not (fast handlers), after every clockEvery, and untimed
	// messages completed since the last read count at their mean. The
	// hand's own.
	timeEach bool
	untimed  int
	aliveAt  time.Time // when the run last found the member alive, the hand's own
	// held: a sweep found the hand held up by a handler (slowHandler);
	// it does not count against the hands near-empty handlers run on
	// (see wakeLocked) until its run ends. Guarded by p.mu.
	held     bool
	released []partCount // scratch for settle: guarded by p.mu
	spans    []stretchOf // scratch for claim: guarded by p.mu
}

// stretchOf is a stretch of lane's, claimed.
type stretchOf struct {
	stretch
	lane *lane
}

func position(next, limit int) uint64      { return uint64(next)<<32 | uint64(limit) }
func positions(w uint64) (next, limit int) { return int(w >> 32), int(uint32(w)) }

// partCount is a count of messages of a partition.
type partCount struct{ p, n int }

func newProcessor(pc ProcessConfig, h Handler, out *delivery, log *slog.Logger, maxBackoff time.Duration) *processor {
	p := &processor{
		pc: pc, h: h, out: out, log: log, maxBackoff: maxBackoff, totals: &out.totals, acks: out.led.acks,
		seed:    maphash.MakeSeed(),
		procs:   max(1, runtime.GOMAXPROCS(0)),
		born:    time.Now(),
		blocked: make(map[int][]*lane),
		pruneAt: 2 * keepLanes,
		stop:    make(chan struct{}, 1),
		kick:    make(chan struct{}, 1),
		idle:    make(chan struct{}),
		hands:   make([]*hand, pc.Concurrency),
	}
	p.work.L = &p.mu
	for i := range p.hands {
		p.hands[i] = &hand{}
	}
	return p
}

func (p *processor) run(ctx context.Context) error {
	q := p.out.q
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handlers sync.WaitGroup
	for _, hd := range p.hands {
		handlers.Go(func() { p.serve(hctx, hd) })
	}
	err := p.feed(ctx)

	// Stop: start nothing more, let go of the waiting messages, cancel
	// the handlers and wait for them. The delivery token goes first:
	// Close waits for it, then for the handlers, within its timeout.
	p.mu.Lock()
	p.stopped.Store(true)
	p.work.Broadcast()
	// What the hands completed counts, even behind a handler that ignores
	// its ctx; what they did not start ends incomplete.
	due := p.sweep(true)
	for _, l := range p.allLanes() {
		q.release(l.partition, l.n)
		if p.acks != nil {
			// Taken from the queue and not started: back to the group
			// (an offsets consumer fetches them again instead, rewind).
			l.drain(func(m *kafka.Message) { p.acks.decide(m.Partition, m.Offset, AckRelease) })
		}
	}
	p.waiting = 0
	p.lanes, p.ready, p.blocked = laneTable{}, ring[*lane]{}, nil
	p.mu.Unlock()
	if due {
		p.out.wake()
	}
	q.setFair(false)
	cancel()
	p.out.release()
	handlers.Wait()
	p.mu.Lock()
	p.totals.merge(&p.local)
	p.local = ProcessStats{}
	p.mu.Unlock()
	close(p.idle)
	return err
}

// feed takes what the workers queue and hands it to the lanes, and sweeps
// the hands every sweepEvery, until Process must stop.
func (p *processor) feed(ctx context.Context) error {
	q, life := p.out.q, p.out.life
	tick := time.NewTicker(sweepEvery)
	defer tick.Stop()
	for {
		p.mu.Lock()
		err := p.err
		var sweeps <-chan time.Time // only while a hand has a run: an idle Process is not woken every ms
		if p.sweeping = p.running > 0; p.sweeping {
			sweeps = tick.C
		}
		p.mu.Unlock()
		select {
		case <-sweeps:
			p.sweepSlow()
		default:
		}
		if err == nil {
			err = life.err()
		}
		if err != nil {
			return err
		}
		select { // not only when the queue is empty
		case <-ctx.Done():
			return ctx.Err()
		case <-life.closing.Done():
			return ErrClosed
		default:
		}
		if n, changed := q.pending(); n == 0 {
			select {
			case <-changed:
			case <-p.kick:
			case <-sweeps:
				p.sweepSlow()
			case <-p.stop:
			case <-ctx.Done():
				return ctx.Err()
			case <-life.closing.Done():
				return ErrClosed
			}
			continue
		}
		// One batch at a time: the hands settle and claim in between (the
		// queue lends up to QueueSize messages at once), and start on the
		// first batch while the next is added.
		for _, b := range q.lend() {
			p.mu.Lock()
			p.add(&b)
			p.wakeLocked()
			p.mu.Unlock()
		}
	}
}

// sweepSlow sweeps the hands held up by a handler.
func (p *processor) sweepSlow() {
	p.mu.Lock()
	due := p.sweep(false)
	p.wakeLocked() // for a hand found held up
	p.mu.Unlock()
	if due {
		p.out.wake()
	}
}

// add puts the messages of b, which the queue holds, in their partition's
// lane (ByKey: keyed, sorted out by key as they are claimed), and lets the
// queue have back those it will not handle (stale, or complete already).
// p.mu is held.
//
// The ledger's lock is held only while the window takes the offsets.
// Nothing is lost in between: a message waiting in a lane is not in
// flight, and its run checks that it is still current when it begins.
func (p *processor) add(b *batch) {
	from := &taking{msgs: b.msgs, partition: b.partition, epoch: b.epoch, at: time.Now()}
	spans := p.spans[:0]
	_, skipped, ok := p.out.led.takeBatch(b, from.at, func(lo, hi int, w *window) {
		from.win = w
		spans = append(spans, [2]int{lo, hi})
	})
	p.spans = spans[:0]
	if len(spans) > 0 {
		l := p.partLane(b.partition) // a batch is one partition's
		for _, sp := range spans {
			p.waiting += sp[1] - sp[0]
			from.left += sp[1] - sp[0]
			l.pushRange(from, sp[0], sp[1])
		}
		p.readyLocked(l)
	}
	if !ok {
		p.out.q.release(b.partition, len(b.msgs)) // a Seek or a revoke since it was fetched
	}
	if skipped > 0 {
		p.local.Skipped += int64(skipped)
		p.out.q.release(b.partition, skipped)
	}
	if !b.whole || p.acks != nil {
		from.left = 0 // its array is not given back
	} else if from.left == 0 {
		p.out.q.arrays.put(b.msgs) // nothing of it to handle
	}
}

// letGo counts n messages of from settled, or dropped from their lane,
// and gives from's array back to the queue after the last. Nothing reads
// a message after it is counted here: its handler had a copy. p.mu is
// held.
func (p *processor) letGo(from *taking, n int) {
	if from.left == 0 {
		return // not a whole array
	}
	if from.left -= n; from.left <= 0 {
		from.left = 0
		p.out.q.arrays.put(from.msgs)
		from.msgs = nil // a use past the last would fail, not read another batch's
	}
}

// partLane returns partition's lane, made if need be. p.mu is held.
func (p *processor) partLane(partition int) *lane {
	return p.laneOf(partition, uint64(partition)*0x9e3779b97f4a7c15, partLane) // spreads partitions; a collision only chains
}

// keyLane returns the lane of the messages of partition with key (ByKey),
// made if need be. p.mu is held.
//
// Lanes are found by a hash of the key, not by the key as a string: a
// lane stays when its key has nothing waiting (until prune), and a new
// key's lane reuses a dropped lane: neither a map nor the heap sees each
// of a key's messages.
//
// A key is its 64-bit hash (seeded for each Process): the lane keeps no
// copy of the key, and a lookup reads no key but the message's. Two keys
// of a partition whose hashes are equal (about one pair in 2^64) would
// share a lane: handled one at a time, each still in order. Partitions
// never share one: their lanes chain in a bucket.
func (p *processor) keyLane(partition int, key []byte) *lane {
	bucket := uint64(partition) * 0x9e3779b97f4a7c15
	if key == nil {
		return p.laneOf(partition, bucket+1, nilKeyLane)
	}
	return p.laneOf(partition, bucket^maphash.Bytes(p.seed, key), keyLane)
}

// laneOf returns the lane of partition and kind in bucket, made if need
// be. p.mu is held.
func (p *processor) laneOf(partition int, bucket uint64, kind laneKind) *lane {
	first := p.lanes.get(bucket)
	for l := first; l != nil; l = l.collide {
		if l.partition == partition && l.kind == kind {
			return l
		}
	}
	if p.lanes.len() >= p.pruneAt {
		p.prune()
	}
	var l *lane
	if n := len(p.spare); n > 0 {
		l, p.spare = p.spare[n-1], p.spare[:n-1]
	} else {
		l = &lane{}
	}
	l.partition, l.kind, l.bucket, l.collide, l.live = partition, kind, bucket, first, true
	l.keyed = kind == partLane && p.pc.Ordering == ByKey
	l.mayWhole = kind == partLane && p.pc.Ordering != ByPartition
	l.exclusive = kind != partLane || p.pc.Ordering == ByPartition
	p.lanes.set(bucket, l)
	return l
}

// sameKey reports whether a and b are the same key (a nil key is not
// an empty one).
func sameKey(a, b []byte) bool { return (a == nil) == (b == nil) && bytes.Equal(a, b) }

// dropLane forgets l, which is idle, and keeps it for the next key. p.mu
// is held.
func (p *processor) dropLane(l *lane) {
	if !l.live {
		return // dropped already
	}
	if first := p.lanes.get(l.bucket); first == l {
		if l.collide == nil {
			p.lanes.del(l.bucket)
		} else {
			p.lanes.set(l.bucket, l.collide)
		}
	} else {
		for o := first; o != nil; o = o.collide {
			if o.collide == l {
				o.collide = l.collide
				break
			}
		}
	}
	*l = lane{msgs: ring[stretch]{buf: l.msgs.buf}}
	p.spare = append(p.spare, l)
}

// prune drops the idle lanes (no message waiting, none in a run): lanes
// stay idle so that a key that comes back finds its lane, with no table
// insert or delete, but no more than about keepLanes of them. p.mu is held.
func (p *processor) prune() {
	all := p.pruning[:0]
	p.lanes.all(func(first *lane) {
		for l := first; l != nil; l = l.collide {
			all = append(all, l)
		}
	})
	for _, l := range all {
		if l.n == 0 && l.running == 0 && !l.inReady {
			p.dropLane(l)
		}
	}
	clear(all)
	p.pruning = all[:0]
	p.pruneAt = 2 * max(keepLanes, p.lanes.len())
}

// allLanes returns every lane. p.mu is held.
func (p *processor) allLanes() []*lane {
	var out []*lane
	p.lanes.all(func(first *lane) {
		for l := first; l != nil; l = l.collide {
			out = append(out, l)
		}
	})
	return out
}

// wakeLocked wakes an idle hand if a lane is ready; a hand that claims and
// leaves lanes ready wakes the next. p.mu is held.
//
// Near-empty handlers (under fastHandler a message, on average) are
// CPU-bound: they run on no more hands at once than fastHands a P, which
// keep claiming as they settle; more would only take turns on the Ps and
// contend for p.mu. A hand held up by its handler (a sweep found it so,
// within slowHandler and sweepEvery) does not count: a handler that
// blocks lets another hand run.
func (p *processor) wakeLocked() {
	if p.idlers > 0 && p.ready.len() > 0 && !p.stopped.Load() && !p.enoughRun() {
		p.work.Signal()
	}
}

// fastHands is how many hands run near-empty handlers at once, per P: one
// more than the Ps keeps them busy while a handler waits a little (under
// slowHandler, which the sweep does not see). BenchmarkProcessDispatch
// with 16 hands on 2 Ps, ByKey: 240-280 ns a message without the bound,
// 209-226 with one hand a P, 239 with two.
const fastHands = 2

// enoughRun reports whether as many hands run near-empty handlers as may
// (fastHands a P), none of them held up. p.mu is held.
func (p *processor) enoughRun() bool {
	return p.perMsg > 0 && p.perMsg <= fastHandler && p.running-p.held >= fastHands*p.procs
}

// readyLocked puts l, which has messages, in the ready lanes if it may
// start. p.mu is held.
func (p *processor) readyLocked(l *lane) {
	if l.mayStart() {
		l.inReady = true
		p.ready.push(l)
	}
}

// mayStart reports whether l, which has messages, may join the ready
// lanes.
func (l *lane) mayStart() bool {
	return !(l.exclusive && l.running > 0) && !l.inReady && !l.blocked && !l.stuck
}

// serve is a hand: it settles its run, claims the next, handles it, until
// Process stops.
func (p *processor) serve(ctx context.Context, hd *hand) {
	for {
		p.mu.Lock()
		due := p.settle(hd)
		for !p.claim(hd) {
			if p.stopped.Load() {
				p.mu.Unlock()
				if due {
					p.out.wake()
				}
				return
			}
			p.idlers++
			p.work.Wait()
			p.idlers--
		}
		p.mu.Unlock()
		if due {
			p.out.wake()
		}
		p.handleRun(ctx, hd)
	}
}

// runSize is how many messages a hand claims now. p.mu is held.
func (p *processor) runSize() int {
	if p.acks != nil || p.perMsg == 0 {
		return 1 // a share group settles each record alone; and the handlers' time is not known yet
	}
	hands := p.pc.Concurrency
	if p.perMsg <= fastHandler {
		// Near-empty handlers are CPU-bound: no more hands run at once
		// than there are Ps, and a run of the waiting messages split
		// among those is longer, which spreads the claim and the settle
		// over more messages (25 a run instead of 8, 1.25x less CPU a
		// message in BenchmarkProcessDispatch with 16 hands on 2 Ps).
		hands = min(hands, p.procs)
	}
	return max(1, min(maxRun, p.waiting/hands, int(runBudget/p.perMsg)))
}

// claim gives hd a run of messages of the ready lanes, begun in the ledger,
// and reports whether it did. The messages of an exclusive lane go to one
// run, in order, and the lane is not ready again until the run settles.
// p.mu is held.
func (p *processor) claim(hd *hand) bool {
	if p.stopped.Load() || p.ready.len() == 0 {
		return false
	}
	n := p.runSize()
	hd.interrupt = p.out.interrupted() // before begin checks that the messages are current
	released := hd.released[:0]
	led := p.out.led
	// Under the ledger's lock, only the stretches begun are noted: the
	// run's tasks are written after (one a message), so that a worker
	// asking the ledger whether to fetch waits for less.
	spans, taken := hd.spans[:0], 0
	p.claims++
	led.lockRuns()
	for taken < n && p.ready.len() > 0 {
		l := p.ready.pop()
		l.inReady = false
		if l.mayWhole && l.running == 0 {
			l.exclusive = p.whole(l)
		}
		stale := 0
		for l.n > 0 && taken < n {
			s := l.head()
			from := s.from
			k := min(n-taken, int(s.hi-s.lo))
			if l.keyed && !l.exclusive && led.currentLocked(from.partition, from.epoch, from.win) {
				var nb int
				var state beginState
				spans, nb, state = p.claimKeyed(l, k, spans)
				taken += nb
				if state == beginBlocked {
					l.blocked = true
					p.blocked[l.partition] = append(p.blocked[l.partition], l)
					break
				}
				continue
			}
			begun, state := led.beginLocked(from.partition, from.epoch, from.win, from.msgs[s.lo].Offset, k)
			if state == beginStale {
				k = int(s.hi - s.lo) // a Seek or a revoke since it was taken
				l.popN(k)
				p.letGo(from, k)
				p.waiting -= k
				stale += k
				if l.kind != partLane {
					p.sorted[l.partition] -= k
				}
				continue
			}
			if begun > 0 {
				spans = append(spans, stretchOf{stretch: stretch{from: from, lo: s.lo, hi: s.lo + int32(begun)}, lane: l})
				taken += begun
				l.popN(begun)
				p.waiting -= begun
				l.running += begun
				l.claimed = p.claims
			}
			if state == beginBlocked {
				l.blocked = true
				p.blocked[l.partition] = append(p.blocked[l.partition], l)
				break
			}
		}
		if stale > 0 {
			released = append(released, partCount{l.partition, stale})
		}
		if l.n > 0 && l.mayStart() { // Unordered, ByKey's keyed lanes: the rest is for other hands too
			l.inReady = true
			p.ready.push(l)
		}
	}
	led.unlockRuns()
	for _, sp := range spans {
		for i := sp.lo; i < sp.hi; i++ {
			m := &sp.from.msgs[i]
			hd.run = append(hd.run, task{m: m, off: m.Offset, from: sp.from, lane: sp.lane, i: i})
		}
	}
	clear(spans)
	hd.spans = spans[:0]
	if len(hd.run) > 0 {
		released = append(released, partCount{hd.run[0].from.partition, 1}) // it starts now
	}
	for _, r := range released {
		p.out.q.release(r.p, r.n)
	}
	hd.released = released[:0]
	if len(hd.run) == 0 {
		return false
	}
	p.running++
	if !p.sweeping {
		p.sweeping = true
		select {
		case p.kick <- struct{}{}: // the feeder waits without sweeping: it sweeps from now on
		default:
		}
	}
	hd.settled, hd.aliveAt = 0, time.Time{}
	hd.timeEach = p.perMsg == 0 || p.perMsg > fastHandler
	hd.pos.Store(position(0, len(hd.run)))
	hd.began.Store(0)
	hd.beganAt = 0
	hd.attempts.Store(0)
	p.wakeLocked()
	return true
}

// claimKeyed claims up to k messages of the first stretch of l, a keyed
// lane (ByKey), still current: it sorts them out by key (sortOut), begins
// those that join the run, and appends those begun to spans. Those that
// found no room wait in their keys' lanes. p.mu and the ledger's lock are
// held.
func (p *processor) claimKeyed(l *lane, k int, spans []stretchOf) ([]stretchOf, int, beginState) {
	from := l.head().from
	joins, nj := p.sortOut(l, k)
	if nj == 0 {
		return spans, 0, begun
	}
	// Joined, they are in offset order: the first is the lowest
	// incomplete message if any of them is.
	nb, state := p.out.led.beginLocked(from.partition, from.epoch, from.win, from.msgs[joins[0].lo].Offset, nj)
	p.waiting -= nb
	left := nb
	for _, j := range joins {
		c := min(left, int(j.hi-j.lo))
		left -= c
		if c > 0 {
			spans = append(spans, stretchOf{stretch: stretch{from: from, lo: j.lo, hi: j.lo + int32(c)}, lane: j.lane})
		}
		if rest := int(j.hi-j.lo) - c; rest > 0 {
			// No room: they wait in their key's lane, behind what of it
			// joined the run, ahead of what comes next.
			j.lane.running -= rest
			j.lane.pushRange(from, int(j.lo)+c, int(j.hi))
			p.readyLocked(j.lane)
		}
	}
	clear(joins)
	p.joins = joins[:0]
	return spans, nb, state
}

// sortOut takes the first k messages of l's first stretch (l is keyed) and
// sorts them out by key: a message joins the run being claimed when
// nothing of its key waits and nothing of it runs but in this run (its
// lane's running count goes up); otherwise it waits at the tail of its
// key's lane, behind the rest of its key, which keeps a key's messages in
// order and one at a time. It returns those that join, in order, as
// stretches of their keys' lanes, and how many. p.mu is held.
func (p *processor) sortOut(l *lane, k int) ([]stretchOf, int) {
	s := *l.head()
	l.popN(k)
	from, msgs := s.from, s.from.msgs
	p.addSorted(from.partition, k)
	joins, nj := p.joins[:0], 0
	var kl *lane
	join := false
	for i := int(s.lo); i < int(s.lo)+k; i++ {
		// The previous message's lane, if it has the same key: the same
		// answer (a message that joined leaves its lane empty, one that
		// waits does not).
		if i == int(s.lo) || !sameKey(msgs[i-1].Key, msgs[i].Key) {
			kl = p.keyLane(from.partition, msgs[i].Key)
			join = kl.n == 0 && !kl.stuck && (kl.running == 0 || kl.claimed == p.claims)
		}
		if !join {
			kl.pushRange(from, i, i+1)
			p.readyLocked(kl)
			continue
		}
		kl.running++
		kl.claimed = p.claims
		nj++
		if n := len(joins); n > 0 && joins[n-1].lane == kl && int(joins[n-1].hi) == i {
			joins[n-1].hi++
		} else {
			joins = append(joins, stretchOf{stretch: stretch{from: from, lo: int32(i), hi: int32(i + 1)}, lane: kl})
		}
	}
	p.joins = joins
	return joins, nj
}

// handleRun handles hd's run, in order, until a message of it does not
// complete: what comes after it went back to its lanes (park), or, when
// Process stops, ends incomplete.
func (p *processor) handleRun(ctx context.Context, hd *hand) {
	start := time.Now()
	hd.claimed = start
	start = p.handleFrom(ctx, hd, start)
	hd.lapUntimed(time.Since(start))
}

// handleFrom is handleRun from start: it returns when the hand's untimed
// messages began.
func (p *processor) handleFrom(ctx context.Context, hd *hand, start time.Time) time.Time {
	for {
		if !hd.timeEach {
			var err error
			var failed bool
			if start, err, failed = p.handleFast(ctx, hd, start); failed {
				// run[len(hd.ends)]'s first attempt failed.
				o, end := p.handleFailed(ctx, hd, start, err)
				start = end
				hd.ends = append(hd.ends, o)
				if o != completed && o != rejected {
					return start
				}
				continue
			}
		}
		w := hd.pos.Load()
		next, limit := positions(w)
		if next >= limit {
			return start // done, or the rest went back (a sweep)
		}
		if next > 0 {
			select {
			case <-hd.interrupt:
				// A Seek or a revoke: what has not started goes back,
				// and is checked again as it is claimed again.
				hd.lapUntimed(time.Since(start))
				p.park(hd, false)
				return time.Now()
			default:
			}
		}
		if !hd.pos.CompareAndSwap(w, w+1<<32) {
			continue // a sweep took the rest
		}
		if next > 0 && hd.attempts.Load() != 0 {
			hd.attempts.Store(0)
		}
		o, end := p.handle(ctx, hd, start)
		start = end
		hd.ends = append(hd.ends, o)
		if o != completed && o != rejected {
			return start
		}
	}
}

// lap ends a stretch of the hand's handler attempts timed together at one
// clock read: d is the time since it began, over the untimed messages and
// the attempt that ends it. The untimed ones count at their mean; it
// returns the last one's share.
func (hd *hand) lap(d time.Duration) time.Duration {
	if hd.untimed == 0 {
		return d
	}
	rest := d / time.Duration(hd.untimed+1) * time.Duration(hd.untimed)
	hd.stats.HandlerDurations.observeN(rest, hd.untimed)
	hd.untimed = 0
	return d - rest
}

// lapUntimed counts the hand's untimed messages, at their mean of d, the
// time since they began.
func (hd *hand) lapUntimed(d time.Duration) {
	if hd.untimed > 0 {
		hd.stats.HandlerDurations.observeN(d, hd.untimed)
		hd.untimed = 0
	}
}

// settle ends hd's run: what it handled goes to the ledger (one critical
// section), the share group's acker, the counts and the queue's bound;
// what it did not start ends incomplete (Process stops). It reports whether
// a commit is due. p.mu is held.
func (p *processor) settle(hd *hand) (due bool) {
	if len(hd.run) == 0 {
		return false
	}
	_, limit := positions(hd.pos.Load())
	due = p.settleRange(hd, hd.settled, limit, hd.ends)
	p.mergeCounts(hd)
	if n := limit; n > 0 && !hd.claimed.IsZero() {
		took := time.Since(hd.claimed) / time.Duration(n)
		if p.perMsg == 0 {
			p.perMsg = took
		} else {
			p.perMsg += (took - p.perMsg) / 8
		}
	}
	clear(hd.run)
	hd.run, hd.ends, hd.settled = hd.run[:0], hd.ends[:0], 0
	hd.pos.Store(0)
	hd.claimed = time.Time{}
	p.endRun(hd)
	return due
}

// endRun counts hd's run ended. p.mu is held.
func (p *processor) endRun(hd *hand) {
	p.running--
	if hd.held {
		hd.held = false
		p.held--
	}
}

// mergeCounts adds the hand's counts to the dispatcher's. p.mu is held, by
// the hand.
func (p *processor) mergeCounts(hd *hand) {
	hd.stats.Handled -= hd.counted // a sweep counted them
	addCounts(&p.local, &hd.stats)
	hd.stats.Handled, hd.stats.Panics, hd.counted = 0, 0, 0
	hd.stats.HandlerDurations.reset()
}

// settleRange settles hd.run[i:j]: each ended as ends says, completed when
// ends is nil, incomplete past ends (not started: Process stops). p.mu is
// held.
func (p *processor) settleRange(hd *hand, i, j int, ends []outcome) (due bool) {
	if i >= j {
		return false
	}
	end := func(k int) outcome {
		switch {
		case ends == nil:
			return completed
		case k < len(ends):
			return ends[k]
		}
		return incomplete
	}
	led := p.out.led
	led.lockRuns()
	for k := i; k < j; {
		// A stretch of the run that ended alike, in one window: one
		// finish (and one span added, where their offsets are adjacent).
		t := &hd.run[k]
		e, n := end(k), 1
		for k+n < j && end(k+n) == e && hd.run[k+n].from.win == t.from.win && hd.run[k+n].from.partition == t.from.partition {
			n++
		}
		run := hd.run[k : k+n]
		if led.finishLocked(t.from.partition, t.from.win, n, func(i int) int64 { return run[i].off }, e == completed) {
			due = true
		}
		k += n
	}
	led.unlockRuns()
	if p.acks != nil {
		for k := i; k < j; k++ {
			t := &hd.run[k]
			switch end(k) {
			case completed:
				p.acks.decide(t.m.Partition, t.m.Offset, AckAccept)
			case incomplete:
				p.acks.decide(t.m.Partition, t.m.Offset, AckRelease) // another member takes it now
			case rejected:
				p.acks.decide(t.m.Partition, t.m.Offset, AckReject)
			}
		}
	}
	// The queue's bound: run[0] left it when it was claimed.
	released := hd.released[:0]
	for k := max(i, 1); k < j; k++ {
		part := hd.run[k].from.partition
		if n := len(released); n > 0 && released[n-1].p == part {
			released[n-1].n++
		} else {
			released = append(released, partCount{part, 1})
		}
	}
	for _, r := range released {
		p.out.q.release(r.p, r.n)
	}
	hd.released = released[:0]
	stopped := p.stopped.Load()
	for k := i; k < j; k++ {
		t := &hd.run[k]
		l := t.lane
		if l.kind != partLane {
			p.sorted[l.partition]--
		} else if l.keyed && !l.exclusive {
			// Claimed with its lane whole, and its lane went back to
			// sorting out keys as it ran (unwhole): its key's lane
			// counts it running.
			p.sorted[l.partition]--
			kl := p.keyLane(l.partition, t.m.Key)
			kl.running--
			if !stopped {
				p.laneIdle(kl)
			}
		}
		l.running--
		p.letGo(t.from, 1)
		if stopped {
			continue
		}
		if l.exclusive && end(k) == incomplete && p.pc.Ordering != Unordered {
			// A message left incomplete holds its key: the ones after
			// it must not run before it does (after a restart).
			l.stuck = true
		}
		if k+1 < j && hd.run[k+1].lane == l {
			continue // the lane's next message in the run: look at the lane once
		}
		p.laneIdle(l)
		p.dropIdle(l)
	}
	if !stopped && len(p.blocked) > 0 {
		for k := i; k < j; k++ {
			p.unblock(hd.run[k].from.partition)
		}
	}
	return due
}

// dropIdle drops l if it is a key's lane (ByKey) with nothing waiting,
// nothing running, and no mark to keep (ready, blocked, stuck), and as
// many idle lanes are kept as may be (keepLanes): this one goes now,
// rather than in a prune's scan of them all (keys that seldom come back:
// a key a message). p.mu is held.
func (p *processor) dropIdle(l *lane) {
	if l.kind != partLane && l.n == 0 && l.running == 0 && !l.inReady && !l.blocked && !l.stuck && p.lanes.len() > keepLanes {
		p.dropLane(l)
	}
}

// laneIdle makes l ready, if it may start, now that a run has let go of
// its messages. An empty lane stays, idle, until the lanes are pruned.
// p.mu is held.
func (p *processor) laneIdle(l *lane) {
	if l.n > 0 && l.mayStart() {
		l.inReady = true
		p.ready.push(l)
	}
}

// giveBackLocked puts back in their lanes claimed messages that did not
// start, in order (back holds each lane's in order; see putBack), and lets
// the ledger know. p.mu is held.
//
// A lane given back to is not blocked any more: its head was begun once,
// and may be the lowest incomplete message of its partition, which always
// begins. A lane that found no room waits for a completion of its
// partition (unblock); the message given back is no longer in flight, so
// if nothing else of the partition was, no completion would ever come.
// Claimed again, its head asks for room again.
func (p *processor) giveBackLocked(back []task) {
	if len(back) == 0 {
		return
	}
	led := p.out.led
	led.lockRuns()
	for k := len(back) - 1; k >= 0; k-- {
		t := &back[k]
		led.unbeginLocked(t.from.win)
		t.lane.putBack(t)
		t.lane.running--
		t.lane.blocked = false // still in p.blocked: unblock passes over it
		p.waiting++
	}
	led.unlockRuns()
	for k := range back {
		p.laneIdle(back[k].lane)
	}
	p.wakeLocked()
}

// park cuts hd's run at the message it handles, which has to wait (a retry,
// liveness) or must not run (a Seek or a revoke, when keep is false): what
// ended before it is settled, so that a stuck message holds back no other
// completion, and what comes after it goes back to its lanes, at their
// heads, for other hands (their keys' order is kept: the lane of the
// message kept stays running). Once Process stops, nothing goes back: it
// ends incomplete as the run settles.
func (p *processor) park(hd *hand, keep bool) {
	i := len(hd.ends) // the message handled; never 0 without keep, so run[0] (out of the queue's bound) never goes back
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped.Load() {
		return
	}
	_, limit := positions(hd.pos.Load())
	rest := i
	if keep {
		rest = i + 1
	}
	if hd.settled >= i && rest >= limit {
		// Nothing before it, nothing after it.
		if keep {
			p.unwhole(&hd.run[i])
		}
		return
	}
	due := p.settleRange(hd, hd.settled, i, nil) // what ended before it completed: it would have ended the run
	p.mergeCounts(hd)
	p.giveBackLocked(hd.run[rest:limit])
	if keep {
		// Once what it held back has settled or gone back: the other
		// keys of its partition go on meanwhile.
		p.unwhole(&hd.run[i])
		// What stays: the message handled, at the head of the run.
		t := hd.run[i]
		clear(hd.run[1:])
		hd.run = append(hd.run[:0], t)
		hd.pos.Store(position(1, 1))
		if i > 0 {
			p.out.q.release(t.from.partition, 1) // it started: it leaves the queue's bound now
		}
	} else {
		clear(hd.run)
		hd.run = hd.run[:0]
		hd.pos.Store(0)
		p.endRun(hd)
	}
	hd.ends, hd.settled = hd.ends[:0], 0
	if due {
		defer p.out.wake()
	}
}

// sweep settles what hands held up by a handler for slowHandler (all
// hands, with all) completed, and gives back what they did not start
// (ends it incomplete once Process stops). p.mu is held.
func (p *processor) sweep(all bool) (due bool) {
	now := time.Since(p.born)
	stopped := p.stopped.Load()
	for _, hd := range p.hands {
		if len(hd.run) == 0 {
			continue
		}
		if b := hd.began.Load(); !all && (b == 0 || now-time.Duration(b) < slowHandler) {
			continue
		}
		w := hd.pos.Load()
		next, limit := positions(w)
		if next == 0 {
			continue // not started yet
		}
		if !all && !hd.held {
			hd.held = true // another hand may run (wakeLocked)
			p.held++
		}
		if next < limit {
			if !hd.pos.CompareAndSwap(w, position(next, next)) {
				continue // it moved on
			}
			if stopped {
				// Ends incomplete: nothing goes back.
				if p.settleRange(hd, next, limit, []outcome{}) {
					due = true
				}
			} else {
				p.giveBackLocked(hd.run[next:limit])
			}
		}
		// run[next-1] runs: everything before it completed, or the run
		// would have ended.
		if cur := next - 1; cur > hd.settled {
			if p.settleRange(hd, hd.settled, cur, nil) {
				due = true
			}
			n := int64(cur - hd.settled)
			hd.counted += n
			p.local.Handled += n
			hd.settled = cur
		}
		if !stopped {
			p.unwhole(&hd.run[next-1])
		}
	}
	return due
}

// whole reports whether l, a keyed lane (ByKey) or a partition's lane
// under Unordered, that no run holds, is to be claimed whole now, as a
// partition's lane is under ByPartition: its messages go to a run in
// order, none sorted out to its key's lane, and no other run claims from l
// until that run settles (Unordered: its completions come in order, one
// span in the ledger, and no two hands take turns at its head).
//
// It is while handlers are near-empty (fastHandler), as many lanes are
// ready or running as there are Ps (the hands have work enough), and
// nothing of l's partition is in its keys' lanes or their runs (a key's
// order then needs no key looked at). A message claimed whole that runs
// long (a sweep) or waits for a retry sends its lane back to sorting out
// keys (unwhole), so that it holds up its key only, as under ByKey
// (Unordered: nothing). p.mu is held.
func (p *processor) whole(l *lane) bool {
	return p.perMsg > 0 && p.perMsg <= fastHandler && p.ready.len()+1+p.running >= p.procs &&
		(l.partition >= len(p.sorted) || p.sorted[l.partition] == 0)
}

// addSorted counts n more messages of partition sorted out to their keys'
// lanes (processor.sorted). p.mu is held.
func (p *processor) addSorted(partition, n int) {
	if partition >= len(p.sorted) {
		p.sorted = append(p.sorted, make([]int, partition+1-len(p.sorted))...)
	}
	p.sorted[partition] += n
}

// unwhole sends t's lane back to sorting out keys (Unordered: to any hand)
// if t, which runs, was claimed with it whole, and what followed t in the
// run went back to the lane. Under ByKey, t's key's lane counts t running,
// as if sortOut had put t in the run, so that the rest of its key waits
// for it, and the other keys of the partition go to other hands; t stays
// counted in its lane's running until it settles. p.mu is held.
func (p *processor) unwhole(t *task) {
	l := t.lane
	if !l.mayWhole || !l.exclusive {
		return
	}
	l.exclusive = false
	if l.keyed {
		p.addSorted(l.partition, 1)
		p.keyLane(l.partition, t.m.Key).running++
	}
	p.laneIdle(l)
	p.wakeLocked()
}

// handleFast handles hd's run from where it is, while nothing but fast
// handlers completing at their first attempt happens (see handleFrom,
// which does it all one message at a time): no liveness to ask (within
// aliveEvery of the last ask), no Seek or revoke, Process goes on. It
// returns when its untimed messages began, and, if a first attempt failed
// or panicked, its error: that message (run[len(hd.ends)]) is the hand's,
// handleFailed goes on with it.
//
// It is handle's first attempt in a loop, for runs of near-empty handlers:
// one deferred recover for them all, and the clock, liveness and the start
// time for Stats looked at once a clock read, not once a message.
func (p *processor) handleFast(ctx context.Context, hd *hand, start time.Time) (at time.Time, err error, failed bool) {
	var t *task // while its handler runs
	defer func() {
		if t == nil {
			return // no handler ran: a panic is not one's, it goes on
		}
		if v := recover(); v != nil {
			at, err, failed = start, p.panicked(t, v), true // when the untimed messages began, as a return says
		}
	}()
	fresh := true // start moved: liveness and began are looked at again
	for {
		if fresh {
			if hd.askAlive(start) {
				return start, nil, false // handle asks
			}
			hd.begin(p.born, start)
			fresh = false
		}
		w := hd.pos.Load()
		next, limit := positions(w)
		if next >= limit || p.stopped.Load() || ctx.Err() != nil {
			return start, nil, false
		}
		if next > 0 {
			select {
			case <-hd.interrupt:
				return start, nil, false // handleFrom parks
			default:
			}
		}
		if !hd.pos.CompareAndSwap(w, w+1<<32) {
			continue // a sweep took the rest
		}
		if next > 0 && hd.attempts.Load() != 0 {
			hd.attempts.Store(0)
		}
		cur := &hd.run[next]
		t = cur
		err := p.h(ctx, *cur.m)
		t = nil
		if err != nil {
			return start, err, true
		}
		hd.stats.Handled++
		if hd.untimed+1 < clockEvery {
			hd.untimed++
		} else {
			end := time.Now()
			hd.stats.HandlerDurations.observe(hd.lap(end.Sub(start)))
			start, fresh = end, true
		}
		hd.ends = append(hd.ends, completed)
	}
}

// askAlive reports whether a message starting at start must ask liveness
// first: the run's first, then once per aliveEvery.
func (hd *hand) askAlive(start time.Time) bool {
	return hd.aliveAt.IsZero() || start.Sub(hd.aliveAt) >= aliveEvery
}

// begin records, for Stats, that the message handled now began at start
// (born: what the hands' start times count from). Untimed messages share
// their start: one store for them all.
func (hd *hand) begin(born, start time.Time) {
	if b := max(1, int64(start.Sub(born))); b != hd.beganAt {
		hd.beganAt = b
		hd.began.Store(b)
	}
}

// handleFailed goes on with hd's message whose first attempt, begun at
// start, failed with err (handleFast): as handle does after a failed
// attempt.
func (p *processor) handleFailed(ctx context.Context, hd *hand, start time.Time, err error) (outcome, time.Time) {
	t := hd.run[len(hd.ends)]
	backoff := min(p.pc.RetryBackoff, p.maxBackoff)
	end := time.Now()
	o, again, next := p.failed(ctx, hd, t, 1, attempted{took: hd.lap(end.Sub(start)), err: err}, end, &backoff)
	if !again {
		return o, next
	}
	return p.handleAt(ctx, hd, t, 2, next, backoff)
}

// handle runs the handler on hd's message until it succeeds, is given up
// on, or ctx ends, or its partition moves (a Seek, a revoke); its first
// attempt starts at start. It returns how the message ended, and when.
func (p *processor) handle(ctx context.Context, hd *hand, start time.Time) (outcome, time.Time) {
	return p.handleAt(ctx, hd, hd.run[len(hd.ends)], 1, start, min(p.pc.RetryBackoff, p.maxBackoff))
}

// handleAt is handle from attempt first (after failed ones, with the
// backoff before the next retry).
func (p *processor) handleAt(ctx context.Context, hd *hand, t task, first int, start time.Time, backoff time.Duration) (outcome, time.Time) {
	for attempt := first; ; attempt++ {
		if attempt == 1 {
			// claim checked that t is current, just now (a Seek or a
			// revoke since ends the run): the first attempt costs no
			// lock.
			if p.stopped.Load() || ctx.Err() != nil {
				return incomplete, start
			}
		} else if o, ok := p.mayAttempt(ctx, t); !ok {
			return o, time.Now()
		}
		// Liveness is asked before a run's first message, then once per
		// aliveEvery of the run (a clock read, in group mode), and before
		// each retry.
		if attempt > 1 || hd.askAlive(start) {
			if !p.out.live.alive() {
				hd.lapUntimed(time.Since(start)) // before the counts go to the dispatcher's
				p.park(hd, true)
				if o, ok := p.awaitAlive(ctx, t); !ok {
					return o, time.Now()
				}
				start = time.Now()
			}
			hd.aliveAt = start
		}
		if attempt == 1 {
			hd.begin(p.born, start)
		}
		err := p.attempt(ctx, t)
		if err == nil && attempt == 1 && !hd.timeEach && hd.untimed+1 < clockEvery {
			// Fast handlers: timed with the next ones, at one clock read.
			hd.untimed++
			hd.stats.Handled++
			return completed, start
		}
		end := time.Now()
		a := attempted{took: hd.lap(end.Sub(start)), err: err}
		if err == nil {
			hd.stats.HandlerDurations.observe(a.took)
			hd.stats.Handled++
			return completed, end
		}
		o, again, next := p.failed(ctx, hd, t, attempt, a, end, &backoff)
		if !again {
			return o, next
		}
		start = next
	}
}

// failed follows attempt a of t, which failed and ended at end: t waits
// for a retry (again, and when the retry starts, after the backoff, which
// it doubles), or ends (how, and when).
func (p *processor) failed(ctx context.Context, hd *hand, t task, attempt int, a attempted, end time.Time, backoff *time.Duration) (o outcome, again bool, at time.Time) {
	hd.attempts.Add(1)
	// It waits, or ends: what it holds back goes to other hands.
	p.park(hd, true)
	if ctx.Err() != nil {
		p.observe(t, &a, false)
		return incomplete, false, end // handled again later
	}
	if p.pc.MaxAttempts > 0 && attempt >= p.pc.MaxAttempts {
		p.observe(t, &a, false)
		return p.giveUp(ctx, t, attempt, a.err), false, time.Now()
	}
	current, interrupt := p.observe(t, &a, true)
	if !current {
		return moved, false, end // revoked, or moved by Seek: not ours to retry
	}
	p.log.Warn("process: handler failed, retrying", "partition", t.m.Partition, "offset", t.m.Offset,
		"attempt", attempt, "backoff", *backoff, "err", a.err)
	// A Seek or a revoke interrupts the wait: the partition may not
	// be ours any more, and a revoke waits for this handler.
	timer := time.NewTimer(*backoff)
	select {
	case <-ctx.Done():
	case <-interrupt:
	case <-timer.C:
	}
	timer.Stop()
	*backoff = min(2**backoff, p.maxBackoff)
	return completed, true, time.Now()
}

// mayAttempt reports whether t may be attempted again: Process goes on,
// and t's partition is where it was taken. If not, it returns how t ends.
func (p *processor) mayAttempt(ctx context.Context, t task) (outcome, bool) {
	switch {
	case p.stopped.Load() || ctx.Err() != nil:
		return incomplete, false
	case !p.current(t):
		return moved, false
	}
	return completed, true
}

// awaitAlive waits, before an attempt of t, until the member hears from
// its coordinator again (see liveness), and reports whether t may be
// attempted then; if not, how t ends: moved (revoked, or moved by Seek
// meanwhile), or incomplete (Process stops).
func (p *processor) awaitAlive(ctx context.Context, t task) (outcome, bool) {
	for {
		alive := p.out.awaitAlive(ctx, p.out.interrupted())
		if o, ok := p.mayAttempt(ctx, t); !ok {
			return o, false
		}
		if alive {
			return completed, true
		}
		if ctx.Err() != nil || p.out.life.isClosed() {
			return incomplete, false
		}
	}
}

// current reports whether t's partition is still where t was taken.
func (p *processor) current(t task) bool {
	return p.out.led.isCurrent(t.m.Partition, t.from.epoch, t.from.win)
}

// attempted is one handler attempt.
type attempted struct {
	took time.Duration
	err  error
}

// attempt runs the handler once, turning a panic into a *PanicError.
func (p *processor) attempt(ctx context.Context, t task) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = p.panicked(&t, v)
		}
	}()
	return p.h(ctx, *t.m)
}

// panicked turns the panic v of t's handler into a *PanicError, and logs
// it. It is called by the deferred function that recovered v: the stack
// is the handler's.
func (p *processor) panicked(t *task, v any) error {
	pe := &PanicError{Value: v, Stack: debug.Stack()}
	p.log.Error("process: handler panicked", "partition", t.m.Partition, "offset", t.m.Offset,
		"panic", v, "stack", string(pe.Stack))
	return pe
}

// observe records a failed attempt of t, followed by a retry if retry, and
// reports whether t's partition is still where t was taken, with the
// channel the next Seek or revoke closes. The counts of failures go to
// the dispatcher's at once (a stuck key shows in Stats).
func (p *processor) observe(t task, a *attempted, retry bool) (bool, <-chan struct{}) {
	interrupt := p.out.interrupted() // before current: a Seek after it closes it
	current := p.current(t)
	var pe *PanicError
	panicked := errors.As(a.err, &pe)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.local.HandlerDurations.observe(a.took)
	if panicked {
		p.local.Panics++
	}
	if retry && current {
		p.local.Retries++
	}
	return current, interrupt
}

// giveUp hands t to OnGiveUp, or stops Process, and returns how t ends.
func (p *processor) giveUp(ctx context.Context, t task, attempts int, err error) outcome {
	gerr := &GiveUpError{Topic: t.m.Topic, Partition: t.m.Partition, Offset: t.m.Offset, Attempts: attempts, Err: err}
	if p.pc.OnGiveUp != nil {
		herr := p.callOnGiveUp(ctx, *t.m, gerr)
		if herr == nil {
			p.mu.Lock()
			p.local.GivenUp++
			p.mu.Unlock()
			return completed
		}
		if ctx.Err() != nil {
			return incomplete // stopped meanwhile: not a failure
		}
		gerr = &GiveUpError{Topic: gerr.Topic, Partition: gerr.Partition, Offset: gerr.Offset, Attempts: attempts, Err: err, HookErr: herr}
	}
	if p.acks != nil {
		// A share group: a poison record must not stop each member in
		// turn. Kafka archives it.
		p.log.Error("process: giving up; rejecting the record", "partition", t.m.Partition, "offset", t.m.Offset, "err", gerr)
		p.mu.Lock()
		p.local.GivenUp++
		p.mu.Unlock()
		return rejected
	}
	p.log.Error("process: giving up", "partition", t.m.Partition, "offset", t.m.Offset, "err", gerr)
	p.mu.Lock()
	if p.err == nil {
		p.err = gerr
	}
	// Start nothing more, of any key: Process stops.
	p.stopped.Store(true)
	p.work.Broadcast()
	p.mu.Unlock()
	select {
	case p.stop <- struct{}{}:
	default:
	}
	return incomplete
}

func (p *processor) callOnGiveUp(ctx context.Context, m kafka.Message, err error) (herr error) {
	defer func() {
		if v := recover(); v != nil {
			herr = &PanicError{Value: v, Stack: debug.Stack()}
		}
	}()
	return p.pc.OnGiveUp(ctx, m, err)
}

// outcome is how the handling of a message ended.
type outcome int

const (
	completed  outcome = iota
	incomplete         // Process stops, or gives up: the message's key (lane) starts nothing more
	moved              // its partition moved (Seek) or went (revoke): the rest of its lane is stale too
	rejected           // share group: given up on; the record is rejected and Process goes on
)

// purge drops the waiting messages of partitions, which a Seek or a revoke
// made stale: the queue has their room back at once.
func (p *processor) purge(partitions []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped.Load() {
		return
	}
	for _, partition := range partitions {
		p.unblock(partition)
		for _, l := range p.allLanes() {
			if l.partition != partition || l.n == 0 {
				continue
			}
			n := l.n
			l.drain(nil)
			p.waiting -= n
			if l.kind != partLane {
				p.sorted[partition] -= n
			}
			p.out.q.release(partition, n)
		}
	}
}

// unblock makes the lanes of partition waiting for room ready again: they
// check it when they start. p.mu is held.
func (p *processor) unblock(partition int) {
	bl := p.blocked[partition]
	if len(bl) == 0 {
		return
	}
	delete(p.blocked, partition)
	for _, l := range bl {
		l.blocked = false
		if l.n > 0 && l.mayStart() {
			l.inReady = true
			p.ready.push(l)
		}
	}
	p.wakeLocked()
}

// stats fills in what runs now, and the age of each partition's oldest
// incomplete message.
//
// The counters are read under p.mu too, under which the processor updates
// them: a completion is counted in Handled and leaves InFlight in one step
// (as its run settles).
func (p *processor) stats(s *Stats, now time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s.Process = p.totals.snapshot()
	addCounts(&s.Process, &p.local)
	s.Process.Running, s.Process.InFlight, s.Process.Waiting = true, p.running, p.waiting
	oldest := make(map[int]time.Time)
	older := func(part int, t time.Time) {
		if o, ok := oldest[part]; !ok || t.Before(o) {
			oldest[part] = t
		}
	}
	for _, hd := range p.hands {
		next, _ := positions(hd.pos.Load())
		i := next - 1 // the message it handles
		if i < 0 || i >= len(hd.run) {
			continue
		}
		t := hd.run[i]
		h := Handling{Partition: t.m.Partition, Offset: t.m.Offset, Key: slices.Clone(t.m.Key), Taken: t.from.at,
			Attempts: int(hd.attempts.Load())}
		if b := hd.began.Load(); b > 0 {
			h.Started = p.born.Add(time.Duration(b))
		}
		s.Process.Handling = append(s.Process.Handling, h)
		_, limit := positions(hd.pos.Load())
		for _, t := range hd.run[i:max(i, limit)] {
			older(t.m.Partition, t.from.at)
		}
	}
	slices.SortFunc(s.Process.Handling, func(a, b Handling) int { return a.Taken.Compare(b.Taken) })
	for _, l := range p.allLanes() {
		if l.n > 0 {
			if f := l.head().from; p.out.led.isCurrent(f.partition, f.epoch, f.win) {
				older(f.partition, f.at)
			}
		}
	}
	for part, t := range oldest {
		if ps, ok := s.Partitions[part]; ok {
			ps.OldestIncomplete = now.Sub(t)
			s.Partitions[part] = ps
		}
	}
}

// ring is a FIFO.
type ring[T any] struct {
	buf  []T // its length a power of two: positions wrap with a mask, not a division
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

// at returns the index in buf of position i from the head.
func (r *ring[T]) at(i int) int { return (r.head + i) & (len(r.buf) - 1) }

func (r *ring[T]) grow() {
	buf := make([]T, max(2, 2*len(r.buf))) // most keys have a message or two waiting
	for i := range r.n {
		buf[i] = r.buf[r.at(i)]
	}
	r.buf, r.head = buf, 0
}

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[r.at(r.n)] = v
	r.n++
}

// insert puts v at position i from the head (0 <= i <= len).
func (r *ring[T]) insert(i int, v T) {
	if i == 0 {
		r.pushFront(v)
		return
	}
	r.push(v)
	for k := r.n - 1; k > i; k-- {
		r.buf[r.at(k)] = r.buf[r.at(k-1)]
	}
	r.buf[r.at(i)] = v
}

// pushFront puts v before the first.
func (r *ring[T]) pushFront(v T) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.head = r.at(len(r.buf) - 1)
	r.buf[r.head] = v
	r.n++
}

func (r *ring[T]) peek() T { return r.buf[r.head] }

func (r *ring[T]) pop() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = r.at(1)
	r.n--
	return v
}
