package native

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"unsafe"

	"github.com/snapjet/snapjet/btrfs/sendstream"
	"golang.org/x/sys/unix"
)

// FS_*_FL inode flags of <linux/fs.h> (FS_IOC_GETFLAGS/SETFLAGS).
const (
	fsComprFL     = 0x00000004
	fsSyncFL      = 0x00000008
	fsImmutableFL = 0x00000010
	fsAppendFL    = 0x00000020
	fsNodumpFL    = 0x00000040
	fsNoatimeFL   = 0x00000080
	fsNocompFL    = 0x00000400
	fsDirsyncFL   = 0x00010000
	fsNocowFL     = 0x00800000
)

// btrfs inode flags (BTRFS_INODE_*) that FILEATTR carries, and the
// FS_*_FL flags FS_IOC_SETFLAGS takes for them.
var inodeFlagMap = []struct{ btrfs, fs uint64 }{
	{1 << 1, fsNocowFL},
	{1 << 3, fsNocompFL},
	{1 << 5, fsSyncFL},
	{1 << 6, fsImmutableFL},
	{1 << 7, fsAppendFL},
	{1 << 8, fsNodumpFL},
	{1 << 9, fsNoatimeFL},
	{1 << 10, fsDirsyncFL},
	{1 << 11, fsComprFL},
}

// lockFlags would make the UTIMES, xattr and chown commands that follow
// FILEATTR in the stream fail, so they are applied in Finish.
const lockFlags = fsImmutableFL | fsAppendFL

// fileattr applies FILEATTR (which btrfs receive ignores). Flags that lock
// the inode are remembered by inode number and set in Finish.
func (r *Receiver) fileattr(c *sendstream.Command) error {
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
	attr, err := c.U64(sendstream.AttrFileattr)
	if err != nil {
		return err
	}
	var want, mask uint64
	for _, m := range inodeFlagMap {
		mask |= m.fs
		if attr&m.btrfs != 0 {
			want |= m.fs
		}
	}
	fd, err := openBeneath(r.cur.root, p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("fileattr %q: %w", p, err)
	}
	sv := &r.subs[r.cur.idx]
	if want&lockFlags != 0 {
		if sv.Locked == nil {
			sv.Locked = map[uint64]uint32{}
		}
		sv.Locked[st.Ino] = uint32(want & lockFlags)
	} else {
		delete(sv.Locked, st.Ino)
	}
	return setFlags(fd, want&^lockFlags, mask&^lockFlags)
}

// setFlags replaces the flags in mask by want, keeping the others.
func setFlags(fd int, want, mask uint64) error {
	var cur uint64
	if err := ioctl(fd, unix.FS_IOC_GETFLAGS, unsafe.Pointer(&cur)); err != nil {
		return fmt.Errorf("get inode flags: %w", err)
	}
	next := cur&^mask | want
	if next == cur {
		return nil
	}
	if err := ioctl(fd, unix.FS_IOC_SETFLAGS, unsafe.Pointer(&next)); err != nil {
		return fmt.Errorf("set inode flags %#x: %w", next, err)
	}
	return nil
}

// applyLocked sets the deferred immutable and append-only flags of a
// subvolume; the last step before it becomes read-only.
func applyLocked(root string, locked map[uint64]uint32) error {
	if len(locked) == 0 {
		return nil
	}
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&(fs.ModeSymlink|fs.ModeDevice|fs.ModeNamedPipe|fs.ModeSocket) != 0 {
			return nil
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return fmt.Errorf("set inode flags: %w", err)
		}
		flags, ok := locked[st.Ino]
		if !ok {
			return nil
		}
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("set inode flags on %s: %w", p, err)
		}
		defer unix.Close(fd)
		if err := setFlags(fd, uint64(flags), lockFlags); err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		return nil
	})
}
