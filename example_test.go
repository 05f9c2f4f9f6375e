package multiconsumer_test

import (
	"context"
	"fmt"
	"log"
	"slices"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

// exampleTopic starts an embedded broker with a topic of one partition
// holding the values given.
func exampleTopic(values ...string) (*kafkatest.Cluster, string) {
	cluster, err := kafkatest.Start()
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	if err := cluster.CreateTopic(ctx, "events", 1); err != nil {
		log.Fatal(err)
	}
	msgs := make([]kafka.Message, len(values))
	for i, v := range values {
		msgs[i] = kafka.Message{Value: []byte(v)}
	}
	if err := cluster.Produce(ctx, "events", 0, msgs...); err != nil {
		log.Fatal(err)
	}
	return cluster, "events"
}

// Take messages in batches; each call commits what the previous returned.
func Example() {
	cluster, topic := exampleTopic("a", "b", "c", "d", "e")
	defer cluster.Close()
	ctx := context.Background()

	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers:    cluster.Brokers(),
		Topic:      topic,
		Group:      "billing",
		NumWorkers: 4,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // commits what the loop came back from: everything here

	for {
		msgs, err := c.GetMessages(ctx, 2, multiconsumer.Timeout(time.Second))
		if err != nil {
			log.Fatal(err)
		}
		if len(msgs) == 0 {
			break // nothing for a second
		}
		for _, m := range msgs {
			fmt.Printf("%d: %s\n", m.Offset, m.Value)
		}
	}
	fmt.Println(c)
	// Output:
	// 0: a
	// 1: b
	// 2: c
	// 3: d
	// 4: e
	// <MultiConsumer group=billing, topic=events, consumers=1>
}

// Range over Iter until ctx is done; receiving a message consumes the one
// before it.
func ExampleMultiConsumer_Iter() {
	cluster, topic := exampleTopic("a", "b", "c")
	defer cluster.Close()

	c, err := multiconsumer.New(context.Background(), multiconsumer.Config{Brokers: cluster.Brokers(), Topic: topic, Group: "audit"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for m := range c.Iter(ctx) {
		fmt.Printf("%d: %s\n", m.Offset, m.Value)
		if m.Offset == 2 {
			cancel() // in a service: on shutdown
		}
	}
	// The loop handled the last message it received, and no receive came
	// after it: commit it too (Close alone would not).
	if err := c.Commit(context.Background()); err != nil {
		log.Fatal(err)
	}
	fmt.Println("committed:", c.Stats().Partitions[0].Committed)
	// Output:
	// 0: a
	// 1: b
	// 2: c
	// committed: 3
}

// Range over Messages; asking for the next message consumes the one before
// it. Cancelling ctx ends the loop cleanly: the loop comes back for the
// last message, then yields ctx's error once.
func ExampleMultiConsumer_Messages() {
	cluster, topic := exampleTopic("a", "b", "c")
	defer cluster.Close()

	c, err := multiconsumer.New(context.Background(), multiconsumer.Config{Brokers: cluster.Brokers(), Topic: topic, Group: "audit"})
	if err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for m, err := range c.Messages(ctx) {
		if err != nil {
			fmt.Println("stopped:", err)
			break
		}
		fmt.Printf("%d: %s\n", m.Offset, m.Value)
		if m.Offset == 2 {
			cancel() // in a service: on shutdown
		}
	}
	// Every message was consumed: Close commits them all. (After a break
	// in the body, the last message would not be: it would come again.)
	if err := c.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("committed:", c.Stats().Partitions[0].Committed)
	// Output:
	// 0: a
	// 1: b
	// 2: c
	// stopped: context canceled
	// committed: 3
}

// Commit by hand, after the work is safely done.
func ExampleMultiConsumer_Commit() {
	cluster, topic := exampleTopic("a", "b", "c")
	defer cluster.Close()
	ctx := context.Background()

	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers: cluster.Brokers(), Topic: topic, Group: "orders", ManualCommit: true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // no commit with ManualCommit

	msgs, err := c.GetMessages(ctx, 3)
	if err != nil {
		log.Fatal(err)
	}
	// ... store msgs somewhere durable, then:
	if err := c.Commit(ctx); err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(msgs), "messages, committed:", c.Stats().Partitions[0].Committed)
	// Output:
	// 3 messages, committed: 3
}

// Replay the last two messages of every partition.
func ExampleMultiConsumer_Seek() {
	cluster, topic := exampleTopic("a", "b", "c", "d")
	defer cluster.Close()
	ctx := context.Background()

	c, err := multiconsumer.New(ctx, multiconsumer.Config{Brokers: cluster.Brokers(), Topic: topic})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	if err := c.Seek(ctx, -2, multiconsumer.SeekEnd); err != nil {
		log.Fatal(err)
	}
	msgs, err := c.GetMessages(ctx, 2)
	if err != nil {
		log.Fatal(err)
	}
	for _, m := range msgs {
		fmt.Printf("%d: %s\n", m.Offset, m.Value)
	}
	// Output:
	// 2: c
	// 3: d
}

// Join the group: the group's coordinator assigns the partitions; a second
// member would get some of them, and OnRevoked would name those.
func ExampleConfig_joinGroup() {
	cluster, topic := exampleTopic("a", "b", "c")
	defer cluster.Close()
	ctx := context.Background()

	assigned := make(chan []int, 1)
	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers: cluster.Brokers(), Topic: topic, Group: "payments", JoinGroup: true,
		OnAssigned: func(_ context.Context, partitions []int) { assigned <- partitions },
		OnRevoked: func(ctx context.Context, partitions []int) {
			fmt.Println("revoked", partitions, "lost:", multiconsumer.Lost(ctx))
		},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close() // commits what was consumed, then leaves the group

	fmt.Println("assigned", <-assigned)
	msgs, err := c.GetMessages(ctx, 3)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(msgs), "messages; owning", c.Assignment())
	// Output:
	// assigned [0]
	// 3 messages; owning [0]
	// revoked [0] lost: false
}

// Handle messages in parallel with Process: here a slow call per message,
// up to 8 at once. These messages have no key, so the default ByKey would
// take them one at a time (in partition order); Unordered takes any. Each
// message counts as consumed when its handler returns nil; the committed
// offset is the lowest one not complete yet.
func ExampleMultiConsumer_Process() {
	cluster, topic := exampleTopic("a", "b", "c", "d", "e", "f")
	defer cluster.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	c, err := multiconsumer.New(ctx, multiconsumer.Config{Brokers: cluster.Brokers(), Topic: topic, Group: "shipping"})
	if err != nil {
		log.Fatal(err)
	}
	var mu sync.Mutex
	var done []string
	err = c.Process(ctx, multiconsumer.ProcessConfig{Ordering: multiconsumer.Unordered, Concurrency: 8, MaxAttempts: 3},
		func(ctx context.Context, m kafka.Message) error {
			time.Sleep(10 * time.Millisecond) // a call to another service
			mu.Lock()
			defer mu.Unlock()
			if done = append(done, string(m.Value)); len(done) == 6 {
				cancel() // a demo: stop when everything is handled
			}
			return nil
		})
	fmt.Println("Process:", err)
	if err := c.Close(); err != nil {
		log.Fatal(err)
	}
	slices.Sort(done)
	fmt.Println("handled", done)
	fmt.Println("committed", c.Stats().Partitions[0].Committed)
	// Output:
	// Process: context canceled
	// handled [a b c d e f]
	// committed 6
}
