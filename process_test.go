package multiconsumer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// keyed produces n messages to partition p of topic, keyed round-robin
// over keys distinct keys ("k0", "k1", ...), valued "p-offset" for a log
// that ends at from.
func keyed(t *testing.T, topic string, p, from, n, keys int) {
	t.Helper()
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = kafka.Message{Key: fmt.Appendf(nil, "k%d", i%keys), Value: fmt.Appendf(nil, "%d-%d", p, from+i)}
	}
	require.NoError(t, cluster.Produce(testCtx(t), topic, p, msgs...))
}

// handled records what a handler saw, and stops Process when it has seen
// every one of want messages.
type handled struct {
	mu     sync.Mutex
	seen   map[[2]int64]int   // (partition, offset) -> times handled
	order  map[string][]int64 // "partition/key" -> offsets in the order handled
	byPart map[int][]int64
	want   int
	done   chan struct{}
	closed bool
}

func newHandled(want int) *handled {
	return &handled{seen: map[[2]int64]int{}, order: map[string][]int64{}, byPart: map[int][]int64{}, want: want, done: make(chan struct{})}
}

// add records m and reports how many distinct messages were handled.
func (h *handled) add(m kafka.Message) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[[2]int64{int64(m.Partition), m.Offset}]++
	k := fmt.Sprintf("%d/%s", m.Partition, m.Key)
	h.order[k] = append(h.order[k], m.Offset)
	h.byPart[m.Partition] = append(h.byPart[m.Partition], m.Offset)
	if len(h.seen) >= h.want && !h.closed {
		h.closed = true
		close(h.done)
	}
	return len(h.seen)
}

// runProcess runs Process in a goroutine until ctx is cancelled by stop,
// and returns what Process returned.
func runProcess(t *testing.T, c *MultiConsumer, pc ProcessConfig, h Handler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(testCtx(t))
	res := make(chan error, 1)
	go func() { res <- c.Process(ctx, pc, h) }()
	return func() error {
		cancel()
		select {
		case err := <-res:
			return err
		case <-time.After(30 * time.Second):
			t.Fatal("Process did not return within 30s of its ctx ending")
			return nil
		}
	}
}

func waitDone(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestProcessHandlesEveryMessageAndCommits(t *testing.T) {
	topic := backlog(t, 3, 200)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, NumWorkers: 2})
	h := newHandled(600)
	stop := runProcess(t, c, ProcessConfig{}, func(ctx context.Context, m kafka.Message) error {
		h.add(m)
		return nil
	})
	waitDone(t, h.done, "600 messages handled")
	require.ErrorIs(t, stop(), context.Canceled)
	for k, n := range h.seen {
		require.Equal(t, 1, n, "message %v handled %d times", k, n)
	}
	assert.Equal(t, map[int]int64{0: 200, 1: 200, 2: 200}, committed(t, topic, g, 3), "Process commits what completed when it returns")
	s := c.Stats()
	assert.EqualValues(t, 600, s.Process.Handled)
	assert.False(t, s.Process.Running)
}

func TestProcessKeyOrderAndConcurrencyBeyondPartitions(t *testing.T) {
	const n, keys = 2000, 50
	topic := cluster.Topic(t, 2)
	keyed(t, topic, 0, 0, n/2, keys)
	keyed(t, topic, 1, 0, n/2, keys)
	c := open(t, Config{Topic: topic, Group: group(t)})
	h := newHandled(n)
	var running, peak atomic.Int64
	var perKey sync.Map // key -> *atomic.Int32: handlers of that key running
	var overlap atomic.Int64
	// The first handlers wait until 9 run at once: counted, not left to
	// how the goroutines happen to be scheduled.
	nine := make(chan struct{})
	openNine := sync.OnceFunc(func() { close(nine) })
	stop := runProcess(t, c, ProcessConfig{Concurrency: 32}, func(ctx context.Context, m kafka.Message) error {
		k := fmt.Sprintf("%d/%s", m.Partition, m.Key)
		v, _ := perKey.LoadOrStore(k, new(atomic.Int32))
		if v.(*atomic.Int32).Add(1) > 1 {
			overlap.Add(1)
		}
		r := running.Add(1)
		for {
			p := peak.Load()
			if r <= p || peak.CompareAndSwap(p, r) {
				break
			}
		}
		if r >= 9 {
			openNine()
		}
		select {
		case <-nine:
		case <-ctx.Done():
		}
		time.Sleep(time.Duration(rand.IntN(1000)) * time.Microsecond)
		running.Add(-1)
		v.(*atomic.Int32).Add(-1)
		h.add(m)
		return nil
	})
	waitDone(t, nine, "9 handlers at once")
	waitDone(t, h.done, "every message handled")
	require.ErrorIs(t, stop(), context.Canceled)
	assert.Zero(t, overlap.Load(), "two handlers of one key at once")
	assert.Greater(t, peak.Load(), int64(8), "concurrency far beyond the 2 partitions")
	assert.LessOrEqual(t, peak.Load(), int64(32))
	h.mu.Lock()
	defer h.mu.Unlock()
	require.Len(t, h.order, 2*keys)
	for k, offs := range h.order {
		for i := 1; i < len(offs); i++ {
			require.Less(t, offs[i-1], offs[i], "key %s handled out of offset order: %v", k, offs)
		}
	}
}

