package multiconsumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/multiconsumer/multiconsumer/internal/wire"
	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
)

// This file is the consumer's way to the cluster: the transport and its
// connections, and the requests other than fetches (worker.go) and group
// requests (group.go): metadata, log bounds, committed offsets, and
// commits. Each is bounded by the request timeout, so that an unreachable or
// silent broker ends in an error, never a hang.

// brokers holds the transport every request goes through, and makes the
// requests that are not fetches. It is set up once in New, and safe for
// concurrent use; it holds nothing of the consumer's state.
type brokers struct {
	topic, group string
	seeds        []string
	dialer       *kafka.Dialer
	transport    *kafka.Transport
	conns        *connSet // the transport's connections, closed by Close
	client       *kafka.Client
	// wire sends what kafka-go has no request for (share groups), on the
	// same transport.
	wire *wire.Client
	// share carries a share-group member's share sessions (ShareFetch,
	// ShareAcknowledge) on a transport of their own, whose connections
	// nothing else uses and whose idle timeout outlasts a pause: the
	// broker ends a share session, and releases its records, when its
	// connection closes. Nil outside a share group.
	share      *wire.Client
	shareConns *connSet
	// consumer: the member speaks KIP-848's consumer protocol, and
	// commits with OffsetCommit v9+ (member id and member epoch), which
	// kafka-go does not send: through wire.
	consumer bool
	// topicID is the topic's id (OffsetCommit v10 names topics by id);
	// set once by the member's start, before any commit.
	topicID [16]byte
	// retryConns is set once New has reached the cluster: from then on a
	// dropped connection is retried. Before, a refused connection fails
	// New at once (a wrong address).
	retryConns atomic.Bool
}

// newBrokers returns the way to cfg's cluster; it dials nothing yet.
func newBrokers(cfg *Config) *brokers {
	tr, conns := newTransport(cfg.Dialer, cfg.Topic)
	addr := kafka.TCP(cfg.Brokers...)
	b := &brokers{
		topic: cfg.Topic, group: cfg.Group, seeds: cfg.Brokers, dialer: cfg.Dialer,
		transport: tr, conns: conns,
		client: &kafka.Client{Addr: addr, Transport: tr},
		wire:   &wire.Client{Transport: tr, Addr: addr, ClientID: clientID(cfg.Dialer)},
	}
	b.consumer = cfg.JoinGroup && cfg.GroupProtocol == GroupProtocolConsumer
	if cfg.ShareGroup {
		str, sconns := newTransport(cfg.Dialer, cfg.Topic)
		str.IdleTimeout = 24 * time.Hour
		b.share = &wire.Client{Transport: str, Addr: addr, ClientID: clientID(cfg.Dialer)}
		b.shareConns = sconns
	}
	return b
}

// close closes every connection, idle or in use.
func (b *brokers) close() {
	b.transport.CloseIdleConnections()
	b.conns.closeAll()
	if b.share != nil {
		b.share.Transport.(*kafka.Transport).CloseIdleConnections()
		b.shareConns.closeAll()
	}
}

// retry calls f until it succeeds, fails with an error that is not worth
// another try, or ctx ends. Worth another try: a network timeout, an error
// Kafka calls temporary, and, with conns, a dropped or refused connection.
// Temporary errors are common on a real broker right after a topic is
// created (NOT_LEADER until its leader is ready) and while a group
// coordinator loads (COORDINATOR_LOAD_IN_PROGRESS); a connection drops when
// a broker restarts or a proxy resets it. A missing topic is not temporary
// here, although Kafka says so: for a topic the consumer was reading it
// means the topic was deleted.
func retry(ctx context.Context, conns bool, f func() error) error {
	delay := 20 * time.Millisecond
	for {
		err := f()
		if err == nil || ctx.Err() != nil {
			return err
		}
		var perm permanent
		if errors.As(err, &perm) {
			return perm.error
		}
		if !retriable(err, conns) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(delay):
		}
		delay = min(2*delay, 500*time.Millisecond)
	}
}

