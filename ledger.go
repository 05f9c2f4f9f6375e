package multiconsumer

import (
	"fmt"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

// ledger is the book (offsets.go) behind its own lock, with the lease its
// commits are built under. Every part reaches the offsets through its
// methods, each one short critical section: the fetchers (where to fetch),
// the delivery path and the dispatcher (what was delivered, consumed,
// completed), the committer (what to commit, under which lease), the
// partitions' hand-over (added, retired, removed) and Stats.
//
// Lock order: a part may hold its own lock (the dispatcher's, the
// delivery's) when it calls the ledger; the ledger calls nothing while it
// holds mu but the queue's isHungry (a leaf).
type ledger struct {
	topic string // set once
	// acks is a share-group member's (Config.ShareGroup), nil otherwise;
	// set once. The ledger tells it what is delivered and consumed (with
	// implicit, set once, consuming accepts), and keeps no windows.
	acks     *acker
	implicit bool

	mu       sync.Mutex // guards b, lease, awaiting and runP/runPO
	b        *book
	lease    lease // what commits are built under; noLease outside group mode and between generations
	awaiting int   // hand-overs waiting for the caller to come back (awaitHeld): consuming notifies consumed
	consumed broadcast
	// Within lockRuns (runPart): the partition looked up last, and its
	// offsets.
	runP  int
	runPO *partOffsets
}

func newLedger(topic string, everyN int, everyT time.Duration, now time.Time) *ledger {
	return &ledger{topic: topic, b: newBook(everyN, everyT, now), lease: noLease}
}

// notifyLocked wakes a hand-over that waits for the caller (awaitHeld).
// l.mu is held.
func (l *ledger) notifyLocked() {
	if l.awaiting > 0 {
		l.consumed.notify()
	}
}

// start enters partition p at start, with what the group stores for it:
// its committed offset (noOffset for none) and the commit metadata that
// restores what Process completed past it.
func (l *ledger) start(p int, start, committed int64, meta string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.add(p, start, committed)
	l.b.restore(p, meta)
}

// renew starts partitions parts anew, in new epochs: what was fetched of
// them before is stale (a share session that ended: the broker released
// its records). It returns the new epochs.
func (l *ledger) renew(parts []int) map[int]uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	epochs := map[int]uint64{}
	for _, p := range parts {
		if po, ok := l.b.parts[p]; ok {
			po.epoch = l.b.newEpoch()
			epochs[p] = po.epoch
		}
	}
	return epochs
}

// epochOf returns partition p's epoch (what its batches are tagged with).
func (l *ledger) epochOf(p int) (uint64, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	po, ok := l.b.parts[p]
	if !ok {
		return 0, false
	}
	return po.epoch, true
}

func (l *ledger) has(p int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.has(p)
}

func (l *ledger) partitions() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.partitions()
}

// missing returns those of parts that are not in the ledger.
func (l *ledger) missing(parts []int) []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []int
	for _, p := range parts {
		if !l.b.has(p) {
			out = append(out, p)
		}
	}
	return out
}

func (l *ledger) deliveredOffsets() map[int]int64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.deliveredOffsets()
}

// The fetchers' side.

// plan brings a fetcher's positions up to date with seeks and puts its
// partitions that may be fetched at now in pl, grouped by leader, in the
// order of parts. When every one is backing off, it returns how long until
// the first may retry. Partitions without a leader are left out, and
// reported: the metadata should be read again. So are partitions that
// have their share of the queue while Process runs (full, as hungry
// says): they wait for room.
func (l *ledger) plan(parts []int, pos map[int]*fetchPos, now time.Time, pl *plan, leaders map[int]int, hungry func(int) bool) (idle time.Duration, leaderless, full bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	pl.reset()
	idle = -1
	for _, p := range parts {
		delivered, epoch, ok := l.b.fetchable(p)
		if !ok {
			continue // its worker lets it go at its next round
		}
		fp := pos[p]
		if !fp.synced || fp.epoch != epoch {
			// A new position (a Seek) is tried at once, backoff or not.
			*fp = fetchPos{offset: delivered, epoch: epoch, synced: true}
		}
		if wait := fp.retryAt.Sub(now); wait > 0 {
			if idle < 0 || wait < idle {
				idle = wait
			}
			continue
		}
		ld, ok := leaders[p]
		if !ok || ld == noLeader {
			leaderless = true
			continue
		}
		if !hungry(p) {
			full = true // it waits for room (queue.waitRoom)
			continue
		}
		pl.add(ld, p)
	}
	if idle < 0 {
		idle = time.Hour // no partition at all: the worker waits to be stopped
	}
	return idle, leaderless, full
}

