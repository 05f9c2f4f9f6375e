package multiconsumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// This file is the settling side of a share-group member (Config.ShareGroup):
// what the broker acquired for this member, what became of each record, and
// the acknowledgements on their way to the partitions' leaders. The share
// fetcher (sharefetch.go) sends them and reports the answers; the delivery
// path, Process and the public calls decide them.

// AckKind is how a share-group member settles a record it was given (see
// Acknowledge). Its values are those of the protocol.
type AckKind int8

// The kinds of acknowledgement.
const (
	// AckAccept: processed; the record is done for the whole group.
	AckAccept AckKind = 1
	// AckRelease: not processed here; the record goes back to the group
	// at once, and another member (or this one) gets it again, its
	// delivery count one higher.
	AckRelease AckKind = 2
	// AckReject: it cannot be processed; Kafka archives the record and
	// delivers it to no one again.
	AckReject AckKind = 3
	// AckRenew: keep it; its acquisition lock starts again (KIP-1222). The
	// member renews the locks of what it holds on its own; this is for a
	// caller that holds records outside the consumer's view. Brokers
	// without KIP-1222 refuse it (Stats.Share.Renew says whether the
	// broker has it).
	AckRenew AckKind = 4
)

// String returns the kind's name.
func (k AckKind) String() string {
	switch k {
	case AckAccept:
		return "accept"
	case AckRelease:
		return "release"
	case AckReject:
		return "reject"
	case AckRenew:
		return "renew"
	}
	return "AckKind(" + strconv.Itoa(int(k)) + ")"
}

// DeliveryCountHeader is the header a share-group member adds to each
// record it delivers: how many times the group has handed the record out,
// this time included (1 the first time), in decimal. DeliveryCount reads
// it.
const DeliveryCountHeader = "multiconsumer.delivery-count"

// DeliveryCount returns how many times a share group has handed m out,
// this delivery included (1 the first time), or 0 when m did not come from
// a share group. Kafka archives a record once it reaches the group's
// delivery count limit (group.share.delivery.count.limit, 5 by default)
// without being accepted.
func DeliveryCount(m kafka.Message) int {
	for i := len(m.Headers) - 1; i >= 0; i-- {
		if m.Headers[i].Key == DeliveryCountHeader {
			n, _ := strconv.Atoi(string(m.Headers[i].Value))
			return n
		}
	}
	return 0
}

// AckError reports records of one partition whose acknowledgement did not
// take: the broker refused it (their acquisition lock had run out, and
// another member may have them now), or the member lost them (its share
// session with the partition's leader ended). Err says which.
type AckError struct {
	Topic     string
	Partition int
	Offsets   []int64
	Kind      AckKind
	Err       error
}

// Error names the kind, the partition, the offsets and why.
func (e *AckError) Error() string {
	return fmt.Sprintf("multiconsumer: %s of %q partition %d offsets %v: %v", e.Kind, e.Topic, e.Partition, e.Offsets, e.Err)
}

// Unwrap returns Err.
func (e *AckError) Unwrap() error { return e.Err }

// Errors of share-group acknowledgements.
var (
	// ErrNotShareGroup is returned by Acknowledge outside a share group.
	ErrNotShareGroup = errors.New("multiconsumer: not a share-group member (Config.ShareGroup)")
	// ErrNotHeld is wrapped by Acknowledge's error for a record the member
	// does not hold: never delivered to the caller, or settled already.
	ErrNotHeld = errors.New("multiconsumer: record not held: not delivered by this member, or settled already")
	// ErrSessionLost is wrapped by the AckError of records whose share
	// session ended (a dropped connection): the broker released them.
	ErrSessionLost = errors.New("multiconsumer: share session ended; the broker released its records")
)

// recState is where an acquired record is.
type recState uint8

const (
	recQueued    recState = iota // acquired, in the queue (or Process's lanes)
	recDelivered                 // delivered to the caller (or being handled)
	recDecided                   // an acknowledgement waits to be sent
	recSent                      // its acknowledgement is on the wire
)

type recKey struct {
	p   int
	off int64
}

// shareRec is one record the broker acquired for this member.
type shareRec struct {
	session  uint64    // the share session it was acquired in
	epoch    uint64    // its partition's epoch then: its batch is stale once the epoch is renewed
	deadline time.Time // its lock runs out then (acquired or renewed, plus the lock)
	state    recState
	kind     AckKind // when decided or sent
	solo     bool    // send its acknowledgement alone (its partition's last one failed as a whole)
	wait     *ackWait
}

