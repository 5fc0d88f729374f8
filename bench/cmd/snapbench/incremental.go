package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/snapjet/snapjet/bench/dataset"
	"github.com/snapjet/snapjet/bench/report"
	"github.com/snapjet/snapjet/btrfs"
)

const mutationFraction = 0.01

// incrementalSet is data set d: set b's snapshot as the parent, and a next
// version with 1% of the bytes overwritten plus renames and deletes. The
// pipes send the increment between two fixed snapshots; the snapjet rows
// rebuild the source from the parent, replicate it as their base
// (untimed), apply the same mutation and time the incremental replication.
func (b *bench) incrementalSet(ctx context.Context) error {
	base, err := b.prepare(ctx, "b", textDesc, b.genText)
	if err != nil {
		return err
	}
	ds := &dataSet{
		subvol: filepath.Join(b.src.Dir, "d"),
		snap:   filepath.Join(b.src.Dir, "snaps", "d.snap"),
		parent: base.snap,
	}
	var changes dataset.Changes
	ds.mutation = func(ctx context.Context, dir string) error {
		ch, err := dataset.Mutate(ctx, dir, mutationFraction, b.cfg.seed)
		changes = ch
		return err
	}
	t0 := time.Now()
	if err := btrfs.Snapshot(ctx, base.snap, ds.subvol, false); err != nil {
		return err
	}
	if err := ds.mutation(ctx, ds.subvol); err != nil {
		return err
	}
	if err := btrfs.Sync(ds.subvol); err != nil {
		return err
	}
	if err := btrfs.Snapshot(ctx, ds.subvol, ds.snap, true); err != nil {
		return err
	}
	ds.Dataset = &report.Dataset{Key: "d", GenSeconds: time.Since(t0).Seconds()}
	if err := b.measureStream(ctx, ds); err != nil {
		return err
	}
	ds.Description = fmt.Sprintf("incremental on b: %.1f MiB overwritten in %d files, %d renamed, %d deleted",
		float64(changes.Overwritten)/(1<<20), changes.TouchedFiles, changes.Renamed, changes.Deleted)
	b.sets["d"] = ds
	b.order = append(b.order, ds)
	slog.Info("data set ready", "set", "d", "stream", ds.StreamBytes, "changes", changes)
	b.methods(ctx, ds)
	return nil
}
