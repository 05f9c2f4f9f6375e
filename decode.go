package multiconsumer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"time"

	"github.com/klauspost/compress/snappy"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
)

// This file decodes the records of one partition in a fetch response (Fetch
// and ShareFetch) over the response's own bytes: record batches v2 (magic
// 2, all Kafka 0.11+ writes) and the message sets of magic 0 and 1 that
// older brokers may still serve, with kafka-go's compression codecs. Keys
// and values are slices of the response (or of a batch's decompressed
// records): a message costs no copy and no allocation of its own, and a
// message kept keeps that buffer alive.

// errCorrupt is wrapped by the errors of bytes that are not record batches.
var errCorrupt = errors.New("corrupt record batch")

// castagnoli is the CRC-32C table of record batches v2; message sets v0 and
// v1 use IEEE.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Record batch v2 attributes.
const (
	attrCodec         = 0x07
	attrLogAppendTime = 0x08
	attrControl       = 0x20
)

// recordIter reads the records of one partition's record batches, in
// order. Its zero value with raw, topic and partition set is ready; next
// returns the records one by one.
type recordIter struct {
	topic     string
	partition int
	raw       []byte // batches not opened yet

	// keep, when set, says which offsets to return: the others are walked
	// past without a message built (a share group's unacquired records).
	keep func(offset int64) bool

	// seen is the last offset walked past, records or not: a control batch
	// (a transaction's marker) and the offsets a batch covers beyond its
	// records (compaction) count once the whole batch is read. -1: none.
	seen int64

	// The batch v2 being read.
	recs    []byte // its records not read yet (decompressed)
	left    int32  // records left in it
	base    int64
	firstTS int64
	maxTS   int64
	logTime bool  // timestamps are the broker's: every record's is maxTS
	last    int64 // base + lastOffsetDelta

	// Messages of a v0/v1 message set decoded ahead (a compressed wrapper
	// holds many), served before the next entry of raw.
	old []kafka.Message
}

func newRecordIter(topic string, partition int, raw []byte) recordIter {
	return recordIter{topic: topic, partition: partition, raw: raw, seen: -1}
}

// next fills m with the next record and reports whether there was one.
// Control batches are skipped. A batch cut short at the end of raw (a
// response's size limit) ends the records without an error; the batch
// comes whole in the next response. m's HighWaterMark is left as it was.
func (it *recordIter) next(m *kafka.Message) (bool, error) {
	for {
		if it.left > 0 {
			kept, err := it.record(m)
			if err != nil || kept {
				return err == nil, err
			}
			continue
		}
		if it.recs != nil {
			// The batch is read: the offsets it covers are behind.
			it.seen = max(it.seen, it.last)
			it.recs = nil
		}
		if len(it.old) > 0 {
			old := &it.old[0]
			it.old = it.old[1:]
			it.seen = max(it.seen, old.Offset)
			if it.keep != nil && !it.keep(old.Offset) {
				continue
			}
			hwm := m.HighWaterMark
			*m = *old
			m.HighWaterMark = hwm
			return true, nil
		}
		if ok, err := it.open(); !ok || err != nil {
			return false, err
		}
	}
}

// open opens the next batch of raw, and reports whether there was a whole
// one.
func (it *recordIter) open() (bool, error) {
	raw := it.raw
	// baseOffset int64, length int32, then (v2) partitionLeaderEpoch int32
	// or (v0/v1) crc int32, then magic int8: the magic is at byte 16.
	if len(raw) < 17 {
		it.raw = nil
		return false, nil // a cut header
	}
	size := int64(int32(binary.BigEndian.Uint32(raw[8:12])))
	if size < 0 {
		return false, fmt.Errorf("%w: batch length %d at offset %d", errCorrupt, size, int64(binary.BigEndian.Uint64(raw)))
	}
	if int64(len(raw)) < 12+size {
		it.raw = nil
		return false, nil // cut: it comes whole in the next response
	}
	batch := raw[:12+size]
	it.raw = raw[12+size:]
	switch magic := int8(raw[16]); magic {
	case 2:
		return true, it.openV2(batch)
	case 0, 1:
		return true, it.openOld(batch)
	default:
		return false, fmt.Errorf("%w: magic %d at offset %d", errCorrupt, magic, int64(binary.BigEndian.Uint64(raw)))
	}
}