// ackWait is a caller waiting for the results of acknowledgements
// (Commit, Acknowledge, Close). Guarded by the acker's mu.
type ackWait struct {
	n    int
	errs map[int]*AckError // per partition
	done chan struct{}
}

func newAckWait() *ackWait { return &ackWait{errs: map[int]*AckError{}, done: make(chan struct{})} }

// ackItem is an acknowledgement to send: offset off of its partition.
type ackItem struct {
	off  int64
	kind AckKind
}

// acker tracks the records acquired for a share-group member until they
// are settled.
type acker struct {
	topic string // set once
	log   logger // set once
	// wake tells the share fetcher that acknowledgements wait; set once.
	wake func()

	mu        sync.Mutex // guards the fields below
	recs      map[recKey]*shareRec
	decided   map[int]int // per partition: records decided and not sent
	delivered []recKey    // delivered and not consumed yet: accepted when the caller comes back
	// toSend lists, per share session, the records decided since its last
	// take (and some settled or taken since: take and pending skip what is
	// not decided any more), so that the session's loop looks at what it
	// may send, not at every record held.
	toSend map[uint64][]recKey
	// renewAt is, per share session, no later than when its first record
	// is due for renewal (a record settled since may make it early: take
	// then finds nothing due and sets it anew); absent when none is held.
	renewAt map[uint64]time.Time
	// staleBelow is, per partition, the epoch lostShare renewed it to:
	// records acquired in an older epoch are in no batch that will be
	// handled.
	staleBelow map[int]uint64
	lock       time.Duration
	renew      bool // the broker takes renewals (KIP-1222)
	noted      bool // the log said the broker does not
	stats      ShareStats
}

// logger is the part of *slog.Logger the acker uses.
type logger interface {
	Warn(msg string, args ...any)
}

func newAcker(topic string, log logger, wake func()) *acker {
	return &acker{topic: topic, log: log, wake: wake, recs: map[recKey]*shareRec{}, decided: map[int]int{},
		toSend: map[uint64][]recKey{}, renewAt: map[uint64]time.Time{}, staleBelow: map[int]uint64{}, lock: 30 * time.Second}
}

// setLock records the broker's acquisition lock and whether it takes
// renewals.
func (a *acker) setLock(lock time.Duration, renew bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if lock > 0 {
		a.lock = lock
	}
	if !renew && !a.noted {
		a.noted = true
		a.log.Warn("share: the broker does not renew acquisition locks (KIP-1222, ShareAcknowledge v2): a record held longer than the lock goes to another member", "lock", a.lock)
	}
	a.renew = renew
	a.stats.Renew = renew
	a.stats.AcquisitionLock = a.lock
}

// lockDuration returns the broker's acquisition lock (30 s until a
// broker says otherwise).
func (a *acker) lockDuration() time.Duration {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.lock
}

// offsetRange is the offsets first to last, both included.
type offsetRange struct{ first, last int64 }

// acquired records the offsets in ranges of partition p, acquired in
// session at now, to be queued in a batch of the partition's epoch. If
// that epoch is stale already (see releaseStale), they are released.
func (a *acker) acquired(p int, session uint64, ranges []offsetRange, now time.Time, epoch uint64) {
	n := 0
	for _, r := range ranges {
		n += int(r.last - r.first + 1)
	}
	recs := make([]shareRec, n) // one allocation for the lot
	a.mu.Lock()
	stale := epoch < a.staleBelow[p]
	i := 0
	for _, r := range ranges {
		for off := r.first; off <= r.last; off++ {
			recs[i] = shareRec{session: session, epoch: epoch, deadline: now.Add(a.lock)}
			k := recKey{p, off}
			a.recs[k] = &recs[i]
			if stale {
				a.decideLocked(k, AckRelease, nil)
			}
			i++
		}
	}
	if _, ok := a.renewAt[session]; !ok && n > 0 {
		a.renewAt[session] = now.Add(a.lock / 2) // the records held before are due no later
	}
	a.stats.Acquired += int64(n)
	a.mu.Unlock()
	if stale {
		a.wake()
	}
}

// releaseStale releases the records that wait in a batch of an older
// epoch than epochs gives their partition (lostShare renewed it: the
// queue, Process and the delivery drop such batches unhandled), and those
// acquired from now on for such a batch. A share session that ends takes
// its partitions' batches with it, other sessions' records of the same
// partitions included (after a leader moved): without this they would
// stay held, renewed, and never handled.
func (a *acker) releaseStale(epochs map[int]uint64) {
	a.mu.Lock()
	n := 0
	for p, e := range epochs {
		a.staleBelow[p] = max(a.staleBelow[p], e)
	}
	for k, r := range a.recs {
		if e, ok := epochs[k.p]; ok && r.state == recQueued && r.epoch < e {
			if a.decideLocked(k, AckRelease, nil) {
				n++
			}
		}
	}
	a.mu.Unlock()
	if n > 0 {
		a.wake()
	}
}

