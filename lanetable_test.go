package multiconsumer

import (
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// The lane table against a map, under random sets and deletes of buckets
// chosen to collide (few distinct low bits), so that probing wraps and
// deletes move entries back.
func TestLaneTableMatchesAMap(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for round := range 20 {
		var tab laneTable
		want := map[uint64]*lane{}
		buckets := make([]uint64, 50+round*10)
		for i := range buckets {
			// Low bits from a small set, high bits random: long probe runs.
			buckets[i] = rng.Uint64()<<8 | uint64(rng.IntN(8))
		}
		buckets[0] = 0 // a zero bucket is a bucket
		for range 5000 {
			b := buckets[rng.IntN(len(buckets))]
			if rng.IntN(3) == 0 {
				tab.del(b)
				delete(want, b)
			} else {
				l := &lane{bucket: b}
				tab.set(b, l)
				want[b] = l
			}
			require.Equal(t, len(want), tab.len())
		}
		for _, b := range buckets {
			require.Same(t, want[b], tab.get(b), "bucket %x", b)
		}
		n := 0
		tab.all(func(l *lane) {
			require.Same(t, want[l.bucket], l)
			n++
		})
		require.Equal(t, len(want), n)
	}
	var empty laneTable
	require.Nil(t, empty.get(7))
	empty.del(7)
	require.Zero(t, empty.len())
}
