package btrfs_test

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/snapjet/snapjet/btrfs"
	"golang.org/x/sys/unix"
)

const smallFS = 256 << 20

// showSubvolume is btrfs-progs' own view of a subvolume, used to check
// that Inspect decodes the ioctl result correctly.
func showSubvolume(t *testing.T, path string) map[string]string {
	t.Helper()
	out, err := exec.Command("btrfs", "subvolume", "show", path).Output()
	if err != nil {
		t.Fatalf("btrfs subvolume show %s: %v", path, err)
	}
	fields := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			fields[k] = strings.TrimSpace(v)
		}
	}
	return fields
}

func TestInspect(t *testing.T) {
	ctx := context.Background()
	start := time.Now().Add(-time.Second)
	dir := newFS(t, smallFS)
	src := filepath.Join(dir, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	writeFile(t, filepath.Join(src, "f"), []byte("data"), 0o644)
	snap := filepath.Join(dir, "snap")
	must(t, btrfs.Snapshot(ctx, src, snap, true))
	received := sendReceive(t, snap, btrfs.SendOptions{}, mkdir(t, filepath.Join(dir, "recv")))
	srcUUID, snapUUID := inspect(t, src).UUID, inspect(t, snap).UUID

	tests := []struct {
		name string
		path string
		want btrfs.Info // Name, ReadOnly, ParentUUID and ReceivedUUID are compared
	}{
		{"fresh subvolume", src, btrfs.Info{Name: "src"}},
		{"read-only snapshot", snap, btrfs.Info{Name: "snap", ReadOnly: true, ParentUUID: srcUUID}},
		{"received subvolume", received, btrfs.Info{Name: "snap", ReadOnly: true, ReceivedUUID: snapUUID}},
	}
	seen := map[btrfs.UUID]string{}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := inspect(t, tt.path)
			if got.Path != tt.path || got.Name != tt.want.Name || got.ReadOnly != tt.want.ReadOnly ||
				got.ParentUUID != tt.want.ParentUUID || got.ReceivedUUID != tt.want.ReceivedUUID {
				t.Errorf("Inspect(%s) = %+v\nwant name %q, read-only %v, parent %q, received %q", tt.path, got,
					tt.want.Name, tt.want.ReadOnly, tt.want.ParentUUID, tt.want.ReceivedUUID)
			}
			if got.UUID.IsZero() || seen[got.UUID] != "" {
				t.Errorf("UUID %q is zero or also belongs to %s", got.UUID, seen[got.UUID])
			}
			seen[got.UUID] = tt.path
			if got.ID < 256 || got.Generation == 0 || got.CTransID == 0 {
				t.Errorf("implausible ID %d, generation %d, ctransid %d", got.ID, got.Generation, got.CTransID)
			}
			if got.Created.Before(start) || got.Created.After(time.Now()) {
				t.Errorf("created %v, not during this test (started %v)", got.Created, start)
			}

			show := showSubvolume(t, tt.path)
			flags := "-"
			if got.ReadOnly {
				flags = "readonly"
			}
			dash := func(u btrfs.UUID) string {
				if u.IsZero() {
					return "-"
				}
				return u.String()
			}
			for key, value := range map[string]string{
				"Name": got.Name, "UUID": got.UUID.String(), "Parent UUID": dash(got.ParentUUID),
				"Received UUID": dash(got.ReceivedUUID), "Subvolume ID": strconv.FormatUint(got.ID, 10),
				"Generation": strconv.FormatUint(got.Generation, 10), "Flags": flags,
			} {
				if show[key] != value {
					t.Errorf("%s: Inspect says %q, btrfs subvolume show says %q", key, value, show[key])
				}
			}
		})
	}
}

// assertWritable checks the kernel's verdict, not just the flag: creating a
// file in dir succeeds exactly when it should, and fails with EROFS otherwise.
func assertWritable(t *testing.T, dir string, want bool) {
	t.Helper()
	probe := filepath.Join(dir, "write-probe")
	err := os.WriteFile(probe, nil, 0o644)
	switch {
	case want && err != nil:
		t.Errorf("writing into %s: %v", dir, err)
	case !want && !errors.Is(err, unix.EROFS):
		t.Errorf("writing into read-only %s: %v, want EROFS", dir, err)
	case want:
		must(t, os.Remove(probe))
	}
}

