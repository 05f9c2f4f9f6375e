package multiconsumer

import (
	"context"
	"encoding/binary"
	"errors"
	"sync"

	"github.com/segmentio/kafka-go"
)

// unpacker decodes the fetch responses its worker received and queues their
// messages, in the order received, while the worker fetches the next ones:
// a worker's round trip to the broker overlaps the decoding and queueing
// of the response before it, where one after the other the broker would
// wait on the queue and the queue on the broker.
//
// A worker moves a partition's fetch position past a response as soon as
// it hands the response over (to batchesEnd of its records), so its next
// fetch asks for what follows. The unpacker keeps, per partition, where what
// it queued ends, and queues a response only if it starts there: anything
// else (a response fetched ahead of one the unpacker could not queue, after
// a decode error or a stop) is dropped, and the unpacker tells the worker to
// go back to where the queue ends (a rewind). So a message is never
// skipped, and none is queued twice in one epoch.
//
// While Process runs, the queue gives each partition a share of its bound.
// A partition whose share is full is parked: the unpacker keeps the rest of
// its records as they came, undecoded, with the partition's later
// responses behind them, and goes on with the other partitions; it decodes
// more of them when Process has taken half the share (queue.waitParked).
// Records wait as bytes, not as decoded messages (a message's struct is
// larger than a small record), and the worker fetches one response of a
// parked partition ahead of its parked records, no more, and only once
// few of them are left (setBehind, fetchAheadBytes).
//
// A worker holds at most two responses per leader: the one the unpacker
// works on, and the next, which waits until the unpacker takes it. While
// the queue is full (the consumer takes more slowly than the workers
// queue), the next is fetched only once few of the one being queued are
// left (env.hold, unpacker.ahead, worker.holdAhead): until then it would
// only wait in memory.
type unpacker struct {
	env  *fetchEnv
	in   chan []feed   // unbuffered; the worker closes it when it stops
	kick chan struct{} // buffered: unpackNow parked a partition, which the goroutine now watches

	// busy is held while feeds are queued, by the unpacker's goroutine or
	// by the worker busy a small response itself (unpackNow).
	busy   sync.Mutex
	next   map[int]fedTo    // guarded by busy: where what was queued ends, per partition and epoch
	parked map[int]*parking // guarded by busy: the parked partitions
	refs   []parkedRef      // guarded by busy: reused by run

	mu      sync.Mutex
	rewinds []rewind // guarded by mu; taken by the worker
	// ahead (guarded by mu): the partitions whose response the unpacker
	// is queueing with more than env.hold bytes of it left, and its
	// epoch. While the queue is full, their worker fetches them no
	// further (worker.run): the next response would only wait in memory
	// for the consumer. onLow (set once, by the worker) wakes the worker
	// when one leaves it.
	ahead map[int]uint64
	onLow func()
}

// feed is one partition's part of a fetch response.
type feed struct {
	p     int
	epoch uint64 // the partition's epoch when it was fetched
	from  int64  // the offset fetched
	to    int64  // where the worker fetches next: past the records (batchesEnd), or a reset's offset
	hwm   int64
	raw   []byte // its record batches; nil for a reset
}

type fedTo struct {
	epoch uint64
	next  int64
}

// unpacking is a feed being queued: its records not decoded yet, and
// where what was queued of it ends.
type unpacking struct {
	fd feed
	it recordIter
	at int64
}

// low reports whether little enough of u is left undecoded that its
// partition, parked, may fetch its next response (fetchEnv.ahead).
func (f *unpacker) low(u *unpacking) bool { return u.leftAtMost(f.env.ahead) }

// leftAtMost reports whether at most n bytes of u's records are left
// undecoded; always when n <= 0.
func (u *unpacking) leftAtMost(n int) bool {
	return n <= 0 || len(u.it.raw)+len(u.it.recs) <= n
}

func (f *unpacker) begin(fd feed) unpacking {
	return unpacking{fd: fd, it: newRecordIter(f.env.topic, fd.p, fd.raw), at: fd.from}
}

// parking is a parked partition: the feed whose share filled, part
// queued, and the feeds of the partition that came after it, in order.
type parking struct {
	cur   unpacking
	later []feed
}

// rewind tells the worker to fetch partition p again from to, in epoch:
// what it fetched past it was not queued. err is why, if it was an error
// (a decode error) rather than the worker stopping.
type rewind struct {
	p     int
	epoch uint64
	to    int64
	err   error
}

