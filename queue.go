package multiconsumer

import (
	"context"
	"slices"
	"sync"

	"github.com/segmentio/kafka-go"
)

// batch is a run of consecutive messages of one partition, fetched in one
// epoch of that partition (see partOffsets.epoch). A batch without messages
// is a marker: delivering it moves the partition to advance, past offsets
// that hold no message (transaction markers), or to where the log restarts
// after retention. Markers travel in order with the messages, and do not
// count in the bound.
type batch struct {
	partition int
	epoch     uint64
	msgs      []kafka.Message
	advance   int64 // markers only
	// whole: msgs is a whole array of the queue's arrays (see arrays),
	// which whoever is done with every message of it gives back. A batch
	// split in two is whole no more (the halves share the array).
	whole bool
}

// queue is the bounded queue between the workers and the caller. Workers put
// whole batches, so the hot path costs a lock per batch, not per message;
// the bound still counts messages.
//
// A message leaves the bound when a delivery takes it. Taken messages that a
// cancelled call puts back (unshift) return to the head of the queue, even
// past the bound; puts then wait until it drains. So the queue holds at most
// its limit plus what one call asked for, and a call waiting for more
// messages than the limit never starves the workers that would bring them.
//
// Waiters watch changed, a channel closed on every change they wait for, so
// they can also select on a context. It is made when a waiter asks for it
// and dropped when closed: a put that nobody waits for allocates nothing.
//
// While Process runs, the queue is fair: each partition may have only its
// share of the bound (the limit divided among the partitions consumed)
// queued or lent, so that one partition's backlog, waiting for its few
// keys, does not keep the others' messages from the handlers. An unpacker
// decodes a partition's records only as far as its share has room
// (roomFor), and parks the rest, undecoded, until the partition is down to
// half its share (waitParked). What a put brings past a partition's share
// all the same (a put while the bound is full of others' messages) waits
// in the partition's overflow, outside the bound, and moves into the queue
// as Process takes messages. A partition is not fetched again while it has
// overflow or more than half its share, or is parked with a response
// behind its parked records (isHungry). So a worker never waits for one
// partition while it holds the others' messages, and the memory past the
// bound is at most the rest of one fetch response per partition and the
// next one, as bytes (as a worker holds its response while it waits for
// room in GetMessages's queue, and fetches the next).
type queue struct {
	mu      sync.Mutex // guards the fields below
	batches []batch    // FIFO
	queued  int        // messages in batches
	lent    int        // messages Process took (lend) and has not released yet: still in the bound
	limit   int
	putters int       // puts waiting for room: take wakes waiters only then
	changed broadcast // notified on every change waiters wait for; its own lock (a leaf)
	fair    bool      // Process runs: partitions get a share of the bound each
	nparts  int       // partitions consumed, which share the bound
	parts   []int     // messages of each partition queued or lent, by partition (partOf)
	hungry  int       // workers waiting for a partition to be hungry (see waitRoom)
	over    [][]batch // fair: each partition's overflow, in order, by partition (overOf)
	overN   int       // messages in over
	// overflowing lists the partitions with overflow (in no order): a
	// release walks them, not every partition.
	overflowing []int
	open        *event // the workers' open event, from put: overflow moves only while set
	arrays      arrays // message arrays for the unpackers, given back; its own lock
	// parked marks, by partition, the epoch of records an unpacker holds
	// undecoded because the partition's share was full (0: none; see
	// roomFor). behind marks those whose unpacker holds a response behind
	// the parked records too: a parked partition is hungry for one
	// response ahead of its parked records, no more (see isHungry).
	parked []uint64
	behind []bool
}

func newQueue(limit int) *queue {
	q := &queue{limit: limit}
	q.arrays.size = batchSizeOf(limit)
	return q
}

// batchSizeOf is how many messages an unpacker queues at most in a batch:
// a quarter of the queue, big enough to keep the per-batch costs low,
// small enough that a worker finds room before the queue is empty.
func batchSizeOf(queueSize int) int { return max(1, min(512, queueSize/4)) }

