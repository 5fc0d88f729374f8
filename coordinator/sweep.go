package coordinator

import (
	"context"
	"errors"
	"time"
)

// DefaultRecordRetention is how long a finished replication's record stays
// in the state bucket, for `snapjet status` and the nats CLI.
const DefaultRecordRetention = 30 * 24 * time.Hour

// Sweep removes what finished replications left behind: the stream of a
// replication that is over or has no record (a sender killed after done),
// and the records of replications that finished longer than retention ago.
// A record or stream that cannot be read now is left alone: only a known
// end removes anything. It returns how many streams and records it removed.
func (c *Coordinator) Sweep(ctx context.Context, retention time.Duration) (streamsGone, recordsGone int, err error) {
	ids, err := c.stream.List(ctx)
	if err != nil {
		return 0, 0, err
	}
	var orphans []string
	for _, id := range ids {
		r, _, err := c.records.Get(ctx, id)
		switch {
		case errors.Is(err, ErrNotFound):
		case err != nil:
			continue
		case !r.State.Terminal():
			continue
		}
		orphans = append(orphans, id)
	}
	for _, id := range orphans {
		if err := c.Finish(ctx, id); err != nil {
			return streamsGone, 0, err
		}
		c.log.Info("deleted the stream of a finished replication", "replication", id)
		streamsGone++
	}
	all, err := c.records.List(ctx)
	if err != nil {
		return streamsGone, 0, err
	}
	cutoff := c.now().Add(-retention)
	for _, r := range all {
		if !r.State.Terminal() || r.Updated.After(cutoff) {
			continue
		}
		if err := c.records.Delete(ctx, r.ID); err != nil {
			return streamsGone, recordsGone, err
		}
		recordsGone++
	}
	if recordsGone > 0 {
		c.log.Info("expired finished replication records", "records", recordsGone, "older_than", retention)
	}
	return streamsGone, recordsGone, nil
}
