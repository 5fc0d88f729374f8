package native

import (
	"errors"
	"fmt"

	"github.com/snapjet/snapjet/btrfs/sendstream"
	"golang.org/x/sys/unix"
)

// apply runs one command against the current subvolume.
func (r *Receiver) apply(c *sendstream.Command) error {
	switch c.Type {
	case sendstream.CmdSubvol, sendstream.CmdSnapshot:
		r.stats.Commands++
		return r.beginSubvolume(c)
	}
	if r.cur == nil {
		return fmt.Errorf("%s before SUBVOL or SNAPSHOT", c.Type)
	}
	if c.Type == sendstream.CmdEnd {
		r.cur.closeWriter()
		r.subs[r.cur.idx].Ended = true
		if r.skipStream {
			r.skipStream = false
			return nil // finished before: read-only, nothing to record
		}
		// Finishing makes replaying this stream impossible (immutable
		// files, a cleared journal), so record that all of it is applied.
		return r.journalAt(r.offset + int64(c.Len))
	}
	if r.subs[r.cur.idx].Ended {
		return fmt.Errorf("%s after END", c.Type)
	}
	if r.skipStream || r.offset < r.skipTo {
		r.stats.Skipped++
		return nil
	}
	r.stats.Commands++
	switch c.Type {
	case sendstream.CmdMkfile, sendstream.CmdMkdir, sendstream.CmdMknod, sendstream.CmdMkfifo,
		sendstream.CmdMksock, sendstream.CmdSymlink:
		return r.namespace(c, r.create)
	case sendstream.CmdRename:
		return r.namespace(c, r.rename)
	case sendstream.CmdLink:
		return r.namespace(c, r.link)
	case sendstream.CmdUnlink, sendstream.CmdRmdir:
		return r.namespace(c, r.remove)
	case sendstream.CmdWrite:
		return r.write(c)
	case sendstream.CmdClone:
		return r.clone(c)
	case sendstream.CmdTruncate:
		return r.truncate(c)
	case sendstream.CmdFallocate:
		return r.fallocate(c)
	case sendstream.CmdEncodedWrite:
		return r.encodedWrite(c)
	case sendstream.CmdSetXattr, sendstream.CmdRemoveXattr:
		return r.xattr(c)
	case sendstream.CmdChmod:
		return r.chmod(c)
	case sendstream.CmdChown:
		return r.chown(c)
	case sendstream.CmdUtimes:
		return r.utimes(c)
	case sendstream.CmdFileattr:
		return r.fileattr(c)
	case sendstream.CmdUpdateExtent:
		// A --no-data stream: metadata only, as btrfs receive does.
		return nil
	}
	return fmt.Errorf("command %s is not supported", c.Type)
}

// namespace runs a command that adds, moves or removes names. Such a
// command cannot simply be replayed once later commands ran, so after it
// the journal records that the stream got past it.
func (r *Receiver) namespace(c *sendstream.Command, op func(*sendstream.Command) error) error {
	r.cur.closeWriter()
	if err := op(c); err != nil {
		return err
	}
	r.lenient = false
	return r.journalAt(r.offset + int64(c.Len))
}

func (r *Receiver) entry(c *sendstream.Command, a sendstream.Attr) (entry, error) {
	p, err := c.String(a)
	if err != nil {
		return entry{}, err
	}
	return resolve(r.cur.root, p)
}

func (r *Receiver) create(c *sendstream.Command) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	if e.name == "." {
		return fmt.Errorf("%w: %s of the subvolume root", ErrUnsafePath, c.Type)
	}
	var wantType uint32
	var target string
	switch c.Type {
	case sendstream.CmdMkfile:
		wantType = unix.S_IFREG
		var fd int
		fd, err = unix.Openat(e.dir, e.name, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
		if err == nil {
			unix.Close(fd)
		}
	case sendstream.CmdMkdir:
		wantType = unix.S_IFDIR
		err = unix.Mkdirat(e.dir, e.name, 0o700)
	case sendstream.CmdMkfifo:
		wantType = unix.S_IFIFO
		err = unix.Mkfifoat(e.dir, e.name, 0o600)
	case sendstream.CmdMksock:
		wantType = unix.S_IFSOCK
		err = unix.Mknodat(e.dir, e.name, unix.S_IFSOCK|0o600, 0)
	case sendstream.CmdMknod:
		mode, merr := c.U64(sendstream.AttrMode)
		rdev, rerr := c.U64(sendstream.AttrRdev)
		if err := errors.Join(merr, rerr); err != nil {
			return err
		}
		wantType = uint32(mode) & unix.S_IFMT
		switch wantType {
		case unix.S_IFCHR, unix.S_IFBLK, unix.S_IFIFO, unix.S_IFSOCK:
		default:
			return fmt.Errorf("mknod %q: file type %#o is not a device, fifo or socket", e.path, wantType)
		}
		// Permissions follow in CHMOD, as with btrfs receive.
		err = unix.Mknodat(e.dir, e.name, wantType, int(rdev))
	case sendstream.CmdSymlink:
		wantType = unix.S_IFLNK
		target, err = c.String(sendstream.AttrPathLink)
		if err != nil {
			return err
		}
		err = unix.Symlinkat(target, e.dir, e.name)
	}
	if errors.Is(err, unix.EEXIST) && r.lenient {
		// New inodes are created under orphan names unique in the send
		// and parent roots, so an existing one is our own earlier attempt.
		if st, serr := lstatAt(e); serr == nil && st.Mode&unix.S_IFMT == wantType && sameTarget(e, target) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", c.Type, e.path, err)
	}
	return nil
}