// openV2 opens a record batch v2:
//
//	baseOffset int64, length int32, partitionLeaderEpoch int32, magic int8,
//	crc uint32 (CRC-32C of the rest), attributes int16,
//	lastOffsetDelta int32, firstTimestamp int64, maxTimestamp int64,
//	producerId int64, producerEpoch int16, baseSequence int32,
//	records count int32, records
func (it *recordIter) openV2(b []byte) error {
	const header = 61
	base := int64(binary.BigEndian.Uint64(b))
	if len(b) < header {
		return fmt.Errorf("%w: batch at offset %d: %d bytes, shorter than its header", errCorrupt, base, len(b))
	}
	if crc := binary.BigEndian.Uint32(b[17:21]); crc32.Checksum(b[21:], castagnoli) != crc {
		return fmt.Errorf("%w: batch at offset %d: CRC mismatch", errCorrupt, base)
	}
	attrs := binary.BigEndian.Uint16(b[21:23])
	lastDelta := int32(binary.BigEndian.Uint32(b[23:27]))
	n := int32(binary.BigEndian.Uint32(b[57:61]))
	if lastDelta < 0 || n < 0 {
		return fmt.Errorf("%w: batch at offset %d: last offset delta %d, %d records", errCorrupt, base, lastDelta, n)
	}
	it.base, it.last = base, base+int64(lastDelta)
	if attrs&attrControl != 0 {
		it.seen = max(it.seen, it.last) // a transaction's marker: no message
		return nil
	}
	recs := b[header:]
	if codec := attrs & attrCodec; codec != 0 {
		var err error
		if recs, err = decompress(compress.Compression(codec), recs); err != nil {
			return fmt.Errorf("%w: batch at offset %d: %w", errCorrupt, base, err)
		}
	}
	it.firstTS = int64(binary.BigEndian.Uint64(b[27:35]))
	it.maxTS = int64(binary.BigEndian.Uint64(b[35:43]))
	it.logTime = attrs&attrLogAppendTime != 0
	it.recs, it.left = recs, n
	if n == 0 {
		// Compaction keeps a batch whose records are all gone for an
		// idempotent producer's sake: its offsets are behind.
		it.seen = max(it.seen, it.last)
	}
	return nil
}

// record decodes the next record of the batch v2 being read into m, and
// reports whether it was kept (m is left as it was if not):
//
//	length varint, attributes int8, timestampDelta varlong,
//	offsetDelta varint, key (varint length, -1 null), value (likewise),
//	headers count varint, each header: key (varint length), value
func (it *recordIter) record(m *kafka.Message) (bool, error) {
	it.left--
	length, n := binary.Varint(it.recs)
	if n <= 0 || length < 0 || int64(len(it.recs)-n) < length {
		return false, it.bad("length")
	}
	r := it.recs[n : n+int(length)]
	it.recs = it.recs[n+int(length):]
	if len(r) < 1 {
		return false, it.bad("attributes")
	}
	r = r[1:] // attributes: unused
	tsDelta, n := binary.Varint(r)
	if n <= 0 {
		return false, it.bad("timestamp")
	}
	r = r[n:]
	offDelta, n := binary.Varint(r)
	if n <= 0 {
		return false, it.bad("offset")
	}
	r = r[n:]
	off := it.base + offDelta
	it.seen = max(it.seen, off)
	if it.keep != nil && !it.keep(off) {
		return false, nil
	}
	var key, value []byte
	var ok bool
	if key, r, ok = varBytes(r); !ok {
		return false, it.bad("key")
	}
	if value, r, ok = varBytes(r); !ok {
		return false, it.bad("value")
	}
	nh, n := binary.Varint(r)
	if n <= 0 || nh < 0 || nh > int64(len(r)) {
		return false, it.bad("headers")
	}
	r = r[n:]
	var headers []kafka.Header
	if nh > 0 {
		headers = make([]kafka.Header, nh)
		for i := range headers {
			var hk, hv []byte
			if hk, r, ok = varBytes(r); !ok || hk == nil {
				return false, it.bad("header key")
			}
			if hv, r, ok = varBytes(r); !ok {
				return false, it.bad("header value")
			}
			headers[i] = kafka.Header{Key: string(hk), Value: hv}
		}
	}
	ts := it.firstTS + tsDelta
	if it.logTime {
		ts = it.maxTS
	}
	*m = kafka.Message{
		Topic: it.topic, Partition: it.partition, Offset: off, HighWaterMark: m.HighWaterMark,
		Key: key, Value: value, Headers: headers, Time: unixMilli(ts),
	}
	return true, nil
}

