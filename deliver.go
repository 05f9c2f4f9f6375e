package multiconsumer

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"
)

// GetOption configures one GetMessages call.
type GetOption func(*getOptions)

type getOptions struct {
	block   bool
	atLeast int // with block: wait for this many; -1: for count
	timeout time.Duration
}

// Block sets whether GetMessages waits: true (the default) waits until count
// messages have arrived or the timeout; false takes only what is queued now.
func Block(block bool) GetOption {
	return func(o *getOptions) { o.block, o.atLeast = block, -1 }
}

// BlockFor makes GetMessages wait until at least n messages have arrived (or
// the timeout), then take what is queued, up to count: the seed's
// block=<int>. n <= 0 is Block(false).
func BlockFor(n int) GetOption {
	return func(o *getOptions) { o.block, o.atLeast = n > 0, n }
}

// Timeout bounds how long GetMessages waits. Default 10s; 0 means no
// timeout: it waits until ctx is done. A negative timeout is an error.
func Timeout(d time.Duration) GetOption {
	return func(o *getOptions) { o.timeout = d }
}

// GetMessages returns up to count messages, in order within each partition.
// Calling it counts every message delivered before as consumed (the caller
// came back for more), which may trigger an auto-commit.
//
// With Block(true), the default, it waits until count messages or the
// timeout; with BlockFor(n), until n; with Block(false), not at all. When the
// timeout expires it returns what it has, possibly nothing, and a nil
// error. If ctx ends first, it returns ctx's error and delivers nothing: the
// messages it had taken stay queued, in order, for the next call. After
// Close it returns ErrClosed. A negative count is an error; 0 returns
// nothing.
func (c *MultiConsumer) GetMessages(ctx context.Context, count int, opts ...GetOption) ([]kafka.Message, error) {
	if c.isClosed() {
		return nil, ErrClosed
	}
	o := getOptions{block: true, atLeast: -1, timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	switch {
	case count < 0:
		return nil, fmt.Errorf("multiconsumer: GetMessages: negative count %d", count)
	case o.timeout < 0:
		return nil, fmt.Errorf("multiconsumer: GetMessages: negative timeout %v", o.timeout)
	}
	need := 0
	if o.block {
		need = count
		if o.atLeast >= 0 {
			need = min(o.atLeast, count)
		}
	}

	if err := c.acquire(ctx); err != nil {
		return nil, err
	}
	defer c.releaseToken()
	c.consume()
	if count == 0 {
		return nil, nil
	}

	var expired <-chan time.Time
	if need > 0 && o.timeout > 0 {
		t := time.NewTimer(o.timeout)
		defer t.Stop()
		expired = t.C
	}
	var taken []batch
	n := 0
	for {
		c.mu.Lock()
		for _, b := range c.q.take(count - n) {
			if c.book.current(b.partition, b.epoch) { // else moved by Seek since it was fetched
				taken = append(taken, b)
				n += len(b.msgs)
			}
		}
		c.mu.Unlock()
		if n >= need {
			break
		}
		queued, changed := c.q.state()
		if queued > 0 {
			continue
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
	if n == 0 {
		return nil
	}
	out := make([]kafka.Message, 0, n)
	c.mu.Lock()
	for _, b := range taken {
		if !c.book.current(b.partition, b.epoch) {
			continue // a Seek since it was taken
		}
		out = append(out, b.msgs...)
		c.book.deliverRun(b.partition, b.msgs[len(b.msgs)-1].Offset, len(b.msgs))
	}
	c.mu.Unlock()
	return out
}

// acquire takes the delivery token, or fails when ctx ends or the consumer
// closes.
func (c *MultiConsumer) acquire(ctx context.Context) error {
	select {
	case c.deliver <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	case <-c.closing.Done():
		return ErrClosed
	}
	if c.isClosed() {
		c.releaseToken()
		return ErrClosed
	}
	return nil
}

func (c *MultiConsumer) releaseToken() { <-c.deliver }

// iterBatch is how many messages an Iter goroutine takes from the queue at
// a time; it holds the delivery token while it hands them over.
const iterBatch = 256

// Iter returns an unbuffered channel of messages, in order within each
// partition, closed when ctx ends or the consumer closes. It waits for
// messages as long as it takes; there is no idle cut-off. Receiving a
// message counts every message delivered before it as consumed. A message
// taken for the channel but never received stays queued for the next call.
//
// Ranging over the channel and breaking out of the loop should be followed by
// cancelling ctx, which ends the goroutine that feeds it.
func (c *MultiConsumer) Iter(ctx context.Context) <-chan kafka.Message {
	ch := make(chan kafka.Message)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		close(ch)
		return ch
	}
	c.helpers.Go(func() {
		defer close(ch)
		for c.iterate(ctx, ch) == nil {
		}
	})
	return ch
}

// iterate waits for messages and hands them to ch one by one. It returns an
// error when ctx ends or the consumer closes.
func (c *MultiConsumer) iterate(ctx context.Context, ch chan<- kafka.Message) error {
	if err := c.acquire(ctx); err != nil {
		return err
	}
	defer c.releaseToken()
	var taken []batch
	for len(taken) == 0 {
		taken = c.q.take(iterBatch)
		if len(taken) > 0 {
			break
		}
		queued, changed := c.q.state()
		if queued > 0 {
			continue
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.closing.Done():
			return ErrClosed
		}
	}

	for bi, b := range taken {
		for i, m := range b.msgs {
			c.mu.Lock()
			current := c.book.current(b.partition, b.epoch)
			seeked := c.seeked
			c.mu.Unlock()
			if !current {
				break
			}
			if ctx.Err() != nil { // prefer stopping to a receiver that is also ready
				c.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			}
			select {
			case ch <- m:
			case <-seeked:
				// m may be of a partition that Seek just moved: don't
				// hand it over; take again, the stale ones are dropped.
				c.requeue(b, i, taken[bi+1:])
				return nil
			case <-ctx.Done():
				c.requeue(b, i, taken[bi+1:])
				return ctx.Err()
			case <-c.closing.Done():
				c.requeue(b, i, taken[bi+1:])
				return ErrClosed
			}
			now := time.Now()
			c.mu.Lock()
			due := c.book.consume(now)
			if c.book.current(b.partition, b.epoch) {
				c.book.deliver(b.partition, m.Offset)
			}
			c.mu.Unlock()
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
