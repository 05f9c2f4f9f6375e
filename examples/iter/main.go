// Command iter ranges over MultiConsumer.Iter while a producer keeps adding
// messages, and stops cleanly on Ctrl-C (or after -duration), with a final
// commit. It runs on an embedded broker:
//
//	go run ./examples/iter
//
// or on a Kafka cluster (-brokers, or KAFKA_BROKERS when set), on a topic
// of its own that it deletes at the end:
//
//	go run ./examples/iter -brokers 127.0.0.1:9092
//
// With -topic, it ranges over that topic, which it creates (and then
// produces to) only if it does not exist; it produces to a topic that
// exists only with -produce, and never deletes it. TLS and SASL: -tls,
// -tls-ca, -sasl... (-h).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/internal/exampleflags"
	"github.com/segmentio/kafka-go"
)

func main() {
	kf := exampleflags.Register("iter", "")
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	partitions := flag.Int("partitions", 4, "partitions of the topic, when it is created")
	kf.Parse()
	kf.AtLeast(1, "partitions", *partitions)
	if err := run(kf, *duration, *partitions); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, duration time.Duration, partitions int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	cluster, err := kf.Setup(ctx, partitions)
	if err != nil {
		return err
	}
	defer cluster.Close()

	// A producer adds a message to each partition every 100ms.
	var wg sync.WaitGroup
	defer wg.Wait()
	if cluster.ProduceDemo {
		wg.Go(func() {
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for i := 0; ; i++ {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
				for p := range cluster.Partitions {
					msg := kafka.Message{Value: fmt.Appendf(nil, "message %d", i)}
					if err := cluster.Produce(ctx, p, msg); err != nil && ctx.Err() == nil {
						log.Print(err)
					}
				}
			}
		})
	}

	cfg := cluster.Config()
	cfg.NumWorkers = 2
	cfg.AutoCommitEveryT = time.Second
	c, err := multiconsumer.New(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Printf("%v on the %s - press Ctrl-C to stop\n", c, cluster)
	n := 0
	for m := range c.Iter(ctx) {
		n++
		v := m.Value
		if len(v) > 60 {
			v = v[:60] // a message of a topic of yours can be large
		}
		fmt.Printf("partition %d offset %d: %q\n", m.Partition, m.Offset, v)
	}
	// ctx is done, and every message received was handled: commit them
	// all (a receive marks the one before it consumed, but nothing comes
	// after the last), then Close.
	if err := c.Commit(context.Background()); err != nil {
		c.Close()
		return fmt.Errorf("final commit: %w", err)
	}
	if err := c.Close(); err != nil {
		return err
	}
	fmt.Printf("stopped after %d messages; committed offsets %v\n", n, c.Offsets())
	return nil
}
