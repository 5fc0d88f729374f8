package treecmp

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var baseTime = time.Date(2023, 6, 1, 8, 0, 0, 987654321, time.UTC)

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// makeTree builds a tree with one example of everything Compare looks at.
func makeTree(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "tree")
	must(t, os.MkdirAll(filepath.Join(root, "dir/sub"), 0o755))
	for name, data := range map[string]string{
		"file":         "some content\n",
		"dir/sub/deep": "deeper content\n",
		"dir/linked":   "two names\n",
	} {
		must(t, os.WriteFile(filepath.Join(root, name), []byte(data), 0o644))
	}
	must(t, os.Link(filepath.Join(root, "dir/linked"), filepath.Join(root, "other-name")))
	must(t, os.Symlink("dir/sub/deep", filepath.Join(root, "link")))
	must(t, unix.Mkfifo(filepath.Join(root, "dir/fifo"), 0o640))
	must(t, unix.Lsetxattr(filepath.Join(root, "file"), "user.tag", []byte("v1"), 0))
	if os.Geteuid() == 0 {
		must(t, os.Lchown(filepath.Join(root, "file"), 1234, 5678))
		must(t, unix.Mknod(filepath.Join(root, "dir/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
	}
	ts := []unix.Timespec{unix.NsecToTimespec(baseTime.UnixNano()), unix.NsecToTimespec(baseTime.UnixNano())}
	must(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW)
	}))
	return root
}

func copyTree(t *testing.T, src string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "copy")
	if out, err := exec.Command("cp", "-a", src, dst).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	return dst
}

// restoreTimesAfter runs change on the tree at root and then puts back
// the times every surviving path had before, so that a case shows only the
// difference it is about and not the directory mtimes its edits bumped.
func restoreTimesAfter(t *testing.T, root string, change func()) {
	t.Helper()
	saved := map[string][]unix.Timespec{}
	must(t, filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		saved[p] = []unix.Timespec{st.Atim, st.Mtim}
		return nil
	}))
	change()
	for p, ts := range saved {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, p, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.ENOENT) {
			t.Fatal(err)
		}
	}
}

