package btrfs_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
)

// DataSizeOf predicts the data a full send carries, with and without
// compressed data, on a filesystem mounted with compress=zstd: text that
// btrfs stores compressed, random data it stores plain, a sparse file
// whose hole travels in neither stream, and a file kept inline. Each
// figure is checked against the length of the real stream.
func TestDataSizeOfPredictsTheFullSendStream(t *testing.T) {
	if err := btrfs.CompressedSendSupported(); err != nil {
		t.Skipf("this machine cannot send compressed data: %v", err)
	}
	root := newFS(t, 1<<30)
	if out, err := exec.Command("mount", "-o", "remount,compress=zstd", root).CombinedOutput(); err != nil {
		t.Fatalf("remount with compress=zstd: %v: %s", err, out)
	}
	ctx := context.Background()
	src := filepath.Join(root, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	line := []byte("snapjet estimates what a full send stream carries, hole or not\n")
	writeFile(t, filepath.Join(src, "text"), bytes.Repeat(line, 24<<20/len(line)), 0o644)
	writeFile(t, filepath.Join(src, "random"), randomBytes(1, 8<<20), 0o644)
	writeFile(t, filepath.Join(src, "small"), []byte("inline"), 0o644)
	f, err := os.Create(filepath.Join(src, "sparse"))
	must(t, err)
	_, err = f.WriteAt(randomBytes(2, 1<<20), 16<<20)
	must(t, err)
	must(t, f.Close())
	must(t, btrfs.Sync(src))
	snap := filepath.Join(root, "snap")
	must(t, btrfs.Snapshot(ctx, src, snap, true))

	size, err := btrfs.DataSizeOf(ctx, snap, 0)
	must(t, err)
	plain := streamLength(t, snap, btrfs.SendOptions{})
	encoded := streamLength(t, snap, btrfs.SendOptions{CompressedData: true})
	t.Logf("figures: plain %d bytes for a %d-byte stream, encoded %d for %d", size.Plain, plain, size.Encoded, encoded)
	// An extent ends on a block: a file's last one may count up to a block
	// past its end.
	if want := int64(24<<20/len(line)*len(line) + 8<<20 + len("inline") + 1<<20); size.Plain < want || size.Plain > want+4*4096 {
		t.Errorf("plain data: %d bytes, want %d (to a block per file): every byte of data once, no hole", size.Plain, want)
	}
	for _, c := range []struct {
		name         string
		got, already int64
	}{{"plain", size.Plain, plain}, {"encoded", size.Encoded, encoded}} {
		if r := float64(c.got) / float64(c.already); r < 0.95 || r > 1.0 {
			t.Errorf("%s: predicted %d bytes for a %d-byte stream (%.3f), want 0.95-1.0 of it (the stream adds its commands)", c.name, c.got, c.already, r)
		}
	}
	if size.Encoded*3 > size.Plain {
		t.Errorf("encoded %d bytes of %d plain: the text's compressed extents do not count at their size on disk", size.Encoded, size.Plain)
	}
}

// streamLength runs btrfs send of snap with opt and counts its bytes.
func streamLength(t *testing.T, snap string, opt btrfs.SendOptions) int64 {
	t.Helper()
	out, p, err := btrfs.Send(context.Background(), snap, opt)
	must(t, err)
	n, err := io.Copy(io.Discard, out)
	must(t, err)
	must(t, out.Close())
	must(t, p.Wait())
	return n
}

// From a parent, DataSizeOf counts only the data written since the parent
// was made: a new file and a rewritten range of an old one, not the rest,
// close to the incremental stream's length.
func TestDataSizeOfSinceAParent(t *testing.T) {
	root := newFS(t, 1<<30)
	ctx := context.Background()
	src := filepath.Join(root, "src")
	must(t, btrfs.CreateSubvolume(ctx, src))
	writeFile(t, filepath.Join(src, "old"), randomBytes(1, 16<<20), 0o644)
	writeFile(t, filepath.Join(src, "kept"), randomBytes(2, 8<<20), 0o644)
	must(t, btrfs.Sync(src))
	parent := filepath.Join(root, "parent")
	must(t, btrfs.Snapshot(ctx, src, parent, true))

	writeFile(t, filepath.Join(src, "new"), randomBytes(3, 4<<20), 0o644)
	f, err := os.OpenFile(filepath.Join(src, "old"), os.O_WRONLY, 0)
	must(t, err)
	_, err = f.WriteAt(randomBytes(4, 1<<20), 4<<20)
	must(t, err)
	must(t, f.Close())
	must(t, btrfs.Sync(src))
	snap := filepath.Join(root, "snap")
	must(t, btrfs.Snapshot(ctx, src, snap, true))

	size, err := btrfs.DataSizeOf(ctx, snap, inspect(t, parent).CTransID)
	must(t, err)
	stream := streamLength(t, snap, btrfs.SendOptions{Parent: parent})
	t.Logf("figures: %d bytes since the parent for a %d-byte incremental stream", size.Plain, stream)
	if want := int64(5 << 20); size.Plain != want || size.Encoded != want {
		t.Errorf("since the parent: %+v, want %d plain and encoded: the new file and the rewritten MiB", size, want)
	}
	if r := float64(size.Plain) / float64(stream); r < 0.95 || r > 1.0 {
		t.Errorf("predicted %d bytes for a %d-byte incremental stream (%.3f), want 0.95-1.0 of it", size.Plain, stream, r)
	}
}