// arrays keeps the message arrays of batches that the consumer is done
// with, for the unpackers' next runs. A batch's array is garbage once
// GetMessages has copied its messages into the caller's slice, once Iter
// has sent each, and, under
// Process, once its last handler returns (a handler gets a copy of its
// message): about 150 B a message of a backlog, which the collector would
// sweep and the unpacker allocate and zero again. Only whole batches
// (batch.whole: not split, nothing of them taken by a Messages loop) give
// their array back; only arrays of size messages are kept, cleared, and no
// more than keepArrays of them.
type arrays struct {
	mu   sync.Mutex
	size int               // set once, before the first get
	free [][]kafka.Message // guarded by mu
}

const keepArrays = 32

// get returns an empty array of a.size messages, or nil if none is kept.
func (a *arrays) get() []kafka.Message {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.free)
	if n == 0 {
		return nil
	}
	ms := a.free[n-1]
	a.free[n-1] = nil
	a.free = a.free[:n-1]
	return ms
}

// put keeps ms for a later get: nothing may read or write it any more.
// Past len(ms), an array of the queue's is zero already (get hands out
// zeroed arrays, and a run fills it from the start).
func (a *arrays) put(ms []kafka.Message) {
	if a.size == 0 || cap(ms) != a.size {
		return
	}
	clear(ms) // let go of the responses its keys and values are slices of
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.free) < keepArrays {
		a.free = append(a.free, ms[:0])
	}
}

// setFair turns the partitions' shares on or off. Off, the overflow moves
// into the queue.
func (q *queue) setFair(fair bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.fair = fair
	q.refillAllLocked()
	q.signalLocked()
}

// setPartitions sets how many partitions share the bound.
func (q *queue) setPartitions(n int) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.nparts = n
	q.refillAllLocked()
	q.signalLocked()
}

// refill moves overflow into the queue where there is room: after a
// Resume.
func (q *queue) refill() {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.refillAllLocked()
	q.signalLocked() // the unpackers' parked records may go on too
}

func (q *queue) refillAllLocked() {
	q.refillOthersLocked(-1)
}

// refillOthersLocked refills the overflowing partitions other than p.
func (q *queue) refillOthersLocked(p int) {
	// Backwards: a refill that empties o's overflow moves the last of
	// the list, seen already, into o's place.
	for i := len(q.overflowing) - 1; i >= 0; i-- {
		if i < len(q.overflowing) && q.overflowing[i] != p {
			q.refillLocked(q.overflowing[i])
		}
	}
}

// partOf returns the messages of partition p queued or lent.
func (q *queue) partOf(p int) int {
	if p < len(q.parts) {
		return q.parts[p]
	}
	return 0
}

// overOf returns partition p's overflow.
func (q *queue) overOf(p int) []batch {
	if p < len(q.over) {
		return q.over[p]
	}
	return nil
}

// addOver appends b to partition p's overflow.
func (q *queue) addOver(p int, b batch) {
	if p >= len(q.over) {
		q.over = append(q.over, make([][]batch, p+1-len(q.over))...)
	}
	if len(q.over[p]) == 0 {
		q.overflowing = append(q.overflowing, p)
	}
	q.over[p] = append(q.over[p], b)
	q.overN += len(b.msgs)
}

// setOver sets partition p's overflow to bs (what is left of it).
func (q *queue) setOver(p int, bs []batch) {
	if len(bs) > 0 {
		q.over[p] = bs
		return
	}
	if p < len(q.over) && q.over[p] != nil {
		q.over[p] = nil // let the backing array go
		if i := slices.Index(q.overflowing, p); i >= 0 {
			last := len(q.overflowing) - 1
			q.overflowing[i] = q.overflowing[last]
			q.overflowing = q.overflowing[:last]
		}
	}
}

// refillLocked moves partition p's overflow into the queue, as far as its
// share allows (all of it when the queue is not fair), once p has no more
// than half its share, unless paused.
func (q *queue) refillLocked(p int) {
	over := q.overOf(p)
	if len(over) == 0 || q.fair && q.partOf(p) > q.shareLocked()/2 {
		return // not yet: move half a share at a time, not a message at a time
	}
	moved := false
	for len(over) > 0 && q.open != nil && q.open.IsSet() {
		b := &over[0]
		k := len(b.msgs)
		if q.fair {
			k = min(k, max(0, q.shareLocked()-q.partOf(p)))
			if k == 0 && len(b.msgs) > 0 {
				break
			}
		}
		head := *b
		if k < len(b.msgs) {
			head.msgs = b.msgs[:k:k]
			b.msgs = b.msgs[k:]
			head.whole, b.whole = false, false
		} else {
			over[0] = batch{}
			over = over[1:]
		}
		q.batches = append(q.batches, head)
		q.queued += k
		q.overN -= k
		q.countLocked(p, k)
		moved = true
	}
	q.setOver(p, over)
	if moved {
		q.signalLocked()
	}
}