// stale reports whether a commit was refused because the committer is not
// (or no longer) the owner the group knows: retrying cannot mend it, and a
// late member must not commit over the new owner.
func stale(err error) bool {
	return errors.Is(err, kafka.IllegalGeneration) || errors.Is(err, kafka.UnknownMemberId) ||
		errors.Is(err, kafka.FencedInstanceID) || errors.Is(err, kafka.RebalanceInProgress) ||
		errors.Is(err, kerr.IllegalGeneration) || errors.Is(err, kerr.UnknownMemberID) ||
		errors.Is(err, kerr.FencedInstanceID) || errors.Is(err, kerr.RebalanceInProgress) ||
		errors.Is(err, kerr.StaleMemberEpoch) || errors.Is(err, kerr.FencedMemberEpoch)
}

// retriable reports whether err is worth another try (see retry).
func retriable(err error, conns bool) bool {
	if errors.Is(err, kafka.UnknownTopicOrPartition) || stale(err) {
		return false
	}
	var kgerr kafka.Error
	if errors.As(err, &kgerr) {
		return kgerr.Temporary()
	}
	var ke *kerr.Error
	if errors.As(err, &ke) {
		return ke.Retriable
	}
	var nerr net.Error
	if errors.As(err, &nerr) && nerr.Timeout() {
		return true
	}
	return conns && connError(err)
}

// connError reports whether err means the connection dropped or was
// refused: the request may succeed on a new one.
func connError(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNABORTED) ||
		errors.Is(err, syscall.EPIPE)
}

// permanent marks an error that retry must not retry.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// newTransport returns a kafka-go transport that dials as d does, with
// every connection guarded (guard.go), and the set of its open connections.
func newTransport(d *kafka.Dialer, topic string) (*kafka.Transport, *connSet) {
	dial := d.DialFunc
	if dial == nil {
		nd := &net.Dialer{
			Timeout:       d.Timeout,
			Deadline:      d.Deadline,
			LocalAddr:     d.LocalAddr,
			FallbackDelay: d.FallbackDelay,
			KeepAlive:     d.KeepAlive,
		}
		dial = nd.DialContext
	}
	conns := &connSet{}
	return &kafka.Transport{
		// TLS is nil: the guarded Dial does the handshake itself, so that
		// the guard reads Kafka responses, not TLS records.
		Dial:        guardedDial(dial, d.TLS, conns),
		DialTimeout: d.Timeout,
		ClientID:    clientID(d),
		SASL:        d.SASLMechanism,
		// The transport routes fetches by a metadata cache it refreshes
		// at random within MetadataTTL, each refresh bounded by it too.
		// Ask only for our topic, not every topic of the cluster. When a
		// fetch fails, the refresher (metadata.go) makes it refresh at
		// once.
		MetadataTopics: []string{topic},
		MetadataTTL:    max(requestTimeout(d), minMetadataTTL),
	}, conns
}

// DefaultClientID is the client id the consumer's requests carry when
// Config.Dialer has none: Kafka's tools (kafka-consumer-groups.sh
// --describe, the broker's request logs and quotas) show it.
const DefaultClientID = "multiconsumer"

// clientID returns the client id of the requests d's connections send.
func clientID(d *kafka.Dialer) string {
	if d.ClientID != "" {
		return d.ClientID
	}
	return DefaultClientID
}

// minMetadataTTL keeps the transport's own metadata refreshes (at random
// within its TTL) rare even with a short request timeout.
const minMetadataTTL = 5 * time.Second

// requestTimeout bounds every request but fetches.
// retrying reports whether a dropped connection is retried: once the
// cluster was there (New succeeded).
func (b *brokers) retrying() bool { return b.retryConns.Load() }

func (b *brokers) requestTimeout() time.Duration { return requestTimeout(b.dialer) }

func requestTimeout(d *kafka.Dialer) time.Duration {
	if d.Timeout > 0 {
		return d.Timeout
	}
	return 10 * time.Second
}

// withTimeout returns ctx bounded by the request timeout.
func (b *brokers) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.requestTimeout())
}

// topicMetadata returns the topic's partitions, sorted, and their leaders.
func (b *brokers) topicMetadata(ctx context.Context) (parts []int, leaders map[int]int, err error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	err = retry(ctx, b.retryConns.Load(), func() error {
		parts, leaders, err = b.topicMetadataOnce(ctx)
		return err
	})
	return parts, leaders, err
}

