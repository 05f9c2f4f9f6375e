package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	ByKey Ordering = iota
	// ByPartition handles the messages of a partition one at a time, in
	// offset order; partitions in parallel.
	ByPartition
	// Unordered handles any message at any time.
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
	// far above the number of partitions.
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
	// HandlerDurations are the durations of the handler attempts.
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
func (h *Histogram) observe(d time.Duration) {
	if h.Counts == nil {
		h.Bounds, h.Counts = handlerBounds, make([]int64, len(handlerBounds)+1)
	}
	i, _ := slices.BinarySearch(h.Bounds, d)
	h.Counts[i]++
	h.Count++
	h.Sum += d
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

// processor is a running Process: the dispatcher. It takes batches from
// the queue (holding the delivery token), puts their messages in lanes,
// and starts handlers for them. Each message's window (its partition's
// offsets under Process) is the ledger's: the processor takes, begins and
// finishes messages through the ledger's methods.
type processor struct {
	pc         ProcessConfig // set once
	h          Handler       // set once
	out        *delivery     // set once: the queue, the ledger, the token, liveness, the lifecycle
	log        *slog.Logger  // set once
	maxBackoff time.Duration // set once
	totals     *procTotals   // the consumer's, since New; its own lock
	local      ProcessStats  // guarded by mu: this Process's counts, merged into totals when it stops (no second lock per message)
	acks       *acker        // set once: a share group's, which settles each message; nil otherwise
	tasks      chan task     // to the handler goroutines; never more than Concurrency in it
	stop       chan struct{}
	idle       chan struct{} // closed when every handler has returned

	stopped atomic.Bool
	mu      sync.Mutex // guards the fields below; held while it calls the ledger or the queue
	err     error      // why Process stops: a message given up on
	lanes   map[laneKey]*lane
	ready   ring[*lane]     // lanes with a message that may start now
	blocked map[int][]*lane // lanes waiting for room in their partition's metadata
	waiting int             // messages in lanes
	running int             // handlers started and not finished
	slots   []Handling      // what runs: Concurrency slots
	free    []int           // the slots free
	spare   []*lane         // lanes dropped, for new keys
}

// laneKey names a lane: the messages that are handled one at a time.
type laneKey struct {
	partition int
	nilKey    bool
	key       string
}

// lane is a FIFO of messages taken and waiting to start. An exclusive lane
// (a key, or a partition) runs one at a time; under Unordered a partition's
// lane starts its messages as fast as there is room.
type lane struct {
	key       laneKey
	exclusive bool
	msgs      ring[task]
	running   int // its messages being handled (exclusive: at most 1)
	inReady   bool
	blocked   bool
	stuck     bool // exclusive: a message was left incomplete; nothing more starts
}

// task is a message to handle, with what tells whether it is still ours:
// the partition's epoch and window when it was taken.
type task struct {
	m     kafka.Message
	epoch uint64
	win   *window
	lane  *lane
	taken time.Time
	slot  int // in processor.slots, while it runs
}

func newProcessor(pc ProcessConfig, h Handler, out *delivery, log *slog.Logger, maxBackoff time.Duration) *processor {
	p := &processor{
		pc: pc, h: h, out: out, log: log, maxBackoff: maxBackoff, totals: &out.totals, acks: out.led.acks,
		tasks:   make(chan task, pc.Concurrency),
		lanes:   make(map[laneKey]*lane),
		blocked: make(map[int][]*lane),
		stop:    make(chan struct{}, 1),
		idle:    make(chan struct{}),
		slots:   make([]Handling, pc.Concurrency),
		spare:   make([]*lane, 0, 256),
		free:    make([]int, pc.Concurrency),
	}
	for i := range p.free {
		p.free[i] = pc.Concurrency - 1 - i
	}
	return p
}

func (p *processor) run(ctx context.Context) error {
	q := p.out.q
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var handlers sync.WaitGroup
	for range p.pc.Concurrency {
		handlers.Go(func() {
			for t := range p.tasks {
				p.handle(hctx, t)
			}
		})
	}
	err := p.feed(ctx)

	// Stop: start nothing more, let go of the waiting messages, cancel
	// the handlers and wait for them. The delivery token goes first:
	// Close waits for it, then for the handlers, within its timeout.
	p.mu.Lock()
	p.stopped.Store(true)
	close(p.tasks)
	for _, l := range p.lanes {
		q.release(l.key.partition, l.msgs.len())
		if p.acks != nil {
			// Taken from the queue and not started: back to the group
			// (an offsets consumer fetches them again instead, rewind).
			for l.msgs.len() > 0 {
				t := l.msgs.pop()
				p.acks.decide(t.m.Partition, t.m.Offset, AckRelease)
			}
		}
	}
	p.waiting = 0
	p.lanes, p.ready, p.blocked = nil, ring[*lane]{}, nil
	p.mu.Unlock()
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

// feed takes what the workers queue and hands it to the lanes, until
// Process must stop.
func (p *processor) feed(ctx context.Context) error {
	q, life := p.out.q, p.out.life
	for {
		p.mu.Lock()
		err := p.err
		p.mu.Unlock()
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
			case <-p.stop:
			case <-ctx.Done():
				return ctx.Err()
			case <-life.closing.Done():
				return ErrClosed
			}
			continue
		}
		taken := q.lend()
		p.mu.Lock()
		for i := range taken {
			p.add(&taken[i])
		}
		p.pump()
		p.mu.Unlock()
	}
}