func (l *ledger) setHighWatermark(p int, hwm int64) {
	l.mu.Lock()
	l.b.setHighWatermark(p, hwm)
	l.mu.Unlock()
}

func (l *ledger) fetchFailed(parts []int) {
	l.mu.Lock()
	l.b.fetchFailed(parts)
	l.mu.Unlock()
}

// The delivery path's side.

func (l *ledger) current(p int, epoch uint64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.current(p, epoch)
}

// consume records that the caller came back for more, and reports whether
// a commit is due.
func (l *ledger) consume(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	due := l.b.consume(now)
	l.notifyLocked()
	if l.implicit {
		l.acks.consumed()
	}
	return due
}

// consumeCounting is consume on a per-message path: it checks the count
// trigger only (the committer's timer runs the time trigger).
func (l *ledger) consumeCounting() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	due := l.b.consumeCounting()
	l.notifyLocked()
	if l.implicit {
		l.acks.consumed()
	}
	return due
}

// deliverBatches records taken as delivered and returns their messages,
// leaving out those of partitions moved (a Seek, a revoke) since they were
// fetched. n is their count.
func (l *ledger) deliverBatches(taken []batch, n int) []kafka.Message {
	var out []kafka.Message
	if len(taken) > 1 {
		out = make([]kafka.Message, 0, n) // one copy each, not one per doubling
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, b := range taken {
		if !l.b.current(b.partition, b.epoch) {
			continue
		}
		if len(b.msgs) == 0 {
			l.b.advance(b.partition, b.advance)
			continue
		}
		l.b.deliverRun(b.partition, b.msgs[len(b.msgs)-1].Offset, len(b.msgs))
		l.b.count(b.partition, len(b.msgs), msgBytes(b.msgs))
		if l.acks != nil {
			l.acks.deliver(b.msgs, l.implicit)
		}
		if len(b.msgs) == n && !b.whole {
			// One batch of an array its own size (a trickle's): hand it
			// over as it is, no copy. Nothing else uses its array past
			// its end (a split in queue.take clips the head's capacity;
			// a worker drops a run it has queued), so the caller may
			// append to it.
			out = b.msgs
			continue
		}
		// A whole array (a backlog's run, sized for a full batch) is
		// copied out of, and goes back to the queue (see arrays): the
		// caller's slice is as large as what it holds.
		if out == nil {
			out = make([]kafka.Message, 0, n)
		}
		out = append(out, b.msgs...)
	}
	return out
}

// keepCurrent returns the batches of taken whose partitions were not moved
// since they were fetched, and the count of their messages.
func (l *ledger) keepCurrent(taken []batch) ([]batch, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kept, n := taken[:0], 0
	for _, b := range taken {
		if l.b.current(b.partition, b.epoch) {
			kept = append(kept, b)
			n += len(b.msgs)
		}
	}
	return kept, n
}

// advanceCurrent moves partition p past a batch without messages (a
// marker: what it skipped), and reports whether epoch is current.
func (l *ledger) advanceCurrent(p int, epoch uint64, to int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.b.current(p, epoch) {
		return false
	}
	l.b.advance(p, to)
	return true
}

// sent records m, of partition p fetched in epoch, as received by an Iter
// channel's reader: what was delivered before is consumed, m is delivered.
// It reports whether a commit is due and whether epoch is still current.
func (l *ledger) sent(p int, epoch uint64, m *kafka.Message) (due, current bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	due = l.b.consumeCounting()
	if l.implicit {
		l.acks.consumed()
	}
	if current = l.b.current(p, epoch); current {
		l.b.deliver(p, m.Offset)
		l.b.count(p, 1, int64(len(m.Key)+len(m.Value)))
		if l.acks != nil {
			l.acks.deliver([]kafka.Message{*m}, l.implicit)
		}
	}
	l.notifyLocked()
	return due, current
}

// deliverCurrent records one message at offset as delivered and reports
// true, if epoch is still partition p's.
func (l *ledger) deliverCurrent(p int, epoch uint64, offset int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.b.deliverCurrent(p, epoch, offset) {
		return false
	}
	if l.acks != nil {
		l.acks.deliverOne(p, offset, l.implicit)
	}
	return true
}

// Seek's side.

// reposition moves each of parts to the offset that target returns for it,
// given where it is (the offset after the last message delivered), as one
// step: a target error moves nothing. Each moved partition gets a new
// epoch (returned, so that what was fetched before is dropped), and loses
// its Process window.
func (l *ledger) reposition(parts []int, target func(p int, delivered int64) (int64, error)) (map[int]int64, map[int]uint64, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	targets := make(map[int]int64, len(parts))
	for _, p := range parts {
		d, ok := l.b.deliveredOf(p)
		if !ok { // taken away since the caller looked
			return nil, nil, &PartitionError{Topic: l.topic, Partition: p, Err: ErrUnknownPartition}
		}
		t, err := target(p, d)
		if err != nil {
			return nil, nil, err
		}
		targets[p] = t
	}
	epochs := make(map[int]uint64, len(targets))
	for p, t := range targets {
		l.b.dropWindow(p) // Process starts afresh there
		epochs[p], _ = l.b.seek(p, t)
	}
	return targets, epochs, nil
}

// rewind moves each partition whose Process window has messages taken and
// not complete back to its lowest incomplete offset, in a new epoch (after
// Process stopped: they are fetched again). What completed above stays
// known.
func (l *ledger) rewind() (map[int]int64, map[int]uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	targets := make(map[int]int64)
	epochs := make(map[int]uint64)
	for p, po := range l.b.parts {
		if w := po.win; w != nil && w.next != w.commit {
			w.rewind()
			targets[p] = w.commit
			epochs[p], _ = l.b.seek(p, w.commit)
		}
	}
	return targets, epochs
}

// The hand-over's side (lease.go).

// setLease records the lease that commits are built under from now on.
func (l *ledger) setLease(ls lease) {
	l.mu.Lock()
	l.lease = ls
	l.mu.Unlock()
}

func (l *ledger) currentLease() lease {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lease
}

// retire makes everything fetched of parts so far stale: they are being
// given up, and only committed from now on.
func (l *ledger) retire(parts []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range parts {
		l.b.retire(p)
	}
}

// awaitHeld reports whether the caller holds messages of parts (delivered
// and not consumed, or being handled) and, if so, counts the caller as
// awaited and returns a channel closed when it next consumes or completes;
// the caller then calls doneAwaiting.
func (l *ledger) awaitHeld(parts []int) (bool, <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.b.held(parts) {
		return false, nil
	}
	l.awaiting++
	return true, l.consumed.wait()
}

func (l *ledger) doneAwaiting() {
	l.mu.Lock()
	l.awaiting--
	l.mu.Unlock()
}

func (l *ledger) remove(parts []int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, p := range parts {
		l.b.remove(p)
	}
}

// The committer's side (commit.go).

// toCommit returns the lease to commit under, read before the offsets it
// covers: the consumed offsets of partitions (all when none is given) that
// the group does not store yet, with their metadata. With nothing to
// commit it resets the triggers and returns no offsets.
func (l *ledger) toCommit(now time.Time, partitions ...int) (lease, map[int]int64, map[int]string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	offsets, meta := l.b.uncommittedMeta(partitions...)
	if len(offsets) == 0 {
		l.b.committed(nil, now)
	}
	return l.lease, offsets, meta
}

// sendable returns the offsets that a commit built under ls may send now:
// an error if ls is no longer the lease (or, with group, ended), and
// otherwise the offsets of the partitions still in the ledger, with an
// error naming each one that is not.
func (l *ledger) sendable(ls lease, group string, member bool, offsets map[int]int64) (send map[int]int64, dropped []error, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if cur := l.lease; cur != ls || member && ls.generation < 0 {
		return nil, nil, fmt.Errorf("multiconsumer: commit offsets of group %q under generation %d (now %d): %w",
			group, ls.generation, cur.generation, errLeaseEnded)
	}
	send = make(map[int]int64, len(offsets))
	for p, off := range offsets {
		if !l.b.has(p) {
			dropped = append(dropped, &PartitionError{Topic: l.topic, Partition: p,
				Err: fmt.Errorf("commit offset %d: revoked before the commit went out: %w", off, errLeaseEnded)})
			continue
		}
		send[p] = off
	}
	return send, dropped, nil
}

// stored records what a commit stored.
func (l *ledger) stored(ok map[int]int64, meta map[int]string, now time.Time) {
	if len(ok) == 0 {
		return
	}
	l.mu.Lock()
	l.b.committedMeta(ok, meta, now)
	l.mu.Unlock()
}

// dropMetadata makes every commit from now on go without metadata (the
// broker refused it).
func (l *ledger) dropMetadata() {
	l.mu.Lock()
	l.b.noMetadata = true
	l.mu.Unlock()
}

func (l *ledger) nextDue(now time.Time) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.nextDue(now)
}

