package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/multiconsumer/multiconsumer/internal/wire"
)

// Fetch limits. A short MaxWait keeps an idle worker responsive (kafka-go's
// Reader default of 10s was seen stalling whole rounds); the byte limits
// bound what one fetch response holds besides the queue.
const (
	fetchMaxWait           = 250 * time.Millisecond
	fetchMaxBytes          = 16 << 20
	fetchPartitionMaxBytes = 1 << 20
	fetchFirstBytes        = 32 << 10 // a partition's first limit: see fetchPos.sized
	unpackNowMax           = 16 << 10 // a response up to this is queued by the worker itself (unpacker.unpackNow)
	// fetchAheadBytes: a parked partition fetches its next response once
	// no more than this of its parked records is left undecoded (a
	// quarter of a full response: about 2,400 records of 100 B, some
	// milliseconds of Process's work, against a fetch's round trip).
	fetchAheadBytes = fetchPartitionMaxBytes / 4
	// holdAheadBytes: while the queue is full, a partition whose response
	// is being queued is fetched again once no more than this of it is
	// left (worker.holdAhead): half a response, some milliseconds of
	// GetMessages' work at full speed, which cover a fetch's round trip.
	holdAheadBytes = fetchPartitionMaxBytes / 2
	initialBackoff = time.Second
)

// worker fetches one chunk of the partitions and feeds the queue. It sends
// one fetch request per leader broker for all of its partitions there, so
// an idle partition costs no round trip of its own. A partition that fails
// backs off on its own; the others go on.
type worker struct {
	env      *fetchEnv
	id       int
	order    []int // its partitions, in the order the next fetch lists them
	pos      map[int]*fetchPos
	wake     *wakeup
	log      *slog.Logger
	unpacker *unpacker
	rewinds  []rewind // taken from the unpacker, reused

	// The rounds' context (roundContext), its deadline and cancel.
	rctx      context.Context
	rdeadline time.Time
	rcancel   context.CancelFunc

	// Partitions given to the worker, or taken from it, since it last
	// looked: it takes them in at the start of its next round (applyInbox).
	inboxMu sync.Mutex // guards given and dropped
	given   map[int]*fetchPos
	dropped []int

	// Reused round to round: at a trickle a round fetches a message or
	// two, and what it allocates is what the collector has to chase.
	plan    plan
	results []roundResult
	rotated []int
}

// plan is a round's partitions grouped by leader, in the order the worker
// lists them.
type plan struct {
	leaders []int
	groups  [][]int
}

func (pl *plan) reset() {
	pl.leaders = pl.leaders[:0]
	for i := range pl.groups {
		pl.groups[i] = pl.groups[i][:0]
	}
	pl.groups = pl.groups[:0]
}

// add adds partition p, led by leader.
func (pl *plan) add(leader, p int) {
	i := slices.Index(pl.leaders, leader)
	if i < 0 {
		i = len(pl.leaders)
		pl.leaders = append(pl.leaders, leader)
		if len(pl.groups) < cap(pl.groups) {
			pl.groups = pl.groups[:i+1] // and its group's array, emptied by reset
		} else {
			pl.groups = append(pl.groups, nil)
		}
	}
	pl.groups[i] = append(pl.groups[i], p)
}

// fetchPos is where a worker fetches a partition from, in which epoch, and
// when it may fetch it again after a failure. It outlives the worker: when
// the partitions are dealt out again (partitions added to the topic), the
// next worker goes on from where the last one stopped.
type fetchPos struct {
	offset  int64
	epoch   uint64
	synced  bool
	retryAt time.Time     // zero: not backing off
	backoff time.Duration // the last wait after a failure; 0 after a success
	limit   int32         // the partition's byte limit in the next fetch; 0: fetchFirstBytes
}

// failed schedules the partition's next fetch after its backoff, and doubles
// the backoff from initial up to maxBackoff. It returns the wait.
func (fp *fetchPos) failed(now time.Time, initial, maxBackoff time.Duration) time.Duration {
	if fp.backoff == 0 {
		fp.backoff = min(initial, maxBackoff)
	} else {
		fp.backoff = min(2*fp.backoff, maxBackoff)
	}
	fp.retryAt = now.Add(fp.backoff)
	return fp.backoff
}