func TestProcessOrderings(t *testing.T) {
	for _, tt := range []struct {
		ordering Ordering
		maxPer   func(m kafka.Message) string // what may not overlap
	}{
		{ByPartition, func(m kafka.Message) string { return fmt.Sprint(m.Partition) }},
		{Unordered, nil},
	} {
		t.Run(tt.ordering.String(), func(t *testing.T) {
			topic := cluster.Topic(t, 2)
			keyed(t, topic, 0, 0, 300, 10)
			keyed(t, topic, 1, 0, 300, 10)
			c := open(t, Config{Topic: topic, Group: group(t)})
			h := newHandled(600)
			var running, peak atomic.Int64
			var mu sync.Mutex
			busy := map[string]bool{}
			var overlap atomic.Int64
			// Unordered: the first handlers wait until 3 run at once
			// (more than one a partition), counted, not left to how the
			// goroutines happen to be scheduled.
			three := make(chan struct{})
			openThree := sync.OnceFunc(func() { close(three) })
			if tt.ordering != Unordered {
				openThree()
			}
			stop := runProcess(t, c, ProcessConfig{Ordering: tt.ordering, Concurrency: 8}, func(ctx context.Context, m kafka.Message) error {
				var k string
				if tt.maxPer != nil {
					k = tt.maxPer(m)
					mu.Lock()
					if busy[k] {
						overlap.Add(1)
					}
					busy[k] = true
					mu.Unlock()
				}
				r := running.Add(1)
				for p := peak.Load(); r > p && !peak.CompareAndSwap(p, r); p = peak.Load() {
				}
				if r >= 3 {
					openThree()
				}
				select {
				case <-three:
				case <-ctx.Done():
				}
				time.Sleep(200 * time.Microsecond)
				running.Add(-1)
				if tt.maxPer != nil {
					mu.Lock()
					busy[k] = false
					mu.Unlock()
				}
				h.add(m)
				return nil
			})
			waitDone(t, three, "3 handlers at once")
			waitDone(t, h.done, "every message handled")
			require.ErrorIs(t, stop(), context.Canceled)
			assert.Zero(t, overlap.Load())
			if tt.ordering == Unordered {
				assert.Greater(t, peak.Load(), int64(2), "unordered runs beyond one per partition")
			} else {
				assert.LessOrEqual(t, peak.Load(), int64(2))
				for _, offs := range h.byPart {
					for i := 1; i < len(offs); i++ {
						require.Less(t, offs[i-1], offs[i], "partition handled out of order")
					}
				}
			}
		})
	}
}

func TestProcessBadArguments(t *testing.T) {
	topic := backlog(t, 1, 0)
	c := open(t, Config{Topic: topic})
	ok := func(context.Context, kafka.Message) error { return nil }
	for _, tt := range []struct {
		pc   ProcessConfig
		want string
	}{
		{ProcessConfig{Concurrency: -1}, "ProcessConfig.Concurrency"},
		{ProcessConfig{MaxAttempts: -2}, "ProcessConfig.MaxAttempts"},
		{ProcessConfig{RetryBackoff: -time.Second}, "ProcessConfig.RetryBackoff"},
		{ProcessConfig{Ordering: 7}, "ProcessConfig.Ordering"},
	} {
		err := c.Process(testCtx(t), tt.pc, ok)
		var ce *ConfigError
		require.ErrorAs(t, err, &ce)
		assert.Contains(t, err.Error(), tt.want)
	}
	err := c.Process(testCtx(t), ProcessConfig{}, nil)
	assert.ErrorContains(t, err, "nil Handler")
	var aerr *ArgError
	assert.ErrorAs(t, err, &aerr)
	assert.ErrorIs(t, c.Process(nil, ProcessConfig{}, ok), errNilContext) //nolint:staticcheck // a nil ctx is the point
	require.NoError(t, c.Close())
	assert.ErrorIs(t, c.Process(testCtx(t), ProcessConfig{}, ok), ErrClosed)
}

