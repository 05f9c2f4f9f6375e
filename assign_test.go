package multiconsumer

import (
	"fmt"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"
)

// gm is a dynamic member owning owned in generation gen.
func gm(id string, gen int32, owned ...int) groupMember {
	return groupMember{ID: id, Owned: owned, Generation: gen}
}

// static is a static member with no partitions.
func static(id, instance string) groupMember {
	return groupMember{ID: id, InstanceID: instance, Generation: -1}
}

// seq returns 0..n-1.
func seq(n int) []int {
	ps := make([]int, n)
	for i := range ps {
		ps[i] = i
	}
	return ps
}

// canon makes empty lists nil, so that assignments compare with require.Equal.
func canon(a map[string][]int) map[string][]int {
	out := make(map[string][]int, len(a))
	for id, ps := range a {
		if len(ps) == 0 {
			ps = nil
		}
		out[id] = ps
	}
	return out
}

// followUp returns the members as they join the next rebalance after
// receiving got: each owns what it got, all in the next generation.
func followUp(members []groupMember, got map[string][]int) []groupMember {
	gen := int32(-1)
	for _, m := range members {
		gen = max(gen, m.Generation)
	}
	next := make([]groupMember, len(members))
	for i, m := range members {
		next[i] = groupMember{ID: m.ID, InstanceID: m.InstanceID, Owned: got[m.ID], Generation: gen + 1}
	}
	return next
}

func TestAssignorFor(t *testing.T) {
	require.Equal(t, []string{"cooperative-sticky", "range", "roundrobin"}, assignorNames())
	require.True(t, slices.IsSorted(assignorNames()))
	for _, name := range assignorNames() {
		a, ok := assignorFor(name)
		require.True(t, ok, name)
		require.Equal(t, name, a.protocol())
		require.Equal(t, name == "cooperative-sticky", a.cooperative(), name)
	}
	for _, name := range []string{"", "sticky", "Range", "uniform"} {
		_, ok := assignorFor(name)
		require.False(t, ok, name)
	}
}

func TestAssignMemberOrder(t *testing.T) {
	ids := func(ms []groupMember) (out []string) {
		for _, m := range ms {
			out = append(out, m.ID)
		}
		return out
	}
	// Dynamic members: by member id.
	require.Equal(t, []string{"a", "b", "c"}, ids(memberOrder([]groupMember{gm("c", 1), gm("a", 1), gm("b", 1)})))
	// Static members: by instance id, whatever their member ids.
	require.Equal(t, []string{"z", "y", "x"},
		ids(memberOrder([]groupMember{static("x", "i3"), static("z", "i1"), static("y", "i2")})))
	// Mixed: static ones first, then dynamic ones.
	require.Equal(t, []string{"z", "x", "a", "b"},
		ids(memberOrder([]groupMember{gm("b", 1), static("x", "i2"), gm("a", 1), static("z", "i1")})))
	// Equal instance ids (not expected from a broker): by member id.
	require.Equal(t, []string{"a", "b"}, ids(memberOrder([]groupMember{static("b", "i"), static("a", "i")})))
}

func TestAssignRange(t *testing.T) {
	for _, tc := range []struct {
		name       string
		partitions []int
		members    []groupMember
		want       map[string][]int
	}{
		{"no members", seq(3), nil, map[string][]int{}},
		{"no partitions", nil, []groupMember{gm("a", -1), gm("b", -1)}, map[string][]int{"a": nil, "b": nil}},
		{"even", seq(6), []groupMember{gm("b", -1), gm("a", -1)}, map[string][]int{"a": {0, 1, 2}, "b": {3, 4, 5}}},
		{"first ones get one more", seq(8), []groupMember{gm("c", -1), gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0, 1, 2}, "b": {3, 4, 5}, "c": {6, 7}}},
		{"fewer partitions than members", seq(2), []groupMember{gm("c", -1), gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0}, "b": {1}, "c": nil}},
		{"ownership ignored", seq(4), []groupMember{gm("a", 3, 2, 3), gm("b", 3, 0, 1)},
			map[string][]int{"a": {0, 1}, "b": {2, 3}}},
		{"static by instance id", seq(5), []groupMember{static("a", "i2"), static("b", "i1")},
			map[string][]int{"b": {0, 1, 2}, "a": {3, 4}}},
		{"static before dynamic", seq(5), []groupMember{gm("a", -1), static("b", "i1"), gm("c", -1)},
			map[string][]int{"b": {0, 1}, "a": {2, 3}, "c": {4}}},
		{"partitions unsorted, repeated, with a gap", []int{5, 1, 0, 3, 1, 2}, []groupMember{gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0, 1, 2}, "b": {3, 5}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, canon(rangeAssignor{}.assign(tc.partitions, tc.members)))
		})
	}
}

