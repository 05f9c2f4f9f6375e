package multiconsumer

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/compress"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// This file decodes the record batches of a response that kafka-go does not
// decode for us (ShareFetch): Kafka's record batch format v2 (magic 2, the
// only one Kafka 4 writes), with kmsg's codec for the batch and record
// framing and kafka-go's compression codecs.

// errCorrupt is wrapped by the errors of bytes that are not record batches.
var errCorrupt = errors.New("corrupt record batch")

// decodeBatches decodes the records of raw (record batches of topic's
// partition) whose offsets keep accepts, calling each with the message and
// keep's answer. Control batches (transaction markers) are skipped. A batch
// cut at the end of raw (a response's size limit) ends the decoding
// without an error.
func decodeBatches(topic string, partition int, raw []byte, keep func(offset int64) bool, each func(m kafka.Message)) error {
	for len(raw) > 0 {
		if len(raw) < 12 {
			return nil // a cut batch header
		}
		size := int(int32(binary.BigEndian.Uint32(raw[8:12])))
		if size < 49 { // the batch header after the length field
			return fmt.Errorf("%w: batch length %d", errCorrupt, size)
		}
		if len(raw) < 12+size {
			return nil // cut: the rest comes in the next response
		}
		var b kmsg.RecordBatch
		if err := b.ReadFrom(raw[:12+size]); err != nil {
			return fmt.Errorf("%w: %w", errCorrupt, err)
		}
		raw = raw[12+size:]
		if b.Magic != 2 {
			return fmt.Errorf("%w: magic %d (only record batches v2 are read)", errCorrupt, b.Magic)
		}
		if b.Attributes&0x20 != 0 {
			continue // a control batch: a transaction's marker
		}
		recs := b.Records
		if codec := b.Attributes & 0x7; codec != 0 {
			var err error
			if recs, err = decompress(compress.Compression(codec), recs); err != nil {
				return fmt.Errorf("%w: offset %d: %w", errCorrupt, b.FirstOffset, err)
			}
		}
		for i := int32(0); i < b.NumRecords; i++ {
			length, n := binary.Varint(recs)
			if n <= 0 || length < 0 || int64(len(recs)-n) < length {
				return fmt.Errorf("%w: record %d of the batch at offset %d", errCorrupt, i, b.FirstOffset)
			}
			var r kmsg.Record
			if err := r.ReadFrom(recs[:n+int(length)]); err != nil {
				return fmt.Errorf("%w: record %d of the batch at offset %d: %w", errCorrupt, i, b.FirstOffset, err)
			}
			recs = recs[n+int(length):]
			off := b.FirstOffset + int64(r.OffsetDelta)
			if !keep(off) {
				continue
			}
			ts := b.FirstTimestamp + r.TimestampDelta64
			m := kafka.Message{
				Topic: topic, Partition: partition, Offset: off,
				Key: r.Key, Value: r.Value, Time: time.UnixMilli(ts),
			}
			if len(r.Headers) > 0 {
				m.Headers = make([]kafka.Header, len(r.Headers), len(r.Headers)+1)
				for j, h := range r.Headers {
					m.Headers[j] = kafka.Header{Key: h.Key, Value: h.Value}
				}
			}
			each(m)
		}
	}
	return nil
}

// decompress returns the decompressed records of a batch.
func decompress(c compress.Compression, src []byte) ([]byte, error) {
	codec := c.Codec()
	if codec == nil {
		return nil, fmt.Errorf("unknown compression codec %d", c)
	}
	r := codec.NewReader(bytes.NewReader(src))
	defer r.Close()
	return io.ReadAll(r)
}
