package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The rebalance suite: how a group rebalance interrupts the flow of
// messages. In one child process, with a steady produce of -rebalance-rate
// messages/s round-robin over the topic's partitions, member A of a fresh
// group starts; once it is stable (below) and -settle has passed, member B
// starts in the same group; once both are stable and -settle has passed, B
// stops (its consumer is closed: it commits and leaves the group); once A
// is stable alone, the run ends. Every delivery is recorded: time of
// receipt, member, partition, offset.
//
// B starts, and stops, -settle plus a random fraction of the heartbeat
// interval after stability was observed, so that where the transition falls
// between the members' heartbeats varies from round to round.
//
// Stable: every partition delivered a message in the last 500ms, the last
// deliverer of each partition (its owner, as observed) has not changed for
// 2s (1s after the leave) and, after the join, both members own some
// partitions; after the leave, A owns all. Stability is observed from the
// deliveries alone, alike for every client, hooks or not.
//
// See rebalanceNote for what the table reports.

// The rebalance suite's contenders: ours with its default cooperative-sticky
// assignor and with range (eager), franz-go with its cooperative-sticky
// balancer, kafka-go's group Reader (eager: range) tuned as in the drain
// suite. mc-group?protocol=consumer and franz?protocol=consumer run under
// KIP-848's consumer protocol (not in the default list: they need a broker
// that serves it, Kafka 4.0+ or kfake). All with the group timings of groupTimings (1s/10s/10s).
var defaultRebalance = []string{
	"mc-group", "mc-group?assignor=range", "franz",
	"kafkago-group?maxwait=250ms&queue=1000&commit=1s",
}

// rebalanceNote is the caption of the rebalance table.
const rebalanceNote = "Rebalance table: per round, in one child process, on a fresh topic with a steady produce " +
	"round-robin over its partitions, member A of a fresh group consumes alone; member B joins (\"join\"); then B " +
	"stops, its consumer closed so that it commits and leaves (\"leave\"). Each transition starts at the call that " +
	"starts B (that stops B), -settle plus a random 0-1 heartbeat interval after the previous state was observed " +
	"stable, and its window ends when the new state is observed stable: every partition delivered in the last 500ms, " +
	"owners unchanged for 2s (1s after the leave), both members owning partitions (A all, after the leave). A " +
	"partition's owner is the member that delivered it last; \"moved\" partitions changed owner across the window, " +
	"\"unmoved\" did not. *steady max gap*: the longest time between two consecutive deliveries of any partition " +
	"in the -settle window before B starts (the normal gap between batches). *unmoved max gap*: the longest time " +
	"between two consecutive deliveries of an unmoved partition that overlaps the window, the longest over the " +
	"unmoved partitions (with no pause, it stays near the steady gap). *moved stall*: from a moved partition's last " +
	"delivery by its old owner to its first by the new one, the longest over the moved partitions. *moved first " +
	"after B start/stop*: from the transition's start to the first delivery of a moved partition by its new owner, " +
	"the longest over the moved partitions; it includes B's connecting and joining, the old owner noticing the " +
	"rebalance at a heartbeat and, with cooperative assignors, the second rebalance that hands the revoked " +
	"partitions over (noticed at a heartbeat too). *redelivered*: messages delivered a second time (offset not above " +
	"one delivered before in its partition), from B's start to B's stop (join) and from B's stop to the end (leave). " +
	"Group timings alike for every client: heartbeat 1s, session timeout 10s, rebalance timeout 10s (under " +
	"protocol=consumer, KIP-848, the broker's group.consumer.* settings instead). Each figure is " +
	"the median [min-max] over the rounds of the per-round value; \"-\" when no partition was in that class.\n\n"

// delivery is one message received in the rebalance mode.
type delivery struct {
	t      int64 // unix nanos, taken under the recorder's lock: in order
	member int8
	part   int32
	dup    bool
}

// hookEvent is what a client's hook told, with its time.
type hookEvent struct {
	T          float64 `json:"t_s"` // since A's start
	Member     int     `json:"member"`
	Event      string  `json:"event"`
	Partitions []int   `json:"partitions"`
}

// recorder records deliveries and keeps the state the stability checks
// read. Safe for concurrent use.
type recorder struct {
	mu        sync.Mutex
	ds        []delivery
	dd        *dedup
	last      []int64 // per partition: time of the last delivery
	owner     []int8  // per partition: member of the last delivery, -1 before any
	changedAt int64   // time of the last owner change
	hooks     []hookEvent
	t0        time.Time
}

