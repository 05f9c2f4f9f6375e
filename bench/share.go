package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// This file is the share suite (-suites share): share groups (KIP-932), in
// two parts (-share-parts):
//
//   - drain: the drain suite's backlog (-n x -sizes, -partitions) read
//     through a share group by mc-share (MultiConsumer with ShareGroup,
//     GetMessages(1000) with BlockFor(1) in a loop, QueueSize q=, 1024 by
//     default) and franz-share (franz-go's share consumer, PollFetches in a
//     loop, accepting implicitly on the next poll), against our consumer
//     group drain (mc-group?members=1 and mc-get?w=8), each run in a child
//     process and a group of its own, the contenders alternating between
//     rounds. Each counts the records it received twice (a partition and
//     offset seen before): they are left out of the rate.
//   - process: Process with a -share-sleep handler on a topic of ONE
//     partition, 1, 2 and 4 members (-share-members), each member a child
//     process of its own (mode share-member), Concurrency c= and QueueSize
//     q= per member. The members start together: each says READY once it
//     has acquired a record, and all start Process when all are ready. The
//     group's rate is the records handled from the first handler call to
//     the last completion, across members; each member writes the offsets
//     it handled to a file, so that a record handled twice (by one member
//     or two) is counted.

// defaultShareDrain are the share suite's drain contenders.
var defaultShareDrain = []string{"mc-share", "franz-share", "mc-group?members=1", "mc-get?w=8"}

// shareSpec is the process part's member, with its parameters.
const shareMemberSpec = "mc-share-process?c=16&q=256&order=unordered"

// shareResult is what a share-group contender says of itself: the
// member's share statistics (mc-share), or the process part's member
// figures.
type shareResult struct {
	Stats *multiconsumer.ShareStats `json:"stats,omitempty"`
	// The process part: unix nanos of the member's first handler call and
	// its last completion, the records it handled (duplicates included)
	// and the time from New to its first acquired record.
	First   int64   `json:"first_ns,omitempty"`
	Last    int64   `json:"last_ns,omitempty"`
	Handled int64   `json:"handled,omitempty"`
	Ready   float64 `json:"ready_s,omitempty"`
	// The orchestrator's summary of a process run: records handled per
	// member, distinct records and those never handled, the -share-sleep.
	Members []int64 `json:"members,omitempty"`
	Missing int64   `json:"missing,omitempty"`
	Sleep   float64 `json:"sleep_s,omitempty"`
}

// shareStats is the last mc-share member's statistics, for the child's
// result (one contender per process).
var shareStats atomic.Pointer[multiconsumer.ShareStats]

// seenSet tells a record seen before from a new one, by partition and
// offset, exactly (a share group redelivers out of order). Safe for
// concurrent use.
type seenSet struct {
	mu   sync.Mutex
	bits map[int][]uint64 // partition -> bit per offset
	dups int64
}

func newSeenSet() *seenSet { return &seenSet{bits: map[int][]uint64{}} }

// first records partition's offset and reports whether it is the first
// time.
func (s *seenSet) first(partition int, offset int64) bool {
	if offset < 0 {
		return true
	}
	w, bit := int(offset/64), uint64(1)<<(offset%64)
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bits[partition]
	if w >= len(b) {
		b = append(b, make([]uint64, w+1-len(b)+len(b)/2)...)
		s.bits[partition] = b
	}
	if b[w]&bit != 0 {
		s.dups++
		return false
	}
	b[w] |= bit
	return true
}

func (s *seenSet) duplicates() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.dups
}

// runMCShare: MultiConsumer in a share group of its own (ShareGroup, the
// default StartOffset: the group starts at the earliest offset),
// GetMessages(count) with BlockFor(1) and a 1s timeout in a loop, as
// mc-get; q= QueueSize (default 1024, the library's). Coming back for more
// accepts what the last call returned.
func runMCShare(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		c, err := multiconsumer.New(ctx, multiconsumer.Config{
			Brokers: brokers, Topic: topic, Group: group(), ShareGroup: true,
			QueueSize: s.int("q", 1024),
		})
		if err != nil {
			return err
		}
		seen := newSeenSet()
		defer func() {
			_ = c.Close()
			st := c.Stats().Share
			shareStats.Store(&st)
			duplicates.Add(seen.duplicates())
		}()
		count := s.int("count", 1000)
		for ctx.Err() == nil {
			msgs, err := c.GetMessages(ctx, count, multiconsumer.BlockFor(1), multiconsumer.Timeout(time.Second))
			if err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return err
			}
			for i := range msgs {
				m := &msgs[i]
				if seen.first(m.Partition, m.Offset) {
					h(m.Key, m.Value)
				}
			}
		}
		return nil
	}
}