// capBackoff caps the partition's current backoff at most.
func (fp *fetchPos) capBackoff(now time.Time, most time.Duration) {
	if fp.backoff > most {
		fp.backoff = most
		fp.retryAt = now.Add(most)
	}
}

// maxBytes is the partition's byte limit in the next fetch request.
func (fp *fetchPos) maxBytes() int32 {
	if fp.limit == 0 {
		return fetchFirstBytes
	}
	return fp.limit
}

// sized grows the partition's byte limit when a response brought n bytes
// of it, half its limit or more, or none while the log has more (behind)
// and the limit may be smaller than its next batch: a backlog. A partition
// starts small (and again after a Seek), so that the first messages of a
// backlog come after a small response, not a whole 16 MiB one read and
// decoded, and then grows, four times a response, to
// fetchPartitionMaxBytes.
func (fp *fetchPos) sized(n int, behind bool) {
	if lim := fp.maxBytes(); lim < fetchPartitionMaxBytes && (n >= int(lim)/2 || n == 0 && behind) {
		fp.limit = min(4*lim, fetchPartitionMaxBytes)
	}
}

// leaderBackoff is the first wait of a partition whose leader moved: short,
// because the worker refreshes the metadata before it fetches again.
const leaderBackoff = 20 * time.Millisecond

// fetchEnv is what the workers need of the consumer, and all they reach:
// a few settings, the brokers, the metadata, the queue and the pause gate,
// and three functions on the book. It is set up once in New.
type fetchEnv struct {
	topic       string
	startOffset int64
	maxBackoff  time.Duration
	batchSize   int // messages per batch queued
	// ahead: a parked partition is hungry (fetches ahead) once at most
	// this many bytes of its parked records are left undecoded; 0: at
	// once.
	ahead int
	// hold: while the queue is full, a partition whose response the
	// unpacker queues is not fetched again until at most this many bytes
	// of it are left (worker.holdAhead); 0: never held.
	hold     int
	log      *slog.Logger
	kc       *brokers
	meta     *topicMeta
	q        *queue
	unpaused *event  // set while not paused: Pause clears it, Resume sets it
	led      *ledger // where to fetch from (a Seek moves it), high watermarks, fetch errors
	// fetches counts the fetch requests answered, fetched their record
	// bytes (Stats.Fetches, Stats.FetchedBytes).
	fetches, fetched atomic.Int64
}

func newWorker(env *fetchEnv, id int, partitions []int, pos map[int]*fetchPos, wake *wakeup) *worker {
	w := &worker{env: env, id: id, order: slices.Clone(partitions), pos: pos, wake: wake}
	w.log = env.log.With("worker", id)
	w.unpacker = newUnpacker(env)
	w.unpacker.onLow = wake.nudge
	return w
}

// give adds partition p, at fetch position fp, to what the worker
// fetches, from its next round on; it wakes the worker if it waits, and
// cancels no fetch in flight.
func (w *worker) give(p int, fp *fetchPos) {
	w.inboxMu.Lock()
	if w.given == nil {
		w.given = make(map[int]*fetchPos)
	}
	w.given[p] = fp
	w.inboxMu.Unlock()
	w.wake.nudge()
}

// drop takes partition p from what the worker fetches, from its next round
// on.
func (w *worker) drop(p int) {
	w.inboxMu.Lock()
	delete(w.given, p)
	w.dropped = append(w.dropped, p)
	w.inboxMu.Unlock()
}

// applyInbox takes in the partitions given and dropped since the last
// round: the given ones are listed first in the next fetch.
func (w *worker) applyInbox() {
	w.inboxMu.Lock()
	defer w.inboxMu.Unlock()
	for _, p := range w.dropped {
		delete(w.pos, p)
		if i := slices.Index(w.order, p); i >= 0 {
			w.order = slices.Delete(w.order, i, i+1)
		}
	}
	w.dropped = w.dropped[:0]
	for p, fp := range w.given {
		w.pos[p] = fp
		w.order = slices.Insert(w.order, 0, p)
	}
	clear(w.given)
}

// applyRewinds moves back the partitions whose fetched records the unpacker
// did not queue, to where the queue ends; one that failed backs off.
func (w *worker) applyRewinds() {
	w.rewinds = w.unpacker.takeRewinds(w.rewinds)
	for _, r := range w.rewinds {
		pos, ok := w.pos[r.p]
		if !ok || pos.epoch != r.epoch {
			continue // a Seek moved it since, or it was taken away
		}
		pos.offset = r.to
		if r.err != nil {
			w.fail([]int{r.p}, initialBackoff, r.err)
		}
	}
}