// room returns how many messages of partition p may be queued now without
// passing its share, when the queue is fair, and -1 when it is not (the
// bound alone applies).
func (q *queue) room(p int) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.roomLocked(p)
}

func (q *queue) roomLocked(p int) int {
	if !q.fair {
		return -1
	}
	if len(q.overOf(p)) > 0 {
		return 0 // its overflow goes first
	}
	return max(0, q.shareLocked()-q.partOf(p))
}

func (q *queue) shareLocked() int { return max(1, q.limit/max(1, q.nparts)) }

// isHungry reports whether partition p is worth a fetch: the queue is not
// fair, or p has no more than half its share; or p is parked, its
// unpacker holds no response behind the parked records, and few of them
// are left (fetchAheadBytes). A parked partition fetches one response
// ahead of what waits undecoded, as a worker does for GetMessages (it
// fetches the next response while the unpacker queues the last): fetched
// only once the parked records were queued, the next would come a round
// trip after the partition's last messages went, and on Kafka the
// partition would wait for it every response (Process's Unordered drained
// at 0.81x GetMessages' rate). Fetched as soon as a response is parked,
// it would sit in memory while the parked one is worked through (8-11
// MiB more peak RSS for 8 partitions); fetched with a second one behind,
// nothing was faster.
func (q *queue) isHungry(p int) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.isHungryLocked(p)
}

func (q *queue) isHungryLocked(p int) bool {
	if q.parkedOf(p) != 0 {
		return !q.behindOf(p)
	}
	return q.wantsLocked(p)
}

// behindOf reports whether partition p, parked, is not to be fetched: its
// unpacker holds a response behind the parked records, or many of them
// are left.
func (q *queue) behindOf(p int) bool { return p < len(q.behind) && q.behind[p] }

// setBehind records whether the unpacker of partition p, parked in epoch,
// holds a response behind the parked records or many of them (roomFor
// sets it as p parks): while it does, p is not hungry. Once it does not,
// the workers waiting for a hungry partition are woken.
func (q *queue) setBehind(p int, epoch uint64, behind bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.parkedOf(p) != epoch || q.behindOf(p) == behind {
		return
	}
	if p >= len(q.behind) {
		q.behind = append(q.behind, make([]bool, p+1-len(q.behind))...)
	}
	q.behind[p] = behind
	if !behind && q.hungry > 0 {
		q.signalLocked()
	}
}

// wantsLocked reports whether partition p may take more messages: the
// queue is not fair, or p has no overflow and no more than half its share
// (room for half a share at a time, not a message at a time).
func (q *queue) wantsLocked(p int) bool {
	return len(q.overOf(p)) == 0 && (!q.fair || q.partOf(p) <= q.shareLocked()/2)
}

// parkedOf returns the epoch partition p is parked in, 0 if none.
func (q *queue) parkedOf(p int) uint64 {
	if p < len(q.parked) {
		return q.parked[p]
	}
	return 0
}

// roomFor returns how many messages of partition p, fetched in epoch, an
// unpacker may decode and queue now: -1 when the queue is not fair (put
// waits for room), else what fits in p's share, 0 while paused (open
// cleared). When it returns 0, p is parked in epoch, unless it is parked
// in a newer one already: the unpacker keeps the rest of its records
// undecoded (rather than decoded in the overflow) until resumable says it
// may go on, and the partition is hungry only if low says few of them are
// left (then, and as they are decoded, setBehind tells).
func (q *queue) roomFor(p int, epoch uint64, open *event, low bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.open = open
	if !q.fair {
		return -1
	}
	n := 0
	if open.IsSet() {
		n = q.roomLocked(p)
	}
	if n == 0 && q.parkedOf(p) < epoch {
		// A newer epoch's mark stays: an older epoch's records (a
		// worker's response fetched before a revoke, say) are stale,
		// and must not make the newer's look dropped.
		if p >= len(q.parked) {
			q.parked = append(q.parked, make([]uint64, p+1-len(q.parked))...)
		}
		q.parked[p] = epoch
		if p >= len(q.behind) {
			q.behind = append(q.behind, make([]bool, p+1-len(q.behind))...)
		}
		q.behind[p] = !low // many records left: no fetch yet; later, the unpacker's to tell (setBehind)
	}
	return n
}

