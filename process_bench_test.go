package multiconsumer

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// dispatch runs Process's parts without a broker: batches go into the
// queue as the unpackers put them (partitions of 1,000 keys each, 500
// messages a batch, all of them put at once, so that much waits in the
// partitions' overflow), and a handler calls work (if not nil) and counts
// the messages it completes until all n are. It returns the CPU time the
// process spent from the first put to the last message, and Process's
// counters.
func dispatch(tb testing.TB, pc ProcessConfig, partitions, n int, timeout time.Duration, work func(partition int, offset int64) error) (time.Duration, ProcessStats) {
	return dispatchKeys(tb, pc, DefaultQueueSize, partitions, 1000, n, timeout, work)
}

// dispatchKeys is dispatch with a queue of queueSize and keysPerPart keys
// a partition (message i of a partition has key i mod keysPerPart).
//
// Batches are whole arrays of the queue's size (batch.whole), as an
// unpacker makes them under Process, so Process gives them back as it is
// done with them; a message's value holds its partition and offset, and
// a test (not a benchmark) checks each message handled against it: a
// message read after its array was given back (cleared) would not match.
func dispatchKeys(tb testing.TB, pc ProcessConfig, queueSize, partitions, keysPerPart, n int, timeout time.Duration, work func(partition int, offset int64) error) (time.Duration, ProcessStats) {
	keys := make([][]byte, keysPerPart)
	for i := range keys {
		keys[i] = fmt.Appendf(nil, "key-%d", i)
	}
	_, check := tb.(*testing.T)
	var mismatches atomic.Int64

	led := newLedger("t", 0, 0, time.Now())
	for p := range partitions {
		led.start(p, 0, noOffset, "")
	}
	q := newQueue(queueSize)
	q.setPartitions(partitions)
	batchSize := q.arrays.size
	d := newDelivery(q, led, alwaysAlive, newLifecycle(), func() {})
	pc, err := pc.withDefaults()
	require.NoError(tb, err)
	ctx, cancel := context.WithTimeoutCause(context.Background(), timeout, errors.New("not all handled in time"))
	defer cancel()
	var handled atomic.Int64
	done := make(chan struct{})
	var order struct { // check, ByKey and ByPartition: each lane's handler running, and its last offset started
		sync.Mutex
		busy map[[2]int64]bool
		last map[[2]int64]int64
	}
	order.busy, order.last = map[[2]int64]bool{}, map[[2]int64]int64{}
	violations := 0          // guarded by order
	var seen [][]atomic.Bool // check: the messages handled, by partition and offset
	if check {
		seen = make([][]atomic.Bool, partitions)
		for part := range seen {
			seen[part] = make([]atomic.Bool, n/partitions+1)
		}
	}
	p := newProcessor(pc, func(_ context.Context, m kafka.Message) error {
		if check && (len(m.Value) < 16 || m.Topic != "t" ||
			int64(binary.BigEndian.Uint64(m.Value)) != int64(m.Partition) || int64(binary.BigEndian.Uint64(m.Value[8:])) != m.Offset) {
			if mismatches.Add(1) == 1 {
				tb.Errorf("handled a message not as fetched: partition %d offset %d value %x", m.Partition, m.Offset, m.Value)
			}
			return nil
		}
		if check && pc.Ordering != Unordered {
			// Its key (or partition) runs one message at a time, in
			// offset order (a retry starts the same offset again).
			lane := [2]int64{int64(m.Partition), -1}
			if pc.Ordering == ByKey {
				lane[1] = m.Offset % int64(keysPerPart)
			}
			order.Lock()
			if order.busy[lane] || m.Offset < order.last[lane] {
				violations++
			}
			order.busy[lane], order.last[lane] = true, m.Offset
			order.Unlock()
			defer func() {
				order.Lock()
				order.busy[lane] = false
				order.Unlock()
			}()
		}
		if work != nil {
			if err := work(m.Partition, m.Offset); err != nil {
				return err
			}
		}
		if check {
			seen[m.Partition][m.Offset].Store(true)
		}
		if handled.Add(1) == int64(n) {
			close(done)
		}
		return nil
	}, d, slog.New(slog.DiscardHandler), time.Second)

	// The unpackers: one a partition, each putting its share, made
	// before the clock starts.
	open := newEvent(true)
	var puts sync.WaitGroup
	start := make(chan struct{})
	for part := range partitions {
		led.mu.Lock()
		epoch := led.b.parts[part].epoch
		led.mu.Unlock()
		share := n / partitions
		if part < n%partitions {
			share++
		}
		values := make([]byte, 100*share)
		for o := range share {
			binary.BigEndian.PutUint64(values[100*o:], uint64(part))
			binary.BigEndian.PutUint64(values[100*o+8:], uint64(o))
		}
		puts.Go(func() {
			<-start
			// As an unpacker: a run of what the partition's share has
			// room for, in an array Process gave back if there is one.
			for off := 0; off < share; {
				room := q.roomFor(part, epoch, open, true)
				if room == 0 {
					wait, done := q.waitParked([]parkedRef{{p: part, epoch: epoch}})
					select {
					case <-wait:
					case <-ctx.Done():
					}
					done()
					if ctx.Err() != nil {
						return
					}
					continue
				}
				k := min(batchSize, share-off)
				if room > 0 {
					k = min(k, room)
				}
				msgs := q.arrays.get()
				if msgs == nil {
					msgs = make([]kafka.Message, 0, batchSize)
				}
				for o := off; o < off+k; o++ {
					v := values[100*o : 100*o+100 : 100*o+100]
					msgs = append(msgs, kafka.Message{Topic: "t", Partition: part, Offset: int64(o), Key: keys[o%keysPerPart], Value: v})
				}
				if q.put(ctx, batch{partition: part, epoch: epoch, msgs: msgs, whole: true}, open) != nil {
					return
				}
				off += k
			}
			q.unpark(part, epoch)
		})
	}
	if b, ok := tb.(*testing.B); ok {
		b.ReportAllocs()
		b.ResetTimer()
	}
	cpu0 := cpuTime()
	close(start)
	pctx, stop := context.WithCancel(ctx)
	go func() {
		select {
		case <-done:
		case <-ctx.Done():
		}
		stop()
	}()
	ran, err := d.process(pctx, p)
	cpu := cpuTime() - cpu0
	stop()
	puts.Wait()
	require.True(tb, ran)
	require.ErrorIs(tb, err, context.Canceled)
	require.NoError(tb, context.Cause(ctx), "handled %d of %d", handled.Load(), n)
	if check {
		missed := 0
		for part := range seen {
			for o := range seen[part] {
				if o*partitions+part < n && !seen[part][o].Load() {
					missed++
				}
			}
		}
		assert.Zero(tb, missed, "messages never handled (another handled in their place?)")
		order.Lock()
		assert.Zero(tb, violations, "handlers of one key (%v) at once, or out of offset order", pc.Ordering)
		order.Unlock()
	}
	return cpu, d.totals.snapshot()
}

