package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"hash/maphash"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

// This file is the process suite (-suites process): Process, the library's
// parallel handler API, in three parts (-process-parts):
//
//   - pc: parallel-consumer's published table (Confluent parallel-consumer
//     README, "Illustrative Performance Example"): 10,000 messages on one
//     partition, each handler sleeping a random 0-5 ms, 16 handlers at
//     once, ByPartition, ByKey with 1 to 10,000 keys, Unordered. The sleep
//     of each message is written in its value (seeded, the same for every
//     row), so every row waits the same total; the child measures from the
//     first handler call (and from the Process call) to the last
//     completion, and the ideal: max(total sleep / 16, the busiest lane's
//     sleep).
//   - io: a 1 ms handler (time.Sleep) on 4 partitions: Process at
//     Concurrency 1, 4, 16, 64 (Unordered, and ByKey over 10,000 keys
//     per partition) against the hand-made pool (GetMessages feeding N
//     goroutines, the io suite's -handlers) and one kafka-go Reader per
//     partition with the handler inline.
//   - cpu: a near-empty handler (maphash of the 100 B value) on 1M
//     messages over 8 partitions: Process against GetMessages draining the
//     same backlog with the same handler inline.

// procStats is what a Process child of the pc part measures.
type procStats struct {
	Order       string `json:"order"`
	Concurrency int    `json:"concurrency"`
	Keys        int    `json:"keys,omitempty"` // distinct keys in the topic
	// FromStart is the Process call to the last completion, FromFirst the
	// first handler call to the last completion, in seconds.
	FromStart float64 `json:"from_start_s"`
	FromFirst float64 `json:"from_first_s"`
	// The sleeps written in the values (nominal) and the handlers'
	// measured durations (actual, time.Sleep's overshoot included):
	// summed, the busiest lane's sum (a key under ByKey, the partition
	// under ByPartition, one message under Unordered), and the ideal
	// time max(sum / Concurrency, busiest).
	SleepSum    float64 `json:"sleep_sum_s"`
	Busiest     float64 `json:"busiest_s"`
	Ideal       float64 `json:"ideal_s"`
	ActualSum   float64 `json:"actual_sum_s"`
	BusiestAct  float64 `json:"busiest_actual_s"`
	IdealActual float64 `json:"ideal_actual_s"`
	// Violations counts handlers started while a handler of the same lane
	// ran, or before a lower offset of their lane: 0 unless ordering is
	// broken (not checked under Unordered).
	Violations  int   `json:"violations"`
	MaxInFlight int   `json:"max_in_flight"`
	Attempts    int64 `json:"attempts"` // ProcessStats.HandlerDurations.Count
}

// pcRows are the rows of the pc part, in the published table's order: an
// ordering and the topic (by its number of keys) it reads. ByPartition and
// Unordered read the 20-key topic (keys do not matter to them), as
// parallel-consumer's test did.
// kinds (-pc-rows) are "process" (Process) and "inmem" (runLanes, the
// baseline).
func pcRows(keys []int, kinds []string) []string {
	var rows []string
	for _, kind := range kinds {
		name := map[string]string{"process": "mc-process", "baseline": "inmem"}[kind]
		rows = append(rows, name+"?order=partition&keys=20")
		for _, k := range keys {
			rows = append(rows, fmt.Sprintf("%s?order=key&keys=%d", name, k))
		}
		rows = append(rows, name+"?order=unordered&keys=20")
	}
	return rows
}

// pcSleeps returns the sleep of each of n messages, from a PCG seeded with
// seed. dist "ms" is parallel-consumer's test, (long) (Math.random() * 5):
// a whole number of ms from 0 to 4 (mean 2 ms); "uniform" is 0-5 ms in
// microseconds (mean 2.5 ms).
func pcSleeps(n int, seed uint64, dist string) ([]time.Duration, error) {
	r := rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15))
	out := make([]time.Duration, n)
	for i := range out {
		switch dist {
		case "ms":
			out[i] = time.Duration(r.IntN(5)) * time.Millisecond
		case "uniform":
			out[i] = time.Duration(r.IntN(5000)) * time.Microsecond
		default:
			return nil, fmt.Errorf("-pc-dist %q: want ms or uniform", dist)
		}
	}
	return out, nil
}

