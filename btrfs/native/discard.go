package native

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/snapjet/snapjet/btrfs"
)

// Discard deletes the partial subvolume a receive left in dir, as recorded
// in its last checkpoint: the caller gives up on resuming (for example
// after ErrNotResumable) and will start over. Subvolumes the checkpoint
// shows as finished are kept, as is anything that is not the exact
// partial subvolume the checkpoint names (other UUID, read-only, or with a
// received UUID), so a stale checkpoint cannot delete someone else's data.
// A checkpoint taken before the stream's first SUBVOL names nothing; then
// the caller, who knows the snapshot's name, deletes it itself.
func Discard(ctx context.Context, dir string, cp Checkpoint) error {
	n := len(cp.Subvolumes)
	if n == 0 {
		return nil
	}
	sv := cp.Subvolumes[n-1]
	path := filepath.Join(dir, sv.Name)
	info, err := btrfs.Inspect(path)
	switch {
	case err != nil && !btrfs.IsSubvolume(path):
		return nil // already gone
	case err != nil:
		return fmt.Errorf("discard %s: %w", path, err)
	case info.UUID != sv.UUID:
		return fmt.Errorf("discard %s: UUID %s, the checkpoint names %s: not deleting", path, info.UUID, sv.UUID)
	case info.ReadOnly || !info.ReceivedUUID.IsZero():
		return nil // finished: it is complete, not partial
	}
	if err := btrfs.DeleteSubvolume(ctx, path); err != nil {
		return fmt.Errorf("discard %s: %w", path, err)
	}
	return nil
}
