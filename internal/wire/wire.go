// Package wire sends Kafka requests that kafka-go cannot build through a
// kafka-go Transport: any request franz-go's kmsg knows (KIP-848's
// ConsumerGroupHeartbeat, KIP-932's share-group APIs, newer versions of old
// APIs), on the Transport's pooled connections, so TLS, SASL, dialing and
// broker discovery stay kafka-go's.
//
// It works through kafka-go's protocol.RawExchanger hook: the Transport hands
// a Request the connection it picked (already through TLS and SASL), and the
// Request writes its own frame and reads its own answer. kafka-go's own
// registry cannot be extended instead: protocol.Register panics for API keys
// above 51 and registering an existing key replaces kafka-go's own message
// type for the whole process.
//
// A Client picks each request's version itself, the highest both the broker
// and kmsg know, from one ApiVersions answer it keeps. Responses come back as
// kmsg.Response values with their error codes untouched; ErrorForCode turns a
// code into an error.
package wire

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Client sends kmsg requests through a kafka-go Transport. Set its fields,
// then use it; it is safe for concurrent use, and Do may be called from
// several goroutines at once (each call takes its own pooled connection, as
// kafka-go's requests do).
type Client struct {
	// Transport carries the requests. Nil means kafka.DefaultTransport.
	Transport kafka.RoundTripper
	// Addr is the bootstrap address passed to Transport.RoundTrip, as in
	// kafka.Client.
	Addr net.Addr
	// ClientID is the client id in each request's header; empty sends a
	// null client id.
	ClientID string

	mu       sync.Mutex
	versions map[int16]VersionRange // guarded by mu; nil until the first ApiVersions answer
}

// VersionRange is the range of versions of one API that a broker accepts.
type VersionRange struct {
	Min, Max int16
}

// Do sends req to the broker at the Transport's control connection (the
// bootstrap broker) and returns its response. It sets req's version to the
// highest both the broker and kmsg support, or returns an *UnsupportedError
// without sending when there is none. Use Do for requests any broker answers
// (ApiVersions, Metadata, and admin requests, which KRaft brokers forward
// to the controller).
//
// Do blocks until the response arrives or ctx is done; a ctx deadline is also
// the connection's I/O deadline, so give a long poll (ShareFetch's
// MaxWaitMillis) a deadline beyond its wait. Without a deadline, a cancelled
// Do returns ctx.Err() while the Transport's connection goroutine may still
// be writing req: do not reuse req after such a return. A Kafka error code in
// the response is not an error of Do: check it with ErrorForCode.
func (c *Client) Do(ctx context.Context, req kmsg.Request) (kmsg.Response, error) {
	return c.do(ctx, req, &Request{Req: req, ClientID: c.ClientID})
}

// DoGroup is Do for requests a group coordinator answers (the group
// heartbeats, OffsetCommit, OffsetFetch): the Transport first asks any broker
// for group's coordinator (FindCoordinator, not cached), then sends req
// there. group must be the group id req carries.
func (c *Client) DoGroup(ctx context.Context, group string, req kmsg.Request) (kmsg.Response, error) {
	return c.do(ctx, req, &groupRequest{Request{Req: req, ClientID: c.ClientID}, group})
}

// DoBroker is Do for requests one broker must answer, such as a partition's
// leader for ShareFetch and ShareAcknowledge. brokerID is a node id from
// Metadata; a broker the Transport's metadata does not know yields an error.
func (c *Client) DoBroker(ctx context.Context, brokerID int32, req kmsg.Request) (kmsg.Response, error) {
	return c.do(ctx, req, &brokerRequest{Request{Req: req, ClientID: c.ClientID}, brokerID})
}

// do sets req's version and sends m, which carries req (one allocation a
// call: the route and the Request are one value).
func (c *Client) do(ctx context.Context, req kmsg.Request, m kafka.Request) (kmsg.Response, error) {
	key := req.Key()
	vr, ok, err := c.version(ctx, key)
	if err != nil {
		return nil, err
	}
	v := min(req.MaxVersion(), vr.Max)
	if !ok || v < vr.Min {
		return nil, unsupported(key, vr, ok, req.MaxVersion())
	}
	req.SetVersion(v)
	return c.roundTrip(ctx, m)
}

