package native

import (
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/btrfs/sendstream"
	"golang.org/x/sys/unix"
)

// subvol is the open subvolume commands apply to.
type subvol struct {
	idx   int // into Receiver.subs
	root  int // its root directory
	wpath string
	wfd   int // cached file for data commands, -1 when none
}

func (s *subvol) closeWriter() {
	if s.wfd >= 0 {
		unix.Close(s.wfd)
		s.wfd = -1
		s.wpath = ""
	}
}

func (s *subvol) close() {
	s.closeWriter()
	unix.Close(s.root)
}

// writer returns a file opened for writing at p; consecutive data commands
// on one file share it. Namespace commands drop it, since they may change
// what p names.
func (s *subvol) writer(p string) (int, error) {
	if s.wfd >= 0 && s.wpath == p {
		return s.wfd, nil
	}
	s.closeWriter()
	fd, err := openBeneath(s.root, p, unix.O_WRONLY|unix.O_NOFOLLOW)
	if err != nil {
		return -1, err
	}
	s.wfd, s.wpath = fd, p
	return fd, nil
}

// checkName validates the subvolume name a SUBVOL or SNAPSHOT carries: one
// path component inside the receive directory.
func checkName(name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("%w: subvolume name %q", ErrUnsafePath, name)
	}
	return nil
}

// beginSubvolume handles SUBVOL and SNAPSHOT: it finishes the previous
// subvolume of a concatenated stream, then creates the new one, or adopts
// it when a resumed receive had already created it.
func (r *Receiver) beginSubvolume(c *sendstream.Command) error {
	name, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
	if err := checkName(name); err != nil {
		return err
	}
	uuid, err := c.UUID(sendstream.AttrUUID)
	if err != nil {
		return err
	}
	ctransid, err := c.U64(sendstream.AttrCTransID)
	if err != nil {
		return err
	}
	if btrfs.UUID(uuid).IsZero() {
		return fmt.Errorf("%s %q without a subvolume UUID", c.Type, name)
	}
	if n := len(r.subs); n > 0 {
		prev := &r.subs[n-1]
		if !prev.Ended {
			return fmt.Errorf("%s %q before END of subvolume %q", c.Type, name, prev.Name)
		}
		// The next stream may be incremental on top of this one, so it
		// must be complete and findable by its received UUID now.
		if err := r.sync(); err != nil {
			return err
		}
		if err := r.finishSubvolume(prev); err != nil {
			return err
		}
		if r.cur != nil {
			r.cur.close()
			r.cur = nil
		}
	}

	sv := Subvolume{Name: name, StreamUUID: uuid, CTransID: ctransid}
	var parent *btrfs.Info
	if c.Type == sendstream.CmdSnapshot {
		puuid, err := c.UUID(sendstream.AttrCloneUUID)
		if err != nil {
			return err
		}
		pctransid, err := c.U64(sendstream.AttrCloneCTransID)
		if err != nil {
			return err
		}
		parent, err = r.findSubvolume(puuid, pctransid)
		if err != nil {
			return fmt.Errorf("snapshot parent: %w", err)
		}
		sv.ParentUUID = parent.UUID
	}

	path := filepath.Join(r.dir, name)
	adopted := false
	if _, err := os.Lstat(path); err == nil {
		if !r.lenient {
			return fmt.Errorf("create subvolume %s: %w", path, btrfs.ErrExists)
		}
		// A resumed receive may have created it; adopt checks its journal.
		adopted = true
	} else if err := r.createSubvol(sv, parent); err != nil {
		return err
	}
	r.subs = append(r.subs, sv)
	if err := r.adopt(len(r.subs) - 1); err != nil {
		return err
	}
	if adopted {
		r.log.Info("resuming subvolume", "path", path, "skip_to", r.skipTo, "finished", r.skipStream)
		return nil
	}
	r.lenient = false
	r.log.Info("receiving subvolume", "path", path, "stream_uuid", btrfs.UUID(uuid), "parent", sv.ParentUUID)
	return nil
}

