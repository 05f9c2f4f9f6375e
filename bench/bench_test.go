package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

// The hot paths on the embedded broker (in this process, so the broker's
// CPU is in the profile too). One op is one message: each benchmark
// produces b.N messages of 100 B over 8 partitions with the timer stopped,
// then times draining them.
//
// Run them from bench/ (a module of its own):
//
//	cd bench
//	go test -run XXX -bench .
//	go test -run XXX -bench 'GetMessages/w=8' -cpuprofile cpu.out

var (
	clusterOnce sync.Once
	cluster     *kafkatest.Cluster
	clusterErr  error
)

func testCluster(b *testing.B) *kafkatest.Cluster {
	clusterOnce.Do(func() { cluster, clusterErr = kafkatest.FromEnv() })
	if clusterErr != nil {
		b.Fatal(clusterErr)
	}
	return cluster
}

const benchPartitions = 8

// backlogTopic returns a fresh topic holding n messages of 100 B.
func backlogTopic(b *testing.B, n int) string {
	b.Helper()
	c := testCluster(b)
	ctx := context.Background()
	topic := kafkatest.UniqueName("bench")
	if err := c.CreateTopic(ctx, topic, benchPartitions); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.DeleteTopic(context.Background(), topic) })
	value := make([]byte, 100)
	msgs := make([]kafka.Message, 4096)
	for i := range msgs {
		msgs[i].Value = value
	}
	var wg sync.WaitGroup
	errs := make([]error, benchPartitions)
	for p := range benchPartitions {
		wg.Go(func() {
			for left := n/benchPartitions + btoi(p < n%benchPartitions); left > 0 && errs[p] == nil; {
				k := min(left, len(msgs))
				errs[p] = c.Produce(ctx, topic, p, msgs[:k]...)
				left -= k
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
	return topic
}

func btoi(v bool) int {
	if v {
		return 1
	}
	return 0
}

func newMC(b *testing.B, topic string, workers int) *multiconsumer.MultiConsumer {
	c, err := multiconsumer.New(context.Background(), multiconsumer.Config{
		Brokers: testCluster(b).Brokers(), Topic: topic, Group: kafkatest.UniqueName("bench"),
		NumWorkers: workers, QueueSize: 4096,
	})
	if err != nil {
		b.Fatal(err)
	}
	return c
}

func BenchmarkGetMessages(b *testing.B) {
	benchDrain(b, func(b *testing.B, ctx context.Context, c *multiconsumer.MultiConsumer) int {
		n := 0
		for n < b.N {
			msgs, err := c.GetMessages(ctx, 1000, multiconsumer.BlockFor(1))
			if err != nil {
				b.Fatal(err)
			}
			n += len(msgs)
		}
		return n
	})
}

func BenchmarkIter(b *testing.B) {
	benchDrain(b, func(b *testing.B, ctx context.Context, c *multiconsumer.MultiConsumer) int {
		n := 0
		for range c.Iter(ctx) {
			if n++; n == b.N {
				break
			}
		}
		return n
	})
}

func BenchmarkMessages(b *testing.B) {
	benchDrain(b, func(b *testing.B, ctx context.Context, c *multiconsumer.MultiConsumer) int {
		n := 0
		for _, err := range c.Messages(ctx) {
			if err != nil {
				b.Fatal(err)
			}
			if n++; n == b.N {
				break
			}
		}
		return n
	})
}

// benchDrain times drain, which takes b.N messages from a fresh backlog, at
// 1 and 8 workers.
func benchDrain(b *testing.B, drain func(*testing.B, context.Context, *multiconsumer.MultiConsumer) int) {
	for _, w := range []int{1, 8} {
		b.Run(fmt.Sprintf("w=%d", w), func(b *testing.B) {
			topic := backlogTopic(b, b.N)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
			defer cancel()
			b.ReportAllocs()
			b.ResetTimer()
			c := newMC(b, topic, w)
			defer c.Close()
			n := drain(b, ctx, c)
			cancel()
			b.StopTimer()
			if n < b.N {
				b.Fatalf("got %d of %d messages", n, b.N)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}

// BenchmarkKafkaGoPerPartition is the reference: one kafka-go Reader per
// partition, each in its own goroutine.
func BenchmarkKafkaGoPerPartition(b *testing.B) {
	topic := backlogTopic(b, b.N)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	snk := newSink(int64(b.N), false)
	b.ReportAllocs()
	b.ResetTimer()
	ctx2, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = runKafkaGoPartitions(spec{})(ctx2, testCluster(b).Brokers(), topic, snk.add)
	})
	select {
	case <-snk.done:
	case <-ctx.Done():
		b.Fatalf("got %d of %d messages", snk.n.Load(), b.N)
	}
	stop()
	wg.Wait()
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
