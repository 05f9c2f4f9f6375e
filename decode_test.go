package multiconsumer

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	kgsnappy "github.com/segmentio/kafka-go/compress/snappy"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// The decoder reads what kafka-go reads: every message format (v0, v1 and
// v2 record batches), each codec, keys and values null, empty and long,
// headers, timestamps, and several batches in a row. The bytes are
// kafka-go's own encoding; the answer is kafka-go's own decoding of them.
func TestDecodeMatchesKafkaGo(t *testing.T) {
	t.Parallel()
	// Fresh records for each encoding: their keys and values are readers,
	// consumed by the encoding (and the subtests run in parallel).
	records := func(headers bool) []protocol.Record {
		base := time.UnixMilli(1_700_000_000_123)
		long := bytes.Repeat([]byte("0123456789"), 700)
		recs := []protocol.Record{
			{Offset: 0, Time: base, Key: protocol.NewBytes([]byte("k0")), Value: protocol.NewBytes([]byte("v0"))},
			{Offset: 1, Time: base.Add(5 * time.Millisecond), Value: protocol.NewBytes([]byte("no key"))},
			{Offset: 2, Time: base.Add(-3 * time.Millisecond), Key: protocol.NewBytes([]byte("tombstone"))},
			{Offset: 3, Time: base, Key: protocol.NewBytes([]byte{}), Value: protocol.NewBytes([]byte{})},
			{Offset: 4, Time: base.Add(time.Hour), Key: protocol.NewBytes([]byte("long")), Value: protocol.NewBytes(long)},
			{Offset: 5, Time: base, Value: protocol.NewBytes([]byte("headers"))},
		}
		if headers {
			recs[5].Headers = []protocol.Header{{Key: "a", Value: []byte("1")}, {Key: "empty", Value: []byte{}}, {Key: "null"}}
		}
		return recs
	}
	codecs := []compress.Compression{0, compress.Gzip, compress.Snappy, compress.Lz4, compress.Zstd}
	for _, version := range []int8{1, 2} {
		for _, codec := range codecs {
			name := fmt.Sprintf("v%d/%s", version, codecName(codec))
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				if version < 2 {
					raw := encodeSet(t, version, codec, records(false)) // headers came with v2
					assertSameMessages(t, raw, decodeKafkaGo(t, raw))
					return
				}
				// Three batches in a row, as a fetch response holds them,
				// each at its own base offset.
				var raw []byte
				n := 0
				for i := range 3 {
					recs := records(true)
					raw = append(raw, rebase(encodeSet(t, version, codec, recs), int64(i*len(recs)))...)
					n += len(recs)
				}
				want := decodeKafkaGo(t, raw)
				require.Len(t, want, n)
				assertSameMessages(t, raw, want)
				// Cut inside the last batch (a response's size limit): the
				// whole ones are read, without an error.
				cut := raw[:len(raw)-7]
				got := decodeAll(t, cut)
				assert.Len(t, got, n*2/3)
			})
		}
	}
	t.Run("v0", func(t *testing.T) {
		t.Parallel()
		raw := append(messageV0(7, []byte("k"), []byte("v")), messageV0(8, nil, []byte("w"))...)
		got := decodeAll(t, raw)
		require.Len(t, got, 2)
		assert.Equal(t, int64(7), got[0].Offset)
		assert.Equal(t, "k", string(got[0].Key))
		assert.Nil(t, got[1].Key)
		assert.Equal(t, "w", string(got[1].Value))
	})
}

// A transaction's marker (a control batch) is no message, but the iterator
// walks past its offset; so it does an empty batch (what compaction leaves
// for an idempotent producer): its offsets are behind once it is read.
func TestDecodeControlAndEmptyBatches(t *testing.T) {
	t.Parallel()
	data := recordBatch(0, 1, map[int32]string{0: "a", 1: "b"})
	marker := controlBatch(2)
	hollow := recordBatch(3, 9, nil) // offsets 3-12, no records
	raw := append(append(append([]byte(nil), data...), marker...), hollow...)
	it := newRecordIter("t", 0, raw)
	var m kafka.Message
	var offs []int64
	for {
		ok, err := it.next(&m)
		require.NoError(t, err)
		if !ok {
			break
		}
		offs = append(offs, m.Offset)
	}
	assert.Equal(t, []int64{0, 1}, offs)
	assert.Equal(t, int64(12), it.seen)
}

