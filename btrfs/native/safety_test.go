package native

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	ss "github.com/snapjet/snapjet/btrfs/sendstream"
	"github.com/snapjet/snapjet/internal/loopfs"
	"golang.org/x/sys/unix"
)

// hostile builds a v2 stream that creates subvolume "sv" and then runs cmds.
func hostile(end bool, cmds func(b *ss.Builder)) []byte {
	b := (&ss.Builder{Version: 2}).Header()
	b.Command(ss.CmdSubvol, ss.Str(ss.AttrPath, "sv"), ss.Str(ss.AttrUUID, strings.Repeat("h", 16)), ss.U64(ss.AttrCTransID, 9))
	cmds(b)
	if end {
		b.Command(ss.CmdEnd)
	}
	return b.Buf
}

func path(a ss.Attr, p string) ss.Attribute { return ss.Str(a, p) }

// TestHostileStreams feeds streams that try to reach outside the
// subvolume or are malformed; each must fail with a clear error and leave
// the sentinel directory next to the receive directory untouched.
func TestHostileStreams(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	outside := join(fs.Dir, "outside")
	mkdirs(t, outside)
	sh(t, "echo secret > "+outside+"/secret && chmod 0600 "+outside+"/secret")
	mkfile := func(b *ss.Builder, p string) {
		b.Command(ss.CmdMkfile, path(ss.AttrPath, p), ss.U64(ss.AttrIno, 300))
	}
	symlink := func(b *ss.Builder, p, target string) {
		b.Command(ss.CmdSymlink, path(ss.AttrPath, p), ss.U64(ss.AttrIno, 301), path(ss.AttrPathLink, target))
	}
	tests := []struct {
		name    string
		stream  []byte
		wantErr error  // errors.Is target, or nil to match text only
		text    string // substring of the error
		finish  bool   // the error comes from Finish
	}{
		{"dotdot path", hostile(true, func(b *ss.Builder) { mkfile(b, "../outside/x") }), ErrUnsafePath, "unsafe path", false},
		{"absolute path", hostile(true, func(b *ss.Builder) { mkfile(b, "/tmp/x") }), ErrUnsafePath, "unsafe path", false},
		{"empty component", hostile(true, func(b *ss.Builder) { mkfile(b, "a//b") }), ErrUnsafePath, "unsafe path", false},
		{"through absolute symlink", hostile(true, func(b *ss.Builder) {
			symlink(b, "esc", outside)
			mkfile(b, "esc/planted")
		}), ErrUnsafePath, "symlink", false},
		{"through relative symlink", hostile(true, func(b *ss.Builder) {
			symlink(b, "up", "..")
			b.Command(ss.CmdWrite, path(ss.AttrPath, "up/outside/secret"), ss.U64(ss.AttrFileOffset, 0), ss.Str(ss.AttrData, "pwned"))
		}), ErrUnsafePath, "symlink", false},
		{"chmod through final symlink", hostile(true, func(b *ss.Builder) {
			symlink(b, "s", outside+"/secret")
			b.Command(ss.CmdChmod, path(ss.AttrPath, "s"), ss.U64(ss.AttrMode, 0o777))
		}), ErrUnsafePath, "chmod of symlink", false},
		{"write through final symlink", hostile(true, func(b *ss.Builder) {
			symlink(b, "s", outside+"/secret")
			b.Command(ss.CmdTruncate, path(ss.AttrPath, "s"), ss.U64(ss.AttrSize, 0))
		}), ErrUnsafePath, "symlink", false},
		{"xattr through symlink dir", hostile(true, func(b *ss.Builder) {
			symlink(b, "d", outside)
			b.Command(ss.CmdSetXattr, path(ss.AttrPath, "d/secret"), ss.Str(ss.AttrXattrName, "user.x"), ss.Str(ss.AttrXattrData, "v"))
		}), ErrUnsafePath, "symlink", false},
		{"rename out", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdRename, path(ss.AttrPath, "f"), path(ss.AttrPathTo, "../outside/f"))
		}), ErrUnsafePath, "unsafe path", false},
		{"link to outside file", hostile(true, func(b *ss.Builder) {
			b.Command(ss.CmdLink, path(ss.AttrPath, "l"), path(ss.AttrPathLink, "../outside/secret"))
		}), ErrUnsafePath, "unsafe path", false},
		{"clone from outside", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdClone, ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrCloneLen, 4096), path(ss.AttrPath, "f"),
				ss.Str(ss.AttrCloneUUID, strings.Repeat("h", 16)), ss.U64(ss.AttrCloneCTransID, 9),
				path(ss.AttrClonePath, "../outside/secret"), ss.U64(ss.AttrCloneOffset, 0))
		}), ErrUnsafePath, "unsafe path", false},
		{"clone from unknown subvolume", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdClone, ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrCloneLen, 4096), path(ss.AttrPath, "f"),
				ss.Str(ss.AttrCloneUUID, strings.Repeat("z", 16)), ss.U64(ss.AttrCloneCTransID, 1),
				path(ss.AttrClonePath, "secret"), ss.U64(ss.AttrCloneOffset, 0))
		}), btrfs.ErrParentMissing, "clone source", false},
		{"snapshot of unknown parent", func() []byte {
			b := (&ss.Builder{Version: 1}).Header()
			b.Command(ss.CmdSnapshot, path(ss.AttrPath, "sv"), ss.Str(ss.AttrUUID, strings.Repeat("a", 16)), ss.U64(ss.AttrCTransID, 1),
				ss.Str(ss.AttrCloneUUID, strings.Repeat("b", 16)), ss.U64(ss.AttrCloneCTransID, 1))
			return b.Buf
		}(), btrfs.ErrParentMissing, "snapshot parent", false},
		{"subvolume name with slash", func() []byte {
			b := (&ss.Builder{Version: 1}).Header()
			b.Command(ss.CmdSubvol, path(ss.AttrPath, "../outside"), ss.Str(ss.AttrUUID, strings.Repeat("a", 16)), ss.U64(ss.AttrCTransID, 1))
			return b.Buf
		}(), ErrUnsafePath, "subvolume name", false},
		{"command before subvolume", func() []byte {
			b := (&ss.Builder{Version: 1}).Header()
			b.Command(ss.CmdMkdir, path(ss.AttrPath, "d"), ss.U64(ss.AttrIno, 1))
			return b.Buf
		}(), nil, "before SUBVOL", false},
		{"missing attribute", hostile(true, func(b *ss.Builder) {
			b.Command(ss.CmdRename, path(ss.AttrPath, "f"))
		}), ss.ErrMalformed, "without attribute PATH_TO", false},
		{"mknod of a regular file type", hostile(true, func(b *ss.Builder) {
			b.Command(ss.CmdMknod, path(ss.AttrPath, "n"), ss.U64(ss.AttrIno, 5), ss.U64(ss.AttrMode, unix.S_IFREG|0o644), ss.U64(ss.AttrRdev, 0))
		}), nil, "not a device", false},
		{"no END", hostile(false, func(b *ss.Builder) { mkfile(b, "f") }), nil, "before its END", true},
		{"cut inside a command", hostile(true, func(b *ss.Builder) { mkfile(b, "f") })[:60], nil, "inside a command", true},
		{"encoded write with bogus lengths", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdEncodedWrite, path(ss.AttrPath, "f"), ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrUnencodedFileLen, 1<<40),
				ss.U64(ss.AttrUnencodedLen, 1<<40), ss.U64(ss.AttrUnencodedOffset, 0), ss.U32(ss.AttrCompression, 2), ss.Str(ss.AttrData, "x"))
		}), nil, "inconsistent lengths", false},
		{"corrupt zstd", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdEncodedWrite, path(ss.AttrPath, "f"), ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrUnencodedFileLen, 4096),
				ss.U64(ss.AttrUnencodedLen, 4096), ss.U64(ss.AttrUnencodedOffset, 0), ss.U32(ss.AttrCompression, 2), ss.Str(ss.AttrData, "garbage!"))
		}), nil, "encoded write", false},
		{"corrupt lzo", hostile(true, func(b *ss.Builder) {
			mkfile(b, "f")
			b.Command(ss.CmdEncodedWrite, path(ss.AttrPath, "f"), ss.U64(ss.AttrFileOffset, 0), ss.U64(ss.AttrUnencodedFileLen, 4096),
				ss.U64(ss.AttrUnencodedLen, 4096), ss.U64(ss.AttrUnencodedOffset, 0), ss.U32(ss.AttrCompression, 3),
				ss.Str(ss.AttrData, "\x10\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\xff\xff\xff\xff"))
		}), nil, "lzo", false},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := join(fs.Dir, "recv"+strconv.Itoa(i))
			mkdirs(t, dir)
			r, err := New(context.Background(), dir, Options{ForceDecompress: true})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Abort()
			_, err = r.Write(tc.stream)
			if tc.finish {
				if err != nil {
					t.Fatalf("write: %v", err)
				}
				_, err = r.Finish()
			}
			if err == nil || (tc.wantErr != nil && !errors.Is(err, tc.wantErr)) || !strings.Contains(err.Error(), tc.text) {
				t.Fatalf("err = %v, want %v containing %q", err, tc.wantErr, tc.text)
			}
			t.Log(err)
			entries, _ := os.ReadDir(outside)
			data, _ := os.ReadFile(join(outside, "secret"))
			st, _ := os.Stat(join(outside, "secret"))
			if len(entries) != 1 || string(data) != "secret\n" || st.Mode().Perm() != 0o600 {
				t.Fatalf("outside changed: %d entries, %q, mode %v", len(entries), data, st.Mode())
			}
			if info, err := btrfs.Inspect(join(dir, "sv")); err == nil && (info.ReadOnly || !info.ReceivedUUID.IsZero()) {
				t.Fatalf("a failed receive left a finished-looking subvolume: %+v", info)
			}
		})
	}
}

