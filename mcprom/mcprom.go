// Package mcprom exports the state of multiconsumer consumers as Prometheus
// metrics. A Collector reads each consumer's Stats at scrape time and turns
// it into constant metrics: it starts no goroutine and keeps no state
// between scrapes, so a scrape shows the consumers as they are.
//
//	col := mcprom.NewCollector()
//	if err := col.Add("billing", c); err != nil { ... }
//	prometheus.MustRegister(col)
//	http.Handle("/metrics", promhttp.Handler())
//
// # Metrics
//
// Every metric has the labels client_id (the name given to Add), topic and
// group (empty without a group); per-partition metrics add partition. The
// names below are under the namespace "multiconsumer" (see Namespace):
// "multiconsumer" rather than Kafka's own "kafka_consumer", so that they do
// not mix with the Java client's metrics (JMX exporter) or kafka_exporter's
// on one dashboard. Durations are in seconds; counters end in _total.
//
// Per partition (the partitions the consumer reads now):
//
//	multiconsumer_lag                          gauge    high watermark minus delivered offset (absent until the first fetch)
//	multiconsumer_delivered_offset             gauge    offset after the last message delivered (or taken by Process)
//	multiconsumer_consumed_offset              gauge    offset after the last message consumed (done with)
//	multiconsumer_committed_offset             gauge    offset stored in the group (absent when none is known)
//	multiconsumer_high_watermark_offset        gauge    the partition's high watermark at the last fetch (absent before it)
//	multiconsumer_delivered_messages_total     counter  messages delivered (or taken by Process)
//	multiconsumer_delivered_bytes_total        counter  size of their keys and values
//	multiconsumer_fetch_errors_total           counter  failed fetches
//	multiconsumer_process_incomplete_messages  gauge    messages Process took and did not complete (while Process runs)
//	multiconsumer_process_oldest_incomplete_seconds gauge  age of the oldest of them (while Process runs): the commit of the partition waits for it
//
// Per consumer:
//
//	multiconsumer_workers                      gauge    worker goroutines fetching
//	multiconsumer_assigned_partitions          gauge    partitions read now (in group mode: assigned to the member)
//	multiconsumer_queue_messages               gauge    messages fetched and queued for delivery
//	multiconsumer_queue_capacity_messages      gauge    the queue's bound (Config.QueueSize)
//	multiconsumer_paused                       gauge    1 while paused (Pause), else 0
//	multiconsumer_stopped                      gauge    1 when the consumer stopped for good (Err is not nil), else 0
//	multiconsumer_commit_errors_total          counter  failed commits
//	multiconsumer_commits_total                counter  commits that stored offsets
//	multiconsumer_last_commit_timestamp_seconds gauge   when the last one did (Unix time)
//	multiconsumer_fetches_total                counter  fetch requests the brokers answered
//	multiconsumer_fetched_bytes_total          counter  record batch bytes they brought (over fetches: the mean response)
//
// In group mode (Config.JoinGroup):
//
//	multiconsumer_group_member_info            gauge    1, with the label member_id
//	multiconsumer_group_generation             gauge    generation of the last join
//	multiconsumer_group_rebalances_total       counter  rebalances the member went through
//	multiconsumer_group_rebalance_seconds_total counter time they took, from join to assignment applied
//	multiconsumer_group_lost_partitions_total  counter  partitions lost without a commit
//	multiconsumer_group_join_failures_total    counter  joins that failed (retried, or the one that stopped it)
//	multiconsumer_group_suspended              gauge    1 while the coordinator has not answered for SessionTimeout, else 0
//	multiconsumer_group_last_heard_timestamp_seconds gauge  when the coordinator last answered (Unix time)
//
// In a share group (Config.ShareGroup; counters are totals since the
// consumer started):
//
//	multiconsumer_share_acquired_records_total counter  records the broker acquired for the member
//	multiconsumer_share_accepted_records_total counter  records acknowledged as processed
//	multiconsumer_share_released_records_total counter  records given back to the group
//	multiconsumer_share_rejected_records_total counter  records archived (rejected)
//	multiconsumer_share_lock_renewals_total    counter  acquisition lock renewals the broker took
//	multiconsumer_share_lock_expiries_total    counter  acknowledgements refused because the record's lock had run out
//	multiconsumer_share_ack_errors_total       counter  acknowledgements that did not take, for any reason (lock expiries included)
//	multiconsumer_share_held_records           gauge    records acquired and not settled
//	multiconsumer_share_lock_duration_seconds  gauge    the broker's acquisition lock (share.record.lock.duration.ms)
//	multiconsumer_share_lock_renewable         gauge    1 if the broker takes lock renewals (KIP-1222), else 0
//
// and four of the group metrics, as far as a share-group member has them:
// multiconsumer_group_member_info (its member id),
// multiconsumer_group_generation (its member epoch),
// multiconsumer_group_rebalances_total (assignments that changed) and
// multiconsumer_group_join_failures_total (heartbeats that failed).
//
// They are for share-group members only (Stats.ShareGroup): the Collector reports them
// from New on.
//
// Process (counters are totals since the consumer started):
//
//	multiconsumer_process_running              gauge    1 while Process runs, else 0
//	multiconsumer_process_inflight_messages    gauge    handlers running (a message being retried included)
//	multiconsumer_process_waiting_messages     gauge    messages taken, waiting for their turn
//	multiconsumer_process_stuck_messages       gauge    handlers running for longer than StuckAfter (default 1m)
//	multiconsumer_process_longest_handling_seconds gauge  how long the longest-running handler has run (while Process runs)
//	multiconsumer_process_handled_messages_total  counter  messages completed by a handler
//	multiconsumer_process_retries_total        counter  failed attempts followed by another
//	multiconsumer_process_given_up_messages_total counter  messages OnGiveUp took
//	multiconsumer_process_panics_total         counter  handler attempts that panicked
//	multiconsumer_process_skipped_messages_total  counter  messages completed before (commit metadata), not handled again
//	multiconsumer_process_handler_duration_seconds histogram  durations of handler attempts
//
// A handler's age counts from its first attempt (Handling.Started), or
// from when Process took the message if no attempt has started yet: a
// message whose handler fails and is retried stays stuck. Per-partition
// counters start again from zero when a partition comes back to a member
// after a rebalance; Prometheus's rate and increase take that as a reset.
package mcprom

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultNamespace is the prefix of the metric names, unless Namespace
// gives another.
const DefaultNamespace = "multiconsumer"

