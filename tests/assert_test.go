package tests

import (
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/treecmp"
)

// snapshotsOf lists the snapshots snapjet keeps of source, oldest first.
func snapshotsOf(t *testing.T, source string) []btrfs.Info {
	t.Helper()
	infos, err := btrfs.List(filepath.Join(filepath.Dir(source), ".snapjet", filepath.Base(source)))
	if err != nil {
		t.Fatalf("list snapshots of %s: %v", source, err)
	}
	return infos
}

// onlySnapshot returns the one snapshot snapjet keeps of source.
func onlySnapshot(t *testing.T, source string) btrfs.Info {
	t.Helper()
	snaps := snapshotsOf(t, source)
	if len(snaps) != 1 {
		t.Fatalf("want exactly one snapshot of %s, have %d: %v", source, len(snaps), snapshotPaths(snaps))
	}
	return snaps[0]
}

func snapshotPaths(infos []btrfs.Info) []string {
	var out []string
	for _, in := range infos {
		out = append(out, in.Path)
	}
	return out
}

// assertReplicated checks what a user checks after snapshot was replicated
// to each target: exactly one subvolume there carries the snapshot as its
// received UUID, it has the snapshot's name, it is read-only, its tree
// equals the snapshot's (content, modes, owners, xattrs, links, times), and
// no partial receive is left in the staging area.
func assertReplicated(t *testing.T, snapshot string, targets ...string) {
	t.Helper()
	src, err := btrfs.Inspect(snapshot)
	if err != nil {
		t.Fatalf("inspect source snapshot: %v", err)
	}
	if !src.ReadOnly {
		t.Errorf("source snapshot %s is writable", snapshot)
	}
	for _, target := range targets {
		subs, err := btrfs.List(target)
		if err != nil {
			t.Fatalf("list %s: %v", target, err)
		}
		var got []btrfs.Info
		for _, s := range subs {
			if s.ReceivedUUID == src.UUID {
				got = append(got, s)
			}
		}
		if len(got) != 1 {
			t.Errorf("%s: want exactly one subvolume received from %s (uuid %s), have %d: %v",
				target, snapshot, src.UUID, len(got), snapshotPaths(got))
			continue
		}
		dst := got[0]
		if want := filepath.Join(target, filepath.Base(snapshot)); dst.Path != want {
			t.Errorf("replica of %s is at %s, want %s", snapshot, dst.Path, want)
		}
		if !dst.ReadOnly {
			t.Errorf("replica %s is writable", dst.Path)
		}
		assertSameTree(t, snapshot, dst.Path)
		assertNoPartial(t, target)
		t.Logf("%s: committed replica %s is read-only, received uuid %s, same tree as the source", target, dst.Path, dst.ReceivedUUID)
	}
}

// assertSameTree compares two trees the way a replication user cares about.
func assertSameTree(t *testing.T, want, got string) {
	t.Helper()
	diffs, err := treecmp.Compare(want, got, treecmp.Options{Times: true})
	if err != nil {
		t.Fatalf("compare %s with %s: %v", want, got, err)
	}
	for _, d := range diffs {
		t.Errorf("%s vs %s: %s", want, got, d)
	}
}

// assertNoPartial checks that target's staging area holds no subvolume.
func assertNoPartial(t *testing.T, target string) {
	t.Helper()
	for _, p := range stagedSubvolumes(t, target) {
		t.Errorf("partial receive left behind: %s", p)
	}
}

// assertStagingEmpty checks that target's staging area holds nothing at
// all, after a failure that must clean up after itself.
func assertStagingEmpty(t *testing.T, target string) {
	t.Helper()
	incoming := filepath.Join(target, ".snapjet", "incoming")
	entries, err := os.ReadDir(incoming)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("staging area %s is not empty: %s", incoming, e.Name())
	}
}

// stagedSubvolumes lists the subvolumes under TARGET/.snapjet/incoming.
func stagedSubvolumes(t *testing.T, target string) []string {
	t.Helper()
	var out []string
	incoming := filepath.Join(target, ".snapjet", "incoming")
	err := filepath.WalkDir(incoming, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.IsDir() && p != incoming && btrfs.IsSubvolume(p) {
			out = append(out, p)
			return filepath.SkipDir
		}
		return nil
	})
	if err != nil {
		t.Fatalf("walk %s: %v", incoming, err)
	}
	return out
}

