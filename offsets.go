package multiconsumer

import (
	"maps"
	"slices"
	"time"

	"github.com/segmentio/kafka-go"
)

// This file is the offset bookkeeping: what was delivered to the caller, what
// the caller came back from (consumed), what the group has stored
// (committed), and when auto-commit is due. It is plain data driven by
// explicit inputs, "now" included, so it is tested without a broker or a
// clock. The controller calls it with its mutex held.

// noOffset marks an offset that is not known (nothing committed, no high
// watermark seen yet).
const noOffset = -1

// partOffsets is the bookkeeping of one partition. Every offset is the
// offset of the next message, as Kafka stores it.
type partOffsets struct {
	delivered     int64 // after the last message handed to the caller
	consumed      int64 // after the last message the caller came back from
	committed     int64 // stored in the group; noOffset if none is known
	highWatermark int64 // from the last fetch; noOffset before the first
	fetchErrors   int64
	messages      int64 // delivered (or taken by Process), in all
	bytes         int64 // their keys and values
	touched       bool  // delivered since the last consume: in book.touched

	// Process (window.go): win is the partition's offset window, and
	// committedMeta the metadata stored with committed. win is kept
	// between Process calls, and restored from the commit metadata.
	win           *window
	committedMeta string

	// epoch counts seeks and reassignments. Workers tag what they fetch
	// with the epoch they fetched it in; messages of an older epoch are
	// dropped instead of delivered.
	epoch uint64
	// retired: the partition is being given up; it is neither fetched
	// nor delivered any more, only committed.
	retired bool
}

// book is the bookkeeping of every partition the controller owns, and the
// state of the two auto-commit triggers.
type book struct {
	parts  map[int]*partOffsets
	everyN int           // commit after this many consumed messages; <= 0: never
	everyT time.Duration // commit this long after the last commit; <= 0: never

	epochs      uint64    // the last epoch handed out
	unconsumed  int       // messages delivered and not consumed yet
	touched     []int     // partitions delivered since the last consume
	sinceCommit int       // messages consumed since the last commit
	lastCommit  time.Time // last commit, or creation
	processing  bool      // Process runs: windows say what is consumed
	noMetadata  bool      // the broker refused our commit metadata: commit offsets alone

	// Totals since New, for Stats: they outlive the partitions.
	messages, bytes, fetchErrors int64
	commits                      int64
	lastStored                   time.Time // the last commit that stored offsets
}

func newBook(everyN int, everyT time.Duration, now time.Time) *book {
	return &book{parts: make(map[int]*partOffsets), everyN: everyN, everyT: everyT, lastCommit: now}
}

// add starts bookkeeping for partition p at offset start, with committed the
// offset the group has stored (noOffset for none). Adding a partition that is
// already there restarts it in a new epoch.
func (b *book) add(p int, start, committed int64) {
	b.parts[p] = &partOffsets{
		delivered: start, consumed: start, committed: committed,
		highWatermark: noOffset, epoch: b.newEpoch(),
	}
}

// restore makes the window of partition p from the metadata committed
// with its offset, if the partition starts there.
func (b *book) restore(p int, metadata string) {
	po, ok := b.parts[p]
	if !ok || po.committed == noOffset || po.delivered != po.committed {
		return
	}
	w, err := restoreWindow(po.committed, metadata)
	if err != nil {
		return // not ours: ignored (and not rewritten while the offset stays)
	}
	po.committedMeta = metadata
	if len(w.done) > 0 {
		po.win = w
	}
}

// window returns the offset window of partition p for Process, made anew
// if the one it had no longer starts where the partition is.
func (po *partOffsets) window() *window {
	if po.win == nil || po.win.next != po.delivered || po.win.commit != po.consumed {
		po.win = newWindow(po.delivered)
	}
	return po.win
}

// metadata returns the commit metadata of partition p at its consumed
// offset: the window's completed offsets above it, if it has a window
// there.
func (po *partOffsets) metadata() string {
	if po.win != nil && po.win.commit == po.consumed {
		return po.win.metadata()
	}
	return ""
}

// newEpoch returns an epoch no partition had before: one that leaves and
// comes back (group mode) cannot take a stale batch for a current one.
func (b *book) newEpoch() uint64 {
	b.epochs++
	return b.epochs
}

// retire makes every message of partition p fetched so far stale (it is
// being given up), keeping its offsets for the last commit.
func (b *book) retire(p int) {
	if po, ok := b.parts[p]; ok {
		po.epoch = b.newEpoch()
		po.retired = true
	}
}

// held reports whether the caller holds messages of partitions: delivered
// and not consumed yet, or, under Process, being handled.
func (b *book) held(partitions []int) bool {
	for _, p := range partitions {
		po, ok := b.parts[p]
		if !ok {
			continue
		}
		if b.processing {
			if po.win != nil && po.win.inflight > 0 {
				return true
			}
		} else if po.delivered != po.consumed {
			return true
		}
	}
	return false
}

