package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/internal/loopfs"
)

// newPair gives a scenario its two machines: the source subvolume "data",
// filled with d, on one btrfs filesystem and an empty target directory
// "backup" on another. It returns the bytes of file data in the source.
func newPair(t *testing.T, d dataSet) (source, target string, size int64) {
	t.Helper()
	source = filepath.Join(newSourceFS(t, 2<<30), "data")
	target = newTarget(t, 2<<30, "backup")
	return source, target, d.newSource(t, source)
}

// newTarget makes a target directory on its own btrfs filesystem.
func newTarget(t *testing.T, size int64, name string) string {
	t.Helper()
	dir := filepath.Join(loopfs.New(t, size).Dir, name)
	mkdir(t, dir)
	return dir
}

// newSourceFS makes the btrfs filesystem that holds a source subvolume.
func newSourceFS(t *testing.T, size int64) string {
	t.Helper()
	return loopfs.New(t, size).Dir
}

func mkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

// growFS enlarges a loop filesystem to size bytes while it stays mounted,
// as an administrator would after a disk-full failure.
func growFS(t *testing.T, fs *loopfs.FS, size int64) {
	t.Helper()
	if err := os.Truncate(fs.Image, size); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"losetup", "--set-capacity", fs.Device},
		{"btrfs", "filesystem", "resize", "max", fs.Dir},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", args, err, out)
		}
	}
}