func TestProcessExcludesOtherWays(t *testing.T) {
	topic := backlog(t, 1, 10)
	c := open(t, Config{Topic: topic})
	started := make(chan struct{})
	var once sync.Once
	stop := runProcess(t, c, ProcessConfig{}, func(ctx context.Context, m kafka.Message) error {
		once.Do(func() { close(started) })
		return nil
	})
	waitDone(t, started, "Process to start")
	_, err := c.GetMessages(testCtx(t), 1)
	assert.ErrorIs(t, err, ErrBusy)
	assert.ErrorIs(t, c.Process(testCtx(t), ProcessConfig{}, func(context.Context, kafka.Message) error { return nil }), ErrBusy)
	_, open := <-c.Iter(testCtx(t))
	assert.False(t, open, "Iter's channel is closed while Process runs")
	require.ErrorIs(t, stop(), context.Canceled)
	_, err = c.GetMessages(testCtx(t), 1, Block(false))
	assert.NoError(t, err, "GetMessages works again once Process returned")

	// And an open Iter channel keeps Process out.
	ictx, cancel := context.WithCancel(testCtx(t))
	_ = c.Iter(ictx)
	assert.ErrorIs(t, c.Process(testCtx(t), ProcessConfig{}, func(context.Context, kafka.Message) error { return nil }), ErrBusy)
	cancel()
}

var errBoom = errors.New("boom")

func TestProcessRetriesKeepKeyOrder(t *testing.T) {
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, 40, 2) // k0 at even offsets, k1 at odd
	c := open(t, Config{Topic: topic, Group: group(t)})
	h := newHandled(40)
	var fails atomic.Int32
	stop := runProcess(t, c, ProcessConfig{RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 4 && fails.Add(1) <= 3 {
			return errBoom // k0's third message fails three times
		}
		h.add(m)
		return nil
	})
	waitDone(t, h.done, "every message handled")
	require.ErrorIs(t, stop(), context.Canceled)
	assert.EqualValues(t, 4, fails.Load())
	h.mu.Lock()
	defer h.mu.Unlock()
	k0 := h.order["0/k0"]
	require.Len(t, k0, 20)
	for i, o := range k0 {
		assert.EqualValues(t, 2*i, o, "k0 waits for its retried message")
	}
	assert.EqualValues(t, 3, c.Stats().Process.Retries)
}

func TestProcessGiveUp(t *testing.T) {
	t.Run("no OnGiveUp stops Process", func(t *testing.T) {
		topic := cluster.Topic(t, 1)
		keyed(t, topic, 0, 0, 20, 20)
		g := group(t)
		c := open(t, Config{Topic: topic, Group: g})
		var attempts atomic.Int32
		err := c.Process(testCtx(t), ProcessConfig{MaxAttempts: 3, RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 7 {
				attempts.Add(1)
				return errBoom
			}
			return nil
		})
		var ge *GiveUpError
		require.ErrorAs(t, err, &ge)
		assert.ErrorIs(t, err, errBoom)
		assert.Equal(t, topic, ge.Topic)
		assert.EqualValues(t, 7, ge.Offset)
		assert.Equal(t, 3, ge.Attempts)
		assert.EqualValues(t, 3, attempts.Load())
		assert.Contains(t, err.Error(), "offset 7")
		cm := committed(t, topic, g, 1)
		assert.LessOrEqual(t, cm[0], int64(7), "nothing at or past the message given up is committed")
	})
	t.Run("OnGiveUp takes it", func(t *testing.T) {
		topic := cluster.Topic(t, 1)
		keyed(t, topic, 0, 0, 20, 3)
		g := group(t)
		c := open(t, Config{Topic: topic, Group: g})
		h := newHandled(19)
		var dead []int64
		var mu sync.Mutex
		stop := runProcess(t, c, ProcessConfig{MaxAttempts: 2, RetryBackoff: time.Millisecond,
			OnGiveUp: func(ctx context.Context, m kafka.Message, err error) error {
				if !errors.Is(err, errBoom) {
					return fmt.Errorf("OnGiveUp got %v", err)
				}
				mu.Lock()
				dead = append(dead, m.Offset)
				mu.Unlock()
				return nil
			}}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 5 {
				return errBoom
			}
			h.add(m)
			return nil
		})
		waitDone(t, h.done, "the others handled")
		require.Eventually(t, func() bool { return c.Stats().Process.GivenUp == 1 }, 10*time.Second, time.Millisecond)
		require.ErrorIs(t, stop(), context.Canceled)
		assert.Equal(t, []int64{5}, dead)
		assert.Equal(t, map[int]int64{0: 20}, committed(t, topic, g, 1), "a message OnGiveUp took counts as complete")
	})
	t.Run("OnGiveUp fails", func(t *testing.T) {
		topic := cluster.Topic(t, 1)
		keyed(t, topic, 0, 0, 5, 5)
		c := open(t, Config{Topic: topic, Group: group(t)})
		dlq := errors.New("dead letter topic unreachable")
		err := c.Process(testCtx(t), ProcessConfig{MaxAttempts: 1,
			OnGiveUp: func(context.Context, kafka.Message, error) error { return dlq },
		}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 2 {
				return errBoom
			}
			return nil
		})
		assert.ErrorIs(t, err, dlq)
		assert.ErrorIs(t, err, errBoom)
		assert.Contains(t, err.Error(), "offset 2")
	})
}

