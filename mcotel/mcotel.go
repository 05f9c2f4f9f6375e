// Package mcotel exports the state of multiconsumer consumers as
// OpenTelemetry metrics. It registers asynchronous (observable) instruments
// on a metric.MeterProvider and one callback that reads each consumer's
// Stats when the SDK collects: it starts no goroutine, and what a
// collection shows is the consumers as they are.
//
//	m, err := mcotel.New(otel.GetMeterProvider())
//	if err != nil { ... }
//	defer m.Close()
//	err = m.Add("billing", c)
//
// # Metrics
//
// The instruments are those of mcprom, named the OpenTelemetry way: dotted,
// the unit in the instrument's unit rather than in its name, no _total on
// counters. Their names start with "multiconsumer." (see Namespace).
// Counters are observable counters (cumulative totals since the consumer
// started); numbers of things that add up across consumers (workers, queued
// messages, lag) are observable up-down counters; offsets, ages and 0/1
// states are observable gauges.
//
// Attributes follow OpenTelemetry's messaging conventions:
// messaging.system ("kafka"), messaging.client.id (the name given to Add),
// messaging.destination.name (the topic), messaging.consumer.group.name (the
// group, absent without one), and on per-partition instruments
// messaging.destination.partition.id (the partition, as a string).
//
// Per partition (the partitions the consumer reads now):
//
//	multiconsumer.lag                        up-down  {message}    high watermark minus delivered offset (absent until the first fetch)
//	multiconsumer.offset.delivered           gauge    {offset}     offset after the last message delivered (or taken by Process)
//	multiconsumer.offset.consumed            gauge    {offset}     offset after the last message consumed (done with)
//	multiconsumer.offset.committed           gauge    {offset}     offset stored in the group (absent when none is known)
//	multiconsumer.offset.high_watermark      gauge    {offset}     the partition's high watermark at the last fetch (absent before it)
//	multiconsumer.delivered.messages         counter  {message}    messages delivered (or taken by Process)
//	multiconsumer.delivered.bytes            counter  By           size of their keys and values
//	multiconsumer.fetch.errors               counter  {error}      failed fetches
//	multiconsumer.process.incomplete         up-down  {message}    messages Process took and did not complete (while Process runs)
//	multiconsumer.process.oldest_incomplete  gauge    s            age of the oldest of them (while Process runs)
//
// Per consumer:
//
//	multiconsumer.workers                    up-down  {worker}     worker goroutines fetching
//	multiconsumer.partitions                 up-down  {partition}  partitions read now (in group mode: assigned to the member)
//	multiconsumer.queue.messages             up-down  {message}    messages fetched and queued for delivery
//	multiconsumer.queue.capacity             up-down  {message}    the queue's bound (Config.QueueSize)
//	multiconsumer.paused                     gauge    1            1 while paused, else 0
//	multiconsumer.stopped                    gauge    1            1 when the consumer stopped for good (Err is not nil), else 0
//	multiconsumer.commit.errors              counter  {error}      failed commits
//	multiconsumer.commits                    counter  {commit}     commits that stored offsets
//	multiconsumer.fetches                    counter  {request}    fetch requests the brokers answered
//	multiconsumer.fetched.bytes              counter  By           record batch bytes they brought (over fetches: the mean response)
//
// In group mode (Config.JoinGroup):
//
//	multiconsumer.group.member               gauge    1            1, with the attribute multiconsumer.member.id
//	multiconsumer.group.generation           gauge    {generation} generation of the last join
//	multiconsumer.group.rebalances           counter  {rebalance}  rebalances the member went through
//	multiconsumer.group.rebalance.time       counter  s            time they took, from join to assignment applied
//	multiconsumer.group.lost_partitions      counter  {partition}  partitions lost without a commit
//	multiconsumer.group.join_failures        counter  {failure}    joins that failed (retried, or the one that stopped it)
//	multiconsumer.group.suspended            gauge    1            1 while the coordinator has not answered for SessionTimeout, else 0
//
// In a share group (Config.ShareGroup; counters are totals since the
// consumer started):
//
//	multiconsumer.share.acquired             counter  {record}     records the broker acquired for the member
//	multiconsumer.share.accepted             counter  {record}     records acknowledged as processed
//	multiconsumer.share.released             counter  {record}     records given back to the group
//	multiconsumer.share.rejected             counter  {record}     records archived (rejected)
//	multiconsumer.share.lock.renewals        counter  {renewal}    acquisition lock renewals the broker took
//	multiconsumer.share.lock.expiries        counter  {expiry}     acknowledgements refused because the record's lock had run out
//	multiconsumer.share.ack.errors           counter  {error}      acknowledgements that did not take, for any reason (lock expiries included)
//	multiconsumer.share.held                 up-down  {record}     records acquired and not settled
//	multiconsumer.share.lock.duration        gauge    s            the broker's acquisition lock (share.record.lock.duration.ms)
//	multiconsumer.share.lock.renewable       gauge    1            1 if the broker takes lock renewals (KIP-1222), else 0
//
// and four of the group instruments, as far as a share-group member has
// them: multiconsumer.group.member (its member id),
// multiconsumer.group.generation (its member epoch),
// multiconsumer.group.rebalances (assignments that changed) and
// multiconsumer.group.join_failures (heartbeats that failed).
//
// They are for share-group members only (Stats.ShareGroup): Metrics observes them
// from New on.
//
// Process:
//
//	multiconsumer.process.running            gauge    1            1 while Process runs, else 0
//	multiconsumer.process.inflight           up-down  {message}    handlers running (a message being retried included)
//	multiconsumer.process.waiting            up-down  {message}    messages taken, waiting for their turn
//	multiconsumer.process.stuck              up-down  {message}    handlers running for longer than StuckAfter (default 1m)
//	multiconsumer.process.longest_handling   gauge    s            how long the longest-running handler has run (while Process runs)
//	multiconsumer.process.handled            counter  {message}    messages completed by a handler
//	multiconsumer.process.retries            counter  {retry}      failed attempts followed by another
//	multiconsumer.process.given_up           counter  {message}    messages OnGiveUp took
//	multiconsumer.process.panics             counter  {panic}      handler attempts that panicked
//	multiconsumer.process.skipped            counter  {message}    messages completed before (commit metadata), not handled again
//	multiconsumer.process.handler.duration.count   counter {attempt}  handler attempts that ended
//	multiconsumer.process.handler.duration.sum     counter s          the sum of their durations
//	multiconsumer.process.handler.duration.bucket  counter {attempt}  attempts that took at most the attribute le, in seconds ("+Inf": all)
//
// The handler durations are not an OpenTelemetry histogram, for
// OpenTelemetry has no asynchronous histogram: a histogram is recorded one
// measurement at a time, when it happens, while the consumer has counted
// its durations already, in buckets, and hands over only the counts. Feeding
// them back into a synchronous histogram would need either invented
// measurements (the sum would be wrong) or a hook in the consumer's hot
// path. So the counts go out as they are: a count and a sum (their ratio is
// the mean duration over any window), and cumulative counters per bucket
// with an le attribute, Prometheus's form, from which a Prometheus backend
// computes quantiles with histogram_quantile.
//
// A handler's age counts from its first attempt (Handling.Started), or
// from when Process took the message if no attempt has started yet: a
// message whose handler fails and is retried stays stuck. Per-partition
// counters start again from zero when a partition comes back to a member
// after a rebalance.
package mcotel

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/multiconsumer/multiconsumer"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// ScopeName is the instrumentation scope of the instruments: the meter's
// name.
const ScopeName = "github.com/multiconsumer/multiconsumer/mcotel"