func newRecorder(partitions int, t0 time.Time) *recorder {
	r := &recorder{dd: newDedup(partitions), last: make([]int64, partitions), owner: make([]int8, partitions),
		ds: make([]delivery, 0, 1<<16), t0: t0}
	for i := range r.owner {
		r.owner[i] = -1
	}
	return r
}

func (r *recorder) recv(member, partition int, offset int64, _, _ []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now().UnixNano()
	if partition < 0 || partition >= len(r.last) {
		return
	}
	r.ds = append(r.ds, delivery{t: now, member: int8(member), part: int32(partition), dup: r.dd.seen(partition, offset)})
	r.last[partition] = now
	if r.owner[partition] != int8(member) {
		r.owner[partition] = int8(member)
		r.changedAt = now
	}
}

func (r *recorder) hook(member int, event string, partitions []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e := hookEvent{T: time.Since(r.t0).Seconds(), Member: member, Event: event, Partitions: slices.Clone(partitions)}
	r.hooks = append(r.hooks, e)
	fmt.Fprintf(os.Stderr, "%7.3fs member %c %s %v\n", e.T, 'A'+byte(member), event, partitions)
}

// stable reports whether every partition delivered within the last 500ms,
// owners unchanged for quiet, and owners is the set of members owning
// partitions.
func (r *recorder) stable(quiet time.Duration, owners ...int8) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now().UnixNano()
	if now-r.changedAt < int64(quiet) {
		return false
	}
	var seen []int8
	for p := range r.last {
		if r.owner[p] < 0 || now-r.last[p] > int64(500*time.Millisecond) {
			return false
		}
		if !slices.Contains(seen, r.owner[p]) {
			seen = append(seen, r.owner[p])
		}
	}
	slices.Sort(seen)
	return slices.Equal(seen, owners)
}

// rebalanceStats is the result of one rebalance run. Times in ms; -1 where
// no partition was in that class.
type rebalanceStats struct {
	Protocol    string  `json:"protocol"`
	SteadyGapMs float64 `json:"steady_gap_ms"`
	Join        phase   `json:"join"`
	Leave       phase   `json:"leave"`
	Redelivered int64   `json:"redelivered"`
	// Seconds since A's start: A stable, B started, both stable, B
	// stopped (Close returned), A stable alone.
	AStableS  float64     `json:"a_stable_s"`
	JoinS     float64     `json:"join_s"`
	JoinedS   float64     `json:"joined_s"`
	LeaveS    float64     `json:"leave_s"`
	ClosedS   float64     `json:"b_closed_s"`
	LeftS     float64     `json:"left_s"`
	Delivered int         `json:"delivered"`
	JitterMs  [2]float64  `json:"jitter_ms"` // added to -settle before B's start, before B's stop
	Hooks     []hookEvent `json:"hooks,omitempty"`
}

// phase is one transition (the join or the leave).
type phase struct {
	Moved        []int      `json:"moved"`
	Unmoved      []int      `json:"unmoved"`
	UnmovedGapMs float64    `json:"unmoved_max_gap_ms"`
	MovedStallMs float64    `json:"moved_max_stall_ms"`
	MovedFirstMs float64    `json:"moved_max_first_ms"` // from the transition's start
	StableMs     float64    `json:"stable_ms"`          // from the start to stable observed
	Redelivered  int64      `json:"redelivered"`        // from the start to the next transition's (the end)
	Partitions   []partMove `json:"partitions"`
}

