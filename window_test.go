package multiconsumer

import (
	"encoding/base64"
	"encoding/binary"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWindow(t *testing.T) {
	type op struct {
		take, complete, advance int64 // one of them; -1 when unused
	}
	take := func(o int64) op { return op{o, -1, -1} }
	done := func(o int64) op { return op{-1, o, -1} }
	adv := func(o int64) op { return op{-1, -1, o} }
	for _, tt := range []struct {
		name       string
		start      int64
		ops        []op
		wantCommit int64
		wantDone   []span
		wantPend   int
	}{
		{"nothing", 5, nil, 5, nil, 0},
		{"in order", 0, []op{take(0), take(1), done(0), done(1)}, 2, nil, 0},
		{"out of order holds the commit", 0, []op{take(0), take(1), take(2), done(2), done(1)}, 0, []span{{1, 3}}, 1},
		{"then the lowest completes", 0, []op{take(0), take(1), take(2), done(2), done(1), done(0)}, 3, nil, 0},
		{"holes", 10, []op{take(10), take(11), take(12), take(13), done(11), done(13)}, 10, []span{{11, 12}, {13, 14}}, 2},
		{"a gap completes with the message before it", 0, []op{take(0), take(5), done(5)}, 0, []span{{5, 6}}, 1},
		{"and then the commit passes it", 0, []op{take(0), take(5), done(5), done(0)}, 6, nil, 0},
		{"a gap after a complete message is complete", 0, []op{take(0), take(1), done(1), take(5)}, 0, []span{{1, 5}}, 2},
		{"gap at the commit", 0, []op{take(3)}, 3, nil, 1},
		{"marker", 0, []op{take(0), done(0), adv(4)}, 4, nil, 0},
		{"marker behind a pending one", 0, []op{take(0), adv(4)}, 0, nil, 1},
		{"completes with it", 0, []op{take(0), adv(4), adv(6), done(0)}, 6, nil, 0},
		{"double completion ignored", 0, []op{take(0), take(1), done(1), done(1)}, 0, []span{{1, 2}}, 1},
		{"completion of what was not taken ignored", 0, []op{take(0), done(7)}, 0, nil, 1},
		{"a message taken twice counts once", 0, []op{take(0), take(0), done(0)}, 1, nil, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := newWindow(tt.start)
			for _, o := range tt.ops {
				switch {
				case o.take >= 0:
					w.take(o.take)
				case o.complete >= 0:
					w.complete(o.complete)
				default:
					w.advance(o.advance)
				}
			}
			assert.Equal(t, tt.wantCommit, w.commit)
			if tt.wantDone == nil {
				assert.Empty(t, w.done)
			} else {
				assert.Equal(t, tt.wantDone, w.done)
			}
			assert.Equal(t, tt.wantPend, w.pending)
			checkRunBytes(t, w)
			r, err := restoreWindow(w.commit, w.metadata())
			require.NoError(t, err)
			assert.Equal(t, len(w.done), len(r.done))
			if len(w.done) > 0 {
				assert.Equal(t, w.done, r.done)
			}
		})
	}
}

// checkRunBytes checks that w.runBytes, kept by add, is the size of w.done
// in the run-length encoding.
func checkRunBytes(t *testing.T, w *window) {
	t.Helper()
	n, prev := 0, w.commit
	for _, s := range w.done {
		// Written out again, as the encoder does.
		n += len(appendRun(nil, prev, s))
		prev = s.end
	}
	require.Equal(t, n, w.runBytes, "runBytes of %d spans", len(w.done))
}

// windowOf returns a window at commit whose done spans are done.
func windowOf(commit int64, done []span) *window {
	w := newWindow(commit)
	for _, s := range done {
		w.add(s.start, s.end)
	}
	return w
}

// metaRaw returns the bytes of mc2 metadata md.
func metaRaw(t *testing.T, md string) []byte {
	t.Helper()
	enc, ok := strings.CutPrefix(md, metaPrefix)
	require.True(t, ok, md)
	raw, err := base64.RawStdEncoding.DecodeString(enc)
	require.NoError(t, err)
	return raw
}

