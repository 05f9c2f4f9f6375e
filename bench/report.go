package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func numCPU() int { return runtime.GOMAXPROCS(0) }

// stat is the median and range of one metric over rounds.
type stat struct{ med, lo, hi float64 }

func statOf(v []float64) stat {
	if len(v) == 0 {
		return stat{}
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{med: med, lo: s[0], hi: s[len(s)-1]}
}

func (b *bench) pick(suite string, size int, contender string, handlers int) []result {
	var out []result
	for _, r := range b.results {
		if r.Mode == suite && r.Size == size && r.Contender == contender && r.Handlers == handlers && r.Err == "" {
			out = append(out, r)
		}
	}
	return out
}

func field(rs []result, f func(result) float64) stat {
	v := make([]float64, len(rs))
	for i, r := range rs {
		v[i] = f(r)
	}
	return statOf(v)
}

func mib(n int64) float64 { return float64(n) / (1 << 20) }

func (b *bench) failures(suite string) []string {
	var out []string
	for _, r := range b.results {
		if r.Mode == suite && r.Err != "" {
			at := fmt.Sprintf("size %d", r.Size)
			if r.Rate > 0 {
				at = fmt.Sprintf("%d msg/s", r.Rate)
			}
			out = append(out, fmt.Sprintf("- `%s` (%s, round %d): %s", r.Contender, at, r.Round, r.Err))
		}
	}
	return out
}

func (b *bench) has(suite string) bool {
	return slices.ContainsFunc(b.results, func(r result) bool { return r.Mode == suite })
}

// report writes the Markdown tables and the charts of this run.
func (b *bench) report() error {
	var md strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&md, format, args...) }
	host, _ := os.Hostname()
	w("## Broker: %s (%s)\n\n", b.o.label, b.brokers)
	w("Run %s on %s, GOMAXPROCS %d, %s. Command: `%s`\n\n", time.Now().Format("2006-01-02 15:04 MST"), host, numCPU(), runtime.Version(), strings.Join(os.Args, " "))
	tag := b.o.label + "-" + strings.ReplaceAll(b.o.suites, ",", "_")

	if b.has("drain") || b.has("pitfall") || b.has("mem") || b.has("profile") {
		for _, suite := range []string{"drain", "pitfall", "mem", "profile"} {
			if !b.has(suite) {
				continue
			}
			contenders := b.contendersOf(suite)
			for _, size := range b.sizesOf(suite) {
				n := 0
				if rs := b.pickAny(suite, size); len(rs) > 0 {
					n = int(rs[0].N)
				}
				w("### %s: %d messages x %d B, %d partitions, median of %d round(s) [min-max]\n\n", suite, n, size, b.o.partitions, b.roundsOf(suite))
				w("| contender | msg/s | MB/s | total s | startup s | msg/s after 1st msg | peak RSS MiB | peak heap MiB |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
				for _, c := range contenders {
					rs := b.pick(suite, size, c, 0)
					if len(rs) == 0 {
						continue
					}
					t := field(rs, func(r result) float64 { return r.MsgsPerS })
					name := "`" + c + "`"
					if rs[0].Partial {
						name += fmt.Sprintf(" (stopped after %d msgs, 1 min)", rs[0].N)
					}
					w("| %s | %.0f [%.0f-%.0f] | %.1f | %.2f | %.2f | %.0f | %.0f | %.0f |\n", name, t.med, t.lo, t.hi,
						field(rs, func(r result) float64 { return r.MBPerS }).med,
						field(rs, func(r result) float64 { return r.Total }).med,
						field(rs, func(r result) float64 { return r.Startup }).med,
						field(rs, func(r result) float64 { return r.Steady }).med,
						field(rs, func(r result) float64 { return mib(r.PeakRSS) }).med,
						field(rs, func(r result) float64 { return mib(int64(r.PeakHeap)) }).med)
				}
				w("\n")
				if dups := b.duplicatesOf(suite, size); dups != "" {
					w("Redelivered after a rebalance (median over rounds; not counted in the messages): %s\n\n", dups)
				}
				if suite == "drain" {
					b.ratios(&md, size)
					if err := b.drainChart(size, tag); err != nil {
						return err
					}
				}
			}
			if f := b.failures(suite); len(f) > 0 {
				w("Failures (%s):\n\n%s\n\n", suite, strings.Join(f, "\n"))
			}
		}
		if b.has("drain") {
			if err := b.workersChart(tag); err != nil {
				return err
			}
		}
	}
	if b.has("latency") {
		for i, rate := range b.ratesOf() {
			b.latencyTable(&md, rate)
			if err := b.latencyChart(tag, rate, i == 0); err != nil {
				return err
			}
		}
		w("Latency tables: alloc B/msg, allocs/msg and GCs (medians) are of the whole child process from the first " +
			"measured produce to the last receive, divided by the messages received. The franz-go producer that " +
			"writes the messages runs in the same process, so its share is in every row alike: the differences " +
			"between rows are the consumers', the absolute figures are not any consumer's alone. There is no " +
			"consume-nothing baseline to subtract (the latency protocol needs a receiver).\n\n")
		if f := b.failures("latency"); len(f) > 0 {
			w("Failures (latency):\n\n%s\n\n", strings.Join(f, "\n"))
		}
	}
	if b.has("rebalance") {
		b.rebalanceTable(&md)
	}
	if b.has("cold") {
		b.coldTable(&md)
	}
	b.processReport(&md)
	b.shareReport(&md)
	if b.has("io") {
		w("### io: each message waits %s; handlers = goroutines doing the wait (1 = the caller itself)\n\n", b.o.ioSleep)
		w("| contender | handlers | messages | msg/s |\n|---|---:|---:|---:|\n")
		for _, r := range b.results {
			if r.Mode == "io" {
				h := r.Handlers
				if h == 0 {
					h = 1
				}
				w("| `%s` | %d | %d | %.0f |\n", r.Contender, h, r.N, r.MsgsPerS)
			}
		}
		w("\n")
		if err := b.ioChart(tag); err != nil {
			return err
		}
	}
	path := filepath.Join(b.o.out, tag+".md")
	if err := os.WriteFile(path, []byte(md.String()), 0o644); err != nil {
		return err
	}
	fmt.Print(md.String())
	logf("wrote %s", path)
	return nil
}

