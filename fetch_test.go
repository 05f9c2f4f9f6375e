package multiconsumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// produceSized appends n messages of size bytes to partition p, valued
// "p-offset" and padded with dots, in record batches of about 100 KiB (so
// that a fetch can take part of them).
func produceSized(t *testing.T, topic string, p, n, size int) {
	t.Helper()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		v := fmt.Appendf(nil, "%d-%d", p, i)
		msgs[i] = kafka.Message{Value: append(v, bytes.Repeat([]byte("."), size-len(v))...)}
	}
	per := max(1, 100<<10/size)
	for len(msgs) > 0 {
		n := min(per, len(msgs))
		require.NoError(t, cluster.Produce(testCtx(t), topic, p, msgs[:n]...))
		msgs = msgs[n:]
	}
}

// firstSeen drains n messages and returns, per partition, how many messages
// were delivered before its first one.
func firstSeen(t *testing.T, c *MultiConsumer, n int) map[int]int {
	t.Helper()
	first := map[int]int{}
	seen := 0
	for seen < n {
		msgs, err := c.GetMessages(testCtx(t), 1000, BlockFor(1), Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "no message within 30s after %d of %d", seen, n)
		for _, m := range msgs {
			if _, ok := first[m.Partition]; !ok {
				first[m.Partition] = seen
			}
			seen++
		}
	}
	return first
}

// With a backlog on 20 partitions of one worker, every partition gets its
// turn early: the partitions a response left out are listed first in the
// next request. Before, a response (16 MiB, 1 MiB a partition) always went
// to partitions 0-15, and 16-19 waited until those were drained.
func TestFetchFairness(t *testing.T) {
	t.Parallel()
	const partitions, per, size = 20, 210, 10 << 10 // ~2 MiB a partition
	topic := backlog(t, partitions, 0)
	var wg sync.WaitGroup
	for p := range partitions {
		wg.Go(func() { produceSized(t, topic, p, per, size) })
	}
	wg.Wait()
	c := open(t, Config{Topic: topic, NumWorkers: 1})
	first := firstSeen(t, c, partitions*per)
	last := 0
	for p := range partitions {
		last = max(last, first[p])
	}
	t.Logf("every partition seen within the first %d of %d messages", last, partitions*per)
	// Before, partitions 16-19 came after 80% (two full responses).
	assert.Less(t, last, partitions*per*3/5, "first message per partition: %v", first)
}

// A record larger than the per-partition budget (1 MiB) is returned, and
// does not wait until the partitions listed before it are drained.
func TestFetchRecordLargerThanPartitionBudget(t *testing.T) {
	t.Parallel()
	topic := kafkatest.UniqueName("big")
	require.NoError(t, cluster.CreateTopic(testCtx(t), topic, 2, kafka.ConfigEntry{ConfigName: "max.message.bytes", ConfigValue: "4194304"}))
	t.Cleanup(func() { _ = cluster.DeleteTopic(context.Background(), topic) })
	produceSized(t, topic, 0, 300, 10<<10) // 3 MiB
	produceSized(t, topic, 1, 1, 2<<20)    // one 2 MiB record
	c := open(t, Config{Topic: topic, NumWorkers: 1})
	first := firstSeen(t, c, 301)
	t.Logf("the 2 MiB record came after %d of partition 0's 300 messages", first[1])
	assert.Less(t, first[1], 200, "the large record waited for partition 0")
}

// recordBatch encodes a record batch at base spanning offsets base to
// base+lastDelta, holding values at the offset deltas given (none: an empty
// batch, as compaction leaves one for an idempotent producer).
func recordBatch(base int64, lastDelta int32, values map[int32]string) []byte {
	var recs []byte
	deltas := make([]int32, 0, len(values))
	for d := range values {
		deltas = append(deltas, d)
	}
	slices.Sort(deltas)
	for _, d := range deltas {
		r := kmsg.Record{OffsetDelta: d, Value: []byte(values[d])}
		r.Length = int32(len(r.AppendTo(nil)) - 1) // the length's own varint (0) is one byte
		recs = r.AppendTo(recs)
	}
	b := kmsg.RecordBatch{
		FirstOffset: base, Magic: 2, LastOffsetDelta: lastDelta,
		ProducerID: 7, ProducerEpoch: 0, FirstSequence: 0,
		NumRecords: int32(len(values)), Records: recs,
	}
	enc := b.AppendTo(nil)
	b.Length = int32(len(enc) - 12)
	enc = b.AppendTo(nil)
	b.CRC = int32(crc32.Checksum(enc[21:], crc32.MakeTable(crc32.Castagnoli)))
	return b.AppendTo(nil)
}

