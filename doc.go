// Package multiconsumer consumes a Kafka topic in parallel: worker
// goroutines, each fetching its own share of the topic's partitions, feed
// one bounded queue. The caller takes messages from it in one of two ways:
//
//   - pull: GetMessages in a loop, a range over Messages, or Iter's
//     channel; the caller is done with a message when it comes back for
//     more;
//   - Process: handlers run in parallel, far beyond the partition count,
//     ordered by key, by partition or not at all, with retries and a
//     dead-letter hook (ProcessConfig); a message is done when its handler
//     completes, and commits hold at the lowest incomplete offset.
//
// Offsets are committed to a consumer group (auto-commit every N messages
// or T time, or Commit), and with Config.JoinGroup the consumer is a member
// of the group: replicas on many machines share the partitions. It is
// kafka-python's MultiProcessConsumer re-imagined in Go on
// github.com/segmentio/kafka-go.
//
// # Delivery and commit
//
// A message is delivered when GetMessages returns it, Messages yields it or
// the caller receives it from Iter; Offsets moves then. It is consumed once
// the caller comes back for more: the next GetMessages call (even with a
// done ctx), the next step of a Messages loop, the next receive from Iter,
// or a Commit. Commits only ever cover consumed messages, so a
// process that crashes, or returns with an error, while handling a message
// finds it again when it restarts: delivery is at least once, never at most
// once. Close commits what was consumed, not what the caller still holds; to
// shut down cleanly, cancel the loop's ctx between batches, so that its last
// GetMessages call consumes the batch it handled, then Close. Within a partition messages arrive in
// log order, each once in a run without seeks; across partitions there is no
// order. "Came back" is one mark for the whole consumer, so let one
// goroutine take the messages, or commit by hand (see MultiConsumer).
//
// Auto-commit (unless Config.ManualCommit) stores the consumed offsets in
// the group after AutoCommitEveryN consumed messages or AutoCommitEveryT,
// whichever comes first; either resets the other, and so does Commit. A
// failed auto-commit is logged and retried with backoff; the next commit
// covers its offsets anyway. Close makes a final commit. A dropped
// connection is retried within the request timeout.
//
// Without Config.JoinGroup, commits use the group's offset storage without
// joining the group: two consumers with the same Group and partitions both
// read everything, and the last commit wins.
//
// # Group mode
//
// With Config.JoinGroup the consumer is a member of its group, through
// Kafka's group protocol: the partitions are spread over the members and
// move when members join, leave or die. With the default cooperative-sticky
// assignor only the partitions that move pause. A member giving a
// partition up waits (up to RebalanceTimeout) for the caller to come back
// for what it holds of it, commits what was consumed, calls OnRevoked, and
// delivers nothing of it after that. A commit is built under the member's
// lease (member id and generation) and sent under it or not at all: a
// member that lost its partitions cannot commit over their new owner, even
// with a retry after it rejoined. A member that has not heard from its
// coordinator for SessionTimeout delivers nothing new and starts no
// handler until it does (see Stats.Suspended). Config.GroupProtocol picks
// Kafka's classic group protocol (the default) or KIP-848's consumer
// protocol ("consumer", Kafka 4.0+), where the broker computes the
// assignment and a commit carries the member epoch; the rest holds under
// both.
//
// # Share groups
//
// With Config.ShareGroup the consumer is a member of a share group
// (KIP-932, Kafka 4.2+): the broker hands out records, not partitions, each
// under an acquisition lock, so any number of members read one partition
// and a service scales past its partition count. The same calls work:
// coming back for more (GetMessages, Messages, Iter) accepts what was
// delivered before; a Process handler's nil accepts its record, an error
// retries it here (RetryBackoff, MaxAttempts), and a record given up on is
// accepted when OnGiveUp succeeds and rejected (archived by Kafka)
// otherwise, while Process goes on. Acknowledge settles records one by one
// (accept, release, reject), Commit accepts everything delivered and
// reports what the broker refused, and Close releases what the member
// acquired and did not accept, so that the others get it at once. A
// handler that runs longer than the lock keeps its record: the member
// renews the lock (KIP-1222) at half its duration. DeliveryCount says how
// often the group has handed a record out. Order: ByKey and ByPartition
// hold within one member only; across members there is none. A member
// acquires no more than its queue holds (QueueSize), so that the members
// of a partition each get work. Seek and Pending do not apply (the broker
// keeps the group's place).
//
// # Partitions and metadata
//
// With Config.Partitions nil, partitions added to the topic are found
// within MetadataMaxAge and consumed from their first offset (or the group's
// committed offset, when it has one). When a fetch
// fails (a leader moved, a partition is gone) the consumer reads the
// metadata again at once. A deleted topic stops the consumer: GetMessages
// returns ErrTopicDeleted, Messages yields it, Iter's channel closes, Err
// says why.
//
// # Memory
//
// The queue holds at most Config.QueueSize messages. Besides it, each worker
// holds two fetch responses (at most 16 MiB each, 1 MiB a partition) per
// leader broker of its partitions: the one it is queueing, and the next,
// fetched meanwhile; and a GetMessages call what it has taken so far. A
// partition's first fetches ask for 32 KiB, and the next ones for four
// times as much, up to 1 MiB, while it has a backlog. A message's Key and
// Value are slices of its fetch response (of the decompressed batch, when
// compressed), not copies: a message kept for long keeps that response in
// memory, so copy the bytes of the few messages you keep.
//
// # Transactions
//
// Fetches read uncommitted, as kafka-go's Reader does by default: records of
// aborted transactions are delivered; transaction markers are not.
package multiconsumer