func orderingOf(s spec) (multiconsumer.Ordering, error) {
	switch o := s.str("order", "key"); o {
	case "key":
		return multiconsumer.ByKey, nil
	case "partition":
		return multiconsumer.ByPartition, nil
	case "unordered":
		return multiconsumer.Unordered, nil
	default:
		return 0, fmt.Errorf("order=%q: want key, partition or unordered", o)
	}
}

// runMCProcess: Process with Ordering order= (key, partition, unordered)
// and Concurrency c= (default 16), calling h from the handler; w= workers,
// as mc-get.
func runMCProcess(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		order, err := orderingOf(s)
		if err != nil {
			return err
		}
		c, err := multiconsumer.New(ctx, mcConfig(s, brokers, topic))
		if err != nil {
			return err
		}
		defer c.Close()
		defer noteStats(c)
		stopWatch := watchStall(ctx, c)
		defer stopWatch()
		pc := multiconsumer.ProcessConfig{Ordering: order, Concurrency: s.int("c", 16)}
		err = c.Process(ctx, pc, func(_ context.Context, m kafka.Message) error {
			h(m.Key, m.Value)
			return nil
		})
		if ctx.Err() != nil {
			return nil // the sink has its messages
		}
		return err
	}
}

// watchStall reports, on stderr, a Process that handled nothing for 10 s
// while ctx lasts: the consumer's Stats and every goroutine's stack, once.
// A round that times out then says where it stood.
func watchStall(ctx context.Context, c *multiconsumer.MultiConsumer) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		last, since := int64(-1), time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			st := c.Stats()
			if st.Process.Handled != last {
				last, since = st.Process.Handled, time.Now()
				continue
			}
			if time.Since(since) < 10*time.Second {
				continue
			}
			js, _ := json.MarshalIndent(st, "", " ")
			fmt.Fprintf(os.Stderr, "STALL: nothing handled for 10s\n%s\n", js)
			_ = pprof.Lookup("goroutine").WriteTo(os.Stderr, 1)
			return
		}
	}()
	return func() { cancel(); <-done }
}

// hashSeed is the maphash seed of the cpu part's handler.
var hashSeed = maphash.MakeSeed()

// zeroHashes keeps the hash from being optimised away.
var zeroHashes atomic.Int64

// hashWork is the cpu part's handler: a small hash of the value.
func hashWork(value []byte) {
	if maphash.Bytes(hashSeed, value) == 0 {
		zeroHashes.Add(1)
	}
}