func sameTarget(e entry, target string) bool {
	if target == "" {
		return true
	}
	buf := make([]byte, len(target)+1)
	n, err := unix.Readlinkat(e.dir, e.name, buf)
	return err == nil && string(buf[:n]) == target
}

func (r *Receiver) rename(c *sendstream.Command) error {
	return r.atPair(c, sendstream.AttrPath, sendstream.AttrPathTo, func(from, to entry) error {
		err := unix.Renameat(from.dir, from.name, to.dir, to.name)
		if errors.Is(err, unix.ENOENT) && r.lenient {
			_, ferr := lstatAt(from)
			if _, terr := lstatAt(to); errors.Is(ferr, unix.ENOENT) && terr == nil {
				return nil // renamed before the old process stopped
			}
		}
		return err
	})
}

func (r *Receiver) link(c *sendstream.Command) error {
	// PATH is the new name, PATH_LINK the existing file.
	return r.atPair(c, sendstream.AttrPathLink, sendstream.AttrPath, func(old, name entry) error {
		err := unix.Linkat(old.dir, old.name, name.dir, name.name, 0)
		if errors.Is(err, unix.EEXIST) && r.lenient {
			a, aerr := lstatAt(old)
			b, berr := lstatAt(name)
			if aerr == nil && berr == nil && a.Ino == b.Ino && a.Dev == b.Dev {
				return nil // linked before the old process stopped
			}
		}
		return err
	})
}

// atPair resolves two paths of a command, neither of which may be the
// subvolume root, and runs op on them.
func (r *Receiver) atPair(c *sendstream.Command, a, b sendstream.Attr, op func(x, y entry) error) error {
	x, err := r.entry(c, a)
	if err != nil {
		return err
	}
	defer x.close()
	y, err := r.entry(c, b)
	if err != nil {
		return err
	}
	defer y.close()
	if x.name == "." || y.name == "." {
		return fmt.Errorf("%w: %s of the subvolume root", ErrUnsafePath, c.Type)
	}
	if err := op(x, y); err != nil {
		return fmt.Errorf("%s %q to %q: %w", c.Type, x.path, y.path, err)
	}
	return nil
}

func (r *Receiver) remove(c *sendstream.Command) error {
	flags := 0
	if c.Type == sendstream.CmdRmdir {
		flags = unix.AT_REMOVEDIR
	}
	return r.atEntry(c, func(e entry) error {
		if e.name == "." {
			return fmt.Errorf("%w: removal of the subvolume root", ErrUnsafePath)
		}
		err := unix.Unlinkat(e.dir, e.name, flags)
		if errors.Is(err, unix.ENOENT) && r.lenient {
			return nil // removed before the old process stopped
		}
		return err
	})
}

// file returns the path a data command names and the file it writes to.
func (r *Receiver) file(c *sendstream.Command) (string, int, error) {
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return "", -1, err
	}
	fd, err := r.cur.writer(p)
	return p, fd, err
}

func (r *Receiver) write(c *sendstream.Command) error {
	off, e1 := c.U64(sendstream.AttrFileOffset)
	data, e2 := c.Bytes(sendstream.AttrData)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	p, fd, err := r.file(c)
	if err != nil {
		return err
	}
	if err := pwriteAll(fd, data, int64(off)); err != nil {
		return fmt.Errorf("write %q at %d: %w", p, off, err)
	}
	r.stats.DataBytes += int64(len(data))
	return nil
}