// latencyRef is the contender the latency tables compare p99 with.
const latencyRef = "kafkago-partition"

// latencyTable writes the latency table of rate: medians [min-max] over
// rounds, the ratio of median p99s to latencyRef's, and allocation per
// message.
func (b *bench) latencyTable(md *strings.Builder, rate int) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	p99 := func(r result) float64 { return r.P99 }
	ref := field(b.pickLatency(rate, latencyRef), p99).med
	d := b.o.latDur // of this run; of the results (rate x duration messages) if they say
	for _, r := range b.results {
		if r.Mode == "latency" && r.Rate == rate && r.Err == "" && !r.Partial && r.N > 0 {
			d = time.Duration(float64(r.N) / float64(rate) * float64(time.Second)).Round(time.Millisecond)
			break
		}
	}
	w("### latency: %d msg/s for %s, 100 B, %d partitions, median [min-max] of %d round(s)\n\n", rate, d, b.o.partitions, b.roundsOf("latency"))
	w("| contender | p50 ms | p99 ms | max ms | p99 / `%s` | alloc B/msg | allocs/msg | GCs | received |\n", latencyRef)
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, c := range b.contendersOf("latency") {
		rs := b.pickLatency(rate, c)
		if len(rs) == 0 {
			continue
		}
		ms := func(f func(result) float64) string {
			s := field(rs, f)
			if len(rs) == 1 {
				return fmt.Sprintf("%.2f", s.med)
			}
			return fmt.Sprintf("%.2f [%.2f-%.2f]", s.med, s.lo, s.hi)
		}
		ratio := "-"
		if ref > 0 {
			ratio = fmt.Sprintf("%.2f", field(rs, p99).med/ref)
		}
		w("| `%s` | %s | %s | %s | %s | %.0f | %.2f | %.0f | %.0f |\n", c,
			ms(func(r result) float64 { return r.P50 }), ms(p99), ms(func(r result) float64 { return r.Max }), ratio,
			field(rs, func(r result) float64 { b, _ := r.allocPerMsg(); return b }).med,
			field(rs, func(r result) float64 { _, n := r.allocPerMsg(); return n }).med,
			field(rs, func(r result) float64 { return float64(r.NumGC) }).med,
			field(rs, func(r result) float64 { return float64(r.N) }).med)
	}
	w("\n")
}

