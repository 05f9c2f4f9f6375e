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

	msgs, err := w.decode(p, pos.offset, rp.HighWatermark, rp.RecordSet.Records)
	if len(msgs) > 0 {
		pos.offset = msgs[len(msgs)-1].Offset + 1
		if qerr := w.queue(ctx, batch{partition: p, epoch: pos.epoch, msgs: msgs}); qerr != nil {
			return qerr
		}
	}
	if err != nil {
		w.c.countFetchErrors([]int{p})
		return &PartitionError{Topic: w.c.cfg.Topic, Partition: p, Err: fmt.Errorf("decode records: %w", err)}
	}
	return nil
}

// queue puts b into the queue, in as many pieces as the bound needs.
func (w *worker) queue(ctx context.Context, b batch) error {
	limit := w.c.cfg.QueueSize
	for len(b.msgs) > 0 {
		n := min(len(b.msgs), max(1, limit/4))
		if err := w.c.q.put(ctx, batch{partition: b.partition, epoch: b.epoch, msgs: b.msgs[:n:n]}, w.c.running); err != nil {
			return err
		}
		b.msgs = b.msgs[n:]
	}
	return nil
}

// decode turns the records of a partition at or after offset into messages,
// leaving out control records (transaction markers).
func (w *worker) decode(p int, offset, hwm int64, rr protocol.RecordReader) ([]kafka.Message, error) {
	var msgs []kafka.Message
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
			if rec.Offset < offset {
				// A compressed batch starts before the offset asked for.
				closeBytes(rec)
				continue
			}
			m := kafka.Message{
				Topic:         w.c.cfg.Topic,
				Partition:     p,
				Offset:        rec.Offset,
				HighWaterMark: hwm,
				Time:          rec.Time,
				Headers:       rec.Headers, // decoded into fresh memory per record
			}
			if m.Key, err = protocol.ReadAll(rec.Key); err == nil {
				m.Value, err = protocol.ReadAll(rec.Value)
			}
			closeBytes(rec)
			if err != nil {
				return err
			}
			if msgs == nil {
				msgs = make([]kafka.Message, 0, min(max(16, hwm-offset), 4096))
			}
			msgs = append(msgs, m)
		}
	}
	err := walk(rr)
	return msgs, err
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
