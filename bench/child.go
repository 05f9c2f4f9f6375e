package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// result is what a child reports, as one JSON line after "RESULT ".
type result struct {
	Contender string  `json:"contender"`
	Mode      string  `json:"mode"`
	Size      int     `json:"size"`
	N         int64   `json:"n"`
	Bytes     int64   `json:"bytes"`
	Startup   float64 `json:"startup_s"`         // New/NewReader to the first message
	Drain     float64 `json:"drain_s"`           // first message to the last
	Total     float64 `json:"total_s"`           // New/NewReader to the last message
	MsgsPerS  float64 `json:"msgs_per_s"`        // N / Total
	MBPerS    float64 `json:"mb_per_s"`          // Bytes / Total
	Steady    float64 `json:"steady_msgs_per_s"` // N / Drain
	PeakRSS   int64   `json:"peak_rss"`          // VmHWM
	PeakHeap  uint64  `json:"peak_heap"`         // max sampled HeapAlloc
	HeapSys   uint64  `json:"heap_sys"`
	P50       float64 `json:"p50_ms,omitempty"`
	P99       float64 `json:"p99_ms,omitempty"`
	Max       float64 `json:"max_ms,omitempty"`
	Handlers  int     `json:"handlers,omitempty"`
	Rate      int     `json:"rate,omitempty"` // latency: produce rate, msg/s
	Round     int     `json:"round"`
	Broker    string  `json:"broker"`
	Err       string  `json:"err,omitempty"`
	Partial   bool    `json:"partial,omitempty"` // timed out: rates are of what arrived

	// Latency: what the whole child process allocated from the first
	// measured produce to the last receive (the producer included).
	AllocBytes uint64 `json:"alloc_bytes,omitempty"` // TotalAlloc delta
	Allocs     uint64 `json:"allocs,omitempty"`      // Mallocs delta
	NumGC      uint32 `json:"num_gc,omitempty"`      // NumGC delta

	// Group contenders with members=N: messages received a second time
	// (after a rebalance), which the sink does not count.
	Duplicates int64 `json:"duplicates,omitempty"`
	// The rebalance suite's measurements.
	Rebalance *rebalanceStats `json:"rebalance,omitempty"`
	// The cold suite (cold.go).
	Cold *coldStats `json:"cold,omitempty"`
	// The process suite's pc part (process.go).
	Proc *procStats `json:"process,omitempty"`
	// io mode: the mean measured duration of the handler's wait.
	SleepMean float64 `json:"sleep_mean_s,omitempty"`
	// CPU time (user + system) of the whole child process, start to end,
	// in seconds; with AllocBytes, Allocs and NumGC (whole process too) in
	// the io, cpu and pc modes.
	CPU float64 `json:"cpu_s,omitempty"`
	// The Go runtime's idle Ps over the whole child, in CPU seconds
	// (runtime/metrics /cpu/classes/idle): time the child could have run
	// Go code and had none to run.
	IdleCPU float64 `json:"idle_cpu_s,omitempty"`
	// The share suite (share.go): the member's share statistics, or the
	// process part's figures; the machine's 1-minute load average when
	// the run started.
	Share *shareResult `json:"share,omitempty"`
	Load  float64      `json:"load1,omitempty"`
	// A MultiConsumer's Stats().Fetches, FetchedBytes and Commits at its
	// Close.
	Fetches      int64 `json:"fetches,omitempty"`
	FetchedBytes int64 `json:"fetched_bytes,omitempty"`
	Commits      int64 `json:"commits,omitempty"`
}

// lastStats holds the Stats of the child's last MultiConsumer, taken as it
// closes (noteStats), for the result.
var lastStats atomic.Pointer[multiconsumer.Stats]

// noteStats records c's Stats into lastStats; deferred before c.Close.
func noteStats(c *multiconsumer.MultiConsumer) {
	st := c.Stats()
	lastStats.Store(&st)
}

// allocPerMsg returns the latency mode's bytes and allocations per message
// received.
func (r result) allocPerMsg() (bytes, allocs float64) {
	if r.N == 0 {
		return 0, 0
	}
	return float64(r.AllocBytes) / float64(r.N), float64(r.Allocs) / float64(r.N)
}

// sink counts what a contender receives and knows when it is done. add is
// safe for concurrent use.
type sink struct {
	target  int64
	latency bool
	start   time.Time

	n, bytes atomic.Int64
	first    atomic.Int64 // unix nanos of the first message
	last     atomic.Int64
	done     chan struct{}
	once     sync.Once

	mu   sync.Mutex
	lats []time.Duration

	// The latency mode reads memStart before the first measured produce
	// and add reads memEnd on the last message, before done closes.
	memStart, memEnd runtime.MemStats
}

