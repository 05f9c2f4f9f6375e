package multiconsumer

import (
	"cmp"
	"slices"
)

// Group assignors. In the classic group protocol (JoinGroup/SyncGroup) one
// member, the leader, computes every member's partitions, and the leader may
// be one of ours or a Java consumer. For a group whose members all subscribe
// to one topic, "range" and "roundrobin" give exactly what the Java client's
// RangeAssignor and RoundRobinAssignor give, and "cooperative-sticky" keeps
// the rules of its CooperativeStickyAssignor (balance, stickiness, conflict
// resolution, moves in two rebalances), though among equally good
// assignments it may choose another one. Members take whatever assignment
// the leader sends, so a mixed group behaves the same whoever leads it.

// groupMember is one member of the group, as the leader sees it in the
// JoinGroup response.
type groupMember struct {
	ID         string // member id
	InstanceID string // static membership id (group.instance.id), "" if dynamic
	Owned      []int  // partitions it owns now (consumer protocol subscription v1 OwnedPartitions), sorted
	Generation int32  // the generation in which it owned them (-1 if unknown)
}

// assignor computes a group's assignment of one topic's partitions.
type assignor interface {
	// protocol is the name in JoinGroup: "range", "roundrobin", "cooperative-sticky".
	protocol() string
	// cooperative reports whether members keep their partitions during a rebalance (KIP-429).
	cooperative() bool
	// assign returns, per member id, the partitions it gets, each sorted; every member appears (possibly with none).
	assign(partitions []int, members []groupMember) map[string][]int
}

// assignors are the known assignors, sorted by protocol name.
var assignors = []assignor{cooperativeStickyAssignor{}, rangeAssignor{}, roundRobinAssignor{}}

// assignorFor returns the assignor whose protocol name is name.
func assignorFor(name string) (assignor, bool) {
	for _, a := range assignors {
		if a.protocol() == name {
			return a, true
		}
	}
	return nil, false
}

// assignorNames returns the known protocol names, sorted, for error messages.
func assignorNames() []string {
	names := make([]string, len(assignors))
	for i, a := range assignors {
		names[i] = a.protocol()
	}
	return names
}

// rangeAssignor gives each member one contiguous range of the partitions:
// with n partitions and m members every member gets n/m, and the first n%m
// members (in memberOrder) one more. Not cooperative: every rebalance
// revokes everything first (eager protocol).
type rangeAssignor struct{}

func (rangeAssignor) protocol() string  { return "range" }
func (rangeAssignor) cooperative() bool { return false }

func (rangeAssignor) assign(partitions []int, members []groupMember) map[string][]int {
	out := emptyAssignment(members)
	if len(members) == 0 {
		return out
	}
	parts := uniqueSorted(partitions)
	ms := memberOrder(members)
	per, extra := len(parts)/len(ms), len(parts)%len(ms)
	start := 0
	for i, m := range ms {
		n := per
		if i < extra {
			n++
		}
		out[m.ID] = parts[start : start+n : start+n]
		start += n
	}
	return out
}

// roundRobinAssignor deals the partitions, in order, one at a time to the
// members in memberOrder: partition i goes to member i%m. Not cooperative.
type roundRobinAssignor struct{}

func (roundRobinAssignor) protocol() string  { return "roundrobin" }
func (roundRobinAssignor) cooperative() bool { return false }

func (roundRobinAssignor) assign(partitions []int, members []groupMember) map[string][]int {
	out := emptyAssignment(members)
	if len(members) == 0 {
		return out
	}
	ms := memberOrder(members)
	for i, p := range uniqueSorted(partitions) {
		id := ms[i%len(ms)].ID
		out[id] = append(out[id], p)
	}
	return out
}

// cooperativeStickyAssignor balances the partitions (every member gets
// n/m or n/m+1 of them) while keeping as many as possible where they are,
// and is cooperative (KIP-429): members keep consuming what they keep
// during a rebalance, so a partition must never be given to a member while
// another one still owns it.
//
// That is why a partition that moves is not given to its new member in the
// same assignment: the assignment omits it from its owner, which revokes it
// and rejoins at once, and the rebalance that follows, in which nobody owns
// it any more, gives it away. Partitions owned by nobody are given at once.
// The first assignment may thus leave some partitions unassigned and some
// members short of their share; the follow-up one (same members, same
// partitions, each member owning what it got) is complete and balanced.
//
// Ownership claims are resolved per partition, as the Java assignor does:
// owned partitions that no longer exist are ignored; a partition claimed by
// several members stays with the one of the highest Generation, and with
// none of them if several share the highest (it is then given away only in
// the follow-up rebalance, after they all revoked it).
//
// A member owning more than its share keeps its lowest-numbered
// partitions. The n%m places for a member with n/m+1 partitions go first
// to members already owning more than n/m, then to the others, each time
// in member id order; free partitions are handed out in ascending order,
// members in member id order. The result depends only on the input's
// content, not its order.
type cooperativeStickyAssignor struct{}