// runFranzShare: franz-go's share consumer (kgo.ShareGroup) in a group of
// its own, PollFetches in a loop; each poll accepts what the previous one
// returned (franz-go's implicit acknowledgement). A share group starts at
// the log's end unless its share.auto.offset.reset says otherwise, so the
// group's config is set to earliest first (IncrementalAlterConfigs on the
// GROUP resource). max= sets ShareMaxRecords (franz-go's default 500).
func runFranzShare(s spec) runner {
	return func(ctx context.Context, brokers []string, topic string, h handler) error {
		g := group()
		adm, err := kafkatest.Connect(brokers...)
		if err != nil {
			return err
		}
		err = adm.SetGroupConfig(ctx, g, map[string]string{"share.auto.offset.reset": "earliest"})
		adm.Close()
		if err != nil {
			return err
		}
		opts := []kgo.Opt{kgo.SeedBrokers(brokers...), kgo.ShareGroup(g), kgo.ConsumeTopics(topic)}
		if m := s.int("max", 0); m > 0 {
			opts = append(opts, kgo.ShareMaxRecords(int32(m)))
		}
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			return err
		}
		seen := newSeenSet()
		defer func() {
			cl.Close() // releases what the last poll returned, leaves
			duplicates.Add(seen.duplicates())
		}()
		for ctx.Err() == nil {
			fs := cl.PollFetches(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if errs := fs.Errors(); len(errs) > 0 {
				return fmt.Errorf("franz-share: %v", errs[0].Err)
			}
			fs.EachRecord(func(r *kgo.Record) {
				if seen.first(int(r.Partition), r.Offset) {
					h(r.Key, r.Value)
				}
			})
		}
		return nil
	}
}

