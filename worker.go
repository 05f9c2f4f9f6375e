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
// an idle partition costs no round trip of its own.
type worker struct {
	c          *MultiConsumer
	id         int
	partitions []int
	pos        map[int]*fetchPos
	log        *slog.Logger
	chunk      int    // messages per batch queued
	arena      []byte // what is left of the block keys and values are copied into
}

// fetchPos is where a worker fetches a partition from, in which epoch.
type fetchPos struct {
	offset int64
	epoch  uint64
	synced bool
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

// run fetches until ctx is done. It waits while the consumer is paused,
// and retries failures with exponential backoff up to MaxBackoff.
func (w *worker) run(ctx context.Context) {
	backoff := initialBackoff
	for {
		if err := w.c.running.Wait(ctx); err != nil {
			return
		}
		err := w.fetch(ctx)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			backoff = initialBackoff
			continue
		}
		w.log.Error("fetch failed, retrying", "topic", w.c.cfg.Topic, "partitions", w.partitions, "backoff", backoff, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, w.c.cfg.MaxBackoff)
	}
}

// fetch makes one round: a fetch request per leader, each response queued.
func (w *worker) fetch(ctx context.Context) error {
	groups := w.c.syncPositions(w.partitions, w.pos)
	var errs []error
	for _, parts := range groups {
		if err := w.fetchFrom(ctx, parts); err != nil {
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
	if len(errs) > 0 {
		w.c.refreshLeaders(ctx)
	}
	return errors.Join(errs...)
}

// fetchFrom fetches parts, which share a leader, in one request.
func (w *worker) fetchFrom(ctx context.Context, parts []int) error {
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
	m, err := w.c.transport.RoundTrip(ctx, w.c.client.Addr, &fetchAPI.Request{
		ReplicaID:    -1,
		MaxWaitTime:  int32(fetchMaxWait / time.Millisecond),
		MinBytes:     1,
		MaxBytes:     fetchMaxBytes,
		SessionID:    -1,
		SessionEpoch: -1,
		Topics:       []fetchAPI.RequestTopic{{Topic: topic, Partitions: reqParts}},
	})
	if err != nil {
		w.c.countFetchErrors(parts)
		return fmt.Errorf("fetch partitions %v of topic %q: %w", parts, topic, err)
	}
	res := m.(*fetchAPI.Response)
	if res.ErrorCode != 0 {
		w.c.countFetchErrors(parts)
		return fmt.Errorf("fetch partitions %v of topic %q: %w", parts, topic, kafka.Error(res.ErrorCode))
	}
	var errs []error
	for _, rt := range res.Topics {
		if rt.Topic != topic {
			continue
		}
		for i := range rt.Partitions {
			if err := w.handle(ctx, &rt.Partitions[i]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// handle queues the records of one partition of a fetch response.
func (w *worker) handle(ctx context.Context, rp *fetchAPI.ResponsePartition) error {
	p := int(rp.Partition)
	pos, ok := w.pos[p]
	if !ok {
		return nil
	}
	if rp.ErrorCode != 0 {
		err := kafka.Error(rp.ErrorCode)
		if errors.Is(err, kafka.OffsetOutOfRange) {
			return w.reset(ctx, p, pos)
		}
		w.c.countFetchErrors([]int{p})
		return &PartitionError{Topic: w.c.cfg.Topic, Partition: p, Err: fmt.Errorf("fetch at offset %d: %w", pos.offset, err)}
	}
	w.c.setHighWatermark(p, rp.HighWatermark)

	if err := w.decode(ctx, p, pos, rp.HighWatermark, rp.RecordSet.Records); err != nil {
		if ctx.Err() != nil {
			return err
		}
		w.c.countFetchErrors([]int{p})
		return &PartitionError{Topic: w.c.cfg.Topic, Partition: p, Err: fmt.Errorf("decode records: %w", err)}
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
		case nil, *protocol.ControlBatch:
			return nil
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
	return flush()
}

// arenaSize is the size of the blocks that keys and values are copied into:
// one allocation for many small messages instead of two per message.
const arenaSize = 32 << 10

// read copies b into the worker's arena (nil stays nil).
func (w *worker) read(b protocol.Bytes) ([]byte, error) {
	if b == nil {
		return nil, nil
	}
	n := b.Len()
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
	w.log.Warn("offset out of range, resetting", "topic", w.c.cfg.Topic, "partition", p, "offset", pos.offset, "reset_to", to)
	pos.offset = to
	return nil
}
