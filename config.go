package multiconsumer

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// The group protocols (Config.GroupProtocol).
const (
	GroupProtocolClassic  = "classic"
	GroupProtocolConsumer = "consumer"
)

// Defaults of the optional Config fields, used where a field is zero.
const (
	DefaultNumWorkers       = 1
	DefaultQueueSize        = 1024
	DefaultAutoCommitEveryN = 100
	DefaultAutoCommitEveryT = 5 * time.Second
	DefaultMaxBackoff       = 60 * time.Second
	DefaultTimeout          = 10 * time.Second // of GetMessages
	DefaultMetadataMaxAge   = 5 * time.Minute

	// Group mode (Config.JoinGroup), as the Java client's defaults.
	DefaultSessionTimeout    = 45 * time.Second
	DefaultRebalanceTimeout  = 60 * time.Second
	DefaultHeartbeatInterval = 3 * time.Second
)

// Floors and ceiling of the group settings (see withDefaults).
const (
	// minSessionTimeout: a session must outlast a few heartbeats (at
	// least minHeartbeatInterval each: with SessionTimeout 100ms the
	// default interval is 33ms) and a pause of the process (a GC, a
	// scheduler hiccup), or the member is dropped while it works. Kafka's
	// brokers refuse anything under 6s unless configured otherwise; 100ms
	// is below what any broker set up for production accepts, and still
	// lets a test broker with a lowered group.min.session.timeout.ms be
	// used.
	minSessionTimeout = 100 * time.Millisecond
	// minRebalanceTimeout: in a rebalance every member commits what it
	// gives up and rejoins, a few round trips each (more on a loaded
	// broker), and the caller gets this long to come back for the
	// messages of revoked partitions. Below a second members miss the
	// rebalance they started and it never settles; a short value gains
	// nothing either: a rebalance ends as soon as every member has
	// rejoined, not when the timeout is up.
	minRebalanceTimeout = time.Second
	// minHeartbeatInterval: each heartbeat is a round trip to the
	// coordinator; 100 a second per member is already far more than a
	// session needs.
	minHeartbeatInterval = 10 * time.Millisecond
	// maxGroupTimeout: the protocol carries the session and rebalance
	// timeouts as int32 milliseconds; longer would wrap around.
	maxGroupTimeout = math.MaxInt32 * time.Millisecond
)

// DefaultAssignors are the assignment strategies a group member offers by
// default (see Config.Assignors).
var DefaultAssignors = []string{"cooperative-sticky"}