// pcChild runs one row of the pc part: Process on a topic of one partition
// whose values hold each message's sleep, until o.n messages completed.
func pcChild(o options) (result, error) {
	s, err := parseSpec(o.contender)
	if err != nil {
		return result{}, err
	}
	order, err := orderingOf(s)
	if err != nil {
		return result{}, err
	}
	conc := s.int("c", 16)
	brokers := strings.Split(o.brokers, ",")
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()

	type rec struct {
		seen          bool
		nominal, took time.Duration
		lane          string
	}
	n := o.n
	var (
		mu          sync.Mutex
		recs        = make([]rec, n)
		busy        = map[string]bool{}
		lastStarted = map[string]int64{}
		violations  int
		inFlight    int
		maxInFlight int
		completed   int
		first, last time.Time
		done        = make(chan struct{})
	)
	laneOf := func(m kafka.Message) string {
		switch order {
		case multiconsumer.ByKey:
			if m.Key != nil {
				return "k" + string(m.Key)
			}
			return "p" + strconv.Itoa(m.Partition)
		case multiconsumer.ByPartition:
			return "p" + strconv.Itoa(m.Partition)
		}
		return "" // Unordered: no lane
	}
	h := func(_ context.Context, m kafka.Message) error {
		start := time.Now()
		lane := laneOf(m)
		mu.Lock()
		if first.IsZero() {
			first = start
		}
		if lane != "" {
			if busy[lane] {
				violations++
			}
			if prev, ok := lastStarted[lane]; ok && m.Offset <= prev {
				violations++
			}
			busy[lane], lastStarted[lane] = true, m.Offset
		}
		inFlight++
		maxInFlight = max(maxInFlight, inFlight)
		mu.Unlock()

		var d time.Duration
		if len(m.Value) >= 8 {
			d = time.Duration(binary.BigEndian.Uint64(m.Value))
		}
		time.Sleep(d)
		end := time.Now()

		mu.Lock()
		defer mu.Unlock()
		inFlight--
		if lane != "" {
			busy[lane] = false
		}
		if m.Offset < 0 || m.Offset >= int64(n) || recs[m.Offset].seen {
			return nil // past the rows' messages, or handled twice: not counted
		}
		if order == multiconsumer.Unordered {
			lane = "o" + strconv.FormatInt(m.Offset, 10)
		}
		recs[m.Offset] = rec{seen: true, nominal: d, took: end.Sub(start), lane: lane}
		if completed++; completed == n {
			last = end
			close(done)
		}
		return nil
	}

	cfg := mcConfig(s, brokers, o.topic)
	c, err := multiconsumer.New(ctx, cfg)
	if err != nil {
		return result{}, err
	}
	pctx, stop := context.WithCancel(ctx)
	defer stop()
	errc := make(chan error, 1)
	var started time.Time
	if s.name == "inmem" {
		// The baseline: every message fetched first (not timed), then the
		// same sleeps run by runLanes, without Kafka or Process.
		var msgs []kafka.Message
		for len(msgs) < n {
			batch, err := c.GetMessages(ctx, n-len(msgs), multiconsumer.BlockFor(1), multiconsumer.Timeout(time.Second))
			if err != nil {
				return result{}, err
			}
			msgs = append(msgs, batch...)
		}
		started = time.Now()
		go func() { errc <- runLanes(pctx, msgs, laneOf, conc, h) }()
	} else {
		started = time.Now()
		go func() { errc <- c.Process(pctx, multiconsumer.ProcessConfig{Ordering: order, Concurrency: conc}, h) }()
	}
	var runErr error
	select {
	case <-done:
	case runErr = <-errc:
		errc <- runErr
		if runErr == nil {
			runErr = errors.New("Process returned nil")
		}
	case <-ctx.Done():
		runErr = errPartial
	}
	stop()
	perr := <-errc
	stats := c.Stats().Process
	_ = c.Close()

	mu.Lock()
	defer mu.Unlock()
	ps := &procStats{Order: order.String(), Concurrency: conc, Keys: s.int("keys", 0),
		Violations: violations, MaxInFlight: maxInFlight, Attempts: stats.HandlerDurations.Count}
	nominal, actual := map[string]time.Duration{}, map[string]time.Duration{}
	var sumN, sumA time.Duration
	for _, r := range recs {
		if !r.seen {
			continue
		}
		nominal[r.lane] += r.nominal
		actual[r.lane] += r.took
		sumN += r.nominal
		sumA += r.took
	}
	for _, v := range nominal {
		ps.Busiest = max(ps.Busiest, v.Seconds())
	}
	for _, v := range actual {
		ps.BusiestAct = max(ps.BusiestAct, v.Seconds())
	}
	ps.SleepSum, ps.ActualSum = sumN.Seconds(), sumA.Seconds()
	ps.Ideal = max(ps.SleepSum/float64(conc), ps.Busiest)
	ps.IdealActual = max(ps.ActualSum/float64(conc), ps.BusiestAct)
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	r := result{Contender: o.contender, Mode: o.mode, N: int64(completed), PeakRSS: vmHWM(), Proc: ps,
		CPU: cpuSeconds(), AllocBytes: ms.TotalAlloc, Allocs: ms.Mallocs, NumGC: ms.NumGC}
	if !last.IsZero() {
		ps.FromStart = last.Sub(started).Seconds()
		ps.FromFirst = last.Sub(first).Seconds()
		r.Startup = first.Sub(started).Seconds()
		r.Drain, r.Total = ps.FromFirst, ps.FromStart
		r.MsgsPerS = float64(completed) / ps.FromStart
		if ps.FromFirst > 0 {
			r.Steady = float64(completed) / ps.FromFirst
		}
	}
	switch {
	case errors.Is(runErr, errPartial):
		r.Partial = true
	case runErr != nil:
		r.Err = fmt.Sprintf("%v (completed %d of %d)", runErr, completed, n)
	case perr != nil && !errors.Is(perr, context.Canceled):
		r.Err = fmt.Sprintf("Process: %v", perr)
	}
	return r, nil
}

