// Command quickstart produces a backlog over several partitions and consumes
// it with several workers through GetMessages, showing progress, then a
// summary. It runs with no setup on an embedded broker, or on the cluster in
// KAFKA_BROKERS when that is set:
//
//	go run ./examples/quickstart
//	KAFKA_BROKERS=127.0.0.1:9092 go run ./examples/quickstart -messages 1000000
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"maps"
	"os"
	"slices"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

func main() {
	messages := flag.Int("messages", 200_000, "messages in the backlog")
	partitions := flag.Int("partitions", 8, "partitions of the topic")
	workers := flag.Int("workers", 4, "worker goroutines")
	size := flag.Int("size", 100, "message size in bytes")
	flag.Parse()
	if err := run(*messages, *partitions, *workers, *size); err != nil {
		log.Fatal(err)
	}
}

func run(messages, partitions, workers, size int) error {
	ctx := context.Background()
	cluster, err := kafkatest.FromEnv()
	if err != nil {
		return err
	}
	defer cluster.Close()
	where := "embedded broker (kfake)"
	if !cluster.Embedded() {
		where = fmt.Sprintf("Kafka at %v", cluster.Brokers())
	}

	topic, group := kafkatest.UniqueName("quickstart"), kafkatest.UniqueName("quickstart-group")
	if err := cluster.CreateTopic(ctx, topic, partitions); err != nil {
		return err
	}
	defer cluster.DeleteTopic(context.Background(), topic)

	fmt.Printf("producing %d messages of %d B to %d partitions of %s on the %s\n", messages, size, partitions, topic, where)
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
		if err := cluster.Produce(ctx, topic, p, msgs...); err != nil {
			return err
		}
	}
	fmt.Printf("produced in %v\n", time.Since(start).Round(time.Millisecond))

	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers:    cluster.Brokers(),
		Topic:      topic,
		Group:      group,
		NumWorkers: workers,
	})
	if err != nil {
		return err
	}
	fmt.Println("consuming with", c)

	counts := make(map[int]int)
	total := 0
	start = time.Now()
	progress := time.NewTicker(250 * time.Millisecond)
	defer progress.Stop()
	for total < messages {
		msgs, err := c.GetMessages(ctx, 1000, multiconsumer.Timeout(5*time.Second))
		if err != nil {
			c.Close()
			return err
		}
		if len(msgs) == 0 {
			c.Close()
			return fmt.Errorf("no message for 5s after %d of %d", total, messages)
		}
		for _, m := range msgs {
			counts[m.Partition]++
		}
		total += len(msgs)
		select {
		case <-progress.C:
			fmt.Fprintf(os.Stderr, "\r%9d / %d messages  %8.0f msg/s", total, messages, float64(total)/time.Since(start).Seconds())
		default:
		}
	}
	elapsed := time.Since(start)
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
		float64(total)/elapsed.Seconds(), float64(total*size)/elapsed.Seconds()/1e6)
	fmt.Println("partition  messages  committed offset")
	stats := c.Stats() // still readable after Close
	for _, p := range slices.Sorted(maps.Keys(counts)) {
		fmt.Printf("%9d  %8d  %16d\n", p, counts[p], stats.Partitions[p].Committed)
	}
	return nil
}