// Bytes that are not record batches give an error that says so, never a
// panic, and never records invented.
// TestUnsnappy: our snappy decoding gives what kafka-go's codec reader
// gives, framed (xerial: the Java client, kafka-go) in one block or many,
// and unframed (franz-go), and refuses corrupt input with an error.
func TestUnsnappy(t *testing.T) {
	data := bytes.Repeat([]byte("records compress a few times over; "), 4000) // 140 KB: several xerial blocks
	for _, framing := range []kgsnappy.Framing{kgsnappy.Framed, kgsnappy.Unframed} {
		var buf bytes.Buffer
		w := (&kgsnappy.Codec{Framing: framing}).NewWriter(&buf)
		for chunk := range slices.Chunk(data, 50_000) {
			_, err := w.Write(chunk)
			require.NoError(t, err)
		}
		require.NoError(t, w.Close())
		if framing == kgsnappy.Unframed {
			buf.Reset()
			buf.Write(snappy.Encode(nil, data)) // kafka-go frames anyway once it writes more than once
		}
		got, err := unsnappy(buf.Bytes())
		require.NoError(t, err, "framing %d", framing)
		assert.Equal(t, data, got, "framing %d", framing)

		r := compress.Snappy.Codec().NewReader(bytes.NewReader(buf.Bytes()))
		want, err := io.ReadAll(r)
		require.NoError(t, err)
		assert.Equal(t, want, got, "as kafka-go's reader, framing %d", framing)
	}

	framed := func(blocks ...[]byte) []byte {
		out := append(append([]byte{}, xerialMagic...), 0, 0, 0, 1, 0, 0, 0, 1)
		for _, b := range blocks {
			out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
			out = append(out, b...)
		}
		return out
	}
	block := snappy.Encode(nil, []byte("hello, hello, hello"))
	for name, in := range map[string][]byte{
		"a claim of 4 GB":           {0xff, 0xff, 0xff, 0xff, 0x0f, 0x00},
		"a claim past the ratio":    binary.AppendUvarint(nil, 1<<20),
		"a block cut short":         block[:len(block)-2],
		"a frame size past the end": framed(block)[:20],
		"a frame size cut short":    framed(block)[:18],
		"a framed block corrupt":    framed([]byte{0x05, 0xff, 0xff}),
	} {
		_, err := unsnappy(in)
		assert.Error(t, err, name)
	}
	got, err := unsnappy(framed(block, block))
	require.NoError(t, err)
	assert.Equal(t, "hello, hello, hellohello, hello, hello", string(got))
}

func TestDecodeCorrupt(t *testing.T) {
	t.Parallel()
	good := recordBatch(0, 1, map[int32]string{0: "a", 1: "b"})
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0xff
		return b
	}
	for name, raw := range map[string][]byte{
		"crc":      flip(len(good) - 2), // a record's byte: the CRC no longer matches
		"magic":    flip(16),
		"length":   append(binary.BigEndian.AppendUint64(nil, 0), 0xff, 0xff, 0xff, 0xf0, 0, 0, 0, 0, 2),
		"v1 crc":   func() []byte { b := messageV0(1, nil, []byte("x")); b[len(b)-1] ^= 1; return b }(),
		"codec":    withAttributes(good, 0x07),
		"records":  withRecordCount(good, 3),
		"negative": withRecordCount(good, -1),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			it := newRecordIter("t", 0, raw)
			var m kafka.Message
			var err error
			for range 10 {
				var ok bool
				if ok, err = it.next(&m); err != nil || !ok {
					break
				}
			}
			require.Error(t, err)
			assert.ErrorIs(t, err, errCorrupt)
		})
	}
}

