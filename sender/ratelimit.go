package sender

import (
	"context"
	"time"

	"golang.org/x/time/rate"
)

// wireLimiter holds the sender to a rate of wire bytes (the payload of
// each published message, after compression) per second. Its burst is a
// tenth of a second of traffic (at least burstFloor), so the rate holds
// over any window longer than that; a message larger than the burst waits
// for its bytes in burst-sized pieces. A nil *wireLimiter never waits.
type wireLimiter struct {
	lim   *rate.Limiter
	burst int
}

const burstFloor = 16 << 10

// newWireLimiter limits to bytesPerSec; 0 or less means no limit (nil).
func newWireLimiter(bytesPerSec int64) *wireLimiter {
	if bytesPerSec <= 0 {
		return nil
	}
	burst := int(max(bytesPerSec/10, burstFloor))
	l := rate.NewLimiter(rate.Limit(bytesPerSec), burst)
	// Start empty: the first message waits like every other, so that a
	// short transfer cannot exceed the rate by a whole burst.
	l.AllowN(time.Now(), burst)
	return &wireLimiter{lim: l, burst: burst}
}

// wait blocks until n more bytes may go on the wire, or ctx ends.
func (w *wireLimiter) wait(ctx context.Context, n int) error {
	if w == nil {
		return nil
	}
	for n > 0 {
		k := min(n, w.burst)
		if err := w.lim.WaitN(ctx, k); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
		n -= k
	}
	return nil
}