// run fetches until ctx is done. It waits while the consumer is paused, and
// while every one of its partitions is backing off (a Seek wakes it).
func (w *worker) run(ctx context.Context) {
	var unpacking sync.WaitGroup
	unpacking.Go(func() { w.unpacker.run(ctx) })
	defer func() {
		if w.rcancel != nil {
			w.rcancel()
		}
		// The positions end where the queue does: the next worker of
		// these partitions goes on from there.
		close(w.unpacker.in)
		unpacking.Wait()
		w.applyRewinds()
	}()
	idle := time.NewTimer(time.Hour)
	defer idle.Stop()
	for {
		if err := w.env.unpaused.Wait(ctx); err != nil {
			return
		}
		w.wake.clear() // the positions read next cover every Seek so far
		w.applyInbox()
		w.applyRewinds()
		wait, leaderless, full := w.env.led.plan(w.order, w.pos, time.Now(), &w.plan, w.env.meta.leaderMap(), w.env.q.isHungry)
		if leaderless {
			// Look again for a leader every second at most; the
			// other partitions go on meanwhile.
			w.env.meta.request()
			wait = min(wait, initialBackoff)
		}
		if len(w.plan.groups) > 0 && w.env.q.waitingToPut() {
			w.holdAhead()
		}
		groups := w.plan.groups
		if len(groups) == 0 {
			var room <-chan struct{}
			doneWaiting := func() {}
			if full {
				// Process has its fill of these partitions: fetch
				// again when it takes some.
				room, doneWaiting = w.env.q.waitRoom(w.fullParts())
			}
			idle.Reset(wait)
			select {
			case <-ctx.Done():
				doneWaiting()
				return
			case <-idle.C:
			case <-w.wake.ch:
				if !idle.Stop() {
					<-idle.C
				}
			case <-room:
				if !idle.Stop() {
					<-idle.C
				}
			}
			doneWaiting()
			continue
		}
		refresh := w.round(ctx, w.plan.leaders, groups)
		if ctx.Err() != nil {
			return
		}
		w.rotate()
		if refresh {
			// A moved leader, a missing partition: fetch again only
			// once the metadata has been read again.
			w.env.meta.await(ctx)
		}
	}
}

// holdAhead drops from the round's plan the leaders all of whose
// partitions the unpacker is queueing a response of, with many of its
// records left (unpacker.ahead), while the queue is full: the consumer is
// the bottleneck, and the next responses would only wait in memory, one
// per leader (8 MiB with 8 workers at 1 MiB a partition). The unpacker
// wakes the worker once few are left, a round trip ahead of the end. A
// leader with another partition to fetch takes those along (a worker
// fetching one partition alone now and the others later would split its
// fetches).
func (w *worker) holdAhead() {
	pl := &w.plan
	kept := 0
	for i, parts := range pl.groups {
		if slices.ContainsFunc(parts, func(p int) bool { return !w.unpacker.isAhead(p, w.pos[p].epoch) }) {
			pl.leaders[kept] = pl.leaders[i]
			pl.groups[kept], pl.groups[i] = pl.groups[i], pl.groups[kept]
			kept++
		}
	}
	for i := kept; i < len(pl.groups); i++ {
		pl.groups[i] = pl.groups[i][:0] // emptied, as reset leaves the arrays for add
	}
	pl.leaders = pl.leaders[:kept]
	pl.groups = pl.groups[:kept]
}

// rotate moves the partitions that got records in the last round behind
// the others, keeping the order within each part, so that the next fetch
// lists first the partitions that waited. Brokers fill a response in the
// order the request lists partitions: without this, the first partitions of
// a backlog fill every response and the last starve (the Java client and
// franz-go rotate too).
func (w *worker) rotate() {
	served := func(p int) bool {
		for _, r := range w.results {
			if slices.Contains(r.served, p) {
				return true
			}
		}
		return false
	}
	w.rotated = w.rotated[:0]
	for _, p := range w.order {
		if !served(p) {
			w.rotated = append(w.rotated, p)
		}
	}
	if len(w.rotated) == 0 || len(w.rotated) == len(w.order) {
		return // all served, or none: the order stays
	}
	for _, p := range w.order {
		if served(p) {
			w.rotated = append(w.rotated, p)
		}
	}
	w.order, w.rotated = w.rotated, w.order
}

