package tests

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
)

// replicateOnce runs replicate to completion and returns the newest
// replication in the store's status.
func replicateOnce(t *testing.T, r *replicator, name, source string, targets ...string) replication {
	t.Helper()
	if res := r.run(name, nil, source, targets...); res.code != 0 {
		t.Fatalf("%s failed with code %d: %s", name, res.code, res.stderr)
	}
	rep, ok := r.storedStatus().newest()
	if !ok {
		t.Fatal("status lists no replication after a successful replicate")
	}
	return rep
}

// The target lost the snapshot the next incremental would build on (the
// committed replica was deleted there). The next replication must notice
// and fall back to a full send that ends correct.
func TestLostBaseOnTargetFallsBackToFullSend(t *testing.T) {
	source, target, _ := newPair(t, dataSet{seed: 7, bulk: 16 * mib})
	r := newReplicator(t)

	first := replicateOnce(t, r, "replicate-first", source, target)
	assertReplicated(t, first.Snapshot, target)
	t.Logf("deleting the committed replica %s on the target", first.SnapshotName)
	if err := btrfs.DeleteSubvolume(context.Background(), filepath.Join(target, first.SnapshotName)); err != nil {
		t.Fatal(err)
	}

	mutate(t, source, 77, 8*mib)
	second := replicateOnce(t, r, "replicate-second", source, target)
	if second.SnapshotName == first.SnapshotName {
		t.Fatal("the second replicate made no new replication")
	}
	if second.ParentUUID != "" {
		t.Errorf("replication %s used parent %q although the target lost it; want a full send", second.ID, second.ParentUUID)
	}
	assertReplicated(t, second.Snapshot, target)
}

// A writable subvolume without a received UUID, as an interrupted plain
// `btrfs receive` leaves behind, sits at the name of an earlier snapshot on
// the target. It is neither complete nor a possible incremental base, so the
// next replication must be a full send that ends correct.
func TestLeftoverWritableSubvolumeIsNeverABase(t *testing.T) {
	tests := []struct {
		name  string
		leave func(t *testing.T, snapshot, target string)
	}{
		{name: "truncated btrfs receive", leave: truncatedReceive},
		{name: "btrfs subvolume create", leave: createdSubvolume},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source, target, _ := newPair(t, dataSet{seed: 8, bulk: 16 * mib})
			r := newReplicator(t)

			first := replicateOnce(t, r, "replicate-first", source, target)
			leftover := filepath.Join(target, first.SnapshotName)
			t.Logf("replacing the replica %s with a leftover (%s)", leftover, tc.name)
			if err := btrfs.DeleteSubvolume(context.Background(), leftover); err != nil {
				t.Fatal(err)
			}
			tc.leave(t, first.Snapshot, target)
			info, err := btrfs.Inspect(leftover)
			if err != nil {
				t.Fatalf("the leftover is not there: %v", err)
			}
			if info.ReadOnly || !info.ReceivedUUID.IsZero() {
				t.Fatalf("the leftover is not what an interrupted receive leaves: read-only %v, received uuid %s", info.ReadOnly, info.ReceivedUUID)
			}

			mutate(t, source, 88, 4*mib)
			second := replicateOnce(t, r, "replicate-second", source, target)
			if second.ParentUUID != "" {
				t.Errorf("replication %s used parent %q, but the target has only a leftover of it; want a full send", second.ID, second.ParentUUID)
			}
			assertReplicated(t, second.Snapshot, target)
		})
	}
}

// truncatedReceive pipes the first 4 MiB of `btrfs send snapshot` into
// `btrfs receive target`, which fails and leaves a writable partial.
func truncatedReceive(t *testing.T, snapshot, target string) {
	t.Helper()
	ctx := context.Background()
	stream, send, err := btrfs.Send(ctx, snapshot, btrfs.SendOptions{})
	if err != nil {
		t.Fatal(err)
	}
	in, recv, err := btrfs.StartReceive(ctx, target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(in, stream, 4*mib); err != nil {
		t.Fatalf("feed the truncated stream: %v", err)
	}
	in.Close()
	if err := recv.Wait(); err == nil {
		t.Fatal("btrfs receive accepted a truncated stream")
	} else {
		t.Logf("btrfs receive of the truncated stream failed as expected: %v", err)
	}
	stream.Close()
	_ = send.Wait() // killed by the closed pipe
}

// createdSubvolume creates a plain writable subvolume with some content.
func createdSubvolume(t *testing.T, snapshot, target string) {
	t.Helper()
	p := filepath.Join(target, filepath.Base(snapshot))
	if err := btrfs.CreateSubvolume(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "half-written"), []byte("not a snapshot"), 0o644); err != nil {
		t.Fatal(err)
	}
}
