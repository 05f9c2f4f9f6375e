// Command bench compares MultiConsumer with kafka-go's Reader (group mode
// and one Reader per partition) and franz-go's group consumer: time to drain
// a backlog, peak memory, end-to-end latency and allocation per message at
// fixed produce rates, throughput with an I/O-bound handler, and how a
// group rebalance interrupts the flow.
//
// Group mode: the drain suite's mc-group?members=N runs N MultiConsumers
// with JoinGroup in one group (franz?members=N: N franz-go group
// consumers); the rebalance suite (rebalance.go) starts member A, adds
// member B, then stops B, under a steady produce, and measures how long the
// partitions that keep their owner and those that move stop flowing. A
// child run by hand with BENCH_GROUP_LOG=1 prints what each member was
// assigned and gave up; with BENCH_GROUP_LOG=lib, MultiConsumer's own log
// too.
//
// Share groups (KIP-932, share.go): the share suite drains the backlog
// through a share group (mc-share: MultiConsumer with ShareGroup;
// franz-share: franz-go's share consumer) next to our consumer-group
// drain, and runs Process members (1, 2, 4 by default), each a child
// process, on one partition with a 5 ms handler, counting records handled
// twice.
//
// Every contender runs in a child process (the program re-executes itself
// with -contender) so that its peak RSS is its own; the embedded broker
// (kfake) runs in a third process (-serve). With -brokers host:port it uses
// a running Kafka instead.
//
// The latency suite runs each contender -latency-rounds times at each -rate
// (a fresh topic each run, the order of the contenders reversed every other
// round) and reports medians [min-max] over the rounds, p99 against the
// Reader per partition's, and the child's allocation per message while it
// measures. The producer runs in the child too, so that allocation includes
// the producer's, alike for every contender.
//
// bench is a module of its own (bench/go.mod), so run it from bench/:
//
//	cd bench
//	go run .                                  # default suites on kfake
//	go run . -brokers 127.0.0.1:9092          # on a real Kafka
//	go run . -suites drain -rounds 5 -n 200000 -sizes 100
//	go run . -suites latency -rate 2000,20000 -latency-rounds 3
//	go run . -suites pitfall,mem,profile
//	go run . -suites rebalance -rounds 3 -out /tmp/r -docs /tmp/r
//	go run . -suites rebalance,cold -rebalance-contenders 'mc-group mc-group?protocol=consumer franz franz?protocol=consumer'
//	go run . -suites process                  # Process: pc's table, 1 ms handler, near-empty handler
//	go run . -suites process -process-parts pc -pc-dist uniform -label kfake-uniform
//	go run . -suites share -rounds 3 -n 1000000 -sizes 100   # share groups: drain, Process members
//
// Its default paths (-out, -docs, the Python venv) are the repository's
// bench/results, docs and bench/python, whether it runs from bench/ or, as
// a built binary, from the repository root.
//
// See docs/BENCHMARKS.md for the results and what they mean.
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

type options struct {
	// orchestrator
	brokers           string
	label             string
	suites            string
	partitions        int
	n                 int
	sizes             string
	rounds            int
	contenders        string
	latency           string
	rates             string // -rate as given
	latRates          []int  // -rate parsed; a child gets exactly one
	latRounds         int
	latDur            time.Duration
	rebalance         string
	rebalRate         int
	settle            time.Duration
	coldMembers       int
	ioWorkers         string
	ioHandlers        string
	ioSleep           time.Duration
	memN              string
	profileContenders string
	batch             int
	latProfile        bool

	// process suite (process.go)
	processParts         string
	processCPUContenders string
	processCPUKeys       int
	keepTopics           bool
	pcN                  int
	pcSeed               uint64
	pcDist               string
	pcKeys               string
	pcRows               string
	processConc          string
	processProfile       bool

	// share suite (share.go)
	shareParts      string
	shareContenders string
	shareN          int
	shareMembers    string
	shareMember     string
	shareSleep      time.Duration
	shareProfile    bool

	out        string
	docs       string
	reportFrom string

	// child
	contender    string
	mode         string
	topic        string
	cpuprofile   string
	memprofile   string
	mutexprofile string
	blockprofile string
	traceFile    string
	handlers     int
	timeout      time.Duration

	// share-member child (share.go)
	shareGroup   string
	shareOffsets string

	// broker
	serve bool
}

