package native

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// TestCheckpointSyncOrdering injects the sync hook and proves that every
// checkpoint comes after a sync that already covered everything the
// checkpoint claims, with no write in between; that a failing sync gives
// no checkpoint; and that Finish syncs the data before the subvolume
// becomes read-only.
func TestCheckpointSyncOrdering(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	for i := 0; i < 20; i++ {
		writeRandom(t, join(src, fmt.Sprint("f", i)), 300<<10, int64(i))
	}
	snap := snapshot(t, src, join(fs.Dir, "snap1"))
	stream := sendStream(t, snap, btrfs.SendOptions{})
	nat := join(fs.Dir, "nat")
	mkdirs(t, nat)

	var r *Receiver
	type event struct {
		kind    string // "write", "sync", "checkpoint"
		applied int64  // stream bytes applied when it happened
		ro      bool   // subvolume read-only at sync time
	}
	var events []event
	failNext := false
	opt := Options{Sync: func(dir string) error {
		if dir != nat {
			t.Errorf("sync of %s, want %s", dir, nat)
		}
		if failNext {
			failNext = false
			return errors.New("injected sync failure")
		}
		if err := btrfs.Sync(dir); err != nil {
			return err
		}
		ev := event{kind: "sync", applied: r.offset}
		if info, err := btrfs.Inspect(join(nat, "snap1")); err == nil {
			ev.ro = info.ReadOnly
		}
		events = append(events, ev)
		return nil
	}}
	var err error
	if r, err = New(context.Background(), nat, opt); err != nil {
		t.Fatal(err)
	}
	defer r.Abort()
	rng := rand.New(rand.NewSource(1))
	checkpoints := 0
	for pos := 0; pos < len(stream); {
		n := min(len(stream)-pos, 1+rng.Intn(512<<10))
		if _, err := r.Write(stream[pos : pos+n]); err != nil {
			t.Fatal(err)
		}
		pos += n
		events = append(events, event{kind: "write", applied: r.offset})
		if checkpoints == 3 {
			failNext = true
			if _, err := r.Checkpoint(); err == nil {
				t.Fatal("checkpoint succeeded although the sync failed")
			}
		}
		cp, err := r.Checkpoint()
		if err != nil {
			t.Fatal(err)
		}
		checkpoints++
		last := events[len(events)-1]
		if last.kind != "sync" || last.applied < cp.Offset {
			t.Fatalf("checkpoint at %d not directly preceded by a sync covering it (last event %+v)", cp.Offset, last)
		}
		events = append(events, event{kind: "checkpoint", applied: cp.Offset})
	}
	if _, err := r.Finish(); err != nil {
		t.Fatal(err)
	}
	// Finish: one sync while writable (data), one after read-only (flags).
	tail := events[len(events)-2:]
	if tail[0].kind != "sync" || tail[0].ro || tail[1].kind != "sync" || !tail[1].ro {
		t.Fatalf("Finish syncs: %+v, want data sync while writable, then one after read-only", tail)
	}
	if checkpoints < 5 {
		t.Fatalf("only %d checkpoints", checkpoints)
	}
	sameTree(t, snap, join(nat, "snap1"))
}

// TestResumeAfterReboot: the journal records the boot it was written in.
// If the machine restarted after namespace changes beyond the checkpoint,
// unsynced data before them may be gone, and resuming must refuse.
func TestResumeAfterReboot(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	sh(t, "cd "+src+" && for i in $(seq 1 50); do echo $i > f$i; done")
	snap := snapshot(t, src, join(fs.Dir, "snap1"))
	stream := sendStream(t, snap, btrfs.SendOptions{})
	offs := indexStream(t, stream).offs
	info, err := btrfs.Inspect(snap)
	if err != nil {
		t.Fatal(err)
	}
	stream1UUID := info.UUID
	for _, tc := range []struct {
		name    string
		more    bool // the old process applied commands past the checkpoint
		journal func(cp Checkpoint) string
		wantErr error
	}{
		{"journal past checkpoint, other boot", true, func(cp Checkpoint) string { return fmt.Sprint("other-boot ", offs[40], " ", stream1UUID) }, ErrNotResumable},
		// After a reboot the state is the last commit; here it holds
		// nothing past the checkpoint, so the resume is exact.
		{"journal at checkpoint, other boot", false, func(cp Checkpoint) string { return fmt.Sprint("other-boot ", cp.Offset, " ", stream1UUID) }, nil},
		{"journal past checkpoint, same boot", true, func(cp Checkpoint) string { return fmt.Sprint(bootID(), " ", offs[40], " ", stream1UUID) }, nil},
		{"unreadable journal", true, func(cp Checkpoint) string { return "garbage" }, ErrNotResumable},
		{"journal of another stream", true, func(cp Checkpoint) string { return fmt.Sprint(bootID(), " ", offs[40], " ", btrfs.UUID{1}) }, ErrNotResumable},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := join(fs.Dir, fmt.Sprint("nat", len(tc.name)))
			mkdirs(t, dir)
			r, err := New(context.Background(), dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Write(stream[:offs[10]]); err != nil {
				t.Fatal(err)
			}
			cp, err := r.Checkpoint()
			if err != nil {
				t.Fatal(err)
			}
			if tc.more {
				if _, err := r.Write(stream[offs[10]:offs[40]]); err != nil {
					t.Fatal(err)
				}
			}
			crash(r)
			if err := unix.Setxattr(join(dir, "snap1"), journalXattr, []byte(tc.journal(cp)), 0); err != nil {
				t.Fatal(err)
			}
			r, err = Resume(context.Background(), dir, cp, Options{})
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("resume: %v, want %v", err, tc.wantErr)
			}
			if err != nil {
				// The caller gives up: Discard removes the partial.
				if err := Discard(context.Background(), dir, cp); err != nil {
					t.Fatal(err)
				}
				if btrfs.IsSubvolume(join(dir, "snap1")) {
					t.Fatal("Discard left the partial subvolume")
				}
				return
			}
			defer r.Abort()
			if _, err := r.Write(stream[cp.Fed():]); err != nil {
				t.Fatal(err)
			}
			res, err := r.Finish()
			if err != nil {
				t.Fatal(err)
			}
			sameTree(t, snap, res.Path)
			// A finished subvolume is never discarded, whatever the
			// checkpoint says.
			if err := Discard(context.Background(), dir, cp); err != nil || !btrfs.IsSubvolume(res.Path) {
				t.Fatalf("Discard of a finished subvolume: %v, still there %v", err, btrfs.IsSubvolume(res.Path))
			}
		})
	}
}

