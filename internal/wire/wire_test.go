package wire

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/kversion"
	"go.uber.org/goleak"
)

// env is one test's embedded cluster, the kafka-go Transport the test's
// requests share, and a Client on it bootstrapped at broker 0.
type env struct {
	kf     *kfake.Cluster
	tr     *kafka.Transport
	wire   *Client
	kafka  *kafka.Client // kafka-go's own client on the same Transport
	topic  string
	leader map[int32]int32 // partition -> leader node, from Metadata
	id     [16]byte        // the topic's id
}

func newEnv(t *testing.T, brokers, partitions int, opts ...kfake.Opt) *env {
	t.Helper()
	// Registered first so that it runs last, after the Transport and the
	// cluster are closed.
	t.Cleanup(func() {
		goleak.VerifyNone(t, goleak.IgnoreAnyFunction("github.com/twmb/franz-go/pkg/kfake.(*clientConn).read.func1"))
	})
	e := &env{topic: fmt.Sprintf("t-%s", randomID())}
	kf, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(brokers), kfake.SeedTopics(int32(partitions), e.topic)}, opts...)...)
	require.NoError(t, err)
	t.Cleanup(kf.Close)
	// kfake picks leaders at random; spread them so that leader routing
	// is tested: partition p on broker p mod brokers.
	for p := range partitions {
		require.NoError(t, kf.MoveTopicPartition(e.topic, int32(p), int32(p%brokers)))
	}
	e.kf = kf
	e.tr = &kafka.Transport{ClientID: "wire-test"}
	t.Cleanup(e.tr.CloseIdleConnections)
	addr := kafka.TCP(kf.ListenAddrs()[0])
	e.wire = &Client{Transport: e.tr, Addr: addr, ClientID: "wire-test"}
	e.kafka = &kafka.Client{Transport: e.tr, Addr: addr}
	return e
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// randomID is a member id as Kafka clients make them: a random UUID in
// URL-safe base64.
func randomID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// metadata asks for e.topic through the raw path and records its id and
// partition leaders.
func (e *env) metadata(t *testing.T) *kmsg.MetadataResponse {
	t.Helper()
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = kmsg.StringPtr(e.topic)
	req.Topics = append(req.Topics, rt)
	res, err := e.wire.Do(ctxFor(t), req)
	require.NoError(t, err)
	md := res.(*kmsg.MetadataResponse)
	require.Len(t, md.Topics, 1)
	require.NoError(t, ErrorForCode(md.Topics[0].ErrorCode))
	e.id = md.Topics[0].TopicID
	e.leader = map[int32]int32{}
	for _, p := range md.Topics[0].Partitions {
		e.leader[p.Partition] = p.Leader
	}
	return md
}