type partMove struct {
	P       int     `json:"p"`
	From    int     `json:"from"`
	To      int     `json:"to"`
	GapMs   float64 `json:"max_gap_ms,omitempty"` // unmoved
	StallMs float64 `json:"stall_ms,omitempty"`   // moved
	FirstMs float64 `json:"first_ms,omitempty"`   // moved
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

// analyze computes the transition from start to end (the moment stability
// was observed) from the deliveries: owners at start and at end, the
// longest gap of unmoved partitions overlapping [start, end], and when
// moved partitions flowed again.
func analyze(ds []delivery, partitions int, start, end int64) phase {
	ph := phase{UnmovedGapMs: -1, MovedStallMs: -1, MovedFirstMs: -1, StableMs: ms(end - start)}
	for p := range partitions {
		var ts []int64
		var ms8 []int8
		for _, d := range ds {
			if int(d.part) == p {
				ts = append(ts, d.t)
				ms8 = append(ms8, d.member)
			}
		}
		ownerAt := func(t int64) int {
			o := -1
			for i, x := range ts {
				if x > t {
					break
				}
				o = int(ms8[i])
			}
			return o
		}
		from, to := ownerAt(start), ownerAt(end)
		pm := partMove{P: p, From: from, To: to}
		if from == to {
			var gap int64
			for i := 1; i < len(ts); i++ {
				if ts[i] > start && ts[i-1] < end {
					gap = max(gap, ts[i]-ts[i-1])
				}
			}
			pm.GapMs = ms(gap)
			ph.Unmoved = append(ph.Unmoved, p)
			ph.UnmovedGapMs = max(ph.UnmovedGapMs, pm.GapMs)
		} else {
			first, lastOld := int64(-1), int64(-1)
			for i, x := range ts {
				if x > start && int(ms8[i]) == to {
					first = x
					break
				}
				if int(ms8[i]) == from {
					lastOld = x
				}
			}
			if first > 0 {
				pm.FirstMs = ms(first - start)
				if lastOld > 0 {
					pm.StallMs = ms(first - lastOld)
				}
			}
			ph.Moved = append(ph.Moved, p)
			ph.MovedFirstMs = max(ph.MovedFirstMs, pm.FirstMs)
			ph.MovedStallMs = max(ph.MovedStallMs, pm.StallMs)
		}
		ph.Partitions = append(ph.Partitions, pm)
	}
	return ph
}

// steadyGap returns the longest gap between consecutive deliveries of a
// partition, both within [from, to], over the partitions.
func steadyGap(ds []delivery, partitions int, from, to int64) float64 {
	last := make([]int64, partitions)
	var gap int64
	for _, d := range ds {
		if d.t < from || d.t > to {
			continue
		}
		if l := last[d.part]; l > 0 {
			gap = max(gap, d.t-l)
		}
		last[d.part] = d.t
	}
	return ms(gap)
}

// rebalanceChild runs the rebalance mode of contender o.contender and
// prints its result.
func rebalanceChild(o options) error {
	s, err := parseSpec(o.contender)
	if err != nil {
		return err
	}
	start, ok := memberFor(s)
	if !ok {
		return fmt.Errorf("contender %q cannot run as a group member", o.contender)
	}
	if len(o.latRates) != 1 {
		return fmt.Errorf("rebalance mode takes one -rate, not %q", o.rates)
	}
	brokers := strings.Split(o.brokers, ",")
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	res := result{Contender: o.contender, Mode: "rebalance", Rate: o.latRates[0]}
	st, err := rebalanceRun(ctx, s, start, brokers, o.topic, o.latRates[0], o.settle)
	res.Rebalance = st
	if st != nil {
		res.N = int64(st.Delivered)
	}
	if err != nil {
		res.Err = err.Error()
	}
	res.PeakRSS = vmHWM()
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return nil
}

func rebalanceRun(ctx context.Context, s spec, start startMember, brokers []string, topic string, rate int, settle time.Duration) (*rebalanceStats, error) {
	parts, err := kafka.LookupPartitions(ctx, "tcp", brokers[0], topic)
	if err != nil {
		return nil, err
	}
	np := len(parts)
	t0 := time.Now()
	rec := newRecorder(np, t0)
	st := &rebalanceStats{Protocol: protocolOf(s)}
	since := func(t time.Time) float64 { return t.Sub(t0).Seconds() }

	stopProduce, err := produceSteady(ctx, brokers, topic, rate)
	if err != nil {
		return nil, err
	}
	defer stopProduce()

	g := group()
	var stops [2]memberStop
	defer func() {
		for _, stop := range stops {
			if stop != nil {
				_ = stop()
			}
		}
	}()
	waitStable := func(what string, quiet time.Duration, owners ...int8) (time.Time, error) {
		deadline := time.Now().Add(60 * time.Second)
		for !rec.stable(quiet, owners...) {
			if time.Now().After(deadline) {
				rec.mu.Lock()
				defer rec.mu.Unlock()
				return time.Time{}, fmt.Errorf("%s: not stable after 60s: owners %v", what, rec.owner)
			}
			select {
			case <-ctx.Done():
				return time.Time{}, ctx.Err()
			case <-time.After(20 * time.Millisecond):
			}
		}
		return time.Now(), nil
	}
	finish := func(err error) (*rebalanceStats, error) {
		rec.mu.Lock()
		st.Delivered, st.Redelivered = len(rec.ds), rec.dd.dups.Load()
		st.Hooks = slices.Clone(rec.hooks)
		rec.mu.Unlock()
		return st, err
	}

	if stops[0], err = start(ctx, brokers, topic, g, 0, rec.recv, rec.hook); err != nil {
		return finish(fmt.Errorf("start A: %w", err))
	}
	tA, err := waitStable("A alone", 2*time.Second, 0)
	if err != nil {
		return finish(err)
	}
	st.AStableS = since(tA)
	// Plus a random part of a heartbeat interval: how soon A notices a
	// rebalance depends on where B's start falls between its heartbeats;
	// after a whole number of seconds it would fall at the same place in
	// every run.
	hb, _, _ := groupTimings(s)
	jitter := rand.N(hb)
	st.JitterMs[0] = ms(int64(jitter))
	time.Sleep(settle + jitter)

	tJoin := time.Now()
	st.JoinS = since(tJoin)
	fmt.Fprintf(os.Stderr, "%7.3fs B starts\n", st.JoinS)
	if stops[1], err = start(ctx, brokers, topic, g, 1, rec.recv, rec.hook); err != nil {
		return finish(fmt.Errorf("start B: %w", err))
	}
	tJoined, err := waitStable("A and B", 2*time.Second, 0, 1)
	if err != nil {
		return finish(err)
	}
	st.JoinedS = since(tJoined)
	jitter = rand.N(hb)
	st.JitterMs[1] = ms(int64(jitter))
	time.Sleep(settle + jitter)

	tLeave := time.Now()
	st.LeaveS = since(tLeave)
	fmt.Fprintf(os.Stderr, "%7.3fs B stops\n", st.LeaveS)
	stopB := stops[1]
	stops[1] = nil
	if err := stopB(); err != nil {
		return finish(fmt.Errorf("stop B: %w", err))
	}
	st.ClosedS = since(time.Now())
	tLeft, err := waitStable("A after B left", time.Second, 0)
	if err != nil {
		return finish(err)
	}
	st.LeftS = since(tLeft)
	time.Sleep(time.Second) // deliveries after the window close its gaps
	fmt.Fprintf(os.Stderr, "%7.3fs done\n", since(time.Now()))

	rec.mu.Lock()
	ds := slices.Clone(rec.ds)
	rec.mu.Unlock()
	st.SteadyGapMs = steadyGap(ds, np, tJoin.Add(-settle).UnixNano(), tJoin.UnixNano())
	st.Join = analyze(ds, np, tJoin.UnixNano(), tJoined.UnixNano())
	st.Leave = analyze(ds, np, tLeave.UnixNano(), tLeft.UnixNano())
	for _, d := range ds {
		switch {
		case !d.dup:
		case d.t >= tLeave.UnixNano():
			st.Leave.Redelivered++
		case d.t >= tJoin.UnixNano():
			st.Join.Redelivered++
		}
	}
	if len(st.Join.Moved) == 0 {
		err = errors.New("no partition moved at the join")
	}
	return finish(err)
}

// produceSteady produces rate messages/s of 100 B, round-robin over the
// partitions, each carrying its produce time, until stopped.
func produceSteady(ctx context.Context, brokers []string, topic string, rate int) (stop func(), err error) {
	pr, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ProducerLinger(0),
		kgo.RecordPartitioner(kgo.RoundRobinPartitioner()), kgo.RequiredAcks(kgo.LeaderAck()), kgo.DisableIdempotentWrite())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		for i := 0; ctx.Err() == nil; i++ {
			if wait := time.Until(start.Add(time.Duration(float64(i) / float64(rate) * 1e9))); wait > 0 {
				time.Sleep(wait)
			}
			v := make([]byte, 100)
			binary.BigEndian.PutUint64(v, uint64(time.Now().UnixNano()))
			pr.Produce(ctx, &kgo.Record{Topic: topic, Value: v}, func(_ *kgo.Record, err error) {
				if err != nil && ctx.Err() == nil {
					fmt.Fprintln(os.Stderr, "produce:", err)
				}
			})
		}
	})
	return func() { cancel(); wg.Wait(); pr.Close() }, nil
}