// deliver marks msgs (of one partition) delivered to the caller; with
// implicit, they are accepted when the caller comes back.
func (a *acker) deliver(msgs []kafka.Message, implicit bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for i := range msgs {
		k := recKey{msgs[i].Partition, msgs[i].Offset}
		if r, ok := a.recs[k]; ok && r.state == recQueued {
			r.state = recDelivered
			if implicit {
				a.delivered = append(a.delivered, k)
			}
		}
	}
}

// deliverOne is deliver for one record (a Messages loop's step).
func (a *acker) deliverOne(p int, off int64, implicit bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	k := recKey{p, off}
	if r, ok := a.recs[k]; ok && r.state == recQueued {
		r.state = recDelivered
		if implicit {
			a.delivered = append(a.delivered, k)
		}
	}
}

// handling marks a record taken by Process: it is being handled.
func (a *acker) handling(p int, off int64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if r, ok := a.recs[recKey{p, off}]; ok && r.state == recQueued {
		r.state = recDelivered
	}
}

// consumed accepts what was delivered before the caller came back.
func (a *acker) consumed() {
	a.mu.Lock()
	n := 0
	for _, k := range a.delivered {
		if a.decideLocked(k, AckAccept, nil) {
			n++
		}
	}
	a.delivered = a.delivered[:0]
	a.mu.Unlock()
	if n > 0 {
		a.wake()
	}
}

// decideLocked decides how record k is settled, unless it was decided
// already or is not held; it reports whether it decided. a.mu is held.
func (a *acker) decideLocked(k recKey, kind AckKind, w *ackWait) bool {
	r, ok := a.recs[k]
	if !ok || r.state >= recDecided {
		return false
	}
	r.state, r.kind, r.wait = recDecided, kind, w
	a.decided[k.p]++
	a.toSend[r.session] = append(a.toSend[r.session], k)
	if w != nil {
		w.n++
	}
	return true
}

// decide settles record off of partition p (Process: a handler's outcome).
func (a *acker) decide(p int, off int64, kind AckKind) {
	a.mu.Lock()
	ok := a.decideLocked(recKey{p, off}, kind, nil)
	a.mu.Unlock()
	if ok {
		a.wake()
	}
}

// acknowledge settles msgs as kind for a caller, who waits for the result
// (wait). Records not delivered to the caller, or settled already, are an
// error, and settle nothing. AckRenew keeps them held.
func (a *acker) acknowledge(kind AckKind, msgs []kafka.Message) (*ackWait, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var bad []error
	for _, m := range msgs {
		r, ok := a.recs[recKey{m.Partition, m.Offset}]
		if !ok || r.state != recDelivered {
			bad = append(bad, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, ErrNotHeld))
		}
	}
	if len(bad) > 0 {
		return nil, errors.Join(bad...)
	}
	if kind == AckRenew && !a.renew {
		return nil, fmt.Errorf("multiconsumer: renew: %w: the broker does not renew acquisition locks (KIP-1222)", errors.ErrUnsupported)
	}
	w := newAckWait()
	for _, m := range msgs {
		k := recKey{m.Partition, m.Offset}
		if kind == AckRenew {
			r := a.recs[k]
			r.deadline = time.Time{} // due for renewal now
			a.renewAt[r.session] = r.deadline.Add(-a.lock / 2)
			continue
		}
		a.decideLocked(k, kind, w)
	}
	if w.n == 0 {
		close(w.done)
	}
	// Out of the implicit list: it is settled now.
	a.delivered = slices.DeleteFunc(a.delivered, func(k recKey) bool { return a.recs[k] == nil || a.recs[k].state >= recDecided })
	return w, nil
}

// commit accepts every record of parts (all when none is given) delivered
// and not settled yet, and returns the wait for their results and those of
// the acknowledgements decided before and not answered yet.
func (a *acker) commit(parts []int) *ackWait {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := newAckWait()
	for k, r := range a.recs {
		if len(parts) > 0 && !slices.Contains(parts, k.p) {
			continue
		}
		switch {
		case r.state == recDelivered:
			a.decideLocked(k, AckAccept, w)
		case r.state >= recDecided && r.wait == nil:
			// Decided before, or on the wire (a fetch carries it): its
			// answer is waited for too.
			r.wait = w
			w.n++
		}
	}
	a.delivered = slices.DeleteFunc(a.delivered, func(k recKey) bool { return a.recs[k] == nil || a.recs[k].state >= recDecided })
	if w.n == 0 {
		close(w.done)
	}
	return w
}

