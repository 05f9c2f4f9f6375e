package multiconsumer

import (
	"math/bits"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// The probe finds the end of an empty batch [base, last] below hwm, from a
// fetch at any offset in it, in about log2(hwm-base) fetches, and never
// asks for an offset past what it knows to be beyond the batch (which could
// skip a whole batch behind it).
func TestProbe(t *testing.T) {
	cases := []struct {
		base, last, at, hwm int64
	}{
		{5, 5, 5, 6},
		{5, 5, 5, 100},
		{5, 9, 5, 15},
		{5, 9, 7, 15},
		{5, 9, 9, 10},
		{0, 0, 0, 1},
		{100, 1_000_099, 100, 1_000_100},
		{100, 1_000_099, 500_000, 2_000_000_000},
		{7, 8, 7, 9},
	}
	for _, tc := range cases {
		checkProbe(t, tc.base, tc.last, tc.at, tc.hwm)
	}
}

func checkProbe(t *testing.T, base, last, at, hwm int64) {
	t.Helper()
	pr := newProbe(base, at, hwm)
	steps := 0
	for {
		end, ok := pr.end()
		if ok {
			assert.Equal(t, last+1, end, "batch [%d, %d] from %d below %d", base, last, at, hwm)
			break
		}
		x := pr.next()
		require.Greater(t, x, base, "probes past the base")
		require.Less(t, x, hwm, "probes below the high watermark")
		pr.answer(x, x <= last)
		steps++
		require.LessOrEqual(t, steps, bits.Len64(uint64(hwm-base))+1, "too many probes")
	}
}

func FuzzProbe(f *testing.F) {
	f.Add(int64(5), uint32(4), uint32(0), uint32(5))
	f.Add(int64(0), uint32(0), uint32(0), uint32(0))
	f.Fuzz(func(t *testing.T, base int64, span, into, beyond uint32) {
		if base < 0 || base > 1<<50 {
			return
		}
		last := base + int64(span)
		at := base + int64(into)%(int64(span)+1)
		hwm := last + 1 + int64(beyond)
		checkProbe(t, base, last, at, hwm)
	})
}
