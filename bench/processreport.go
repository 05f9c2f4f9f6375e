package main

import (
	"fmt"
	"strings"
)

// The process suite's tables (process.go).

// processReport writes the tables of the parts of the process suite that
// have results.
func (b *bench) processReport(md *strings.Builder) {
	if b.has("process-pc") {
		b.pcTable(md)
	}
	if b.has("process-io") {
		b.processIOTable(md)
	}
	if b.has("process-cpu") {
		b.processCPUTable(md)
	}
	for _, suite := range []string{"process-pc", "process-io", "process-cpu", "process-profile"} {
		if f := b.failures(suite); len(f) > 0 {
			fmt.Fprintf(md, "Failures (%s):\n\n%s\n\n", suite, strings.Join(f, "\n"))
		}
	}
}

// medRange formats a stat as "med [lo-hi]" with format f, or "med" alone
// for one round.
func medRange(s stat, rounds int, f string) string {
	if rounds <= 1 {
		return fmt.Sprintf(f, s.med)
	}
	return fmt.Sprintf(f+" ["+f+"-"+f+"]", s.med, s.lo, s.hi)
}

// pcTable: one row per ordering, against parallel-consumer's published
// figures.
func (b *bench) pcTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	var first *procStats
	for _, r := range b.results {
		if r.Mode == "process-pc" && r.Proc != nil && r.Err == "" {
			first = r.Proc
			break
		}
	}
	if first == nil {
		return
	}
	w("### process, pc: parallel-consumer's table, %d messages, 1 partition, Concurrency %d, median [min-max] of %d round(s)\n\n",
		b.pcNOf(), first.Concurrency, b.roundsOf("process-pc"))
	w("Every row sleeps the same %.3f s in total (the sleeps written in the values; %.3f s measured around time.Sleep, "+
		"median). \"first call\": the first handler call to the last completion; \"Process start\": the Process call to it. "+
		"ideal = max(total sleep / %d, the busiest lane's sleep); \"meas.\" uses the handlers' measured durations "+
		"(time.Sleep's overshoot included). A baseline row runs the same sleeps from memory, no Kafka nor Process: each lane "+
		"a goroutine, a semaphore of Concurrency (the messages are fetched before its clock starts).\n\n",
		first.SleepSum, field(b.pcResults(""), func(r result) float64 { return r.Proc.ActualSum }).med, first.Concurrency)
	w("| row | first call s | Process start s | ideal s | ideal / ours | ideal meas. / ours | parallel-consumer, published s | theirs / ours | ordering violations | max in flight | child CPU s |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range b.contendersOf("process-pc") {
		rs := b.pcResults(c)
		if len(rs) == 0 {
			continue
		}
		p := rs[0].Proc
		ff := field(rs, func(r result) float64 { return r.Proc.FromFirst })
		fs := field(rs, func(r result) float64 { return r.Proc.FromStart })
		ideal := p.Ideal
		idealAct := field(rs, func(r result) float64 { return r.Proc.IdealActual }).med
		viol := field(rs, func(r result) float64 { return float64(r.Proc.Violations) })
		infl := field(rs, func(r result) float64 { return float64(r.Proc.MaxInFlight) })
		name := pcRowName(p)
		theirs, vs := "-", "-"
		if strings.HasPrefix(c, "inmem") {
			name = "baseline (in memory): " + name
		} else if t, ok := publishedPC[name]; ok {
			theirs = fmt.Sprintf("%.3f", t)
			vs = fmt.Sprintf("%.2f", t/ff.med)
		}
		w("| %s | %s | %s | %.3f | **%.2f** | %.2f | %s | %s | %.0f | %.0f | %.2f |\n", name,
			medRange(ff, len(rs), "%.3f"), medRange(fs, len(rs), "%.3f"), ideal, ideal/ff.med, idealAct/ff.med,
			theirs, vs, viol.hi, infl.med, field(rs, func(r result) float64 { return r.CPU }).med)
	}
	w("\n")
}

// pcResults returns the pc part's results of contender ("" for all),
// without the failed ones.
func (b *bench) pcResults(contender string) []result {
	var out []result
	for _, r := range b.results {
		if r.Mode == "process-pc" && r.Proc != nil && r.Err == "" && !r.Partial && (contender == "" || r.Contender == contender) {
			out = append(out, r)
		}
	}
	return out
}

func (b *bench) pcNOf() int64 {
	for _, r := range b.pcResults("") {
		return r.N
	}
	return 0
}

// ioConc returns the concurrency of an io result: Process's c=, the pool's
// handlers (0: the caller alone, 1), the partitions of kafkago-partition.
func ioConc(r result) int {
	s, _ := parseSpec(r.Contender)
	switch s.name {
	case "mc-process":
		return s.int("c", 16)
	case "kafkago-partition":
		return 4
	}
	return max(1, r.Handlers)
}

