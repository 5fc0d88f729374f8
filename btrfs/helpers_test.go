package btrfs_test

import (
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
	"github.com/snapjet/snapjet/internal/treecmp"
	"golang.org/x/sys/unix"
)

// newFS mounts a fresh loop-backed btrfs for the test and returns its root.
func newFS(t *testing.T, size int64) string {
	t.Helper()
	return loopfs.New(t, size).Dir
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func inspect(t *testing.T, path string) btrfs.Info {
	t.Helper()
	info, err := btrfs.Inspect(path)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

func mkdir(t *testing.T, path string) string {
	t.Helper()
	must(t, os.MkdirAll(path, 0o755))
	return path
}

// randomBytes is incompressible, reproducible data.
func randomBytes(seed uint64, n int) []byte {
	b := make([]byte, n)
	_, _ = rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8)}).Read(b)
	return b
}

func writeFile(t *testing.T, path string, data []byte, mode os.FileMode) {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(path), 0o755))
	must(t, os.WriteFile(path, data, mode))
	must(t, os.Chmod(path, mode)) // WriteFile's mode is subject to the umask
}

// sendReceive pipes `btrfs send` of snap (incremental from parent when set)
// into `btrfs receive` under dir and returns the received subvolume's path.
func sendReceive(t *testing.T, snap string, opt btrfs.SendOptions, dir string) string {
	t.Helper()
	ctx := context.Background()
	stream, send, err := btrfs.Send(ctx, snap, opt)
	must(t, err)
	recvErr := btrfs.Receive(ctx, dir, stream)
	stream.Close()
	if err := send.Wait(); err != nil {
		t.Fatalf("send %s: %v", snap, err)
	}
	if recvErr != nil {
		t.Fatalf("receive %s into %s: %v", snap, dir, recvErr)
	}
	return filepath.Join(dir, filepath.Base(snap))
}

func assertSameTree(t *testing.T, want, got string) {
	t.Helper()
	diffs, err := treecmp.Compare(want, got, treecmp.Options{Times: true})
	must(t, err)
	if len(diffs) > 0 {
		t.Errorf("%s differs from %s:\n%s", got, want, strings.Join(diffs, "\n"))
	}
}

// assertNotCommitted checks that a subvolume left by a failed receive can
// never pass for a complete one: writable and without a received UUID.
func assertNotCommitted(t *testing.T, path string) {
	t.Helper()
	info, err := btrfs.Inspect(path)
	if err != nil {
		t.Fatalf("partial subvolume %s: %v", path, err)
	}
	if info.ReadOnly || !info.ReceivedUUID.IsZero() {
		t.Errorf("partial %s looks complete: read-only %v, received UUID %q", path, info.ReadOnly, info.ReceivedUUID)
	}
}

var pastTime = time.Date(2024, 2, 29, 12, 30, 45, 123456789, time.UTC)

// populate fills dir with everything a send stream has to carry: data of
// several sizes, a hole, modes with special bits, foreign owners, xattrs,
// symlinks, hard links across directories, a fifo and a device node, and
// old mtimes.
func populate(t *testing.T, dir string) {
	t.Helper()
	writeFile(t, filepath.Join(dir, "empty"), nil, 0o644)
	writeFile(t, filepath.Join(dir, "small.txt"), []byte("hello snapjet\n"), 0o600)
	writeFile(t, filepath.Join(dir, "data/random.bin"), randomBytes(1, 3<<20+17), 0o644)
	writeFile(t, filepath.Join(dir, "data/text.log"), bytes.Repeat([]byte("a compressible line of text\n"), 40000), 0o640)
	writeFile(t, filepath.Join(dir, "bin/tool"), []byte("#!/bin/sh\necho tool\n"), 0o4755)
	must(t, os.Chmod(mkdir(t, filepath.Join(dir, "shared")), 0o2775))
	must(t, os.Chmod(mkdir(t, filepath.Join(dir, "private/deep/er")), 0o700))

	sparse, err := os.Create(filepath.Join(dir, "data/sparse"))
	must(t, err)
	_, headErr := sparse.WriteAt([]byte("head"), 0)
	_, tailErr := sparse.WriteAt([]byte("tail"), 8<<20)
	must(t, errors.Join(headErr, tailErr, sparse.Close()))

	must(t, os.Lchown(filepath.Join(dir, "small.txt"), 1234, 5678))
	must(t, os.Lchown(filepath.Join(dir, "shared"), 0, 5678))
	must(t, unix.Lsetxattr(filepath.Join(dir, "small.txt"), "user.comment", []byte("kept"), 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "shared"), "user.empty", nil, 0))
	must(t, unix.Lsetxattr(filepath.Join(dir, "data/random.bin"), "user.bin", []byte{0, 1, 2, 0xff}, 0))

	must(t, os.Symlink("../small.txt", filepath.Join(dir, "bin/rel-link")))
	must(t, os.Symlink("/nonexistent/target", filepath.Join(dir, "dangling")))
	must(t, os.Lchown(filepath.Join(dir, "dangling"), 1234, 1234))
	must(t, os.Link(filepath.Join(dir, "small.txt"), filepath.Join(dir, "private/hardlink")))
	must(t, os.Link(filepath.Join(dir, "small.txt"), filepath.Join(dir, "shared/hardlink2")))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o620))
	must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))

	setOldTimes(t, dir)
}

// mutate makes every kind of change an incremental stream carries: append,
// overwrite in place, truncate, reflink clone, delete, rename (also across
// directories and of a directory), link changes, and metadata changes.
func mutate(t *testing.T, dir string) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(dir, rel) }

	f, err := os.OpenFile(p("data/random.bin"), os.O_RDWR, 0)
	must(t, err)
	st, err := f.Stat()
	must(t, err)
	_, appendErr := f.WriteAt(randomBytes(2, 100<<10), st.Size())
	_, patchErr := f.WriteAt([]byte("patched in the middle"), 1<<20)
	must(t, errors.Join(appendErr, patchErr, f.Close()))
	must(t, os.Truncate(p("data/text.log"), 5000))
	runCmd(t, "cp", "--reflink=always", p("data/random.bin"), p("data/clone.bin"))

	must(t, os.Remove(p("empty")))
	must(t, os.Rename(p("bin/tool"), p("shared/tool")))
	must(t, os.Rename(p("private/deep"), p("deep-moved")))
	must(t, os.Remove(p("private/hardlink")))
	must(t, os.Link(p("data/random.bin"), p("bin/random-link")))

	must(t, os.Chmod(p("small.txt"), 0o640))
	must(t, os.Lchown(p("data/text.log"), 4321, 4321))
	must(t, unix.Lsetxattr(p("small.txt"), "user.comment", []byte("changed"), 0))
	must(t, unix.Lremovexattr(p("data/random.bin"), "user.bin"))
	must(t, os.Remove(p("bin/rel-link")))
	must(t, os.Symlink("../shared/tool", p("bin/rel-link")))
	writeFile(t, p("new/dir/file"), randomBytes(3, 4096), 0o644)

	setOldTimes(t, dir)
}

// setOldTimes moves every mtime away from "now" so that a receive which
// forgot to apply times is caught.
func setOldTimes(t *testing.T, dir string) {
	t.Helper()
	ts := []unix.Timespec{unix.NsecToTimespec(pastTime.UnixNano()), unix.NsecToTimespec(pastTime.UnixNano())}
	must(t, filepath.Walk(dir, func(path string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, path, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
}

func runCmd(t *testing.T, name string, args ...string) {
	t.Helper()
	if out, err := exec.Command(name, args...).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v: %s", name, strings.Join(args, " "), err, out)
	}
}