// FuzzRecordIter: arbitrary bytes never panic the decoder, and every error
// says the bytes are corrupt.
func FuzzRecordIter(f *testing.F) {
	f.Add(recordBatch(0, 1, map[int32]string{0: "a", 1: "b"}))
	f.Add(controlBatch(4))
	f.Add(messageV0(1, []byte("k"), []byte("v")))
	for _, c := range []compress.Compression{0, compress.Gzip, compress.Snappy, compress.Lz4, compress.Zstd} {
		rs := protocol.RecordSet{Version: 2, Attributes: protocol.Attributes(c), Records: protocol.NewRecordReader(
			protocol.Record{Key: protocol.NewBytes([]byte("k")), Value: protocol.NewBytes([]byte("v")),
				Headers: []protocol.Header{{Key: "h", Value: []byte("x")}}})}
		var buf bytes.Buffer
		if _, err := rs.WriteTo(&buf); err == nil {
			f.Add(buf.Bytes()[4:])
		}
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		it := newRecordIter("t", 0, raw)
		var m kafka.Message
		for range 1 << 16 {
			ok, err := it.next(&m)
			if err != nil {
				if !errors.Is(err, errCorrupt) {
					t.Fatalf("error %v does not wrap errCorrupt", err)
				}
				return
			}
			if !ok {
				return
			}
		}
	})
}

func codecName(c compress.Compression) string {
	if c == 0 {
		return "none"
	}
	return c.String()
}

// encodeSet is kafka-go's encoding of recs as one record set (a batch, or
// for v1 a message set, compressed into one wrapper when codec is set),
// without the size in front.
func encodeSet(t *testing.T, version int8, codec compress.Compression, recs []protocol.Record) []byte {
	t.Helper()
	rs := protocol.RecordSet{Version: version, Attributes: protocol.Attributes(codec), Records: protocol.NewRecordReader(recs...)}
	var buf bytes.Buffer
	_, err := rs.WriteTo(&buf)
	require.NoError(t, err)
	return buf.Bytes()[4:]
}

// rebase moves a batch v2 to base offset base (the CRC does not cover it).
func rebase(batch []byte, base int64) []byte {
	binary.BigEndian.PutUint64(batch, uint64(base))
	return batch
}

// decodeKafkaGo is kafka-go's reading of raw, as kafka.Messages, control
// batches left out.
func decodeKafkaGo(t *testing.T, raw []byte) []kafka.Message {
	t.Helper()
	var rs protocol.RecordSet
	framed := append(binary.BigEndian.AppendUint32(nil, uint32(len(raw))), raw...)
	_, err := rs.ReadFrom(bytes.NewReader(framed))
	require.NoError(t, err)
	var out []kafka.Message
	var walk func(rr protocol.RecordReader)
	walk = func(rr protocol.RecordReader) {
		switch r := rr.(type) {
		case *protocol.RecordStream:
			for _, sub := range r.Records {
				walk(sub)
			}
			return
		case *protocol.ControlBatch:
			return
		}
		for {
			rec, err := rr.ReadRecord()
			if err == io.EOF {
				return
			}
			require.NoError(t, err)
			m := kafka.Message{Offset: rec.Offset, Time: rec.Time}
			if rec.Key != nil {
				m.Key, err = protocol.ReadAll(rec.Key)
				require.NoError(t, err)
			}
			if rec.Value != nil {
				m.Value, err = protocol.ReadAll(rec.Value)
				require.NoError(t, err)
			}
			for _, h := range rec.Headers {
				m.Headers = append(m.Headers, kafka.Header{Key: h.Key, Value: h.Value})
			}
			out = append(out, m)
		}
	}
	walk(rs.Records)
	return out
}

func decodeAll(t *testing.T, raw []byte) []kafka.Message {
	t.Helper()
	it := newRecordIter("topic", 3, raw)
	var out []kafka.Message
	for {
		var m kafka.Message
		ok, err := it.next(&m)
		require.NoError(t, err)
		if !ok {
			return out
		}
		assert.Equal(t, "topic", m.Topic)
		assert.Equal(t, 3, m.Partition)
		out = append(out, m)
	}
}