func (c *Client) roundTrip(ctx context.Context, m kafka.Request) (kmsg.Response, error) {
	t := c.Transport
	if t == nil {
		t = kafka.DefaultTransport
	}
	res, err := t.RoundTrip(ctx, c.Addr, m)
	if err != nil {
		return nil, fmt.Errorf("wire: %s: %w", kmsg.NameForKey(int16(m.ApiKey())), err)
	}
	r, ok := res.(*Response)
	if !ok {
		return nil, fmt.Errorf("wire: %s: unexpected response type %T", kmsg.NameForKey(int16(m.ApiKey())), res)
	}
	return r.Resp, nil
}

// Versions returns the API versions the bootstrap broker offers, asking it
// (ApiVersions v3) on the first call and remembering the answer. The Client
// assumes every broker of the cluster offers the same versions, as they do
// outside a rolling upgrade; a Request still refuses to send an API its
// connection's broker does not offer at all.
func (c *Client) Versions(ctx context.Context) (map[int16]VersionRange, error) {
	c.mu.Lock()
	vs := c.versions
	c.mu.Unlock()
	if vs != nil {
		return vs, nil
	}
	// Two first calls may both ask; the answers are the same. The lock is
	// not held across the round trip.
	req := kmsg.NewPtrApiVersionsRequest()
	// v3 (Kafka 2.4) is the oldest version whose answer lists the broker's
	// supported features; older brokers cannot speak the APIs this package
	// exists for anyway.
	req.SetVersion(3)
	req.ClientSoftwareName = "multiconsumer"
	req.ClientSoftwareVersion = "0"
	res, err := c.roundTrip(ctx, &Request{Req: req, ClientID: c.ClientID})
	if err != nil {
		return nil, err
	}
	av := res.(*kmsg.ApiVersionsResponse)
	if err := ErrorForCode(av.ErrorCode); err != nil {
		return nil, fmt.Errorf("wire: ApiVersions: %w", err)
	}
	vs = make(map[int16]VersionRange, len(av.ApiKeys))
	for _, k := range av.ApiKeys {
		vs[k.ApiKey] = VersionRange{Min: k.MinVersion, Max: k.MaxVersion}
	}
	c.mu.Lock()
	c.versions = vs
	c.mu.Unlock()
	return vs, nil
}

func (c *Client) version(ctx context.Context, key int16) (VersionRange, bool, error) {
	vs, err := c.Versions(ctx)
	if err != nil {
		return VersionRange{}, false, err
	}
	vr, ok := vs[key]
	return vr, ok, nil
}

// UnsupportedError is returned when the broker does not offer an API, or
// offers no version of it that kmsg can encode. It matches
// errors.ErrUnsupported with errors.Is.
type UnsupportedError struct {
	Key  int16  // the API key
	Name string // the API's name, such as "ShareGroupHeartbeat"
	// Offered says whether the broker lists the API at all; BrokerMin and
	// BrokerMax are its versions when it does.
	Offered              bool
	BrokerMin, BrokerMax int16
	ClientMax            int16 // the highest version kmsg can encode
}

func unsupported(key int16, vr VersionRange, offered bool, clientMax int16) *UnsupportedError {
	return &UnsupportedError{
		Key: key, Name: kmsg.NameForKey(key),
		Offered: offered, BrokerMin: vr.Min, BrokerMax: vr.Max, ClientMax: clientMax,
	}
}

// Error names the API and what the broker offers.
func (e *UnsupportedError) Error() string {
	if !e.Offered {
		return fmt.Sprintf("wire: broker does not support %s (key %d); it offers no version of it", e.Name, e.Key)
	}
	return fmt.Sprintf("wire: broker does not support %s (key %d) at a version this client knows; it offers v%d-v%d, kmsg encodes up to v%d",
		e.Name, e.Key, e.BrokerMin, e.BrokerMax, e.ClientMax)
}

// Is reports whether target is errors.ErrUnsupported.
func (e *UnsupportedError) Is(target error) bool { return target == errors.ErrUnsupported }

// ErrorForCode returns the error for a Kafka error code found in a response:
// nil for 0, franz-go's *kerr.Error for the codes kerr knows (compare with
// errors.Is(err, kerr.NotCoordinator) and the like), and for a code newer
// than kerr a *kerr.Error that keeps the number.
func ErrorForCode(code int16) error {
	if code == 0 {
		return nil
	}
	err := kerr.ErrorForCode(code)
	if err == kerr.UnknownServerError && code != kerr.UnknownServerError.Code {
		// kerr folds codes it does not know into UNKNOWN_SERVER_ERROR.
		return &kerr.Error{Message: fmt.Sprintf("UNKNOWN_ERROR_CODE_%d", code), Code: code}
	}
	return err
}

