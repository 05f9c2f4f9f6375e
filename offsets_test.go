package multiconsumer

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// t0 is the creation time of every book in these tests; "now" is given as an
// offset from it.
var t0 = time.Unix(1_700_000_000, 0)

func at(d time.Duration) time.Time { return t0.Add(d) }

// pos is what the book knows of one partition's position.
type pos struct{ delivered, consumed, committed int64 }

func posOf(t *testing.T, b *book, p int) pos {
	t.Helper()
	po, ok := b.parts[p]
	require.True(t, ok, "partition %d not in the book", p)
	return pos{po.delivered, po.consumed, po.committed}
}

func TestBookDeliverConsume(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		run             func(b *book)
		want            map[int]pos
		wantUncommitted map[int]int64
	}{
		{
			name:            "added: nothing delivered, start is uncommitted when nothing is stored",
			run:             func(b *book) {},
			want:            map[int]pos{0: {10, 10, noOffset}, 1: {20, 20, 20}},
			wantUncommitted: map[int]int64{0: 10},
		},
		{
			name:            "delivered, not consumed: not committable",
			run:             func(b *book) { b.deliver(0, 10); b.deliver(0, 11); b.deliverRun(1, 24, 5) },
			want:            map[int]pos{0: {12, 10, noOffset}, 1: {25, 20, 20}},
			wantUncommitted: map[int]int64{0: 10},
		},
		{
			name: "consume moves every partition",
			run: func(b *book) {
				b.deliver(0, 10)
				b.deliverRun(1, 24, 5)
				b.consume(at(0))
			},
			want:            map[int]pos{0: {11, 11, noOffset}, 1: {25, 25, 20}},
			wantUncommitted: map[int]int64{0: 11, 1: 25},
		},
		{
			name: "delivered after the last consume stays out of uncommitted",
			run: func(b *book) {
				b.deliverRun(0, 14, 5)
				b.consume(at(0))
				b.deliverRun(0, 19, 5)
				b.deliver(1, 20)
			},
			want:            map[int]pos{0: {20, 15, noOffset}, 1: {21, 20, 20}},
			wantUncommitted: map[int]int64{0: 15},
		},
		{
			name: "consume with nothing delivered changes nothing",
			run: func(b *book) {
				b.deliver(1, 20)
				b.consume(at(0))
				b.consume(at(0))
			},
			want:            map[int]pos{0: {10, 10, noOffset}, 1: {21, 21, 20}},
			wantUncommitted: map[int]int64{0: 10, 1: 21},
		},
		{
			name: "unknown partition is ignored",
			run: func(b *book) {
				b.deliver(7, 3)
				b.deliverRun(7, 9, 2)
			},
			want:            map[int]pos{0: {10, 10, noOffset}, 1: {20, 20, 20}},
			wantUncommitted: map[int]int64{0: 10},
		},
		{
			name: "committed drops partitions out of uncommitted",
			run: func(b *book) {
				b.deliverRun(0, 14, 5)
				b.deliver(1, 20)
				b.consume(at(0))
				b.committed(map[int]int64{0: 15, 1: 21}, at(0))
			},
			want:            map[int]pos{0: {15, 15, 15}, 1: {21, 21, 21}},
			wantUncommitted: map[int]int64{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBook(0, 0, t0)
			b.add(0, 10, noOffset)
			b.add(1, 20, 20)
			tt.run(b)
			for p, want := range tt.want {
				assert.Equal(t, want, posOf(t, b, p), "partition %d", p)
			}
			got := b.uncommitted()
			assert.Equal(t, tt.wantUncommitted, got)
			for p, off := range got {
				assert.LessOrEqual(t, off, b.parts[p].consumed, "uncommitted beyond consumed, partition %d", p)
			}
		})
	}
}

