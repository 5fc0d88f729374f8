package chaos

import (
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// The source tree carries what a replication must reproduce besides bytes:
// modes, owners, xattrs, symlinks, hard links, a sparse file, empty files.
// Its content comes from the trial's PRNG, so a seed gives the same tree.

// fillSource writes the initial tree of about bulk bytes into dir and
// returns the bytes of file data written (about the full send stream).
func fillSource(dir string, rng *rand.Rand, bulk int64) (int64, error) {
	w := &writer{root: dir, rng: rng}
	w.mkdir("etc", 0o755)
	w.file("etc/app.conf", 0o644, 3000)
	w.xattr("etc/app.conf", "user.role", "config")
	w.file("etc/secret", 0o600, 700)
	w.chown("etc/secret", 1000, 1000)
	w.mkdir("home/user/deep/a/b", 0o750)
	w.chown("home/user", 1000, 1000)
	w.file("home/user/notes.txt", 0o640, 5000)
	w.xattr("home/user", "user.owner", "alice")
	w.mkdir("small", 0o755)
	for i := range 60 {
		w.file(fmt.Sprintf("small/f%03d", i), 0o644, int64(rng.IntN(48<<10)))
	}
	w.file("empty", 0o644, 0)
	w.mkdir("empty-dir", 0o755)
	w.sparse("sparse.img", 8<<20)
	w.symlink("../etc/app.conf", "home/relative")
	w.symlink("/nonexistent/target", "home/dangling")
	w.hardlink("etc/app.conf", "home/user/app.conf.link")
	w.mkdir("bulk", 0o755)
	for i := 0; w.bytes < bulk; i++ {
		w.file(fmt.Sprintf("bulk/b%02d.bin", i), 0o644, min(bulk-w.bytes, 8<<20))
	}
	return w.bytes, w.err
}

// mutateSource changes the tree the way a share changes between two
// snapshots (appends, overwrites in place, renames, deletes, new files, new
// links, changed metadata) and returns about the bytes of data changed.
func mutateSource(dir string, rng *rand.Rand, round int, bulk int64) (int64, error) {
	w := &writer{root: dir, rng: rng}
	w.appendTo("home/user/notes.txt", 1000+int64(rng.IntN(4000)))
	w.overwrite("etc/app.conf", 100, 200)
	w.chmod("etc/secret", 0o640)
	w.xattr("etc/app.conf", "user.round", fmt.Sprint(round))
	// Files of earlier rounds are renamed and removed, not only the
	// initial ones, so that each incremental stream differs in shape.
	entries, _ := os.ReadDir(filepath.Join(dir, "small"))
	for i, e := range entries {
		switch {
		case i%7 == round%7:
			w.remove("small/" + e.Name())
		case i%5 == round%5:
			w.rename("small/"+e.Name(), fmt.Sprintf("small/r%d-%s", round, e.Name()))
		case i%3 == round%3:
			w.overwrite("small/"+e.Name(), 0, 512)
		}
	}
	if bulks, _ := filepath.Glob(filepath.Join(dir, "bulk", "*.bin")); len(bulks) > 0 {
		victim := bulks[rng.IntN(len(bulks))]
		w.overwrite(mustRel(dir, victim), int64(rng.IntN(1<<20)), 1<<20)
	}
	w.mkdir(fmt.Sprintf("round%d", round), 0o755)
	w.hardlink("home/user/notes.txt", fmt.Sprintf("round%d/notes.link", round))
	w.symlink("../bulk", fmt.Sprintf("round%d/bulk", round))
	for i := 0; w.bytes < bulk; i++ {
		w.file(fmt.Sprintf("round%d/n%02d.bin", round, i), 0o644, min(bulk-w.bytes, 8<<20))
	}
	return w.bytes, w.err
}

func mustRel(base, p string) string {
	rel, err := filepath.Rel(base, p)
	if err != nil {
		panic(err)
	}
	return rel
}

// writer records the first error and skips everything after it, so the
// tree description above reads as a list.
type writer struct {
	root   string
	rng    *rand.Rand
	stream *rand.ChaCha8
	bytes  int64
	err    error
}

func (w *writer) path(rel string) string { return filepath.Join(w.root, rel) }

func (w *writer) do(err error) {
	if w.err == nil && err != nil {
		w.err = err
	}
}

func (w *writer) mkdir(rel string, mode os.FileMode) {
	if w.err == nil {
		w.do(os.MkdirAll(w.path(rel), 0o755))
		w.do(os.Chmod(w.path(rel), mode))
	}
}

func (w *writer) random(f io.Writer, n int64) {
	if w.stream == nil {
		// A ChaCha8 stream seeded from the trial's PRNG fills megabytes
		// fast and stays deterministic.
		var seed [32]byte
		for i := range seed {
			seed[i] = byte(w.rng.Uint32())
		}
		w.stream = rand.NewChaCha8(seed)
	}
	buf := make([]byte, 256<<10)
	for n > 0 && w.err == nil {
		k := min(n, int64(len(buf)))
		_, _ = w.stream.Read(buf[:k])
		_, err := f.Write(buf[:k])
		w.do(err)
		n -= k
		w.bytes += k
	}
}

func (w *writer) file(rel string, mode os.FileMode, size int64) {
	if w.err != nil {
		return
	}
	f, err := os.OpenFile(w.path(rel), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		w.do(err)
		return
	}
	w.random(f, size)
	w.do(f.Close())
	w.do(os.Chmod(w.path(rel), mode))
}

func (w *writer) appendTo(rel string, n int64) {
	if w.err != nil {
		return
	}
	f, err := os.OpenFile(w.path(rel), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		w.do(err)
		return
	}
	w.random(f, n)
	w.do(f.Close())
}

func (w *writer) overwrite(rel string, off, n int64) {
	if w.err != nil {
		return
	}
	f, err := os.OpenFile(w.path(rel), os.O_WRONLY, 0)
	if err != nil {
		w.do(err)
		return
	}
	_, err = f.Seek(off, io.SeekStart)
	w.do(err)
	w.random(f, n)
	w.do(f.Close())
}

func (w *writer) sparse(rel string, size int64) {
	if w.err != nil {
		return
	}
	f, err := os.Create(w.path(rel))
	if err != nil {
		w.do(err)
		return
	}
	w.do(f.Truncate(size))
	for _, off := range []int64{0, size / 2, size - 4096} {
		_, err := f.Seek(off, io.SeekStart)
		w.do(err)
		w.random(f, 4096)
	}
	w.do(f.Close())
}

func (w *writer) symlink(target, rel string) {
	if w.err == nil {
		w.do(os.Symlink(target, w.path(rel)))
	}
}

func (w *writer) hardlink(existing, rel string) {
	if w.err == nil {
		w.do(os.Link(w.path(existing), w.path(rel)))
	}
}

func (w *writer) xattr(rel, name, value string) {
	if w.err == nil {
		w.do(unix.Lsetxattr(w.path(rel), name, []byte(value), 0))
	}
}

func (w *writer) chown(rel string, uid, gid int) {
	if w.err == nil {
		w.do(os.Lchown(w.path(rel), uid, gid))
	}
}

func (w *writer) chmod(rel string, mode os.FileMode) {
	if w.err == nil {
		w.do(os.Chmod(w.path(rel), mode))
	}
}

func (w *writer) rename(from, to string) {
	if w.err == nil {
		w.do(os.Rename(w.path(from), w.path(to)))
	}
}

func (w *writer) remove(rel string) {
	if w.err == nil {
		w.do(os.Remove(w.path(rel)))
	}
}