func (l *ledger) poll(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.poll(now)
}

// The dispatcher's side (process.go). A Process window (window.go) is the
// ledger's: the dispatcher changes it only through these methods.

// setProcessing tells the book whether Process runs: while it does, the
// windows say what is consumed.
func (l *ledger) setProcessing(on bool) {
	l.mu.Lock()
	l.b.processing = on
	l.mu.Unlock()
}

// takeBatch takes b's messages into partition b.partition's window, if b
// was fetched in its current epoch, calling take for each stretch
// b.msgs[lo:hi] of messages not complete already (in offset order, one
// call for the whole batch unless some are); it returns the window, the
// count of messages left out (complete already), and false when b is
// stale.
func (l *ledger) takeBatch(b *batch, now time.Time, take func(lo, hi int, w *window)) (w *window, skipped int, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	po, ok := l.b.parts[b.partition]
	if !ok || po.epoch != b.epoch {
		return nil, 0, false
	}
	if l.acks != nil {
		// A share group's records come in any order (a released one
		// comes again), and are settled one by one: no window.
		l.b.count(b.partition, len(b.msgs), msgBytes(b.msgs))
		if len(b.msgs) > 0 {
			take(0, len(b.msgs), nil)
		}
		return nil, 0, true
	}
	w = po.window()
	if len(b.msgs) == 0 {
		w.advance(b.advance)
		l.movedLocked(po, w)
		return w, 0, true
	}
	var size int64
	lo := 0
	for i := range b.msgs {
		m := &b.msgs[i]
		size += int64(len(m.Key) + len(m.Value))
		if !w.take(m.Offset) {
			if lo < i {
				take(lo, i, w)
			}
			lo = i + 1
			skipped++
		}
	}
	if lo < len(b.msgs) {
		take(lo, len(b.msgs), w)
	}
	l.b.count(b.partition, len(b.msgs), size)
	l.movedLocked(po, w)
	return w, skipped, true
}

