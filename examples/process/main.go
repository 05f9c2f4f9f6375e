// Command process handles a topic with MultiConsumer.Process: an I/O-bound
// handler (a simulated 5 ms call to another service) runs for up to
// -concurrency messages at once, far beyond the topic's 4 partitions,
// while the messages of each key are handled one at a time, in order. Every
// second it prints the throughput and what is in flight per key; at the end
// it checks that no key ever had two messages in flight. It runs on an
// embedded broker:
//
//	go run ./examples/process
//
// or on a Kafka cluster (-brokers, or KAFKA_BROKERS when set), on a topic
// of its own that it deletes at the end:
//
//	go run ./examples/process -brokers 127.0.0.1:9092
//
// With -topic, it handles that topic, which it creates (and then fills)
// only if it does not exist; it produces to a topic that exists only with
// -produce, and never deletes it. TLS and SASL: -tls, -tls-ca, -sasl... (-h).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/internal/exampleflags"
	"github.com/segmentio/kafka-go"
)

func main() {
	kf := exampleflags.Register("process", "")
	messages := flag.Int("messages", 20000, "messages to produce (and handle, on a topic of its own)")
	keys := flag.Int("keys", 200, "distinct keys of the messages produced")
	concurrency := flag.Int("concurrency", 64, "handlers at once")
	call := flag.Duration("call", 5*time.Millisecond, "how long the simulated call takes")
	kf.Parse()
	kf.AtLeast(1, "messages", *messages)
	kf.AtLeast(1, "keys", *keys)
	kf.AtLeast(1, "concurrency", *concurrency)
	if err := run(kf, *messages, *keys, *concurrency, *call); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, messages, keys, concurrency int, call time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cluster, err := kf.Setup(ctx, 4)
	if err != nil {
		return err
	}
	defer cluster.Close()
	if cluster.ProduceDemo {
		// Messages keyed by customer, spread over the partitions by key.
		byPart := make([][]kafka.Message, cluster.Partitions)
		for i := range messages {
			k := i % keys
			p := k % cluster.Partitions
			byPart[p] = append(byPart[p], kafka.Message{
				Key:   fmt.Appendf(nil, "customer-%d", k),
				Value: fmt.Appendf(nil, "order %d", i),
			})
		}
		for p, msgs := range byPart {
			if err := cluster.Produce(ctx, p, msgs...); err != nil {
				return err
			}
		}
	}

	cfg := cluster.Config()
	cfg.NumWorkers = 2
	c, err := multiconsumer.New(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("%v on the %s: Process, %d handlers at once, a %v call each\n", c, cluster, concurrency, call)

	var (
		mu       sync.Mutex
		inFlight = map[string]int{} // key -> handlers running (ByKey: never above 1)
		worst    int
		handled  atomic.Int64
	)
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	handler := func(ctx context.Context, m kafka.Message) error {
		k := string(m.Key)
		mu.Lock()
		inFlight[k]++
		worst = max(worst, inFlight[k])
		mu.Unlock()
		defer func() {
			mu.Lock()
			if inFlight[k]--; inFlight[k] == 0 {
				delete(inFlight, k)
			}
			mu.Unlock()
		}()
		select { // the call to another service
		case <-time.After(call):
		case <-ctx.Done():
			return ctx.Err() // not complete: handled again after a restart
		}
		if handled.Add(1) == int64(messages) && cluster.Private {
			cancel() // our own topic: everything is handled
		}
		return nil
	}

	// Every second: throughput, and what is in flight per key.
	var report sync.WaitGroup
	report.Go(func() {
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		last := int64(0)
		for {
			select {
			case <-pctx.Done():
				return
			case <-tick.C:
			}
			n := handled.Load()
			mu.Lock()
			busy := make([]string, 0, len(inFlight))
			for k := range inFlight {
				busy = append(busy, k)
			}
			mu.Unlock()
			slices.Sort(busy)
			st := c.Stats().Process
			fmt.Printf("%6d msg/s  handled %6d  in flight %3d over %3d keys (max 1 per key) %v  waiting %d\n",
				n-last, n, st.InFlight, len(busy), first(busy, 4), st.Waiting)
			last = n
		}
	})

	start := time.Now()
	err = c.Process(pctx, multiconsumer.ProcessConfig{
		Ordering:    multiconsumer.ByKey,
		Concurrency: concurrency,
		MaxAttempts: 5,
	}, handler)
	elapsed := time.Since(start)
	cancel()
	report.Wait()
	if err != nil && !errors.Is(err, context.Canceled) {
		c.Close()
		return err
	}
	// Process committed what completed when it returned; Close commits
	// again (nothing new) and leaves.
	if err := c.Close(); err != nil {
		return err
	}
	n := handled.Load()
	ideal := float64(concurrency) / call.Seconds()
	fmt.Printf("handled %d messages in %v: %.0f msg/s (ideal %d handlers / %v = %.0f msg/s); most handlers of one key at once: %d\n",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), concurrency, call, ideal, worst)
	if worst > 1 {
		return fmt.Errorf("a key had %d messages in flight at once", worst)
	}
	return nil
}

func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], "...")
	}
	return s
}