func newUnpacker(env *fetchEnv) *unpacker {
	return &unpacker{env: env, in: make(chan []feed), kick: make(chan struct{}, 1),
		next: make(map[int]fedTo), parked: make(map[int]*parking), ahead: make(map[int]uint64), onLow: func() {}}
}

// run queues what the worker hands over until in is closed, and the parked
// partitions' records as they get room. Once ctx is done nothing more is
// queued, but every feed is still accounted for, so that the worker's
// positions end where the queue does.
func (f *unpacker) run(ctx context.Context) {
	for {
		f.busy.Lock()
		resume, doneWaiting := (<-chan struct{})(nil), func() {}
		if len(f.parked) > 0 {
			f.refs = f.refs[:0]
			for p, pk := range f.parked {
				f.refs = append(f.refs, parkedRef{p: p, epoch: pk.cur.fd.epoch})
			}
			resume, doneWaiting = f.env.q.waitParked(f.refs)
		}
		f.busy.Unlock()
		select {
		case feeds, ok := <-f.in:
			doneWaiting()
			f.busy.Lock()
			if !ok {
				f.letGo()
				f.busy.Unlock()
				return
			}
			for _, fd := range feeds {
				f.feed(ctx, fd)
			}
			f.busy.Unlock()
		case <-resume:
			doneWaiting()
			f.busy.Lock()
			f.resume(ctx)
			f.busy.Unlock()
		case <-f.kick:
			doneWaiting()
		}
	}
}

// unpackNow queues feeds in the caller's goroutine if the unpacker is idle, and
// reports whether it did. A worker does so with a small response (a
// trickle), where the hand-off would cost the message one more goroutine
// switch and overlap nothing. The unpacker idle, nothing of these partitions
// waits for it but what is parked, which feed keeps ahead of them: the
// worker hands a partition's responses over one at a time, so their order
// holds.
func (f *unpacker) unpackNow(ctx context.Context, feeds []feed) bool {
	if !f.busy.TryLock() {
		return false
	}
	defer f.busy.Unlock()
	parked := len(f.parked)
	for _, fd := range feeds {
		f.feed(ctx, fd)
	}
	if len(f.parked) > parked {
		select {
		case f.kick <- struct{}{}:
		default:
		}
	}
	return true
}

// feed queues fd, or sets it behind its partition's parked records.
func (f *unpacker) feed(ctx context.Context, fd feed) {
	if pk := f.parked[fd.p]; pk != nil {
		switch {
		case fd.epoch == pk.cur.fd.epoch:
			pk.later = append(pk.later, fd)
			f.env.q.setBehind(fd.p, fd.epoch, true) // the partition fetches no more
			return
		case fd.epoch < pk.cur.fd.epoch:
			return // older than what is parked: stale (epochs only grow)
		}
		f.unpark(fd.p, pk) // newer: what is parked is stale (a Seek, a new assignment)
	}
	if !f.starts(fd) {
		return
	}
	u := f.begin(fd)
	if !f.carry(ctx, &u) {
		if f.current(fd.p, fd.epoch) {
			f.parked[fd.p] = &parking{cur: u}
		} else {
			f.env.q.unpark(fd.p, fd.epoch) // stale: nothing to wait for
		}
	}
}

// current reports whether partition p is still in epoch: records of an
// older one are stale, and are let go rather than parked.
func (f *unpacker) current(p int, epoch uint64) bool {
	return f.env.led == nil || f.env.led.current(p, epoch)
}

// starts reports whether fd starts where what was queued of its partition
// ends (or the partition is at a new position); if not, it has the worker
// fetch again from there.
func (f *unpacker) starts(fd feed) bool {
	st, ok := f.next[fd.p]
	if !ok || st.epoch != fd.epoch {
		st = fedTo{epoch: fd.epoch, next: fd.from} // a new position: a Seek, a partition given
	}
	if st.next != fd.from {
		f.next[fd.p] = st
		f.rewind(rewind{p: fd.p, epoch: fd.epoch, to: st.next})
		return false
	}
	return true
}

// carry queues what it can of u, and reports whether u is done: false when
// its partition's share filled first (u is to be parked).
func (f *unpacker) carry(ctx context.Context, u *unpacking) bool {
	done, err := f.queue(ctx, u)
	if !done && err == nil {
		return false
	}
	fd := &u.fd
	f.next[fd.p] = fedTo{epoch: fd.epoch, next: u.at}
	if err != nil || u.at != fd.to {
		if ctx.Err() != nil {
			err = nil // the worker stops: no failure of the partition
		}
		f.rewind(rewind{p: fd.p, epoch: fd.epoch, to: u.at, err: err})
	}
	return true
}