// wakeup lets Seek interrupt a worker: it cancels the fetches in flight, or
// ends the wait of a worker whose partitions all back off, so that the new
// position is fetched at once.
type wakeup struct {
	ch chan struct{} // cap 1: a wake-up not seen yet

	mu     sync.Mutex         // guards cancel and fired
	cancel context.CancelFunc // of the round in flight; nil between rounds
	fired  bool               // cancel was called by poke
}

func newWakeup() *wakeup { return &wakeup{ch: make(chan struct{}, 1)} }

// poke wakes the worker.
func (wk *wakeup) poke() {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	if wk.cancel != nil {
		wk.cancel()
		wk.fired = true
	}
	select {
	case wk.ch <- struct{}{}:
	default:
	}
}

// nudge wakes the worker if it waits, and makes its next round start only
// after it looked again at its partitions; it cancels no round in flight.
func (wk *wakeup) nudge() {
	select {
	case wk.ch <- struct{}{}:
	default:
	}
}

// clear forgets the wake-ups seen so far.
func (wk *wakeup) clear() {
	select {
	case <-wk.ch:
	default:
	}
}

// arm registers the round about to start; it reports false, and the round
// should not start, when a wake-up came since clear.
func (wk *wakeup) arm(cancel context.CancelFunc) bool {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	select {
	case <-wk.ch:
		return false
	default:
	}
	wk.cancel = cancel
	return true
}

// woken reports whether a wake-up cancelled the round in flight.
func (wk *wakeup) woken() bool {
	wk.mu.Lock()
	defer wk.mu.Unlock()
	return wk.fired
}

// disarm unregisters the round that ended.
func (wk *wakeup) disarm() {
	wk.mu.Lock()
	wk.cancel, wk.fired = nil, false
	wk.mu.Unlock()
}

// fail counts a fetch error of parts, logs it, and backs them off from
// initial.
func (w *worker) fail(parts []int, initial time.Duration, err error) {
	w.env.led.fetchFailed(parts)
	now := time.Now()
	for _, p := range parts {
		wait := w.pos[p].failed(now, initial, w.env.maxBackoff)
		w.log.Warn("fetch failed, retrying", "partition", p, "offset", w.pos[p].offset, "backoff", wait, "err", err)
	}
}

// failStale counts a fetch error of parts that stale metadata explains (a
// leader moved). The worker reads the metadata again before its next round:
// that is the first wait, so a partition failing the first time is fetched
// again right after it; if it fails again, it backs off from leaderBackoff.
func (w *worker) failStale(parts []int, err error) {
	first := make([]bool, len(parts))
	for i, p := range parts {
		first[i] = w.pos[p].backoff == 0
	}
	w.fail(parts, leaderBackoff, err)
	for i, p := range parts {
		if first[i] {
			w.pos[p].retryAt = time.Time{}
		}
	}
}

// roundResult is what one fetch request did: the partitions that got
// records, and whether the metadata must be read again before the next.
type roundResult struct {
	served  []int
	refresh bool
	req     *kmsg.FetchRequest // to reuse in the next round, if any
}

// round fetches each group of partitions from its leader, at the same time:
// one after the other, an idle leader's long poll would hold back the data
// of the next. A Seek cancels the round's fetches. It leaves in w.results
// the partitions that got records, and reports whether the metadata must
// be read again.
func (w *worker) round(ctx context.Context, leaders []int, groups [][]int) (refresh bool) {
	for len(w.results) < len(groups) {
		w.results = append(w.results, roundResult{})
	}
	w.results = w.results[:len(groups)]
	for i := range w.results {
		w.results[i] = roundResult{served: w.results[i].served[:0], req: w.results[i].req}
	}
	rctx, cancel := w.roundContext(ctx)
	if !w.wake.arm(cancel) {
		return false // a Seek: sync the positions first
	}
	if len(groups) == 1 {
		w.fetchFrom(ctx, rctx, leaders[0], groups[0], &w.results[0])
	} else {
		// The fetches touch disjoint partitions (positions) and results;
		// the worker waits for them before its next round.
		var wg sync.WaitGroup
		for i, parts := range groups {
			wg.Go(func() { w.fetchFrom(ctx, rctx, leaders[i], parts, &w.results[i]) })
		}
		wg.Wait()
	}
	w.wake.disarm()
	for _, r := range w.results {
		refresh = refresh || r.refresh
	}
	return refresh
}

