package multiconsumer

import (
	"encoding/base64"
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
		})
	}
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

// TestWindowMetadataFits fills a window with isolated completions until
// room says no: the metadata of every state it allowed fits in Kafka's
// default limit.
func TestWindowMetadataFits(t *testing.T) {
	w := newWindow(1 << 40) // large offsets: long varints, and a long base
	o := w.commit
	for i := 0; ; i++ {
		require.Less(t, i, 100000, "room never said no")
		if !w.room() {
			break
		}
		// Take two, complete the second: one more span each time.
		w.take(o)
		w.take(o + 1)
		w.inflight++
		w.complete(o + 1)
		w.inflight--
		o += 2
		require.LessOrEqual(t, len(w.metadata()), maxMetadata)
	}
	assert.Greater(t, len(w.done), 300, "room allows hundreds of spans")
	md := w.metadata()
	assert.LessOrEqual(t, len(md), maxMetadata)
	r, err := restoreWindow(w.commit, md)
	require.NoError(t, err)
	assert.Equal(t, w.done, r.done)

	// Past room (spans added without asking, as gaps do), the metadata
	// still fits: the spans that do not are left out, which only means
	// handling them again.
	for range 2000 {
		w.take(o)
		w.take(o + 2)
		o += 3
	}
	md = w.metadata()
	assert.LessOrEqual(t, len(md), maxMetadata)
	r, err = restoreWindow(w.commit, md)
	require.NoError(t, err)
	require.NotEmpty(t, r.done)
	assert.Equal(t, w.done[:len(r.done)], r.done, "a prefix of the spans")
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
	f.Add(int64(0), "mc1:")
	f.Add(int64(0), "mc1:AQ")
	f.Add(int64(5), "mc1:"+base64.RawStdEncoding.EncodeToString([]byte{1, 5, 0xff, 0xff, 0xff, 0xff, 0x0f}))
	f.Add(int64(0), "mc1:"+strings.Repeat("/", 5000))
	f.Fuzz(func(t *testing.T, commit int64, md string) {
		r, err := restoreWindow(commit, md)
		require.NotNil(t, r)
		if err != nil {
			require.Empty(t, r.done)
			return
		}
		require.LessOrEqual(t, len(r.done), len(md)) // two bytes a span at least
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
	// over at the next offset).
	b.Run("sparse", func(b *testing.B) {
		w := newWindow(0)
		o := int64(0)
		w.take(o)
		w.inflight++
		o++
		for b.Loop() {
			w.take(o)     // held behind the stuck one
			w.take(o + 1) // handled
			if !w.room() {
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
	})
}
