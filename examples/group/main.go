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
// To see members on several machines (or terminals), point them at one
// cluster, topic and group, one member each:
//
//	go run ./examples/group -brokers 127.0.0.1:9092 -topic events -group billing -members 1
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

func main() {
	brokers := flag.String("brokers", "", "bootstrap brokers, host:port,...; empty: an embedded broker with a backlog")
	topic := flag.String("topic", "", "topic (with -brokers)")
	group := flag.String("group", "example-group", "consumer group")
	members := flag.Int("members", 3, "members to run in this process")
	partitions := flag.Int("partitions", 6, "partitions of the embedded broker's topic")
	messages := flag.Int("messages", 30_000, "backlog on the embedded broker")
	flag.Parse()
	if err := run(*brokers, *topic, *group, *members, *partitions, *messages); err != nil {
		log.Fatal(err)
	}
}

func run(brokers, topic, group string, members, partitions, messages int) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	var addrs []string
	if brokers == "" {
		cluster, err := kafkatest.Start()
		if err != nil {
			return err
		}
		defer cluster.Close()
		addrs, topic = cluster.Brokers(), "events"
		if err := cluster.CreateTopic(ctx, topic, partitions); err != nil {
			return err
		}
		per := messages / partitions
		for p := range partitions {
			msgs := make([]kafka.Message, per)
			for i := range msgs {
				msgs[i] = kafka.Message{Value: []byte(fmt.Sprintf("%d-%d", p, i))}
			}
			if err := cluster.Produce(ctx, topic, p, msgs...); err != nil {
				return err
			}
		}
		fmt.Printf("embedded broker: %d messages on %d partitions of %q\n", per*partitions, partitions, topic)
	} else {
		if topic == "" {
			return fmt.Errorf("-topic is required with -brokers")
		}
		addrs = strings.Split(brokers, ",")
	}

	var total atomic.Int64
	var wg sync.WaitGroup
	cancels := make([]context.CancelFunc, members)
	for i := range members {
		if i > 0 {
			time.Sleep(2 * time.Second) // members join one after the other
		}
		name := fmt.Sprintf("member-%d", i+1)
		mctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		c, err := multiconsumer.New(ctx, multiconsumer.Config{
			Brokers: addrs, Topic: topic, Group: group, JoinGroup: true,
			HeartbeatInterval: time.Second, SessionTimeout: 10 * time.Second,
			OnAssigned: func(_ context.Context, p []int) { fmt.Printf("%s: assigned %v\n", name, p) },
			OnRevoked: func(ctx context.Context, p []int) {
				how := "revoked (consumed offsets committed)"
				if multiconsumer.Lost(ctx) {
					how = "lost"
				}
				fmt.Printf("%s: %s %v\n", name, how, p)
			},
		})
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
				time.Sleep(time.Duration(len(msgs)) * 300 * time.Microsecond) // a handler
			}
		})
	}
	if members > 1 {
		time.Sleep(2 * time.Second)
		cancels[0]() // the first member leaves; the others take its partitions
	}
	if brokers == "" {
		for total.Load() < int64(messages/partitions*partitions) && ctx.Err() == nil {
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