func (it *recordIter) bad(field string) error {
	it.left, it.recs, it.raw = 0, nil, nil
	return fmt.Errorf("%w: a record's %s in the batch at offset %d", errCorrupt, field, it.base)
}

// varBytes reads a varint length and that many bytes: nil for -1, and an
// empty, non-nil slice for 0 (a nil value is a tombstone).
func varBytes(b []byte) (v, rest []byte, ok bool) {
	l, n := binary.Varint(b)
	if n <= 0 || l < -1 || l > int64(len(b)-n) {
		return nil, nil, false
	}
	switch l {
	case -1:
		return nil, b[n:], true
	case 0:
		return empty, b[n:], true
	}
	end := n + int(l)
	return b[n:end:end], b[end:], true
}

// unixMilli is kafka-go's reading of a timestamp in milliseconds.
func unixMilli(ms int64) time.Time {
	return time.Unix(ms/1000, (ms%1000)*int64(time.Millisecond))
}

// openOld decodes a message set entry of magic 0 or 1 (Kafka before 0.11)
// into it.old:
//
//	offset int64, size int32, crc uint32 (IEEE of the rest), magic int8,
//	attributes int8, timestamp int64 (magic 1 only), key (int32 length,
//	-1 null), value (likewise)
//
// A compressed entry (a wrapper) holds a message set in its value: under
// magic 1 the inner offsets are relative, the wrapper's being the last
// one's absolute offset.
func (it *recordIter) openOld(b []byte) error {
	off, attrs, ts, key, value, err := oldMessage(b)
	if err != nil {
		return err
	}
	codec := attrs & attrCodec
	if codec == 0 {
		it.old = append(it.old[:0], kafka.Message{
			Topic: it.topic, Partition: it.partition, Offset: off,
			Key: key, Value: value, Time: unixMilli(ts),
		})
		return nil
	}
	it.old = it.old[:0]
	if value == nil {
		it.seen = max(it.seen, off)
		return nil
	}
	inner, err := decompress(compress.Compression(codec), value)
	if err != nil {
		return fmt.Errorf("%w: message at offset %d: %w", errCorrupt, off, err)
	}
	for len(inner) >= 12 {
		size := int64(int32(binary.BigEndian.Uint32(inner[8:12])))
		if size < 0 || int64(len(inner)) < 12+size {
			break // kafka-go stops at a cut inner message too
		}
		ioff, _, its, ikey, ivalue, err := oldMessage(inner[:12+size])
		if err != nil {
			return err
		}
		inner = inner[12+size:]
		it.old = append(it.old, kafka.Message{
			Topic: it.topic, Partition: it.partition, Offset: ioff,
			Key: ikey, Value: ivalue, Time: unixMilli(its),
		})
	}
	if off != 0 {
		last := int64(len(it.old)) - 1
		for i := range it.old {
			it.old[i].Offset = off - (last - it.old[i].Offset)
		}
	}
	return nil
}

// oldMessage decodes one message of magic 0 or 1, b being the whole entry.
func oldMessage(b []byte) (off int64, attrs int8, ts int64, key, value []byte, err error) {
	off = int64(binary.BigEndian.Uint64(b))
	if len(b) < 18 {
		return off, 0, 0, nil, nil, fmt.Errorf("%w: message at offset %d: %d bytes", errCorrupt, off, len(b))
	}
	if crc := binary.BigEndian.Uint32(b[12:16]); crc32.ChecksumIEEE(b[16:]) != crc {
		return off, 0, 0, nil, nil, fmt.Errorf("%w: message at offset %d: CRC mismatch", errCorrupt, off)
	}
	magic, attrs := b[16], int8(b[17])
	r := b[18:]
	if magic == 1 {
		if len(r) < 8 {
			return off, 0, 0, nil, nil, fmt.Errorf("%w: message at offset %d: timestamp", errCorrupt, off)
		}
		ts, r = int64(binary.BigEndian.Uint64(r)), r[8:]
	}
	var ok bool
	if key, r, ok = int32Bytes(r); !ok {
		return off, 0, 0, nil, nil, fmt.Errorf("%w: message at offset %d: key", errCorrupt, off)
	}
	if value, _, ok = int32Bytes(r); !ok {
		return off, 0, 0, nil, nil, fmt.Errorf("%w: message at offset %d: value", errCorrupt, off)
	}
	return off, attrs, ts, key, value, nil
}