func TestBookUncommittedPartitions(t *testing.T) {
	t.Parallel()
	b := newBook(0, 0, t0)
	for p := range 3 {
		b.add(p, 0, noOffset)
		b.deliverRun(p, int64(p)+4, p+5)
	}
	b.consume(at(0))
	b.deliver(2, 7) // not consumed

	assert.Equal(t, []int{0, 1, 2}, b.partitions())
	assert.Equal(t, map[int]int64{0: 5, 1: 6, 2: 7}, b.uncommitted())
	assert.Equal(t, map[int]int64{0: 5, 1: 6, 2: 7}, b.uncommitted(0, 1, 2))
	assert.Equal(t, map[int]int64{1: 6}, b.uncommitted(1))
	assert.Equal(t, map[int]int64{2: 7}, b.uncommitted(2, 9), "unknown partition left out")

	b.remove(1)
	assert.Equal(t, []int{0, 2}, b.partitions())
	assert.Equal(t, map[int]int64{0: 5, 2: 7}, b.uncommitted())
	assert.Empty(t, b.uncommitted(1))
	assert.False(t, b.current(1, 0), "removed partition")
}

// trigStep is one step of a trigger script: deliver some messages to
// partition 0, then apply op at the given time and check its result.
type trigStep struct {
	at      time.Duration
	deliver int
	op      string // consume, due, poll, commit
	want    bool   // the result of consume, due or poll
}

func TestBookTriggers(t *testing.T) {
	t.Parallel()
	const T = 10 * time.Second
	tests := []struct {
		name   string
		everyN int
		everyT time.Duration
		steps  []trigStep
	}{
		{
			name: "count fires at exactly N consumed", everyN: 3,
			steps: []trigStep{
				{deliver: 1, op: "consume", want: false},
				{deliver: 1, op: "consume", want: false},
				{op: "due", want: false},
				{deliver: 1, op: "consume", want: true},
				{op: "poll", want: true},
			},
		},
		{
			name: "count: delivered but not consumed does not count", everyN: 1,
			steps: []trigStep{
				{deliver: 5, op: "due", want: false},
				{op: "poll", want: false},
				{op: "consume", want: true},
			},
		},
		{
			name: "count: a run past N fires", everyN: 3,
			steps: []trigStep{
				{deliver: 2, op: "consume", want: false},
				{deliver: 5, op: "consume", want: true},
			},
		},
		{
			name: "count restarts after a commit", everyN: 3,
			steps: []trigStep{
				{deliver: 3, op: "consume", want: true},
				{op: "commit"},
				{op: "consume", want: false},
				{deliver: 2, op: "consume", want: false},
				{deliver: 1, op: "consume", want: true},
			},
		},
		{
			name: "time fires at lastCommit+T", everyT: T,
			steps: []trigStep{
				{deliver: 1, op: "consume", want: false},
				{at: T - time.Nanosecond, op: "due", want: false},
				{at: T - time.Nanosecond, op: "poll", want: false},
				{at: T, op: "due", want: true},
				{at: T, op: "poll", want: true},
				{at: T, op: "commit"},
				{at: T, deliver: 1, op: "consume", want: false},
				{at: 2*T - time.Nanosecond, op: "due", want: false},
				{at: 2 * T, op: "consume", want: true},
			},
		},
		{
			name: "time counts from the last commit, not from the consume", everyT: T,
			steps: []trigStep{
				{at: 5 * time.Second, op: "commit"},
				{at: 6 * time.Second, deliver: 1, op: "consume", want: false},
				{at: 15*time.Second - time.Nanosecond, op: "due", want: false},
				{at: 15 * time.Second, op: "due", want: true},
			},
		},
		{
			name: "time: nothing consumed never fires", everyT: T,
			steps: []trigStep{
				{deliver: 4, op: "due", want: false},
				{at: 100 * T, op: "due", want: false},
				{at: 100 * T, op: "poll", want: false},
			},
		},
		{
			name: "a count commit restarts the time trigger", everyN: 2, everyT: T,
			steps: []trigStep{
				{at: 8 * time.Second, deliver: 2, op: "consume", want: true},
				{at: 8 * time.Second, op: "commit"},
				{at: 10 * time.Second, deliver: 1, op: "consume", want: false},
				{at: 18*time.Second - time.Nanosecond, op: "poll", want: false},
				{at: 18 * time.Second, op: "poll", want: true},
			},
		},
		{
			name: "a time commit restarts the count trigger", everyN: 3, everyT: T,
			steps: []trigStep{
				{at: time.Second, deliver: 2, op: "consume", want: false},
				{at: T, op: "poll", want: true},
				{at: T, op: "commit"},
				{at: 11 * time.Second, deliver: 1, op: "consume", want: false},
				{at: 12 * time.Second, deliver: 1, op: "consume", want: false},
				{at: 13 * time.Second, deliver: 1, op: "consume", want: true},
			},
		},
		{
			name: "both disabled (zero)",
			steps: []trigStep{
				{deliver: 1000, op: "consume", want: false},
				{at: 1000 * time.Hour, op: "due", want: false},
				{at: 1000 * time.Hour, op: "poll", want: false},
			},
		},
		{
			name: "both disabled (negative)", everyN: -1, everyT: -time.Second,
			steps: []trigStep{
				{deliver: 1000, op: "consume", want: false},
				{at: 1000 * time.Hour, op: "due", want: false},
				{at: 1000 * time.Hour, op: "poll", want: false},
			},
		},
		{
			name: "count disabled, time enabled", everyN: 0, everyT: T,
			steps: []trigStep{
				{deliver: 1000, op: "consume", want: false},
				{at: T, op: "due", want: true},
			},
		},
		{
			name: "time disabled, count enabled", everyN: 5, everyT: 0,
			steps: []trigStep{
				{deliver: 4, op: "consume", want: false},
				{at: 1000 * time.Hour, op: "poll", want: false},
				{at: 1000 * time.Hour, deliver: 1, op: "consume", want: true},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBook(tt.everyN, tt.everyT, t0)
			b.add(0, 0, noOffset)
			next := int64(0)
			for i, s := range tt.steps {
				if s.deliver > 0 {
					next += int64(s.deliver)
					b.deliverRun(0, next-1, s.deliver)
				}
				now := at(s.at)
				var got bool
				switch s.op {
				case "consume":
					got = b.consume(now)
				case "due":
					got = b.due(now)
				case "poll":
					got = b.poll(now)
				case "commit":
					b.committed(b.uncommitted(), now)
					continue
				default:
					t.Fatalf("step %d: unknown op %q", i, s.op)
				}
				require.Equal(t, s.want, got, "step %d: %s at %v", i, s.op, s.at)
			}
		})
	}
}