// rebalanceSuite runs each rebalance contender -rounds times, on a fresh
// topic each time, alternating the order of the contenders between rounds.
func (b *bench) rebalanceSuite() error {
	contenders := strings.Fields(b.o.rebalance)
	for round := range b.o.rounds {
		order := contenders
		if round%2 == 1 {
			order = reversed(contenders)
		}
		for _, c := range order {
			topic := kafkatest.UniqueName("bench-rebalance")
			if err := b.cluster.CreateTopic(context.Background(), topic, b.o.partitions); err != nil {
				return err
			}
			b.runChild("rebalance", c, "rebalance", topic, 0, 100, b.o.rebalRate, round, "-settle", b.o.settle.String())
			b.deleteTopic(topic)
		}
	}
	return nil
}

// rebalanceLine is the log line of one rebalance run.
func rebalanceLine(r result) string {
	st := r.Rebalance
	if st == nil {
		return fmt.Sprintf("rebalance r%d %-50s", r.Round, r.Contender)
	}
	return fmt.Sprintf("rebalance r%d %-50s %-18s steady gap %5.0fms | join: moved %v unmoved gap %5.0fms moved stall %5.0fms first %5.0fms | leave: moved %v unmoved gap %5.0fms moved stall %5.0fms first %5.0fms | redelivered %d / %d",
		r.Round, r.Contender, st.Protocol, st.SteadyGapMs,
		st.Join.Moved, st.Join.UnmovedGapMs, st.Join.MovedStallMs, st.Join.MovedFirstMs,
		st.Leave.Moved, st.Leave.UnmovedGapMs, st.Leave.MovedStallMs, st.Leave.MovedFirstMs, st.Join.Redelivered, st.Leave.Redelivered)
}

