package receiver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/driver"
	"github.com/snapjet/snapjet/streams"
)

// isCommitted says whether path holds the complete copy of the snapshot
// with the given UUID. Only the kernel's word counts: a read-only
// subvolume whose received UUID is the source snapshot's. btrfs receive sets
// both only after the whole stream applied.
func isCommitted(path, snapshotUUID string) bool {
	info, err := btrfs.Inspect(path)
	return err == nil && info.ReadOnly && info.ReceivedUUID.String() == snapshotUUID
}

// alreadyCommitted handles a restart after the commit's rename but before
// the coordinator heard of it.
func (j *job) alreadyCommitted(ctx context.Context) (bool, error) {
	final := filepath.Join(j.rc.dir, j.r.SnapshotName)
	if !isCommitted(final, j.r.SnapshotUUID) {
		return false, nil
	}
	if err := discard(ctx, j.staging); err != nil {
		return true, err
	}
	rep := streams.Report{Event: streams.EvCommitted, Attempt: j.r.Attempt, Path: final}
	_, err := j.rc.report(ctx, j.r.ID, rep)
	return true, err
}

// commit moves the verified subvolume from staging to TARGET/<snapshot
// name>. Anything else at that name is left alone and fails the target for
// good, even a writable subvolume without received UUID: that is what an
// interrupted plain `btrfs receive` leaves, but also what an operator's own
// subvolume looks like, and only the operator can tell which.
func (j *job) commit(ctx context.Context, got btrfs.Info) (string, error) {
	final := filepath.Join(j.rc.dir, j.r.SnapshotName)
	if _, err := os.Lstat(final); err == nil {
		info, ierr := btrfs.Inspect(final)
		switch {
		case ierr == nil && info.ReceivedUUID.String() == j.r.SnapshotUUID:
			// Our own commit, interrupted between rename and read-only.
			if err := btrfs.SetReadOnlyFlag(final, true); err != nil {
				return "", err
			}
			return final, discard(ctx, j.staging)
		case ierr == nil && !info.ReadOnly && info.ReceivedUUID.IsZero():
			return "", driver.Permanent(fmt.Errorf("%s already exists and is a writable subvolume without received UUID, maybe the operator's data or what an interrupted btrfs receive left; snapjet does not delete it: move or rename it (delete it if it is such a leftover), then retry", final))
		default:
			return "", driver.Permanent(fmt.Errorf("%s already exists and is not this snapshot: move it away, then retry", final))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return "", err
	}
	if err := btrfs.SetReadOnlyFlag(got.Path, false); err != nil {
		return "", err
	}
	if err := os.Rename(got.Path, final); err != nil {
		_ = btrfs.SetReadOnlyFlag(got.Path, true)
		return "", fmt.Errorf("commit %s: %w", final, err)
	}
	if err := btrfs.SetReadOnlyFlag(final, true); err != nil {
		return "", err
	}
	if err := btrfs.Sync(j.rc.dir); err != nil {
		return "", err
	}
	return final, nil
}