// TestProcessDispatchDrains: Process's parts, without a broker, hand every
// message to a handler under each ordering, with most of each partition
// waiting in its overflow; with handlers that now and then hold a hand up
// past slowHandler (a sweep gives the rest of its run back), or fail once
// (the run is parked, the message retried), or both, or panic once, with few hands and
// many. A lost wake-up would stall it: this one once did (a partition's
// overflow filled while the bound was full of another's, see
// TestQueueFairOverflowOfAnIdlePartition).
func TestProcessDispatchDrains(t *testing.T) {
	brokerFree(t)
	type handler struct {
		name string
		work func(partition int, offset int64) error
	}
	failedOnce := func() func(partition int, offset int64) error {
		var mu sync.Mutex
		failed := map[[2]int64]bool{}
		return func(partition int, offset int64) error {
			if offset%997 != 0 {
				return nil
			}
			mu.Lock()
			defer mu.Unlock()
			k := [2]int64{int64(partition), offset}
			if failed[k] {
				return nil
			}
			failed[k] = true
			return errors.New("once")
		}
	}
	slow := func(_ int, offset int64) error {
		if offset%4999 == 0 {
			time.Sleep(3 * slowHandler / 2)
		}
		return nil
	}
	for _, order := range []Ordering{Unordered, ByPartition, ByKey} {
		for _, conc := range []int{1, 16} {
			fail, fail2, fail3 := failedOnce(), failedOnce(), failedOnce()
			hs := []handler{{"fast", nil}, {"slow", slow}, {"failing", fail}, {"slow and failing", func(partition int, offset int64) error {
				_ = slow(partition, offset)
				return fail2(partition, offset)
			}}, {"panicking", func(partition int, offset int64) error {
				// Among fast handlers (handleFast): a panic is an
				// attempt that failed, retried.
				if err := fail3(partition, offset); err != nil {
					panic(err)
				}
				return nil
			}}}
			for _, h := range hs {
				t.Run(fmt.Sprintf("%v/c=%d/%s", order, conc, h.name), func(t *testing.T) {
					pc := ProcessConfig{Ordering: order, Concurrency: conc, RetryBackoff: time.Millisecond}
					began := time.Now()
					_, st := dispatch(t, pc, 8, 50_000, 60*time.Second, h.work)
					// The handlers' durations are sane: a failed or
					// panicking attempt among untimed ones counts from
					// when they began (once, a panic counted from the
					// zero time: 292 years, Sum negative).
					hd := st.HandlerDurations
					require.Positive(t, hd.Count)
					assert.LessOrEqual(t, hd.Sum, time.Duration(conc)*time.Since(began), "Sum of %d durations", hd.Count)
					assert.GreaterOrEqual(t, hd.Sum, time.Duration(0))
					assert.Zero(t, hd.Counts[len(hd.Counts)-1], "durations over 30s")
					if h.name == "panicking" {
						assert.Positive(t, st.Panics)
					}
				})
			}
		}
	}
	// ByKey over more keys than keepLanes (4,096 a partition, 32,768 in
	// all, each coming back about 6 times), with a queue large enough
	// that keys have messages waiting as their runs settle: lanes settled
	// idle are let go at once and made again, none with a message
	// waiting (letting such a lane go loses its messages: the drain
	// stalls), and each key's messages still run one at a time, in order
	// (dispatchKeys checks).
	fail := failedOnce()
	for _, h := range []handler{{"fast", nil}, {"slow and failing", func(partition int, offset int64) error {
		_ = slow(partition, offset)
		return fail(partition, offset)
	}}} {
		t.Run("ByKey/many keys/"+h.name, func(t *testing.T) {
			pc := ProcessConfig{Ordering: ByKey, Concurrency: 16, RetryBackoff: time.Millisecond}
			dispatchKeys(t, pc, 1<<16, 8, 4096, 200_000, 60*time.Second, h.work)
		})
	}
}

