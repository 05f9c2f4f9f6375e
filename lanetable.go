package multiconsumer

// laneTable finds Process's lanes by bucket (see processor.lane): open
// addressing with linear probing over a power-of-two array of (bucket,
// lane) pairs, at most half full; a delete moves the entries after it
// back, so there are no tombstones. It does what a map[uint64]*lane did
// without hashing the bucket again (a bucket is a hash already) and
// without the map's control groups: a lookup reads one 16-byte slot, most
// often, where ByKey looks a lane up for every message.
type laneTable struct {
	slots []laneSlot
	n     int
}

type laneSlot struct {
	bucket uint64
	l      *lane // nil: empty
}

// len returns the number of buckets held.
func (t *laneTable) len() int { return t.n }

// get returns the first lane of bucket b, nil if none.
func (t *laneTable) get(b uint64) *lane {
	if t.n == 0 {
		return nil
	}
	mask := uint64(len(t.slots) - 1)
	for i := b & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.l == nil {
			return nil
		}
		if s.bucket == b {
			return s.l
		}
	}
}

// set makes l the first lane of bucket b; l is not nil.
func (t *laneTable) set(b uint64, l *lane) {
	if 2*(t.n+1) > len(t.slots) {
		t.grow()
	}
	mask := uint64(len(t.slots) - 1)
	for i := b & mask; ; i = (i + 1) & mask {
		s := &t.slots[i]
		if s.l == nil {
			s.bucket, s.l = b, l
			t.n++
			return
		}
		if s.bucket == b {
			s.l = l
			return
		}
	}
}

// del removes bucket b.
func (t *laneTable) del(b uint64) {
	if t.n == 0 {
		return
	}
	mask := uint64(len(t.slots) - 1)
	i := b & mask
	for ; t.slots[i].bucket != b || t.slots[i].l == nil; i = (i + 1) & mask {
		if t.slots[i].l == nil {
			return // not there
		}
	}
	// Move back each entry after the hole that may fill it: one whose
	// home slot is not cyclically within (hole, its slot].
	for j := (i + 1) & mask; t.slots[j].l != nil; j = (j + 1) & mask {
		home := t.slots[j].bucket & mask
		if (j-home)&mask >= (j-i)&mask {
			t.slots[i] = t.slots[j]
			i = j
		}
	}
	t.slots[i] = laneSlot{}
	t.n--
}

func (t *laneTable) grow() {
	old := t.slots
	t.slots = make([]laneSlot, max(16, 2*len(old)))
	t.n = 0
	for _, s := range old {
		if s.l != nil {
			t.set(s.bucket, s.l)
		}
	}
}

// all calls each with the first lane of every bucket.
func (t *laneTable) all(each func(l *lane)) {
	for _, s := range t.slots {
		if s.l != nil {
			each(s.l)
		}
	}
}
