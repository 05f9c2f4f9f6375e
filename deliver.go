package multiconsumer

import (
	"context"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// GetOption configures one GetMessages call: Block, BlockFor, Timeout. A
// nil GetOption is ignored.
type GetOption interface {
	with(getOptions) getOptions
}

// The GetOptions are values, not closures: one made in each call of a
// GetMessages loop allocates nothing (BlockFor(n) for n < 256), and with
// takes and returns the options by value, so that they stay on get's
// stack.
type (
	blockOpt   bool
	blockFor   int
	timeoutOpt time.Duration
)

func (b blockOpt) with(o getOptions) getOptions {
	o.block, o.atLeast = bool(b), -1
	return o
}

func (n blockFor) with(o getOptions) getOptions {
	o.block, o.atLeast = n > 0, int(n)
	return o
}

func (d timeoutOpt) with(o getOptions) getOptions {
	o.timeout = time.Duration(d)
	return o
}

type getOptions struct {
	block   bool
	atLeast int // with block: wait for this many; -1: for count
	timeout time.Duration
}

// Block sets whether GetMessages waits: true (the default) waits until count
// messages have arrived or the timeout; false takes only what is queued now.
func Block(block bool) GetOption {
	return blockOpt(block)
}

// BlockFor makes GetMessages wait until at least n messages have arrived (or
// the timeout), then take what is queued, up to count. n <= 0 is
// Block(false).
func BlockFor(n int) GetOption {
	return blockFor(n)
}

// Timeout bounds how long GetMessages waits. Default 10s; 0 means no
// timeout: it waits until ctx is done. A negative timeout is an error.
func Timeout(d time.Duration) GetOption {
	return timeoutOpt(d)
}

// timers are the stopped timers of GetMessages timeouts, reused: at a
// trickle every call waits, and what it allocates the collector chases.
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// GetMessages returns up to count messages, in order within each partition.
// Calling it counts every message delivered before as consumed (the caller
// came back for more), which may trigger an auto-commit.
//
// With Block(true), the default, it waits until count messages or the
// timeout; with BlockFor(n), until n; with Block(false), not at all. When the
// timeout expires it returns what it has, possibly nothing, and a nil
// error. If ctx ends first, or was done already, it returns ctx's error and
// delivers nothing: the messages it had taken stay queued, in order, for the
// next call. A call with a done ctx still counts what was delivered before
// as consumed: that is how a loop ends cleanly (see Close). After Close it
// returns ErrClosed, and while Process runs, ErrBusy. A negative count is
// an *ArgError; 0 returns nothing.
func (c *MultiConsumer) GetMessages(ctx context.Context, count int, opts ...GetOption) ([]kafka.Message, error) {
	return c.out.get(ctx, count, opts...)
}

// Iter returns an unbuffered channel of messages, in order within each
// partition, closed when ctx ends, the consumer closes, or it stops for
// good (Err says why). While Process runs, the channel is closed at once.
// It waits for messages as long as it takes; there is no idle cut-off. A
// nil ctx gives a closed channel. Receiving a message counts every message
// delivered before it as consumed. A message taken for the channel but
// never received stays queued for the next call.
//
// The last message received before the channel closes is not consumed (no
// receive came after it): when the loop has handled it, Commit (with a live
// ctx) before Close commits it; Close alone leaves it to be delivered again.
//
// The goroutine that feeds the channel records each hand-over right after
// it: Offsets and Stats may lag a receive by that instant. Ranging over the
// channel and breaking out of the loop should be followed by cancelling ctx,
// which ends the goroutine.
//
// Prefer Messages for a loop over the messages: it runs in the loop's
// goroutine, without a channel hand-over per message (it is faster), a
// break leaves nothing running, and it yields the error that ended it. Iter
// is for a receiver that needs a channel: a select over it and other
// channels, or a receive in another goroutine than the one that asked.
func (c *MultiConsumer) Iter(ctx context.Context) <-chan kafka.Message {
	return c.out.iter(ctx)
}

// delivery is the pull side of the pipeline: GetMessages, Messages loops
// and Iter goroutines take batches from the queue and hand them to the
// caller, recording them in the ledger. It also keeps the slot of the one
// running Process (the dispatcher), which excludes the pull calls.
//
// The delivery token (token) is held by who takes from the queue and
// delivers (a GetMessages call, a Messages loop's next batch, an Iter
// batch, Process's feeder), so that a partition's messages reach the caller
// in order.
type delivery struct {
	q    *queue     // set once
	led  *ledger    // set once
	live *liveness  // set once
	life *lifecycle // set once: closed, the stopping error, the helpers
	wake func()     // set once: the count trigger fired (the committer's)

	token   chan struct{} // cap 1: a token, not guarded
	taken   []batch       // held with the token: GetMessages's batches, its array reused
	sending sync.RWMutex  // held (read) by an Iter send; a hand-over waits for it (awaitSends)
	totals  procTotals    // Process's counters since New; its own lock

	// moves is notified by every Seek and revoke (moved): what holds
	// messages looks again at whether they are still current.
	moves broadcast

	mu    sync.Mutex // guards the fields below
	shut  bool       // Close has begun
	stash *stash     // what the running Messages loop took and has not yielded, if any
	iters int        // Iter goroutines and Messages loops running: Process waits
	proc  *processor // the running Process, if any
}

func newDelivery(q *queue, led *ledger, live *liveness, life *lifecycle, wake func()) *delivery {
	return &delivery{q: q, led: led, live: live, life: life, wake: wake, token: make(chan struct{}, 1)}
}

// moved wakes Iter goroutines blocked on a send, and Process's retries
// waiting out a backoff, so that they look again at what they hold: a Seek
// or a revoke moved a partition.
func (d *delivery) moved() { d.moves.notify() }

// interrupted returns a channel closed at the next moved. Read it before
// checking that a partition is current: a move after the check closes it.
func (d *delivery) interrupted() <-chan struct{} { return d.moves.wait() }

// shutDown marks Close begun: no Process or Messages loop starts from now
// on, and what waits on interrupted wakes (it selects on the lifecycle's
// closing too, which stays set).
func (d *delivery) shutDown() {
	d.mu.Lock()
	d.shut = true
	d.mu.Unlock()
	d.moves.notify()
}

// awaitSends waits for an Iter send in flight, which began before its
// partition was retired, to hand its message over or give it back.
func (d *delivery) awaitSends() {
	d.sending.Lock()
	d.sending.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// awaitIdle takes the delivery token for good (Close): it returns once any
// delivery in progress has given up.
func (d *delivery) awaitIdle() { d.token <- struct{}{} }

// processing returns the running Process, if any.
func (d *delivery) processing() *processor {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.proc
}

// purge drops the waiting messages of the running Process (if any) of
// parts, which a Seek or a revoke made stale.
func (d *delivery) purge(parts []int) {
	if p := d.processing(); p != nil {
		p.purge(parts)
	}
}

// consume records that the caller came back for more, and wakes the
// committer when the count trigger fires.
func (d *delivery) consume() {
	if d.led.consume(time.Now()) {
		d.wake()
	}
}

// get is GetMessages.
func (d *delivery) get(ctx context.Context, count int, opts ...GetOption) ([]kafka.Message, error) {
	if d.life.isClosed() {
		return nil, ErrClosed
	}
	if ctx == nil {
		return nil, errNilContext
	}
	o := getOptions{block: true, atLeast: -1, timeout: DefaultTimeout}
	for _, opt := range opts {
		if opt != nil {
			o = opt.with(o)
		}
	}
	switch {
	case count < 0:
		return nil, &ArgError{Method: "GetMessages", Arg: "count", Value: count, Reason: "negative count"}
	case o.timeout < 0:
		return nil, &ArgError{Method: "GetMessages", Arg: "Timeout", Value: o.timeout, Reason: "negative timeout"}
	}
	need := 0
	if o.block {
		need = count
		if o.atLeast >= 0 {
			need = min(o.atLeast, count)
		}
	}

	if d.processing() != nil {
		return nil, ErrBusy
	}
	d.consume() // the caller came back for more, even with a done ctx
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if count == 0 {
		return nil, nil
	}
	var expired <-chan time.Time
	if need > 0 && o.timeout > 0 {
		t := timers.Get().(*time.Timer)
		t.Reset(o.timeout)
		defer func() {
			if !t.Stop() {
				// Only with GODEBUG=asynctimerchan=1 (before Go 1.23's
				// timers) can a tick be left in the channel.
				select {
				case <-t.C:
				default:
				}
			}
			timers.Put(t)
		}()
		expired = t.C
	}
	// The timeout covers the wait for another delivery in progress too;
	// Block(false) does not wait for one.
	if need == 0 {
		select {
		case d.token <- struct{}{}:
		default:
			return nil, nil
		}
		if d.life.isClosed() {
			d.release()
			return nil, ErrClosed
		}
		if d.processing() != nil {
			d.release()
			return nil, ErrBusy
		}
	} else if ok, err := d.acquire(ctx, expired, nil); !ok {
		return nil, err
	}
	defer d.release()
	taken, n := d.taken[:0], 0
	defer func() {
		// The messages are the caller's, or back in the queue: none stay
		// reachable from here, past len too (what unshift put back, or
		// keepCurrent dropped).
		clear(taken[:cap(taken)])
		d.taken = taken[:0]
	}()
	for {
		if !d.live.alive() {
			// Probably out of the group (see liveness): nothing new is
			// delivered until the coordinator answers.
			d.q.unshift(taken)
			taken, n = taken[:0], 0
			if need == 0 {
				break
			}
			heard := d.live.changed()
			if d.live.alive() {
				continue // it answered meanwhile
			}
			select {
			case <-heard:
				continue
			case <-expired:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-d.life.closing.Done():
				return nil, ErrClosed
			}
		}
		d.reclaim() // a Messages loop's messages come first
		// else moved by Seek since it was fetched
		had := len(taken)
		taken = d.q.takeInto(taken, count-n)
		more, m := d.led.keepCurrent(taken[had:])
		taken, n = taken[:had+len(more)], n+m
		if n >= need {
			if err := ctx.Err(); err != nil {
				d.q.unshift(taken)
				return nil, err
			}
			if n == 0 {
				if err := d.life.err(); err != nil {
					d.q.unshift(taken) // markers, if any: back where they were
					return nil, err
				}
			}
			break
		}
		queued, changed := d.q.state()
		if queued > 0 {
			continue
		}
		if err := d.life.err(); err != nil {
			if n > 0 {
				break // deliver what was taken; the next call reports err
			}
			d.q.unshift(taken) // markers, if any: back where they were
			return nil, err
		}
		var err error
		select {
		case <-changed:
			continue
		case <-expired:
		case <-ctx.Done():
			err = ctx.Err()
		case <-d.life.closing.Done():
			err = ErrClosed
		}
		if err != nil {
			d.q.unshift(taken)
			return nil, err
		}
		break
	}
	out := d.led.deliverBatches(taken, n)
	for _, b := range taken {
		// deliverBatches copied the messages of a whole array out (or
		// they were stale): it is garbage, and the next runs are decoded
		// into it.
		if b.whole {
			d.q.arrays.put(b.msgs)
		}
	}
	return out, nil
}

// acquire takes the delivery token for a delivery (p nil: which gets
// ErrBusy if a Process took the token first) or for Process p. It gives
// up, with an error, when ctx ends or the consumer closes, and, without
// one, when expired fires.
func (d *delivery) acquire(ctx context.Context, expired <-chan time.Time, p *processor) (bool, error) {
	select {
	case d.token <- struct{}{}:
	case <-expired:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	case <-d.life.closing.Done():
		return false, ErrClosed
	}
	if d.life.isClosed() {
		d.release()
		return false, ErrClosed
	}
	if proc := d.processing(); proc != nil && proc != p { // Process started while this call waited for the token
		d.release()
		return false, ErrBusy
	}
	return true, nil
}

func (d *delivery) release() { <-d.token }

// iterBatch is how many messages an Iter goroutine takes from the queue at
// a time; it holds the delivery token while it hands them over, not while
// it waits for messages.
const iterBatch = 256

// iter is Iter.
func (d *delivery) iter(ctx context.Context) <-chan kafka.Message {
	ch := make(chan kafka.Message)
	if ctx == nil || !d.enter(false) {
		close(ch)
		return ch
	}
	started := d.life.goHelper(func(context.Context) {
		defer func() {
			d.leave()
			close(ch)
		}()
		for d.iterate(ctx, ch) == nil {
		}
	})
	if !started { // Close began
		d.leave()
		close(ch)
	}
	return ch
}

// enter counts an Iter goroutine or a Messages loop in iters, which keeps
// Process out, unless Process runs (or, with closedToo, Close has begun).
func (d *delivery) enter(closedToo bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.proc != nil || closedToo && d.shut {
		return false
	}
	d.iters++
	return true
}

func (d *delivery) leave() {
	d.mu.Lock()
	d.iters--
	d.mu.Unlock()
}

// awaitQueued waits, without the delivery token, until a delivery has
// something to take: queued messages, or a Messages loop's to reclaim. It
// returns an error when ctx ends, the consumer closes, or it has stopped
// for good and nothing is left.
func (d *delivery) awaitQueued(ctx context.Context) error {
	for {
		if !d.awaitAlive(ctx, nil) { // probably out of the group: see liveness
			if err := ctx.Err(); err != nil {
				return err
			}
			return ErrClosed
		}
		batches, changed := d.pending()
		if batches > 0 {
			return nil
		}
		if err := d.life.err(); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-d.life.closing.Done():
			return ErrClosed
		}
	}
}

// awaitAlive waits until the member is alive (see liveness), ctx ends, the
// consumer closes, or interrupt is closed (a Seek or a revoke: the caller
// looks again at what it was about to deliver). It reports whether the
// member is alive.
func (d *delivery) awaitAlive(ctx context.Context, interrupt <-chan struct{}) bool {
	for {
		if d.live.alive() {
			return true
		}
		changed := d.live.changed()
		if d.live.alive() {
			return true // it answered meanwhile
		}
		select {
		case <-changed:
		case <-interrupt:
			return d.live.alive()
		case <-ctx.Done():
			return false
		case <-d.life.closing.Done():
			return false
		}
	}
}

// iterate waits for messages and hands them to ch one by one. It returns an
// error when ctx ends or the consumer closes.
func (d *delivery) iterate(ctx context.Context, ch chan<- kafka.Message) error {
	for {
		if err := d.awaitQueued(ctx); err != nil {
			return err
		}
		if _, err := d.acquire(ctx, nil, nil); err != nil {
			return err
		}
		d.reclaim() // a Messages loop's messages come first
		taken := d.q.take(iterBatch)
		err := d.send(ctx, ch, taken)
		d.release()
		if err != nil {
			return err
		}
	}
}

// send hands taken to ch one message at a time, and puts back what it does
// not hand over when ctx ends, or when a Seek, a revoke or Close
// interrupts it.
func (d *delivery) send(ctx context.Context, ch chan<- kafka.Message, taken []batch) error {
	done, closing := ctx.Done(), d.life.closing.Done()
	for bi, b := range taken {
		// The interrupt channel is read before the epoch is checked: a
		// Seek after the check closes it.
		interrupt := d.interrupted()
		current := len(b.msgs) == 0 && d.led.advanceCurrent(b.partition, b.epoch, b.advance) ||
			len(b.msgs) > 0 && d.led.current(b.partition, b.epoch)
		for i := range b.msgs {
			if !current {
				break // Seek moved the partition: the rest is dropped
			}
			m := b.msgs[i]
			// A revoke waits for this send: once it goes on, m has
			// reached the caller or was given back.
			d.sending.RLock()
			// Prefer stopping, or rechecking after a Seek, to a receiver
			// that is also ready (a select picks at random).
			select {
			case <-done:
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			case <-interrupt:
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return nil
			case <-closing:
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return nil
			default:
			}
			select {
			case ch <- m:
			case <-closing:
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return nil
			case <-interrupt:
				// A Seek or a revoke (m may be of a partition it moved)
				// or Close: give m back; the caller takes again (stale
				// messages are dropped) or sees the consumer closed.
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return nil
			case <-done:
				d.sending.RUnlock()
				d.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			}
			// Receiving m consumes what came before it; m is delivered.
			// Only the count trigger is checked here (no clock read per
			// message): the committer's timer runs the time trigger.
			interrupt = d.interrupted()
			var due bool
			due, current = d.led.sent(b.partition, b.epoch, &m)
			d.sending.RUnlock()
			if due {
				d.wake()
			}
		}
		if b.whole {
			// Each message went as a copy, or was stale: the array is
			// garbage.
			d.q.arrays.put(b.msgs)
		}
	}
	return nil
}

// requeue puts back what an Iter goroutine took and did not hand over: the
// rest of b from i, then the batches after it.
func (d *delivery) requeue(b batch, i int, rest []batch) {
	back := make([]batch, 0, 1+len(rest))
	back = append(back, batch{partition: b.partition, epoch: b.epoch, msgs: b.msgs[i:]})
	d.q.unshift(append(back, rest...))
}