// An empty record batch (compaction kept it for an idempotent producer)
// does not stall its partition: the worker moves past its last offset,
// whether the batch ends a response (the end of a log segment, where the
// worker has to probe for the end, as kafka-go drops it) or another batch
// follows. The embedded broker cannot compact into such a batch, so it
// serves, for offsets below 15, a log of three batches: records 0-4, an
// empty batch over 5-9, records 10-14.
func TestEmptyRecordBatch(t *testing.T) {
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to serve an empty batch")
	}
	for _, segmentEnd := range []bool{true, false} {
		t.Run(fmt.Sprintf("segmentEnd=%v", segmentEnd), func(t *testing.T) {
			t.Parallel()
			topic := backlog(t, 1, 15) // the real log: offsets 0-14, high watermark 15
			a := recordBatch(0, 4, map[int32]string{0: "0-0", 1: "0-1", 2: "0-2", 3: "0-3", 4: "0-4"})
			empty := recordBatch(5, 4, nil)
			c3 := recordBatch(10, 4, map[int32]string{0: "0-10", 1: "0-11", 2: "0-12", 3: "0-13", 4: "0-14"})
			var fetches, inEmpty atomic.Int64
			var off atomic.Bool
			t.Cleanup(func() { off.Store(true) })
			kf.ControlKey(kmsg.Fetch.Int16(), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
				if off.Load() {
					kf.DropControl()
					return nil, nil, false
				}
				kf.KeepControl()
				req := kreq.(*kmsg.FetchRequest)
				if len(req.Topics) != 1 || req.Topics[0].Topic != topic || len(req.Topics[0].Partitions) != 1 {
					return nil, nil, false
				}
				at := req.Topics[0].Partitions[0].FetchOffset
				if at >= 15 {
					return nil, nil, false // the real log's end: a long poll
				}
				fetches.Add(1)
				var data []byte
				switch {
				case at < 5:
					data = append(append([]byte(nil), a...), empty...)
				case at < 10:
					inEmpty.Add(1)
					data = append([]byte(nil), empty...)
				default:
					data = append([]byte(nil), c3...)
				}
				if !segmentEnd && at < 10 {
					data = append(data, c3...)
				}
				res := req.ResponseKind().(*kmsg.FetchResponse)
				rt := kmsg.NewFetchResponseTopic()
				rt.Topic = topic
				rp := kmsg.NewFetchResponseTopicPartition()
				rp.HighWatermark, rp.LastStableOffset, rp.LogStartOffset = 15, 15, 0
				rp.RecordBatches = data
				rt.Partitions = append(rt.Partitions, rp)
				res.Topics = append(res.Topics, rt)
				return res, nil, true
			})

			c := open(t, Config{Topic: topic})
			msgs := drain(t, c, 10, 10)
			offsets := make([]int64, len(msgs))
			for i, m := range msgs {
				offsets[i] = m.Offset
				assert.Equal(t, fmt.Sprintf("0-%d", m.Offset), string(m.Value))
			}
			assert.Equal(t, []int64{0, 1, 2, 3, 4, 10, 11, 12, 13, 14}, offsets)
			require.Eventually(t, func() bool { return c.Offsets()[0] == 15 }, 10*time.Second, 5*time.Millisecond)
			n, err := c.Pending(testCtx(t))
			require.NoError(t, err)
			assert.Zero(t, n)

			// A Seek into the empty batch lands after it.
			require.NoError(t, c.Seek(testCtx(t), 7, SeekAbsolute))
			msgs = drain(t, c, 5, 5)
			assert.Equal(t, int64(10), msgs[0].Offset)
			t.Logf("%d fetches below the log end, %d inside the empty batch", fetches.Load(), inEmpty.Load())
			assert.Less(t, fetches.Load(), int64(30), "no fetch loop")
		})
	}
}

// A Seek wakes the worker: the new position is fetched at once, not after
// the long poll in flight (250 ms) ... Counted, not timed: the embedded
// broker leaves the long polls at the log end unanswered, so the messages
// come after a Seek only if the worker gave its poll up; waited out, the
// poll would fail after a request timeout, a fetch error.
func TestSeekAtLogEndWakesWorker(t *testing.T) {
	t.Parallel()
	topic := backlog(t, 1, 5)
	polls := hangRequests(t, kmsg.Fetch, func(req kmsg.Request) bool {
		for _, rt := range req.(*kmsg.FetchRequest).Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == topic && rp.FetchOffset == 5 {
					return true
				}
			}
		}
		return false
	})
	c := open(t, Config{Topic: topic})
	drain(t, c, 5, 5)
	for i := range 3 {
		// The worker's next long poll hangs at the log end.
		require.Eventually(t, func() bool { return polls.Load() > int64(i) }, 10*time.Second, time.Millisecond)
		require.NoError(t, c.Seek(testCtx(t), 0, SeekStart))
		msgs := drain(t, c, 5, 5)
		assert.Equal(t, int64(0), msgs[0].Offset)
	}
	assert.Zero(t, c.Stats().FetchErrors, "a long poll in flight was waited out, not given up for the Seek")
}

