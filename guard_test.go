package multiconsumer

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/scram"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"
)

// childEnv, when set, names the scenario a test runs in this process: the
// tests below re-run their own binary with it set.
const childEnv = "MULTICONSUMER_GUARD_CHILD"

// New pointed at an HTTP server fails at once with an error that says so,
// and leaves no goroutine running and no memory taken. Before the guard,
// kafka-go read "HTTP/1.1 400" as a Kafka response of 1213486160 bytes and
// decoded an ApiVersions array of 808460354 entries (4.5 GiB) in a
// goroutine that outlived New by most of a minute; New failed only when its
// request timeout (10s) ran out.
func TestNewAgainstHTTPServer(t *testing.T) {
	inChild(t, "http", func(t *testing.T) {
		newLeavesNothing(t, Config{Brokers: []string{serveHTTP400(t, nil)}, Topic: "t"}, 5*time.Second, "not a Kafka broker?")
	})
}

// New pointed at a server that never answers fails when its context ends,
// and its connection, still waiting for the broker's first answer, does not
// outlive it (kafka-go would wait out the dial timeout, 10s).
func TestNewAgainstSilentServer(t *testing.T) {
	inChild(t, "silent", func(t *testing.T) {
		newLeavesNothing(t, Config{Brokers: []string{serveSilent(t)}, Topic: "t"}, 500*time.Millisecond, "context deadline exceeded")
	})
}

// inChild runs scenario in a child process, running this test alone: there
// nothing else runs, so every goroutine and every allocation is the
// scenario's own, and one that allocates gigabytes kills the child, not the
// test binary.
func inChild(t *testing.T, name string, scenario func(t *testing.T)) {
	if os.Getenv(childEnv) == name {
		scenario(t)
		return
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+name)
	out, err := cmd.CombinedOutput()
	t.Logf("child process:\n%s", out)
	require.NoError(t, err, "the child process failed (its output is above)")
	require.Contains(t, string(out), "--- PASS: "+t.Name(), "the child did not run the test")
}

// newLeavesNothing calls New with cfg and a context of timeout, and checks
// that it fails with an error holding want within 3s, that every goroutine
// it started ends within 5s, and that it allocated under 64 MiB.
func newLeavesNothing(t *testing.T, cfg Config, timeout time.Duration, want string) {
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	stopWatch := watchHeap(t, before.HeapAlloc+256<<20)
	defer stopWatch()
	// After the watchdog and the server started: only what New starts
	// counts.
	ignore := goleak.IgnoreCurrent()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	c, err := New(ctx, cfg)
	took := time.Since(start)
	t.Logf("New returned after %v: %v", took.Round(time.Millisecond), err)
	if c != nil {
		_ = c.Close()
	}
	require.Error(t, err)
	require.ErrorContains(t, err, want)
	require.Less(t, took, 3*time.Second, "New took too long to fail")

	// Every goroutine New started must end, and soon.
	deadline := time.Now().Add(5 * time.Second)
	for {
		err = goleak.Find(ignore)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, err, "goroutines left %v after New returned", time.Since(start)-took)
	t.Logf("no goroutine left %v after New returned", (time.Since(start) - took).Round(time.Millisecond))

	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	allocated := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %.1f MiB in all", float64(allocated)/(1<<20))
	require.Less(t, allocated, uint64(64<<20), "New allocated too much")
}

// serveHTTP400 starts a TCP server that answers whatever a connection sends
// first as a web server answers bytes it cannot parse, and closes it; over
// TLS when tlsConfig is not nil. It returns its address. Connections are
// served one by one, in its only goroutine.
func serveHTTP400(t *testing.T, tlsConfig *tls.Config) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	if tlsConfig != nil {
		ln = tls.NewListener(ln, tlsConfig)
	}
	const body = "<html>\r\n<head><title>400 Bad Request</title></head>\r\n<body>\r\n<center><h1>400 Bad Request</h1></center>\r\n</body>\r\n</html>\r\n"
	reply := "HTTP/1.1 400 Bad Request\r\nServer: nginx\r\nContent-Type: text/html\r\n" +
		fmt.Sprintf("Content-Length: %d\r\nConnection: close\r\n\r\n", len(body)) + body
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := conn.Read(make([]byte, 512)); err == nil {
				_, _ = conn.Write([]byte(reply))
			}
			_ = conn.Close()
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// serveSilent starts a TCP server that accepts connections and never
// answers, and returns its address. It closes them when the test ends.
func serveSilent(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var conns []net.Conn
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, conn)
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
		for _, c := range conns {
			_ = c.Close()
		}
	})
	return ln.Addr().String()
}

