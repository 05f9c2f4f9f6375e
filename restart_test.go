package multiconsumer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

// EnvRestartCmd names a shell command that restarts the broker of
// KAFKA_BROKERS, keeping its data, and returns once it is ready again (CI:
// "bash scripts/kafka.sh restart").
const EnvRestartCmd = "KAFKA_RESTART_CMD"

// A real broker restarts while a consumer is in the middle of a backlog:
// every message is still delivered, per partition in order (a redelivery
// may go back to an offset already delivered, never skip one), the
// auto-commit resumes and reaches the end of every partition, and Close
// leaves no goroutine behind. Not parallel: it restarts the broker that
// every other test uses.
func TestBrokerRestart(t *testing.T) {
	cmd := strings.TrimSpace(os.Getenv(EnvRestartCmd))
	if cmd == "" {
		t.Skip(EnvRestartCmd + " is not set: set it to a command that restarts the broker of KAFKA_BROKERS and returns when it is ready, e.g. " + EnvRestartCmd + "='bash scripts/kafka.sh restart'")
	}
	if cluster.Embedded() {
		t.Skip(EnvRestartCmd + " is set but KAFKA_BROKERS is not: the test restarts a real broker, not the embedded one")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// 512-byte values: a fetch of 1 MiB per partition holds ~2000 of them,
	// so the workers fetch again and again while the slow consumer of step
	// 2 goes on, and do fetch while the broker is away, rather than decode
	// one response taken before it went (~25k messages of kafkatest's ~30
	// bytes would be).
	const partitions, per, size = 4, 20000, 512
	const total = partitions * per
	began := time.Now()
	topic := backlog(t, partitions, 0)
	var produced sync.WaitGroup
	errs := make([]error, partitions)
	for p := range partitions {
		produced.Go(func() {
			msgs := make([]kafka.Message, per)
			for i := range msgs {
				msgs[i] = kafka.Message{Key: fmt.Appendf(nil, "%d-%d", p, i), Value: restartValue(p, int64(i), size)}
			}
			// 1000 a request: kafkatest's 4096 would exceed the broker's
			// 1 MB batch limit.
			for len(msgs) > 0 && errs[p] == nil {
				n := min(len(msgs), 1000)
				errs[p] = cluster.Produce(ctx, topic, p, msgs[:n]...)
				msgs = msgs[n:]
			}
		})
	}
	produced.Wait()
	require.NoError(t, errors.Join(errs...))
	t.Logf("backlog of %d x %d messages of %d bytes in %v", partitions, per, size, time.Since(began).Round(time.Millisecond))
	// After the backlog: the test cluster's connections are not ours. Its
	// transport reconnects on its own after the restart, and so do the
	// consumer's own kafka-go connections until Close: those goroutines
	// are ignored here, and checked by TestMain once every client is closed.
	leaks := []goleak.Option{
		goleak.IgnoreCurrent(),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connGroup).grabConnOrConnect.func1"),
	}

	g := group(t)
	c := open(t, Config{
		Topic: topic, Group: g, NumWorkers: 2,
		// The time trigger commits the tail of the backlog soon after the
		// last call; the default 5s would only make the test longer.
		AutoCommitEveryT: time.Second,
		// Retries come at most 2s apart, so the consumer is back soon after
		// the broker, not after a backoff grown during the outage.
		MaxBackoff: 2 * time.Second,
		// Its failed fetches and commits, in the test's log.
		Logger: slog.New(slog.NewTextHandler(&lineLogger{t: t, prefix: "consumer: "}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})

	// Per partition: the offset the next message must have (a lower one
	// is a redelivery, a higher one a skip), and the offset after the
	// highest delivered.
	next, high := zeros(partitions), zeros(partitions)
	seen, redelivered, rewinds := 0, 0, 0
	phase := "before the restart"
	track := func(msgs []kafka.Message) {
		t.Helper()
		for _, m := range msgs {
			p, o := m.Partition, m.Offset
			want, ok := next[p]
			require.True(t, ok, "message of unexpected partition %d", p)
			require.Equal(t, fmt.Sprintf("%d-%d", p, o), string(m.Key), "partition %d offset %d", p, o)
			require.Equal(t, restartValue(p, o, size), m.Value, "partition %d offset %d", p, o)
			require.LessOrEqual(t, o, want, "partition %d skipped from offset %d to %d (%s)", p, want, o, phase)
			require.Less(t, o, int64(per), "partition %d offset %d is past the backlog", p, o)
			if o < want {
				// Going back to an offset already delivered: allowed
				// after the restart only.
				require.NotEqual(t, "before the restart", phase, "partition %d went back from %d to %d", p, want, o)
				rewinds++
				t.Logf("partition %d delivered again from offset %d (was at %d), %s", p, o, want, phase)
			}
			if o < high[p] {
				redelivered++
			} else {
				high[p] = o + 1
				seen++
			}
			next[p] = o + 1
		}
	}

	// 1. A quarter of the backlog.
	for seen < total/4 {
		msgs, err := c.GetMessages(ctx, 1000, BlockFor(1), Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "no message within 30s, %d of %d seen", seen, total)
		track(msgs)
	}
	pre := committed(t, topic, g, partitions)
	t.Logf("before the restart: %d of %d seen, committed %v", seen, total, pre)

	// 2. Restart the broker; meanwhile go on as a slow consumer (at most
	// 100 messages per 20ms), so that the workers are still fetching when
	// the broker goes away, and the auto-commit still committing. Keep the
	// last quarter for after the restart.
	type result struct {
		out  string
		err  error
		took time.Duration
	}
	restarted := make(chan result, 1)
	var running sync.WaitGroup
	t.Cleanup(running.Wait) // no t.Log from the command after the test
	phase = "during the restart"
	statsBefore := c.Stats()
	started := time.Now()
	running.Go(func() {
		// Not ctx: a test that fails meanwhile waits for the restart
		// rather than kill it halfway and leave the broker down.
		out, err := runRestart(context.Background(), t, cmd)
		restarted <- result{out, err, time.Since(started)}
	})
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var res result
	during := 0
wait:
	for {
		select {
		case res = <-restarted:
			break wait
		case <-tick.C:
			if seen >= total*3/4 {
				continue
			}
			msgs, err := c.GetMessages(ctx, 100, Block(false))
			require.NoError(t, err)
			during += len(msgs)
			track(msgs)
		}
	}
	require.NoError(t, res.err, "%s: %s", EnvRestartCmd, cmd)
	statsAt := c.Stats()
	t.Logf("restart took %v (stdout %q); %d messages delivered meanwhile, %d of %d seen; fetch errors %d, commit errors %d",
		res.took.Round(time.Millisecond), res.out, during, seen, total,
		fetchErrors(statsAt)-fetchErrors(statsBefore), statsAt.CommitErrors-statsBefore.CommitErrors)

	// What was committed before survived the restart (read with retries:
	// the first requests on connections from before the restart fail).
	var atRestart map[int]int64
	require.Eventually(t, func() bool {
		var err error
		atRestart, err = groupOffsets(ctx, topic, g, partitions)
		return err == nil
	}, 30*time.Second, 50*time.Millisecond, "committed offsets after the restart")
	for p := range partitions {
		assert.GreaterOrEqual(t, atRestart[p], pre[p], "partition %d: committed offset went back over the restart", p)
	}

	// 3. The rest, every message of every partition.
	phase = "after the restart"
	after, rest := time.Now(), total-seen
	var first time.Duration
	for seen < total {
		msgs, err := c.GetMessages(ctx, 1000, BlockFor(1), Timeout(30*time.Second))
		require.NoError(t, err)
		require.NotEmpty(t, msgs, "no message within 30s after the restart, %d of %d seen; stats %+v", seen, total, c.Stats())
		if first == 0 {
			first = time.Since(after)
		}
		track(msgs)
	}
	// Coming back consumes the last batch; anything still queued can only
	// be a redelivery.
	msgs, err := c.GetMessages(ctx, 1000, Block(false))
	require.NoError(t, err)
	track(msgs)
	for p := range partitions {
		require.Equal(t, int64(per), high[p], "partition %d", p)
	}
	assert.Equal(t, total, seen)
	t.Logf("after the restart: first message in %v, the rest (%d of %d) in %v; %d messages redelivered (%d rewinds); fetch errors %d, commit errors %d in all",
		first.Round(time.Millisecond), rest, total, time.Since(after).Round(time.Millisecond),
		redelivered, rewinds, fetchErrors(c.Stats()), c.Stats().CommitErrors)

	// 4. The auto-commit resumed: it alone brings every partition's
	// committed offset to the end.
	end := map[int]int64{}
	for p := range partitions {
		end[p] = per
	}
	commitWait := time.Now()
	require.EventuallyWithT(t, func(ct *assert.CollectT) {
		got, err := groupOffsets(ctx, topic, g, partitions)
		require.NoError(ct, err)
		assert.Equal(ct, end, got)
	}, 30*time.Second, 50*time.Millisecond, "auto-commit after the restart")
	t.Logf("auto-commit reached the end %v after the last call", time.Since(commitWait).Round(time.Millisecond))
	// And an explicit commit works on the restarted broker (not Close: it
	// need not commit).
	require.NoError(t, c.Commit(ctx))
	assert.Equal(t, end, committed(t, topic, g, partitions))

	// 5. Close stops everything, with nothing left to commit.
	closing := time.Now()
	require.NoError(t, c.Close())
	assert.Less(t, time.Since(closing), 5*time.Second, "Close")
	goleak.VerifyNone(t, leaks...)
	t.Logf("test body took %v", time.Since(began).Round(time.Millisecond))
}

// runRestart runs cmd with bash, bounded in time, and returns its stdout;
// its stderr goes to t.Log line by line.
func runRestart(ctx context.Context, t *testing.T, cmd string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 150*time.Second)
	defer cancel()
	c := exec.CommandContext(ctx, "bash", "-c", cmd)
	var stdout bytes.Buffer
	stderr := &lineLogger{t: t, prefix: "restart: "}
	c.Stdout, c.Stderr = &stdout, stderr
	c.WaitDelay = 5 * time.Second // a child left holding the pipes
	err := c.Run()
	stderr.flush()
	if ctx.Err() != nil {
		err = errors.Join(err, ctx.Err())
	}
	return strings.TrimSpace(stdout.String()), err
}

// lineLogger writes whole lines to t.Log. It is not safe for concurrent
// use (slog's handlers serialize their writes).
type lineLogger struct {
	t      *testing.T
	prefix string
	buf    []byte
}

func (l *lineLogger) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		l.t.Log(l.prefix + string(l.buf[:i]))
		l.buf = l.buf[i+1:]
	}
}

func (l *lineLogger) flush() {
	if len(l.buf) > 0 {
		l.t.Log(l.prefix + string(l.buf))
		l.buf = nil
	}
}

// groupOffsets is committed without failing the test: it returns the error
// for require.Eventually to try again.
func groupOffsets(ctx context.Context, topic, group string, partitions int) (map[int]int64, error) {
	parts := make([]int, partitions)
	for i := range parts {
		parts[i] = i
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	res, err := cluster.Client().OffsetFetch(ctx, &kafka.OffsetFetchRequest{
		GroupID: group, Topics: map[string][]int{topic: parts},
	})
	if err != nil {
		return nil, err
	}
	if res.Error != nil {
		return nil, res.Error
	}
	out := map[int]int64{}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			return nil, p.Error
		}
		if p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// restartValue is the value of message o of partition p: "p-o" padded with
// spaces to size bytes.
func restartValue(p int, o int64, size int) []byte {
	return fmt.Appendf(nil, "%-*s", size, fmt.Sprintf("%d-%d", p, o))
}

func fetchErrors(s Stats) int64 {
	var n int64
	for _, p := range s.Partitions {
		n += p.FetchErrors
	}
	return n
}