// DefaultNamespace is the prefix of the instrument names, unless Namespace
// gives another.
const DefaultNamespace = "multiconsumer"

// DefaultStuckAfter is how long a handler runs before
// multiconsumer.process.stuck counts it, unless StuckAfter gives another
// threshold.
const DefaultStuckAfter = time.Minute

// Attribute keys beside OpenTelemetry's messaging ones.
const (
	// MemberIDKey is the attribute of multiconsumer.group.member: the
	// group member's id.
	MemberIDKey = attribute.Key("multiconsumer.member.id")
	// LeKey is the attribute of multiconsumer.process.handler.duration.bucket:
	// the bucket's upper bound in seconds, or "+Inf".
	LeKey = attribute.Key("le")
)

// Option configures Metrics.
type Option func(*options)

type options struct {
	namespace  string
	stuckAfter time.Duration
}

// Namespace sets the prefix of the instrument names (DefaultNamespace,
// "multiconsumer", if not given); a dot separates it from the rest. The
// empty string leaves the names bare: "lag", "workers".
func Namespace(ns string) Option {
	return func(o *options) { o.namespace = ns }
}

// StuckAfter sets how long a handler runs before
// multiconsumer.process.stuck counts it (DefaultStuckAfter if not given, or
// if d is not positive).
func StuckAfter(d time.Duration) Option {
	return func(o *options) {
		if d > 0 {
			o.stuckAfter = d
		}
	}
}

