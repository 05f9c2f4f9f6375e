package multiconsumer

import (
	"context"
	"errors"
	"fmt"
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
	p := &processor{
		c: c, pc: pc, h: h,
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
	c.mu.Lock()
	switch {
	case c.closed:
		c.mu.Unlock()
		return ErrClosed
	case c.proc != nil || c.iters > 0:
		c.mu.Unlock()
		return ErrBusy
	}
	c.proc = p
	c.book.processing = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.proc = nil
		c.book.processing = false
		c.mu.Unlock()
	}()
	if _, err := c.acquireFor(ctx, nil, p); err != nil { // a GetMessages call in flight ends first
		close(p.idle)
		return err
	}
	c.consume() // what GetMessages delivered before: the caller came back
	c.q.setFair(true)
	return p.run(ctx)
}

// processor is a running Process. Its fields other than c, pc, h and the
// channels are guarded by c.mu.
type processor struct {
	c     *MultiConsumer
	pc    ProcessConfig
	h     Handler
	tasks chan task // to the handler goroutines; never more than Concurrency in it
	stop  chan struct{}
	idle  chan struct{} // closed when every handler has returned

	stopped atomic.Bool
	err     error // why Process stops: a message given up on
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
	held      bool // exclusive: a message was left incomplete; nothing more starts
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

func (p *processor) run(ctx context.Context) error {
	c := p.c
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
	c.mu.Lock()
	p.stopped.Store(true)
	close(p.tasks)
	for _, l := range p.lanes {
		c.q.release(l.key.partition, l.msgs.len())
	}
	p.waiting = 0
	p.lanes, p.ready, p.blocked = nil, ring[*lane]{}, nil
	c.mu.Unlock()
	c.q.setFair(false)
	cancel()
	c.releaseToken()
	handlers.Wait()
	close(p.idle)

	if !c.isClosed() { // else Close commits
		c.rewind()
		if c.autoCommit() {
			cctx, cancel := c.kc.withTimeout(c.commitLife)
			if cerr := c.commit(cctx); cerr != nil {
				err = errors.Join(err, cerr)
			}
			cancel()
		}
	}
	return err
}

// feed takes what the workers queue and hands it to the lanes, until
// Process must stop.
func (p *processor) feed(ctx context.Context) error {
	c := p.c
	for {
		c.mu.Lock()
		err := p.err
		if err == nil {
			err = c.fatal
		}
		c.mu.Unlock()
		if err != nil {
			return err
		}
		select { // not only when the queue is empty
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing.Done():
			return ErrClosed
		default:
		}
		if n, changed := c.q.pending(); n == 0 {
			select {
			case <-changed:
			case <-p.stop:
			case <-ctx.Done():
				return ctx.Err()
			case <-c.closing.Done():
				return ErrClosed
			}
			continue
		}
		taken := c.q.hold()
		c.mu.Lock()
		for _, b := range taken {
			p.add(b)
		}
		p.pump()
		c.mu.Unlock()
	}
}

// add puts the messages of b, which the queue holds, in their lanes, and
// lets the queue have back those it will not handle (stale, or complete
// already). c.mu is held.
func (p *processor) add(b batch) {
	c := p.c
	po, ok := c.book.parts[b.partition]
	if !ok || po.epoch != b.epoch {
		c.q.release(b.partition, len(b.msgs)) // a Seek or a revoke since it was fetched
		return
	}
	w := po.window()
	if len(b.msgs) == 0 {
		w.advance(b.advance)
		p.moved(po, w)
		return
	}
	released := 0
	c.book.count(b.partition, len(b.msgs), msgBytes(b.msgs))
	now := time.Now()
	for _, m := range b.msgs {
		if !w.take(m.Offset) {
			c.pstats.Skipped++
			released++
			continue
		}
		l := p.lane(b.partition, m.Key)
		l.msgs.push(task{m: m, epoch: b.epoch, win: w, lane: l, taken: now})
		p.waiting++
		if l.mayStart() {
			l.inReady = true
			p.ready.push(l)
		}
	}
	p.moved(po, w)
	c.q.release(b.partition, released)
}

// moved brings the book's offsets of a partition up to its window:
// delivered is what was taken, consumed the lowest incomplete offset. It
// reports whether consumed moved, which counts for the count trigger.
func (p *processor) moved(po *partOffsets, w *window) bool {
	po.delivered = w.next
	if w.commit == po.consumed {
		return false
	}
	po.consumed = w.commit
	p.c.book.sinceCommit++
	return true
}

// lane returns the lane of a message of partition with key, made if need
// be. c.mu is held.
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

// pump starts handlers for ready lanes while there is room. c.mu is held.
func (p *processor) pump() {
	for p.running < p.pc.Concurrency && p.ready.len() > 0 && !p.stopped.Load() {
		l := p.ready.pop()
		l.inReady = false
		p.start(l)
	}
}

// start starts a handler for the first message of l that is still ours.
// The messages that leave l leave the queue's bound. c.mu is held.
func (p *processor) start(l *lane) {
	released := 0
	defer func() { p.c.q.release(l.key.partition, released) }()
	for l.msgs.len() > 0 {
		t := l.msgs.peek()
		po, ok := p.c.book.parts[t.m.Partition]
		if !ok || po.epoch != t.epoch || po.win != t.win {
			l.msgs.pop() // a Seek or a revoke since it was taken
			p.waiting--
			released++
			continue
		}
		// The lowest incomplete message always starts: its completion
		// moves the commit, and frees room.
		if t.m.Offset != t.win.commit && !t.win.room() {
			l.blocked = true
			p.blocked[t.m.Partition] = append(p.blocked[t.m.Partition], l)
			return
		}
		l.msgs.pop()
		p.waiting--
		released++
		t.win.inflight++
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
	return !(l.exclusive && l.running > 0) && !l.inReady && !l.blocked && !l.held
}

// dropLane forgets l, which is empty and idle. c.mu is held.
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
	backoff := min(p.pc.RetryBackoff, p.c.cfg.MaxBackoff)
	for attempt := 1; ; attempt++ {
		if attempt == 1 {
			// start checked that t is current, under c.mu, just now:
			// the first attempt costs no lock.
			if p.stopped.Load() || ctx.Err() != nil {
				p.finish(t, incomplete, nil)
				return
			}
		} else if o, ok := p.mayAttempt(ctx, t); !ok {
			p.finish(t, o, nil)
			return
		}
		if !p.c.live.alive() {
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
		p.c.log.Warn("process: handler failed, retrying", "partition", t.m.Partition, "offset", t.m.Offset,
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
		backoff = min(2*backoff, p.c.cfg.MaxBackoff)
	}
}

// mayAttempt reports whether t may be attempted again: Process goes on,
// and t's partition is where it was taken. If not, it returns how t ends.
func (p *processor) mayAttempt(ctx context.Context, t task) (outcome, bool) {
	c := p.c
	c.mu.Lock()
	defer c.mu.Unlock()
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
	c := p.c
	for {
		c.mu.Lock()
		interrupt := c.interrupt
		c.mu.Unlock()
		alive := c.awaitAlive(ctx, interrupt)
		if o, ok := p.mayAttempt(ctx, t); !ok {
			return o, false
		}
		if alive {
			return completed, true
		}
		if ctx.Err() != nil || c.isClosed() {
			return incomplete, false
		}
	}
}

// current reports whether t's partition is still where t was taken. c.mu
// is held.
func (p *processor) current(t task) bool {
	po, ok := p.c.book.parts[t.m.Partition]
	return ok && po.epoch == t.epoch && po.win == t.win
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
			p.c.log.Error("process: handler panicked", "partition", t.m.Partition, "offset", t.m.Offset,
				"panic", v, "stack", string(pe.Stack))
			a.err = pe
		}
		a.took = time.Since(a.start)
	}()
	a.err = p.h(ctx, t.m)
	return a
}

// observeLocked records an attempt of t in the stats. c.mu is held.
func (p *processor) observeLocked(t task, a *attempted) {
	st := &p.c.pstats
	st.HandlerDurations.observe(a.took)
	s := &p.slots[t.slot]
	if s.Started.IsZero() {
		s.Started = a.start
	}
	if a.err != nil {
		s.Attempts++
		var pe *PanicError
		if errors.As(a.err, &pe) {
			st.Panics++
		}
	}
}

// observe records a failed attempt of t, followed by a retry if retry, and
// reports whether t's partition is still where t was taken, with the
// channel the next Seek or revoke closes.
func (p *processor) observe(t task, a *attempted, retry bool) (bool, <-chan struct{}) {
	p.c.mu.Lock()
	defer p.c.mu.Unlock()
	p.observeLocked(t, a)
	current := p.current(t)
	if retry && current {
		p.c.pstats.Retries++
	}
	return current, p.c.interrupt
}

// giveUp hands t to OnGiveUp, or stops Process.
func (p *processor) giveUp(ctx context.Context, t task, attempts int, err error) {
	gerr := &GiveUpError{Topic: t.m.Topic, Partition: t.m.Partition, Offset: t.m.Offset, Attempts: attempts, Err: err}
	if p.pc.OnGiveUp != nil {
		herr := p.callOnGiveUp(ctx, t.m, gerr)
		if herr == nil {
			p.c.mu.Lock()
			p.c.pstats.GivenUp++
			p.c.mu.Unlock()
			p.finish(t, completed, nil)
			return
		}
		if ctx.Err() != nil {
			p.finish(t, incomplete, nil) // stopped meanwhile: not a failure
			return
		}
		gerr = &GiveUpError{Topic: gerr.Topic, Partition: gerr.Partition, Offset: gerr.Offset, Attempts: attempts, Err: err, HookErr: herr}
	}
	p.c.log.Error("process: giving up", "partition", t.m.Partition, "offset", t.m.Offset, "err", gerr)
	p.c.mu.Lock()
	if p.err == nil {
		p.err = gerr
	}
	// Start nothing more, of any key: Process stops.
	p.stopped.Store(true)
	p.c.mu.Unlock()
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
)

// finish records the end of t's handling, and its last attempt (if a is
// not nil), and starts what may start now.
func (p *processor) finish(t task, o outcome, a *attempted) {
	complete := o == completed
	c := p.c
	c.mu.Lock()
	if a != nil {
		p.observeLocked(t, a)
	}
	p.running--
	p.slots[t.slot] = Handling{}
	p.free = append(p.free, t.slot)
	w := t.win
	w.inflight--
	due := false
	if complete {
		w.complete(t.m.Offset)
		if a != nil {
			c.pstats.Handled++
		}
		if po, ok := c.book.parts[t.m.Partition]; ok && po.win == w {
			if !p.moved(po, w) {
				c.book.sinceCommit++ // completions count for the count trigger
			}
			due = c.book.countDue()
		}
	}
	l := t.lane
	l.running--
	if !p.stopped.Load() {
		if l.exclusive {
			// A message left incomplete holds its key: the ones after
			// it must not run before it does (after a restart).
			l.held = l.held || o == incomplete
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
	if c.awaiting > 0 {
		c.consumed.notify() // a revoke waits for the handlers
	}
	c.mu.Unlock()
	if due {
		c.wakeCommitter()
	}
}

// purge drops the waiting messages of partition, which a Seek or a revoke
// made stale: the queue has their room back at once. c.mu is held.
func (p *processor) purge(partition int) {
	if p.stopped.Load() {
		return
	}
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
		p.c.q.release(partition, n)
		if l.running == 0 && !l.inReady {
			p.dropLane(l)
		}
	}
}

// unblock makes the lanes of partition waiting for room ready again: they
// check it when they start. c.mu is held.
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
// incomplete message. c.mu is held.
func (p *processor) stats(s *Stats, now time.Time) {
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

// rewind moves each partition whose window has messages taken and not
// complete back to its lowest incomplete offset, after Process stopped:
// they are fetched again. What completed above stays known.
func (c *MultiConsumer) rewind() {
	c.mu.Lock()
	targets := make(map[int]int64)
	for p, po := range c.book.parts {
		if w := po.win; w != nil && w.next != w.commit {
			w.rewind()
			targets[p] = w.commit
		}
	}
	if len(targets) == 0 {
		c.mu.Unlock()
		return
	}
	epochs := c.repositionLocked(targets)
	c.mu.Unlock()
	c.q.drop(func(b *batch) bool {
		e, moved := epochs[b.partition]
		return moved && b.epoch < e
	})
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