// loadAvg returns the 1-minute load average of the machine.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return -1
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return -1
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// shareSuite runs the parts of the share suite (-share-parts).
func (b *bench) shareSuite() error {
	for _, part := range strings.Split(b.o.shareParts, ",") {
		var err error
		switch strings.TrimSpace(part) {
		case "drain":
			err = b.shareDrain()
		case "process":
			err = b.shareProcess()
		default:
			err = fmt.Errorf("-share-parts: unknown part %q", part)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// shareDrain is the drain part: every contender -rounds times on one
// backlog per size, the order reversed every other round.
func (b *bench) shareDrain() error {
	contenders := strings.Fields(b.o.shareContenders)
	for _, size := range ints(b.o.sizes) {
		topic, err := b.backlog(b.o.n, size)
		if err != nil {
			return err
		}
		for round := range b.o.rounds {
			order := contenders
			if round%2 == 1 {
				order = reversed(contenders)
			}
			for _, c := range order {
				load := loadAvg()
				var extra []string
				if b.o.shareProfile && round == 0 && strings.HasPrefix(c, "mc-share") {
					dir := filepath.Join(b.o.out, "pprof-"+b.o.label)
					if err := os.MkdirAll(dir, 0o755); err != nil {
						return err
					}
					name := strings.NewReplacer("?", "-", "=", "", "&", "-").Replace(c)
					extra = []string{"-cpuprofile", filepath.Join(dir, "share-"+name+".cpu.pprof")}
				}
				r := b.runChild("share-drain", c, "drain", topic, b.o.n, size, 0, round, extra...)
				b.annotate(r, load)
				if r.Share != nil && r.Share.Stats != nil {
					st := r.Share.Stats
					logf("share-drain r%d %s: load %.2f, acquired %d accepted %d released %d rejected %d ack errors %d",
						round, c, load, st.Acquired, st.Accepted, st.Released, st.Rejected, st.AckErrors)
				} else {
					logf("share-drain r%d %s: load %.2f", round, c, load)
				}
			}
		}
		b.deleteTopic(topic)
	}
	return nil
}

// annotate sets the load average on r's record in b.results (runChild
// appended it last).
func (b *bench) annotate(r result, load float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if i := len(b.results) - 1; i >= 0 && b.results[i].Contender == r.Contender && b.results[i].Round == r.Round {
		b.results[i].Load = load
	}
	b.save()
}

// shareProcess is the process part: one topic of one partition with
// -share-n records, then for each round and each number of members (the
// order reversed every other round) a run of that many member processes
// in a share group of their own, which starts at the earliest offset.
func (b *bench) shareProcess() error {
	ctx := context.Background()
	topic := kafkatest.UniqueName("bench-share-process")
	if err := b.cluster.CreateTopic(ctx, topic, 1); err != nil {
		return err
	}
	defer b.deleteTopic(topic)
	n := b.o.shareN
	t := time.Now()
	value := make([]byte, 100)
	msgs := make([]kafka.Message, 4096)
	for i := range msgs {
		msgs[i].Value = value
	}
	for left := n; left > 0; {
		k := min(left, len(msgs))
		if err := b.cluster.Produce(ctx, topic, 0, msgs[:k]...); err != nil {
			return err
		}
		left -= k
	}
	logf("produced %d x 100 B to %s (1 partition) in %s", n, topic, time.Since(t).Round(time.Millisecond))
	members := ints(b.o.shareMembers)
	for round := range b.o.rounds {
		order := members
		if round%2 == 1 {
			order = make([]int, len(members))
			for i, m := range members {
				order[len(members)-1-i] = m
			}
		}
		for _, m := range order {
			for _, spec := range strings.Fields(b.o.shareMember) {
				b.shareProcessRun(topic, spec, m, n, round)
			}
		}
	}
	return nil
}

// memberProc is one share-member child of a process run.
type memberProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	offsets string
	stderr  strings.Builder

	ready   chan struct{} // closed on READY
	readyAt string        // READY's acquired and held records
	exited  chan struct{} // closed when stdout ends
	handled atomic.Int64  // the last HANDLED line
	res     *result       // the RESULT line, once exited
}

func (m *memberProc) send(line string) { _, _ = io.WriteString(m.stdin, line+"\n") }

// shareProcessRun runs members member processes of spec on topic until
// together they handled n records, and records one result for the group.
func (b *bench) shareProcessRun(topic, spec string, members, n, round int) {
	load := loadAvg()
	g := group()
	dir, err := os.MkdirTemp("", "bench-share-")
	if err != nil {
		logf("share-process: %v", err)
		return
	}
	defer os.RemoveAll(dir)
	contender := fmt.Sprintf("%s&members=%d", spec, members)
	agg := result{Contender: contender, Mode: "share-process", Size: 100, Round: round, Broker: b.o.label, Load: load}
	fail := func(format string, args ...any) {
		agg.Err = fmt.Sprintf(format, args...)
	}
	var procs []*memberProc
	defer func() {
		for _, p := range procs {
			_ = p.stdin.Close()
		}
		for _, p := range procs {
			select {
			case <-p.exited:
			case <-time.After(30 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.exited
			}
			_ = p.cmd.Wait()
		}
		b.mu.Lock()
		b.results = append(b.results, agg)
		b.mu.Unlock()
		b.save()
		b.logShareProcess(agg)
	}()
	for i := range members {
		p := &memberProc{offsets: filepath.Join(dir, fmt.Sprintf("member-%d.offsets", i)),
			ready: make(chan struct{}), exited: make(chan struct{})}
		p.cmd = exec.Command(b.exe, "-contender", spec, "-mode", "share-member", "-brokers", b.brokers,
			"-topic", topic, "-share-group", g, "-share-offsets", p.offsets, "-share-sleep", b.o.shareSleep.String(),
			"-timeout", b.o.timeout.String())
		p.cmd.Stderr = &lockedWriter{w: &p.stderr}
		if p.stdin, err = p.cmd.StdinPipe(); err != nil {
			fail("%v", err)
			return
		}
		out, err := p.cmd.StdoutPipe()
		if err != nil {
			fail("%v", err)
			return
		}
		if err := p.cmd.Start(); err != nil {
			fail("%v", err)
			return
		}
		procs = append(procs, p)
		go p.read(out)
	}
	// All members ready (each holds records), then go together.
	deadline := time.After(60 * time.Second)
	for i, p := range procs {
		select {
		case <-p.ready:
		case <-p.exited:
			fail("member %d exited before it was ready: %s", i, lastLines(p.stderr.String(), 5))
			return
		case <-deadline:
			var held []string
			for _, p := range procs {
				held = append(held, p.readyAt)
			}
			fail("member %d not ready after 60s (acquired/held per member: %s)", i, strings.Join(held, ", "))
			return
		}
	}
	var held []string
	for _, p := range procs {
		held = append(held, p.readyAt)
	}
	logf("share-process r%d %s: all ready, acquired/held per member: %s", round, contender, strings.Join(held, ", "))
	for _, p := range procs {
		p.send("go")
	}
	// Until the members handled n records together and nothing moved for
	// a second (a record handled twice counts in the sum: the second
	// gives the records still missing time to arrive).
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	timeout := time.After(b.o.timeout)
	var lastSum int64
	stillSince := time.Now()
wait:
	for {
		select {
		case <-tick.C:
		case <-timeout:
			fail("timed out after %s", b.o.timeout)
			break wait
		}
		var sum int64
		for i, p := range procs {
			select {
			case <-p.exited:
				fail("member %d exited: %s", i, lastLines(p.stderr.String(), 5))
				break wait
			default:
			}
			sum += p.handled.Load()
		}
		if sum != lastSum {
			lastSum, stillSince = sum, time.Now()
		}
		if sum >= int64(n) && time.Since(stillSince) >= time.Second {
			break
		}
	}
	for _, p := range procs {
		_ = p.stdin.Close() // stop: Process returns, Close, RESULT
	}
	for i, p := range procs {
		select {
		case <-p.exited:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.exited
			if agg.Err == "" {
				fail("member %d did not stop within 30s", i)
			}
		}
	}
	// The group's figures.
	counts := make([]uint8, n)
	var first, last, handled, beyond int64
	agg.Share = &shareResult{Sleep: b.o.shareSleep.Seconds()}
	for i, p := range procs {
		if p.res == nil || p.res.Share == nil {
			if agg.Err == "" {
				fail("member %d gave no result: %s", i, lastLines(p.stderr.String(), 5))
			}
			continue
		}
		if p.res.Err != "" && agg.Err == "" {
			fail("member %d: %s", i, p.res.Err)
		}
		s := p.res.Share
		agg.Share.Members = append(agg.Share.Members, s.Handled)
		handled += s.Handled
		if s.First > 0 && (first == 0 || s.First < first) {
			first = s.First
		}
		last = max(last, s.Last)
		agg.PeakRSS = max(agg.PeakRSS, p.res.PeakRSS)
		agg.CPU += p.res.CPU
		data, err := os.ReadFile(p.offsets)
		if err != nil {
			fail("member %d: %v", i, err)
			continue
		}
		for j := 0; j+8 <= len(data); j += 8 {
			off := int64(binary.LittleEndian.Uint64(data[j:]))
			if off < 0 || off >= int64(n) {
				beyond++
				continue
			}
			if counts[off] < 255 {
				counts[off]++
			}
		}
	}
	var distinct int64
	for _, c := range counts {
		if c > 0 {
			distinct++
		}
	}
	agg.N = distinct
	agg.Duplicates = handled - distinct - beyond
	agg.Share.Handled = handled
	agg.Share.Missing = int64(n) - distinct
	if first > 0 && last > first {
		agg.Drain = time.Duration(last - first).Seconds()
		agg.Steady = float64(distinct) / agg.Drain
		agg.MsgsPerS = agg.Steady
	}
	agg.Share.First, agg.Share.Last = first, last
}

func (b *bench) logShareProcess(r result) {
	msg := fmt.Sprintf("share-process r%d %-60s load %.2f: %7.0f records/s over %.2fs, %d distinct, %d twice, %d missing, per member %v",
		r.Round, r.Contender, r.Load, r.MsgsPerS, r.Drain, r.N, r.Duplicates, r.Share.missing(), r.Share.members())
	if r.Err != "" {
		msg += " ERROR: " + r.Err
	}
	logf("%s", msg)
}

func (s *shareResult) missing() int64 {
	if s == nil {
		return -1
	}
	return s.Missing
}

func (s *shareResult) members() []int64 {
	if s == nil {
		return nil
	}
	return s.Members
}

// read follows the member's stdout: READY, HANDLED k, RESULT {...}.
func (m *memberProc) read(out io.Reader) {
	defer close(m.exited)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	readyOnce := sync.OnceFunc(func() { close(m.ready) })
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "READY"):
			m.readyAt = strings.TrimSpace(strings.TrimPrefix(line, "READY"))
			readyOnce()
		case strings.HasPrefix(line, "HANDLED "):
			if k, err := strconv.ParseInt(strings.TrimPrefix(line, "HANDLED "), 10, 64); err == nil {
				m.handled.Store(k)
			}
		case strings.HasPrefix(line, "RESULT "):
			var r result
			if json.Unmarshal([]byte(strings.TrimPrefix(line, "RESULT ")), &r) == nil {
				m.res = &r
			}
		}
	}
}