// add puts the messages of b, which the queue holds, in their lanes, and
// lets the queue have back those it will not handle (stale, or complete
// already). p.mu is held.
func (p *processor) add(b *batch) {
	now := time.Now()
	_, skipped, ok := p.out.led.takeBatch(b, now, func(m *kafka.Message, w *window) {
		l := p.lane(b.partition, m.Key)
		l.msgs.push(task{m: *m, epoch: b.epoch, win: w, lane: l, taken: now})
		p.waiting++
		if l.mayStart() {
			l.inReady = true
			p.ready.push(l)
		}
	})
	if !ok {
		p.out.q.release(b.partition, len(b.msgs)) // a Seek or a revoke since it was fetched
		return
	}
	if skipped > 0 {
		p.local.Skipped += int64(skipped)
		p.out.q.release(b.partition, skipped)
	}
}

// lane returns the lane of a message of partition with key, made if need
// be. p.mu is held.
func (p *processor) lane(partition int, key []byte) *lane {
	k := laneKey{partition: partition}
	if p.pc.Ordering == ByKey {
		if key == nil {
			k.nilKey = true
		} else if l, ok := p.lanes[laneKey{partition: partition, key: string(key)}]; ok {
			return l // no string made for a key that has a lane
		} else {
			k.key = string(key)
		}
	}
	l, ok := p.lanes[k]
	if !ok {
		if n := len(p.spare); n > 0 {
			l, p.spare = p.spare[n-1], p.spare[:n-1]
		} else {
			l = &lane{exclusive: p.pc.Ordering != Unordered}
		}
		l.key = k
		p.lanes[k] = l
	}
	return l
}

// pump starts handlers for ready lanes while there is room. p.mu is held.
func (p *processor) pump() {
	if !(p.running < p.pc.Concurrency && p.ready.len() > 0 && !p.stopped.Load()) {
		return
	}
	p.out.led.lockBegins()
	defer p.out.led.unlockBegins()
	for p.running < p.pc.Concurrency && p.ready.len() > 0 && !p.stopped.Load() {
		l := p.ready.pop()
		l.inReady = false
		p.start(l)
	}
}

// start starts a handler for the first message of l that is still ours.
// The messages that leave l leave the queue's bound. p.mu is held, and
// the ledger's (lockBegins).
func (p *processor) start(l *lane) {
	released := 0
	defer func() { p.out.q.release(l.key.partition, released) }()
	for l.msgs.len() > 0 {
		t := l.msgs.peek()
		switch p.out.led.beginLocked(t.m.Partition, t.epoch, t.win, t.m.Offset) {
		case beginStale:
			l.msgs.pop() // a Seek or a revoke since it was taken
			p.waiting--
			released++
			continue
		case beginBlocked:
			l.blocked = true
			p.blocked[t.m.Partition] = append(p.blocked[t.m.Partition], l)
			return
		}
		l.msgs.pop()
		p.waiting--
		released++
		p.running++
		t.slot = p.free[len(p.free)-1]
		p.free = p.free[:len(p.free)-1]
		p.slots[t.slot] = Handling{Partition: t.m.Partition, Offset: t.m.Offset, Key: t.m.Key, Taken: t.taken}
		l.running++
		if !l.exclusive && l.msgs.len() > 0 {
			l.inReady = true
			p.ready.push(l)
		}
		p.tasks <- t // never blocks: at most Concurrency are in it
		return
	}
	if l.running == 0 {
		p.dropLane(l)
	}
}

