package mcprom_test

import (
	"bufio"
	"context"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/multiconsumer/multiconsumer/mcprom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"
)

// A consumer's metrics on /metrics: a Collector added to a registry, served
// by promhttp. Here on an embedded broker, with a topic of three messages
// that the consumer has read.
func ExampleNewCollector() {
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

	col := mcprom.NewCollector()
	if err := col.Add("billing-1", c); err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()

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

	res, err := http.Get(srv.URL + "/metrics")
	if err != nil {
		log.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		for _, name := range []string{"multiconsumer_lag{", "multiconsumer_delivered_messages_total{", "multiconsumer_delivered_offset{", "multiconsumer_workers{"} {
			if strings.HasPrefix(sc.Text(), name) {
				fmt.Println(sc.Text())
			}
		}
	}
	// Output:
	// multiconsumer_delivered_messages_total{client_id="billing-1",group="billing",partition="0",topic="events"} 3
	// multiconsumer_delivered_offset{client_id="billing-1",group="billing",partition="0",topic="events"} 3
	// multiconsumer_lag{client_id="billing-1",group="billing",partition="0",topic="events"} 0
	// multiconsumer_workers{client_id="billing-1",group="billing",topic="events"} 1
}