// unpark clears partition p's parked mark, if it is epoch's: the unpacker
// queued what it held, or let it go.
func (q *queue) unpark(p int, epoch uint64) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if epoch == 0 || q.parkedOf(p) != epoch {
		return
	}
	q.unmarkLocked(p)
	if q.hungry > 0 && q.isHungryLocked(p) {
		q.signalLocked()
	}
}

// unmarkLocked clears partition p's parked mark, and what was behind it.
// q.mu is held.
func (q *queue) unmarkLocked(p int) {
	q.parked[p] = 0
	if p < len(q.behind) {
		q.behind[p] = false
	}
}

// parkedRef names a partition an unpacker parked, and in which epoch.
type parkedRef struct {
	p     int
	epoch uint64
}

// resumableLocked reports whether the unpacker may go on with parked
// partition r.p: it has room again (see wantsLocked) and the consumer is
// not paused, or its mark was dropped (the records are stale: a Seek, a
// revoke), which the unpacker learns from parkedLive.
func (q *queue) resumableLocked(r parkedRef) bool {
	if q.parkedOf(r.p) != r.epoch {
		return true // dropped
	}
	return !q.fair || q.open != nil && q.open.IsSet() && q.wantsLocked(r.p)
}

// parkedLive reports whether partition p's parked mark is still epoch's:
// false once a drop let its records go (they are stale).
func (q *queue) parkedLive(p int, epoch uint64) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.parkedOf(p) == epoch
}

// waitParked returns a channel closed when one of the parked partitions
// may go on (see resumableLocked), or at another change, and a func to
// call when done waiting. If one may go on already, the channel is closed.
func (q *queue) waitParked(parked []parkedRef) (<-chan struct{}, func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waitHungryLocked(slices.ContainsFunc(parked, q.resumableLocked))
}

// waitHungryLocked returns a closed channel if ready, else the channel
// closed at the next change, counted among the hungry waiters (whom a
// release wakes) until the returned func is called. q.mu is held.
func (q *queue) waitHungryLocked(ready bool) (<-chan struct{}, func()) {
	if ready {
		return closedChan, func() {}
	}
	q.hungry++
	return q.changedLocked(), func() {
		q.mu.Lock()
		q.hungry--
		q.mu.Unlock()
	}
}

// waitRoom returns a channel closed when one of parts becomes hungry (or
// at another change), and a func to call when done waiting. If one is
// hungry already, or the queue is not fair, the channel is closed: a
// release between the caller's look and this call is not missed.
func (q *queue) waitRoom(parts []int) (<-chan struct{}, func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.waitHungryLocked(slices.ContainsFunc(parts, q.isHungryLocked))
}

var closedChan = func() chan struct{} {
	ch := make(chan struct{})
	close(ch)
	return ch
}()

// count adds n messages of partition p (n < 0: removes).
func (q *queue) countLocked(p, n int) {
	if n == 0 {
		return
	}
	if p >= len(q.parts) {
		q.parts = append(q.parts, make([]int, p+1-len(q.parts))...)
	}
	q.parts[p] = max(0, q.parts[p]+n)
}

// signalLocked wakes every waiter; q.mu is held.
func (q *queue) signalLocked() { q.changed.notify() }

// changedLocked returns the channel closed at the next change; q.mu is
// held, so that the channel goes with the state read with it.
func (q *queue) changedLocked() <-chan struct{} { return q.changed.wait() }

// signal wakes every waiter, for a change outside the queue they should
// see (the consumer stopped for good).
func (q *queue) signal() {
	q.mu.Lock()
	q.signalLocked()
	q.mu.Unlock()
}

