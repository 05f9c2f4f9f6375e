package multiconsumer

import (
	"errors"
	"fmt"
)

// ErrClosed is returned by every call made after Close.
var ErrClosed = errors.New("multiconsumer: consumer is closed")

// ErrNoGroup is returned by Commit when Config.Group is "": there is no
// offset storage to commit to.
var ErrNoGroup = errors.New("multiconsumer: no consumer group configured, nothing to commit to")

// errNilContext is returned for a nil context, instead of the panic it
// would cause deeper down.
var errNilContext = errors.New("multiconsumer: nil context")

// ErrUnknownPartition is wrapped by errors about a partition the topic lacks
// or the consumer does not own.
var ErrUnknownPartition = errors.New("unknown partition")

// PartitionError is an error about one partition of the topic.
type PartitionError struct {
	Topic     string
	Partition int
	Err       error
}

// Error names the topic and partition, then the cause.
func (e *PartitionError) Error() string {
	return fmt.Sprintf("multiconsumer: topic %q partition %d: %v", e.Topic, e.Partition, e.Err)
}

// Unwrap returns the cause.
func (e *PartitionError) Unwrap() error { return e.Err }

// OffsetRangeError is returned by Seek for a target offset outside the
// partition's log, [First, Last] (Last is the offset the next produced
// message will get).
type OffsetRangeError struct {
	Partition   int
	Offset      int64
	First, Last int64
}

// Error names the partition, the target and the log's bounds.
func (e *OffsetRangeError) Error() string {
	return fmt.Sprintf("multiconsumer: seek partition %d to offset %d: outside the log [%d, %d]",
		e.Partition, e.Offset, e.First, e.Last)
}