// DefaultStuckAfter is how long a handler runs before
// multiconsumer_process_stuck_messages counts it, unless StuckAfter gives
// another threshold.
const DefaultStuckAfter = time.Minute

// Option configures a Collector.
type Option func(*options)

type options struct {
	namespace  string
	stuckAfter time.Duration
}

// Namespace sets the prefix of the metric names (DefaultNamespace,
// "multiconsumer", if not given). The empty string leaves the names bare:
// "lag", "workers".
func Namespace(ns string) Option {
	return func(o *options) { o.namespace = ns }
}

// StuckAfter sets how long a handler runs before
// multiconsumer_process_stuck_messages counts it (DefaultStuckAfter if not
// given, or if d is not positive).
func StuckAfter(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.stuckAfter = d
		}
	}
}

// Collector is a prometheus.Collector of the metrics of the consumers added
// to it (see the package doc for the list). Its methods are safe for
// concurrent use; Collect calls each consumer's Stats, which takes the
// consumer's lock for a moment and makes no request.
type Collector struct {
	stuckAfter time.Duration
	d          descs

	mu        sync.Mutex // guards consumers
	consumers map[string]consumer
}

// consumer is a consumer added to the Collector, and its labels.
type consumer struct {
	mc           *multiconsumer.MultiConsumer
	topic, group string
}