func newSink(target int64, latency bool) *sink {
	s := &sink{target: target, latency: latency, done: make(chan struct{}), start: time.Now()}
	if latency {
		// Allocated up front, so that recording latencies allocates nothing
		// during the measured phase.
		s.lats = make([]time.Duration, 0, target)
	}
	return s
}

func (s *sink) add(key, value []byte) {
	if s.isDone() {
		return // a batch handed over past the target
	}
	// The clock is read for the first message, the last and, in the
	// latency mode, each measured one: not for every message of a drain,
	// where it cost about 60 ns a message (a fifth of a near-empty
	// Process's CPU), the same for every contender.
	if s.first.Load() == 0 {
		s.first.CompareAndSwap(0, time.Now().UnixNano())
	}
	if s.latency {
		// value: 8 bytes of produce time, then 1 byte: 1 for a measured message.
		if len(value) < 9 || value[8] != 1 {
			return
		}
		now := time.Now()
		sent := time.Unix(0, int64(binary.BigEndian.Uint64(value)))
		s.mu.Lock()
		s.lats = append(s.lats, now.Sub(sent))
		s.mu.Unlock()
	}
	s.bytes.Add(int64(len(key) + len(value)))
	if s.n.Add(1) == s.target {
		now := time.Now()
		if s.latency {
			runtime.ReadMemStats(&s.memEnd)
		}
		s.last.Store(now.UnixNano())
		s.once.Do(func() { close(s.done) })
	}
}

func (s *sink) isDone() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// handler is what a contender calls for each message.
type handler func(key, value []byte)

// spec is a contender: a name and parameters, written name?k=v&k=v.
type spec struct {
	name string
	p    url.Values
}

func parseSpec(s string) (spec, error) {
	name, q, _ := strings.Cut(s, "?")
	p, err := url.ParseQuery(q)
	return spec{name: name, p: p}, err
}

func (s spec) int(k string, def int) int {
	if v := s.p.Get(k); v != "" {
		n, err := strconv.Atoi(v)
		if err == nil {
			return n
		}
	}
	return def
}

func (s spec) dur(k string, def time.Duration) time.Duration {
	if v := s.p.Get(k); v != "" {
		d, err := time.ParseDuration(v)
		if err == nil {
			return d
		}
	}
	return def
}

func (s spec) str(k, def string) string {
	if v := s.p.Get(k); v != "" {
		return v
	}
	return def
}

// runner consumes topic, calling h for each message, until ctx ends.
type runner func(ctx context.Context, brokers []string, topic string, h handler) error

func runnerFor(s spec) (runner, error) {
	if s.name == "mc-group" || s.p.Has("members") {
		// Group members in goroutines of their own (group.go).
		start, ok := memberFor(s)
		if !ok {
			return nil, fmt.Errorf("contender %q cannot run as group members", s.name)
		}
		return runGroupMembers(s, start), nil
	}
	switch s.name {
	case "mc-get":
		return runMCGet(s), nil
	case "mc-iter":
		return runMCIter(s), nil
	case "mc-messages":
		return runMCMessages(s), nil
	case "kafkago-group":
		return runKafkaGoGroup(s), nil
	case "kafkago-partition":
		return runKafkaGoPartitions(s), nil
	case "franz":
		return runFranz(s), nil
	case "mc-process":
		return runMCProcess(s), nil
	case "mc-share":
		return runMCShare(s), nil
	case "franz-share":
		return runFranzShare(s), nil
	}
	return nil, fmt.Errorf("unknown contender %q", s.name)
}

func group() string { return kafkatest.UniqueName("bench") }

func mcConfig(s spec, brokers []string, topic string) multiconsumer.Config {
	cfg := multiconsumer.Config{
		Brokers:    brokers,
		Topic:      topic,
		NumWorkers: s.int("w", 1),
		QueueSize:  s.int("q", 4096),
		// commit-n: AutoCommitEveryN (default the library's, 100).
		AutoCommitEveryN: s.int("commit-n", 0),
	}
	if s.str("group", "yes") == "yes" {
		cfg.Group = group()
	}
	return cfg
}

// runMCGet: GetMessages(count) in a loop. block=1 (the default here) returns
// as soon as one message is there; block=full waits for count messages or
// the 10s default timeout.
func runMCGet(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		c, err := multiconsumer.New(ctx, mcConfig(s, brokers, topic))
		if err != nil {
			return err
		}
		defer c.Close()
		defer noteStats(c)
		count := s.int("count", 1000)
		opts := []multiconsumer.GetOption{multiconsumer.BlockFor(1), multiconsumer.Timeout(time.Second)}
		if s.str("block", "1") == "full" {
			opts = nil
		}
		for ctx.Err() == nil {
			msgs, err := c.GetMessages(ctx, count, opts...)
			if err != nil {
				return err
			}
			for i := range msgs {
				h(msgs[i].Key, msgs[i].Value)
			}
		}
		return nil
	}
}