// TestPathErrors covers the checks callers make before touching a path.
func TestPathErrors(t *testing.T) {
	ctx := context.Background()
	dir := newFS(t, smallFS)
	ext4 := t.TempDir() // not btrfs: the test's temporary directory
	sub := filepath.Join(dir, "sub")
	must(t, btrfs.CreateSubvolume(ctx, sub))
	mkdir(t, filepath.Join(dir, "plain"))
	mkdir(t, filepath.Join(sub, "inner"))
	writeFile(t, filepath.Join(dir, "file"), []byte("x"), 0o644)

	tests := []struct {
		name        string
		path        string
		isBtrfs     error // want from IsBtrfs
		inspect     error // want from Inspect
		isSubvolume bool
	}{
		{"subvolume", sub, nil, nil, true},
		{"filesystem top level", dir, nil, nil, true},
		{"missing path on btrfs", filepath.Join(dir, "missing"), btrfs.ErrNotFound, btrfs.ErrNotFound, false},
		{"missing path elsewhere", filepath.Join(ext4, "missing"), btrfs.ErrNotFound, btrfs.ErrNotFound, false},
		{"directory on another filesystem", ext4, btrfs.ErrNotBtrfs, btrfs.ErrNotBtrfs, false},
		{"procfs", "/proc", btrfs.ErrNotBtrfs, btrfs.ErrNotBtrfs, false},
		{"plain directory on btrfs", filepath.Join(dir, "plain"), nil, btrfs.ErrNotSubvolume, false},
		{"directory inside a subvolume", filepath.Join(sub, "inner"), nil, btrfs.ErrNotSubvolume, false},
		{"regular file on btrfs", filepath.Join(dir, "file"), nil, btrfs.ErrNotSubvolume, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := btrfs.IsBtrfs(tt.path); !errors.Is(err, tt.isBtrfs) || (err == nil) != (tt.isBtrfs == nil) {
				t.Errorf("IsBtrfs(%s) = %v, want %v", tt.path, err, tt.isBtrfs)
			}
			if _, err := btrfs.Inspect(tt.path); !errors.Is(err, tt.inspect) || (err == nil) != (tt.inspect == nil) {
				t.Errorf("Inspect(%s) = %v, want %v", tt.path, err, tt.inspect)
			}
			if got := btrfs.IsSubvolume(tt.path); got != tt.isSubvolume {
				t.Errorf("IsSubvolume(%s) = %v, want %v", tt.path, got, tt.isSubvolume)
			}
		})
	}
}

func TestSnapshot(t *testing.T) {
	ctx := context.Background()
	dir := newFS(t, smallFS)
	src := filepath.Join(dir, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	populate(t, src)
	srcUUID := inspect(t, src).UUID
	mkdir(t, filepath.Join(dir, "plain"))
	mkdir(t, filepath.Join(dir, "taken"))

	tests := []struct {
		name     string
		src, dst string
		readOnly bool
		wantErr  error // nil: the snapshot must exist and equal src
	}{
		{"read-only", src, filepath.Join(dir, "ro"), true, nil},
		{"writable", src, filepath.Join(dir, "rw"), false, nil},
		{"into a subdirectory", src, filepath.Join(dir, "plain/snap"), true, nil},
		{"destination is an existing directory", src, filepath.Join(dir, "taken"), true, btrfs.ErrExists},
		{"destination is an existing subvolume", src, filepath.Join(dir, "ro"), true, btrfs.ErrExists},
		{"source missing", filepath.Join(dir, "missing"), filepath.Join(dir, "x"), true, btrfs.ErrNotFound},
		{"source is a plain directory", filepath.Join(dir, "plain"), filepath.Join(dir, "y"), true, btrfs.ErrNotSubvolume},
		{"source is not on btrfs", t.TempDir(), filepath.Join(dir, "z"), true, btrfs.ErrNotBtrfs},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before, err := os.ReadDir(tt.dst)
			existed := err == nil
			err = btrfs.Snapshot(ctx, tt.src, tt.dst, tt.readOnly)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Snapshot(%s, %s) = %v, want %v", tt.src, tt.dst, err, tt.wantErr)
				}
				if after, _ := os.ReadDir(tt.dst); existed && len(after) != len(before) {
					t.Errorf("failed snapshot changed %s: %d entries before, %d after", tt.dst, len(before), len(after))
				}
				return
			}
			must(t, err)
			info := inspect(t, tt.dst)
			if info.ReadOnly != tt.readOnly || info.ParentUUID != srcUUID {
				t.Errorf("snapshot read-only %v (want %v), parent UUID %q (want %q)", info.ReadOnly, tt.readOnly, info.ParentUUID, srcUUID)
			}
			assertSameTree(t, tt.src, tt.dst)
			assertWritable(t, tt.dst, !tt.readOnly)
		})
	}
}