func TestAssignRoundRobin(t *testing.T) {
	for _, tc := range []struct {
		name       string
		partitions []int
		members    []groupMember
		want       map[string][]int
	}{
		{"no members", seq(3), nil, map[string][]int{}},
		{"no partitions", nil, []groupMember{gm("a", -1), gm("b", -1)}, map[string][]int{"a": nil, "b": nil}},
		{"dealt in order", seq(8), []groupMember{gm("c", -1), gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0, 3, 6}, "b": {1, 4, 7}, "c": {2, 5}}},
		{"fewer partitions than members", seq(2), []groupMember{gm("c", -1), gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0}, "b": {1}, "c": nil}},
		{"ownership ignored", seq(4), []groupMember{gm("a", 3, 1, 3), gm("b", 3, 0, 2)},
			map[string][]int{"a": {0, 2}, "b": {1, 3}}},
		{"static before dynamic", seq(5), []groupMember{gm("a", -1), static("b", "i2"), static("c", "i1")},
			map[string][]int{"c": {0, 3}, "b": {1, 4}, "a": {2}}},
		{"partitions unsorted, repeated, with a gap", []int{5, 1, 0, 3, 1, 2}, []groupMember{gm("a", -1), gm("b", -1)},
			map[string][]int{"a": {0, 2, 5}, "b": {1, 3}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, canon(roundRobinAssignor{}.assign(tc.partitions, tc.members)))
		})
	}
}