func TestWindowRestore(t *testing.T) {
	w := newWindow(100)
	for o := int64(100); o < 110; o++ {
		require.True(t, w.take(o))
	}
	for _, o := range []int64{101, 102, 105, 109} {
		w.complete(o)
	}
	md := w.metadata()
	require.True(t, strings.HasPrefix(md, metaPrefix), md)

	r, err := restoreWindow(100, md)
	require.NoError(t, err)
	assert.Equal(t, w.done, r.done)
	// The next owner handles only what was not complete.
	var handle []int64
	for o := int64(100); o < 112; o++ {
		if r.take(o) {
			handle = append(handle, o)
		}
	}
	assert.Equal(t, []int64{100, 103, 104, 106, 107, 108, 110, 111}, handle)
	for _, o := range handle {
		r.complete(o)
	}
	assert.EqualValues(t, 112, r.commit)
	assert.Empty(t, r.metadata())

	for _, tt := range []struct{ name, md string }{
		{"someone else's", "written by a Java consumer"},
		{"not base64", metaPrefix + "!!!"},
		{"other offset", md}, // restored at 101 below
		{"truncated", md[:len(md)-2]},
		{"empty", metaPrefix},
		{"empty v1", metaPrefixV1},
		{"unknown encoding", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{7, 100, 1, 0, 0})},
		{"no spans", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaRuns, 100, 0})},
		{"fewer runs than counted", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaRuns, 100, 3, 0, 0})},
		{"more runs than counted", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaRuns, 100, 1, 0, 0})},
		{"a long run without its length", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaRuns, 100, 1, 1})},
		{"bits: a zero last byte", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaBits, 100, 1, 1, 0})},
		{"bits: spans miscounted", metaPrefix + base64.RawStdEncoding.EncodeToString([]byte{metaBits, 100, 1, 0b101})},
		{"a run far past the last offset", metaPrefix + base64.RawStdEncoding.EncodeToString(
			binary.AppendUvarint([]byte{metaRuns, 100, 1}, 1<<63))},
		{"a run too long", metaPrefix + base64.RawStdEncoding.EncodeToString(
			binary.AppendUvarint([]byte{metaRuns, 100, 1, 1}, 1<<62))},
		{"v1 with mc2's bytes", metaPrefixV1 + strings.TrimPrefix(md, metaPrefix)},
	} {
		at := int64(100)
		if tt.name == "other offset" {
			at = 101
		}
		r, err := restoreWindow(at, tt.md)
		assert.Error(t, err, tt.name)
		assert.Empty(t, r.done, tt.name)
		assert.Equal(t, at, r.commit, tt.name)
	}
	r, err = restoreWindow(7, "")
	assert.NoError(t, err)
	assert.Empty(t, r.done)
}

// Metadata written as mc1 (before mc2) still restores, and is written
// again as mc2.
func TestWindowRestoreV1(t *testing.T) {
	const big = 1 << 40
	for _, tt := range []struct {
		commit int64
		md     string // written by the mc1 encoder, for a window with want
		want   []span
	}{
		{100, "mc1:AWQDAQICAQMB", []span{{101, 103}, {105, 106}, {109, 110}}},
		{big, "mc1:AYCAgICAIALoB/ifEgEC", []span{{big + 1000, big + 300000}, {big + 300001, big + 300003}}},
	} {
		r, err := restoreWindow(tt.commit, tt.md)
		require.NoError(t, err, tt.md)
		assert.Equal(t, tt.want, r.done)
		checkRunBytes(t, r)
		md := r.metadata()
		assert.True(t, strings.HasPrefix(md, "mc2:"), md)
		r, err = restoreWindow(tt.commit, md)
		require.NoError(t, err)
		assert.Equal(t, tt.want, r.done)

		r, err = restoreWindow(tt.commit+1, tt.md)
		assert.ErrorIs(t, err, errMeta, "written for another offset")
		assert.Empty(t, r.done)
	}
}