func TestProcessPanicIsAFailedAttempt(t *testing.T) {
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, 3, 3)
	c := open(t, Config{Topic: topic})
	err := c.Process(testCtx(t), ProcessConfig{MaxAttempts: 2, RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 1 {
			panic("handler bug")
		}
		return nil
	})
	var pe *PanicError
	require.ErrorAs(t, err, &pe)
	assert.Equal(t, "handler bug", pe.Value)
	assert.Contains(t, string(pe.Stack), "process_test.go", "the stack shows where it panicked")
	assert.EqualValues(t, 2, c.Stats().Process.Panics)
}

// TestProcessRestartHandlesOnlyTheStuckMessage stops Process while one
// message is stuck and the rest completed: a new consumer handles that
// message only, thanks to the commit metadata.
func TestProcessRestartHandlesOnlyTheStuckMessage(t *testing.T) {
	const n = 300
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, n, n) // every key distinct: nothing waits for the stuck one
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g})
	h := newHandled(n - 1)
	stuck := make(chan struct{})
	stop := runProcess(t, c, ProcessConfig{Concurrency: 8}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 10 {
			close(stuck)
			<-ctx.Done() // stuck until Process stops
			return ctx.Err()
		}
		h.add(m)
		return nil
	})
	waitDone(t, stuck, "the stuck message")
	waitDone(t, h.done, "the others handled")
	require.ErrorIs(t, stop(), context.Canceled)
	require.NoError(t, c.Close())
	assert.Equal(t, map[int]int64{0: 10}, committed(t, topic, g, 1), "the commit stays at the stuck message")

	c2 := open(t, Config{Topic: topic, Group: g})
	var again []int64
	var mu sync.Mutex
	got := make(chan struct{}, 1)
	stop2 := runProcess(t, c2, ProcessConfig{}, func(ctx context.Context, m kafka.Message) error {
		mu.Lock()
		again = append(again, m.Offset)
		mu.Unlock()
		select {
		case got <- struct{}{}:
		default:
		}
		return nil
	})
	waitDone(t, got, "the stuck message handled again")
	// The rest are skipped as they arrive (the commit may jump to n
	// before: it knows they are complete).
	require.Eventually(t, func() bool {
		s := c2.Stats()
		return s.Process.Skipped == n-11 && s.Partitions[0].Consumed == n
	}, 10*time.Second, time.Millisecond)
	require.ErrorIs(t, stop2(), context.Canceled)
	mu.Lock()
	defer mu.Unlock()
	assert.Equal(t, []int64{10}, again, "only the message that was not complete")
	assert.Equal(t, map[int]int64{0: n}, committed(t, topic, g, 1))
}

