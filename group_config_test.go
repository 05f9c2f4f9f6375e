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

// This file is the join errors: they are retried, and counted in Stats.

// Join errors that are not about a setting are retried: the consumer does
// not stop, Stats counts them and shows the last, until a join succeeds.
func TestGroupJoinFailuresRetried(t *testing.T) {
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
	h := kf.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.JoinGroup}, Group: g, Err: kerr.GroupMaxSizeReached, Count: -1})
	c := open(t, groupCfg(topic, g))
	require.Eventually(t, func() bool { return c.Stats().JoinFailures >= 2 }, 30*time.Second, 5*time.Millisecond)
	assert.ErrorIs(t, c.Stats().JoinError, kafka.GroupMaxSizeReached)
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
