package main

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
)

// The cold suite (-suites cold): time for 3 members to reach a stable,
// balanced assignment from cold. In one child process, with the rebalance
// suite's steady produce on a fresh topic, -cold-members members of a fresh
// group start at once (each in its own goroutine, as the drain suite's
// ?members=N). Stable, observed from the deliveries alone (as in the
// rebalance suite): every partition delivered in the last 500ms, each by one
// member (its owner: the last deliverer), every member owning partitions,
// the owners' counts within one of each other (balanced), and no owner
// change for 2s. Time to stable is from the members' start to the last
// owner change before that: when the last partition first flowed from its
// final owner. Contenders: those of the rebalance suite
// (-rebalance-contenders).

// coldStats is the result of one cold run; times in ms since the start.
type coldStats struct {
	Protocol    string      `json:"protocol"`
	Members     int         `json:"members"`
	AllFlowMs   float64     `json:"all_flow_ms"`   // every partition delivered once
	StableMs    float64     `json:"stable_ms"`     // last owner change before stable
	ObservedMs  float64     `json:"observed_ms"`   // stable observed (2s quiet)
	OwnerMoves  int         `json:"owner_changes"` // owner changes after a partition's first delivery
	Redelivered int64       `json:"redelivered"`
	Owned       []int       `json:"owned"` // partitions per member at the end
	Hooks       []hookEvent `json:"hooks,omitempty"`
}

// balanced reports whether every partition delivered within the last
// 500ms, every one of members owns partitions, the counts are within one,
// and owners unchanged for quiet.
func (r *recorder) balanced(quiet time.Duration, members int) (bool, []int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now().UnixNano()
	if now-r.changedAt < int64(quiet) {
		return false, nil
	}
	owned := make([]int, members)
	for p := range r.last {
		o := int(r.owner[p])
		if o < 0 || o >= members || now-r.last[p] > int64(500*time.Millisecond) {
			return false, nil
		}
		owned[o]++
	}
	if slices.Min(owned) == 0 || slices.Max(owned)-slices.Min(owned) > 1 {
		return false, nil
	}
	return true, owned
}

func coldChild(o options) error {
	s, err := parseSpec(o.contender)
	if err != nil {
		return err
	}
	start, ok := memberFor(s)
	if !ok {
		return fmt.Errorf("contender %q cannot run as a group member", o.contender)
	}
	if len(o.latRates) != 1 {
		return fmt.Errorf("cold mode takes one -rate, not %q", o.rates)
	}
	brokers := strings.Split(o.brokers, ",")
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	res := result{Contender: o.contender, Mode: "cold", Rate: o.latRates[0]}
	st, err := coldRun(ctx, s, start, brokers, o.topic, o.latRates[0], o.coldMembers)
	res.Cold = st
	if err != nil {
		res.Err = err.Error()
	}
	res.PeakRSS = vmHWM()
	b, _ := json.Marshal(res)
	fmt.Printf("RESULT %s\n", b)
	return nil
}

