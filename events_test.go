package multiconsumer

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

func TestEventSetClear(t *testing.T) {
	t.Parallel()
	var zero event
	assert.False(t, zero.IsSet(), "zero value")
	assert.False(t, isClosed(zero.Done()), "zero value")

	tests := []struct {
		name string
		ops  string // s: Set, c: Clear
		want bool
	}{
		{"new cleared", "", false},
		{"set", "s", true},
		{"set twice", "ss", true},
		{"clear cleared", "c", false},
		{"set clear", "sc", false},
		{"set clear clear", "scc", false},
		{"set clear set", "scs", true},
	}
	for _, tt := range tests {
		for _, initial := range []bool{false, true} {
			e := newEvent(initial)
			want := initial
			for _, op := range tt.ops {
				if op == 's' {
					e.Set()
					want = true
				} else {
					e.Clear()
					want = false
				}
			}
			if !initial {
				assert.Equal(t, tt.want, want, "%s: table", tt.name)
			}
			assert.Equal(t, want, e.IsSet(), "%s from %v", tt.name, initial)
			assert.Equal(t, want, isClosed(e.Done()), "%s from %v: Done", tt.name, initial)
			if want {
				assert.NoError(t, e.Wait(context.Background()), "%s from %v: Wait", tt.name, initial)
			} else {
				assert.ErrorIs(t, e.Wait(canceled()), context.Canceled, "%s from %v: Wait", tt.name, initial)
			}
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

func TestEventDone(t *testing.T) {
	t.Parallel()
	e := newEvent(false)
	d1 := e.Done()
	assert.Equal(t, d1, e.Done(), "same channel while cleared")
	require.False(t, isClosed(d1))

	e.Set()
	assert.True(t, isClosed(d1), "Done is closed by Set")
	assert.True(t, isClosed(e.Done()))

	e.Clear()
	d2 := e.Done()
	assert.True(t, isClosed(d1), "a Clear does not reopen an old Done")
	assert.False(t, isClosed(d2), "Done after Clear is a new open channel")
	assert.NotEqual(t, d1, d2)

	e.Set()
	assert.True(t, isClosed(d2))
}

func TestEventWait(t *testing.T) {
	t.Parallel()
	t.Run("set", func(t *testing.T) {
		t.Parallel()
		assert.NoError(t, newEvent(true).Wait(context.Background()))
	})
	t.Run("set while waiting", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEvent(false)
			got := make(chan error, 1)
			go func() { got <- e.Wait(context.Background()) }()
			synctest.Wait()
			require.Empty(t, got, "Wait returned while cleared")
			e.Set()
			assert.NoError(t, <-got)
		})
	})
	t.Run("cancelled while waiting", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEvent(false)
			ctx, cancel := context.WithCancel(context.Background())
			got := make(chan error, 1)
			go func() { got <- e.Wait(ctx) }()
			synctest.Wait()
			require.Empty(t, got, "Wait returned while cleared")
			cancel()
			assert.ErrorIs(t, <-got, context.Canceled)
			assert.False(t, e.IsSet())
		})
	})
	t.Run("deadline", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			e := newEvent(false)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			start := time.Now()
			assert.ErrorIs(t, e.Wait(ctx), context.DeadlineExceeded)
			assert.Equal(t, time.Minute, time.Since(start))
		})
	})
	t.Run("cleared again before the waiter runs", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			// A waiter holds the Done of its generation: a Set wakes it even
			// if a Clear follows at once.
			e := newEvent(false)
			got := make(chan error, 1)
			go func() { got <- e.Wait(context.Background()) }()
			synctest.Wait()
			e.Set()
			e.Clear()
			assert.NoError(t, <-got)
		})
	})
}

func TestEventWakesAllWaiters(t *testing.T) {
	t.Parallel()
	const waiters = 50
	e := newEvent(false)
	ctx := testCtx(t)

	var started, done sync.WaitGroup
	errs := make(chan error, waiters)
	started.Add(waiters)
	for range waiters {
		done.Go(func() {
			started.Done()
			errs <- e.Wait(ctx)
		})
	}
	started.Wait()
	require.Empty(t, errs, "a waiter returned before Set")

	e.Set()
	done.Wait()
	close(errs)
	n := 0
	for err := range errs {
		assert.NoError(t, err)
		n++
	}
	assert.Equal(t, waiters, n)
}

// TestEventConcurrent runs Set, Clear, IsSet, Done and Wait from many
// goroutines, for the race detector; a final Set releases every waiter.
func TestEventConcurrent(t *testing.T) {
	t.Parallel()
	e := newEvent(false)
	ctx := testCtx(t)
	var togglers, waiters sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		waiters.Go(func() { errs <- e.Wait(ctx) })
	}
	for i := range 8 {
		togglers.Go(func() {
			for j := range 200 {
				switch (i + j) % 4 {
				case 0:
					e.Set()
				case 1:
					e.Clear()
				case 2:
					_ = e.IsSet()
				case 3:
					_ = isClosed(e.Done())
				}
			}
		})
	}
	togglers.Wait()
	e.Set()
	waiters.Wait()
	close(errs)
	for err := range errs {
		assert.NoError(t, err)
	}
	assert.True(t, e.IsSet())
}
