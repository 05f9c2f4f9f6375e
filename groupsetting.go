package multiconsumer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// This file is the join errors that stop a group member for good: those
// about a setting of Config, which retrying cannot mend.

// GroupSettingError stops a group member (Config.JoinGroup) for good when
// the broker refuses one of its settings: a join error that only a change
// of Config (or of the cluster's configuration) can mend. Err, Stats.Err
// and the deliveries (GetMessages, Messages, Iter, Process) report it.
type GroupSettingError struct {
	Group string // Config.Group
	// Field is the Config field the broker refuses: "SessionTimeout",
	// "Assignors" or "Group".
	Field string
	Value any // its value
	// MinSessionTimeout and MaxSessionTimeout are the bounds of
	// SessionTimeout that the broker accepts (its
	// group.min.session.timeout.ms and group.max.session.timeout.ms), read
	// from the group's coordinator when Field is "SessionTimeout"; zero
	// when they could not be read.
	MinSessionTimeout, MaxSessionTimeout time.Duration
	// Err is the broker's error: kafka.InvalidSessionTimeout,
	// kafka.InconsistentGroupProtocol, kafka.GroupAuthorizationFailed or
	// kafka.InvalidGroupId.
	Err error

	boundsErr error // why the bounds are unknown
}

// Error names the group, the field, its value, what the broker accepts
// when known, and the broker's error.
func (e *GroupSettingError) Error() string {
	var why string
	switch {
	case e.Field == "SessionTimeout" && e.MaxSessionTimeout > 0:
		why = fmt.Sprintf("it accepts %v to %v (its group.min.session.timeout.ms and group.max.session.timeout.ms)",
			e.MinSessionTimeout, e.MaxSessionTimeout)
	case e.Field == "SessionTimeout" && e.boundsErr != nil:
		why = fmt.Sprintf("its bounds are unknown (%v)", e.boundsErr)
	case e.Field == "SessionTimeout":
		why = "its bounds are unknown"
	case errors.Is(e.Err, kafka.InconsistentGroupProtocol):
		why = "the group's members offer none of them, or are not consumers"
	case errors.Is(e.Err, kafka.GroupAuthorizationFailed):
		why = "the client (see Config.Dialer) may not read the group"
	case errors.Is(e.Err, kafka.InvalidGroupId):
		why = "not a valid group id"
	default:
		why = "refused"
	}
	return fmt.Sprintf("multiconsumer: group %q: the broker refuses Config.%s (%v): %s: %v", e.Group, e.Field, e.Value, why, e.Err)
}

// Unwrap returns the broker's error.
func (e *GroupSettingError) Unwrap() error { return e.Err }

// settingError returns the *GroupSettingError of a failed join when it is
// about a setting, else nil: the join is worth another try. Final:
//
//   - INVALID_SESSION_TIMEOUT: SessionTimeout is outside the broker's
//     group.min/max.session.timeout.ms; every join sends the same value.
//   - INCONSISTENT_GROUP_PROTOCOL: the group's members offer no assignor
//     of Assignors, or the group is not a consumer group (Kafka Connect's,
//     or one that refuses classic members). The other members would have
//     to change first, which is a deployment too; the Java consumer
//     raises it from poll as well.
//   - GROUP_AUTHORIZATION_FAILED: the principal (the Dialer's SASL, TLS)
//     may not read the group: an ACL, the credentials or Group must change.
//   - INVALID_GROUP_ID: the broker refuses the name.
//
// Not final: GROUP_MAX_SIZE_REACHED (a member that leaves makes room, and a
// spare member waiting for it is a fair deployment), the coordinator's
// errors (moving, loading, unavailable), a rebalance that interrupted the
// sync, and connection errors: the member retries with backoff, counted in
// Stats.JoinFailures. FENCED_INSTANCE_ID is final too, handled by runGroup:
// another process has this member's InstanceID.
func (m *member) settingError(ctx context.Context, err error) *GroupSettingError {
	var code kafka.Error
	if !errors.As(err, &code) {
		return nil
	}
	e := &GroupSettingError{Group: m.cfg.Group, Err: code}
	switch code {
	case kafka.InvalidSessionTimeout:
		e.Field, e.Value = "SessionTimeout", m.cfg.SessionTimeout
		e.MinSessionTimeout, e.MaxSessionTimeout, e.boundsErr = m.sessionBounds(ctx)
	case kafka.InconsistentGroupProtocol:
		e.Field, e.Value = "Assignors", slices.Clone(m.cfg.Assignors)
	case kafka.GroupAuthorizationFailed, kafka.InvalidGroupId:
		e.Field, e.Value = "Group", m.cfg.Group
	default:
		return nil
	}
	return e
}

// sessionBounds reads the group coordinator's group.min.session.timeout.ms
// and group.max.session.timeout.ms (those of any broker when the
// coordinator is not known), within one request timeout.
func (m *member) sessionBounds(ctx context.Context) (lo, hi time.Duration, err error) {
	ctx, cancel := m.kc.withTimeout(ctx)
	defer cancel()
	node := -1
	if res, err := m.kc.client.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{Key: m.cfg.Group, KeyType: kafka.CoordinatorKeyTypeConsumer}); err == nil && res.Error == nil {
		node = res.Coordinator.NodeID
	}
	if node < 0 {
		// kafka-go routes a BROKER resource to the broker it names.
		md, err := m.kc.client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{m.cfg.Topic}})
		if err != nil {
			return 0, 0, fmt.Errorf("find a broker: %w", err)
		}
		if len(md.Brokers) == 0 {
			return 0, 0, errors.New("find a broker: the metadata lists none")
		}
		node = md.Brokers[0].ID
	}
	const minName, maxName = "group.min.session.timeout.ms", "group.max.session.timeout.ms"
	res, err := m.kc.client.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeBroker, ResourceName: strconv.Itoa(node), ConfigNames: []string{minName, maxName},
	}}})
	if err != nil {
		return 0, 0, fmt.Errorf("describe the configs of broker %d: %w", node, err)
	}
	found := 0
	for _, r := range res.Resources {
		if r.Error != nil {
			return 0, 0, fmt.Errorf("describe the configs of broker %d: %w", node, r.Error)
		}
		for _, ce := range r.ConfigEntries {
			ms, err := strconv.ParseInt(ce.ConfigValue, 10, 32)
			if err != nil {
				continue
			}
			switch ce.ConfigName {
			case minName:
				lo, found = time.Duration(ms)*time.Millisecond, found+1
			case maxName:
				hi, found = time.Duration(ms)*time.Millisecond, found+1
			}
		}
	}
	if found != 2 || hi <= 0 {
		return 0, 0, fmt.Errorf("broker %d did not tell %s and %s", node, minName, maxName)
	}
	return lo, hi, nil
}