func TestAssignCooperativeSticky(t *testing.T) {
	for _, tc := range []struct {
		name       string
		partitions []int
		members    []groupMember
		want       map[string][]int // this rebalance
		next       map[string][]int // the follow-up one, each member owning what it got in want
	}{
		{
			name: "no members", partitions: seq(3),
			want: map[string][]int{}, next: map[string][]int{},
		},
		{
			name: "no partitions", members: []groupMember{gm("a", 4, 0, 1), gm("b", 4, 2)},
			want: map[string][]int{"a": nil, "b": nil}, next: map[string][]int{"a": nil, "b": nil},
		},
		{
			name: "new group", partitions: seq(7), members: []groupMember{gm("c", -1), gm("a", -1), gm("b", -1)},
			want: map[string][]int{"a": {0, 1, 6}, "b": {2, 3}, "c": {4, 5}},
			next: map[string][]int{"a": {0, 1, 6}, "b": {2, 3}, "c": {4, 5}},
		},
		{
			name: "stable group keeps everything", partitions: seq(7),
			members: []groupMember{gm("a", 3, 0, 4), gm("b", 3, 1, 5, 6), gm("c", 3, 2, 3)},
			want:    map[string][]int{"a": {0, 4}, "b": {1, 5, 6}, "c": {2, 3}},
			next:    map[string][]int{"a": {0, 4}, "b": {1, 5, 6}, "c": {2, 3}},
		},
		{
			name: "member joins: moved partitions wait for the follow-up", partitions: seq(6),
			members: []groupMember{gm("a", 2, 0, 1, 2), gm("b", 2, 3, 4, 5), gm("c", -1)},
			want:    map[string][]int{"a": {0, 1}, "b": {3, 4}, "c": nil},
			next:    map[string][]int{"a": {0, 1}, "b": {3, 4}, "c": {2, 5}},
		},
		{
			name: "member leaves: its partitions go at once", partitions: seq(6),
			members: []groupMember{gm("a", 2, 0, 1), gm("c", 2, 4, 5)},
			want:    map[string][]int{"a": {0, 1, 2}, "c": {3, 4, 5}},
			next:    map[string][]int{"a": {0, 1, 2}, "c": {3, 4, 5}},
		},
		{
			name: "one extra partition per member while they last", partitions: seq(5),
			members: []groupMember{gm("a", 2, 0, 1, 2), gm("b", 2, 3, 4), gm("c", -1)},
			want:    map[string][]int{"a": {0, 1}, "b": {3, 4}, "c": nil},
			next:    map[string][]int{"a": {0, 1}, "b": {3, 4}, "c": {2}},
		},
		{
			name: "members over their share give up the extra beyond n%m", partitions: seq(6),
			members: []groupMember{gm("a", 2, 0, 1), gm("b", 2, 2, 3), gm("c", 2, 4, 5), gm("d", -1)},
			want:    map[string][]int{"a": {0, 1}, "b": {2, 3}, "c": {4}, "d": nil},
			next:    map[string][]int{"a": {0, 1}, "b": {2, 3}, "c": {4}, "d": {5}},
		},
		{
			name: "conflict: higher generation keeps it", partitions: seq(4),
			members: []groupMember{gm("a", 5, 0, 1), gm("b", 4, 1, 2)},
			want:    map[string][]int{"a": {0, 1}, "b": {2, 3}},
			next:    map[string][]int{"a": {0, 1}, "b": {2, 3}},
		},
		{
			name: "conflict: unknown generation loses", partitions: seq(4),
			members: []groupMember{gm("a", -1, 0, 1), gm("b", 0, 1, 2)},
			want:    map[string][]int{"a": {0, 3}, "b": {1, 2}},
			next:    map[string][]int{"a": {0, 3}, "b": {1, 2}},
		},
		{
			name: "conflict: same generation, nobody keeps it this round", partitions: seq(4),
			members: []groupMember{gm("a", 5, 0, 1), gm("b", 5, 1, 2)},
			want:    map[string][]int{"a": {0, 3}, "b": {2}},
			next:    map[string][]int{"a": {0, 3}, "b": {1, 2}},
		},
		{
			name: "conflict: a higher generation beats a tie below it", partitions: seq(3),
			members: []groupMember{gm("a", 5, 0), gm("b", 5, 0), gm("c", 6, 0)},
			want:    map[string][]int{"a": {1}, "b": {2}, "c": {0}},
			next:    map[string][]int{"a": {1}, "b": {2}, "c": {0}},
		},
		{
			name: "partitions no longer there are dropped", partitions: seq(4),
			members: []groupMember{gm("a", 1, 0, 1, 7), gm("b", -1)},
			want:    map[string][]int{"a": {0, 1}, "b": {2, 3}},
			next:    map[string][]int{"a": {0, 1}, "b": {2, 3}},
		},
		{
			name: "partitions added go to whoever is short", partitions: seq(6),
			members: []groupMember{gm("a", 1, 0, 1), gm("b", 1, 2, 3)},
			want:    map[string][]int{"a": {0, 1, 4}, "b": {2, 3, 5}},
			next:    map[string][]int{"a": {0, 1, 4}, "b": {2, 3, 5}},
		},
		{
			name: "more members than partitions", partitions: seq(2),
			members: []groupMember{gm("a", 1, 0, 1), gm("b", -1), gm("c", -1)},
			want:    map[string][]int{"a": {0}, "b": nil, "c": nil},
			next:    map[string][]int{"a": {0}, "b": {1}, "c": nil},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := cooperativeStickyAssignor{}
			got := a.assign(tc.partitions, tc.members)
			require.Equal(t, tc.want, canon(got))
			require.Equal(t, tc.next, canon(a.assign(tc.partitions, followUp(tc.members, got))))
		})
	}
}

// fuzzInput decodes a fuzzer's bytes into a group: 0 when the bytes run out.
type fuzzInput []byte

func (b *fuzzInput) next(n int) int {
	if len(*b) == 0 {
		return 0
	}
	v := int((*b)[0]) % n
	*b = (*b)[1:]
	return v
}

