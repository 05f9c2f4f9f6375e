package multiconsumer

import (
	"context"
	"sync"

	"github.com/segmentio/kafka-go"
)

// batch is a run of consecutive messages of one partition, fetched in one
// epoch of that partition (see partOffsets.epoch).
type batch struct {
	partition int
	epoch     uint64
	msgs      []kafka.Message
}

// queue is the bounded queue between the workers and the caller. Workers put
// whole batches, so the hot path costs a lock per batch, not per message;
// the bound still counts messages: a message holds its place from put until
// the controller releases it, after delivering or dropping it, so messages
// taken for a call and not yet delivered still count.
//
// Waiters watch changed, a channel closed and replaced on every change, so
// they can also select on a context.
type queue struct {
	mu      sync.Mutex
	batches []batch // FIFO
	queued  int     // messages in batches
	held    int     // queued plus taken and not yet released
	limit   int
	putters int // puts waiting for room: release wakes waiters only then
	changed chan struct{}
}

func newQueue(limit int) *queue {
	return &queue{limit: limit, changed: make(chan struct{})}
}

// signalLocked wakes every waiter; q.mu is held.
func (q *queue) signalLocked() {
	close(q.changed)
	q.changed = make(chan struct{})
}

// put appends b, waiting while the queue is full or open is cleared (the
// consumer is paused). len(b.msgs) must not exceed the limit. Because open is
// checked under q.mu, once Pause has cleared open and taken q.mu once, no
// later put can complete.
func (q *queue) put(ctx context.Context, b batch, open *event) error {
	n := len(b.msgs)
	for {
		q.mu.Lock()
		isOpen := open.IsSet()
		if isOpen && q.held+n <= q.limit {
			q.batches = append(q.batches, b)
			q.queued += n
			q.held += n
			q.signalLocked()
			q.mu.Unlock()
			return nil
		}
		changed := q.changed
		q.putters++
		q.mu.Unlock()

		var opened <-chan struct{}
		if !isOpen {
			opened = open.Done()
		}
		var err error
		select {
		case <-changed:
		case <-opened:
		case <-ctx.Done():
			err = ctx.Err()
		}
		q.mu.Lock()
		q.putters--
		q.mu.Unlock()
		if err != nil {
			return err
		}
	}
}

// barrier returns once every put that started before it has returned or
// is waiting. Pause calls it after clearing open.
func (q *queue) barrier() {
	q.mu.Lock()
	defer q.mu.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// take removes up to max messages from the head of the queue without
// waiting. Taken messages keep their place in the bound until released.
func (q *queue) take(max int) []batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []batch
	for max > 0 && len(q.batches) > 0 {
		b := &q.batches[0]
		if len(b.msgs) <= max {
			out = append(out, *b)
			max -= len(b.msgs)
			q.queued -= len(b.msgs)
			*b = batch{}
			q.batches = q.batches[1:]
			continue
		}
		out = append(out, batch{partition: b.partition, epoch: b.epoch, msgs: b.msgs[:max:max]})
		b.msgs = b.msgs[max:]
		q.queued -= max
		max = 0
	}
	if len(q.batches) == 0 {
		q.batches = q.batches[:0:0] // let the backing array go
	}
	return out
}

// unshift puts taken batches back at the head of the queue, in order, for a
// later call. Their places in the bound were never released.
func (q *queue) unshift(bs []batch) {
	if len(bs) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, b := range bs {
		q.queued += len(b.msgs)
	}
	q.batches = append(bs[:len(bs):len(bs)], q.batches...)
	q.signalLocked()
}

// release frees n places in the bound.
func (q *queue) release(n int) {
	if n == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.held -= n
	if q.putters > 0 {
		q.signalLocked()
	}
}

// drop removes the queued batches for which stale returns true, frees their
// places and returns how many messages it dropped.
func (q *queue) drop(stale func(b *batch) bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	kept, n := q.batches[:0], 0
	for i := range q.batches {
		if stale(&q.batches[i]) {
			n += len(q.batches[i].msgs)
			continue
		}
		kept = append(kept, q.batches[i])
	}
	clear(q.batches[len(kept):])
	q.batches = kept
	q.queued -= n
	q.held -= n
	if n > 0 {
		q.signalLocked()
	}
	return n
}

// state returns the number of queued messages and a channel closed at the
// next change.
func (q *queue) state() (queued int, changed <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued, q.changed
}

// lens returns the queued and held message counts.
func (q *queue) lens() (queued, held int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued, q.held
}
