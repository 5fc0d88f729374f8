package tests

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/internal/loopfs"
)

// smallSet is enough data to see that a source stayed untouched.
var smallSet = dataSet{seed: 11, bulk: 2 * mib}

// referenceTree fills a second copy of d on the root filesystem; a source
// filled from d must still equal it after snapjet ran.
func referenceTree(t *testing.T, d dataSet) string {
	t.Helper()
	ref := filepath.Join(t.TempDir(), "reference")
	mkdir(t, ref)
	d.fill(t, ref)
	return ref
}

// Bad input fails with an error that names the cause and loses nothing on
// the source.
func TestBadInputFailsClearly(t *testing.T) {
	subvolume := func(t *testing.T) string {
		dir := filepath.Join(newSourceFS(t, 1<<30), "data")
		smallSet.newSource(t, dir)
		return dir
	}
	plainDirOnBtrfs := func(t *testing.T) string {
		dir := filepath.Join(newSourceFS(t, 1<<30), "data")
		mkdir(t, dir)
		smallSet.fill(t, dir)
		return dir
	}
	dirOnRootFS := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "data")
		mkdir(t, dir)
		smallSet.fill(t, dir)
		return dir
	}
	missingOnBtrfs := func(t *testing.T) string {
		return filepath.Join(newSourceFS(t, 1<<30), "missing")
	}
	btrfsTarget := func(t *testing.T) string { return newTarget(t, 1<<30, "backup") }
	rootFSTarget := func(t *testing.T) string {
		dir := filepath.Join(t.TempDir(), "backup")
		mkdir(t, dir)
		return dir
	}
	tests := []struct {
		name   string
		source func(*testing.T) string
		target func(*testing.T) string
		want   string
		filled bool // the source holds smallSet and must keep it
	}{
		{name: "source is not a subvolume", source: plainDirOnBtrfs, target: btrfsTarget, want: "not a btrfs subvolume", filled: true},
		{name: "source is not on btrfs", source: dirOnRootFS, target: btrfsTarget, want: "not on a btrfs filesystem", filled: true},
		{name: "source does not exist", source: missingOnBtrfs, target: btrfsTarget, want: "does not exist"},
		{name: "target does not exist", source: subvolume, target: missingOnBtrfs, want: "does not exist", filled: true},
		{name: "target is not on btrfs", source: subvolume, target: rootFSTarget, want: "not on a btrfs filesystem", filled: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			source, target := tc.source(t), tc.target(t)
			t.Logf("%s: replicate must refuse and say so", tc.name)
			r := newReplicator(t)
			res := r.run("replicate", nil, source, target)
			if res.code == 0 {
				t.Fatalf("replicate %s %s succeeded, want an error naming %q", source, target, tc.want)
			}
			if !strings.Contains(res.stderr, tc.want) {
				t.Errorf("stderr does not name the cause %q: %q", tc.want, res.stderr)
			}
			if tc.filled {
				assertSameTree(t, referenceTree(t, smallSet), source)
			}
			assertNoPartial(t, target)
		})
	}
}

// The target runs out of space: the replication fails with a clear error,
// the staging area is emptied, and the source snapshot is kept, so that
// running the same command after the disk was grown completes it.
func TestTargetOutOfSpaceKeepsSnapshotForRetry(t *testing.T) {
	source := filepath.Join(newSourceFS(t, 1<<30), "data")
	targetFS := loopfs.New(t, 128*mib) // holds about 47 MiB of data
	target := filepath.Join(targetFS.Dir, "backup")
	mkdir(t, target)
	set := dataSet{seed: 12, bulk: 80 * mib}
	size := set.newSource(t, source)
	r := newReplicator(t)

	t.Logf("replicating %d MiB to a target with room for about 47 MiB", size/mib)
	res := r.run("replicate", nil, source, target)
	if res.code == 0 {
		t.Fatal("replicate reported success although the target could not hold the data")
	}
	if !strings.Contains(strings.ToLower(res.stderr), "no space") {
		t.Errorf("stderr does not name the cause (no space): %q", res.stderr)
	}
	assertStagingEmpty(t, target)
	snap := onlySnapshot(t, source)
	assertAbsent(t, filepath.Join(target, filepath.Base(snap.Path)))
	if !snap.ReadOnly {
		t.Errorf("kept snapshot %s is writable", snap.Path)
	}
	assertSameTree(t, referenceTree(t, set), source)

	t.Log("growing the target filesystem to 1 GiB and running the same command again")
	growFS(t, targetFS, 1<<30)
	if res := r.run("replicate-retry", nil, source, target); res.code != 0 {
		t.Fatalf("retry failed with code %d: %s", res.code, res.stderr)
	}
	assertReplicated(t, snap.Path, target)
}