// rebalanceTable writes the rebalance table: medians [min-max] over the
// rounds of each per-round figure.
func (b *bench) rebalanceTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	rate := 0
	for _, r := range b.results {
		if r.Mode == "rebalance" {
			rate = r.Rate
			break
		}
	}
	w("### rebalance: member B joins, then leaves, member A's group; %d msg/s, 100 B, %d partitions, median [min-max] of %d round(s)\n\n",
		rate, b.o.partitions, b.roundsOf("rebalance"))
	w("| contender | protocol | moved join / leave | steady max gap ms | join: unmoved max gap ms | join: moved stall ms | join: moved first after B start ms | leave: unmoved max gap ms | leave: moved stall ms | leave: moved first after B stop ms | redelivered join / leave |\n")
	w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range b.contendersOf("rebalance") {
		var rs []result
		for _, r := range b.results {
			if r.Mode == "rebalance" && r.Contender == c && r.Err == "" && r.Rebalance != nil {
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			continue
		}
		cell := func(f func(*rebalanceStats) float64) string {
			var v []float64
			for _, r := range rs {
				if x := f(r.Rebalance); x >= 0 {
					v = append(v, x)
				}
			}
			if len(v) == 0 {
				return "-"
			}
			s := statOf(v)
			if s.lo == s.hi {
				return fmt.Sprintf("%.0f", s.med)
			}
			return fmt.Sprintf("%.0f [%.0f-%.0f]", s.med, s.lo, s.hi)
		}
		moved := func(f func(*rebalanceStats) int) string {
			var v []float64
			for _, r := range rs {
				v = append(v, float64(f(r.Rebalance)))
			}
			return fmt.Sprintf("%.0f", statOf(v).med)
		}
		w("| `%s` | %s | %s / %s | %s | %s | %s | %s | %s | %s | %s | %s / %s |\n", c, rs[0].Rebalance.Protocol,
			moved(func(s *rebalanceStats) int { return len(s.Join.Moved) }),
			moved(func(s *rebalanceStats) int { return len(s.Leave.Moved) }),
			cell(func(s *rebalanceStats) float64 { return s.SteadyGapMs }),
			cell(func(s *rebalanceStats) float64 { return s.Join.UnmovedGapMs }),
			cell(func(s *rebalanceStats) float64 { return s.Join.MovedStallMs }),
			cell(func(s *rebalanceStats) float64 { return s.Join.MovedFirstMs }),
			cell(func(s *rebalanceStats) float64 { return s.Leave.UnmovedGapMs }),
			cell(func(s *rebalanceStats) float64 { return s.Leave.MovedStallMs }),
			cell(func(s *rebalanceStats) float64 { return s.Leave.MovedFirstMs }),
			cell(func(s *rebalanceStats) float64 { return float64(s.Join.Redelivered) }),
			cell(func(s *rebalanceStats) float64 { return float64(s.Leave.Redelivered) }))
	}
	w("\n")
	md.WriteString(rebalanceNote)
	if f := b.failures("rebalance"); len(f) > 0 {
		w("Failures (rebalance):\n\n%s\n\n", strings.Join(f, "\n"))
	}
}