// NewCollector returns a Collector with no consumer: Add them.
func NewCollector(opts ...Option) *Collector {
	o := options{namespace: DefaultNamespace, stuckAfter: DefaultStuckAfter}
	for _, opt := range opts {
		opt(&o)
	}
	return &Collector{
		stuckAfter: o.stuckAfter,
		d:          newDescs(o.namespace, o.stuckAfter),
		consumers:  make(map[string]consumer),
	}
}

// Add adds the consumer mc under name, the value of its client_id label
// (its Dialer's ClientID, say): names are unique in a Collector, so that two
// consumers of one topic and group in a process have metrics of their own.
// The topic and group labels come from mc. Add returns an error if name is
// taken or mc is nil.
//
// The Collector reports mc until Remove, also after mc's Close (its final
// state): Remove it when you close it.
func (c *Collector) Add(name string, mc *multiconsumer.MultiConsumer) error {
	if mc == nil {
		return errors.New("mcprom: Add: nil consumer")
	}
	topic, group, err := topicGroup(mc)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.consumers[name]; ok {
		return fmt.Errorf("mcprom: Add: a consumer named %q is already added", name)
	}
	c.consumers[name] = consumer{mc: mc, topic: topic, group: group}
	return nil
}

// Remove removes the consumer added under name; its metrics are gone from
// the next scrape. It reports whether there was one.
func (c *Collector) Remove(name string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.consumers[name]
	delete(c.consumers, name)
	return ok
}

// topicGroup returns mc's topic and group.
func topicGroup(mc *multiconsumer.MultiConsumer) (topic, group string, err error) {
	s := mc.Stats()
	return s.Topic, s.Group, nil
}

// Describe sends the descriptions of every metric the Collector may
// collect.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.d.all() {
		ch <- d
	}
}

// Collect reads the Stats of every consumer added and sends their metrics.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	names := slices.Sorted(maps.Keys(c.consumers))
	cs := make([]consumer, len(names))
	for i, n := range names {
		cs[i] = c.consumers[n]
	}
	c.mu.Unlock()
	for i, cn := range cs {
		s := cn.mc.Stats()
		c.collect(ch, names[i], cn, s, s.Time)
	}
}

