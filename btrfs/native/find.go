package native

import (
	"fmt"
	"strings"

	"github.com/snapjet/snapjet/btrfs"
	"golang.org/x/sys/unix"
)

// findSubvolume finds the local subvolume a stream refers to by UUID, as a
// snapshot parent or clone source. Like btrfs receive it prefers a
// subvolume whose received UUID matches (the usual case: the parent was
// itself received), then one whose own UUID matches (the stream came back
// to where it was sent from). It is stricter than btrfs-progs' lookup
// (search_source_subvol in cmds/receive.c, which compares only the UUID):
// the candidate must be read-only, and its stransid (received UUID match)
// or ctransid (own UUID match) must be the ctransid the stream names. A
// writable subvolume may have changed since, and the stream's commands
// only hold against the exact state it was sent from.
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
	var skipped []string // near misses, for the error
	for _, dir := range r.opt.SearchDirs {
		infos, err := btrfs.List(dir)
		if err != nil {
			return nil, err
		}
		for i := range infos {
			in := &infos[i]
			switch {
			case in.ReceivedUUID == uuid:
				switch {
				case !in.ReadOnly:
					skipped = append(skipped, in.Path+" carries that received UUID but is writable")
				case in.STransID != ctransid:
					skipped = append(skipped, fmt.Sprintf("%s was received from ctransid %d", in.Path, in.STransID))
				case r.sameFS(in.Path):
					return in, nil
				}
			case in.UUID == uuid && in.CTransID == ctransid && byUUID == nil:
				if !in.ReadOnly {
					skipped = append(skipped, in.Path+" has that UUID but is writable")
				} else if r.sameFS(in.Path) {
					byUUID = in
				}
			}
		}
	}
	if byUUID != nil {
		return byUUID, nil
	}
	why := ""
	if len(skipped) > 0 {
		why = " (" + strings.Join(skipped, "; ") + ": a parent must be the read-only subvolume the stream was sent against)"
	}
	return nil, fmt.Errorf("no read-only subvolume with UUID %s (ctransid %d) under %v%s: %w", uuid, ctransid, r.opt.SearchDirs, why, btrfs.ErrParentMissing)
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