// runLanes is the pc part's baseline scheduler, in memory: the messages of
// a lane (laneOf; "" = each message its own lane) one at a time in order,
// each lane in a goroutine of its own, started in the order of the lanes'
// first messages, at most conc handlers at once (a semaphore, whose
// waiters Go serves first come, first served). It returns when every
// message is handled, or ctx ends.
func runLanes(ctx context.Context, msgs []kafka.Message, laneOf func(kafka.Message) string, conc int, h multiconsumer.Handler) error {
	var order []string
	lanes := map[string][]kafka.Message{}
	for i, m := range msgs {
		l := laneOf(m)
		if l == "" {
			l = "o" + strconv.Itoa(i)
		}
		if _, ok := lanes[l]; !ok {
			order = append(order, l)
		}
		lanes[l] = append(lanes[l], m)
	}
	sem := make(chan struct{}, conc)
	var wg sync.WaitGroup
	for _, l := range order {
		wg.Go(func() {
			for _, m := range lanes[l] {
				select {
				case sem <- struct{}{}:
				case <-ctx.Done():
					return
				}
				_ = h(ctx, m)
				<-sem
			}
		})
	}
	wg.Wait()
	<-ctx.Done() // as Process: return when stopped
	return ctx.Err()
}

// publishedPC is parallel-consumer's table as published in its README
// ("Illustrative Performance Example", numberOfThreads 16, maxConcurrency
// 100), seconds, by row name (see pcRowName).
var publishedPC = map[string]float64{
	"ByPartition": 22.221,
	"ByKey 1":     26.743, "ByKey 2": 13.576, "ByKey 5": 5.916, "ByKey 10": 3.310,
	"ByKey 20": 2.242, "ByKey 50": 2.204, "ByKey 100": 2.178, "ByKey 1000": 2.056,
	"ByKey 10000": 2.128,
	"Unordered":   2.829,
}

// pcRowName names a pc row as the tables do.
func pcRowName(p *procStats) string {
	if p.Order == "ByKey" {
		return fmt.Sprintf("ByKey %d", p.Keys)
	}
	return p.Order
}

