package multiconsumer

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
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
	// Its state every 2s, on stderr: the end of a member's log says where
	// it stood if the test fails.
	stateCtx, stopState := context.WithCancel(ctx)
	var state sync.WaitGroup
	defer state.Wait()
	defer stopState()
	state.Go(func() {
		for {
			select {
			case <-stateCtx.Done():
				return
			case <-time.After(2 * time.Second):
			}
			st := c.Stats()
			var b strings.Builder
			fmt.Fprintf(&b, "state: queue %d, process in flight %d, waiting %d, handled %d; partitions", st.QueueLen, st.Process.InFlight, st.Process.Waiting, st.Process.Handled)
			for _, p := range slices.Sorted(maps.Keys(st.Partitions)) {
				ps := st.Partitions[p]
				fmt.Fprintf(&b, " %d: delivered %d consumed %d committed %d hwm %d incomplete %d oldest %v;", p, ps.Delivered, ps.Consumed, ps.Committed, ps.HighWatermark, ps.Incomplete, ps.OldestIncomplete.Round(time.Millisecond))
			}
			fmt.Fprintln(os.Stderr, b.String())
		}
	})
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
// committed offsets never go back, and it keeps handling records. At the end
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
	// The group keeps handling records while members die: a rebalance
	// waits for a dead member up to the rebalance timeout only.
	if cluster.Embedded() {
		// kfake restarts a rebalance's deadline at every join: while
		// members keep coming, a rebalance lasts until every dead
		// member's session has expired, and at one kill every 1 to 2s
		// there is always one whose session has not.
		t.Logf("not checked on kfake, which restarts a rebalance's deadline at every join (see TestCoordinatorJoinPhaseEndsAtRebalanceTimeout): " +
			"that the group completes a third of the records during the churn")
	} else {
		assert.GreaterOrEqual(t, during, total/3, "the group stalled during the churn")
	}

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

// The two tests below reduce what stalls TestGroupChurn on kfake to the
// group coordinator alone: members speak the classic group protocol with
// kafka-go's requests, and no code of this package runs. Kafka passes
// both; kfake fails both, so they skip on kfake unless envKfakeFaults is
// set (to watch them fail there).

// envKfakeFaults makes the coordinator tests that kfake fails run on kfake
// too.
const envKfakeFaults = "MULTICONSUMER_KFAKE_FAULTS"

func skipKfakeFault(t *testing.T, why string) {
	t.Helper()
	if cluster.Embedded() && os.Getenv(envKfakeFaults) == "" {
		t.Skip("kfake fails this (set " + envKfakeFaults + "=1 to see it): " + why)
	}
}

// rawMember is a member of a classic group made of kafka-go's requests only,
// on a connection of its own.
type rawMember struct {
	client *kafka.Client
	id     string
	req    kafka.JoinGroupRequest
}

func newRawMember(t *testing.T, topic, group string, session, rebalance time.Duration) *rawMember {
	tr := &kafka.Transport{}
	t.Cleanup(tr.CloseIdleConnections)
	return &rawMember{
		client: &kafka.Client{Addr: kafka.TCP(cluster.Brokers()...), Transport: tr},
		req: kafka.JoinGroupRequest{
			GroupID: group, SessionTimeout: session, RebalanceTimeout: rebalance, ProtocolType: consumerProtocol,
			Protocols: []kafka.GroupProtocol{{Name: "range", Metadata: kafka.GroupProtocolSubscription{Topics: []string{topic}}}},
		},
	}
}

// join sends JoinGroup (twice for a new member: KIP-394) and waits for
// the answer, which the coordinator gives when the join phase ends.
// userData changes the member's metadata, which makes a member of a
// stable group start a rebalance.
func (m *rawMember) join(ctx context.Context, userData string) (*kafka.JoinGroupResponse, error) {
	for {
		req := m.req
		req.MemberID = m.id
		req.Protocols = slices.Clone(req.Protocols)
		req.Protocols[0].Metadata.UserData = []byte(userData)
		res, err := m.client.JoinGroup(ctx, &req)
		if err != nil {
			return nil, err
		}
		if errors.Is(res.Error, kafka.MemberIDRequired) {
			m.id = res.MemberID
			continue
		}
		if errors.Is(res.Error, kafka.UnknownMemberId) {
			m.id = "" // removed from the group: join as a new member
		} else if res.Error == nil {
			m.id = res.MemberID
		}
		return res, res.Error
	}
}

// sync sends SyncGroup for generation; the leader gives every member no
// partitions (the tests are about the join phase).
func (m *rawMember) sync(ctx context.Context, join *kafka.JoinGroupResponse) error {
	req := &kafka.SyncGroupRequest{
		GroupID: m.req.GroupID, GenerationID: join.GenerationID, MemberID: m.id,
		ProtocolType: consumerProtocol, ProtocolName: join.ProtocolName,
	}
	for _, jm := range join.Members {
		req.Assignments = append(req.Assignments, kafka.SyncGroupRequestAssignment{
			MemberID: jm.ID, Assignment: kafka.GroupProtocolAssignment{AssignedPartitions: map[string][]int{}},
		})
	}
	res, err := m.client.SyncGroup(ctx, req)
	if err == nil {
		err = res.Error
	}
	return err
}