func TestProcessCloseWhileRunning(t *testing.T) {
	topic := backlog(t, 2, 100)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g})
	var mu sync.Mutex
	done := map[[2]int64]bool{}
	inHandler := make(chan struct{})
	var once sync.Once
	res := make(chan error, 1)
	go func() {
		res <- c.Process(context.Background(), ProcessConfig{Concurrency: 4}, func(ctx context.Context, m kafka.Message) error {
			if m.Offset == 50 && m.Partition == 0 {
				once.Do(func() { close(inHandler) })
				<-ctx.Done() // Close cancels it
				return ctx.Err()
			}
			mu.Lock()
			done[[2]int64{int64(m.Partition), m.Offset}] = true
			mu.Unlock()
			return nil
		})
	}()
	waitDone(t, inHandler, "the blocking handler")
	require.NoError(t, c.Close())
	select {
	case err := <-res:
		assert.ErrorIs(t, err, ErrClosed)
	case <-time.After(10 * time.Second):
		t.Fatal("Process did not return after Close")
	}
	cm := committed(t, topic, g, 2)
	assert.LessOrEqual(t, cm[0], int64(50), "partition 0's commit stops at the message cancelled, or before")
	mu.Lock()
	defer mu.Unlock()
	// With 4 hands at once, the 3 others may each have claimed a run (up
	// to maxRun messages) and not started all of it when Close stopped
	// them: what they did not start is neither handled nor committed (the
	// loop below checks it), and the next Process fetches it again.
	for p, upTo := range cm {
		for o := range upTo {
			assert.True(t, done[[2]int64{int64(p), o}], "partition %d offset %d committed, not handled", p, o)
		}
	}
}

// TestProcessGroupHandOver runs Process on a member while a second one
// joins and takes half the partitions: the first finishes the handlers of
// the moving partitions and commits, with the completed offsets in the
// metadata, so the second handles nothing twice.
func TestProcessGroupHandOver(t *testing.T) {
	t.Parallel()
	const n, per, more = 4, 300, 50
	topic := cluster.Topic(t, n)
	for p := range n {
		keyed(t, topic, p, 0, per, 7)
	}
	g := group(t)
	h := newHandled(n * (per + more))
	var mu sync.Mutex
	by := map[[2]int64]string{}
	handler := func(name string) Handler {
		return func(ctx context.Context, m kafka.Message) error {
			time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			mu.Lock()
			if prev, ok := by[[2]int64{int64(m.Partition), m.Offset}]; ok {
				t.Errorf("partition %d offset %d handled by %s, then by %s", m.Partition, m.Offset, prev, name)
			}
			by[[2]int64{int64(m.Partition), m.Offset}] = name
			mu.Unlock()
			h.add(m)
			return nil
		}
	}
	a := open(t, groupCfg(topic, g))
	stopA := runProcess(t, a, ProcessConfig{Concurrency: 8}, handler("a"))
	require.Eventually(t, func() bool { return a.Stats().Process.Handled >= 100 }, 30*time.Second, time.Millisecond)
	b := open(t, groupCfg(topic, g))
	stopB := runProcess(t, b, ProcessConfig{Concurrency: 8}, handler("b"))
	assigned := assignedTo(t, n, a, b)
	for p := range n { // and some for b, whatever a did before it joined
		keyed(t, topic, p, per, more, 7)
	}
	waitDone(t, h.done, "every message handled")
	require.ErrorIs(t, stopA(), context.Canceled)
	require.ErrorIs(t, stopB(), context.Canceled)
	t.Logf("assignments %v; b skipped %d completed by a", assigned, b.Stats().Process.Skipped)
	mu.Lock()
	defer mu.Unlock()
	moved := 0
	for po, name := range by {
		if name == "b" && slices.Contains(assigned[1], int(po[0])) {
			moved++
		}
	}
	assert.Positive(t, moved, "b handled messages of the partitions it took over")
}

// envProcessChild makes the test binary run TestProcessChild: a consumer
// running Process that prints "partition offset" for every message it
// completes, before the handler returns, until it is killed.
const envProcessChild = "MULTICONSUMER_PROCESS_CHILD"

func TestProcessChild(t *testing.T) {
	spec := os.Getenv(envProcessChild)
	if spec == "" {
		t.Skip("runs as the child of TestProcessKilledLoop")
	}
	parts := strings.Split(spec, ",")
	c, err := New(context.Background(), Config{Topic: parts[0], Group: parts[1], Brokers: parts[2:], AutoCommitEveryN: 10, AutoCommitEveryT: 50 * time.Millisecond})
	require.NoError(t, err)
	var out sync.Mutex
	err = c.Process(context.Background(), ProcessConfig{Concurrency: 16}, func(ctx context.Context, m kafka.Message) error {
		time.Sleep(time.Duration(rand.IntN(4000)) * time.Microsecond)
		out.Lock()
		fmt.Printf("%d %d\n", m.Partition, m.Offset)
		out.Unlock()
		return nil
	})
	require.NoError(t, err)
}

