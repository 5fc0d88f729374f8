package native

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// decoy creates an empty subvolume at path carrying received UUID uuid and
// stransid, read-only when ro: what an operator's writable copy, or a
// receive of another state of the same source, looks like to a UUID lookup.
func decoy(t *testing.T, path string, uuid btrfs.UUID, stransid uint64, ro bool) {
	t.Helper()
	subvolume(t, path)
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := setReceived(fd, uuid, stransid); err != nil {
		t.Fatalf("set received UUID on %s: %v", path, err)
	}
	if ro {
		if err := setReadOnly(fd); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
	}
}

// TestParentMustBeReadOnlyWithMatchingSTransID: like btrfs receive, the
// parent of an incremental stream is a read-only subvolume whose received
// UUID and stransid name the state the stream was sent against. A writable
// subvolume with that received UUID (it may have changed since) or one
// received from another ctransid must never be taken, even when listed
// before the right one.
func TestParentMustBeReadOnlyWithMatchingSTransID(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	sh(t, "cd "+src+" && mkdir d && echo one > d/f && head -c 200000 /dev/urandom > big")
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	sh(t, "cd "+src+" && echo two >> d/f && mv big d/big2")
	snap2 := snapshot(t, src, join(fs.Dir, "snap2"))
	full := sendStream(t, snap1, btrfs.SendOptions{})
	inc := sendStream(t, snap2, btrfs.SendOptions{Parent: snap1})
	info, err := btrfs.Inspect(snap1)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		stransid uint64
		ro       bool
		why      string // in the error when the decoy is the only candidate
	}{
		{"writable", info.CTransID, false, "is writable"},
		{"other stransid", info.CTransID + 1, true, "was received from ctransid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := join(fs.Dir, strings.ReplaceAll(tc.name, " ", "_"))
			mkdirs(t, dir)
			// Created first, so the scan meets it before the real parent.
			decoy(t, join(dir, "a_decoy"), info.UUID, tc.stransid, tc.ro)

			r, err := New(context.Background(), dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			_, feedErr := r.Write(inc)
			if feedErr == nil {
				_, feedErr = r.Finish()
			}
			r.Abort()
			if !errors.Is(feedErr, btrfs.ErrParentMissing) || !strings.Contains(feedErr.Error(), tc.why) {
				t.Fatalf("incremental receive with only the decoy: %v; want ErrParentMissing saying %q", feedErr, tc.why)
			}

			receiveNative(t, dir, full, Options{})
			res := receiveNative(t, dir, inc, Options{})
			sameTree(t, snap2, res.Path)
			got, err := btrfs.Inspect(res.Path)
			if err != nil {
				t.Fatal(err)
			}
			parent, err := btrfs.Inspect(join(dir, "snap1"))
			if err != nil {
				t.Fatal(err)
			}
			if got.ParentUUID != parent.UUID {
				t.Fatalf("received snap2 is a snapshot of %s, want the received snap1 %s", got.ParentUUID, parent.UUID)
			}
		})
	}
}