// mayStart reports whether l, which has messages, may join the ready
// lanes.
func (l *lane) mayStart() bool {
	return !(l.exclusive && l.running > 0) && !l.inReady && !l.blocked && !l.stuck
}

// dropLane forgets l, which is empty and idle. p.mu is held.
func (p *processor) dropLane(l *lane) {
	if p.lanes[l.key] != l {
		return // dropped already, and the key has a new lane
	}
	delete(p.lanes, l.key)
	// Kept for the next key (most keys of a backlog have a message or
	// two waiting, and go at once), unless a task still points to it.
	if l.running == 0 && !l.inReady && len(p.spare) < cap(p.spare) {
		*l = lane{exclusive: l.exclusive, msgs: ring[task]{buf: l.msgs.buf}}
		p.spare = append(p.spare, l)
	}
}

// handle runs the handler on t until it succeeds, is given up on, or ctx
// ends, or t's partition moves (a Seek, a revoke).
func (p *processor) handle(ctx context.Context, t task) {
	backoff := min(p.pc.RetryBackoff, p.maxBackoff)
	for attempt := 1; ; attempt++ {
		if attempt == 1 {
			// start checked that t is current, just now:
			// the first attempt costs no lock.
			if p.stopped.Load() || ctx.Err() != nil {
				p.finish(t, incomplete, nil)
				return
			}
		} else if o, ok := p.mayAttempt(ctx, t); !ok {
			p.finish(t, o, nil)
			return
		}
		if !p.out.live.alive() {
			if o, ok := p.awaitAlive(ctx, t); !ok {
				p.finish(t, o, nil)
				return
			}
		}
		a := p.attempt(ctx, t)
		if a.err == nil {
			p.finish(t, completed, &a)
			return
		}
		if ctx.Err() != nil {
			p.finish(t, incomplete, &a) // handled again later
			return
		}
		if p.pc.MaxAttempts > 0 && attempt >= p.pc.MaxAttempts {
			p.observe(t, &a, false)
			p.giveUp(ctx, t, attempt, a.err)
			return
		}
		current, interrupt := p.observe(t, &a, true)
		if !current {
			p.finish(t, moved, nil) // revoked, or moved by Seek: not ours to retry
			return
		}
		p.log.Warn("process: handler failed, retrying", "partition", t.m.Partition, "offset", t.m.Offset,
			"attempt", attempt, "backoff", backoff, "err", a.err)
		// A Seek or a revoke interrupts the wait: the partition may not
		// be ours any more, and a revoke waits for this handler.
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
		case <-interrupt:
		case <-timer.C:
		}
		timer.Stop()
		backoff = min(2*backoff, p.maxBackoff)
	}
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
	return p.out.led.isCurrent(t.m.Partition, t.epoch, t.win)
}

// attempted is one handler attempt.
type attempted struct {
	start time.Time
	took  time.Duration
	err   error
}

// attempt runs the handler once, turning a panic into a *PanicError.
func (p *processor) attempt(ctx context.Context, t task) (a attempted) {
	a.start = time.Now()
	defer func() {
		if v := recover(); v != nil {
			pe := &PanicError{Value: v, Stack: debug.Stack()}
			p.log.Error("process: handler panicked", "partition", t.m.Partition, "offset", t.m.Offset,
				"panic", v, "stack", string(pe.Stack))
			a.err = pe
		}
		a.took = time.Since(a.start)
	}()
	a.err = p.h(ctx, t.m)
	return a
}

// observeLocked records an attempt of t in the stats. p.mu is held.
//
// handled counts t as handled too. The counts are this Process's own,
// under p.mu, which is held: no second lock and no allocation on the path
// of every message.
func (p *processor) observeLocked(t task, a *attempted, handled bool) {
	s := &p.slots[t.slot]
	if s.Started.IsZero() {
		s.Started = a.start
	}
	panicked := false
	if a.err != nil {
		s.Attempts++
		var pe *PanicError
		panicked = errors.As(a.err, &pe)
	}
	p.local.HandlerDurations.observe(a.took)
	if panicked {
		p.local.Panics++
	}
	if handled {
		p.local.Handled++
	}
}

// observe records a failed attempt of t, followed by a retry if retry, and
// reports whether t's partition is still where t was taken, with the
// channel the next Seek or revoke closes.
func (p *processor) observe(t task, a *attempted, retry bool) (bool, <-chan struct{}) {
	interrupt := p.out.interrupted() // before current: a Seek after it closes it
	p.mu.Lock()
	defer p.mu.Unlock()
	p.observeLocked(t, a, false)
	current := p.current(t)
	if retry && current {
		p.local.Retries++
	}
	return current, interrupt
}

