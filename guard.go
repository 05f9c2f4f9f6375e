package multiconsumer

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
)

// This file guards the connections the transport dials. kafka-go believes
// the size a response announces: it allocates for it, and for the array
// lengths inside it, before reading them. Pointed at something that is not
// a Kafka broker (an HTTP port answers "HTTP/1.1 400 Bad Request"), it reads
// "HTTP" as a response of 1213486160 bytes and decodes an ApiVersions array
// of 808460354 entries: 4.5 GiB, in a goroutine that outlives New by most of
// a minute. The guard follows the framing of the responses in the byte
// stream and fails the read, and closes the connection, as soon as a size no
// Kafka response can have comes in.

// maxResponseBytes is the largest response size the guard lets through:
// franz-go's default BrokerMaxReadBytes, and never less than twice what a
// fetch asks for (a broker may exceed MaxBytes to return a first batch that
// does not fit).
const maxResponseBytes = max(100<<20, 2*fetchMaxBytes)

// responseSizeError is the error of a read that met a size no Kafka response
// can have.
type responseSizeError struct {
	broker string  // the address dialed
	size   int32   // the size announced
	raw    [4]byte // the size as it came in
	limit  int32
}

func (e *responseSizeError) Error() string {
	why := "negative"
	if e.size >= 0 {
		why = fmt.Sprintf("over %d MiB", e.limit>>20)
	}
	guess := "not a Kafka broker?"
	if r := e.raw; r[0] >= 0x14 && r[0] <= 0x17 && r[1] == 3 && r[2] <= 4 {
		// The header of a TLS record (an alert, most likely): kafka-go
		// says "broker appears to be expecting TLS" for those.
		guess = "a broker that expects TLS?"
	}
	return fmt.Sprintf("multiconsumer: broker %s sent a response of %d bytes (%s; the size reads %q): %s",
		e.broker, e.size, why, e.raw[:], guess)
}

// framing follows the framing of Kafka responses in a byte stream: a 4-byte
// big-endian size, then that many bytes, and again. Reads split the stream
// anywhere, so it keeps how much of the current response is left, and the
// bytes of a size read so far.
type framing struct {
	limit int32
	left  int     // bytes of the current response not seen yet
	size  [4]byte // the next size, ...
	have  int     // ... of which this many bytes were seen
}

// next follows the stream over b, its next bytes. When b completes a size
// that is negative or over the limit, next returns how many bytes of b come
// before that size (the end of the responses before it), and the error;
// the framing is lost from there. Else it returns len(b) and nil.
func (f *framing) next(b []byte) (int, *responseSizeError) {
	for i := 0; i < len(b); {
		if f.left > 0 {
			k := min(f.left, len(b)-i)
			f.left -= k
			i += k
			continue
		}
		f.size[f.have] = b[i]
		f.have++
		i++
		if f.have < len(f.size) {
			continue
		}
		f.have = 0
		size := int32(binary.BigEndian.Uint32(f.size[:]))
		if size < 0 || size > f.limit {
			return max(0, i-len(f.size)), &responseSizeError{size: size, raw: f.size, limit: f.limit}
		}
		f.left = int(size)
	}
	return len(b), nil
}

// guardConn is a connection to a broker whose reads stop at the first size
// no Kafka response can have. Reads come from one goroutine at a time
// (kafka-go's, through a bufio.Reader), like any net.Conn's.
type guardConn struct {
	net.Conn
	broker string
	frames framing
	err    error // the guard's error, returned by every read after it
	conns  *connSet
}

func (c *guardConn) Read(b []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(b)
	k, bad := c.frames.next(b[:n])
	if bad != nil {
		bad.broker = c.broker
		c.err = bad
		// Closed here, not left to kafka-go: nothing more is read from
		// whatever this is, and a write waiting on it fails at once.
		_ = c.Close()
		return k, bad
	}
	return n, err
}

func (c *guardConn) Close() error {
	c.conns.remove(c)
	return c.Conn.Close()
}

// connSet holds the open connections of a transport, so that New can close
// them when it fails: kafka-go bounds a connection's first requests only by
// the dial timeout, and a connection still negotiating with a broker that
// does not answer would outlive New by up to that long.
type connSet struct {
	mu     sync.Mutex // guards conns and closed
	conns  map[*guardConn]struct{}
	closed bool
}

var errTransportClosed = errors.New("multiconsumer: transport closed")

// add adds c, or closes it if the set is closed.
func (s *connSet) add(c *guardConn) (net.Conn, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		_ = c.Conn.Close()
		return nil, errTransportClosed
	}
	if s.conns == nil {
		s.conns = make(map[*guardConn]struct{})
	}
	s.conns[c] = struct{}{}
	return c, nil
}

func (s *connSet) remove(c *guardConn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
}

// closeAll closes every connection in the set, and those added later.
func (s *connSet) closeAll() {
	s.mu.Lock()
	conns := s.conns
	s.conns = nil
	s.closed = true
	s.mu.Unlock()
	for c := range conns {
		_ = c.Conn.Close()
	}
}

// guardedDial returns the Dial of a kafka-go transport: it dials with dial,
// does the TLS handshake when tlsConfig is not nil, and returns the
// connection guarded and added to conns.
//
// The TLS handshake is done here, not left to the transport (its TLS field
// stays nil): the transport would wrap in TLS the connection Dial returns,
// and a guard under TLS would see TLS records, not Kafka responses. SASL
// stays with the transport: it runs over whatever Dial returns.
func guardedDial(dial func(ctx context.Context, network, address string) (net.Conn, error), tlsConfig *tls.Config, conns *connSet) func(ctx context.Context, network, address string) (net.Conn, error) {
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		conn, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		if tlsConfig != nil {
			cfg := tlsConfig
			if cfg.ServerName == "" {
				// As the transport does: the host dialed.
				host, _, err := net.SplitHostPort(address)
				if err != nil {
					host = address
				}
				cfg = cfg.Clone()
				cfg.ServerName = host
			}
			tc := tls.Client(conn, cfg)
			if err := tc.HandshakeContext(ctx); err != nil {
				_ = conn.Close()
				return nil, fmt.Errorf("multiconsumer: TLS handshake with broker %s: %w", address, err)
			}
			conn = tc
		}
		return conns.add(&guardConn{Conn: conn, broker: address, frames: framing{limit: maxResponseBytes}, conns: conns})
	}
}
