package multiconsumer

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestDeliversEveryMessageOnceInOrder(t *testing.T) {
	t.Parallel()
	const partitions, per = 8, 500
	topic := backlog(t, partitions, per)
	c := open(t, Config{Topic: topic, NumWorkers: 3, QueueSize: 100})
	assert.Equal(t, "<MultiConsumer group=, topic="+topic+", consumers=3>", c.String())

	msgs := drain(t, c, partitions*per, 64)
	counts := checkOrder(t, msgs, zeros(partitions))
	for p := range partitions {
		assert.Equal(t, per, counts[p], "partition %d", p)
		assert.Equal(t, int64(per), c.Offsets()[p], "offset of partition %d", p)
	}
	require.NoError(t, c.Close())
}
