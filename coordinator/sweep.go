package coordinator

import (
	"context"
	"errors"
	"slices"
	"time"
)

// DefaultRecordRetention is how long a finished replication's record stays
// in the state bucket, for `snapjet status` and the nats CLI.
const DefaultRecordRetention = 30 * 24 * time.Hour

// Sweep removes what finished replications left behind: the stream of a
// replication that is over or has no record (a sender killed after done),
// the copies of such replications left at sites that were away when they
// ended,
// and the records of replications that finished longer than retention ago.
// A record or stream that cannot be read now is left alone: only a known
// end removes anything. It returns how many streams and records it removed.
func (c *Coordinator) Sweep(ctx context.Context, retention time.Duration) (streamsGone, recordsGone int, err error) {
	ids, err := c.stream.List(ctx, "")
	if err != nil {
		return 0, 0, err
	}
	var orphans []string
	for _, id := range ids {
		if c.over(ctx, id) {
			orphans = append(orphans, id)
		}
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
	streamsGone += c.sweepSites(ctx, all)
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

// siteListWait bounds the listing of one site's copies.
const siteListWait = 5 * time.Second

// sweepSites deletes the copies left at sites that were away when their
// replication ended: a copy whose record is over or gone. The sites are
// those the records name. A site that cannot be reached now is left for a
// later sweep. It returns how many copies it deleted.
func (c *Coordinator) sweepSites(ctx context.Context, all []*Replication) int {
	alive := map[string]bool{}
	var sites []string
	for _, r := range all {
		alive[r.ID] = !r.State.Terminal()
		for _, t := range r.Targets {
			if t.Site != "" && !slices.Contains(sites, t.Site) {
				sites = append(sites, t.Site)
			}
		}
	}
	gone := 0
	for _, site := range sites {
		// A site away must not hold up the run that sweeps.
		lctx, cancel := context.WithTimeout(ctx, siteListWait)
		ids, err := c.stream.List(lctx, site)
		cancel()
		if err != nil {
			c.log.Debug("site not swept now", "site", site, "error", err)
			continue
		}
		for _, id := range ids {
			if alive[id] || !c.over(ctx, id) {
				continue
			}
			if err := c.stream.Delete(ctx, id, []Dest{{Site: site}}); err != nil {
				c.log.Warn("delete a copy left at a site", "replication", id, "site", site, "error", err)
				continue
			}
			c.log.Info("deleted the copy of a finished replication left at a site", "replication", id, "site", site)
			gone++
		}
	}
	return gone
}

// over reports whether replication id is known to have ended: its record
// is finished or gone. A record that cannot be read now is not evidence.
func (c *Coordinator) over(ctx context.Context, id string) bool {
	r, _, err := c.records.Get(ctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return true
	case err != nil:
		return false
	}
	return r.State.Terminal()
}