// watchHeap ends the process when the heap grows past limit: a goroutine
// decoding a bogus response cannot be stopped, and would take gigabytes
// before the test could fail. The returned func stops the watch.
func watchHeap(t *testing.T, limit uint64) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		start := time.Now()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for {
			select {
			case <-done:
				return
			case <-tick.C:
			}
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc <= limit {
				continue
			}
			buf := make([]byte, 1<<20)
			buf = buf[:runtime.Stack(buf, true)]
			var kafkaGo []string
			for g := range bytes.SplitSeq(buf, []byte("\n\n")) {
				if bytes.Contains(g, []byte("segmentio/kafka-go")) {
					kafkaGo = append(kafkaGo, string(g))
				}
			}
			fmt.Fprintf(os.Stderr, "--- FAIL: %s: heap at %.1f MiB %v after the test started (limit %.1f MiB); stopping the process. kafka-go goroutines:\n%s\n",
				t.Name(), float64(ms.HeapAlloc)/(1<<20), time.Since(start).Round(time.Millisecond),
				float64(limit)/(1<<20), strings.Join(kafkaGo, "\n\n"))
			os.Exit(3)
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

// frames returns a stream of responses of the given sizes: each a 4-byte
// big-endian size then, for a size from 0 to 64, that many bytes.
func frames(sizes ...int32) []byte {
	var b []byte
	for _, s := range sizes {
		b = binary.BigEndian.AppendUint32(b, uint32(s))
		if s >= 0 && s <= 64 {
			b = append(b, bytes.Repeat([]byte{byte(s)}, int(s))...)
		}
	}
	return b
}

func TestFraming(t *testing.T) {
	const limit = 32
	for _, tc := range []struct {
		name   string
		stream []byte
		ok     int   // bytes before the size refused, or len(stream)
		bad    int32 // the size refused
	}{
		{"empty", nil, 0, 0},
		{"one", frames(5), 9, 0},
		{"several", frames(5, 0, 1, 32, 7), 65, 0},
		{"at the limit", frames(32), 36, 0},
		{"a partial size", frames(3)[:2], 2, 0},
		{"a partial body", frames(3)[:5], 5, 0},
		{"over the limit", frames(33), 0, 33},
		{"over after others", frames(2, 0, 4, 33), 18, 33},
		{"negative", frames(-1), 0, -1},
		{"most negative", frames(2, -1<<31), 6, -1 << 31},
		{"HTTP", []byte("HTTP/1.1 400 Bad Request\r\n"), 0, 0x48545450},
		{"bytes after a bad size", frames(1, 1000, 1, 1), 5, 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Whole, split in two at every position, and byte by byte.
			var splits [][][]byte
			for i := 0; i <= len(tc.stream); i++ {
				splits = append(splits, [][]byte{tc.stream[:i], tc.stream[i:]})
			}
			var bytewise [][]byte
			for i := range tc.stream {
				bytewise = append(bytewise, tc.stream[i:i+1])
			}
			splits = append(splits, bytewise)
			for _, parts := range splits {
				f := framing{limit: limit}
				at, through := 0, 0 // where the part fed starts; bytes let through
				var bad *responseSizeError
				for _, p := range parts {
					var n int
					n, bad = f.next(p)
					through += n
					if bad != nil {
						// Found in the part that holds the size's last
						// byte; its bytes in earlier parts went through.
						end := tc.ok + 4
						require.True(t, at < end && end <= at+len(p), "split %q: found at %d", parts, at)
						require.Equal(t, max(tc.ok, at), through, "split %q", parts)
						require.Equal(t, tc.bad, bad.size, "split %q", parts)
						break
					}
					require.Equal(t, len(p), n)
					at += len(p)
				}
				if bad == nil {
					require.Equal(t, tc.ok, len(tc.stream), "split %q: no error", parts)
				}
			}
		})
	}
}

