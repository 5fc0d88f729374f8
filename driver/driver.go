// Package driver owns the shape every snapjet driver has (the sender's
// drive of a record, the receiver's jobs): a run repeats a step until it
// says it is done; a temporary error is retried with backoff, a permanent
// one (marked with Permanent) ends the run, and trouble that lasts longer
// than the run's bound without a successful step ends it too. The
// filesystem and NATS logic live in the steps; this package only decides
// when to try again and when to stop.
package driver

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/snapjet/snapjet/internal/retry"
)

// Step does one unit of work. done ends the run; an error is trouble.
type Step func(ctx context.Context) (done bool, err error)

// Policy bounds a run.
type Policy struct {
	// Bound ends the run when no step succeeded for this long (0: no
	// bound; the caller's context is the only one).
	Bound time.Duration
	// First and Max space the retries (defaults 250 ms and 5 s).
	First, Max time.Duration
}

// Run repeats step until it is done, ctx ends, a permanent error comes, or
// trouble outlasts p.Bound. Each retry is logged with what (the caller's
// attributes: replication, target) and since when the trouble lasts.
func Run(ctx context.Context, log *slog.Logger, what string, p Policy, step Step) error {
	b := retry.New(orDefault(p.First, 250*time.Millisecond), orDefault(p.Max, 5*time.Second))
	var since time.Time
	for {
		done, err := step(ctx)
		switch {
		case err == nil && done:
			return nil
		case err == nil:
			since = time.Time{}
			b.Reset()
			continue
		case IsPermanent(err), ctx.Err() != nil:
			return err
		}
		if since.IsZero() {
			since = time.Now()
		} else if p.Bound > 0 && time.Since(since) > p.Bound {
			return fmt.Errorf("%s made no progress for %v: %w", what, p.Bound, err)
		}
		log.Warn(what+" interrupted; retrying", "error", err, "trouble_since", since.Format(time.RFC3339))
		if err := b.Wait(ctx); err != nil {
			return err
		}
	}
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}