func (b *brokers) topicMetadataOnce(ctx context.Context) ([]int, map[int]int, error) {
	md, err := b.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{b.topic}})
	if err != nil {
		return nil, nil, fmt.Errorf("multiconsumer: metadata of topic %q from %v: %w", b.topic, b.seeds, err)
	}
	i := slices.IndexFunc(md.Topics, func(t kafka.Topic) bool { return t.Name == b.topic })
	if i < 0 {
		return nil, nil, fmt.Errorf("multiconsumer: topic %q: %w", b.topic, kafka.UnknownTopicOrPartition)
	}
	t := md.Topics[i]
	if errors.Is(t.Error, kafka.UnknownTopicOrPartition) {
		// Kafka calls this temporary; for a topic named in Config it
		// almost always means a typo: fail now, don't retry.
		return nil, nil, permanent{fmt.Errorf("multiconsumer: topic %q: %w", b.topic, t.Error)}
	}
	if t.Error != nil {
		return nil, nil, fmt.Errorf("multiconsumer: topic %q: %w", b.topic, t.Error)
	}
	if len(t.Partitions) == 0 {
		return nil, nil, fmt.Errorf("multiconsumer: topic %q has no partitions: %w", b.topic, kafka.UnknownTopicOrPartition)
	}
	parts := make([]int, 0, len(t.Partitions))
	leaders := make(map[int]int, len(t.Partitions))
	for _, p := range t.Partitions {
		parts = append(parts, p.ID)
		leaders[p.ID] = p.Leader.ID
		if p.Leader.Host == "" {
			// No leader (offline, or being elected): kafka-go gives it
			// broker 0's id, which would put it in broker 0's fetches
			// and fail them all.
			leaders[p.ID] = noLeader
		}
	}
	slices.Sort(parts)
	return parts, leaders, nil
}

// noLeader is the leader of a partition that has none.
const noLeader = -1

// bounds are the first offset of a partition's log and the offset the next
// produced message will get (the high watermark).
type bounds struct{ first, last int64 }

// logBounds returns the bounds of each of partitions.
func (b *brokers) logBounds(ctx context.Context, partitions []int) (map[int]bounds, error) {
	return b.listOffsets(ctx, partitions, true)
}

// logEnds returns the high watermark of each of partitions, as bounds.last
// (bounds.first is not asked for: kafka-go sends a request per partition and
// timestamp).
func (b *brokers) logEnds(ctx context.Context, partitions []int) (map[int]bounds, error) {
	return b.listOffsets(ctx, partitions, false)
}

func (b *brokers) listOffsets(ctx context.Context, partitions []int, first bool) (out map[int]bounds, err error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	err = retry(ctx, b.retryConns.Load(), func() error {
		out, err = b.listOffsetsOnce(ctx, partitions, first)
		return err
	})
	return out, err
}

func (b *brokers) listOffsetsOnce(ctx context.Context, partitions []int, first bool) (map[int]bounds, error) {
	reqs := make([]kafka.OffsetRequest, 0, 2*len(partitions))
	for _, p := range partitions {
		if first {
			reqs = append(reqs, kafka.FirstOffsetOf(p))
		}
		reqs = append(reqs, kafka.LastOffsetOf(p))
	}
	res, err := b.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{b.topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("multiconsumer: list offsets of topic %q: %w", b.topic, err)
	}
	out := make(map[int]bounds, len(partitions))
	for _, po := range res.Topics[b.topic] {
		if po.Error != nil {
			return nil, &PartitionError{Topic: b.topic, Partition: po.Partition, Err: fmt.Errorf("list offsets: %w", po.Error)}
		}
		out[po.Partition] = bounds{first: po.FirstOffset, last: po.LastOffset}
	}
	for _, p := range partitions {
		if _, ok := out[p]; !ok {
			return nil, &PartitionError{Topic: b.topic, Partition: p, Err: errors.New("list offsets: missing from the response")}
		}
	}
	return out, nil
}

