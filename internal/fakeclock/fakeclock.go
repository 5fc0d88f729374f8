// Package fakeclock is a clock that moves only when a test advances it,
// for the schedule and daemon tests: no test waits for real time.
package fakeclock

import (
	"sync"
	"time"
)

// Clock moves only when the test advances it.
type Clock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	Blocked chan struct{} // a send for every After call: the caller waits on the clock
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

// New is a clock at t. Blocked holds up to 1000 unread notices; a test
// that never reads it must not call After more often than that.
func New(t time.Time) *Clock {
	return &Clock{now: t, Blocked: make(chan struct{}, 1000)}
}

// Now is the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// After delivers the time once the clock has been advanced by d.
func (c *Clock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
	} else {
		c.waiters = append(c.waiters, waiter{c.now.Add(d), ch})
	}
	c.Blocked <- struct{}{}
	return ch
}

// Advance moves the clock and fires the timers that are due.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if !w.at.After(c.now) {
			w.ch <- c.now
		} else {
			kept = append(kept, w)
		}
	}
	c.waiters = kept
}