func TestBookPollRestartsIdleTimer(t *testing.T) {
	t.Parallel()
	const T = 10 * time.Second
	b := newBook(0, T, t0)
	b.add(0, 0, noOffset)

	assert.Equal(t, T, b.nextDue(at(0)))
	assert.Equal(t, 4*time.Second, b.nextDue(at(6*time.Second)))

	// Before expiry, poll changes nothing.
	assert.False(t, b.poll(at(6*time.Second)))
	assert.Equal(t, 4*time.Second, b.nextDue(at(6*time.Second)))

	// At expiry with nothing consumed: not due, and the timer restarts, so
	// the committer does not wake again at once (no busy loop).
	assert.Equal(t, time.Duration(0), b.nextDue(at(T)))
	assert.False(t, b.poll(at(T)))
	assert.Equal(t, T, b.nextDue(at(T)))

	// A late wake-up restarts from the wake-up.
	assert.False(t, b.poll(at(25*time.Second)))
	assert.Equal(t, T, b.nextDue(at(25*time.Second)))

	// Something consumed: the next expiry is due, and poll leaves the timer
	// alone until the commit is recorded.
	b.deliver(0, 0)
	b.consume(at(26 * time.Second))
	assert.True(t, b.poll(at(35*time.Second)))
	assert.Equal(t, time.Duration(0), b.nextDue(at(35*time.Second)))
	assert.True(t, b.poll(at(36*time.Second)), "still due until committed")
	b.committed(b.uncommitted(), at(36*time.Second))
	assert.Equal(t, T, b.nextDue(at(36*time.Second)))
	assert.False(t, b.due(at(100*time.Second)))
}

