// Command group shows group mode: members of one consumer group share a
// topic's partitions, and the partitions move when members join and leave.
//
// With -members 3 (the default) it runs three members in one process on an
// embedded broker: the first starts alone, the others join one after the
// other, then the first leaves, while they drain a backlog. Each line says
// what a member got or gave up.
//
//	go run ./examples/group
//
// On a Kafka cluster (-brokers, or KAFKA_BROKERS when set) without -topic,
// it does the same on a topic of its own, which it deletes at the end. To
// see members on several machines (or terminals), point them at one
// cluster, topic and group, one member each, and stop them with Ctrl-C:
//
//	go run ./examples/group -brokers 127.0.0.1:9092 -topic events -group billing -members 1
//
// The first creates the topic if it does not exist, and then produces the
// backlog to it; it produces to a topic that exists only with -produce, and
// never deletes it. TLS and SASL: -tls, -tls-ca, -sasl... (-h).
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
	kf := exampleflags.Register("group", "example-group")
	members := flag.Int("members", 3, "members to run in this process")
	partitions := flag.Int("partitions", 6, "partitions of the topic, when it is created")
	messages := flag.Int("messages", 30_000, "messages in the backlog")
	kf.Parse()
	kf.AtLeast(1, "members", *members)
	kf.AtLeast(1, "partitions", *partitions)
	kf.AtLeast(0, "messages", *messages)
	if err := run(kf, *members, *partitions, *messages); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, members, partitions, messages int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	cluster, err := kf.Setup(ctx, partitions)
	if err != nil {
		return err
	}
	defer cluster.Close()
	partitions = cluster.Partitions
	per := messages / partitions
	if cluster.ProduceDemo {
		for p := range partitions {
			msgs := make([]kafka.Message, per)
			for i := range msgs {
				msgs[i] = kafka.Message{Value: []byte(fmt.Sprintf("%d-%d", p, i))}
			}
			if err := cluster.Produce(ctx, p, msgs...); err != nil {
				return err
			}
		}
		fmt.Printf("%s: %d messages on %d partitions of %q\n", cluster, per*partitions, partitions, cluster.Topic)
	}

	var total atomic.Int64
	var wg sync.WaitGroup
	cancels := make([]context.CancelFunc, members)
	for i := range members {
		if i > 0 {
			time.Sleep(2 * time.Second) // members join one after the other
		}
		// Named by process too: members in other terminals or on other
		// machines run with -members 1, and each would be "member-1".
		name := fmt.Sprintf("member-%d/pid-%d", i+1, os.Getpid())
		mctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		cfg := cluster.Config()
		cfg.JoinGroup = true
		cfg.HeartbeatInterval, cfg.SessionTimeout = time.Second, 10*time.Second
		cfg.OnAssigned = func(_ context.Context, p []int) { fmt.Printf("%s: assigned %v\n", name, p) }
		cfg.OnRevoked = func(ctx context.Context, p []int) {
			how := "revoked (consumed offsets committed)"
			if multiconsumer.Lost(ctx) {
				how = "lost"
			}
			fmt.Printf("%s: %s %v\n", name, how, p)
		}
		c, err := multiconsumer.New(ctx, cfg)
		if err != nil {
			return err
		}
		wg.Go(func() {
			defer c.Close()
			n := 0
			for {
				msgs, err := c.GetMessages(mctx, 500, multiconsumer.BlockFor(1), multiconsumer.Timeout(time.Second))
				if err != nil {
					// mctx cancelled: this call consumed the last batch;
					// Close commits it, then leaves the group.
					fmt.Printf("%s: leaving after %d messages, owning %v\n", name, n, c.Assignment())
					return
				}
				n += len(msgs)
				total.Add(int64(len(msgs)))
				// A handler of 1 ms a message: the backlog outlasts the
				// first member, so that the hand-over is seen.
				time.Sleep(time.Duration(len(msgs)) * time.Millisecond)
			}
		})
	}
	if members > 1 {
		time.Sleep(2 * time.Second)
		cancels[0]() // the first member leaves; the others take its partitions
	}
	if cluster.Private {
		// No one else consumes the topic: stop when the backlog is drained.
		for total.Load() < int64(per*partitions) && ctx.Err() == nil {
			time.Sleep(100 * time.Millisecond)
		}
		fmt.Printf("all %d messages consumed\n", total.Load())
		stop()
	}
	<-ctx.Done()
	for _, cancel := range cancels {
		cancel()
	}
	wg.Wait()
	return nil
}