// resume goes on with the parked partitions that may: their records, then
// the feeds behind them, until done or parked again. Those whose records a
// drop let go (stale) are unparked.
func (f *unpacker) resume(ctx context.Context) {
	for p, pk := range f.parked {
		if e := pk.cur.fd.epoch; !f.env.q.parkedLive(p, e) || !f.current(p, e) {
			f.unpark(p, pk) // stale
			continue
		}
		parked := true
		for f.carry(ctx, &pk.cur) {
			if !f.nextOf(pk) {
				f.unpark(p, pk)
				parked = false
				break
			}
		}
		if parked && len(pk.later) == 0 && f.low(&pk.cur) {
			f.env.q.setBehind(p, pk.cur.fd.epoch, false) // few left: fetch the next
		}
	}
}

// nextOf moves pk on to the first of its later feeds that starts where
// the queue ends, and reports whether there was one. Once none is left
// behind it, the partition may fetch the next response (setBehind).
func (f *unpacker) nextOf(pk *parking) bool {
	for len(pk.later) > 0 {
		fd := pk.later[0]
		pk.later[0] = feed{}
		pk.later = pk.later[1:]
		if f.starts(fd) {
			pk.cur = f.begin(fd)
			if len(pk.later) == 0 && f.low(&pk.cur) {
				f.env.q.setBehind(fd.p, fd.epoch, false)
			}
			return true
		}
	}
	return false
}

// unpark lets partition p's parked records go and clears its mark.
func (f *unpacker) unpark(p int, pk *parking) {
	delete(f.parked, p)
	f.env.q.unpark(p, pk.cur.fd.epoch)
}

// letGo ends what is parked when the worker stops: its positions go back
// to where the queue ends.
func (f *unpacker) letGo() {
	for p, pk := range f.parked {
		f.next[p] = fedTo{epoch: pk.cur.fd.epoch, next: pk.cur.at}
		f.rewind(rewind{p: p, epoch: pk.cur.fd.epoch, to: pk.cur.at})
		f.unpark(p, pk)
	}
}
func (f *unpacker) rewind(r rewind) {
	f.mu.Lock()
	f.rewinds = append(f.rewinds, r)
	f.mu.Unlock()
}

// takeRewinds returns the rewinds posted since the last call, in order.
func (f *unpacker) takeRewinds(into []rewind) []rewind {
	f.mu.Lock()
	defer f.mu.Unlock()
	into = append(into[:0], f.rewinds...)
	f.rewinds = f.rewinds[:0]
	return into
}

// queue turns the records of u at or after where it is into messages,
// and queues them in runs of batchSize as it goes, so the caller can take
// the first messages of a large response while the rest is decoded; then
// it queues a move to the feed's end past what the records end with that
// is no message (a transaction's marker, the offsets compaction emptied).
// u.at is where what it queued ends. It reports false, with no error, when
// the partition's share of a fair queue is full (roomFor): u is parked
// there, to go on later.
func (f *unpacker) queue(ctx context.Context, u *unpacking) (bool, error) {
	fd := &u.fd
	q := f.env.q
	if fd.raw == nil {
		// A reset: the fetch offset is no longer in the log.
		err := q.put(ctx, batch{partition: fd.p, epoch: fd.epoch, advance: fd.to}, f.env.unpaused)
		if err != nil {
			return false, err
		}
		u.at = fd.to
		return true, nil
	}
	batchSize := f.env.batchSize
	marked := false // fd.p is in f.ahead
	defer func() {
		if marked {
			f.markAhead(fd.p, fd.epoch, false)
		}
	}()
	for {
		if few := u.leftAtMost(f.env.hold); few == marked { // crossed: many left (mark), or few (unmark)
			marked = !few
			f.markAhead(fd.p, fd.epoch, marked)
		}
		n := batchSize
		if room := q.roomFor(fd.p, fd.epoch, f.env.unpaused, f.low(u)); room == 0 {
			return false, nil
		} else if room > 0 {
			n = min(n, room)
		}
		end, err := f.decodeRun(ctx, u, n)
		if err != nil {
			return false, err
		}
		if end {
			break
		}
	}
	if fd.to > u.at {
		// The records ended with offsets that are no messages: move past
		// them, in the bookkeeping too (Offsets, Pending, Lag).
		if err := q.put(ctx, batch{partition: fd.p, epoch: fd.epoch, advance: fd.to}, f.env.unpaused); err != nil {
			return false, err
		}
		u.at = fd.to
	}
	return true, nil
}

