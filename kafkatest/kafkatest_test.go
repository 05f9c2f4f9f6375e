package kafkatest_test

import (
	"context"
	"testing"
	"time"

	"github.com/multiconsumer/multiconsumer/kafkatest"
	"github.com/segmentio/kafka-go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestClusterRoundTrip(t *testing.T) {
	c := kafkatest.Run(t)
	topic := c.Topic(t, 3)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, c.ProduceN(ctx, topic, 3, 10))

	res, err := c.Client().Fetch(ctx, &kafka.FetchRequest{Topic: topic, Partition: 2, Offset: 0, MaxBytes: 1 << 20, MaxWait: 100 * time.Millisecond})
	require.NoError(t, err)
	require.NoError(t, res.Error)
	assert.Equal(t, int64(10), res.HighWatermark)
	rec, err := res.Records.ReadRecord()
	require.NoError(t, err)
	v, err := kafka.ReadAll(rec.Value)
	require.NoError(t, err)
	assert.Equal(t, "2-0", string(v))

	require.NoError(t, c.DeleteRecords(ctx, topic, 2, 4))
	offs, err := c.Client().ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: {kafka.FirstOffsetOf(2)}}})
	require.NoError(t, err)
	assert.Equal(t, int64(4), offs.Topics[topic][0].FirstOffset)
}

func TestConnectNeedsBrokers(t *testing.T) {
	_, err := kafkatest.Connect()
	assert.Error(t, err)
}
