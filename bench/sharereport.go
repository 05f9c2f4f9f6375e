package main

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

// The share suite's tables (share.go).

// shareReport writes the tables of the share suite's parts that have
// results.
func (b *bench) shareReport(md *strings.Builder) {
	if b.has("share-drain") {
		b.shareDrainTable(md)
	}
	if b.has("share-process") {
		b.shareProcessTable(md)
	}
	for _, suite := range []string{"share-drain", "share-process"} {
		if f := b.failures(suite); len(f) > 0 {
			fmt.Fprintf(md, "Failures (%s):\n\n%s\n\n", suite, strings.Join(f, "\n"))
		}
	}
}

// loads lists the load averages of rs, in round order.
func loads(rs []result) string {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b result) int { return a.Round - b.Round })
	var out []string
	for _, r := range rs {
		out = append(out, strconv.FormatFloat(r.Load, 'f', 1, 64))
	}
	return strings.Join(out, ", ")
}

// dupsPerRound lists the records received twice of rs, in round order.
func dupsPerRound(rs []result) string {
	rs = slices.Clone(rs)
	slices.SortFunc(rs, func(a, b result) int { return a.Round - b.Round })
	var out []string
	for _, r := range rs {
		out = append(out, strconv.FormatInt(r.Duplicates, 10))
	}
	return strings.Join(out, ", ")
}

func (b *bench) shareDrainTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	contenders := b.contendersOf("share-drain")
	rounds := b.roundsOf("share-drain")
	for _, size := range b.sizesOf("share-drain") {
		n := 0
		if rs := b.pickAny("share-drain", size); len(rs) > 0 {
			n = int(rs[0].N)
		}
		w("### share drain: %d records x %d B, %d partitions, median of %d round(s) [min-max]\n\n", n, size, b.o.partitions, rounds)
		w("| contender | msg/s (New to last) | msg/s after the 1st | startup s | received twice (per round) | peak RSS MiB | CPU s | load (per round) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
		med := map[string]float64{}
		for _, c := range contenders {
			rs := b.pick("share-drain", size, c, 0)
			if len(rs) == 0 {
				continue
			}
			t := field(rs, func(r result) float64 { return r.MsgsPerS })
			med[c] = t.med
			dups := dupsPerRound(rs)
			if !strings.Contains(c, "share") && !strings.Contains(c, "members=") {
				dups = "not counted"
			}
			w("| `%s` | %s | %s | %.2f | %s | %.0f | %.1f | %s |\n", c, medRange(t, rounds, "%.0f"),
				medRange(field(rs, func(r result) float64 { return r.Steady }), rounds, "%.0f"),
				field(rs, func(r result) float64 { return r.Startup }).med, dups,
				field(rs, func(r result) float64 { return mib(r.PeakRSS) }).med,
				field(rs, func(r result) float64 { return r.CPU }).med, loads(rs))
		}
		w("\n")
		ours := ""
		for _, c := range contenders {
			if strings.HasPrefix(c, "mc-share") {
				ours = c
				break
			}
		}
		if ours != "" && med[ours] > 0 {
			var parts []string
			for _, c := range contenders {
				if c != ours && med[c] > 0 {
					parts = append(parts, fmt.Sprintf("`%s` **%.2fx**", c, med[ours]/med[c]))
				}
			}
			w("`%s` / (medians of msg/s): %s\n\n", ours, strings.Join(parts, ", "))
			if rs := b.pick("share-drain", size, ours, 0); len(rs) > 0 && rs[0].Share != nil && rs[0].Share.Stats != nil {
				var acq, acc, rel, rej []string
				for _, r := range rs {
					if r.Share == nil || r.Share.Stats == nil {
						continue
					}
					st := r.Share.Stats
					acq = append(acq, strconv.FormatInt(st.Acquired, 10))
					acc = append(acc, strconv.FormatInt(st.Accepted, 10))
					rel = append(rel, strconv.FormatInt(st.Released, 10))
					rej = append(rej, strconv.FormatInt(st.Rejected, 10))
				}
				w("`%s` Stats().Share per round: acquired %s; accepted %s; released %s; rejected %s\n\n",
					ours, strings.Join(acq, ", "), strings.Join(acc, ", "), strings.Join(rel, ", "), strings.Join(rej, ", "))
			}
		}
	}
}

// membersOf returns the members= of a share-process contender.
func membersOf(c string) int {
	_, q, _ := strings.Cut(c, "?")
	v, _ := url.ParseQuery(q)
	n, _ := strconv.Atoi(v.Get("members"))
	return n
}

func (b *bench) shareProcessTable(md *strings.Builder) {
	w := func(format string, args ...any) { fmt.Fprintf(md, format, args...) }
	contenders := b.contendersOf("share-process")
	rounds := b.roundsOf("share-process")
	var n int64
	var sleep float64
	for _, r := range b.results {
		if r.Mode == "share-process" && r.Share != nil {
			n, sleep = r.N+r.Share.Missing, r.Share.Sleep
			break
		}
	}
	w("### share process: %d records on 1 partition, handler %.0f ms, median of %d round(s) [min-max]\n\n", n, sleep*1000, rounds)
	w("Records/s from the first handler call to the last completion, across the members (one process each).\n\n")
	w("| member, members | records/s | s | x 1 member | ideal (members x c / sleep) | handled twice (per round) | missing | handled per member (round 1) | load (per round) |\n|---|---:|---:|---:|---:|---:|---:|---|---:|\n")
	// The ratio is to the 1-member run of the same member spec.
	base := map[string]float64{}
	for _, c := range contenders {
		if membersOf(c) == 1 {
			rs := b.pick("share-process", 100, c, 0)
			base[strings.TrimSuffix(c, "&members=1")] = field(rs, func(r result) float64 { return r.MsgsPerS }).med
		}
	}
	slices.SortStableFunc(contenders, func(a, c string) int { return membersOf(a) - membersOf(c) })
	for _, c := range contenders {
		rs := b.pick("share-process", 100, c, 0)
		if len(rs) == 0 {
			continue
		}
		m := membersOf(c)
		t := field(rs, func(r result) float64 { return r.MsgsPerS })
		ratio := "-"
		spec := c[:strings.LastIndex(c, "&members=")]
		if bb := base[spec]; bb > 0 {
			ratio = fmt.Sprintf("**%.2fx**", t.med/bb)
		}
		s, _ := parseSpec(spec)
		ideal := float64(m*s.int("c", 16)) / max(sleep, 1e-9)
		var missing []string
		for _, r := range rs {
			missing = append(missing, strconv.FormatInt(r.Share.missing(), 10))
		}
		per := ""
		for _, r := range rs {
			if r.Round == 0 {
				per = fmt.Sprint(r.Share.members())
			}
		}
		w("| `%s` | %s | %.2f | %s | %.0f | %s | %s | %s | %s |\n", c, medRange(t, rounds, "%.0f"),
			field(rs, func(r result) float64 { return r.Drain }).med, ratio, ideal, dupsPerRound(rs),
			strings.Join(missing, ", "), per, loads(rs))
	}
	w("\n")
}