// ... nor after the backoff of a partition whose fetches failed. Three
// partition errors back it off 1, 2, then 4 s (a dropped connection would
// back off a second at most): the messages come long before the last
// backoff ends.
func TestSeekWakesBackingOffWorker(t *testing.T) {
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	topic := backlog(t, 1, 5)
	c := open(t, Config{Topic: topic})
	drain(t, c, 5, 5)
	kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: topic, Err: kerr.KafkaStorageError, Count: 3})
	require.Eventually(t, func() bool { return c.Stats().Partitions[0].FetchErrors >= 3 }, 20*time.Second, 5*time.Millisecond)
	require.NoError(t, c.Seek(testCtx(t), 0, SeekStart))
	start := time.Now()
	drain(t, c, 5, 5)
	took := time.Since(start)
	t.Logf("seek to first message: %v", took)
	assert.Less(t, took, 2*time.Second, "the Seek waited out the 4 s backoff")
}

// When a partition's leader moves, its fetches, and those of the partitions
// fetched with it, resume as soon as the metadata shows the new leader: the
// worker makes kafka-go's transport reread it and regroups its partitions.
func TestLeaderMove(t *testing.T) {
	t.Parallel()
	if !cluster.Embedded() {
		t.Skip("moves a leader of the embedded broker (a single real broker has no other)")
	}
	kf, tc, topic := ownCluster(t, 2, 2)
	prod := func(p int, v string) {
		require.NoError(t, tc.Produce(testCtx(t), topic, p, kafka.Message{Value: []byte(v)}))
	}
	prod(0, "a")
	prod(1, "a")
	// Both partitions on one broker, fetched together by one worker.
	l0 := kf.LeaderFor(topic, 0)
	require.NoError(t, kf.MoveTopicPartition(topic, 1, l0))
	c, err := New(testCtx(t), Config{Brokers: kf.ListenAddrs(), Topic: topic})
	require.NoError(t, err)
	defer c.Close()
	drain(t, c, 2, 2)

	var gaps []time.Duration
	for round := range 3 {
		// The messages wait in the log, behind the old leader's answer:
		// paused, the worker fetches no more once its long poll in flight
		// (250 ms) has ended, for which there is no event.
		c.Pause()
		time.Sleep(2 * fetchMaxWait)
		prod(0, "b")
		prod(1, "b")
		moved := int32(round % 2)
		other := kf.LeaderFor(topic, moved) ^ 1 // brokers are 0 and 1
		require.NoError(t, kf.MoveTopicPartition(topic, moved, other))
		start := time.Now()
		c.Resume()
		got := drain(t, c, 2, 2)
		gaps = append(gaps, time.Since(start))
		assert.ElementsMatch(t, []int{0, 1}, []int{got[0].Partition, got[1].Partition})
	}
	t.Logf("data flowed again after a leader move in %v", gaps)
	for _, g := range gaps {
		assert.Less(t, g, fetchMaxWait, "the moved partition waited out a long poll, or more")
	}
}

// Fetching resumes within a second of a broker coming back, however long
// it was away: a fetch whose connection failed backs off at most a second.
func TestFetchResumesSoonAfterOutage(t *testing.T) {
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})
	var down atomic.Bool
	down.Store(true)
	t.Cleanup(func() { down.Store(false) })
	kf.ControlKey(kmsg.Fetch.Int16(), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		if !down.Load() {
			kf.DropControl()
			return nil, nil, false
		}
		kf.KeepControl()
		if !fetchesTopic(kreq.(*kmsg.FetchRequest), topic) {
			return nil, nil, false
		}
		return nil, errors.New("broker away"), true // the connection closes
	})
	// Away long enough for backoffs of 1, 2 and 4 s.
	require.Eventually(t, func() bool { return c.Stats().Partitions[0].FetchErrors >= 4 }, 20*time.Second, 10*time.Millisecond)
	down.Store(false)
	produce(t, topic, 0, 0, 1)
	start := time.Now()
	drain(t, c, 1, 1)
	took := time.Since(start)
	t.Logf("first message %v after the broker was back", took)
	// A second's backoff at most (uncapped, the fifth fetch would wait 8 s),
	// with room for a loaded machine.
	assert.Less(t, took, 4*time.Second)
}