// pickLatency returns the latency results of contender at rate, without
// the failed ones.
func (b *bench) pickLatency(rate int, contender string) []result {
	var out []result
	for _, r := range b.pick("latency", 100, contender, 0) {
		if r.Rate == rate {
			out = append(out, r)
		}
	}
	return out
}

// ratesOf returns the produce rates of the latency results, in order.
func (b *bench) ratesOf() []int {
	return distinct(b.results, "latency", func(r result) int { return r.Rate })
}

func (b *bench) pickAny(suite string, size int) []result {
	var out []result
	for _, r := range b.results {
		if r.Mode == suite && r.Size == size && r.Err == "" {
			out = append(out, r)
		}
	}
	return out
}

func (b *bench) contendersOf(suite string) []string {
	return distinct(b.results, suite, func(r result) string { return r.Contender })
}

func (b *bench) sizesOf(suite string) []int {
	return distinct(b.results, suite, func(r result) int { return r.Size })
}

// distinct returns key of the results of suite, each once, in order.
func distinct[T comparable](results []result, suite string, key func(result) T) []T {
	var out []T
	for _, r := range results {
		if k := key(r); r.Mode == suite && !slices.Contains(out, k) {
			out = append(out, k)
		}
	}
	return out
}

func (b *bench) roundsOf(suite string) int {
	n := 0
	for _, r := range b.results {
		if r.Mode == suite {
			n = max(n, r.Round+1)
		}
	}
	return n
}

// ratios writes ours / contender for the medians of the drain suite.
func (b *bench) ratios(md *strings.Builder, size int) {
	med := func(c string) float64 {
		return field(b.pick("drain", size, c, 0), func(r result) float64 { return r.MsgsPerS }).med
	}
	theirs := []string{"kafkago-group?maxwait=250ms&queue=1000&commit=1s", "kafkago-group?once=1", "kafkago-partition", "franz", "franz?members=3"}
	fmt.Fprintf(md, "Ratios of medians (msg/s), ours / theirs, %d B:\n\n| ours | %s |\n|---|%s\n", size,
		strings.Join(mapStr(theirs, func(s string) string { return "`" + s + "`" }), " | "), strings.Repeat("---:|", len(theirs)))
	for _, ours := range []string{"mc-get?w=1", "mc-get?w=8", "mc-iter?w=1", "mc-iter?w=8", "mc-group?members=1", "mc-group?members=3"} {
		o := med(ours)
		if o == 0 {
			continue
		}
		fmt.Fprintf(md, "| `%s` |", ours)
		for _, t := range theirs {
			if m := med(t); m > 0 {
				fmt.Fprintf(md, " %.2f |", o/m)
			} else {
				fmt.Fprint(md, " - |")
			}
		}
		fmt.Fprintln(md)
	}
	fmt.Fprintln(md)
}

// duplicatesOf lists the contenders of suite at size that received
// messages twice, with the median count over rounds.
func (b *bench) duplicatesOf(suite string, size int) string {
	var out []string
	for _, c := range b.contendersOf(suite) {
		rs := b.pick(suite, size, c, 0)
		if d := field(rs, func(r result) float64 { return float64(r.Duplicates) }); d.hi > 0 {
			out = append(out, fmt.Sprintf("`%s` %.0f [%.0f-%.0f]", c, d.med, d.lo, d.hi))
		}
	}
	return strings.Join(out, ", ")
}

