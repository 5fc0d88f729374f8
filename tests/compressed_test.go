package tests

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/snapjet/snapjet/btrfs"
	"github.com/snapjet/snapjet/internal/loopfs"
)

// A source on a filesystem mounted with compress=zstd. By default (auto,
// on a kernel and btrfs-progs that can) its compressed extents travel as
// they are and land compressed on a target mounted without compression,
// through the native receive and through btrfs-progs; with never they
// arrive as plain data. Either way the received tree equals the source.
func TestCompressedExtentsTravelAsTheyAre(t *testing.T) {
	if err := btrfs.CompressedSendSupported(); err != nil {
		t.Skipf("this machine cannot send compressed data: %v", err)
	}
	fs := loopfs.New(t, 2<<30)
	if out, err := exec.Command("mount", "-o", "remount,compress=zstd", fs.Dir).CombinedOutput(); err != nil {
		t.Fatalf("remount the source with compress=zstd: %v: %s", err, out)
	}
	source := filepath.Join(fs.Dir, "data")
	dataSet{seed: 11, bulk: 4 * mib}.newSource(t, source)
	// 32 MiB of text: btrfs stores it in compressed extents.
	line := []byte("snapjet sends btrfs snapshots over NATS JetStream and resumes where it stopped\n")
	f, err := os.Create(filepath.Join(source, "log.txt"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(bytes.Repeat(line, 32*mib/len(line)))
	if err = errors.Join(err, f.Sync(), f.Close()); err != nil { // extents are laid out on writeback
		t.Fatal(err)
	}
	if n := encodedExtents(t, filepath.Join(source, "log.txt")); n == 0 {
		t.Fatal("the source file has no compressed extents: the test would prove nothing")
	}

	for _, tc := range []struct {
		name    string
		flags   []string
		encoded bool
	}{
		{"auto, native receive", nil, true},
		{"auto, btrfs-progs", []string{"--receiver", "btrfs-progs"}, true},
		{"never", []string{"--compressed-data", "never"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			target := newTarget(t, 2<<30, "backup")
			r := newReplicator(t)
			if res := r.run("replicate", tc.flags, source, target); res.code != 0 {
				t.Fatalf("replicate failed with code %d: %s", res.code, res.stderr)
			}
			rep, ok := r.storedStatus().newest()
			if !ok {
				t.Fatal("status lists no replication after a successful replicate")
			}
			assertReplicated(t, rep.Snapshot, target)
			// The ETA's estimate follows what the stream carries: compressed
			// extents at their size on disk where they travel as they are
			// (the files' sizes were 6.8 times that stream).
			ratio := float64(rep.Estimated) / float64(rep.TotalBytes)
			t.Logf("figures: estimated %d bytes for a %d-byte stream: %.2f", rep.Estimated, rep.TotalBytes, ratio)
			if ratio < 0.67 || ratio > 1.5 {
				t.Errorf("the ETA's estimate is %.2f times the stream (%d of %d bytes), want 0.67-1.5", ratio, rep.Estimated, rep.TotalBytes)
			}
			got := encodedExtents(t, filepath.Join(target, rep.SnapshotName, "log.txt"))
			if tc.encoded && got == 0 {
				t.Error("the received file has no compressed extents: they were decompressed on the way")
			}
			if !tc.encoded && got != 0 {
				t.Errorf("the received file has %d compressed extents, on a target mounted without compression", got)
			}
		})
	}
}

// encodedExtents counts the extents of path that filefrag marks encoded
// (compressed).
func encodedExtents(t *testing.T, path string) int {
	t.Helper()
	out, err := exec.Command("filefrag", "-v", path).CombinedOutput()
	if err != nil {
		t.Fatalf("filefrag %s: %v: %s", path, err, out)
	}
	n := 0
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, "encoded") {
			n++
		}
	}
	return n
}
