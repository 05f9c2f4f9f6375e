package multiconsumer

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"math/bits"
	"slices"
	"strings"
)

// This file is the offset window of Process: which messages of a partition
// are complete, so that the committed offset is the lowest incomplete one,
// and the completed offsets above it travel in the commit's metadata. It is
// plain data, tested on its own; the controller calls it with its mutex
// held.

// span is the offsets [start, end).
type span struct{ start, end int64 }

// window is the state of one partition's offsets under Process:
//   - every offset below commit is complete;
//   - at or above commit, an offset is complete if done holds it;
//   - the messages taken (handed to Process) and not complete are pending;
//     they are all below next, the offset after the last message taken.
//
// Offsets between two taken messages that hold no message (compacted away,
// transaction markers) are complete: take records them so, with the
// message before them when it is pending (they complete with it), so that
// they never make spans of their own. done may reach past next: offsets a
// previous owner completed (restored from the commit metadata), which take
// then skips.
type window struct {
	commit int64
	next   int64
	done   []span // sorted, disjoint, not adjacent, all above commit
	// runBytes is the size of done in the run-length encoding of the
	// metadata (runsLen of all of it): add keeps it, so that room, called
	// for every handler started, does not walk done.
	runBytes int
	pending  int // taken, not complete
	// inflight are the pending messages handed to a handler: each may
	// complete out of order, and add a span to done.
	inflight int
	// tail is the last message taken, if it is pending, else -1; gaps[o]
	// is the end of the offsets without a message after pending message
	// o, which complete with it.
	tail int64
	gaps map[int64]int64
}

func newWindow(start int64) *window { return &window{commit: start, next: start, tail: -1} }

// gap records that [w.next, o) holds no message.
func (w *window) gap(o int64) {
	if w.tail >= 0 && w.tail >= w.commit && !w.isDone(w.tail) {
		if w.gaps == nil {
			w.gaps = make(map[int64]int64)
		}
		w.gaps[w.tail] = o
		return
	}
	w.add(max(w.next, w.commit), o)
}

// take records that the message at offset o is taken, and reports whether
// it must be handled: false if it is complete already (a message before
// the window, or one done records).
func (w *window) take(o int64) bool {
	if o < w.next {
		return false // complete, or pending already
	}
	if o > w.next {
		w.gap(o) // no message in between
	}
	w.next = o + 1
	w.tail = -1
	if o < w.commit || w.isDone(o) {
		return false
	}
	w.tail = o
	w.pending++
	return true
}

// advance moves next to o: the offsets between hold no message.
func (w *window) advance(o int64) {
	if o > w.next {
		w.gap(o)
		w.next = o
	}
}

// complete records that the pending message at offset o is complete.
func (w *window) complete(o int64) {
	c := completing{w: w}
	c.complete(o)
	c.flush()
}

// completing records the completions of a run of messages of one window:
// adjacent ones (a partition's messages handled in order, the common case)
// make one span, added to done at once, not one add each.
type completing struct {
	w    *window
	a, b int64 // the stretch [a, b) gathered, not added yet; empty if a == b
}

// complete records that the pending message at offset o is complete; flush
// adds what it gathered.
func (c *completing) complete(o int64) {
	w := c.w
	if o < w.commit || o >= w.next || (o >= c.a && o < c.b) || w.isDone(o) {
		return // not pending: already complete
	}
	w.pending--
	end := o + 1
	if len(w.gaps) > 0 {
		if g, ok := w.gaps[o]; ok {
			end = g
			delete(w.gaps, o)
		}
	}
	if o == c.b && c.a < c.b {
		c.b = end
		return
	}
	c.flush()
	c.a, c.b = o, end
}

// flush adds the stretch gathered to done.
func (c *completing) flush() {
	if c.a < c.b {
		c.w.add(c.a, c.b)
	}
	c.a, c.b = 0, 0
}

// rewind forgets what was taken and not complete: it is taken again from
// the commit on. What completed above stays known.
func (w *window) rewind() {
	w.next, w.pending, w.inflight, w.tail, w.gaps = w.commit, 0, 0, -1, nil
}

// isDone reports whether done holds o.
func (w *window) isDone(o int64) bool {
	if n := len(w.done); n == 0 || o < w.done[0].start || o >= w.done[n-1].end {
		return false // the common case: nothing done around o
	}
	_, found := slices.BinarySearchFunc(w.done, o, func(s span, o int64) int {
		switch {
		case s.end <= o:
			return -1
		case s.start > o:
			return 1
		}
		return 0
	})
	return found
}

