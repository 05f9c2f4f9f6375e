package wire

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// sample is a request and a well-formed answer to it.
type sample struct {
	req kmsg.Request
	res kmsg.Response
}

// samples covers a non-flexible header (ApiVersions, whatever its version),
// flexible ones, and bodies with nested arrays, nullable fields and bytes.
func samples() []sample {
	av := kmsg.NewPtrApiVersionsResponse()
	for _, k := range []int16{0, 1, 3, 18, 68, 76, 78, 79} {
		ak := kmsg.NewApiVersionsResponseApiKey()
		ak.ApiKey, ak.MaxVersion = k, 3
		av.ApiKeys = append(av.ApiKeys, ak)
	}

	md := kmsg.NewPtrMetadataResponse()
	mb := kmsg.NewMetadataResponseBroker()
	mb.NodeID, mb.Host, mb.Port = 1, "broker-1", 9092
	md.Brokers = append(md.Brokers, mb)
	mt := kmsg.NewMetadataResponseTopic()
	mt.Topic, mt.TopicID = kmsg.StringPtr("events"), [16]byte{1, 2, 3}
	for p := range int32(3) {
		mp := kmsg.NewMetadataResponseTopicPartition()
		mp.Partition, mp.Leader, mp.Replicas = p, 1, []int32{1}
		mt.Partitions = append(mt.Partitions, mp)
	}
	md.Topics = append(md.Topics, mt)

	hb := kmsg.NewPtrConsumerGroupHeartbeatResponse()
	hb.MemberID, hb.MemberEpoch = kmsg.StringPtr("member"), 3
	hb.Assignment = &kmsg.ConsumerGroupHeartbeatResponseAssignment{
		Topics: []kmsg.ConsumerGroupHeartbeatResponseAssignmentTopic{{TopicID: [16]byte{9}, Partitions: []int32{0, 2}}},
	}

	sf := kmsg.NewPtrShareFetchResponse()
	st := kmsg.NewShareFetchResponseTopic()
	st.TopicID = [16]byte{1, 2, 3}
	sp := kmsg.NewShareFetchResponseTopicPartition()
	sp.Records = bytes.Repeat([]byte{0xab}, 40)
	sp.AcquiredRecords = []kmsg.ShareFetchResponseTopicPartitionAcquiredRecord{{FirstOffset: 0, LastOffset: 3, DeliveryCount: 1}}
	st.Partitions = append(st.Partitions, sp)
	sf.Topics = append(sf.Topics, st)

	return []sample{
		{kmsg.NewPtrApiVersionsRequest(), av},
		{kmsg.NewPtrMetadataRequest(), md},
		{kmsg.NewPtrConsumerGroupHeartbeatRequest(), hb},
		{kmsg.NewPtrShareFetchRequest(), sf},
	}
}

// frame is the response frame a broker sends for res with correlation id id.
func frame(res kmsg.Response, id int32) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 4, 64), uint32(id))
	if res.IsFlexible() && res.Key() != 18 {
		b = append(b, 0) // no tagged fields in the header
	}
	b = res.AppendTo(b)
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
	return b
}

// frames returns, for each sample at each of versions 0..max(sample), the
// request set to that version and its valid response frame.
func frames() (reqs []kmsg.Request, valid [][]byte) {
	for _, s := range samples() {
		for v := int16(0); v <= s.req.MaxVersion(); v++ {
			s.req.SetVersion(v)
			s.res.SetVersion(v)
			reqs = append(reqs, s.req.ResponseKind().RequestKind()) // a fresh request value
			reqs[len(reqs)-1].SetVersion(v)
			valid = append(valid, frame(s.res, 7))
		}
	}
	return reqs, valid
}

func TestReadResponseValid(t *testing.T) {
	reqs, valid := frames()
	for i, req := range reqs {
		res, err := readResponse(bytes.NewReader(valid[i]), req, 7)
		require.NoError(t, err, "%s v%d", kmsg.NameForKey(req.Key()), req.GetVersion())
		// Re-encoded, it is the frame it came from.
		assert.Equal(t, valid[i], frame(res, 7), "%s v%d", kmsg.NameForKey(req.Key()), req.GetVersion())
	}
	_, err := readResponse(bytes.NewReader(valid[0]), reqs[0], 8)
	assert.ErrorContains(t, err, "correlation id 7, want 8")
}

// TestReadResponseGarbled cuts and scrambles valid frames: every cut is an
// error, and no input panics.
func TestReadResponseGarbled(t *testing.T) {
	reqs, valid := frames()
	rng := rand.New(rand.NewPCG(1, 2))
	for i, req := range reqs {
		f := valid[i]
		for n := range len(f) {
			_, err := readResponse(bytes.NewReader(f[:n]), req, 7)
			assert.Error(t, err, "%s v%d cut at %d of %d", kmsg.NameForKey(req.Key()), req.GetVersion(), n, len(f))
		}
		for range 300 {
			g := bytes.Clone(f)
			for range 1 + rng.IntN(4) {
				g[4+rng.IntN(len(g)-4)] = byte(rng.Uint32()) // keep the size: garble the body
			}
			_, _ = readResponse(bytes.NewReader(g), req, int32(binary.BigEndian.Uint32(g[4:])))
		}
	}
	// A size that promises far more than arrives.
	_, err := readResponse(bytes.NewReader([]byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 7}), reqs[0], 7)
	assert.Error(t, err)
	_, err = readResponse(bytes.NewReader([]byte{0xff, 0xff, 0xff, 0xff}), reqs[0], 7)
	assert.Error(t, err)
}

// FuzzReadResponse: `go test -fuzz FuzzReadResponse ./internal/wire/`.
func FuzzReadResponse(f *testing.F) {
	reqs, valid := frames()
	for i := range reqs {
		f.Add(uint8(i), valid[i])
	}
	f.Fuzz(func(t *testing.T, which uint8, data []byte) {
		req := reqs[int(which)%len(reqs)]
		var id int32
		if len(data) >= 8 {
			id = int32(binary.BigEndian.Uint32(data[4:])) // reach the body, not just the id check
		}
		res, err := readResponse(bytes.NewReader(data), req, id)
		if err == nil && res == nil {
			t.Fatal("nil response without an error")
		}
	})
}

// TestSkipTags: a flexible response header's tagged fields are skipped,
// whatever they hold; cut ones are an error.
func TestSkipTags(t *testing.T) {
	rest := []byte{0xde, 0xad}
	for _, tc := range []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"none", []byte{0}, true},
		{"one", []byte{1, 5, 2, 'a', 'b'}, true},
		{"two, one empty", []byte{2, 0, 0, 0x81, 0x01, 1, 'x'}, true}, // tag 129, a two-byte varint
		{"empty", nil, false},
		{"cut in the data", []byte{1, 5, 3, 'a'}, false},
		{"cut before the size", []byte{1, 5}, false},
		{"more fields than bytes", []byte{3, 1, 0}, false},
		{"a count past 2^31", []byte{0x80, 0x80, 0x80, 0x80, 0x10}, false},
	} {
		got, ok := skipTags(append(bytes.Clone(tc.in), rest...))
		if !tc.ok {
			// The rest is read as fields too: a cut is an error only
			// where it stays one, so check those without the rest.
			_, ok = skipTags(bytes.Clone(tc.in))
			assert.False(t, ok, tc.name)
			continue
		}
		require.True(t, ok, tc.name)
		assert.Equal(t, rest, got, tc.name)
	}
}