// put appends b, waiting while the queue has no room for it or open is
// cleared (the consumer is paused). len(b.msgs) must not exceed the limit.
// Because open is checked under q.mu, once Pause has cleared open and passed
// barrier, no later put can complete.
func (q *queue) put(ctx context.Context, b batch, open *event) error {
	n := len(b.msgs)
	for {
		q.mu.Lock()
		q.open = open
		if q.fair {
			q.putFairLocked(b)
			q.mu.Unlock()
			return nil
		}
		isOpen := open.IsSet()
		if isOpen && q.queued+q.lent+n <= q.limit {
			q.batches = append(q.batches, b)
			q.queued += n
			q.countLocked(b.partition, n)
			q.signalLocked()
			q.mu.Unlock()
			return nil
		}
		changed := q.changedLocked()
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

// free returns how many messages the bound has room for now (a share
// fetcher asks the broker for no more).
func (q *queue) free() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return max(0, q.limit-q.queued-q.lent-q.overN)
}

// waitingToPut reports whether a put waits for room: the consumer takes
// more slowly than the workers queue.
func (q *queue) waitingToPut() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.putters > 0
}

// roomChanged returns a channel closed at the next change of the queue (a
// take included, which frees room), and a func to call when done waiting.
func (q *queue) roomChanged() (<-chan struct{}, func()) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.putters++
	return q.changedLocked(), func() {
		q.mu.Lock()
		q.putters--
		q.mu.Unlock()
	}
}

// offer puts b as put does, but does not wait: it reports false, putting
// nothing, when open is not set or the bound has no room for b. It puts
// nothing in Process's overflow, whose partitions move into the queue only
// as their own messages are released: the share fetcher, which offers, keeps
// what does not fit and offers it again when the queue changes.
func (q *queue) offer(b batch, open *event) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.open = open
	if !open.IsSet() {
		return false
	}
	n := len(b.msgs)
	if q.queued+q.lent+n > q.limit && q.queued+q.lent > 0 {
		return false // a batch larger than the bound goes into an empty queue
	}
	q.batches = append(q.batches, b)
	q.queued += n
	q.countLocked(b.partition, n)
	q.signalLocked()
	return true
}

// putFairLocked queues what fits in b's partition's share and sends the
// rest to its overflow: it never waits.
func (q *queue) putFairLocked(b batch) {
	p := b.partition
	if len(q.overOf(p)) == 0 && q.open.IsSet() {
		k := min(len(b.msgs), q.roomLocked(p), max(0, q.limit-q.queued-q.lent))
		if k == len(b.msgs) {
			q.batches = append(q.batches, b)
			q.queued += k
			q.countLocked(p, k)
			q.signalLocked()
			return
		}
		if k > 0 {
			q.batches = append(q.batches, batch{partition: p, epoch: b.epoch, msgs: b.msgs[:k:k]})
			q.queued += k
			q.countLocked(p, k)
			b.msgs, b.whole = b.msgs[k:], false
			q.signalLocked()
		}
	}
	q.addOver(p, b)
}

// barrier returns once every put that started before it has returned or
// is waiting. Pause calls it after clearing open.
func (q *queue) barrier() {
	q.mu.Lock()
	defer q.mu.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// take removes up to max messages from the head of the queue without
// waiting.
func (q *queue) take(max int) []batch { return q.takeInto(nil, max) }

// takeInto is take, appending to dst.
func (q *queue) takeInto(dst []batch, max int) []batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.takeLocked(dst, max)
}

// lend takes every queued message, as take does, but they stay in the
// bound until release: Process keeps them waiting for their turn.
func (q *queue) lend() []batch {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := q.batches
	q.batches = nil
	q.lent += q.queued
	q.queued = 0
	return out
}

// release takes n lent messages of partition p out of the bound.
func (q *queue) release(p, n int) {
	if n == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	q.lent -= n
	was := q.wantsLocked(p)
	q.countLocked(p, -n)
	q.refillLocked(p)
	// The others' overflow too: a partition whose messages went to its
	// overflow while the bound was full of others' (queued before Process
	// made the queue fair) has nothing of its own lent, so no release of
	// its own would ever move them.
	q.refillOthersLocked(p)
	if q.hungry > 0 && !was && q.wantsLocked(p) {
		q.signalLocked() // p became hungry, or its parked records may go on
		return
	}
	if q.putters > 0 {
		q.signalLocked()
	}
}