// releaseAll releases every record not settled (Close): delivered and not
// consumed, queued, in Process's lanes. It returns the wait for their
// results and those of the acknowledgements decided before.
func (a *acker) releaseAll() *ackWait {
	a.mu.Lock()
	defer a.mu.Unlock()
	w := newAckWait()
	for k, r := range a.recs {
		if r.state < recDecided {
			a.decideLocked(k, AckRelease, w)
		} else if r.wait == nil {
			r.wait = w
			w.n++
		}
	}
	a.delivered = a.delivered[:0]
	if w.n == 0 {
		close(w.done)
	}
	return w
}

// await waits for w, and returns the errors of the records it waited for.
func (a *acker) await(ctx context.Context, w *ackWait) error {
	a.wake()
	select {
	case <-w.done:
	case <-ctx.Done():
		return ctx.Err()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, p := range slices.Sorted(maps.Keys(w.errs)) {
		errs = append(errs, w.errs[p])
	}
	return errors.Join(errs...)
}

// pending reports whether acknowledgements of records acquired in session
// wait to be sent, and whether someone waits for them (then they go at
// once, not with the next fetch).
func (a *acker) pending(session uint64) (any, urgent bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, k := range a.toSend[session] {
		if r, ok := a.recs[k]; ok && r.session == session && r.state == recDecided {
			any = true
			if r.wait != nil {
				return true, true
			}
		}
	}
	return any, false
}

// heldIn returns the count of records held that were acquired in session.
func (a *acker) heldIn(session uint64) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, r := range a.recs {
		if r.session == session {
			n++
		}
	}
	return n
}

// take takes the acknowledgements to send of the records acquired in
// session (their share session goes with the broker that acquired them),
// by partition, sorted by offset, marking them sent, and with renew the
// renewals due at now (records held past half their lock). Of a partition
// whose last acknowledgement failed as a whole, one record goes at a time
// (solo), the others wait.
func (a *acker) take(session uint64, now time.Time, renew bool) map[int][]ackItem {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[int][]ackItem{}
	cands := a.toSend[session]
	solo := map[int]int64{} // partition -> the lowest solo offset
	for _, k := range cands {
		if r, ok := a.recs[k]; ok && r.state == recDecided && r.solo && r.session == session {
			if o, ok := solo[k.p]; !ok || k.off < o {
				solo[k.p] = k.off
			}
		}
	}
	var kept []recKey // decided and held back: solo records after the first
	for _, k := range cands {
		r, ok := a.recs[k]
		if !ok || r.session != session || r.state != recDecided {
			continue // settled, or listed twice
		}
		if o, ok := solo[k.p]; ok && o != k.off {
			kept = append(kept, k) // its partition sends one solo record at a time
			continue
		}
		r.state = recSent
		a.decided[k.p]--
		out[k.p] = append(out[k.p], ackItem{k.off, r.kind})
	}
	if len(kept) > 0 {
		a.toSend[session] = kept
	} else {
		delete(a.toSend, session)
	}
	if at, ok := a.renewAt[session]; renew && a.renew && ok && !now.Before(at) {
		// Due: look at every record of the session, and note when the
		// next one is due.
		var next time.Time
		for k, r := range a.recs {
			if r.session != session || r.state >= recDecided {
				continue
			}
			if now.After(r.deadline.Add(-a.lock / 2)) {
				out[k.p] = append(out[k.p], ackItem{k.off, AckRenew})
				r.deadline = now.Add(a.lock) // not again before its next half-lock
			}
			if due := r.deadline.Add(-a.lock / 2); next.IsZero() || due.Before(next) {
				next = due
			}
		}
		if next.IsZero() {
			delete(a.renewAt, session)
		} else {
			a.renewAt[session] = next
		}
	}
	for _, items := range out {
		slices.SortFunc(items, func(x, y ackItem) int { return cmp.Compare(x.off, y.off) })
	}
	return out
}

// nextRenewal returns when the next record acquired in session is due for
// renewal; zero when none is held or the broker does not renew.
func (a *acker) nextRenewal(session uint64) time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	if !a.renew {
		return time.Time{}
	}
	return a.renewAt[session]
}