// TestProcessKilledLoop kills a child running Process with SIGKILL, again
// and again, then lets one finish: nothing is lost, and every offset the
// group has committed (below the committed offset, or completed in its
// metadata) was handled before.
func TestProcessKilledLoop(t *testing.T) {
	if testing.Short() {
		t.Skip("starts child processes")
	}
	t.Parallel()
	const n, per = 3, 2000
	topic := cluster.Topic(t, n)
	for p := range n {
		keyed(t, topic, p, 0, per, 5)
	}
	g := group(t)
	seen := map[[2]int64]int{}
	run := func(kill time.Duration) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestProcessChild$", "-test.count=1")
		cmd.Env = append(os.Environ(), envProcessChild+"="+strings.Join(append([]string{topic, g}, cluster.Brokers()...), ","))
		out, err := cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		lines := make(chan [2]int64)
		go func() {
			defer close(lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				var p, o int64
				if _, err := fmt.Sscanf(sc.Text(), "%d %d", &p, &o); err == nil {
					lines <- [2]int64{p, o}
				}
			}
		}()
		var killAt <-chan time.Time
		if kill > 0 {
			timer := time.NewTimer(kill)
			defer timer.Stop()
			killAt = timer.C
		}
		for {
			select {
			case po, ok := <-lines:
				if !ok {
					_ = cmd.Wait()
					return
				}
				seen[po]++
				if len(seen) == n*per && kill == 0 {
					require.NoError(t, cmd.Process.Kill())
				}
			case <-killAt:
				require.NoError(t, cmd.Process.Kill()) // SIGKILL: no final commit
			}
		}
	}
	for i := range 6 {
		run(time.Duration(100+rand.IntN(150)) * time.Millisecond)
		// Everything the group has committed was handled.
		res, err := cluster.Client().OffsetFetch(testCtx(t), &kafka.OffsetFetchRequest{
			GroupID: g, Topics: map[string][]int{topic: {0, 1, 2}},
		})
		require.NoError(t, err)
		holes := 0
		for _, pr := range res.Topics[topic] {
			if pr.CommittedOffset < 0 {
				continue
			}
			for o := int64(0); o < pr.CommittedOffset; o++ {
				require.Positive(t, seen[[2]int64{int64(pr.Partition), o}], "round %d: partition %d offset %d committed, never handled", i, pr.Partition, o)
			}
			w, err := restoreWindow(pr.CommittedOffset, pr.Metadata)
			require.NoError(t, err)
			for _, s := range w.done {
				for o := s.start; o < s.end; o++ {
					require.Positive(t, seen[[2]int64{int64(pr.Partition), o}], "round %d: partition %d offset %d in the metadata, never handled", i, pr.Partition, o)
				}
				holes++
			}
		}
		t.Logf("round %d: %d of %d handled; committed %v spans in metadata", i, len(seen), n*per, holes)
	}
	run(0) // until every message is handled
	require.Equal(t, n*per, len(seen), "every message handled")
	dups := 0
	for _, k := range seen {
		dups += k - 1
	}
	t.Logf("%d handled twice of %d, over 6 kills", dups, n*per)
}

// TestProcessStats reads what a stuck key looks like in Stats: its message
// in Handling with its failed attempts, the partition's incomplete
// messages and their age, and the handler durations.
func TestProcessStats(t *testing.T) {
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, 10, 2) // k0 at even offsets, k1 at odd
	c := open(t, Config{Topic: topic})
	h := newHandled(5)
	stop := runProcess(t, c, ProcessConfig{RetryBackoff: time.Millisecond}, func(ctx context.Context, m kafka.Message) error {
		if string(m.Key) == "k0" && m.Offset == 2 {
			return errBoom // k0 is stuck at offset 2
		}
		if string(m.Key) == "k1" {
			h.add(m)
		}
		return nil
	})
	waitDone(t, h.done, "k1 handled")
	var s Stats
	require.Eventually(t, func() bool {
		s = c.Stats()
		return len(s.Process.Handling) == 1 && s.Process.Handling[0].Attempts >= 3
	}, 10*time.Second, time.Millisecond)
	hd := s.Process.Handling[0]
	assert.Equal(t, "k0", string(hd.Key))
	assert.EqualValues(t, 2, hd.Offset)
	assert.False(t, hd.Started.Before(hd.Taken))
	ps := s.Partitions[0]
	assert.Equal(t, 4, ps.Incomplete, "offset 2 and k0's three after it")
	assert.Positive(t, ps.OldestIncomplete)
	assert.EqualValues(t, 2, ps.Consumed, "the commit waits at the stuck message")
	assert.EqualValues(t, 10, ps.Messages)
	assert.EqualValues(t, 10*(2+3), ps.Bytes, "keys k0/k1 and values 0-N")
	assert.True(t, s.Process.Running)
	assert.Equal(t, 1, s.Process.InFlight)
	assert.Equal(t, 3, s.Process.Waiting)
	assert.GreaterOrEqual(t, s.Process.Retries, int64(2))
	hist := s.Process.HandlerDurations
	assert.Len(t, hist.Counts, len(hist.Bounds)+1)
	var sum int64
	for _, n := range hist.Counts {
		sum += n
	}
	assert.Equal(t, hist.Count, sum)
	assert.GreaterOrEqual(t, hist.Count, int64(6+2))
	require.ErrorIs(t, stop(), context.Canceled)
	assert.False(t, c.Stats().Process.Running)
	assert.Empty(t, c.Stats().Process.Handling)
}