// Metrics observes the consumers added to it for a MeterProvider (see the
// package doc for the instruments). Its methods are safe for concurrent
// use; its callback calls each consumer's Stats, which takes the consumer's
// lock for a moment and makes no request.
type Metrics struct {
	stuckAfter time.Duration
	in         instruments
	reg        metric.Registration

	mu        sync.Mutex // guards the fields below
	consumers map[string]consumer
	closed    bool
}

// consumer is a consumer added to Metrics, and its attributes.
type consumer struct {
	mc    *multiconsumer.MultiConsumer
	attrs []attribute.KeyValue // client, topic, group
}

// New creates the instruments on a meter of mp named ScopeName, and
// registers their callback. It returns an error if mp refuses an
// instrument or the callback. Add the consumers; Close unregisters.
func New(mp metric.MeterProvider, opts ...Option) (*Metrics, error) {
	if mp == nil {
		return nil, errors.New("mcotel: New: nil MeterProvider")
	}
	o := options{namespace: DefaultNamespace, stuckAfter: DefaultStuckAfter}
	for _, opt := range opts {
		opt(&o)
	}
	m := &Metrics{stuckAfter: o.stuckAfter, consumers: make(map[string]consumer)}
	meter := mp.Meter(ScopeName)
	obs, err := m.in.create(meter, o.namespace, o.stuckAfter)
	if err != nil {
		return nil, fmt.Errorf("mcotel: New: %w", err)
	}
	if m.reg, err = meter.RegisterCallback(m.observe, obs...); err != nil {
		return nil, fmt.Errorf("mcotel: New: %w", err)
	}
	return m, nil
}

