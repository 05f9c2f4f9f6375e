package multiconsumer

import (
	"context"
	"iter"

	"github.com/segmentio/kafka-go"
)

// messagesBatch is how many messages a Messages loop takes from the queue
// at a time. It holds the delivery token while it takes them, not while
// the loop body runs.
const messagesBatch = 256

// stash is what a Messages loop took from the queue and has not yielded
// yet: rest[0].msgs[0] is the next message. rest is guarded by the
// delivery's mu: the next delivery that takes from the queue puts it back
// first (reclaim).
type stash struct {
	rest []batch
}

// Messages returns an iterator over the consumer's messages, in order
// within each partition:
//
//	for m, err := range c.Messages(ctx) {
//		if err != nil {
//			return err // ctx.Err(), ErrClosed, ErrBusy, or Err's
//		}
//		handle(m)
//	}
//
// A message is delivered when it is yielded, and consumed when the loop
// asks for the next one (starting a loop comes back for what was delivered
// before, as a GetMessages call does). So the last message yielded before a
// break, a return or a panic in the loop body is not consumed: Commit
// commits it, Close alone leaves it to be delivered again. A loop ended by
// cancelling ctx (from the body, or on shutdown) consumes the message it
// handled last: that is the clean end, before Close.
//
// The loop waits for messages as long as it takes. It ends after yielding
// one error, with a zero Message: ctx's error when ctx is done (checked
// before each message), ErrClosed once Close has begun, the consumer's
// error (Err) when it has stopped for good and everything queued before
// was yielded, and ErrBusy, at once, while Process runs. A nil ctx yields
// an error too.
//
// Messages are taken from the queue in batches, in the loop's goroutine (no
// goroutine is started, none is left after a break). Those taken and not
// yielded when the loop ends go back to the head of the queue, in order,
// for the next call; so do they when GetMessages, Iter or another Messages
// loop takes from the queue meanwhile, so that each partition's messages
// still reach callers in order. A Seek while the loop runs drops what it
// moved: nothing fetched before it is yielded after it returns. A revoke
// (group mode) waits for the loop to come back for the message it yielded
// last, as for a GetMessages batch, not for those it has yet to yield.
//
// While the loop runs, Process returns ErrBusy. Offsets and Stats are
// exact at every yield.
func (c *MultiConsumer) Messages(ctx context.Context) iter.Seq2[kafka.Message, error] {
	return c.out.messages(ctx)
}

// messages is Messages.
func (d *delivery) messages(ctx context.Context) iter.Seq2[kafka.Message, error] {
	return func(yield func(kafka.Message, error) bool) {
		if ctx == nil {
			yield(kafka.Message{}, errNilContext)
			return
		}
		h := &stash{}
		if err := d.startMessages(); err != nil {
			yield(kafka.Message{}, err)
			return
		}
		defer d.endMessages(h)
		done := ctx.Done()
		back := true // asking for the first message comes back too
		for {
			m, err := d.next(ctx, done, h, back)
			if m == nil && err == nil {
				back = false // consumed by next
				err = d.take(ctx, h)
			}
			if err != nil {
				yield(kafka.Message{}, err)
				return
			}
			if m != nil {
				if !yield(*m, nil) {
					return // m is delivered, not consumed
				}
				back = true
			}
		}
	}
}

// startMessages counts a Messages loop in iters, which keeps Process out,
// unless Close has begun or Process runs.
func (d *delivery) startMessages() error {
	if d.life.isClosed() {
		return ErrClosed
	}
	if !d.enter(true) {
		if d.life.isClosed() {
			return ErrClosed
		}
		return ErrBusy
	}
	return nil
}

// endMessages ends a Messages loop: what it stashed goes back to the queue.
func (d *delivery) endMessages(h *stash) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.iters--
	if d.stash == h {
		d.reclaimLocked()
	}
}

// reclaim puts what a Messages loop stashed back at the head of the queue,
// before a delivery takes from it: each partition's messages then reach
// callers in order, and the ledger's offsets only move forward. The caller
// holds the delivery token.
func (d *delivery) reclaim() {
	d.mu.Lock()
	d.reclaimLocked()
	d.mu.Unlock()
}

// reclaimLocked is reclaim with d.mu held.
func (d *delivery) reclaimLocked() {
	if h := d.stash; h != nil {
		d.stash = nil
		d.q.unshift(h.rest)
		h.rest = nil
	}
}

// next is one step of a Messages loop: if the loop came back (back), it
// counts what was delivered as consumed; then it delivers the next message
// h stashed, leaving out what a Seek or a revoke made stale. It returns nil
// and no error when h has nothing (any more: another delivery may have
// reclaimed it).
func (d *delivery) next(ctx context.Context, done <-chan struct{}, h *stash, back bool) (*kafka.Message, error) {
	if d.life.isClosed() {
		return nil, ErrClosed // and nothing consumed after Close began, as GetMessages
	}
	due := false
	if back {
		due = d.led.consumeCounting()
	}
	var m *kafka.Message
	var err error
	select {
	case <-done:
		err = ctx.Err()
	default:
		d.mu.Lock()
		for d.stash == h && len(h.rest) > 0 {
			b := &h.rest[0]
			if len(b.msgs) == 0 { // a marker
				d.led.advanceCurrent(b.partition, b.epoch, b.advance)
				h.rest = h.rest[1:]
				continue
			}
			if !d.led.deliverCurrent(b.partition, b.epoch, b.msgs[0].Offset) {
				h.rest = h.rest[1:] // a Seek or a revoke: the rest of b is stale too
				continue
			}
			m = &b.msgs[0]
			b.msgs, b.whole = b.msgs[1:], false // m is the caller's: the array is never given back
			if len(b.msgs) == 0 {
				// Not left empty at the head: it would be taken for a
				// marker.
				h.rest = h.rest[1:]
			}
			break
		}
		d.mu.Unlock()
	}
	if due {
		d.wake()
	}
	return m, err
}

// pending returns the number of batches a delivery may take: those queued,
// and those a Messages loop stashed (the delivery reclaims them), and a
// channel closed at the next change of the queue.
func (d *delivery) pending() (batches int, changed <-chan struct{}) {
	d.mu.Lock()
	stashed := 0
	if d.stash != nil {
		stashed = len(d.stash.rest)
	}
	d.mu.Unlock()
	batches, changed = d.q.pending()
	return batches + stashed, changed
}

// take waits for queued messages, without the delivery token, then takes a
// batch of them for h with the token. It returns an error when ctx ends,
// the consumer closes, or it stopped for good and nothing is queued.
func (d *delivery) take(ctx context.Context, h *stash) error {
	for {
		if err := d.awaitQueued(ctx); err != nil {
			return err
		}
		if _, err := d.acquire(ctx, nil, nil); err != nil {
			return err
		}
		d.mu.Lock()
		d.reclaimLocked()
		h.rest = d.q.take(messagesBatch)
		took := len(h.rest) > 0 // read under d.mu: a delivery may reclaim h at once
		if took {
			d.stash = h
		}
		d.mu.Unlock()
		d.release()
		if took {
			return nil
		}
	}
}
