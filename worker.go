package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchAPI "github.com/segmentio/kafka-go/protocol/fetch"
)

// Fetch limits. A short MaxWait keeps an idle worker responsive (kafka-go's
// Reader default of 10s was seen stalling whole rounds); the byte limits
// bound what one fetch response holds besides the queue.
const (
	fetchMaxWait           = 250 * time.Millisecond
	fetchMaxBytes          = 16 << 20
	fetchPartitionMaxBytes = 1 << 20
	initialBackoff         = time.Second
)

// worker fetches one chunk of the partitions and feeds the queue. It sends
// one fetch request per leader broker for all of its partitions there, so
// an idle partition costs no round trip of its own. A partition that fails
// backs off on its own; the others go on.
type worker struct {
	c          *MultiConsumer
	id         int
	partitions []int
	pos        map[int]*fetchPos
	log        *slog.Logger
	chunk      int    // messages per batch queued
	arena      []byte // what is left of the block keys and values are copied into
}

// fetchPos is where a worker fetches a partition from, in which epoch, and
// when it may fetch it again after a failure.
type fetchPos struct {
	offset  int64
	epoch   uint64
	synced  bool
	retryAt time.Time     // zero: not backing off
	backoff time.Duration // the last wait after a failure; 0 after a success
}

// failed schedules the partition's next fetch after its backoff, and doubles
// the backoff up to maxBackoff (1s, 2s, 4s...). It returns the wait.
func (fp *fetchPos) failed(now time.Time, maxBackoff time.Duration) time.Duration {
	fp.backoff = nextBackoff(fp.backoff, maxBackoff)
	fp.retryAt = now.Add(fp.backoff)
	return fp.backoff
}

func newWorker(c *MultiConsumer, id int, partitions []int) *worker {
	w := &worker{c: c, id: id, partitions: partitions, pos: make(map[int]*fetchPos, len(partitions))}
	for _, p := range partitions {
		w.pos[p] = &fetchPos{}
	}
	w.log = c.log.With("worker", id)
	// A quarter of the queue: big enough to keep the per-batch costs low,
	// small enough that a worker finds room before the queue is empty.
	w.chunk = max(1, min(512, c.cfg.QueueSize/4))
	return w
}

// run fetches until ctx is done. It waits while the consumer is paused, and
// while every one of its partitions is backing off.
func (w *worker) run(ctx context.Context) {
	for {
		if err := w.c.running.Wait(ctx); err != nil {
			return
		}
		groups, idle := w.c.syncPositions(w.partitions, w.pos, time.Now())
		if len(groups) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(idle):
			}
			continue
		}
		failed := false
		for _, parts := range groups {
			if !w.fetchFrom(ctx, parts) {
				failed = true
			}
			if ctx.Err() != nil {
				return
			}
		}
		if failed {
			w.c.refreshLeaders(ctx)
		}
	}
}

// fail counts a fetch error of parts, logs it, and backs them off.
func (w *worker) fail(parts []int, err error) {
	w.c.countFetchErrors(parts)
	now := time.Now()
	for _, p := range parts {
		wait := w.pos[p].failed(now, w.c.cfg.MaxBackoff)
		w.log.Error("fetch failed, retrying", "partition", p, "offset", w.pos[p].offset, "backoff", wait, "err", err)
	}
}

// fetchFrom fetches parts, which share a leader, in one request, and queues
// what comes back. It reports whether every partition succeeded.
func (w *worker) fetchFrom(ctx context.Context, parts []int) bool {
	topic := w.c.cfg.Topic
	reqParts := make([]fetchAPI.RequestPartition, len(parts))
	for i, p := range parts {
		reqParts[i] = fetchAPI.RequestPartition{
			Partition:          int32(p),
			CurrentLeaderEpoch: -1,
			FetchOffset:        w.pos[p].offset,
			LogStartOffset:     -1,
			PartitionMaxBytes:  fetchPartitionMaxBytes,
		}
	}
	// kafka-go bounds a request's socket reads only by the context's
	// deadline: without one, a broker that stops answering would hold the
	// worker (and a kafka-go goroutine) forever.
	fctx, cancel := context.WithTimeout(ctx, fetchMaxWait+w.c.requestTimeout())
	m, err := w.c.transport.RoundTrip(fctx, w.c.client.Addr, &fetchAPI.Request{
		ReplicaID:    -1,
		MaxWaitTime:  int32(fetchMaxWait / time.Millisecond),
		MinBytes:     1,
		MaxBytes:     fetchMaxBytes,
		SessionID:    -1,
		SessionEpoch: -1,
		Topics:       []fetchAPI.RequestTopic{{Topic: topic, Partitions: reqParts}},
	})
	cancel()
	if err == nil && m.(*fetchAPI.Response).ErrorCode != 0 {
		err = kafka.Error(m.(*fetchAPI.Response).ErrorCode)
	}
	if err != nil {
		if ctx.Err() == nil {
			w.fail(parts, fmt.Errorf("fetch partitions %v: %w", parts, err))
		}
		return false
	}
	ok := true
	for _, rt := range m.(*fetchAPI.Response).Topics {
		if rt.Topic != topic {
			continue
		}
		for i := range rt.Partitions {
			p := int(rt.Partitions[i].Partition)
			if _, mine := w.pos[p]; !mine {
				continue
			}
			if err := w.handle(ctx, &rt.Partitions[i]); err != nil {
				if ctx.Err() != nil {
					return false
				}
				w.fail([]int{p}, err)
				ok = false
			} else {
				w.pos[p].backoff, w.pos[p].retryAt = 0, time.Time{}
			}
		}
	}
	return ok
}