// Add adds the consumer mc under name, the value of its
// messaging.client.id attribute (its Dialer's ClientID, say): names are
// unique in a Metrics, so that two consumers of one topic and group in a
// process have metrics of their own. The topic and group come from mc. Add
// returns an error if name is taken, mc is nil, or Metrics is closed.
//
// Metrics reports mc until Remove, also after mc's Close (its final
// state): Remove it when you close it.
func (m *Metrics) Add(name string, mc *multiconsumer.MultiConsumer) error {
	if mc == nil {
		return errors.New("mcotel: Add: nil consumer")
	}
	topic, group, err := topicGroup(mc)
	if err != nil {
		return err
	}
	attrs := []attribute.KeyValue{
		attribute.String("messaging.system", "kafka"),
		attribute.String("messaging.client.id", name),
		attribute.String("messaging.destination.name", topic),
	}
	if group != "" {
		attrs = append(attrs, attribute.String("messaging.consumer.group.name", group))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch _, taken := m.consumers[name]; {
	case m.closed:
		return errors.New("mcotel: Add: Metrics is closed")
	case taken:
		return fmt.Errorf("mcotel: Add: a consumer named %q is already added", name)
	}
	m.consumers[name] = consumer{mc: mc, attrs: attrs}
	return nil
}

// Remove removes the consumer added under name: the next collection has
// no data of it. It reports whether there was one.
func (m *Metrics) Remove(name string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.consumers[name]
	delete(m.consumers, name)
	return ok
}

// Close unregisters the callback: collections have no data of the
// consumers from then on. It does not close them. Close is safe to call
// more than once; later calls return nil.
func (m *Metrics) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	m.consumers = nil
	m.mu.Unlock()
	return m.reg.Unregister()
}

// topicGroup returns mc's topic and group.
func topicGroup(mc *multiconsumer.MultiConsumer) (topic, group string, err error) {
	s := mc.Stats()
	return s.Topic, s.Group, nil
}

// observe is the callback: it observes every consumer's Stats.
func (m *Metrics) observe(_ context.Context, o metric.Observer) error {
	m.mu.Lock()
	cs := slices.Collect(maps.Values(m.consumers))
	m.mu.Unlock()
	for _, cn := range cs {
		s := cn.mc.Stats()
		m.observeOne(o, cn, s, s.Time)
	}
	return nil
}