// stableGroup makes a and b a stable group, a leading: a joins alone; b
// joins, which starts a rebalance; a joins again, which ends it; both sync.
func stableGroup(t *testing.T, a, b *rawMember) {
	t.Helper()
	ctx := testCtx(t)
	res, err := a.join(ctx, "")
	require.NoError(t, err)
	require.NoError(t, a.sync(ctx, res))
	var resB *kafka.JoinGroupResponse
	var errB error
	var wg sync.WaitGroup
	wg.Go(func() { resB, errB = b.join(ctx, "") })
	require.Eventually(t, func() bool {
		res, err := a.client.DescribeGroups(ctx, &kafka.DescribeGroupsRequest{GroupIDs: []string{a.req.GroupID}})
		return err == nil && len(res.Groups) == 1 && res.Groups[0].GroupState == "PreparingRebalance"
	}, 10*time.Second, 10*time.Millisecond, "b's join starts a rebalance")
	res, err = a.join(ctx, "")
	wg.Wait()
	require.NoError(t, err)
	require.NoError(t, errB)
	require.Len(t, res.Members, 2)
	wg.Go(func() { errB = b.sync(ctx, resB) })
	require.NoError(t, a.sync(ctx, res))
	wg.Wait()
	require.NoError(t, errB)
}

// A join phase ends at the group's rebalance timeout, counted from its
// start, however many members join in the meantime: Kafka schedules the
// join deadline once, when the group starts preparing a rebalance
// (GroupMetadataManager.prepareRebalance), and a later join only completes
// the phase if every member has joined (maybeCompleteJoinPhase). kfake
// restarts the deadline at every join (groups.go, rebalance(): "Always
// reset the timer"), so while new members keep coming the phase does not
// end, and a member that died keeps the group waiting until its session
// expires. Members that come and go faster than the rebalance timeout
// stall the group on kfake: TestGroupChurn's members.
func TestCoordinatorJoinPhaseEndsAtRebalanceTimeout(t *testing.T) {
	skipKfakeFault(t, "it restarts the join phase's deadline at every join (groups.go, rebalance())")
	t.Parallel()
	const rebalance = 3 * time.Second
	topic := cluster.Topic(t, 1)
	g := group(t)
	a := newRawMember(t, topic, g, 30*time.Second, rebalance)
	dead := newRawMember(t, topic, g, 30*time.Second, rebalance)
	stableGroup(t, a, dead)

	// a rejoins with new metadata: the group prepares a rebalance, and
	// waits for dead, which never rejoins (nor does its session expire
	// within the test).
	ctx, cancel := context.WithCancel(testCtx(t))
	var joins sync.WaitGroup
	defer func() {
		cancel() // the new members' joins
		joins.Wait()
	}()
	start := time.Now()
	answered := make(chan error, 1)
	joins.Go(func() {
		_, err := a.join(ctx, "again")
		answered <- err
	})
	// A new member joins every second while a waits.
	for {
		select {
		case err := <-answered:
			require.NoError(t, err)
			took := time.Since(start)
			t.Logf("the join phase ended after %v (rebalance timeout %v)", took.Round(time.Millisecond), rebalance)
			assert.Less(t, took, rebalance+1500*time.Millisecond, "the join phase outlived the rebalance timeout")
			return
		case <-time.After(time.Second):
		}
		require.Less(t, time.Since(start), 4*rebalance, "the join phase has not ended: new members keep it open")
		n := newRawMember(t, topic, g, 30*time.Second, rebalance)
		joins.Go(func() { _, _ = n.join(ctx, "") })
	}
}

// A member waiting in JoinGroup keeps its place while the join phase lasts
// longer than its session timeout: Kafka counts a member awaiting join as
// heartbeating (ClassicGroupMember.hasSatisfiedHeartbeat), and if it ever
// removes one, it answers its JoinGroup (UNKNOWN_MEMBER_ID). kfake's
// session timer runs on while the member waits; when it fires, kfake
// removes the member (groups.go, updateHeartbeat -> updateMemberAndRebalance
// -> removeMember) and never answers its JoinGroup: the member waits out
// its own JoinGroup deadline. It happens on kfake when, as in
// TestGroupChurn, dead members and the restarted deadline (see
// TestCoordinatorJoinPhaseEndsAtRebalanceTimeout) make a join phase last
// longer than a session.
func TestCoordinatorKeepsMembersWaitingInJoin(t *testing.T) {
	skipKfakeFault(t, "it drops a member waiting in JoinGroup when its session timer fires, without answering (groups.go, updateHeartbeat)")
	t.Parallel()
	const session, rebalance = 6 * time.Second, 8 * time.Second // the shortest session Kafka allows
	topic := cluster.Topic(t, 1)
	g := group(t)
	a := newRawMember(t, topic, g, session, rebalance)
	dead := newRawMember(t, topic, g, 30*time.Second, rebalance)
	stableGroup(t, a, dead)

	// a rejoins and waits (and does not heartbeat, as Kafka's clients do
	// not while they wait in JoinGroup); dead never rejoins, so the phase
	// ends at the rebalance timeout, past a's session timeout.
	ctx, cancel := context.WithTimeout(testCtx(t), rebalance+5*time.Second)
	defer cancel()
	start := time.Now()
	res, err := a.join(ctx, "again")
	took := time.Since(start)
	require.NoError(t, err, "a's JoinGroup, after %v", took.Round(time.Millisecond))
	t.Logf("a's JoinGroup answered after %v (session %v, rebalance timeout %v)", took.Round(time.Millisecond), session, rebalance)
	assert.Greater(t, took, session, "the phase ended before a's session timeout: the test shows nothing")
	assert.Equal(t, a.id, res.LeaderID, "a leads the new generation, without dead")
	assert.Len(t, res.Members, 1)
}