// movedLocked brings the book's offsets of a partition up to its window:
// delivered is what was taken, consumed the lowest incomplete offset. It
// reports whether consumed moved, which counts for the count trigger.
func (l *ledger) movedLocked(po *partOffsets, w *window) bool {
	po.delivered = w.next
	if w.commit == po.consumed {
		return false
	}
	po.consumed = w.commit
	l.b.sinceCommit++
	return true
}

// beginState is what begin found.
type beginState int

const (
	begun        beginState = iota
	beginStale              // a Seek or a revoke since the message was taken
	beginBlocked            // the window's metadata has no room for another completion
)

// lockRuns locks the ledger for a run of beginLocked, unbeginLocked and
// finishLocked calls (a hand of the dispatcher claiming messages, or
// settling those it handled: one critical section for them all, not one per
// message); unlockRuns ends it.
func (l *ledger) lockRuns() {
	l.mu.Lock()
	l.runPO = nil
}

func (l *ledger) unlockRuns() { l.mu.Unlock() }

// runPart returns partition p's offsets within lockRuns: the messages of a
// run are mostly of one partition, looked up once. l.mu is held.
func (l *ledger) runPart(p int) (*partOffsets, bool) {
	if l.runPO != nil && l.runP == p {
		return l.runPO, true
	}
	po, ok := l.b.parts[p]
	if ok {
		l.runP, l.runPO = p, po
	}
	return po, ok
}