// group decodes partitions and members. The members own either arbitrary,
// often conflicting, sets of partitions, or what an earlier balanced
// assignment of a possibly different number of partitions gave them (new
// members own nothing), which is what a group sees when members join or
// leave or partitions are added.
func (b *fuzzInput) group() ([]int, []groupMember) {
	n := b.next(41)
	partitions := seq(n)
	if hole := b.next(n + 1); hole < n && b.next(4) == 0 {
		partitions = slices.Delete(partitions, hole, hole+1)
	}
	members := make([]groupMember, b.next(9))
	for i := range members {
		m := &members[i]
		m.ID = fmt.Sprintf("%c%d", 'a'+b.next(26), i)
		if b.next(3) == 0 {
			m.InstanceID = fmt.Sprintf("i%d", b.next(8))
		}
		m.Generation = int32(b.next(4) - 1)
	}
	if b.next(2) == 0 {
		for i := range members {
			start, count, step := b.next(64), b.next(n/2+3), 1+b.next(3)
			var owned []int
			for j := range count {
				owned = append(owned, (start+j*step)%(n+2))
			}
			members[i].Owned = uniqueSorted(owned)
		}
	} else {
		var before []groupMember
		for _, m := range members {
			if b.next(4) != 0 {
				before = append(before, m)
			}
		}
		prev := cooperativeStickyAssignor{}.assign(seq(b.next(41)), before)
		for i := range members {
			members[i].Owned = prev[members[i].ID]
			members[i].Generation = 7
		}
	}
	return partitions, members
}

// checkAssignment checks what holds for every assignor: every member is in
// got and nobody else; each list is sorted and holds partitions that exist;
// no partition is given twice. It returns the owner of each given partition.
func checkAssignment(t *testing.T, partitions []int, members []groupMember, got map[string][]int) map[int]string {
	t.Helper()
	require.Len(t, got, len(members))
	owner := make(map[int]string)
	for _, m := range members {
		ps, ok := got[m.ID]
		require.True(t, ok, "member %s missing", m.ID)
		require.True(t, slices.IsSorted(ps), "%s: %v not sorted", m.ID, ps)
		for _, p := range ps {
			require.Contains(t, partitions, p, "%s got a partition that does not exist", m.ID)
			prev, twice := owner[p]
			require.False(t, twice, "partition %d given to %s and %s", p, prev, m.ID)
			owner[p] = m.ID
		}
	}
	return owner
}

// checkBalanced checks that got gives every partition, each member n/m or n/m+1 of them.
func checkBalanced(t *testing.T, partitions []int, members []groupMember, got map[string][]int) {
	t.Helper()
	owner := checkAssignment(t, partitions, members, got)
	if len(members) == 0 {
		return
	}
	require.Len(t, owner, len(uniqueSorted(partitions)), "not every partition given: %v", got)
	share := len(owner) / len(members)
	for id, ps := range got {
		require.True(t, len(ps) == share || len(ps) == share+1, "%s got %d partitions, the share is %d: %v", id, len(ps), share, got)
	}
}

func FuzzAssign(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{7, 0, 3, 0, 1, 2, 1, 1, 0, 0})
	f.Add([]byte{12, 0, 0, 4, 0, 2, 3, 1, 1, 4, 1, 2, 3, 5, 3, 1, 7, 3, 0, 3, 9, 3, 2})
	f.Add([]byte{20, 5, 0, 5, 3, 1, 2, 4, 0, 3, 6, 5, 1, 2, 7, 1, 1, 1, 5, 3, 3, 3, 3, 24})
	f.Add([]byte{30, 2, 1, 6, 9, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 9})
	// Members owning what an earlier assignment gave them, joined by others.
	f.Add([]byte{0x6b, 0xaf, 0x44, 0x8d, 0x94, 0x4d, 0xef, 0x11, 0x4a, 0xc2, 0xea, 0xc1, 0xe6, 0xb2, 0xac, 0x7, 0x93, 0x46, 0x38, 0xa9,
		0xb6, 0xf0, 0x87, 0x3a, 0xea, 0x87, 0x83, 0x33, 0x7a, 0x6f, 0x48, 0x53, 0x2a, 0x8b, 0xe7, 0x4a, 0x6e})
	f.Add([]byte{0x71, 0xe0, 0x51, 0x3a, 0xd1, 0x44, 0x3c, 0x64, 0x60, 0x84, 0xdd, 0xd7, 0x4f, 0x74, 0x49, 0x95, 0xd4, 0x7d, 0xf9, 0x28,
		0xdb, 0x7d, 0xc1, 0x11, 0x95, 0x36, 0xdd})
	f.Add([]byte{0x9c, 0x52, 0xe7, 0x66, 0x35, 0x35, 0x7, 0x6e, 0x8e, 0xff, 0xcc, 0x43, 0xe9, 0xf9, 0xf3, 0x7d, 0xd3, 0xa1, 0x69, 0x7c,
		0xe9, 0x49, 0xfe, 0xb4, 0x6a, 0x37, 0xc6, 0x29})
	f.Fuzz(func(t *testing.T, data []byte) {
		in := fuzzInput(data)
		partitions, members := in.group()
		// The same group listed the other way round.
		revPartitions, revMembers := slices.Clone(partitions), slices.Clone(members)
		slices.Reverse(revPartitions)
		slices.Reverse(revMembers)

		for _, a := range assignors {
			got := a.assign(partitions, members)
			require.Equal(t, canon(got), canon(a.assign(revPartitions, revMembers)), "%s: not deterministic", a.protocol())
			if len(members) == 0 {
				require.Empty(t, got)
				continue
			}
			switch a.(type) {
			case rangeAssignor:
				checkBalanced(t, partitions, members, got)
				// In member order: consecutive ranges, the longer ones first.
				var all []int
				for i, m := range memberOrder(members) {
					all = append(all, got[m.ID]...)
					if i > 0 {
						require.LessOrEqual(t, len(got[m.ID]), len(got[memberOrder(members)[i-1].ID]))
					}
				}
				require.Equal(t, canon(map[string][]int{"": uniqueSorted(partitions)}), canon(map[string][]int{"": all}))
			case roundRobinAssignor:
				checkBalanced(t, partitions, members, got)
				// Partition i to member i%m, in member order.
				ms := memberOrder(members)
				for i, p := range uniqueSorted(partitions) {
					require.Contains(t, got[ms[i%len(ms)].ID], p)
				}
			case cooperativeStickyAssignor:
				checkSticky(t, partitions, members, got)
			default:
				t.Fatalf("no check for %s", a.protocol())
			}
		}
	})
}