// committedOffsets returns the group's committed offset of each of
// partitions. A partition missing from the answer, or with offset -1, has
// nothing committed: brokers differ in which of the two they answer (kfake
// leaves out partitions without a commit, and answers GROUP_ID_NOT_FOUND for
// a group that never committed; Apache Kafka lists them with -1).
//
// meta holds the metadata committed with each offset, where there is some.
func (b *brokers) committedOffsets(ctx context.Context, partitions []int) (out map[int]int64, meta map[int]string, err error) {
	if b.group == "" {
		return map[int]int64{}, nil, nil
	}
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	err = retry(ctx, b.retryConns.Load(), func() error {
		out, meta, err = b.committedOffsetsOnce(ctx, partitions)
		return err
	})
	return out, meta, err
}

func (b *brokers) committedOffsetsOnce(ctx context.Context, partitions []int) (map[int]int64, map[int]string, error) {
	out := make(map[int]int64, len(partitions))
	meta := make(map[int]string)
	res, err := b.client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{
		GroupID: b.group,
		Topics:  map[string][]int{b.topic: partitions},
	})
	if err == nil {
		err = res.Error
	}
	if errors.Is(err, kafka.GroupIdNotFound) {
		return out, meta, nil // kfake: a group that never committed does not exist
	}
	if err != nil {
		return nil, nil, fmt.Errorf("multiconsumer: committed offsets of group %q: %w", b.group, err)
	}
	for _, p := range res.Topics[b.topic] {
		if p.Error != nil {
			return nil, nil, &PartitionError{Topic: b.topic, Partition: p.Partition, Err: fmt.Errorf("committed offset of group %q: %w", b.group, p.Error)}
		}
		if p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
			if p.Metadata != "" {
				meta[p.Partition] = p.Metadata
			}
		}
	}
	return out, meta, nil
}

// offsetCommit stores offsets in the group's offset storage. In group mode
// the commit carries the lease's generation and member id, so that the
// coordinator refuses it once that generation is over; otherwise it is made
// from outside the group (generation -1, no member id). On a partial failure the error lists the
// partitions that failed, and ok holds the ones that were stored.
//
// meta is the metadata to store with each offset (none where it has none).
func (b *brokers) offsetCommit(ctx context.Context, l lease, offsets map[int]int64, meta map[int]string) (ok map[int]int64, err error) {
	ctx, cancel := b.withTimeout(ctx)
	defer cancel()
	if b.consumer {
		return b.offsetCommitV9(ctx, l, offsets, meta)
	}
	commits := make([]kafka.OffsetCommit, 0, len(offsets))
	for p, off := range offsets {
		commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: off, Metadata: meta[p]})
	}
	slices.SortFunc(commits, func(a, b kafka.OffsetCommit) int { return cmp.Compare(a.Partition, b.Partition) })
	req := &kafka.OffsetCommitRequest{
		GroupID:      b.group,
		GenerationID: -1,
		Topics:       map[string][]kafka.OffsetCommit{b.topic: commits},
	}
	if l.memberID != "" {
		req.GenerationID, req.MemberID, req.InstanceID = int(l.generation), l.memberID, l.instanceID
	}
	res, err := b.client.OffsetCommit(ctx, req)
	if err != nil {
		return nil, fmt.Errorf("multiconsumer: commit offsets of group %q: %w", b.group, err)
	}
	ok = make(map[int]int64, len(offsets))
	var errs []error
	for _, p := range res.Topics[b.topic] {
		if p.Error != nil {
			err := fmt.Errorf("commit offset %d: %w", offsets[p.Partition], p.Error)
			// A consumer-protocol group answers an old-version commit
			// from outside it with UNSUPPORTED_VERSION.
			if l.memberID == "" && (stale(p.Error) || errors.Is(p.Error, kafka.UnsupportedVersion)) {
				err = fmt.Errorf("commit offset %d: group %q has members, which own its partitions; a consumer outside the group cannot commit (see Config.JoinGroup): %w",
					offsets[p.Partition], b.group, p.Error)
			}
			errs = append(errs, &PartitionError{Topic: b.topic, Partition: p.Partition, Err: err})
			continue
		}
		if off, asked := offsets[p.Partition]; asked {
			ok[p.Partition] = off
		}
	}
	if len(ok)+len(errs) < len(offsets) {
		errs = append(errs, fmt.Errorf("multiconsumer: commit offsets of group %q: %d partitions missing from the response", b.group, len(offsets)-len(ok)-len(errs)))
	}
	return ok, errors.Join(errs...)
}