// metadata writes the shorter of its two encodings, and what it writes
// restores the same spans.
func TestWindowMetaEncoding(t *testing.T) {
	every := func(commit, step, n int64) []span { // n one-offset spans, step apart
		var done []span
		for k := range n {
			o := commit + 1 + k*step
			done = append(done, span{o, o + 1})
		}
		return done
	}
	for _, tt := range []struct {
		name   string
		commit int64
		done   []span
		kind   byte
		md     string // if set, exactly this
	}{
		{"a few close: bits", 100, []span{{101, 103}, {105, 106}, {109, 110}}, metaBits,
			"mc2:AWQDEwE"}, // metaBits, 100, 3 spans, bits 0b00010011 0b00000001
		{"far apart: runs", 100, []span{{101, 103}, {1000, 1001}}, metaRuns,
			"mc2:AGQCAQCADg"}, // metaRuns, 100, 2 spans, 0<<1|1 (long) 0, 896<<1 (short)
		{"every other offset: bits", 0, every(0, 2, 1000), metaBits, ""},
		{"every 4th: bits", 5, every(5, 4, 1000), metaBits, ""},
		{"every 9th: runs", 5, every(5, 9, 1000), metaRuns, ""},
		{"every 1000th: runs", 1 << 40, every(1<<40, 1000, 1000), metaRuns, ""},
		{"long spans: runs", 0, []span{{1, 100000}, {100001, 200000}}, metaRuns, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			w := windowOf(tt.commit, tt.done)
			require.Equal(t, tt.done, w.done)
			md := w.metadata()
			if tt.md != "" {
				assert.Equal(t, tt.md, md)
			}
			raw := metaRaw(t, md)
			assert.Equal(t, tt.kind, raw[0])
			// The other encoding is not shorter.
			head := 1 + uvarintLen(uint64(tt.commit)) + uvarintLen(uint64(len(tt.done)))
			assert.LessOrEqual(t, len(raw), head+w.runBytes)
			assert.LessOrEqual(t, len(raw), head+bitsetLen(tt.commit, tt.done[len(tt.done)-1].end))
			r, err := restoreWindow(tt.commit, md)
			require.NoError(t, err)
			assert.Equal(t, tt.done, r.done)
			assert.Equal(t, w.runBytes, r.runBytes)
		})
	}
}

// oldRoom is room as it was with mc1: every span, done or in flight,
// priced at the widest varint of the window.
func oldRoom(w *window) bool {
	const header, maxRaw = 1 + 2*binary.MaxVarintLen64, (maxMetadata - len("mc1:")) * 3 / 4
	return header+(len(w.done)+w.inflight+1)*2*uvarintLen(uint64(w.reach()-w.commit)) <= maxRaw
}

// sparse is a pattern of sparse completions: a message that never
// completes (the first is in flight, the others wait, as under ByKey
// behind a stuck message of their key), then before offsets on (the
// offsets between hold no message) one that completes, with after offsets
// after it (its span; the offsets past the message hold none), then a
// stuck one again; k of these start at once.
type sparse struct {
	before, after int64
	k             int
}

// fill fills a window at start with pattern p until room says no, and
// returns it. admitted, if set, is called with the window and the messages
// in flight each time room let one more start.
func fill(start int64, p sparse, room func(*window) bool, admitted func(w *window, flight []int64)) *window {
	w := newWindow(start)
	w.take(start)
	w.inflight++ // the lowest message always starts
	o := start   // the last stuck message
	for {
		flight := []int64{start}
		for range p.k {
			c := o + p.before
			w.take(c)
			o = c + p.after
			w.take(o) // the offsets between complete with c
			if !room(w) {
				return w
			}
			w.inflight++
			flight = append(flight, c)
			if admitted != nil {
				admitted(w, flight)
			}
		}
		for _, c := range flight[1:] {
			w.inflight--
			w.complete(c)
		}
	}
}

// TestWindowMetaCapacity counts the spans 4 KB of metadata holds with
// sparse completions: at least twice what mc1's pricing let room admit,
// and all of them restore.
func TestWindowMetaCapacity(t *testing.T) {
	for _, tt := range []struct {
		name string
		gap  int64
		kind byte
	}{
		{"every other offset", 1, metaBits},
		{"16 offsets apart", 16, metaRuns},
		{"1000 offsets apart", 1000, metaRuns},
		{"2^21 offsets apart", 1 << 21, metaRuns},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const start = 1 << 40 // long varints, and a long header
			p := sparse{before: tt.gap, after: 1, k: 1}
			old := len(fill(start, p, oldRoom, nil).done)
			w := fill(start, p, (*window).room, nil)
			t.Logf("gap %d: %d spans (mc1's room: %d), %.1fx", tt.gap, len(w.done), old, float64(len(w.done))/float64(old))
			assert.GreaterOrEqual(t, len(w.done), 2*old)
			checkRunBytes(t, w)
			md := w.metadata()
			assert.LessOrEqual(t, len(md), maxMetadata)
			assert.Equal(t, tt.kind, metaRaw(t, md)[0])
			r, err := restoreWindow(w.commit, md)
			require.NoError(t, err)
			assert.Equal(t, w.done, r.done, "every span restores")
		})
	}
}