// Config configures a MultiConsumer. The zero value of each optional field
// means its documented default. New validates every field and returns a
// *ConfigError naming the first one that is wrong.
type Config struct {
	// Brokers are the seed brokers, host:port. Required.
	Brokers []string
	// Topic is the topic to consume. Required.
	Topic string
	// Group is the consumer group whose offset storage is used: where
	// consumption starts, and where commits go. The consumer does not join
	// the group. "" means no offset storage and no commits.
	Group string
	// Partitions are the partitions to consume; nil means every partition
	// of Topic. Must be nil with JoinGroup.
	Partitions []int

	// JoinGroup makes the consumer a member of Group, through Kafka's
	// group protocol: the partitions are spread over the members, and move
	// when members join, leave or die. Group is required. False: the
	// consumer reads Partitions and only stores offsets in Group.
	JoinGroup bool

	// ShareGroup makes the consumer a member of Group as a share group
	// (KIP-932, Kafka 4.2+): the broker hands out records, not partitions,
	// each under an acquisition lock, so that any number of members share
	// a partition. What the caller comes back from (GetMessages, Messages,
	// Iter) or Process completes is accepted; Acknowledge settles records
	// one by one; Commit accepts everything delivered; Close releases
	// what was acquired and not accepted, for the other members. Group is
	// required; JoinGroup, Partitions and InstanceID must not be set.
	// StartOffset sets a new share group's share.auto.offset.reset
	// (FirstOffset: earliest, the default; LastOffset: latest) before
	// its first member joins; a group that exists keeps its setting.
	// With ManualCommit, coming back accepts nothing: only Commit and
	// Acknowledge do. See the package doc.
	ShareGroup bool
	// InstanceID makes the member static (KIP-345): one that restarts
	// within SessionTimeout gets its partitions back without a
	// rebalance, and Close does not leave the group. Unique per member.
	InstanceID string
	// SessionTimeout is how long the coordinator waits for a heartbeat
	// before it drops the member. Default 45s; at least 100ms. The broker
	// accepts only what lies within its group.min.session.timeout.ms and
	// group.max.session.timeout.ms (Kafka's defaults: 6s and 30 minutes):
	// outside them, the consumer stops at its first join with a
	// *GroupSettingError that says the broker's bounds.
	SessionTimeout time.Duration
	// RebalanceTimeout is how long a rebalance waits for members to
	// rejoin, and how long a member waits for its caller to come back for
	// the messages of partitions it gives up. Default 60s; at least 1s.
	RebalanceTimeout time.Duration
	// HeartbeatInterval is how often a member heartbeats; it must be
	// below SessionTimeout (a third of it or less is usual). Default 3s,
	// or a third of SessionTimeout when that is less; at least 10ms.
	HeartbeatInterval time.Duration
	// Assignors are the assignment strategies the member offers, preferred
	// first: "cooperative-sticky" (the default: only the partitions that
	// move pause), "range", "roundrobin" (eager: every member gives up
	// every partition at each rebalance, as kafka-go's group Reader does).
	// The group uses one that every member offers.
	Assignors []string
	// GroupProtocol is the group protocol a member (JoinGroup) speaks:
	// "classic" (the default: JoinGroup, SyncGroup, Heartbeat, with the
	// Assignors above) or "consumer" (KIP-848, Kafka 4.0+: the broker
	// computes the assignment and moves partitions one member at a time,
	// with no group-wide barrier; ConsumerGroupHeartbeat). Under
	// "consumer", SessionTimeout, HeartbeatInterval and Assignors are the
	// broker's (group.consumer.*): New logs once that it ignores them, so
	// one Config runs under both protocols by flipping this field.
	// Everything else keeps its meaning: OnAssigned and OnRevoked get only
	// what changes, Lost, commits fenced by the member epoch, drained
	// revokes, static membership with InstanceID.
	GroupProtocol string
	// ServerAssignor picks the broker's assignor under GroupProtocol
	// "consumer": "" (the broker's default), "uniform" or "range".
	ServerAssignor string
	// OnAssigned is called, in group mode, with the partitions the member
	// gets, before their first message is delivered; only those that
	// change. ctx ends when the consumer closes.
	OnAssigned func(ctx context.Context, partitions []int)
	// OnRevoked is called, in group mode, with the partitions the member
	// gives up (in a rebalance, or at Close), after what the caller
	// consumed of them was committed; or, when they were lost (the session
	// expired, the member was fenced), without a commit: Lost(ctx) reports
	// which. After it returns, no message of them is delivered. With
	// ManualCommit, in a rebalance, it may call Commit for them (at Close,
	// Commit returns ErrClosed: commit before Close).
	OnRevoked func(ctx context.Context, partitions []int)

	// NumWorkers is the number of worker goroutines, each fetching its own
	// chunk of the partitions. Default 1; never more than the partitions.
	NumWorkers int
	// PartitionsPerWorker, when > 0, overrides NumWorkers with
	// ceil(len(partitions)/PartitionsPerWorker) workers.
	PartitionsPerWorker int
	// QueueSize bounds the messages fetched and queued for delivery.
	// Default 1024. Besides the queue, each worker holds at most two fetch
	// responses per leader broker of its partitions (the one it queues, and
	// the next; while the queue is full, the next is fetched only once at
	// most half a response of the one queued is left), and a GetMessages
	// call what it has taken so far (up to its count).
	QueueSize int

	// ManualCommit turns auto-commit off: offsets are committed only by
	// Commit. Close does not commit either.
	ManualCommit bool
	// AutoCommitEveryN commits after this many consumed messages. Default
	// 100; negative disables this trigger. Auto-commits start at least
	// 10ms apart: at high rates, rather than one a round trip to the group
	// coordinator, one commits every message consumed since the last.
	AutoCommitEveryN int
	// AutoCommitEveryT commits this long after the previous commit.
	// Default 5s; negative disables this trigger.
	AutoCommitEveryT time.Duration

	// StartOffset is where a partition starts when the group has no
	// committed offset for it (or Group is ""), and where it restarts when
	// its offset is no longer in the log: kafka.FirstOffset (default) or
	// kafka.LastOffset. A partition added to the topic after New (found by
	// a metadata refresh, or assigned by the group) starts at its first
	// offset whatever StartOffset says: everything in it is new.
	StartOffset int64
	// MaxBackoff caps the exponential backoff (1s, 2s, 4s...) with which
	// a failing worker or auto-commit retries. Default 60s.
	MaxBackoff time.Duration
	// MetadataMaxAge is how often the topic's metadata is read again, as
	// the Java client's metadata.max.age.ms: partitions added to the topic
	// are then consumed (with Partitions nil), from their first offset (or
	// the group's committed offset, when it has one). At least 10ms.
	// A fetch error (a leader moved, a partition or the topic is gone)
	// makes the consumer read it again at once. Default 5 minutes.
	MetadataMaxAge time.Duration
	// Dialer sets TLS, SASL, the client id and the dial timeout. Its
	// Timeout also bounds every request other than fetches. nil means
	// kafka.DefaultDialer. Without a ClientID, requests carry
	// DefaultClientID.
	Dialer *kafka.Dialer
	// Logger receives structured events: start offsets, retries, commits,
	// offset resets. nil discards them.
	Logger *slog.Logger
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Struct string // "" for Config; "ProcessConfig" for Process's
	Field  string // name of the Config field
	Value  any    // its value
	Reason string
}