// markAhead puts partition p (in epoch) in f.ahead, or takes it out and
// wakes the worker.
func (f *unpacker) markAhead(p int, epoch uint64, ahead bool) {
	f.mu.Lock()
	if ahead {
		f.ahead[p] = epoch
	} else {
		delete(f.ahead, p)
	}
	f.mu.Unlock()
	if !ahead {
		f.onLow()
	}
}

// isAhead reports whether the unpacker is queueing a response of partition
// p in epoch with more than env.hold bytes of it left.
func (f *unpacker) isAhead(p int, epoch uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	e, ok := f.ahead[p]
	return ok && e == epoch
}

// testHookQueued, if set (by a test), runs right after decodeRun queued a
// run: where Process may take the run, and give its array back, at once.
var testHookQueued func()

// wholeAt is the fewest messages a run decodes into one of the queue's
// arrays: fewer (a trickle) get an array of their own, as small as they
// are.
const wholeAt = 16

// decodeRun decodes up to n messages of u and queues them as one batch. It
// reports whether u's records ended. A backlog's run goes into one of the
// queue's arrays, which whoever copies its messages out (GetMessages,
// Iter) or handles the last of them (Process) gives back (queue.arrays).
func (f *unpacker) decodeRun(ctx context.Context, u *unpacking, n int) (end bool, err error) {
	fd := &u.fd
	// No more than the log holds past the position: at a trickle a
	// response has a message or two, and a run sized for a backlog
	// (batchSize, ~150 B a message) would be most of what the consumer
	// allocates.
	size := min(int64(n), max(1, fd.hwm-u.at))
	var run []kafka.Message
	whole := size >= min(wholeAt, int64(f.env.batchSize)) && f.env.batchSize == f.env.q.arrays.size
	if whole {
		// A backlog: an array given back, or one that will be.
		if run = f.env.q.arrays.get(); run == nil {
			run = make([]kafka.Message, 0, f.env.batchSize)
		}
	} else {
		run = make([]kafka.Message, 0, size)
	}
	var spare kafka.Message // a record before the position, decoded and dropped
	for len(run) < n {
		// Decoded in place, in the run's next slot: a message is copied
		// once, into the run, and no more.
		m := &spare
		if len(run) < cap(run) {
			run = run[:len(run)+1]
			m = &run[len(run)-1]
		}
		m.HighWaterMark = fd.hwm
		ok, derr := u.it.next(m)
		if m != &spare && (!ok || derr != nil || m.Offset < u.at) {
			// Nothing, or a record of a compressed batch that starts
			// before the offset asked for. Cleared: an array given back
			// holds nothing past its length.
			*m = kafka.Message{}
			run = run[:len(run)-1]
		}
		if derr != nil {
			err, end = derr, true
			break
		}
		if !ok {
			end = true
			break
		}
		if m == &spare {
			if m.Offset < u.at {
				continue
			}
			run = append(run, *m) // a run sized short of a batch: it grows
		}
	}
	if len(run) > 0 {
		// Read before the put: once queued, the run is Process's, which
		// may be done with it and give its array to another run at once.
		next := run[len(run)-1].Offset + 1
		b := batch{partition: fd.p, epoch: fd.epoch, msgs: run, whole: whole && cap(run) == f.env.batchSize}
		if perr := f.env.q.put(ctx, b, f.env.unpaused); perr != nil {
			return true, errors.Join(err, perr)
		}
		if testHookQueued != nil {
			testHookQueued()
		}
		u.at = next
	} else if whole {
		f.env.q.arrays.put(run)
	}
	return end, err
}

// batchesEnd returns the offset after the last whole batch of raw (record
// batches v2, or message set entries of magic 0 and 1, whose offset is
// their last record's), or from when there is none. It reads only the
// headers: the worker calls it on a response before it hands it over.
func batchesEnd(raw []byte, from int64) int64 {
	end := from
	for len(raw) >= 17 {
		size := int64(int32(binary.BigEndian.Uint32(raw[8:12])))
		if size < 0 || int64(len(raw)) < 12+size {
			break
		}
		base := int64(binary.BigEndian.Uint64(raw))
		last := base
		if raw[16] == 2 {
			if size < 49 {
				break // corrupt: the unpacker's decoding says how
			}
			last = base + int64(int32(binary.BigEndian.Uint32(raw[23:27])))
		}
		end = max(end, last+1)
		raw = raw[12+size:]
	}
	return end
}