// TestProcessBlockedHandlersLetOthersRun: near-empty handlers run on
// fastHands hands a P (2 here, on one P); when those hands' handlers block,
// a sweep finds them held up and wakes other hands to take the rest. Had
// the held hands counted, or the sweep not woken a hand, nothing else
// would run, and the two would wait for good.
func TestProcessBlockedHandlersLetOthersRun(t *testing.T) {
	brokerFree(t)
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	const n = 40_000
	var handled atomic.Int64
	rest := make(chan struct{})
	var once sync.Once
	work := func(partition int, offset int64) error {
		if partition < 2 && offset == 2500 { // after enough to be near-empty
			select {
			case <-rest:
			case <-time.After(10 * time.Second):
				t.Errorf("partition %d, offset %d: the others were not handled while it waited (%d of %d)", partition, offset, handled.Load(), n)
			}
		}
		if handled.Add(1) == n-2 {
			once.Do(func() { close(rest) })
		}
		return nil
	}
	// A queue that lends them all early: no batch added later wakes a hand.
	dispatchKeys(t, ProcessConfig{Ordering: Unordered, Concurrency: 8}, 1<<16, 8, 1000, n, 60*time.Second, work)
}

// TestProcessDispatchMetadataFull: ByKey on one partition, two keys
// interleaved, key 0's first message held up for a while: key 1's
// completions are a span each, until the commit metadata has no room and
// key 1's lane waits (blocked), while other hands are swept now and then
// (a slow message) and give their runs back. Once key 0's message
// completes, everything must (a lane left blocked with nothing of its
// partition in flight would stall: see TestProcessGiveBackUnblocksTheLane).
func TestProcessDispatchMetadataFull(t *testing.T) {
	brokerFree(t)
	release := make(chan struct{})
	var once sync.Once
	var count, atRelease atomic.Int64
	work := func(_ int, offset int64) error {
		if offset == 0 {
			select {
			case <-release:
			case <-time.After(30 * time.Second): // no hang: dispatch fails the test
				t.Errorf("key 0 waited 30s: key 1 handled %d", count.Load())
			}
		}
		if offset%2 == 1 && offset%3001 == 0 {
			time.Sleep(3 * slowHandler / 2) // a sweep takes the rest of the run
		}
		if count.Add(1) == 1000 {
			// Key 1 runs on until the metadata is full (about 3,000
			// spans), then waits; key 0's first message completes later.
			once.Do(func() {
				time.AfterFunc(300*time.Millisecond, func() {
					atRelease.Store(count.Load())
					close(release)
				})
			})
		}
		return nil
	}
	pc := ProcessConfig{Ordering: ByKey, Concurrency: 4}
	// A queue that lends them all at once: key 0's waiting messages
	// do not fill the bound (they would, with a small one, before the
	// metadata does: a stuck key holds back its partition at the bound).
	dispatchKeys(t, pc, 65536, 1, 2, 60_000, 60*time.Second, work)
	t.Logf("key 1 handled %d before key 0's first message completed", atRelease.Load())
	require.Less(t, atRelease.Load(), int64(29_000), "key 1 waited for room in the metadata")
}

// BenchmarkProcessDispatch measures Process's own cost a message, without
// a broker (see dispatch), 8 partitions: ns/op is wall time on all cores,
// cpu-ns/op the process's CPU time. Use -benchtime Nx (150 B a message
// is made up front). The bench program's -suites process measures the
// whole consumer against a broker; this isolates the dispatcher, the
// lanes, the hands and the ledger, for profiles.
func BenchmarkProcessDispatch(b *testing.B) {
	for _, order := range []Ordering{Unordered, ByPartition, ByKey} {
		b.Run(order.String(), func(b *testing.B) {
			cpu, _ := dispatch(b, ProcessConfig{Ordering: order}, 8, b.N, 5*time.Minute, nil)
			b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
		})
	}
	// Every message a key of its own (an ID, say): a lane made for each,
	// and as many let go.
	b.Run("ByKey/unique", func(b *testing.B) {
		cpu, _ := dispatchKeys(b, ProcessConfig{Ordering: ByKey}, DefaultQueueSize, 8, b.N/8+1, b.N, 5*time.Minute, nil)
		b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	})
}

// cpuTime is the process's CPU time (user and system) so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
