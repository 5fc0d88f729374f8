package coordinator

import (
	"context"
	"fmt"
	"time"
)

// watchLog is how often a wait for a target that makes no progress is
// logged, naming the target and since when.
const watchLog = 30 * time.Second

// mark is the last time a target was seen making progress, and what it
// showed then.
type mark struct {
	applied int64
	state   TargetState
	attempt int
	at      time.Time
}

// progressed updates marks from the record at now and returns, for every
// active target, how long it has made no progress. A target makes
// progress when its applied chunks or its state change, and is not behind
// while it has applied everything the sender stored so far (it waits for
// the sender, not the other way round) or while no attempt is being sent.
// Pure: the table test drives it with a fake clock.
func progressed(r *Replication, marks map[string]mark, now time.Time) map[string]time.Duration {
	idle := map[string]time.Duration{}
	for _, name := range r.Active() {
		t := r.Targets[name]
		m, seen := marks[name]
		waiting := r.State == Planned ||
			(r.State == Sending && t.ChunksApplied >= r.ChunksSent)
		if !seen || waiting || m.applied != t.ChunksApplied || m.state != t.State || m.attempt != r.Attempt {
			m = mark{applied: t.ChunksApplied, state: t.State, attempt: r.Attempt, at: now}
		}
		marks[name] = m
		idle[name] = now.Sub(m.at)
	}
	for name := range marks {
		if _, ok := idle[name]; !ok {
			delete(marks, name)
		}
	}
	return idle
}

// Watchdog fails every target of record id that makes no progress for
// stall, all of them at once, and says every watchLog which targets it
// waits for; it returns when ctx ends. It is the bound on every wait for a
// receiver: in the window, in state sent, and for a receiver that died when
// the rest of the stream fitted in the window. The sender runs it while it
// drives the record.
func (c *Coordinator) Watchdog(ctx context.Context, id string, stall time.Duration) {
	tick := time.NewTicker(min(stall/4, 5*time.Second))
	defer tick.Stop()
	marks := map[string]mark{}
	logged := map[string]time.Time{}
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		r, _, err := c.records.Get(ctx, id)
		if err != nil {
			if ctx.Err() == nil {
				c.log.Warn("watchdog cannot read the record; link to the server lost?", "replication", id, "error", err)
			}
			continue
		}
		if w, ok := c.records.(workSyncer); ok {
			// Views that could not be written with the record are written now.
			if err := w.SyncWork(ctx, r); err != nil && ctx.Err() == nil {
				c.log.Warn("work views lag behind the record", "replication", id, "error", err)
			}
		}
		now := time.Now()
		for name, d := range progressed(r, marks, now) {
			t := r.Targets[name]
			switch {
			case d > stall:
				reason := fmt.Sprintf("no progress for %v (state %s, %d of %d chunks applied): its receiver or the link to its site is down; the next run retries it",
					d.Round(time.Second), t.State, t.ChunksApplied, r.ChunksSent)
				c.log.Warn("dropping a stalled target from this run", "replication", id, "target", name, "reason", reason)
				if err := c.FailTarget(ctx, id, r.Attempt, name, reason); err != nil {
					c.log.Warn("drop stalled target", "replication", id, "target", name, "error", err)
				}
			case d >= watchLog && now.Sub(logged[name]) >= watchLog:
				logged[name] = now
				c.log.Info("waiting for target", "replication", id, "target", name, "state", t.State,
					"no_progress_for", d.Round(time.Second), "applied_chunks", t.ChunksApplied, "stored_chunks", r.ChunksSent,
					"gives_up_in", (stall - d).Round(time.Second))
			}
		}
	}
}
