package multiconsumer

// probe finds where an empty record batch ends. Log compaction keeps a
// batch whose records are all gone when it is an idempotent producer's
// last, so that its sequence numbers survive; a fetch at any offset in it
// returns it, and nothing else when it ends a log segment. Its last offset
// is in the batch header, but kafka-go's decoder drops it. So the worker
// asks for offsets past its base until it finds the first one that returns
// something else: a binary search between the base and the high watermark
// (the batch ends below it), a few round trips even for a batch that spans
// millions of offsets. It is plain data, tested without a broker.
type probe struct {
	base int64 // the empty batch's base offset
	lo   int64 // the highest offset known to be in it
	hi   int64 // the lowest offset known to be past it
}

// newProbe starts a probe of the empty batch at base, which a fetch at
// offset at (in the batch) returned, below the high watermark hwm.
func newProbe(base, at, hwm int64) *probe {
	lo := max(base, at)
	return &probe{base: base, lo: lo, hi: max(hwm, lo+1)}
}

// next returns the offset to fetch next. It is only asked for while end
// reports false.
func (pr *probe) next() int64 { return pr.lo + (pr.hi-pr.lo)/2 }

// answer records what a fetch at offset at returned: the empty batch again
// (same), or something else (a later batch).
func (pr *probe) answer(at int64, same bool) {
	if same {
		pr.lo = max(pr.lo, at)
	} else {
		pr.hi = min(pr.hi, at)
	}
}

// end returns the offset after the empty batch, once it is known.
func (pr *probe) end() (int64, bool) { return pr.lo + 1, pr.hi <= pr.lo+1 }
