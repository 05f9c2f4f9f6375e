package multiconsumer

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// envChurnMember makes the test binary run TestChurnMember, a member
// process of TestGroupChurn: "topic,group,broker,...".
const envChurnMember = "MULTICONSUMER_CHURN_MEMBER"

// envChurnFor sets how long TestGroupChurn kills and starts members (a
// duration; default 20s), for a longer run by hand.
const envChurnFor = "MULTICONSUMER_CHURN_FOR"

// churnRebalanceTimeout is the members' RebalanceTimeout in TestGroupChurn:
// a rebalance waits for a killed member that long (its session timeout is
// 6s, the least Kafka allows), so at one kill every 1 to 2s the group
// still completes rebalances, and partitions move between live members
// that are handling them.
const churnRebalanceTimeout = 2 * time.Second

// envChurnLogs names a directory where TestGroupChurn keeps each member's
// log (member-N.log), to read after a run; without it a failed run prints
// the tail of each log.
const envChurnLogs = "MULTICONSUMER_CHURN_LOGS"

// TestChurnMember is a member process of TestGroupChurn: Process, ByKey, in
// group mode, printing "partition offset key" for each message its handler
// completes (before the handler returns), "assigned p..." and "revoked
// p..." for what it gets and gives up, until it is killed; on SIGTERM it
// stops Process, Closes (which commits and leaves) and prints "closed".
func TestChurnMember(t *testing.T) {
	spec := os.Getenv(envChurnMember)
	if spec == "" {
		t.Skip("runs as a member process of TestGroupChurn")
	}
	parts := strings.Split(spec, ",")
	var out sync.Mutex
	emit := func(format string, args ...any) {
		out.Lock()
		defer out.Unlock()
		fmt.Printf(format, args...)
	}
	list := func(ps []int) string {
		s := make([]string, len(ps))
		for i, p := range ps {
			s[i] = strconv.Itoa(p)
		}
		return strings.Join(s, " ")
	}
	cfg := groupCfg(parts[0], parts[1])
	cfg.RebalanceTimeout = churnRebalanceTimeout
	cfg.Brokers = parts[2:]
	cfg.AutoCommitEveryN, cfg.AutoCommitEveryT = 10, 50*time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	cfg.OnAssigned = func(ctx context.Context, ps []int) { emit("assigned %s\n", list(ps)) }
	cfg.OnRevoked = func(ctx context.Context, ps []int) { emit("revoked %s\n", list(ps)) }
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c, err := New(ctx, cfg)
	require.NoError(t, err)
	err = c.Process(ctx, ProcessConfig{Ordering: ByKey, Concurrency: 16}, func(ctx context.Context, m kafka.Message) error {
		time.Sleep(time.Duration(rand.IntN(2000)) * time.Microsecond)
		emit("%d %d %s\n", m.Partition, m.Offset, m.Key)
		return nil
	})
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, c.Close())
	emit("closed\n")
}

// churnLog is what the member processes of TestGroupChurn printed.
type churnLog struct {
	mu        sync.Mutex
	handled   map[[2]int64]int // (partition, offset) -> times completed
	orderErrs []string         // a key's completions out of offset order within one member run
	checked   int              // completions checked against the key's previous one
}

// read parses the output of member run until it ends; other lines (the
// test framework's) go to other. Within a run, a key's completions must
// follow its offsets, until its partition is revoked.
func (l *churnLog) read(run int, out *bufio.Scanner, other io.Writer) {
	last := map[int]map[string]int64{} // partition -> key -> offset last completed
	for out.Scan() {
		line := out.Text()
		if rest, ok := strings.CutPrefix(line, "revoked"); ok {
			for _, f := range strings.Fields(rest) {
				p, _ := strconv.Atoi(f)
				delete(last, p)
			}
			continue
		}
		var p, o int64
		var key string
		if _, err := fmt.Sscanf(line, "%d %d %s", &p, &o, &key); err != nil {
			fmt.Fprintln(other, line)
			continue
		}
		l.mu.Lock()
		l.handled[[2]int64{p, o}]++
		if last[int(p)] == nil {
			last[int(p)] = map[string]int64{}
		}
		if prev, ok := last[int(p)][key]; ok {
			l.checked++
			if o <= prev {
				l.orderErrs = append(l.orderErrs, fmt.Sprintf("member %d: partition %d key %s: offset %d after %d", run, p, key, o, prev))
			}
		}
		last[int(p)][key] = o
		l.mu.Unlock()
	}
}