func TestBookNextDueDisabled(t *testing.T) {
	t.Parallel()
	for _, everyT := range []time.Duration{0, -time.Second} {
		b := newBook(1, everyT, t0)
		assert.Negative(t, b.nextDue(at(0)), "everyT %v", everyT)
		assert.Negative(t, b.nextDue(at(time.Hour)), "everyT %v", everyT)
	}
}

func TestBookSeek(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name            string
		committed       int64 // stored before the seek
		target          int64
		consumeFirst    bool // consume what was delivered before the seek
		wantUncommitted map[int]int64
	}{
		{name: "backwards", committed: 10, target: 3, consumeFirst: true, wantUncommitted: map[int]int64{0: 3}},
		{name: "forwards", committed: 10, target: 40, consumeFirst: true, wantUncommitted: map[int]int64{0: 40}},
		{name: "with unconsumed deliveries", committed: 10, target: 12, wantUncommitted: map[int]int64{0: 12}},
		{name: "nothing stored", committed: noOffset, target: 0, wantUncommitted: map[int]int64{0: 0}},
		{name: "to the stored offset", committed: 10, target: 10, consumeFirst: true, wantUncommitted: map[int]int64{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := newBook(1, time.Hour, t0)
			b.add(0, 10, tt.committed)
			b.add(1, 50, 50)
			b.deliverRun(0, 14, 5) // 10..14
			if tt.consumeFirst {
				b.consume(at(0))
				b.committed(map[int]int64{0: tt.committed}, at(0))
			}
			old := b.parts[0].epoch
			other := b.parts[1].epoch
			require.True(t, b.current(0, old))

			e, ok := b.seek(0, tt.target)
			require.True(t, ok)

			assert.Greater(t, e, max(old, other), "a new epoch, never seen before")
			assert.Equal(t, e, b.parts[0].epoch)
			assert.False(t, b.current(0, old), "old epoch still current")
			assert.True(t, b.current(0, e))
			assert.Equal(t, other, b.parts[1].epoch, "other partition's epoch moved")
			assert.Equal(t, pos{tt.target, tt.target, tt.committed}, posOf(t, b, 0))
			assert.Equal(t, tt.wantUncommitted, b.uncommitted())
			assert.True(t, b.due(at(0)), "a seek counts toward the count trigger")

			// What was delivered before the seek does not come back as consumed.
			b.consume(at(0))
			assert.Equal(t, pos{tt.target, tt.target, tt.committed}, posOf(t, b, 0))
			assert.Equal(t, tt.wantUncommitted, b.uncommitted())

			b.committed(b.uncommitted(), at(0))
			assert.Empty(t, b.uncommitted())
			assert.False(t, b.due(at(time.Hour)))
			if tt.target != tt.committed {
				assert.Equal(t, tt.target, b.parts[0].committed)
			}

			// Delivery goes on from the target in the new epoch.
			b.deliver(0, tt.target)
			b.consume(at(0))
			assert.Equal(t, map[int]int64{0: tt.target + 1}, b.uncommitted())
		})
	}
}

func TestBookSeekTimeTrigger(t *testing.T) {
	t.Parallel()
	b := newBook(0, 10*time.Second, t0)
	b.add(0, 10, 10)
	_, ok := b.seek(0, 5)
	require.True(t, ok)
	_, ok = b.seek(7, 5)
	assert.False(t, ok, "seek of a partition not in the book")
	assert.False(t, b.due(at(9*time.Second)))
	assert.True(t, b.poll(at(10*time.Second)), "the seek position is committed by the time trigger")
}