// settled records the broker's answer to items of partition p: err nil
// (every one took) or the partition's error. Records of a partition whose
// several acknowledgements were refused together (INVALID_RECORD_STATE:
// one of them was not held any more) are sent again one by one, so that
// the others still take.
func (a *acker) settled(p int, items []ackItem, err error, now time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var retry bool
	if err != nil && len(items) > 1 && errors.Is(err, errInvalidRecordState) {
		retry = true
	}
	for _, it := range items {
		k := recKey{p, it.off}
		r, ok := a.recs[k]
		if !ok {
			continue
		}
		if it.kind == AckRenew {
			if err == nil {
				a.stats.Renewed++
			}
			continue
		}
		if r.state != recSent {
			continue
		}
		if retry && !r.solo {
			r.state, r.solo = recDecided, true
			a.decided[p]++
			a.toSend[r.session] = append(a.toSend[r.session], k)
			continue
		}
		if err == nil {
			switch it.kind {
			case AckAccept:
				a.stats.Accepted++
			case AckRelease:
				a.stats.Released++
			case AckReject:
				a.stats.Rejected++
			}
		} else if errors.Is(err, errInvalidRecordState) {
			a.stats.LockExpiries++
		}
		a.finishLocked(k, r, it.kind, err)
	}
}

// finishLocked forgets record k, and tells who waits for it of err.
// a.mu is held.
func (a *acker) finishLocked(k recKey, r *shareRec, kind AckKind, err error) {
	delete(a.recs, k)
	w := r.wait
	if w == nil {
		if err != nil {
			a.stats.AckErrors++
		}
		return
	}
	if err != nil {
		a.stats.AckErrors++
		e := w.errs[k.p]
		if e == nil {
			e = &AckError{Topic: a.topic, Partition: k.p, Kind: kind, Err: err}
			w.errs[k.p] = e
		}
		e.Offsets = append(e.Offsets, k.off)
		slices.Sort(e.Offsets)
	}
	w.n--
	if w.n == 0 {
		close(w.done)
	}
}

// resend puts items of partition p back, to be sent again (a leader moved,
// a request failed before the broker answered it).
func (a *acker) resend(p int, items []ackItem) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, it := range items {
		k := recKey{p, it.off}
		if r, ok := a.recs[k]; ok && r.state == recSent && it.kind != AckRenew {
			r.state = recDecided
			a.decided[p]++
			a.toSend[r.session] = append(a.toSend[r.session], k)
		}
	}
}

// sessionLost forgets the records acquired in session (the broker released
// them when it ended), failing the acknowledgements that wait for them. It
// returns the partitions that had records in it.
func (a *acker) sessionLost(session uint64) []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	parts := map[int]bool{}
	for k, r := range a.recs {
		if r.session != session {
			continue
		}
		parts[k.p] = true
		if r.state == recDecided {
			a.decided[k.p]--
		}
		a.finishLocked(k, r, r.kind, ErrSessionLost)
	}
	a.delivered = slices.DeleteFunc(a.delivered, func(k recKey) bool { return a.recs[k] == nil })
	delete(a.toSend, session)
	delete(a.renewAt, session)
	return slices.Sorted(maps.Keys(parts))
}

// held returns the count of records held (acquired and not settled).
func (a *acker) held() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.recs)
}

func (a *acker) statsInto(s *Stats) {
	a.mu.Lock()
	defer a.mu.Unlock()
	s.Share = a.stats
	s.Share.Held = len(a.recs)
}

// ShareStats is what a share-group member did (totals since New) and holds.
type ShareStats struct {
	Acquired int64 // records the broker acquired for this member
	Accepted int64 // acknowledged as processed
	Released int64 // given back to the group (Close, Acknowledge, Process stopping)
	Rejected int64 // archived (Acknowledge, a Process handler given up on)
	Renewed  int64 // lock renewals the broker took
	// LockExpiries counts acknowledgements the broker refused because the
	// record's acquisition lock had run out (another member may have it).
	LockExpiries int64
	// AckErrors counts acknowledgements that did not take, for any reason
	// (LockExpiries included, and records of a share session that ended).
	AckErrors int64
	Held      int // records acquired and not settled now
	// AcquisitionLock is the broker's acquisition lock (from its
	// answers), and Renew whether it takes renewals (KIP-1222, Kafka
	// 4.2+): without, a handler that runs longer than the lock loses its
	// record to another member.
	AcquisitionLock time.Duration
	Renew           bool
}
