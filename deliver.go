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
	apply(*getOptions)
}

// getOption is a GetOption.
type getOption func(*getOptions)

func (f getOption) apply(o *getOptions) { f(o) }

type getOptions struct {
	block   bool
	atLeast int // with block: wait for this many; -1: for count
	timeout time.Duration
}

// Block sets whether GetMessages waits: true (the default) waits until count
// messages have arrived or the timeout; false takes only what is queued now.
func Block(block bool) GetOption {
	return getOption(func(o *getOptions) { o.block, o.atLeast = block, -1 })
}

// BlockFor makes GetMessages wait until at least n messages have arrived (or
// the timeout), then take what is queued, up to count. n <= 0 is
// Block(false).
func BlockFor(n int) GetOption {
	return getOption(func(o *getOptions) { o.block, o.atLeast = n > 0, n })
}

// Timeout bounds how long GetMessages waits. Default 10s; 0 means no
// timeout: it waits until ctx is done. A negative timeout is an error.
func Timeout(d time.Duration) GetOption {
	return getOption(func(o *getOptions) { o.timeout = d })
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
// an error; 0 returns nothing.
func (c *MultiConsumer) GetMessages(ctx context.Context, count int, opts ...GetOption) ([]kafka.Message, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	if ctx == nil {
		return nil, errNilContext
	}
	o := getOptions{block: true, atLeast: -1, timeout: DefaultTimeout}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
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

	if c.processing() {
		return nil, ErrBusy
	}
	c.consume() // the caller came back for more, even with a done ctx
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
		case c.deliver <- struct{}{}:
		default:
			return nil, nil
		}
		if c.isClosed() {
			c.releaseToken()
			return nil, ErrClosed
		}
		if c.processing() {
			c.releaseToken()
			return nil, ErrBusy
		}
	} else if ok, err := c.acquire(ctx, expired); !ok {
		return nil, err
	}
	defer c.releaseToken()
	var taken []batch
	n := 0
	for {
		if !c.live.alive() {
			// Probably out of the group (see liveness): nothing new is
			// delivered until the coordinator answers.
			c.q.unshift(taken)
			taken, n = nil, 0
			if need == 0 {
				break
			}
			heard := c.live.changed()
			if c.live.alive() {
				continue // it answered meanwhile
			}
			select {
			case <-heard:
				continue
			case <-expired:
				return nil, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			case <-c.closing.Done():
				return nil, ErrClosed
			}
		}
		c.mu.Lock()
		c.reclaimLocked() // a Messages loop's messages come first
		for _, b := range c.q.take(count - n) {
			if c.book.current(b.partition, b.epoch) { // else moved by Seek since it was fetched
				taken = append(taken, b)
				n += len(b.msgs)
			}
		}
		c.mu.Unlock()
		if n >= need {
			if err := ctx.Err(); err != nil {
				c.q.unshift(taken)
				return nil, err
			}
			if n == 0 {
				if err := c.Err(); err != nil {
					return nil, err
				}
			}
			break
		}
		queued, changed := c.q.state()
		if queued > 0 {
			continue
		}
		if err := c.Err(); err != nil {
			if n > 0 {
				break // deliver what was taken; the next call reports err
			}
			return nil, err
		}
		var err error
		select {
		case <-changed:
			continue
		case <-expired:
		case <-ctx.Done():
			err = ctx.Err()
		case <-c.closing.Done():
			err = ErrClosed
		}
		if err != nil {
			c.q.unshift(taken)
			return nil, err
		}
		break
	}
	return c.deliverBatches(taken, n), nil
}

// deliverBatches records taken as delivered and returns its messages,
// leaving out those of partitions moved by Seek since they were fetched.
func (c *MultiConsumer) deliverBatches(taken []batch, n int) []kafka.Message {
	var out []kafka.Message
	c.mu.Lock()
	for _, b := range taken {
		if !c.book.current(b.partition, b.epoch) {
			continue // a Seek since it was taken
		}
		if len(b.msgs) == 0 {
			c.book.advance(b.partition, b.advance)
			continue
		}
		c.book.deliverRun(b.partition, b.msgs[len(b.msgs)-1].Offset, len(b.msgs))
		c.book.count(b.partition, len(b.msgs), msgBytes(b.msgs))
		if len(b.msgs) == n {
			// One batch: hand it over as it is, no copy. Nothing else
			// uses its array past its end (a split in queue.take clips
			// the head's capacity; a worker drops a run it has queued),
			// so the caller may append to it.
			out = b.msgs
			continue
		}
		out = append(out, b.msgs...)
	}
	c.mu.Unlock()
	return out
}

// acquire takes the delivery token. It gives up, with an error, when ctx
// ends or the consumer closes, and, without one, when expired fires.
func (c *MultiConsumer) acquire(ctx context.Context, expired <-chan time.Time) (bool, error) {
	return c.acquireFor(ctx, expired, nil)
}

// acquireFor is acquire for Process p (nil: for a delivery, which gets
// ErrBusy if a Process took the token first).
func (c *MultiConsumer) acquireFor(ctx context.Context, expired <-chan time.Time, p *processor) (bool, error) {
	select {
	case c.deliver <- struct{}{}:
	case <-expired:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	case <-c.closing.Done():
		return false, ErrClosed
	}
	if c.isClosed() {
		c.releaseToken()
		return false, ErrClosed
	}
	c.mu.Lock()
	busy := c.proc != nil && c.proc != p
	c.mu.Unlock()
	if busy { // Process started while this call waited for the token
		c.releaseToken()
		return false, ErrBusy
	}
	return true, nil
}