// roundContext returns the context a round's fetches run under. A
// request's socket reads are bounded only by the context's deadline:
// without one, a broker that stops answering would hold the worker (and a
// kafka-go goroutine) forever. The deadline is at least a long poll and a
// request timeout away, at most twice that: one context serves the rounds
// until then, or until a Seek cancels it, rather than a context and a
// timer for each round (at a trickle, one each per message).
func (w *worker) roundContext(ctx context.Context) (context.Context, context.CancelFunc) {
	need := fetchMaxWait + w.env.kc.requestTimeout()
	if w.rctx == nil || w.rctx.Err() != nil || time.Until(w.rdeadline) < need {
		if w.rcancel != nil {
			w.rcancel()
		}
		w.rdeadline = time.Now().Add(2 * need)
		w.rctx, w.rcancel = context.WithDeadline(ctx, w.rdeadline)
	}
	return w.rctx, w.rcancel
}

// fetchVersion is the Fetch version asked for at most: v12 is the last
// that names topics (v13 on name them by id) and has every field we use.
const fetchVersion = 12

// fetchFrom fetches parts from their leader in one request bounded by rctx,
// and queues what comes back (a wait for room in the queue is bounded by
// ctx). It records in r what it did.
func (w *worker) fetchFrom(ctx, rctx context.Context, leader int, parts []int, r *roundResult) {
	topic := w.env.topic
	// The request of the slot's last round, when that round trip ended
	// cleanly (a cancelled one may still be being written): at a trickle a
	// round is a message, and its request what the collector chases.
	req := r.req
	r.req = nil
	if req == nil {
		req = kmsg.NewPtrFetchRequest()
		req.MaxWaitMillis = int32(fetchMaxWait / time.Millisecond)
		req.MinBytes = 1
		req.SessionID, req.SessionEpoch = 0, -1 // a full fetch, no fetch session
		req.Topics = []kmsg.FetchRequestTopic{kmsg.NewFetchRequestTopic()}
	}
	req.MaxBytes = 0
	rt := &req.Topics[0]
	rt.Topic = topic
	rt.Partitions = slices.Grow(rt.Partitions[:0], len(parts))[:len(parts)]
	for i, p := range parts {
		rp := &rt.Partitions[i]
		rp.Default()
		rp.Partition = int32(p)
		rp.FetchOffset = w.pos[p].offset
		rp.PartitionMaxBytes = w.pos[p].maxBytes()
		req.MaxBytes = min(fetchMaxBytes, req.MaxBytes+rp.PartitionMaxBytes)
	}
	kres, err := w.env.kc.wire.DoBroker(rctx, int32(leader), wire.AtMost(req, fetchVersion))
	var res *kmsg.FetchResponse
	if err == nil {
		r.req = req
		res = kres.(*kmsg.FetchResponse)
		if res.ErrorCode != 0 {
			err = kafka.Error(res.ErrorCode)
		}
	}
	if err != nil {
		switch {
		case ctx.Err() != nil, rctx.Err() != nil && w.wake.woken():
		case routingError(err):
			// The transport's metadata lacks the leader we grouped by.
			w.failStale(parts, fmt.Errorf("fetch partitions %v: %w", parts, err))
			r.refresh = true
		default:
			w.fail(parts, initialBackoff, fmt.Errorf("fetch partitions %v: %w", parts, err))
			w.env.meta.request()
		}
		if connError(err) {
			// A broker away (restarting, a dropped connection): try
			// again every second at most, like the Java client's
			// reconnect.backoff.max.ms, so that fetching resumes soon
			// after it is back, whatever MaxBackoff says.
			for _, p := range parts {
				w.pos[p].capBackoff(time.Now(), initialBackoff)
			}
		}
		return
	}
	w.env.fetches.Add(1)
	var feeds []feed // the unpacker's from here on
	size := 0        // their records' bytes
	for _, rt := range res.Topics {
		if rt.Topic != topic {
			continue
		}
		for i := range rt.Partitions {
			p := int(rt.Partitions[i].Partition)
			pos, mine := w.pos[p]
			if !mine || !slices.Contains(parts, p) {
				continue
			}
			fd, err := w.handle(ctx, &rt.Partitions[i])
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				if metadataError(err) {
					w.failStale([]int{p}, err)
					r.refresh = true
				} else {
					w.fail([]int{p}, initialBackoff, err)
				}
				continue
			}
			pos.backoff, pos.retryAt = 0, time.Time{}
			if fd.to == fd.from {
				continue // nothing new
			}
			if fd.raw != nil {
				r.served = append(r.served, p)
			}
			feeds = append(feeds, fd)
			size += len(fd.raw)
		}
	}
	if len(feeds) == 0 {
		return
	}
	w.env.fetched.Add(int64(size))
	if size > unpackNowMax || !w.unpacker.unpackNow(ctx, feeds) {
		select {
		case w.unpacker.in <- feeds:
		case <-ctx.Done():
			return
		}
	}
	// The unpacker has them: fetch what follows.
	for _, fd := range feeds {
		w.pos[fd.p].offset = fd.to
	}
}