func TestApiVersionsAndMetadata(t *testing.T) {
	e := newEnv(t, 1, 3)
	ctx := ctxFor(t)

	avr := kmsg.NewPtrApiVersionsRequest()
	avr.ClientSoftwareName, avr.ClientSoftwareVersion = "wire-test", "0" // required from v3
	res, err := e.wire.Do(ctx, avr)
	require.NoError(t, err)
	av := res.(*kmsg.ApiVersionsResponse)
	require.NoError(t, ErrorForCode(av.ErrorCode))
	assert.GreaterOrEqual(t, av.Version, int16(3))
	vs, err := e.wire.Versions(ctx)
	require.NoError(t, err)
	assert.Contains(t, vs, int16(76), "kfake serves ShareGroupHeartbeat")

	md := e.metadata(t)
	assert.GreaterOrEqual(t, md.Version, int16(10), "topic ids need Metadata v10+")
	assert.NotEqual(t, [16]byte{}, e.id)
	assert.Len(t, e.leader, 3)

	// kafka-go's own requests on the same Transport, interleaved with raw
	// ones: a frame left half-read would garble the next answer.
	for i := range 3 {
		kav, err := e.kafka.ApiVersions(ctx, &kafka.ApiVersionsRequest{})
		require.NoError(t, err, "kafka-go ApiVersions after raw requests, round %d", i)
		require.NoError(t, kav.Error)
		pr, err := e.kafka.Produce(ctx, &kafka.ProduceRequest{
			Topic: e.topic, Partition: 0, RequiredAcks: kafka.RequireAll,
			Records: kafka.NewRecordReader(kafka.Record{Value: kafka.NewBytes([]byte("v"))}),
		})
		require.NoError(t, err)
		require.NoError(t, pr.Error)
		assert.Equal(t, int64(i), pr.BaseOffset)
		e.metadata(t)
	}

	// Concurrent raw and kafka-go requests share the pool (and -race sees
	// the Client's version cache).
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 10 {
		wg.Go(func() {
			_, err := e.wire.Do(ctx, kmsg.NewPtrMetadataRequest())
			errs <- err
		})
		wg.Go(func() {
			_, err := e.kafka.ApiVersions(ctx, &kafka.ApiVersionsRequest{})
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
}

// coordinator asks the cluster (raw FindCoordinator) which broker
// coordinates group.
func (e *env) coordinator(t *testing.T, group string) kmsg.FindCoordinatorResponseCoordinator {
	t.Helper()
	req := kmsg.NewPtrFindCoordinatorRequest()
	req.CoordinatorKeys = []string{group}
	res, err := e.wire.Do(ctxFor(t), req)
	require.NoError(t, err)
	fc := res.(*kmsg.FindCoordinatorResponse)
	require.Len(t, fc.Coordinators, 1)
	require.NoError(t, ErrorForCode(fc.Coordinators[0].ErrorCode))
	return fc.Coordinators[0]
}

// remoteGroup returns a group id whose coordinator is not the bootstrap
// broker, so that only routing reaches it.
func (e *env) remoteGroup(t *testing.T) string {
	t.Helper()
	for range 100 {
		g := "g-" + randomID()
		c := e.coordinator(t, g)
		if net.JoinHostPort(c.Host, fmt.Sprint(c.Port)) != e.kf.ListenAddrs()[0] {
			return g
		}
	}
	t.Fatal("every group is coordinated by the bootstrap broker")
	return ""
}

func TestConsumerGroupHeartbeat(t *testing.T) {
	testConsumerGroup(t, newEnv(t, 3, 3))
}

// testConsumerGroup joins a KIP-848 group through the coordinator, waits
// for the topic's partitions and leaves.
func testConsumerGroup(t *testing.T, e *env) {
	ctx := ctxFor(t)
	e.metadata(t)
	group := e.remoteGroup(t)
	member := randomID()

	join := func() *kmsg.ConsumerGroupHeartbeatRequest {
		req := kmsg.NewPtrConsumerGroupHeartbeatRequest()
		req.Group = group
		req.MemberID = member
		req.MemberEpoch = 0
		req.RebalanceTimeoutMillis = 30_000
		req.SubscribedTopicNames = []string{e.topic}
		// Kafka wants an empty, non-null owned-partitions list on a join.
		req.Topics = []kmsg.ConsumerGroupHeartbeatRequestTopic{}
		return req
	}

	// Unrouted, the bootstrap broker refuses: it is not the coordinator.
	res, err := e.wire.Do(ctx, join())
	require.NoError(t, err)
	assert.ErrorIs(t, ErrorForCode(res.(*kmsg.ConsumerGroupHeartbeatResponse).ErrorCode), kerr.NotCoordinator)

	res, err = e.wire.DoGroup(ctx, group, join())
	require.NoError(t, err)
	hb := res.(*kmsg.ConsumerGroupHeartbeatResponse)
	require.NoError(t, ErrorForCode(hb.ErrorCode))
	require.NotNil(t, hb.MemberID)
	assert.Equal(t, member, *hb.MemberID, "v1: the member id is the client's")
	assert.Positive(t, hb.MemberEpoch)
	assert.Positive(t, hb.HeartbeatIntervalMillis)

	// Heartbeat until the assignment holds the topic's three partitions.
	epoch := hb.MemberEpoch
	assigned := hb.Assignment
	require.Eventually(t, func() bool {
		if assigned != nil && len(assigned.Topics) == 1 && len(assigned.Topics[0].Partitions) == 3 {
			return true
		}
		req := kmsg.NewPtrConsumerGroupHeartbeatRequest()
		req.Group, req.MemberID, req.MemberEpoch = group, member, epoch
		res, err := e.wire.DoGroup(ctx, group, req)
		require.NoError(t, err)
		hb := res.(*kmsg.ConsumerGroupHeartbeatResponse)
		require.NoError(t, ErrorForCode(hb.ErrorCode))
		epoch = hb.MemberEpoch
		if hb.Assignment != nil {
			assigned = hb.Assignment
		}
		return false
	}, 10*time.Second, 50*time.Millisecond)
	assert.Equal(t, e.id, assigned.Topics[0].TopicID)

	leave := kmsg.NewPtrConsumerGroupHeartbeatRequest()
	leave.Group, leave.MemberID, leave.MemberEpoch = group, member, -1
	res, err = e.wire.DoGroup(ctx, group, leave)
	require.NoError(t, err)
	hb = res.(*kmsg.ConsumerGroupHeartbeatResponse)
	require.NoError(t, ErrorForCode(hb.ErrorCode))
	assert.Equal(t, int32(-1), hb.MemberEpoch)
}

func TestShareGroup(t *testing.T) {
	testShareGroup(t, newEnv(t, 3, 3))
}

// testShareGroup joins a share group, fetches records produced with
// kafka-go from each partition's leader, accepts them and leaves.
func testShareGroup(t *testing.T, e *env) {
	ctx := ctxFor(t)
	e.metadata(t)
	group := e.remoteGroup(t)
	member := randomID()

	// A share group starts at the log end unless told otherwise.
	ac := kmsg.NewPtrIncrementalAlterConfigsRequest()
	rs := kmsg.NewIncrementalAlterConfigsRequestResource()
	rs.ResourceType = kmsg.ConfigResourceTypeGroupConfig
	rs.ResourceName = group
	cfg := kmsg.NewIncrementalAlterConfigsRequestResourceConfig()
	cfg.Name, cfg.Value = "share.auto.offset.reset", kmsg.StringPtr("earliest")
	rs.Configs = append(rs.Configs, cfg)
	ac.Resources = append(ac.Resources, rs)
	res, err := e.wire.Do(ctx, ac)
	require.NoError(t, err)
	require.NoError(t, ErrorForCode(res.(*kmsg.IncrementalAlterConfigsResponse).Resources[0].ErrorCode))

	// Records produced with kafka-go, 4 per partition.
	const perPartition = 4
	for p := range int32(3) {
		recs := make([]kafka.Record, perPartition)
		for i := range recs {
			recs[i] = kafka.Record{Value: kafka.NewBytes(fmt.Appendf(nil, "%d-%d", p, i))}
		}
		pr, err := e.kafka.Produce(ctx, &kafka.ProduceRequest{
			Topic: e.topic, Partition: int(p), RequiredAcks: kafka.RequireAll,
			Records: kafka.NewRecordReader(recs...),
		})
		require.NoError(t, err)
		require.NoError(t, pr.Error)
	}

	// Join, and heartbeat until the member holds all three partitions.
	epoch := int32(0)
	var assigned []int32
	require.Eventually(t, func() bool {
		req := kmsg.NewPtrShareGroupHeartbeatRequest()
		req.GroupID, req.MemberID, req.MemberEpoch = group, member, epoch
		req.SubscribedTopicNames = []string{e.topic}
		res, err := e.wire.DoGroup(ctx, group, req)
		require.NoError(t, err)
		hb := res.(*kmsg.ShareGroupHeartbeatResponse)
		require.NoError(t, ErrorForCode(hb.ErrorCode))
		epoch = hb.MemberEpoch
		if hb.Assignment != nil && len(hb.Assignment.TopicPartitions) == 1 {
			assigned = hb.Assignment.TopicPartitions[0].Partitions
		}
		return len(assigned) == 3
	}, 10*time.Second, 50*time.Millisecond)
	require.Positive(t, epoch)

	// ShareFetch from each partition's leader, in one share session per
	// leader, until every record is acquired.
	byLeader := map[int32][]int32{}
	for p, l := range e.leader {
		byLeader[l] = append(byLeader[l], p)
	}
	require.Greater(t, len(byLeader), 1, "the test wants partitions on several leaders")
	sessionEpoch := map[int32]int32{}
	acquired := map[int32][]kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{}
	values := map[string]bool{}
	for leader, parts := range byLeader {
		require.Eventually(t, func() bool {
			req := kmsg.NewPtrShareFetchRequest()
			req.GroupID, req.MemberID = kmsg.StringPtr(group), kmsg.StringPtr(member)
			req.ShareSessionEpoch = sessionEpoch[leader]
			req.MaxWaitMillis, req.MinBytes, req.MaxRecords = 200, 1, 100
			if sessionEpoch[leader] == 0 {
				rt := kmsg.NewShareFetchRequestTopic()
				rt.TopicID = e.id
				for _, p := range parts {
					rp := kmsg.NewShareFetchRequestTopicPartition()
					rp.Partition = p
					rt.Partitions = append(rt.Partitions, rp)
				}
				req.Topics = append(req.Topics, rt)
			}
			res, err := e.wire.DoBroker(ctx, leader, req)
			require.NoError(t, err)
			sf := res.(*kmsg.ShareFetchResponse)
			require.NoError(t, ErrorForCode(sf.ErrorCode))
			sessionEpoch[leader]++
			for _, rt := range sf.Topics {
				for _, rp := range rt.Partitions {
					require.NoError(t, ErrorForCode(rp.ErrorCode), "partition %d", rp.Partition)
					acquired[rp.Partition] = append(acquired[rp.Partition], rp.AcquiredRecords...)
					for _, v := range recordValues(t, rp.Records) {
						values[v] = true
					}
				}
			}
			for _, p := range parts {
				if count(acquired[p]) < perPartition {
					return false
				}
			}
			return true
		}, 10*time.Second, 10*time.Millisecond)
	}
	assert.Len(t, values, 3*perPartition)
	assert.True(t, values["2-3"])

	// Accept everything, on each leader's session.
	for leader, parts := range byLeader {
		req := kmsg.NewPtrShareAcknowledgeRequest()
		req.GroupID, req.MemberID = kmsg.StringPtr(group), kmsg.StringPtr(member)
		req.ShareSessionEpoch = sessionEpoch[leader]
		rt := kmsg.NewShareAcknowledgeRequestTopic()
		rt.TopicID = e.id
		for _, p := range parts {
			rp := kmsg.NewShareAcknowledgeRequestTopicPartition()
			rp.Partition = p
			for _, a := range acquired[p] {
				b := kmsg.NewShareAcknowledgeRequestTopicPartitionAcknowledgementBatch()
				b.FirstOffset, b.LastOffset = a.FirstOffset, a.LastOffset
				b.AcknowledgeTypes = []int8{1} // accept
				rp.AcknowledgementBatches = append(rp.AcknowledgementBatches, b)
			}
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
		res, err := e.wire.DoBroker(ctx, leader, req)
		require.NoError(t, err)
		sa := res.(*kmsg.ShareAcknowledgeResponse)
		require.NoError(t, ErrorForCode(sa.ErrorCode))
		for _, rt := range sa.Topics {
			for _, rp := range rt.Partitions {
				assert.NoError(t, ErrorForCode(rp.ErrorCode), "ack partition %d", rp.Partition)
			}
		}
	}

	// The share-partition start offsets moved past the accepted records.
	dr := kmsg.NewPtrDescribeShareGroupOffsetsRequest()
	dg := kmsg.NewDescribeShareGroupOffsetsRequestGroup()
	dg.GroupID = group
	dt := kmsg.NewDescribeShareGroupOffsetsRequestGroupTopic()
	dt.Topic, dt.Partitions = e.topic, []int32{0, 1, 2}
	dg.Topics = append(dg.Topics, dt)
	dr.Groups = append(dr.Groups, dg)
	res, err = e.wire.DoGroup(ctx, group, dr)
	require.NoError(t, err)
	dres := res.(*kmsg.DescribeShareGroupOffsetsResponse)
	require.Len(t, dres.Groups, 1)
	require.NoError(t, ErrorForCode(dres.Groups[0].ErrorCode))
	require.Len(t, dres.Groups[0].Topics, 1)
	for _, p := range dres.Groups[0].Topics[0].Partitions {
		assert.Equal(t, int64(perPartition), p.StartOffset, "partition %d", p.Partition)
	}

	leave := kmsg.NewPtrShareGroupHeartbeatRequest()
	leave.GroupID, leave.MemberID, leave.MemberEpoch = group, member, -1
	res, err = e.wire.DoGroup(ctx, group, leave)
	require.NoError(t, err)
	require.NoError(t, ErrorForCode(res.(*kmsg.ShareGroupHeartbeatResponse).ErrorCode))
}

func count(recs []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord) int {
	n := 0
	for _, r := range recs {
		n += int(r.LastOffset - r.FirstOffset + 1)
	}
	return n
}

// recordValues decodes uncompressed v2 record batches (kafka-go's default)
// and returns the records' values.
func recordValues(t *testing.T, b []byte) []string {
	t.Helper()
	var out []string
	for len(b) >= 12 {
		n := 12 + int(binary.BigEndian.Uint32(b[8:]))
		require.LessOrEqual(t, n, len(b))
		var batch kmsg.RecordBatch
		require.NoError(t, batch.ReadFrom(b[:n]))
		require.Zero(t, batch.Attributes&7, "compressed batch")
		recs := batch.Records
		for range batch.NumRecords {
			l, m := binary.Varint(recs)
			require.Positive(t, m)
			var r kmsg.Record
			require.NoError(t, r.ReadFrom(recs[:m+int(l)]))
			out = append(out, string(r.Value))
			recs = recs[m+int(l):]
		}
		b = b[n:]
	}
	return out
}

func TestUnsupported(t *testing.T) {
	// A Kafka 3.9 cluster: no share groups.
	e := newEnv(t, 1, 1, kfake.MaxVersions(kversion.V3_9_0()))
	ctx := ctxFor(t)

	req := kmsg.NewPtrShareGroupHeartbeatRequest()
	req.GroupID, req.MemberID, req.SubscribedTopicNames = "g", randomID(), []string{e.topic}
	_, err := e.wire.DoGroup(ctx, "g", req)
	var ue *UnsupportedError
	require.ErrorAs(t, err, &ue)
	assert.ErrorIs(t, err, errors.ErrUnsupported)
	assert.Equal(t, int16(76), ue.Key)
	assert.Equal(t, "ShareGroupHeartbeat", ue.Name)
	assert.False(t, ue.Offered)
	assert.Equal(t, "wire: broker does not support ShareGroupHeartbeat (key 76); it offers no version of it", err.Error())

	// A broker that offers only versions newer than kmsg knows.
	e.wire.mu.Lock()
	e.wire.versions[68] = VersionRange{Min: 5, Max: 7}
	// A Client that believes the broker offers an API it does not: the
	// Request checks the connection's own ApiVersions before writing.
	e.wire.versions[76] = VersionRange{Min: 0, Max: 1}
	e.wire.mu.Unlock()
	_, err = e.wire.Do(ctx, kmsg.NewPtrConsumerGroupHeartbeatRequest())
	require.ErrorAs(t, err, &ue)
	assert.True(t, ue.Offered)
	assert.Equal(t, VersionRange{5, 7}, VersionRange{ue.BrokerMin, ue.BrokerMax})
	assert.Equal(t, int16(1), ue.ClientMax)
	assert.ErrorIs(t, err, errors.ErrUnsupported)

	_, err = e.wire.Do(ctx, req)
	require.ErrorAs(t, err, &ue)
	assert.Equal(t, int16(76), ue.Key)
	assert.False(t, ue.Offered)

	// The Transport dropped that connection and dials a new one.
	_, err = e.wire.Do(ctx, kmsg.NewPtrMetadataRequest())
	require.NoError(t, err)
	_, err = e.kafka.ApiVersions(ctx, &kafka.ApiVersionsRequest{})
	require.NoError(t, err)
}

func TestErrorForCode(t *testing.T) {
	assert.NoError(t, ErrorForCode(0))
	assert.ErrorIs(t, ErrorForCode(16), kerr.NotCoordinator)
	assert.ErrorIs(t, ErrorForCode(-1), kerr.UnknownServerError)
	err := ErrorForCode(9999)
	var ke *kerr.Error
	require.ErrorAs(t, err, &ke)
	assert.Equal(t, int16(9999), ke.Code)
	assert.NotErrorIs(t, err, kerr.UnknownServerError)
}