// TestWindowRoomWorstCase fills windows to their room with patterns of
// sparse completions, several in flight at once, and checks the last
// states room admitted before it said no (checkAdmitted): the messages in
// flight, completing in any order, leave metadata that fits and restores
// exactly.
func TestWindowRoomWorstCase(t *testing.T) {
	brokerFree(t)
	for _, before := range []int64{1, 2, 100, 1 << 14, 1 << 21} {
		for _, after := range []int64{1, 2, 200, 1 << 14} {
			for _, k := range []int{1, 3, 16} {
				p := sparse{before, after, k}
				admitted := 0
				fill(1<<40, p, (*window).room, func(*window, []int64) { admitted++ })
				i := 0
				w := fill(1<<40, p, (*window).room, func(w *window, flight []int64) {
					if i++; i > admitted-20 { // near the limit
						checkAdmitted(t, w, flight, i)
					}
				})
				require.Greater(t, len(w.done), 100, "%+v", p)
			}
		}
	}
}

// Past room (spans added without asking, as a gap after a message in
// flight adds offsets to its span), the metadata still fits: the spans
// that do not are left out, which only means handling them again.
func TestWindowMetaPastRoom(t *testing.T) {
	for _, tt := range []struct {
		name    string
		n, step int64
		least   int // spans that fit at least
	}{
		{"dense", 30000, 2, 12000},
		{"sparse", 5000, 1000, 1000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var done []span
			for k := range tt.n {
				o := 1 + k*tt.step
				done = append(done, span{o, o + 1})
			}
			w := windowOf(0, done)
			md := w.metadata()
			assert.LessOrEqual(t, len(md), maxMetadata)
			r, err := restoreWindow(0, md)
			require.NoError(t, err)
			assert.GreaterOrEqual(t, len(r.done), tt.least)
			assert.Equal(t, w.done[:len(r.done)], r.done, "a prefix of the spans")
		})
	}
}

// FuzzWindow drives a window with takes, completions and markers from the
// fuzzer's bytes, against a model that keeps every offset's state, and
// checks that the commit never passes an incomplete offset, is as far as
// the completed prefix allows, and that the metadata restores the same
// completed spans.
func FuzzWindow(f *testing.F) {
	f.Add(int64(0), []byte{0, 0, 0, 1, 2, 3})
	f.Add(int64(1000), []byte{0, 4, 0, 9, 1, 1, 2, 0, 7, 7, 7})
	f.Fuzz(func(t *testing.T, start int64, ops []byte) {
		if start < 0 || start > 1<<50 {
			return
		}
		ops = ops[:min(len(ops), 1200)] // the model's checks are quadratic
		const (
			pending = 1
			done    = 2
			empty   = 3 // no message there
		)
		w := newWindow(start)
		state := map[int64]int{} // offset -> pending or done; absent below next: no message
		next := start
		var taken []int64
		for i := 0; i+1 < len(ops); i += 2 {
			arg := int64(ops[i+1])
			switch ops[i] % 3 {
			case 0: // take a message a few offsets on
				o := next + arg%4
				w.take(o)
				for g := next; g < o; g++ {
					state[g] = empty
				}
				state[o] = pending
				taken = append(taken, o)
				next = o + 1
			case 1: // complete a taken message
				if len(taken) == 0 {
					continue
				}
				o := taken[int(arg)%len(taken)]
				w.complete(o)
				state[o] = done
			case 2: // a marker
				o := next + arg%3
				w.advance(o)
				for g := next; g < o; g++ {
					state[g] = empty
				}
				next = max(next, o)
			}
			want := start
			for want < next && (state[want] == done || state[want] == empty) {
				want++
			}
			require.Equal(t, want, w.commit, "commit after op %d", i/2)
			npend := 0
			for o, s := range state {
				if s == pending {
					npend++
					require.GreaterOrEqual(t, o, w.commit, "the commit passed incomplete offset %d", o)
					require.False(t, w.isDone(o))
				} else if s == done && o >= w.commit {
					require.True(t, w.isDone(o), "offset %d is complete", o)
				}
			}
			require.Equal(t, npend, w.pending)
			for _, sp := range w.done {
				// Gaps complete with a message: no span is all gap.
				has := false
				for o := sp.start; o < sp.end && !has; o++ {
					has = state[o] == done
				}
				require.True(t, has, "span %v holds no completed message", sp)
			}
		}
		md := w.metadata()
		require.LessOrEqual(t, len(md), maxMetadata)
		r, err := restoreWindow(w.commit, md)
		require.NoError(t, err)
		require.LessOrEqual(t, len(r.done), len(w.done))
		if len(w.done) < 300 { // far from the limit: nothing left out
			require.Len(t, r.done, len(w.done))
		}
		if len(r.done) > 0 {
			require.Equal(t, w.done[:len(r.done)], r.done, "the spans restored are the first ones")
		}
	})
}