// A guarded connection lets the responses before a bad size through, then
// fails, and closes the connection.
func TestGuardConn(t *testing.T) {
	client, server := net.Pipe()
	defer server.Close()
	conns := &connSet{}
	gc, err := conns.add(&guardConn{Conn: client, broker: "broker:9092", frames: framing{limit: maxResponseBytes}, conns: conns})
	require.NoError(t, err)
	go func() {
		_, _ = server.Write(frames(3))
		_, _ = server.Write([]byte("HTTP/1.1 400 Bad Request\r\n"))
	}()
	got, err := io.ReadAll(gc)
	require.Equal(t, frames(3), got)
	require.EqualError(t, err, `multiconsumer: broker broker:9092 sent a response of 1213486160 bytes (over 100 MiB; the size reads "HTTP"): not a Kafka broker?`)
	n, again := gc.Read(make([]byte, 10))
	require.Zero(t, n)
	require.Equal(t, err, again, "the error sticks")
	_, err = server.Write([]byte("more"))
	require.ErrorIs(t, err, io.ErrClosedPipe, "the connection is closed")
	require.Empty(t, conns.conns, "and out of the set")

	neg := &responseSizeError{broker: "b:1", size: -2, raw: [4]byte{0xff, 0xff, 0xff, 0xfe}, limit: maxResponseBytes}
	require.Equal(t, `multiconsumer: broker b:1 sent a response of -2 bytes (negative; the size reads "\xff\xff\xff\xfe"): not a Kafka broker?`, neg.Error())
	alert := &responseSizeError{broker: "b:1", size: 0x15030300, raw: [4]byte{0x15, 3, 3, 0}, limit: maxResponseBytes}
	require.Equal(t, `multiconsumer: broker b:1 sent a response of 352518912 bytes (over 100 MiB; the size reads "\x15\x03\x03\x00"): a broker that expects TLS?`, alert.Error())
}

// closeAll closes the connections of the set, and those added after.
func TestConnSetCloseAll(t *testing.T) {
	conns := &connSet{}
	client, server := net.Pipe()
	defer server.Close()
	_, err := conns.add(&guardConn{Conn: client, conns: conns})
	require.NoError(t, err)
	conns.closeAll()
	_, err = server.Write([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe)

	late, server2 := net.Pipe()
	defer server2.Close()
	_, err = conns.add(&guardConn{Conn: late, conns: conns})
	require.ErrorIs(t, err, errTransportClosed)
	_, err = server2.Write([]byte("x"))
	require.ErrorIs(t, err, io.ErrClosedPipe)
}

// selfSigned returns a certificate for 127.0.0.1 and localhost, and a pool
// that trusts it.
func selfSigned(t *testing.T) (tls.Certificate, *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "multiconsumer test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:         true,

		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: cert}, pool
}

// Over TLS, the guard reads the responses, not the TLS records (whose
// headers would read as sizes over the limit): a consumer works against a
// TLS broker, with the server name taken from the broker's address.
func TestTLSBroker(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	const topic = "tls"
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topic),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}}))
	require.NoError(t, err)
	defer kf.Close()
	tlsConfig := &tls.Config{RootCAs: pool}

	// Produced with kafka-go's own TLS.
	tr := &kafka.Transport{TLS: tlsConfig}
	defer tr.CloseIdleConnections()
	pc := &kafka.Client{Addr: kafka.TCP(kf.ListenAddrs()...), Transport: tr}
	res, err := pc.Produce(testCtx(t), &kafka.ProduceRequest{
		Topic: topic, Partition: 1, RequiredAcks: kafka.RequireAll,
		Records: kafka.NewRecordReader(kafka.Record{Value: kafka.NewBytes([]byte("over TLS"))}),
	})
	require.NoError(t, err)
	require.NoError(t, res.Error)

	_, port, err := net.SplitHostPort(kf.ListenAddrs()[0])
	require.NoError(t, err)
	c, err := New(testCtx(t), Config{
		Brokers: []string{net.JoinHostPort("localhost", port)}, // the seed: ServerName "localhost"
		Topic:   topic,
		Dialer:  &kafka.Dialer{Timeout: 10 * time.Second, TLS: tlsConfig},
	})
	require.NoError(t, err)
	defer c.Close()
	msgs, err := c.GetMessages(testCtx(t), 1, Timeout(10*time.Second))
	require.NoError(t, err)
	require.Len(t, msgs, 1)
	require.Equal(t, "over TLS", string(msgs[0].Value))
	require.Equal(t, 1, msgs[0].Partition)
}

