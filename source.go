package multiconsumer

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// source is where the consumer's partitions come from: a static list
// (Config.Partitions, or every partition of the topic) or a group member
// (group.go). It hands its changes to the rest of the pipeline as
// assignment values, through the one function it was made with
// (handover.apply); nothing else looks behind it.
type source interface {
	// start gives the consumer its first partitions before New returns,
	// given the topic's partitions (all); an error fails New.
	start(ctx context.Context, all []int) error
	// run runs the source until ctx ends (a group member's protocol).
	run(ctx context.Context)
	// grew tells the source that the topic has the partitions all now.
	grew(ctx context.Context, all []int) error
	// leave ends the source's membership, after the final commit (Close).
	leave(ctx context.Context) error
	// stats fills in the source's part of s.
	stats(s *Stats)
}

// staticList is the source of a consumer without JoinGroup: the partitions
// of Config.Partitions, or every partition of the topic, and then those
// added to the topic while it runs.
type staticList struct {
	topic string
	fixed []int // Config.Partitions, sorted; nil: every partition
	apply func(ctx context.Context, a assignment) error

	mu    sync.Mutex // guards owned and added
	owned []int      // sorted
	added []int      // partitions added to the topic while the consumer ran
}

func newStaticList(topic string, partitions []int, apply func(context.Context, assignment) error) *staticList {
	s := &staticList{topic: topic, apply: apply}
	if partitions != nil {
		s.fixed = slices.Compact(slices.Sorted(slices.Values(partitions)))
	}
	return s
}

func (s *staticList) start(ctx context.Context, all []int) error {
	parts := all
	if s.fixed != nil {
		if missing := without(s.fixed, all); len(missing) > 0 {
			return fmt.Errorf("%w: topic %q has partitions 0..%d, not %v",
				ErrUnknownPartition, s.topic, len(all)-1, missing)
		}
		parts = s.fixed
	}
	s.mu.Lock()
	s.owned = slices.Clone(parts)
	s.mu.Unlock()
	return s.apply(ctx, assignment{lease: noLease, owned: parts, added: parts, strict: true})
}

func (s *staticList) run(context.Context) {}

// grew consumes the partitions added to the topic, unless the list is
// Config.Partitions.
func (s *staticList) grew(ctx context.Context, all []int) error {
	if s.fixed != nil {
		return nil
	}
	s.mu.Lock()
	added := without(all, s.owned)
	owned := slices.Clone(all)
	s.mu.Unlock()
	if len(added) == 0 {
		return nil
	}
	if err := s.apply(ctx, assignment{lease: noLease, owned: owned, added: added, strict: true}); err != nil {
		return err // the refresher tries again
	}
	s.mu.Lock()
	s.owned = owned
	s.added = append(s.added, added...)
	s.mu.Unlock()
	return nil
}

func (s *staticList) leave(context.Context) error { return nil }

func (s *staticList) stats(st *Stats) {
	s.mu.Lock()
	defer s.mu.Unlock()
	st.AddedPartitions = sortedCopy(s.added)
}
