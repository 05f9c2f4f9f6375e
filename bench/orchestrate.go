package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

// The drain suite's contenders. mc-get and mc-iter run with a group for
// offset storage (auto-commit at its defaults), not as members of it, and
// QueueSize 4096; kafkago-group is tuned (MaxWait 250ms, QueueCapacity 1000,
// CommitInterval 1s); kafkago-group?once=1 is a Reader with nothing set but
// Brokers, GroupID and Topic. mc-group?members=N is N MultiConsumers with
// JoinGroup (cooperative-sticky, one worker each) in one group, each
// calling GetMessages(1000) in a goroutine of its own; franz?members=N is N
// franz-go group consumers alike; both with heartbeat 1s, session timeout
// 10s, rebalance timeout 10s (franz alone keeps franz-go's defaults: 3s,
// 45s, 60s).
var defaultDrain = []string{
	"mc-get?w=1", "mc-get?w=2", "mc-get?w=4", "mc-get?w=8",
	"mc-iter?w=1", "mc-iter?w=2", "mc-iter?w=4", "mc-iter?w=8",
	"mc-group?members=1", "mc-group?members=3",
	"kafkago-group?maxwait=250ms&queue=1000&commit=1s",
	"kafkago-group?once=1",
	"kafkago-partition",
	"franz", "franz?members=3",
}

var defaultLatency = []string{
	"mc-get?w=8", "mc-get?w=8&block=full", "mc-iter?w=8",
	"kafkago-group?maxwait=250ms&queue=1000&commit=1s", "kafkago-group",
	"kafkago-partition", "franz",
}

// The pitfall suite: a single kafka-go group Reader, one setting at a time.
var pitfallVariants = []string{
	"kafkago-group",
	"kafkago-group?read=fetch",
	"kafkago-group?commit=1s",
	"kafkago-group?maxwait=250ms",
	"kafkago-group?queue=1000",
	"kafkago-group?maxwait=250ms&queue=1000",
	"kafkago-group?maxwait=250ms&queue=1000&commit=1s",
	"kafkago-group?maxwait=250ms&queue=1000&read=fetch",
	"kafkago-group?minbytes=1000000&maxbytes=10000000&maxwait=250ms&queue=1000&commit=1s",
	"kafkago-group?maxbytes=10000000&maxwait=250ms&queue=1000&commit=1s",
}

type bench struct {
	o       options
	exe     string
	brokers string
	cluster *kafkatest.Cluster
	broker  *brokerProc
	results []result
	mu      sync.Mutex
}

