package tests

import (
	"context"
	"encoding/binary"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/snapjet/snapjet/btrfs"
)

const mib = 1 << 20

// dataSet is a deterministic source tree with everything a replication must
// carry: random content of many sizes, empty and sparse files, special
// modes, owners, user xattrs on files and directories, absolute, relative
// and dangling symlinks, hard links across directories, a fifo and nested
// directories. bulk adds large files until that many bytes are reached, to
// give a transfer the size a scenario needs.
type dataSet struct {
	seed uint64
	bulk int64
}

// fixed mtimes make two fills with the same seed compare equal with times.
var dataSetEpoch = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

// newSource creates the subvolume dir and fills it; it returns the bytes of
// file data written, which approximates the size of a full send stream.
func (d dataSet) newSource(t *testing.T, dir string) int64 {
	t.Helper()
	if err := btrfs.CreateSubvolume(context.Background(), dir); err != nil {
		t.Fatalf("create source subvolume: %v", err)
	}
	return d.fill(t, dir)
}

// fill writes the data set into the existing directory dir.
func (d dataSet) fill(t *testing.T, dir string) int64 {
	t.Helper()
	start := time.Now()
	w := newTreeWriter(t, dir, d.seed)
	w.dir("etc", 0o755, 0, 0, "user.role", "config")
	w.file("etc/app.conf", 0o644, 0, 0, 3000)
	w.file("etc/secret", 0o600, 1000, 1000, 700)
	w.dir("bin", 0o755, 0, 0)
	w.file("bin/tool", 0o4755, 0, 0, 200_000)
	w.file("bin/script.sh", 0o755, 1000, 1000, 900)
	w.dir("home", 0o755, 0, 0)
	w.dir("home/user", 0o750, 1000, 1000, "user.owner", "alice")
	w.file("home/user/notes.txt", 0o640, 1000, 1000, 5000)
	w.xattr("home/user/notes.txt", "user.comment", "draft")
	w.xattr("home/user/notes.txt", "user.empty", "")
	w.dir("home/user/deep", 0o755, 1000, 1000)
	w.dir("home/user/deep/a", 0o755, 1000, 1000)
	w.dir("home/user/deep/a/b", 0o700, 1000, 1000)
	w.dir("home/user/deep/a/b/c", 0o755, 0, 0)
	w.file("home/user/deep/a/b/c/leaf.bin", 0o644, 1000, 1000, 1*mib+17)
	w.dir("data", 0o755, 0, 0)
	w.dir("data/small", 0o755, 1000, 1000)
	for i := 0; i < 120; i++ {
		size := int64(w.rng.IntN(64 << 10))
		if i%15 == 0 {
			size = 0
		}
		w.file(fmt.Sprintf("data/small/f%03d", i), 0o644, 1000, 1000, size)
	}
	w.file("empty-file", 0o644, 0, 0, 0)
	w.dir("empty-dir", 0o755, 0, 0)
	w.sparse("data/sparse.img", 8*mib, []int64{0, 3 * mib, 8*mib - 4096})
	w.dir("links", 0o755, 0, 0)
	w.symlink("/etc/hostname", "links/absolute")
	w.symlink("../etc/app.conf", "links/relative")
	w.symlink("../nowhere/missing", "links/dangling")
	w.hardlink("data/small/f001", "home/user/f001-hardlink")
	w.hardlink("data/small/f001", "etc/f001-hardlink")
	w.hardlink("bin/script.sh", "home/user/deep/script-link")
	w.dir("run", 0o755, 0, 0)
	w.fifo("run/app.fifo", 0o620)
	for i := 0; w.written < d.bulk; i++ {
		w.file(fmt.Sprintf("data/big-%03d.bin", i), 0o644, 1000, 1000, min(16*mib, d.bulk-w.written+mib))
	}
	w.fixTimes()
	t.Logf("filled %s with %d MiB of seeded data (seed %d) in %v", dir, w.written/mib, d.seed, time.Since(start).Round(time.Millisecond))
	return w.written
}

// mutate changes about bulk bytes of a filled tree and renames, deletes,
// re-links and re-labels entries, like a day of use between two snapshots.
// It returns the bytes written. It expects a tree as fill leaves it and is
// meant to run once per tree.
func mutate(t *testing.T, dir string, seed uint64, bulk int64) int64 {
	t.Helper()
	w := newTreeWriter(t, dir, seed)
	bigs, err := filepath.Glob(filepath.Join(dir, "data/big-*.bin"))
	if err != nil {
		t.Fatal(err)
	}
	// Half of the change rewrites ranges inside existing files, half is new.
	for _, p := range bigs {
		if w.written >= bulk/2 {
			break
		}
		w.overwrite(p, 1*mib, min(4*mib, bulk/2-w.written))
	}
	for i := 0; w.written < bulk; i++ {
		w.file(fmt.Sprintf("data/new-%d-%03d.bin", seed, i), 0o600, 0, 0, min(16*mib, bulk-w.written))
	}
	w.overwrite(filepath.Join(dir, "etc/app.conf"), 100, 50)
	w.rename("etc/app.conf", "etc/app.conf.old")
	w.rename("home/user/deep", "home/user/deeper")
	w.rename("data/small", "data/little")
	for i := 2; i < 12; i++ {
		w.remove(fmt.Sprintf("data/little/f%03d", i))
	}
	w.remove("links/dangling")
	w.symlink("../etc/app.conf.old", "links/relative-new")
	w.hardlink("etc/secret", "home/user/secret-hardlink")
	w.chmod("etc/secret", 0o640)
	w.xattr("home/user/notes.txt", "user.comment", "final")
	if err := unix.Lremovexattr(filepath.Join(dir, "home/user/notes.txt"), "user.empty"); err != nil {
		t.Fatalf("remove xattr: %v", err)
	}
	t.Logf("mutated %s: %d MiB rewritten or added, plus renames, deletes and metadata changes", dir, w.written/mib)
	return w.written
}