// observeOne observes one consumer's stats s, read at now.
func (m *Metrics) observeOne(o metric.Observer, cn consumer, s multiconsumer.Stats, now time.Time) {
	in := &m.in
	set := metric.WithAttributeSet(attribute.NewSet(cn.attrs...))
	i64 := func(inst metric.Int64Observable, v int64) { o.ObserveInt64(inst, v, set) }
	f64 := func(inst metric.Float64Observable, v float64) { o.ObserveFloat64(inst, v, set) }

	i64(in.workers, int64(s.Workers))
	i64(in.partitions, int64(len(s.Partitions)))
	i64(in.queueLen, int64(s.QueueLen))
	i64(in.queueCap, int64(s.QueueSize))
	i64(in.paused, bit(s.Paused))
	i64(in.stopped, bit(s.Err != nil))
	i64(in.commitErrors, s.CommitErrors)
	i64(in.commits, s.Commits)
	i64(in.fetches, s.Fetches)
	i64(in.fetchedBytes, s.FetchedBytes)

	if s.JoinGroup {
		o.ObserveInt64(in.member, 1, metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(cn.attrs), MemberIDKey.String(s.MemberID))...)))
		i64(in.generation, int64(s.Generation))
		i64(in.rebalances, s.Rebalances)
		f64(in.rebalanceTime, s.RebalanceTime.Seconds())
		i64(in.lost, s.LostPartitions)
		i64(in.joinFailures, s.JoinFailures)
		i64(in.suspended, bit(s.Suspended))
	}

	if shareMember(s) {
		// What a share member's Stats fill in of the group ones: no
		// rebalance time, lost partitions or liveness.
		o.ObserveInt64(in.member, 1, withAttr(cn.attrs, MemberIDKey.String(s.MemberID)))
		i64(in.generation, int64(s.Generation))
		i64(in.rebalances, s.Rebalances)
		i64(in.joinFailures, s.JoinFailures)

		sh := s.Share
		i64(in.shareAcquired, sh.Acquired)
		i64(in.shareAccepted, sh.Accepted)
		i64(in.shareReleased, sh.Released)
		i64(in.shareRejected, sh.Rejected)
		i64(in.shareRenewals, sh.Renewed)
		i64(in.shareExpiries, sh.LockExpiries)
		i64(in.shareAckErrors, sh.AckErrors)
		i64(in.shareHeld, int64(sh.Held))
		f64(in.shareLock, sh.AcquisitionLock.Seconds())
		i64(in.shareRenew, bit(sh.Renew))
	}

	ps := s.Process
	i64(in.procRunning, bit(ps.Running))
	i64(in.procInFlight, int64(ps.InFlight))
	i64(in.procWaiting, int64(ps.Waiting))
	i64(in.procHandled, ps.Handled)
	i64(in.procRetries, ps.Retries)
	i64(in.procGivenUp, ps.GivenUp)
	i64(in.procPanics, ps.Panics)
	i64(in.procSkipped, ps.Skipped)
	stuck, longest := handling(ps.Handling, now, m.stuckAfter)
	i64(in.procStuck, int64(stuck))
	if ps.Running {
		f64(in.procLongest, longest.Seconds())
	}
	if h := ps.HandlerDurations; len(h.Bounds) > 0 {
		i64(in.durCount, h.Count)
		f64(in.durSum, h.Sum.Seconds())
		var cum int64
		for i, b := range h.Bounds {
			if i < len(h.Counts) {
				cum += h.Counts[i]
			}
			le := strconv.FormatFloat(b.Seconds(), 'g', -1, 64)
			o.ObserveInt64(in.durBucket, cum, withAttr(cn.attrs, LeKey.String(le)))
		}
		o.ObserveInt64(in.durBucket, h.Count, withAttr(cn.attrs, LeKey.String("+Inf")))
	}

	for _, p := range slices.Sorted(maps.Keys(s.Partitions)) {
		st := s.Partitions[p]
		pset := withAttr(cn.attrs, attribute.String("messaging.destination.partition.id", strconv.Itoa(p)))
		pi64 := func(inst metric.Int64Observable, v int64) { o.ObserveInt64(inst, v, pset) }
		if st.Lag >= 0 {
			pi64(in.lag, st.Lag)
		}
		pi64(in.delivered, st.Delivered)
		pi64(in.consumed, st.Consumed)
		if st.Committed >= 0 {
			pi64(in.committed, st.Committed)
		}
		if st.HighWatermark >= 0 {
			pi64(in.highWatermark, st.HighWatermark)
		}
		pi64(in.messages, st.Messages)
		pi64(in.bytes, st.Bytes)
		pi64(in.fetchErrors, st.FetchErrors)
		if ps.Running {
			pi64(in.incomplete, int64(st.Incomplete))
			o.ObserveFloat64(in.oldestIncomplete, st.OldestIncomplete.Seconds(), pset)
		}
	}
}

// shareMember reports whether s is a share-group member's.
func shareMember(s multiconsumer.Stats) bool {
	return s.ShareGroup
}