func TestBookAdd(t *testing.T) {
	t.Parallel()
	b := newBook(0, 0, t0)
	b.add(0, 10, noOffset)
	e0 := b.parts[0].epoch
	assert.Equal(t, int64(noOffset), b.parts[0].highWatermark)
	b.deliverRun(0, 19, 10)
	b.consume(at(0))
	e1, _ := b.seek(0, 15)
	require.Greater(t, e1, e0)

	b.add(0, 100, 90)
	e2 := b.parts[0].epoch
	assert.Greater(t, e2, e1, "re-adding takes a new epoch")
	assert.False(t, b.current(0, e1))
	assert.True(t, b.current(0, e2))
	assert.Equal(t, pos{100, 100, 90}, posOf(t, b, 0))
	assert.Equal(t, map[int]int64{0: 100}, b.uncommitted())

	b.remove(0)
	b.add(0, 7, 7)
	assert.Greater(t, b.parts[0].epoch, e2, "after remove, add takes an epoch never used: a stale batch cannot pass")
	assert.False(t, b.current(0, e0))
	assert.Empty(t, b.uncommitted())
}

func TestBookCommittedPartial(t *testing.T) {
	t.Parallel()
	b := newBook(100, time.Hour, t0)
	for p := range 3 {
		b.add(p, 0, noOffset)
		b.deliverRun(p, 9, 10)
	}
	b.consume(at(time.Minute))
	require.Equal(t, map[int]int64{0: 10, 1: 10, 2: 10}, b.uncommitted())

	// Only partition 1 committed (an explicit Commit of one partition, or
	// a commit that failed for the others); unknown partitions are ignored.
	b.committed(map[int]int64{1: 10, 9: 5}, at(2*time.Minute))
	assert.Equal(t, map[int]int64{0: 10, 2: 10}, b.uncommitted())
	assert.Equal(t, int64(10), b.parts[1].committed)
	assert.Equal(t, int64(noOffset), b.parts[0].committed)
	assert.NotContains(t, b.parts, 9)
	assert.Equal(t, time.Hour, b.nextDue(at(2*time.Minute)), "any commit restarts the timer")

	// An older offset than consumed: the rest stays uncommitted.
	b.committed(map[int]int64{0: 4}, at(3*time.Minute))
	assert.Equal(t, map[int]int64{0: 10, 2: 10}, b.uncommitted())
	assert.Equal(t, int64(4), b.parts[0].committed)

	b.committed(nil, at(4*time.Minute))
	assert.Equal(t, map[int]int64{0: 10, 2: 10}, b.uncommitted(), "an empty commit stores nothing")
}

// TestBookPartialCommitLeavesRestDue: after a commit that stored only some
// partitions, the consumed offsets of the others are still "consumed and not
// committed", so by due's contract the time trigger must fire for them.
func TestBookPartialCommitLeavesRestDue(t *testing.T) {
	t.Parallel()
	const T = 10 * time.Second
	b := newBook(0, T, t0)
	b.add(0, 0, noOffset)
	b.add(1, 0, noOffset)
	b.deliver(0, 0)
	b.deliver(1, 0)
	b.consume(at(0))
	b.committed(map[int]int64{0: 1}, at(T)) // partition 1 failed or was not asked for
	require.Equal(t, map[int]int64{1: 1}, b.uncommitted())
	assert.False(t, b.poll(at(T+T/2)), "the commit restarted the time trigger")
	assert.True(t, b.poll(at(2*T)), "partition 1 is committed by the next trigger")
}

