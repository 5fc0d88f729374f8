// Package retry owns the one way snapjet waits between tries of something
// that failed temporarily: an exponential backoff with jitter, bounded
// above, that a cancelled context interrupts at once. Drivers decide what
// to retry and for how long; this package only spaces the tries.
package retry

import (
	"context"
	"time"

	"github.com/cenkalti/backoff/v5"
)

// Backoff spaces the tries of one retried operation. Not safe for
// concurrent use; make one per loop.
type Backoff struct {
	b *backoff.ExponentialBackOff
}

// New returns a backoff starting at first and growing to at most max.
func New(first, max time.Duration) *Backoff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval = first, max
	b.Reset()
	return &Backoff{b: b}
}

// Wait sleeps for the next interval, or returns ctx's error as soon as it
// is cancelled.
func (b *Backoff) Wait(ctx context.Context) error {
	t := time.NewTimer(b.b.NextBackOff())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Reset starts again from the first interval, after a success.
func (b *Backoff) Reset() { b.b.Reset() }