func TestSetReadOnly(t *testing.T) {
	ctx := context.Background()
	dir := newFS(t, smallFS)
	sub := filepath.Join(dir, "sub")
	must(t, btrfs.CreateSubvolume(ctx, sub))
	mkdir(t, filepath.Join(dir, "plain"))

	for i, ro := range []bool{true, false, true, false} {
		must(t, btrfs.SetReadOnly(ctx, sub, ro))
		if got := inspect(t, sub).ReadOnly; got != ro {
			t.Fatalf("step %d: read-only %v after SetReadOnly(%v)", i, got, ro)
		}
		assertWritable(t, sub, !ro)
	}

	for _, tt := range []struct {
		name    string
		path    string
		wantErr error
	}{
		{"plain directory", filepath.Join(dir, "plain"), btrfs.ErrNotSubvolume},
		{"missing path", filepath.Join(dir, "missing"), btrfs.ErrNotFound},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := btrfs.SetReadOnly(ctx, tt.path, true); !errors.Is(err, tt.wantErr) {
				t.Errorf("SetReadOnly(%s) = %v, want %v", tt.path, err, tt.wantErr)
			}
		})
	}

	// A received subvolume is the base of the next incremental receive;
	// btrfs-progs refuses to make it writable, and it must stay intact.
	t.Run("received subvolume stays read-only", func(t *testing.T) {
		must(t, btrfs.SetReadOnly(ctx, sub, true))
		got := sendReceive(t, sub, btrfs.SendOptions{}, mkdir(t, filepath.Join(dir, "recv")))
		if err := btrfs.SetReadOnly(ctx, got, false); err == nil {
			t.Error("SetReadOnly(false) on a received subvolume succeeded")
		}
		if info := inspect(t, got); !info.ReadOnly || info.ReceivedUUID != inspect(t, sub).UUID {
			t.Errorf("received subvolume changed: %+v", info)
		}
	})
}

func TestDeleteSubvolume(t *testing.T) {
	ctx := context.Background()
	dir := newFS(t, smallFS)
	keep := filepath.Join(dir, "keep")
	must(t, btrfs.CreateSubvolume(ctx, keep))
	writeFile(t, filepath.Join(keep, "f"), []byte("must survive"), 0o644)

	tests := []struct {
		name    string
		setup   func(t *testing.T) string // returns the path to delete
		wantErr error                     // nil: the path must be gone afterwards
	}{
		{"empty subvolume", func(t *testing.T) string {
			p := filepath.Join(dir, "empty")
			must(t, btrfs.CreateSubvolume(ctx, p))
			return p
		}, nil},
		{"nested subvolumes with data", func(t *testing.T) string {
			p := filepath.Join(dir, "outer")
			for _, sub := range []string{"", "/a", "/a/b", "/a/b/c", "/dir/d"} {
				must(t, os.MkdirAll(filepath.Dir(p+sub), 0o755))
				must(t, btrfs.CreateSubvolume(ctx, p+sub))
				writeFile(t, filepath.Join(p+sub, "data"), randomBytes(4, 1<<20), 0o644)
			}
			return p
		}, nil},
		{"read-only snapshot", func(t *testing.T) string {
			p := filepath.Join(dir, "ro-snap")
			must(t, btrfs.Snapshot(ctx, keep, p, true))
			return p
		}, nil},
		{"received subvolume", func(t *testing.T) string {
			snap := filepath.Join(dir, "to-send")
			must(t, btrfs.Snapshot(ctx, keep, snap, true))
			return sendReceive(t, snap, btrfs.SendOptions{}, mkdir(t, filepath.Join(dir, "recv")))
		}, nil},
		{"missing path", func(t *testing.T) string { return filepath.Join(dir, "never-existed") }, nil},
		{"plain directory", func(t *testing.T) string { return mkdir(t, filepath.Join(dir, "plain")) }, btrfs.ErrNotSubvolume},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.setup(t)
			err := btrfs.DeleteSubvolume(ctx, path)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("DeleteSubvolume(%s) = %v, want %v", path, err, tt.wantErr)
				}
				if _, err := os.Stat(path); err != nil {
					t.Errorf("refused delete removed %s anyway: %v", path, err)
				}
				return
			}
			must(t, err)
			if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("%s still there after delete: %v", path, err)
			}
			if err := btrfs.DeleteSubvolume(ctx, path); err != nil {
				t.Errorf("second delete of %s: %v", path, err)
			}
		})
	}
	if data, err := os.ReadFile(filepath.Join(keep, "f")); err != nil || string(data) != "must survive" {
		t.Errorf("sibling subvolume damaged: %q, %v", data, err)
	}
}