// TestProcessBackpressureWhenMetadataFull holds key a's first message
// while key b's messages, interleaved with a's, complete: each completion
// is a span of its own in the commit metadata. When no more would fit, the
// partition starts no more handlers (b stalls), the commits still go
// through (the metadata fits), and once a's message completes everything
// does.
func TestProcessBackpressureWhenMetadataFull(t *testing.T) {
	// Every other offset complete: the runs hold about 3,050 spans (a byte
	// each), the bitset 12,000 while the messages taken reach no further
	// than 24,000 offsets (room prices the bitset up to the last one
	// taken). b stalls between the two, before its 15,000.
	const n = 30000
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, n, 2) // a: k0 at even offsets, b: k1 at odd
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g, QueueSize: 32768, AutoCommitEveryT: 20 * time.Millisecond})
	release := make(chan struct{})
	h := newHandled(n)
	stop := runProcess(t, c, ProcessConfig{}, func(ctx context.Context, m kafka.Message) error {
		if m.Offset == 0 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		h.add(m)
		return nil
	})
	// b runs until the metadata is full, then stalls: every message is
	// taken (the queue has room for them all) and only a's first runs, so
	// b's next waits for room. One snapshot, not a pause in the progress
	// (which a loaded machine makes too).
	var stalled int64
	require.Eventually(t, func() bool {
		s := c.Stats()
		stalled = s.Process.Handled
		return s.Partitions[0].Delivered == n && s.Process.InFlight == 1
	}, 30*time.Second, time.Millisecond)
	t.Logf("b stalled after %d messages", stalled)
	assert.Greater(t, stalled, int64(2*761), "twice the spans mc1 held")
	assert.Less(t, stalled, int64(n/2), "b stalled before its end")
	// The commit with the fullest metadata went through.
	require.Eventually(t, func() bool {
		res, err := cluster.Client().OffsetFetch(testCtx(t), &kafka.OffsetFetchRequest{GroupID: g, Topics: map[string][]int{topic: {0}}})
		require.NoError(t, err)
		for _, p := range res.Topics[topic] {
			if w, err := restoreWindow(p.CommittedOffset, p.Metadata); err == nil && int64(len(w.done)) == stalled {
				assert.LessOrEqual(t, len(p.Metadata), maxMetadata)
				return p.CommittedOffset == 0
			}
		}
		return false
	}, 10*time.Second, 20*time.Millisecond, "the commit holds every span b completed")
	assert.Zero(t, c.Stats().CommitErrors)

	close(release)
	waitDone(t, h.done, "everything handled once a's message completes")
	require.ErrorIs(t, stop(), context.Canceled)
	assert.Equal(t, map[int]int64{0: n}, committed(t, topic, g, 1))
}

// A Seek while Process runs moves the partition: what was taken before is
// dropped (its handlers' completions no longer count), and Process goes on
// from the new position.
func TestProcessSeek(t *testing.T) {
	topic := backlog(t, 1, 100)
	g := group(t)
	c := open(t, Config{Topic: topic, Group: g})
	var mu sync.Mutex
	times := map[int64]int{}
	var seeked atomic.Bool
	again := make(chan struct{})
	var once sync.Once
	stop := runProcess(t, c, ProcessConfig{Ordering: ByPartition}, func(ctx context.Context, m kafka.Message) error {
		mu.Lock()
		times[m.Offset]++
		n := times[m.Offset]
		mu.Unlock()
		if m.Offset == 50 && seeked.CompareAndSwap(false, true) {
			require.NoError(t, c.Seek(ctx, 10, SeekAbsolute))
		}
		if m.Offset == 99 && n == 1 {
			once.Do(func() { close(again) })
		}
		return nil
	})
	waitDone(t, again, "the end after the seek")
	require.ErrorIs(t, stop(), context.Canceled)
	mu.Lock()
	defer mu.Unlock()
	for o := int64(0); o < 100; o++ {
		want := 1
		if o >= 10 && o <= 50 {
			want = 2
		}
		assert.Equal(t, want, times[o], "offset %d", o)
	}
	assert.Equal(t, map[int]int64{0: 100}, committed(t, topic, g, 1))
}

