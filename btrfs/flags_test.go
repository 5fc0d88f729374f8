package btrfs_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"golang.org/x/sys/unix"
)

// TestSetReadOnlyFlagKeepsReceivedUUID follows the receiver's commit: a
// received subvolume cannot move to another directory while read-only, so
// the flag is cleared, the subvolume renamed and the flag set again. The
// received UUID, which the next incremental receive looks its parent up
// by, must survive all of it, and so must the contents.
func TestSetReadOnlyFlagKeepsReceivedUUID(t *testing.T) {
	ctx := context.Background()
	// Separate filesystems, so that the incremental below can only find
	// its parent by the received UUID, not by the source's own UUID.
	srcFS, dstFS := newFS(t, smallFS), newFS(t, smallFS)
	src := filepath.Join(srcFS, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	populate(t, src)
	snap := filepath.Join(srcFS, "snap")
	must(t, btrfs.Snapshot(ctx, src, snap, true))
	staged := sendReceive(t, snap, btrfs.SendOptions{}, mkdir(t, filepath.Join(dstFS, "staging")))
	want := inspect(t, staged).ReceivedUUID
	final := filepath.Join(mkdir(t, filepath.Join(dstFS, "target")), "snap")

	if err := os.Rename(staged, final); !errors.Is(err, unix.EROFS) {
		t.Fatalf("moving a read-only subvolume to another directory: %v, want EROFS (else the commit dance is unneeded)", err)
	}
	steps := []struct {
		name string
		do   func() error
		path string // where the subvolume is afterwards
		ro   bool
	}{
		{"clear the flag", func() error { return btrfs.SetReadOnlyFlag(staged, false) }, staged, false},
		{"rename into the target", func() error { return os.Rename(staged, final) }, final, false},
		{"set the flag", func() error { return btrfs.SetReadOnlyFlag(final, true) }, final, true},
		{"set it again", func() error { return btrfs.SetReadOnlyFlag(final, true) }, final, true},
	}
	for _, step := range steps {
		if err := step.do(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		info := inspect(t, step.path)
		if info.ReadOnly != step.ro || info.ReceivedUUID != want {
			t.Fatalf("after %q: read-only %v (want %v), received UUID %q (want %q)", step.name, info.ReadOnly, step.ro, info.ReceivedUUID, want)
		}
	}
	assertWritable(t, final, false)
	assertSameTree(t, snap, final)

	// The received UUID still finds the parent: an incremental applies.
	writeFile(t, filepath.Join(src, "after-commit"), []byte("next"), 0o644)
	next := filepath.Join(srcFS, "next")
	must(t, btrfs.Snapshot(ctx, src, next, true))
	assertSameTree(t, next, sendReceive(t, next, btrfs.SendOptions{Parent: snap}, filepath.Dir(final)))
}

func TestSetReadOnlyFlagRefuses(t *testing.T) {
	dir := newFS(t, smallFS)
	for _, tt := range []struct {
		name string
		path string
	}{
		{"missing path", filepath.Join(dir, "missing")},
		{"plain directory", mkdir(t, filepath.Join(dir, "plain"))},
		{"not on btrfs", t.TempDir()},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := btrfs.SetReadOnlyFlag(tt.path, true); err == nil {
				t.Errorf("SetReadOnlyFlag(%s) succeeded", tt.path)
			}
		})
	}
}