// beginLocked starts the handling of up to k messages of partition p,
// taken into window w in epoch, the first at offset (in offset order),
// and returns how many began: fewer than k when the window's commit
// metadata has no room for more (beginBlocked; maybe none), none when
// they are stale. A share group's begin one at a time (each its own
// record). l.mu is held (lockRuns).
func (l *ledger) beginLocked(p int, epoch uint64, w *window, offset int64, k int) (int, beginState) {
	if !l.currentLocked(p, epoch, w) {
		return 0, beginStale
	}
	if w == nil { // a share group's: no window
		l.acks.handling(p, offset)
		return 1, begun
	}
	n := 0
	// The lowest incomplete message always starts: its completion moves
	// the commit, and frees room.
	if offset == w.commit {
		w.inflight++
		n++
	}
	if n < k && w.roomFor(k-n) {
		w.inflight += k - n
		return k, begun
	}
	for n < k && w.room() { // not room for all: for as many as fit
		w.inflight++
		n++
	}
	if n < k {
		return n, beginBlocked
	}
	return n, begun
}

// currentLocked reports whether window w, taken in epoch, is still
// partition p's: what beginLocked checks first. l.mu is held (lockRuns).
func (l *ledger) currentLocked(p int, epoch uint64, w *window) bool {
	po, ok := l.runPart(p)
	return ok && po.epoch == epoch && (w == nil || po.win == w)
}

// unbeginLocked undoes beginLocked for a message of window w that was not
// handled after all: the dispatcher gave it back to wait for its turn
// again (a Seek or a revoke interrupted its run, or a message before it
// waits). l.mu is held (lockRuns).
func (l *ledger) unbeginLocked(w *window) {
	if w != nil {
		w.inflight--
	}
	l.notifyLocked() // a revoke waits until its partitions have nothing in flight
}

// isCurrent reports whether window w, taken in epoch, is still partition
// p's.
func (l *ledger) isCurrent(p int, epoch uint64, w *window) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	po, ok := l.b.parts[p]
	return ok && po.epoch == epoch && (w == nil || po.win == w)
}

// finishLocked ends the handling of n messages of partition p in window w,
// at offset(0) to offset(n-1): complete, or not. It reports whether a
// commit is due. l.mu is held (lockRuns).
func (l *ledger) finishLocked(p int, w *window, n int, offset func(int) int64, complete bool) (due bool) {
	if w == nil { // a share group's: settled by the processor
		l.notifyLocked()
		return false
	}
	w.inflight -= n
	if complete {
		c := completing{w: w}
		for i := range n {
			c.complete(offset(i))
		}
		c.flush()
		if po, ok := l.runPart(p); ok && po.win == w {
			if l.movedLocked(po, w) {
				n-- // the commit moved: counted once, as each completion is
			}
			l.b.sinceCommit += n // completions count for the count trigger
			due = l.b.countDue()
		}
	}
	l.notifyLocked() // a revoke waits for the handlers
	return due
}

// stats fills in s's offsets, counts and partitions; with processing, the
// messages Process took and did not complete too.
func (l *ledger) stats(s *Stats, processing bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s.MemberID, s.Generation = l.lease.memberID, l.lease.generation
	s.Commits, s.LastCommit = l.b.commits, l.b.lastStored
	s.Messages, s.Bytes, s.FetchErrors = l.b.messages, l.b.bytes, l.b.fetchErrors
	s.Partitions = make(map[int]PartitionStats, l.b.size())
	l.b.partitionStats(s.Partitions, processing)
}
