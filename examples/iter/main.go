// Command iter ranges over MultiConsumer.Iter while a producer keeps adding
// messages, and stops cleanly on Ctrl-C (or after -duration), with a final
// commit. It runs on an embedded broker, or on KAFKA_BROKERS when set:
//
//	go run ./examples/iter
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
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

func main() {
	duration := flag.Duration("duration", 0, "stop after this long (0: run until Ctrl-C)")
	flag.Parse()
	if err := run(*duration); err != nil {
		log.Fatal(err)
	}
}

func run(duration time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}

	cluster, err := kafkatest.FromEnv()
	if err != nil {
		return err
	}
	defer cluster.Close()
	const partitions = 4
	topic, group := kafkatest.UniqueName("iter"), kafkatest.UniqueName("iter-group")
	if err := cluster.CreateTopic(context.Background(), topic, partitions); err != nil {
		return err
	}
	defer cluster.DeleteTopic(context.Background(), topic)

	// A producer adds a message to each partition every 100ms.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			for p := range partitions {
				msg := kafka.Message{Value: fmt.Appendf(nil, "message %d", i)}
				if err := cluster.Produce(ctx, topic, p, msg); err != nil && ctx.Err() == nil {
					log.Print(err)
				}
			}
		}
	})

	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers:          cluster.Brokers(),
		Topic:            topic,
		Group:            group,
		NumWorkers:       2,
		AutoCommitEveryT: time.Second,
	})
	if err != nil {
		return err
	}
	fmt.Println(c, "- press Ctrl-C to stop")
	n := 0
	for m := range c.Iter(ctx) {
		n++
		fmt.Printf("partition %d offset %d: %s\n", m.Partition, m.Offset, m.Value)
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