// missing returns how many offsets below end (per partition) were never
// completed.
func (l *churnLog) missing(end map[int]int64) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	k := 0
	for p, e := range end {
		for o := range e {
			if l.handled[[2]int64{int64(p), o}] == 0 {
				k++
			}
		}
	}
	return k
}

// churnMember is one member process of TestGroupChurn.
type churnMember struct {
	id   int
	cmd  *exec.Cmd
	log  io.Writer     // its stderr, and the lines of its stdout that are not records
	buf  *bytes.Buffer // the log, when it goes to no file
	done chan struct{} // closed when its output has been read and it has exited
}

// TestGroupChurn: member processes running Process (ByKey) come and go,
// killed with SIGKILL, while a keyed producer writes; three are alive at a
// time, one is killed and another started every 1 to 2s. The group's
// committed offsets never go back. At the end
// a clean member drains the rest and Closes: every record was completed at
// least once, everything is committed, and within each member run a key's
// records completed in their order.
func TestGroupChurn(t *testing.T) {
	if testing.Short() {
		t.Skip("starts and kills member processes for half a minute")
	}
	t.Parallel()
	const (
		partitions = 6
		alive      = 3
		keys       = 60
	)
	churnFor := 20 * time.Second
	if v := os.Getenv(envChurnFor); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err, envChurnFor)
		churnFor = d
	}
	topic := cluster.Topic(t, partitions)
	g := group(t)
	logDir := os.Getenv(envChurnLogs)
	if logDir != "" {
		require.NoError(t, os.MkdirAll(logDir, 0o755))
	}

	log := &churnLog{handled: map[[2]int64]int{}}
	var members []*churnMember
	var readers sync.WaitGroup
	start := func() *churnMember {
		m := &churnMember{id: len(members), done: make(chan struct{})}
		m.cmd = exec.Command(os.Args[0], "-test.run=^TestChurnMember$", "-test.count=1")
		m.cmd.Env = append(os.Environ(), envChurnMember+"="+strings.Join(append([]string{topic, g}, cluster.Brokers()...), ","))
		if logDir != "" {
			f, err := os.Create(filepath.Join(logDir, fmt.Sprintf("member-%d.log", m.id)))
			require.NoError(t, err)
			t.Cleanup(func() { _ = f.Close() })
			m.log = f
		} else {
			m.buf = &bytes.Buffer{}
			m.log = &lockedWriter{w: m.buf}
		}
		m.cmd.Stderr = m.log
		out, err := m.cmd.StdoutPipe()
		require.NoError(t, err)
		require.NoError(t, m.cmd.Start())
		members = append(members, m)
		readers.Go(func() {
			defer close(m.done)
			log.read(m.id, bufio.NewScanner(out), m.log)
			_ = m.cmd.Wait()
		})
		return m
	}
	kill := func(m *churnMember) {
		_ = m.cmd.Process.Kill() // SIGKILL: no commit, no leave
		<-m.done
	}
	t.Cleanup(func() {
		for _, m := range members {
			_ = m.cmd.Process.Kill()
		}
		readers.Wait()
		if t.Failed() && logDir == "" {
			for _, m := range members {
				lines := strings.Split(strings.TrimSpace(m.buf.String()), "\n")
				t.Logf("member %d, the end of its log:\n%s", m.id, strings.Join(lines[max(0, len(lines)-15):], "\n"))
			}
		}
	})

	// The committed offsets, read every 20 ms, never go back.
	sampling := make(chan struct{})
	var sampler sync.WaitGroup
	samples := 0
	sampler.Go(func() {
		last := map[int]int64{}
		req := &kafka.OffsetFetchRequest{GroupID: g, Topics: map[string][]int{topic: {0, 1, 2, 3, 4, 5}}}
		for {
			select {
			case <-sampling:
				return
			case <-time.After(20 * time.Millisecond):
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			res, err := cluster.Client().OffsetFetch(ctx, req)
			cancel()
			if err != nil || res.Error != nil {
				continue // kfake: no commit yet, no group
			}
			samples++
			for _, pr := range res.Topics[topic] {
				if pr.Error != nil || pr.CommittedOffset < 0 {
					continue
				}
				assert.GreaterOrEqual(t, pr.CommittedOffset, last[pr.Partition], "partition %d's committed offset went back", pr.Partition)
				last[pr.Partition] = max(last[pr.Partition], pr.CommittedOffset)
			}
		}
	})

	// A keyed producer: the key picks the partition. 20 records every
	// 20 ms.
	tr := &kafka.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	w := &kafka.Writer{
		Addr: kafka.TCP(cluster.Brokers()...), Topic: topic, Transport: tr,
		Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond,
	}
	producing := make(chan struct{})
	var producer sync.WaitGroup
	produced := 0
	producer.Go(func() {
		seq := 0
		for {
			select {
			case <-producing:
				return
			case <-time.After(20 * time.Millisecond):
			}
			msgs := make([]kafka.Message, 20)
			for i := range msgs {
				msgs[i] = kafka.Message{Key: fmt.Appendf(nil, "k%d", seq%keys), Value: fmt.Appendf(nil, "%d", seq)}
				seq++
			}
			if !assert.NoError(t, w.WriteMessages(context.Background(), msgs...)) {
				return
			}
			produced += len(msgs)
		}
	})

	// Churn.
	var live []*churnMember
	for range alive {
		live = append(live, start())
	}
	began := time.Now()
	kills := 0
	for time.Since(began) < churnFor {
		time.Sleep(time.Second + rand.N(time.Second))
		i := rand.IntN(len(live))
		kill(live[i])
		kills++
		if time.Since(began) < churnFor {
			live[i] = start()
		} else {
			live = slices.Delete(live, i, i+1)
		}
	}
	close(producing)
	producer.Wait()
	require.NoError(t, w.Close())
	for _, m := range live {
		kill(m)
	}

	// The log's end, now that the producer stopped.
	end := map[int]int64{}
	var last []kafka.OffsetRequest
	for p := range partitions {
		last = append(last, kafka.LastOffsetOf(p))
	}
	offs, err := cluster.Client().ListOffsets(testCtx(t), &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: last}})
	require.NoError(t, err)
	total := int64(0)
	for _, po := range offs.Topics[topic] {
		require.NoError(t, po.Error)
		end[po.Partition] = po.LastOffset
		total += po.LastOffset
	}
	require.Len(t, end, partitions)
	require.EqualValues(t, produced, total, "the log holds what was produced")
	churned := time.Since(began)
	during := total - int64(log.missing(end))
	t.Logf("churn: %v, %d kills, %d members started; %d records produced, %d completed during the churn",
		churned.Round(time.Millisecond), kills, len(members), total, during)
	// A clean member drains the rest, then stops and Closes.
	drained := time.Now()
	final := start()
	for log.missing(end) > 0 {
		select {
		case <-final.done:
			require.FailNow(t, "the last member exited")
		case <-time.After(20 * time.Millisecond):
		}
		require.Less(t, time.Since(drained), 45*time.Second, "records never completed: %d of %d", log.missing(end), total)
	}
	require.NoError(t, final.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-final.done:
	case <-time.After(30 * time.Second):
		require.FailNow(t, "the last member did not exit within 30s of SIGTERM")
	}
	require.True(t, final.cmd.ProcessState.Success(), "the last member: %v", final.cmd.ProcessState)
	t.Logf("the last member completed the rest in %v", time.Since(drained).Round(time.Millisecond))
	close(sampling)
	sampler.Wait()
	assert.Positive(t, samples)

	assert.Equal(t, end, committed(t, topic, g, partitions), "everything committed")
	log.mu.Lock()
	defer log.mu.Unlock()
	assert.Empty(t, log.orderErrs, "a key's records out of order within a member run")
	dups := 0
	for _, k := range log.handled {
		dups += k - 1
	}
	t.Logf("%d records completed more than once, of %d; %d key orders checked", dups, total, log.checked)
}

// lockedWriter serializes the writes to w: a member's stderr and its
// reader both write its log.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}
