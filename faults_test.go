package multiconsumer

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// faults injects network faults into one consumer's connections, on any
// broker (it sits in the consumer's Dialer, not in the broker): while a
// request kind is blocked, writing a request of that kind closes the
// connection and fails, as a dropped connection would; or, held, the
// request waits unsent until it is released or its connection closes, as
// on a network that stalls.
type faults struct {
	mu      sync.Mutex
	blocked map[kmsg.Key]bool
	held    map[kmsg.Key]bool
	release chan struct{} // closed and replaced when held requests may go
	hits    atomic.Int64  // requests failed or held
}

// block makes requests of these kinds fail from now on.
func (f *faults) block(keys ...kmsg.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.blocked == nil {
		f.blocked = map[kmsg.Key]bool{}
	}
	for _, k := range keys {
		f.blocked[k] = true
	}
}

// allow makes requests of these kinds go out again.
func (f *faults) allow(keys ...kmsg.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, k := range keys {
		delete(f.blocked, k)
	}
}

// hold makes requests of these kinds wait, unsent, until clear.
func (f *faults) hold(keys ...kmsg.Key) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.held == nil {
		f.held = map[kmsg.Key]bool{}
	}
	for _, k := range keys {
		f.held[k] = true
	}
	if f.release == nil {
		f.release = make(chan struct{})
	}
}

// clear ends every fault: held requests go out.
func (f *faults) clear() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.blocked, f.held = nil, nil
	if f.release != nil {
		close(f.release)
		f.release = nil
	}
}

// verdict says what happens to a request of kind key: fail it, or wait on
// the returned channel.
func (f *faults) verdict(key kmsg.Key) (fail bool, wait <-chan struct{}) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.blocked[key]:
		f.hits.Add(1)
		return true, nil
	case f.held[key]:
		f.hits.Add(1)
		return false, f.release
	}
	return false, nil
}

// dialer returns a Dialer whose connections suffer f's faults, with
// timeout as the request timeout.
func (f *faults) dialer(timeout time.Duration) *kafka.Dialer {
	return &kafka.Dialer{
		Timeout: timeout,
		DialFunc: func(ctx context.Context, network, address string) (net.Conn, error) {
			conn, err := (&net.Dialer{}).DialContext(ctx, network, address)
			if err != nil {
				return nil, err
			}
			return &faultConn{Conn: conn, f: f, closed: make(chan struct{})}, nil
		},
	}
}

// errInjected is the error of a request a fault failed: a connection
// reset, as a client sees a dropped connection.
var errInjected = fmt.Errorf("injected network fault: %w", syscall.ECONNRESET)

// faultConn reads the request frames written to it (a 4-byte size, then
// the 2-byte API key), and applies the faults to each.
type faultConn struct {
	net.Conn
	f         *faults
	hdr       []byte // the start of a frame's header, split across writes
	rest      int    // bytes of the current frame not written yet
	closeOnce sync.Once
	closed    chan struct{}
}

func (c *faultConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (c *faultConn) Write(b []byte) (int, error) {
	for i := 0; i < len(b); {
		if c.rest > 0 {
			n := min(c.rest, len(b)-i)
			c.rest -= n
			i += n
			continue
		}
		n := min(6-len(c.hdr), len(b)-i)
		c.hdr = append(c.hdr, b[i:i+n]...)
		i += n
		if len(c.hdr) < 6 {
			break
		}
		size := int(binary.BigEndian.Uint32(c.hdr))
		key := kmsg.Key(binary.BigEndian.Uint16(c.hdr[4:]))
		c.hdr, c.rest = c.hdr[:0], size-2
		fail, wait := c.f.verdict(key)
		if wait != nil {
			select {
			case <-wait:
			case <-c.closed:
				return 0, net.ErrClosed
			}
		}
		if fail {
			_ = c.Close()
			return 0, errInjected
		}
	}
	return c.Conn.Write(b)
}
