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
// A worker holds at most two responses per leader: the one the unpacker
// works on, and the next, which waits until the unpacker takes it.
type unpacker struct {
	env *fetchEnv
	in  chan []feed // unbuffered; the worker closes it when it stops

	// busy is held while feeds are queued, by the unpacker's goroutine or
	// by the worker busy a small response itself (unpackNow).
	busy sync.Mutex
	next map[int]fedTo // guarded by busy: where what was queued ends, per partition and epoch

	mu      sync.Mutex
	rewinds []rewind // guarded by mu; taken by the worker
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
	return &unpacker{env: env, in: make(chan []feed), next: make(map[int]fedTo)}
}

// run queues what the worker hands over until in is closed. Once ctx is
// done nothing more is queued, but every feed is still accounted for, so
// that the worker's positions end where the queue does.
func (f *unpacker) run(ctx context.Context) {
	for feeds := range f.in {
		f.busy.Lock()
		for _, fd := range feeds {
			f.feed(ctx, fd)
		}
		f.busy.Unlock()
	}
}

// unpackNow queues feeds in the caller's goroutine if the unpacker is idle, and
// reports whether it did. A worker does so with a small response (a
// trickle), where the hand-off would cost the message one more goroutine
// switch and overlap nothing. The unpacker idle, nothing of these partitions
// waits for it: the worker hands a partition's responses over one at a
// time, so their order holds.
func (f *unpacker) unpackNow(ctx context.Context, feeds []feed) bool {
	if !f.busy.TryLock() {
		return false
	}
	defer f.busy.Unlock()
	for _, fd := range feeds {
		f.feed(ctx, fd)
	}
	return true
}

func (f *unpacker) feed(ctx context.Context, fd feed) {
	st, ok := f.next[fd.p]
	if !ok || st.epoch != fd.epoch {
		st = fedTo{epoch: fd.epoch, next: fd.from} // a new position: a Seek, a partition given
	}
	if st.next != fd.from {
		f.next[fd.p] = st
		f.rewind(rewind{p: fd.p, epoch: fd.epoch, to: st.next})
		return
	}
	reached, err := f.queue(ctx, fd)
	f.next[fd.p] = fedTo{epoch: fd.epoch, next: reached}
	if err != nil || reached != fd.to {
		if ctx.Err() != nil {
			err = nil // the worker stops: no failure of the partition
		}
		f.rewind(rewind{p: fd.p, epoch: fd.epoch, to: reached, err: err})
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

// queue turns the records of fd at or after fd.from into messages, and
// queues them in runs of batchSize as it goes, so the caller can take the
// first messages of a large response while the rest is decoded; then it
// queues a move to fd.to past what the records end with that is no
// message (a transaction's marker, the offsets compaction emptied). It
// returns where what it queued ends.
func (f *unpacker) queue(ctx context.Context, fd feed) (int64, error) {
	if fd.raw == nil {
		// A reset: the fetch offset is no longer in the log.
		err := f.env.q.put(ctx, batch{partition: fd.p, epoch: fd.epoch, advance: fd.to}, f.env.unpaused)
		if err != nil {
			return fd.from, err
		}
		return fd.to, nil
	}
	at := fd.from
	batchSize := f.env.batchSize
	var run []kafka.Message
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		b := batch{partition: fd.p, epoch: fd.epoch, msgs: run}
		run = nil
		if err := f.env.q.put(ctx, b, f.env.unpaused); err != nil {
			return err
		}
		at = b.msgs[len(b.msgs)-1].Offset + 1
		return nil
	}
	it := newRecordIter(f.env.topic, fd.p, fd.raw)
	var spare kafka.Message // a record before the position, decoded and dropped
	for {
		if run == nil {
			// No more than the log holds past the position: at a trickle
			// a response has a message or two, and a run sized for a
			// backlog (batchSize, ~150 B a message) would be most of
			// what the consumer allocates.
			run = make([]kafka.Message, 0, min(int64(batchSize), max(1, fd.hwm-at)))
		}
		// Decoded in place, in the run's next slot: a message is copied
		// once, into the run, and no more.
		m := &spare
		if len(run) < cap(run) {
			run = run[:len(run)+1]
			m = &run[len(run)-1]
		}
		m.HighWaterMark = fd.hwm
		ok, err := it.next(m)
		if m != &spare && (!ok || err != nil || m.Offset < at) {
			// Nothing, or a record of a compressed batch that starts
			// before the offset asked for.
			run = run[:len(run)-1]
		}
		if err != nil {
			return at, errors.Join(err, flush())
		}
		if !ok {
			break
		}
		if m == &spare {
			if m.Offset < at {
				continue
			}
			run = append(run, *m) // a run sized short of a batch: it grows
		}
		if len(run) >= batchSize {
			if err := flush(); err != nil {
				return at, err
			}
		}
	}
	if err := flush(); err != nil {
		return at, err
	}
	if fd.to > at {
		// The records ended with offsets that are no messages: move past
		// them, in the bookkeeping too (Offsets, Pending, Lag).
		if err := f.env.q.put(ctx, batch{partition: fd.p, epoch: fd.epoch, advance: fd.to}, f.env.unpaused); err != nil {
			return at, err
		}
		at = fd.to
	}
	return at, nil
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