// checkSticky checks a cooperative-sticky assignment got of partitions to
// members, and its follow-up rebalance:
//   - nothing moves in one step: a member only gets partitions it owned
//     or that nobody owned;
//   - no member gets more than its share, n/m+1, and at most n%m get that;
//   - in the follow-up rebalance, where each member owns what it got,
//     every member keeps what it got and the assignment is complete and
//     balanced;
//   - when no two members claim the same partition, each member keeps
//     what it owned up to n/m, and as many as can (n%m at most) keep one
//     more: a member owning k <= n/m+1 partitions then keeps them all
//     unless more than n%m members own more than n/m.
func checkSticky(t *testing.T, partitions []int, members []groupMember, got map[string][]int) {
	t.Helper()
	checkAssignment(t, partitions, members, got)
	if len(members) == 0 {
		return
	}
	exists := uniqueSorted(partitions)
	claimants := make(map[int][]string)
	for _, m := range members {
		for _, p := range uniqueSorted(m.Owned) {
			if slices.Contains(exists, p) {
				claimants[p] = append(claimants[p], m.ID)
			}
		}
	}
	for id, ps := range got {
		for _, p := range ps {
			if !slices.Contains(claimants[p], id) {
				require.Empty(t, claimants[p], "partition %d given to %s while owned by others", p, id)
			}
		}
	}

	share, extra := len(exists)/len(members), len(exists)%len(members)
	over := 0
	for id, ps := range got {
		require.LessOrEqual(t, len(ps), share+1, "%s over its share", id)
		if len(ps) > share {
			over++
		}
	}
	require.LessOrEqual(t, over, extra, "too many members over n/m: %v", got)

	next := cooperativeStickyAssignor{}.assign(partitions, followUp(members, got))
	checkBalanced(t, partitions, members, next)
	for id, ps := range got {
		require.Subset(t, next[id], ps, "%s lost partitions in the follow-up rebalance", id)
	}

	for _, c := range claimants {
		if len(c) > 1 {
			return // conflicts: stickiness is to the resolved owners, not checked here
		}
	}
	bigOwners, keptExtra := 0, 0
	for _, m := range members {
		owned := 0
		for _, p := range uniqueSorted(m.Owned) {
			if slices.Contains(exists, p) {
				owned++
			}
		}
		kept := 0
		for _, p := range got[m.ID] {
			if slices.Contains(m.Owned, p) {
				kept++
			}
		}
		require.GreaterOrEqual(t, kept, min(owned, share), "%s kept %d of its %d partitions", m.ID, kept, owned)
		if owned > share {
			bigOwners++
		}
		if kept > share {
			keptExtra++
		}
	}
	require.Equal(t, min(extra, bigOwners), keptExtra, "members keeping n/m+1 of theirs")
}