// FuzzWindowRoom fills a window with sparse completions (fill, the pattern
// and how many spans from the fuzzer) and then drives it with the fuzzer's
// ops as the ledger does: take messages (some offsets between holding no
// message), start a handler for a message taken (the lowest incomplete one
// always, another if room allows), complete a message in flight, markers.
// Whenever room lets a handler start, the metadata fits and restores
// exactly the spans, in whatever order the messages in flight then
// complete.
func FuzzWindowRoom(f *testing.F) {
	f.Add(int64(0), uint8(0), uint8(0), uint16(20000), []byte{0, 0, 1, 0, 1, 0, 2, 1, 0, 3, 1, 0, 2, 0})
	f.Add(int64(1<<40), uint8(4), uint8(0), uint16(20000), []byte{0, 1, 0, 2, 1, 0, 1, 1, 2, 0, 3, 2, 1, 0, 2, 1})
	f.Add(int64(7), uint8(21), uint8(14), uint16(600), []byte{0, 0x83, 0, 0x8e, 1, 0, 1, 1, 0, 0x95, 1, 2, 2, 1, 2, 0})
	f.Fuzz(func(t *testing.T, start int64, beforeShift, afterShift uint8, spans uint16, ops []byte) {
		if start < 0 || start > 1<<50 {
			return
		}
		ops = ops[:min(len(ops), 400)] // each start checks every order's prefix
		p := sparse{before: 1 << (beforeShift % 24), after: 1 << (afterShift % 16), k: 1}
		n := 0
		w := fill(start, p, func(w *window) bool { n++; return n <= int(spans) && w.room() }, nil)
		flight := []int64{start} // fill's first message
		var taken []int64        // taken, not started
		for i := 0; i+1 < len(ops); i += 2 {
			arg := int(ops[i+1])
			switch ops[i] % 4 {
			case 0: // take a message, up to 3 offsets on, or far
				o := w.next + int64(arg%4)
				if arg >= 0x80 {
					o = w.next + 1<<(arg%24)
				}
				if w.take(o) {
					taken = append(taken, o)
				}
			case 1: // start a handler, as ledger.beginLocked does
				if len(taken) == 0 || len(flight) >= 16 {
					continue
				}
				k := arg % len(taken)
				o := taken[k]
				if o != w.commit && !w.room() {
					continue
				}
				w.inflight++
				flight = append(flight, o)
				taken = slices.Delete(taken, k, k+1)
				if o != w.commit {
					checkAdmitted(t, w, flight, arg)
				}
			case 2: // a handler completes
				if len(flight) == 0 {
					continue
				}
				k := arg % len(flight)
				w.inflight--
				w.complete(flight[k])
				flight = slices.Delete(flight, k, k+1)
			case 3: // a marker
				w.advance(w.next + int64(arg%3))
			}
			checkRunBytes(t, w)
			md := w.metadata()
			require.LessOrEqual(t, len(md), maxMetadata)
			r, err := restoreWindow(w.commit, md)
			require.NoError(t, err)
			require.LessOrEqual(t, len(r.done), len(w.done))
			if len(r.done) > 0 {
				require.Equal(t, w.done[:len(r.done)], r.done, "the spans restored are the first ones")
			}
		}
	})
}

// checkAdmitted checks the state room admitted: completing the messages in
// flight one by one (an order from rot), every metadata on the way fits
// and restores exactly the spans.
func checkAdmitted(t *testing.T, w *window, flight []int64, rot int) {
	t.Helper()
	c := *w
	c.done = slices.Clone(w.done)
	c.gaps = maps.Clone(w.gaps)
	order := slices.Clone(flight)
	if rot%2 == 1 {
		slices.Reverse(order)
	}
	order = append(order[rot%len(order):], order[:rot%len(order)]...)
	for _, o := range order {
		c.inflight--
		c.complete(o)
		md := c.metadata()
		require.LessOrEqual(t, len(md), maxMetadata)
		r, err := restoreWindow(c.commit, md)
		require.NoError(t, err)
		require.Equal(t, len(c.done), len(r.done), "room admitted %d in flight with %d spans: not all fit", len(flight), len(w.done))
		if len(c.done) > 0 {
			require.Equal(t, c.done, r.done)
		}
	}
}