// With few keys per partition, every partition's messages reach the
// handlers: one partition's backlog does not take the whole queue while
// it waits for its keys (the queue is fair while Process runs).
func TestProcessPartitionsShareTheQueue(t *testing.T) {
	const parts, per = 4, 2000
	topic := cluster.Topic(t, parts)
	for p := range parts {
		keyed(t, topic, p, 0, per, 2)
	}
	c := open(t, Config{Topic: topic}) // one worker fetches them all
	h := newHandled(parts * per)
	var mu sync.Mutex
	running := map[int]int{}
	peak := 0
	stop := runProcess(t, c, ProcessConfig{Concurrency: 16}, func(ctx context.Context, m kafka.Message) error {
		mu.Lock()
		running[m.Partition]++
		peak = max(peak, len(running))
		mu.Unlock()
		time.Sleep(100 * time.Microsecond)
		mu.Lock()
		if running[m.Partition]--; running[m.Partition] == 0 {
			delete(running, m.Partition)
		}
		mu.Unlock()
		h.add(m)
		return nil
	})
	waitDone(t, h.done, "every message handled")
	require.ErrorIs(t, stop(), context.Canceled)
	assert.Equal(t, parts, peak, "handlers of every partition ran at once")
	for k, n := range h.seen {
		require.Equal(t, 1, n, "message %v handled %d times", k, n)
	}
	assert.Zero(t, c.Stats().QueueLen)
}

// When Process gives up on a message, no later message of its key runs,
// even in the instant before Process stops: after a restart the key
// resumes at the message given up on, in order.
func TestProcessGiveUpHoldsTheKey(t *testing.T) {
	topic := cluster.Topic(t, 1)
	keyed(t, topic, 0, 0, 40, 2) // k0 at even offsets, k1 at odd
	for range 5 {
		g := group(t)
		c := open(t, Config{Topic: topic, Group: g})
		var mu sync.Mutex
		var k0 []int64
		err := c.Process(testCtx(t), ProcessConfig{MaxAttempts: 1}, func(ctx context.Context, m kafka.Message) error {
			if string(m.Key) != "k0" {
				return nil
			}
			if m.Offset == 2 {
				return errBoom
			}
			mu.Lock()
			k0 = append(k0, m.Offset)
			mu.Unlock()
			return nil // ignores ctx: a handler that would complete if started
		})
		require.ErrorIs(t, err, errBoom)
		require.NoError(t, c.Close())
		mu.Lock()
		assert.Equal(t, []int64{0}, k0, "k0 stops at the message given up on")
		mu.Unlock()
		assert.LessOrEqual(t, committed(t, topic, g, 1)[0], int64(2))
	}
}

// A backlog drains to its end with handlers that take no time, whatever
// the workers: partitions with their share of the queue wait for room
// without missing it (a worker once waited for a wake-up that had come
// before it waited, and stalled).
func TestProcessDrainsABacklog(t *testing.T) {
	const parts, per = 8, 10000
	topic := backlog(t, parts, per)
	for _, workers := range []int{1, 8} {
		t.Run(fmt.Sprint(workers, " workers"), func(t *testing.T) {
			c := open(t, Config{Topic: topic, NumWorkers: workers, QueueSize: 256})
			var n atomic.Int64
			ctx, cancel := context.WithTimeout(testCtx(t), 30*time.Second) // a stall fails, not hangs
			defer cancel()
			err := c.Process(ctx, ProcessConfig{Ordering: Unordered}, func(ctx context.Context, m kafka.Message) error {
				if n.Add(1) == parts*per {
					cancel()
				}
				return nil
			})
			require.EqualValues(t, parts*per, n.Load(), "stalled")
			require.ErrorIs(t, err, context.Canceled)
			for p, ps := range c.Stats().Partitions {
				assert.EqualValues(t, per, ps.Consumed, "partition %d", p)
			}
		})
	}
}