// int32Bytes reads an int32 length and that many bytes, as varBytes does.
func int32Bytes(b []byte) (v, rest []byte, ok bool) {
	if len(b) < 4 {
		return nil, nil, false
	}
	l := int64(int32(binary.BigEndian.Uint32(b)))
	if l < -1 || l > int64(len(b)-4) {
		return nil, nil, false
	}
	switch l {
	case -1:
		return nil, b[4:], true
	case 0:
		return empty, b[4:], true
	}
	end := 4 + int(l)
	return b[4:end:end], b[end:], true
}

// decodeBatches decodes the records of raw (record batches of topic's
// partition) whose offsets keep accepts, calling each with the message;
// the others cost no message. Control batches (transaction markers) are
// skipped. A batch cut at the end of raw (a response's size limit) ends the
// decoding without an error.
func decodeBatches(topic string, partition int, raw []byte, keep func(offset int64) bool, each func(m kafka.Message)) error {
	it := newRecordIter(topic, partition, raw)
	it.keep = keep
	var m kafka.Message
	for {
		ok, err := it.next(&m)
		if err != nil || !ok {
			return err
		}
		each(m)
	}
}

// decompress returns the decompressed records of a batch.
func decompress(c compress.Compression, src []byte) ([]byte, error) {
	if c == compress.Snappy {
		return unsnappy(src)
	}
	codec := c.Codec()
	if codec == nil {
		return nil, fmt.Errorf("unknown compression codec %d", c)
	}
	r := codec.NewReader(bytes.NewReader(src))
	defer r.Close()
	// Records compress a few times over: start there, not at io.ReadAll's
	// 512 bytes doubling (a fetch's batches are up to a megabyte).
	out := make([]byte, 0, max(256, 4*len(src)))
	for {
		if len(out) == cap(out) {
			out = append(out, 0)[:len(out)] // grow
		}
		n, err := r.Read(out[len(out):cap(out)])
		out = out[:len(out)+n]
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// xerialMagic starts snappy data in xerial's framing (the Java client's
// snappy-java writes it): then 8 bytes of versions, then blocks, each
// after its size (4 bytes, big-endian). Without it, the data is one
// snappy block.
var xerialMagic = []byte{0x82, 'S', 'N', 'A', 'P', 'P', 'Y', 0}

// maxSnappyRatio bounds what a snappy block may claim to decode to, for
// its size: a copy of at most 64 bytes takes at least 3 bytes, so real
// blocks stay under 22x. A claim past it is corrupt input, refused
// before anything is allocated for it.
const maxSnappyRatio = 32

// unsnappy decodes snappy data (franz-go's default codec) over src, into
// one buffer of the decoded size: no reader and no buffers of its own, as
// a codec's reader has, which cost several allocations a batch (most
// batches are small ones, at a trickle).
func unsnappy(src []byte) ([]byte, error) {
	if len(src) < 16 || !bytes.Equal(src[:8], xerialMagic) {
		n, err := snappyLen(src)
		if err != nil {
			return nil, err
		}
		return snappy.Decode(make([]byte, n), src)
	}
	total := 0
	for rest := src[16:]; len(rest) > 0; {
		block, next, err := xerialBlock(rest)
		if err != nil {
			return nil, err
		}
		n, err := snappyLen(block)
		if err != nil {
			return nil, err
		}
		total += n
		rest = next
	}
	out := make([]byte, 0, total)
	for rest := src[16:]; len(rest) > 0; {
		block, next, _ := xerialBlock(rest)
		n, _ := snappyLen(block)
		if _, err := snappy.Decode(out[len(out):len(out)+n], block); err != nil {
			return nil, err
		}
		out = out[:len(out)+n]
		rest = next
	}
	return out, nil
}

// xerialBlock splits the next block of xerial framing off src.
func xerialBlock(src []byte) (block, rest []byte, err error) {
	if len(src) < 4 {
		return nil, nil, errors.New("snappy: xerial block size cut short")
	}
	n := binary.BigEndian.Uint32(src)
	if uint64(n) > uint64(len(src)-4) {
		return nil, nil, fmt.Errorf("snappy: xerial block of %d bytes, %d left", n, len(src)-4)
	}
	return src[4 : 4+n], src[4+n:], nil
}

// snappyLen returns the size block decodes to, checked against its own.
func snappyLen(block []byte) (int, error) {
	n, err := snappy.DecodedLen(block)
	if err != nil {
		return 0, fmt.Errorf("snappy: %w", err)
	}
	if n > maxSnappyRatio*len(block)+64 {
		return 0, fmt.Errorf("snappy: a block of %d bytes claims %d", len(block), n)
	}
	return n, nil
}