// add records [a, b) as complete, merging spans, and moves commit past a
// span that starts at it.
func (w *window) add(a, b int64) {
	if a >= b {
		return
	}
	// i: the first span that ends at or after a (it may merge with [a, b)).
	i, _ := slices.BinarySearchFunc(w.done, a, func(s span, a int64) int {
		if s.end < a {
			return -1
		}
		return 1
	})
	j := i // j: the first span that starts after b
	for j < len(w.done) && w.done[j].start <= b {
		j++
	}
	if i < j {
		a = min(a, w.done[i].start)
		b = max(b, w.done[j-1].end)
	}
	// The runs that change: the spans merged into [a, b), and the one
	// after them, whose distance from the span before changes.
	w.runBytes -= w.runsLen(i, min(j+1, len(w.done)))
	w.done = slices.Replace(w.done, i, j, span{a, b})
	if w.done[0].start <= w.commit {
		// Only the new span can start at the commit: i is 0.
		w.commit = max(w.commit, w.done[0].end)
		w.done = slices.Delete(w.done, 0, 1)
		w.runBytes += w.runsLen(0, min(1, len(w.done)))
		return
	}
	w.runBytes += w.runsLen(i, min(i+2, len(w.done)))
}

// Commit metadata, "mc2:" then, base64 (standard, unpadded), a byte saying
// which of two encodings follows, the commit offset it was written for and
// the number of spans (uvarints), and the spans of done:
//   - metaRuns: for each span, a uvarint of its distance from the end of
//     the one before (from the commit for the first) less one, shifted
//     left one bit, the low bit set if the span is longer than one offset;
//     then, if so, a uvarint of its length less two. A span of one offset
//     (one message completed alone, the sparse case) within 64 offsets
//     of the one before takes one byte.
//   - metaBits: a bit for each offset from the commit + 1 (the commit is
//     never complete) to the end of the last span, set if it is complete;
//     the lowest bit of each byte first, and the last byte is not zero.
//
// metadata writes the shorter of the two, as parallel-consumer does (its
// run-length and bitset encodings): the bitset costs a bit an offset, the
// runs a byte or a few a span, so the bitset wins when the spans are
// dense (every other offset complete: 12,000 spans fit, if what was taken
// reaches no further than 24,000 offsets) and the runs when they are
// sparse (3,000 spans up to 64 offsets apart). base64 over a denser alphabet (ascii85 gives 4 bytes in 5
// characters, base64 3 in 4: 7% more) is not worth it: base64 has no quote
// or backslash to escape wherever offsets are shown, and ASCII is one byte
// and one Java char, so the length Kafka checks (in chars) is the length
// we count (in bytes).
//
// "mc1:" (the metadata written before mc2) still restores: base64 of a
// version byte (1), the commit offset, the number of spans, and for each
// span its distance from the end of the one before (from commit for the
// first) and its length, all uvarints.
const (
	metaPrefix   = "mc2:"
	metaPrefixV1 = "mc1:"
	metaVersion1 = 1
	metaRuns     = 0
	metaBits     = 1
	// maxMetadata is Kafka's default offset.metadata.max.bytes: a commit
	// with longer metadata is refused.
	maxMetadata = 4096
	maxMetaRaw  = (maxMetadata - len(metaPrefix)) * 3 / 4
	// maxBitsetWidth is how many offsets from the commit a bitset holds
	// with the longest header (the kind, the commit and the count).
	maxBitsetWidth = int64(8 * (maxMetaRaw - 1 - 2*binary.MaxVarintLen64))
)

// room reports whether one more handler may start on the partition: even
// if every message in flight then completed apart from the others, the
// spans would still fit in the metadata. It prices the spans done at their
// size (runBytes) and the ones in flight at their worst: a completion adds
// at most one span (a run of its distance and one of its length, each at
// most the window's width), or lengthens one (a run of its length), sets
// bits below reach only, and moves the commit (in the header) at most up
// to reach. The bitset is priced up to reach, past the last span: the
// window counts the messages in flight, it does not know which they are,
// so any message taken might complete.
func (w *window) room() bool { return w.roomFor(1) }

// roomFor is room for k more messages in flight at once.
func (w *window) roomFor(k int) bool {
	r := w.reach()
	if r-w.commit <= maxBitsetWidth {
		return true // the common case: even every offset complete fits
	}
	n := w.inflight + k
	head := 1 + uvarintLen(uint64(max(r, 0))) + uvarintLen(uint64(len(w.done)+n))
	width := uint64(max(r-w.commit, 0))
	runs := w.runBytes + n*(uvarintLen(width<<1|1)+uvarintLen(width))
	return head+min(runs, bitsetLen(w.commit, r)) <= maxMetaRaw
}

