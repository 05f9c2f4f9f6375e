package multiconsumer

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file is the group settings the broker refuses: they stop the
// consumer with a *GroupSettingError at the first join; the other join
// errors are retried, and counted in Stats.

// stoppedBySetting waits (on GetMessages, not on a sleep) until the
// consumer reports the *GroupSettingError that stopped it, within limit.
func stoppedBySetting(t *testing.T, c *MultiConsumer, limit time.Duration) *GroupSettingError {
	t.Helper()
	start := time.Now()
	msgs, err := c.GetMessages(testCtx(t), 10, Timeout(30*time.Second))
	assert.Empty(t, msgs)
	var serr *GroupSettingError
	require.ErrorAs(t, err, &serr, "GetMessages")
	assert.Less(t, time.Since(start), limit, "the consumer stops at its first join")
	t.Log(err)
	return serr
}

// A SessionTimeout outside the broker's group.min/max.session.timeout.ms
// stops the consumer at its first join with a *GroupSettingError that names
// the field, its value and the broker's bounds, and unwraps to the broker's
// error. Every way out reports it.
func TestGroupSessionTimeoutRefused(t *testing.T) {
	classicOnly(t) // the classic protocol's settings and requests (JoinGroup)
	t.Parallel()
	for _, session := range []time.Duration{time.Second, time.Hour} {
		t.Run(session.String(), func(t *testing.T) {
			t.Parallel()
			topic := backlog(t, 2, 5)
			cfg := groupCfg(topic, group(t))
			cfg.SessionTimeout = session
			c := open(t, cfg)
			serr := stoppedBySetting(t, c, 5*time.Second)
			assert.Equal(t, "SessionTimeout", serr.Field)
			assert.Equal(t, session, serr.Value)
			assert.Equal(t, cfg.Group, serr.Group)
			assert.ErrorIs(t, serr, kafka.InvalidSessionTimeout)
			// Both brokers: 6s by default; the maximum differs (kfake 5
			// minutes, Kafka 30).
			assert.Equal(t, 6*time.Second, serr.MinSessionTimeout)
			assert.GreaterOrEqual(t, serr.MaxSessionTimeout, 5*time.Minute)
			assert.False(t, session >= serr.MinSessionTimeout && session <= serr.MaxSessionTimeout, "outside the bounds")
			assert.ErrorContains(t, serr, "group.min.session.timeout.ms")

			assert.Same(t, serr, errAs[*GroupSettingError](t, c.Err()), "Err")
			s := c.Stats()
			assert.Same(t, serr, errAs[*GroupSettingError](t, s.Err), "Stats.Err")
			assert.Equal(t, int64(1), s.JoinFailures, "one join, not retried")
			assert.ErrorIs(t, s.JoinError, kafka.InvalidSessionTimeout)
			assert.Empty(t, c.Assignment())

			for m, err := range c.Messages(testCtx(t)) {
				assert.Zero(t, m)
				assert.Same(t, serr, errAs[*GroupSettingError](t, err), "Messages")
			}
			_, ok := <-c.Iter(testCtx(t))
			assert.False(t, ok, "Iter's channel closes")
			err := c.Process(testCtx(t), ProcessConfig{}, func(context.Context, kafka.Message) error { return nil })
			assert.Same(t, serr, errAs[*GroupSettingError](t, err), "Process")
			assert.NoError(t, c.Close())
		})
	}
}

// The message of each kind of refusal, and of a zero value.
func TestGroupSettingErrorMessage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  *GroupSettingError
		want string
	}{
		{&GroupSettingError{}, `multiconsumer: group "": the broker refuses Config. (<nil>): refused: <nil>`},
		{&GroupSettingError{Group: "g", Field: "SessionTimeout", Value: time.Second, Err: kafka.InvalidSessionTimeout,
			MinSessionTimeout: 6 * time.Second, MaxSessionTimeout: 30 * time.Minute}, "Config.SessionTimeout (1s): it accepts 6s to 30m0s"},
		{&GroupSettingError{Group: "g", Field: "SessionTimeout", Value: time.Second, Err: kafka.InvalidSessionTimeout}, "its bounds are unknown: [26]"},
		{&GroupSettingError{Group: "g", Field: "Assignors", Value: []string{"range"}, Err: kafka.InconsistentGroupProtocol}, "Config.Assignors ([range]): the group's members offer none of them"},
		{&GroupSettingError{Group: "g", Field: "Group", Value: "g", Err: kafka.GroupAuthorizationFailed}, "may not read the group"},
		{&GroupSettingError{Group: "", Field: "Group", Value: "", Err: kafka.InvalidGroupId}, "not a valid group id"},
	} {
		assert.Contains(t, tc.err.Error(), tc.want)
		assert.Equal(t, tc.err.Err, errors.Unwrap(tc.err))
	}
}