func TestList(t *testing.T) {
	ctx := context.Background()
	dir := newFS(t, smallFS)
	// Creation order differs from name order on purpose.
	for _, name := range []string{"zeta", "alpha", "mid"} {
		must(t, btrfs.CreateSubvolume(ctx, filepath.Join(dir, name)))
	}
	must(t, btrfs.Snapshot(ctx, filepath.Join(dir, "zeta"), filepath.Join(dir, "beta-snap"), true))
	must(t, btrfs.CreateSubvolume(ctx, filepath.Join(dir, "alpha/nested"))) // not a direct child
	mkdir(t, filepath.Join(dir, "plain"))
	writeFile(t, filepath.Join(dir, "file"), nil, 0o644)
	must(t, os.Symlink("zeta", filepath.Join(dir, "link-to-zeta")))

	tests := []struct {
		name string
		dir  string
		want []string
	}{
		{"oldest first, only direct child subvolumes", dir, []string{"zeta", "alpha", "mid", "beta-snap"}},
		{"nested level", filepath.Join(dir, "alpha"), []string{"nested"}},
		{"no subvolumes", filepath.Join(dir, "plain"), nil},
		{"missing directory", filepath.Join(dir, "missing"), nil},
		{"not on btrfs", t.TempDir(), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			infos, err := btrfs.List(tt.dir)
			must(t, err)
			var got []string
			for i, info := range infos {
				got = append(got, info.Name)
				if i > 0 && info.Created.Before(infos[i-1].Created) {
					t.Errorf("%s created before %s but listed after it", info.Name, infos[i-1].Name)
				}
				if info.Path != filepath.Join(tt.dir, info.Name) || info.UUID.IsZero() {
					t.Errorf("entry %+v: wrong path or no UUID", info)
				}
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("List(%s) = %v, want %v", tt.dir, got, tt.want)
			}
		})
	}
}

func TestSync(t *testing.T) {
	dir := newFS(t, smallFS)
	must(t, btrfs.Sync(dir))
	if err := btrfs.Sync(filepath.Join(dir, "missing")); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Sync of a missing path: %v, want ENOENT", err)
	}
}

func TestParseUUID(t *testing.T) {
	tests := []struct {
		in      string
		want    string // String() of the result
		wantErr bool
	}{
		{"16fcc81d-202d-7347-b518-876308001b9c", "16fcc81d-202d-7347-b518-876308001b9c", false},
		{"16FCC81D-202D-7347-B518-876308001B9C", "16fcc81d-202d-7347-b518-876308001b9c", false},
		{"-", "", false},
		{"", "", false},
		{"16fcc81d202d7347b518876308001b9c", "", true},
		{"16fcc81d-202d-7347-b518-876308001b9", "", true},
		{"16fcc81d-202d-7347-b518_876308001b9c", "", true},
		{"zzfcc81d-202d-7347-b518-876308001b9c", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			u, err := btrfs.ParseUUID(tt.in)
			if (err != nil) != tt.wantErr || u.String() != tt.want {
				t.Errorf("ParseUUID(%q) = %q, %v; want %q, error %v", tt.in, u, err, tt.want, tt.wantErr)
			}
		})
	}
}