// collect sends the metrics of one consumer's stats s, read at now.
func (c *Collector) collect(ch chan<- prometheus.Metric, name string, cn consumer, s multiconsumer.Stats, now time.Time) {
	d := &c.d
	lv := []string{name, cn.topic, cn.group}
	send := func(desc *prometheus.Desc, t prometheus.ValueType, v float64, extra []string) {
		// An error (a label value that is not UTF-8, say) fails this
		// metric's scrape, not the process.
		m, err := prometheus.NewConstMetric(desc, t, v, slices.Concat(lv, extra)...)
		if err != nil {
			m = prometheus.NewInvalidMetric(desc, err)
		}
		ch <- m
	}
	gauge := func(desc *prometheus.Desc, v float64, extra ...string) { send(desc, prometheus.GaugeValue, v, extra) }
	counter := func(desc *prometheus.Desc, v float64, extra ...string) { send(desc, prometheus.CounterValue, v, extra) }

	gauge(d.workers, float64(s.Workers))
	gauge(d.assigned, float64(len(s.Partitions)))
	gauge(d.queueLen, float64(s.QueueLen))
	gauge(d.queueCap, float64(s.QueueSize))
	gauge(d.paused, bit(s.Paused))
	gauge(d.stopped, bit(s.Err != nil))
	counter(d.commitErrors, float64(s.CommitErrors))
	counter(d.commits, float64(s.Commits))
	counter(d.fetches, float64(s.Fetches))
	counter(d.fetchedBytes, float64(s.FetchedBytes))
	if !s.LastCommit.IsZero() {
		gauge(d.lastCommit, float64(s.LastCommit.UnixNano())/1e9)
	}

	if s.JoinGroup {
		gauge(d.memberInfo, 1, s.MemberID)
		gauge(d.generation, float64(s.Generation))
		counter(d.rebalances, float64(s.Rebalances))
		counter(d.rebalanceTime, s.RebalanceTime.Seconds())
		counter(d.lost, float64(s.LostPartitions))
		counter(d.joinFailures, float64(s.JoinFailures))
		gauge(d.suspended, bit(s.Suspended))
		if !s.LastHeard.IsZero() {
			gauge(d.lastHeard, float64(s.LastHeard.UnixNano())/1e9)
		}
	}

	if shareMember(s) {
		// What a share member's Stats fill in of the group ones: no
		// rebalance time, lost partitions or liveness.
		gauge(d.memberInfo, 1, s.MemberID)
		gauge(d.generation, float64(s.Generation))
		counter(d.rebalances, float64(s.Rebalances))
		counter(d.joinFailures, float64(s.JoinFailures))

		sh := s.Share
		counter(d.shareAcquired, float64(sh.Acquired))
		counter(d.shareAccepted, float64(sh.Accepted))
		counter(d.shareReleased, float64(sh.Released))
		counter(d.shareRejected, float64(sh.Rejected))
		counter(d.shareRenewals, float64(sh.Renewed))
		counter(d.shareExpiries, float64(sh.LockExpiries))
		counter(d.shareAckErrors, float64(sh.AckErrors))
		gauge(d.shareHeld, float64(sh.Held))
		gauge(d.shareLock, sh.AcquisitionLock.Seconds())
		gauge(d.shareRenew, bit(sh.Renew))
	}

	ps := s.Process
	gauge(d.procRunning, bit(ps.Running))
	gauge(d.procInFlight, float64(ps.InFlight))
	gauge(d.procWaiting, float64(ps.Waiting))
	counter(d.procHandled, float64(ps.Handled))
	counter(d.procRetries, float64(ps.Retries))
	counter(d.procGivenUp, float64(ps.GivenUp))
	counter(d.procPanics, float64(ps.Panics))
	counter(d.procSkipped, float64(ps.Skipped))
	stuck, longest := handling(ps.Handling, now, c.stuckAfter)
	gauge(d.procStuck, float64(stuck))
	if ps.Running {
		gauge(d.procLongest, longest.Seconds())
	}
	if h := ps.HandlerDurations; len(h.Bounds) > 0 {
		ch <- histogram(d.procDuration, h, lv)
	}

	for _, p := range slices.Sorted(maps.Keys(s.Partitions)) {
		st, part := s.Partitions[p], strconv.Itoa(p)
		if st.Lag >= 0 {
			gauge(d.lag, float64(st.Lag), part)
		}
		gauge(d.delivered, float64(st.Delivered), part)
		gauge(d.consumed, float64(st.Consumed), part)
		if st.Committed >= 0 {
			gauge(d.committed, float64(st.Committed), part)
		}
		if st.HighWatermark >= 0 {
			gauge(d.highWatermark, float64(st.HighWatermark), part)
		}
		counter(d.messages, float64(st.Messages), part)
		counter(d.bytes, float64(st.Bytes), part)
		counter(d.fetchErrors, float64(st.FetchErrors), part)
		if ps.Running {
			gauge(d.incomplete, float64(st.Incomplete), part)
			gauge(d.oldestIncomplete, st.OldestIncomplete.Seconds(), part)
		}
	}
}

// shareMember reports whether s is a share-group member's.
func shareMember(s multiconsumer.Stats) bool {
	return s.ShareGroup
}

// handling counts the handlers in hs that have run longer than after at
// now, and returns the longest run.
func handling(hs []multiconsumer.Handling, now time.Time, after time.Duration) (stuck int, longest time.Duration) {
	for _, h := range hs {
		since := h.Started
		if since.IsZero() {
			since = h.Taken
		}
		age := now.Sub(since)
		if age > after {
			stuck++
		}
		longest = max(longest, age)
	}
	return stuck, longest
}