// onlyStaged returns the one partial receive in target's staging area.
func onlyStaged(t *testing.T, target string) btrfs.Info {
	t.Helper()
	staged := stagedSubvolumes(t, target)
	if len(staged) != 1 {
		t.Fatalf("want one partial receive in %s, have %v", target, staged)
	}
	info, err := btrfs.Inspect(staged[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("partial receive after the kill: %s (uuid %s, read-only %v, received uuid %q)", staged[0], info.UUID, info.ReadOnly, info.ReceivedUUID)
	return info
}

// assertNoPartialCommitted checks, after a crash mid-transfer, that what
// sits at TARGET/<snapshot name> (if anything) is complete: a kill can land
// after the commit finished on disk, but never in a way that leaves a
// partial at the final name.
func assertNoPartialCommitted(t *testing.T, target string, rep replication) {
	t.Helper()
	p := filepath.Join(target, rep.SnapshotName)
	if _, err := os.Lstat(p); err != nil {
		return
	}
	if !committedAt(target, rep) {
		info, err := btrfs.Inspect(p)
		t.Errorf("%s exists after the interruption but is not a committed replica of %s: %+v %v", p, rep.SnapshotUUID, info, err)
		return
	}
	t.Logf("%s was already committed when the transfer was interrupted", p)
	assertSameTree(t, rep.Snapshot, p)
}

// committedAt reports whether TARGET/<snapshot name> is a committed replica
// of rep's snapshot as the kernel sees it: read-only, with the snapshot's
// UUID as its received UUID.
func committedAt(target string, rep replication) bool {
	info, err := btrfs.Inspect(filepath.Join(target, rep.SnapshotName))
	return err == nil && info.ReadOnly && info.ReceivedUUID.String() == rep.SnapshotUUID
}

// assertAbsent checks that nothing exists at path: a target that failed
// must not show anything under the snapshot's name.
func assertAbsent(t *testing.T, path string) {
	t.Helper()
	if _, err := os.Lstat(path); err == nil {
		info, ierr := btrfs.Inspect(path)
		t.Errorf("%s exists although its replication failed: %+v %v", path, info, ierr)
	}
}

// assertDone checks the status of the replication of snapshot: done, with
// every target committed, and returns it.
func assertDone(t *testing.T, doc statusDoc, snapshotName string) replication {
	t.Helper()
	rep, ok := doc.bySnapshot(snapshotName)
	if !ok {
		t.Fatalf("status has no replication of %s", snapshotName)
	}
	if rep.State != "done" {
		t.Errorf("replication %s is %q, want done", rep.ID, rep.State)
	}
	for name, ts := range rep.Targets {
		if ts.State != "committed" {
			t.Errorf("replication %s: target %s is %q, want committed (error %q)", rep.ID, name, ts.State, ts.Error)
		}
	}
	return rep
}

// assertAllChunksApplied checks that the target applied exactly the chunks
// and bytes of the stream, none missing, and that at most maxRedelivered
// chunks reached it again (the receiver counts and skips those; 0 when
// nothing should have made the server deliver a chunk twice).
func assertAllChunksApplied(t *testing.T, rep replication, target string, maxRedelivered int64) {
	t.Helper()
	_, ts, ok := rep.target(target)
	if !ok {
		t.Fatalf("status of %s has no target for %s", rep.ID, target)
	}
	if rep.TotalChunks == 0 || ts.ChunksApplied != rep.TotalChunks || ts.BytesApplied != rep.TotalBytes {
		t.Errorf("target applied %d chunks and %d bytes, the stream has %d and %d", ts.ChunksApplied, ts.BytesApplied, rep.TotalChunks, rep.TotalBytes)
	}
	if ts.RedeliveredChunks > maxRedelivered {
		t.Errorf("%d chunks reached the target twice, want at most %d", ts.RedeliveredChunks, maxRedelivered)
	}
}

// assertCaughtUp checks that the interrupted snapshot and the newest
// snapshot of source are both complete on every target: a rerun may finish
// the interrupted replication and then take a fresh snapshot.
func assertCaughtUp(t *testing.T, interrupted replication, source string, targets ...string) {
	t.Helper()
	assertReplicated(t, interrupted.Snapshot, targets...)
	snaps := snapshotsOf(t, source)
	if len(snaps) == 0 {
		t.Fatalf("no snapshot of %s is kept", source)
	}
	if newest := snaps[len(snaps)-1].Path; newest != interrupted.Snapshot {
		assertReplicated(t, newest, targets...)
	}
}