func (q *queue) takeLocked(out []batch, max int) []batch {
	before, took := q.queued, len(out)
	i := 0 // q.batches[:i] are taken
	for max > 0 && i < len(q.batches) {
		b := &q.batches[i]
		if len(b.msgs) <= max {
			out = append(out, *b)
			max -= len(b.msgs)
			q.queued -= len(b.msgs)
			q.countLocked(b.partition, -len(b.msgs))
			i++
			continue
		}
		out = append(out, batch{partition: b.partition, epoch: b.epoch, msgs: b.msgs[:max:max]})
		b.msgs, b.whole = b.msgs[max:], false
		q.queued -= max
		q.countLocked(b.partition, -max)
		max = 0
	}
	// Markers right behind what was taken go too: they cost nothing, and
	// left at the head they would wait for the next message.
	for i < len(q.batches) && len(q.batches[i].msgs) == 0 && len(out) > took {
		out = append(out, q.batches[i])
		i++
	}
	q.shiftLocked(i)
	if q.queued < before && q.putters > 0 {
		q.signalLocked()
	}
	return out
}

// shiftLocked drops the first n batches. When few are left, they move to
// the front of the array, which is kept (a trickle of puts and takes
// allocates nothing) unless it grew large; else the slice moves past the
// n, as copying many for a take of few would cost more than it saves.
func (q *queue) shiftLocked(n int) {
	if n == 0 {
		return
	}
	clear(q.batches[:n]) // their messages are not the queue's any more
	rest := len(q.batches) - n
	if rest > max(n, 8) {
		q.batches = q.batches[n:]
		return
	}
	copy(q.batches, q.batches[n:])
	clear(q.batches[rest:])
	q.batches = q.batches[:rest]
	if rest == 0 && cap(q.batches) > keepBatches {
		q.batches = nil // let a large array go
	}
}

// keepBatches is the most batches whose array an empty queue keeps.
const keepBatches = 64

// unshift puts taken batches back at the head of the queue, in order, for a
// later call.
func (q *queue) unshift(bs []batch) {
	if len(bs) == 0 {
		return
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	for _, b := range bs {
		q.queued += len(b.msgs)
		q.countLocked(b.partition, len(b.msgs))
	}
	// A new array: bs's is the caller's (GetMessages reuses it).
	q.batches = append(append(make([]batch, 0, len(bs)+len(q.batches)), bs...), q.batches...)
	q.signalLocked()
}

// drop removes the queued batches for which stale returns true and returns
// how many messages it dropped.
func (q *queue) drop(stale func(b *batch) bool) int {
	q.mu.Lock()
	defer q.mu.Unlock()
	kept, n := q.batches[:0], 0
	for i := range q.batches {
		if stale(&q.batches[i]) {
			n += len(q.batches[i].msgs)
			q.countLocked(q.batches[i].partition, -len(q.batches[i].msgs))
			continue
		}
		kept = append(kept, q.batches[i])
	}
	clear(q.batches[len(kept):])
	q.batches = kept
	q.queued -= n
	for i := len(q.overflowing) - 1; i >= 0; i-- { // backwards: see refillOthersLocked
		p := q.overflowing[i]
		bs := q.over[p]
		keptOver := bs[:0]
		for i := range bs {
			if stale(&bs[i]) {
				n += len(bs[i].msgs)
				q.overN -= len(bs[i].msgs)
				continue
			}
			keptOver = append(keptOver, bs[i])
		}
		clear(bs[len(keptOver):])
		q.setOver(p, keptOver)
	}
	for p, epoch := range q.parked {
		if epoch != 0 && stale(&batch{partition: p, epoch: epoch}) {
			q.unmarkLocked(p) // the unpacker lets the records go
			q.signalLocked()
		}
	}
	if n > 0 {
		// What was dropped made room: a partition that overflowed while
		// the bound was full may have nothing of its own queued or lent,
		// and no release of its own would ever move it (after a Seek,
		// with nothing lent, none of anyone's would either).
		q.refillAllLocked()
		q.signalLocked()
	}
	return n
}

// state returns the number of queued messages and a channel closed at the
// next change.
func (q *queue) state() (queued int, changed <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued, q.changedLocked()
}

// pending returns the number of queued batches, markers included, and a
// channel closed at the next change.
func (q *queue) pending() (batches int, changed <-chan struct{}) {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.batches), q.changedLocked()
}

// len returns the number of queued messages, the overflow's included.
func (q *queue) len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.queued + q.overN
}
