package multiconsumer

import (
	"errors"
	"fmt"
	"strings"

	"github.com/segmentio/kafka-go"
)

// The errors a caller branches on with errors.Is. Every error this package
// returns starts with "multiconsumer: ".
var (
	// ErrClosed is returned by every call made after Close.
	ErrClosed = errors.New("multiconsumer: consumer is closed")

	// ErrNoGroup is returned by Commit when Config.Group is "": there is
	// no offset storage to commit to.
	ErrNoGroup = errors.New("multiconsumer: no consumer group configured, nothing to commit to")

	// ErrBusy is returned by GetMessages, and by Process, and yielded by
	// Messages, while Process runs, and returned by Process while an Iter
	// channel is open or a Messages loop runs: one way of taking messages
	// at a time.
	ErrBusy = errors.New("multiconsumer: Process is running (or an Iter channel is open, or a Messages loop runs): messages are taken one way at a time")

	// ErrTopicDeleted is returned by GetMessages (and ends Iter) once the
	// consumer has confirmed that its topic no longer exists. It is final:
	// the workers stop.
	ErrTopicDeleted = errors.New("multiconsumer: topic deleted")

	// ErrUnknownPartition is wrapped by errors about a partition the topic
	// lacks or the consumer does not own.
	ErrUnknownPartition = errors.New("multiconsumer: unknown partition")
)

// errNilContext is returned for a nil context, instead of the panic it
// would cause deeper down.
var errNilContext = &ArgError{Arg: "ctx", Reason: "nil context"}

// ArgError reports an invalid argument to a method: a nil context, a
// negative count or timeout, an unknown whence, a nil handler. Nothing was
// done.
type ArgError struct {
	Method string // "GetMessages", "Seek", "Process"; "" for a nil ctx, which every method refuses
	Arg    string // the argument's name
	Value  any    // its value
	Reason string
}

// Error names the method, the argument, its value and what is wrong.
func (e *ArgError) Error() string {
	if e.Method == "" {
		return fmt.Sprintf("multiconsumer: %s: %s", e.Arg, e.Reason)
	}
	return fmt.Sprintf("multiconsumer: %s: invalid %s (%v): %s", e.Method, e.Arg, e.Value, e.Reason)
}

// PartitionError is an error about one partition of the topic.
type PartitionError struct {
	Topic     string
	Partition int
	Err       error
}

// Error names the topic and partition, then the cause.
func (e *PartitionError) Error() string {
	return fmt.Sprintf("multiconsumer: topic %q partition %d: %s", e.Topic, e.Partition,
		strings.TrimPrefix(e.Err.Error(), "multiconsumer: "))
}

// Unwrap returns the cause.
func (e *PartitionError) Unwrap() error { return e.Err }

// OffsetRangeError is returned by Seek for a target offset outside the
// partition's log, [First, Last] (Last is the offset the next produced
// message will get). It unwraps to kafka.OffsetOutOfRange.
type OffsetRangeError struct {
	Topic       string
	Partition   int
	Offset      int64
	First, Last int64
}

// Error names the topic, the partition, the target and the log's bounds.
func (e *OffsetRangeError) Error() string {
	return fmt.Sprintf("multiconsumer: seek topic %q partition %d to offset %d: outside the log [%d, %d]",
		e.Topic, e.Partition, e.Offset, e.First, e.Last)
}

// Unwrap returns kafka.OffsetOutOfRange.
func (e *OffsetRangeError) Unwrap() error { return kafka.OffsetOutOfRange }