func (cooperativeStickyAssignor) protocol() string  { return "cooperative-sticky" }
func (cooperativeStickyAssignor) cooperative() bool { return true }

func (cooperativeStickyAssignor) assign(partitions []int, members []groupMember) map[string][]int {
	out := emptyAssignment(members)
	if len(members) == 0 {
		return out
	}
	parts := uniqueSorted(partitions)
	ms := slices.SortedFunc(slices.Values(members), func(a, b groupMember) int { return cmp.Compare(a.ID, b.ID) })

	// Resolve the claims: per existing partition, the member index holding
	// the highest generation claim, and whether another member shares it.
	type claim struct {
		member    int
		gen       int32
		contested bool
	}
	claims := make(map[int]*claim, len(parts))
	for _, p := range parts {
		claims[p] = nil
	}
	for i, m := range ms {
		for _, p := range uniqueSorted(m.Owned) {
			c, exists := claims[p]
			switch {
			case !exists: // the partition is gone
			case c == nil:
				claims[p] = &claim{member: i, gen: m.Generation}
			case m.Generation > c.gen:
				*c = claim{member: i, gen: m.Generation}
			case m.Generation == c.gen:
				c.contested = true
			}
		}
	}
	owned := make([][]int, len(ms)) // per member, what it may keep, ascending
	var free []int                  // partitions nobody claims, ascending
	for _, p := range parts {
		switch c := claims[p]; {
		case c == nil:
			free = append(free, p)
		case !c.contested:
			owned[c.member] = append(owned[c.member], p)
		}
	}

	// Keep what each member owns, up to its share: n/m, and n/m+1 for at
	// most n%m members. Claimed partitions not kept stay unassigned.
	share, extra := len(parts)/len(ms), len(parts)%len(ms)
	got := make([][]int, len(ms))
	for i := range ms {
		keep := min(len(owned[i]), share)
		if len(owned[i]) > share && extra > 0 {
			keep++
			extra--
		}
		got[i] = slices.Clone(owned[i][:keep])
	}

	// Hand out the free partitions: everyone up to n/m first, then the
	// remaining n/m+1 slots to members at n/m.
	for i := range ms {
		for len(got[i]) < share && len(free) > 0 {
			got[i], free = append(got[i], free[0]), free[1:]
		}
	}
	for i := range ms {
		if extra == 0 || len(free) == 0 {
			break
		}
		if len(got[i]) == share {
			got[i], free = append(got[i], free[0]), free[1:]
			extra--
		}
	}

	for i, m := range ms {
		slices.Sort(got[i])
		out[m.ID] = got[i]
	}
	return out
}

// memberOrder returns the members sorted as the Java client sorts them for
// the range and round-robin assignors: static members (with an InstanceID)
// first, by InstanceID, then dynamic members by member id. Sorting static
// members by InstanceID gives a restarted static member, which gets a new
// member id, the same partitions as before. Ties are broken by member id.
func memberOrder(members []groupMember) []groupMember {
	return slices.SortedFunc(slices.Values(members), func(a, b groupMember) int {
		switch {
		case a.InstanceID != "" && b.InstanceID != "":
			if c := cmp.Compare(a.InstanceID, b.InstanceID); c != 0 {
				return c
			}
		case a.InstanceID != "":
			return -1
		case b.InstanceID != "":
			return 1
		}
		return cmp.Compare(a.ID, b.ID)
	})
}

// emptyAssignment returns an assignment with every member and no partition.
func emptyAssignment(members []groupMember) map[string][]int {
	out := make(map[string][]int, len(members))
	for _, m := range members {
		out[m.ID] = nil
	}
	return out
}

// uniqueSorted returns the distinct values of ps in ascending order, in a
// new slice.
func uniqueSorted(ps []int) []int {
	return slices.Compact(slices.Sorted(slices.Values(ps)))
}
