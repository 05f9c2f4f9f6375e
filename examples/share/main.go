// Command share shows a share group (KIP-932): members share the records of
// one partition, so a service scales past its partition count.
//
// With -members 3 (the default) it runs three members in one process on an
// embedded broker, over a topic of one partition, each with the same
// Process handler (5 ms a record). Each line says what a member handled;
// at the end, every record was handled once, and each member had a share.
//
//	go run ./examples/share
//
// On a Kafka cluster (4.2 or later, with share groups enabled; -brokers, or
// KAFKA_BROKERS when set) without -topic, it does the same on a topic of
// its own, which it deletes at the end. To see members in several
// terminals, point them at one cluster, topic and group, one member each,
// and stop them with Ctrl-C: what a stopped member held goes to the others
// at once.
//
//	go run ./examples/share -brokers 127.0.0.1:9092 -topic events -group billing -members 1
//
// TLS and SASL: -tls, -tls-ca, -sasl... (-h).
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/internal/exampleflags"
	"github.com/segmentio/kafka-go"
)

func main() {
	kf := exampleflags.Register("share", "example-share")
	members := flag.Int("members", 3, "members to run in this process")
	messages := flag.Int("messages", 600, "messages in the backlog")
	kf.Parse()
	kf.AtLeast(1, "members", *members)
	kf.AtLeast(0, "messages", *messages)
	if err := run(kf, *members, *messages); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, members, messages int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cluster, err := kf.Setup(ctx, 1)
	if err != nil {
		return err
	}
	defer cluster.Close()
	if cluster.ProduceDemo {
		msgs := make([]kafka.Message, messages)
		for i := range msgs {
			msgs[i] = kafka.Message{Value: []byte(fmt.Sprintf("record-%d", i))}
		}
		if err := cluster.Produce(ctx, 0, msgs...); err != nil {
			return err
		}
		fmt.Printf("%s: %d messages on one partition of %q\n", cluster, messages, cluster.Topic)
	}

	var total atomic.Int64
	var wg sync.WaitGroup
	counts := make([]atomic.Int64, members)
	for i := range members {
		name := fmt.Sprintf("member-%d/pid-%d", i+1, os.Getpid())
		cfg := cluster.Config()
		cfg.ShareGroup = true
		cfg.QueueSize = 32 // acquire little at a time: the members share the partition
		c, err := multiconsumer.New(ctx, cfg)
		if err != nil {
			return err
		}
		wg.Go(func() {
			// Unordered: the records have no key, and a share group orders
			// nothing across members anyway (ByKey, the default, would run a
			// partition's keyless records one at a time).
			err := c.Process(ctx, multiconsumer.ProcessConfig{Concurrency: 8, Ordering: multiconsumer.Unordered}, func(ctx context.Context, m kafka.Message) error {
				time.Sleep(5 * time.Millisecond) // the work
				if n := counts[i].Add(1); n%100 == 0 {
					fmt.Printf("%s: %d records handled (the last %s, delivery %d)\n", name, n, m.Value, multiconsumer.DeliveryCount(m))
				}
				total.Add(1)
				return nil // accepted
			})
			_ = c.Close() // sends what is decided, and releases what it holds, for the others
			st := c.Stats().Share
			fmt.Printf("%s: stopped (%v) after %d records: accepted %d, released %d\n", name, err, counts[i].Load(), st.Accepted, st.Released)
		})
	}
	if cluster.Private {
		// No one else consumes the topic: stop when the backlog is done.
		for total.Load() < int64(messages) && ctx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		fmt.Printf("all %d records handled\n", total.Load())
		stop()
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}
