package multiconsumer

import (
	"context"
	"errors"
	"sync"
)

// lifecycle is the consumer's life from New to Close: whether Close has
// begun, the error that stopped it for good, the public calls in flight
// that make requests, and the goroutines that are not fetchers (the
// committer, the metadata refresher, the group member, Iter senders).
//
// Close cancels reads when it begins, which ends the requests of calls in
// flight (Seek, Pending), and commits when its one timeout is up, which
// ends commits in flight. It waits for calls to return before it closes
// the transport's connections, so that none reopens one.
type lifecycle struct {
	closing   *event        // set when Close begins; never cleared
	closeDone chan struct{} // closed when Close has returned

	reads, commits       context.Context // set once in newLifecycle
	endReads, endCommits context.CancelFunc
	helpCtx              context.Context // the helpers' context; stopHelpers ends it
	stopHelpers          context.CancelFunc

	mu      sync.Mutex // guards closed and fatal, and orders calls.Add and helpers.Go before Close waits
	closed  bool       // Close has begun
	fatal   error      // the consumer cannot go on (its topic was deleted, a setting refused)
	calls   sync.WaitGroup
	helpers sync.WaitGroup
}

func newLifecycle() *lifecycle {
	l := &lifecycle{closing: newEvent(false), closeDone: make(chan struct{})}
	l.reads, l.endReads = context.WithCancel(context.Background())
	l.commits, l.endCommits = context.WithCancel(context.Background())
	l.helpCtx, l.stopHelpers = context.WithCancel(context.Background())
	return l
}

// isClosed reports whether Close has begun.
func (l *lifecycle) isClosed() bool { return l.closing.IsSet() }

// beginClose marks Close begun, and runs also (under the lock, so that no
// call registered after sees the consumer open). It reports false if
// Close had begun already.
func (l *lifecycle) beginClose(also func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	l.closed = true
	l.closing.Set()
	also()
	return true
}

// ifOpen runs f unless Close has begun, under the lock: Close does not
// begin while f runs.
func (l *lifecycle) ifOpen(f func()) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return false
	}
	f()
	return true
}

// goHelper starts f as a helper goroutine that Close waits for, unless
// Close has begun.
func (l *lifecycle) goHelper(f func(ctx context.Context)) bool {
	return l.ifOpen(func() { l.helpers.Go(func() { f(l.helpCtx) }) })
}

// fail records err as the error that stopped the consumer for good, unless
// one is recorded already; it reports whether err is the first.
func (l *lifecycle) fail(err error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.fatal != nil {
		return false
	}
	l.fatal = err
	return true
}

// err returns the error that stopped the consumer for good, or nil.
func (l *lifecycle) err() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.fatal
}

// enter registers a call that makes requests to the cluster, and returns
// ctx bounded by parent as well (l.reads for reads, l.commits for
// commits). It returns ErrClosed once Close has begun. The caller calls
// leave when its requests are done.
func (l *lifecycle) enter(ctx, parent context.Context) (_ context.Context, leave func(), _ error) {
	if !l.ifOpen(func() { l.calls.Add(1) }) {
		return nil, nil, ErrClosed
	}
	ctx, cancel := context.WithCancelCause(ctx)
	stop := context.AfterFunc(parent, func() { cancel(ErrClosed) })
	return ctx, func() {
		stop()
		cancel(nil)
		l.calls.Done()
	}, nil
}

// closedErr returns ErrClosed for err when ctx (from enter) ended because
// the consumer closed, and err otherwise.
func closedErr(ctx context.Context, err error) error {
	if err != nil && errors.Is(context.Cause(ctx), ErrClosed) {
		return ErrClosed
	}
	return err
}