// Request carries a kmsg.Request through a kafka-go Transport: it is a
// protocol.Message and a protocol.RawExchanger, so the Transport hands it a
// connection and it writes its own frame there and reads the answer. The
// version must be set on Req before the round trip (Client does it).
//
// A Request goes on the Transport's control connection; Client.DoGroup and
// Client.DoBroker wrap it to route it elsewhere. Send a Request once.
type Request struct {
	Req      kmsg.Request
	ClientID string // empty sends a null client id

	// versions is the API versions of the connection the Transport picked,
	// from Required; the Transport calls Required and then RawExchange on
	// its connection's goroutine, one request at a time.
	versions map[protocol.ApiKey]int16
}

// ApiKey returns the API key of r.Req.
func (r *Request) ApiKey() protocol.ApiKey { return protocol.ApiKey(r.Req.Key()) }

// Required records the connection's versions and reports true: kafka-go must
// never encode this request itself (it has no type for most of these keys and
// would panic indexing its registry).
func (r *Request) Required(versions map[protocol.ApiKey]int16) bool {
	r.versions = versions
	return true
}

// framePool holds the buffers request frames are built in; one larger than
// maxPooledFrame is left to the collector.
var framePool = sync.Pool{New: func() any { b := make([]byte, 0, 512); return &b }}

const maxPooledFrame = 64 << 10

// formatters are the request formatters by client id, made once each (a
// formatter only reads its settings).
var formatters sync.Map // string -> *kmsg.RequestFormatter

func formatter(clientID string) *kmsg.RequestFormatter {
	if f, ok := formatters.Load(clientID); ok {
		return f.(*kmsg.RequestFormatter)
	}
	var f *kmsg.RequestFormatter
	if clientID == "" {
		f = kmsg.NewRequestFormatter() // a null client id
	} else {
		f = kmsg.NewRequestFormatter(kmsg.FormatterClientID(clientID))
	}
	got, _ := formatters.LoadOrStore(clientID, f)
	return got.(*kmsg.RequestFormatter)
}

// correlationID numbers the frames this package writes. kafka-go's own
// counter lives in its unexported Conn; since a kafka-go connection carries
// one request at a time, any number the answer echoes will do.
var correlationID atomic.Int32

// RawExchange writes r's request frame on rw and reads the response frame,
// returning it as a *Response. It returns an *UnsupportedError, writing
// nothing, when the connection's broker does not list the API (kafka-go then
// closes that connection, as after any error).
func (r *Request) RawExchange(rw io.ReadWriter) (protocol.Message, error) {
	key := r.Req.Key()
	if r.versions != nil {
		if _, ok := r.versions[protocol.ApiKey(key)]; !ok {
			return nil, unsupported(key, VersionRange{}, false, r.Req.MaxVersion())
		}
	}
	id := correlationID.Add(1)
	// The frame goes into a pooled buffer: written, it is not needed any
	// more, and a fetch at a trickle sends one per message.
	bp := framePool.Get().(*[]byte)
	frame := formatter(r.ClientID).AppendRequest((*bp)[:0], r.Req, id)
	_, err := rw.Write(frame)
	if cap(frame) <= maxPooledFrame {
		*bp = frame
		framePool.Put(bp)
	}
	if err != nil {
		return nil, err
	}
	res, err := readResponse(rw, r.Req, id)
	if err != nil {
		return nil, err
	}
	return &Response{Resp: res}, nil
}

// exactRead is the largest response frame read into a buffer allocated at
// once; a larger one (a size garbled, or beyond any fetch limit) is read as
// it arrives.
const exactRead = 64 << 20