// histogram converts h to a Prometheus histogram: h's counts are per
// bucket, Prometheus's cumulative (each counts every duration up to its
// bound), and the last count of h, above every bound, is only in the total
// (the +Inf bucket).
func histogram(desc *prometheus.Desc, h multiconsumer.Histogram, lv []string) prometheus.Metric {
	buckets := make(map[float64]uint64, len(h.Bounds))
	var cum uint64
	for i, b := range h.Bounds {
		if i < len(h.Counts) {
			cum += uint64(h.Counts[i])
		}
		buckets[b.Seconds()] = cum
	}
	m, err := prometheus.NewConstHistogram(desc, uint64(h.Count), h.Sum.Seconds(), buckets, lv...)
	if err != nil {
		return prometheus.NewInvalidMetric(desc, err)
	}
	return m
}

func bit(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// descs are the descriptions of the metrics.
type descs struct {
	workers, assigned, queueLen, queueCap, paused, stopped, commitErrors *prometheus.Desc
	commits, lastCommit, fetches, fetchedBytes                           *prometheus.Desc

	memberInfo, generation, rebalances, rebalanceTime, lost, joinFailures, suspended, lastHeard *prometheus.Desc

	shareAcquired, shareAccepted, shareReleased, shareRejected, shareRenewals *prometheus.Desc
	shareExpiries, shareAckErrors, shareHeld, shareLock, shareRenew           *prometheus.Desc

	procRunning, procInFlight, procWaiting, procStuck, procLongest *prometheus.Desc
	procHandled, procRetries, procGivenUp, procPanics, procSkipped *prometheus.Desc
	procDuration                                                   *prometheus.Desc
	lag, delivered, consumed, committed, highWatermark             *prometheus.Desc
	messages, bytes, fetchErrors, incomplete, oldestIncomplete     *prometheus.Desc
}

func newDescs(ns string, stuckAfter time.Duration) descs {
	labels := []string{"client_id", "topic", "group"}
	partLabels := append(slices.Clone(labels), "partition")
	memberLabels := append(slices.Clone(labels), "member_id")
	c := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, labels, nil)
	}
	p := func(name, help string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(ns, "", name), help, partLabels, nil)
	}
	return descs{
		workers:      c("workers", "Worker goroutines fetching partitions."),
		assigned:     c("assigned_partitions", "Partitions the consumer reads now (in group mode: those assigned to the member)."),
		queueLen:     c("queue_messages", "Messages fetched and queued for delivery."),
		queueCap:     c("queue_capacity_messages", "The bound of the queue (Config.QueueSize)."),
		paused:       c("paused", "1 while the consumer is paused, else 0."),
		stopped:      c("stopped", "1 when the consumer stopped for good (its Err is not nil), else 0."),
		commitErrors: c("commit_errors_total", "Commits that failed."),
		commits:      c("commits_total", "Commits that stored offsets."),
		lastCommit:   c("last_commit_timestamp_seconds", "When the last commit stored offsets (Unix time); absent before the first."),
		fetches:      c("fetches_total", "Fetch requests the brokers answered."),
		fetchedBytes: c("fetched_bytes_total", "Record batch bytes the fetches brought."),

		memberInfo: prometheus.NewDesc(prometheus.BuildFQName(ns, "", "group_member_info"),
			"1, with the member id of the consumer's group member.", memberLabels, nil),
		generation:    c("group_generation", "Generation of the group member's last join (of a share-group member: its member epoch)."),
		rebalances:    c("group_rebalances_total", "Rebalances the group member went through (of a share-group member: assignments that changed)."),
		rebalanceTime: c("group_rebalance_seconds_total", "Time the rebalances took, from join to assignment applied."),
		lost:          c("group_lost_partitions_total", "Partitions the group member lost without a commit."),
		joinFailures:  c("group_join_failures_total", "Joins of the group member that failed (retried, or the one whose error stopped it; of a share-group member: heartbeats)."),
		suspended:     c("group_suspended", "1 while the group member has not heard from its coordinator for its session timeout (it delivers nothing new), else 0."),
		lastHeard:     c("group_last_heard_timestamp_seconds", "When the group coordinator last answered the member (Unix time)."),

		shareAcquired:  c("share_acquired_records_total", "Records the broker acquired for the share-group member."),
		shareAccepted:  c("share_accepted_records_total", "Records the share-group member acknowledged as processed."),
		shareReleased:  c("share_released_records_total", "Records the share-group member gave back to the group."),
		shareRejected:  c("share_rejected_records_total", "Records the share-group member rejected (archived)."),
		shareRenewals:  c("share_lock_renewals_total", "Acquisition lock renewals the broker took."),
		shareExpiries:  c("share_lock_expiries_total", "Acknowledgements the broker refused because the record's acquisition lock had run out."),
		shareAckErrors: c("share_ack_errors_total", "Acknowledgements that did not take, for any reason (lock expiries included)."),
		shareHeld:      c("share_held_records", "Records the share-group member acquired and has not settled."),
		shareLock:      c("share_lock_duration_seconds", "The broker's acquisition lock: how long the member holds a record it acquired."),
		shareRenew:     c("share_lock_renewable", "1 if the broker takes acquisition lock renewals (KIP-1222), else 0."),

		procRunning:  c("process_running", "1 while Process runs, else 0."),
		procInFlight: c("process_inflight_messages", "Messages whose handlers run now (a message being retried included)."),
		procWaiting:  c("process_waiting_messages", "Messages Process took, waiting for their turn."),
		procStuck: c("process_stuck_messages",
			fmt.Sprintf("Messages whose handlers have run for longer than %v (from their first attempt).", stuckAfter)),
		procLongest:  c("process_longest_handling_seconds", "How long the longest-running handler has run (from its first attempt)."),
		procHandled:  c("process_handled_messages_total", "Messages completed by a handler."),
		procRetries:  c("process_retries_total", "Failed handler attempts followed by another."),
		procGivenUp:  c("process_given_up_messages_total", "Messages given up on and taken by OnGiveUp."),
		procPanics:   c("process_panics_total", "Handler attempts that panicked."),
		procSkipped:  c("process_skipped_messages_total", "Messages completed before (commit metadata), not handled again."),
		procDuration: c("process_handler_duration_seconds", "Durations of the handler attempts."),

		lag:           p("lag", "High watermark minus delivered offset: messages not yet delivered."),
		delivered:     p("delivered_offset", "Offset after the last message delivered (or taken by Process)."),
		consumed:      p("consumed_offset", "Offset after the last message consumed: the caller came back from it, or its handler completed."),
		committed:     p("committed_offset", "Offset stored in the group."),
		highWatermark: p("high_watermark_offset", "The partition's high watermark at the last fetch."),
		messages:      p("delivered_messages_total", "Messages delivered (or taken by Process)."),
		bytes:         p("delivered_bytes_total", "Size of the keys and values of the messages delivered."),
		fetchErrors:   p("fetch_errors_total", "Fetches that failed."),
		incomplete:    p("process_incomplete_messages", "Messages Process took and did not complete (waiting or being handled)."),
		oldestIncomplete: p("process_oldest_incomplete_seconds",
			"Age of the oldest message Process took and did not complete: the partition's commit waits for it."),
	}
}

// all returns every description.
func (d *descs) all() []*prometheus.Desc {
	return []*prometheus.Desc{
		d.workers, d.assigned, d.queueLen, d.queueCap, d.paused, d.stopped, d.commitErrors,
		d.commits, d.lastCommit, d.fetches, d.fetchedBytes,
		d.memberInfo, d.generation, d.rebalances, d.rebalanceTime, d.lost, d.joinFailures, d.suspended, d.lastHeard,
		d.shareAcquired, d.shareAccepted, d.shareReleased, d.shareRejected, d.shareRenewals,
		d.shareExpiries, d.shareAckErrors, d.shareHeld, d.shareLock, d.shareRenew,
		d.procRunning, d.procInFlight, d.procWaiting, d.procStuck, d.procLongest,
		d.procHandled, d.procRetries, d.procGivenUp, d.procPanics, d.procSkipped, d.procDuration,
		d.lag, d.delivered, d.consumed, d.committed, d.highWatermark,
		d.messages, d.bytes, d.fetchErrors, d.incomplete, d.oldestIncomplete,
	}
}