// handle queues the records of one partition of a fetch response.
func (w *worker) handle(ctx context.Context, rp *fetchAPI.ResponsePartition) error {
	p := int(rp.Partition)
	pos := w.pos[p]
	if rp.ErrorCode != 0 {
		err := kafka.Error(rp.ErrorCode)
		if errors.Is(err, kafka.OffsetOutOfRange) {
			return w.reset(ctx, p, pos)
		}
		return fmt.Errorf("fetch at offset %d: %w", pos.offset, err)
	}
	w.c.setHighWatermark(p, rp.HighWatermark)
	if err := w.decode(ctx, p, pos, rp.HighWatermark, rp.RecordSet.Records); err != nil {
		return fmt.Errorf("decode records at offset %d: %w", pos.offset, err)
	}
	return nil
}

// decode turns the records of a partition at or after pos.offset into
// messages, leaving out control records (transaction markers), and queues
// them in runs of w.chunk as it goes, so the caller can take the first
// messages of a large response while the rest is decoded. pos.offset
// follows what was queued.
func (w *worker) decode(ctx context.Context, p int, pos *fetchPos, hwm int64, rr protocol.RecordReader) error {
	var run []kafka.Message
	seen := int64(-1) // the last offset read, messages or not
	flush := func() error {
		if len(run) == 0 {
			return nil
		}
		b := batch{partition: p, epoch: pos.epoch, msgs: run}
		run = nil
		if err := w.c.q.put(ctx, b, w.c.running); err != nil {
			return err
		}
		pos.offset = b.msgs[len(b.msgs)-1].Offset + 1
		return nil
	}
	var walk func(rr protocol.RecordReader) error
	walk = func(rr protocol.RecordReader) error {
		switch r := rr.(type) {
		case nil:
			return nil
		case *protocol.ControlBatch:
			// A transaction marker takes an offset but is no message: read
			// past it, or a marker at the end of the log would be fetched
			// again and again.
			for {
				rec, err := r.ReadRecord()
				if err != nil {
					return nil
				}
				seen = max(seen, rec.Offset)
				closeBytes(rec)
			}
		case *protocol.RecordStream:
			for _, sub := range r.Records {
				if err := walk(sub); err != nil {
					return err
				}
			}
			return nil
		}
		for {
			rec, err := rr.ReadRecord()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			seen = max(seen, rec.Offset)
			if rec.Offset < pos.offset {
				// A compressed batch starts before the offset asked for.
				closeBytes(rec)
				continue
			}
			if run == nil {
				run = make([]kafka.Message, 0, w.chunk)
			}
			m := kafka.Message{
				Topic:         w.c.cfg.Topic,
				Partition:     p,
				Offset:        rec.Offset,
				HighWaterMark: hwm,
				Time:          rec.Time,
				Headers:       rec.Headers, // decoded into fresh memory per record
			}
			if m.Key, err = w.read(rec.Key); err == nil {
				m.Value, err = w.read(rec.Value)
			}
			closeBytes(rec)
			if err != nil {
				return err
			}
			if run = append(run, m); len(run) == w.chunk {
				if err := flush(); err != nil {
					return err
				}
			}
		}
	}
	if err := walk(rr); err != nil {
		return errors.Join(err, flush())
	}
	if err := flush(); err != nil {
		return err
	}
	if seen+1 > pos.offset {
		// The response ended with records that are no messages: skip them,
		// here and in the bookkeeping (Offsets, Pending, Lag).
		return w.skip(ctx, p, pos, seen+1)
	}
	return nil
}

// skip moves partition p to offset to, here and, through a marker queued
// behind its messages, in the controller's bookkeeping.
func (w *worker) skip(ctx context.Context, p int, pos *fetchPos, to int64) error {
	if err := w.c.q.put(ctx, batch{partition: p, epoch: pos.epoch, advance: to}, w.c.running); err != nil {
		return err
	}
	pos.offset = to
	return nil
}

// arenaSize is the size of the blocks that keys and values are copied into:
// one allocation for many small messages instead of two per message.
const arenaSize = 32 << 10

// empty is what an empty key or value reads as: not nil, which would make
// an empty value look like a tombstone. Its capacity is 0, so a caller's
// append never writes into it.
var empty = []byte{}

// read copies b into the worker's arena (nil stays nil, empty stays empty).
func (w *worker) read(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	n := b.Len()
	if n == 0 {
		return empty, nil
	}
	if n > len(w.arena) {
		if n > arenaSize/4 {
			return protocol.ReadAll(b) // large values get their own
		}
		w.arena = make([]byte, arenaSize)
	}
	out := w.arena[:n:n]
	w.arena = w.arena[n:]
	_, err := io.ReadFull(b, out)
	return out, err
}

// closeBytes returns the record's key and value buffers to kafka-go's pool.
func closeBytes(rec *protocol.Record) {
	if rec.Key != nil {
		rec.Key.Close()
	}
	if rec.Value != nil {
		rec.Value.Close()
	}
}

// reset moves a partition whose fetch offset is no longer in the log
// (retention deleted it) to StartOffset.
func (w *worker) reset(ctx context.Context, p int, pos *fetchPos) error {
	b, err := w.c.logBounds(ctx, []int{p})
	if err != nil {
		return err
	}
	to := b[p].first
	if w.c.cfg.StartOffset == kafka.LastOffset {
		to = b[p].last
	}
	if to == pos.offset {
		// The log says the offset is there, the fetch says it is not: a
		// failure, retried with backoff, not a reset.
		return fmt.Errorf("fetch at offset %d: %w (log is [%d, %d])", pos.offset, kafka.OffsetOutOfRange, b[p].first, b[p].last)
	}
	w.log.Warn("offset out of range, resetting", "partition", p, "offset", pos.offset, "reset_to", to)
	return w.skip(ctx, p, pos, to)
}
