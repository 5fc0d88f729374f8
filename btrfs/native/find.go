package native

import (
	"fmt"

	"github.com/snapjet/snapjet/btrfs"
	"golang.org/x/sys/unix"
)

// findSubvolume finds the local subvolume a stream refers to by UUID, as a
// snapshot parent or clone source. Like btrfs receive it prefers a
// subvolume whose received UUID matches (the usual case: the parent was
// itself received), then one whose own UUID matches with the same
// ctransid (the stream came back to where it was sent from).
//
// Candidates are the direct child subvolumes of Options.SearchDirs, read
// with btrfs.Inspect, rather than a BTRFS_IOC_TREE_SEARCH of the UUID tree:
// that would need the subvolume's path resolved from its root backrefs and
// could hand out any subvolume of the filesystem. Scanning only where the
// receiver keeps its snapshots is simpler and confines what a stream can
// clone from. Candidates on another filesystem are ignored.
func (r *Receiver) findSubvolume(uuid btrfs.UUID, ctransid uint64) (*btrfs.Info, error) {
	if uuid.IsZero() {
		return nil, fmt.Errorf("stream names no subvolume UUID: %w", btrfs.ErrParentMissing)
	}
	// An incremental stream may clone from its parent thousands of times.
	if in, ok := r.found[uuid]; ok {
		return in, nil
	}
	in, err := r.searchSubvolume(uuid, ctransid)
	if err == nil {
		if r.found == nil {
			r.found = map[btrfs.UUID]*btrfs.Info{}
		}
		r.found[uuid] = in
	}
	return in, err
}

func (r *Receiver) searchSubvolume(uuid btrfs.UUID, ctransid uint64) (*btrfs.Info, error) {
	var byUUID *btrfs.Info
	for _, dir := range r.opt.SearchDirs {
		infos, err := btrfs.List(dir)
		if err != nil {
			return nil, err
		}
		for i := range infos {
			in := &infos[i]
			switch {
			case in.ReceivedUUID == uuid:
				if r.sameFS(in.Path) {
					return in, nil
				}
			case in.UUID == uuid && in.CTransID == ctransid && byUUID == nil:
				if r.sameFS(in.Path) {
					byUUID = in
				}
			}
		}
	}
	if byUUID != nil {
		return byUUID, nil
	}
	return nil, fmt.Errorf("no subvolume with UUID %s (ctransid %d) under %v: %w", uuid, ctransid, r.opt.SearchDirs, btrfs.ErrParentMissing)
}

func (r *Receiver) sameFS(path string) bool {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fd)
	id, err := fsid(fd)
	return err == nil && id == r.fsid
}