// createSubvol makes the subvolume under a temporary name, writes its journal
// and only then gives it its name, so that a subvolume under the stream's
// name without a journal is never ours, and a leftover temporary one
// (killed before the rename) is ours by its name.
func (r *Receiver) createSubvol(sv Subvolume, parent *btrfs.Info) error {
	tmp := "." + sv.Name + ".partial-" + hex.EncodeToString(sv.StreamUUID[:8])
	var err error
	if parent != nil {
		err = r.snapshot(parent.Path, tmp)
	} else {
		err = createSubvolume(r.dirfd, tmp)
	}
	switch {
	case errors.Is(err, unix.EEXIST) && r.lenient:
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("create subvolume %s: %w", filepath.Join(r.dir, tmp), btrfs.ErrExists)
	case err != nil:
		return fmt.Errorf("create subvolume %s: %w", filepath.Join(r.dir, tmp), err)
	}
	tmpPath := filepath.Join(r.dir, tmp)
	info, err := btrfs.Inspect(tmpPath)
	if err != nil {
		return err
	}
	if info.ReadOnly || !info.ReceivedUUID.IsZero() || info.ParentUUID != sv.ParentUUID {
		return fmt.Errorf("create subvolume %s: a different subvolume is in the way", tmpPath)
	}
	fd, err := unix.Open(tmpPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open subvolume %s: %w", tmpPath, err)
	}
	defer unix.Close(fd)
	if err := writeJournal(fd, r.offset, sv.StreamUUID); err != nil {
		return err
	}
	if err := unix.Renameat2(r.dirfd, tmp, r.dirfd, sv.Name, unix.RENAME_NOREPLACE); err != nil {
		return fmt.Errorf("name subvolume %s: %w", filepath.Join(r.dir, sv.Name), err)
	}
	return nil
}

func (r *Receiver) snapshot(parentPath, name string) error {
	src, err := unix.Open(parentPath, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open snapshot parent %s: %w", parentPath, err)
	}
	defer unix.Close(src)
	return createSnapshot(r.dirfd, src, name)
}

// adopt opens the subvolume sv names, after checking that it is the
// partial subvolume of this receive: writable, no received UUID yet, the
// expected local UUID and parent. On resume it may also be one the old
// process already finished; the rest of its stream is then skipped.
func (r *Receiver) adopt(idx int) error {
	sv := &r.subs[idx]
	path := filepath.Join(r.dir, sv.Name)
	info, err := btrfs.Inspect(path)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrNotResumable, err)
	}
	finished := info.ReceivedUUID == sv.StreamUUID
	switch {
	case !sv.UUID.IsZero() && info.UUID != sv.UUID:
		return fmt.Errorf("%w: %s has UUID %s, the checkpoint says %s", ErrNotResumable, path, info.UUID, sv.UUID)
	case finished && r.lenient:
		// The old process got past END and finished it; what is left of
		// this stream up to END was applied before.
	case info.ReadOnly || !info.ReceivedUUID.IsZero():
		return fmt.Errorf("%w: %s is not a partial receive (read-only %v, received UUID %s)", ErrNotResumable, path, info.ReadOnly, info.ReceivedUUID)
	case info.ParentUUID != sv.ParentUUID:
		return fmt.Errorf("%w: %s has parent %s, expected %s", ErrNotResumable, path, info.ParentUUID, sv.ParentUUID)
	}
	sv.UUID = info.UUID
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("open subvolume %s: %w", path, err)
	}
	if r.cur != nil {
		r.cur.close()
	}
	r.cur = &subvol{idx: idx, root: fd, wfd: -1}
	r.skipStream = finished
	if finished {
		return nil
	}
	return r.loadJournal()
}

// finishSubvolume makes a complete subvolume what `btrfs receive` leaves:
// received UUID and stransid set, then read-only. It is idempotent, so a
// kill between the two steps is repaired by running it again.
func (r *Receiver) finishSubvolume(sv *Subvolume) error {
	path := filepath.Join(r.dir, sv.Name)
	info, err := btrfs.Inspect(path)
	if err != nil {
		return fmt.Errorf("finish %s: %w", path, err)
	}
	if info.UUID != sv.UUID {
		return fmt.Errorf("finish %s: UUID %s, expected %s", path, info.UUID, sv.UUID)
	}
	if info.ReadOnly && info.ReceivedUUID == sv.StreamUUID {
		return nil
	}
	if info.ReadOnly {
		return fmt.Errorf("finish %s: read-only with received UUID %s, expected %s", path, info.ReceivedUUID, sv.StreamUUID)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("finish %s: %w", path, err)
	}
	defer unix.Close(fd)
	// Order matters for a kill in between: the journal (at END) makes a
	// resume skip the whole stream until the received UUID marks the
	// subvolume as finished; only then may the journal go.
	if err := applyLocked(path, sv.Locked); err != nil {
		return fmt.Errorf("finish %s: %w", path, err)
	}
	if info.ReceivedUUID != sv.StreamUUID {
		if err := setReceived(fd, sv.StreamUUID, sv.CTransID); err != nil {
			return fmt.Errorf("finish %s: set received UUID: %w", path, err)
		}
	}
	if err := clearJournal(fd); err != nil {
		return fmt.Errorf("finish %s: %w", path, err)
	}
	if err := setReadOnly(fd); err != nil {
		return fmt.Errorf("finish %s: %w", path, err)
	}
	r.log.Info("received subvolume", "path", path, "received_uuid", sv.StreamUUID)
	return nil
}