// giveUp hands t to OnGiveUp, or stops Process.
func (p *processor) giveUp(ctx context.Context, t task, attempts int, err error) {
	gerr := &GiveUpError{Topic: t.m.Topic, Partition: t.m.Partition, Offset: t.m.Offset, Attempts: attempts, Err: err}
	if p.pc.OnGiveUp != nil {
		herr := p.callOnGiveUp(ctx, t.m, gerr)
		if herr == nil {
			p.mu.Lock()
			p.local.GivenUp++
			p.mu.Unlock()
			p.finish(t, completed, nil)
			return
		}
		if ctx.Err() != nil {
			p.finish(t, incomplete, nil) // stopped meanwhile: not a failure
			return
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
		p.finish(t, rejected, nil)
		return
	}
	p.log.Error("process: giving up", "partition", t.m.Partition, "offset", t.m.Offset, "err", gerr)
	p.mu.Lock()
	if p.err == nil {
		p.err = gerr
	}
	// Start nothing more, of any key: Process stops.
	p.stopped.Store(true)
	p.mu.Unlock()
	select {
	case p.stop <- struct{}{}:
	default:
	}
	p.finish(t, incomplete, nil)
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

// finish records the end of t's handling, and its last attempt (if a is
// not nil), and starts what may start now.
func (p *processor) finish(t task, o outcome, a *attempted) {
	complete := o == completed
	p.mu.Lock()
	if a != nil {
		p.observeLocked(t, a, complete)
	}
	p.running--
	p.slots[t.slot] = Handling{}
	p.free = append(p.free, t.slot)
	due := p.out.led.finish(t.m.Partition, t.win, t.m.Offset, complete)
	if p.acks != nil {
		switch o {
		case completed:
			p.acks.decide(t.m.Partition, t.m.Offset, AckAccept)
		case incomplete:
			p.acks.decide(t.m.Partition, t.m.Offset, AckRelease) // another member takes it now
		case rejected:
			p.acks.decide(t.m.Partition, t.m.Offset, AckReject)
		}
	}
	l := t.lane
	l.running--
	if !p.stopped.Load() {
		if l.exclusive {
			// A message left incomplete holds its key: the ones after
			// it must not run before it does (after a restart).
			l.stuck = l.stuck || o == incomplete
		}
		if l.msgs.len() > 0 {
			if l.mayStart() {
				l.inReady = true
				p.ready.push(l)
			}
		} else if l.running == 0 && !l.inReady {
			p.dropLane(l)
		}
		p.unblock(t.m.Partition)
		p.pump()
	}
	p.mu.Unlock()
	if due {
		p.out.wake()
	}
}

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
		for _, l := range p.lanes {
			if l.key.partition != partition || l.msgs.len() == 0 {
				continue
			}
			n := l.msgs.len()
			for l.msgs.len() > 0 {
				l.msgs.pop()
			}
			p.waiting -= n
			p.out.q.release(partition, n)
			if l.running == 0 && !l.inReady {
				p.dropLane(l)
			}
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
		if l.msgs.len() > 0 && l.mayStart() {
			l.inReady = true
			p.ready.push(l)
		}
	}
}

// stats fills in what runs now, and the age of each partition's oldest
// incomplete message.
//
// The counters are read under p.mu too, under which the processor updates
// them: a completion is counted in Handled and leaves InFlight in one step.
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
	for _, h := range p.slots {
		if !h.Taken.IsZero() {
			h.Key = slices.Clone(h.Key)
			s.Process.Handling = append(s.Process.Handling, h)
			older(h.Partition, h.Taken)
		}
	}
	slices.SortFunc(s.Process.Handling, func(a, b Handling) int { return a.Taken.Compare(b.Taken) })
	for _, l := range p.lanes {
		if l.msgs.len() > 0 {
			if t := l.msgs.peek(); p.current(t) {
				older(t.m.Partition, t.taken)
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
	buf  []T
	head int
	n    int
}

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(v T) {
	if r.n == len(r.buf) {
		buf := make([]T, max(2, 2*len(r.buf))) // most keys have a message or two waiting
		for i := range r.n {
			buf[i] = r.buf[(r.head+i)%len(r.buf)]
		}
		r.buf, r.head = buf, 0
	}
	r.buf[(r.head+r.n)%len(r.buf)] = v
	r.n++
}

func (r *ring[T]) peek() T { return r.buf[r.head] }

func (r *ring[T]) pop() T {
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) % len(r.buf)
	r.n--
	return v
}