// errAs returns err as a T, failing t when it is not one.
func errAs[T error](t *testing.T, err error) T {
	t.Helper()
	var target T
	require.ErrorAs(t, err, &target)
	return target
}

// Calls waiting for messages when the consumer stops (GetMessages, a
// Messages loop, Iter; Process on another consumer) return its error.
func TestGroupSettingErrorEndsWaitingCalls(t *testing.T) {
	classicOnly(t) // the classic protocol's settings and requests (JoinGroup)
	t.Parallel()
	topic := backlog(t, 1, 0)
	gate := newJoinGate(false)
	cfg := groupCfg(topic, group(t))
	cfg.SessionTimeout = time.Second
	cfg.Dialer = gate.dialer()
	pull, proc := open(t, cfg), open(t, cfg)

	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Go(func() {
		_, err := pull.GetMessages(testCtx(t), 1, Timeout(30*time.Second))
		errs <- err
	})
	wg.Go(func() {
		for _, err := range pull.Messages(testCtx(t)) {
			errs <- err
		}
	})
	iterDone := make(chan struct{})
	wg.Go(func() {
		for range pull.Iter(testCtx(t)) {
		}
		close(iterDone)
	})
	wg.Go(func() {
		errs <- proc.Process(testCtx(t), ProcessConfig{}, func(context.Context, kafka.Message) error { return nil })
	})
	// Both members' JoinGroup requests wait at the gate: then open it.
	require.Eventually(t, func() bool { return gate.held.Load() >= 2 }, 30*time.Second, 5*time.Millisecond)
	opened := time.Now()
	close(gate.open)
	for range 3 {
		select {
		case err := <-errs:
			var serr *GroupSettingError
			if assert.ErrorAs(t, err, &serr) {
				assert.Equal(t, "SessionTimeout", serr.Field)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("a waiting call did not return")
		}
	}
	select {
	case <-iterDone:
	case <-time.After(10 * time.Second):
		t.Fatal("Iter's channel did not close")
	}
	wg.Wait()
	assert.Less(t, time.Since(opened), 5*time.Second)
}

// Members that offer no assignor in common: the second one stops with a
// *GroupSettingError about Assignors; the first keeps its partitions.
func TestGroupInconsistentAssignorsRefused(t *testing.T) {
	classicOnly(t) // the classic protocol's settings and requests (JoinGroup)
	t.Parallel()
	topic := backlog(t, 2, 0)
	g := group(t)
	cfgA, cfgB := groupCfg(topic, g), groupCfg(topic, g)
	cfgA.Assignors, cfgB.Assignors = []string{"range"}, []string{"roundrobin"}
	a := open(t, cfgA)
	assignedTo(t, 2, a)
	b := open(t, cfgB)
	serr := stoppedBySetting(t, b, 10*time.Second)
	assert.Equal(t, "Assignors", serr.Field)
	assert.Equal(t, []string{"roundrobin"}, serr.Value)
	assert.ErrorIs(t, b.Err(), kafka.InconsistentGroupProtocol)
	assert.NoError(t, a.Err())
	assert.Equal(t, []int{0, 1}, a.Assignment())
}

// A member refused the group on a rejoin (here its ACL was taken away)
// stops: the partitions it owned are revoked as lost (another member may
// get them), and it commits nothing more.
func TestGroupAuthorizationFailedOnRejoin(t *testing.T) {
	classicOnly(t) // it makes the classic member rejoin
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	topic := backlog(t, 2, 0)
	g := group(t)
	cfg := groupCfg(topic, g)
	revoked := make(chan bool, 4)
	cfg.OnRevoked = func(ctx context.Context, parts []int) {
		if len(parts) > 0 {
			revoked <- Lost(ctx)
		}
	}
	c := open(t, cfg)
	assignedTo(t, 2, c)
	h := kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.JoinGroup}, Group: g, Err: kerr.GroupAuthorizationFailed, Count: -1})
	defer h.Remove()
	c.src.(*member).rejoin <- struct{}{}
	serr := stoppedBySetting(t, c, 10*time.Second)
	assert.Equal(t, "Group", serr.Field)
	assert.ErrorIs(t, serr, kafka.GroupAuthorizationFailed)
	select {
	case lost := <-revoked:
		assert.True(t, lost, "revoked as lost")
	default:
		t.Fatal("OnRevoked was not called")
	}
	assert.Empty(t, c.Assignment())
}