// processIOTable: throughput against Concurrency / wait.
func (b *bench) processIOTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	rounds := b.roundsOf("process-io")
	w("### process, io: each message waits %s (time.Sleep), 4 partitions, 100 B, median [min-max] of %d round(s)\n\n", b.o.ioSleep, rounds)
	w("msg/s is from the first completion to the last (\"from New\": from multiconsumer.New / the Readers' creation). " +
		"ideal = N / wait; \"meas.\" uses the mean measured duration of the waits of the run. " +
		"The pool is GetMessages(1000) feeding N goroutines over a channel of N (N = 1: the caller itself); " +
		"kafka-go: one Reader per partition, the handler inline (N = 4 partitions). " +
		"CPU us/msg: the child's CPU time (user + system, whole process, start to end) per message.\n\n")
	w("| N | contender | messages | msg/s | msg/s from New | ideal | msg/s / ideal | mean wait ms | msg/s / ideal meas. | / pool | CPU us/msg |\n")
	w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	type key struct {
		c        string
		handlers int
		conc     int
	}
	var order []key
	for _, r := range b.results {
		if r.Mode != "process-io" {
			continue
		}
		k := key{r.Contender, r.Handlers, ioConc(r)}
		if !containsKey(order, k) {
			order = append(order, k)
		}
	}
	// Rows by concurrency, in the order they ran.
	var concs []int
	for _, k := range order {
		if !contains(concs, k.conc) {
			concs = append(concs, k.conc)
		}
	}
	pool := func(c int) float64 {
		h := c
		if c == 1 {
			h = 0
		}
		return field(b.pick("process-io", 100, "mc-get?w=1", h), func(r result) float64 { return r.Steady }).med
	}
	for _, c := range concs {
		for _, k := range order {
			if k.conc != c {
				continue
			}
			rs := b.pick("process-io", 100, k.c, k.handlers)
			if len(rs) == 0 {
				continue
			}
			st := field(rs, func(r result) float64 { return r.Steady })
			tot := field(rs, func(r result) float64 { return r.MsgsPerS })
			sm := field(rs, func(r result) float64 { return r.SleepMean }).med
			ideal := float64(c) / b.o.ioSleep.Seconds()
			idealM := 0.0
			if sm > 0 {
				idealM = float64(c) / sm
			}
			name := "`" + k.c + "`"
			if strings.HasPrefix(k.c, "mc-get") {
				name = fmt.Sprintf("pool: `%s` + %d goroutines", k.c, c)
				if k.handlers == 0 {
					name = fmt.Sprintf("`%s`, handled inline", k.c)
				}
			}
			vsPool := "-"
			if p := pool(c); p > 0 && !strings.HasPrefix(k.c, "mc-get") {
				vsPool = fmt.Sprintf("%.2f", st.med/p)
			}
			w("| %d | %s | %d | %s | %.0f | %.0f | **%.2f** | %.3f | %.2f | %s | %s |\n", c, name, rs[0].N,
				medRange(st, len(rs), "%.0f"), tot.med, ideal, st.med/ideal, sm*1e3, st.med/max(idealM, 1e-9), vsPool,
				cpuPerMsg(rs))
		}
	}
	w("\n")
}

// cpuPerMsg is the median of the child's CPU time per message, in us;
// "-" for results without it.
func cpuPerMsg(rs []result) string {
	s := field(rs, func(r result) float64 { return r.CPU / max(1, float64(r.N)) * 1e6 })
	if s.med == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", s.med)
}

func containsKey[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// processCPUTable: msg/s and ns/msg with a near-empty handler, against
// GetMessages.
func (b *bench) processCPUTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	rounds := b.roundsOf("process-cpu")
	var n int64
	for _, r := range b.results {
		if r.Mode == "process-cpu" && r.Err == "" {
			n = r.N
			break
		}
	}
	w("### process, cpu: %d messages x 100 B (keys: 1,000 per partition), 8 partitions, handler = maphash of the value, median [min-max] of %d round(s)\n\n", n, rounds)
	w("msg/s from the first message to the last; ns/msg = 1e9 / that (wall clock, both cores); \"from New\" includes connecting. " +
		"Ratios are of medians, to GetMessages. CPU, allocation and GCs are the whole child process's, start to end, per message.\n\n")
	w("| contender | msg/s | ns/msg | / GetMessages | msg/s from New | / GetMessages | CPU us/msg | alloc B/msg | allocs/msg | GCs | peak RSS MiB |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	ref := field(b.pick("process-cpu", 100, "mc-get?w=8", 0), func(r result) float64 { return r.Steady }).med
	refT := field(b.pick("process-cpu", 100, "mc-get?w=8", 0), func(r result) float64 { return r.MsgsPerS }).med
	for _, c := range b.contendersOf("process-cpu") {
		rs := b.pick("process-cpu", 100, c, 0)
		if len(rs) == 0 {
			continue
		}
		st := field(rs, func(r result) float64 { return r.Steady })
		tot := field(rs, func(r result) float64 { return r.MsgsPerS })
		w("| `%s` | %s | %.0f | %.2f | %.0f | %.2f | %s | %.0f | %.2f | %.0f | %.0f |\n", c, medRange(st, len(rs), "%.0f"), 1e9/st.med, st.med/ref,
			tot.med, tot.med/refT, cpuPerMsg(rs),
			field(rs, func(r result) float64 { b, _ := r.allocPerMsg(); return b }).med,
			field(rs, func(r result) float64 { _, n := r.allocPerMsg(); return n }).med,
			field(rs, func(r result) float64 { return float64(r.NumGC) }).med,
			field(rs, func(r result) float64 { return mib(r.PeakRSS) }).med)
	}
	w("\n")
}