func assertSameMessages(t *testing.T, raw []byte, want []kafka.Message) {
	t.Helper()
	got := decodeAll(t, raw)
	require.Len(t, got, len(want))
	for i := range want {
		w, g := want[i], got[i]
		assert.Equal(t, w.Offset, g.Offset, "offset %d", i)
		assert.True(t, w.Time.Equal(g.Time), "time %d: %v, want %v", i, g.Time, w.Time)
		// kafka-go reads an empty key or value as empty, and a null one
		// as nil: so must we (a nil value is a tombstone).
		assert.Equal(t, w.Key == nil, g.Key == nil, "key nil %d", i)
		assert.Equal(t, string(w.Key), string(g.Key), "key %d", i)
		assert.Equal(t, w.Value == nil, g.Value == nil, "value nil %d", i)
		assert.Equal(t, string(w.Value), string(g.Value), "value %d", i)
		require.Len(t, g.Headers, len(w.Headers), "headers %d", i)
		for j := range w.Headers {
			assert.Equal(t, w.Headers[j].Key, g.Headers[j].Key)
			assert.Equal(t, string(w.Headers[j].Value), string(g.Headers[j].Value))
		}
	}
}

// messageV0 is a message set entry of magic 0 at offset off.
func messageV0(off int64, key, value []byte) []byte {
	body := []byte{0, 0} // magic 0, attributes 0
	appendBytes := func(b []byte) {
		if b == nil {
			body = binary.BigEndian.AppendUint32(body, 0xffffffff)
			return
		}
		body = binary.BigEndian.AppendUint32(body, uint32(len(b)))
		body = append(body, b...)
	}
	appendBytes(key)
	appendBytes(value)
	out := binary.BigEndian.AppendUint64(nil, uint64(off))
	out = binary.BigEndian.AppendUint32(out, uint32(4+len(body)))
	out = binary.BigEndian.AppendUint32(out, crc32.ChecksumIEEE(body))
	return append(out, body...)
}

// controlBatch is a transaction's commit marker at offset off.
func controlBatch(off int64) []byte {
	r := kmsg.Record{Key: []byte{0, 0, 0, 1}, Value: []byte{0, 0, 0, 0, 0, 0}}
	r.Length = int32(len(r.AppendTo(nil)) - 1)
	b := kmsg.RecordBatch{
		FirstOffset: off, Magic: 2, Attributes: 0x30, // control, transactional
		ProducerID: 7, NumRecords: 1, Records: r.AppendTo(nil),
	}
	return sealBatch(b)
}

// sealBatch fills in a batch's length and CRC.
func sealBatch(b kmsg.RecordBatch) []byte {
	b.Length = int32(len(b.AppendTo(nil)) - 12)
	enc := b.AppendTo(nil)
	b.CRC = int32(crc32.Checksum(enc[21:], crc32.MakeTable(crc32.Castagnoli)))
	return b.AppendTo(nil)
}

func withAttributes(batch []byte, attrs int16) []byte {
	var b kmsg.RecordBatch
	if err := b.ReadFrom(batch); err != nil {
		panic(err)
	}
	b.Attributes = attrs
	return sealBatch(b)
}

func withRecordCount(batch []byte, n int32) []byte {
	var b kmsg.RecordBatch
	if err := b.ReadFrom(batch); err != nil {
		panic(err)
	}
	b.NumRecords = n
	return sealBatch(b)
}