func pwriteAll(fd int, data []byte, off int64) error {
	for len(data) > 0 {
		n, err := unix.Pwrite(fd, data, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		data, off = data[n:], off+int64(n)
	}
	return nil
}

func (r *Receiver) clone(c *sendstream.Command) error {
	dstOff, e1 := c.U64(sendstream.AttrFileOffset)
	length, e2 := c.U64(sendstream.AttrCloneLen)
	srcUUID, e3 := c.UUID(sendstream.AttrCloneUUID)
	srcCTransID, e4 := c.U64(sendstream.AttrCloneCTransID)
	srcPath, e5 := c.String(sendstream.AttrClonePath)
	srcOff, e6 := c.U64(sendstream.AttrCloneOffset)
	if err := errors.Join(e1, e2, e3, e4, e5, e6); err != nil {
		return err
	}
	srcRoot := r.cur.root
	if srcUUID != r.subs[r.cur.idx].StreamUUID {
		info, err := r.findSubvolume(srcUUID, srcCTransID)
		if err != nil {
			return fmt.Errorf("clone source: %w", err)
		}
		srcRoot, err = unix.Open(info.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("clone source %s: %w", info.Path, err)
		}
		defer unix.Close(srcRoot)
	}
	src, err := openBeneath(srcRoot, srcPath, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NOATIME)
	if err != nil {
		return fmt.Errorf("clone source: %w", err)
	}
	defer unix.Close(src)
	p, dst, err := r.file(c)
	if err != nil {
		return err
	}
	err = unix.IoctlFileCloneRange(dst, &unix.FileCloneRange{
		Src_fd: int64(src), Src_offset: srcOff, Src_length: length, Dest_offset: dstOff,
	})
	if err != nil {
		return fmt.Errorf("clone %d bytes from %q@%d to %q@%d: %w", length, srcPath, srcOff, p, dstOff, err)
	}
	return nil
}

func (r *Receiver) truncate(c *sendstream.Command) error {
	size, err := c.U64(sendstream.AttrSize)
	if err != nil {
		return err
	}
	p, fd, err := r.file(c)
	if err != nil {
		return err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fmt.Errorf("truncate %q to %d: %w", p, size, err)
	}
	return nil
}

func (r *Receiver) fallocate(c *sendstream.Command) error {
	off, e1 := c.U64(sendstream.AttrFileOffset)
	size, e2 := c.U64(sendstream.AttrSize)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	p, fd, err := r.file(c)
	if err != nil {
		return err
	}
	mode := c.U32(sendstream.AttrFallocateMode)
	if err := unix.Fallocate(fd, mode, int64(off), int64(size)); err != nil {
		return fmt.Errorf("fallocate %q mode %#x %d+%d: %w", p, mode, off, size, err)
	}
	return nil
}

func (r *Receiver) xattr(c *sendstream.Command) error {
	name, err := c.String(sendstream.AttrXattrName)
	if err != nil {
		return err
	}
	if c.Type == sendstream.CmdSetXattr {
		data, err := c.Bytes(sendstream.AttrXattrData)
		if err != nil {
			return err
		}
		return r.atEntry(c, func(e entry) error {
			if e.name == "." {
				return unix.Fsetxattr(r.cur.root, name, data, 0)
			}
			return unix.Lsetxattr(e.procPath(), name, data, 0)
		})
	}
	return r.atEntry(c, func(e entry) error {
		var err error
		if e.name == "." {
			err = unix.Fremovexattr(r.cur.root, name)
		} else {
			err = unix.Lremovexattr(e.procPath(), name)
		}
		if errors.Is(err, unix.ENODATA) && r.resumed {
			return nil // removed before the old process stopped
		}
		return err
	})
}

func (r *Receiver) chmod(c *sendstream.Command) error {
	mode, err := c.U64(sendstream.AttrMode)
	if err != nil {
		return err
	}
	return r.atEntry(c, func(e entry) error {
		// fchmodat follows a final symlink; the kernel never sends CHMOD
		// for one, so refusing it keeps a hostile stream from reaching
		// outside.
		st, err := lstatAt(e)
		if err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return fmt.Errorf("%w: chmod of symlink", ErrUnsafePath)
		}
		return unix.Fchmodat(e.dir, e.name, uint32(mode)&0o7777, 0)
	})
}

func (r *Receiver) chown(c *sendstream.Command) error {
	uid, e1 := c.U64(sendstream.AttrUID)
	gid, e2 := c.U64(sendstream.AttrGID)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	return r.atEntry(c, func(e entry) error {
		return unix.Fchownat(e.dir, e.name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW)
	})
}

func (r *Receiver) utimes(c *sendstream.Command) error {
	at, e1 := c.Time(sendstream.AttrAtime)
	mt, e2 := c.Time(sendstream.AttrMtime)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	ts := []unix.Timespec{{Sec: at.Unix(), Nsec: int64(at.Nanosecond())}, {Sec: mt.Unix(), Nsec: int64(mt.Nanosecond())}}
	return r.atEntry(c, func(e entry) error {
		return unix.UtimesNanoAt(e.dir, e.name, ts, unix.AT_SYMLINK_NOFOLLOW)
	})
}

// atEntry resolves the command's PATH beneath the subvolume and runs op on
// it; op's error is reported with the command and the path.
func (r *Receiver) atEntry(c *sendstream.Command, op func(e entry) error) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	if err := op(e); err != nil {
		return fmt.Errorf("%s %q: %w", c.Type, e.path, err)
	}
	return nil
}
