package multiconsumer

import (
	"context"
	"sync"
)

// event is the Go counterpart of Python's multiprocessing.Event: a flag that
// goroutines set, clear and wait for. The zero value is a cleared event.
//
// Waiting is done on a channel that is closed when the event is set, so a
// waiter can also select on a context or on other events.
type event struct {
	mu  sync.Mutex // guards set and ch
	set bool
	ch  chan struct{} // closed while set; replaced by Clear
}

// newEvent returns an event in the given state.
func newEvent(set bool) *event {
	e := &event{}
	if set {
		e.Set()
	}
	return e
}

// chanLocked returns the channel for the current generation; e.mu is held.
func (e *event) chanLocked() chan struct{} {
	if e.ch == nil {
		e.ch = make(chan struct{})
	}
	return e.ch
}

// Set sets the event and wakes every waiter. Setting a set event does nothing.
func (e *event) Set() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.set {
		e.set = true
		close(e.chanLocked())
	}
}

// Clear clears the event. Clearing a cleared event does nothing.
func (e *event) Clear() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.set {
		e.set = false
		e.ch = make(chan struct{})
	}
}

// IsSet reports whether the event is set.
func (e *event) IsSet() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.set
}

// Done returns a channel that is closed once the event is set. A Clear after
// that does not reopen it: call Done again for the new state.
func (e *event) Done() <-chan struct{} {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.chanLocked()
}

// broadcast wakes every goroutine waiting for a change, once per change.
// The channel is made only when someone waits. The zero value is ready.
type broadcast struct {
	mu sync.Mutex    // guards ch
	ch chan struct{} // nil: nobody waits
}

// wait returns a channel closed at the next notify.
func (b *broadcast) wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

// cut ends the current round: the goroutines waiting now are woken when
// the returned function is called, those that wait from now on by the next
// notify (or cut). It is how a round of work (a metadata refresh) wakes
// those that asked before it began.
func (b *broadcast) cut() (wake func()) {
	b.mu.Lock()
	ch := b.ch
	b.ch = nil
	b.mu.Unlock()
	return func() {
		if ch != nil {
			close(ch)
		}
	}
}

// notify wakes the goroutines waiting.
func (b *broadcast) notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
		b.ch = nil
	}
}

// Wait blocks until the event is set or ctx is done, and returns ctx's error
// in the second case.
func (e *event) Wait(ctx context.Context) error {
	select {
	case <-e.Done():
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