// reach is the end of what the window knows: past it nothing is complete.
func (w *window) reach() int64 {
	r := w.next
	if n := len(w.done); n > 0 {
		r = max(r, w.done[n-1].end)
	}
	return r
}

// runsLen is the size of spans [from, to) of done in the run-length
// encoding.
func (w *window) runsLen(from, to int) int {
	if from >= to {
		return 0
	}
	prev := w.commit
	if from > 0 {
		prev = w.done[from-1].end
	}
	n := 0
	for _, s := range w.done[from:to] {
		if s.end-s.start == 1 {
			n += uvarintLen(uint64(s.start-prev-1) << 1)
		} else {
			n += uvarintLen(uint64(s.start-prev-1)<<1|1) + uvarintLen(uint64(s.end-s.start-2))
		}
		prev = s.end
	}
	return n
}

// appendRun appends the run of span s, after the end prev of the one
// before, to b.
func appendRun(b []byte, prev int64, s span) []byte {
	if s.end-s.start == 1 {
		return binary.AppendUvarint(b, uint64(s.start-prev-1)<<1)
	}
	b = binary.AppendUvarint(b, uint64(s.start-prev-1)<<1|1)
	return binary.AppendUvarint(b, uint64(s.end-s.start-2))
}

// bitsetLen is the size of the bitset of the offsets from commit + 1 to
// end.
func bitsetLen(commit, end int64) int {
	return int((max(end-commit-1, 0) + 7) / 8)
}

func uvarintLen(x uint64) int {
	if x < 1<<7 {
		return 1 // most runs
	}
	return (bits.Len64(x) + 6) / 7
}

// metadata encodes the spans of done for a commit at w.commit; "" when
// there are none. Spans that do not fit are left out: they will be handled
// again, which at-least-once allows. (room keeps that from happening,
// unless offsets without a message came after a message in flight, found
// when the next one was taken: its span grows past what room priced.)
func (w *window) metadata() string {
	if len(w.done) == 0 {
		return ""
	}
	head := 1 + uvarintLen(uint64(w.commit)) + uvarintLen(uint64(len(w.done)))
	// How many spans each encoding holds, and in how many bytes.
	nRuns, runs := len(w.done), w.runBytes
	if head+runs > maxMetaRaw {
		runs = 0
		for k := range w.done {
			n := w.runsLen(k, k+1)
			if head+runs+n > maxMetaRaw {
				nRuns = k
				break
			}
			runs += n
		}
	}
	nBits := len(w.done)
	if head+bitsetLen(w.commit, w.done[nBits-1].end) > maxMetaRaw {
		nBits, _ = slices.BinarySearchFunc(w.done, 0, func(s span, _ int) int {
			if head+bitsetLen(w.commit, s.end) <= maxMetaRaw {
				return -1
			}
			return 1
		})
	}
	bitset := 0
	if nBits > 0 {
		bitset = bitsetLen(w.commit, w.done[nBits-1].end)
	}
	if nRuns == 0 && nBits == 0 {
		return ""
	}
	useBits := nBits > nRuns || nBits == nRuns && bitset < runs
	raw := make([]byte, 0, head+max(runs, bitset))
	if useBits {
		raw = append(raw, metaBits)
		raw = binary.AppendUvarint(raw, uint64(w.commit))
		raw = binary.AppendUvarint(raw, uint64(nBits))
		at := len(raw)
		raw = raw[:at+bitset]
		set := raw[at:]
		clear(set)
		for _, s := range w.done[:nBits] {
			setBits(set, int(s.start-w.commit-1), int(s.end-w.commit-1))
		}
	} else {
		raw = append(raw, metaRuns)
		raw = binary.AppendUvarint(raw, uint64(w.commit))
		raw = binary.AppendUvarint(raw, uint64(nRuns))
		prev := w.commit
		for _, s := range w.done[:nRuns] {
			raw = appendRun(raw, prev, s)
			prev = s.end
		}
	}
	return metaPrefix + base64.RawStdEncoding.EncodeToString(raw)
}

// setBits sets bits [from, to) of b.
func setBits(b []byte, from, to int) {
	for ; from < to && from%8 != 0; from++ {
		b[from/8] |= 1 << (from % 8)
	}
	for ; from+8 <= to; from += 8 {
		b[from/8] = 0xff
	}
	for ; from < to; from++ {
		b[from/8] |= 1 << (from % 8)
	}
}