// TestResumeDuringFinish resumes from a checkpoint taken early in an
// incremental stream after the old process died at each step of
// finishing: locked flags applied, received UUID set, journal cleared,
// read-only set. Replaying the stream from the checkpoint would hit
// immutable files and renamed names, so the resume must skip it all.
func TestResumeDuringFinish(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	src := subvolume(t, join(fs.Dir, "src"))
	scenarios[0].setup(t, src)
	sh(t, "cd "+src+" && echo frozen > frozen")
	snap1 := snapshot(t, src, join(fs.Dir, "snap1"))
	// frozen is the newest inode and no inode is created, so its WRITE,
	// FILEATTR (sent for existing inodes only) and UTIMES come after the
	// last namespace command, where a resume would replay them.
	sh(t, "cd "+src+" && mv swap1 tmp && mv swap2 swap1 && mv tmp swap2 && mv a/b top && echo more >> frozen && chattr +i frozen")
	snap2 := snapshot(t, src, join(fs.Dir, "snap2"))
	full := sendStream(t, snap1, btrfs.SendOptions{Proto: 2})
	inc := sendStream(t, snap2, btrfs.SendOptions{Proto: 2, Parent: snap1})
	ctx := context.Background()
	steps := []string{"locked", "received", "journal cleared", "read-only"}
	for n := 1; n <= len(steps); n++ {
		t.Run(steps[n-1], func(t *testing.T) {
			dir := join(fs.Dir, fmt.Sprint("nat", n))
			mkdirs(t, dir)
			receiveNative(t, dir, full, Options{})
			r, err := New(ctx, dir, Options{})
			if err != nil {
				t.Fatal(err)
			}
			cut := len(inc) / 3
			if _, err := r.Write(inc[:cut]); err != nil {
				t.Fatal(err)
			}
			cp, err := r.Checkpoint()
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Write(inc[cut:]); err != nil {
				t.Fatal(err)
			}
			sv := r.subs[len(r.subs)-1]
			crash(r)
			// What Finish would have done up to step n before the kill.
			path := join(dir, "snap2")
			fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			do := []func() error{
				func() error { return applyLocked(path, sv.Locked) },
				func() error { return setReceived(fd, sv.StreamUUID, sv.CTransID) },
				func() error { return clearJournal(fd) },
				func() error { return setReadOnly(fd) },
			}
			for _, step := range do[:n] {
				if err := step(); err != nil {
					t.Fatal(err)
				}
			}
			r, err = Resume(ctx, dir, cp, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Abort()
			if _, err := r.Write(inc[cp.Fed():]); err != nil {
				t.Fatal(err)
			}
			res, err := r.Finish()
			if err != nil {
				t.Fatal(err)
			}
			sameTree(t, snap2, res.Path)
			if flags := inodeFlags(t, join(res.Path, "frozen")); flags&fsImmutableFL == 0 {
				t.Errorf("frozen is not immutable: %#x", flags)
			}
			info, err := btrfs.Inspect(res.Path)
			if err != nil {
				t.Fatal(err)
			}
			if !info.ReadOnly || info.ReceivedUUID != sv.StreamUUID {
				t.Errorf("read-only %v, received %s, want %s", info.ReadOnly, info.ReceivedUUID, sv.StreamUUID)
			}
		})
	}
}