// Error names the field, its value and what is wrong with it.
func (e *ConfigError) Error() string {
	st := e.Struct
	if st == "" {
		st = "Config"
	}
	return fmt.Sprintf("multiconsumer: invalid %s.%s (%v): %s", st, e.Field, e.Value, e.Reason)
}

// withDefaults validates c and returns it with every default filled in.
func (c Config) withDefaults() (Config, error) {
	bad := func(field string, value any, reason string) (Config, error) {
		return Config{}, &ConfigError{Field: field, Value: value, Reason: reason}
	}
	if len(c.Brokers) == 0 {
		return bad("Brokers", c.Brokers, "at least one broker address is required")
	}
	for _, b := range c.Brokers {
		if b == "" {
			return bad("Brokers", c.Brokers, "empty broker address")
		}
	}
	if c.Topic == "" {
		return bad("Topic", c.Topic, "a topic is required")
	}
	seen := make(map[int]bool, len(c.Partitions))
	if c.Partitions != nil && len(c.Partitions) == 0 {
		return bad("Partitions", c.Partitions, "empty: use nil for every partition")
	}
	for _, p := range c.Partitions {
		if p < 0 {
			return bad("Partitions", c.Partitions, fmt.Sprintf("negative partition %d", p))
		}
		if seen[p] {
			return bad("Partitions", c.Partitions, fmt.Sprintf("partition %d listed twice", p))
		}
		seen[p] = true
	}
	switch {
	case c.NumWorkers < 0:
		return bad("NumWorkers", c.NumWorkers, "must not be negative")
	case c.PartitionsPerWorker < 0:
		return bad("PartitionsPerWorker", c.PartitionsPerWorker, "must not be negative")
	case c.QueueSize < 0:
		return bad("QueueSize", c.QueueSize, "must not be negative")
	case c.MaxBackoff < 0:
		return bad("MaxBackoff", c.MaxBackoff, "must not be negative")
	case c.MetadataMaxAge < 0:
		return bad("MetadataMaxAge", c.MetadataMaxAge, "must not be negative")
	case c.JoinGroup && c.Group == "":
		return bad("Group", c.Group, "required with JoinGroup")
	case c.JoinGroup && c.Partitions != nil:
		return bad("Partitions", c.Partitions, "must be nil with JoinGroup: the group assigns partitions")
	case c.ShareGroup && c.Group == "":
		return bad("Group", c.Group, "required with ShareGroup")
	case c.ShareGroup && c.JoinGroup:
		return bad("JoinGroup", c.JoinGroup, "not with ShareGroup: a share group hands out records, not partitions")
	case c.ShareGroup && c.Partitions != nil:
		return bad("Partitions", c.Partitions, "must be nil with ShareGroup: the share group assigns partitions")
	case c.ShareGroup && c.InstanceID != "":
		return bad("InstanceID", c.InstanceID, "not with ShareGroup: share groups have no static membership")
	case !c.JoinGroup && c.InstanceID != "":
		return bad("InstanceID", c.InstanceID, "only with JoinGroup")
	case c.GroupProtocol != "" && c.GroupProtocol != GroupProtocolClassic && c.GroupProtocol != GroupProtocolConsumer:
		return bad("GroupProtocol", c.GroupProtocol, `must be "classic" or "consumer"`)
	case c.GroupProtocol == GroupProtocolConsumer && !c.JoinGroup:
		return bad("GroupProtocol", c.GroupProtocol, "only with JoinGroup")
	case c.ServerAssignor != "" && c.GroupProtocol != GroupProtocolConsumer:
		return bad("ServerAssignor", c.ServerAssignor, `only with GroupProtocol "consumer"`)
	case c.ServerAssignor != "" && c.ServerAssignor != "uniform" && c.ServerAssignor != "range":
		return bad("ServerAssignor", c.ServerAssignor, `must be "", "uniform" or "range"`)
	case c.SessionTimeout < 0:
		return bad("SessionTimeout", c.SessionTimeout, "must not be negative")
	case c.RebalanceTimeout < 0:
		return bad("RebalanceTimeout", c.RebalanceTimeout, "must not be negative")
	case c.HeartbeatInterval < 0:
		return bad("HeartbeatInterval", c.HeartbeatInterval, "must not be negative")
	case c.MetadataMaxAge > 0 && c.MetadataMaxAge < 10*time.Millisecond:
		return bad("MetadataMaxAge", c.MetadataMaxAge, "must be at least 10ms (each refresh is a round trip)")
	case c.Dialer != nil && c.Dialer.Timeout < 0:
		return bad("Dialer.Timeout", c.Dialer.Timeout, "must not be negative")
	}
	switch c.StartOffset {
	case 0:
		c.StartOffset = kafka.FirstOffset
	case kafka.FirstOffset, kafka.LastOffset:
	default:
		return bad("StartOffset", c.StartOffset, "must be kafka.FirstOffset (-2) or kafka.LastOffset (-1)")
	}
	if c.NumWorkers == 0 {
		c.NumWorkers = DefaultNumWorkers
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.AutoCommitEveryN == 0 {
		c.AutoCommitEveryN = DefaultAutoCommitEveryN
	}
	if c.AutoCommitEveryT == 0 {
		c.AutoCommitEveryT = DefaultAutoCommitEveryT
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.MetadataMaxAge == 0 {
		c.MetadataMaxAge = DefaultMetadataMaxAge
	}
	if c.SessionTimeout == 0 {
		c.SessionTimeout = DefaultSessionTimeout
	}
	if c.RebalanceTimeout == 0 {
		c.RebalanceTimeout = DefaultRebalanceTimeout
	}
	if c.HeartbeatInterval == 0 {
		c.HeartbeatInterval = min(DefaultHeartbeatInterval, c.SessionTimeout/3)
	}
	// The floors refuse at once what no deployment wants. The broker
	// accepts any RebalanceTimeout and HeartbeatInterval (a rebalance
	// timeout of 0 ends each rebalance before the members have rejoined;
	// a heartbeat every nanosecond floods the coordinator), and a
	// SessionTimeout it refuses would only be found at the first join.
	switch {
	case c.SessionTimeout < minSessionTimeout:
		return bad("SessionTimeout", c.SessionTimeout, fmt.Sprintf("must be at least %v", minSessionTimeout))
	case c.SessionTimeout > maxGroupTimeout:
		return bad("SessionTimeout", c.SessionTimeout, fmt.Sprintf("must be at most %v (int32 milliseconds on the wire)", maxGroupTimeout))
	case c.RebalanceTimeout < minRebalanceTimeout:
		return bad("RebalanceTimeout", c.RebalanceTimeout, fmt.Sprintf("must be at least %v", minRebalanceTimeout))
	case c.RebalanceTimeout > maxGroupTimeout:
		return bad("RebalanceTimeout", c.RebalanceTimeout, fmt.Sprintf("must be at most %v (int32 milliseconds on the wire)", maxGroupTimeout))
	case c.HeartbeatInterval < minHeartbeatInterval:
		return bad("HeartbeatInterval", c.HeartbeatInterval, fmt.Sprintf("must be at least %v (each heartbeat is a request to the coordinator)", minHeartbeatInterval))
	}
	if c.HeartbeatInterval >= c.SessionTimeout {
		return bad("HeartbeatInterval", c.HeartbeatInterval, fmt.Sprintf("must be below SessionTimeout (%v)", c.SessionTimeout))
	}
	if len(c.Assignors) == 0 {
		c.Assignors = DefaultAssignors
	}
	for _, name := range c.Assignors {
		if _, ok := assignorFor(name); !ok {
			return bad("Assignors", c.Assignors, fmt.Sprintf("unknown assignor %q (known: %s)", name, strings.Join(assignorNames(), ", ")))
		}
	}
	c.Assignors = slices.Clone(c.Assignors)
	if c.GroupProtocol == "" {
		c.GroupProtocol = GroupProtocolClassic
	}
	if c.Dialer == nil {
		c.Dialer = kafka.DefaultDialer
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Brokers = append([]string(nil), c.Brokers...)
	if c.Partitions != nil {
		c.Partitions = append([]int(nil), c.Partitions...)
	}
	return c, nil
}

// autoCommit reports whether the consumer commits on its own: with a group,
// unless ManualCommit.
func (c *Config) autoCommit() bool { return c.Group != "" && !c.ManualCommit && !c.ShareGroup }

// implicitAccept reports whether a share-group member accepts what the
// caller comes back from (see Config.ShareGroup).
func (c *Config) implicitAccept() bool { return c.ShareGroup && !c.ManualCommit }

// numWorkers returns how many workers share n partitions.
func (c *Config) numWorkers(n int) int {
	if c.ShareGroup {
		return 1 // one share fetcher: a member has one share session per broker
	}
	w := c.NumWorkers
	if c.PartitionsPerWorker > 0 {
		w = (n + c.PartitionsPerWorker - 1) / c.PartitionsPerWorker
	}
	return max(1, min(w, n))
}

// chunks splits partitions among workers: chunk i is
// partitions[i::workers], so that each gets as many as the others, or one
// fewer.
func chunks(partitions []int, workers int) [][]int {
	out := make([][]int, workers)
	for i, p := range partitions {
		out[i%workers] = append(out[i%workers], p)
	}
	return out
}