// lockedWriter makes a strings.Builder safe for exec's stderr copier and
// our reads.
type lockedWriter struct {
	mu sync.Mutex
	w  *strings.Builder
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// shareMemberChild is one member of the process part (mode share-member):
// a MultiConsumer in share group -share-group, QueueSize q= (default 256),
// that prints READY once it acquired a record, waits for "go" on stdin,
// then runs Process (Concurrency c=, default 16; order= unordered, the
// default here, partition or key) with a handler that sleeps -share-sleep,
// prints HANDLED k every 100ms, and stops when stdin closes: then it
// closes the consumer, writes the offsets it handled to -share-offsets
// (int64s, little-endian) and prints its RESULT.
func shareMemberChild(o options) error {
	s, err := parseSpec(o.contender)
	if err != nil {
		return err
	}
	if o.shareGroup == "" || o.shareOffsets == "" {
		return errors.New("share-member mode needs -share-group and -share-offsets")
	}
	order, err := orderingOf(spec{name: s.name, p: withDefault(s.p, "order", "unordered")})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	t0 := time.Now()
	c, err := multiconsumer.New(ctx, multiconsumer.Config{
		Brokers: strings.Split(o.brokers, ","), Topic: o.topic, Group: o.shareGroup, ShareGroup: true,
		QueueSize: s.int("q", 256),
	})
	if err != nil {
		return err
	}
	var res result
	res.Contender, res.Mode = o.contender, o.mode
	sr := &shareResult{}
	res.Share = sr
	for c.Stats().Share.Acquired == 0 && time.Since(t0) < 60*time.Second {
		time.Sleep(5 * time.Millisecond)
	}
	sr.Ready = time.Since(t0).Seconds()
	st := c.Stats().Share
	fmt.Printf("READY %d %d\n", st.Acquired, st.Held)

	goCh, stopCh := make(chan struct{}), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			if sc.Text() == "go" {
				close(goCh)
			}
		}
		close(stopCh)
	}()
	select {
	case <-goCh:
	case <-stopCh:
		_ = c.Close()
		return errors.New("stopped before go")
	}

	var (
		mu      sync.Mutex
		offsets = make([]int64, 0, 1<<16)
		first   atomic.Int64
		last    atomic.Int64
		handled atomic.Int64
	)
	sleep := o.shareSleep
	h := func(_ context.Context, m kafka.Message) error {
		if first.Load() == 0 {
			first.CompareAndSwap(0, time.Now().UnixNano())
		}
		time.Sleep(sleep)
		mu.Lock()
		offsets = append(offsets, m.Offset)
		mu.Unlock()
		last.Store(time.Now().UnixNano())
		handled.Add(1)
		return nil
	}
	pctx, pcancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-pctx.Done():
				return
			case <-stopCh:
				pcancel()
				return
			case <-t.C:
				fmt.Printf("HANDLED %d\n", handled.Load())
			}
		}
	})
	perr := c.Process(pctx, multiconsumer.ProcessConfig{Ordering: order, Concurrency: s.int("c", 16)}, h)
	pcancel()
	wg.Wait()
	cerr := c.Close()
	if ctx.Err() != nil {
		res.Err = "timed out"
	} else if perr != nil && !errors.Is(perr, context.Canceled) {
		res.Err = perr.Error()
	} else if cerr != nil {
		res.Err = "close: " + cerr.Error()
	}
	st = c.Stats().Share
	sr.Stats = &st
	sr.First, sr.Last, sr.Handled = first.Load(), last.Load(), handled.Load()

	mu.Lock()
	buf := make([]byte, 8*len(offsets))
	for i, off := range offsets {
		binary.LittleEndian.PutUint64(buf[8*i:], uint64(off))
	}
	mu.Unlock()
	if err := os.WriteFile(o.shareOffsets, buf, 0o644); err != nil {
		return err
	}
	res.N = sr.Handled
	res.PeakRSS = vmHWM()
	res.CPU = cpuSeconds()
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return nil
}

// withDefault returns p with k set to v unless p has k.
func withDefault(p map[string][]string, k, v string) map[string][]string {
	out := map[string][]string{k: {v}}
	for kk, vv := range p {
		out[kk] = vv
	}
	return out
}