// Offsets that hold no message (transaction markers, compaction) between
// messages taken and not started make no spans of their own: on a topic
// where every other offset is a marker, a queue's worth of messages taken
// leaves the window its room.
func TestWindowGapsTakeNoRoom(t *testing.T) {
	w := newWindow(0)
	o := int64(0)
	for range 1024 { // QueueSize default: what feed holds
		require.True(t, w.take(o))
		o += 2 // the offset after each message is a marker
	}
	assert.Empty(t, w.done)
	assert.True(t, w.room())
	for o := int64(2); o < 2048; o += 2 {
		w.complete(o) // all but the first: one span, gaps included
	}
	assert.Equal(t, []span{{2, 2047}}, w.done, "no gap follows the last message")
}

// restoreWindow on arbitrary strings never panics, never restores more
// spans than its input could encode, and keeps its invariants.
func FuzzRestoreWindow(f *testing.F) {
	w := newWindow(100)
	for _, o := range []int64{100, 101, 102, 104, 110} {
		w.take(o)
	}
	w.complete(102)
	w.complete(110)
	f.Add(int64(100), w.metadata())
	f.Add(int64(100), "mc1:AWQDAQICAQMB")
	f.Add(int64(100), "mc2:AWQDEwE")
	f.Add(int64(100), "mc2:AGQCAQCADg")
	f.Add(int64(0), "mc1:")
	f.Add(int64(0), "mc1:AQ")
	f.Add(int64(0), "mc2:AQ")
	f.Add(int64(5), "mc1:"+base64.RawStdEncoding.EncodeToString([]byte{1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add(int64(5), "mc2:"+base64.RawStdEncoding.EncodeToString([]byte{metaRuns, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add(int64(5), "mc2:"+base64.RawStdEncoding.EncodeToString([]byte{metaBits, 5, 4, 0x55}))
	f.Add(int64(0), "mc1:"+strings.Repeat("/", 5000))
	f.Add(int64(0), "mc2:"+strings.Repeat("/", 4092))
	f.Fuzz(func(t *testing.T, commit int64, md string) {
		r, err := restoreWindow(commit, md)
		require.NotNil(t, r)
		if err != nil {
			require.Empty(t, r.done)
			return
		}
		// Three spans a character at most (four a byte of bits).
		require.LessOrEqual(t, len(r.done), 3*len(md))
		checkRunBytes(t, r)
		prev := commit
		for _, s := range r.done {
			require.Greater(t, s.start, prev, "spans sorted, disjoint, not adjacent, above commit")
			require.Greater(t, s.end, s.start)
			prev = s.end
		}
		// What it restored encodes back to the same thing (canonical input).
		if len(r.done) > 0 && len(md) <= maxMetadata {
			r2, err := restoreWindow(commit, r.metadata())
			require.NoError(t, err)
			require.Equal(t, r.done, r2.done)
		}
	})
}

// BenchmarkWindowBegin measures what the ledger does with a window for each
// message under Process: take it, ask room whether its handler may start,
// and complete it (inflight kept as the ledger keeps it).
func BenchmarkWindowBegin(b *testing.B) {
	// unordered: 16 handlers in flight, completing out of order (a stride
	// through them), so that a few spans come and go.
	b.Run("unordered", func(b *testing.B) {
		const c = 16
		w := newWindow(0)
		var ring [c]int64
		o := int64(0)
		for i := range ring {
			w.take(o)
			w.room()
			w.inflight++
			ring[i] = o
			o++
		}
		k := 0
		for b.Loop() {
			k = (k + 7) % c
			w.inflight--
			w.complete(ring[k])
			w.take(o)
			if w.room() || o == w.commit {
				w.inflight++
				ring[k] = o
				o++
			}
		}
	})
	// sparse: the window's first message is stuck, and every other one
	// completes: a span each, up to the room there is (then it starts
	// over at the next offset); sparse-700: up to 700 spans at most (what
	// both mc1 and mc2 hold), to compare the same work.
	b.Run("sparse", func(b *testing.B) { benchSparse(b, 1<<30) })
	b.Run("sparse-700", func(b *testing.B) { benchSparse(b, 700) })
}

func benchSparse(b *testing.B, spans int) {
	w := newWindow(0)
	o := int64(0)
	w.take(o)
	w.inflight++
	o++
	for b.Loop() {
		w.take(o)     // held behind the stuck one
		w.take(o + 1) // handled
		if len(w.done) >= spans || !w.room() {
			w = newWindow(o)
			w.take(o)
			w.inflight++
			o++
			continue
		}
		w.inflight++
		w.inflight--
		w.complete(o + 1)
		o += 2
	}
}