func runMCIter(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		c, err := multiconsumer.New(ctx, mcConfig(s, brokers, topic))
		if err != nil {
			return err
		}
		defer c.Close()
		defer noteStats(c)
		for m := range c.Iter(ctx) {
			h(m.Key, m.Value)
		}
		return nil
	}
}

// runKafkaGoGroup: one kafka-go Reader in group mode. Zero parameters are
// kafka-go's defaults (MaxWait 10s, MinBytes 1, MaxBytes 1MB, QueueCapacity
// 100, CommitInterval 0 = a synchronous commit per ReadMessage).
func runKafkaGoGroup(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:        brokers,
			GroupID:        group(),
			Topic:          topic,
			MaxWait:        s.dur("maxwait", 0),
			MinBytes:       s.int("minbytes", 0),
			MaxBytes:       s.int("maxbytes", 0),
			QueueCapacity:  s.int("queue", 0),
			CommitInterval: s.dur("commit", 0),
			StartOffset:    kafka.FirstOffset,
		})
		defer r.Close()
		read := r.ReadMessage
		if s.str("read", "read") == "fetch" {
			read = r.FetchMessage
		}
		for {
			m, err := read(ctx)
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			h(m.Key, m.Value)
		}
	}
}

// runKafkaGoPartitions: one kafka-go Reader per partition (no group), each
// with its own goroutine: as parallel as the client library gets.
func runKafkaGoPartitions(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		parts, err := kafka.LookupPartitions(ctx, "tcp", brokers[0], topic)
		if err != nil {
			return err
		}
		var wg sync.WaitGroup
		errs := make([]error, len(parts))
		for i, p := range parts {
			r := kafka.NewReader(kafka.ReaderConfig{
				Brokers:       brokers,
				Topic:         topic,
				Partition:     p.ID,
				MaxWait:       s.dur("maxwait", 250*time.Millisecond),
				MinBytes:      s.int("minbytes", 0),
				MaxBytes:      s.int("maxbytes", 0),
				QueueCapacity: s.int("queue", 1000),
			})
			wg.Go(func() {
				defer r.Close()
				for {
					m, err := r.FetchMessage(ctx)
					if err != nil {
						if ctx.Err() == nil {
							errs[i] = err
						}
						return
					}
					h(m.Key, m.Value)
				}
			})
		}
		wg.Wait()
		return errors.Join(errs...)
	}
}

// runFranz: franz-go consuming as a group, PollFetches, default options
// (autocommit every 5s) but for the reset offset.
func runFranz(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		cl, err := kgo.NewClient(
			kgo.SeedBrokers(brokers...),
			kgo.ConsumerGroup(group()),
			kgo.ConsumeTopics(topic),
			kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
			kgo.FetchMaxWait(s.dur("maxwait", 5*time.Second)),
		)
		if err != nil {
			return err
		}
		defer cl.Close()
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			if err := ctx.Err(); err != nil {
				return nil
			}
			if errs := fs.Errors(); len(errs) > 0 {
				return fmt.Errorf("franz: %v", errs[0].Err)
			}
			fs.EachRecord(func(r *kgo.Record) { h(r.Key, r.Value) })
		}
		return nil
	}
}

