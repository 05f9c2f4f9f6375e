package main

import (
	"slices"
	"testing"
)

// TestAnalyze checks the rebalance figures on a hand-made record: two
// partitions, A (0) owns both; B (1) starts at 100 and takes partition 1;
// stable observed at 300.
func TestAnalyze(t *testing.T) {
	const ms = int64(1e6)
	d := func(at int64, member, part int) delivery {
		return delivery{t: at * ms, member: int8(member), part: int32(part)}
	}
	ds := []delivery{
		d(10, 0, 0), d(10, 0, 1),
		d(50, 0, 0), d(60, 0, 1),
		d(90, 0, 0), d(95, 0, 1), // B starts at 100
		d(130, 0, 0), d(140, 0, 1), // partition 1's last by A
		d(200, 0, 0), // a 70 ms gap of the unmoved partition, in the window
		d(250, 1, 1), // partition 1's first by B: stall 110, first 150
		d(260, 0, 0), d(270, 1, 1),
		d(400, 0, 0), // after the window: the 140 ms gap ends after it, but overlaps it
	}
	ph := analyze(ds, 2, 100*ms, 300*ms)
	if !slices.Equal(ph.Unmoved, []int{0}) || !slices.Equal(ph.Moved, []int{1}) {
		t.Fatalf("unmoved %v moved %v, want [0] [1]", ph.Unmoved, ph.Moved)
	}
	if ph.UnmovedGapMs != 140 {
		t.Errorf("unmoved gap %v, want 140", ph.UnmovedGapMs)
	}
	if ph.MovedStallMs != 110 || ph.MovedFirstMs != 150 {
		t.Errorf("moved stall %v first %v, want 110 150", ph.MovedStallMs, ph.MovedFirstMs)
	}
	if g := steadyGap(ds, 2, 0, 100*ms); g != 50 {
		t.Errorf("steady gap %v, want 50", g)
	}
}

func TestDedup(t *testing.T) {
	d := newDedup(2)
	for _, c := range []struct {
		p    int
		off  int64
		seen bool
	}{{0, 0, false}, {0, 1, false}, {1, 5, false}, {0, 1, true}, {0, 0, true}, {0, 2, false}, {1, 5, true}, {7, 0, false}} {
		if got := d.seen(c.p, c.off); got != c.seen {
			t.Errorf("seen(%d, %d) = %v, want %v", c.p, c.off, got, c.seen)
		}
	}
	if d.dups.Load() != 3 {
		t.Errorf("dups %d, want 3", d.dups.Load())
	}
}