// routingError reports whether a fetch failed before it was sent because
// the transport could not route it: its metadata lacks the leader.
func routingError(err error) bool {
	return errors.Is(err, wire.ErrUnknownBroker)
}

// metadataError reports whether a partition's fetch error means the
// metadata is stale: the leader moved, or the partition (or topic) is gone.
func metadataError(err error) bool {
	return errors.Is(err, kafka.NotLeaderForPartition) || errors.Is(err, kafka.LeaderNotAvailable) ||
		errors.Is(err, kafka.FencedLeaderEpoch) || errors.Is(err, kafka.UnknownLeaderEpoch) ||
		errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.UnknownTopicID) ||
		errors.Is(err, kafka.ReplicaNotAvailable)
}

// handle returns what the unpacker is to do with one partition of a fetch
// response: queue its records, or move past a reset.
func (w *worker) handle(ctx context.Context, rp *kmsg.FetchResponseTopicPartition) (feed, error) {
	p := int(rp.Partition)
	pos := w.pos[p]
	fd := feed{p: p, epoch: pos.epoch, from: pos.offset, to: pos.offset, hwm: rp.HighWatermark}
	if rp.ErrorCode != 0 {
		if code := kafka.Error(rp.ErrorCode); errors.Is(code, kafka.OffsetOutOfRange) {
			var err error
			fd.to, err = w.reset(ctx, p, pos)
			return fd, err
		} else {
			return fd, fmt.Errorf("fetch at offset %d: %w", pos.offset, code)
		}
	}
	w.env.led.setHighWatermark(p, rp.HighWatermark)
	pos.sized(len(rp.RecordBatches), rp.HighWatermark > pos.offset)
	fd.raw = rp.RecordBatches
	fd.to = batchesEnd(fd.raw, pos.offset)
	return fd, nil
}

// fullParts returns the partitions that wait for room in the queue: while
// Process runs, they have their fill.
func (w *worker) fullParts() []int {
	var out []int
	for _, p := range w.order {
		if !w.env.q.isHungry(p) {
			out = append(out, p)
		}
	}
	return out
}

// empty is what an empty key or value reads as: not nil, which would make
// an empty value look like a tombstone. Its capacity is 0, so a caller's
// append never writes into it.
var empty = []byte{}

// reset returns where a partition whose fetch offset is no longer in the
// log (retention deleted it) goes: StartOffset.
func (w *worker) reset(ctx context.Context, p int, pos *fetchPos) (int64, error) {
	b, err := w.env.kc.logBounds(ctx, []int{p})
	if err != nil {
		return pos.offset, err
	}
	to := b[p].first
	if w.env.startOffset == kafka.LastOffset {
		to = b[p].last
	}
	if to == pos.offset {
		// The log says the offset is there, the fetch says it is not: a
		// failure, retried with backoff, not a reset.
		return pos.offset, fmt.Errorf("fetch at offset %d: %w (log is [%d, %d])", pos.offset, kafka.OffsetOutOfRange, b[p].first, b[p].last)
	}
	w.log.Warn("offset out of range, resetting", "partition", p, "offset", pos.offset, "reset_to", to)
	return to, nil
}
