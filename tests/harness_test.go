package tests

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/treecmp"
)

// The suite's assertions are only as good as its data set and comparison:
// a plain btrfs send and receive must reproduce the data set exactly, and
// the changes mutate makes must all show up as differences.
func TestHarnessDataSetRoundTripsAndChangesAreSeen(t *testing.T) {
	ctx := context.Background()
	fsDir := newSourceFS(t, 1<<30)
	source := filepath.Join(fsDir, "data")
	dataSet{seed: 13, bulk: 8 * mib}.newSource(t, source)
	snap := filepath.Join(fsDir, "snap")
	if err := btrfs.Snapshot(ctx, source, snap, true); err != nil {
		t.Fatal(err)
	}
	target := newTarget(t, 1<<30, "backup")
	stream, send, err := btrfs.Send(ctx, snap, btrfs.SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := btrfs.Receive(ctx, target, stream); err != nil {
		t.Fatal(err)
	}
	if err := send.Wait(); err != nil {
		t.Fatal(err)
	}
	assertSameTree(t, snap, filepath.Join(target, "snap"))
	assertSameTree(t, referenceTree(t, dataSet{seed: 13, bulk: 8 * mib}), source)

	mutate(t, source, 14, 2*mib)
	diffs, err := treecmp.Compare(snap, source, treecmp.Options{Times: true, MaxDiffs: 1000})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("mutate made %d differences", len(diffs))
	if len(diffs) < 20 {
		t.Errorf("the comparison sees only %d differences after mutate: %q", len(diffs), diffs)
	}
}
