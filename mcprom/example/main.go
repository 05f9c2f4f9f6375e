// Command example runs a consumer and serves its Prometheus metrics on
// /metrics: a producer writes demo messages at -rate a second, and Process
// handles them with a handler that takes -latency, one key at a time. It
// runs on an embedded broker until Ctrl-C (or -duration):
//
//	go run ./example -metrics localhost:9100
//	curl -s localhost:9100/metrics | grep ^multiconsumer_
//
// or on a Kafka cluster (-brokers, or KAFKA_BROKERS when set), on a topic
// of its own that it deletes at the end:
//
//	go run ./example -brokers 127.0.0.1:9092
//
// With -topic, it handles that topic, which it creates (and then fills)
// only if it does not exist; it produces to a topic that exists only with
// -produce, and never deletes it. TLS and SASL: -tls, -tls-ca, -sasl... (-h).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/internal/exampleflags"
	"github.com/multiconsumer/multiconsumer/mcprom"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/segmentio/kafka-go"
)

func main() {
	kf := exampleflags.Register("metrics", "")
	addr := flag.String("metrics", "localhost:9100", "`address` to serve /metrics on")
	partitions := flag.Int("partitions", 4, "partitions of the topic, when it is created")
	rate := flag.Int("rate", 500, "demo messages produced a second (when the example produces)")
	keys := flag.Int("keys", 100, "distinct keys of the messages produced")
	latency := flag.Duration("latency", 5*time.Millisecond, "how long the handler takes per message")
	duration := flag.Duration("duration", 0, "stop after this long (0: at Ctrl-C)")
	kf.Parse()
	kf.AtLeast(1, "partitions", *partitions)
	kf.AtLeast(1, "rate", *rate)
	kf.AtLeast(1, "keys", *keys)
	if err := run(kf, *addr, *partitions, *rate, *keys, *latency, *duration); err != nil {
		log.Fatal(err)
	}
}

func run(kf *exampleflags.Flags, addr string, partitions, rate, keys int, latency, duration time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	cluster, err := kf.Setup(ctx, partitions)
	if err != nil {
		return err
	}
	defer cluster.Close()

	cfg := cluster.Config()
	c, err := multiconsumer.New(ctx, cfg)
	if err != nil {
		return err
	}
	defer c.Close()

	col := mcprom.NewCollector()
	if err := col.Add(cfg.Dialer.ClientID, c); err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col, collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx) // ends the producer, whatever ends Process
	defer cancel()
	wg.Go(func() {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			log.Print(err)
		}
	})
	defer func() {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	fmt.Printf("consuming %s on the %s with %v; metrics on http://%s/metrics\n", cluster.Topic, cluster, c, ln.Addr())

	if cluster.ProduceDemo {
		fmt.Printf("producing %d messages a second, %d keys\n", rate, keys)
		wg.Go(func() { produce(ctx, cluster, rate, keys) })
	}

	err = c.Process(ctx, multiconsumer.ProcessConfig{Concurrency: 64}, func(ctx context.Context, m kafka.Message) error {
		select { // a call to another service
		case <-time.After(latency):
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		err = nil
	}
	s := c.Stats()
	fmt.Printf("handled %d messages\n", s.Process.Handled)
	return err
}

// produce writes rate demo messages a second, keyed customer-0 to
// customer-<keys-1>, to the topic's partitions in turn, until ctx ends.
func produce(ctx context.Context, cluster *exampleflags.Cluster, rate, keys int) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		msgs := make([]kafka.Message, max(1, rate/10))
		for i := range msgs {
			k := fmt.Appendf(nil, "customer-%d", rand.IntN(keys))
			msgs[i] = kafka.Message{Key: k, Value: k}
		}
		if err := cluster.Produce(ctx, n%cluster.Partitions, msgs...); err != nil && ctx.Err() == nil {
			log.Print(err)
		}
	}
}
