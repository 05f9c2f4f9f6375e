package multiconsumer

import (
	"cmp"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/multiconsumer/multiconsumer/internal/wire"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file is the fetcher of a share-group member: one share session per
// leader broker of its partitions, each run by one goroutine that sends
// ShareFetch and ShareAcknowledge requests one at a time, on a transport of
// its own. The broker ties a share session to the connection it was opened
// on and releases the member's records when that connection closes; one
// goroutine per session, with nothing else on its transport, keeps the
// session on one connection (kafka-go's pool reuses an idle connection),
// and the transport's idle timeout is long enough that a paused member
// keeps it.

var (
	errInvalidRecordState = kerr.InvalidRecordState
	errSessionEnded       = errors.New("share session ended")
)

// shareFetcher fetches a share-group member's records into the queue and
// sends its acknowledgements.
type shareFetcher struct {
	env      *fetchEnv    // set once: the topic, the queue, the pause gate, metadata, the ledger, a logger
	cl       *wire.Client // set once: on the share transport
	group    string       // set once
	memberID string       // set once: the member's id (the heartbeat's)
	topicID  *[16]byte    // set once: the member's, which its setup sets before any session starts
	acks     *acker       // set once
	// lost is told the partitions whose records a share session that
	// ended held: the broker released them. Set once.
	lost func(parts []int)

	nudge    broadcast     // acknowledgements to send, partitions changed, stop
	sessions atomic.Uint64 // numbers the share sessions

	mu        sync.Mutex // guards the fields below
	parts     []int      // to fetch, sorted
	stopped   bool       // no new records: Close began, or the consumer stopped for good
	running   map[int]*shareSession
	ctx       context.Context
	cancel    context.CancelFunc
	goroutine sync.WaitGroup
}

// shareSession is the member's share session with one broker.
type shareSession struct {
	f      *shareFetcher
	broker int
	log    *slog.Logger

	closeIt bool // guarded by f.mu: the fetcher closes: close the session once its acknowledgements are sent

	// Owned by its goroutine.
	id        uint64 // this member's number for the session, in acks
	epoch     int32  // 0: not open
	inSession []int  // partitions the broker's session has, sorted
	backlog   []batch
}

func newShareFetcher(env *fetchEnv, cl *wire.Client, group, memberID string, topicID *[16]byte, acks *acker, lost func([]int)) *shareFetcher {
	f := &shareFetcher{env: env, cl: cl, group: group, memberID: memberID, topicID: topicID, acks: acks, lost: lost,
		running: map[int]*shareSession{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// set makes the fetcher fetch parts (sorted), and nothing else.
func (f *shareFetcher) set(parts []int) {
	f.mu.Lock()
	f.parts = slices.Clone(parts)
	f.startLocked()
	f.mu.Unlock()
	f.nudge.notify()
}

// startLocked starts a session goroutine for each leader of the partitions
// that has none. f.mu is held.
func (f *shareFetcher) startLocked() {
	if f.ctx.Err() != nil {
		return
	}
	leaders := f.env.meta.leaderMap()
	for _, p := range f.parts {
		b, ok := leaders[p]
		if !ok || b == noLeader {
			continue
		}
		if _, ok := f.running[b]; ok {
			continue
		}
		s := &shareSession{f: f, broker: b, log: f.env.log.With("broker", b)}
		f.running[b] = s
		f.goroutine.Go(func() { s.run(f.ctx) })
	}
}

// stop stops fetching new records; acknowledgements still go.
func (f *shareFetcher) stop() {
	f.mu.Lock()
	f.stopped = true
	f.mu.Unlock()
	f.nudge.notify()
}

// close closes the share sessions once their acknowledgements are sent
// (the broker releases what they still hold), within ctx, and waits for
// the sessions' goroutines.
func (f *shareFetcher) close(ctx context.Context) {
	f.mu.Lock()
	f.stopped = true
	for _, s := range f.running {
		s.closeIt = true // read by its goroutine after the nudge (under f.mu)
	}
	f.mu.Unlock()
	f.nudge.notify()
	done := make(chan struct{})
	go func() { f.goroutine.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
	}
	f.cancel()
	<-done
}

// state returns what a session of broker b does now: the partitions it
// fetches (those of ours it leads), whether it fetches new records at all,
// and whether it is to close.
func (f *shareFetcher) state(b int) (fetch []int, fetching, closing bool) {
	leaders := f.env.meta.leaderMap()
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.parts {
		if leaders[p] == b {
			fetch = append(fetch, p)
		}
	}
	// A partition whose leader moved to a broker without a session yet
	// gets one now, even while the old leader's session still settles
	// what it acquired there.
	if !f.stopped {
		f.startLocked()
	}
	closing = f.running[b] != nil && f.running[b].closeIt
	return fetch, !f.stopped && f.env.unpaused.IsSet(), closing
}

// run is a session's goroutine: it fetches and acknowledges until ctx
// ends or the fetcher closes and its acknowledgements are sent.
func (s *shareSession) run(ctx context.Context) {
	f := s.f
	backoff := time.Duration(0)
	for ctx.Err() == nil {
		nudged := f.nudge.wait()
		fetch, fetching, closing := f.state(s.broker)
		now := time.Now()

		if len(s.backlog) > 0 {
			s.offerBacklog()
		}
		anyAcks, urgent := f.acks.pending(s.id)
		renewAt := f.acks.nextRenewal(s.id)
		renewDue := !renewAt.IsZero() && !now.Before(renewAt)
		room := 0
		if fetching && len(s.backlog) == 0 {
			room = f.fetchRoom()
		}
		var err error
		switch {
		case closing && !anyAcks:
			s.closeSession(ctx)
			f.mu.Lock()
			delete(f.running, s.broker)
			f.mu.Unlock()
			return
		case s.epoch > 0 && (urgent || renewDue || anyAcks && (room == 0 || closing)):
			err = s.acknowledge(ctx, now)
		case room > 0 && len(fetch) > 0:
			err = s.fetch(ctx, fetch, room, now)
		case len(fetch) == 0 && !anyAcks && f.acks.heldIn(s.id) == 0:
			// Leads nothing of ours any more (a leader moved).
			s.closeSession(ctx)
			f.mu.Lock()
			delete(f.running, s.broker)
			f.startLocked()
			f.mu.Unlock()
			return
		default:
			var renew <-chan time.Time
			var t *time.Timer
			if !renewAt.IsZero() {
				t = time.NewTimer(time.Until(renewAt))
				renew = t.C
			}
			var unpaused <-chan struct{}
			if !f.env.unpaused.IsSet() {
				unpaused = f.env.unpaused.Done()
			}
			roomCh, done := f.env.q.roomChanged()
			if fetching && len(fetch) > 0 && s.roomNow() {
				roomCh = closedChan // room came meanwhile
			}
			select {
			case <-nudged:
			case <-roomCh:
			case <-unpaused:
			case <-renew:
			case <-ctx.Done():
			}
			done()
			if t != nil {
				t.Stop()
			}
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			backoff = nextBackoff(backoff, min(f.env.maxBackoff, 5*time.Second))
			s.log.Warn("share: request failed", "err", err, "backoff", backoff)
			f.env.meta.request()
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(backoff, 500*time.Millisecond)):
			}
			continue
		}
		backoff = 0
	}
}

// fetchRoom returns how many records a session may acquire now: the
// queue's free room, once that is a batch at least (a quarter of the
// queue, up to 512) or the queue is empty. Kafka sends a whole producer
// batch for any part of it acquired, so that a fetch for a sliver of room
// costs about what a full one does.
func (f *shareFetcher) fetchRoom() int {
	room := f.env.q.free()
	if room < f.env.batchSize && f.env.q.len() > 0 {
		return 0
	}
	return room
}

// nextEpoch returns the session epoch after e.
func nextEpoch(e int32) int32 {
	if e == math.MaxInt32 {
		return 1
	}
	return e + 1
}

// ended handles the end of the session (its connection dropped, or the
// broker no longer knows it): the broker released its records, or will
// once the session is closed.
//
// The member forgets them first (their waiters get ErrSessionLost), and
// lostShare drops what the queue and Process still hold: none is settled
// twice. Then it closes the session (epoch -1), whether the broker still
// has it or not, before a new one opens: Kafka ties a share session to the
// member id and remembers one connection of it, and releases its records
// when that connection closes, or at the final epoch. A new session (epoch
// 0) replaces an old one without releasing anything, so if the connection
// that dropped was not the one Kafka remembered, or the broker has not
// seen it close yet, the old session's records would stay acquired by
// this member until their locks ran out (30 s by default), and nobody
// would handle them meanwhile.
//
// An opening fetch (epoch 0) that got no answer may have opened a session
// and acquired records all the same: it is closed too, before the next
// open replaces it.
func (s *shareSession) ended(ctx context.Context, why error) {
	if s.epoch > 0 {
		s.log.Warn("share: session ended; releasing its records", "err", why)
		if parts := s.f.acks.sessionLost(s.id); len(parts) > 0 {
			s.f.lost(parts)
		}
		s.epoch, s.inSession, s.backlog = 0, nil, nil
	}
	s.release(ctx)
}

// release closes the member's share session with the broker (epoch -1),
// which releases what the session acquired, retrying until the broker
// answers. SHARE_SESSION_NOT_FOUND is an answer too: the broker closed
// the session already (its connection closed, or a close whose answer was
// lost), and released its records then.
//
// Between attempts it looks at the world as the session's loop does (a
// partition whose leader moved gets a session with the new leader
// meanwhile), and gives up when the answer would not matter any more:
// this broker leads none of the member's partitions (what it acquired
// there did not move with the leadership), the fetcher closes (a broker
// out of reach does not hold Close up), or the records' locks have run
// out (the broker released them itself).
func (s *shareSession) release(ctx context.Context) {
	backoff := time.Duration(0)
	giveUp := time.Now().Add(s.f.acks.lockDuration())
	for {
		req := kmsg.NewPtrShareAcknowledgeRequest()
		req.GroupID, req.MemberID = &s.f.group, &s.f.memberID
		req.ShareSessionEpoch = -1
		rctx, cancel := s.f.env.kc.withTimeout(ctx)
		kres, err := s.f.cl.DoBroker(rctx, int32(s.broker), req)
		cancel()
		if err == nil {
			err = wire.ErrorForCode(kres.(*kmsg.ShareAcknowledgeResponse).ErrorCode)
			if err != nil && !errors.Is(err, kerr.ShareSessionNotFound) {
				s.log.Info("share: closing the session", "err", err)
			}
			return
		}
		if ctx.Err() != nil {
			return
		}
		s.f.env.meta.request()
		fetch, _, closing := s.f.state(s.broker)
		if len(fetch) == 0 || closing || !time.Now().Before(giveUp) {
			s.log.Info("share: closing the session: giving up", "err", err, "leads", fetch, "closing", closing)
			return
		}
		backoff = min(max(2*backoff, 50*time.Millisecond), time.Second)
		s.log.Info("share: closing the session: retrying", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
	}
}

// sessionError reports whether err means the session is gone: a dropped
// connection (the broker closes the sessions opened on it), or the broker
// no longer knows it.
func sessionError(err error) bool {
	return errors.Is(err, kerr.ShareSessionNotFound) || errors.Is(err, kerr.InvalidShareSessionEpoch) || connError(err)
}

// fetch sends a ShareFetch: opening the session (epoch 0) or going on with
// it, acquiring up to room records of fetch, with the session's
// acknowledgements on it.
func (s *shareSession) fetch(ctx context.Context, fetch []int, room int, now time.Time) error {
	f := s.f
	req := kmsg.NewPtrShareFetchRequest()
	req.GroupID, req.MemberID = &f.group, &f.memberID
	req.MaxWaitMillis = int32(fetchMaxWait / time.Millisecond)
	req.MinBytes = 1
	req.MaxBytes = fetchMaxBytes
	req.MaxRecords = int32(min(room, math.MaxInt32))
	req.BatchSize = req.MaxRecords
	// Record limit (KIP-1206, v2+): no more than MaxRecords, so that the
	// members of a partition each get work. Batch-optimized mode would
	// spare Kafka sending a batch again for each part of it acquired
	// (1.5x the drain rate on Kafka), but lets one member acquire a whole
	// producer batch, however large, and starve the others.
	req.ShareAcquireMode = 1
	open := s.epoch == 0
	if open {
		s.id = f.sessions.Add(1)
		s.inSession = nil
	}
	req.ShareSessionEpoch = s.epoch
	var items map[int][]ackItem
	if !open {
		items = f.acks.take(s.id, now, false)
	}
	t := kmsg.NewShareFetchRequestTopic()
	t.TopicID = *f.topicID
	seen := map[int]bool{}
	for _, p := range fetch {
		if open || !slices.Contains(s.inSession, p) || len(items[p]) > 0 {
			t.Partitions = append(t.Partitions, s.fetchPartition(p, items[p]))
		}
		seen[p] = true
	}
	for p, its := range items {
		if !seen[p] {
			t.Partitions = append(t.Partitions, s.fetchPartition(p, its))
		}
	}
	if len(t.Partitions) > 0 {
		req.Topics = append(req.Topics, t)
	}
	var forgotten []int
	for _, p := range s.inSession {
		if !slices.Contains(fetch, p) && len(items[p]) == 0 {
			forgotten = append(forgotten, p)
		}
	}
	if len(forgotten) > 0 {
		ft := kmsg.NewShareFetchRequestForgottenTopicsData()
		ft.TopicID = *f.topicID
		for _, p := range forgotten {
			ft.Partitions = append(ft.Partitions, int32(p))
		}
		req.ForgottenTopicsData = append(req.ForgottenTopicsData, ft)
	}
	rctx, cancel := context.WithTimeout(ctx, fetchMaxWait+f.env.kc.requestTimeout())
	defer cancel()
	kres, err := f.cl.DoBroker(rctx, int32(s.broker), req)
	if err == nil {
		res := kres.(*kmsg.ShareFetchResponse)
		err = wire.ErrorForCode(res.ErrorCode)
		if err == nil {
			s.epoch = nextEpoch(s.epoch)
			s.inSession = mergeParts(s.inSession, fetch, forgotten)
			if res.Version >= 1 {
				f.acks.setLock(time.Duration(res.AcquisitionLockTimeoutMillis)*time.Millisecond, f.renews(ctx))
			}
			s.fetched(res, items, now)
			return nil
		}
	}
	s.failed(ctx, items, err, open)
	return err
}

// failed puts items back after a request that did not go through, and
// ends the session if err says it is gone, or if an opening fetch (open)
// got no answer from the broker: it may have opened the session anyway.
func (s *shareSession) failed(ctx context.Context, items map[int][]ackItem, err error, open bool) {
	for p, its := range items {
		s.f.acks.resend(p, its)
	}
	var answer *kerr.Error
	if sessionError(err) || open && !errors.As(err, &answer) {
		s.ended(ctx, err)
	}
}

// renews reports whether the broker takes lock renewals (ShareAcknowledge
// v2, KIP-1222).
func (f *shareFetcher) renews(ctx context.Context) bool {
	vs, err := f.cl.Versions(ctx)
	if err != nil {
		return false
	}
	return vs[kmsg.ShareAcknowledge.Int16()].Max >= 2
}

func (s *shareSession) fetchPartition(p int, items []ackItem) kmsg.ShareFetchRequestTopicPartition {
	sp := kmsg.NewShareFetchRequestTopicPartition()
	sp.Partition = int32(p)
	sp.PartitionMaxBytes = fetchPartitionMaxBytes
	for _, b := range ackBatches(items) {
		ab := kmsg.NewShareFetchRequestTopicPartitionAcknowledgementBatch()
		ab.FirstOffset, ab.LastOffset, ab.AcknowledgeTypes = b.first, b.last, b.types
		sp.AcknowledgementBatches = append(sp.AcknowledgementBatches, ab)
	}
	return sp
}

// mergeParts returns in plus added minus removed, sorted.
func mergeParts(in, added, removed []int) []int {
	out := slices.Clone(in)
	for _, p := range added {
		if !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	out = slices.DeleteFunc(out, func(p int) bool { return slices.Contains(removed, p) })
	slices.Sort(out)
	return out
}

// fetched takes a ShareFetch response: the acknowledgements' results and
// the records acquired.
func (s *shareSession) fetched(res *kmsg.ShareFetchResponse, items map[int][]ackItem, now time.Time) {
	f := s.f
	answered := map[int]bool{}
	for _, t := range res.Topics {
		if t.TopicID != *f.topicID {
			continue
		}
		for i := range t.Partitions {
			rp := &t.Partitions[i]
			p := int(rp.Partition)
			if its, ok := items[p]; ok && !answered[p] {
				answered[p] = true
				f.acks.settled(p, its, wire.ErrorForCode(rp.AcknowledgeErrorCode), now)
			}
			if err := wire.ErrorForCode(rp.ErrorCode); err != nil {
				s.log.Debug("share: partition error", "partition", p, "err", err)
				f.env.meta.request() // NOT_LEADER and the like: the leader moved
				continue
			}
			s.acquired(p, rp, now)
		}
	}
	for p, its := range items {
		if !answered[p] {
			f.acks.settled(p, its, nil, now) // no error reported: taken
		}
	}
}

// acquired decodes what the broker acquired of partition p for this
// member, and queues it.
func (s *shareSession) acquired(p int, rp *kmsg.ShareFetchResponseTopicPartition, now time.Time) {
	if len(rp.AcquiredRecords) == 0 {
		return
	}
	f := s.f
	ars := slices.Clone(rp.AcquiredRecords)
	slices.SortFunc(ars, func(x, y kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) int {
		return cmp.Compare(x.FirstOffset, y.FirstOffset)
	})
	ars = slices.DeleteFunc(ars, func(ar kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) bool {
		return ar.LastOffset < ar.FirstOffset
	})
	ranges := make([]offsetRange, len(ars)) // ranges[i] is ars[i]'s
	for i, ar := range ars {
		ranges[i] = offsetRange{ar.FirstOffset, ar.LastOffset}
	}
	epoch, _ := f.env.led.epochOf(p) // before the acker has them: see releaseStale
	f.acks.acquired(p, s.id, ranges, now, epoch)

	// Offsets come in order, batch after batch: a cursor over the ranges
	// finds each one's range (and its delivery count).
	var (
		msgs   []kafka.Message
		counts []int16
		ri     int
		last   int64 = -1
		count  int16
	)
	keep := func(o int64) bool {
		if o < last {
			ri = 0 // out of order: look from the start
		}
		last = o
		for ri < len(ranges) && ranges[ri].last < o {
			ri++
		}
		if ri < len(ranges) && o >= ranges[ri].first {
			count = ars[ri].DeliveryCount
			return true
		}
		return false
	}
	var err error
	eachAcquiredBatch(rp.Records, ranges, func(raw []byte) bool {
		err = decodeBatches(f.env.topic, p, raw, keep, func(m kafka.Message) {
			msgs = append(msgs, m)
			counts = append(counts, count)
		})
		return err == nil
	})
	if err != nil {
		s.log.Warn("share: cannot decode records; releasing them", "partition", p, "err", err)
	}
	if !slices.IsSortedFunc(msgs, func(x, y kafka.Message) int { return cmp.Compare(x.Offset, y.Offset) }) {
		idx := make([]int, len(msgs))
		for i := range idx {
			idx[i] = i
		}
		slices.SortFunc(idx, func(x, y int) int { return cmp.Compare(msgs[x].Offset, msgs[y].Offset) })
		ms, cs := make([]kafka.Message, len(msgs)), make([]int16, len(msgs))
		for i, j := range idx {
			ms[i], cs[i] = msgs[j], counts[j]
		}
		msgs, counts = ms, cs
	}
	// Acquired and not in the records (a control record, a record cut
	// from the response, a batch not decoded): nothing to deliver; a gap
	// settles a record that is not there, a release one that is.
	kind := ackGap
	if err != nil {
		kind = AckRelease
	}
	j := 0
	for _, r := range ranges {
		for o := r.first; o <= r.last; o++ {
			for j < len(msgs) && msgs[j].Offset < o {
				j++ // listed twice
			}
			if j < len(msgs) && msgs[j].Offset == o {
				j++
				continue
			}
			f.acks.decide(p, o, kind)
		}
	}
	msgs = slices.CompactFunc(msgs, func(x, y kafka.Message) bool { return x.Offset == y.Offset })
	if len(msgs) == 0 {
		return
	}
	// The delivery count header: the values and the header slices of
	// records without headers of their own come from one allocation each.
	vals := make([]byte, 0, 2*len(msgs))
	hdrs := make([]kafka.Header, len(msgs))
	for i := range msgs {
		n := len(vals)
		vals = strconv.AppendInt(vals, int64(counts[i]), 10)
		h := kafka.Header{Key: DeliveryCountHeader, Value: vals[n:len(vals):len(vals)]}
		if msgs[i].Headers == nil {
			hdrs[i] = h
			msgs[i].Headers = hdrs[i : i+1 : i+1]
		} else {
			msgs[i].Headers = append(msgs[i].Headers, h)
		}
	}
	b := batch{partition: p, epoch: epoch, msgs: msgs}
	if !f.env.q.offer(b, f.env.unpaused) {
		s.backlog = append(s.backlog, b)
	}
}

// Where the fields of a record batch (v2) are.
const (
	batchLengthAt    = 8
	batchMagicAt     = 16
	batchLastDeltaAt = 23
	batchRecordsAt   = 61
)

// eachAcquiredBatch calls decode with the batches of raw that hold
// acquired offsets (ranges, sorted), until it returns false: a response
// may hold batches of which nothing was acquired, and those are not
// decoded. (In record-limit mode Kafka sends each batch whole, however few
// of its records it acquired, 1,024 of a batch of 4,096 say; the decoder
// builds no message for the records decode's keep leaves out.) What it
// cannot read goes to decode as it is, which reports it.
func eachAcquiredBatch(raw []byte, ranges []offsetRange, decode func(raw []byte) bool) {
	ri := 0
	for len(raw) > 0 {
		if len(raw) < batchRecordsAt {
			decode(raw) // a cut header: decode says what it is
			return
		}
		size := int(int32(binary.BigEndian.Uint32(raw[batchLengthAt:])))
		if size < batchRecordsAt-12 || len(raw) < 12+size || raw[batchMagicAt] != 2 {
			decode(raw)
			return
		}
		b := raw[:12+size]
		raw = raw[12+size:]
		base := int64(binary.BigEndian.Uint64(b))
		last := base + int64(int32(binary.BigEndian.Uint32(b[batchLastDeltaAt:])))
		for ri < len(ranges) && ranges[ri].last < base {
			ri++
		}
		if ri == len(ranges) {
			return // nothing acquired here or later
		}
		if ranges[ri].first > last {
			continue // nothing acquired in this batch
		}
		if !decode(b) {
			return
		}
	}
}

// roomNow reports whether the queue has room now for what the session
// would put in it next: its backlog's first batch, or a fetch.
func (s *shareSession) roomNow() bool {
	q := s.f.env.q
	if len(s.backlog) > 0 {
		return q.free() >= len(s.backlog[0].msgs) || q.len() == 0
	}
	return s.f.fetchRoom() > 0
}

// offerBacklog moves what did not fit in the queue into it, as room comes.
func (s *shareSession) offerBacklog() {
	for len(s.backlog) > 0 && s.f.env.q.offer(s.backlog[0], s.f.env.unpaused) {
		s.backlog = s.backlog[1:]
	}
}

// acknowledge sends the session's acknowledgements (and renewals) in a
// ShareAcknowledge.
func (s *shareSession) acknowledge(ctx context.Context, now time.Time) error {
	f := s.f
	items := f.acks.take(s.id, now, true)
	if len(items) == 0 {
		return nil
	}
	req := kmsg.NewPtrShareAcknowledgeRequest()
	req.GroupID, req.MemberID = &f.group, &f.memberID
	req.ShareSessionEpoch = s.epoch
	t := kmsg.NewShareAcknowledgeRequestTopic()
	t.TopicID = *f.topicID
	for _, p := range slices.Sorted(maps.Keys(items)) {
		sp := kmsg.NewShareAcknowledgeRequestTopicPartition()
		sp.Partition = int32(p)
		for _, b := range ackBatches(items[p]) {
			if b.renew {
				req.IsRenewAck = true
			}
			ab := kmsg.NewShareAcknowledgeRequestTopicPartitionAcknowledgementBatch()
			ab.FirstOffset, ab.LastOffset, ab.AcknowledgeTypes = b.first, b.last, b.types
			sp.AcknowledgementBatches = append(sp.AcknowledgementBatches, ab)
		}
		t.Partitions = append(t.Partitions, sp)
	}
	req.Topics = append(req.Topics, t)
	rctx, cancel := f.env.kc.withTimeout(ctx)
	defer cancel()
	kres, err := f.cl.DoBroker(rctx, int32(s.broker), req)
	if err == nil {
		res := kres.(*kmsg.ShareAcknowledgeResponse)
		err = wire.ErrorForCode(res.ErrorCode)
		if err == nil {
			s.epoch = nextEpoch(s.epoch)
			answered := map[int]bool{}
			for _, rt := range res.Topics {
				for _, rp := range rt.Partitions {
					p := int(rp.Partition)
					if its, ok := items[p]; ok && rt.TopicID == *f.topicID && !answered[p] {
						answered[p] = true
						perr := wire.ErrorForCode(rp.ErrorCode)
						if errors.Is(perr, kerr.NotLeaderForPartition) {
							// The leader moved: what this member acquired
							// there is not its any more.
							f.env.meta.request()
						}
						f.acks.settled(p, its, perr, now)
					}
				}
			}
			for p, its := range items {
				if !answered[p] {
					f.acks.settled(p, its, nil, now)
				}
			}
			return nil
		}
	}
	s.failed(ctx, items, err, false)
	return err
}

// closeSession closes the session (epoch -1): the broker releases what it
// still holds for this member.
func (s *shareSession) closeSession(ctx context.Context) {
	if s.epoch == 0 {
		return
	}
	s.release(ctx)
	s.epoch = 0
	s.f.acks.sessionLost(s.id)
}

// ackGap settles an acquired offset that holds no record.
const ackGap AckKind = 0

// ackBatch is a run of acknowledgements in a request: one type for the
// run, or one per offset.
type ackBatch struct {
	first, last int64
	types       []int8
	renew       bool
}

// ackBatches packs items (sorted by offset) into batches: consecutive
// offsets with the same kind share one batch and one type.
func ackBatches(items []ackItem) []ackBatch {
	var out []ackBatch
	for _, it := range items {
		if n := len(out); n > 0 && out[n-1].last+1 == it.off && out[n-1].types[0] == int8(it.kind) {
			out[n-1].last = it.off
			continue
		}
		out = append(out, ackBatch{first: it.off, last: it.off, types: []int8{int8(it.kind)}, renew: it.kind == AckRenew})
	}
	return out
}
