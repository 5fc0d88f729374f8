package native

import (
	"context"
	"os"
	"strings"
	"testing"

	ss "github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// TestCommandsKernelsRarelySend applies commands that this kernel's send
// does not emit in the other tests (FALLOCATE, UPDATE_EXTENT, FILEATTR
// with immutable, xattrs on the root) from built streams.
func TestCommandsKernelsRarelySend(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	uuid := ss.Str(ss.AttrUUID, strings.Repeat("c", 16))
	b := (&ss.Builder{Version: 2}).Header().
		Command(ss.CmdSubvol, ss.Str(ss.AttrPath, "sv"), uuid, ss.U64(ss.AttrCTransID, 5)).
		Command(ss.CmdMkfile, ss.Str(ss.AttrPath, "f"), ss.U64(ss.AttrIno, 257)).
		Command(ss.CmdFallocate, ss.Str(ss.AttrPath, "f"), ss.U32(ss.AttrFallocateMode, 0), ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrSize, 1<<20)).
		Command(ss.CmdFallocate, ss.Str(ss.AttrPath, "f"), ss.U32(ss.AttrFallocateMode, unix.FALLOC_FL_KEEP_SIZE), ss.U64(ss.AttrFileOffset, 1<<20), ss.U64(ss.AttrSize, 1<<20)).
		Command(ss.CmdUpdateExtent, ss.Str(ss.AttrPath, "f"), ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrSize, 4096)).
		Command(ss.CmdMkfile, ss.Str(ss.AttrPath, "locked"), ss.U64(ss.AttrIno, 258)).
		Command(ss.CmdWrite, ss.Str(ss.AttrPath, "locked"), ss.U64(ss.AttrFileOffset, 0), ss.Str(ss.AttrData, "keep")).
		// IMMUTABLE|NOATIME (BTRFS_INODE_* bits 6 and 9), then commands
		// that an immutable file would refuse.
		Command(ss.CmdFileattr, ss.Str(ss.AttrPath, "locked"), ss.U64(ss.AttrFileattr, 1<<6|1<<9)).
		Command(ss.CmdSetXattr, ss.Str(ss.AttrPath, "locked"), ss.Str(ss.AttrXattrName, "user.after"), ss.Str(ss.AttrXattrData, "ok")).
		Command(ss.CmdUtimes, ss.Str(ss.AttrPath, "locked"), ss.Timespec(ss.AttrAtime, 1e9, 5), ss.Timespec(ss.AttrMtime, 1e9, 7), ss.Timespec(ss.AttrCtime, 1e9, 9)).
		Command(ss.CmdSetXattr, ss.Str(ss.AttrPath, ""), ss.Str(ss.AttrXattrName, "user.root"), ss.Str(ss.AttrXattrData, "r")).
		Command(ss.CmdSetXattr, ss.Str(ss.AttrPath, ""), ss.Str(ss.AttrXattrName, "user.gone"), ss.Str(ss.AttrXattrData, "g")).
		Command(ss.CmdRemoveXattr, ss.Str(ss.AttrPath, ""), ss.Str(ss.AttrXattrName, "user.gone")).
		Command(ss.CmdEnd)
	r, err := New(context.Background(), fs.Dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Abort()
	if _, err := r.Write(b.Buf); err != nil {
		t.Fatal(err)
	}
	res, err := r.Finish()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(join(res.Path, "f"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != 1<<20 || st.Blocks*512 < 2<<20 {
		t.Errorf("fallocate: size %d, allocated %d, want 1 MiB and 2 MiB", st.Size, st.Blocks*512)
	}
	if flags := inodeFlags(t, join(res.Path, "locked")); flags&(fsImmutableFL|fsNoatimeFL) != fsImmutableFL|fsNoatimeFL {
		t.Errorf("locked: flags %#x, want immutable and noatime", flags)
	}
	if err := unix.Stat(join(res.Path, "locked"), &st); err != nil || st.Mtim.Nsec != 7 {
		t.Errorf("locked: mtime %v (%v), want the UTIMES after FILEATTR applied", st.Mtim, err)
	}
	if data, _ := os.ReadFile(join(res.Path, "locked")); string(data) != "keep" {
		t.Errorf("locked: content %q", data)
	}
	buf := make([]byte, 16)
	if n, err := unix.Getxattr(res.Path, "user.root", buf); err != nil || string(buf[:n]) != "r" {
		t.Errorf("root xattr: %q, %v", buf[:n], err)
	}
	if _, err := unix.Getxattr(res.Path, "user.gone", buf); err != unix.ENODATA {
		t.Errorf("removed root xattr: %v", err)
	}
}
