package multiconsumer

import (
	"context"
	"slices"
	"sync"
)

// session is the consumer's fetchers (workers) and the partitions each
// fetches. A change of partitions touches only the workers whose partitions
// change: an added partition goes to the worker that fetches the fewest,
// and is fetched from its next round on; a removed one leaves its worker at
// the worker's next round. The fetches in flight of the partitions that
// stay are never cancelled. Only when the number of workers must change
// (Config.NumWorkers and PartitionsPerWorker set it from the number of
// partitions) are they all stopped and started again, going on from the
// fetch positions the last ones left.
//
// A partition given up (book.retire) is neither fetched nor delivered from
// then on, so its worker may let it go at leisure.
type session struct {
	env        *fetchEnv
	numWorkers func(partitions int) int
	// share is a share-group member's fetcher, which runs in place of the
	// workers (one share session per broker); nil otherwise. Set once.
	share *shareFetcher

	mu        sync.Mutex // guards the fields below
	halted    bool       // Close began, or the consumer stopped for good: nothing starts
	stop      context.CancelFunc
	workers   []*worker
	owner     map[int]*worker   // partition -> the worker that fetches it
	positions map[int]*fetchPos // partition -> its fetch position, kept across restarts

	goroutines sync.WaitGroup // the workers
}

func newSession(env *fetchEnv, numWorkers func(int) int) *session {
	return &session{env: env, numWorkers: numWorkers, owner: map[int]*worker{}, positions: map[int]*fetchPos{}}
}

// set makes the workers fetch parts (sorted), and nothing else.
func (s *session) set(parts []int) {
	s.mu.Lock()
	if s.halted {
		s.mu.Unlock()
		return
	}
	if s.share != nil {
		s.mu.Unlock()
		s.share.set(parts)
		return
	}
	s.env.q.setPartitions(len(parts))
	if len(s.workers) > 0 && len(s.workers) == s.numWorkers(len(parts)) {
		s.changeLocked(parts)
		s.mu.Unlock()
		return
	}
	s.mu.Unlock()
	s.restart(parts)
}

// changeLocked moves partitions in and out of the running workers. s.mu
// is held.
func (s *session) changeLocked(parts []int) {
	for p, w := range s.owner {
		if _, ok := slices.BinarySearch(parts, p); !ok {
			w.drop(p)
			delete(s.owner, p)
			// Its worker may still be fetching it, in the round in
			// flight: the position is its until then. If the
			// partition comes back, its book entry has a new epoch
			// (revoke, grant), and a fresh position starts from it.
			delete(s.positions, p)
		}
	}
	load := make(map[*worker]int, len(s.workers))
	for _, w := range s.owner {
		load[w]++
	}
	for _, p := range parts {
		if _, ok := s.owner[p]; ok {
			continue
		}
		w := s.workers[0]
		for _, o := range s.workers[1:] {
			if load[o] < load[w] {
				w = o
			}
		}
		fp := &fetchPos{} // fetched afresh from where the book says
		s.positions[p] = fp
		s.owner[p] = w
		load[w]++
		w.give(p, fp)
	}
}

// restart stops every worker, and starts numWorkers(len(parts)) new ones,
// each with its chunk of parts, from the fetch positions the last ones
// left.
func (s *session) restart(parts []int) {
	s.stopWorkers()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.halted {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stop = cancel
	chunked := chunks(parts, s.numWorkers(len(parts)))
	s.workers = s.workers[:0]
	clear(s.owner)
	for i, chunk := range chunked {
		pos := make(map[int]*fetchPos, len(chunk))
		wake := newWakeup()
		w := newWorker(s.env, i, chunk, pos, wake)
		for _, p := range chunk {
			if s.positions[p] == nil {
				s.positions[p] = &fetchPos{}
			}
			pos[p] = s.positions[p]
			s.owner[p] = w
		}
		s.workers = append(s.workers, w)
		// Started under s.mu: halt, which sets halted under it, then
		// waits for every worker started before.
		s.goroutines.Go(func() { w.run(ctx) })
	}
}

// stopWorkers cancels the workers and their fetches, and waits for them.
func (s *session) stopWorkers() {
	s.mu.Lock()
	stop := s.stop
	s.stop = nil
	s.workers = nil
	clear(s.owner)
	s.mu.Unlock()
	if stop != nil {
		stop()
	}
	s.goroutines.Wait()
}

// halt stops the workers for good: nothing starts after it.
// A share fetcher stops fetching, and still acknowledges until Close
// closes it.
func (s *session) halt() {
	s.mu.Lock()
	s.halted = true
	s.mu.Unlock()
	if s.share != nil {
		s.share.stop()
		return
	}
	s.stopWorkers()
}

// wake makes the workers of parts fetch them again at once: it cancels
// their rounds in flight, and ends their waits (a Seek).
func (s *session) wake(parts []int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	woken := make(map[*worker]bool, len(parts))
	for _, p := range parts {
		if w := s.owner[p]; w != nil && !woken[w] {
			w.wake.poke()
			woken[w] = true
		}
	}
}

// count returns the number of workers.
func (s *session) count() int {
	if s.share != nil {
		return 1
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.workers)
}