// TestForeignSubvolumeNeverAdopted: a subvolume that already carries the
// stream's name is refused by a fresh receive, and a resume takes it over
// only if its journal names this stream; one left under the temporary
// name (killed between creating and naming it) is ours and is picked up.
func TestForeignSubvolumeNeverAdopted(t *testing.T) {
	fs := loopfs.New(t, 1<<30)
	stream := hostile(true, func(b *ss.Builder) {
		b.Command(ss.CmdMkdir, path(ss.AttrPath, "d"), ss.U64(ss.AttrIno, 257))
	})
	ctx := context.Background()
	for _, tc := range []struct {
		name     string
		resume   bool
		existing string
		wantErr  error
	}{
		{"new over a foreign subvolume", false, "sv", btrfs.ErrExists},
		{"resume over a foreign subvolume", true, "sv", ErrNotResumable},
		{"resume over the temporary subvolume", true, ".sv.partial-" + strings.Repeat("68", 8), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := join(fs.Dir, strings.ReplaceAll(tc.name, " ", "_"))
			mkdirs(t, dir)
			subvolume(t, join(dir, tc.existing))
			sh(t, "echo mine > "+join(dir, tc.existing, "user-data"))
			var r *Receiver
			var err error
			if tc.resume {
				r, err = Resume(ctx, dir, Checkpoint{}, Options{})
			} else {
				r, err = New(ctx, dir, Options{})
			}
			if err != nil {
				t.Fatal(err)
			}
			defer r.Abort()
			_, err = r.Write(stream)
			if err == nil {
				_, err = r.Finish()
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("err = %v, want %v", err, tc.wantErr)
			}
			if tc.wantErr != nil {
				info, ierr := btrfs.Inspect(join(dir, tc.existing))
				if ierr != nil || info.ReadOnly {
					t.Fatalf("the foreign subvolume changed: %+v %v", info, ierr)
				}
				entries, _ := os.ReadDir(join(dir, tc.existing))
				if len(entries) != 1 {
					t.Fatalf("the foreign subvolume holds %d entries", len(entries))
				}
				return
			}
			if _, err := os.Stat(join(dir, "sv", "d")); err != nil {
				t.Fatal(err)
			}
		})
	}
}