// treeWriter creates entries under root and fails the test on any error.
type treeWriter struct {
	t       *testing.T
	root    string
	rng     *rand.Rand
	stream  *rand.ChaCha8
	buf     []byte
	written int64
}

func newTreeWriter(t *testing.T, root string, seed uint64) *treeWriter {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	return &treeWriter{
		t:      t,
		root:   root,
		rng:    rand.New(rand.NewPCG(seed, seed^0x5eed)),
		stream: rand.NewChaCha8(key),
		buf:    make([]byte, 4*mib),
	}
}

func (w *treeWriter) path(rel string) string { return filepath.Join(w.root, rel) }

func (w *treeWriter) check(err error) {
	if err != nil {
		w.t.Helper()
		w.t.Fatalf("build data set: %v", err)
	}
}

// own sets owner then mode: chown clears the setuid bit, so order matters.
func (w *treeWriter) own(rel string, mode uint32, uid, gid int) {
	w.check(os.Lchown(w.path(rel), uid, gid))
	w.check(unix.Chmod(w.path(rel), mode))
}

func (w *treeWriter) dir(rel string, mode uint32, uid, gid int, xattrs ...string) {
	w.check(os.Mkdir(w.path(rel), 0o700))
	w.own(rel, mode, uid, gid)
	for i := 0; i+1 < len(xattrs); i += 2 {
		w.xattr(rel, xattrs[i], xattrs[i+1])
	}
}

func (w *treeWriter) file(rel string, mode uint32, uid, gid int, size int64) {
	f, err := os.OpenFile(w.path(rel), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	w.check(err)
	w.writeRandom(f, size)
	w.check(f.Close())
	w.own(rel, mode, uid, gid)
}

// writeRandom writes size random bytes at f's offset in large blocks.
func (w *treeWriter) writeRandom(f *os.File, size int64) {
	for left := size; left > 0; {
		n := min(left, int64(len(w.buf)))
		_, _ = w.stream.Read(w.buf[:n])
		_, err := f.Write(w.buf[:n])
		w.check(err)
		left -= n
	}
	w.written += size
}

// overwrite rewrites n random bytes in the file at path, starting at off.
func (w *treeWriter) overwrite(path string, off, n int64) {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	w.check(err)
	_, err = f.Seek(off, 0)
	w.check(err)
	w.writeRandom(f, n)
	w.check(f.Close())
}

// sparse creates a file of size bytes with 4 KiB of data at each offset and
// holes everywhere else.
func (w *treeWriter) sparse(rel string, size int64, dataAt []int64) {
	f, err := os.Create(w.path(rel))
	w.check(err)
	w.check(f.Truncate(size))
	for _, off := range dataAt {
		_, err := f.Seek(off, 0)
		w.check(err)
		w.writeRandom(f, 4096)
	}
	w.check(f.Close())
}

func (w *treeWriter) symlink(target, rel string) {
	w.check(os.Symlink(target, w.path(rel)))
	w.check(os.Lchown(w.path(rel), 1000, 1000))
}

func (w *treeWriter) hardlink(existing, rel string) {
	w.check(os.Link(w.path(existing), w.path(rel)))
}

func (w *treeWriter) fifo(rel string, mode uint32) {
	w.check(unix.Mkfifo(w.path(rel), mode))
	w.check(unix.Chmod(w.path(rel), mode))
}

func (w *treeWriter) xattr(rel, name, value string) {
	w.check(unix.Lsetxattr(w.path(rel), name, []byte(value), 0))
}

func (w *treeWriter) rename(from, to string) { w.check(os.Rename(w.path(from), w.path(to))) }
func (w *treeWriter) remove(rel string)      { w.check(os.Remove(w.path(rel))) }
func (w *treeWriter) chmod(rel string, mode uint32) {
	w.check(unix.Chmod(w.path(rel), mode))
}

// fixTimes gives every entry but the root a fixed mtime and atime, in walk
// order, so the tree's times are reproducible from the seed.
func (w *treeWriter) fixTimes() {
	i := 0
	err := filepath.WalkDir(w.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == w.root {
			return err
		}
		i++
		ts := unix.NsecToTimespec(dataSetEpoch.Add(time.Duration(i) * time.Minute).UnixNano())
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{ts, ts}, unix.AT_SYMLINK_NOFOLLOW)
	})
	w.check(err)
}
