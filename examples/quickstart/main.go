// Command quickstart produces a backlog over several partitions and consumes
// it with several workers through GetMessages, showing progress, then a
// summary. It runs with no setup on an embedded broker:
//
//	go run ./examples/quickstart
//
// or on a Kafka cluster (-brokers, or KAFKA_BROKERS when set), on a topic
// of its own that it deletes at the end:
//
//	go run ./examples/quickstart -brokers 127.0.0.1:9092 -messages 1000000
//
// With -topic, it consumes that topic, which it creates (and fills) only if
// it does not exist; it produces to a topic that exists only with -produce,
// and never deletes it. Then it reads up to -messages messages, and stops
// when none comes for 5s. TLS and SASL: -tls, -tls-ca, -sasl... (-h).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"os/signal"
	"slices"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/internal/exampleflags"
	"github.com/segmentio/kafka-go"
)

func main() {
	kf := exampleflags.Register("quickstart", "")
	messages := flag.Int("messages", 200_000, "messages in the backlog (on a topic that exists: the most to read)")
	partitions := flag.Int("partitions", 8, "partitions of the topic, when it is created")
	workers := flag.Int("workers", 4, "worker goroutines")
	size := flag.Int("size", 100, "message size in bytes")
	kf.Parse()
	kf.AtLeast(1, "messages", *messages)
	kf.AtLeast(1, "partitions", *partitions)
	kf.AtLeast(1, "workers", *workers)
	kf.AtLeast(0, "size", *size)
	if err := run(kf, *messages, *partitions, *workers, *size); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, messages, partitions, workers, size int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cluster, err := kf.Setup(ctx, partitions)
	if err != nil {
		return err
	}
	defer cluster.Close()
	topic, partitions := cluster.Topic, cluster.Partitions

	if cluster.ProduceDemo {
		fmt.Printf("producing %d messages of %d B to %d partitions of %s on the %s\n", messages, size, partitions, topic, cluster)
		start := time.Now()
		value := make([]byte, size)
		for p := range partitions {
			n := messages / partitions
			if p < messages%partitions {
				n++
			}
			msgs := make([]kafka.Message, n)
			for i := range msgs {
				msgs[i] = kafka.Message{Value: value}
			}
			if err := cluster.Produce(ctx, p, msgs...); err != nil {
				return err
			}
		}
		fmt.Printf("produced in %v\n", time.Since(start).Round(time.Millisecond))
	} else {
		fmt.Printf("reading up to %d messages of %s on the %s, until none comes for 5s\n", messages, topic, cluster)
	}

	cfg := cluster.Config()
	cfg.NumWorkers = workers
	c, err := multiconsumer.New(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Println("consuming with", c)

	counts := make(map[int]int)
	total, bytes := 0, 0
	start, last := time.Now(), time.Now()
	progress := time.NewTicker(250 * time.Millisecond)
	defer progress.Stop()
	for total < messages {
		msgs, err := c.GetMessages(ctx, min(1000, messages-total), multiconsumer.Timeout(5*time.Second))
		if err != nil {
			c.Close()
			return err
		}
		if len(msgs) == 0 {
			if !cluster.ProduceDemo {
				break // read what there was
			}
			c.Close()
			return fmt.Errorf("no message for 5s after %d of %d", total, messages)
		}
		for _, m := range msgs {
			counts[m.Partition]++
			bytes += len(m.Value)
		}
		total += len(msgs)
		last = time.Now()
		select {
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "\r%9d / %d messages  %8.0f msg/s", total, messages, float64(total)/time.Since(start).Seconds())
		default:
		}
	}
	elapsed := last.Sub(start) // not the 5s without a message at the end
	fmt.Fprintf(os.Stderr, "\r%9d / %d messages\n", total, messages)
	// Every message delivered was handled (counted): say so, then Close.
	// Close alone commits only what the loop came back from, which leaves
	// out the last batch; with a cancelled ctx, one more GetMessages call
	// would consume it too.
	if err := c.Commit(ctx); err != nil {
		c.Close()
		return err
	}
	if err := c.Close(); err != nil {
		return err
	}

	fmt.Printf("\nconsumed %d messages in %v: %.0f msg/s, %.1f MB/s\n", total, elapsed.Round(time.Millisecond),
		float64(total)/elapsed.Seconds(), float64(bytes)/elapsed.Seconds()/1e6)
	fmt.Printf("partition  messages  committed offset (group %s)\n", cluster.Group)
	stats := c.Stats() // still readable after Close
	for _, p := range slices.Sorted(maps.Keys(counts)) {
		fmt.Printf("%9d  %8d  %16d\n", p, counts[p], stats.Partitions[p].Committed)
	}
	return nil
}
