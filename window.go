package multiconsumer

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
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
	commit  int64
	next    int64
	done    []span // sorted, disjoint, not adjacent, all above commit
	pending int    // taken, not complete
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
	if o < w.commit || o >= w.next || w.isDone(o) {
		return // not pending: already complete
	}
	w.pending--
	end := o + 1
	if g, ok := w.gaps[o]; ok {
		end = g
		delete(w.gaps, o)
	}
	w.add(o, end)
}

// rewind forgets what was taken and not complete: it is taken again from
// the commit on. What completed above stays known.
func (w *window) rewind() {
	w.next, w.pending, w.inflight, w.tail, w.gaps = w.commit, 0, 0, -1, nil
}

// isDone reports whether done holds o.
func (w *window) isDone(o int64) bool {
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
	w.done = slices.Replace(w.done, i, j, span{a, b})
	if w.done[0].start <= w.commit {
		w.commit = max(w.commit, w.done[0].end)
		w.done = slices.Delete(w.done, 0, 1)
	}
}

// Commit metadata: "mc1:" then, base64 (standard, unpadded), a version
// byte, the commit offset it was written for, the number of spans, and for
// each span its distance from the end of the one before (from commit for
// the first) and its length, all uvarints.
const (
	metaPrefix  = "mc1:"
	metaVersion = 1
	// maxMetadata is Kafka's default offset.metadata.max.bytes: a commit
	// with longer metadata is refused.
	maxMetadata = 4096
	maxMetaRaw  = (maxMetadata - len(metaPrefix)) * 3 / 4
	metaHeader  = 1 + 2*binary.MaxVarintLen64
)

// room reports whether one more handler may start on the partition: even
// if every message in flight then completed apart from the others, the
// spans would still fit in the metadata.
func (w *window) room() bool {
	return metaHeader+(len(w.done)+w.inflight+1)*2*uvarintLen(uint64(w.reach()-w.commit)) <= maxMetaRaw
}

// reach is the end of what the window knows: past it nothing is complete.
func (w *window) reach() int64 {
	r := w.next
	if n := len(w.done); n > 0 {
		r = max(r, w.done[n-1].end)
	}
	return r
}

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// metadata encodes the spans of done for a commit at w.commit; "" when
// there are none. Spans that do not fit are left out: they will be handled
// again, which at-least-once allows.
func (w *window) metadata() string {
	if len(w.done) == 0 {
		return ""
	}
	buf := make([]byte, 0, min(maxMetaRaw, metaHeader+len(w.done)*4))
	buf = append(buf, metaVersion)
	buf = binary.AppendUvarint(buf, uint64(w.commit))
	spans := w.done
	// The count goes before the spans: size them first.
	size, prev := 0, w.commit
	for i, s := range spans {
		n := uvarintLen(uint64(s.start-prev)) + uvarintLen(uint64(s.end-s.start))
		if len(buf)+binary.MaxVarintLen64+size+n > maxMetaRaw {
			spans = spans[:i]
			break
		}
		size += n
		prev = s.end
	}
	if len(spans) == 0 {
		return ""
	}
	buf = binary.AppendUvarint(buf, uint64(len(spans)))
	prev = w.commit
	for _, s := range spans {
		buf = binary.AppendUvarint(buf, uint64(s.start-prev))
		buf = binary.AppendUvarint(buf, uint64(s.end-s.start))
		prev = s.end
	}
	return metaPrefix + base64.RawStdEncoding.EncodeToString(buf)
}

var errMeta = errors.New("not multiconsumer metadata")

// restoreWindow returns the window of a partition whose committed offset is
// commit, with the metadata stored beside it. Metadata that is not ours,
// or was written for another offset, restores nothing.
func restoreWindow(commit int64, metadata string) (*window, error) {
	w := newWindow(commit)
	if metadata == "" {
		return w, nil
	}
	enc, ok := strings.CutPrefix(metadata, metaPrefix)
	if !ok || len(enc) > maxMetadata {
		return w, errMeta
	}
	raw, err := base64.RawStdEncoding.DecodeString(enc)
	if err != nil || len(raw) == 0 || raw[0] != metaVersion {
		return w, errMeta
	}
	raw = raw[1:]
	next := func() (int64, bool) {
		x, n := binary.Uvarint(raw)
		if n <= 0 || x > 1<<62 {
			return 0, false
		}
		raw = raw[n:]
		return int64(x), true
	}
	at, ok1 := next()
	count, ok2 := next()
	if !ok1 || !ok2 || at != commit || count > int64(len(raw)) {
		return w, errMeta
	}
	done := make([]span, 0, count)
	prev := commit
	for range count {
		gap, ok1 := next()
		n, ok2 := next()
		// Each span starts past the one before (an adjacent one would
		// have been merged; the first is past commit) and is not empty.
		if !ok1 || !ok2 || gap < 1 || n < 1 || prev > 1<<62-gap-n {
			return w, errMeta
		}
		s := span{prev + gap, prev + gap + n}
		done = append(done, s)
		prev = s.end
	}
	if len(raw) != 0 {
		return w, errMeta
	}
	w.done = done
	return w, nil
}