// processSuite runs the parts of -process-parts.
func (b *bench) processSuite() error {
	for _, part := range strings.Split(b.o.processParts, ",") {
		var err error
		switch strings.TrimSpace(part) {
		case "pc":
			err = b.processPC()
		case "io":
			err = b.processIO()
		case "cpu":
			err = b.processCPU()
		default:
			err = fmt.Errorf("unknown -process-parts part %q: want pc, io, cpu", part)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// topicOf creates a topic of partitions partitions and produces perPart
// messages to each, message i of partition p being msg(p, i).
func (b *bench) topicOf(prefix string, partitions, perPart int, msg func(p, i int) kafka.Message) (string, error) {
	ctx := context.Background()
	topic := kafkatest.UniqueName(prefix)
	if err := b.cluster.CreateTopic(ctx, topic, partitions); err != nil {
		return "", err
	}
	t := time.Now()
	var wg sync.WaitGroup
	errs := make([]error, partitions)
	for p := range partitions {
		wg.Go(func() {
			const chunk = 4096
			msgs := make([]kafka.Message, 0, chunk)
			for i := 0; i < perPart && errs[p] == nil; i++ {
				msgs = append(msgs, msg(p, i))
				if len(msgs) == chunk || i == perPart-1 {
					errs[p] = b.cluster.Produce(ctx, topic, p, msgs...)
					msgs = msgs[:0]
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return "", err
	}
	logf("produced %d x %d partitions to %s in %s", perPart, partitions, topic, time.Since(t).Round(time.Millisecond))
	return topic, nil
}

// keys returns n keys "k0".."k(n-1)".
func keys(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = []byte("k" + strconv.Itoa(i))
	}
	return out
}

// processPC: the pc part. One topic per number of keys, key of message i
// = key i mod K (so exactly K distinct keys, n/K messages each), value =
// its sleep (8 bytes, big-endian ns).
func (b *bench) processPC() error {
	n := b.o.pcN
	sleeps, err := pcSleeps(n, b.o.pcSeed, b.o.pcDist)
	if err != nil {
		return err
	}
	var total time.Duration
	for _, d := range sleeps {
		total += d
	}
	logf("pc: %d messages, sleeps %s (seed %d): total %s, /16 = %s", n, b.o.pcDist, b.o.pcSeed, total, total/16)
	values := make([][]byte, n)
	for i, d := range sleeps {
		values[i] = binary.BigEndian.AppendUint64(nil, uint64(d))
	}
	keyCounts := ints(b.o.pcKeys)
	if !contains(keyCounts, 20) {
		keyCounts = append(keyCounts, 20) // ByPartition and Unordered read it
	}
	topics := map[int]string{}
	for _, k := range keyCounts {
		ks := keys(k)
		topic, err := b.topicOf(fmt.Sprintf("bench-pc-%dkeys", k), 1, n, func(_, i int) kafka.Message {
			return kafka.Message{Key: ks[i%k], Value: values[i]}
		})
		if err != nil {
			return err
		}
		topics[k] = topic
		defer b.deleteTopic(topic)
	}
	kinds := strings.Split(b.o.pcRows, ",")
	for _, k := range kinds {
		if k != "process" && k != "baseline" {
			return fmt.Errorf("-pc-rows %q: want process, baseline or both", b.o.pcRows)
		}
	}
	rows := pcRows(ints(b.o.pcKeys), kinds)
	for round := range b.o.rounds {
		order := rows
		if round%2 == 1 {
			order = reversed(rows)
		}
		for _, c := range order {
			s, _ := parseSpec(c)
			b.runChild("process-pc", c, "pc", topics[s.int("keys", 20)], n, 8, 0, round, "-timeout", "3m")
		}
	}
	return nil
}

func contains(s []int, v int) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// ioConcurrency is the io part's concurrency list.
func (b *bench) ioConcurrency() []int { return ints(b.o.processConc) }

// ioN is the io part's backlog for concurrency c: about 2.5 s at the ideal
// rate c / -io-sleep.
func (b *bench) ioN(c int) int {
	return max(2500, int(2.5*float64(c)/b.o.ioSleep.Seconds()))
}

// processIO: the io part, on a topic of 4 partitions whose message i has
// key i mod 10,000 and a 100 B value.
func (b *bench) processIO() error {
	const partitions, size = 4, 100
	concs := b.ioConcurrency()
	perPart := b.ioN(slicesMax(concs))/partitions + 1
	ks := keys(10_000)
	value := make([]byte, size)
	topic, err := b.topicOf("bench-pio", partitions, perPart, func(_, i int) kafka.Message {
		return kafka.Message{Key: ks[i%len(ks)], Value: value}
	})
	if err != nil {
		return err
	}
	defer b.deleteTopic(topic)
	type run struct {
		contender string
		handlers  int
		n         int
	}
	var runs []run
	for _, c := range concs {
		pool := c
		if c == 1 {
			pool = 0 // the caller itself
		}
		runs = append(runs,
			run{fmt.Sprintf("mc-process?order=unordered&c=%d", c), 0, b.ioN(c)},
			run{fmt.Sprintf("mc-process?order=key&c=%d", c), 0, b.ioN(c)},
			run{"mc-get?w=1", pool, b.ioN(c)})
	}
	runs = append(runs, run{"kafkago-partition", 0, b.ioN(partitions)})
	for round := range b.o.rounds {
		order := runs
		if round%2 == 1 {
			order = make([]run, len(runs))
			for i, r := range runs {
				order[len(runs)-1-i] = r
			}
		}
		for _, r := range order {
			b.runChild("process-io", r.contender, "io", topic, r.n, size, 0, round, "-handlers", strconv.Itoa(r.handlers))
		}
	}
	if b.o.processProfile { // the runs at the highest concurrency, once more
		dir := filepath.Join(b.o.out, "pprof-"+b.o.label)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, r := range runs[len(runs)-4 : len(runs)-1] {
			name := fmt.Sprintf("process-io-c%d-%s", slicesMax(concs), strings.NewReplacer("?", "-", "=", "", "&", "-").Replace(r.contender))
			b.runChild("process-profile", r.contender, "io", topic, r.n, size, 0, 0, "-handlers", strconv.Itoa(r.handlers),
				"-cpuprofile", filepath.Join(dir, name+".cpu.pprof"))
		}
	}
	return nil
}

// cpuContenders are the cpu part's contenders, GetMessages first (the
// reference of the ratios).
var cpuContenders = []string{
	"mc-get?w=8",
	"mc-process?w=8&order=unordered&c=16",
	"mc-process?w=8&order=partition&c=16",
	"mc-process?w=8&order=key&c=16",
	"mc-process?w=8&order=unordered&c=1",
}

// cpuContenders are -process-cpu-contenders, or the default ones.
func (b *bench) cpuContenders() []string {
	if b.o.processCPUContenders != "" {
		return strings.Fields(b.o.processCPUContenders)
	}
	return cpuContenders
}

// processCPU: the cpu part, on -n messages over 8 partitions, 100 B
// values, key i mod -process-cpu-keys (1,000) in each partition.
func (b *bench) processCPU() error {
	const partitions, size = 8, 100
	if b.o.processCPUKeys < 1 {
		return fmt.Errorf("-process-cpu-keys %d: want at least 1", b.o.processCPUKeys)
	}
	ks := keys(b.o.processCPUKeys)
	value := make([]byte, size)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	topic, err := b.topicOf("bench-pcpu", partitions, b.o.n/partitions, func(_, i int) kafka.Message {
		return kafka.Message{Key: ks[i%len(ks)], Value: value}
	})
	if err != nil {
		return err
	}
	defer b.deleteTopic(topic)
	n := b.o.n / partitions * partitions
	for round := range b.o.rounds {
		order := b.cpuContenders()
		if round%2 == 1 {
			order = reversed(order)
		}
		for _, c := range order {
			b.runChild("process-cpu", c, "cpu", topic, n, size, 0, round)
		}
	}
	if b.o.processProfile {
		dir := filepath.Join(b.o.out, "pprof-"+b.o.label)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		for _, c := range b.cpuContenders() {
			// process- keeps them apart from the profile suite's files.
			name := "process-" + strings.NewReplacer("?", "-", "=", "", "&", "-").Replace(c)
			b.runChild("process-profile", c, "cpu", topic, n, size, 0, 0,
				"-cpuprofile", filepath.Join(dir, name+".cpu.pprof"),
				"-memprofile", filepath.Join(dir, name+".alloc.pprof"),
				"-mutexprofile", filepath.Join(dir, name+".mutex.pprof"),
				"-blockprofile", filepath.Join(dir, name+".block.pprof"),
				"-trace", filepath.Join(dir, name+".trace"))
		}
	}
	return nil
}