// readResponse reads one response frame for req, which was sent with
// correlation id id: int32 size, int32 correlation id, the header's tagged
// fields when the response is flexible, and the body.
func readResponse(rd io.Reader, req kmsg.Request, id int32) (kmsg.Response, error) {
	name := kmsg.NameForKey(req.Key())
	var size [4]byte
	if _, err := io.ReadFull(rd, size[:]); err != nil {
		return nil, fmt.Errorf("read %s response size: %w", name, err)
	}
	n := int32(binary.BigEndian.Uint32(size[:]))
	if n < 4 {
		return nil, fmt.Errorf("read %s response: frame size %d", name, n)
	}
	var body []byte
	var err error
	if n <= exactRead {
		// One allocation of the right size: a fetch response of
		// megabytes would otherwise be copied as it grows.
		body = make([]byte, n)
		var got int
		got, err = io.ReadFull(rd, body)
		body = body[:got]
	} else {
		// ReadAll grows the buffer as bytes arrive, so a garbled size
		// cannot make us allocate gigabytes up front.
		body, err = io.ReadAll(io.LimitReader(rd, int64(n)))
	}
	if err != nil && err != io.ErrUnexpectedEOF {
		return nil, fmt.Errorf("read %s response: %w", name, err)
	}
	if len(body) < int(n) {
		return nil, fmt.Errorf("read %s response: %d of %d bytes: %w", name, len(body), n, io.ErrUnexpectedEOF)
	}
	if got := int32(binary.BigEndian.Uint32(body)); got != id {
		return nil, fmt.Errorf("read %s response: correlation id %d, want %d", name, got, id)
	}
	body = body[4:]
	res := req.ResponseKind()
	res.SetVersion(req.GetVersion())
	// ApiVersions answers with a non-flexible header at every version, so
	// that a client can read it before it knows what the broker speaks.
	if res.IsFlexible() && req.Key() != 18 {
		var ok bool
		if body, ok = skipTags(body); !ok {
			return nil, fmt.Errorf("read %s response header: %w", name, io.ErrUnexpectedEOF)
		}
	}
	if err := res.ReadFrom(body); err != nil {
		return nil, fmt.Errorf("decode %s v%d response: %w", name, req.GetVersion(), err)
	}
	return res, nil
}

// skipTags skips the tagged fields at the head of b (a flexible response
// header: a count, then each field's tag, size and bytes), and reports
// whether they were whole.
func skipTags(b []byte) ([]byte, bool) {
	uvarint := func() (uint64, bool) {
		v, n := binary.Uvarint(b)
		if n <= 0 || v > 1<<31 {
			return 0, false
		}
		b = b[n:]
		return v, true
	}
	count, ok := uvarint()
	for ; ok && count > 0; count-- {
		if _, ok = uvarint(); !ok { // the tag
			break
		}
		var size uint64
		if size, ok = uvarint(); ok && size > uint64(len(b)) {
			ok = false
		}
		if ok {
			b = b[size:]
		}
	}
	if !ok {
		return nil, false
	}
	return b, true
}

// Response is the protocol.Message a Request's RawExchange returns to the
// Transport; Client unwraps it.
type Response struct {
	Resp kmsg.Response
}

// ApiKey returns the API key of r.Resp.
func (r *Response) ApiKey() protocol.ApiKey { return protocol.ApiKey(r.Resp.Key()) }

// groupRequest routes a Request to its group's coordinator: the Transport
// looks for protocol.GroupMessage. It is a separate type because the
// Transport checks protocol.BrokerMessage first.
type groupRequest struct {
	Request
	group string
}

func (g *groupRequest) Group() string { return g.group }

// brokerRequest routes a Request to one broker (protocol.BrokerMessage).
type brokerRequest struct {
	Request
	id int32
}

func (b *brokerRequest) Broker(c protocol.Cluster) (protocol.Broker, error) {
	br, ok := c.Brokers[b.id]
	if !ok {
		return protocol.Broker{}, fmt.Errorf("broker %d: %w", b.id, ErrUnknownBroker)
	}
	return br, nil
}

// ErrUnknownBroker is returned by DoBroker when the Transport's metadata has
// no broker of that id (it moved, or the metadata is older than the
// caller's).
var ErrUnknownBroker = errors.New("broker is not in the cluster's metadata")

// AtMost returns req capped at version max: Client picks the highest version
// both the broker and kmsg know, and no higher than max. Use it where a
// newer version changes what the caller must fill in (Fetch v13 names
// topics by id).
func AtMost(req kmsg.Request, max int16) kmsg.Request {
	return &capped{req, max}
}

type capped struct {
	kmsg.Request
	max int16
}

func (c *capped) MaxVersion() int16 { return min(c.Request.MaxVersion(), c.max) }

var (
	_ protocol.RawExchanger  = (*Request)(nil)
	_ protocol.GroupMessage  = (*groupRequest)(nil)
	_ protocol.BrokerMessage = (*brokerRequest)(nil)
)