// FuzzBook applies a random sequence of operations, as the controller would
// make them, to a book and to a model of it, and checks the invariants
// after each step. The seeds run in plain go test.
func FuzzBook(f *testing.F) {
	f.Add(int8(3), int16(100), []byte{0, 0, 0, 1, 1, 3, 2, 0, 3, 0})
	f.Add(int8(0), int16(0), []byte{1, 0, 7, 2, 0, 6, 1, 200, 2, 0, 3, 0, 7, 90, 8, 0})
	f.Add(int8(1), int16(-5), []byte{0, 2, 2, 0, 4, 2, 6, 2, 130, 0, 2, 0, 2, 0, 4, 2})
	f.Add(int8(5), int16(50), []byte{1, 0, 4, 2, 0, 7, 10, 8, 0, 5, 0, 0, 9, 1, 1, 1, 9, 2, 0, 3, 0, 8, 0})
	f.Add(int8(0), int16(20), []byte{0, 1, 0, 1, 7, 3, 8, 0, 2, 0, 7, 3, 8, 0, 5, 3, 6, 0, 5, 8, 0, 2, 0})
	f.Add(int8(2), int16(30), []byte{1, 0, 255, 1, 1, 255, 1, 2, 255, 2, 0, 5, 5, 5, 6, 1, 0, 6, 1, 255, 4, 1, 3, 0, 9, 0, 0, 2, 0})
	f.Add(int8(0), int16(20), []byte{7, 0, 30, 8, 0, 0, 0, 1, 0, 2, 0, 0, 7, 0, 19, 8, 0, 0, 7, 0, 1, 8, 0, 0})
	f.Fuzz(func(t *testing.T, everyN int8, everyTms int16, ops []byte) {
		ops = ops[:min(len(ops), 3*1000)]
		everyT := time.Duration(everyTms) * time.Millisecond
		m := newBookModel(int(everyN), everyT)
		b := newBook(int(everyN), everyT, m.now)
		for p := range bookModelParts {
			b.add(p, m.parts[p].delivered, m.parts[p].committed)
			m.parts[p].epoch = b.parts[p].epoch
			m.maxEpoch = max(m.maxEpoch, m.parts[p].epoch)
		}
		m.check(t, b, func() string { return "at start" })
		for i := 0; i+2 < len(ops); i += 3 {
			op, p, arg := ops[i]%10, int(ops[i+1])%bookModelParts, ops[i+2]
			m.apply(t, b, op, p, arg)
			m.check(t, b, func() string {
				return fmt.Sprintf("after op %d (%s on partition %d, arg %d)", i/3, bookOps[op], p, arg)
			})
		}
	})
}

const bookModelParts = 3

type modelPart struct {
	delivered int64 // the next offset the caller will be handed
	consumed  int64 // what the caller was handed and came back from, or the seek target
	committed int64
	epoch     uint64
}

type bookModel struct {
	everyN      int
	everyT      time.Duration
	now         time.Time
	parts       [bookModelParts]modelPart
	handed      int    // messages handed since the last consume
	maxEpoch    uint64 // epochs handed out so far: a new one is above all
	sinceCommit int
	lastCommit  time.Time
}

func newBookModel(everyN int, everyT time.Duration) *bookModel {
	m := &bookModel{everyN: everyN, everyT: everyT, now: t0, lastCommit: t0}
	for p := range m.parts {
		start := int64(p * 100)
		committed := int64(noOffset)
		if p == 1 {
			committed = start
		}
		m.parts[p] = modelPart{delivered: start, consumed: start, committed: committed}
	}
	return m
}

func (m *bookModel) due() bool {
	return m.sinceCommit > 0 &&
		((m.everyN > 0 && m.sinceCommit >= m.everyN) ||
			(m.everyT > 0 && m.now.Sub(m.lastCommit) >= m.everyT))
}