func main() {
	var o options
	flag.StringVar(&o.brokers, "brokers", "", "host:port of a running Kafka; empty: start an embedded kfake broker in a child process")
	flag.StringVar(&o.label, "label", "", "name of this run in file names (default kfake or kafka)")
	flag.StringVar(&o.suites, "suites", "drain,latency,io", "suites to run: drain, latency, io, rebalance, cold, pitfall, mem, profile, process, share")
	flag.IntVar(&o.partitions, "partitions", 8, "partitions of each topic")
	flag.IntVar(&o.n, "n", 1_000_000, "messages in the backlog to drain")
	flag.IntVar(&o.batch, "batch", 4096, "records per record batch in the backlogs produced (at most 512 KiB a batch); the Java producer's default batch.size, 16 KiB, is 160 records of 100 B")
	flag.StringVar(&o.sizes, "sizes", "100,1024", "message value sizes in bytes, comma-separated")
	flag.IntVar(&o.rounds, "rounds", 3, "rounds of the drain suite; contenders alternate within each round")
	flag.StringVar(&o.contenders, "contenders", strings.Join(defaultDrain, " "), "contenders of the drain suite, space-separated")
	flag.StringVar(&o.latency, "latency-contenders", strings.Join(defaultLatency, " "), "contenders of the latency suite, space-separated")
	flag.StringVar(&o.rates, "rate", "2000,20000", "produce rates of the latency suite, messages/s, comma-separated; the suite runs each")
	flag.IntVar(&o.latRounds, "latency-rounds", 3, "rounds of the latency suite at each rate; contenders alternate within each round")
	flag.BoolVar(&o.latProfile, "latency-profile", false, "latency suite: write CPU and allocation profiles of each child")
	flag.DurationVar(&o.latDur, "duration", 10*time.Second, "measured produce time of the latency suite")
	flag.StringVar(&o.rebalance, "rebalance-contenders", strings.Join(defaultRebalance, " "), "contenders of the rebalance suite, space-separated")
	flag.IntVar(&o.rebalRate, "rebalance-rate", 2000, "produce rate of the rebalance suite, messages/s")
	flag.IntVar(&o.coldMembers, "cold-members", 3, "cold suite: members that start at once")
	flag.DurationVar(&o.settle, "settle", 3*time.Second, "rebalance suite: steady time after each member change is observed stable, before the next")
	flag.StringVar(&o.ioWorkers, "io-workers", "1,2,4,8", "MultiConsumer workers of the io suite")
	flag.StringVar(&o.ioHandlers, "io-handlers", "1,64", "handler goroutines of the io suite")
	flag.DurationVar(&o.ioSleep, "io-sleep", time.Millisecond, "wait per message in the io suite")
	flag.StringVar(&o.profileContenders, "profile-contenders", "mc-get?w=1 mc-get?w=8 mc-iter?w=8", "contenders of the profile suite (CPU and allocation profiles of a drain of -n messages of the first of -sizes), space-separated")
	flag.StringVar(&o.memN, "mem-n", "1000000,10000000", "backlogs of the mem suite (100 B messages)")
	flag.StringVar(&o.processParts, "process-parts", "pc,io,cpu", "parts of the process suite: pc (parallel-consumer's table), io (1 ms handler), cpu (near-empty handler, -n messages)")
	flag.IntVar(&o.processCPUKeys, "process-cpu-keys", 1000, "process suite, cpu part: distinct keys in each partition (key of message i: i mod this)")
	flag.StringVar(&o.processCPUContenders, "process-cpu-contenders", "", "process suite, cpu part: contenders, space-separated, GetMessages first (the reference of the ratios); empty: "+strings.Join(cpuContenders, " "))
	flag.IntVar(&o.pcN, "pc-n", 10_000, "process suite, pc part: messages")
	flag.Uint64Var(&o.pcSeed, "pc-seed", 1, "process suite, pc part: seed of the sleeps")
	flag.StringVar(&o.pcDist, "pc-dist", "ms", "process suite, pc part: sleeps, ms (whole ms 0-4, as parallel-consumer's test) or uniform (0-5 ms in us)")
	flag.StringVar(&o.pcKeys, "pc-keys", "1,2,5,10,20,50,100,1000,10000", "process suite, pc part: the ByKey rows' numbers of keys")
	flag.StringVar(&o.pcRows, "pc-rows", "process", "process suite, pc part: process (Process), baseline (the same sleeps scheduled in memory, no Kafka), or process,baseline")
	flag.StringVar(&o.processConc, "process-c", "1,4,16,64", "process suite, io part: Concurrency (and pool sizes)")
	flag.BoolVar(&o.processProfile, "process-profile", false, "process suite: also write CPU profiles of the cpu part's contenders (and allocation, mutex and blocking profiles, and an execution trace) and of the io part's at the highest concurrency (one more run each)")
	flag.StringVar(&o.shareParts, "share-parts", "drain,process", "parts of the share suite: drain (a share group drains -n x -sizes; -share-contenders), process (Process members on one partition)")
	flag.StringVar(&o.shareContenders, "share-contenders", strings.Join(defaultShareDrain, " "), "share suite, drain part: contenders, space-separated")
	flag.IntVar(&o.shareN, "share-n", 64_000, "share suite, process part: records on the one partition")
	flag.StringVar(&o.shareMembers, "share-members", "1,2,4", "share suite, process part: members (one child process each), comma-separated")
	flag.StringVar(&o.shareMember, "share-member", shareMemberSpec, "share suite, process part: the member, c= Concurrency, q= QueueSize, order=; several, space-separated")
	flag.DurationVar(&o.shareSleep, "share-sleep", 5*time.Millisecond, "share suite, process part: the handler's sleep per record")
	flag.BoolVar(&o.shareProfile, "share-profile", false, "share suite, drain part: write a CPU profile of the mc-share contenders' first round")
	flag.BoolVar(&o.keepTopics, "keep-topics", false, "leave the topics produced in the broker, and log their names: a child (-contender, -mode, -topic) then drains one again, to profile it (-cpuprofile)")
	flag.StringVar(&o.out, "out", fromRoot("bench/results"), "directory for the JSON and Markdown results and profiles")
	flag.StringVar(&o.docs, "docs", fromRoot("docs"), "directory for the PNG charts")
	flag.StringVar(&o.reportFrom, "report", "", "only write the tables and charts of a results JSON file of an earlier run (give its -suites and -label too, and its -rate if it predates per-result rates)")

	flag.StringVar(&o.contender, "contender", "", "child mode: run this contender and print its result")
	flag.StringVar(&o.mode, "mode", "drain", "child mode: drain, latency, io, cpu, pc, rebalance or share-member")
	flag.StringVar(&o.topic, "topic", "", "child mode: topic")
	flag.StringVar(&o.cpuprofile, "cpuprofile", "", "child mode: write a CPU profile")
	flag.StringVar(&o.memprofile, "memprofile", "", "child mode: write an allocation profile")
	flag.StringVar(&o.mutexprofile, "mutexprofile", "", "child mode: write a mutex contention profile (every contention event)")
	flag.StringVar(&o.blockprofile, "blockprofile", "", "child mode: write a blocking profile (every blocking event of 10µs or more)")
	flag.StringVar(&o.traceFile, "trace", "", "child mode: write an execution trace")
	flag.IntVar(&o.handlers, "handlers", 0, "child io mode: handler goroutines (0: the caller handles each message)")
	flag.DurationVar(&o.timeout, "timeout", 5*time.Minute, "child mode: give up after this long")
	flag.StringVar(&o.shareGroup, "share-group", "", "child share-member mode: the share group")
	flag.StringVar(&o.shareOffsets, "share-offsets", "", "child share-member mode: file for the offsets handled")

	flag.BoolVar(&o.serve, "serve", false, "run an embedded kfake broker, print its address, serve until stdin closes")
	flag.Parse()

	var err error
	if o.latRates, err = parseRates(o.rates); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	switch {
	case o.serve:
		err = serve()
	case o.contender != "" && o.mode == "rebalance":
		err = rebalanceChild(o)
	case o.contender != "" && o.mode == "cold":
		err = coldChild(o)
	case o.contender != "" && o.mode == "share-member":
		err = shareMemberChild(o)
	case o.contender != "":
		err = child(o)
	default:
		err = orchestrate(o)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// parseRates parses -rate: positive messages/s, comma-separated.
func parseRates(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("-rate %q: %q is not a positive number of messages/s", s, f)
		}
		out = append(out, n)
	}
	return out, nil
}

// fromRoot turns a path relative to the repository root into one relative to
// the working directory: unchanged at the root, under ".." in bench/ (where
// go run . runs), unchanged anywhere else.
func fromRoot(path string) string {
	if _, err := os.Stat(filepath.Join("bench", "go.mod")); err == nil {
		return path
	}
	if _, err := os.Stat(filepath.Join("..", "bench", "go.mod")); err == nil {
		return filepath.Join("..", path)
	}
	return path
}