// has reports whether partition p is in the book.
func (b *book) has(p int) bool {
	_, ok := b.parts[p]
	return ok
}

// fetchable returns where the next fetch of partition p starts (after the
// last message delivered) and the epoch it is fetched in; false when p is
// not in the book or is being given up.
func (b *book) fetchable(p int) (offset int64, epoch uint64, ok bool) {
	po, ok := b.parts[p]
	if !ok || po.retired {
		return 0, 0, false
	}
	return po.delivered, po.epoch, true
}

// setHighWatermark records partition p's high watermark, from a fetch.
func (b *book) setHighWatermark(p int, hwm int64) {
	if po, ok := b.parts[p]; ok {
		po.highWatermark = hwm
	}
}

// fetchFailed counts a failed fetch of partitions.
func (b *book) fetchFailed(partitions []int) {
	for _, p := range partitions {
		if po, ok := b.parts[p]; ok {
			po.fetchErrors++
			b.fetchErrors++
		}
	}
}

// size returns the number of partitions in the book.
func (b *book) size() int { return len(b.parts) }

// deliveredOf returns the offset after the last message of partition p
// delivered; false when p is not in the book.
func (b *book) deliveredOf(p int) (int64, bool) {
	po, ok := b.parts[p]
	if !ok {
		return 0, false
	}
	return po.delivered, true
}

// dropWindow forgets partition p's Process window (a Seek moved it).
func (b *book) dropWindow(p int) {
	if po, ok := b.parts[p]; ok {
		po.win = nil
	}
}

// partitionStats fills out with every partition's stats; with processing,
// the messages Process took and did not complete too.
func (b *book) partitionStats(out map[int]PartitionStats, processing bool) {
	for p, po := range b.parts {
		lag := int64(-1)
		if po.highWatermark >= 0 {
			lag = max(0, po.highWatermark-po.delivered)
		}
		ps := PartitionStats{
			Delivered: po.delivered, Consumed: po.consumed, Committed: po.committed,
			HighWatermark: po.highWatermark, Lag: lag, FetchErrors: po.fetchErrors,
			Messages: po.messages, Bytes: po.bytes,
		}
		if processing && po.win != nil {
			ps.Incomplete = po.win.pending
		}
		out[p] = ps
	}
}

// deliveredOffsets returns the offset after the last message delivered, per
// partition.
func (b *book) deliveredOffsets() map[int]int64 {
	out := make(map[int]int64, len(b.parts))
	for p, po := range b.parts {
		out[p] = po.delivered
	}
	return out
}

// remove ends bookkeeping for partition p (the partition was taken away).
func (b *book) remove(p int) { delete(b.parts, p) }

// partitions returns the partitions in the book, sorted.
func (b *book) partitions() []int { return slices.Sorted(maps.Keys(b.parts)) }

// current reports whether a message of partition p fetched in epoch may
// still be delivered.
func (b *book) current(p int, epoch uint64) bool {
	po, ok := b.parts[p]
	return ok && po.epoch == epoch && !po.retired
}

// deliver records that the message at offset of partition p was handed to
// the caller.
func (b *book) deliver(p int, offset int64) {
	if po, ok := b.parts[p]; ok {
		po.delivered = offset + 1
		b.unconsumed++
		b.touch(p, po)
	}
}

// deliverCurrent is deliver for a message fetched in epoch: it records the
// message and reports true only if that epoch is still current (one map
// lookup for both, on the path of every message Messages yields).
func (b *book) deliverCurrent(p int, epoch uint64, offset int64) bool {
	po, ok := b.parts[p]
	if !ok || po.epoch != epoch {
		return false
	}
	po.delivered = offset + 1
	b.unconsumed++
	b.touch(p, po)
	return true
}

// touch lists p among the partitions the next consume moves, so that
// consume costs what was delivered, not the number of partitions.
func (b *book) touch(p int, po *partOffsets) {
	if !po.touched {
		po.touched = true
		b.touched = append(b.touched, p)
	}
}

// count adds n messages of partition p, of bytes bytes (keys and values),
// to what was delivered in all.
func (b *book) count(p int, n int, bytes int64) {
	if po, ok := b.parts[p]; ok {
		po.messages += int64(n)
		po.bytes += bytes
		b.messages += int64(n)
		b.bytes += bytes
	}
}

// msgBytes returns the size of the keys and values of msgs.
func msgBytes(msgs []kafka.Message) int64 {
	n := 0
	for i := range msgs {
		n += len(msgs[i].Key) + len(msgs[i].Value)
	}
	return int64(n)
}

// deliverRun records that n consecutive messages of partition p, the last
// at offset last, were handed to the caller.
func (b *book) deliverRun(p int, last int64, n int) {
	if po, ok := b.parts[p]; ok {
		po.delivered = last + 1
		b.unconsumed += n
		b.touch(p, po)
	}
}