// commit records what the controller commits: what uncommitted returned,
// possibly only part of it.
func (m *bookModel) commit(t *testing.T, b *book, offsets map[int]int64, keep func(p int) bool) {
	t.Helper()
	ok := make(map[int]int64)
	for p, off := range offsets {
		require.Less(t, p, bookModelParts)
		mp := &m.parts[p]
		// Only a value the caller has come back from is ever committed.
		require.Equal(t, mp.consumed, off, "uncommitted offset of partition %d", p)
		require.LessOrEqual(t, off, mp.delivered, "uncommitted beyond delivered, partition %d", p)
		require.NotEqual(t, mp.committed, off, "partition %d already committed at %d", p, off)
		if keep(p) {
			ok[p] = off
			mp.committed = off
		}
	}
	b.committed(ok, m.now)
	// A partition left out keeps the book due for the next trigger.
	m.sinceCommit = 0
	for i := range m.parts {
		if m.parts[i].consumed != m.parts[i].committed {
			m.sinceCommit = 1
		}
	}
	m.lastCommit = m.now
}

func (m *bookModel) apply(t *testing.T, b *book, op byte, p int, arg byte) {
	t.Helper()
	mp := &m.parts[p]
	switch op {
	case 0: // deliver one message
		require.True(t, b.current(p, mp.epoch))
		b.deliver(p, mp.delivered)
		mp.delivered++
		m.handed++
	case 1: // deliver a run
		n := 1 + int(arg)%8
		require.True(t, b.current(p, mp.epoch))
		b.deliverRun(p, mp.delivered+int64(n)-1, n)
		mp.delivered += int64(n)
		m.handed += n
	case 2: // the caller comes back
		if m.handed > 0 {
			for q := range m.parts {
				m.parts[q].consumed = m.parts[q].delivered
			}
		}
		m.sinceCommit += m.handed
		m.handed = 0
		require.Equal(t, m.due(), b.consume(m.now), "consume")
	case 3: // commit everything
		m.commit(t, b, b.uncommitted(), func(int) bool { return true })
	case 4: // commit one partition
		got := b.uncommitted(p)
		require.LessOrEqual(t, len(got), 1)
		m.commit(t, b, got, func(int) bool { return true })
	case 5: // a commit that succeeds for some partitions only
		m.commit(t, b, b.uncommitted(), func(q int) bool { return arg&(1<<q) != 0 })
	case 6: // seek
		old := mp.epoch
		target := max(0, mp.delivered+int64(int8(arg)))
		e, ok := b.seek(p, target)
		require.True(t, ok)
		require.Greater(t, e, m.maxEpoch, "epochs never repeat")
		m.maxEpoch = e
		require.False(t, b.current(p, old), "old epoch still current after seek")
		mp.epoch = e
		mp.delivered, mp.consumed = target, target
		m.sinceCommit++
	case 7: // time passes
		m.now = m.now.Add(time.Duration(arg) * time.Millisecond)
	case 8: // the committer wakes up
		want := m.due()
		if !want && m.everyT > 0 && m.now.Sub(m.lastCommit) >= m.everyT {
			m.lastCommit = m.now
		}
		require.Equal(t, want, b.poll(m.now), "poll")
	case 9: // the partition is assigned again, from its committed offset or the start
		start := mp.consumed
		if mp.committed >= 0 && arg%2 == 0 {
			start = mp.committed
		}
		old := mp.epoch
		b.add(p, start, mp.committed)
		require.False(t, b.current(p, old), "old epoch still current after add")
		require.Greater(t, b.parts[p].epoch, m.maxEpoch, "epochs never repeat")
		mp.epoch = b.parts[p].epoch
		m.maxEpoch = mp.epoch
		mp.delivered, mp.consumed = start, start
	}
}

var bookOps = [10]string{"deliver", "deliverRun", "consume", "commit", "commit one", "partial commit", "seek", "time passes", "poll", "add again"}

// bookView is what check compares between the book and the model.
type bookView struct {
	parts    [bookModelParts]partView
	due      bool
	dueLater bool // due 1000h from now
	nextDue  time.Duration
}

type partView struct {
	delivered, consumed, committed int64
	epoch                          uint64
	uncommitted                    int64 // notUncommitted when uncommitted leaves the partition out
}

const notUncommitted = -2

