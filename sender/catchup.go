package sender

import (
	"context"
	"errors"
	"path/filepath"
	"slices"
	"sort"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/coordinator"
	"github.com/snapjet/snapjet/streams"
)

// catchUpPlan maps each snapshot (by UUID) that some target should receive
// before the new one to those targets: for every target with a base, the
// snapshots newer than it that choose keeps. A target without a base gets
// a full send of the new snapshot and no history.
func catchUpPlan(snaps []btrfs.Info, inv map[string]streams.Inventory, choose func([]btrfs.Info) []btrfs.Info) map[btrfs.UUID][]string {
	plan := map[btrfs.UUID][]string{}
	for t, i := range inv {
		base := chooseParent(snaps, i)
		if base.UUID.IsZero() {
			continue
		}
		var missing []btrfs.Info
		for _, s := range snaps[slices.IndexFunc(snaps, func(s btrfs.Info) bool { return s.UUID == base.UUID })+1:] {
			if s.ReadOnly {
				missing = append(missing, s)
			}
		}
		if len(missing) == 0 {
			continue
		}
		for _, s := range choose(missing) {
			plan[s.UUID] = append(plan[s.UUID], t)
		}
	}
	for _, ts := range plan {
		sort.Strings(ts)
	}
	return plan
}

// catchUp sends to the targets that were away the intermediate snapshots
// their retention keeps (opt.Intermediates), oldest first, each as an
// incremental from the newest snapshot the target holds by then, and
// records what they received in inv, so that the new snapshot follows as
// an incremental from the last of them. A snapshot with the UUID next is
// judged with the others but not sent: the caller sends it next. A target
// whose catch-up fails stops catching up and gets the new snapshot from
// the base it has; the next run tries again.
func (s *Sender) catchUp(ctx context.Context, src string, srcInfo btrfs.Info, opt Options, snaps []btrfs.Info, next btrfs.UUID,
	inv map[string]streams.Inventory, chunk int, window int64) error {
	if opt.Intermediates == nil {
		return nil
	}
	plan := catchUpPlan(snaps, inv, opt.Intermediates)
	delete(plan, next)
	stopped := map[string]bool{}
	for i, snap := range snaps {
		var targets []string
		for _, t := range plan[snap.UUID] {
			if !stopped[t] {
				targets = append(targets, t)
			}
		}
		if len(targets) == 0 {
			continue
		}
		sub := map[string]streams.Inventory{}
		for _, t := range targets {
			sub[t] = inv[t]
		}
		name := filepath.Base(snap.Path)
		s.Log.Info("catching up: sending an intermediate snapshot the targets' retention keeps", "snapshot", name, "targets", targets)
		base := coordinator.SplitID(replicationID(name, srcInfo.UUID.String()), "catchup")
		recs, err := s.createRecords(ctx, src, srcInfo, snap, base, groupByParent(snaps[:i], sub), sub, nil, chunk, window)
		if errors.Is(err, coordinator.ErrExists) {
			// An earlier catch-up of this snapshot failed: the next
			// unfinished-run check retries that one; this run goes on.
			s.Log.Warn("catching up: an earlier catch-up of this snapshot is on record; skipping it", "snapshot", name, "targets", targets)
			continue
		}
		if err != nil {
			return err
		}
		for _, r := range recs {
			if err := s.Coord.Serve(r.ID); err != nil {
				return err
			}
		}
		if _, err := s.driveRun(ctx, snap.UUID.String(), targets); err != nil {
			return err
		}
		for _, t := range targets {
			if committed(ctx, s.Coord.Store(), recs, t) {
				i := inv[t]
				i.Snapshots = append(i.Snapshots, streams.Held{Name: name, ReceivedUUID: snap.UUID.String()})
				inv[t] = i
				continue
			}
			s.Log.Warn("catching up: target did not receive the intermediate snapshot; it gets the new one from the base it has", "snapshot", name, "target", t)
			stopped[t] = true
		}
	}
	return nil
}

// committed reports whether target committed the snapshot of recs, in
// whichever of them (or the record it moved to) it ended.
func committed(ctx context.Context, store coordinator.Records, recs []*coordinator.Replication, target string) bool {
	for _, r := range recs {
		id := r.ID
		for id != "" {
			cur, _, err := store.Get(ctx, id)
			if err != nil {
				return false
			}
			t := cur.Targets[target]
			if t == nil {
				break
			}
			if t.State != coordinator.TMoved {
				return t.State == coordinator.TCommitted
			}
			id = t.MovedTo
		}
	}
	return false
}