// child runs one contender in this process and prints its result.
func child(o options) error {
	if o.mode == "pc" {
		r, err := pcChild(o)
		if err != nil {
			return err
		}
		b, _ := json.Marshal(r)
		fmt.Printf("RESULT %s\n", b)
		return nil
	}
	s, err := parseSpec(o.contender)
	if err != nil {
		return err
	}
	run, err := runnerFor(s)
	if err != nil {
		return err
	}
	brokers := strings.Split(o.brokers, ",")
	stopCPU, err := startTo(o.cpuprofile, pprof.StartCPUProfile, pprof.StopCPUProfile)
	if err != nil {
		return err
	}
	defer stopCPU()

	if o.mutexprofile != "" {
		runtime.SetMutexProfileFraction(1)
	}
	if o.blockprofile != "" {
		runtime.SetBlockProfileRate(int((10 * time.Microsecond).Nanoseconds()))
	}
	stopTrace, err := startTo(o.traceFile, trace.Start, trace.Stop)
	if err != nil {
		return err
	}
	defer stopTrace()
	var peakHeap atomic.Uint64
	stopSampling := sampleHeap(&peakHeap)

	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	var snk *sink
	var runErr error
	switch o.mode {
	case "drain":
		snk, runErr = drain(ctx, run, brokers, o.topic, int64(o.n), o.handlers, 0, nil)
	case "io":
		snk, runErr = drain(ctx, run, brokers, o.topic, int64(o.n), o.handlers, o.ioSleep, nil)
	case "cpu":
		snk, runErr = drain(ctx, run, brokers, o.topic, int64(o.n), 0, 0, hashWork)
	case "latency":
		if len(o.latRates) != 1 {
			return fmt.Errorf("latency mode takes one -rate, not %q", o.rates)
		}
		snk, runErr = latency(ctx, run, brokers, o.topic, o.latRates[0], o.latDur)
	default:
		return fmt.Errorf("unknown mode %q", o.mode)
	}
	stopSampling()
	for _, p := range []struct{ name, path string }{
		{"allocs", o.memprofile}, {"block", o.blockprofile}, {"mutex", o.mutexprofile},
	} {
		if err := writeProfile(p.name, p.path); err != nil {
			return err
		}
	}

	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r := result{
		Contender: o.contender, Mode: o.mode, Handlers: o.handlers,
		N: min(snk.n.Load(), snk.target), Bytes: snk.bytes.Load(),
		PeakRSS: vmHWM(), PeakHeap: max(peakHeap.Load(), ms.HeapAlloc), HeapSys: ms.HeapSys,
		Duplicates: duplicates.Load(),
	}
	if n := sleeps.Load(); n > 0 {
		r.SleepMean = time.Duration(slept.Load() / n).Seconds()
	}
	r.CPU = cpuSeconds()
	if st := lastStats.Load(); st != nil {
		r.Fetches, r.FetchedBytes, r.Commits = st.Fetches, st.FetchedBytes, st.Commits
	}
	idle := []metrics.Sample{{Name: "/cpu/classes/idle:cpu-seconds"}}
	metrics.Read(idle)
	if idle[0].Value.Kind() == metrics.KindFloat64 {
		r.IdleCPU = idle[0].Value.Float64()
	}
	if st := shareStats.Load(); st != nil {
		r.Share = &shareResult{Stats: st}
	}
	if o.mode == "io" || o.mode == "cpu" {
		r.AllocBytes, r.Allocs, r.NumGC = ms.TotalAlloc, ms.Mallocs, ms.NumGC
	}
	if o.mode == "latency" {
		r.Rate = o.latRates[0]
		if snk.isDone() { // memEnd was read
			r.AllocBytes = snk.memEnd.TotalAlloc - snk.memStart.TotalAlloc
			r.Allocs = snk.memEnd.Mallocs - snk.memStart.Mallocs
			r.NumGC = snk.memEnd.NumGC - snk.memStart.NumGC
		}
	}
	if errors.Is(runErr, errPartial) {
		r.Partial = true
	} else if runErr != nil {
		r.Err = runErr.Error()
	}
	first, last := snk.first.Load(), snk.last.Load()
	if first > 0 && last > 0 {
		r.Startup = time.Unix(0, first).Sub(snk.start).Seconds()
		r.Drain = time.Unix(0, last).Sub(time.Unix(0, first)).Seconds()
		r.Total = time.Unix(0, last).Sub(snk.start).Seconds()
		r.MsgsPerS = float64(r.N) / r.Total
		r.MBPerS = float64(r.Bytes) / r.Total / 1e6
		if r.Drain > 0 {
			r.Steady = float64(r.N) / r.Drain
		}
	}
	if len(snk.lats) > 0 {
		slices.Sort(snk.lats)
		q := func(f float64) float64 {
			return float64(snk.lats[min(len(snk.lats)-1, int(f*float64(len(snk.lats))))]) / 1e6
		}
		r.P50, r.P99, r.Max = q(0.50), q(0.99), float64(snk.lats[len(snk.lats)-1])/1e6
	}
	b, _ := json.Marshal(r)
	fmt.Printf("RESULT %s\n", b)
	return nil
}

var errPartial = errors.New("timed out")

// slept and sleeps are the total measured duration and the number of the
// io mode's waits.
var slept, sleeps atomic.Int64

// wait sleeps d and records how long it took.
func wait(d time.Duration) {
	t := time.Now()
	time.Sleep(d)
	slept.Add(int64(time.Since(t)))
	sleeps.Add(1)
}