// withAttr returns a measurement option with attrs and one more.
func withAttr(attrs []attribute.KeyValue, kv attribute.KeyValue) metric.MeasurementOption {
	return metric.WithAttributeSet(attribute.NewSet(append(slices.Clone(attrs), kv)...))
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

func bit(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

// instruments are the observable instruments.
type instruments struct {
	workers, partitions, queueLen, queueCap, paused, stopped, commitErrors metric.Int64Observable
	commits, fetches, fetchedBytes                                         metric.Int64Observable

	member, generation, rebalances, lost, joinFailures, suspended metric.Int64Observable
	rebalanceTime                                                 metric.Float64Observable

	shareAcquired, shareAccepted, shareReleased, shareRejected, shareRenewals metric.Int64Observable
	shareExpiries, shareAckErrors, shareHeld, shareRenew                      metric.Int64Observable
	shareLock                                                                 metric.Float64Observable

	procRunning, procInFlight, procWaiting, procStuck              metric.Int64Observable
	procHandled, procRetries, procGivenUp, procPanics, procSkipped metric.Int64Observable
	durCount, durBucket                                            metric.Int64Observable
	procLongest, durSum                                            metric.Float64Observable

	lag, delivered, consumed, committed, highWatermark metric.Int64Observable
	messages, bytes, fetchErrors, incomplete           metric.Int64Observable
	oldestIncomplete                                   metric.Float64Observable
}

// create creates the instruments on meter, and returns them all, for the
// callback's registration.
func (in *instruments) create(meter metric.Meter, ns string, stuckAfter time.Duration) ([]metric.Observable, error) {
	var (
		all  []metric.Observable
		errs []error
	)
	name := func(n string) string {
		if ns == "" {
			return n
		}
		return ns + "." + n
	}
	add := func(o metric.Observable, err error) {
		all = append(all, o)
		errs = append(errs, err)
	}
	counter := func(p *metric.Int64Observable, n, unit, desc string) {
		c, err := meter.Int64ObservableCounter(name(n), metric.WithUnit(unit), metric.WithDescription(desc))
		*p = c
		add(c, err)
	}
	upDown := func(p *metric.Int64Observable, n, unit, desc string) {
		c, err := meter.Int64ObservableUpDownCounter(name(n), metric.WithUnit(unit), metric.WithDescription(desc))
		*p = c
		add(c, err)
	}
	gauge := func(p *metric.Int64Observable, n, unit, desc string) {
		g, err := meter.Int64ObservableGauge(name(n), metric.WithUnit(unit), metric.WithDescription(desc))
		*p = g
		add(g, err)
	}
	seconds := func(p *metric.Float64Observable, n, desc string) {
		g, err := meter.Float64ObservableGauge(name(n), metric.WithUnit("s"), metric.WithDescription(desc))
		*p = g
		add(g, err)
	}
	secondsTotal := func(p *metric.Float64Observable, n, desc string) {
		c, err := meter.Float64ObservableCounter(name(n), metric.WithUnit("s"), metric.WithDescription(desc))
		*p = c
		add(c, err)
	}

	upDown(&in.workers, "workers", "{worker}", "Worker goroutines fetching partitions.")
	upDown(&in.partitions, "partitions", "{partition}", "Partitions the consumer reads now (in group mode: those assigned to the member).")
	upDown(&in.queueLen, "queue.messages", "{message}", "Messages fetched and queued for delivery.")
	upDown(&in.queueCap, "queue.capacity", "{message}", "The bound of the queue (Config.QueueSize).")
	gauge(&in.paused, "paused", "1", "1 while the consumer is paused, else 0.")
	gauge(&in.stopped, "stopped", "1", "1 when the consumer stopped for good (its Err is not nil), else 0.")
	counter(&in.commitErrors, "commit.errors", "{error}", "Commits that failed.")
	counter(&in.commits, "commits", "{commit}", "Commits that stored offsets.")
	counter(&in.fetches, "fetches", "{request}", "Fetch requests the brokers answered.")
	counter(&in.fetchedBytes, "fetched.bytes", "By", "Record batch bytes the fetches brought.")

	gauge(&in.member, "group.member", "1", "1, with the member id of the consumer's group member.")
	gauge(&in.generation, "group.generation", "{generation}", "Generation of the group member's last join (of a share-group member: its member epoch).")
	counter(&in.rebalances, "group.rebalances", "{rebalance}", "Rebalances the group member went through (of a share-group member: assignments that changed).")
	secondsTotal(&in.rebalanceTime, "group.rebalance.time", "Time the rebalances took, from join to assignment applied.")
	counter(&in.lost, "group.lost_partitions", "{partition}", "Partitions the group member lost without a commit.")
	counter(&in.joinFailures, "group.join_failures", "{failure}", "Joins of the group member that failed (retried, or the one whose error stopped it; of a share-group member: heartbeats).")
	gauge(&in.suspended, "group.suspended", "1", "1 while the group member has not heard from its coordinator for its session timeout (it delivers nothing new), else 0.")

	counter(&in.shareAcquired, "share.acquired", "{record}", "Records the broker acquired for the share-group member.")
	counter(&in.shareAccepted, "share.accepted", "{record}", "Records the share-group member acknowledged as processed.")
	counter(&in.shareReleased, "share.released", "{record}", "Records the share-group member gave back to the group.")
	counter(&in.shareRejected, "share.rejected", "{record}", "Records the share-group member rejected (archived).")
	counter(&in.shareRenewals, "share.lock.renewals", "{renewal}", "Acquisition lock renewals the broker took.")
	counter(&in.shareExpiries, "share.lock.expiries", "{expiry}", "Acknowledgements the broker refused because the record's acquisition lock had run out.")
	counter(&in.shareAckErrors, "share.ack.errors", "{error}", "Acknowledgements that did not take, for any reason (lock expiries included).")
	upDown(&in.shareHeld, "share.held", "{record}", "Records the share-group member acquired and has not settled.")
	seconds(&in.shareLock, "share.lock.duration", "The broker's acquisition lock: how long the member holds a record it acquired.")
	gauge(&in.shareRenew, "share.lock.renewable", "1", "1 if the broker takes acquisition lock renewals (KIP-1222), else 0.")

	gauge(&in.procRunning, "process.running", "1", "1 while Process runs, else 0.")
	upDown(&in.procInFlight, "process.inflight", "{message}", "Messages whose handlers run now (a message being retried included).")
	upDown(&in.procWaiting, "process.waiting", "{message}", "Messages Process took, waiting for their turn.")
	upDown(&in.procStuck, "process.stuck", "{message}",
		fmt.Sprintf("Messages whose handlers have run for longer than %v (from their first attempt).", stuckAfter))
	seconds(&in.procLongest, "process.longest_handling", "How long the longest-running handler has run (from its first attempt).")
	counter(&in.procHandled, "process.handled", "{message}", "Messages completed by a handler.")
	counter(&in.procRetries, "process.retries", "{retry}", "Failed handler attempts followed by another.")
	counter(&in.procGivenUp, "process.given_up", "{message}", "Messages given up on and taken by OnGiveUp.")
	counter(&in.procPanics, "process.panics", "{panic}", "Handler attempts that panicked.")
	counter(&in.procSkipped, "process.skipped", "{message}", "Messages completed before (commit metadata), not handled again.")
	counter(&in.durCount, "process.handler.duration.count", "{attempt}", "Handler attempts that ended.")
	secondsTotal(&in.durSum, "process.handler.duration.sum", "The sum of the durations of the handler attempts.")
	counter(&in.durBucket, "process.handler.duration.bucket", "{attempt}",
		"Handler attempts that took at most le seconds (cumulative, as Prometheus's histogram buckets).")

	upDown(&in.lag, "lag", "{message}", "High watermark minus delivered offset: messages not yet delivered.")
	gauge(&in.delivered, "offset.delivered", "{offset}", "Offset after the last message delivered (or taken by Process).")
	gauge(&in.consumed, "offset.consumed", "{offset}", "Offset after the last message consumed: the caller came back from it, or its handler completed.")
	gauge(&in.committed, "offset.committed", "{offset}", "Offset stored in the group.")
	gauge(&in.highWatermark, "offset.high_watermark", "{offset}", "The partition's high watermark at the last fetch.")
	counter(&in.messages, "delivered.messages", "{message}", "Messages delivered (or taken by Process).")
	counter(&in.bytes, "delivered.bytes", "By", "Size of the keys and values of the messages delivered.")
	counter(&in.fetchErrors, "fetch.errors", "{error}", "Fetches that failed.")
	upDown(&in.incomplete, "process.incomplete", "{message}", "Messages Process took and did not complete (waiting or being handled).")
	seconds(&in.oldestIncomplete, "process.oldest_incomplete",
		"Age of the oldest message Process took and did not complete: the partition's commit waits for it.")

	return all, errors.Join(errs...)
}
