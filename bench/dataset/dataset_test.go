package dataset

import (
	"context"
	"io/fs"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/internal/treecmp"
)

type generator func(ctx context.Context, dir string, seed uint64) error

var generators = []struct {
	name      string
	gen       generator
	wantBytes int64
	wantFiles int
}{
	{"random", func(ctx context.Context, dir string, seed uint64) error {
		return Random(ctx, dir, 3<<20+7, 3, seed)
	}, 3<<20 + 7, 3},
	{"text", func(ctx context.Context, dir string, seed uint64) error {
		return Text(ctx, dir, 5<<20, seed)
	}, 5 << 20, -1},
	{"small files", func(ctx context.Context, dir string, seed uint64) error {
		return SmallFiles(ctx, dir, 1500, seed)
	}, -1, 1500},
	{"islands", func(ctx context.Context, dir string, seed uint64) error {
		return Islands(ctx, dir, 40<<20, seed)
	}, 40 << 20, 1},
}

func treeSize(t *testing.T, dir string) (bytes int64, files int) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		info, err := d.Info()
		bytes += info.Size()
		files++
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return bytes, files
}

func equalTrees(t *testing.T, a, b string) bool {
	t.Helper()
	diffs, err := treecmp.Compare(a, b, treecmp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return len(diffs) == 0
}

func TestGeneratorsAreReproducible(t *testing.T) {
	ctx := context.Background()
	for _, tc := range generators {
		t.Run(tc.name, func(t *testing.T) {
			a, b, c := t.TempDir(), t.TempDir(), t.TempDir()
			for _, run := range []struct {
				dir  string
				seed uint64
			}{{a, 1}, {b, 1}, {c, 2}} {
				if err := tc.gen(ctx, run.dir, run.seed); err != nil {
					t.Fatal(err)
				}
			}
			if !equalTrees(t, a, b) {
				t.Error("same seed gave different trees")
			}
			if equalTrees(t, a, c) {
				t.Error("different seeds gave the same tree")
			}
			bytes, files := treeSize(t, a)
			if tc.wantBytes >= 0 && bytes != tc.wantBytes {
				t.Errorf("wrote %d bytes, want %d", bytes, tc.wantBytes)
			}
			if tc.wantFiles >= 0 && files != tc.wantFiles {
				t.Errorf("wrote %d files, want %d", files, tc.wantFiles)
			}
		})
	}
}

func TestMutateIsReproducibleAndSized(t *testing.T) {
	ctx := context.Background()
	var dirs []string
	var changes []Changes
	for i := 0; i < 2; i++ {
		dir := t.TempDir()
		if err := Text(ctx, dir, 8<<20, 7); err != nil {
			t.Fatal(err)
		}
		ch, err := Mutate(ctx, dir, 0.01, 9)
		if err != nil {
			t.Fatal(err)
		}
		dirs, changes = append(dirs, dir), append(changes, ch)
	}
	if !equalTrees(t, dirs[0], dirs[1]) || changes[0] != changes[1] {
		t.Fatalf("two mutations with one seed differ: %+v vs %+v", changes[0], changes[1])
	}
	ch := changes[0]
	if want := int64(0.01 * float64(ch.Bytes)); ch.Overwritten != want {
		t.Errorf("overwrote %d bytes, want %d (1%% of %d)", ch.Overwritten, want, ch.Bytes)
	}
	if ch.Renamed != max(1, ch.Files/100) || ch.Deleted != max(1, ch.Files/200) {
		t.Errorf("renamed %d and deleted %d of %d files", ch.Renamed, ch.Deleted, ch.Files)
	}
	bytes, files := treeSize(t, dirs[0])
	if files != ch.Files-ch.Deleted {
		t.Errorf("%d files after mutation, want %d", files, ch.Files-ch.Deleted)
	}
	if bytes >= ch.Bytes {
		t.Errorf("deleting files left %d bytes of %d", bytes, ch.Bytes)
	}
}