func mapStr(s []string, f func(string) string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// shortName makes a contender's name fit under a bar.
func shortName(c string) string {
	r := strings.NewReplacer("kafkago-group?maxwait=250ms&queue=1000&commit=1s", "kgo-grp tuned",
		"kafkago-group?once=1", "kgo-grp default", "kafkago-group", "kgo-grp default", "kafkago-partition", "kgo-per-part", "&block=full", " full",
		"mc-group?members=", "group m", "franz?members=", "franz m",
		"mc-get?w=", "get w", "mc-iter?w=", "iter w")
	return r.Replace(c)
}

func save(p *plot.Plot, w, h vg.Length, path string) error {
	if err := p.Save(w, h, path); err != nil {
		return err
	}
	logf("wrote %s", path)
	return nil
}

func (b *bench) drainChart(size int, tag string) error {
	var vals plotter.Values
	var names []string
	var errs plotter.YErrors
	for _, c := range b.contendersOf("drain") {
		rs := b.pick("drain", size, c, 0)
		if len(rs) == 0 {
			continue
		}
		s := field(rs, func(r result) float64 { return r.MsgsPerS / 1000 })
		vals = append(vals, s.med)
		errs = append(errs, struct{ Low, High float64 }{s.med - s.lo, s.hi - s.med})
		names = append(names, shortName(c))
	}
	if len(vals) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Drain %s x %d B, %d partitions (%s): median k msg/s, bars min-max", human(b.o.n), size, b.o.partitions, b.o.label)
	p.Y.Label.Text = "k msg/s"
	bars, err := plotter.NewBarChart(vals, vg.Points(22))
	if err != nil {
		return err
	}
	bars.Color = plotutil.Color(0)
	p.Add(bars)
	type yerr struct {
		plotter.XYs
		plotter.YErrors
	}
	xys := make(plotter.XYs, len(vals))
	for i := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: vals[i]}
	}
	eb, err := plotter.NewYErrorBars(yerr{xys, errs})
	if err != nil {
		return err
	}
	p.Add(eb)
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -1
	p.X.Tick.Label.YAlign = -0.5
	p.Add(plotter.NewGrid())
	return save(p, 9*vg.Inch, 5*vg.Inch, filepath.Join(b.o.docs, fmt.Sprintf("bench-%s-drain-%dB.png", tag, size)))
}

func human(n int) string {
	switch {
	case n >= 1e6 && n%1e6 == 0:
		return fmt.Sprintf("%dM", n/1e6)
	case n >= 1e3 && n%1e3 == 0:
		return fmt.Sprintf("%dk", n/1e3)
	}
	return fmt.Sprint(n)
}

// workersChart: MultiConsumer drain throughput against workers.
func (b *bench) workersChart(tag string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("MultiConsumer drain throughput vs workers (%s)", b.o.label)
	p.X.Label.Text = "workers"
	p.Y.Label.Text = "k msg/s (median)"
	i := 0
	for _, size := range b.sizesOf("drain") {
		for _, kind := range []string{"mc-get", "mc-iter"} {
			var xys plotter.XYs
			for _, w := range []int{1, 2, 4, 8} {
				rs := b.pick("drain", size, fmt.Sprintf("%s?w=%d", kind, w), 0)
				if len(rs) > 0 {
					xys = append(xys, plotter.XY{X: float64(w), Y: field(rs, func(r result) float64 { return r.MsgsPerS / 1000 }).med})
				}
			}
			if len(xys) == 0 {
				continue
			}
			if err := addLine(p, xys, i, fmt.Sprintf("%s %d B", kind, size)); err != nil {
				return err
			}
			i++
		}
	}
	if i == 0 {
		return nil
	}
	p.Legend.Top = true
	p.Y.Min = 0
	p.Add(plotter.NewGrid())
	return save(p, 7*vg.Inch, 4.5*vg.Inch, filepath.Join(b.o.docs, fmt.Sprintf("bench-%s-workers.png", tag)))
}