// drain consumes until target messages have been handled. With handlers >
// 0, the contender's callback hands each message to a pool of that many
// goroutines, each waiting sleep per message (an I/O-bound handler); with
// handlers == 0 and sleep > 0 the callback itself waits. work, if not nil,
// is called with each value before it counts (the cpu mode's handler).
func drain(ctx context.Context, run runner, brokers []string, topic string, target int64, handlers int, sleep time.Duration, work func([]byte)) (*sink, error) {
	snk := newSink(target, false)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h := handler(snk.add)
	if work != nil {
		h = func(k, v []byte) { work(v); snk.add(k, v) }
	}
	var pool sync.WaitGroup
	if sleep > 0 {
		if handlers <= 0 {
			h = func(k, v []byte) { wait(sleep); snk.add(k, v) }
		} else {
			type kv struct{ k, v []byte }
			jobs := make(chan kv, handlers)
			for range handlers {
				pool.Go(func() {
					for m := range jobs {
						wait(sleep)
						snk.add(m.k, m.v)
					}
				})
			}
			defer func() { close(jobs); pool.Wait() }()
			h = func(k, v []byte) {
				select {
				case jobs <- kv{k, v}:
				case <-ctx.Done():
				}
			}
		}
	}
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, brokers, topic, h) }()
	select {
	case <-snk.done:
		cancel()
		<-errc
		return snk, nil
	case err := <-errc:
		if err == nil {
			err = ctx.Err()
		}
		return snk, fmt.Errorf("stopped after %d of %d messages: %w", snk.n.Load(), target, err)
	case <-ctx.Done():
		snk.last.Store(time.Now().UnixNano())
		cancel()
		<-errc
		return snk, errPartial
	}
}

// latency starts the contender on an empty topic, produces a warm-up message
// every 10ms until the contender receives one, then produces rate messages/s
// for d, round-robin over the partitions, each carrying its produce time,
// and measures how long each takes to arrive. It also reads the process's
// allocation statistics at the first measured produce (add reads them again
// at the last receive): they cover the producer as well as the contender.
func latency(ctx context.Context, run runner, brokers []string, topic string, rate int, d time.Duration) (*sink, error) {
	target := int64(float64(rate) * d.Seconds())
	snk := newSink(target, true)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, brokers, topic, snk.add) }()

	pr, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()), kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	if err != nil {
		return snk, err
	}
	defer pr.Close()
	value := func(measured byte) []byte {
		v := make([]byte, 100)
		binary.BigEndian.PutUint64(v, uint64(time.Now().UnixNano()))
		v[8] = measured
		return v
	}
	produce := func(v []byte) {
		pr.Produce(ctx, &kgo.Record{Topic: topic, Value: v}, func(_ *kgo.Record, err error) {
			if err != nil && ctx.Err() == nil {
				fmt.Fprintln(os.Stderr, "produce:", err)
			}
		})
	}
warm:
	for {
		produce(value(0))
		select {
		case <-time.After(10 * time.Millisecond):
			if snk.first.Load() != 0 {
				break warm
			}
		case err := <-errc:
			return snk, fmt.Errorf("contender stopped during warm-up: %v", err)
		case <-ctx.Done():
			return snk, ctx.Err()
		}
	}
	runtime.ReadMemStats(&snk.memStart)
	start := time.Now()
	for i := range target {
		if wait := time.Until(start.Add(time.Duration(float64(i) / float64(rate) * 1e9))); wait > 0 {
			time.Sleep(wait)
		}
		produce(value(1))
	}
	select {
	case <-snk.done:
	case <-time.After(15 * time.Second):
		return snk, fmt.Errorf("received %d of %d measured messages", snk.n.Load(), target)
	case err := <-errc:
		return snk, fmt.Errorf("contender stopped: %v", err)
	}
	return snk, nil
}

// sampleHeap records the largest HeapAlloc seen every 20ms until stopped.
func sampleHeap(peak *atomic.Uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-done:
				return
			case <-t.C:
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// startTo starts a profile or trace into a new file at path, if path is
// not empty, and returns what stops it and closes the file.
func startTo(path string, start func(io.Writer) error, stop func()) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := start(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { stop(); f.Close() }, nil
}

// writeProfile writes the runtime profile of that name to path, if path
// is not empty.
func writeProfile(name, path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := pprof.Lookup(name).WriteTo(f, 0); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// cpuSeconds returns the CPU time (user + system) this process used.
func cpuSeconds() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// vmHWM returns this process's peak resident set, in bytes.
func vmHWM() int64 { return statusField("/proc/self/status", "VmHWM:") }

// statusField reads a "kB" field of a /proc/PID/status file, in bytes.
func statusField(path, field string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), field); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return kb << 10
		}
	}
	return -1
}