// Record batches written by Kafka's own producer (the Java client, through
// its ConsoleProducer) with each codec decode as produced: keys, values,
// headers, and one message per line. Real Kafka only: it needs the jars.
func TestJavaProducerBatches(t *testing.T) {
	java, lib := needJavaKafka(t, "")
	codecs := []string{"none", "gzip", "snappy", "lz4", "zstd"}
	const n = 300
	topic := backlog(t, len(codecs), 0)
	for p, codec := range codecs {
		var lines strings.Builder
		for i := range n {
			// headers TAB key TAB value, as parse.headers and parse.key
			// read them.
			fmt.Fprintf(&lines, "codec:%s,i:%d\tk%d\t%d-%d\n", codec, i, i, p, i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		cmd := exec.CommandContext(ctx, java, append(javaArgs(t, lib), "org.apache.kafka.tools.ConsoleProducer",
			"--bootstrap-server", strings.Join(cluster.Brokers(), ","), "--topic", topic,
			"--property", "parse.key=true", "--property", "parse.headers=true",
			"--producer-property", "compression.type="+codec,
			"--producer-property", "linger.ms=50",
			"--producer-property", fmt.Sprintf("partitioner.class=%s", "org.apache.kafka.clients.producer.RoundRobinPartitioner"),
		)...)
		cmd.Stdin = strings.NewReader(lines.String())
		out, err := cmd.CombinedOutput()
		cancel()
		require.NoError(t, err, "ConsoleProducer: %s", out)
	}
	c := open(t, Config{Topic: topic, NumWorkers: 2})
	got := drain(t, c, len(codecs)*n, 500)
	seen := map[string]int{}
	for _, m := range got {
		require.Len(t, m.Headers, 2, "offset %d of partition %d", m.Offset, m.Partition)
		codec, i := string(m.Headers[0].Value), string(m.Headers[1].Value)
		assert.Equal(t, "k"+i, string(m.Key))
		assert.True(t, strings.HasSuffix(string(m.Value), "-"+i), "value %q of record %s", m.Value, i)
		assert.WithinDuration(t, time.Now(), m.Time, 5*time.Minute)
		seen[codec]++
	}
	for _, codec := range codecs {
		assert.Equal(t, n, seen[codec], codec)
	}
}

// BenchmarkDecode: one partition's part of a fetch response, 1 MiB of
// 100 B records in batches of 4,096 (as kafkatest produces them), decoded
// by our decoder into kafka.Messages, and by kafka-go's (what the worker
// used before: its RecordSet, then each record's key and value read into
// fresh memory).
func BenchmarkDecode(b *testing.B) {
	value := bytes.Repeat([]byte("x"), 100)
	var raw []byte
	var n int
	for len(raw) < 1<<20 {
		recs := make([]protocol.Record, 4096)
		for i := range recs {
			recs[i] = protocol.Record{Offset: int64(i), Time: time.UnixMilli(1_700_000_000_000), Value: protocol.NewBytes(value)}
		}
		rs := protocol.RecordSet{Version: 2, Records: protocol.NewRecordReader(recs...)}
		var buf bytes.Buffer
		if _, err := rs.WriteTo(&buf); err != nil {
			b.Fatal(err)
		}
		raw = append(raw, rebase(buf.Bytes()[4:], int64(n))...)
		n += len(recs)
	}
	b.Run("ours", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		run := make([]kafka.Message, n)
		for b.Loop() {
			it := newRecordIter("t", 0, raw)
			for i := 0; ; i++ {
				ok, err := it.next(&run[i%len(run)])
				if err != nil {
					b.Fatal(err)
				}
				if !ok {
					break
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
	})
	b.Run("kafka-go", func(b *testing.B) {
		b.SetBytes(int64(len(raw)))
		b.ReportAllocs()
		framed := append(binary.BigEndian.AppendUint32(nil, uint32(len(raw))), raw...)
		for b.Loop() {
			var rs protocol.RecordSet
			if _, err := rs.ReadFrom(bytes.NewReader(framed)); err != nil {
				b.Fatal(err)
			}
			for {
				rec, err := rs.Records.ReadRecord()
				if err == io.EOF {
					break
				}
				if err != nil {
					b.Fatal(err)
				}
				v, _ := protocol.ReadAll(rec.Value)
				_ = v
				rec.Value.Close()
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/msg")
	})
}
