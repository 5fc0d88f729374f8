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
		r.skipStream = false
		return nil
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
	from, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer from.close()
	to, err := r.entry(c, sendstream.AttrPathTo)
	if err != nil {
		return err
	}
	defer to.close()
	if from.name == "." || to.name == "." {
		return fmt.Errorf("%w: rename of the subvolume root", ErrUnsafePath)
	}
	err = unix.Renameat(from.dir, from.name, to.dir, to.name)
	if errors.Is(err, unix.ENOENT) && r.lenient {
		_, ferr := lstatAt(from)
		if _, terr := lstatAt(to); errors.Is(ferr, unix.ENOENT) && terr == nil {
			return nil // renamed before the old process stopped
		}
	}
	if err != nil {
		return fmt.Errorf("rename %q to %q: %w", from.path, to.path, err)
	}
	return nil
}

func (r *Receiver) link(c *sendstream.Command) error {
	newE, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer newE.close()
	old, err := r.entry(c, sendstream.AttrPathLink)
	if err != nil {
		return err
	}
	defer old.close()
	if newE.name == "." || old.name == "." {
		return fmt.Errorf("%w: link to the subvolume root", ErrUnsafePath)
	}
	err = unix.Linkat(old.dir, old.name, newE.dir, newE.name, 0)
	if errors.Is(err, unix.EEXIST) && r.lenient {
		a, aerr := lstatAt(old)
		b, berr := lstatAt(newE)
		if aerr == nil && berr == nil && a.Ino == b.Ino && a.Dev == b.Dev {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("link %q to %q: %w", newE.path, old.path, err)
	}
	return nil
}

func (r *Receiver) remove(c *sendstream.Command) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	if e.name == "." {
		return fmt.Errorf("%w: %s of the subvolume root", ErrUnsafePath, c.Type)
	}
	flags := 0
	if c.Type == sendstream.CmdRmdir {
		flags = unix.AT_REMOVEDIR
	}
	err = unix.Unlinkat(e.dir, e.name, flags)
	if errors.Is(err, unix.ENOENT) && r.lenient {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s %q: %w", c.Type, e.path, err)
	}
	return nil
}

func (r *Receiver) write(c *sendstream.Command) error {
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
	off, err := c.U64(sendstream.AttrFileOffset)
	if err != nil {
		return err
	}
	data, err := c.Bytes(sendstream.AttrData)
	if err != nil {
		return err
	}
	fd, err := r.cur.writer(p)
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
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
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
	dst, err := r.cur.writer(p)
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
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
	size, err := c.U64(sendstream.AttrSize)
	if err != nil {
		return err
	}
	fd, err := r.cur.writer(p)
	if err != nil {
		return err
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return fmt.Errorf("truncate %q to %d: %w", p, size, err)
	}
	return nil
}

func (r *Receiver) fallocate(c *sendstream.Command) error {
	p, err := c.String(sendstream.AttrPath)
	if err != nil {
		return err
	}
	off, e1 := c.U64(sendstream.AttrFileOffset)
	size, e2 := c.U64(sendstream.AttrSize)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	fd, err := r.cur.writer(p)
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
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	name, err := c.String(sendstream.AttrXattrName)
	if err != nil {
		return err
	}
	if c.Type == sendstream.CmdSetXattr {
		data, err := c.Bytes(sendstream.AttrXattrData)
		if err != nil {
			return err
		}
		if e.name == "." {
			err = unix.Fsetxattr(r.cur.root, name, data, 0)
		} else {
			err = unix.Lsetxattr(e.procPath(), name, data, 0)
		}
		if err != nil {
			return fmt.Errorf("set xattr %s on %q: %w", name, e.path, err)
		}
		return nil
	}
	if e.name == "." {
		err = unix.Fremovexattr(r.cur.root, name)
	} else {
		err = unix.Lremovexattr(e.procPath(), name)
	}
	if errors.Is(err, unix.ENODATA) && r.resumed {
		return nil // removed before the old process stopped
	}
	if err != nil {
		return fmt.Errorf("remove xattr %s from %q: %w", name, e.path, err)
	}
	return nil
}

func (r *Receiver) chmod(c *sendstream.Command) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	mode, err := c.U64(sendstream.AttrMode)
	if err != nil {
		return err
	}
	// fchmodat follows a final symlink; the kernel never sends CHMOD for
	// one, so refusing it keeps a hostile stream from reaching outside.
	st, err := lstatAt(e)
	if err != nil {
		return fmt.Errorf("chmod %q: %w", e.path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		return fmt.Errorf("%w: chmod of symlink %q", ErrUnsafePath, e.path)
	}
	if err := unix.Fchmodat(e.dir, e.name, uint32(mode)&0o7777, 0); err != nil {
		return fmt.Errorf("chmod %q: %w", e.path, err)
	}
	return nil
}

func (r *Receiver) chown(c *sendstream.Command) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	uid, e1 := c.U64(sendstream.AttrUID)
	gid, e2 := c.U64(sendstream.AttrGID)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	if err := unix.Fchownat(e.dir, e.name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("chown %q: %w", e.path, err)
	}
	return nil
}

func (r *Receiver) utimes(c *sendstream.Command) error {
	e, err := r.entry(c, sendstream.AttrPath)
	if err != nil {
		return err
	}
	defer e.close()
	at, e1 := c.Time(sendstream.AttrAtime)
	mt, e2 := c.Time(sendstream.AttrMtime)
	if err := errors.Join(e1, e2); err != nil {
		return err
	}
	ts := []unix.Timespec{{Sec: at.Unix(), Nsec: int64(at.Nanosecond())}, {Sec: mt.Unix(), Nsec: int64(mt.Nanosecond())}}
	if err := unix.UtimesNanoAt(e.dir, e.name, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("utimes %q: %w", e.path, err)
	}
	return nil
}