// The guard is also on top of TLS on top of a Dialer.DialFunc's connection:
// an HTTPS server is refused for what it answers.
func TestNewAgainstHTTPSServer(t *testing.T) {
	inChild(t, "https", func(t *testing.T) {
		cert, pool := selfSigned(t)
		addr := serveHTTP400(t, &tls.Config{Certificates: []tls.Certificate{cert}})
		var dials atomic.Int32
		dialer := &kafka.Dialer{
			Timeout: 10 * time.Second,
			TLS:     &tls.Config{RootCAs: pool},
			DialFunc: func(ctx context.Context, network, address string) (net.Conn, error) {
				dials.Add(1)
				var d net.Dialer
				return d.DialContext(ctx, network, address)
			},
		}
		newLeavesNothing(t, Config{Brokers: []string{addr}, Topic: "t", Dialer: dialer}, 5*time.Second, "not a Kafka broker?")
		require.NotZero(t, dials.Load(), "DialFunc was not used")
	})
}

// Over TLS and SASL/SCRAM-SHA-256, the requests kafka-go has no type for
// (KIP-848's heartbeats, OffsetCommit v9, the share-group requests) go on
// the connections that did TLS and SCRAM first: a consumer-protocol member
// and a share-group member both consume there.
func TestGroupProtocolsOverTLSAndSCRAM(t *testing.T) {
	t.Parallel()
	cert, pool := selfSigned(t)
	const topic = "tls-scram"
	kf, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(2, topic),
		kfake.TLS(&tls.Config{Certificates: []tls.Certificate{cert}}),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "mc", "secret"),
		kfake.BrokerConfigs(kafkatest.TestBrokerConfigs))
	require.NoError(t, err)
	defer kf.Close()
	mech, err := scram.Mechanism(scram.SHA256, "mc", "secret")
	require.NoError(t, err)
	tlsConfig := &tls.Config{RootCAs: pool}
	tr := &kafka.Transport{TLS: tlsConfig, SASL: mech}
	defer tr.CloseIdleConnections()
	pc := &kafka.Client{Addr: kafka.TCP(kf.ListenAddrs()...), Transport: tr}
	for p := range 2 {
		res, err := pc.Produce(testCtx(t), &kafka.ProduceRequest{
			Topic: topic, Partition: p, RequiredAcks: kafka.RequireAll,
			Records: kafka.NewRecordReader(kafka.Record{Value: kafka.NewBytes([]byte("secret"))}),
		})
		require.NoError(t, err)
		require.NoError(t, res.Error)
	}
	_, port, err := net.SplitHostPort(kf.ListenAddrs()[0])
	require.NoError(t, err)
	dialer := &kafka.Dialer{Timeout: 10 * time.Second, TLS: tlsConfig, SASLMechanism: mech}
	for _, cfg := range []Config{
		{Group: "g-consumer", JoinGroup: true, GroupProtocol: GroupProtocolConsumer},
		{Group: "g-share", ShareGroup: true},
	} {
		cfg.Brokers = []string{net.JoinHostPort("localhost", port)}
		cfg.Topic, cfg.Dialer = topic, dialer
		c, err := New(testCtx(t), cfg)
		require.NoError(t, err, "%+v", cfg)
		msgs := drain(t, c, 2, 2)
		require.Equal(t, "secret", string(msgs[0].Value))
		require.NoError(t, c.Commit(testCtx(t)), "%+v", cfg)
		require.NoError(t, c.Close())
	}
}