// Without the broker's bounds (DescribeConfigs refused), the error says
// they are unknown.
func TestGroupSessionTimeoutBoundsUnknown(t *testing.T) {
	classicOnly(t) // the classic protocol's settings and requests (JoinGroup)
	t.Parallel()
	if !cluster.Embedded() {
		t.Skip("needs the embedded broker to inject faults")
	}
	kf, tc, topic := ownCluster(t, 1, 1)
	kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.DescribeConfigs}, Err: kerr.ClusterAuthorizationFailed, Count: -1})
	cfg := groupCfg(topic, group(t))
	cfg.SessionTimeout = time.Second
	cfg.Brokers = tc.Brokers()
	c, err := New(testCtx(t), cfg)
	require.NoError(t, err)
	defer c.Close()
	serr := stoppedBySetting(t, c, 5*time.Second)
	assert.Zero(t, serr.MinSessionTimeout)
	assert.Zero(t, serr.MaxSessionTimeout)
	assert.ErrorContains(t, serr, "bounds are unknown")
	assert.ErrorIs(t, serr, kafka.InvalidSessionTimeout)
}

// Join errors that are not about a setting are retried: the consumer does
// not stop, Stats counts them and shows the last, until a join succeeds.
func TestGroupJoinFailuresRetried(t *testing.T) {
	classicOnly(t) // the classic protocol's settings and requests (JoinGroup)
	t.Parallel()
	topic := backlog(t, 1, 3)
	gate := newJoinGate(true)
	cfg := groupCfg(topic, group(t))
	cfg.Dialer = gate.dialer()
	c := open(t, cfg)
	require.Eventually(t, func() bool {
		s := c.Stats()
		return s.JoinFailures >= 2 && s.JoinError != nil
	}, 30*time.Second, 5*time.Millisecond)
	assert.ErrorIs(t, c.Stats().JoinError, errJoinGate)
	assert.NoError(t, c.Err())
	close(gate.open)
	msgs := drain(t, c, 3, 3)
	assert.Len(t, msgs, 3)
	s := c.Stats()
	assert.NoError(t, s.JoinError, "a join succeeded")
	assert.GreaterOrEqual(t, s.JoinFailures, int64(2))
	assert.NoError(t, c.Err())
}

// GROUP_MAX_SIZE_REACHED is retried: a member that leaves makes room.
func TestGroupMaxSizeRetried(t *testing.T) {
	t.Parallel()
	kf := cluster.Kfake()
	if kf == nil {
		t.Skip("needs the embedded broker to inject faults")
	}
	topic := backlog(t, 1, 0)
	g := group(t)
	h := kf.Fault(kfake.Fault{Keys: []kmsg.Key{joinKey()}, Group: g, Err: kerr.GroupMaxSizeReached, Count: -1})
	c := open(t, groupCfg(topic, g))
	require.Eventually(t, func() bool { return c.Stats().JoinFailures >= 2 }, 30*time.Second, 5*time.Millisecond)
	if err := c.Stats().JoinError; !errors.Is(err, kerr.GroupMaxSizeReached) {
		assert.ErrorIs(t, err, kafka.GroupMaxSizeReached)
	}
	assert.NoError(t, c.Err())
	h.Remove()
	assignedTo(t, 1, c)
	assert.NoError(t, c.Stats().JoinError)
}

// errJoinGate fails the JoinGroup requests of a closed failing joinGate.
var errJoinGate = errors.New("test: JoinGroup refused by the gate")

// joinGate is a Dialer whose connections hold (or fail) every JoinGroup
// request written to them until open is closed: a join that waits, or
// fails with a connection error, on any broker, embedded or real.
type joinGate struct {
	open chan struct{}
	fail bool         // fail the requests rather than hold them
	held atomic.Int64 // requests held or failed
}

func newJoinGate(fail bool) *joinGate { return &joinGate{open: make(chan struct{}), fail: fail} }

func (g *joinGate) dialer() *kafka.Dialer {
	d := &net.Dialer{Timeout: 10 * time.Second}
	return &kafka.Dialer{Timeout: 10 * time.Second, DialFunc: func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &gatedConn{Conn: conn, g: g, closed: make(chan struct{})}, nil
	}}
}

type gatedConn struct {
	net.Conn
	g      *joinGate
	once   sync.Once
	closed chan struct{}
}

// Write recognizes a JoinGroup request by the API key after the size of
// its frame: kafka-go writes each request whole.
func (c *gatedConn) Write(b []byte) (int, error) {
	if len(b) >= 6 && int16(binary.BigEndian.Uint16(b[4:6])) == kmsg.JoinGroup.Int16() {
		select {
		case <-c.g.open:
		default:
			c.g.held.Add(1)
			if c.g.fail {
				return 0, errJoinGate
			}
			select {
			case <-c.g.open:
			case <-c.closed:
				return 0, net.ErrClosed
			}
		}
	}
	return c.Conn.Write(b)
}

func (c *gatedConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return c.Conn.Close()
}