func (c *MultiConsumer) releaseToken() { <-c.deliver }

// iterBatch is how many messages an Iter goroutine takes from the queue at
// a time; it holds the delivery token while it hands them over, not while
// it waits for messages.
const iterBatch = 256

// Iter returns an unbuffered channel of messages, in order within each
// partition, closed when ctx ends, the consumer closes, or it stops for
// good (Err says why). While Process runs, the channel is closed at once. It waits for
// messages as long as it takes; there is no idle cut-off. A nil ctx gives a
// closed channel. Receiving a
// message counts every message delivered before it as consumed. A message
// taken for the channel but never received stays queued for the next call.
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
	ch := make(chan kafka.Message)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || ctx == nil || c.proc != nil {
		close(ch)
		return ch
	}
	c.iters++
	c.helpers.Go(func() {
		defer func() {
			c.mu.Lock()
			c.iters--
			c.mu.Unlock()
			close(ch)
		}()
		for c.iterate(ctx, ch) == nil {
		}
	})
	return ch
}

// awaitQueued waits, without the delivery token, until a delivery has
// something to take: queued messages, or a Messages loop's to reclaim. It
// returns an error when ctx ends, the consumer closes, or it has stopped
// for good and nothing is left.
func (c *MultiConsumer) awaitQueued(ctx context.Context) error {
	for {
		if !c.awaitAlive(ctx, nil) { // probably out of the group: see liveness
			if err := ctx.Err(); err != nil {
				return err
			}
			return ErrClosed
		}
		batches, changed := c.pending()
		if batches > 0 {
			return nil
		}
		if err := c.Err(); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing.Done():
			return ErrClosed
		}
	}
}

// processing reports whether Process runs.
func (c *MultiConsumer) processing() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc != nil
}

// iterate waits for messages and hands them to ch one by one. It returns an
// error when ctx ends or the consumer closes.
func (c *MultiConsumer) iterate(ctx context.Context, ch chan<- kafka.Message) error {
	for {
		if err := c.awaitQueued(ctx); err != nil {
			return err
		}
		if _, err := c.acquire(ctx, nil); err != nil {
			return err
		}
		c.mu.Lock()
		c.reclaimLocked() // a Messages loop's messages come first
		c.mu.Unlock()
		taken := c.q.take(iterBatch)
		err := c.send(ctx, ch, taken)
		c.releaseToken()
		if err != nil {
			return err
		}
	}
}

// send hands taken to ch one message at a time, and puts back what it does
// not hand over when ctx ends, or when a Seek or Close interrupts it.
func (c *MultiConsumer) send(ctx context.Context, ch chan<- kafka.Message, taken []batch) error {
	done := ctx.Done()
	for bi, b := range taken {
		c.mu.Lock()
		current := c.book.current(b.partition, b.epoch)
		if current && len(b.msgs) == 0 {
			c.book.advance(b.partition, b.advance)
		}
		interrupt := c.interrupt
		c.mu.Unlock()
		for i, m := range b.msgs {
			if !current {
				break // Seek moved the partition: the rest is dropped
			}
			// A revoke waits for this send: once it goes on, m has
			// reached the caller or was given back.
			c.sending.RLock()
			// Prefer stopping, or rechecking after a Seek, to a receiver
			// that is also ready (a select picks at random).
			select {
			case <-done:
				c.sending.RUnlock()
				c.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			case <-interrupt:
				c.sending.RUnlock()
				c.requeue(b, i, taken[bi+1:])
				return nil
			default:
			}
			select {
			case ch <- m:
			case <-interrupt:
				// A Seek or a revoke (m may be of a partition it moved)
				// or Close: give m back; the caller takes again (stale
				// messages are dropped) or sees the consumer closed.
				c.sending.RUnlock()
				c.requeue(b, i, taken[bi+1:])
				return nil
			case <-done:
				c.sending.RUnlock()
				c.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			}
			// Receiving m consumes what came before it; m is delivered.
			// Only the count trigger is checked here (no clock read per
			// message): the committer's timer runs the time trigger.
			c.mu.Lock()
			due := c.book.consumeCounting()
			current = c.book.current(b.partition, b.epoch)
			if current {
				c.book.deliver(b.partition, m.Offset)
				c.book.count(b.partition, 1, int64(len(m.Key)+len(m.Value)))
			}
			interrupt = c.interrupt
			if c.awaiting > 0 {
				c.consumed.notify()
			}
			c.mu.Unlock()
			c.sending.RUnlock()
			if due {
				c.wakeCommitter()
			}
		}
	}
	return nil
}

// requeue puts back what an Iter goroutine took and did not hand over: the
// rest of b from i, then the batches after it.
func (c *MultiConsumer) requeue(b batch, i int, rest []batch) {
	back := make([]batch, 0, 1+len(rest))
	back = append(back, batch{partition: b.partition, epoch: b.epoch, msgs: b.msgs[i:]})
	c.q.unshift(append(back, rest...))
}