func TestCompareDetectsEachDifference(t *testing.T) {
	base := makeTree(t)
	tests := []struct {
		name     string
		rootOnly bool                         // needs root (owners, device nodes)
		change   func(t *testing.T, c string) // applied to a cp -a copy
		want     string                       // the only difference, or its start
	}{
		{"content, same size", false, func(t *testing.T, c string) {
			must(t, os.WriteFile(filepath.Join(c, "file"), []byte("same length!\n"), 0o644))
		}, "file: content differs"},
		{"size", false, func(t *testing.T, c string) {
			must(t, os.WriteFile(filepath.Join(c, "dir/sub/deep"), []byte("short\n"), 0o644))
		}, "dir/sub/deep: size 15 != 6"},
		{"mode", false, func(t *testing.T, c string) {
			must(t, os.Chmod(filepath.Join(c, "dir/sub"), 0o700))
		}, "dir/sub: mode 40755 != 40700"},
		{"file type", false, func(t *testing.T, c string) {
			must(t, os.Remove(filepath.Join(c, "dir/sub/deep")))
			must(t, os.Mkdir(filepath.Join(c, "dir/sub/deep"), 0o644))
			must(t, os.Chmod(filepath.Join(c, "dir/sub/deep"), 0o644))
		}, "dir/sub/deep: mode 100644 != 40644"},
		{"owner", true, func(t *testing.T, c string) {
			must(t, os.Lchown(filepath.Join(c, "file"), 1234, 0))
		}, "file: owner 1234:5678 != 1234:0"},
		{"xattr value", false, func(t *testing.T, c string) {
			must(t, unix.Lsetxattr(filepath.Join(c, "file"), "user.tag", []byte("v2"), 0))
		}, "file: xattrs map[user.tag:v1] != map[user.tag:v2]"},
		{"xattr added", false, func(t *testing.T, c string) {
			must(t, unix.Lsetxattr(filepath.Join(c, "dir"), "user.new", []byte("x"), 0))
		}, "dir: xattrs map[] != map[user.new:x]"},
		{"symlink target", false, func(t *testing.T, c string) {
			must(t, os.Remove(filepath.Join(c, "link")))
			must(t, os.Symlink("dir/sub/DEEP", filepath.Join(c, "link")))
		}, `link: symlink "dir/sub/deep" != "dir/sub/DEEP"`},
		{"device number", true, func(t *testing.T, c string) {
			must(t, os.Remove(filepath.Join(c, "dir/null")))
			must(t, unix.Mknod(filepath.Join(c, "dir/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 5))))
		}, "dir/null: device"},
		{"extra file", false, func(t *testing.T, c string) {
			must(t, os.WriteFile(filepath.Join(c, "dir/extra"), nil, 0o644))
		}, "dir/extra: only in COPY"},
		{"missing file", false, func(t *testing.T, c string) {
			must(t, os.Remove(filepath.Join(c, "dir/sub/deep")))
		}, "dir/sub/deep: only in BASE"},
		{"hard link broken", false, func(t *testing.T, c string) {
			// Same content and metadata under both names, but two inodes.
			p := filepath.Join(c, "other-name")
			must(t, os.Remove(p))
			if out, err := exec.Command("cp", "-a", filepath.Join(c, "dir/linked"), p).CombinedOutput(); err != nil {
				t.Fatalf("cp -a: %v: %s", err, out)
			}
		}, "hard-link structure differs:\ndir/linked = other-name\nvs\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.rootOnly && os.Geteuid() != 0 {
				t.Skip("needs root to set owners and make device nodes")
			}
			c := copyTree(t, base)
			restoreTimesAfter(t, c, func() { tt.change(t, c) })
			diffs, err := Compare(base, c, Options{Times: true})
			must(t, err)
			want := strings.NewReplacer("COPY", c, "BASE", base).Replace(tt.want)
			if len(diffs) != 1 || !strings.HasPrefix(diffs[0], want) {
				t.Errorf("diffs %q, want one starting with %q", diffs, want)
			}
		})
	}
}

func TestCompareTimes(t *testing.T) {
	base := makeTree(t)
	tests := []struct {
		name  string
		path  string // in the copy, whose mtime moves by 1ns
		opt   Options
		diffs int
	}{
		{"file mtime counts", "file", Options{Times: true}, 1},
		{"symlink mtime counts", "link", Options{Times: true}, 1},
		{"directory mtime counts", "dir/sub", Options{Times: true}, 1},
		{"root mtime is ignored", ".", Options{Times: true}, 0},
		{"times off", "file", Options{}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := copyTree(t, base)
			moved := unix.NsecToTimespec(baseTime.UnixNano() + 1)
			must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(c, tt.path), []unix.Timespec{moved, moved}, unix.AT_SYMLINK_NOFOLLOW))
			diffs, err := Compare(base, c, tt.opt)
			must(t, err)
			if len(diffs) != tt.diffs || (tt.diffs == 1 && !strings.HasPrefix(diffs[0], tt.path+": mtime")) {
				t.Errorf("diffs %q, want %d mtime difference(s) on %s", diffs, tt.diffs, tt.path)
			}
		})
	}
}

func TestCompareCopyIsEqual(t *testing.T) {
	base := makeTree(t)
	c := copyTree(t, base)
	for _, pair := range [][2]string{{base, c}, {c, base}, {base, base}} {
		diffs, err := Compare(pair[0], pair[1], Options{Times: true})
		if err != nil || len(diffs) != 0 {
			t.Errorf("Compare(%s, %s) = %q, %v; want no differences", pair[0], pair[1], diffs, err)
		}
	}
}

func TestCompareMaxDiffs(t *testing.T) {
	base := makeTree(t)
	c := copyTree(t, base)
	for i := 0; i < 30; i++ {
		must(t, os.WriteFile(filepath.Join(c, "extra"+strings.Repeat("x", i)), nil, 0o644))
	}
	for _, tt := range []struct {
		max, want int
	}{{0, 20}, {5, 5}, {100, 30}} {
		diffs, err := Compare(base, c, Options{MaxDiffs: tt.max})
		must(t, err)
		if len(diffs) != tt.want {
			t.Errorf("MaxDiffs %d: %d differences, want %d", tt.max, len(diffs), tt.want)
		}
	}
}

func TestCompareMissingRoot(t *testing.T) {
	base := makeTree(t)
	missing := filepath.Join(t.TempDir(), "missing")
	for _, pair := range [][2]string{{base, missing}, {missing, base}} {
		if _, err := Compare(pair[0], pair[1], Options{}); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Compare(%s, %s): %v, want a not-exist error", pair[0], pair[1], err)
		}
	}
}