var errMeta = errors.New("not multiconsumer metadata")

// maxMetaOffset bounds the offsets metadata may name: far from overflow.
const maxMetaOffset = 1 << 62

// restoreWindow returns the window of a partition whose committed offset is
// commit, with the metadata stored beside it. Metadata that is not ours,
// or was written for another offset, restores nothing.
func restoreWindow(commit int64, metadata string) (*window, error) {
	w := newWindow(commit)
	if metadata == "" {
		return w, nil
	}
	decode := decodeMeta
	enc, ok := strings.CutPrefix(metadata, metaPrefix)
	if !ok {
		decode = decodeMetaV1
		enc, ok = strings.CutPrefix(metadata, metaPrefixV1)
	}
	if !ok || len(enc) > maxMetadata || commit < 0 || commit > maxMetaOffset {
		return w, errMeta
	}
	raw, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil {
		return w, errMeta
	}
	done, ok := decode(commit, raw)
	if !ok {
		return w, errMeta
	}
	w.done = done
	w.runBytes = w.runsLen(0, len(done))
	return w, nil
}

// metaReader reads uvarints of metadata.
type metaReader []byte

func (r *metaReader) uvarint() (int64, bool) {
	x, ok := r.uvarint64()
	return int64(x), ok && x <= maxMetaOffset
}

func (r *metaReader) uvarint64() (uint64, bool) {
	x, n := binary.Uvarint(*r)
	if n <= 0 {
		return 0, false
	}
	*r = (*r)[n:]
	return x, true
}

// decodeMeta decodes mc2 metadata, written for commit.
func decodeMeta(commit int64, raw []byte) ([]span, bool) {
	if len(raw) == 0 {
		return nil, false
	}
	kind := raw[0]
	r := metaReader(raw[1:])
	at, ok1 := r.uvarint()
	count, ok2 := r.uvarint()
	// Each span takes two bytes of runs or a bit at least.
	if !ok1 || !ok2 || at != commit || count < 1 || count > 8*int64(len(r)) {
		return nil, false
	}
	var done []span
	switch kind {
	case metaRuns:
		done = make([]span, 0, min(count, int64(len(r))))
		prev := commit
		for range count {
			x, ok1 := r.uvarint64()
			long := x&1 != 0
			gap, n, ok2 := int64(x>>1), int64(0), true // distance less one; length less two
			if long {
				n, ok2 = r.uvarint()
			}
			if !ok1 || !ok2 || gap > maxMetaOffset || prev > maxMetaOffset-gap-n-2 {
				return nil, false
			}
			s := span{prev + gap + 1, prev + gap + 2}
			if long {
				s.end += n + 1
			}
			done = append(done, s)
			prev = s.end
		}
	case metaBits:
		if r[len(r)-1] == 0 || commit > maxMetaOffset-8*int64(len(r)) {
			return nil, false // not canonical: the last byte ends a span
		}
		for i := range 8 * len(r) {
			if r[i/8]&(1<<(i%8)) == 0 {
				continue
			}
			o := commit + 1 + int64(i)
			if n := len(done); n > 0 && done[n-1].end == o {
				done[n-1].end++
			} else {
				done = append(done, span{o, o + 1})
			}
		}
		r = r[len(r):]
	default:
		return nil, false
	}
	return done, len(r) == 0 && int64(len(done)) == count
}

// decodeMetaV1 decodes mc1 metadata, written for commit.
func decodeMetaV1(commit int64, raw []byte) ([]span, bool) {
	if len(raw) == 0 || raw[0] != metaVersion1 {
		return nil, false
	}
	r := metaReader(raw[1:])
	at, ok1 := r.uvarint()
	count, ok2 := r.uvarint()
	if !ok1 || !ok2 || at != commit || count > int64(len(r)) {
		return nil, false
	}
	done := make([]span, 0, count)
	prev := commit
	for range count {
		gap, ok1 := r.uvarint()
		n, ok2 := r.uvarint()
		// Each span starts past the one before (an adjacent one would
		// have been merged; the first is past commit) and is not empty.
		if !ok1 || !ok2 || gap < 1 || n < 1 || prev > maxMetaOffset-gap-n {
			return nil, false
		}
		s := span{prev + gap, prev + gap + n}
		done = append(done, s)
		prev = s.end
	}
	return done, len(r) == 0
}
