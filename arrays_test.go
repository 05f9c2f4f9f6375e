package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/require"
)

// The queue's arrays under every way of taking messages at once, without a
// broker: unpackers decode runs into arrays given back (each must come
// back empty and cleared), while GetMessages with short timeouts (which
// put taken batches back), Messages loops and Iter goroutines that stop
// at random, Process runs that start and stop (the queue going fair and
// back), and Seeks take from the queue. Every message received holds
// what was decoded into it, then and at the end (an array given back
// while a caller holds it would be cleared or overwritten), and, without
// Seeks, each offset is received once.
func TestQueueArraysUnderEveryConsumer(t *testing.T) {
	brokerFree(t)
	t.Run("get, messages, iter", func(t *testing.T) { arraysStress(t, false, false) })
	t.Run("with seeks and process", func(t *testing.T) { arraysStress(t, true, true) })
}

func arraysStress(t *testing.T, seeking, processing bool) {
	const parts, per = 3, 20000
	led := newLedger("t", 0, 0, time.Now())
	for p := range parts {
		led.start(p, 0, noOffset, "")
	}
	q := newQueue(64)
	q.setPartitions(parts)
	size := q.arrays.size
	d := newDelivery(q, led, alwaysAlive, newLifecycle(), func() {})
	open := newEvent(true)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) == 1 {
			t.Errorf(format, args...)
		}
		cancel()
	}

	var unpackers sync.WaitGroup
	for p := range parts {
		unpackers.Go(func() {
			for next := int64(0); next < per; {
				led.mu.Lock()
				epoch := led.b.parts[p].epoch
				led.mu.Unlock()
				k := 1 + rand.IntN(size) // mostly full runs, as a backlog's
				if rand.IntN(10) < 7 {
					k = size - rand.IntN(2)
				}
				k = min(k, int(per-next))
				whole := k >= wholeAt-1
				var run []kafka.Message
				if whole {
					if run = q.arrays.get(); run == nil {
						run = make([]kafka.Message, 0, size)
					}
					if len(run) != 0 || cap(run) != size {
						fail("an array given back has length %d and capacity %d", len(run), cap(run))
						return
					}
					for _, m := range run[:cap(run)] {
						if m.Value != nil || m.Offset != 0 {
							fail("an array given back was not cleared: %q", m.Value)
							return
						}
					}
				} else {
					run = make([]kafka.Message, 0, k)
				}
				for range k {
					run = append(run, kafka.Message{Topic: "t", Partition: p, Offset: next, Value: fmt.Appendf(nil, "%d-%d", p, next)})
					next++
				}
				if rand.IntN(4) == 0 {
					time.Sleep(time.Duration(rand.IntN(100)) * time.Microsecond)
				}
				if q.put(ctx, batch{partition: p, epoch: epoch, msgs: run, whole: whole}, open) != nil {
					return
				}
			}
		})
	}

	var mu sync.Mutex
	var kept [][]kafka.Message
	total := 0
	record := func(ms []kafka.Message) {
		for _, m := range ms {
			if string(m.Value) != fmt.Sprintf("%d-%d", m.Partition, m.Offset) {
				fail("received partition %d offset %d with value %q", m.Partition, m.Offset, m.Value)
				return
			}
		}
		mu.Lock()
		defer mu.Unlock()
		kept = append(kept, ms)
		if total += len(ms); total >= parts*per && !seeking {
			cancel()
		}
	}
	var takers sync.WaitGroup
	takers.Go(func() { // GetMessages, often cancelled or timed out with batches taken
		for ctx.Err() == nil {
			c, cc := context.WithTimeout(ctx, time.Duration(rand.IntN(300))*time.Microsecond)
			ms, _ := d.get(c, 1+rand.IntN(100), BlockFor(1+rand.IntN(60)), Timeout(time.Millisecond))
			cc()
			record(ms)
		}
	})
	takers.Go(func() { // Messages loops that stop early
		for ctx.Err() == nil {
			n := rand.IntN(50)
			c, cc := context.WithTimeout(ctx, time.Duration(rand.IntN(500))*time.Microsecond)
			for m, err := range d.messages(c) {
				if err != nil {
					break
				}
				record([]kafka.Message{m})
				if n--; n <= 0 {
					break
				}
			}
			cc()
		}
	})
	takers.Go(func() { // Iter goroutines cancelled at random
		for ctx.Err() == nil {
			c, cc := context.WithCancel(ctx)
			n := rand.IntN(100)
			for m := range d.iter(c) {
				record([]kafka.Message{m})
				if n--; n <= 0 {
					cc()
				}
			}
			cc()
		}
	})
	if processing {
		takers.Go(func() { // Process runs, ByKey or Unordered
			for ctx.Err() == nil {
				pc, err := ProcessConfig{Ordering: []Ordering{ByKey, Unordered}[rand.IntN(2)]}.withDefaults()
				if err != nil {
					fail("%v", err)
					return
				}
				c, cc := context.WithTimeout(ctx, time.Duration(rand.IntN(3000))*time.Microsecond)
				p := newProcessor(pc, func(_ context.Context, m kafka.Message) error {
					record([]kafka.Message{m})
					return nil
				}, d, slog.New(slog.DiscardHandler), time.Millisecond)
				_, _ = d.process(c, p)
				cc()
				time.Sleep(time.Duration(rand.IntN(500)) * time.Microsecond)
			}
		})
	}
	if seeking {
		takers.Go(func() { // Seeks: a partition's queued batches go stale
			for ctx.Err() == nil {
				time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
				p := rand.IntN(parts)
				led.renew([]int{p})
				q.drop(func(b *batch) bool { return !led.current(b.partition, b.epoch) })
				d.moved()
			}
		})
		// What a Seek drops is not received: the test ends a while after
		// the last run is queued.
		go func() { unpackers.Wait(); time.Sleep(300 * time.Millisecond); cancel() }()
	}
	done := make(chan struct{})
	go func() { takers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		cancel()
		<-done
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("stuck at %d of %d messages", total, parts*per)
	}
	unpackers.Wait()
	if failures.Load() > 0 {
		return
	}
	seen := map[[2]int64]int{}
	for _, ms := range kept {
		for _, m := range ms {
			require.Equal(t, fmt.Sprintf("%d-%d", m.Partition, m.Offset), string(m.Value), "a message kept to the end changed")
			seen[[2]int64{int64(m.Partition), m.Offset}]++
		}
	}
	if seeking {
		return
	}
	require.Len(t, seen, parts*per)
	for k, n := range seen {
		require.Equal(t, 1, n, "partition %d offset %d received %d times", k[0], k[1], n)
	}
}