func coldRun(ctx context.Context, s spec, start startMember, brokers []string, topic string, rate, members int) (*coldStats, error) {
	parts, err := kafka.LookupPartitions(ctx, "tcp", brokers[0], topic)
	if err != nil {
		return nil, err
	}
	np := len(parts)
	stopProduce, err := produceSteady(ctx, brokers, topic, rate)
	if err != nil {
		return nil, err
	}
	defer stopProduce()
	time.Sleep(500 * time.Millisecond) // the produce under way before the members start

	t0 := time.Now()
	rec := newRecorder(np, t0)
	st := &coldStats{Protocol: protocolOf(s), Members: members, AllFlowMs: -1}
	g := group()
	stops := make([]memberStop, members)
	defer func() {
		for _, stop := range stops {
			if stop != nil {
				_ = stop()
			}
		}
	}()
	for i := range members {
		if stops[i], err = start(ctx, brokers, topic, g, i, rec.recv, rec.hook); err != nil {
			return st, fmt.Errorf("start member %d: %w", i, err)
		}
	}
	deadline := t0.Add(90 * time.Second)
	for {
		ok, owned := rec.balanced(2*time.Second, members)
		if ok {
			st.Owned = owned
			break
		}
		if time.Now().After(deadline) {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			return st, fmt.Errorf("not stable after 90s: owners %v", rec.owner)
		}
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	st.ObservedMs = ms(time.Since(t0).Nanoseconds())
	rec.mu.Lock()
	st.StableMs = ms(rec.changedAt - t0.UnixNano())
	first := make([]int8, np)
	for i := range first {
		first[i] = -1
	}
	seen := 0
	for _, d := range rec.ds {
		switch {
		case first[d.part] < 0:
			first[d.part] = d.member
			if seen++; seen == np {
				st.AllFlowMs = ms(d.t - t0.UnixNano())
			}
		case first[d.part] != d.member:
			st.OwnerMoves++
			first[d.part] = d.member
		}
	}
	st.Redelivered = rec.dd.dups.Load()
	st.Hooks = slices.Clone(rec.hooks)
	rec.mu.Unlock()
	return st, nil
}

// coldSuite runs each rebalance contender -rounds times in the cold mode,
// on a fresh topic each time, alternating the order between rounds.
func (b *bench) coldSuite() error {
	contenders := strings.Fields(b.o.rebalance)
	for round := range b.o.rounds {
		order := contenders
		if round%2 == 1 {
			order = reversed(contenders)
		}
		for _, c := range order {
			topic := kafkatest.UniqueName("bench-cold")
			if err := b.cluster.CreateTopic(context.Background(), topic, b.o.partitions); err != nil {
				return err
			}
			b.runChild("cold", c, "cold", topic, 0, 100, b.o.rebalRate, round, "-cold-members", fmt.Sprint(b.o.coldMembers))
			b.deleteTopic(topic)
		}
	}
	return nil
}

// coldLine is the log line of one cold run.
func coldLine(r result) string {
	st := r.Cold
	if st == nil {
		return fmt.Sprintf("cold r%d %-50s", r.Round, r.Contender)
	}
	return fmt.Sprintf("cold r%d %-50s %-18s %d members: all flowing %6.0fms stable %6.0fms (observed %6.0fms) owner changes %d owned %v redelivered %d",
		r.Round, r.Contender, st.Protocol, st.Members, st.AllFlowMs, st.StableMs, st.ObservedMs, st.OwnerMoves, st.Owned, st.Redelivered)
}

// coldTable writes the cold table: medians [min-max] over the rounds.
func (b *bench) coldTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	w("### cold: %d members start at once; %d msg/s, 100 B, %d partitions, median [min-max] of %d round(s)\n\n",
		b.o.coldMembers, b.o.rebalRate, b.o.partitions, b.roundsOf("cold"))
	w("| contender | protocol | every partition flowing ms | stable (balanced) ms | owner changes | redelivered |\n")
	w("|---|---|---:|---:|---:|---:|\n")
	for _, c := range b.contendersOf("cold") {
		var rs []result
		for _, r := range b.results {
			if r.Mode == "cold" && r.Contender == c && r.Err == "" && r.Cold != nil {
				rs = append(rs, r)
			}
		}
		if len(rs) == 0 {
			continue
		}
		cell := func(f func(*coldStats) float64) string {
			var v []float64
			for _, r := range rs {
				if x := f(r.Cold); x >= 0 {
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
		w("| `%s` | %s | %s | %s | %s | %s |\n", c, rs[0].Cold.Protocol,
			cell(func(s *coldStats) float64 { return s.AllFlowMs }),
			cell(func(s *coldStats) float64 { return s.StableMs }),
			cell(func(s *coldStats) float64 { return float64(s.OwnerMoves) }),
			cell(func(s *coldStats) float64 { return float64(s.Redelivered) }))
	}
	w("\nCold table: per round, on a fresh topic under the steady produce, the members of a fresh group start at once " +
		"in one child process. *every partition flowing*: from the start to the first delivery of the last partition " +
		"to deliver. *stable*: from the start to the last owner change (a partition's first delivery by a member " +
		"other than its last deliverer) before the state was observed stable: every partition delivering, each " +
		"member owning partitions, counts within one, owners unchanged for 2s. *owner changes*: partitions handed " +
		"from one member to another on the way.\n\n")
	if f := b.failures("cold"); len(f) > 0 {
		w("Failures (cold):\n\n%s\n\n", strings.Join(f, "\n"))
	}
}
