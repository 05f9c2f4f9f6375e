package mcotel_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/multiconsumer/multiconsumer/mcotel"
	"github.com/segmentio/kafka-go"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// A consumer's metrics on an OpenTelemetry MeterProvider. Here the SDK's
// manual reader stands for an exporter, on an embedded broker, with a
// topic of three messages that the consumer has read.
func ExampleNew() {
	ctx := context.Background()
	cluster, err := kafkatest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	if err := cluster.CreateTopic(ctx, "events", 1); err != nil {
		log.Fatal(err)
	}
	msgs := []kafka.Message{{Value: []byte("one")}, {Value: []byte("two")}, {Value: []byte("three")}}
	if err := cluster.Produce(ctx, "events", 0, msgs...); err != nil {
		log.Fatal(err)
	}

	c, err := multiconsumer.New(ctx, multiconsumer.Config{Brokers: cluster.Brokers(), Topic: "events", Group: "billing"})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	reader := sdkmetric.NewManualReader()
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer provider.Shutdown(ctx)
	m, err := mcotel.New(provider)
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	if err := m.Add("billing-1", c); err != nil {
		log.Fatal(err)
	}

	got, err := c.GetMessages(ctx, 3, multiconsumer.Timeout(10*time.Second))
	if err != nil || len(got) != 3 {
		log.Fatal(len(got), err)
	}
	// The high watermark comes with the fetch that brought the messages.
	for deadline := time.Now().Add(10 * time.Second); c.Stats().Partitions[0].HighWatermark != 3; {
		if time.Now().After(deadline) {
			log.Fatal("no high watermark")
		}
		time.Sleep(time.Millisecond)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	byName := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, mt := range sm.Metrics {
			byName[mt.Name] = mt
		}
	}
	for _, name := range []string{"multiconsumer.lag", "multiconsumer.delivered.messages", "multiconsumer.delivered.bytes"} {
		mt := byName[name]
		for _, p := range mt.Data.(metricdata.Sum[int64]).DataPoints {
			partition, _ := p.Attributes.Value("messaging.destination.partition.id")
			fmt.Printf("%s{partition=%s} %d %s\n", name, partition.Emit(), p.Value, mt.Unit)
		}
	}
	// Output:
	// multiconsumer.lag{partition=0} 0 {message}
	// multiconsumer.delivered.messages{partition=0} 3 {message}
	// multiconsumer.delivered.bytes{partition=0} 11 By
}