// latencyChart charts the median p50 and p99 of each contender at rate, in
// bench-TAG-latency.png for the first rate (the name the docs link to) and
// bench-TAG-latency-RATE.png for the others.
func (b *bench) latencyChart(tag string, rate int, first bool) error {
	var p50, p99 plotter.Values
	var names []string
	for _, c := range b.contendersOf("latency") {
		rs := b.pickLatency(rate, c)
		if len(rs) == 0 {
			continue
		}
		s50 := field(rs, func(r result) float64 { return r.P50 })
		s99 := field(rs, func(r result) float64 { return r.P99 })
		if s99.med > 100 {
			continue // GetMessages with Block(true) waits for 1000 messages: off the scale
		}
		p50 = append(p50, s50.med)
		p99 = append(p99, s99.med)
		names = append(names, shortName(c))
	}
	if len(names) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("End-to-end latency at %d msg/s, 100 B (%s), median of %d round(s)", rate, b.o.label, b.roundsOf("latency"))
	p.Y.Label.Text = "ms"
	w := vg.Points(14)
	for i, v := range []plotter.Values{p50, p99} {
		bars, err := plotter.NewBarChart(v, w)
		if err != nil {
			return err
		}
		bars.Color = plotutil.Color(i)
		bars.Offset = vg.Length(2*i-1) * w / 2
		p.Add(bars)
		p.Legend.Add([]string{"p50", "p99"}[i], bars)
	}
	p.Legend.Top = true
	p.NominalX(names...)
	p.X.Tick.Label.Rotation = 0.6
	p.X.Tick.Label.XAlign = -1
	p.X.Tick.Label.YAlign = -0.5
	p.Add(plotter.NewGrid())
	name := fmt.Sprintf("bench-%s-latency.png", tag)
	if !first {
		name = fmt.Sprintf("bench-%s-latency-%d.png", tag, rate)
	}
	return save(p, 8*vg.Inch, 4.5*vg.Inch, filepath.Join(b.o.docs, name))
}

func (b *bench) ioChart(tag string) error {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("Throughput with a %s wait per message (%s)", b.o.ioSleep, b.o.label)
	p.X.Label.Text = "MultiConsumer workers"
	p.Y.Label.Text = "msg/s"
	i := 0
	for _, h := range ints(b.o.ioHandlers) {
		arg := h
		if h == 1 {
			arg = 0
		}
		var xys plotter.XYs
		var ref float64
		for _, r := range b.results {
			if r.Mode != "io" || r.Handlers != arg || r.Err != "" {
				continue
			}
			var w int
			if _, err := fmt.Sscanf(r.Contender, "mc-get?w=%d", &w); err == nil {
				xys = append(xys, plotter.XY{X: float64(w), Y: r.MsgsPerS})
			} else if r.Contender == "kafkago-partition" {
				ref = r.MsgsPerS
			}
		}
		if len(xys) == 0 {
			continue
		}
		if err := addLine(p, xys, i, fmt.Sprintf("MultiConsumer, %d handler goroutine(s)", h)); err != nil {
			return err
		}
		if ref > 0 {
			rl, err := plotter.NewLine(plotter.XYs{{X: 1, Y: ref}, {X: 8, Y: ref}})
			if err != nil {
				return err
			}
			rl.Color = plotutil.Color(i)
			rl.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
			p.Add(rl)
			p.Legend.Add(fmt.Sprintf("kafka-go Reader per partition, %s", map[bool]string{true: "each handles its own", false: fmt.Sprintf("%d shared handlers", h)}[h == 1]), rl)
		}
		i++
	}
	p.Y.Scale = plot.LogScale{}
	p.Y.Tick.Marker = plot.LogTicks{}
	p.Y.Min, p.Y.Max = 300, 300000
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	return save(p, 7*vg.Inch, 4.5*vg.Inch, filepath.Join(b.o.docs, fmt.Sprintf("bench-%s-io.png", tag)))
}

// addLine adds xys to p as the i-th line with points, in the i-th colour
// and shape, with a legend entry.
func addLine(p *plot.Plot, xys plotter.XYs, i int, label string) error {
	l, pts, err := plotter.NewLinePoints(xys)
	if err != nil {
		return err
	}
	l.Color, pts.Color = plotutil.Color(i), plotutil.Color(i)
	pts.Shape = plotutil.Shape(i)
	p.Add(l, pts)
	p.Legend.Add(label, l, pts)
	return nil
}