// check compares the book with the model, cheaply: the fuzzer runs it after
// every operation. where describes the step, for failures only.
func (m *bookModel) check(t *testing.T, b *book, where func() string) {
	t.Helper()
	var got, want bookView
	unc := b.uncommitted()
	for p := range m.parts {
		mp := m.parts[p]
		want.parts[p] = partView{mp.delivered, mp.consumed, mp.committed, mp.epoch, notUncommitted}
		// Never beyond what the caller was handed and came back from.
		if mp.consumed != mp.committed {
			want.parts[p].uncommitted = mp.consumed
		}
		po := b.parts[p]
		if po == nil {
			t.Fatalf("partition %d missing from the book %s", p, where())
		}
		got.parts[p] = partView{po.delivered, po.consumed, po.committed, po.epoch, notUncommitted}
		if off, ok := unc[p]; ok {
			got.parts[p].uncommitted = off
		}
		if po.consumed > po.delivered {
			t.Fatalf("partition %d: consumed %d beyond delivered %d %s", p, po.consumed, po.delivered, where())
		}
		if !b.current(p, mp.epoch) {
			t.Fatalf("partition %d: epoch %d not current %s", p, mp.epoch, where())
		}
	}
	if len(unc) > bookModelParts || len(b.parts) != bookModelParts {
		t.Fatalf("unknown partitions: book %v, uncommitted %v %s", b.partitions(), unc, where())
	}
	want.due = m.due()
	got.due = b.due(m.now)
	want.dueLater = m.sinceCommit > 0 && (m.everyN > 0 && m.sinceCommit >= m.everyN || m.everyT > 0)
	got.dueLater = b.due(m.now.Add(1000 * time.Hour))
	if m.sinceCommit == 0 && (got.due || got.dueLater) {
		t.Fatalf("due with nothing consumed since the last commit %s", where())
	}
	want.nextDue = -1
	if m.everyT > 0 {
		want.nextDue = max(0, m.lastCommit.Add(m.everyT).Sub(m.now))
	}
	got.nextDue = b.nextDue(m.now)
	if got != want {
		require.Equal(t, want, got, "book differs from the model %s", where())
	}
}

// consumeCounting consumes as consume does, and reports the count trigger
// only: the time trigger is the committer's.
func TestBookConsumeCounting(t *testing.T) {
	t.Parallel()
	b := newBook(3, time.Nanosecond, t0)
	b.add(0, 0, noOffset)
	assert.False(t, b.consumeCounting(), "nothing consumed")
	b.deliverRun(0, 1, 2)
	assert.False(t, b.consumeCounting(), "2 of 3, and the clock is not read")
	assert.True(t, b.due(at(time.Second)), "the time trigger has fired, for due")
	assert.Equal(t, pos{2, 2, noOffset}, posOf(t, b, 0))
	b.deliver(0, 2)
	assert.True(t, b.consumeCounting(), "3 of 3")
	b.committed(b.uncommitted(), at(0))
	assert.False(t, b.consumeCounting(), "restarted by the commit")
}

// deliverCurrent records a message only if its epoch is current.
func TestBookDeliverCurrent(t *testing.T) {
	t.Parallel()
	b := newBook(0, 0, t0)
	b.add(0, 10, noOffset)
	e := b.parts[0].epoch
	assert.True(t, b.deliverCurrent(0, e, 10))
	assert.Equal(t, pos{11, 10, noOffset}, posOf(t, b, 0))
	assert.False(t, b.deliverCurrent(0, e+1, 11), "an epoch not current")
	assert.False(t, b.deliverCurrent(1, e, 0), "a partition not in the book")
	assert.Equal(t, pos{11, 10, noOffset}, posOf(t, b, 0))
	b.consume(at(0))
	assert.Equal(t, pos{11, 11, noOffset}, posOf(t, b, 0))
	_, ok := b.seek(0, 40)
	require.True(t, ok)
	assert.False(t, b.deliverCurrent(0, e, 11), "stale after a seek")
	assert.Equal(t, pos{40, 40, noOffset}, posOf(t, b, 0))
}