// advance moves partition p to offset to, where the next message is: the
// offsets between hold no message (transaction markers), or were deleted
// (retention). What the caller holds stays unconsumed until it comes back.
func (b *book) advance(p int, to int64) {
	if po, ok := b.parts[p]; ok {
		po.delivered = to
		b.touch(p, po)
	}
}

// consume records that the caller came back for more: everything delivered
// is consumed now. It reports whether a commit is due.
func (b *book) consume(now time.Time) bool {
	b.consumeDelivered()
	return b.due(now)
}

// consumeCounting is consume without a clock, for a path that runs per
// message: it reports only whether the count trigger fired. The
// committer's timer runs the time trigger.
func (b *book) consumeCounting() bool {
	b.consumeDelivered()
	return b.countDue()
}

// countDue reports whether the count trigger has fired.
func (b *book) countDue() bool {
	return b.sinceCommit > 0 && b.everyN > 0 && b.sinceCommit >= b.everyN
}

// consumeDelivered counts everything delivered as consumed.
func (b *book) consumeDelivered() {
	if len(b.touched) > 0 {
		for _, p := range b.touched {
			if po, ok := b.parts[p]; ok {
				po.consumed = po.delivered
				po.touched = false
			}
		}
		b.touched = b.touched[:0]
		b.sinceCommit += b.unconsumed
		b.unconsumed = 0
	}
}

// seek moves partition p to offset: what was delivered before counts as
// consumed, and the position itself is the next thing to commit. It returns the partition's new epoch, or false if p is not in the
// book.
func (b *book) seek(p int, offset int64) (uint64, bool) {
	po, ok := b.parts[p]
	if !ok {
		return 0, false
	}
	po.epoch = b.newEpoch()
	po.delivered, po.consumed = offset, offset
	b.sinceCommit++
	return po.epoch, true
}

// uncommitted returns the consumed offset of each of partitions (every
// partition when none is given) that differs from what the group stores.
func (b *book) uncommitted(partitions ...int) map[int]int64 {
	out, _ := b.uncommittedMeta(partitions...)
	return out
}

// uncommittedMeta is uncommitted, with the metadata of each offset
// (Process's completed offsets above it), which counts as a difference
// too.
func (b *book) uncommittedMeta(partitions ...int) (map[int]int64, map[int]string) {
	if len(partitions) == 0 {
		partitions = b.partitions()
	}
	out := make(map[int]int64)
	var meta map[int]string
	for _, p := range partitions {
		po, ok := b.parts[p]
		if !ok {
			continue
		}
		md := po.metadata()
		if b.noMetadata {
			md = ""
		}
		if po.consumed != po.committed || md != po.committedMeta {
			out[p] = po.consumed
			if md != "" {
				if meta == nil {
					meta = make(map[int]string)
				}
				meta[p] = md
			}
		}
	}
	return out, meta
}

// due reports whether an auto-commit is due at now: something consumed is
// not committed, and either trigger has fired.
func (b *book) due(now time.Time) bool {
	if b.sinceCommit == 0 {
		return false
	}
	return (b.everyN > 0 && b.sinceCommit >= b.everyN) ||
		(b.everyT > 0 && now.Sub(b.lastCommit) >= b.everyT)
}

// nextDue returns how long after now the time trigger fires, or a negative
// duration when it is disabled.
func (b *book) nextDue(now time.Time) time.Duration {
	if b.everyT <= 0 {
		return -1
	}
	return max(0, b.lastCommit.Add(b.everyT).Sub(now))
}

// committed records that offsets were stored in the group at now. Any commit,
// automatic or explicit, resets both triggers.
func (b *book) committed(offsets map[int]int64, now time.Time) {
	b.committedMeta(offsets, nil, now)
}

// committedMeta is committed, with the metadata stored beside each offset.
func (b *book) committedMeta(offsets map[int]int64, meta map[int]string, now time.Time) {
	if len(offsets) > 0 {
		b.commits++
		b.lastStored = now
	}
	for p, off := range offsets {
		if po, ok := b.parts[p]; ok {
			po.committed = off
			po.committedMeta = meta[p]
		}
	}
	// A partition left out (an explicit Commit of some partitions, or a
	// partial failure) keeps the book due for the next trigger.
	b.sinceCommit = 0
	for _, po := range b.parts {
		if po.consumed != po.committed || po.metadata() != po.committedMeta {
			b.sinceCommit = 1
			break
		}
	}
	b.lastCommit = now
}

// poll reports whether an auto-commit is due at now. When the time trigger
// fires with nothing to commit, it restarts the time trigger instead.
func (b *book) poll(now time.Time) bool {
	if b.due(now) {
		return true
	}
	if b.everyT > 0 && now.Sub(b.lastCommit) >= b.everyT {
		b.lastCommit = now
	}
	return false
}