func orchestrate(o options) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	b := &bench{o: o, exe: exe}
	if o.label == "" {
		b.o.label = "kfake"
		if o.brokers != "" {
			b.o.label = "kafka"
		}
	}
	for _, dir := range []string{o.out, o.docs} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
	}
	if o.reportFrom != "" {
		data, err := os.ReadFile(o.reportFrom)
		if err != nil {
			return err
		}
		if err := json.Unmarshal(data, &b.results); err != nil {
			return err
		}
		for i, r := range b.results {
			if r.Mode == "latency" && r.Rate == 0 {
				// Written before -rate took a list: one rate, give it as -rate.
				b.results[i].Rate = o.latRates[0]
			}
		}
		b.brokers = o.brokers
		return b.report()
	}
	if o.brokers == "" {
		bp, err := startBroker()
		if err != nil {
			return err
		}
		defer bp.stop()
		b.broker, b.brokers = bp, bp.addr
	} else {
		b.brokers = o.brokers
	}
	b.cluster, err = kafkatest.Connect(strings.Split(b.brokers, ",")...)
	if err != nil {
		return err
	}
	defer b.cluster.Close()
	logf("broker %s (%s), GOMAXPROCS %d, suites %s", b.brokers, b.o.label, numCPU(), o.suites)

	start := time.Now()
	for _, s := range strings.Split(o.suites, ",") {
		var err error
		switch strings.TrimSpace(s) {
		case "drain":
			err = b.drainSuite()
		case "latency":
			err = b.latencySuite()
		case "io":
			err = b.ioSuite()
		case "rebalance":
			err = b.rebalanceSuite()
		case "cold":
			err = b.coldSuite()
		case "pitfall":
			err = b.pitfallSuite()
		case "mem":
			err = b.memSuite()
		case "profile":
			err = b.profileSuite()
		case "python":
			err = b.pythonSuite()
		case "process":
			err = b.processSuite()
		case "share":
			err = b.shareSuite()
		default:
			err = fmt.Errorf("unknown suite %q", s)
		}
		if err != nil {
			return err
		}
	}
	logf("all suites done in %s", time.Since(start).Round(time.Second))
	return b.report()
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func ints(s string) []int {
	var out []int
	for _, f := range strings.Split(s, ",") {
		if n, err := strconv.Atoi(strings.TrimSpace(f)); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// backlog creates a topic and produces n messages of size bytes to it,
// spread evenly over the partitions.
func (b *bench) backlog(n, size int) (string, error) {
	ctx := context.Background()
	topic := kafkatest.UniqueName(fmt.Sprintf("bench-%d-%d", n, size))
	if err := b.cluster.CreateTopic(ctx, topic, b.o.partitions); err != nil {
		return "", err
	}
	t := time.Now()
	value := make([]byte, size)
	for i := range value {
		value[i] = byte('a' + i%26)
	}
	// At most ~512 KiB per produce request: kfake's and Kafka's default
	// message.max.bytes is 1 MB. Each request is one record batch.
	chunk := max(1, min(b.o.batch, (512<<10)/size))
	msgs := make([]kafka.Message, chunk)
	for i := range msgs {
		msgs[i].Value = value
	}
	var wg sync.WaitGroup
	errs := make([]error, b.o.partitions)
	for p := range b.o.partitions {
		wg.Go(func() {
			left := n / b.o.partitions
			if p < n%b.o.partitions {
				left++
			}
			for left > 0 && errs[p] == nil {
				k := min(left, chunk)
				errs[p] = b.cluster.Produce(ctx, topic, p, msgs[:k]...)
				left -= k
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return "", err
		}
	}
	extra := ""
	if b.broker != nil {
		extra = fmt.Sprintf(", broker RSS %.0f MiB", float64(b.broker.rss())/(1<<20))
	}
	logf("produced %d x %d B to %s in %s%s", n, size, topic, time.Since(t).Round(time.Millisecond), extra)
	return topic, nil
}

// runChild runs one contender in a child process and records its result.
// rate is the produce rate of the latency mode, 0 for the other modes.
func (b *bench) runChild(suite, contender, mode, topic string, n, size, rate, round int, extra ...string) result {
	args := []string{
		"-contender", contender, "-mode", mode, "-brokers", b.brokers, "-topic", topic,
		"-n", strconv.Itoa(n), "-duration", b.o.latDur.String(), "-io-sleep", b.o.ioSleep.String(),
		"-timeout", b.o.timeout.String(),
	}
	if rate > 0 {
		args = append(args, "-rate", strconv.Itoa(rate))
	}
	args = append(args, extra...)
	cmd := exec.Command(b.exe, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := result{Contender: contender, Mode: mode}
	sc := bufio.NewScanner(&stdout)
	found := false
	for sc.Scan() {
		if line, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
			found = json.Unmarshal([]byte(line), &r) == nil
		}
	}
	if !found {
		r.Err = fmt.Sprintf("child failed: %v: %s", err, lastLines(stderr.String(), 5))
	}
	r.Size, r.Rate, r.Round, r.Broker = size, rate, round, b.o.label
	r.Mode = suite
	b.mu.Lock()
	b.results = append(b.results, r)
	b.mu.Unlock()
	msg := fmt.Sprintf("%-8s r%d %-75s size %5d: %9.0f msg/s %7.1f MB/s total %6.2fs startup %5.2fs RSS %5.0f MiB heap %5.0f MiB",
		suite, round, contender, size, r.MsgsPerS, r.MBPerS, r.Total, r.Startup, float64(r.PeakRSS)/(1<<20), float64(r.PeakHeap)/(1<<20))
	if mode == "latency" {
		ab, an := r.allocPerMsg()
		msg = fmt.Sprintf("%-8s r%d %-50s %6d msg/s: p50 %7.2fms p99 %7.2fms max %7.2fms (n=%d) alloc %6.0f B/msg %5.1f allocs/msg %3d GCs",
			suite, round, contender, rate, r.P50, r.P99, r.Max, r.N, ab, an, r.NumGC)
	}
	if mode == "rebalance" {
		msg = rebalanceLine(r)
	}
	if mode == "cold" {
		msg = coldLine(r)
	}
	if r.Duplicates > 0 {
		msg += fmt.Sprintf(" (%d redelivered, not counted)", r.Duplicates)
	}
	if r.Err != "" {
		msg += " ERROR: " + r.Err
	}
	if r.Partial {
		msg += fmt.Sprintf(" PARTIAL: timed out after %d messages", r.N)
		if stderr.Len() > 0 {
			// What the child said of it (a Process stall: its Stats and
			// goroutines).
			name := filepath.Join(b.o.out, fmt.Sprintf("stderr-%s-r%d-%d.txt", suite, round, time.Now().Unix()))
			if err := os.WriteFile(name, stderr.Bytes(), 0o644); err == nil {
				msg += ", its stderr in " + name
			}
		}
	}
	logf("%s", msg)
	b.save()
	return r
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], " | ")
}

func (b *bench) save() {
	data, _ := json.MarshalIndent(b.results, "", " ")
	_ = os.WriteFile(filepath.Join(b.o.out, b.o.label+"-"+strings.ReplaceAll(b.o.suites, ",", "_")+".json"), data, 0o644)
}

func (b *bench) drainSuite() error {
	contenders := strings.Fields(b.o.contenders)
	for _, size := range ints(b.o.sizes) {
		topic, err := b.backlog(b.o.n, size)
		if err != nil {
			return err
		}
		for round := range b.o.rounds {
			order := contenders
			if round%2 == 1 { // alternate the order so drift does not favour one side
				order = reversed(contenders)
			}
			for _, c := range order {
				if strings.Contains(c, "once=1") {
					// Slow: run once, for at most a minute; its rate is of
					// what arrived by then.
					if round == 0 {
						b.runChild("drain", c, "drain", topic, b.o.n, size, 0, round, "-timeout", "1m")
					}
					continue
				}
				b.runChild("drain", c, "drain", topic, b.o.n, size, 0, round)
			}
		}
		b.deleteTopic(topic)
	}
	return nil
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}

func (b *bench) deleteTopic(topic string) {
	if b.o.keepTopics {
		logf("kept topic %s (-keep-topics)", topic)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.cluster.DeleteTopic(ctx, topic); err != nil {
		logf("delete %s: %v", topic, err)
	}
}

// latencySuite runs each contender -latency-rounds times at each -rate, on
// a fresh topic each time, alternating the order of the contenders between
// rounds as the drain suite does.
func (b *bench) latencySuite() error {
	contenders := strings.Fields(b.o.latency)
	for _, rate := range b.o.latRates {
		for round := range b.o.latRounds {
			order := contenders
			if round%2 == 1 {
				order = reversed(contenders)
			}
			for _, c := range order {
				topic := kafkatest.UniqueName("bench-latency")
				if err := b.cluster.CreateTopic(context.Background(), topic, b.o.partitions); err != nil {
					return err
				}
				var extra []string
				if b.o.latProfile {
					dir := filepath.Join(b.o.out, "pprof-"+b.o.label)
					if err := os.MkdirAll(dir, 0o755); err != nil {
						return err
					}
					name := fmt.Sprintf("latency-%s-%d-r%d", strings.NewReplacer("?", "-", "=", "", "&", "-").Replace(c), rate, round)
					extra = append(extra, "-cpuprofile", filepath.Join(dir, name+".cpu.pprof"), "-memprofile", filepath.Join(dir, name+".alloc.pprof"))
				}
				b.runChild("latency", c, "latency", topic, 0, 100, rate, round, extra...)
				b.deleteTopic(topic)
			}
		}
	}
	return nil
}

// ioSuite: MultiConsumer at 1, 2, 4, 8 workers when each message costs a
// wait of -io-sleep, handled by the caller itself (handlers=1) or by a pool
// of h goroutines the caller dispatches to; and, for scale, one kafka-go
// Reader per partition whose goroutine handles each message itself.
func (b *bench) ioSuite() error {
	const size = 100
	n := func(h int) int { return max(2000, min(b.o.n, 2000*h)) } // about 2s per run
	handlers := ints(b.o.ioHandlers)
	topic, err := b.backlog(n(slicesMax(handlers)), size)
	if err != nil {
		return err
	}
	for _, h := range handlers {
		arg := h
		if h == 1 {
			arg = 0 // the caller itself
		}
		for _, w := range ints(b.o.ioWorkers) {
			b.runChild("io", fmt.Sprintf("mc-get?w=%d", w), "io", topic, n(h), size, 0, 0, "-handlers", strconv.Itoa(arg))
		}
		b.runChild("io", "kafkago-partition", "io", topic, n(h), size, 0, 0, "-handlers", strconv.Itoa(arg))
	}
	b.deleteTopic(topic)
	return nil
}

func slicesMax(s []int) int {
	m := 0
	for _, v := range s {
		m = max(m, v)
	}
	return m
}

func (b *bench) pitfallSuite() error {
	topic, err := b.backlog(b.o.n, 100)
	if err != nil {
		return err
	}
	for round := range b.o.rounds {
		for _, c := range pitfallVariants {
			b.runChild("pitfall", c, "drain", topic, b.o.n, 100, 0, round, "-timeout", "1m")
		}
	}
	b.deleteTopic(topic)
	return nil
}

// memSuite: peak RSS of MultiConsumer (and, for contrast, the tuned kafka-go
// group Reader and franz-go) against backlogs of growing size.
func (b *bench) memSuite() error {
	for _, n := range ints(b.o.memN) {
		topic, err := b.backlog(n, 100)
		if err != nil {
			return err
		}
		for _, c := range []string{"mc-get?w=8", "mc-get?w=8&q=1024", "mc-iter?w=8", "mc-get?w=1",
			"kafkago-group?maxwait=250ms&queue=1000&commit=1s", "kafkago-partition", "franz"} {
			// backlog= only keeps the two backlogs apart in the tables.
			sep := "&"
			if !strings.Contains(c, "?") {
				sep = "?"
			}
			b.runChild("mem", fmt.Sprintf("%s%sbacklog=%d", c, sep, n), "drain", topic, n, 100, 0, 0, "-timeout", "10m")
		}
		b.deleteTopic(topic)
	}
	return nil
}

// profileSuite writes CPU and allocation profiles of MultiConsumer at 1 and
// 8 workers draining the backlog (100 B messages).
func (b *bench) profileSuite() error {
	size := ints(b.o.sizes)[0] // the first of -sizes
	topic, err := b.backlog(b.o.n, size)
	if err != nil {
		return err
	}
	dir := filepath.Join(b.o.out, "pprof-"+b.o.label)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, c := range strings.Fields(b.o.profileContenders) {
		name := strings.NewReplacer("?", "-", "=", "", "&", "-").Replace(c)
		b.runChild("profile", c, "drain", topic, b.o.n, size, 0, 0,
			"-cpuprofile", filepath.Join(dir, name+".cpu.pprof"),
			"-memprofile", filepath.Join(dir, name+".alloc.pprof"))
	}
	b.deleteTopic(topic)
	return nil
}

// pythonSuite runs contender 5, kafka-python 1.4.7's MultiProcessConsumer
// (bench/python/mpc.py, in the venv bench/python/.venv), on a 100 B backlog.
func (b *bench) pythonSuite() error {
	topic, err := b.backlog(b.o.n, 100)
	if err != nil {
		return err
	}
	defer b.deleteTopic(topic)
	cmd := exec.Command(fromRoot("bench/python/.venv/bin/python"), fromRoot("bench/python/mpc.py"), b.brokers, topic, strconv.Itoa(b.o.n), strconv.Itoa(b.o.partitions))
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	r := result{Contender: "kafka-python-mpc", Mode: "python", Size: 100, Broker: b.o.label}
	var py struct {
		N        int64   `json:"n"`
		Seconds  float64 `json:"seconds"`
		MsgsPerS float64 `json:"msgs_per_s"`
		RSS      float64 `json:"peak_rss_mib"`
		Error    string  `json:"error"`
		Trace    string  `json:"trace"`
	}
	if jerr := json.Unmarshal(out, &py); jerr != nil {
		r.Err = fmt.Sprintf("%v %v: %s", err, jerr, out)
	} else {
		r.N, r.Total, r.MsgsPerS, r.PeakRSS, r.Err = py.N, py.Seconds, py.MsgsPerS, int64(py.RSS*(1<<20)), py.Error
		if py.Trace != "" {
			logf("python traceback:\n%s", py.Trace)
		}
	}
	logf("python   kafka-python MultiProcessConsumer: %d msgs in %.2fs = %.0f msg/s, parent RSS %.0f MiB %s", r.N, r.Total, r.MsgsPerS, py.RSS, r.Err)
	b.results = append(b.results, r)
	b.save()
	return nil
}
